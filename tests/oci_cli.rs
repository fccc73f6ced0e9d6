//! warren called as runc, the way podman, containerd and docker call it: the same
//! subcommands and arguments on the same bundle, compared with runc 1.1 where runc is the
//! reference (`/usr/sbin/runc`, Debian's `runc`).

#[path = "oci/cli.rs"]
mod cli;
mod common;
#[path = "oci/cli_logs.rs"]
mod logs;
#[path = "common/rootfs.rs"]
mod rootfs;

use cli::{Runtime, Started, stdout_of};
use common::{ok, require_root, run, scratch};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;

fn sh(script: &str) -> Value {
    rootfs::config(&["sh", "-c", script])
}

/// `exec`'s arguments (`runc exec --help`) give the process runc gives, on both.
#[test]
fn exec_takes_runcs_arguments_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-exec");
    let mut config = sh("sleep 1000");
    config["process"]["noNewPrivileges"] = json!(false);
    let b = rootfs::bundle(dir.path(), &config);
    let process = dir.path().join("process.json");
    std::fs::write(
        &process,
        json!({"args": ["sh", "-c", "echo $Y; pwd; id -u"], "env": ["Y=2", "PATH=/bin"], "cwd": "/tmp",
               "user": {"uid": 7, "gid": 7}})
        .to_string(),
    )
    .unwrap();
    let p = process.to_str().unwrap();
    #[rustfmt::skip]
    let cases: &[&[&str]] = &[
        &["-e", "X=1", "-u", "1000", "--cwd", "/tmp", "ID", "sh", "-c", "echo $X; id -u; id -g; pwd"],
        &["-u", "1000:1001", "-g", "5", "-g", "6", "ID", "id", "-G"],
        &["--cap", "CAP_SYS_ADMIN", "ID", "grep", "Cap[EPB]", "/proc/self/status"],
        &["-c", "CAP_CHOWN", "ID", "grep", "CapBnd", "/proc/self/status"],
        &["--no-new-privs", "ID", "grep", "NoNewPrivs", "/proc/self/status"],
        &["ID", "grep", "NoNewPrivs", "/proc/self/status"],
        &["ID", "sh", "-c", "exit 3"],
        &["-p", p, "ID"],
        &["--process", p, "-e", "Y=ignored", "ID"],
        &["--process-label", "system_u:system_r:container_t:s0", "ID", "true"],
        &["-t", "-d", "ID", "true"],
        &["ID"],
        &["-e", "TERM=dumb", "-e", "Z=3", "ID", "sh", "-c", "env | grep -E '^(TERM|Z)=' | sort"],
    ];
    let mut results = Vec::new();
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let c = rt.start(&b, "exec");
        let mut got = Vec::new();
        for case in cases {
            let args: Vec<&str> = case
                .iter()
                .map(|a| if *a == "ID" { c.id.as_str() } else { a })
                .collect();
            let out = run(rt.cmd().arg("exec").args(&args).stdin(Stdio::null()));
            got.push((out.status.code(), stdout_of(&out)));
        }
        results.push((rt.name, got));
    }
    let (runc, warren) = (&results[0].1, &results[1].1);
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(warren[i], runc[i], "exec {case:?}: warren vs runc");
    }
    // What they agree on, spelled out.
    assert_eq!(warren[0], (Some(0), "1\n1000\n0\n/tmp\n".into()));
    assert_eq!(warren[1], (Some(0), "1001 5 6\n".into()));
    assert!(
        warren[2].1.contains("CapBnd:\t0000000020200420"),
        "{:?}",
        warren[2]
    );
    assert_eq!(warren[3].1, "CapBnd:\t0000000020000421\n");
    assert_eq!(warren[4].1, "NoNewPrivs:\t1\n");
    assert_eq!(warren[5].1, "NoNewPrivs:\t0\n");
    assert_eq!(warren[6].0, Some(3));
    assert_eq!(warren[7], (Some(0), "2\n/tmp\n7\n".into()));
    assert_eq!(warren[12].1, "TERM=dumb\nZ=3\n");
    for refused in 9..12 {
        assert_eq!(warren[refused].0, Some(255), "{:?}", cases[refused]);
    }
}

