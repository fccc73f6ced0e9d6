//! Cgroup planning and layout against fixture trees in a tempdir: no root, no cgroupfs.
//! A fixture holds what the kernel would show (`cgroup.controllers`, `cgroup.procs`, a new
//! v1 cpuset's empty files); regular files keep only the last value written to them.

use std::path::Path;

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::resources::settings;
use super::{Cgroup, CgroupError, Version};

fn resources(value: serde_json::Value) -> LinuxResources {
    serde_json::from_value(value).expect("valid linux.resources")
}

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write fixture");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The (file, value) pairs planned for `value` on `version`.
fn planned(value: serde_json::Value, version: Version) -> Result<Vec<(String, String)>, String> {
    settings(Some(&resources(value)), version)
        .map(|s| s.into_iter().map(|s| (s.file, s.value)).collect())
        .map_err(|e| e.to_string())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

#[test]
fn v2_limits_are_written_in_the_leaf_with_controllers_enabled_above_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for dir in ["", "warren"] {
        put(
            &root.join(dir).join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        put(&root.join(dir).join("cgroup.subtree_control"), "");
    }
    let res = resources(json!({
        "memory": {"limit": 67108864, "swap": 134217728},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
        "pids": {"limit": 32},
    }));
    let cgroup = Cgroup::create_at(root, "web", Some(&res), None).expect("create");
    let leaf = root.join("warren/web");
    assert_eq!(cgroup.version(), Some(Version::V2));
    assert_eq!(cgroup.dirs(), std::slice::from_ref(&leaf));
    for (file, value) in [
        ("memory.max", "67108864"),
        // v2 limits swap alone: OCI's memory+swap minus memory.
        ("memory.swap.max", "67108864"),
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("pids.max", "32"),
    ] {
        assert_eq!(read(&leaf.join(file)), value, "{file}");
    }
    // Enabled on each level above the leaf, in name order (the last write is pids).
    for dir in [root.to_path_buf(), root.join("warren")] {
        assert_eq!(read(&dir.join("cgroup.subtree_control")), "+pids");
    }
    assert!(!leaf.join("cgroup.subtree_control").exists());
}

#[test]
fn v2_controller_not_delegated_is_an_error_naming_it_and_the_file() {
    let root = tempfile::tempdir().expect("tempdir");
    put(&root.path().join("cgroup.controllers"), "cpu pids\n");
    let res = resources(json!({"memory": {"limit": 1048576}}));
    let err = Cgroup::create_at(root.path(), "web", Some(&res), None).expect_err("no memory");
    let shown = err.to_string();
    assert!(matches!(&err, CgroupError::Unsupported { controller, .. } if controller == "memory"));
    assert!(shown.contains("cgroup.controllers"), "{shown}");
}

/// A hybrid-like v1 tree: `cpu` and `cpuacct` linked to one `cpu,cpuacct` hierarchy, a
/// cpuset whose new directories start empty, and a named `systemd` hierarchy.
fn v1_fixture(root: &Path) {
    for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "systemd"] {
        put(&root.join(h).join("cgroup.procs"), "");
    }
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).expect("link");
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).expect("link");
    put(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    put(&root.join("cpuset/cpuset.mems"), "0\n");
    for dir in ["cpuset/warren", "cpuset/warren/web"] {
        put(&root.join(dir).join("cpuset.cpus"), "");
        put(&root.join(dir).join("cpuset.mems"), "");
    }
}

#[test]
fn v1_limits_go_to_each_controllers_hierarchy_and_every_hierarchy_is_joined() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    v1_fixture(root);
    let res = resources(json!({
        "memory": {"limit": 67108864, "swap": 134217728},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "1"},
        "pids": {"limit": 16},
    }));
    let cgroup = Cgroup::create_at(root, "web", Some(&res), None).expect("create");
    assert_eq!(cgroup.version(), Some(Version::V1));
    // One leaf per distinct hierarchy: the linked cpuacct is not joined twice.
    let leaves: Vec<_> = ["cpu", "cpuset", "memory", "pids", "systemd"]
        .iter()
        .map(|h| root.join(h).join("warren/web"))
        .collect();
    assert_eq!(cgroup.dirs(), leaves);
    for (file, value) in [
        ("cpu/warren/web/cpu.shares", "512"),
        ("cpu/warren/web/cpu.cfs_period_us", "100000"),
        ("cpu/warren/web/cpu.cfs_quota_us", "20000"),
        ("memory/warren/web/memory.limit_in_bytes", "67108864"),
        // v1's memsw is memory+swap, as OCI's swap.
        ("memory/warren/web/memory.memsw.limit_in_bytes", "134217728"),
        ("pids/warren/web/pids.max", "16"),
        ("cpuset/warren/web/cpuset.cpus", "1"),
        // Inherited down the path, so a process can join the new cpuset.
        ("cpuset/warren/cpuset.mems", "0"),
        ("cpuset/warren/web/cpuset.mems", "0"),
    ] {
        assert_eq!(read(&root.join(file)), value, "{file}");
    }
}

