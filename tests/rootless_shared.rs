//! Rootless containers sharing one image through the setuid-root `warren-mount` (issue
//! 20): each test installs a setuid copy of the helper in its scratch dir (as `make
//! install` does: chown root, chmod 4755) and runs `warren` and the helper as unprivileged
//! users with their own subordinate ranges.

mod common;

use common::{
    bin, ensure_user, id_tool_calls, logging_id_tools, require_root, run, scratch, set_subid_lines,
};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The users of these tests and their ranges (32 blocks each; none another test uses).
const USER: &str = "warren-shared";
const USER_IDS: (u32, u32) = (0x800_0000, 0x20_0000);
const OTHER: &str = "warren-shared2";
const OTHER_IDS: (u32, u32) = (0x840_0000, 0x20_0000);
/// Holds only a line overlapping one of USER's blocks, during one check.
const THIRD: &str = "warren-shared3";
const BLOCK: u32 = 0x10000;

/// A test's world: a scratch dir the user may traverse, its state dir, the helper.
struct World {
    dir: tempfile::TempDir,
    user: &'static str,
    uid: u32,
    gid: u32,
}

impl World {
    fn new(name: &str, user: &'static str, ids: (u32, u32)) -> World {
        let (uid, gid) = ensure_user(user);
        set_subid_lines(user, &[ids]);
        let dir = scratch(name);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = dir.path().join("bin");
        std::fs::create_dir(&b).unwrap();
        std::fs::copy(bin("warren-mount"), b.join("warren-mount")).unwrap();
        std::os::unix::fs::chown(b.join("warren-mount"), Some(0), Some(0)).unwrap();
        std::fs::set_permissions(
            b.join("warren-mount"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
        World {
            dir,
            user,
            uid,
            gid,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn helper(&self) -> PathBuf {
        self.path("bin/warren-mount")
    }

    /// `program` as the world's user, with the helper's dir first in PATH.
    fn as_user(&self, program: &Path) -> Command {
        // The containers' runtime state (XDG_RUNTIME_DIR/warren) is the world's own.
        let runtime = self.path("xdg");
        if !runtime.exists() {
            self.user_dir("xdg", 0o700);
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.gid),
        ])
        .args(["--init-groups", "--"])
        .arg(program)
        .env_clear()
        .env("USER", self.user)
        .env("HOME", format!("/home/{}", self.user))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("WARREN_STATE_DIR", self.path("state"))
        .env(
            "PATH",
            format!(
                "{}:/usr/bin:/bin:/usr/sbin:/sbin",
                self.path("bin").display()
            ),
        )
        .current_dir("/");
        cmd
    }

    fn warren(&self, args: &[&str]) -> Output {
        run(self.as_user(&bin("warren")).args(args))
    }

    fn mount(&self, source: &Path, from: u32, to: u32, target: &Path) -> Output {
        let (from, to) = (from.to_string(), to.to_string());
        run(self
            .as_user(&self.helper())
            .arg("mount")
            .arg(source)
            .args([&from, &to])
            .arg(target))
    }

    fn umount(&self, target: &Path) -> Output {
        run(self.as_user(&self.helper()).arg("umount").arg(target))
    }

    /// A directory owned by the user with `mode` (its missing parents too, 0755).
    fn user_dir(&self, rel: &str, mode: u32) -> PathBuf {
        let mut p = self.dir.path().to_path_buf();
        for c in Path::new(rel).components() {
            p.push(c);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap();
                std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// `state/images/KEY/rootfs` (or `parent/rootfs`) owned by block `block`'s root.
    fn source(&self, parent: &str, block: u32) -> PathBuf {
        let p = self.user_dir(parent, 0o700);
        let rootfs = p.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/file"), "shared").unwrap();
        for e in [rootfs.join("bin/file"), rootfs.join("bin"), rootfs.clone()] {
            std::os::unix::fs::lchown(&e, Some(block), Some(block)).unwrap();
        }
        rootfs
    }

    /// The targets of the helper's records for the user under this world's dir (tests of
    /// one user run at once).
    fn records(&self) -> Vec<String> {
        let dir = format!("/run/warren-mount/{}", self.uid);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mine = self.dir.path().to_str().unwrap().to_string();
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.lines().next().map(str::to_string))
            .filter(|target| target.starts_with(&mine))
            .collect()
    }
}

impl Drop for World {
    /// Unmounts whatever the test left mounted under its dir (a failed assertion midway).
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(self.dir.path()))
            .collect();
        points.reverse();
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, what: &str, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was accepted");
    assert!(err.contains(says), "{what}: expected {says:?} in {err:?}");
}

fn is_mountpoint(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// Every entry's full metadata and content under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else if m.is_file() {
            blake3::hash(&std::fs::read(&p).unwrap())
                .to_hex()
                .to_string()
        } else {
            String::new()
        };
        let xattrs = run(Command::new("getfattr")
            .args(["-h", "-d", "-m", "-"])
            .arg(&p));
        let line = format!(
            "{:o} {}:{} {} {}.{} {}.{} {} {content} {}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.nlink(),
            String::from_utf8_lossy(&xattrs.stdout).replace('\n', ";")
        );
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), line);
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// A small image with a setuid root binary and a file of a non-root user, imported by
/// the world's user.
fn import_image(w: &World) {
    let tree = w.path("image");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("home/user")).unwrap();
    // Mount targets, so that a read-only root needs no overlay to make them.
    for dir in ["etc", "proc", "dev", "sys"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::copy("/usr/bin/busybox", tree.join("bin/suid")).unwrap();
    for applet in [
        "sh", "stat", "cat", "echo", "mount", "umount", "chown", "chmod", "rm", "touch", "ls",
        "id", "true", "sleep", "grep", "sed",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("home/user/notes"), "mine").unwrap();
    std::fs::write(tree.join("etc/motd"), "shared").unwrap();
    let passwd = "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
    std::fs::write(tree.join("etc/passwd"), passwd).unwrap();
    std::os::unix::fs::lchown(tree.join("home/user/notes"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(tree.join("home/user"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        tree.join("bin/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    ok(
        &w.warren(&[
            "image",
            "import",
            "--name",
            "shared",
            tree.to_str().unwrap(),
        ]),
        "import",
    );
}

/// A world with the test image imported, and the user's one tree of it, which the first
/// container extracts.
fn first_run(name: &str) -> (World, PathBuf) {
    let w = World::new(name, USER, USER_IDS);
    import_image(&w);
    ok(
        &w.warren(&["run", "--rm", "--image", "shared", "--", "true"]),
        "first run",
    );
    let tree = std::fs::read_dir(w.path("state/images"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs"))
        .find(|p| p.is_dir())
        .expect("an extracted tree");
    (w, tree)
}

const SCRIPT: &str = r#"
echo MAP $(cat /proc/self/uid_map)
echo STAT $(stat -c '%u:%g:%a' /bin/suid /home/user/notes /etc/motd)
cat /etc/who 2>/dev/null && echo DIRTY
mount -o remount,rw / 2>/dev/null; mount -o remount,rw,bind / 2>/dev/null; umount -l / 2>/dev/null
chown 7:7 /bin/suid /etc/motd; chmod 777 /etc /bin/suid; rm -f /bin/stat /home/user/notes
echo x >> /etc/motd; echo "$NAME" > /etc/who
echo AFTER $(stat -c '%u:%g:%a' /etc/motd /etc/who) $(cat /etc/who)
"#;

#[test]
fn twenty_containers_share_one_tree_and_cannot_change_it() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let (w, tree) = first_run("shared-twenty");
    // A user named in the config is looked up in the image (the shared tree).
    let out = w.warren(&[
        "run", "--rm", "-u", "user", "--image", "shared", "--", "id", "-u",
    ]);
    assert_eq!(ok(&out, "run -u user").trim(), "1000");
    // `--debug` says which method and why.
    let out = w.warren(&["run", "--debug", "--rm", "--image", "shared", "--", "true"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("method helper-idmap"), "{log}");
    let before = snapshot(&tree);
    let mut blocks = Vec::new();
    for i in 0..20 {
        let name = format!("sh{i}");
        let out = w.warren(&[
            "run",
            "--name",
            &name,
            "--image",
            "shared",
            "-e",
            &format!("NAME={name}"),
            "--",
            "sh",
            "-c",
            SCRIPT,
        ]);
        let text = ok(&out, &name);
        let ps = ok(&w.warren(&["ps", "--json"]), "ps");
        let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
        let me = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone();
        assert_eq!(me["method"], "helper-idmap", "{me}");
        let block = me["ids"]["uids"]["start"].as_u64().unwrap() as u32;
        blocks.push(block);
        assert!(text.contains(&format!("MAP 0 {block} 65536")), "{text}");
        assert!(
            text.contains("STAT 0:0:4755 1000:1000:644 0:0:644"),
            "{text}"
        );
        assert!(!text.contains("DIRTY"), "{text}");
        assert!(
            text.contains(&format!("AFTER 7:7:644 0:0:644 {name}")),
            "{text}"
        );
        // The container's writes are in its own upper dir, owned by its block.
        let upper = w.path(&format!("state/containers/{name}/layer/upper"));
        let who = upper.join("etc/who");
        assert_eq!(std::fs::read_to_string(&who).unwrap().trim(), name);
        assert_eq!(std::fs::metadata(&who).unwrap().uid(), block);
    }
    let root_block = std::fs::metadata(&tree).unwrap().uid();
    assert!(
        !blocks.contains(&root_block),
        "the image block is no container's"
    );
    let mut sorted = blocks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "each container its own block: {blocks:?}");
    for b in blocks.iter().chain([&root_block]) {
        assert!(*b >= USER_IDS.0 && b + BLOCK <= USER_IDS.0 + USER_IDS.1);
    }
    assert_eq!(snapshot(&tree), before, "the shared tree changed");
    let notes = tree.join("home/user/notes");
    assert_eq!(std::fs::metadata(&notes).unwrap().uid(), root_block + 1000);
    assert_eq!(
        std::fs::metadata(tree.join("bin/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(w.records().len(), 20);
    for i in 0..20 {
        ok(&w.warren(&["rm", &format!("sh{i}")]), "rm");
        assert!(!w.path(&format!("state/containers/sh{i}")).exists());
    }
    assert!(w.records().is_empty(), "{:?}", w.records());
    assert_eq!(snapshot(&tree), before, "the shared tree changed");
    // gc keeps the tree while its image is in the store, removes it after.
    ok(&w.warren(&["store", "gc"]), "gc");
    assert!(tree.is_dir());
    ok(&w.warren(&["image", "rm", "shared"]), "image rm");
    ok(&w.warren(&["store", "gc"]), "gc");
    assert!(
        !tree.parent().unwrap().exists(),
        "the user's tree was not removed"
    );
}

/// The container's root mount, ids, and what its attempts to write did.
const READ_ONLY_SCRIPT: &str = r#"
echo ROOT $(grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo | sed 's/.* - //')
echo STAT $(stat -c '%u:%g:%a' /bin/suid /home/user/notes /etc/motd)
mount -o remount,rw / 2>/dev/null; mount -o remount,rw,bind / 2>/dev/null; umount -l / 2>/dev/null
chown 7:7 /etc/motd 2>/dev/null || echo NO-CHOWN
echo x >> /etc/motd 2>/dev/null || echo NO-WRITE
touch /etc/new 2>/dev/null || echo NO-CREATE
ls /data >/dev/null 2>&1 && echo DATA || true
"#;

#[test]
fn a_read_only_container_is_rooted_on_the_shared_tree_itself() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let (w, tree) = first_run("shared-ro");
    let data = w.user_dir("data", 0o755);
    let before = snapshot(&tree);
    let volume = format!("{}:/data", data.display());
    for (name, extra, method) in [
        ("ro", vec![], "helper-idmap-readonly"),
        // /data is not in the image: a read-only root has nowhere to make it.
        ("ro-volume", vec!["-v", volume.as_str()], "helper-idmap"),
    ] {
        let mut args = vec!["run", "--name", name, "--read-only", "--image", "shared"];
        args.extend(extra.iter().copied());
        args.extend(["--", "sh", "-c", READ_ONLY_SCRIPT]);
        let text = ok(&w.warren(&args), name);
        let ps = ok(&w.warren(&["ps", "--json"]), "ps");
        let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
        let me = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(me["method"], method, "{me}");
        let overlay = text.contains("overlay");
        assert!(
            text.contains("ROOT ") && !text.contains("ROOT \n"),
            "{text}"
        );
        let layer = w.path(&format!("state/containers/{name}/layer"));
        if method == "helper-idmap-readonly" {
            assert!(!overlay && !layer.exists(), "{text}");
        } else {
            let why = me["method_reason"].as_str().unwrap();
            assert!(why.contains("/data"), "{why}");
            assert!(overlay && text.contains("DATA"), "{text}");
        }
        assert!(
            text.contains("STAT 0:0:4755 1000:1000:644 0:0:644"),
            "{text}"
        );
        for refused in ["NO-CHOWN", "NO-WRITE", "NO-CREATE"] {
            assert!(text.contains(refused), "{refused}: {text}");
        }
        ok(&w.warren(&["rm", name]), "rm");
        assert!(!w.path(&format!("state/containers/{name}")).exists());
    }
    assert_eq!(snapshot(&tree), before, "the shared tree changed");
}

#[test]
fn the_helper_refuses_what_is_not_the_callers() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let w = World::new("shared-refuse", USER, USER_IDS);
    let (a, b) = (USER_IDS.0 + 28 * BLOCK, USER_IDS.0 + 29 * BLOCK);
    let src = w.source("state/images/k1", a);
    let target = w.user_dir("state/c/lower", 0o700);
    // A mount inside the source: never part of what the helper mounts.
    let sub = src.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::lchown(&sub, Some(a), Some(a)).unwrap();
    ok(
        &run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&sub)),
        "tmpfs",
    );
    std::fs::write(sub.join("secret"), "x").unwrap();
    // The baseline the refusals differ from: accepted, read-only, ids in block b.
    let out = w.mount(&src, a, b, &target);
    run(Command::new("umount").arg(&sub));
    ok(&out, "mount");
    assert_eq!(std::fs::metadata(target.join("bin/file")).unwrap().uid(), b);
    assert!(
        !target.join("sub/secret").exists(),
        "a submount of the source came along"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == target.to_str())
        .unwrap();
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    for o in ["ro", "nodev", "idmapped"] {
        assert!(opts.contains(&o), "{o} missing: {line}");
    }
    let out = run(w
        .as_user(Path::new("/usr/bin/touch"))
        .arg(target.join("bin/new")));
    refused(&out, "a write through the mount", "Read-only");
    ok(&w.umount(&target), "umount");
    assert!(!is_mountpoint(&target));

    let outside = 0x100000; // warren-test's block
    refused(
        &w.mount(&src, a, outside, &target),
        "a block outside the ranges",
        "not all yours",
    );
    refused(
        &w.mount(&src, outside, b, &target),
        "a source block outside",
        "not all yours",
    );
    refused(&w.mount(&src, a, a, &target), "the same block", "overlap");
    let host = run(w
        .as_user(&w.helper())
        .args(["mount"])
        .arg(&src)
        .args(["0", &b.to_string()])
        .arg(&target));
    refused(&host, "host root's ids", "block");
    // Another user's line overlapping the caller's block 30.
    let shared_block = USER_IDS.0 + 30 * BLOCK;
    ensure_user(THIRD);
    set_subid_lines(THIRD, &[(shared_block, BLOCK)]);
    let out = w.mount(&src, a, shared_block, &target);
    set_subid_lines(THIRD, &[]);
    refused(&out, "a block another user also holds", "another owner");

    // Sources: unreadable by the caller, through a symlink, outside the image dir, not
    // owned by the source block's root.
    let closed = w.source("state/images/k2", a);
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    refused(
        &w.mount(&closed, a, b, &target),
        "an unreadable source",
        "Permission denied",
    );
    std::os::unix::fs::symlink("k1", w.path("state/images/link")).unwrap();
    let linked = w.path("state/images/link/rootfs");
    refused(
        &w.mount(&linked, a, b, &target),
        "a symlinked source",
        "no symlinks",
    );
    std::os::unix::fs::symlink("state", w.path("statelink")).unwrap();
    let linked = w.path("statelink/images/k1/rootfs");
    refused(
        &w.mount(&linked, a, b, &target),
        "a source under a symlink",
        "no symlinks",
    );
    let elsewhere = w.source("state/other/k3", a);
    refused(
        &w.mount(&elsewhere, a, b, &target),
        "a source outside images/",
        "warren image directory",
    );
    let foreign = w.source("state/images/k4", b);
    refused(
        &w.mount(&foreign, a, b, &target),
        "a source of another block",
        "not by the source block",
    );
    let open_dir = w.source("state/images/k5", a);
    std::fs::set_permissions(
        open_dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    refused(
        &w.mount(&open_dir, a, b, &target),
        "a source in a dir others may write",
        "only you",
    );

    // Targets: not the caller's, through a symlink.
    let roots = w.path("state/c/roots");
    std::fs::create_dir(&roots).unwrap();
    refused(
        &w.mount(&src, a, b, &roots),
        "a target root owns",
        "only you",
    );
    std::os::unix::fs::symlink("lower", w.path("state/c/tlink")).unwrap();
    refused(
        &w.mount(&src, a, b, &w.path("state/c/tlink")),
        "a symlinked target",
        "no symlinks",
    );
    refused(&w.mount(&src, a, b, Path::new("/tmp")), "/tmp", "only you");
    assert!(!is_mountpoint(&target) && !is_mountpoint(&roots) && !is_mountpoint(Path::new("/tmp")));

    assert!(w.records().is_empty(), "{:?}", w.records());
}

#[test]
fn umount_undoes_only_what_the_helper_recorded_for_the_caller() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let w = World::new("shared-umount", USER, USER_IDS);
    let (a, b) = (USER_IDS.0 + 26 * BLOCK, USER_IDS.0 + 27 * BLOCK);
    let src = w.source("state/images/k1", a);
    let target = w.user_dir("state/c/lower", 0o700);
    // umount: only what it recorded for this user.
    refused(
        &w.umount(&target),
        "umount of no mount",
        "no mount of yours",
    );
    run(Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&src)
        .arg(&target));
    assert!(is_mountpoint(&target));
    refused(
        &w.umount(&target),
        "umount of root's mount",
        "no mount of yours",
    );
    assert!(is_mountpoint(&target), "root's mount was removed");
    run(Command::new("umount").arg(&target));
    ok(&w.mount(&src, a, b, &target), "mount");
    let other = World::new("shared-refuse-other", OTHER, OTHER_IDS);
    let out = other.umount(&target);
    assert!(!out.status.success(), "another user unmounted it");
    assert!(is_mountpoint(&target));
    ok(&w.umount(&target), "umount");
    assert!(w.records().is_empty(), "{:?}", w.records());
}

#[test]
fn the_helper_caps_mounts_per_user() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let w = World::new("shared-cap", OTHER, OTHER_IDS);
    let (a, b) = (OTHER_IDS.0, OTHER_IDS.0 + BLOCK);
    let src = w.source("state/images/k", a);
    let target = w.user_dir("state/t", 0o700);
    // 1024 mounts on targets t/0..t/1023, by one shell loop as the user.
    let script = format!(
        "i=0; while [ $i -lt 1024 ]; do mkdir $2/$i; $0 mount $1 {a} {b} $2/$i || exit 1; i=$((i+1)); done",
    );
    let sh = |script: &str| {
        let mut c = w.as_user(Path::new("/bin/sh"));
        c.args(["-c", script])
            .arg(w.helper())
            .arg(&src)
            .arg(&target);
        run(&mut c)
    };
    ok(&sh(&script), "1024 mounts");
    assert_eq!(w.records().len(), 1024);
    let extra = w.user_dir("state/t/extra", 0o755);
    refused(&w.mount(&src, a, b, &extra), "mount 1025", "1024 mounts");
    assert!(!is_mountpoint(&extra));
    let script = "i=0; while [ $i -lt 1024 ]; do $0 umount $2/$i || exit 1; i=$((i+1)); done";
    ok(&sh(script), "1024 umounts");
    assert!(!is_mountpoint(&target.join("0")));
    assert!(w.records().is_empty());
}

#[test]
fn a_create_killed_midway_leaves_what_rm_cleans() {
    if !require_root("installs a setuid helper and runs as unprivileged test users") {
        return;
    }
    let w = World::new("shared-kill", USER, USER_IDS);
    import_image(&w);
    ok(
        &w.warren(&["run", "--rm", "--image", "shared", "--", "true"]),
        "warm-up",
    );
    // Killed once the helper's mount is there, and at once.
    for (i, wait_for_mount) in [true, false, true].into_iter().enumerate() {
        let name = format!("k{i}");
        let mut child = w
            .as_user(&bin("warren"))
            .args([
                "run", "-d", "--name", &name, "--image", "shared", "--", "sleep", "100",
            ])
            .spawn()
            .unwrap();
        let lower = w.path(&format!("state/containers/{name}/lower"));
        if wait_for_mount {
            for _ in 0..2000 {
                if is_mountpoint(&lower) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(is_mountpoint(&lower), "the helper never mounted");
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = w.warren(&["rm", "-f", &name]);
        // Killed before it wrote anything: there is nothing to remove.
        if !out.status.success() {
            refused(&out, "rm of a create killed at once", "no container");
        }
        assert!(!w.path(&format!("state/containers/{name}")).exists());
        assert!(!is_mountpoint(&lower));
    }
    let ps = ok(&w.warren(&["ps", "--json"]), "ps");
    assert_eq!(ps.trim(), "[]");
    assert!(w.records().is_empty(), "{:?}", w.records());
}

#[test]
fn without_the_setuid_helper_a_container_gets_a_copy_and_says_why() {
    if !require_root("runs as an unprivileged test user") {
        return;
    }
    let w = World::new("shared-none", OTHER, OTHER_IDS);
    // Installed, but not setuid root.
    std::fs::set_permissions(w.helper(), std::fs::Permissions::from_mode(0o755)).unwrap();
    import_image(&w);
    let out = w.warren(&[
        "run",
        "--name",
        "c",
        "--image",
        "shared",
        "--",
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(ok(&out, "run").trim(), "shared");
    let ps: serde_json::Value =
        serde_json::from_str(&ok(&w.warren(&["ps", "--json"]), "ps")).unwrap();
    let c = &ps[0];
    assert_eq!(c["method"], "copy", "{c}");
    let why = c["method_reason"].as_str().unwrap();
    assert!(why.contains("is not setuid root"), "{why}");
    assert!(w.records().is_empty());
    ok(&w.warren(&["rm", "c"]), "rm");
}

/// Every helper process and container of a rootless run makes its user namespace inside
/// the user's kept one (`idmap::keeper`): newuidmap and newgidmap run once, for the kept
/// namespace, never per helper or per container; with the kept namespace gone, the next
/// run makes one anew.
#[test]
fn rootless_runs_map_ids_in_the_kept_namespace_not_by_newuidmap_each_time() {
    if !require_root("runs as an unprivileged test user") {
        return;
    }
    let w = World::new("shared-kept", USER, USER_IDS);
    // newuidmap and newgidmap on the user's PATH, logging each call.
    let log = logging_id_tools(&w.path("bin"));
    let calls = || id_tool_calls(&log);
    import_image(&w);
    // The first run: the user's tree extracted, the container's upper dir made, the
    // container run, its layer removed, each by a helper or an init in its own namespace.
    let out = w.warren(&[
        "run",
        "--rm",
        "--image",
        "shared",
        "--",
        "cat",
        "/proc/self/uid_map",
    ]);
    let map: Vec<String> = ok(&out, "first run")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(map[0], "0", "{map:?}");
    assert_eq!(map[2], BLOCK.to_string(), "{map:?}");
    assert_eq!(calls(), (1, 1), "once, for the kept namespace");
    let out = w.warren(&[
        "run",
        "--name",
        "c",
        "--image",
        "shared",
        "--",
        "stat",
        "-c",
        "%u",
        "/etc/motd",
    ]);
    assert_eq!(ok(&out, "run c").trim(), "0");
    ok(&w.warren(&["rm", "c"]), "rm c");
    assert_eq!(calls(), (1, 1), "no more after");
    // Without its pid file the keeper exits; the next run makes a new one, once.
    std::fs::remove_file(w.path("xdg/warren/.userns-keeper")).unwrap();
    ok(
        &w.warren(&["run", "--rm", "--image", "shared", "--", "true"]),
        "run",
    );
    ok(
        &w.warren(&["run", "--rm", "--image", "shared", "--", "true"]),
        "run",
    );
    assert_eq!(calls(), (2, 2));
    assert!(w.records().is_empty());
}
