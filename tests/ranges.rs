//! `warren ranges`: concurrent allocation from separate processes, rootful and rootless.

mod common;

use common::{ROOTLESS_USER, as_rootless, bin, ok, require_root, require_tool, run, scratch};
use std::path::Path;
use std::process::{Command, Stdio};
use warren::idmap::IdRange;
use warren::idmap::alloc::{Pool, Reservation};
use warren::idmap::subid::Host;

fn warren_in(state: &Path) -> Command {
    let mut cmd = Command::new(bin("warren"));
    cmd.env("WARREN_STATE_DIR", state);
    cmd
}

fn parse<T: serde::de::DeserializeOwned>(stdout: &str) -> T {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

#[test]
fn parallel_allocs_from_64_processes_get_distinct_blocks() {
    if !require_root("reserves blocks from the root pool and edits /etc/subuid") {
        return;
    }
    let tmp = scratch("ranges-parallel");
    let children: Vec<_> = (0..64)
        .map(|i| {
            warren_in(tmp.path())
                .args(["ranges", "alloc", &format!("c{i}"), "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn warren")
        })
        .collect();
    let mut got: Vec<Reservation> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert!(out.status.success(), "{out:?}");
            parse(&String::from_utf8_lossy(&out.stdout))
        })
        .collect();
    got.sort_by_key(|r| r.uids.start);
    // Root blocks come from warren's registered lines (the first alloc registered them).
    let host = Host::current().expect("read /etc/subuid and /etc/subgid");
    let pool = Pool::root(&host, 0x10000).expect("the root pool");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.uids, r.gids, "root blocks are equal for uids and gids");
        assert_eq!(r.uids.len, 0x10000);
        assert!(pool.holds(r.uids, r.gids), "{r:?} outside the {pool}");
        for other in &got[i + 1..] {
            assert!(!r.uids.overlaps(&other.uids), "{r:?} overlaps {other:?}");
        }
    }
    let names: std::collections::BTreeSet<_> = got.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names.len(), 64);

    // The state on disk agrees, the same name gets the same block, free releases it.
    let listed: Vec<Reservation> =
        parse(&ok(warren_in(tmp.path()).args(["ranges", "list", "--json"])));
    assert_eq!(listed.len(), 64);
    let c7 = listed
        .iter()
        .find(|r| r.name == "c7")
        .expect("c7 listed")
        .clone();
    let again: Reservation = parse(&ok(
        warren_in(tmp.path()).args(["ranges", "alloc", "c7", "--json"])
    ));
    assert_eq!(again, c7);
    let table = ok(warren_in(tmp.path()).args(["ranges", "list"]));
    assert!(
        table.lines().next().is_some_and(|l| l.starts_with("NAME")),
        "{table}"
    );
    assert!(table.contains(&format!("{:#x}", c7.uids.start)), "{table}");
    ok(warren_in(tmp.path()).args(["ranges", "free", "c7"]));
    let listed: Vec<Reservation> =
        parse(&ok(warren_in(tmp.path()).args(["ranges", "list", "--json"])));
    assert_eq!(listed.len(), 63);
    assert!(listed.iter().all(|r| r.name != "c7"));
    let out = run(warren_in(tmp.path()).args(["ranges", "free", "c7"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reservation named \"c7\""));
    // The freed block is the first one handed out again.
    let new: Reservation = parse(&ok(
        warren_in(tmp.path()).args(["ranges", "alloc", "new", "--json"])
    ));
    assert_eq!(new.uids, c7.uids);
}

#[test]
fn a_configured_pool_bounds_root_allocations() {
    if !require_root("reserves blocks from the root pool and edits /etc/subuid") {
        return;
    }
    let tmp = scratch("ranges-pool");
    let alloc = |name: &str| {
        run(warren_in(tmp.path()).args([
            "ranges",
            "alloc",
            name,
            "--json",
            "--pool",
            "0x200000+0x20000",
            "--block",
            "0x10000",
        ]))
    };
    let a: Reservation = parse(&String::from_utf8_lossy(&alloc("a").stdout));
    let b: Reservation = parse(&String::from_utf8_lossy(&alloc("b").stdout));
    assert_eq!(a.uids, IdRange::new(0x200000, 0x10000).unwrap());
    assert_eq!(b.uids, IdRange::new(0x210000, 0x10000).unwrap());
    let full = alloc("c");
    assert!(!full.status.success());
    // Under --json the error is a JSON object on stdout.
    let err: serde_json::Value = serde_json::from_slice(&full.stdout).expect("json error");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("no free block")),
        "{full:?}"
    );
}