/// Deferred, a v1 cgroup with limits is planned whole but made only in the hierarchies
/// of no controller; `make` then makes the rest as `create` would, and the child's
/// `tasks` files are every v1 leaf's.
#[test]
fn a_deferred_v1_cgroup_makes_its_controllers_later() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    v1_fixture(root);
    let res = resources(json!({"memory": {"limit": 67108864}, "pids": {"limit": 16}}));
    let (cgroup, rest) = Cgroup::prepare(root, "", "web", Some(&res), None, true).expect("prepare");
    let rest = rest.expect("deferred");
    let hierarchies = ["cpu", "cpuset", "memory", "pids", "systemd"];
    let leaves: Vec<_> = hierarchies
        .iter()
        .map(|h| root.join(h).join("warren/web"))
        .collect();
    assert_eq!(cgroup.dirs(), leaves);
    let made = |h: &str| root.join(h).join("warren/web").is_dir();
    assert!(made("systemd"));
    // (The fixture has the cpuset leaf already, for its empty files.)
    let early: Vec<_> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|h| made(h))
        .collect();
    assert!(early.is_empty(), "controllers made early: {early:?}");
    let tasks: Vec<_> = leaves.iter().map(|l| l.join("tasks")).collect();
    assert_eq!(cgroup.v1_tasks(), tasks);
    rest.make(&cgroup).expect("make");
    assert!(hierarchies.iter().all(|h| made(h)));
    assert_eq!(
        read(&root.join("memory/warren/web/memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(&root.join("pids/warren/web/pids.max")), "16");
    assert_eq!(read(&root.join("cpuset/warren/web/cpuset.mems")), "0");
    // Without limits nothing is deferred: a cgroup that cannot be made may be left out.
    let (_, rest) =
        Cgroup::prepare(root, "", "bare", None, Some("warren/bare"), true).expect("prepare");
    assert!(rest.is_none());
}

/// A cpuset made anew gets its parent's cpus and mems, the missing directories above
/// it too (made in a walk when the leaf alone cannot be); the facts found while making
/// a cgroup are not part of it (a cgroup read back from its state equals it).
#[test]
fn new_v1_cpusets_inherit_down_a_walk_and_a_cgroup_reads_back_equal() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for h in ["cpuset", "pids"] {
        put(&root.join(h).join("cgroup.procs"), "");
    }
    put(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    put(&root.join("cpuset/cpuset.mems"), "0\n");
    let res = resources(json!({"pids": {"limit": 16}}));
    let web = Cgroup::create_at(root, "web", Some(&res), None).expect("walk");
    let db = Cgroup::create_at(root, "db", Some(&res), None).expect("leaf alone");
    for dir in ["cpuset/warren", "cpuset/warren/web", "cpuset/warren/db"] {
        assert_eq!(read(&root.join(dir).join("cpuset.cpus")), "0-3", "{dir}");
        assert_eq!(read(&root.join(dir).join("cpuset.mems")), "0", "{dir}");
    }
    assert_eq!(read(&root.join("pids/warren/db/pids.max")), "16");
    let text = serde_json::to_string(&web).expect("serialize");
    let back: Cgroup = serde_json::from_str(&text).expect("read back");
    assert_eq!(back, web);
    assert_eq!(back.v1_tasks(), web.v1_tasks());
    assert_ne!(back, db);
}

#[test]
fn v1_controller_without_a_hierarchy_fails_and_leaves_nothing_behind() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    put(&root.join("memory/cgroup.procs"), "");
    let res = resources(json!({"pids": {"limit": 16}}));
    let err = Cgroup::create_at(root, "web", Some(&res), None).expect_err("no pids hierarchy");
    assert!(matches!(&err, CgroupError::Unsupported { controller, .. } if controller == "pids"));
    assert!(!root.join("memory/warren/web").exists());
}

#[test]
fn no_layout_means_no_cgroup_unless_limits_are_asked() {
    let root = tempfile::tempdir().expect("tempdir");
    let cgroup = Cgroup::create_at(root.path(), "web", None, None).expect("no-op");
    assert!(cgroup.is_noop());
    let res = resources(json!({"pids": {"limit": 16}}));
    let err = Cgroup::create_at(root.path(), "web", Some(&res), None).expect_err("limits");
    assert!(err.to_string().contains("no cgroup filesystem"), "{err}");
}

#[test]
fn open_finds_only_existing_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    v1_fixture(root);
    std::fs::create_dir_all(root.join("memory/machine/web")).expect("mkdir");
    let cgroup = Cgroup::open_at(root, "web", Some("/machine/web")).expect("open");
    assert_eq!(cgroup.version(), Some(Version::V1));
    assert_eq!(cgroup.dirs(), [root.join("memory/machine/web")]);
    let gone = Cgroup::open_at(root, "other", None).expect("open");
    assert!(gone.is_noop());
}

