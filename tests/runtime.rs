//! The OCI runtime end to end, as root: real containers, asserting what the workload sees.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{bin, lo_flags, ok, require_root, run, scratch};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn warren(root: &Path) -> Command {
    let mut c = Command::new(bin("warren"));
    c.arg("--root").arg(root);
    c
}

/// `warren run` of `config` in a fresh bundle; returns the output.
fn run_config(name: &str, config: &Value) -> Output {
    crate::common::assert_root("run_config");
    let dir = scratch(name);
    let b = rootfs::bundle(dir.path(), config);
    let root = dir.path().join("state");
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg(name));
    // Foreground run cleans up after itself.
    assert!(
        !root.join(name).exists(),
        "state of {name} left behind after run"
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(script: &str) -> Value {
    rootfs::config(&["sh", "-c", script])
}

#[test]
fn workload_sees_its_namespaces_and_limits() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let out = run_config(
        "ns",
        &sh(
            "echo pid=$$; hostname; cat /proc/self/uid_map; grep -E '^Cap(Eff|Bnd|Amb|Inh)' /proc/self/status; \
             ulimit -n; grep -E ' /(proc|sys|dev/pts|tmp) ' /proc/mounts | cut -d' ' -f2,3; \
             cat /proc/kcore >/dev/null 2>&1 && echo kcore-readable; \
             echo 1 > /proc/sys/kernel/ostype 2>/dev/null || echo sys-readonly; \
             touch /x 2>/dev/null || echo root-readonly; touch /tmp/x && echo tmp-writable; \
             ls /dev; grep NoNewPrivs /proc/self/status",
        ),
    );
    let s = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(s.contains("pid=1\n"), "{s}");
    assert!(s.contains("warren-test\n"), "{s}");
    // No user namespace: the identity map.
    assert!(s.contains("         0          0 4294967295"), "{s}");
    // CAP_KILL(5), CAP_NET_BIND_SERVICE(10), CAP_AUDIT_WRITE(29).
    assert!(s.contains("CapEff:\t0000000020000420"), "{s}");
    assert!(s.contains("CapBnd:\t0000000020000420"), "{s}");
    // Ambient needs inheritable: only CAP_KILL is both.
    assert!(s.contains("CapInh:\t0000000000000020"), "{s}");
    assert!(s.contains("CapAmb:\t0000000000000020"), "{s}");
    assert!(s.contains("\n1024\n"), "{s}");
    for m in ["/proc proc", "/sys sysfs", "/dev/pts devpts", "/tmp tmpfs"] {
        assert!(s.contains(m), "missing mount {m}: {s}");
    }
    assert!(!s.contains("kcore-readable"), "{s}");
    assert!(s.contains("sys-readonly"), "{s}");
    assert!(s.contains("root-readonly"), "{s}");
    assert!(s.contains("tmp-writable"), "{s}");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(s.lines().any(|l| l == d), "/dev/{d} missing: {s}");
    }
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
}

/// Each masked directory of the config that the host has shows empty and read-only, a
/// mount of its own; a masked file (/proc/timer_list: the host has it) reads as /dev/null.
#[test]
fn masked_directories_are_empty_and_read_only() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dirs: Vec<&str> = ["/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware"]
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .collect();
    assert!(
        dirs.len() >= 2,
        "this test needs two of the masked directories on the host: {dirs:?}"
    );
    let mut script = String::new();
    for d in &dirs {
        script.push_str(&format!(
            "echo {d}: $(ls -A {d}) $(mkdir {d}/x 2>/dev/null && echo writable || echo read-only) \
             $(grep -c ' {d} ' /proc/self/mountinfo);"
        ));
    }
    script.push_str("wc -c < /proc/timer_list");
    let mut c = sh(&script);
    c["linux"]["maskedPaths"] = json!([
        "/proc/acpi",
        "/proc/asound",
        "/proc/timer_list",
        "/proc/scsi",
        "/sys/firmware"
    ]);
    let out = run_config("masked", &c);
    assert!(out.status.success(), "{out:?}");
    let want: String = dirs.iter().map(|d| format!("{d}: read-only 1\n")).collect();
    assert_eq!(stdout(&out), want + "0\n");
}

