//! shift-own on real files, as root: full metadata before and after, round trips,
//! races, mounts and failures.

mod common;

use common::{bin, ok, require_root, require_tool, run, scratch};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

const S: u32 = 0x30000;

/// Everything about one entry that shifting may touch or must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    rdev: u64,
    size: u64,
    blocks: u64,
    ino: u64,
    nlink: u64,
    ctime: (i64, i64),
    xattrs: BTreeMap<String, Vec<u8>>,
    /// Content hash for files, target for symlinks.
    content: String,
}

fn xattrs_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let parent = File::open(path.parent().expect("entry has a parent")).expect("open parent");
    let name = path.file_name().unwrap_or(OsStr::new("."));
    let mut out = BTreeMap::new();
    for attr in warren::sys::llistxattr_at(parent.as_fd(), name).expect("llistxattr") {
        let value = warren::sys::lgetxattr_at(parent.as_fd(), name, &attr)
            .expect("lgetxattr")
            .unwrap_or_default();
        out.insert(attr.to_string_lossy().into_owned(), value);
    }
    out
}

fn meta_of(path: &Path) -> Meta {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
    let content = if m.file_type().is_symlink() {
        fs::read_link(path).expect("readlink").display().to_string()
    } else if m.is_file() {
        hex::encode(Sha256::digest(fs::read(path).expect("read file")))
    } else {
        String::new()
    };
    Meta {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        rdev: m.rdev(),
        size: m.size(),
        blocks: m.blocks(),
        ino: m.ino(),
        nlink: m.nlink(),
        ctime: (m.ctime(), m.ctime_nsec()),
        xattrs: xattrs_of(path),
        content,
    }
}

/// Metadata of every entry under `root` (root included, as ""), never following symlinks.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Meta> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Meta>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let path = e.expect("dir entry").path();
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                meta_of(&path),
            );
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    out.insert(PathBuf::new(), meta_of(root));
    walk(root, root, &mut out);
    out
}

fn shift_own(args: &[&str], path: &Path) -> std::process::Output {
    run(Command::new(bin("shift-own")).args(args).arg(path))
}

fn json_report(args: &[&str], path: &Path) -> serde_json::Value {
    let out = shift_own(&[args, &["--json"]].concat(), path);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    v[0].clone()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
}

fn set_xattr(path: &Path, attr: &str, value: &[u8]) {
    let parent = File::open(path.parent().unwrap()).unwrap();
    let attr = std::ffi::CString::new(attr).unwrap();
    warren::sys::lsetxattr_at(parent.as_fd(), path.file_name().unwrap(), &attr, value)
        .unwrap_or_else(|e| panic!("setxattr {attr:?} on {path:?}: {e}"));
}

