//! Rootless containers sharing one image through fuse-overlayfs (issue 20), when the
//! setuid helper is not installed: as the unprivileged user `warren-test`, with an ACL
//! letting it open `/dev/fuse` (0600 root on the test machines) for the test's time.

mod common;

use common::{
    ROOTLESS_SUBIDS, ROOTLESS_USER, bin, ensure_rootless_user, id_tool_calls, logging_id_tools,
    require_root, require_tool, run, scratch,
};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const BLOCK: u32 = 0x10000;
/// The ACL on /dev/fuse is global: one test at a time changes or depends on it.
static DEV_FUSE: Mutex<()> = Mutex::new(());

/// `u:warren-test:rw` on /dev/fuse while it lives.
struct FuseAccess;

impl FuseAccess {
    fn grant() -> FuseAccess {
        require_tool("fuse-overlayfs", "fuse-overlayfs");
        require_tool("setfacl", "acl");
        ensure_rootless_user();
        let acl = format!("u:{ROOTLESS_USER}:rw");
        ok(
            &run(Command::new("setfacl").args(["-m", &acl, "/dev/fuse"])),
            "setfacl",
        );
        FuseAccess
    }
}

impl Drop for FuseAccess {
    fn drop(&mut self) {
        let acl = format!("u:{ROOTLESS_USER}");
        let _ = Command::new("setfacl")
            .args(["-x", &acl, "/dev/fuse"])
            .status();
    }
}

/// A test's scratch dir (the user may traverse it) and state dir.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new(name: &str) -> World {
        let (uid, gid) = ensure_rootless_user();
        let dir = scratch(name);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (sub, mode) in [("state", 0o755), ("xdg", 0o700)] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        World { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self) -> Command {
        let (uid, gid) = ensure_rootless_user();
        let mut cmd = Command::new("setpriv");
        cmd.args([&format!("--reuid={uid}"), &format!("--regid={gid}")])
            .args(["--init-groups", "--"])
            .arg(bin("warren"))
            .env_clear()
            .env("USER", ROOTLESS_USER)
            .env("HOME", format!("/home/{ROOTLESS_USER}"))
            .env("XDG_RUNTIME_DIR", self.path("xdg"))
            .env("WARREN_STATE_DIR", self.path("state"))
            // No warren-mount here (the one cargo built next to warren is not setuid);
            // the world's tools dir first, when a test made one.
            .env(
                "PATH",
                format!(
                    "{}:/usr/bin:/bin:/usr/sbin:/sbin",
                    self.path("tools").display()
                ),
            )
            .current_dir("/");
        cmd
    }

    fn warren(&self, args: &[&str]) -> Output {
        run(self.command().args(args))
    }

    /// The one extracted tree of the image.
    fn tree(&self) -> PathBuf {
        let images = self.path("state/images");
        let key = std::fs::read_dir(&images)
            .unwrap()
            .flatten()
            .find(|e| e.path().join("rootfs").is_dir());
        key.expect("an extracted tree").path().join("rootfs")
    }

    /// Processes whose command line names this world's dir (fuse-overlayfs's does).
    fn processes(&self) -> Vec<String> {
        let mine = self.dir.path().to_str().unwrap().to_string();
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| e.file_name().to_string_lossy() != me)
            .filter_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains(&mine)
                    .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
            })
            .collect()
    }

    fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| Path::new(p).starts_with(self.dir.path()))
            })
            .map(str::to_string)
            .collect()
    }

    fn method(&self, name: &str) -> serde_json::Value {
        let ps: serde_json::Value =
            serde_json::from_str(&ok(&self.warren(&["ps", "--json"]), "ps")).unwrap();
        let me = ps.as_array().unwrap().iter().find(|c| c["name"] == name);
        me.unwrap_or_else(|| panic!("{name} not in {ps}")).clone()
    }
}