#[test]
fn new_network_namespace_has_loopback_up() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let out = run_config(
        "lo",
        &sh("ip link show lo; ip addr show lo; \
             echo ns=$(readlink /proc/self/ns/net); echo links=$(ls /sys/class/net)"),
    );
    let s = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(lo_flags(&s).iter().any(|f| f == "UP"), "lo is down: {s}");
    assert!(s.contains("inet 127.0.0.1/8"), "{s}");
    // A namespace of its own (made beside the clone, then joined), holding only lo.
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        !s.contains(&format!("ns={}", host.display())),
        "the host's: {s}"
    );
    assert!(s.contains("ns=net:["), "{s}");
    assert!(s.lines().any(|l| l == "links=lo"), "{s}");
}

/// The start's helper threads (a network namespace, a cgroup made beside the clone) are
/// kept off the creating thread's CPU while they work; none of that may reach the
/// container: its init gets the runtime's CPUs, every time. (An exited helper's affinity
/// set through glibc lands on the caller: a third of the containers came out on one CPU.)
#[test]
fn the_workload_gets_the_runtimes_cpus() {
    if !crate::common::require_root(
        "runs containers with limits on a rootful installation: a cgroup, a network namespace",
    ) {
        return;
    }
    let own = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
    };
    let ours = own(&std::fs::read_to_string("/proc/self/status").unwrap()).expect("ours");
    // As `crun spec` writes it: no cgroup namespace, the cgroup mount, a deny-all device
    // rule (the cgroup's thread is then done before the network namespace, most often).
    let mut config = sh("cat /proc/self/status");
    config["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    config["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
    ]);
    let cgroup = json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]});
    config["mounts"].as_array_mut().unwrap().push(cgroup);
    for i in 0..30 {
        let out = run_config(&format!("cpus{i}"), &config);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            own(&stdout(&out)).as_deref(),
            Some(ours.as_str()),
            "start {i}"
        );
    }
}

#[test]
fn user_namespace_maps_ids() {
    if !crate::common::require_root("chowns a rootfs to a block and runs a container in it as root")
    {
        return;
    }
    let c = rootfs::with_userns(
        sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u /bin/busybox"),
        0x200000,
        0x200000,
        65536,
    );
    let dir = scratch("userns");
    rootfs::busybox_rootfs(&dir.path().join("rootfs"));
    rootfs::chown_tree(&dir.path().join("rootfs"), 0x200000, 0x200000);
    rootfs::write_config(dir.path(), &c);
    let root = dir.path().join("state");
    let out = ok(warren(&root)
        .args(["run", "-b"])
        .arg(dir.path())
        .arg("userns"));
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0", "2097152", "65536"], "{out}");
    assert_eq!(lines[1], ["0", "2097152", "65536"], "{out}");
    assert_eq!(lines[2], ["0"], "{out}");
    // The rootfs, owned by host 0x200000, is owned by root inside.
    assert_eq!(lines[3], ["0"], "{out}");
}

