//! `warren run --image` as a supervisor (systemd, scripts) relies on it: podman's exit
//! codes (125 warren failed, 127 the command was not found, else the workload's), the
//! OCI flags `run` shares (`--init`, `--pid-file`, a positional ID) honoured or refused
//! by name, and `rm --ignore`. Real containers, as root.

mod common;

use common::*;

use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn setup(name: &str) -> Option<tempfile::TempDir> {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return None;
    }
    require_tool("busybox", "busybox-static");
    Some(scratch(name))
}

#[test]
fn warren_failures_exit_125_the_workload_keeps_its_code() {
    let Some(dir) = setup("run-image-codes") else {
        return;
    };
    let d = dir.path();
    let code = |args: &[&str]| {
        let out = run(warren(d).args(["run", "--rm"]).args(args));
        (out.status.code(), stderr(&out))
    };
    let (c, err) = code(&["--image", "no-such-image", "--", "true"]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("no-such-image"), "{err}");
    let toml = d.join("web.toml");
    std::fs::write(&toml, "image = \"busybox\"\nmemory = \"lots\"\n").unwrap();
    let (c, err) = code(&["--config", toml.to_str().unwrap()]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("web.toml") && err.contains("memory"), "{err}");
    let (c, err) = code(&["--image", "busybox", "--no-such-flag", "--", "true"]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (c, err) = code(&["--image", "busybox", "--bundle", "/srv/b", "--", "true"]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("--bundle"), "{err}");
    let (c, err) = code(&["--image", "busybox", "--console-socket", "/s", "--", "true"]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("--console-socket"), "{err}");
    let (c, err) = code(&["--image", "busybox", "--name", "a", "b", "--", "true"]);
    assert_eq!(c, Some(125), "{err}");
    assert!(err.contains("--name a") && err.contains("ID b"), "{err}");

    let (c, err) = code(&["--image", "busybox", "--", "/no/such/program"]);
    assert_eq!(c, Some(127), "{err}");
    assert!(err.contains("/no/such/program"), "{err}");
    let (c, err) = code(&["--image", "busybox", "--", "/etc"]);
    assert_eq!(c, Some(126), "{err}");
    let (c, err) = code(&["--image", "busybox", "--", "sh", "-c", "exit 3"]);
    assert_eq!(c, Some(3), "{err}");
    // Not pid 1 (which a signal from inside its namespace cannot kill): under --init.
    let (c, err) = code(&[
        "--image",
        "busybox",
        "--init",
        "--",
        "sh",
        "-c",
        "kill -KILL $$",
    ]);
    assert_eq!(c, Some(137), "{err}");
    // The OCI commands keep runc's code.
    let out = run(warren(d).args(["state", "no-such-container"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn run_image_honours_init_pid_file_and_a_positional_id() {
    let Some(dir) = setup("run-image-init") else {
        return;
    };
    let d = dir.path();
    let me = |args: &[&str]| ok(warren(d).args(["run", "--rm"]).args(args));
    let pid_of_sh = ["--", "sh", "-c", "echo me=$$"];
    let bare = me(&[&["--image", "busybox"][..], &pid_of_sh].concat());
    assert_eq!(bare, "me=1\n");
    let init = me(&[&["--image", "busybox", "--init"][..], &pid_of_sh].concat());
    assert_eq!(init, "me=2\n", "--init puts a minimal init at pid 1");
    let toml = d.join("init.toml");
    std::fs::write(
        &toml,
        "image = \"busybox\"\ncommand = [\"sh\", \"-c\", \"echo me=$$\"]\ninit = true\n",
    )
    .unwrap();
    assert_eq!(me(&["--config", toml.to_str().unwrap()]), "me=2\n");

    // Detached, with the ID as a positional argument and a pid file.
    let pid_file = d.join("web.pid");
    let out = ok(warren(d)
        .args(["run", "-d", "--init", "--image", "busybox", "--pid-file"])
        .arg(&pid_file)
        .args(["web", "--", "sleep", "1000"]));
    assert_eq!(out.trim(), "web");
    let pid = std::fs::read_to_string(&pid_file).expect("the pid file");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "the pid file names pid 1: {nspid}");
    // The init forks, then the child execs the workload: wait (bounded) for the exec.
    let workload = || {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let child = children.split_whitespace().next()?.to_owned();
        std::fs::read(format!("/proc/{child}/cmdline")).ok()
    };
    let mut cmdline = workload();
    for _ in 0..100 {
        if cmdline.as_deref() == Some(b"sleep\x001000\x00") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        cmdline = workload();
    }
    assert_eq!(
        cmdline.as_deref(),
        Some(&b"sleep\x001000\x00"[..]),
        "the init's child is the workload"
    );
    let ps = ok(warren(d).args(["ps", "-q"]));
    assert!(ps.lines().any(|l| l == "web"), "{ps}");
    ok(warren(d).args(["rm", "--force", "web"]));
}

#[test]
fn rm_ignore_is_quiet_about_absent_containers() {
    let Some(dir) = setup("run-image-rm") else {
        return;
    };
    let d = dir.path();
    let out = run(warren(d).args(["rm", "--force", "--ignore", "absent"]));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
    let out = run(warren(d).args(["rm", "--force", "absent"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("absent"), "{out:?}");
}
