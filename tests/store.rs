//! The chunk store end to end: round trips with full metadata, dedup between versions,
//! gc, corrupted and missing chunks, hostile indexes, killed imports, concurrent imports,
//! and extraction with an id shift. Runs as root on a real filesystem.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, ok, require_root, run, scratch};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use warren::idmap::range::Shift;
use warren::idmap::xattr::{ACL_ACCESS, CAPABILITY, shift_value};
use warren::store::chunks::{self, Location};
use warren::store::{
    ChunkId, Entry, ExtractOptions, ImportOptions, Kind, Store, StoreError, Timestamp,
};

/// Deterministic pseudo-random bytes (xorshift), so a "changed byte" changes one place.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let dir = fs::File::open(path.parent().unwrap()).unwrap();
    let attr = CString::new(name).unwrap();
    warren::sys::lsetxattr_at(dir.as_fd(), path.file_name().unwrap(), &attr, value)
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

/// A v2 `security.capability` granting cap_net_bind_service (permitted + effective).
fn cap_v2() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// A POSIX access ACL with a named user 1000 and a named group 2000.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 5, u32::MAX),
        (0x08, 4, 2000),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A tree with every entry type and metadata field the store records.
fn fixture(root: &Path) {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(root.join("etc/big"), noise(1, 3 << 20)).unwrap();
    fs::write(root.join("etc/small"), b"hello\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(root.join("etc/sub/dup-a"), noise(2, 300_000)).unwrap();
    fs::write(root.join("etc/sub/dup-b"), noise(2, 300_000)).unwrap();
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::write(root.join("capped"), noise(3, 5000)).unwrap();
    fs::write(root.join("acl"), b"acl").unwrap();
    fs::hard_link(root.join("etc/small"), root.join("hard1")).unwrap();
    fs::hard_link(root.join("etc/small"), root.join("etc/sub/hard2")).unwrap();
    std::os::unix::fs::symlink("../etc/small", root.join("tmp/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    mknod(
        &root.join("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &root.join("dev/loop9"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 9),
    )
    .unwrap();
    mknod(
        &root.join("dev/fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(root.join("dev/sock")).unwrap());
    let chmod =
        |p: &str, m: u32| fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    chmod("suid", 0o4755);
    chmod("tmp", 0o1777);
    chmod("etc/sub", 0o2750);
    chmod("capped", 0o750);
    let chown = |p: &str, u: u32, g: u32| {
        std::os::unix::fs::lchown(root.join(p), Some(u), Some(g)).unwrap()
    };
    chown("etc/big", 1000, 1001);
    chown("etc/sub", 33, 34);
    chown("abs", 7, 8);
    chown("dev/loop9", 0, 6);
    chown("dev/fifo", 65534, 65534);
    chown("capped", 0, 0);
    set_xattr(&root.join("etc/small"), "user.note", b"kept");
    set_xattr(&root.join("etc"), "trusted.dirattr", b"\x00\x01binary");
    set_xattr(&root.join("capped"), CAPABILITY, &cap_v2());
    set_xattr(&root.join("acl"), ACL_ACCESS, &acl());
    set_xattr(&root.join("dev/fifo"), "trusted.fifo", b"x");
    // Distinct times with nanoseconds, deepest first so directories keep theirs.
    let mut all: Vec<PathBuf> = walk(root);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let t = TimeSpec::new(1_600_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// Everything we promise to keep, per relative path.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    rdev: u64,
    content: Option<blake3::Hash>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Index of the first path with the same inode (hardlink groups).
    group: String,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut inodes: HashMap<u64, String> = HashMap::new();
    let mut paths = walk(root);
    paths.sort();
    let mut out = BTreeMap::new();
    for p in paths {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let is_dir = m.is_dir();
        let group = if is_dir {
            String::new()
        } else {
            inodes
                .entry(m.ino())
                .or_insert_with(|| rel.display().to_string())
                .clone()
        };
        let (dir, name) = if rel.as_os_str().is_empty() {
            (p.clone(), OsStr::new(".").to_owned())
        } else {
            (
                p.parent().unwrap().to_path_buf(),
                p.file_name().unwrap().to_owned(),
            )
        };
        let dfd = fs::File::open(&dir).unwrap();
        let mut xattrs = BTreeMap::new();
        for a in warren::sys::llistxattr_at(dfd.as_fd(), &name).unwrap() {
            let v = warren::sys::lgetxattr_at(dfd.as_fd(), &name, &a)
                .unwrap()
                .unwrap();
            xattrs.insert(a.into_bytes(), v);
        }
        out.insert(
            rel,
            Meta {
                kind: m.mode() & libc::S_IFMT,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                rdev: m.rdev(),
                content: m.is_file().then(|| blake3::hash(&fs::read(&p).unwrap())),
                link: m.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs,
                group,
            },
        );
    }
    out
}

fn warren(store: &Path) -> Command {
    let mut c = Command::new(bin("warren"));
    c.arg("--store").arg(store);
    c
}

fn chunk_ids(store: &Store, name: &str) -> BTreeSet<ChunkId> {
    store
        .index(name)
        .unwrap()
        .chunks
        .iter()
        .map(|c| c.id)
        .collect()
}

/// Every chunk the store at `store` holds, packed or loose (and no unreadable pack).
fn on_disk(store: &Path) -> BTreeSet<ChunkId> {
    let store = Store::open(store).unwrap();
    let all = store.chunks().unwrap();
    assert!(all.bad_packs.is_empty(), "{:?}", all.bad_packs);
    let mut out: BTreeSet<ChunkId> = all
        .packs()
        .iter()
        .flat_map(|p| p.entries.iter().map(|e| e.id))
        .collect();
    out.extend(chunks::list(&store).unwrap().into_iter().map(|c| c.0));
    out
}

/// Where chunk `id`'s stored bytes are: (file, offset, length).
fn stored_at(store: &Store, id: &ChunkId) -> (PathBuf, u64, usize) {
    match store.chunks().unwrap().location(id) {
        Some(Location::Packed { pack, offset, len }) => (pack, offset, len as usize),
        Some(Location::Loose(path)) => {
            let len = fs::metadata(&path).unwrap().len() as usize;
            (path, 0, len)
        }
        None => panic!("chunk {id} is not stored"),
    }
}

/// Overwrites bytes of `path` at `offset`.
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Every temporary file (dot-named) in the store's pack and chunk dirs.
fn temp_files(store: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![store.join("packs")];
    dirs.extend(
        fs::read_dir(store.join("chunks"))
            .unwrap()
            .map(|d| d.unwrap().path()),
    );
    dirs.iter()
        .flat_map(|d| fs::read_dir(d).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.file_name().unwrap().as_bytes().starts_with(b"."))
        .collect()
}

#[test]
fn round_trip_keeps_every_entry_type_and_field() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-roundtrip");
    let src = tmp.path().join("src");
    fixture(&src);
    let store = tmp.path().join("store");
    let out = ok(warren(&store)
        .args(["--json", "image", "import"])
        .arg(&src)
        .args(["--name", "fixture:v1"]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["name"], "fixture:v1");
    let dest = tmp.path().join("dest");
    ok(warren(&store)
        .args(["image", "extract", "fixture:v1"])
        .arg(&dest));
    let (a, b) = (snapshot(&src), snapshot(&dest));
    assert_eq!(a.len(), b.len());
    for (path, meta) in &a {
        let got = &b[path];
        if meta.kind == libc::S_IFDIR {
            // A directory's size depends on its history, not its entries: not compared.
            assert_eq!(
                (meta.mode, meta.uid, meta.gid, meta.mtime, &meta.xattrs),
                (got.mode, got.uid, got.gid, got.mtime, &got.xattrs),
                "{path:?}"
            );
        } else {
            assert_eq!(meta, got, "{path:?}");
        }
    }
    // The fixture really has what we claim to test.
    assert_eq!(a[Path::new("suid")].mode, 0o4755);
    assert_eq!(a[Path::new("hard1")].group, a[Path::new("etc/small")].group);
    assert_eq!(
        b[Path::new("etc/sub/hard2")].group,
        b[Path::new("etc/small")].group
    );
    assert!(
        b[Path::new("capped")]
            .xattrs
            .contains_key(CAPABILITY.as_bytes())
    );
    assert_eq!(b[Path::new("dev/loop9")].rdev, makedev(7, 9));
    assert_eq!(b[Path::new("")].mtime, a[Path::new("")].mtime);

    // list / inspect / rm through the CLI.
    let list = ok(warren(&store).args(["image", "list"]));
    assert!(list.contains("fixture:v1"), "{list}");
    let insp: serde_json::Value =
        serde_json::from_str(&ok(warren(&store).args(["image", "inspect", "fixture:v1"]))).unwrap();
    assert_eq!(
        insp["files"],
        a.values().filter(|m| m.kind == libc::S_IFREG).count() as u64 - 2
    );
    ok(warren(&store).args(["image", "rm", "fixture:v1"]));
    assert!(!ok(warren(&store).args(["image", "list"])).contains("fixture:v1"));
}

#[test]
fn config_blob_and_writer_semantics() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-writer");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let entry = |path: &str, kind| Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timestamp { sec: 1, nsec: 2 },
        xattrs: vec![],
    };
    let mut w = store.writer().unwrap();
    // Out of order, no parent entries, a replaced file, a hardlink chain.
    w.add(
        entry("a/b/c", Kind::File { size: 3 }),
        Some(&mut &b"old"[..]),
    )
    .unwrap();
    w.add(
        entry("a/b/c", Kind::File { size: 3 }),
        Some(&mut &b"new"[..]),
    )
    .unwrap();
    w.add(entry("z", Kind::Hardlink { target: "y".into() }), None)
        .unwrap();
    w.add(
        entry(
            "y",
            Kind::Hardlink {
                target: "a/b/c".into(),
            },
        ),
        None,
    )
    .unwrap();
    w.add(
        entry("gone/x", Kind::File { size: 1 }),
        Some(&mut &b"x"[..]),
    )
    .unwrap();
    w.remove(Path::new("gone")).unwrap();
    let info = w
        .commit("cfg", Some(b"{\"Env\":[\"A=1\"]}".to_vec()))
        .unwrap();
    assert_eq!(info.name, "cfg:latest");
    assert_eq!(
        store.image_config("cfg").unwrap().unwrap(),
        b"{\"Env\":[\"A=1\"]}"
    );
    let dest = tmp.path().join("dest");
    store
        .extract("cfg:latest", &dest, &ExtractOptions::default())
        .unwrap();
    assert_eq!(fs::read(dest.join("a/b/c")).unwrap(), b"new");
    assert_eq!(
        fs::metadata(dest.join("z")).unwrap().ino(),
        fs::metadata(dest.join("a/b/c")).unwrap().ino()
    );
    assert!(!dest.join("gone").exists());
    assert_eq!(fs::metadata(dest.join("a")).unwrap().mode() & 0o7777, 0o755);

    // A dropped writer publishes nothing and leaves no chunk behind.
    let before = on_disk(store.dir());
    let mut w = store.writer().unwrap();
    w.add(
        entry("f", Kind::File { size: 0 }),
        Some(&mut &noise(9, 1 << 20)[..]),
    )
    .unwrap();
    drop(w);
    assert_eq!(on_disk(store.dir()), before);
    assert!(matches!(
        store.inspect("f"),
        Err(StoreError::NoSuchImage(_))
    ));
    // Escapes are refused at add().
    let mut w = store.writer().unwrap();
    assert!(w.add(entry("../x", Kind::Dir), None).is_err());
    assert!(
        w.add(
            entry(
                "x",
                Kind::Hardlink {
                    target: "a/../../etc/passwd".into()
                }
            ),
            None
        )
        .is_err()
    );
}

#[test]
fn second_version_adds_only_changed_chunks() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-versions");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("lib")).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("lib/f{i}")), noise(100 + i, 1 << 20)).unwrap();
    }
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let v1 = store
        .import_dir(&src, "app:v1", &ImportOptions::default())
        .unwrap();
    // At least one chunk per file, more if files are bigger than a chunk can be.
    let max = warren::store::chunker::MAX_SIZE as u64;
    assert!(v1.new_chunks >= 8 * (1u64 << 20).div_ceil(max), "{v1:?}");

    // Metadata only: no new chunk.
    fs::set_permissions(src.join("lib/f3"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(src.join("lib/f5"), Some(4242), None).unwrap();
    let meta = store
        .import_dir(&src, "app:meta", &ImportOptions::default())
        .unwrap();
    assert_eq!(meta.new_chunks, 0);

    // One byte changed in the middle of one file: one or two chunks.
    let mut data = fs::read(src.join("lib/f4")).unwrap();
    data[500_000] ^= 0xff;
    fs::write(src.join("lib/f4"), &data).unwrap();
    let v2 = store
        .import_dir(&src, "app:v2", &ImportOptions::default())
        .unwrap();
    assert!((1..=2).contains(&v2.new_chunks), "{v2:?}");
    let (c1, c2) = (chunk_ids(&store, "app:v1"), chunk_ids(&store, "app:v2"));
    assert_eq!(c2.difference(&c1).count() as u64, v2.new_chunks);
    assert!(c1.intersection(&c2).count() >= c1.len() - 2);
    let stats = store.stats().unwrap();
    assert_eq!(stats.images, 3);
    assert_eq!(stats.chunks, c1.union(&c2).count() as u64);
    // A pack per import that added chunks: none for the metadata-only one.
    assert_eq!(stats.packs, 2);
    assert!(stats.dedup_ratio > 2.5, "{stats:?}");
}

#[test]
fn gc_after_rm_removes_exactly_the_orphans() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-gc");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("shared"), noise(1, 2 << 20)).unwrap();
    fs::write(b.join("shared"), noise(1, 2 << 20)).unwrap();
    fs::write(a.join("only-a"), noise(2, 1 << 20)).unwrap();
    fs::write(b.join("only-b"), noise(3, 1 << 20)).unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir).unwrap();
    store
        .import_dir(&a, "a", &ImportOptions::default())
        .unwrap();
    store
        .import_dir(&b, "b", &ImportOptions::default())
        .unwrap();
    let (ca, cb) = (chunk_ids(&store, "a"), chunk_ids(&store, "b"));
    let orphans: BTreeSet<_> = ca.difference(&cb).copied().collect();
    assert!(!orphans.is_empty() && ca.len() > orphans.len());
    let out = ok(warren(&dir).args(["image", "rm", "a"]));
    assert!(out.contains("Removed"));
    let gc: serde_json::Value =
        serde_json::from_str(&ok(warren(&dir).args(["--json", "store", "gc"]))).unwrap();
    assert_eq!(gc["removed_chunks"], orphans.len() as u64);
    assert_eq!(on_disk(&dir), cb);
    ok(warren(&dir).args(["store", "verify"]));
    // a's pack was rewritten without its orphans; a second gc finds nothing to do.
    let packs = || -> BTreeSet<PathBuf> {
        let all = store.chunks().unwrap();
        assert_eq!(
            all.packs().iter().map(|p| p.entries.len()).sum::<usize>(),
            cb.len(),
            "one copy of each chunk"
        );
        all.packs().iter().map(|p| p.path.clone()).collect()
    };
    let after = packs();
    let gc: serde_json::Value =
        serde_json::from_str(&ok(warren(&dir).args(["--json", "store", "gc"]))).unwrap();
    assert_eq!(
        (gc["removed_chunks"].as_u64(), gc["removed_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(packs(), after);
    store
        .extract("b", &tmp.path().join("out"), &ExtractOptions::default())
        .unwrap();
    assert_eq!(
        fs::read(tmp.path().join("out/only-b")).unwrap(),
        noise(3, 1 << 20)
    );
}

#[test]
fn corrupt_or_missing_chunk_fails_extract_by_name_and_verify_finds_it() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-corrupt");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/victim"), noise(5, 600_000)).unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir).unwrap();
    store
        .import_dir(&src, "img", &ImportOptions::default())
        .unwrap();
    let index = store.index("img").unwrap();
    let id = index.chunks[1].id;
    // The image's only pack holds the victim's chunks and nothing else.
    let (path, offset, len) = stored_at(&store, &id);

    for damage in ["flip", "delete"] {
        let original = fs::read(&path).unwrap();
        if damage == "flip" {
            let mid = offset + len as u64 / 2;
            patch(&path, mid, &[original[mid as usize] ^ 0x55]);
        } else {
            fs::remove_file(&path).unwrap();
        }
        let dest = tmp.path().join("dest");
        let out = run(warren(&dir).args(["image", "extract", "img"]).arg(&dest));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        // Without its pack, every chunk of the victim is missing: the first one needed
        // is named.
        let named = match damage {
            "flip" => err.contains(&id.to_string()),
            _ => index.chunks.iter().any(|c| err.contains(&c.id.to_string())),
        };
        assert!(named && err.contains("d/victim"), "{damage}: {err}");
        // Nothing that looks like a tree is left: neither DEST nor a partial.
        assert!(!dest.exists());
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !leftovers
                .iter()
                .any(|n| n.to_string_lossy().contains("partial")),
            "{leftovers:?}"
        );
        let out = run(warren(&dir).args(["store", "verify"]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&format!("BAD chunk {id}")), "{stdout}");
        fs::write(&path, original).unwrap();
        ok(warren(&dir).args(["store", "verify"]));
    }
}

