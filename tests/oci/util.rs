//! Helpers of the OCI tests: image layouts built by umoci, tree snapshots with full
//! metadata, and their comparison.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ok, require_tool};

/// Everything that must survive an import and an extract, for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// None for directories: extractors set them after their children, tools differ.
    pub mtime: Option<(i64, i64)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// BLAKE3 of a file's bytes.
    pub content: Option<String>,
    /// For a file with several links: the smallest path of its inode.
    pub link_group: Option<PathBuf>,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = fs::File::open(path.parent().unwrap_or(Path::new("/"))).expect("open parent");
    let name = path.file_name().expect("file name");
    let fd = std::os::fd::AsFd::as_fd(&dir);
    let mut out = BTreeMap::new();
    for attr in warren::sys::llistxattr_at(fd, name).expect("llistxattr") {
        let value = warren::sys::lgetxattr_at(fd, name, &attr)
            .expect("lgetxattr")
            .unwrap_or_default();
        out.insert(attr.to_string_lossy().into_owned(), value);
    }
    out
}

/// Snapshots the tree under `root` (the root itself as "").
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = m.file_type();
        let mut content = None;
        let kind = if ft.is_dir() {
            for e in fs::read_dir(&path).expect("read_dir") {
                stack.push(rel.join(e.expect("dir entry").file_name()));
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "symlink -> {}",
                fs::read_link(&path).expect("readlink").display()
            )
        } else if ft.is_file() {
            content = Some(
                blake3::hash(&fs::read(&path).expect("read file"))
                    .to_hex()
                    .to_string(),
            );
            if m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            "file".to_string()
        } else {
            use std::os::unix::fs::FileTypeExt;
            let t = if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "socket"
            };
            format!("{t} {}:{}", libc::major(m.rdev()), libc::minor(m.rdev()))
        };
        let mtime = (!ft.is_dir()).then(|| (m.mtime(), m.mtime_nsec()));
        let snap = Snap {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime,
            xattrs: if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattrs(&path)
            },
            content,
            link_group: None,
        };
        out.insert(rel, snap);
    }
    for paths in inodes.values() {
        // Only links inside the tree count (a group of one is a plain file).
        if paths.len() > 1 {
            let first = paths.iter().min().cloned();
            for p in paths {
                if let Some(s) = out.get_mut(p) {
                    s.link_group = first.clone();
                }
            }
        }
    }
    out
}

/// Panics with the differences (up to 30) unless both trees are the same.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = snapshot(expected);
    let b = snapshot(actual);
    let mut diffs = Vec::new();
    for (p, s) in &a {
        match b.get(p) {
            None => diffs.push(format!("missing {}: {s:?}", p.display())),
            Some(t) if t != s => diffs.push(format!(
                "differs {}:\n  expected {s:?}\n  actual   {t:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("unexpected {}: {:?}", p.display(), b[p]));
    }
    assert!(
        diffs.is_empty(),
        "{} vs {}: {} differences\n{}",
        expected.display(),
        actual.display(),
        diffs.len(),
        diffs.into_iter().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(a.len() > 1, "empty tree compared");
}

fn write(path: &Path, data: &[u8], mode: u32, owner: (u32, u32)) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::write(path, data).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1)).expect("chown");
}

fn umoci() -> Command {
    require_tool("umoci", "umoci");
    Command::new("umoci")
}

