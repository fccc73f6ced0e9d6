//! `warren::container` as a library in a busy multithreaded host: 200 containers created,
//! run and deleted 8 at a time while other threads allocate; none hangs, nothing leaks.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{require_root, scratch};
use oci_spec::runtime::{ContainerState, Spec};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use warren::container::{Container, CreateOptions};

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .count()
}

/// Mounts at or below `dir` (other tests of this binary mount elsewhere meanwhile).
fn mount_count(dir: &std::path::Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
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

/// Set in the child that runs a test alone.
const CHILD: &str = "WARREN_LIBRARY_TEST_CHILD";

/// Container processes are clones of this test binary, which therefore must run from a
/// copy no container can write (`warren::container::exe`): that takes an execve, which
/// would end every other test of this process. So the test re-runs itself alone in a
/// child that re-executes itself sealed first. True in the parent (the child ran the
/// test and passed); false in the child, which goes on with the test.
fn run_sealed_alone(name: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        warren::container::exe::reexec_sealed().expect("re-execute sealed");
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test in a child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in a sealed child: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn many_threads_create_and_delete_200_containers() {
    if !require_root("creates containers through the library as root") {
        return;
    }
    if run_sealed_alone("many_threads_create_and_delete_200_containers") {
        return;
    }
    let dir = scratch("library");
    let rootfs_dir = dir.path().join("rootfs");
    rootfs::busybox_rootfs(&rootfs_dir);
    let root = dir.path().join("state");
    let spec: Spec =
        serde_json::from_value(rootfs::config(&["sh", "-c", "exit $((3 + 4))"])).expect("spec");
    let (fds_before, mounts_before) = (fd_count(), mount_count(dir.path()));

    // Allocator noise, and an abort instead of hanging forever.
    let stress = common::Stress::start(4, 4096, "library test");

    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (next, spec, root, rootfs_dir) =
                (next.clone(), spec.clone(), root.clone(), rootfs_dir.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 200 {
                        return;
                    }
                    let id = format!("lib-{i}");
                    let two_step = i % 10 == 0;
                    let opts = CreateOptions {
                        rootfs: Some(rootfs_dir.clone()),
                        start: !two_step,
                        stdio: [devnull(), devnull(), devnull()],
                        ..Default::default()
                    };
                    let mut c = Container::create(&root, &id, &spec, opts)
                        .unwrap_or_else(|e| panic!("create {id}: {e}"));
                    if two_step {
                        assert_eq!(c.status(), ContainerState::Created, "{id}");
                        c.start().unwrap_or_else(|e| panic!("start {id}: {e}"));
                    }
                    assert!(c.pidfd().is_some());
                    let status = c.wait().unwrap_or_else(|e| panic!("wait {id}: {e}"));
                    assert_eq!(status.code(), Some(7), "{id}");
                    assert_eq!(c.status(), ContainerState::Stopped, "{id}");
                    c.delete(false)
                        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    stress.stop();

    assert_eq!(Container::list(&root).expect("list").len(), 0);
    let left: Vec<_> = std::fs::read_dir(&root).expect("read root").collect();
    assert!(left.is_empty(), "state left: {left:?}");
    assert_eq!(fd_count(), fds_before, "fds leaked");
    assert_eq!(mount_count(dir.path()), mounts_before, "mounts leaked");
    // No zombie children left.
    let zombie = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    assert!(
        matches!(zombie, Err(nix::errno::Errno::ECHILD)),
        "unreaped child: {zombie:?}"
    );
}

/// A process still running from a binary a container could write (this test binary,
/// not re-executed) may not clone container processes whose root is the host's root and
/// leave them where a container process can reach them (a created, not started init:
/// `exec` may join it). Created and started in one step, nothing can
/// (`exe::init_exposed`), and it may.
#[test]
fn an_unsealed_process_may_not_create_a_container_without_a_user_namespace() {
    if !require_root("creates containers through the library as root") {
        return;
    }
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = scratch("library-unsealed");
    let rootfs_dir = dir.path().join("rootfs");
    rootfs::busybox_rootfs(&rootfs_dir);
    let spec: Spec = serde_json::from_value(rootfs::config(&["true"])).expect("spec");
    let opts = |start| CreateOptions {
        rootfs: Some(rootfs_dir.clone()),
        start,
        ..Default::default()
    };
    let state = dir.path().join("state");
    let err = Container::create(&state, "unsealed", &spec, opts(false))
        .expect_err("an unsealed process created a container");
    assert!(
        matches!(err, warren::container::Error::ExposedBinary { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("reexec_sealed"), "{err}");
    let run = Container::create(&state, "unsealed-run", &spec, opts(true))
        .expect("created and started in one step");
    run.wait().expect("wait");
    run.delete(true).expect("delete");
}

/// A runtime whose state, store and run dirs all live in `dir`.
fn runtime(dir: &std::path::Path) -> warren::runtime::Runtime {
    let opts = warren::runtime::RuntimeOptions {
        state_dir: dir.join("state"),
        store_dir: dir.join("state/store"),
        run_dir: dir.join("run"),
        pool: None,
    };
    warren::runtime::Runtime::open(opts).expect("open runtime")
}

fn busybox(command: &str) -> warren::runtime::ContainerConfig {
    warren::runtime::ContainerConfig {
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        stdio: [devnull(), devnull(), devnull()],
        ..Default::default()
    }
}

/// Polls `f` until it gives something; panics after a minute (a hang, not a timing).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `ppid` and state letter of `pid`, while it exists.
fn parent_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

/// A scheduler that drops its handles never accumulates zombies: each dropped child is
/// reaped when it exits, and its exit facts land in its state.
#[test]
fn dropped_handles_leave_no_zombie_and_record_the_exit() {
    if !require_root("runs containers through the runtime as root") {
        return;
    }
    common::require_tool("busybox", "busybox-static");
    let dir = scratch("library-zombies");
    let rt = runtime(dir.path());
    let mut pids = Vec::new();
    for i in 0..20 {
        let name = format!("z{i}");
        let h = rt
            .run(&name, busybox(&format!("exit {i}")))
            .unwrap_or_else(|e| panic!("run {name}: {}", warren::error_line(&e)));
        pids.push((name, h.pid()));
        drop(h);
    }
    let me = std::process::id() as i32;
    for (name, pid) in &pids {
        let exit = eventually(&format!("{name} exit facts"), || {
            rt.list()
                .expect("list")
                .into_iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.exit)
        });
        let i: i32 = name[1..].parse().unwrap();
        assert_eq!(
            (exit.code, exit.signal),
            (Some(i), None),
            "{name}: {exit:?}"
        );
        // Recorded after the reap: the init is gone, not a zombie of ours.
        if let Some((ppid, state)) = parent_and_state(*pid) {
            assert!(
                ppid != me || state != 'Z',
                "{name} (pid {pid}) is a zombie of the test process"
            );
        }
    }
    for (name, _) in &pids {
        rt.delete(name, false).expect("delete");
    }
}

/// The exit facts: a code, a signal, an OOM kill (the container's own cgroup counts it),
/// read back through a handle attached afterwards.
#[test]
fn exit_facts_say_code_signal_and_oom() {
    if !require_root("runs containers through the runtime as root") {
        return;
    }
    common::require_tool("busybox", "busybox-static");
    let dir = scratch("library-exit");
    let rt = runtime(dir.path());
    let h = rt.run("code", busybox("exit 7")).expect("run");
    let exit = h.wait_exit().expect("wait");
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (Some(7), None, false)
    );
    assert_eq!(
        rt.attach("code").expect("attach").exit().expect("exit"),
        Some(exit)
    );

    let h = rt.run("sig", busybox("sleep 100")).expect("run");
    h.kill(libc::SIGKILL).expect("kill");
    let exit = h.wait_exit().expect("wait");
    assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGKILL)));
    assert_eq!(exit.status_code(), 137);

    let mut cfg = busybox("head -c 200000000 /dev/zero | tail -c 200000000 >/dev/null");
    cfg.resources = Some(
        serde_json::from_value(
            serde_json::json!({"memory": {"limit": 33554432, "swap": 33554432}}),
        )
        .expect("resources"),
    );
    let h = rt.run("oom", cfg).expect("run");
    let exit = h.wait_exit().expect("wait");
    assert!(exit.oom_killed, "{exit:?}");
    assert!(rt.attach("nope").is_err());
    for name in ["code", "sig", "oom"] {
        rt.delete(name, false).expect("delete");
    }
}