#[test]
fn check_reports_reservations_outside_the_pool() {
    if !require_root("reserves blocks from the root pool and edits /etc/subuid") {
        return;
    }
    let tmp = scratch("ranges-check");
    let good: Reservation = parse(&ok(
        warren_in(tmp.path()).args(["ranges", "alloc", "good", "--json"])
    ));
    let out = ok(warren_in(tmp.path()).args(["ranges", "check"]));
    assert!(out.contains("1 reservations, all inside"), "{out}");
    // A reservation from the old default pool (block 2 started at 131072), written as an
    // older warren left it: reported, and never handed out again.
    let state = tmp.path().join("ranges.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("ranges.json")).expect("json");
    let old = serde_json::json!({"name": "old",
        "uids": {"start": 131072, "len": 65536}, "gids": {"start": 131072, "len": 65536}});
    json["reservations"].as_array_mut().expect("list").push(old);
    std::fs::write(&state, serde_json::to_vec(&json).unwrap()).expect("write state");
    let out = run(warren_in(tmp.path()).args(["ranges", "check", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = parse(&String::from_utf8_lossy(&out.stdout));
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["name"], "old");
    assert!(problems[0]["reason"].as_str().unwrap().contains("outside"));
    let again = run(warren_in(tmp.path()).args(["ranges", "alloc", "old"]));
    assert!(!again.status.success(), "{again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("warren: \"old\" holds uids") && err.contains("outside the"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("hint: ") && l.contains("`warren ranges free old`")),
        "{err}"
    );
    // The good one is still handed back as it was.
    let same: Reservation = parse(&ok(
        warren_in(tmp.path()).args(["ranges", "alloc", "good", "--json"])
    ));
    assert_eq!(same, good);
}

/// The user's ranges in a subuid-format file. (useradd may have given the test user its
/// own default range before `ensure_rootless_user` ran, so read what is really there.)
fn subids_of(user: &str, file: &str) -> Vec<IdRange> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            (f.next()? == user).then_some(())?;
            IdRange::new(f.next()?.parse().ok()?, f.next()?.parse().ok()?).ok()
        })
        .collect()
}

#[test]
fn rootless_blocks_come_from_the_users_subids() {
    if !require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let name = "rootless-ranges-test";
    let out = ok(as_rootless(&bin("warren")).args(["ranges", "alloc", name, "--json"]));
    let r: Reservation = parse(&out);
    for (block, file) in [(r.uids, "/etc/subuid"), (r.gids, "/etc/subgid")] {
        let subids = subids_of(ROOTLESS_USER, file);
        assert!(!subids.is_empty(), "{ROOTLESS_USER} has no line in {file}");
        assert!(
            subids
                .iter()
                .any(|s| s.contains(block.start) && block.end() <= s.end()),
            "{block} is outside {ROOTLESS_USER}'s ranges in {file}: {subids:?}"
        );
    }
    // Kept in the user's own state dir, and released again.
    let state = format!("/home/{ROOTLESS_USER}/.local/share/warren/ranges.json");
    assert!(
        std::fs::read_to_string(&state)
            .expect("rootless state")
            .contains(name)
    );
    ok(as_rootless(&bin("warren")).args(["ranges", "free", name]));
}

#[test]
fn a_user_without_subids_is_told_what_to_add() {
    if !require_root("reserves blocks from the root pool and edits /etc/subuid") {
        return;
    }
    require_tool("setpriv", "util-linux");
    // A system user: useradd gives those no subordinate ids.
    let user = "warren-nosubid";
    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
        let out = run(Command::new("useradd").args(["--system", "--no-create-home", user]));
        assert!(
            out.status.success() || nix::unistd::User::from_name(user).ok().flatten().is_some(),
            "useradd: {out:?}"
        );
    }
    let u = nix::unistd::User::from_name(user)
        .unwrap()
        .expect("user exists");
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    assert!(
        !subuid.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "{user} unexpectedly has subuids"
    );
    let home = scratch("ranges-nosubid");
    nix::unistd::chown(home.path(), Some(u.uid), Some(u.gid)).unwrap();
    let out = run(Command::new("setpriv")
        .args([
            &format!("--reuid={}", u.uid),
            &format!("--regid={}", u.gid),
            "--clear-groups",
            "--",
        ])
        .arg(bin("warren"))
        .args(["ranges", "alloc", "x"])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("/etc/subuid"), "{stderr}");
    assert!(
        stderr.contains(&format!("add the line `{user}:")),
        "{stderr}"
    );
}
