//! Escape probes: see main.rs. Escapes 5 and 6 of issue 14: a host user reaching the
//! trees and the store warren keeps. An image holds a setuid-root binary, a 0666 char
//! device (1:3, a copy of /dev/null) and a 0600 secret; with a container running from it,
//! another unprivileged host user walks the state dir, the run dir and the store and
//! must find nothing it can enter, read, run or open, by any path.

use crate::common::*;
use crate::rootfs::busybox_rootfs;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The second unprivileged user (no subordinate ids): the attacker in the rootless probe.
const OTHER_USER: &str = "warren-test-other";

/// Creates (once) [`OTHER_USER`] and returns its (uid, gid).
fn ensure_other_user() -> (u32, u32) {
    crate::common::ensure_user(OTHER_USER)
}

/// `program` run as `uid:gid` with no supplementary groups and a clean environment.
/// Through a shell: setpriv keeps root's capabilities until its own execve, which would
/// find `program` where the user could not.
fn as_user(uid: u32, gid: u32, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--",
        "/bin/sh",
        "-c",
        "exec \"$0\" \"$@\"",
        program,
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .current_dir("/");
    cmd
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A tarball (made as root, so it keeps uid 0, the setuid bit and the device node) of
/// a busybox image with `/bin/suid` (a static setuid-root program printing its euid),
/// `/root/secret` (0600) and, with `device`, `/opt/null` (char 1:3, 0666).
fn hostile_image(dir: &Path, device: bool) -> PathBuf {
    require_tool("gcc", "gcc libc6-dev");
    require_tool("tar", "tar");
    let root = dir.join("image");
    busybox_rootfs(&root);
    let src = dir.join("suid.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"euid=%u\\n\", (unsigned)geteuid()); return 0; }\n",
    )
    .unwrap();
    let suid = root.join("bin/suid");
    ok(Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&suid)
        .arg(&src));
    nix::unistd::chown(&suid, Some(0.into()), Some(0.into())).unwrap();
    chmod(&suid, 0o4755);
    std::fs::write(root.join("root/secret"), "the image's secret\n").unwrap();
    chmod(&root.join("root/secret"), 0o600);
    chmod(&root.join("root"), 0o700);
    if device {
        std::fs::create_dir_all(root.join("opt")).unwrap();
        let dev = root.join("opt/null");
        nix::sys::stat::mknod(
            &dev,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .expect("mknod");
        chmod(&dev, 0o666);
    }
    let tar = dir.join("image.tar");
    ok(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    chmod(&tar, 0o644);
    tar
}

/// Every path under `top` (`top` included), listed as root without following symlinks.
fn all_paths(top: &Path) -> Vec<PathBuf> {
    let mut out = vec![top.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap_or_else(|e| panic!("list {}: {e}", p.display()))
                .map(|e| e.expect("dir entry").path())
                .collect();
            children.sort();
            out.extend(children);
        }
    }
    out
}

/// What the attacker `uid:gid` can do under `tops`: the walk (`find`) must stop at each
/// top, and no path under one (listed by root) may be stat'ed, read, written, run or
/// opened. `expected_stops` are the dirs the walk may see but not enter.
fn probe_tree(uid: u32, gid: u32, tops: &[&Path], expected_stops: &[PathBuf], work: &Path) {
    // The walk: what `find` sees, and where it is refused.
    for top in tops {
        let out = run(as_user(uid, gid, "find").arg(top));
        let seen: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let refused: BTreeSet<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.split('\'').nth(1))
            .map(str::to_owned)
            .collect();
        let stops: BTreeSet<String> = expected_stops
            .iter()
            .filter(|p| p.starts_with(top))
            .map(|p| p.display().to_string())
            .collect();
        let mut allowed: BTreeSet<String> = stops.clone();
        allowed.insert(top.display().to_string());
        assert_eq!(
            refused,
            stops,
            "the walk of {} must stop exactly at {stops:?}; stderr: {}",
            top.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            seen.is_subset(&allowed),
            "another user sees under {}: {:?}",
            top.display(),
            seen.difference(&allowed).collect::<Vec<_>>()
        );
    }
    // Every path root sees: stat, read, write, search or execute access for the attacker.
    let mut paths = Vec::new();
    for top in tops {
        paths.extend(all_paths(top));
    }
    let list = work.join("paths");
    let text: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list, text).unwrap();
    chmod(&list, 0o644);
    let script = r#"while IFS= read -r p; do
        if [ -e "$p" ] || [ -L "$p" ]; then echo "STAT $p"; fi
        if [ -r "$p" ]; then echo "READ $p"; fi
        if [ -w "$p" ]; then echo "WRITE $p"; fi
        if [ -x "$p" ]; then echo "EXEC $p"; fi
    done < "$1""#;
    let out = ok(as_user(uid, gid, "sh")
        .args(["-c", script, "probe"])
        .arg(&list));
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    for p in tops
        .iter()
        .map(|t| t.to_path_buf())
        .chain(expected_stops.iter().cloned())
    {
        allowed.insert(format!("STAT {}", p.display()));
    }
    let granted: Vec<&str> = out.lines().filter(|l| !allowed.contains(*l)).collect();
    assert!(
        granted.is_empty(),
        "another host user has access to {} paths of {}: {:?}",
        granted.len(),
        paths.len(),
        &granted[..granted.len().min(20)]
    );
    assert!(
        paths.len() > 100,
        "the walk saw too little to mean anything: {paths:?}"
    );
}

