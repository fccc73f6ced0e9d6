//! shift-mount end to end, as root, with real mounts: every method gives each container
//! its own owners over one shared LOWER, which stays byte-for-byte and inode-for-inode as
//! it was; remounts walk nothing; `auto` falls back; unmount leaves nothing behind.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use warren::idmap::range::Shift;
use warren::idmap::xattr;

const BLOCK: u32 = 0x10000;
/// A v2 `security.capability` granting cap_net_raw (effective): valid in any namespace.
const CAP_V2_NET_RAW: &str = "0x0100000200200000000000000000000000000000";

/// Everything about one entry that a view must show (shifted) and LOWER must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    nlink: u64,
    /// The first path (in walk order) sharing this entry's inode: hardlink groups.
    link_group: Option<PathBuf>,
}

/// Full metadata and content of every entry under `root`, keyed by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .map(|e| e.expect("dir entry").file_name())
                .collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| rel.join(n)));
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&path)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if ft.is_file() {
            (
                "file",
                fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
        } else if ft.is_char_device() {
            ("char", meta.rdev().to_le_bytes().to_vec())
        } else {
            ("other", Vec::new())
        };
        let (dir, name) = match (path.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_os_string()),
            _ => (path.clone(), OsStr::new(".").to_os_string()),
        };
        let dirf = fs::File::open(&dir).expect("open parent");
        let mut xattrs = BTreeMap::new();
        for attr in warren::sys::llistxattr_at(dirf.as_fd(), &name).expect("listxattr") {
            let value = warren::sys::lgetxattr_at(dirf.as_fd(), &name, &attr)
                .expect("getxattr")
                .unwrap_or_default();
            xattrs.insert(attr.to_string_lossy().into_owned(), value);
        }
        let link_group = (kind == "file" && meta.nlink() > 1).then(|| {
            inodes
                .entry(meta.ino())
                .or_insert_with(|| rel.clone())
                .clone()
        });
        out.insert(
            rel,
            Entry {
                kind,
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
                xattrs,
                nlink: if kind == "dir" { 0 } else { meta.nlink() },
                link_group,
            },
        );
    }
    out
}

/// What `lower` must look like through a view shifted by `shift`.
fn shifted(lower: &BTreeMap<PathBuf, Entry>, shift: Shift) -> BTreeMap<PathBuf, Entry> {
    lower
        .iter()
        .map(|(path, e)| {
            let mut e = e.clone();
            e.uid = shift.map(e.uid).expect("map uid");
            e.gid = shift.map(e.gid).expect("map gid");
            for (name, value) in e.xattrs.iter_mut() {
                *value = xattr::shift_value(name, value, shift).expect("shift xattr");
            }
            (path.clone(), e)
        })
        .collect()
}

/// Asserts that `view` shows `expected`, entry by entry (names the first difference).
fn assert_tree(view: &Path, expected: &BTreeMap<PathBuf, Entry>) {
    let got = snapshot(view);
    for (path, want) in expected {
        let have = got
            .get(path)
            .unwrap_or_else(|| panic!("{} missing under {}", path.display(), view.display()));
        let mut have = have.clone();
        // The root's mtime moves when a container writes there; compare content, not clocks.
        if path.as_os_str().is_empty() || want.kind == "dir" {
            have.mtime = want.mtime;
        }
        assert_eq!(&have, want, "{} under {}", path.display(), view.display());
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "entries under {}",
        view.display()
    );
}