/// The same arguments, rootless: warren as an unprivileged user, ids from its subuid block.
#[test]
fn rootless_exec_takes_runcs_arguments() {
    let (uid, gid) = common::ensure_rootless_user();
    let sub = common::ROOTLESS_SUBIDS.0;
    let dir = scratch("cli-rootless");
    let b = dir.path().join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    for p in [dir.path(), b.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut config = sh("sleep 1000");
    config["process"]["noNewPrivileges"] = json!(false);
    let maps = json!([{"containerID": 0, "hostID": sub, "size": 65536}]);
    let ns = config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    ns.push(json!({"type": "user"}));
    config["linux"]["uidMappings"] = maps.clone();
    config["linux"]["gidMappings"] = maps;
    rootfs::bundle(&b, &config);
    rootfs::chown_tree(&b.join("rootfs"), sub, sub);
    let process = b.join("process.json");
    std::fs::write(
        &process,
        json!({"args": ["sh", "-c", "echo $Y; pwd; id -u"], "env": ["Y=2", "PATH=/bin"],
               "cwd": "/tmp", "user": {"uid": 7, "gid": 7}})
        .to_string(),
    )
    .unwrap();
    std::os::unix::fs::chown(&b, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&process, Some(uid), Some(gid)).unwrap();
    let rt = Runtime::warren_rootless(&b);
    let c = rt.start(&b, "rl-exec");
    let p = process.to_str().unwrap();
    let log = b.join("log.json");
    #[rustfmt::skip]
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-e", "X=1", "-u", "1000", "--cwd", "/tmp", "ID", "sh", "-c", "echo $X; id -u; id -g; pwd"], 0, "1\n1000\n0\n/tmp\n"),
        (&["-u", "1000:1001", "-g", "5", "-g", "6", "ID", "id", "-G"], 0, "1001 5 6\n"),
        (&["--no-new-privs", "ID", "grep", "NoNewPrivs", "/proc/self/status"], 0, "NoNewPrivs:\t1\n"),
        (&["-c", "CAP_CHOWN", "ID", "grep", "CapBnd", "/proc/self/status"], 0, "CapBnd:\t0000000020000421\n"),
        (&["-p", p, "ID"], 0, "2\n/tmp\n7\n"),
        (&["ID", "sh", "-c", "exit 3"], 3, ""),
        (&["-t", "-d", "ID", "true"], 255, ""),
    ];
    for (args, code, out) in cases {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "ID" { c.id.as_str() } else { a })
            .collect();
        let o = run(rt
            .cmd()
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "exec"])
            .args(&args));
        assert_eq!(
            (o.status.code(), stdout_of(&o).as_str()),
            (Some(*code), *out),
            "{args:?}: {o:?}"
        );
    }
    // The last failure is the log's last line.
    let text = std::fs::read_to_string(&log).unwrap();
    let v: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        v["msg"].as_str().unwrap().contains("console-socket"),
        "{text}"
    );
}

/// `exec --detach --pid-file` returns at once; the process runs on in the container.
#[test]
fn exec_detach_writes_the_pid_file_and_leaves_the_process_running() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-exec-d");
    let b = rootfs::bundle(dir.path(), &sh("sleep 1000"));
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let c = rt.start(&b, "execd");
        let pid_file = dir.path().join(format!("{}.pid", rt.name));
        ok(rt
            .cmd()
            .args(["exec", "--detach", "--pid-file"])
            .arg(&pid_file)
            .args([
                &c.id,
                "sh",
                "-c",
                "echo up > /tmp/detached; exec sleep 1000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid in the pid file");
        let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        assert_eq!(
            ns(pid),
            ns(c.pid()),
            "{}: the exec'd process in the container",
            rt.name
        );
        let seen = cli::poll(|| {
            let out = run(rt.cmd().args(["exec", &c.id, "cat", "/tmp/detached"]));
            (stdout_of(&out) == "up\n").then_some(())
        });
        assert!(seen.is_some(), "{}: the detached process ran", rt.name);
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{}: the detached process is still running",
            rt.name
        );
    }
}