#[test]
fn resources_table_per_version() {
    let memory = json!({"memory": {"limit": -1, "reservation": 4096}});
    assert_eq!(
        planned(memory.clone(), Version::V1),
        Ok(pairs(&[
            ("memory.limit_in_bytes", "-1"),
            ("memory.soft_limit_in_bytes", "4096"),
        ]))
    );
    assert_eq!(
        planned(memory, Version::V2),
        Ok(pairs(&[("memory.max", "max"), ("memory.low", "4096")]))
    );
    // shares [2, 262144] -> weight [1, 10000]; a quota without a period keeps the kernel's.
    let cpu = |shares: u64| json!({"cpu": {"shares": shares, "quota": -1}});
    assert_eq!(
        planned(cpu(2), Version::V2),
        Ok(pairs(&[("cpu.weight", "1"), ("cpu.max", "max")]))
    );
    assert_eq!(
        planned(cpu(262144), Version::V2).map(|s| s[0].1.clone()),
        Ok("10000".into())
    );
    assert_eq!(
        planned(json!({"pids": {"limit": -1}}), Version::V1),
        Ok(pairs(&[("pids.max", "max")]))
    );
    assert_eq!(
        planned(json!({"unified": {"memory.high": "1G"}}), Version::V2),
        Ok(pairs(&[("memory.high", "1G")]))
    );
}

#[test]
fn resources_a_version_cannot_express_are_errors() {
    let v2_only = [
        json!({"memory": {"swap": 1024}}),
        json!({"memory": {"swappiness": 10}}),
        json!({"memory": {"disableOOMKiller": true}}),
        json!({"cpu": {"realtimeRuntime": 100}}),
        json!({"unified": {"nosuch.file": "1"}}),
        json!({"unified": {"memory.x/../y": "1"}}),
    ];
    for value in v2_only {
        assert!(planned(value.clone(), Version::V2).is_err(), "{value}");
    }
    let err = planned(json!({"unified": {"memory.high": "1G"}}), Version::V1);
    assert!(err.is_err_and(|e| e.contains("needs cgroup v2")));
    for value in [
        json!({"blockIO": {"weight": 10}}),
        json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}),
    ] {
        for version in [Version::V1, Version::V2] {
            let err = planned(value.clone(), version).expect_err("rejected");
            assert!(err.contains("not supported by warren"), "{err}");
        }
    }
}