/// A v2 capability: cap_net_raw (13) and cap_net_bind_service (10) permitted, effective.
fn cap_v2() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    v.extend_from_slice(&((1u32 << 13) | (1 << 10)).to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

/// A v3 capability (cap_chown permitted) owned by namespace root `rootid`.
fn cap_v3(rootid: u32) -> Vec<u8> {
    let mut v = 0x0300_0000u32.to_le_bytes().to_vec();
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v.extend_from_slice(&rootid.to_le_bytes());
    v
}

/// (tag, id) of every entry of an ACL xattr value.
fn acl_entries(value: &[u8]) -> Vec<(u16, u32)> {
    value[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

/// The fixture: every kind of entry and every id-carrying attribute, ids in block 0.
fn build_fixture(root: &Path, outside: &Path) {
    require_tool("setfacl", "acl");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("secret"), "outside").unwrap();
    fs::write(outside.join("sub/deep"), "outside").unwrap();

    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc/skel")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::create_dir_all(root.join("shared")).unwrap();
    let file = |rel: &str, mode: u32, uid: u32, gid: u32, data: &[u8]| {
        let p = root.join(rel);
        fs::write(&p, data).unwrap();
        chown(&p, uid, gid);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    file("bin/su", 0o4755, 0, 0, b"\x7fELF su");
    file("bin/wall", 0o2755, 0, 5, b"\x7fELF wall");
    file("bin/both", 0o6750, 1000, 1000, b"\x7fELF both");
    let ping = file("bin/ping", 0o755, 0, 0, b"\x7fELF ping");
    set_xattr(&ping, "security.capability", &cap_v2());
    let nsbin = file("bin/nsbin", 0o750, 0, 1000, b"\x7fELF nsbin");
    set_xattr(&nsbin, "security.capability", &cap_v3(1000));
    let user = file("etc/notes", 0o640, 1000, 100, b"user xattrs stay");
    set_xattr(&user, "user.comment", b"keep me");
    let acl = file("etc/acl", 0o640, 0, 0, b"acl");
    ok(Command::new("setfacl")
        .args(["-m", "u:1000:rw,g:50:r,u:0:r"])
        .arg(&acl));
    ok(Command::new("setfacl")
        .args(["-m", "u:1000:rwx,d:u:2000:rx,d:g:3000:rwx"])
        .arg(root.join("etc/skel")));
    fs::set_permissions(root.join("etc/skel"), fs::Permissions::from_mode(0o2775)).unwrap();
    chown(&root.join("etc/skel"), 0, 50);

    // One inode, three names, carrying a capability: shifted exactly once.
    let linked = file("bin/linked", 0o4755, 0, 0, b"\x7fELF linked");
    set_xattr(&linked, "security.capability", &cap_v2());
    fs::hard_link(&linked, root.join("shared/linked2")).unwrap();
    fs::hard_link(&linked, root.join("etc/linked3")).unwrap();

    symlink(outside.join("secret"), root.join("etc/to-outside")).unwrap();
    symlink(outside, root.join("outside-dir")).unwrap();
    symlink("../bin/su", root.join("shared/su")).unwrap();
    std::os::unix::fs::lchown(root.join("shared/su"), Some(7), Some(7)).unwrap();
    symlink("dangling-target", root.join("dangling")).unwrap();

    nix::unistd::mkfifo(
        &root.join("dev/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    chown(&root.join("dev/fifo"), 33, 33);
    drop(std::os::unix::net::UnixListener::bind(root.join("dev/sock")).unwrap());
    let mknod = |rel: &str, kind, major, minor| {
        nix::sys::stat::mknod(
            &root.join(rel),
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap();
    };
    mknod("dev/null", nix::sys::stat::SFlag::S_IFCHR, 1, 3);
    mknod("dev/loop9", nix::sys::stat::SFlag::S_IFBLK, 7, 9);
    chown(&root.join("dev/loop9"), 0, 6);

    // Sparse: 16 MiB with data only at the start and the end.
    let mut sparse = File::create(root.join("etc/sparse")).unwrap();
    sparse.write_all(b"head").unwrap();
    sparse.seek(SeekFrom::Start(16 << 20)).unwrap();
    sparse.write_all(b"tail").unwrap();
    drop(sparse);
    chown(&root.join("etc/sparse"), 65534, 65534);
    chown(root, 0, 0);
}

/// `orig` with owners shifted; xattrs and ctime are checked separately.
fn shifted_view(orig: &BTreeMap<PathBuf, Meta>, to: u32) -> BTreeMap<PathBuf, Meta> {
    orig.iter()
        .map(|(p, m)| {
            let mut m = m.clone();
            m.uid = to + m.uid % 0x10000;
            m.gid = to + m.gid % 0x10000;
            m.xattrs.clear();
            m.ctime = (0, 0);
            (p.clone(), m)
        })
        .collect()
}

fn without_xattrs_and_ctime(snap: &BTreeMap<PathBuf, Meta>) -> BTreeMap<PathBuf, Meta> {
    shifted_view(snap, 0)
        .into_iter()
        .map(|(p, mut m)| {
            let orig = &snap[&p];
            m.uid = orig.uid;
            m.gid = orig.gid;
            (p, m)
        })
        .collect()
}

#[test]
fn round_trip_keeps_every_attribute() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-fixture");
    let root = tmp.path().join("tree");
    let outside = tmp.path().join("outside");
    build_fixture(&root, &outside);
    let orig = snapshot(&root);
    let outside_before = snapshot(&outside);

    // Dry run: a report of what would change, nothing changed.
    let dry = json_report(&["-s", "0x30000", "--dry-run"], &root);
    assert_eq!(
        dry["shifted"].as_u64(),
        Some(orig.len() as u64 - 2),
        "{dry}"
    );
    assert_eq!(snapshot(&root), orig, "--dry-run changed something");

    let out = shift_own(&["-s", "0x30000", "-v"], &root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Piped: no progress bar, nothing on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "0:0 -> 196608:196608 .. {}",
            root.join("bin/su").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "{} files under {} shifted with 0x30000 using range 0x10000\n",
            orig.len(),
            root.display()
        )),
        "{stdout}"
    );
    // The hardlinked inode is reported (and shifted) under one of its names only.
    let linked = stdout
        .lines()
        .filter(|l| l.ends_with("/bin/linked") || l.ends_with("linked2") || l.ends_with("linked3"))
        .count();
    assert_eq!(linked, 1, "{stdout}");

    let after = snapshot(&root);
    assert_eq!(without_xattrs_and_ctime(&after), shifted_view(&orig, S));
    let x = |rel: &str, attr: &str| after[Path::new(rel)].xattrs.get(attr).cloned();
    let mut v3_root = cap_v3(S);
    v3_root[4..20].copy_from_slice(&cap_v2()[4..20]);
    v3_root[0] = 0x01; // keeps the effective flag
    assert_eq!(x("bin/ping", "security.capability"), Some(v3_root.clone()));
    assert_eq!(x("bin/linked", "security.capability"), Some(v3_root));
    assert_eq!(
        x("bin/nsbin", "security.capability"),
        Some(cap_v3(S + 1000))
    );
    assert_eq!(x("etc/notes", "user.comment"), Some(b"keep me".to_vec()));
    let acl = acl_entries(&x("etc/acl", "system.posix_acl_access").expect("access ACL kept"));
    assert!(
        acl.contains(&(0x02, S + 1000)) && acl.contains(&(0x08, S + 50)),
        "{acl:x?}"
    );
    assert!(acl.contains(&(0x02, S)), "{acl:x?}");
    let dacl = acl_entries(&x("etc/skel", "system.posix_acl_default").expect("default ACL"));
    assert!(
        dacl.contains(&(0x02, S + 2000)) && dacl.contains(&(0x08, S + 3000)),
        "{dacl:x?}"
    );
    let skel = acl_entries(&x("etc/skel", "system.posix_acl_access").expect("dir access ACL"));
    assert!(skel.contains(&(0x02, S + 1000)), "{skel:x?}");
    // Nothing else gained or lost an xattr.
    for (p, m) in &orig {
        let keys = |m: &Meta| m.xattrs.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&after[p]), keys(m), "xattr names of {p:?}");
    }
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "something outside the tree changed"
    );

    // Idempotent: a second run changes nothing, not even a ctime.
    let again = json_report(&["-s", "0x30000"], &root);
    assert_eq!(again["shifted"].as_u64(), Some(0), "{again}");
    assert_eq!(again["entries"].as_u64(), Some(orig.len() as u64));
    assert_eq!(snapshot(&root), after, "second run touched entries");

    // -s 0 restores the original exactly (v3 caps with rootid 0 read back as v2). One
    // thread this time: the sequential walk must do the same.
    let out = shift_own(&["-j", "1"], &root);
    assert!(out.status.success(), "{out:?}");
    let back = snapshot(&root);
    assert_eq!(
        without_xattrs_and_ctime(&back),
        without_xattrs_and_ctime(&orig)
    );
    for (p, m) in &orig {
        assert_eq!(
            back[p].xattrs, m.xattrs,
            "xattrs of {p:?} after the round trip"
        );
    }
    assert_eq!(snapshot(&outside), outside_before);
}

