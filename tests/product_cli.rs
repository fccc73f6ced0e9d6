//! The `warren` CLI as podman users expect it: `stop` returns once the container is
//! dead, `ps` and `inspect`, `--json` everywhere (errors too), `exec -it` and `run -t`
//! (the pty sized before the start), flag-named errors, typo suggestions, completions and
//! man pages, `store gc` of extracted trees, grouped help and `--state-dir`. Real
//! containers from the embedded busybox, as root.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

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
    assert!(
        line.contains("busybox") && line.contains("sleep 100"),
        "{ps}"
    );
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
    // SIGKILLed by `stop -t 0`: the monitor of the detached container recorded it.
    assert!(
        line.contains("Exited (137)") && line.contains(" ago") && line.contains("sleep 100"),
        "{ps}"
    );
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
        &["exec", "nosuch", "true"],
        &["ranges", "get", "nosuch"],
    ] {
        let (out, _) = fails(w().args(args));
        let v = json(out.trim());
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {out}"
        );
    }
    let (out, _) = fails(w().args(["stop", "nosuch"]));
    assert_eq!(json(out.trim())["name"], "nosuch");
    assert!(json(out.trim())["error"].is_string(), "{out}");

    let out = ok(w().args([
        "run", "-d", "--image", "busybox", "--name", "j", "--", "echo", "hi",
    ]));
    assert_eq!(json(out.trim())["name"], "j");
    assert_eq!(json(&ok(w().args(["stop", "j"])))["stopped"], true);
    let log = json(&ok(w().args(["logs", "j"])));
    assert_eq!(log["log"], "hi\n");
    assert!(json(&ok(w().args(["image", "ls"]))).is_array());
    assert!(json(&ok(w().args(["store", "stats"])))["images"].is_number());
    assert_eq!(json(&ok(w().args(["rm", "j"])))["removed"], true);
}