/// Unmounts what a failing test left mounted (declared after the scratch dir, so it runs
/// before the dir is removed).
struct Unmounter(Vec<PathBuf>);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for m in &self.0 {
            while mounted(m) {
                if nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}

fn sh(cmd: &str) {
    ok(Command::new("sh").args(["-c", cmd]));
}

/// A small image: setuid binary with a v2 capability, an ACL (access and default), a
/// hardlink pair, a symlink, files and a directory owned by other ids.
fn fixture(root: &Path) -> PathBuf {
    require_tool("setfacl", "acl");
    require_tool("setfattr", "attr");
    let lower = root.join("lower");
    for d in ["bin", "etc", "data", "home/user", "shared"] {
        fs::create_dir_all(lower.join(d)).expect("mkdir");
    }
    let l = lower.display();
    sh(&format!(
        "set -e; cd {l}
         printf 'ping' > bin/ping; chmod 4755 bin/ping
         setfattr -n security.capability -v {CAP_V2_NET_RAW} bin/ping
         printf 'hello' > etc/file; printf 'keep' > etc/keep
         printf 'linked' > data/a; ln data/a data/b; chmod 644 data/a
         printf 'mine' > home/user/doc; chown -R 1000:1000 home/user; chmod 640 home/user/doc
         setfacl -m u:1001:rw,g:1002:r home/user/doc
         chown 5:42 shared; chmod 2775 shared; setfacl -d -m u:1003:rwx shared
         ln -s ../etc/file bin/link; chown -h 7:8 bin/link
         chmod 755 ."
    ));
    lower
}

fn shift_mount() -> Command {
    Command::new(bin("shift-mount"))
}

/// Mounts with `--oneshot --json` and returns the report.
fn mount(lower: &Path, im: &Path, mnt: &Path, shift: u32, method: &str) -> Value {
    fs::create_dir_all(mnt).expect("mkdir mountpoint");
    let out = ok(shift_mount()
        .args([
            "--oneshot",
            "--json",
            "-s",
            &format!("{shift:#x}"),
            "--method",
            method,
        ])
        .args([lower, im, mnt]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad report {out:?}: {e}"))
}

fn unmount(mnt: &Path) {
    ok(shift_mount().arg("--unmount").arg(mnt));
    assert!(!mounted(mnt), "{} still in mountinfo", mnt.display());
}

fn mounted(path: &Path) -> bool {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == canon)
}

/// As the container's root (the block's first id, no capabilities): writes a file,
/// deletes one, chmods one, appends to one, all through the view.
fn container_writes(view: &Path, root_id: u32) {
    ok(Command::new("setpriv")
        .args([&format!("--reuid={root_id}"), &format!("--regid={root_id}"), "--clear-groups", "--"])
        .args(["sh", "-c", "set -e; cd \"$1\"; printf new > etc/new; rm etc/file; chmod 600 data/a; printf more >> etc/keep", "sh"])
        .arg(view));
}

fn check_method(method: &str) {
    crate::common::assert_root("check_method");
    let dir = scratch(&format!("shift-mount-{method}"));
    let lower = fixture(dir.path());
    let before = snapshot(&lower);
    let _guard = Unmounter(vec![dir.path().join("mnt0"), dir.path().join("mnt1")]);
    let shifts = [0x30000u32, 0x50000];
    let mut views = Vec::new();
    for (i, s) in shifts.iter().enumerate() {
        let (im, mnt) = (
            dir.path().join(format!("im{i}")),
            dir.path().join(format!("mnt{i}")),
        );
        let report = mount(&lower, &im, &mnt, *s, method);
        assert_eq!(report["method"], method, "{report}");
        assert_eq!(report["mounted"], true, "{report}");
        assert!(mounted(&mnt), "{} not mounted", mnt.display());
        views.push((im, mnt, Shift::new(*s, BLOCK).expect("shift")));
    }
    // Each container sees its own owners, setuid bits, capabilities and ACLs.
    for (_, mnt, shift) in &views {
        assert_tree(mnt, &shifted(&before, *shift));
        let cap = snapshot(mnt)[Path::new("bin/ping")].xattrs[xattr::CAPABILITY].clone();
        assert_eq!(
            &cap[20..24],
            &shift.to.to_le_bytes(),
            "v3 rootid of the capability"
        );
    }
    // Each container writes in turn; LOWER and the other container's view do not change.
    for (i, (im, mnt, shift)) in views.iter().enumerate() {
        container_writes(mnt, shift.to);
        assert_eq!(snapshot(&lower), before, "LOWER changed");
        if i == 0 {
            assert_tree(&views[1].1, &shifted(&before, views[1].2));
        }
        let view = snapshot(mnt);
        assert!(
            !view.contains_key(Path::new("etc/file")),
            "deleted file still visible"
        );
        assert_eq!(view[Path::new("data/a")].mode & 0o7777, 0o600);
        assert_eq!(
            view[Path::new("data/b")].mode & 0o7777,
            0o600,
            "hardlink broke on copy-up"
        );
        assert_eq!(view[Path::new("etc/keep")].content, b"keepmore");
        // The writes land in INTERMEDIATE, owned by the container's root.
        let written = if method == "copy" {
            im.join("copy")
        } else {
            im.join("upper")
        };
        let new = fs::symlink_metadata(written.join("etc/new")).expect("new file in INTERMEDIATE");
        assert_eq!((new.uid(), new.gid()), (shift.to, shift.to));
        assert_eq!(fs::read(written.join("etc/new")).expect("read new"), b"new");
        if method != "copy" {
            let wh = fs::symlink_metadata(written.join("etc/file")).expect("whiteout in upper");
            assert!(
                wh.file_type().is_char_device() && wh.rdev() == 0,
                "not a whiteout: {wh:?}"
            );
        }
    }
    for (_, mnt, _) in &views {
        unmount(mnt);
    }
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}

#[test]
fn idmap_views_are_shifted_and_lower_untouched() {
    if !crate::common::require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    check_method("idmap");
}

#[test]
fn metacopy_views_are_shifted_and_lower_untouched() {
    if !crate::common::require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    check_method("metacopy");
}

#[test]
fn copy_views_are_shifted_and_lower_untouched() {
    if !crate::common::require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    check_method("copy");
}

#[test]
fn remount_walks_nothing_and_shift_is_recorded() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-remount");
    let lower = fixture(dir.path());
    let before = snapshot(&lower);
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let _guard = Unmounter(vec![mnt.clone()]);
    for method in ["metacopy", "copy", "idmap"] {
        let im = im.with_extension(method);
        let first = mount(&lower, &im, &mnt, 0x30000, method);
        assert_eq!(first["walked"], method != "idmap", "{first}");
        if method != "idmap" {
            assert!(first["entries_shifted"].as_u64().expect("count") >= before.len() as u64 - 1);
        }
        unmount(&mnt);
        let again = mount(&lower, &im, &mnt, 0x30000, "auto");
        assert_eq!(again["method"], method, "{again}");
        assert_eq!(again["walked"], false, "{again}");
        assert_eq!(again["entries_shifted"], 0, "{again}");
        assert_tree(
            &mnt,
            &shifted(&before, Shift::new(0x30000, BLOCK).expect("shift")),
        );
        unmount(&mnt);
        // Another shift on the same INTERMEDIATE: refused, or re-shifted on request.
        let out = run(shift_mount()
            .args(["--oneshot", "-s", "0x70000", "--method", method])
            .args([&lower, &im, &mnt]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--reshift"), "{err}");
        assert!(!mounted(&mnt));
        let out = ok(shift_mount()
            .args(["--oneshot", "--json", "--reshift", "-s", "0x70000"])
            .args([&lower, &im, &mnt]));
        let re: Value = serde_json::from_str(&out).expect("report");
        assert_eq!(re["method"], method, "{re}");
        assert_tree(
            &mnt,
            &shifted(&before, Shift::new(0x70000, BLOCK).expect("shift")),
        );
        unmount(&mnt);
    }
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}

#[test]
fn auto_picks_idmap_and_falls_back_when_refused() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-auto");
    let lower = fixture(dir.path());
    let before = snapshot(&lower);
    let mnt = dir.path().join("mnt");
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    for (deny, expect, refused) in [
        ("", "idmap", vec![]),
        ("idmap", "metacopy", vec!["idmap"]),
        ("idmap,metacopy", "copy", vec!["idmap", "metacopy"]),
    ] {
        let im = dir.path().join(format!("im-{expect}"));
        let out = ok(shift_mount()
            .env("WARREN_MOUNT_DENY", deny)
            .args(["--oneshot", "--json", "-s", "0x30000"])
            .args([&lower, &im, &mnt]));
        let report: Value = serde_json::from_str(&out).expect("report");
        assert_eq!(report["method"], expect, "{report}");
        let got: Vec<&str> = report["refused"]
            .as_array()
            .expect("refused list")
            .iter()
            .map(|a| a["method"].as_str().expect("method"))
            .collect();
        assert_eq!(got, refused, "{report}");
        assert_tree(
            &mnt,
            &shifted(&before, Shift::new(0x30000, BLOCK).expect("shift")),
        );
        unmount(&mnt);
    }
    // Everything refused: an error naming each method, and nothing mounted.
    let out = run(shift_mount()
        .env("WARREN_MOUNT_DENY", "idmap,metacopy,copy")
        .args(["--oneshot", "-s", "0x30000"])
        .args([&lower, &dir.path().join("im-none"), &mnt]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("idmap") && err.contains("copy"),
        "{err}"
    );
    assert!(!mounted(&mnt));
}

#[test]
fn failure_halfway_leaves_no_mount_and_a_retry_walks_again() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    require_tool("chattr", "e2fsprogs");
    let dir = scratch("shift-mount-fail");
    let lower = fixture(dir.path());
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    // An upper dir of unknown origin (no record) is shifted by a walk through the overlay.
    fs::create_dir_all(im.join("upper")).expect("mkdir upper");
    // An immutable file cannot be re-owned through the overlay: the walk fails midway.
    sh(&format!("chattr +i {}", lower.join("etc/keep").display()));
    let out = run(shift_mount()
        .args(["--oneshot", "-s", "0x30000", "--method", "metacopy"])
        .args([&lower, &im, &mnt]));
    sh(&format!("chattr -i {}", lower.join("etc/keep").display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("etc/keep"), "{err}");
    assert!(!mounted(&mnt), "a failed mount stayed mounted");
    // The record says the walk did not finish, so the next mount walks again.
    let report = mount(&lower, &im, &mnt, 0x30000, "metacopy");
    assert_eq!(report["walked"], true, "{report}");
    assert_tree(
        &mnt,
        &shifted(
            &snapshot(&lower),
            Shift::new(0x30000, BLOCK).expect("shift"),
        ),
    );
    unmount(&mnt);
}

#[test]
fn metacopy_upper_built_halfway_leaves_nothing_and_a_retry_builds_it() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-enospc");
    let lower = fixture(dir.path());
    let before = snapshot(&lower);
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    fs::create_dir_all(&im).expect("mkdir");
    fs::create_dir_all(&mnt).expect("mkdir");
    // INTERMEDIATE on a tmpfs with too few inodes: building the upper dir fails midway.
    sh(&format!(
        "mount -t tmpfs -o nr_inodes=12 warren-test {}",
        im.display()
    ));
    let _guard = Unmounter(vec![mnt.clone(), im.clone()]);
    let out = run(shift_mount()
        .args(["--oneshot", "-s", "0x30000", "--method", "metacopy"])
        .args([&lower, &im, &mnt]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("No space left"),
        "{err}"
    );
    assert!(!mounted(&mnt), "a failed mount stayed mounted");
    let left: Vec<_> = fs::read_dir(&im).expect("read im").collect();
    assert!(left.is_empty(), "a partial upper dir was left: {left:?}");
    // With room, the same INTERMEDIATE builds, mounts and shows the shifted tree.
    sh(&format!(
        "mount -o remount,nr_inodes=10000 {}",
        im.display()
    ));
    let report = mount(&lower, &im, &mnt, 0x30000, "metacopy");
    assert_eq!(report["walked"], true, "{report}");
    assert_tree(
        &mnt,
        &shifted(&before, Shift::new(0x30000, BLOCK).expect("shift")),
    );
    unmount(&mnt);
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}

#[test]
fn foreground_unmounts_on_sigterm() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-fg");
    let lower = fixture(dir.path());
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    let mut child = shift_mount()
        .args(["-s", "0x30000"])
        .args([&lower, &im, &mnt])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn shift-mount");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
    assert!(line.starts_with("Mounted "), "{line:?}");
    assert!(mounted(&mnt));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn library_api_reports_and_unmounts() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-lib");
    let lower = fixture(dir.path());
    let mnt = dir.path().join("mnt");
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    let spec = warren::mount::MountSpec::new(
        vec![lower.clone()],
        dir.path().join("im"),
        mnt.clone(),
        Shift::new(0x30000, BLOCK).expect("shift"),
    );
    let report = warren::mount::mount(&spec).expect("mount");
    assert_eq!(report.method, warren::mount::Method::Idmap);
    assert!(!report.walked);
    assert!(matches!(
        warren::mount::mount(&spec),
        Err(warren::mount::MountError::AlreadyMounted { .. })
    ));
    // A view in use stays mounted, and the error names it; released, it unmounts.
    let open = fs::File::open(mnt.join("etc")).expect("open a directory in the view");
    match warren::mount::unmount(&mnt) {
        Err(e @ warren::mount::MountError::Unmount { .. }) => {
            assert!(e.to_string().contains(&mnt.display().to_string()), "{e}")
        }
        other => panic!("a busy view: {other:?}"),
    }
    assert!(mounted(&mnt));
    drop(open);
    warren::mount::unmount(&mnt).expect("unmount");
    assert!(!mounted(&mnt));
    assert!(matches!(
        warren::mount::unmount(&mnt),
        Err(warren::mount::MountError::NotMounted { .. })
    ));
}

#[test]
fn rootless_copy_is_shifted_into_subordinate_ids() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let (uid, _) = ensure_rootless_user();
    // The user's own subordinate block, whatever /etc/subuid gives it.
    let subuid = fs::read_to_string("/etc/subuid").expect("/etc/subuid");
    let start: u32 = subuid
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{ROOTLESS_USER}:")))
        .and_then(|rest| rest.split(':').next())
        .and_then(|s| s.parse().ok())
        .expect("subuid line for the test user");
    let dir = scratch("shift-mount-rootless");
    let lower = fixture(dir.path());
    // The test user must be able to read the image, as any image user would.
    sh(&format!(
        "chmod -R a+rX {} && chmod 755 {}",
        lower.display(),
        dir.path().display()
    ));
    let before = snapshot(&lower);
    let work = dir.path().join("user");
    fs::create_dir_all(work.join("mnt")).expect("mkdir");
    nix::unistd::chown(&work, Some(uid.into()), None).expect("chown");
    let out = ok(as_rootless(&bin("shift-mount"))
        .args(["--oneshot", "--json", "-s", &start.to_string()])
        .arg(&lower)
        .args([work.join("im"), work.join("mnt")]));
    let report: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["method"], "copy", "{report}");
    assert_eq!(report["mounted"], false, "{report}");
    let view = work.join("im/copy");
    assert_eq!(report["view"], view.to_str().expect("utf-8"));
    assert!(!mounted(&work.join("mnt")));
    assert_tree(
        &view,
        &shifted(&before, Shift::new(start, BLOCK).expect("shift")),
    );
    assert_eq!(snapshot(&lower), before, "LOWER changed");
    // Mounting again finds the record: no copy.
    let out = ok(as_rootless(&bin("shift-mount"))
        .args(["--oneshot", "--json", "-s", &start.to_string()])
        .arg(&lower)
        .args([work.join("im"), work.join("mnt")]));
    let again: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(again["walked"], false, "{again}");
}