/// Spawns `warren run` of `config` and waits until its container is running.
fn spawn_run(dir: &Path, root: &Path, id: &str, config: &Value) -> std::process::Child {
    let b = rootfs::bundle(dir, config);
    let mut child = warren(root)
        .args(["run", "-b"])
        .arg(&b)
        .arg(id)
        .spawn()
        .expect("spawn warren run");
    for _ in 0..500 {
        let st = run(warren(root).args(["state", id]));
        if String::from_utf8_lossy(&st.stdout).contains("\"running\"") {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("container {id} never ran");
}

#[test]
fn exit_codes_and_signals_propagate() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let out = run_config("exit7", &sh("exit 7"));
    assert_eq!(out.status.code(), Some(7));

    // A signal to `warren run` reaches the workload (which traps it).
    let dir = scratch("signals");
    let root = dir.path().join("state");
    let mut child = spawn_run(
        dir.path(),
        &root,
        "trap",
        &sh("trap 'exit 9' TERM; touch /tmp/ready; while true; do sleep 0.05; done"),
    );
    // "running" means the shell was exec'd, not that its trap is set: a SIGTERM before
    // that is dropped (pid 1 of a namespace ignores signals it has no handler for).
    let ready = (0..500).any(|_| {
        let probe = run(warren(&root).args(["exec", "trap", "--", "test", "-e", "/tmp/ready"]));
        probe.status.success() || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        }
    });
    assert!(ready, "the workload never set its trap");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal warren");
    assert_eq!(child.wait().expect("wait").code(), Some(9));

    // Killed by a signal: 128+N, like a shell.
    let mut child = spawn_run(
        dir.path(),
        &root,
        "killed",
        &rootfs::config(&["sleep", "100"]),
    );
    ok(warren(&root).args(["kill", "killed", "KILL"]));
    assert_eq!(child.wait().expect("wait").code(), Some(137));
    assert!(!root.join("killed").exists());
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("lifecycle");
    let b = rootfs::bundle(
        dir.path(),
        &sh("trap 'exit 3' TERM; echo up > /tmp/up; while true; do sleep 0.05; done"),
    );
    let root = dir.path().join("state");
    let id = "life";
    let state = |root: &Path| -> Value {
        serde_json::from_str(&ok(warren(root).args(["state", id]))).expect("state json")
    };
    let out = run(warren(&root)
        .args(["create", "-b"])
        .arg(&b)
        .arg("--pid-file")
        .arg(dir.path().join("pid"))
        .arg(id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()));
    assert!(out.status.success(), "{out:?}");
    let s = state(&root);
    assert_eq!(s["status"], "created");
    assert_eq!(s["id"], id);
    assert_eq!(s["bundle"], json!(b.to_string_lossy()));
    let pid: i64 = std::fs::read_to_string(dir.path().join("pid"))
        .expect("pid file")
        .parse()
        .expect("pid");
    assert_eq!(s["pid"], json!(pid));
    // A second container with the same ID is refused.
    let dup = run(warren(&root).args(["create", "-b"]).arg(&b).arg(id));
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{dup:?}"
    );
    ok(warren(&root).args(["start", id]));
    assert_eq!(state(&root)["status"], "running");
    let list = ok(warren(&root).args(["list", "-q"]));
    assert_eq!(list.trim(), id);
    // Running: delete needs --force.
    let del = run(warren(&root).args(["delete", id]));
    assert!(!del.status.success());
    let bad = run(warren(&root).args(["kill", id, "SIGNOPE"]));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown signal"),
        "{bad:?}"
    );
    // exec joins its namespaces: pid 1 is the init, the file it wrote is there.
    let seen = ok(warren(&root).args([
        "exec",
        id,
        "--",
        "sh",
        "-c",
        "cat /tmp/up; ps -o pid,args | grep -c 'while true'; hostname",
    ]));
    assert!(seen.starts_with("up\n"), "{seen}");
    assert!(seen.contains("warren-test"), "{seen}");
    ok(warren(&root).args(["kill", id, "TERM"]));
    for _ in 0..200 {
        if state(&root)["status"] == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(state(&root)["status"], "stopped");
    ok(warren(&root).args(["delete", id]));
    assert!(!root.join(id).exists());
    let gone = run(warren(&root).args(["state", id]));
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("does not exist"),
        "{gone:?}"
    );
}

#[test]
fn bad_input_is_named_and_leaves_nothing() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("bad");
    let root = dir.path().join("state");
    let mut c = sh("true");
    c["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]);
    let b = rootfs::bundle(dir.path(), &c);
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg("bad"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("process.rlimits[0].type"), "{err}");

    // A mount that cannot be done: the error names it, and the ID is free afterwards.
    let mut c = sh("true");
    c["mounts"].as_array_mut().expect("mounts").push(json!({
        "destination": "/data", "type": "nosuchfs", "source": "none"
    }));
    rootfs::write_config(&b, &c);
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg("bad"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("on /data (type nosuchfs)"), "{err}");
    assert!(
        !root.join("bad").exists(),
        "state left after a failed create"
    );

    // A missing program: exec fails clearly, 127-style.
    rootfs::write_config(&b, &rootfs::config(&["/bin/nonexistent"]));
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg("bad"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/bin/nonexistent") && err.contains("ENOENT"),
        "{err}"
    );

    // Missing rootfs.
    let mut c = sh("true");
    c["root"]["path"] = json!("nope");
    rootfs::write_config(&b, &c);
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg("bad"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rootfs"),
        "{out:?}"
    );

    // And the ID works afterwards.
    rootfs::write_config(&b, &sh("echo fine"));
    assert_eq!(
        ok(warren(&root).args(["run", "-b"]).arg(&b).arg("bad")),
        "fine\n"
    );
}

