//! Host user -> container through shared ids (escapes 4 and 8 of issue 14).
//!
//! A user may map any id of its own `/etc/subuid` range into a namespace of its own (the
//! setuid `newuidmap` checks only that), and with a container's ids it owns the
//! container's files and processes. So root containers take ids only from warren's own
//! registered range, which no user's range may share; and a rootless container gets the
//! block it reserved, from whichever of the user's lines, or an error — never a narrower
//! one-id mapping that `ps` misreports.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use warren::idmap::IdRange;
use warren::idmap::subid::{POOL_OWNER, Subids};

/// The tests here that rewrite /etc/subuid and /etc/subgid, one at a time.
static SUBID_FILES: Mutex<()> = Mutex::new(());

fn warren_in(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("warren"));
    cmd.env("WARREN_STATE_DIR", dir.join("state"))
        .arg("--root")
        .arg(dir.join("run"));
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `container host count` of the first line of a /proc/PID/{uid,gid}_map.
fn first_map_line(pid: i32, file: &str) -> (u32, u32, u32) {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let f: Vec<u32> = text
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().expect("number"))
        .collect();
    assert_eq!(f.len(), 3, "{path}: {text}");
    (f[0], f[1], f[2])
}

/// Asserts `ids` lie inside a `warren:` line of `file` and share no id with any other line.
fn assert_in_pool_only(file: &str, ids: IdRange) {
    let subids = Subids::read(Path::new(file)).expect("parse subid file");
    assert!(
        subids
            .owned_by(POOL_OWNER)
            .any(|e| e.range.start <= ids.start && ids.end() <= e.range.end()),
        "{ids} is not inside a `warren:` line of {file}: {:?}",
        subids.entries
    );
    let others: Vec<_> = subids.overlapping_others(POOL_OWNER, ids).collect();
    assert!(
        others.is_empty(),
        "{ids} shares ids with {file}: {others:?}"
    );
}

/// Removes the container when the test ends, however it ends.
struct Container<'a>(&'a Path, &'a str);

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = run(warren_in(self.0).args(["rm", "--force", self.1]));
    }
}

#[test]
fn a_host_user_cannot_map_a_root_containers_ids() {
    if !require_root("registers the root pool and edits /etc/subuid") {
        return;
    }
    require_tool("busybox", "busybox-static");
    let unshare = require_tool("unshare", "util-linux");
    let _files = SUBID_FILES.lock().unwrap_or_else(|e| e.into_inner());
    ensure_rootless_user();
    let dir = scratch("escape-ids-root");
    let name = "ids-victim";
    ok(warren_in(dir.path()).args([
        "run", "-d", "--image", "busybox", "--name", name, "--", "sleep", "600",
    ]));
    let _container = Container(dir.path(), name);
    let ps: serde_json::Value =
        serde_json::from_str(&ok(warren_in(dir.path()).args(["ps", "--json"]))).expect("json");
    let pid = ps
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .and_then(|c| c["pid"].as_i64())
        .unwrap_or_else(|| panic!("{name} not in ps: {ps}")) as i32;
    // What the kernel really maps, not what the state says.
    let (inside, root_uid, uids) = first_map_line(pid, "uid_map");
    let (_, root_gid, gids) = first_map_line(pid, "gid_map");
    assert_eq!((inside, uids, gids), (0, 0x10000, 0x10000));
    assert_in_pool_only("/etc/subuid", IdRange::new(root_uid, uids).unwrap());
    assert_in_pool_only("/etc/subgid", IdRange::new(root_gid, gids).unwrap());

    // The attack: an ordinary user asks newuidmap (through unshare) for the container's
    // root. It must be refused; the same call with the user's own ids shows it works.
    let map_root = |uid: u32, gid: u32| {
        run(as_rootless(&unshare).args([
            &format!("--map-users={uid},0,1"),
            &format!("--map-groups={gid},0,1"),
            "--setuid",
            "0",
            "--setgid",
            "0",
            "--",
            "/bin/sh",
            "-c",
            "id -u",
        ]))
    };
    let own = map_root(ROOTLESS_SUBIDS.0, ROOTLESS_SUBIDS.0);
    assert!(
        own.status.success() && String::from_utf8_lossy(&own.stdout).trim() == "0",
        "unshare cannot map the user's own subordinate ids: {own:?}"
    );
    let attack = map_root(root_uid, root_gid);
    assert!(
        !attack.status.success(),
        "{ROOTLESS_USER} mapped the container's root uid {root_uid}: {attack:?}"
    );
    assert!(stderr(&attack).contains("newuidmap"), "{attack:?}");
}