#[test]
fn several_lower_layers_merge_top_most_first() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-layers");
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    sh(&format!(
        "set -e; mkdir -p {t}/d {b}/d; cd {b}; printf bottom > d/f; printf only > d/g; printf gone > x
         chown 3:4 d/g; cd {t}; printf top > d/f; mknod x c 0 0",
        t = top.display(),
        b = bottom.display()
    ));
    let (tb, bb) = (snapshot(&top), snapshot(&bottom));
    let lowers = format!("{}:{}", top.display(), bottom.display());
    let mnt = dir.path().join("mnt");
    let _guard = Unmounter(vec![mnt.clone()]);
    for method in ["idmap", "metacopy", "copy"] {
        fs::create_dir_all(&mnt).expect("mkdir");
        let out = ok(shift_mount()
            .args([
                "--oneshot",
                "--json",
                "-s",
                "0x30000",
                "--method",
                method,
                &lowers,
            ])
            .args([dir.path().join(format!("im-{method}")), mnt.clone()]));
        let report: Value = serde_json::from_str(&out).expect("report");
        assert_eq!(report["method"], method, "{report}");
        let view = snapshot(&mnt);
        let names: Vec<_> = view.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["", "d", "d/f", "d/g"], "{method}");
        assert_eq!(view[Path::new("d/f")].content, b"top", "{method}");
        let g = &view[Path::new("d/g")];
        assert_eq!(
            (g.uid, g.gid, g.content.as_slice()),
            (0x30003, 0x30004, &b"only"[..])
        );
        unmount(&mnt);
    }
    assert_eq!(
        (snapshot(&top), snapshot(&bottom)),
        (tb, bb),
        "a lower layer changed"
    );
}

