//! A running container controlled through its cgroup (the library behind `runc pause`,
//! `resume`, `update`, `events --stats`, `ps`) and its device rules, on this host's cgroups
//! (hybrid: v1 controllers) and in a private cgroup v2 view (a mount namespace of the test
//! thread whose /sys/fs/cgroup is a fresh cgroup2 mount), as a pure v2 host would have it.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, ok, require_root, run, scratch};
use serde_json::{Value, json};
use warren::container::Container;
use warren::container::cgroup::Version;

fn warren(root: &Path) -> Command {
    let mut c = Command::new(bin("warren"));
    c.arg("--root").arg(root);
    c
}

/// `rootfs::config` running `script`, with CAP_MKNOD (to make device nodes in /dev).
fn config(script: &str) -> Value {
    let mut c = rootfs::config(&["sh", "-c", script]);
    for set in ["bounding", "effective", "permitted"] {
        c["process"]["capabilities"][set]
            .as_array_mut()
            .expect("caps")
            .push(json!("CAP_MKNOD"));
    }
    c
}

/// A started container `id` of `config` in `dir`; returns the state root and init pid.
fn start(dir: &Path, id: &str, config: &Value) -> (PathBuf, i32) {
    let b = dir.join(id);
    std::fs::create_dir_all(&b).expect("mkdir bundle");
    rootfs::bundle(&b, config);
    let root = dir.join("state");
    // Not a pipe: the container inherits it, and would hold the read open.
    let log = dir.join(format!("{id}.err"));
    let out = run(warren(&root)
        .args(["create", "-b"])
        .arg(&b)
        .arg(id)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create log")));
    assert!(
        out.status.success(),
        "create {id}: {out:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    ok(warren(&root).args(["start", id]));
    let c = Container::load(&root, id).expect("load");
    (root, c.pid())
}

/// Polls `f` until it is true (10 s at most: a stuck kernel is a failure, not a wait).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A block device node the host's root can open: the first loop device, 7:0 (disks are
/// not readable even by root on the test VM). Panics when the loop driver is missing.
fn a_disk() -> (u32, u32) {
    assert!(
        std::fs::File::open("/dev/loop0").is_ok(),
        "/dev/loop0 cannot be opened: modprobe loop"
    );
    (7, 0)
}

/// Runs a container with the device rules `rules` that makes a node of a block device
/// and reads it, and writes /dev/null; returns what it printed.
fn device_probe(dir: &Path, id: &str, rules: Value) -> String {
    let (major, minor) = a_disk();
    let mut c = config(&format!(
        "mknod /dev/disk b {major} {minor} && echo made; \
         head -c 512 /dev/disk >/dev/null 2>/dev/err && echo disk-read || cat /dev/err; \
         echo x > /dev/null && echo null-ok"
    ));
    c["linux"]["resources"] = json!({ "devices": rules });
    let b = dir.join(id);
    std::fs::create_dir_all(&b).expect("mkdir bundle");
    rootfs::bundle(&b, &c);
    let out = run(warren(&dir.join("state"))
        .args(["run", "-b"])
        .arg(&b)
        .arg(id));
    assert!(out.status.success(), "{id}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Default rules (deny all, as docker and podman send): the block device node can be made
/// (runc's defaults allow mknod) but not opened; a rule for it lets it be read.
fn device_rules_are_enforced(dir: &Path, suffix: &str) {
    let (major, minor) = a_disk();
    let denied = device_probe(
        dir,
        &format!("dev-deny{suffix}"),
        json!([{"allow": false, "access": "rwm"}]),
    );
    assert!(denied.contains("made\n"), "{denied}");
    assert!(denied.contains("Operation not permitted"), "{denied}");
    assert!(!denied.contains("disk-read"), "{denied}");
    assert!(denied.contains("null-ok\n"), "{denied}");
    let allowed = device_probe(
        dir,
        &format!("dev-allow{suffix}"),
        json!([{"allow": false, "access": "rwm"},
               {"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}]),
    );
    assert!(allowed.contains("disk-read\n"), "{allowed}");
    assert!(allowed.contains("null-ok\n"), "{allowed}");
}

#[test]
fn device_rules_deny_a_disk_node_and_allow_what_they_list() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-devices");
    device_rules_are_enforced(dir.path(), "");
}

/// A node listed in `linux.devices` is allowed beside deny-all rules, as runc does: the
/// config that makes the node also lets it open.
#[test]
fn a_configured_device_node_is_allowed() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-devnode");
    let (major, minor) = a_disk();
    let mut c = config(
        "head -c 512 /dev/xdisk >/dev/null 2>/dev/err && echo disk-read || cat /dev/err; \
         mknod /dev/other b 7 1 && head -c 1 /dev/other 2>&1 || true",
    );
    c["linux"]["devices"] =
        json!([{"path": "/dev/xdisk", "type": "b", "major": major, "minor": minor}]);
    c["linux"]["resources"] = json!({ "devices": [{"allow": false, "access": "rwm"}] });
    let b = dir.path().join("bundle");
    std::fs::create_dir_all(&b).expect("mkdir bundle");
    rootfs::bundle(&b, &c);
    let out = run(warren(&dir.path().join("state"))
        .args(["run", "-b"])
        .arg(&b)
        .arg("devnode"));
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("disk-read\n"), "{said}");
    // Only the listed node: another device stays denied.
    assert!(said.contains("Operation not permitted"), "{said}");
}

/// What docker sends for every container: zeros meaning "unset" beside its device rules.
/// It runs, and the kernel's defaults stay (cpu.shares 0 is not the minimum weight).
#[test]
fn docker_zero_resources_are_unset() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-docker");
    let mut c = config("sleep 1000");
    c["linux"]["resources"] = json!({
        "devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
        "memory": {"limit": 0, "reservation": 0, "swap": 0, "kernel": 0, "kernelTCP": 0},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0,
                "realtimePeriod": 0, "cpus": "", "mems": ""},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0}
    });
    let (root, pid) = start(dir.path(), "docker", &c);
    let cg = Container::load(&root, "docker")
        .expect("load")
        .record()
        .cgroup
        .clone()
        .expect("device rules give it a cgroup of its own");
    assert_eq!(cg.path(), Path::new("warren/docker"));
    let theirs = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let host = |f: &str| read(&Path::new("/sys/fs/cgroup").join(f));
    match cg.version() {
        Some(Version::V1) => {
            assert!(
                theirs.contains(":cpu:/warren/docker")
                    || theirs.contains(":cpu,cpuacct:/warren/docker"),
                "{theirs}"
            );
            assert!(theirs.contains(":name=systemd:/warren/docker"), "{theirs}");
            assert_eq!(host("cpu/warren/docker/cpu.shares"), "1024");
            assert_eq!(host("pids/warren/docker/pids.max"), "max");
            assert_eq!(
                host("memory/warren/docker/memory.limit_in_bytes"),
                host("memory/memory.limit_in_bytes")
            );
        }
        Some(Version::V2) => assert!(theirs.contains("0::/warren/docker"), "{theirs}"),
        None => unreachable!(),
    }
    ok(warren(&root).args(["delete", "--force", "docker"]));
}

/// A busy loop counting into /tmp/c; its value seen through /proc/PID/root.
fn counter(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/c"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

const BUSY: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; done";

/// Pause stops the loop (the counter stays put across two reads), resume restarts it.
fn pause_and_resume(root: &Path, id: &str, pid: i32) {
    eventually("the loop counts", || counter(pid).is_some_and(|n| n > 10));
    let c = Container::load(root, id).expect("load");
    assert!(!c.paused().expect("paused"));
    c.pause().expect("pause");
    assert!(c.paused().expect("paused"));
    let first = counter(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(pid), first, "the loop ran while paused");
    c.resume().expect("resume");
    assert!(!c.paused().expect("paused"));
    eventually("the loop counts again", || counter(pid) > first);
}

#[test]
fn pause_freezes_the_workload_and_resume_thaws_it() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-pause");
    let mut c = config(BUSY);
    c["linux"]["resources"] = json!({"pids": {"limit": 100}});
    let (root, pid) = start(dir.path(), "pause", &c);
    pause_and_resume(&root, "pause", pid);
    // A paused container can still be deleted.
    Container::load(&root, "pause")
        .expect("load")
        .pause()
        .expect("pause");
    ok(warren(&root).args(["delete", "--force", "pause"]));
}

#[test]
fn update_changes_the_limits_the_container_sees_and_records_them() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-update");
    let mut c = config("sleep 1000");
    c["linux"]["resources"] = json!({"pids": {"limit": 50}, "memory": {"limit": 64 << 20}});
    c["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}));
    let (root, pid) = start(dir.path(), "update", &c);
    let inside = |f: &str| {
        read(&PathBuf::from(format!(
            "/proc/{pid}/root/sys/fs/cgroup/{f}"
        )))
    };
    assert_eq!(inside("pids/pids.max"), "50");
    // What docker sends: zeros (unset) beside the values that change.
    let update = serde_json::from_value(json!({
        "pids": {"limit": 20},
        "memory": {"limit": 32 << 20, "reservation": 0, "swap": 0},
        "cpu": {"shares": 0, "quota": 0},
        "blockIO": {"weight": 0}
    }))
    .expect("resources");
    Container::load(&root, "update")
        .expect("load")
        .update(&update)
        .expect("update");
    assert_eq!(inside("pids/pids.max"), "20");
    assert_eq!(
        inside("memory/memory.limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    // Zero shares left the default alone.
    assert_eq!(inside("cpu/cpu.shares"), "1024");
    // The state records the new values.
    let c = Container::load(&root, "update").expect("load");
    let recorded = c
        .record()
        .cgroup
        .as_ref()
        .and_then(|cg| cg.resources())
        .expect("recorded resources");
    assert_eq!(recorded.pids().as_ref().map(|p| p.limit()), Some(20));
    assert_eq!(
        recorded.memory().as_ref().and_then(|m| m.limit()),
        Some(32 << 20)
    );
    ok(warren(&root).args(["delete", "--force", "update"]));
}

#[test]
fn stats_and_pids_report_the_containers_processes() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-stats");
    let mut c = config("sleep 1000 & sleep 1000 & echo ready > /tmp/ready; wait");
    c["linux"]["resources"] = json!({"pids": {"limit": 40}, "memory": {"limit": 64 << 20}});
    let (root, pid) = start(dir.path(), "stats", &c);
    eventually("the sleeps started", || {
        Path::new(&format!("/proc/{pid}/root/tmp/ready")).exists()
    });
    let c = Container::load(&root, "stats").expect("load");
    let pids = c.pids().expect("pids");
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&pid), "{pids:?}");
    // busybox runs an applet by exec'ing /proc/self/exe and only then names itself
    // "sleep": a just-forked sleep is briefly "exe".
    for p in &pids {
        let comm = Path::new(&format!("/proc/{p}/comm")).to_path_buf();
        eventually("the workload's names settle", || {
            matches!(read(&comm).as_str(), "sh" | "sleep")
        });
    }
    let stats = c.stats().expect("stats");
    assert_eq!(stats.pids.current, 3);
    assert_eq!(stats.pids.limit, 40);
    assert_eq!(stats.memory.usage.limit, 64 << 20);
    assert!(stats.memory.usage.usage > 0);
    assert!(stats.cpu.usage.total > 0);
    // Serialized as runc's `events --stats` data.
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(json["pids"]["current"], 3);
    assert!(json["cpu"]["usage"]["total"].as_u64().is_some(), "{json}");
    assert!(
        json["memory"]["usage"]["limit"].as_u64().is_some(),
        "{json}"
    );
    ok(warren(&root).args(["delete", "--force", "stats"]));
}