#[test]
fn verify_repair_then_reimport_restores_a_truncated_chunk() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-repair");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/victim"), noise(11, 600_000)).unwrap();
    fs::write(src.join("small"), b"unrelated").unwrap();
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("f"), noise(12, 100_000)).unwrap();
    let dir = tmp.path().join("store");
    ok(warren(&dir)
        .args(["image", "import", "--no-sync", "--name", "img"])
        .arg(&src));
    ok(warren(&dir)
        .args(["image", "import", "--name", "other"])
        .arg(&other));
    let store = Store::open(&dir).unwrap();
    let id = store.index("img").unwrap().chunks[1].id;
    assert!(!chunk_ids(&store, "other").contains(&id));
    // Its second half lost, as a crash before the data reached the disk could leave it.
    let (path, offset, len) = stored_at(&store, &id);
    patch(&path, offset + len as u64 / 2, &vec![0; len - len / 2]);
    let damaged = fs::read(&path).unwrap();

    let out = run(warren(&dir).args(["store", "verify"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("BAD chunk {id}")), "{stdout}");
    assert!(stdout.contains("DAMAGED image img:latest"), "{stdout}");
    assert!(!stdout.contains("DAMAGED image other"), "{stdout}");
    assert!(stdout.contains("verify --repair"), "{stdout}");
    // Plain verify changes nothing.
    assert_eq!(fs::read(&path).unwrap(), damaged);

    let out = run(warren(&dir).args(["store", "verify", "--repair"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("REMOVED chunk {id}")), "{stdout}");
    assert!(stdout.contains("DAMAGED image img:latest"), "{stdout}");
    assert_eq!(
        store.chunks().unwrap().location(&id),
        None,
        "the corrupt chunk is still there"
    );
    let before: BTreeSet<ChunkId> = on_disk(&dir);
    // Only the corrupt chunk went.
    assert!(chunk_ids(&store, "other").is_subset(&before));
    assert_eq!(
        chunk_ids(&store, "img")
            .difference(&before)
            .collect::<Vec<_>>(),
        vec![&id]
    );

    ok(warren(&dir)
        .args(["image", "import", "--name", "img"])
        .arg(&src));
    ok(warren(&dir).args(["store", "verify"]));
    assert_eq!(stored_at(&store, &id).2, len);
    let dest = tmp.path().join("dest");
    ok(warren(&dir).args(["image", "extract", "img"]).arg(&dest));
    assert_eq!(fs::read(dest.join("d/victim")).unwrap(), noise(11, 600_000));
    assert_eq!(fs::read(dest.join("small")).unwrap(), b"unrelated");
    assert_eq!(snapshot(&src), snapshot(&dest));
}

#[test]
fn an_unreadable_pack_is_named_removed_by_repair_and_restored_by_reimport() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-badpack");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, seed) in [(&a, 21), (&b, 22)] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("f"), noise(seed, 700_000)).unwrap();
    }
    let dir = tmp.path().join("store");
    for (name, src) in [("a", &a), ("b", &b)] {
        ok(warren(&dir)
            .args(["image", "import", "--name", name])
            .arg(src));
    }
    let store = Store::open(&dir).unwrap();
    let (pack, ..) = stored_at(&store, chunk_ids(&store, "a").first().unwrap());
    // A machine crash under --no-sync could leave the pack's tail unwritten.
    let len = fs::metadata(&pack).unwrap().len();
    patch(&pack, len - 20, &[0; 20]);

    let dest = tmp.path().join("dest");
    let out = run(warren(&dir).args(["image", "extract", "a"]).arg(&dest));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is missing"), "{err}");
    assert!(!dest.exists());
    let out = run(warren(&dir).args(["store", "verify"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let name = pack.display().to_string();
    assert!(
        stdout.contains(&format!("BAD pack {name}: truncated")),
        "{stdout}"
    );
    assert!(stdout.contains("DAMAGED image a:latest"), "{stdout}");
    assert!(!stdout.contains("DAMAGED image b"), "{stdout}");
    // gc leaves what it cannot read alone; a repair removes it.
    ok(warren(&dir).args(["store", "gc"]));
    assert!(pack.exists());
    let out = run(warren(&dir).args(["store", "verify", "--repair"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("REMOVED pack {name}")), "{stdout}");
    assert!(!pack.exists());
    ok(warren(&dir)
        .args(["image", "import", "--name", "a"])
        .arg(&a));
    ok(warren(&dir).args(["store", "verify"]));
    ok(warren(&dir).args(["image", "extract", "a"]).arg(&dest));
    assert_eq!(snapshot(&a), snapshot(&dest));
}

#[test]
fn truncated_or_garbled_index_is_a_clear_error() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-badindex");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir).unwrap();
    store
        .import_dir(&src, "img:1", &ImportOptions::default())
        .unwrap();
    let idx = store.index_path("img:1").unwrap();
    let data = fs::read(&idx).unwrap();
    fs::write(&idx, &data[..data.len() - 7]).unwrap();
    let out = run(warren(&dir)
        .args(["image", "extract", "img:1"])
        .arg(tmp.path().join("d")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("image img:1") && !err.contains("panicked"),
        "{err}"
    );
    let out = run(warren(&dir).args(["store", "verify"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BAD image img:1"));
    // gc refuses to guess what a broken index references.
    let out = run(warren(&dir).args(["store", "gc"]));
    assert!(!out.status.success());
    assert_eq!(on_disk(&dir).len(), 1);
}

#[test]
fn hostile_index_cannot_write_outside_dest() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    use warren::store::index::{ChunkRef, Index, Record};
    let tmp = scratch("store-hostile");
    let dir = tmp.path().join("store");
    let store = Store::open(&dir).unwrap();
    // A real chunk so the content is there and only the paths are hostile.
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"pwned").unwrap();
    store
        .import_dir(&src, "good", &ImportOptions::default())
        .unwrap();
    let good = store.index("good").unwrap();
    let rec = |path: &str, kind: Kind| Record {
        entry: Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: vec![],
        },
        offset: 0,
    };
    let chunks: Vec<ChunkRef> = good.chunks.clone();
    let evil_paths = [
        "../escaped",
        "/abs-escaped",
        "link/escaped",
        "a/../../escaped",
    ];
    for (i, evil) in evil_paths.iter().enumerate() {
        let index = Index {
            name: format!("evil:{i}"),
            created: 0,
            config: None,
            chunks: chunks.clone(),
            records: vec![
                rec("", Kind::Dir),
                rec(
                    "link",
                    Kind::Symlink {
                        target: "..".into(),
                    },
                ),
                rec(evil, Kind::File { size: 5 }),
            ],
        };
        fs::create_dir_all(dir.join("images/evil")).unwrap();
        fs::write(dir.join(format!("images/evil/{i}.idx")), index.encode()).unwrap();
        let dest = tmp.path().join("inner/dest");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let out = run(warren(&dir)
            .args(["image", "extract", &format!("evil:{i}")])
            .arg(&dest));
        assert!(!out.status.success(), "{evil}: extract succeeded");
        assert!(!tmp.path().join("escaped").exists() && !tmp.path().join("inner/escaped").exists());
        assert!(!Path::new("/abs-escaped").exists());
        assert!(!dest.exists());
    }
}

#[test]
fn killed_imports_leave_a_consistent_store_and_a_rerun_completes() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-kill");
    let src = tmp.path().join("src");
    for d in 0..4 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..30 {
            fs::write(
                src.join(format!("d{d}/f{f}")),
                noise(d * 100 + f, 150_000 + f as usize * 3000),
            )
            .unwrap();
        }
    }
    let dir = tmp.path().join("store");
    // Deterministic "random" moments, from early (store creation) to late (commit).
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 1500);
        let mut child = warren(&dir)
            .args(["image", "import"])
            .arg(&src)
            .args(["--name", "big"])
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        let _ = child.wait();
        if !dir.join("format").exists() {
            continue; // killed before the store existed
        }
        let out = run(warren(&dir).args(["store", "verify"]));
        assert!(
            out.status.success(),
            "round {round} ({delay:?}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    ok(warren(&dir)
        .args(["image", "import"])
        .arg(&src)
        .args(["--name", "big"]));
    ok(warren(&dir).args(["store", "verify"]));
    let gc: serde_json::Value =
        serde_json::from_str(&ok(warren(&dir).args(["--json", "store", "gc"]))).unwrap();
    assert_eq!(gc["removed_chunks"], 0);
    let dest = tmp.path().join("dest");
    ok(warren(&dir).args(["image", "extract", "big"]).arg(&dest));
    assert_eq!(
        fs::read(dest.join("d3/f29")).unwrap(),
        fs::read(src.join("d3/f29")).unwrap()
    );
    // Nothing temporary is left after gc.
    assert_eq!(temp_files(&dir), Vec::<PathBuf>::new());
}