#[test]
fn typos_of_every_subcommand_get_a_suggestion() {
    let cases = [
        (&["rn"][..], "run"),
        (&["stpo"], "stop"),
        (&["exce"], "exec"),
        (&["inspcet"], "inspect"),
        (&["lgos"], "logs"),
        (&["imgae"], "image"),
        (&["image", "lst"], "list"),
        (&["store", "cg"], "gc"),
        (&["ranges", "lsit"], "list"),
        (&["stat"], "state"),
        (&["completion"], "completions"),
    ];
    for (args, want) in cases {
        let (_, err) = fails(Command::new(bin("warren")).args(args));
        let tip = err.lines().find(|l| l.contains("tip:")).unwrap_or_default();
        assert!(tip.contains(&format!("'{want}'")), "{args:?}: {err}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let bash = ok(Command::new(bin("warren")).args(["completions", "bash"]));
    for verb in [
        "run", "ps", "stop", "inspect", "logs", "image", "store", "create",
    ] {
        assert!(bash.contains(verb), "bash completion lacks {verb}");
    }
    assert!(
        bash.contains("--state-dir") && bash.contains("complete -F"),
        "{bash}"
    );
    let zsh = ok(Command::new(bin("warren")).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef warren") && zsh.contains("inspect"));
    let fish = ok(Command::new(bin("warren")).args(["completions", "fish"]));
    assert!(fish.contains("complete -c warren") && fish.contains("stop"));

    let man = ok(Command::new(bin("warren")).arg("man"));
    assert!(man.lines().any(|l| l.starts_with(".TH warren 1")), "{man}");
    let dir = scratch("cli-man");
    ok(Command::new(bin("warren"))
        .args(["man", "--dir"])
        .arg(dir.path()));
    for page in [
        "warren.1",
        "warren-run.1",
        "warren-image-import.1",
        "warren-store-gc.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let run = std::fs::read_to_string(dir.path().join("warren-run.1")).unwrap();
    assert!(run.contains("hostname"), "{run}");
}

#[test]
fn help_groups_the_runc_verbs_apart_and_describes_every_flag() {
    let help = ok(Command::new(bin("warren")).arg("--help"));
    let (product, oci) = help.split_once("OCI runtime commands").expect(&help);
    for verb in [
        "run",
        "ps",
        "stop",
        "rm",
        "logs",
        "inspect",
        "image",
        "completions",
    ] {
        assert!(
            product.contains(&format!("\n  {verb} ")),
            "{verb} in {product}"
        );
    }
    for verb in [
        "create", "start", "state", "kill", "delete", "pause", "features",
    ] {
        assert!(oci.contains(&format!("\n  {verb} ")), "{verb} in {oci}");
        assert!(
            !product.contains(&format!("\n  {verb} ")),
            "{verb} in {product}"
        );
    }
    assert!(help.contains("--state-dir"), "{help}");
    // Every flag of `run` has a description (clap's long help: the next line).
    let run = ok(Command::new(bin("warren")).args(["run", "--help"]));
    let lines: Vec<&str> = run.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with("--") || l.trim_start().starts_with('-') {
            let next = lines.get(i + 1).map_or("", |n| n.trim());
            assert!(!next.is_empty(), "{l} has no description:\n{run}");
        }
    }
}

#[test]
fn the_state_directory_is_settable_by_flag() {
    if !require_root("runs a container with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-state-dir");
    let state = dir.path().join("flagged");
    let mut cmd = Command::new(bin("warren"));
    cmd.env_remove("WARREN_STATE_DIR")
        .arg("--state-dir")
        .arg(&state)
        .arg("--root")
        .arg(dir.path().join("run"));
    cmd.args([
        "run", "-d", "--image", "busybox", "--name", "sd", "--", "sleep", "30",
    ]);
    ok(&mut cmd);
    assert!(state.join("containers/sd/warren.json").is_file());
    assert!(
        state.join("store").is_dir(),
        "the store defaults under --state-dir"
    );
    ok(warren_in(&state, dir.path()).args(["rm", "-f", "sd"]));
}

/// `warren` with `--state-dir STATE` and its run dir in `dir`.
fn warren_in(state: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin("warren"));
    cmd.env_remove("WARREN_STATE_DIR")
        .arg("--state-dir")
        .arg(state)
        .arg("--root")
        .arg(dir.join("run"));
    cmd
}

#[test]
fn exec_it_sets_term_and_the_window_size_before_the_workload_starts() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-exec");
    run_detached(dir.path(), "ex", &["sleep", "100"]);
    // -i keeps stdin: what we pipe in comes out.
    let mut child = warren(dir.path())
        .args(["exec", "-i", "ex", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn exec -i");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");

    // -t: TERM=xterm unless set, as podman does.
    let out = ok(warren(dir.path()).args(["exec", "-t", "ex", "sh", "-c", "echo term=$TERM"]));
    assert!(out.contains("term=xterm"), "{out}");
    let out = ok(warren(dir.path()).args([
        "exec",
        "-t",
        "-e",
        "TERM=vt100",
        "ex",
        "sh",
        "-c",
        "echo term=$TERM",
    ]));
    assert!(out.contains("term=vt100"), "{out}");
    let out = ok(warren(dir.path()).args(["exec", "ex", "sh", "-c", "echo term=$TERM."]));
    assert!(out.contains("term=."), "no TERM without -t: {out}");

    // -it from a terminal of 33x77: the workload's first look at its pty sees that size.
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
    let out = ok(warren(dir.path())
        .args(["exec", "-it", "ex", "stty", "size"])
        .stdin(std::process::Stdio::from(pty.slave)));
    drop(pty.master);
    assert!(out.contains("33 77"), "{out:?}");
    ok(warren(dir.path()).args(["rm", "-f", "ex"]));
}

#[test]
fn run_t_sizes_the_pty_before_the_workload_starts() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-run-t");
    // From a terminal of 33x77: the first thing the workload does is look at its pty.
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
    let out = ok(warren(dir.path())
        .args([
            "run", "--rm", "-t", "--image", "busybox", "--", "stty", "size",
        ])
        .stdin(std::process::Stdio::from(pty.slave)));
    drop(pty.master);
    assert_eq!(out.lines().next().map(str::trim), Some("33 77"), "{out:?}");
}

#[test]
fn volume_and_memory_errors_name_the_flag_and_sizes_read_as_documented() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-flags");
    let run = |extra: &[&str], cmd: &[&str]| {
        let mut c = warren(dir.path());
        c.args(["run", "--rm", "--image", "busybox"])
            .args(extra)
            .arg("--")
            .args(cmd);
        c
    };
    let (_, err) = fails(&mut run(&["-v", "/nope:/x"], &["true"]));
    assert!(
        err.contains("-v /nope:/x: /nope: No such file or directory"),
        "{err}"
    );
    assert!(!err.contains("mounts["), "{err}");
    let (_, err) = fails(&mut run(&["--memory", "512"], &["true"]));
    assert!(
        err.contains("--memory 512") && err.contains("6 MiB"),
        "{err}"
    );
    let limit = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    for (flag, bytes) in [
        ("16777216", 16 << 20),
        ("16384k", 16 << 20),
        ("24m", 24 << 20),
        ("1g", 1 << 30),
    ] {
        let out = ok(&mut run(&["--memory", flag], &["sh", "-c", limit]));
        assert_eq!(out.trim(), bytes.to_string(), "--memory {flag}");
    }
    // The TOML file takes bytes as an integer too.
    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, "image = \"busybox\"\nmemory = 33554432\n").unwrap();
    let out = ok(warren(dir.path())
        .args(["run", "--rm", "--config"])
        .arg(&toml)
        .args(["--", "sh", "-c", limit]));
    assert_eq!(out.trim(), (32 << 20).to_string());
}