#[test]
fn seccomp_blocks_syscalls() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let mut c = sh("grep Seccomp: /proc/self/status; mkdir /tmp/d 2>&1; echo mkdir=$?");
    c["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    let out = run_config("seccomp", &c);
    let s = stdout(&out);
    assert!(s.contains("Seccomp:\t2"), "{s}");
    assert!(s.contains("Operation not permitted"), "{s}");
    assert!(s.contains("mkdir=1"), "{s}");
}

#[test]
fn console_socket_receives_the_pty() {
    use std::os::unix::net::UnixListener;
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("console");
    let mut c = sh("tty; echo hello-from-pty");
    c["process"]["terminal"] = json!(true);
    let b = rootfs::bundle(dir.path(), &c);
    let sock = dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let root = dir.path().join("state");
    let t = std::thread::spawn(move || common::read_console(listener));
    let out = run(warren(&root)
        .args(["create", "-b"])
        .arg(&b)
        .arg("--console-socket")
        .arg(&sock)
        .arg("con"));
    assert!(out.status.success(), "{out:?}");
    ok(warren(&root).args(["start", "con"]));
    let text = t.join().expect("console thread");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("hello-from-pty"), "{text:?}");
    ok(warren(&root).args(["delete", "-f", "con"]));
}

#[test]
fn delete_force_cleans_up_after_a_killed_runtime() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("killed");
    let mut c = sh("true");
    // A createRuntime hook that never finishes: the runtime is SIGKILLed while it runs.
    c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]});
    let b = rootfs::bundle(dir.path(), &c);
    let root = dir.path().join("state");
    let mut child = warren(&root)
        .args(["create", "-b"])
        .arg(&b)
        .arg("crash")
        .spawn()
        .expect("spawn warren");
    for _ in 0..500 {
        if root.join("crash/state.json").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().expect("kill warren");
    child.wait().expect("reap warren");
    assert!(root.join("crash").exists());
    ok(warren(&root).args(["delete", "--force", "crash"]));
    assert!(!root.join("crash").exists());
    // Its cgroups went too.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .expect("list cgroup hierarchies")
        .flatten()
    {
        let left = h.path().join("warren/crash");
        assert!(!left.exists(), "cgroup {} left behind", left.display());
    }
    // The same ID works again.
    rootfs::write_config(&b, &sh("echo again"));
    assert_eq!(
        ok(warren(&root).args(["run", "-b"]).arg(&b).arg("crash")),
        "again\n"
    );
}

#[test]
fn interactive_tty_under_tmux() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    common::require_tool("tmux", "tmux");
    let dir = scratch("tty");
    let b = rootfs::bundle(dir.path(), &rootfs::config(&["sh"]));
    let root = dir.path().join("state");
    let session = format!("warren-tty-{}", std::process::id());
    let exit_file = dir.path().join("exit");
    let cmd = format!(
        "{} --root {} run -t -b {} tty; echo $? > {}; sleep 30",
        bin("warren").display(),
        root.display(),
        b.display(),
        exit_file.display()
    );
    ok(Command::new("tmux").args([
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "20",
        &cmd,
    ]));
    let tmux = |args: &[&str]| ok(Command::new("tmux").args(args));
    let wait_for = |what: &str| {
        for _ in 0..300 {
            let screen = tmux(&["capture-pane", "-t", &session, "-p"]);
            if screen.contains(what) {
                return screen;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let screen = tmux(&["capture-pane", "-t", &session, "-p"]);
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
        panic!("{what:?} never appeared:\n{screen}");
    };
    wait_for("/ #");
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "echo hi-$((40+2)); tty; stty size",
        "Enter",
    ]);
    wait_for("hi-42");
    // `stty size` prints last: once it shows, the `tty` line above it is on screen too.
    let screen = wait_for("20 100");
    assert!(screen.contains("/dev/pts/0"), "{screen}");
    tmux(&["send-keys", "-t", &session, "exit 5", "Enter"]);
    for _ in 0..300 {
        if std::fs::read_to_string(&exit_file).is_ok_and(|s| s.ends_with('\n')) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    let code = std::fs::read_to_string(&exit_file).expect("warren run -t exited");
    assert_eq!(code.trim(), "5");
}