/// The start of the rootless test user's subordinate block, as /etc/subuid gives it.
fn rootless_start() -> u32 {
    let subuid = fs::read_to_string("/etc/subuid").expect("/etc/subuid");
    subuid
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{ROOTLESS_USER}:")))
        .and_then(|rest| rest.split(':').next())
        .and_then(|s| s.parse().ok())
        .expect("subuid line for the test user")
}

/// As the rootless test user: a copy of `lowers` (top-most first) under `dir/user`;
/// returns the shift-mount output and the view.
fn rootless_layers(dir: &Path, lowers: &[&Path]) -> (std::process::Output, PathBuf) {
    let (uid, _) = ensure_rootless_user();
    let start = rootless_start();
    // The test user must be able to read the image, as any image user would.
    for lower in lowers {
        sh(&format!("chmod -R a+rX {}", lower.display()));
    }
    sh(&format!("chmod 755 {}", dir.display()));
    let work = dir.join("user");
    fs::create_dir_all(work.join("mnt")).expect("mkdir");
    nix::unistd::chown(&work, Some(uid.into()), None).expect("chown");
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let out = run(as_rootless(&bin("shift-mount"))
        .args(["--oneshot", "--json", "-s", &start.to_string()])
        .arg(lowers.join(":"))
        .args([work.join("im"), work.join("mnt")]));
    (out, work.join("im/copy"))
}

