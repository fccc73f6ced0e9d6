//! The `warren` CLI as podman users expect it: `stop` returns once the container is
//! dead, `ps` and `inspect`, `--json` everywhere (errors too), `exec -it`, flag-named
//! errors, typo suggestions, completions and man pages, `store gc` of extracted trees,
//! grouped help and `--state-dir`. Real containers from the embedded busybox, as root.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

/// The `warren` CLI with its state (store included) and run dirs in `dir`.
fn warren(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("warren"));
    cmd.env("WARREN_STATE_DIR", dir.join("state"))
        .arg("--root")
        .arg(dir.join("run"));
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must fail; returns (stdout, stderr).
fn fails(cmd: &mut Command) -> (String, String) {
    let out = run(cmd);
    assert!(!out.status.success(), "{cmd:?} succeeded: {:?}", text(&out));
    text(&out)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn run_detached(dir: &Path, name: &str, cmd: &[&str]) {
    let mut args = vec!["run", "-d", "--image", "busybox", "--name", name, "--"];
    args.extend_from_slice(cmd);
    ok(warren(dir).args(&args));
}

#[test]
fn stop_returns_once_the_container_is_dead_so_rm_never_races() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-stop-rm");
    // `sleep` as PID 1 ignores SIGTERM: every stop ends in SIGKILL after 1 s.
    for i in 0..20 {
        let name = format!("s{i}");
        run_detached(dir.path(), &name, &["sleep", "100"]);
        let out = ok(warren(dir.path()).args(["stop", "-t", "1", &name]));
        assert_eq!(out.trim(), name, "stop prints the name");
        ok(warren(dir.path()).args(["rm", &name]));
    }
    assert!(ok(warren(dir.path()).args(["ps", "-q"])).trim().is_empty());
}

#[test]
fn ps_shows_status_age_command_and_image_and_inspect_prints_the_record() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-ps");
    run_detached(dir.path(), "web", &["sleep", "100"]);
    let ps = ok(warren(dir.path()).args(["ps"]));
    let line = ps.lines().find(|l| l.starts_with("web ")).expect(&ps);
    assert!(ps.starts_with("NAME") && ps.contains("COMMAND"), "{ps}");
    assert!(line.contains("busybox") && line.contains("sleep 100"), "{ps}");
    assert!(line.contains("Up ") && line.contains(" ago"), "{ps}");

    let v = json(&ok(warren(dir.path()).args(["inspect", "web"])));
    assert_eq!(v["name"], "web");
    assert_eq!(v["image"], "busybox");
    assert_eq!(v["state"]["status"], "running");
    assert_eq!(v["container"]["process"]["args"][1], "100");
    assert!(v["ids"]["uids"].is_object(), "{v}");

    ok(warren(dir.path()).args(["stop", "-t", "0", "web"]));
    let ps = ok(warren(dir.path()).args(["ps", "-a"]));
    let line = ps.lines().find(|l| l.starts_with("web ")).expect(&ps);
    assert!(line.contains("Exited") && line.contains("sleep 100"), "{ps}");
    let list = json(&ok(warren(dir.path()).args(["--json", "ps"])));
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["command"], "sleep 100");
    assert!(list[0]["state"].as_str().unwrap().starts_with("Exited"));
    ok(warren(dir.path()).args(["rm", "web"]));
}

#[test]
fn json_output_for_every_product_command_errors_included() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-json");
    let w = || {
        let mut c = warren(dir.path());
        c.arg("--json");
        c
    };
    // Errors: one JSON object on stdout, a non-zero exit.
    for args in [
        &["inspect", "nosuch"][..],
        &["logs", "nosuch"],
        &["image", "inspect", "nosuch"],
        &["run", "--image", "nosuch", "--", "true"],
        &["rn"],
    ] {
        let (out, _) = fails(w().args(args));
        let v = json(out.trim());
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{args:?}: {out}");
    }
    let (out, _) = fails(w().args(["stop", "nosuch"]));
    assert_eq!(json(out.trim())["name"], "nosuch");
    assert!(json(out.trim())["error"].is_string(), "{out}");

    let out = ok(w().args(["run", "-d", "--image", "busybox", "--name", "j", "--", "echo", "hi"]));
    assert_eq!(json(out.trim())["name"], "j");
    assert_eq!(json(&ok(w().args(["stop", "j"])))["stopped"], true);
    let log = json(&ok(w().args(["logs", "j"])));
    assert_eq!(log["log"], "hi\n");
    assert!(json(&ok(w().args(["image", "ls"]))).is_array());
    assert!(json(&ok(w().args(["store", "stats"])))["images"].is_number());
    assert_eq!(json(&ok(w().args(["rm", "j"])))["removed"], true);
}
