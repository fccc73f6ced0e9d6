//! The OCI runtime as an unprivileged user: ids mapped from the user's subordinate ranges
//! (all of its lines; newuidmap/newgidmap write them once, for the user's kept namespace,
//! inside which each container's namespace is made); ids those do not hold are an error.
//! And `runtime::Runtime` as a library, rootless, shared by threads: its work on the
//! containers' trees runs in re-executed helpers, never in forks of a multithreaded process.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{
    BIN_DIR_ENV, ROOTLESS_USER, as_rootless, bin, ensure_rootless_user, lo_flags, require_tool,
    run, scratch,
};
use serde_json::json;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren::runtime::{ContainerConfig, Runtime, RuntimeOptions};

/// The test user's first subordinate uid as /etc/subuid has it (useradd may have given it
/// a default range before `ensure_rootless_user` ran).
fn subuid_start() -> u32 {
    // As the user itself (a test run again as it), the lines are already there.
    if nix::unistd::geteuid().is_root() {
        ensure_rootless_user();
    }
    let text = std::fs::read_to_string("/etc/subuid").expect("read /etc/subuid");
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(ROOTLESS_USER))
                .then(|| f.next()?.parse().ok())
                .flatten()
        })
        .expect("the test user has a subuid range")
}

/// A bundle the rootless user can read, with the rootfs owned by its subuid block.
fn rootless_bundle(name: &str, script: &str, maps: serde_json::Value) -> tempfile::TempDir {
    let dir = scratch(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let c = rootless_config(script, maps, false);
    make_bundle(dir.path(), &c);
    dir
}

/// The rootless config running `script`, with a new network namespace when `net`.
fn rootless_config(script: &str, maps: serde_json::Value, net: bool) -> serde_json::Value {
    let mut c = rootfs::config(&["sh", "-c", script]);
    let ns = c["linux"]["namespaces"].as_array_mut().expect("ns");
    ns.push(json!({"type": "user"}));
    if !net {
        ns.retain(|n| n["type"] != "network");
    }
    c["linux"]["uidMappings"] = maps.clone();
    c["linux"]["gidMappings"] = maps;
    c
}

/// Writes the bundle at `dir` (owned by the test user), its rootfs owned by the subuid block.
fn make_bundle(dir: &Path, c: &serde_json::Value) {
    let (uid, gid) = ensure_rootless_user();
    std::fs::create_dir_all(dir).expect("mkdir bundle");
    rootfs::bundle(dir, c);
    rootfs::chown_tree(&dir.join("rootfs"), subuid_start(), subuid_start());
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown bundle");
}

fn warren_as_user(root: &Path) -> std::process::Command {
    let mut c = as_rootless(&bin("warren"));
    c.arg("--root").arg(root);
    c
}

#[test]
fn rootless_run_maps_subordinate_ids() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let dir = rootless_bundle(
        "rootless",
        "cat /proc/self/uid_map; id -u; stat -c %u /bin/busybox; hostname; echo pid=$$; grep CapEff /proc/self/status; touch /tmp/x && echo tmp-ok",
        json!([{"containerID": 0, "hostID": subuid_start(), "size": 65536}]),
    );
    let root = dir.path().join("state");
    let out = run(warren_as_user(&root)
        .args(["run", "-b"])
        .arg(dir.path())
        .arg("rl"));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let first: Vec<&str> = s.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(first, ["0", &subuid_start().to_string(), "65536"], "{s}");
    assert!(s.contains("\n0\n0\nwarren-test\npid=1\n"), "{s}");
    assert!(s.contains("CapEff:\t0000000020000420"), "{s}");
    assert!(s.contains("tmp-ok"), "{s}");
    assert!(!root.join("rl").exists());
}