/// `exec --tty --detach --console-socket S` (podman's `exec -it`): the pty master goes to
/// the socket, and the process, on that terminal, outlives the runtime.
#[test]
fn exec_tty_sends_the_pty_to_the_console_socket() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-exec-t");
    let b = rootfs::bundle(dir.path(), &sh("sleep 1000"));
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let c = rt.start(&b, "exect");
        let sock = dir.path().join(format!("{}.sock", rt.name));
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let reader = std::thread::spawn(move || common::read_console(listener));
        ok(rt
            .cmd()
            .args(["exec", "--tty", "--detach", "--console-socket"])
            .arg(&sock)
            .args([&c.id, "sh", "-c", "sleep 0.5; tty; echo still-here"])
            .stdin(Stdio::null()));
        let text = reader.join().expect("console reader");
        assert!(text.contains("/dev/pts/"), "{}: {text:?}", rt.name);
        assert!(text.contains("still-here"), "{}: {text:?}", rt.name);
    }
}

/// `ps ID`: json is the container's pids, table the host's `ps` lines of those pids.
#[test]
fn ps_lists_the_container_processes_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-ps");
    let mut lists = Vec::new();
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let mut config = sh("sleep 1001 & sleep 1002 & wait");
        config["linux"]["cgroupsPath"] = json!(format!(
            "/warren-test-ps-{}-{}",
            rt.name,
            std::process::id()
        ));
        let b = rootfs::bundle(&dir.path().join(rt.name), &config);
        let c = rt.start(&b, "ps");
        // Both sleeps started and named themselves (busybox runs an applet by
        // exec'ing /proc/self/exe: a just-forked sleep is briefly "exe").
        let named = |p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "exe")
        };
        let pids = cli::poll(|| {
            let out = ok(rt.cmd().args(["ps", "--format", "json", &c.id]));
            let pids: Vec<i32> = serde_json::from_str(&out).expect("a JSON array of pids");
            (pids.len() == 3 && pids.iter().all(named)).then_some(pids)
        })
        .unwrap_or_else(|| panic!("{}: ps --format json never listed 3 pids", rt.name));
        assert!(
            pids.contains(&c.pid()),
            "{}: {pids:?} has the init",
            rt.name
        );
        let table = ok(rt.cmd().args(["ps", &c.id]));
        let mut lines = table.lines();
        let header = lines.next().expect("header");
        assert!(header.split_whitespace().any(|t| t == "PID"), "{table}");
        let mut cmds: Vec<String> = lines
            .map(|l| l.split_whitespace().skip(7).collect::<Vec<_>>().join(" "))
            .collect();
        cmds.sort();
        // ps options after the ID go to the host's ps.
        let custom = ok(rt.cmd().args(["ps", &c.id, "-o", "pid,comm"]));
        let mut custom: Vec<&str> = custom.lines().collect();
        assert_eq!(
            custom.remove(0).split_whitespace().collect::<Vec<_>>(),
            ["PID", "COMMAND"]
        );
        custom.sort();
        let expected: Vec<String> = {
            let mut v: Vec<String> = pids
                .iter()
                .map(|p| {
                    let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap();
                    format!("{p} {}", comm.trim())
                })
                .collect();
            v.sort();
            v
        };
        let custom: Vec<String> = custom
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(custom, expected, "{}", rt.name);
        let bad = run(rt.cmd().args(["ps", "--format", "yaml", &c.id]));
        assert!(!bad.status.success(), "{}: bad format refused", rt.name);
        lists.push(cmds);
    }
    assert_eq!(lists[1], lists[0], "ps table: warren vs runc");
    assert_eq!(
        lists[1],
        [
            "sh -c sleep 1001 & sleep 1002 & wait",
            "sleep 1001",
            "sleep 1002"
        ]
    );
}