/// Builds `LAYOUT:t` with umoci: three layers made by `umoci repack` (files, owners,
/// modes, xattrs, a file capability, symlinks, hardlinks, a fifo, a multi-chunk file; then
/// additions and changes; then deletions, so whiteouts) and a fourth, hand-made layer
/// added with `umoci raw add-layer` that carries an opaque-directory marker.
pub fn build_layout(work: &Path) -> PathBuf {
    crate::common::assert_root("build_layout");
    require_tool("setcap", "libcap2-bin");
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let image = format!("{}:t", layout.display());
    ok(umoci().args(["init", "--layout"]).arg(&layout));
    ok(umoci().args(["new", "--image", &image]));
    ok(umoci().args(["unpack", "--image", &image]).arg(&bundle));
    let r = bundle.join("rootfs");

    // Layer 1.
    write(
        &r.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
        (0, 0),
    );
    write(&r.join("etc/shadow"), b"root:*:1::::::\n", 0o640, (0, 42));
    write(
        &r.join("usr/bin/tool"),
        b"#!/bin/sh\necho tool\n",
        0o4755,
        (0, 0),
    );
    ok(Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(r.join("usr/bin/tool")));
    symlink("tool", r.join("usr/bin/sh")).expect("symlink");
    fs::create_dir_all(r.join("usr/lib")).expect("mkdir");
    symlink("usr/lib", r.join("lib")).expect("symlink");
    symlink("/nonexistent/../../etc/shadow", r.join("dangling")).expect("symlink");
    write(
        &r.join("home/user/.profile"),
        b"export X=1\n",
        0o600,
        (1000, 1000),
    );
    fs::set_permissions(r.join("home/user"), fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::lchown(r.join("home/user"), Some(1000), Some(1000)).expect("chown");
    write(&r.join("data/a.txt"), b"shared bytes\n", 0o644, (7, 8));
    fs::hard_link(r.join("data/a.txt"), r.join("data/a-link.txt")).expect("hard link");
    fs::hard_link(r.join("data/a.txt"), r.join("usr/a-elsewhere")).expect("hard link");
    xattr_set(&r.join("data/a.txt"), "user.test", b"hello");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&r.join("data/big.bin"), &big, 0o644, (0, 0));
    write(&r.join("old/x"), b"x", 0o644, (0, 0));
    write(&r.join("old/sub/y"), b"y", 0o644, (0, 0));
    write(&r.join("gone.txt"), b"gone", 0o644, (0, 0));
    write(
        &r.join("opt/lower-only"),
        b"hidden by the opaque layer",
        0o644,
        (0, 0),
    );
    nix::unistd::mkfifo(
        &r.join("run-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .expect("mkfifo");
    ok(umoci().args(["repack", "--image", &image]).arg(&bundle));

    // Layer 2: additions and changes.
    write(
        &r.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        0o644,
        (0, 0),
    );
    write(&r.join("opt/app/bin"), b"\x7fELF pretend", 0o755, (0, 0));
    std::os::unix::fs::lchown(r.join("etc/shadow"), Some(0), Some(0)).expect("chown");
    fs::set_permissions(r.join("old/sub"), fs::Permissions::from_mode(0o750)).expect("chmod");
    ok(umoci().args(["repack", "--image", &image]).arg(&bundle));

    // Layer 3: deletions (whiteouts), including one name of a hardlink group.
    fs::remove_dir_all(r.join("old")).expect("rm old");
    fs::remove_file(r.join("gone.txt")).expect("rm");
    fs::remove_file(r.join("data/a.txt")).expect("rm");
    ok(umoci().args(["repack", "--image", &image]).arg(&bundle));

    // Layer 4: an opaque directory, by hand (umoci writes plain whiteouts).
    let tar_path = work.join("opaque.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).expect("create tar"));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_data(&mut h.clone(), "opt/", std::io::empty())
        .expect("tar");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_data(&mut h.clone(), "opt/.wh..wh..opq", std::io::empty())
        .expect("tar");
    h.set_size(4);
    b.append_data(&mut h, "opt/new", &b"new\n"[..])
        .expect("tar");
    b.into_inner().expect("finish tar");
    ok(umoci()
        .args(["raw", "add-layer", "--image", &image])
        .arg(&tar_path));
    layout
}

pub fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let dir = fs::File::open(path.parent().expect("parent")).expect("open parent");
    let name_c = std::ffi::CString::new(name).expect("xattr name");
    warren::sys::lsetxattr_at(
        std::os::fd::AsFd::as_fd(&dir),
        path.file_name().expect("name"),
        &name_c,
        value,
    )
    .expect("setxattr");
}

/// `umoci unpack` of `image` into `work/NAME`; returns its rootfs.
pub fn umoci_unpack(image: &str, work: &Path, name: &str) -> PathBuf {
    let bundle = work.join(name);
    ok(umoci().args(["unpack", "--image", image]).arg(&bundle));
    bundle.join("rootfs")
}