#[test]
fn rootless_lifecycle() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let dir = rootless_bundle(
        "rootless-life",
        "trap 'exit 0' TERM; while true; do sleep 0.05; done",
        json!([{"containerID": 0, "hostID": subuid_start(), "size": 65536}]),
    );
    let root = dir.path().join("state");
    let w = || warren_as_user(&root);
    let out = run(w()
        .args(["create", "-b"])
        .arg(dir.path())
        .arg("rlc")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()));
    assert!(out.status.success(), "{out:?}");
    let st = run(w().args(["state", "rlc"]));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("\"created\""),
        "{st:?}"
    );
    assert!(run(w().args(["start", "rlc"])).status.success());
    let ex = run(w().args(["exec", "rlc", "--", "cat", "/proc/self/uid_map"]));
    assert!(
        String::from_utf8_lossy(&ex.stdout).contains(&format!(" {} ", subuid_start())),
        "{ex:?}"
    );
    let del = run(w().args(["delete", "-f", "rlc"]));
    assert!(del.status.success(), "{del:?}");
    assert!(!root.join("rlc").exists());
}

#[test]
fn rootless_ids_outside_the_users_ranges_are_an_error() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    // Ids no line of the user holds: an error naming the file and the user's lines, never
    // a narrower mapping than the config asks for.
    ensure_rootless_user();
    let dir = rootless_bundle(
        "rootless-outside",
        "cat /proc/self/uid_map",
        json!([{"containerID": 0, "hostID": 0x700000, "size": 65536}]),
    );
    let root = dir.path().join("state");
    let out = run(warren_as_user(&root)
        .args(["run", "-b"])
        .arg(dir.path())
        .arg("outside"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    let line = format!("`{ROOTLESS_USER}:{}:", subuid_start());
    assert!(err.contains("/etc/subuid") && err.contains(&line), "{err}");
    assert!(err.contains("7340032"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{out:?}");
}

#[test]
fn rootless_own_id_maps_without_helpers() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    // Mapping only the user itself needs no newuidmap: the parent writes the maps.
    let (uid, gid) = ensure_rootless_user();
    let dir = scratch("rootless-own");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = rootless_config(
        "cat /proc/self/uid_map",
        json!([{"containerID": 0, "hostID": uid, "size": 1}]),
        false,
    );
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    make_bundle(dir.path(), &c);
    // The map gives the user itself root: give it the rootfs.
    rootfs::chown_tree(&dir.path().join("rootfs"), uid, gid);
    let root = dir.path().join("state");
    // Several runs: the parent writes the child's map files while the child starts, so a
    // child that hides its /proc files too early (non-dumpable) fails only sometimes.
    for _ in 0..10 {
        let out = run(warren_as_user(&root)
            .args(["run", "-b"])
            .arg(dir.path())
            .arg("own"));
        assert!(out.status.success(), "{out:?}");
        let map: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(map, ["0".to_owned(), uid.to_string(), "1".to_owned()]);
    }
}

#[test]
fn rootless_new_network_namespace_has_loopback_up() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let dir = scratch("rootless-lo");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let c = rootless_config(
        "ip link show lo; ip addr show lo",
        json!([{"containerID": 0, "hostID": subuid_start(), "size": 65536}]),
        true,
    );
    make_bundle(dir.path(), &c);
    let root = dir.path().join("state");
    let out = run(warren_as_user(&root)
        .args(["run", "-b"])
        .arg(dir.path())
        .arg("rlo"));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(lo_flags(&s).iter().any(|f| f == "UP"), "lo is down: {s}");
    assert!(s.contains("inet 127.0.0.1/8"), "{s}");
}

#[test]
fn rootless_run_with_the_rootfs_under_a_private_home() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    // $XDG_DATA_HOME in a 0700 home: the container's root (a subordinate uid) cannot
    // traverse it, the user can.
    let (uid, gid) = ensure_rootless_user();
    let dir = scratch("rootless-home");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).expect("chown home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod home");
    let bundle = home.join("share/bundle");
    std::fs::create_dir_all(&bundle).expect("mkdir bundle");
    std::os::unix::fs::chown(home.join("share"), Some(uid), Some(gid)).expect("chown share");
    let c = rootless_config(
        "id -u; stat -c %u /bin/busybox; touch /tmp/x && echo tmp-ok",
        json!([{"containerID": 0, "hostID": subuid_start(), "size": 65536}]),
        false,
    );
    make_bundle(&bundle, &c);
    let root = home.join("state");
    let out = run(warren_as_user(&root)
        .args(["run", "-b"])
        .arg(&bundle)
        .arg("rlhome"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n0\ntmp-ok\n");
    let meta = std::fs::metadata(&home).expect("stat home");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    assert!(!root.join("rlhome").exists());
}

/// Set (to the test's data directory) in the child that runs a test as the rootless user.
const CHILD_DIR: &str = "WARREN_ROOTLESS_TEST_DIR";

/// Runs test `name` of this binary alone as the rootless user, with `CHILD_DIR` set to a
/// fresh directory it owns. True in the parent (the child passed, or the test is skipped:
/// not root); false in the child.
fn run_as_rootless_user(name: &str) -> bool {
    if std::env::var_os(CHILD_DIR).is_some() {
        return false;
    }
    // Skipped: as if the child had passed.
    if !crate::common::require_root("runs this test again as the rootless test user (setpriv)") {
        return true;
    }
    let (uid, gid) = ensure_rootless_user();
    let data = scratch("rootless-library");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(data.path(), Some(uid), Some(gid)).expect("chown");
    let mut cmd = as_rootless(&std::env::current_exe().expect("test binary"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, data.path());
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        cmd.env(BIN_DIR_ENV, dir);
    }
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} as {ROOTLESS_USER}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn options(dir: &Path) -> RuntimeOptions {
    RuntimeOptions {
        state_dir: dir.join("state"),
        store_dir: dir.join("state/store"),
        run_dir: dir.join("run"),
        pool: None,
    }
}

fn devnull() -> Option<OwnedFd> {
    Some(OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null"),
    ))
}