/// `pause` freezes every process (`state` and `list` say paused, `exec` is refused),
/// `resume` thaws them, as with runc.
#[test]
fn pause_and_resume_freeze_and_thaw_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-pause");
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let mut config = sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.02; done");
        config["linux"]["cgroupsPath"] = json!(format!(
            "/warren-test-pause-{}-{}",
            rt.name,
            std::process::id()
        ));
        let b = rootfs::bundle(&dir.path().join(rt.name), &config);
        let c = rt.start(&b, "pause");
        let counter = format!("/proc/{}/root/tmp/n", c.pid());
        let read = || std::fs::read_to_string(&counter).unwrap_or_default();
        assert!(cli::poll(|| (!read().is_empty()).then_some(())).is_some());
        ok(rt.cmd().args(["pause", &c.id]));
        assert_eq!(c.state()["status"], "paused", "{}", rt.name);
        let list: Value =
            serde_json::from_str(&ok(rt.cmd().args(["list", "--format", "json"]))).unwrap();
        assert_eq!(list[0]["status"], "paused", "{}: {list}", rt.name);
        // runc names the owner when it lists, and leaves it empty in `state`.
        assert_eq!(list[0]["owner"], "root", "{}: {list}", rt.name);
        assert_eq!(c.state()["owner"], "", "{}", rt.name);
        let refused = run(rt.cmd().args(["exec", &c.id, "true"]));
        assert_eq!(
            refused.status.code(),
            Some(255),
            "{}: exec while paused",
            rt.name
        );
        let frozen = read();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(read(), frozen, "{}: the workload ran while paused", rt.name);
        ok(rt.cmd().args(["resume", &c.id]));
        assert_eq!(c.state()["status"], "running", "{}", rt.name);
        assert!(
            cli::poll(|| (read() != frozen).then_some(())).is_some(),
            "{}: the workload never went on after resume",
            rt.name
        );
    }
}

/// A paused container dies of SIGKILL and goes with `delete --force`: the runtime thaws
/// it after the signal (a frozen v1 process cannot die), as runc does.
#[test]
fn paused_containers_can_be_killed_and_deleted_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-pause-kill");
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let mut config = sh("sleep 1000");
        config["linux"]["cgroupsPath"] = json!(format!(
            "/warren-test-pause-kill-{}-{}",
            rt.name,
            std::process::id()
        ));
        let b = rootfs::bundle(&dir.path().join(rt.name), &config);
        let c = rt.start(&b, "pkill");
        ok(rt.cmd().args(["pause", &c.id]));
        ok(rt.cmd().args(["kill", &c.id, "KILL"]));
        let stopped = cli::poll(|| (c.state()["status"] == "stopped").then_some(()));
        assert!(stopped.is_some(), "{}: still {}", rt.name, c.state());
        ok(rt.cmd().args(["delete", &c.id]));

        let c = rt.start(&b, "pdelete");
        ok(rt.cmd().args(["pause", &c.id]));
        let refused = run(rt.cmd().args(["delete", &c.id]));
        assert!(
            !refused.status.success(),
            "{}: delete of a paused container",
            rt.name
        );
        ok(rt.cmd().args(["delete", "--force", &c.id]));
        assert!(
            !run(rt.cmd().args(["state", &c.id])).status.success(),
            "{}",
            rt.name
        );
        let gone = cli::poll(|| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", c.pid())).unwrap_or_default();
            (stat.is_empty() || stat.contains(") Z ")).then_some(())
        });
        assert!(
            gone.is_some(),
            "{}: the init outlived delete --force",
            rt.name
        );
    }
}

