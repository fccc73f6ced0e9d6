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

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
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
    let (fds_before, mounts_before) = (fd_count(), mount_count());

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
    assert_eq!(mount_count(), mounts_before, "mounts leaked");
    // No zombie children left.
    let zombie = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    assert!(
        matches!(zombie, Err(nix::errno::Errno::ECHILD)),
        "unreaped child: {zombie:?}"
    );
}

/// A process still running from a binary a container could write (this test binary,
/// not re-executed) may not clone container processes whose root is the host's root.
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
    let opts = CreateOptions {
        rootfs: Some(rootfs_dir),
        start: true,
        ..Default::default()
    };
    let err = Container::create(&dir.path().join("state"), "unsealed", &spec, opts)
        .expect_err("an unsealed process created a container");
    assert!(
        matches!(err, warren::container::Error::ExposedBinary { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("reexec_sealed"), "{err}");
}