#[test]
fn concurrent_imports_of_one_tree_both_succeed_and_share_chunks() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-concurrent");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for f in 0..10 {
        fs::write(src.join(format!("f{f}")), noise(f, 700_000)).unwrap();
    }
    let dir = tmp.path().join("store");
    Store::open(&dir).unwrap();
    let spawn = |name: &str| {
        warren(&dir)
            .args(["image", "import"])
            .arg(&src)
            .args(["--name", name])
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("one"), spawn("two"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let store = Store::open(&dir).unwrap();
    let (c1, c2) = (chunk_ids(&store, "one"), chunk_ids(&store, "two"));
    assert_eq!(c1, c2);
    assert_eq!(on_disk(&dir), c1);
    ok(warren(&dir).args(["store", "verify"]));
    // Each import may have packed every chunk (neither saw the other's pack): gc keeps
    // one copy of each.
    let gc: serde_json::Value =
        serde_json::from_str(&ok(warren(&dir).args(["--json", "store", "gc"]))).unwrap();
    assert_eq!(gc["removed_chunks"], 0);
    let all = store.chunks().unwrap();
    let copies: usize = all.packs().iter().map(|p| p.entries.len()).sum();
    assert_eq!(copies, c1.len());
    assert_eq!(on_disk(&dir), c1);
    ok(warren(&dir).args(["store", "verify"]));
}

#[test]
fn extract_with_shift_shifts_owners_and_id_xattrs() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    let tmp = scratch("store-shift");
    let src = tmp.path().join("src");
    fixture(&src);
    let dir = tmp.path().join("store");
    ok(warren(&dir)
        .args(["image", "import"])
        .arg(&src)
        .args(["--name", "fx"]));
    let dest = tmp.path().join("dest");
    ok(warren(&dir)
        .args([
            "image", "extract", "fx", "--shift", "0x30000", "--range", "0x10000",
        ])
        .arg(&dest));
    let shift = Shift::new(0x30000, 0x10000).unwrap();
    let (a, b) = (snapshot(&src), snapshot(&dest));
    for (path, m) in &a {
        let got = &b[path];
        assert_eq!(
            (got.uid, got.gid),
            (shift.map(m.uid).unwrap(), shift.map(m.gid).unwrap()),
            "{path:?}"
        );
        assert_eq!(got.mode, m.mode, "{path:?}");
        for (name, value) in &m.xattrs {
            let n = std::str::from_utf8(name).unwrap();
            assert_eq!(
                got.xattrs[name],
                shift_value(n, value, shift).unwrap(),
                "{path:?} {n}"
            );
        }
    }
    // The shifted capability is v3 owned by the block's root; the ACL names shifted ids.
    let cap = &b[Path::new("capped")].xattrs[CAPABILITY.as_bytes()];
    assert_eq!(cap.len(), 24);
    assert_eq!(u32::from_le_bytes(cap[20..24].try_into().unwrap()), 0x30000);
    let acl_value = &b[Path::new("acl")].xattrs[ACL_ACCESS.as_bytes()];
    assert!(
        acl_value
            .windows(4)
            .any(|w| w == (0x30000u32 + 1000).to_le_bytes())
    );
    assert_eq!(b[Path::new("etc/big")].uid, 0x30000 + 1000);
    assert_eq!(b[Path::new("abs")].uid, 0x30000 + 7);
}