impl Drop for World {
    /// Removes whatever containers a failed assertion left (their daemons end with them).
    fn drop(&mut self) {
        if let Ok(ps) =
            serde_json::from_slice::<serde_json::Value>(&self.warren(&["ps", "--json"]).stdout)
        {
            for c in ps.as_array().into_iter().flatten() {
                if let Some(name) = c["name"].as_str() {
                    let _ = self.warren(&["rm", "-f", name]);
                }
            }
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

/// Every entry's metadata and content under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            blake3::hash(&std::fs::read(&p).unwrap())
                .to_hex()
                .to_string()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        let line = format!(
            "{:o} {}:{} {} {}.{} {} {content}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
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

/// A small image: a setuid root binary, a file of user 1000, imported by the user.
fn import_image(w: &World) {
    let tree = w.path("image");
    for d in ["bin", "home/user", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::copy("/usr/bin/busybox", tree.join("bin/suid")).unwrap();
    for applet in [
        "sh", "stat", "cat", "echo", "chown", "chmod", "rm", "touch", "ls", "id", "true", "sleep",
        "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("home/user/notes"), "mine").unwrap();
    std::fs::write(tree.join("etc/motd"), "shared").unwrap();
    let passwd = "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
    std::fs::write(tree.join("etc/passwd"), passwd).unwrap();
    for p in ["home/user/notes", "home/user"] {
        std::os::unix::fs::lchown(tree.join(p), Some(1000), Some(1000)).unwrap();
    }
    let suid = std::fs::Permissions::from_mode(0o4755);
    std::fs::set_permissions(tree.join("bin/suid"), suid).unwrap();
    let out = w.warren(&[
        "image",
        "import",
        "--name",
        "shared",
        tree.to_str().unwrap(),
    ]);
    ok(&out, "import");
}

const SCRIPT: &str = r#"
echo STAT $(stat -c '%u:%g:%a' /bin/suid /home/user/notes /etc/motd)
cat /etc/who 2>/dev/null && echo DIRTY
echo "$NAME" > /etc/who; chown 1000:1000 /etc/who
echo more >> /etc/motd
mkdir /made; rm /home/user/notes
echo AFTER $(stat -c '%u:%g:%a' /etc/motd /etc/who /made) $(cat /etc/who)
"#;

#[test]
fn containers_of_one_image_share_it_through_fuse_overlayfs() {
    if !require_root("sets an ACL on /dev/fuse and runs as an unprivileged user") {
        return;
    }
    let _one = DEV_FUSE.lock().unwrap_or_else(|p| p.into_inner());
    let _acl = FuseAccess::grant();
    let w = World::new("fuse-share");
    std::fs::create_dir(w.path("tools")).unwrap();
    let id_tools = logging_id_tools(&w.path("tools"));
    import_image(&w);
    let out = w.warren(&["run", "--debug", "--rm", "--image", "shared", "--", "true"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("method fuse-overlayfs"),
        "{log}"
    );
    let tree = w.tree();
    let before = snapshot(&tree);
    let image_block = std::fs::metadata(&tree).unwrap().uid();

    // `a` keeps running (its daemon too) while `b` runs beside it.
    let out = w.warren(&[
        "run",
        "-d",
        "--name",
        "a",
        "--image",
        "shared",
        "-e",
        "NAME=a",
        "--",
        "sh",
        "-c",
        &format!("{SCRIPT} sleep 100"),
    ]);
    ok(&out, "run a");
    let out = w.warren(&[
        "run", "--name", "b", "--image", "shared", "-e", "NAME=b", "--", "sh", "-c", SCRIPT,
    ]);
    let text = ok(&out, "run b");
    assert!(
        text.contains("STAT 0:0:4755 1000:1000:644 0:0:644"),
        "{text}"
    );
    assert!(!text.contains("DIRTY"), "b saw a's write: {text}");
    assert!(
        text.contains("AFTER 0:0:644 1000:1000:644 0:0:755 b"),
        "{text}"
    );
    let a = w.method("a");
    assert_eq!(a["method"], "fuse-overlayfs", "{a}");
    let why = a["method_reason"].as_str().unwrap();
    assert!(
        why.contains("is not setuid root") && why.contains("fuse-overlayfs"),
        "{why}"
    );
    assert_eq!(
        w.processes().len(),
        1,
        "one daemon, a's: {:?}",
        w.processes()
    );
    assert!(w.mounts().is_empty(), "a host mount: {:?}", w.mounts());

    // On disk: each container's writes in its own upper dir. What the container made is
    // owned by its block; a copy-up keeps the image block's owner (fuse-overlayfs copies
    // the lower's as is), which the container sees as its own through the mapping.
    for name in ["a", "b"] {
        let block = w.method(name)["ids"]["uids"]["start"].as_u64().unwrap() as u32;
        assert_ne!(block, image_block);
        let upper = w.path(&format!("state/containers/{name}/layer/upper"));
        let who = upper.join("etc/who");
        assert_eq!(std::fs::read_to_string(&who).unwrap().trim(), name);
        let owner = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(&who), (block + 1000, block + 1000), "{name}");
        assert_eq!(owner(&upper.join("made")), (block, block), "{name}");
        assert_eq!(owner(&upper.join("etc/motd")), (image_block, image_block));
        assert_eq!(
            std::fs::read_to_string(upper.join("etc/motd")).unwrap(),
            "sharedmore\n"
        );
        assert!(
            block >= ROOTLESS_SUBIDS.0 && block + BLOCK <= ROOTLESS_SUBIDS.0 + ROOTLESS_SUBIDS.1
        );
    }
    assert_eq!(snapshot(&tree), before, "the shared tree changed");

    for name in ["a", "b"] {
        ok(&w.warren(&["rm", "-f", name]), "rm");
        assert!(!w.path(&format!("state/containers/{name}")).exists());
    }
    assert!(w.processes().is_empty(), "left: {:?}", w.processes());
    assert!(w.mounts().is_empty(), "left: {:?}", w.mounts());
    assert_eq!(snapshot(&tree), before, "the shared tree changed");
    // Every daemon's, helper's and container's namespace was made inside the user's kept
    // one: newuidmap and newgidmap ran once, for it.
    assert_eq!(id_tool_calls(&id_tools), (1, 1));
}

#[test]
fn a_create_killed_midway_leaves_no_daemon_and_what_rm_cleans() {
    if !require_root("sets an ACL on /dev/fuse and runs as an unprivileged user") {
        return;
    }
    let _one = DEV_FUSE.lock().unwrap_or_else(|p| p.into_inner());
    let _acl = FuseAccess::grant();
    let w = World::new("fuse-kill");
    import_image(&w);
    ok(
        &w.warren(&["run", "--rm", "--image", "shared", "--", "true"]),
        "warm-up",
    );
    // Killed once the daemon runs, and at once.
    for (i, wait_for_daemon) in [true, false].into_iter().enumerate() {
        let name = format!("k{i}");
        let mut child = w
            .command()
            .args([
                "run", "-d", "--name", &name, "--image", "shared", "--", "sleep", "100",
            ])
            .spawn()
            .unwrap();
        if wait_for_daemon {
            let pid = w.path(&format!("state/containers/{name}/fuse.pid"));
            for _ in 0..2000 {
                if pid.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(pid.exists(), "the daemon never started");
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = w.warren(&["rm", "-f", &name]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no container"), "rm: {err}");
        }
        assert!(!w.path(&format!("state/containers/{name}")).exists());
        assert!(w.processes().is_empty(), "left: {:?}", w.processes());
    }
    assert_eq!(ok(&w.warren(&["ps", "--json"]), "ps").trim(), "[]");
    assert!(w.mounts().is_empty(), "left: {:?}", w.mounts());
}

#[test]
fn without_dev_fuse_a_container_gets_a_copy_and_says_why() {
    if !require_root("runs as an unprivileged user") {
        return;
    }
    let _one = DEV_FUSE.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new("fuse-none");
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
    let c = w.method("c");
    assert_eq!(c["method"], "copy", "{c}");
    let why = c["method_reason"].as_str().unwrap();
    assert!(why.contains("/dev/fuse is not usable by you"), "{why}");
    ok(&w.warren(&["rm", "c"]), "rm");
}