#[test]
fn only_stdio_and_preserved_fds_reach_the_workload() {
    use std::os::unix::process::CommandExt;
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("fds");
    let b = rootfs::bundle(
        dir.path(),
        &sh("readlink /proc/self/fd/3; readlink /proc/self/fd/7 || echo no-fd-7"),
    );
    let root = dir.path().join("state");
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    let mut cmd = warren(&root);
    cmd.args(["run", "--preserve-fds", "1", "-b"])
        .arg(&b)
        .arg("fds");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&null);
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move out of the way first: `raw` itself may be 3 or 7.
            let high = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 100);
            for target in [3, 7] {
                if high < 0 || libc::dup2(high, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = ok(&mut cmd);
    assert_eq!(out, "/dev/null\nno-fd-7\n");
}

#[test]
fn init_reaps_zombies_and_propagates_the_exit() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("init");
    // The orphaned sleep is reparented to pid 1 when its shell exits; pid 1 must reap it.
    let b = rootfs::bundle(
        dir.path(),
        &sh("sh -c 'sleep 0.05 &'; sleep 0.4; echo me=$$; ps -o stat | grep -c Z; exit 3"),
    );
    let root = dir.path().join("state");
    let out = run(warren(&root)
        .args(["run", "--init", "-b"])
        .arg(&b)
        .arg("init"));
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(s.contains("me=2\n"), "{s}");
    assert!(s.ends_with("\n0\n"), "zombies left: {s}");
}

#[test]
fn hooks_run_at_their_lifecycle_points() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("hooks");
    let d = dir.path().display().to_string();
    let mut c = sh("cat /tmp/hook");
    let host = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {d}/{name}.json")]});
    c["hooks"] = json!({
        "createRuntime": [host("createRuntime")],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hooked > /tmp/hook"]}],
        "poststart": [host("poststart")],
        "poststop": [host("poststop")]
    });
    let b = rootfs::bundle(dir.path(), &c);
    let root = dir.path().join("state");
    assert_eq!(
        ok(warren(&root).args(["run", "-b"]).arg(&b).arg("hooked")),
        "hooked\n"
    );
    for (name, status) in [
        ("createRuntime", "creating"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("{name} hook did not run: {e}"));
        let state: Value = serde_json::from_str(&text).expect("state json on stdin");
        assert_eq!(state["id"], "hooked", "{name}");
        assert_eq!(state["status"], status, "{name}");
    }
}

