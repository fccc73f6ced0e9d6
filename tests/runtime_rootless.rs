//! The OCI runtime as an unprivileged user: ids mapped through newuidmap/newgidmap from
//! the user's subordinate ranges (all of its lines); ids those do not hold are an error.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{ROOTLESS_USER, as_rootless, bin, ensure_rootless_user, lo_flags, run, scratch};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The test user's first subordinate uid as /etc/subuid has it (useradd may have given it
/// a default range before `ensure_rootless_user` ran).
fn subuid_start() -> u32 {
    ensure_rootless_user();
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