#[test]
fn ids_from_every_block_land_in_the_target_block() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-blocks");
    let root = tmp.path();
    let ids = [
        (0, 0),
        (0x10005, 0x20007),
        (0x7fff_ffff, 0x12345),
        (0xfffe_0001, 65535),
    ];
    for (i, (uid, gid)) in ids.iter().enumerate() {
        let p = root.join(format!("f{i}"));
        fs::write(&p, "x").unwrap();
        chown(&p, *uid, *gid);
    }
    let out = shift_own(&["-s", "0x50000", "-r", "0x10000"], root);
    assert!(out.status.success(), "{out:?}");
    for (i, (uid, gid)) in ids.iter().enumerate() {
        let m = fs::symlink_metadata(root.join(format!("f{i}"))).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (0x50000 + uid % 0x10000, 0x50000 + gid % 0x10000)
        );
    }
    // A shift past the highest id is refused before anything is touched.
    let out = shift_own(&["-s", "0xffff0000", "-r", "0x10000"], root);
    assert!(!out.status.success());
    assert_eq!(
        fs::symlink_metadata(root.join("f0")).unwrap().uid(),
        0x50000
    );
}

/// Clears the immutable flag even when the test fails.
struct Immutable(PathBuf);
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn unchangeable_entries_are_reported_and_fail_the_run() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    require_tool("chattr", "e2fsprogs");
    let tmp = scratch("shift-own-immutable");
    let root = tmp.path().join("t");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/locked"), "x").unwrap();
    fs::write(root.join("d/free"), "y").unwrap();
    ok(Command::new("chattr").arg("+i").arg(root.join("d/locked")));
    let _guard = Immutable(root.join("d/locked"));

    let out = shift_own(&["-s", "0x30000"], &root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains(&format!("{}: chown", root.join("d/locked").display())),
        "{stderr}"
    );
    assert!(stderr.contains("3 shifted, 1 failed"), "{stderr}");
    let uid = |rel: &str| fs::symlink_metadata(root.join(rel)).unwrap().uid();
    assert_eq!(
        (uid("d/locked"), uid("d/free"), uid("d"), uid("")),
        (0, S, S, S)
    );

    let report = json_report(&["-s", "0x30000"], &root);
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(
        failures[0]["path"],
        root.join("d/locked").display().to_string()
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_never_leads_outside() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-race");
    let root = tmp.path().join("t");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    for i in 0..50 {
        fs::write(outside.join(format!("o{i}")), "o").unwrap();
        fs::write(outside.join(format!("sub/o{i}")), "o").unwrap();
    }
    fs::create_dir_all(root.join("x/inner")).unwrap();
    for i in 0..200 {
        fs::write(root.join(format!("x/f{i}")), "f").unwrap();
        fs::write(root.join(format!("x/inner/f{i}")), "f").unwrap();
    }
    symlink(&outside, root.join("y")).unwrap();
    symlink(outside.join("sub"), root.join("x/inner/z")).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (x, y, inner, z) = (
            root.join("x"),
            root.join("y"),
            root.join("x/inner"),
            root.join("x/inner/z"),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (a, b) in [(&x, &y), (&inner, &z)] {
                    // Either may currently sit in the other's place: exchange works both ways.
                    let _ = nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        a.as_path(),
                        nix::fcntl::AT_FDCWD,
                        b.as_path(),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                    swaps += 1;
                }
            }
            swaps
        })
    };
    for round in 0..60 {
        let s = if round % 2 == 0 { "0x30000" } else { "0" };
        let threads = if round % 4 < 2 { "1" } else { "2" };
        // Failures (entries that changed under the walk) are allowed; escaping is not.
        let out = shift_own(&["-s", s, "-j", threads], &root);
        assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 100, "the swapper did not run");
    for e in walkdir(&outside) {
        let m = fs::symlink_metadata(&e).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (0, 0),
            "{e:?} outside the tree was re-owned"
        );
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Unmounts even when the test fails.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn other_filesystems_are_left_alone_unless_asked() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-mounts");
    let root = tmp.path().join("t");
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(root.join("file"), "f").unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .expect("mount tmpfs");
    let _guard = Mounted(mnt.clone());
    fs::write(mnt.join("inside"), "i").unwrap();

    let report = json_report(&["-s", "0x30000"], &root);
    assert_eq!(
        report["skipped_mounts"][0],
        mnt.display().to_string(),
        "{report}"
    );
    let uid = |p: &Path| fs::symlink_metadata(p).unwrap().uid();
    assert_eq!(
        (uid(&root.join("file")), uid(&mnt), uid(&mnt.join("inside"))),
        (S, 0, 0)
    );

    let out = shift_own(&["-s", "0x30000", "--cross-mounts"], &root);
    assert!(out.status.success(), "{out:?}");
    assert_eq!((uid(&mnt), uid(&mnt.join("inside"))), (S, S));
}

