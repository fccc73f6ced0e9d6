//! Logs, warnings, `state` and config checks of warren called as runc.

use crate::cli::{self, Runtime};
use crate::common::{ok, require_root, run, scratch};
use crate::rootfs;
use serde_json::{Value, json};
use std::process::Stdio;

fn sh(script: &str) -> Value {
    rootfs::config(&["sh", "-c", script])
}

/// Parse errors and every other error reach `--log` in the format asked, as runc writes
/// them, after whatever the file held: a client shows the last line.
#[test]
fn errors_reach_the_log_in_runcs_formats() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-log");
    let b = rootfs::bundle(dir.path(), &sh("sleep 1000"));
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let c = rt.start(&b, "log");
        let log = dir.path().join(format!("{}.log", rt.name));
        let last = |args: &[&str], format: &str| -> (Option<i32>, String) {
            std::fs::write(&log, "stale line\n").unwrap();
            let out = run(rt
                .cmd()
                .arg("--log")
                .arg(&log)
                .args(["--log-format", format])
                .args(args)
                .stdin(Stdio::null()));
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(
                text.starts_with("stale line\n"),
                "{}: appended: {text}",
                rt.name
            );
            (
                out.status.code(),
                text.lines().last().unwrap_or_default().to_owned(),
            )
        };
        for (args, needle) in [
            (
                &["exec", "--bogus-flag", c.id.as_str(), "true"][..],
                "bogus-flag",
            ),
            (&["state", "no-such-container"][..], "not"),
            (
                &["exec", c.id.as_str(), "/no/such/program"][..],
                "/no/such/program",
            ),
        ] {
            let (code, line) = last(args, "json");
            assert_ne!(code, Some(0), "{}: {args:?}", rt.name);
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: {args:?}: not JSON ({e}): {line}", rt.name));
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["level", "msg", "time"], "{}: {line}", rt.name);
            assert_eq!(v["level"], "error", "{}: {line}", rt.name);
            assert!(
                v["msg"].as_str().unwrap().contains(needle),
                "{}: {args:?}: {line}",
                rt.name
            );

            let (_, line) = last(args, "text");
            assert!(
                line.starts_with("time=\"") && line.contains("\" level=error msg=\""),
                "{}: {args:?}: {line}",
                rt.name
            );
            assert!(line.contains(needle), "{}: {line}", rt.name);
        }
    }
}

/// A log format other than text or json is refused, as runc does.
#[test]
fn an_unknown_log_format_is_refused_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-log-format");
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let out = run(rt.cmd().args(["--log-format", "yaml", "list"]));
        assert_eq!(out.status.code(), Some(1), "{}: {out:?}", rt.name);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid log-format: yaml"),
            "{}: {err}",
            rt.name
        );
    }
}

/// Warnings (here a failing poststop hook) are plain text on a stderr that is not a
/// terminal, and runc-format lines in `--log`.
#[test]
fn warnings_are_plain_off_a_terminal_and_formatted_in_the_log() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-warn");
    let mut config = sh("true");
    config["hooks"] = json!({"poststop": [{"path": "/bin/false", "args": ["false"]}]});
    let b = rootfs::bundle(dir.path(), &config);
    let rt = Runtime::warren(dir.path());
    let id = format!("warn-{}", std::process::id());
    let create = |id: &str| {
        ok(rt
            .cmd()
            .args(["create", "-b"])
            .arg(&b)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()))
    };
    create(&id);
    let out = run(rt.cmd().args(["delete", "--force", &id]));
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poststop"), "a warning: {err}");
    assert!(
        !err.contains('\x1b'),
        "no colour codes off a terminal: {err:?}"
    );

    create(&id);
    let log = dir.path().join("warn.log");
    ok(rt
        .cmd()
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "delete", "--force", &id]));
    let text = std::fs::read_to_string(&log).unwrap();
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert_eq!(v["level"], "warning", "{text}");
    assert!(v["msg"].as_str().unwrap().contains("poststop"), "{text}");
}

/// An init that has exited is `stopped`, also while it waits in the kernel for the other
/// processes of its pid namespace to be reaped (here an exec'd process whose parent, the
/// `warren exec`, is stopped). runc 1.1 says `running` there.
#[test]
fn state_is_stopped_once_the_init_exited() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-state");
    let b = rootfs::bundle(dir.path(), &sh("sleep 1000"));
    let rt = Runtime::warren(dir.path());
    let c = rt.start(&b, "state");
    let mut exec = rt
        .cmd()
        .args(["exec", &c.id, "sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let exec_pid = nix::unistd::Pid::from_raw(exec.id() as i32);
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let in_container = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (stat.contains(&format!(") S {} ", exec_pid)) && ns(pid) == ns(c.pid())).then_some(pid)
        })
    };
    assert!(
        cli::poll(in_container).is_some(),
        "the exec'd sleep started"
    );
    nix::sys::signal::kill(exec_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let init = nix::unistd::Pid::from_raw(c.pid());
    nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL).unwrap();
    let stopped = cli::poll(|| (c.state()["status"] == "stopped").then_some(()));
    // The init is still there, not a zombie: waiting for the exec'd process's reaping.
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    nix::sys::signal::kill(exec_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(exec.wait().unwrap().code(), Some(137));
    assert!(
        stopped.is_some(),
        "state still {} after the init exited",
        c.state()
    );
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .next();
    assert_eq!(
        state,
        Some("S"),
        "the init waited for its namespace: {stat}"
    );
}

/// `ociVersion` must be a SemVer 1.x version, as the runtime spec requires (runc 1.1
/// takes anything); the error names the field.
#[test]
fn oci_version_is_checked() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-version");
    let rt = Runtime::warren(dir.path());
    let mut config = sh("echo ran");
    config["ociVersion"] = json!("invalid");
    let b = rootfs::bundle(dir.path(), &config);
    let log = dir.path().join("log.json");
    let id = format!("version-{}", std::process::id());
    let out = run(rt
        .cmd()
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "run", "-b"])
        .arg(&b)
        .arg(&id));
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`ociVersion`") && err.contains("\"invalid\""),
        "{err}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ociVersion"), "{logged}");
    assert!(!rt.root.join(&id).exists(), "state left behind");
    for good in ["1.0.2-dev", "1.1.0", "1.2.0"] {
        config["ociVersion"] = json!(good);
        rootfs::write_config(&b, &config);
        assert_eq!(
            ok(rt.cmd().args(["run", "-b"]).arg(&b).arg(&id)),
            "ran\n",
            "{good}"
        );
    }
}