/// `update` with runc's flags, then with docker's `--resources -` (zeros are
/// "unchanged"), sets the same cgroup values runc sets.
#[test]
fn update_changes_limits_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-update");
    let mut seen = Vec::new();
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let mut config = sh("sleep 1000");
        config["linux"]["cgroupsPath"] = json!(format!(
            "/warren-test-update-{}-{}",
            rt.name,
            std::process::id()
        ));
        config["linux"]["resources"] =
            json!({"memory": {"limit": 268435456}, "pids": {"limit": 100}});
        let b = rootfs::bundle(&dir.path().join(rt.name), &config);
        let c = rt.start(&b, "update");
        ok(rt.cmd().args([
            "update",
            "--memory",
            "64m",
            "--pids-limit",
            "50",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "--cpu-share",
            "512",
            &c.id,
        ]));
        let files = [
            ("memory", "memory.limit_in_bytes"),
            ("pids", "pids.max"),
            ("cpu", "cpu.cfs_quota_us"),
            ("cpu", "cpu.cfs_period_us"),
            ("cpu", "cpu.shares"),
        ];
        let values = |c: &Started| -> Vec<String> {
            files
                .iter()
                .map(|(ctl, f)| cli::cgroup_v1_file(c.pid(), ctl, f))
                .collect()
        };
        let after_flags = values(&c);
        assert_eq!(
            after_flags,
            ["67108864", "50", "50000", "100000", "512"],
            "{}",
            rt.name
        );
        let mut child = rt
            .cmd()
            .args(["update", "--resources", "-", &c.id])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                br#"{"memory": {"limit": 33554432, "swap": 0}, "cpu": {"shares": 0, "quota": 0},
                     "blockIO": {"weight": 0}, "pids": {"limit": 0}}"#,
            )
            .unwrap();
        assert!(child.wait().unwrap().success(), "{}: update -r -", rt.name);
        let after_json = values(&c);
        assert_eq!(
            after_json,
            ["33554432", "50", "50000", "100000", "512"],
            "{}",
            rt.name
        );
        let bad = run(rt.cmd().args(["update", "--memory", "lots", &c.id]));
        assert!(!bad.status.success(), "{}: a bad size is refused", rt.name);
        seen.push((after_flags, after_json));
    }
    assert_eq!(seen[1], seen[0], "warren vs runc");
}

/// `events --stats` prints one `{"type":"stats","id":ID,"data":{...}}` line and exits.
#[test]
fn events_stats_prints_one_json_event_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let dir = scratch("cli-events");
    for rt in [Runtime::runc(dir.path()), Runtime::warren(dir.path())] {
        let mut config = sh("sleep 1000");
        config["linux"]["cgroupsPath"] = json!(format!(
            "/warren-test-events-{}-{}",
            rt.name,
            std::process::id()
        ));
        let b = rootfs::bundle(&dir.path().join(rt.name), &config);
        let c = rt.start(&b, "events");
        let out = ok(rt.cmd().args(["events", "--stats", &c.id]));
        assert_eq!(out.lines().count(), 1, "{}: {out}", rt.name);
        let event: Value = serde_json::from_str(&out).expect("a JSON event");
        assert_eq!(event["type"], "stats", "{}: {event}", rt.name);
        assert_eq!(event["id"], c.id.as_str(), "{}", rt.name);
        for key in ["cpu", "memory", "pids"] {
            assert!(
                event["data"][key].is_object(),
                "{}: data.{key} in {event}",
                rt.name
            );
        }
        assert!(
            event["data"]["pids"]["current"].as_u64() >= Some(1),
            "{}: {event}",
            rt.name
        );
        // Every --interval until it stops (one line is enough to see).
        let mut child = rt
            .cmd()
            .args(["events", "--interval", "100ms", &c.id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let event: Value = serde_json::from_str(&line).expect("a JSON event");
        assert_eq!(event["type"], "stats", "{}: {line}", rt.name);
    }
}