#[test]
fn a_container_without_a_cgroup_lists_its_pid_namespace_and_cannot_be_paused() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-none");
    let mut c = config("sleep 1000 & echo ready > /tmp/ready; wait");
    // Nothing that needs a cgroup: no limits, no device rules, no cgroup namespace.
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "cgroup");
    let (root, pid) = start(dir.path(), "nocg", &c);
    eventually("the sleep started", || {
        Path::new(&format!("/proc/{pid}/root/tmp/ready")).exists()
    });
    let c = Container::load(&root, "nocg").expect("load");
    assert!(c.record().cgroup.is_none());
    let pids = c.pids().expect("pids");
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.contains(&pid));
    let err = c.pause().expect_err("no cgroup").to_string();
    assert!(
        err.starts_with("container nocg has no cgroup: pause"),
        "{err}"
    );
    let err = c
        .update(&serde_json::from_value(json!({"pids": {"limit": 5}})).expect("resources"))
        .expect_err("no cgroup")
        .to_string();
    assert!(
        err.starts_with("container nocg has no cgroup: update"),
        "{err}"
    );
    assert!(!c.paused().expect("paused"));
    ok(warren(&root).args(["delete", "--force", "nocg"]));
}

/// Gives the calling thread (and what it spawns) a private mount namespace whose
/// /sys/fs/cgroup is a fresh cgroup2 mount: a pure cgroup v2 host as warren sees it. On
/// this hybrid host that hierarchy holds no cpu/memory/pids controller (they are bound to
/// v1); placement, freezing, device programs and process lists need none.
fn enter_cgroup2_view() {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount cgroup2 (a kernel without cgroup v2?)");
    assert!(Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
}

#[test]
fn cgroup_v2_view_places_freezes_lists_and_filters_devices() {
    if !require_root("makes, freezes and limits cgroups under /sys/fs/cgroup") {
        return;
    }
    let dir = scratch("cg-v2");
    // The test thread's own mount namespace: ends with the test.
    enter_cgroup2_view();
    let (root, pid) = start(dir.path(), "v2", &config(BUSY));
    let c = Container::load(&root, "v2").expect("load");
    let cg = c.record().cgroup.clone().expect("a cgroup");
    assert_eq!(cg.version(), Some(Version::V2));
    assert_eq!(cg.dirs(), [Path::new("/sys/fs/cgroup/warren/v2")]);
    let theirs = read(Path::new(&format!("/proc/{pid}/cgroup")));
    assert!(theirs.lines().any(|l| l == "0::/warren/v2"), "{theirs}");
    assert_eq!(c.pids().expect("pids"), [pid]);
    pause_and_resume(&root, "v2", pid);
    assert!(c.stats().is_ok());
    ok(warren(&root).args(["delete", "--force", "v2"]));
    assert!(!Path::new("/sys/fs/cgroup/warren/v2").exists());
    device_rules_are_enforced(dir.path(), "-v2");
}