#[test]
fn vanished_paths_and_bad_ranges_are_clear_errors() {
    let out = shift_own(&["-s", "0x30000"], Path::new("/nonexistent/warren-shift"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/warren-shift"));
    let out = shift_own(&["-r", "0"], Path::new("/tmp"));
    assert!(!out.status.success());
}

#[test]
fn the_library_reports_progress_and_counts_without_printing() {
    use warren::idmap::Shift;
    use warren::idmap::shift::{ShiftOptions, shift_tree};
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-lib");
    for d in 0..4 {
        let dir = tmp.path().join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..150 {
            fs::write(dir.join(format!("f{f}")), "x").unwrap();
        }
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |n: u64| seen.lock().unwrap().push(n);
    let mut opts = ShiftOptions::new(Shift::new(S, 0x10000).unwrap());
    opts.threads = 2;
    let report = shift_tree(tmp.path(), &opts, Some(&progress)).expect("shift");
    assert_eq!((report.entries, report.shifted), (605, 605));
    assert!(report.changes.is_empty() && report.failures.is_empty());
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&605), "{seen:?}");
    assert!(seen.len() >= 3, "progress was reported only {seen:?}");

    opts.shift = Shift::default();
    opts.dry_run = true;
    opts.record_changes = true;
    let report = shift_tree(tmp.path(), &opts, None).expect("dry run");
    assert_eq!(report.changes.len(), 605);
    assert_eq!(report.changes[0].from, (S, S));
    assert_eq!(fs::symlink_metadata(tmp.path()).unwrap().uid(), S);
}

#[test]
fn a_wide_tree_is_walked_within_a_small_fd_limit() {
    if !require_root("re-owns trees to other users' ids (chown)") {
        return;
    }
    let tmp = scratch("shift-own-wide");
    for i in 0..2000 {
        let sub = tmp.path().join(format!("d{i}/sub"));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("f"), "f").unwrap();
    }
    for threads in ["2", "1"] {
        // `ulimit -n` in sh lowers the hard limit too, so shift-own cannot raise it.
        let script = format!(
            "ulimit -n 64 && exec {} -j {threads} -s 0x30000 {}",
            bin("shift-own").display(),
            tmp.path().display()
        );
        let out = run(Command::new("sh").args(["-c", &script]));
        assert!(out.status.success(), "-j {threads}: {out:?}");
        assert_eq!(
            fs::symlink_metadata(tmp.path().join("d1999/sub/f"))
                .unwrap()
                .uid(),
            S
        );
        ok(Command::new(bin("shift-own")).arg(tmp.path()));
    }
}