#[test]
fn rootless_layers_replaced_by_symlink_or_file_take_nothing_from_below() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    require_tool("setfattr", "attr");
    let (uid, gid) = ensure_rootless_user();
    let dir = scratch("shift-mount-rootless-replaced");
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    // A file of the user's own, outside any layer: the copy must never touch it.
    let victim = dir.path().join("victim");
    fs::write(&victim, b"secret").expect("write victim");
    nix::unistd::chown(&victim, Some(uid.into()), Some(gid.into())).expect("chown victim");
    sh(&format!("chmod 600 {}", victim.display()));
    sh(&format!(
        "set -e; mkdir -p {t} {b}; cd {b}
         printf lower > a; chmod 666 a; chown 3:4 a
         printf lower > f; chmod 644 f; setfattr -n user.leak -v below f
         cd {t}; ln -s {v} a; printf upper > f; chmod 664 f; chown 5:6 f",
        t = top.display(),
        b = bottom.display(),
        v = victim.display()
    ));
    let (tb, bb) = (snapshot(&top), snapshot(&bottom));
    let (out, view) = rootless_layers(dir.path(), &[&top, &bottom]);
    assert!(out.status.success(), "shift-mount failed: {out:?}");
    let v = fs::symlink_metadata(&victim).expect("victim");
    assert_eq!(
        (v.mode() & 0o7777, v.uid(), v.gid()),
        (0o600, uid, gid),
        "the copy changed a file outside the tree through a symlink"
    );
    assert_eq!(fs::read(&victim).expect("read victim"), b"secret");
    // The view is exactly the top layer, shifted: nothing of the replaced lower entries.
    assert_tree(
        &view,
        &shifted(&tb, Shift::new(rootless_start(), BLOCK).expect("shift")),
    );
    assert!(
        !snapshot(&view)[Path::new("f")]
            .xattrs
            .contains_key("user.leak"),
        "a lower layer's xattr leaked onto its replacement"
    );
    assert_eq!(
        (snapshot(&top), snapshot(&bottom)),
        (tb, bb),
        "a layer changed"
    );
}