/// With a monitor, the init is the monitor's child, not ours: the creator can go away and
/// anyone attached later reads the exit the monitor recorded.
#[test]
fn a_monitored_container_records_its_exit_for_whoever_attaches() {
    if !require_root("runs containers through the runtime as root") {
        return;
    }
    common::require_tool("busybox", "busybox-static");
    let dir = scratch("library-monitor");
    let rt = runtime(dir.path())
        .with_helper(common::bin("warren"))
        .with_monitor(true);
    let (stdin, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut cfg = busybox("read x; exit 5");
    cfg.stdio[0] = Some(stdin);
    let h = rt
        .run("mon", cfg)
        .unwrap_or_else(|e| panic!("run: {}", warren::error_line(&e)));
    let pid = h.pid();
    let (ppid, _) = parent_and_state(pid).expect("init runs");
    assert_ne!(
        ppid,
        std::process::id() as i32,
        "the monitor is the init's parent"
    );
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).expect("parent cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--warren-monitor-v1"),
        "parent {ppid}: {cmdline:?}"
    );
    drop(h);
    let adopted = rt.attach("mon").expect("attach");
    assert_eq!(adopted.pid(), pid);
    assert!(adopted.pidfd().is_some());
    // EOF on its stdin: `read` fails, `exit 5`.
    drop(writer);
    let exit = adopted.wait_exit().expect("wait");
    assert_eq!((exit.code, exit.signal), (Some(5), None), "{exit:?}");
    assert_eq!(adopted.wait().expect("wait again").code(), Some(5));
    rt.delete("mon", false).expect("delete");
}
