//! The product end to end: `runtime::Runtime` (the scheduler's API), `warren run --image`
//! and friends, the scheduler example, and the systemd units. Real containers, as root.

mod common;

use common::*;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warren::runtime::{ContainerConfig, Runtime, RuntimeOptions};

/// A runtime whose state, store and run dirs all live in `dir`.
fn options(dir: &Path) -> RuntimeOptions {
    RuntimeOptions {
        state_dir: dir.join("state"),
        store_dir: dir.join("state/store"),
        run_dir: dir.join("run"),
        pool: None,
    }
}

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (std::fs::File::from(r), w)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(String::from)
        .collect()
}

#[test]
fn twenty_containers_from_one_image_each_in_its_own_block() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    require_tool("busybox", "busybox-static");
    let dir = scratch("product-twenty");
    let rt = Runtime::open(options(dir.path())).expect("open runtime");
    let results: Vec<(String, i32, String, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let rt = &rt;
                s.spawn(move || {
                    let name = format!("c{i}");
                    let (mut out, w) = pipe();
                    let cfg = ContainerConfig {
                        image: "busybox".into(),
                        command: vec![
                            "sh".into(),
                            "-c".into(),
                            format!("cat /proc/self/uid_map; echo {i} > /mine; ls /; exit {i}"),
                        ],
                        stdio: [None, Some(w), None],
                        ..ContainerConfig::default()
                    };
                    let handle = rt
                        .run(&name, cfg)
                        .unwrap_or_else(|e| panic!("run {name}: {e}"));
                    let owner = std::fs::metadata(rt.record(&name).unwrap().rootfs.join("bin"))
                        .expect("stat the view")
                        .uid();
                    let status = handle.wait().expect("wait");
                    drop(handle);
                    let mut text = String::new();
                    out.read_to_string(&mut text).expect("read output");
                    (name, warren::container::exit_code(status), text, owner)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut blocks = Vec::new();
    for (i, (name, code, text, owner)) in results.iter().enumerate() {
        assert_eq!(*code, i as i32, "{name} exit status");
        let ids = rt.record(name).unwrap().ids.expect("block recorded");
        let map: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            map,
            vec![0, ids.uids.start as u64, ids.uids.len as u64],
            "{name} uid_map: {text}"
        );
        assert_eq!(
            *owner, ids.uids.start,
            "{name}: the view's files belong to its block on the host"
        );
        blocks.push(ids.uids);
    }
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(!a.overlaps(b), "blocks {a} and {b} overlap");
        }
    }
    // One extracted copy of the image, whatever the number of containers.
    let images: Vec<_> = std::fs::read_dir(dir.path().join("state/images"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .collect();
    assert_eq!(images.len(), 1, "the image is extracted once per host");
    let lower = std::fs::read_dir(images[0].as_ref().unwrap().path().join("rootfs")).unwrap();
    assert!(
        lower.flatten().all(|e| e.file_name() != "mine"),
        "a container's write reached the image"
    );
    // A container's writes stay in its own view.
    let view = |n: &str| rt.record(n).unwrap().rootfs;
    assert_eq!(
        std::fs::read_to_string(view("c3").join("mine")).unwrap(),
        "3\n"
    );
    assert_eq!(
        std::fs::read_to_string(view("c4").join("mine")).unwrap(),
        "4\n"
    );
    for (name, ..) in &results {
        rt.delete(name, false)
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
    assert!(rt.list().unwrap().is_empty());
    assert!(
        mounts_under(dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir.path())
    );
    assert!(rt.options().state_dir.join("ranges.json").exists());
    let ranges = std::fs::read_to_string(rt.options().state_dir.join("ranges.json")).unwrap();
    assert!(
        !ranges.contains("\"c1\""),
        "block of c1 not freed: {ranges}"
    );
}

#[test]
fn cli_run_rm_exit_status_env_and_volume() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("product-cli");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    let out = run(warren(dir.path()).args([
        "run",
        "--rm",
        "--image",
        "busybox",
        "--name",
        "one",
        "-e",
        "GREETING=hi",
        "-v",
        &format!("{}:/data:ro", data.display()),
        "--",
        "sh",
        "-c",
        "echo $GREETING; cat /data/in; hostname; touch /data/x 2>/dev/null || echo ro; exit 7",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hi\nfrom the host\none\nro\n");
    // --rm removed everything: the name is free again.
    let list = ok(warren(dir.path()).args(["ps", "-q"]));
    assert_eq!(list.trim(), "");
    // A missing image says how to get one.
    let out = run(warren(dir.path()).args(["run", "--image", "nosuch", "--", "true"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("image \"nosuch\" is not in the store"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("hint: ")
                && l.contains("`warren image import DIR --name nosuch`")),
        "{err}"
    );
    assert!(
        ok(warren(dir.path()).args(["ps", "-q"])).trim().is_empty(),
        "a failed run left a container"
    );
}

#[test]
fn detached_container_logs_ps_stop_rm() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("product-detached");
    let out = ok(warren(dir.path()).args([
        "run",
        "-d",
        "--image",
        "busybox",
        "--name",
        "bg",
        "--",
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done",
    ]));
    assert_eq!(out.trim(), "bg");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(warren(dir.path()).args(["logs", "bg"])).contains("started") {
        assert!(Instant::now() < deadline, "no output in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = ok(warren(dir.path()).args(["ps"]));
    assert!(
        ps.contains("bg") && ps.contains("Up ") && ps.contains("busybox"),
        "{ps}"
    );
    ok(warren(dir.path()).args(["stop", "bg"]));
    assert!(ok(warren(dir.path()).args(["logs", "bg"])).contains("bye"));
    let ps = ok(warren(dir.path()).args(["ps"]));
    assert!(ps.contains("Exited"), "{ps}");
    ok(warren(dir.path()).args(["rm", "bg"]));
    assert!(ok(warren(dir.path()).args(["ps", "-q"])).trim().is_empty());
    assert!(mounts_under(dir.path()).is_empty());
}

#[test]
fn delete_after_sigkill_mid_create_cleans_up() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("product-kill");
    // Warm the image so create spends its time on the container, then kill it at
    // several points of create.
    ok(warren(dir.path()).args(["run", "--rm", "--image", "busybox", "--", "true"]));
    for delay_ms in [0u64, 2, 5, 10, 20, 40] {
        let mut child = warren(dir.path())
            .args([
                "run", "-d", "--image", "busybox", "--name", "victim", "--", "sleep", "30",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever state it was in, rm --force cleans it, and the name is reusable.
        let _ = run(warren(dir.path()).args(["rm", "--force", "victim"]));
        assert!(
            mounts_under(dir.path()).is_empty(),
            "after kill at {delay_ms} ms: {:?}",
            mounts_under(dir.path())
        );
        assert!(!dir.path().join("state/containers/victim").exists());
        assert!(!dir.path().join("run/victim").exists());
        ok(warren(dir.path()).args([
            "run", "--rm", "--image", "busybox", "--name", "victim", "--", "true",
        ]));
    }
}

#[test]
fn foreground_run_notifies_systemd_and_forwards_sigterm() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("product-notify");
    let sock_path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("web.toml");
    std::fs::write(
        &config,
        "image = \"busybox\"\ncommand = [\"sh\", \"-c\", \"trap 'exit 42' TERM; echo up; while true; do sleep 0.1; done\"]\n",
    )
    .unwrap();
    let mut child = warren(dir.path())
        .args(["run", "--name", "web", "--replace", "--rm", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from warren");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // The workload's pid 1 ignores SIGTERM until its trap is set: wait for "up".
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "up\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(42),
        "the container's exit status becomes warren's"
    );
    assert!(ok(warren(dir.path()).args(["ps", "-q"])).trim().is_empty());
}

#[test]
fn scheduler_example_converges_and_restarts() {
    if !require_root("runs containers with the CLI on a rootful installation") {
        return;
    }
    let dir = scratch("product-scheduler");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/examples/scheduler");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--example", "scheduler"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    let desired = dir.path().join("desired.toml");
    std::fs::write(
        &desired,
        "[[service]]\nname = \"web\"\nimage = \"busybox\"\nreplicas = 2\ncommand = [\"sleep\", \"30\"]\n\n\
         [[service]]\nname = \"job\"\nimage = \"busybox\"\ncommand = [\"sh\", \"-c\", \"sleep 0.2\"]\n",
    )
    .unwrap();
    let out = ok(Command::new(&example)
        .arg(&desired)
        .args(["--iterations", "6", "--interval-ms", "700"])
        .env("WARREN_STATE_DIR", dir.path().join("state")));
    let passes: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names = |v: &serde_json::Value, k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&passes[0], "started"),
        vec!["job-0", "web-0", "web-1"]
    );
    assert!(
        passes
            .iter()
            .all(|p| p["errors"].as_array().unwrap().is_empty()),
        "{out}"
    );
    let restarts: usize = passes.iter().map(|p| names(p, "restarted").len()).sum();
    assert!(
        restarts >= 2,
        "job-0 exits every pass and is restarted: {out}"
    );
    assert!(
        passes
            .iter()
            .all(|p| !names(p, "restarted").contains(&"web-0".to_string()))
    );
    // job-0 may be waiting out its restart backoff at the last pass.
    let running = names(passes.last().unwrap(), "running");
    assert!(
        running.ends_with(&["web-0".into(), "web-1".into()]),
        "{out}"
    );
    // The scheduler removes what it ran when it ends.
    assert!(mounts_under(dir.path()).is_empty());
}

#[test]
fn systemd_units_verify() {
    require_tool("systemd-analyze", "systemd");
    let dir = scratch("product-units");
    let units = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let bindir = bin("warren").parent().unwrap().to_path_buf();
    for unit in ["container@.service", "shift-mount@.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        // Point ExecStart at the binaries this test built.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bindir.display()));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("container@web.service"))
        .arg(dir.path().join("shift-mount@web.service"))
        .current_dir(dir.path()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn rootless_run_from_an_image_in_the_users_subuid_block() {
    if !crate::common::require_root(
        "switches to the rootless test user (setpriv) and writes its /etc/subuid lines",
    ) {
        return;
    }
    let (uid, gid) = ensure_rootless_user();
    let data = scratch("product-rootless");
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    nix::unistd::chown(data.path(), Some(uid.into()), Some(gid.into())).unwrap();
    let warren = || {
        let mut cmd = as_rootless(&bin("warren"));
        cmd.env("XDG_DATA_HOME", data.path());
        cmd
    };
    let out = run(warren().args([
        "run",
        "--rm",
        "--image",
        "busybox",
        "--name",
        "rl",
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map; id -u; touch /mine && echo wrote; ls -ln /bin/busybox",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        map,
        ["0", &ROOTLESS_SUBIDS.0.to_string(), "65536"],
        "{stdout}"
    );
    assert!(stdout.contains("\n0\nwrote\n"), "{stdout}");
    // Files of the image belong to root inside, the block's first id outside.
    let owner: Vec<&str> = stdout.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(owner[2], "0", "{stdout}");
    // --rm removed the copy (owned by the block) and freed the name.
    let ps = run(warren().args(["ps", "-q"]));
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty());
    let containers = data.path().join("warren/containers");
    assert_eq!(
        std::fs::read_dir(&containers)
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