#[test]
fn rootless_layers_dir_replaced_by_file() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let dir = scratch("shift-mount-rootless-dir");
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    sh(&format!(
        "set -e; mkdir -p {t} {b}/d/sub; cd {b}; printf x > d/x; printf y > d/sub/y; chown -R 7:8 d
         cd {t}; printf file > d; chmod 664 d; chown 9:10 d",
        t = top.display(),
        b = bottom.display()
    ));
    let tb = snapshot(&top);
    let (out, view) = rootless_layers(dir.path(), &[&top, &bottom]);
    assert!(out.status.success(), "shift-mount failed: {out:?}");
    assert_tree(
        &view,
        &shifted(&tb, Shift::new(rootless_start(), BLOCK).expect("shift")),
    );
}

/// A shift-mount that must fail, nothing mounted; returns its stderr.
fn refused(lower: &Path, im: &Path, mnt: &Path) -> String {
    let out = run(shift_mount()
        .args(["--oneshot", "-s", "0x30000"])
        .args([lower, im, mnt]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "mounted {lower:?} {im:?} {mnt:?}: {err}"
    );
    assert!(!mounted(mnt), "{} mounted after: {err}", mnt.display());
    err
}

#[test]
fn overlapping_directories_are_refused() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-overlap");
    let other = scratch("shift-mount-overlap-other");
    let lower = fixture(dir.path());
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    fs::create_dir_all(&mnt).expect("mkdir");
    fs::create_dir_all(im.join("sub")).expect("mkdir");
    let alias = dir.path().join("alias");
    fs::create_dir_all(&alias).expect("mkdir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&lower, &link).expect("symlink");
    let _guard = Unmounter(vec![
        mnt.clone(),
        alias.clone(),
        lower.clone(),
        im.join("sub"),
    ]);
    let before = snapshot(&lower);
    let etc = lower.join("etc");
    let far_mnt = other.path().join("mnt");
    let far_im = other.path().join("im");
    fs::create_dir_all(&far_mnt).expect("mkdir");
    let d = dir.path().to_path_buf();
    let same = "is the same directory as";
    // (INTERMEDIATE, MOUNTPOINT, the error names: relation, "ROLE path" twice); LOWER is `lower`.
    let named = |role: &str, p: &Path| format!("{role} {}", p.display());
    let cases: Vec<(PathBuf, PathBuf, &str, [String; 2])> = vec![
        (
            lower.clone(),
            mnt.clone(),
            same,
            [named("LOWER", &lower), named("INTERMEDIATE", &lower)],
        ),
        (
            lower.join("im"),
            mnt.clone(),
            "is inside",
            [
                named("INTERMEDIATE", &lower.join("im")),
                named("LOWER", &lower),
            ],
        ),
        (
            d.clone(),
            far_mnt.clone(),
            "is inside",
            [named("LOWER", &lower), named("INTERMEDIATE", &d)],
        ),
        (
            im.clone(),
            lower.clone(),
            same,
            [named("LOWER", &lower), named("MOUNTPOINT", &lower)],
        ),
        (
            im.clone(),
            etc.clone(),
            "is inside",
            [named("MOUNTPOINT", &etc), named("LOWER", &lower)],
        ),
        (
            far_im.clone(),
            d.clone(),
            "is inside",
            [named("LOWER", &lower), named("MOUNTPOINT", &d)],
        ),
        (
            mnt.clone(),
            mnt.clone(),
            same,
            [named("INTERMEDIATE", &mnt), named("MOUNTPOINT", &mnt)],
        ),
        (
            mnt.join("im"),
            mnt.clone(),
            "is inside",
            [
                named("INTERMEDIATE", &mnt.join("im")),
                named("MOUNTPOINT", &mnt),
            ],
        ),
        (
            im.clone(),
            im.join("sub"),
            "is inside",
            [
                named("MOUNTPOINT", &im.join("sub")),
                named("INTERMEDIATE", &im),
            ],
        ),
        // Through a symlink: compared after canonicalising.
        (
            link.join("im"),
            mnt.clone(),
            "is inside",
            [
                named("INTERMEDIATE", &lower.join("im")),
                named("LOWER", &lower),
            ],
        ),
    ];
    for (i, m, relation, names) in cases {
        let err = refused(&lower, &i, &m);
        assert!(
            err.contains(relation) && names.iter().all(|n| err.contains(n.as_str())),
            "INTERMEDIATE {i:?} MOUNTPOINT {m:?}: want {relation:?} and {names:?}, got {err}"
        );
        if relation == "is inside" {
            // The inner one is named first.
            assert!(
                err.contains(&format!("{} {relation} {}", names[0], names[1])),
                "{err}"
            );
        }
    }
    // Through a bind mount: the alias is LOWER/etc under another path, so an INTERMEDIATE
    // in it would put the writes in LOWER; a MOUNTPOINT on it is the same directory.
    sh(&format!(
        "mount --bind {} {}",
        etc.display(),
        alias.display()
    ));
    let err = refused(&lower, &alias.join("im"), &mnt);
    assert!(
        err.contains(&format!(
            "INTERMEDIATE {} is inside LOWER",
            alias.join("im").display()
        )),
        "{err}"
    );
    let out = run(shift_mount()
        .args(["--oneshot", "-s", "0x30000"])
        .args([&etc, &im, &alias]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "LOWER {} is the same directory as MOUNTPOINT {}",
                etc.display(),
                alias.display()
            )),
        "{err}"
    );
    sh(&format!("umount {}", alias.display()));
    assert!(
        !lower.join("im").exists(),
        "INTERMEDIATE created inside LOWER"
    );
    assert!(
        !etc.join("im").exists(),
        "INTERMEDIATE created inside LOWER"
    );
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}