/// Every "DONE/TOTAL" pair the progress bar drew (sizes in bytes), from terminal output.
fn bar_pairs(screen: &str) -> Vec<(f64, f64)> {
    let size = |s: &str| -> Option<f64> {
        let (n, unit) = s.trim().split_once(' ')?;
        let mult = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(n.parse::<f64>().ok()? * mult)
    };
    let mut out = Vec::new();
    for part in screen.split(['\r', '\n', '\x1b']) {
        let Some((left, right)) = part.split_once('/') else {
            continue;
        };
        let done = left.rsplitn(3, ' ').take(2).collect::<Vec<_>>();
        let total = right.splitn(3, ' ').take(2).collect::<Vec<_>>();
        if let (Some(d), Some(t)) = (
            size(&format!("{} {}", done.get(1).unwrap_or(&""), done[0])),
            size(&total.join(" ")),
        ) {
            out.push((d, t));
        }
    }
    out
}

#[test]
fn the_import_bar_counts_against_the_trees_total() {
    let dir = scratch("cli-bar");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    // Incompressible, so the import takes long enough for the bar to draw: 96 MiB, several
    // ticks even when the tree's total is counted late on a loaded machine (24 MiB once
    // finished in three ticks with the total still unknown).
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..96 {
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::fs::write(tree.join(format!("d/f{i}")), data).unwrap();
    }
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = warren(dir.path())
        .args(["image", "import"])
        .arg(&tree)
        .args(["--name", "big"])
        .stderr(std::process::Stdio::from(pty.slave))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn import");
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut master, &mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    assert!(child.wait().unwrap().success());
    let screen = reader.join().unwrap();
    let pairs = bar_pairs(&screen);
    for (done, total) in &pairs {
        assert!(done <= total, "the bar drew {done}/{total}: {screen:?}");
        assert!(
            *total > 95.0 * 1024.0 * 1024.0,
            "total is the tree's: {screen:?}"
        );
    }
    assert!(!pairs.is_empty(), "no DONE/TOTAL drawn: {screen:?}");
}

/// The extracted trees (key directories) under the state dir.
fn trees(dir: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(dir.join("state/images"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

#[test]
fn store_gc_removes_extracted_trees_no_image_and_no_container_uses() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("cli-gc");
    let d = dir.path();
    // Two images: the embedded busybox, and `other` (busybox plus a marker file).
    ok(warren(d).args(["run", "--rm", "--image", "busybox", "--", "true"]));
    let src = d.join("other-tree");
    ok(warren(d).args(["image", "extract", "busybox"]).arg(&src));
    std::fs::write(src.join("marker"), "other\n").unwrap();
    ok(warren(d)
        .arg("image")
        .arg("import")
        .arg(&src)
        .args(["--name", "other"]));
    run_detached(d, "user", &["sleep", "100"]);
    ok(warren(d).args([
        "run", "-d", "--image", "other", "--name", "o", "--", "sleep", "100",
    ]));
    assert_eq!(trees(d).len(), 2, "one tree per image");

    // Every image still in the store keeps its tree.
    let r = json(&ok(warren(d).args(["--json", "store", "gc"])));
    assert_eq!(r["trees"]["removed"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(trees(d).len(), 2);

    // Images gone: `other`'s tree stays while container `o` runs on it.
    ok(warren(d).args(["image", "rm", "other"]));
    ok(warren(d).args(["image", "rm", "busybox"]));
    ok(warren(d).args(["rm", "-f", "user"]));
    // Another store's gc leaves this store's trees alone.
    ok(warren(d)
        .arg("--store")
        .arg(d.join("elsewhere"))
        .args(["store", "gc"]));
    assert_eq!(trees(d).len(), 2, "another store's gc removed a tree");
    let r = json(&ok(warren(d).args(["--json", "store", "gc"])));
    assert_eq!(r["trees"]["removed"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["trees"]["freed_bytes"].as_u64().unwrap() > 100_000, "{r}");
    assert_eq!(trees(d).len(), 1);
    let out = ok(warren(d).args(["exec", "o", "cat", "/marker", "/bin/busybox"]));
    assert!(
        out.starts_with("other\n"),
        "the running container still reads its tree"
    );

    ok(warren(d).args(["rm", "-f", "o"]));
    let out = ok(warren(d).args(["store", "gc"]));
    assert!(out.contains("removed 1 extracted image trees"), "{out}");
    assert!(trees(d).is_empty(), "{:?}", trees(d));
}