/// Tries to read each file in `files` and to run each program in `programs` as the
/// attacker; every attempt must fail.
fn probe_open_exec(uid: u32, gid: u32, files: &[PathBuf], programs: &[PathBuf]) {
    for f in files {
        let out = run(as_user(uid, gid, "head").args(["-c", "64"]).arg(f));
        assert!(
            !out.status.success(),
            "another host user read {}: {:?}",
            f.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for p in programs {
        let out = run(&mut as_user(uid, gid, &p.display().to_string()));
        assert!(
            !out.status.success(),
            "another host user ran {}: {:?}",
            p.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Paths under `tops` whose file name is `name`.
fn named(tops: &[&Path], name: &str) -> Vec<PathBuf> {
    tops.iter()
        .flat_map(|t| all_paths(t))
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

/// The store's packs and loose chunks.
fn store_objects(store: &Path) -> Vec<PathBuf> {
    all_paths(store)
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "pack" || e == "zst" || e == "idx")
        })
        .collect()
}

/// Waits (bounded) until `path` exists as root sees it.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared: the container did not run its command",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container's command: proves it ran, that its root reads its own secret, and
/// whether the image's device node opens inside (it must not: the view is nodev).
const COMMAND: &str = "cat /root/secret > /tmp/secret-copy; \
    if [ -e /opt/null ]; then if cat /opt/null; then echo open; else echo denied; fi > /tmp/dev; fi; \
    echo ran > /tmp/ran; sleep 600";

#[test]
fn a_host_user_reaches_nothing_of_a_rootful_installation() {
    if !require_root("sets up a rootful installation and tries it as a host user") {
        return;
    }
    require_tool("busybox", "busybox-static");
    let (uid, gid) = ensure_rootless_user();
    let work = scratch("escape-perms-rootful");
    chmod(work.path(), 0o755);
    let tar = hostile_image(work.path(), true);
    // A fresh installation (warren creates its dirs) and one an older warren left open
    // (a WARREN_STATE_DIR that exists 0755, with 0755 trees and a 0755 store in it), and
    // each way a view is made (idmapped lowers, metacopy overlay, bind of a copy).
    for (older, deny, method) in [
        (false, "", "idmap"),
        (true, "idmap", "metacopy"),
        (false, "idmap,metacopy", "copy"),
    ] {
        let base = work.path().join(method);
        std::fs::create_dir(&base).unwrap();
        chmod(&base, 0o755);
        let (state, run_root) = (base.join("state"), base.join("run"));
        if older {
            for d in ["images", "containers", "store"] {
                std::fs::create_dir_all(state.join(d)).unwrap();
                chmod(&state.join(d), 0o755);
            }
            chmod(&state, 0o755);
        }
        let warren = || {
            let mut cmd = Command::new(bin("warren"));
            cmd.env("WARREN_STATE_DIR", &state)
                .env("WARREN_MOUNT_DENY", deny)
                .arg("--root")
                .arg(&run_root);
            cmd
        };
        ok(warren()
            .args(["image", "import"])
            .arg(&tar)
            .args(["--name", "hostile"]));
        let name = &format!("perms-{method}");
        ok(warren().args([
            "run", "-d", "--name", name, "--image", "hostile", "--", "sh", "-c", COMMAND,
        ]));
        let cleanup = Cleanup(Box::new(|| {
            let _ = run(warren().args(["rm", "--force", name]));
        }));
        let view = state.join("containers").join(name).join("rootfs");
        wait_for(&view.join("tmp/ran"));
        let (pid, made) = container(&warren, name);
        assert_eq!(made, method, "the view's method");

        // The container works, as root inside; the image's device opens nothing.
        let secret = std::fs::read_to_string(view.join("tmp/secret-copy")).unwrap();
        assert_eq!(secret, "the image's secret\n");
        let dev = std::fs::read_to_string(view.join("tmp/dev")).unwrap();
        assert_eq!(
            dev, "denied\n",
            "the image's 0666 char device opened in the container"
        );
        // Nor through the view on the host, even for root.
        let err = std::fs::File::open(view.join("opt/null")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EACCES),
            "open the device in the view"
        );
        // Setuid still works through the view (its lower layers are nosuid): handed the
        // binary as an fd, an unprivileged process becomes the view's owner of it.
        let owner = std::fs::metadata(view.join("bin/suid")).unwrap().uid();
        let out = ok(Command::new("sh").arg("-c").arg(format!(
            "exec 3<'{}' && exec setpriv --reuid={uid} --regid={gid} --clear-groups \
                 /bin/sh -c 'exec /proc/self/fd/3'",
            view.join("bin/suid").display()
        )));
        assert_eq!(out.trim(), format!("euid={owner}"), "setuid in the view");
        assert_ne!(owner, uid);

        // The attacker: warren-test.
        let tops: Vec<&Path> = vec![&state, &run_root];
        // The walk stops at the top dirs, the older installation's included (tightened).
        let stops_all = vec![state.clone(), run_root.clone()];
        probe_tree(uid, gid, &tops, &stops_all, &base);
        let secrets = named(&tops, "secret");
        let devices = named(&tops, "null");
        let suids = named(&tops, "suid");
        assert!(
            secrets.len() >= 2 && suids.len() >= 2,
            "{secrets:?} {suids:?}"
        );
        let mut files = secrets;
        files.extend(devices);
        files.extend(store_objects(&state.join("store")));
        // Through the container's init too (its root and cwd links).
        for link in ["root", "cwd"] {
            files.push(PathBuf::from(format!("/proc/{pid}/{link}/root/secret")));
            files.push(PathBuf::from(format!("/proc/{pid}/{link}/opt/null")));
        }
        let mut programs = suids;
        for link in ["root", "cwd"] {
            programs.push(PathBuf::from(format!("/proc/{pid}/{link}/bin/suid")));
        }
        probe_open_exec(uid, gid, &files, &programs);
        drop(cleanup);
    }
}

#[test]
fn another_user_reaches_nothing_of_a_rootless_installation() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let (uid, gid) = ensure_rootless_user();
    let (other_uid, other_gid) = ensure_other_user();
    require_tool("busybox", "busybox-static");
    let work = scratch("escape-perms-rootless");
    chmod(work.path(), 0o755);
    // Rootless extraction cannot make device nodes: this image has none.
    let tar = hostile_image(work.path(), false);
    let base = work.path().join("home");
    std::fs::create_dir(&base).unwrap();
    chmod(&base, 0o755);
    nix::unistd::chown(&base, Some(uid.into()), Some(gid.into())).unwrap();
    let (state, xdg_run) = (base.join("state"), base.join("xdg-run"));
    std::fs::create_dir(&xdg_run).unwrap();
    chmod(&xdg_run, 0o755);
    nix::unistd::chown(&xdg_run, Some(uid.into()), Some(gid.into())).unwrap();
    let run_root = xdg_run.join("warren");
    let warren = || {
        let mut cmd = as_rootless(&bin("warren"));
        cmd.env("WARREN_STATE_DIR", &state)
            .env("XDG_RUNTIME_DIR", &xdg_run);
        cmd
    };
    ok(warren()
        .args(["image", "import"])
        .arg(&tar)
        .args(["--name", "hostile"]));
    let name = "perms-rootless";
    ok(warren().args([
        "run", "-d", "--name", name, "--image", "hostile", "--", "sh", "-c", COMMAND,
    ]));
    let cleanup = Cleanup(Box::new(|| {
        let _ = run(warren().args(["rm", "--force", name]));
    }));
    let view = state.join("containers").join(name).join("rootfs");
    wait_for(&view.join("tmp/ran"));
    let secret = std::fs::read_to_string(view.join("tmp/secret-copy")).unwrap();
    assert_eq!(secret, "the image's secret\n");

    let tops: Vec<&Path> = vec![&state, &run_root];
    probe_tree(
        other_uid,
        other_gid,
        &tops,
        &[state.clone(), run_root.clone()],
        work.path(),
    );
    let secrets = named(&tops, "secret");
    let suids = named(&tops, "suid");
    assert!(
        !secrets.is_empty() && !suids.is_empty(),
        "{secrets:?} {suids:?}"
    );
    let mut files = secrets;
    files.extend(store_objects(&state.join("store")));
    let (pid, _) = container(&warren, name);
    files.push(PathBuf::from(format!("/proc/{pid}/root/root/secret")));
    let mut programs = suids;
    programs.push(PathBuf::from(format!("/proc/{pid}/root/bin/suid")));
    probe_open_exec(other_uid, other_gid, &files, &programs);
    drop(cleanup);
}

#[test]
fn a_pushed_store_is_published_and_the_store_stays_private() {
    if !require_root("sets up a rootful installation and tries it as a host user") {
        return;
    }
    let (uid, gid) = ensure_rootless_user();
    let work = scratch("escape-perms-push");
    chmod(work.path(), 0o755);
    let tar = hostile_image(work.path(), false);
    let store = work.path().join("store");
    let served = work.path().join("served");
    let warren = || {
        let mut cmd = Command::new(bin("warren"));
        cmd.arg("--store").arg(&store);
        cmd
    };
    ok(warren()
        .args(["image", "import"])
        .arg(&tar)
        .args(["--name", "hostile"]));
    ok(warren().args(["store", "push"]).arg(&served));
    // The store: nothing of it for another user.
    probe_tree(
        uid,
        gid,
        &[&store],
        std::slice::from_ref(&store),
        work.path(),
    );
    probe_open_exec(uid, gid, &store_objects(&store), &[]);
    // Its packs are the owner's alone, should its root ever be opened up.
    let packs: Vec<PathBuf> = store_objects(&store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    assert!(!packs.is_empty());
    for p in &packs {
        let mode = std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
    }
    // The pushed copy is what a web server (any user) reads: the explicit act.
    let pushed = store_objects(&served);
    assert!(!pushed.is_empty());
    for p in &pushed {
        let out = run(as_user(uid, gid, "head").args(["-c", "1"]).arg(p));
        assert!(
            out.status.success(),
            "a published chunk is unreadable: {}",
            p.display()
        );
    }
    assert!(served.join("published").is_file());
    // Opening it again (as a store) leaves it published.
    ok(Command::new(bin("warren"))
        .arg("--store")
        .arg(&served)
        .args(["image", "ls"]));
    let mode = std::fs::metadata(&served).unwrap().mode() & 0o777;
    assert_eq!(mode & 0o005, 0o005, "served dir mode {mode:o}");
    // An older store, left 0755, is made private when opened.
    chmod(&store, 0o755);
    ok(warren().args(["image", "ls"]));
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
    // Pushing into a private store would publish it: refused.
    let out = run(Command::new(bin("warren"))
        .arg("--store")
        .arg(&served)
        .args(["store", "push"])
        .arg(&store));
    assert!(!out.status.success(), "pushed into a private store");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a private store"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("hint: ") && l.contains("push to a new directory")),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
}

/// The container's init pid and view method, as `warren ps --json` reports them.
fn container(warren: &dyn Fn() -> Command, name: &str) -> (i32, String) {
    let out = ok(warren().args(["ps", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&out).expect("ps --json");
    let c = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {out}"));
    let pid = c["pid"].as_i64().unwrap_or(0);
    assert!(pid > 0, "{name} is not running: {out}");
    (pid as i32, c["method"].as_str().unwrap_or("").to_string())
}

/// Runs its closure when dropped (removes a container even when an assertion fails).
struct Cleanup<'a>(Box<dyn FnMut() + 'a>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        (self.0)();
    }
}