/// Every entry under `root` (as far as the caller may list) belongs to the block
/// `start..start+len`, uid and gid; returns how many there are.
fn owned_by_block(root: &Path, start: u32, len: u32) -> usize {
    let meta = std::fs::symlink_metadata(root).unwrap_or_else(|e| panic!("{root:?}: {e}"));
    for (what, id) in [("uid", meta.uid()), ("gid", meta.gid())] {
        assert!(
            id >= start && id - start < len,
            "{root:?}: {what} {id} outside the block {start}+{len}"
        );
    }
    if !meta.is_dir() {
        return 1;
    }
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        // A directory of the image only its root may list (mode 0700).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return 1,
        Err(e) => panic!("{root:?}: {e}"),
    };
    1 + entries
        .map(|e| owned_by_block(&e.expect("entry").path(), start, len))
        .sum::<usize>()
}

/// A scheduler's use of the library, rootless: 4 threads create 4 containers at once, 10
/// rounds, while other threads allocate all the time. The extraction into each
/// container's block and the removal run in helpers; with a fork of this multithreaded
/// process instead, a child could inherit an allocator lock another thread held and hang
/// (the watchdog aborts) or crash. Each tree must be complete and owned by its block.
#[test]
fn rootless_runtime_creates_from_four_threads_while_others_allocate() {
    require_tool("busybox", "busybox-static");
    if run_as_rootless_user("rootless_runtime_creates_from_four_threads_while_others_allocate") {
        return;
    }
    let data = PathBuf::from(std::env::var_os(CHILD_DIR).expect("child dir"));
    // A test harness's main cannot serve the helper: the runtime is told to use warren's.
    let rt = Runtime::open(options(&data))
        .expect("open runtime")
        .with_helper(bin("warren"));
    let stress = common::Stress::start(2, 8192, "rootless library test");
    let mut sizes = Vec::new();
    for round in 0..10 {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|i| {
                    let rt = &rt;
                    s.spawn(move || {
                        let name = format!("r{round}-{i}");
                        let cfg = ContainerConfig {
                            image: "busybox".into(),
                            command: vec!["true".into()],
                            stdio: [devnull(), devnull(), devnull()],
                            ..ContainerConfig::default()
                        };
                        let handle = rt
                            .create(&name, cfg)
                            .unwrap_or_else(|e| panic!("create {name}: {e}"));
                        let record = rt.record(&name).expect("record");
                        let ids = record.ids.expect("a block");
                        let size = owned_by_block(&record.rootfs, ids.uids.start, ids.uids.len);
                        let busybox = std::fs::symlink_metadata(record.rootfs.join("bin/busybox"))
                            .expect("bin/busybox in the copy");
                        assert_eq!(busybox.uid(), ids.uids.start, "{name}: root's file");
                        drop(handle);
                        rt.delete(&name, true)
                            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
                        assert!(!rt.container_dir(&name).exists(), "{name} left behind");
                        size
                    })
                })
                .collect();
            for w in workers {
                sizes.push(w.join().expect("worker"));
            }
        });
    }
    stress.stop();
    assert!(
        sizes[0] > 10,
        "a busybox tree has more than {} entries",
        sizes[0]
    );
    assert!(
        sizes.iter().all(|&n| n == sizes[0]),
        "trees differ: {sizes:?}"
    );
    assert!(rt.list().expect("list").is_empty());
}