/// The walking thread keeps open files queued for the importing thread: under a low fd
/// limit it queues fewer, and a tree of many files still imports whole.
#[test]
fn import_of_many_files_under_a_low_fd_limit() {
    let tmp = scratch("store-fd-limit");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..600u64 {
        fs::write(src.join(format!("f{i:03}")), noise(i, 5000)).unwrap();
    }
    let dir = tmp.path().join("store");
    let warren = bin("warren");
    ok(Command::new("sh")
        .args(["-c", "ulimit -n 48 && exec \"$@\"", "sh"])
        .arg(&warren)
        .arg("--store")
        .arg(&dir)
        .args(["image", "import", "--name", "many"])
        .arg(&src));
    let out = tmp.path().join("out");
    ok(Command::new(&warren)
        .arg("--store")
        .arg(&dir)
        .args(["image", "extract", "many"])
        .arg(&out));
    for i in 0..600u64 {
        assert_eq!(
            fs::read(out.join(format!("f{i:03}"))).unwrap(),
            noise(i, 5000)
        );
    }
}

/// The chunker still sees every zero (the store format has no holes), about 12 s per GiB
/// in a debug build: 512 MiB keeps the test short; the code paths are those of 10 GiB.
const SPARSE_SIZE: u64 = 512 << 20;