/// `--unmount` of MOUNTPOINT must fail naming it as no view, and leave it mounted.
fn unmount_refused(mnt: &Path) {
    let out = run(shift_mount().arg("--unmount").arg(mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a view mounted by shift-mount"),
        "{err}"
    );
    assert!(err.contains(&mnt.display().to_string()), "{err}");
    assert!(mounted(mnt), "{} was unmounted: {err}", mnt.display());
}

#[test]
fn unmount_refuses_mounts_it_did_not_make() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-foreign");
    let lower = fixture(dir.path());
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let (tmp, bind) = (dir.path().join("tmpfs"), dir.path().join("bind"));
    for d in [&mnt, &tmp, &bind] {
        fs::create_dir_all(d).expect("mkdir");
    }
    let _guard = Unmounter(vec![mnt.clone(), tmp.clone(), bind.clone()]);
    sh(&format!("mount -t tmpfs warren-foreign {}", tmp.display()));
    unmount_refused(&tmp);
    sh(&format!(
        "mount --bind {} {}",
        lower.display(),
        bind.display()
    ));
    unmount_refused(&bind);
    // A view with a foreign mount stacked on top: the top one is not the view.
    mount(&lower, &im, &mnt, 0x30000, "copy");
    sh(&format!("mount -t tmpfs warren-over {}", mnt.display()));
    unmount_refused(&mnt);
    sh(&format!("umount {}", mnt.display()));
    unmount(&mnt);
    for m in [&tmp, &bind] {
        assert!(mounted(m));
        sh(&format!("umount {}", m.display()));
    }
}