/// Without `warren::main_hook()` in `main` (a test harness) and no helper named, rootless
/// work is refused with the fix, never run by re-executing a program that would not serve
/// it; nothing is left behind.
#[test]
fn rootless_runtime_without_the_main_hook_is_refused() {
    require_tool("busybox", "busybox-static");
    if run_as_rootless_user("rootless_runtime_without_the_main_hook_is_refused") {
        return;
    }
    let data = PathBuf::from(std::env::var_os(CHILD_DIR).expect("child dir"));
    let rt = Runtime::open(options(&data)).expect("open runtime");
    let cfg = ContainerConfig {
        image: "busybox".into(),
        command: vec!["true".into()],
        ..ContainerConfig::default()
    };
    let err = rt
        .create("nohook", cfg)
        .expect_err("created without a helper");
    let text = warren::error_line(&err);
    assert!(
        text.contains("main_hook") && text.contains("with_helper"),
        "{text}"
    );
    assert!(!rt.container_dir("nohook").exists());
    assert!(rt.list().expect("list").is_empty());
}

/// The rootless helper (the `warren` binary with its marker argument) dies with the
/// process that started it: it must never go on working for a caller that is gone.
#[test]
fn the_rootless_helper_dies_with_its_parent() {
    if run_as_rootless_user("the_rootless_helper_dies_with_its_parent") {
        return;
    }
    let data = PathBuf::from(std::env::var_os(CHILD_DIR).expect("child dir"));
    // Orphans come to this process, so it can see how the helper ended.
    // SAFETY: prctl with plain integers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    let fifo = data.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // Held open, so the helper waits for a Hello that never comes.
    let _input = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    let mut parent = std::process::Command::new("sh")
        .args([
            "-c",
            r#""$0" --warren-rootless-helper-v1 < "$1" & echo $!; read x || :"#,
        ])
        .arg(bin("warren"))
        .arg(&fifo)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read the helper's pid");
    let pid: i32 = line.trim().parse().expect("a pid");
    // Once it reads its input it has set its death signal.
    let wchan = format!("/proc/{pid}/wchan");
    let mut waiting = false;
    for _ in 0..3000 {
        if std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("pipe_read")) {
            waiting = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(waiting, "the helper never waited for its request");
    drop(parent.stdin.take());
    assert!(parent.wait().expect("wait sh").success());
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(pid);
    for _ in 0..3000 {
        // Orphaned, the helper is this process's child.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid the helper") {
            WaitStatus::StillAlive => std::thread::sleep(Duration::from_millis(10)),
            WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => return,
            other => panic!("the helper ended otherwise than by its death signal: {other:?}"),
        }
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(pid, None);
    panic!("the helper outlived its parent by 30s");
}

/// A helper given the caller's kept namespace makes its own inside it: the process that
/// joined it writes its child's maps, the child answers and works, and both die with the
/// caller (no helper lingers in the user's kept namespace).
#[test]
fn a_nested_rootless_helper_maps_itself_in_the_kept_namespace_and_dies_with_its_caller() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use warren::idmap::subid::Host;
    use warren::idmap::userns::{self, Mapping, Maps};
    if run_as_rootless_user(
        "a_nested_rootless_helper_maps_itself_in_the_kept_namespace_and_dies_with_its_caller",
    ) {
        return;
    }
    let data = PathBuf::from(std::env::var_os(CHILD_DIR).expect("child dir"));
    // SAFETY: prctl with plain integers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    // The kept namespace, found or made as a rootless start does.
    let sub = subuid_start();
    let block = vec![Mapping {
        container: 0,
        host: sub,
        size: 65536,
    }];
    let host = Host::current().expect("host");
    let maps = Maps::subordinate(&host, block.clone(), block, userns::helpers()).expect("maps");
    let nest = maps
        .nest(&data.join("keeper.pid"))
        .expect("a kept namespace");
    let kept = userns_of_fd(nest.userns.as_raw_fd());
    let fifo = data.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    let fd = nest.userns.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        r#""$0" --warren-rootless-helper-v1 < "$1" & echo $!; read x || :"#,
    ])
    .arg(bin("warren"))
    .arg(&fifo)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    // SAFETY: only dup2 or fcntl between fork and exec: fd 3, open across exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut sh = cmd.spawn().expect("run sh");
    let mut out = std::io::BufReader::new(sh.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the helper's pid");
    let helper: i32 = line.trim().parse().expect("a pid");
    let made = data.join("made");
    let hello = json!({"Hello": {
        "parent": sh.id(), "shift": {"to": sub, "range": 65536},
        "request": {"MakeDirs": {"paths": [made.to_str().expect("utf-8")]}},
        "nest": {"uid_map": String::from_utf8_lossy(&nest.uid_map), "gid_map": String::from_utf8_lossy(&nest.gid_map)}}});
    writeln!(input, "{hello}").expect("send Hello");
    line.clear();
    out.read_line(&mut line).expect("an answer");
    assert_eq!(line.trim(), r#""Ready""#);
    // The process that answered is the helper's child, in a namespace of its own inside
    // the kept one, mapped as asked.
    let children = std::fs::read_to_string(format!("/proc/{helper}/task/{helper}/children"))
        .expect("the helper's children");
    let worker: u32 = children.trim().parse().expect("one child");
    let (ns, parent) = userns_and_parent(worker);
    assert_eq!(
        parent, kept,
        "the worker's namespace is not inside the kept one"
    );
    assert_ne!(ns, kept);
    assert_eq!(
        userns_of(helper as u32),
        kept,
        "the map writer joined the kept namespace"
    );
    let map = std::fs::read_to_string(format!("/proc/{worker}/uid_map")).expect("uid_map");
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &sub.to_string(), "65536"]
    );
    // The caller goes away before Go: both end by their death signal, nothing was made.
    drop(sh.stdin.take());
    assert!(sh.wait().expect("wait sh").success());
    for pid in [helper, worker as i32] {
        let pid = nix::unistd::Pid::from_raw(pid);
        let mut ended = None;
        for _ in 0..3000 {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid an orphan") {
                WaitStatus::StillAlive => std::thread::sleep(Duration::from_millis(10)),
                status => {
                    ended = Some(status);
                    break;
                }
            }
        }
        let Some(WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)) = ended else {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{pid} did not end by its death signal: {ended:?}");
        };
    }
    assert!(!made.exists());
}