/// A sparse file keeps its holes through import and extract: the size and the data are
/// the same on both ends and the extracted file takes a few blocks, not its size. Import
/// hands the holes to the chunker as zeros without reading them (SEEK_DATA), so only the
/// chunker's pass over the zeros costs time.
#[test]
fn sparse_file_round_trips_sparse() {
    if !require_root("imports and extracts trees owned by many ids (chown, device nodes)") {
        return;
    }
    const SIZE: u64 = SPARSE_SIZE;
    let work = scratch("store-sparse");
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let path = src.join("sparse");
    let f = fs::File::create(&path).unwrap();
    f.set_len(SIZE).unwrap();
    let marks: [(u64, &[u8]); 4] = [
        (0, b"head"),
        (SIZE / 2 + 12345, b"middle"),
        (SIZE / 2 + 4096 * 300, &[7u8; 10000]),
        (SIZE - 4, b"tail"),
    ];
    for (at, data) in marks {
        std::os::unix::fs::FileExt::write_all_at(&f, data, at).unwrap();
    }
    drop(f);
    let store = Store::open(&work.path().join("store")).unwrap();
    store
        .import_dir(&src, "sparse", &ImportOptions::default())
        .unwrap();
    let dest = work.path().join("dest");
    store
        .extract("sparse", &dest, &ExtractOptions::default())
        .unwrap();
    let out = dest.join("sparse");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), SIZE);
    let f = fs::File::open(&out).unwrap();
    for (at, data) in marks {
        let mut got = vec![0u8; data.len() + 2];
        let start = at.saturating_sub(1);
        let n = std::os::unix::fs::FileExt::read_at(&f, &mut got, start).unwrap();
        let mut want = vec![0u8; n];
        want[(at - start) as usize..][..data.len()].copy_from_slice(data);
        assert_eq!(got[..n], want[..], "content at {at}");
    }
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes allocated for a sparse file of {SIZE} with 10 KB of data",
        meta.blocks() * 512
    );
}

