//! Container cgroups on this host's real cgroup filesystems (hybrid v1 + controller-less v2 on
//! the test VM; unified v2 elsewhere), plus hosts where nothing is writable.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use oci_spec::runtime::LinuxResources;
use serde_json::json;
use warren::container::cgroup::{Cgroup, DEFAULT_ROOT, Version};

fn resources(value: serde_json::Value) -> LinuxResources {
    serde_json::from_value(value).expect("valid linux.resources")
}

fn unique(name: &str) -> String {
    format!("warren-test-{name}-{}", std::process::id())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The file `file` of the cgroup, in the v1 hierarchy `controller` or the v2 directory.
fn file(cgroup: &Cgroup, controller: &str, file: &str) -> PathBuf {
    let dir = match cgroup.version() {
        Some(Version::V2) => Path::new(DEFAULT_ROOT).join(cgroup.path()),
        _ => Path::new(DEFAULT_ROOT).join(controller).join(cgroup.path()),
    };
    dir.join(file)
}

/// True when `pid` has exited (gone or a zombie).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn limits_are_applied_and_processes_joined() {
    if !common::require_root("makes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let name = unique("limits");
    let res = resources(json!({
        "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20},
        "pids": {"limit": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}
    }));
    let cgroup = Cgroup::create(&name, Some(&res), None).expect("create cgroup");
    assert!(!cgroup.is_noop());
    assert_eq!(cgroup.path(), Path::new("warren").join(&name));

    match cgroup.version() {
        Some(Version::V1) => {
            let f = |c, n| read(&file(&cgroup, c, n));
            assert_eq!(
                f("memory", "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(
                f("memory", "memory.soft_limit_in_bytes"),
                (32u64 << 20).to_string()
            );
            if file(&cgroup, "memory", "memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    f("memory", "memory.memsw.limit_in_bytes"),
                    (128u64 << 20).to_string()
                );
            }
            assert_eq!(f("pids", "pids.max"), "10");
            assert_eq!(f("cpu", "cpu.shares"), "512");
            assert_eq!(f("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(f("cpu", "cpu.cfs_period_us"), "100000");
            assert_eq!(f("cpuset", "cpuset.cpus"), "0");
            assert_eq!(f("cpuset", "cpuset.mems"), "0");
        }
        Some(Version::V2) => {
            let f = |n| read(&file(&cgroup, "", n));
            assert_eq!(f("memory.max"), (64u64 << 20).to_string());
            assert_eq!(f("memory.low"), (32u64 << 20).to_string());
            assert_eq!(f("memory.swap.max"), (64u64 << 20).to_string());
            assert_eq!(f("pids.max"), "10");
            assert_eq!(f("cpu.weight"), "20");
            assert_eq!(f("cpu.max"), "50000 100000");
            assert_eq!(f("cpuset.cpus"), "0");
        }
        None => unreachable!(),
    }

    let mut sleeper = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id() as i32;
    cgroup.add_pid(pid).expect("add pid");
    assert_eq!(cgroup.pids().expect("pids"), vec![pid]);
    for dir in cgroup.dirs() {
        assert_eq!(
            read(&dir.join("cgroup.procs")),
            pid.to_string(),
            "{}",
            dir.display()
        );
    }
    let membership = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let expected = format!("/warren/{name}");
    assert!(
        membership
            .lines()
            .any(|l| l.contains("memory") && l.ends_with(&expected))
            || membership
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&expected)),
        "{membership}"
    );

    // The state file keeps the cgroup; a later process (delete --force) destroys it.
    let saved = serde_json::to_string(&cgroup).expect("serialize");
    let restored: Cgroup = serde_json::from_str(&saved).expect("deserialize");
    assert_eq!(restored, cgroup);
    assert_eq!(restored.resources(), Some(&res));
    let opened = Cgroup::open(&name, None).expect("open");
    assert_eq!(
        (opened.version(), opened.dirs(), opened.path()),
        (cgroup.version(), cgroup.dirs(), cgroup.path())
    );

    restored.destroy().expect("destroy");
    let status = sleeper.wait().expect("wait sleep");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    for dir in cgroup.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    cgroup.destroy().expect("destroy is idempotent");
    assert!(Cgroup::open(&name, None).expect("open").is_noop());
}

#[test]
fn pids_limit_stops_a_fork_bomb_and_destroy_kills_leftovers() {
    if !common::require_root("makes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let name = unique("forkbomb");
    let res = resources(json!({"pids": {"limit": 5}}));
    let cgroup = Cgroup::create(&name, Some(&res), Some(&format!("/warren-tests/{name}")))
        .expect("create cgroup");
    assert_eq!(cgroup.path(), Path::new("warren-tests").join(&name));

    // The shell waits for a line on stdin, so it is in the cgroup before it forks.
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("read go; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 600 >/dev/null 2>&1 & done; echo all started")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    cgroup.add_pid(shell.id() as i32).expect("add pid");
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release the shell");
    let output = shell.wait_with_output().expect("wait sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains("all started"), "{stdout}");
    assert!(stderr.to_lowercase().contains("fork"), "{stderr}");

    // The shell died at its 5th fork; its 4 sleeps are still in the cgroup.
    let leftovers = cgroup.pids().expect("pids");
    assert_eq!(leftovers.len(), 4, "{leftovers:?}");
    for pid in &leftovers {
        assert!(!exited(*pid));
    }
    cgroup.destroy().expect("destroy");
    for pid in &leftovers {
        assert!(exited(*pid), "pid {pid} survived destroy");
    }
    for dir in cgroup.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
        let _ = std::fs::remove_dir(dir.parent().expect("parent"));
    }
}

#[test]
fn limits_the_kernel_rejects_name_controller_and_file() {
    if !common::require_root("makes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let name = unique("rejected");
    let res = resources(json!({"pids": {"limit": 5}, "cpu": {"cpus": "4000"}}));
    let err = Cgroup::create(&name, Some(&res), None)
        .expect_err("cpu 4000 does not exist")
        .to_string();
    assert!(err.starts_with("cgroup cpuset: "), "{err}");
    assert!(err.contains(&format!("{name}/cpuset.cpus")), "{err}");
    assert!(err.contains("\"4000\""), "{err}");
    // Nothing half-done is left behind.
    assert!(Cgroup::open(&name, None).expect("open").is_noop());

    let err = Cgroup::create(
        &name,
        Some(&resources(json!({"blockIO": {"weight": 10}}))),
        None,
    )
    .expect_err("blockIO is not supported")
    .to_string();
    assert!(err.starts_with("cgroup blkio: "), "{err}");

    let err = Cgroup::create(&name, None, Some("../escape"))
        .expect_err("no escaping the hierarchy")
        .to_string();
    assert!(err.contains("`..` is not allowed"), "{err}");
}

#[test]
fn nothing_writable_means_no_cgroup_unless_limits_are_asked() {
    if !common::require_root("makes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    // A read-only empty tmpfs stands in for a host whose cgroups we cannot touch.
    let root = tempfile::tempdir().expect("tempdir");
    nix::mount::mount(
        Some("tmpfs"),
        root.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("mount read-only tmpfs");
    let _unmount = Unmount(root.path().to_path_buf());
    {
        let cgroup = Cgroup::create_at(root.path(), "web", None, None).expect("no-op cgroup");
        assert!(cgroup.is_noop());
        assert!(cgroup.dirs().is_empty());
        cgroup
            .add_pid(std::process::id() as i32)
            .expect("no-op add");
        assert_eq!(cgroup.pids().expect("pids"), Vec::<i32>::new());
        cgroup.destroy().expect("no-op destroy");

        let res = resources(json!({"memory": {"limit": 1 << 30}}));
        let err = Cgroup::create_at(root.path(), "web", Some(&res), None)
            .expect_err("a limit without a cgroup")
            .to_string();
        assert_eq!(
            err,
            format!(
                "cgroup memory: no cgroup filesystem under {}",
                root.path().display()
            )
        );

        // A v1 layout whose hierarchy cannot be written: no-op without limits, a clear error
        // about delegation with them.
        nix::mount::umount(root.path()).expect("umount");
        let pids = root.path().join("pids");
        std::fs::create_dir(&pids).expect("mkdir");
        std::fs::write(pids.join("cgroup.procs"), "").expect("fake hierarchy");
        nix::mount::mount(
            Some(root.path()),
            root.path(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        nix::mount::mount(
            None::<&str>,
            root.path(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remount read-only");
        let cgroup = Cgroup::create_at(root.path(), "web", None, None).expect("no-op cgroup");
        assert!(cgroup.is_noop());
        let res = resources(json!({"pids": {"limit": 5}}));
        let err = Cgroup::create_at(root.path(), "web", Some(&res), None)
            .expect_err("read-only hierarchy")
            .to_string();
        assert!(err.contains("read-only here"), "{err}");
        assert!(err.contains(&format!("{}/warren", pids.display())), "{err}");
    }
}

#[test]
fn a_hierarchy_of_no_controller_it_cannot_join_is_left_out() {
    if !common::require_root("makes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    // A fake v1 layout: a writable `pids` and a read-only named hierarchy `other`.
    let root = tempfile::tempdir().expect("tempdir");
    nix::mount::mount(
        Some("tmpfs"),
        root.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    let _unmount = Unmount(root.path().to_path_buf());
    for h in ["pids", "other"] {
        std::fs::create_dir(root.path().join(h)).expect("mkdir");
        std::fs::write(root.path().join(h).join("cgroup.procs"), "").expect("fake hierarchy");
    }
    let other = root.path().join("other");
    nix::mount::mount(
        Some(&other),
        &other,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind");
    nix::mount::mount(
        None::<&str>,
        &other,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND
            | nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remount read-only");
    let _unmount_other = Unmount(other.clone());
    let cgroup = Cgroup::create_at(root.path(), "web", None, None).expect("create");
    assert_eq!(cgroup.dirs(), [root.path().join("pids/warren/web")]);
    // A controller's hierarchy it cannot join is an error with limits, as before.
    let res = resources(json!({"pids": {"limit": 5}}));
    std::fs::remove_dir(root.path().join("pids/warren/web")).expect("rmdir");
    nix::mount::mount(
        None::<&str>,
        root.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remount the layout read-only");
    let err = Cgroup::create_at(root.path(), "web2", Some(&res), None)
        .expect_err("read-only pids")
        .to_string();
    assert!(err.contains("read-only here"), "{err}");
}

/// Detaches a test mount even when an assertion fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn rootless_without_delegation_runs_without_a_cgroup() {
    if !common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let name = unique("rootless");
    let res = resources(json!({"pids": {"limit": 5}}));
    // SAFETY: the child drops to nobody, runs the library and leaves with _exit; glibc keeps
    // malloc usable in a forked child.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).ok()?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).ok()?;
                let plain = Cgroup::create(&name, None, None).ok()?;
                if !plain.is_noop() {
                    return Some(2);
                }
                // Device rules are left out rootless (as runc): no cgroup, no error.
                let devices = resources(json!({"devices": [{"allow": false, "access": "rwm"}]}));
                if !Cgroup::create(&name, Some(&devices), None).ok()?.is_noop() {
                    return Some(5);
                }
                let err = Cgroup::create(&name, Some(&res), None).err()?.to_string();
                // Beneath its own cgroup (the library's placement): not delegated here.
                let caller = warren::container::cgroup::under_caller(&name);
                if !Cgroup::create(&name, None, Some(&caller)).ok()?.is_noop() {
                    return Some(6);
                }
                let err2 = Cgroup::create(&name, Some(&res), Some(&caller))
                    .err()?
                    .to_string();
                // This host is v1 (hybrid): the hint says what would help there.
                let hint = "cgroup v1 is not delegated to users";
                Some(if err.contains(hint) && err2.contains(hint) {
                    0
                } else {
                    eprintln!("{err}\n{err2}");
                    3
                })
            })()
            .unwrap_or(4);
            // SAFETY: leaving the forked child without running the harness's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "2: got a real cgroup, 3: wrong error, 4: setuid failed or limits applied, \
                 5: device rules made a cgroup, 6: a caller-relative cgroup without limits"
            );
        }
    }
    assert!(Cgroup::open(&name, None).expect("open").is_noop());
}

#[test]
fn a_cgroup_is_needed_for_limits_a_path_the_host_pid_namespace_or_a_cgroup_view() {
    use warren::container::cgroup::needed;
    let none = resources(json!({}));
    let devices = resources(json!({"devices": [{"allow": false, "access": "rwm"}]}));
    let pids = resources(json!({"pids": {"limit": 10}}));
    let memory = resources(json!({"memory": {"limit": 1048576}}));
    let rejected = resources(json!({"rdma": {"mlx": {"hcaHandles": 1}}}));
    assert!(!needed(None, None, true, false));
    assert!(!needed(Some(&none), None, true, false));
    // Device rules need a cgroup when this runtime applies them: root in the initial user
    // namespace (a rootless runtime leaves them out, as runc).
    let root_in_init_ns = nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().eq(["0", "0", "4294967295"]));
    assert_eq!(needed(Some(&devices), None, true, false), root_in_init_ns);
    assert!(!needed(Some(&none), Some(""), true, false));
    assert!(needed(Some(&pids), None, true, false));
    assert!(needed(Some(&memory), None, true, false));
    // So that creating it names what warren cannot apply.
    assert!(needed(Some(&rejected), None, true, false));
    assert!(needed(None, Some("/machine/web"), true, false));
    assert!(needed(None, None, false, false));
    // A container that sees cgroups (a cgroup mount or namespace) sees its own.
    assert!(needed(None, None, true, true));
}

/// What the rootless hint says helps on v1 does: root makes a cgroup the user owns in each
/// hierarchy and moves the user's process into it; limits then work beneath it.
#[test]
fn rootless_limits_work_beneath_a_cgroup_root_delegated_on_v1() {
    if !common::require_root("chowns cgroups to nobody and switches to it") {
        return;
    }
    assert!(
        Path::new(DEFAULT_ROOT).join("pids/cgroup.procs").exists(),
        "this test needs the v1 pids hierarchy (a legacy or hybrid host)"
    );
    let caller = unique("delegated");
    let mut dirs = Vec::new();
    for h in common::hierarchies() {
        let dir = h.join(&caller);
        std::fs::create_dir(&dir).expect("mkdir");
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                std::fs::write(dir.join(f), v.trim()).expect("cpuset");
            }
        }
        for p in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown");
            }
        }
        dirs.push(dir);
    }
    let name = unique("rootless-placed");
    let path = warren::container::cgroup::under_caller(&name);
    // SAFETY: as in rootless_without_delegation_runs_without_a_cgroup.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                for d in &dirs {
                    std::fs::write(d.join("cgroup.procs"), "0").ok()?;
                }
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).ok()?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).ok()?;
                let res = resources(json!({"pids": {"limit": 5}}));
                let cg = match Cgroup::create(&name, Some(&res), Some(&path)) {
                    Ok(cg) => cg,
                    Err(e) => {
                        eprintln!("{e}");
                        return Some(2);
                    }
                };
                let pids = cg
                    .dirs()
                    .iter()
                    .find(|d| d.starts_with("/sys/fs/cgroup/pids"))?;
                let placed = cg
                    .dirs()
                    .iter()
                    .all(|d| d.parent().is_some_and(|p| dirs.contains(&p.to_path_buf())));
                let max = std::fs::read_to_string(pids.join("pids.max")).ok()?;
                cg.destroy().ok()?;
                Some(if placed && max.trim() == "5" { 0 } else { 3 })
            })()
            .unwrap_or(4);
            // SAFETY: leaving the forked child without running the harness's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            for d in &dirs {
                assert!(!d.join(&name).exists(), "{} left behind", d.display());
                let _ = std::fs::remove_dir(d);
            }
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "2: create failed, 3: not beneath the caller or no limit, 4: setup failed"
            );
        }
    }
}