/// What docker and podman send for "no limit": zeros and empty values, unset as in runc.
#[test]
fn zero_and_empty_values_are_unset() {
    let docker = json!({
        "devices": [],
        "memory": {"limit": 0, "reservation": 0, "swap": 0, "kernel": 0, "kernelTCP": 0,
                   "disableOOMKiller": false},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0,
                "realtimePeriod": 0, "cpus": "", "mems": ""},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0, "leafWeight": 0, "weightDevice": [],
                    "throttleReadBpsDevice": [], "throttleWriteIOPSDevice": []},
        "hugepageLimits": [],
        "network": {"classID": 0, "priorities": []},
        "rdma": {},
        "unified": {}
    });
    for version in [Version::V1, Version::V2] {
        assert_eq!(planned(docker.clone(), version), Ok(vec![]), "{version:?}");
    }
    assert!(!super::needed(Some(&resources(docker)), None, true, false));
    // A nonzero value among zeros is still applied (or refused).
    let shares = json!({"cpu": {"shares": 512, "quota": 0, "period": 0}});
    assert_eq!(
        planned(shares, Version::V1),
        Ok(pairs(&[("cpu.shares", "512")]))
    );
    let err = planned(
        json!({"blockIO": {"weight": 0, "leafWeight": 10}}),
        Version::V1,
    );
    assert!(err.is_err_and(|e| e.starts_with("cgroup blkio: ")));
    assert_eq!(
        planned(json!({"memory": {"limit": -1, "swap": 0}}), Version::V2),
        Ok(pairs(&[("memory.max", "max")]))
    );
    assert_eq!(
        planned(json!({"cpu": {"quota": 0, "period": 50000}}), Version::V2),
        Ok(pairs(&[("cpu.max", "max 50000")]))
    );
}

#[test]
fn v2_update_enables_the_controllers_it_newly_needs_and_records_the_values() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for dir in ["", "warren"] {
        put(
            &root.join(dir).join("cgroup.controllers"),
            "cpu memory pids\n",
        );
        put(&root.join(dir).join("cgroup.subtree_control"), "");
    }
    let mut cgroup = Cgroup::create_at(root, "web", None, None).expect("create");
    assert_eq!(read(&root.join("cgroup.subtree_control")), "");
    let update = resources(json!({"pids": {"limit": 20}, "cpu": {"shares": 0}}));
    cgroup.update(&update).expect("update");
    assert_eq!(read(&root.join("warren/web/pids.max")), "20");
    assert!(!root.join("warren/web/cpu.weight").exists());
    for dir in [root.to_path_buf(), root.join("warren")] {
        assert_eq!(read(&dir.join("cgroup.subtree_control")), "+pids");
    }
    let recorded = cgroup.resources().expect("recorded");
    assert_eq!(recorded.pids().as_ref().map(|p| p.limit()), Some(20));
    // A container without a cgroup cannot be updated.
    let mut none = Cgroup::create_at(&root.join("nothing"), "web", None, None).expect("no-op");
    assert!(none.update(&update).is_err());
}

#[test]
fn v2_caller_cgroup_is_split_and_the_container_placed_beside_the_supervisor() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for dir in ["", "system.slice", "system.slice/unit"] {
        put(&root.join(dir).join("cgroup.controllers"), "pids\n");
        put(&root.join(dir).join("cgroup.subtree_control"), "");
    }
    let unit = root.join("system.slice/unit");
    put(&unit.join("cgroup.procs"), "4242\n");
    let res = resources(json!({"pids": {"limit": 16}}));
    let own = "1:name=systemd:/\n0::/system.slice/unit\n";
    let path = super::under_caller("warren-web");
    let cgroup = Cgroup::create_in(root, own, "web", Some(&res), Some(&path)).expect("create");
    let leaf = unit.join("warren-web");
    assert_eq!(cgroup.dirs(), std::slice::from_ref(&leaf));
    assert_eq!(cgroup.path(), Path::new("warren-web"));
    // The caller's processes moved to the supervisor leaf; the unit enables pids for both.
    assert_eq!(read(&unit.join("supervisor/cgroup.procs")), "4242");
    assert_eq!(read(&unit.join("cgroup.subtree_control")), "+pids");
    assert_eq!(read(&leaf.join("pids.max")), "16");
    // A later container from the supervisor leaf goes beside it, no second split.
    let own = "0::/system.slice/unit/supervisor\n";
    let path = super::under_caller("warren-db");
    let db = Cgroup::create_in(root, own, "db", Some(&res), Some(&path)).expect("create");
    assert_eq!(db.dirs(), [unit.join("warren-db")]);
    assert!(!unit.join("supervisor/supervisor").exists());
}