/// Rootless, an extract that must chown to ids the user does not own says which operation
/// failed on which path, and how to extract instead; the hint it gives works.
#[test]
fn rootless_extract_names_the_chown_that_failed_and_how_to_avoid_it() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let (uid, gid) = common::ensure_rootless_user();
    let work = scratch("store-rootless-extract");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tar = work.path().join("root-owned.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(2);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "etc/owned-by-root", &b"ok"[..])
        .unwrap();
    b.into_inner().unwrap();
    let home = work.path().join("user");
    fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(uid.into()), Some(gid.into())).unwrap();
    let store = home.join("store");
    let user = |args: &[&str]| {
        let mut c = common::as_rootless(&bin("warren"));
        c.arg("--store").arg(&store).args(args);
        c
    };
    ok(&mut user(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "--name",
        "t",
    ]));
    let dest = home.join("out");
    let out = run(&mut user(&[
        "image",
        "extract",
        "t",
        dest.to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "extract as a user chowned to root");
    assert!(
        stderr.contains("chown to 0:0")
            && stderr.contains("Operation not permitted")
            && stderr.contains(&format!("uid {uid} cannot give files to other ids")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("hint: ") && l.contains(&format!("`--shift {uid} --range 1`"))),
        "{stderr}"
    );
    assert!(
        !dest.exists(),
        "a partial tree was left at {}",
        dest.display()
    );
    let shift = uid.to_string();
    ok(&mut user(&[
        "image",
        "extract",
        "t",
        dest.to_str().unwrap(),
        "--shift",
        &shift,
        "--range",
        "1",
    ]));
    let m = fs::metadata(dest.join("etc/owned-by-root")).unwrap();
    assert_eq!(m.uid(), uid);
}