/// The user namespace of an open namespace fd, as a (device, inode) pair.
fn userns_of_fd(fd: std::os::fd::RawFd) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat the namespace fd");
    (m.dev(), m.ino())
}

/// The user namespace of `pid` and its parent, as (device, inode) pairs, read from here.
fn userns_and_parent(pid: u32) -> ((u64, u64), (u64, u64)) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).expect("open ns/user");
    // SAFETY: NS_GET_PARENT on a user namespace fd returns a new fd or -1.
    let parent = unsafe { libc::ioctl(ns.as_raw_fd(), 0xb702) };
    assert!(parent >= 0, "NS_GET_PARENT of pid {pid}");
    // SAFETY: the kernel just returned this fd to us.
    let parent = unsafe { std::fs::File::from_raw_fd(parent) };
    let id = |f: &std::fs::File| {
        let m = f.metadata().expect("fstat ns");
        (m.dev(), m.ino())
    };
    (id(&ns), id(&parent))
}

fn userns_of(pid: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/user")).expect("stat ns/user");
    (m.dev(), m.ino())
}

/// Runs `cmd` with its output piped, failing if it has not exited and closed its pipes
/// within 60 s (a process it left behind holding them would keep a client waiting).
fn output_within_a_minute(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        use std::io::Read;
        let _ = out.as_mut().map(|p| p.read_to_end(&mut o));
        let _ = err.as_mut().map(|p| p.read_to_end(&mut e));
        let _ = tx.send((o, e));
    });
    let (stdout, stderr) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the command's pipes stayed open a minute: something it started holds them");
    let status = child.wait().expect("wait");
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// The keeper's pid as its pid file names it.
fn keeper_pid(xdg: &Path) -> Option<u32> {
    std::fs::read_to_string(xdg.join("warren/.userns-keeper"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn rootless_containers_nest_in_the_users_kept_namespace_and_a_fake_one_is_never_used() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let (uid, gid) = ensure_rootless_user();
    let sub = subuid_start();
    let dir = scratch("rootless-kept");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The user's own id as root and a block of its line, as `crun spec --rootless` users do.
    let maps = |own: u32| json!([{"containerID": 0, "hostID": own, "size": 1}, {"containerID": 1, "hostID": sub, "size": 65536}]);
    let bundle = |name: &str, script: &str| {
        let mut c = rootless_config(script, maps(uid), false);
        c["linux"]["gidMappings"] = maps(gid);
        make_bundle(&dir.path().join(name), &c);
    };
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown scratch");
    bundle("fg", "cat /proc/self/uid_map");
    bundle("bg", "exec sleep 600");
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).expect("mkdir xdg");
    std::os::unix::fs::chown(&xdg, Some(uid), Some(gid)).expect("chown xdg");
    let root = dir.path().join("state");
    let w = || {
        let mut c = warren_as_user(&root);
        c.env("XDG_RUNTIME_DIR", &xdg);
        c
    };
    let start = |id: &str| -> u32 {
        let out = run(w()
            .args(["run", "-d", "-b"])
            .arg(dir.path().join("bg"))
            .arg(id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()));
        assert!(out.status.success(), "{out:?}");
        let st = run(w().args(["state", id]));
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("state json");
        v["pid"].as_u64().expect("pid") as u32
    };
    // The run that makes the keeper returns with its pipes closed: the keeper holds none.
    let out = output_within_a_minute(w().args(["run", "-b"]).arg(dir.path().join("fg")).arg("fg"));
    assert!(out.status.success(), "{out:?}");
    let want = format!("0 {uid} 1 1 {sub} 65536");
    let fg = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(fg, want);
    let host_ns = userns_of(std::process::id());

    // The first container makes the keeper: a child namespace of ours, owned by the user,
    // mapping each of its ids as itself, held by a process that shows no command line of
    // its creator; the container's namespace is made inside it.
    let a = start("a");
    let keeper = keeper_pid(&xdg).expect("a keeper pid file");
    let (kept, kept_parent) = userns_and_parent(keeper);
    assert_eq!(kept_parent, host_ns);
    assert_eq!(
        userns_and_parent(a).1,
        kept,
        "container a is not inside the kept namespace"
    );
    let comm = std::fs::read_to_string(format!("/proc/{keeper}/comm")).expect("comm");
    assert_eq!(comm.trim(), "warren-keeper");
    let cmdline = std::fs::read(format!("/proc/{keeper}/cmdline")).expect("cmdline");
    assert!(cmdline.starts_with(b"warren-keeper\0"), "{cmdline:?}");
    let status = std::fs::read_to_string(format!("/proc/{keeper}/status")).expect("status");
    assert!(
        status.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")),
        "{status}"
    );
    // Nothing the creator blocks (warren forwards signals) is blocked in it: `kill` ends it.
    assert!(status.contains("\nSigBlk:\t0000000000000000\n"), "{status}");
    let kept_map = std::fs::read_to_string(format!("/proc/{keeper}/uid_map")).expect("uid_map");
    assert!(
        kept_map.split('\n').any(|l| l.split_whitespace().eq([
            uid.to_string(),
            uid.to_string(),
            "1".into()
        ])),
        "{kept_map}"
    );
    // The container's maps, from here and from inside, are the config's host ids, as when
    // newuidmap writes them.
    let host_view = std::fs::read_to_string(format!("/proc/{a}/uid_map")).expect("uid_map");
    assert_eq!(
        host_view.split_whitespace().collect::<Vec<_>>().join(" "),
        want
    );
    let inside = run(w().args([
        "exec",
        "a",
        "cat",
        "/proc/self/uid_map",
        "/proc/self/gid_map",
    ]));
    let inside = String::from_utf8_lossy(&inside.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(inside, format!("{want} 0 {gid} 1 1 {sub} 65536"));

    // A second container finds the same keeper.
    let b = start("b");
    assert_eq!(keeper_pid(&xdg), Some(keeper));
    assert_eq!(userns_and_parent(b).1, kept);
    assert_ne!(
        userns_of(b),
        userns_of(a),
        "each container has its own user namespace"
    );

    // Pid files naming what is not the user's kept namespace, and its own container's
    // init above all (same owner, a namespace inside the kept one): each is passed over,
    // a new keeper is made, and the container never lands inside the fake.
    let other_user = std::process::Command::new("unshare")
        .args(["-U", "sleep", "60"])
        .spawn()
        .expect("unshare -U sleep as root");
    std::thread::sleep(Duration::from_millis(200));
    let pid_file = xdg.join("warren/.userns-keeper");
    for (n, fake) in [a.to_string(), other_user.id().to_string(), "garbage".into()]
        .iter()
        .enumerate()
    {
        std::fs::write(&pid_file, format!("{fake}\n")).expect("write a fake pid file");
        let id = format!("f{n}");
        let f = start(&id);
        let parent = userns_and_parent(f).1;
        let fresh = keeper_pid(&xdg).expect("a new keeper");
        assert_ne!(fresh.to_string(), *fake, "the fake {fake} was kept");
        assert_eq!(
            parent,
            userns_and_parent(fresh).0,
            "f{n} is not inside the new keeper's"
        );
        assert_ne!(
            parent,
            userns_of(a),
            "f{n} was made inside container a's namespace"
        );
        assert_eq!(userns_and_parent(fresh).1, host_ns);
        let del = run(w().args(["delete", "-f", &id]));
        assert!(del.status.success(), "{del:?}");
    }
    let mut other_user = other_user;
    let _ = other_user.kill();
    let _ = other_user.wait();

    for id in ["a", "b"] {
        let del = run(w().args(["delete", "-f", id]));
        assert!(del.status.success(), "{del:?}");
    }
    // Its pid file gone, a keeper exits (it looks every 2 s).
    let last = keeper_pid(&xdg).expect("keeper");
    std::fs::remove_file(&pid_file).expect("rm pid file");
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !Path::new(&format!("/proc/{last}")).exists()
            || std::fs::read_to_string(format!("/proc/{last}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(gone, "keeper {last} outlived its pid file by 10 s");
}