#[test]
fn a_pool_overlapping_a_users_range_is_refused_naming_the_line() {
    if !require_root("registers the root pool and edits /etc/subuid") {
        return;
    }
    ensure_rootless_user();
    let dir = scratch("escape-ids-overlap");
    // Straddles the start of the test user's range (0x100000+0x100000).
    let out =
        run(warren_in(dir.path()).args(["ranges", "alloc", "x", "--pool", "0xf0000+0x20000"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{out:?}");
    let text = std::fs::read_to_string("/etc/subuid").expect("/etc/subuid");
    let line = text
        .lines()
        .position(|l| l.starts_with(&format!("{ROOTLESS_USER}:")))
        .expect("the test user's line")
        + 1;
    for part in [
        format!("/etc/subuid line {line}"),
        ROOTLESS_USER.to_string(),
    ] {
        assert!(err.contains(&part), "{part:?} missing: {err}");
    }
    assert_hint(&err, "`warren ranges register`");
    assert!(!dir.path().join("state/ranges.json").exists());
}

/// A second test user, whose subordinate ids are two lines this test writes (and removes
/// again, whatever happens: only that user's lines).
const TWO_LINE_USER: &str = "warren-test2";
const FIRST_LINE: (u32, u32) = (0x300000, 0x10000);
const SECOND_LINE: (u32, u32) = (0x500000, 0x10000);

struct TwoLines;

impl TwoLines {
    fn write(with: &[(u32, u32)]) {
        crate::common::set_subid_lines(TWO_LINE_USER, with);
    }
}

impl Drop for TwoLines {
    fn drop(&mut self) {
        TwoLines::write(&[]);
    }
}

#[test]
fn a_second_subuid_line_maps_the_whole_reserved_block() {
    if !require_root("registers the root pool and edits /etc/subuid") {
        return;
    }
    require_tool("newuidmap", "uidmap");
    require_tool("busybox", "busybox-static");
    let _files = SUBID_FILES.lock().unwrap_or_else(|e| e.into_inner());
    // The pool line exists before the rewrite below, so no registration races with it.
    ok(Command::new(bin("warren")).args(["ranges", "register"]));
    let (uid, gid) = ensure_user(TWO_LINE_USER);
    let _lines = TwoLines;
    TwoLines::write(&[FIRST_LINE, SECOND_LINE]);

    let data = scratch("escape-ids-two-lines");
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    nix::unistd::chown(data.path(), Some(uid.into()), Some(gid.into())).expect("chown");
    let runtime = data.path().join("run");
    std::fs::create_dir(&runtime).expect("mkdir");
    nix::unistd::chown(&runtime, Some(uid.into()), Some(gid.into())).expect("chown");
    let warren = || {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--init-groups",
            "--",
        ])
        .arg(bin("warren"))
        .env_clear()
        .env("USER", TWO_LINE_USER)
        .env("HOME", format!("/home/{TWO_LINE_USER}"))
        .env("XDG_DATA_HOME", data.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        cmd
    };
    // Blocks come from the lines in order: the first takes the first line.
    let filler: serde_json::Value =
        serde_json::from_str(&ok(warren().args(["ranges", "alloc", "filler", "--json"])))
            .expect("json");
    assert_eq!(filler["uids"]["start"], FIRST_LINE.0, "{filler}");
    // The container's block then comes from the second line, and the kernel maps all of
    // it, for uids and gids.
    let out = ok(warren().args([
        "run",
        "--rm",
        "--image",
        "busybox",
        "--name",
        "second",
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u",
    ]));
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let block = ["0", &SECOND_LINE.0.to_string(), "65536"];
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], block, "uid_map: {out}");
    assert_eq!(lines[1], block, "gid_map: {out}");
    assert_eq!(lines[2], ["0"], "{out}");

    // A block no line holds any more is refused by name, not mapped as one id.
    TwoLines::write(&[SECOND_LINE]);
    let out = run(warren().args(["ranges", "alloc", "filler"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("outside"), "{out:?}");
    ok(warren().args(["ranges", "free", "filler"]));
}

/// Runs `warren ARGS` as root in a private mount namespace whose /etc is a copy of the
/// host's with `subuid` and `subgid` as given; returns its output and its stdout,
/// which ends with the two files as warren left them.
fn warren_with_etc(dir: &Path, subuid: &str, subgid: &str, args: &[&str]) -> (Output, String) {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir etc");
    // Not while another test here rewrites /etc/subuid (its temp file comes and goes).
    {
        let _files = SUBID_FILES.lock().unwrap_or_else(|e| e.into_inner());
        ok(Command::new("cp").arg("-a").arg("/etc/.").arg(&etc));
    }
    std::fs::write(etc.join("subuid"), subuid).expect("write subuid");
    std::fs::write(etc.join("subgid"), subgid).expect("write subgid");
    let script = r#"mount --bind "$1" /etc && shift && "$@"; rc=$?; cat /etc/subuid; echo --; cat /etc/subgid; exit $rc"#;
    let out = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&etc)
        .arg(bin("warren"))
        .args(args)
        .env("WARREN_STATE_DIR", dir.join("state")));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

#[test]
fn first_root_use_registers_a_pool_no_user_shares() {
    if !require_root("registers the root pool and edits /etc/subuid") {
        return;
    }
    require_tool("unshare", "util-linux");
    require_tool("busybox", "busybox-static");
    let dir = scratch("escape-ids-register");
    // A user's line inside the default range: the pool goes above every line instead.
    let alice = "alice:1073741800:100\n# kept as it is\n";
    let run_it = [
        "run",
        "--rm",
        "--image",
        "busybox",
        "--",
        "cat",
        "/proc/self/uid_map",
    ];
    let (out, stdout) = warren_with_etc(dir.path(), alice, "", &run_it);
    assert!(out.status.success(), "{out:?}");
    let line = "warren:1073807360:1073741824";
    assert!(
        stderr(&out).contains(&format!("registered the root id pool `{line}`")),
        "{out:?}"
    );
    let map: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(map, ["0", "1073807360", "65536"], "{stdout}");
    assert!(
        stdout.contains(&format!("\n{alice}{line}\n--\n{line}\n")),
        "every other line kept byte for byte: {stdout}"
    );
    // A user whose range shares ids with the registered pool: warren refuses to start a
    // container, naming the file, the line and the user.
    let (out, _) = warren_with_etc(
        dir.path().join("again").as_path(),
        &format!("{alice}{line}\n"),
        &format!("{line}\nbob:1073807360:65536\n"),
        &run_it,
    );
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    for part in ["/etc/subgid line 2 `bob:1073807360:65536`", "user bob"] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
    assert_hint(&err, "`warren ranges register`");
}

/// The CLI's advice is on its own `hint:` line, not in the library's message.
fn assert_hint(stderr: &str, advice: &str) {
    let hint = stderr.lines().find(|l| l.starts_with("hint: "));
    assert!(
        hint.is_some_and(|h| h.contains(advice)),
        "{advice:?} not hinted: {stderr}"
    );
    assert!(
        stderr.lines().filter(|l| l.contains(advice)).count() == 1,
        "{advice:?} given twice: {stderr}"
    );
}
