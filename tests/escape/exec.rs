//! Escape 2: `warren exec` dropped the container's confinement. The exec'd process ran
//! without the seccomp filter (`Seccomp: 0`: `unshare -U -r` gave it a full capability
//! set, the profile's denials did not apply) and, in bundle mode, outside the container's
//! cgroups. Each probe execs into a confined container and compares the exec'd process
//! with the init.

use crate::common::{self, as_rootless, run, scratch};
use crate::rootfs;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the exec'd process reports: its own status and limits, the init's (pid 1),
/// and the outcome of what the profile must deny.
const PROBE: &str = r#"#!/bin/sh
echo "== self"; cat /proc/self/status
echo "== init"; cat /proc/1/status
echo "== limits"; grep "open files" /proc/self/limits
echo "== cgroup self"; cat /proc/self/cgroup
echo "== cgroup init"; cat /proc/1/cgroup
echo "== unshare"; unshare -U -r true 2>&1; echo "unshare=$?"
echo "== mkdir"; mkdir /tmp/denied 2>&1; echo "mkdir=$?"
"#;

/// The container config: warren's default seccomp profile plus a rule that makes
/// mkdir/mkdirat fail with EOPNOTSUPP (a denial no capability explains), its
/// capabilities, no_new_privs and an rlimit the caller does not have.
fn config(user: Option<(u32, u32)>) -> serde_json::Value {
    let mut c = rootfs::config(&["sleep", "100"]);
    c["root"]["readonly"] = json!(false);
    let mut profile = serde_json::to_value(warren::container::seccomp::default_profile())
        .expect("serialize profile");
    profile["syscalls"]
        .as_array_mut()
        .expect("syscalls")
        .push(json!({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}));
    c["linux"]["seccomp"] = profile;
    c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 777, "hard": 888}]);
    if let Some((uid, gid)) = user {
        c = rootfs::rootless(c, uid, gid, common::ROOTLESS_SUBIDS);
    }
    c
}

/// `Field:\tvalue` of a /proc status section.
fn field<'a>(section: &'a str, name: &str) -> &'a str {
    section
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in:\n{section}"))
}

/// The text between `== name` and the next `== ` header.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in:\n{out}"))
        + name.len()
        + 4;
    let rest = &out[start..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |i| i + 1)]
}

struct Probe {
    _dir: tempfile::TempDir,
    state: PathBuf,
    user: Option<(u32, u32)>,
}

impl Probe {
    fn warren(&self, args: &[&str]) -> Command {
        let bin = crate::exe::probed_warren();
        let mut c = match self.user {
            Some(_) => as_rootless(&bin),
            None => Command::new(&bin),
        };
        c.arg("--root").arg(&self.state).args(args);
        c
    }
}

/// Runs a confined container (the init started by `start_init`), execs the probe into
/// it and returns its output.
fn exec_probe(
    name: &str,
    user: Option<(u32, u32)>,
    start_init: impl FnOnce(&Probe, &str, &Path),
) -> String {
    let dir = scratch(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).expect("mkdir bundle");
    rootfs::busybox_rootfs(&bundle.join("rootfs"));
    for applet in ["unshare", "mkdir"] {
        let _ = std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin").join(applet));
    }
    let script = bundle.join("rootfs/bin/probe");
    std::fs::write(&script, PROBE).expect("write probe");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    rootfs::bundle(&bundle, &config(user));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir state");
    if let Some((uid, gid)) = user {
        rootfs::chown_tree(&bundle, uid, gid);
        std::os::unix::fs::chown(&state, Some(uid), Some(gid)).expect("chown state");
    }
    let p = Probe {
        _dir: dir,
        state,
        user,
    };
    let id = format!("{name}-{}", std::process::id());
    start_init(&p, &id, &bundle);
    let out = run(p
        .warren(&["exec", &id, "--", "/bin/probe"])
        .stdin(Stdio::null()));
    let _ = run(&mut p.warren(&["delete", "--force", &id]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exec failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The exec'd process is confined exactly like the init.
fn assert_confined(out: &str) {
    let (me, init) = (section(out, "self"), section(out, "init"));
    assert_eq!(
        field(me, "Seccomp"),
        "2",
        "exec'd process without seccomp:\n{out}"
    );
    assert_eq!(
        field(me, "Seccomp_filters"),
        field(init, "Seccomp_filters"),
        "filter count differs from the init's:\n{out}"
    );
    for f in ["CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Uid", "Gid"] {
        assert_eq!(field(me, f), field(init, f), "{f} differs from the init's");
    }
    assert_eq!(field(me, "NoNewPrivs"), "1");
    let limits = section(out, "limits");
    assert!(
        limits.split_whitespace().collect::<Vec<_>>()[3..5] == ["777", "888"],
        "rlimits are not the container's: {limits}"
    );
    assert!(
        !out.contains("unshare=0"),
        "unshare -U -r worked in the exec'd process:\n{out}"
    );
    assert!(
        section(out, "mkdir").contains("not supported"),
        "the profile's own denial did not apply:\n{out}"
    );
}

#[test]
fn exec_is_confined_like_the_init_rootful() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    let out = exec_probe("exec-rootful", None, |p, id, bundle| {
        // The init starts in a cgroup of its own (the container has none: no limits,
        // its own pid namespace), so the exec'd process must join it, not stay in ours.
        let cg = PathBuf::from(format!("/sys/fs/cgroup/pids/warren-exec-probe-{id}"));
        std::fs::create_dir_all(&cg).expect("create scratch pids cgroup");
        let status = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$1/cgroup.procs\" && exec \"$2\" --root \"$3\" run -d --bundle \"$4\" \"$5\"")
            .arg("sh")
            .arg(&cg)
            .arg(crate::exe::probed_warren())
            .arg(&p.state)
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run warren");
        assert!(status.success(), "warren run -d: {status}");
    });
    assert_confined(&out);
    let (me, init) = (section(&out, "cgroup self"), section(&out, "cgroup init"));
    assert_eq!(me, init, "the exec'd process is not in the init's cgroups");
    // In the container's cgroup namespace a process outside the init's cgroup shows a
    // path climbing out of it.
    assert!(!me.contains("/.."), "the exec'd process is outside: {me}");
    for e in std::fs::read_dir("/sys/fs/cgroup/pids")
        .expect("list pids cgroups")
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .starts_with("warren-exec-probe-")
        {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[test]
fn exec_is_confined_like_the_init_rootless() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let ids = common::ensure_rootless_user();
    let out = exec_probe("exec-rootless", Some(ids), |p, id, bundle| {
        let status = p
            .warren(&["run", "-d", "--bundle", bundle.to_str().unwrap(), id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run warren");
        assert!(status.success(), "warren run -d: {status}");
    });
    assert_confined(&out);
}

#[test]
fn an_apparmor_profile_is_refused_without_apparmor() {
    if !common::require_root("runs rootful containers") {
        return;
    }
    if std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
    {
        panic!(
            "this probe needs a host without AppArmor (like runc, warren refuses a profile it cannot apply)"
        );
    }
    let dir = scratch("exec-apparmor");
    let mut c = rootfs::config(&["true"]);
    c["process"]["apparmorProfile"] = json!("warren-test");
    let bundle = rootfs::bundle(dir.path(), &c);
    let out = run(Command::new(crate::exe::probed_warren())
        .arg("--root")
        .arg(dir.path().join("state"))
        .args(["run", "--bundle", bundle.to_str().unwrap(), "exec-apparmor"]));
    assert!(
        !out.status.success(),
        "an apparmor profile was silently ignored"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apparmorProfile"), "{err}");
}