#[test]
fn cgroup_only_for_limits_a_cgroups_path_the_host_pid_namespace_or_a_cgroup_view() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("cgroups");
    let root = dir.path().join("state");
    let mut base = sh("sleep 30");
    base["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "cgroup");
    // What the container sees of cgroups is its own cgroup: a cgroup namespace or mount
    // needs one.
    let mut cgroupns = base.clone();
    cgroupns["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "cgroup"}));
    let mut mounted = base.clone();
    mounted["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}));
    let mut pids = base.clone();
    pids["linux"]["resources"] = json!({"pids": {"limit": 50}});
    let mut path = base.clone();
    path["linux"]["cgroupsPath"] = json!("/warren/cg-path-given");
    // Device rules are applied in a cgroup of its own.
    let mut devices = base.clone();
    devices["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let mut host_pid = base.clone();
    host_pid["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "pid");
    // (id, config, cgroup path below each hierarchy or None, pids.max).
    let cases = [
        ("cg-none", base, None, None),
        (
            "cg-devices",
            devices,
            Some("warren/cg-devices"),
            Some("max"),
        ),
        ("cg-pids", pids, Some("warren/cg-pids"), Some("50")),
        ("cg-path", path, Some("warren/cg-path-given"), Some("max")),
        (
            "cg-hostpid",
            host_pid,
            Some("warren/cg-hostpid"),
            Some("max"),
        ),
        ("cg-ns", cgroupns, Some("warren/cg-ns"), Some("max")),
        ("cg-mount", mounted, Some("warren/cg-mount"), Some("max")),
    ];
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let pids_line = |text: &str| {
        text.lines()
            .find(|l| l.split(':').nth(1) == Some("pids"))
            .map(|l| l.splitn(3, ':').nth(2).unwrap_or("").to_owned())
            .expect("a v1 pids hierarchy")
    };
    for (id, config, cg, max) in cases {
        let b = dir.path().join(id);
        std::fs::create_dir_all(&b).expect("mkdir bundle");
        rootfs::bundle(&b, &config);
        let out = run(warren(&root)
            .args(["create", "-b"])
            .arg(&b)
            .arg(id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()));
        assert!(out.status.success(), "{id}: {out:?}");
        let st: Value =
            serde_json::from_slice(&run(warren(&root).args(["state", id])).stdout).expect("state");
        let pid = st["pid"].as_i64().expect("pid");
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let hierarchy = Path::new("/sys/fs/cgroup/pids");
        match (cg, max) {
            (None, _) => {
                for h in std::fs::read_dir("/sys/fs/cgroup").expect("list").flatten() {
                    let made = h.path().join("warren").join(id);
                    assert!(!made.exists(), "{id}: {} was created", made.display());
                }
                assert_eq!(pids_line(&theirs), pids_line(&own), "{id}: {theirs}");
            }
            (Some(cg), Some(max)) => {
                // In every hierarchy (the child made with limits joins its v1 cgroups
                // itself), and alone: no runtime thread was left there.
                let wanted = format!(":/{cg}");
                assert!(
                    theirs.lines().all(|l| l.ends_with(&wanted)),
                    "{id}: {theirs}"
                );
                let procs = std::fs::read_to_string(hierarchy.join(cg).join("cgroup.procs"))
                    .expect("cgroup.procs");
                assert_eq!(procs.trim(), pid.to_string(), "{id}");
                assert_eq!(
                    std::fs::read_to_string(hierarchy.join(cg).join("pids.max"))
                        .expect("pids.max")
                        .trim(),
                    max,
                    "{id}"
                );
            }
            _ => unreachable!(),
        }
        ok(warren(&root).args(["delete", "--force", id]));
        if let Some(cg) = cg {
            assert!(!hierarchy.join(cg).exists(), "{id}: cgroup left behind");
        }
    }
}

/// A limit the kernel refuses, found while the child is cloned (the cgroup's controllers
/// are made then): `run` fails naming the controller and file, runs nothing, and leaves
/// no cgroup, no state and no process behind.
#[test]
fn a_limit_the_kernel_refuses_fails_the_run_and_leaves_nothing() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let id = format!("badlimit-{}", std::process::id());
    let mut c = sh("echo ran");
    c["linux"]["resources"] = json!({"cpu": {"cpus": "4000"}, "pids": {"limit": 20}});
    let out = run_config(&id, &c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(!stdout(&out).contains("ran"), "{out:?}");
    assert!(
        err.contains("cgroup cpuset") && err.contains("cpuset.cpus"),
        "{err}"
    );
    for h in std::fs::read_dir("/sys/fs/cgroup").expect("list").flatten() {
        let leaf = h.path().join("warren").join(&id);
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
}

#[test]
fn devices_get_exactly_the_configured_mode_and_owner() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("devmode");
    let mut c = sh("stat -c '%n %a %u %g %t %T %F' /dev/xnull /dev/null");
    c["linux"]["devices"] = json!([{"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3,
        "fileMode": 0o4604, "uid": 5, "gid": 6}]);
    let b = rootfs::bundle(dir.path(), &c);
    let root = dir.path().join("state");
    // A restrictive umask in the runtime does not leak into the nodes it makes.
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(r#"umask 077; exec "$0" --root "$1" run -b "$2" devmode"#)
        .arg(bin("warren"))
        .arg(&root)
        .arg(&b));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "/dev/xnull 4604 5 6 1 3 character special file\n/dev/null 666 0 0 1 3 character special file\n"
    );
}

/// Without a tmpfs on /dev the nodes go into the image's own /dev: an entry there in
/// their place (a regular file) is replaced by the node, a missing one made.
#[test]
fn device_nodes_replace_what_the_image_has_in_their_place() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("devreplace");
    let mut c = sh("stat -c '%n %a %u %g %t %T %F' /dev/null /dev/zero /dev/xnull");
    let mounts = c["mounts"].as_array_mut().expect("mounts");
    mounts.retain(|m| m["destination"] != "/dev");
    c["linux"]["devices"] = json!([{"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3,
        "fileMode": 0o600, "uid": 0, "gid": 0}]);
    let b = rootfs::bundle(dir.path(), &c);
    std::fs::create_dir_all(b.join("rootfs/dev")).expect("mkdir dev");
    std::fs::write(b.join("rootfs/dev/null"), "a file, not a device").expect("write dev/null");
    let out = run(Command::new(bin("warren"))
        .arg("--root")
        .arg(dir.path().join("state"))
        .args(["run", "-b"])
        .arg(&b)
        .arg("devreplace"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "/dev/null 666 0 0 1 3 character special file\n\
         /dev/zero 666 0 0 1 5 character special file\n\
         /dev/xnull 600 0 0 1 3 character special file\n"
    );
}

#[test]
fn a_cgroup_mount_is_read_only_unless_the_config_says_rw() {
    if !crate::common::require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    // Its own cgroup in each case: moving itself there again is the harmless write.
    // And each hierarchy's mount flags: nosuid, nodev, noexec always, ro unless rw.
    let script = "echo $$ > /sys/fs/cgroup/pids/cgroup.procs && echo wrote; \
                  ls /sys/fs/cgroup/pids/ | grep -c '^warren$'; \
                  awk '$5 == \"/sys/fs/cgroup/pids\" { print $6 }' /proc/self/mountinfo; true";
    for (options, expect) in [
        (
            json!(["nosuid", "rw"]),
            "wrote\n0\nrw,nosuid,nodev,noexec,relatime\n",
        ),
        (json!(["nosuid"]), "0\nro,nosuid,nodev,noexec,relatime\n"),
    ] {
        for cgroupns in [true, false] {
            let mut c = sh(script);
            c["mounts"].as_array_mut().expect("mounts").push(json!(
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": options}));
            if !cgroupns {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .expect("namespaces")
                    .retain(|n| n["type"] != "cgroup");
            }
            let out = run_config(&format!("cgroup-rw-{cgroupns}"), &c);
            assert!(out.status.success(), "{options} {cgroupns}: {out:?}");
            assert_eq!(stdout(&out), expect, "{options}, cgroupns {cgroupns}");
        }
    }
}

/// A scratch directory holding `file` (with `text`) and `dir` (with an empty `inside`),
/// to bind into containers.
fn bind_sources(name: &str, text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = scratch(name);
    let file = dir.path().join("file");
    std::fs::write(&file, text).expect("write file");
    let data = dir.path().join("dir");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("inside"), "").expect("write");
    (dir, file, data)
}

/// A recursive bind of `src` at `dest`.
fn bind(src: &Path, dest: &str) -> Value {
    json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind"]})
}

#[test]
fn a_mount_onto_a_device_path_replaces_the_device() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let (_dir, file, data) = bind_sources("devnull-bind", "from the host\n");
    // Made with mknod (rootful) and bound from the host (user namespace): the mount wins
    // either way, a file or a directory (which was `create device /dev/null: ENOTDIR`).
    for userns in [false, true] {
        let mut c = sh("cat /dev/null; ls /dev/full /dev/zero; ls /dev/tty/");
        c["mounts"]
            .as_array_mut()
            .expect("mounts")
            .extend([bind(&file, "/dev/null"), bind(&data, "/dev/tty")]);
        if userns {
            c = rootfs::with_userns(c, 0x7b0000, 0x7b0000, 65536);
        }
        let out = run_config(&format!("devnull-{userns}"), &c);
        assert!(out.status.success(), "userns {userns}: {out:?}");
        assert_eq!(
            stdout(&out),
            "from the host\n/dev/full\n/dev/zero\ninside\n",
            "userns {userns}"
        );
    }
    // A device of the config and a mount at one path: which one is meant is unclear.
    let mut c = sh("true");
    c["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(bind(&file, "/dev/xnull"));
    c["linux"]["devices"] = json!([{"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3}]);
    let out = run_config("devnull-both", &c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux.devices[0].path") && err.contains("mounts[7]"),
        "{err}"
    );
}

/// Mount targets missing from the image are made: the last component in its parent, a
/// whole missing path component by component, a file for a file's bind; the workload
/// sees the mounts there.
#[test]
fn missing_mount_targets_are_made() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let (_dir, file, data) = bind_sources("mount-targets", "a file\n");
    let mut c = sh("ls /etc/one /made/on/demand; cat /made/as/file /etc/single");
    c["mounts"].as_array_mut().expect("mounts").extend([
        bind(&data, "/etc/one"),
        bind(&data, "/made/on/demand"),
        bind(&file, "/made/as/file"),
        bind(&file, "/etc/single"),
    ]);
    let out = run_config("mount-targets", &c);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "/etc/one:\ninside\n\n/made/on/demand:\ninside\na file\na file\n"
    );
}

#[test]
fn joins_a_pid_namespace_by_path() {
    if !require_root(
        "runs containers on a rootful installation: mounts, cgroups, a reserved id block",
    ) {
        return;
    }
    let dir = scratch("pidjoin");
    let root = dir.path().join("state");
    // The first container: its own pid namespace, a sleep as its pid 1.
    let a = rootfs::bundle(&dir.path().join("a"), &rootfs::config(&["sleep", "30"]));
    let pid_file = dir.path().join("pid");
    let out = run(warren(&root)
        .args(["create", "-b"])
        .arg(&a)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("pid-a")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()));
    assert!(out.status.success(), "{out:?}");
    ok(warren(&root).args(["start", "pid-a"]));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns link");
    // The second joins it by path: same namespace inode, the first one's init is its pid 1.
    let mut c = sh("readlink /proc/self/ns/pid; echo me=$$; cat /proc/1/cmdline; echo");
    for n in c["linux"]["namespaces"].as_array_mut().expect("namespaces") {
        if n["type"] == "pid" {
            n["path"] = json!(format!("/proc/{pid}/ns/pid"));
        }
    }
    let b = rootfs::bundle(&dir.path().join("b"), &c);
    let out = run(warren(&root).args(["run", "-b"]).arg(&b).arg("pid-b"));
    let _ = run(warren(&root).args(["delete", "--force", "pid-a"]));
    let s = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(s.contains(&format!("{}\n", ns.display())), "{s} vs {ns:?}");
    assert!(s.contains("sleep"), "{s}");
    assert!(!s.contains("me=1\n"), "{s}");
    assert!(!root.join("pid-b").exists(), "state of pid-b left behind");
}

/// Subcommands are built only when invoked (clap's `defer`): each still shows its own help
/// text and requires its own arguments.
#[test]
fn subcommands_keep_their_help_and_required_arguments() {
    let help = |sub: &str| stdout(&run(Command::new(bin("warren")).args([sub, "--help"])));
    assert!(
        help("run").starts_with("Create and start a container"),
        "{}",
        help("run")
    );
    assert!(help("create").starts_with("Create a container from a bundle"));
    assert!(help("kill").starts_with("Send a signal"));

    let out = run(Command::new(bin("warren")).arg("create"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("<ID>"),
        "{out:?}"
    );
    let out = run(Command::new(bin("warren")).arg("run"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the container"));
}