/// Reads `state` from INTERMEDIATE's record.
fn record_state(im: &Path) -> String {
    let text = fs::read_to_string(im.join("shift-mount.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn reshift_killed_midway_is_cleaned_by_unmount_and_redone_by_remount() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    let dir = scratch("shift-mount-reshift-kill");
    let lower = fixture(dir.path());
    // Enough entries that the walk through the overlay lasts a while.
    sh(&format!(
        "set -e; mkdir {l}/many; cd {l}/many; for d in $(seq 40); do mkdir $d; (cd $d; touch $(seq 400)); done",
        l = lower.display()
    ));
    let before = snapshot(&lower);
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    mount(&lower, &im, &mnt, 0x30000, "metacopy");
    unmount(&mnt);
    // Re-shift and SIGKILL it once the record says the walk started.
    let mut caught = None;
    for shift in [0x50000u32, 0x70000, 0x90000, 0xb0000, 0xd0000] {
        let mut child = shift_mount()
            .args(["--oneshot", "--reshift", "-s", &format!("{shift:#x}")])
            .args([&lower, &im, &mnt])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shift-mount");
        let killed = loop {
            if record_state(&im) == "shifting" && mounted(&mnt) {
                let _ = child.kill();
                break true;
            }
            if child.try_wait().expect("wait").is_some() {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        let status = child.wait().expect("wait");
        if killed && !status.success() {
            caught = Some(shift);
            break;
        }
        // The walk finished first: take the view down and try again.
        if mounted(&mnt) {
            unmount(&mnt);
        }
    }
    let shift = caught.expect("never caught the re-shift midway: make the tree bigger");
    // What the crash left: the view mounted, the record `shifting`.
    assert!(mounted(&mnt));
    assert_eq!(record_state(&im), "shifting");
    // A mount on top of it is refused with the way out; --unmount takes it down.
    let out = run(shift_mount()
        .args(["--oneshot", "-s", &format!("{shift:#x}")])
        .args([&lower, &im, &mnt]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--unmount"), "{err}");
    unmount(&mnt);
    // The record says the walk did not finish: the next mount walks again, to the end.
    let report = mount(&lower, &im, &mnt, shift, "auto");
    assert_eq!(report["walked"], true, "{report}");
    assert_eq!(record_state(&im), "shifted");
    assert_tree(
        &mnt,
        &shifted(&before, Shift::new(shift, BLOCK).expect("shift")),
    );
    unmount(&mnt);
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}

#[test]
fn idmap_reshift_failing_midway_is_walked_again() {
    if !require_root("mounts overlays, idmapped mounts and shifted copies") {
        return;
    }
    require_tool("chattr", "e2fsprogs");
    let dir = scratch("shift-mount-reshift-fail");
    let lower = fixture(dir.path());
    let before = snapshot(&lower);
    let (im, mnt) = (dir.path().join("im"), dir.path().join("mnt"));
    let _guard = Unmounter(vec![mnt.clone()]);
    fs::create_dir_all(&mnt).expect("mkdir");
    mount(&lower, &im, &mnt, 0x30000, "idmap");
    container_writes(&mnt, 0x30000);
    let with_writes = snapshot(&mnt);
    unmount(&mnt);
    // A file the container wrote cannot be re-owned: the re-shift fails midway.
    let stuck = im.join("upper/etc/keep");
    sh(&format!("chattr +i {}", stuck.display()));
    let out = run(shift_mount()
        .args(["--oneshot", "--reshift", "-s", "0x70000"])
        .args([&lower, &im, &mnt]));
    sh(&format!("chattr -i {}", stuck.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("etc/keep"), "{err}");
    assert!(!mounted(&mnt), "a failed re-shift stayed mounted");
    // The upper dir is half re-owned: the record must not claim the old shift is whole.
    assert_eq!(record_state(&im), "shifting");
    let out = run(shift_mount()
        .args(["--oneshot", "-s", "0x30000"])
        .args([&lower, &im, &mnt]));
    assert!(
        !out.status.success(),
        "mounted a half re-shifted upper dir as 0x30000"
    );
    assert!(!mounted(&mnt));
    let report = mount(&lower, &im, &mnt, 0x70000, "auto");
    assert_eq!(report["walked"], true, "{report}");
    // A shift maps ids modulo the block: the 0x30000 view shifted to 0x70000.
    assert_tree(
        &mnt,
        &shifted(&with_writes, Shift::new(0x70000, BLOCK).expect("shift")),
    );
    unmount(&mnt);
    assert_eq!(snapshot(&lower), before, "LOWER changed");
}
