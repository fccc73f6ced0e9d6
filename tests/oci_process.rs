//! The container process through the runc-compatible CLI (`warren create/start/run/exec/
//! state/delete` on an OCI bundle), compared with runc on the same bundle: rlimits set
//! before the uid changes, seccomp without a forced no_new_privs, a program that cannot
//! run reported by create and exec, the hooks at their lifecycle points, exec'd processes
//! that outlive the runtime.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

use common::{bin, ok, require_root, run, scratch};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn warren(root: &Path) -> Command {
    let mut c = Command::new(bin("warren"));
    c.arg("--root").arg(root);
    c
}

fn runc(root: &Path) -> Command {
    let path = Path::new("/usr/sbin/runc");
    assert!(path.is_file(), "runc is missing: apt-get install -y runc");
    let mut c = Command::new(path);
    c.arg("--root").arg(root);
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `cmd` whose container outlives it (create, run -d, exec --detach): stdout to
/// /dev/null and stderr to a file, since the container would hold a pipe open. Returns
/// whether it succeeded and its stderr.
fn detached(cmd: &mut Command) -> (bool, String) {
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("reopen stderr file"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
    (status.success(), stderr)
}

/// Like [`detached`], and it must succeed.
fn detached_ok(cmd: &mut Command) {
    let (ok, stderr) = detached(cmd);
    assert!(ok, "{cmd:?} failed: {stderr}");
}

fn sh(script: &str) -> Value {
    rootfs::config(&["sh", "-c", script])
}

/// A bundle in `dir` running `config`, and a state root for each runtime.
struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(name: &str, config: &Value) -> Bundle {
        common::assert_root("a bundle run by runc and warren");
        let dir = scratch(name);
        rootfs::bundle(dir.path(), config);
        Bundle { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn set(&self, config: &Value) {
        rootfs::write_config(self.path(), config);
    }
    fn warren_root(&self) -> PathBuf {
        self.path().join("warren-state")
    }
    fn runc_root(&self) -> PathBuf {
        self.path().join("runc-state")
    }
    /// `warren run` in the foreground.
    fn warren_run(&self, id: &str) -> Output {
        run(warren(&self.warren_root())
            .args(["run", "-b"])
            .arg(self.path())
            .arg(id))
    }
    fn runc_run(&self, id: &str) -> Output {
        run(runc(&self.runc_root())
            .args(["run", "-b"])
            .arg(self.path())
            .arg(id))
    }
    /// The containers warren knows of (nothing may be left behind by a failed create).
    fn warren_ids(&self) -> Vec<String> {
        let out = ok(warren(&self.warren_root()).args(["list", "-q"]));
        out.lines().map(str::to_owned).collect()
    }
}

/// The `Max open files` and `Max processes` lines of /proc/self/limits, and the uid.
const LIMITS: &str = "grep -E '^Max (open files|processes)' /proc/self/limits; id -u";

fn with_limits(mut c: Value, uid: u32) -> Value {
    c["process"]["user"] = json!({"uid": uid, "gid": uid});
    c["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
        {"type": "RLIMIT_NPROC", "hard": 30000, "soft": 20000}
    ]);
    c
}

fn assert_limits(out: &str, uid: u32) {
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0][..4],
        ["Max", "processes", "20000", "30000"],
        "{out}"
    );
    assert_eq!(
        lines[1][..5],
        ["Max", "open", "files", "1024", "1024"],
        "{out}"
    );
    assert_eq!(lines[2], [uid.to_string()], "{out}");
}

#[test]
fn rlimits_are_set_before_the_uid_changes_on_every_run() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("rlimit-run", &with_limits(sh(LIMITS), 1000));
    for i in 0..30 {
        let out = b.warren_run(&format!("rl{i}"));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "run {i}: {stderr}");
        assert_limits(&stdout, 1000);
    }
    let out = b.runc_run("rl");
    assert!(out.status.success(), "runc: {}", text(&out).1);
    assert_eq!(
        text(&b.warren_run("rl-last")).0,
        text(&out).0,
        "warren and runc"
    );
}

#[test]
fn exec_with_a_user_gets_its_rlimits() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("rlimit-exec", &with_limits(sh("sleep 100"), 0));
    let root = b.warren_root();
    detached_ok(
        warren(&root)
            .args(["run", "-d", "-b"])
            .arg(b.path())
            .arg("rx"),
    );
    let out = ok(warren(&root).args(["exec", "-u", "1000", "rx", "--", "sh", "-c", LIMITS]));
    assert_limits(&out, 1000);
    // A process.json with limits of its own, lowered below the container's.
    let mut p = with_limits(sh(LIMITS), 1000)["process"].clone();
    p["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256},
        {"type": "RLIMIT_NPROC", "hard": 30000, "soft": 20000}
    ]);
    let file = b.path().join("process.json");
    std::fs::write(&file, p.to_string()).expect("write process.json");
    let out = ok(warren(&root)
        .args(["exec", "--process"])
        .arg(&file)
        .arg("rx"));
    assert!(
        out.contains("Max open files            256                  512"),
        "{out}"
    );
    assert!(out.ends_with("1000\n"), "{out}");
    ok(warren(&root).args(["delete", "-f", "rx"]));
}

#[test]
fn seccomp_sets_no_new_privs_only_when_asked() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; mkdir /tmp/d 2>/dev/null || echo denied";
    let mut c = sh(script);
    c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    c["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    let b = Bundle::new("seccomp-nnp", &c);
    for nnp in [false, true] {
        c["process"]["noNewPrivileges"] = json!(nnp);
        b.set(&c);
        let out = b.warren_run(&format!("nnp-{nnp}"));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            stdout,
            format!("NoNewPrivs:\t{}\nSeccomp:\t2\ndenied\n", nnp as u8),
            "noNewPrivileges {nnp}"
        );
        assert_eq!(stdout, text(&b.runc_run(&format!("nnp-{nnp}"))).0, "runc");
    }
}

#[test]
fn a_program_that_cannot_run_fails_create_and_exec_like_runc() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("exec-missing", &sh("sleep 100"));
    let rootfs = b.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("adir")).expect("mkdir");
    std::fs::write(rootfs.join("noexec"), "#!/bin/sh\necho hi\n").expect("write");
    let root = b.warren_root();
    detached_ok(
        warren(&root)
            .args(["run", "-d", "-b"])
            .arg(b.path())
            .arg("live"),
    );
    for (i, (prog, code, reason)) in [
        ("nope", 127, "executable file not found in $PATH"),
        ("/nope", 127, "No such file or directory"),
        ("/adir", 126, "Permission denied"),
        ("/noexec", 126, "Permission denied"),
    ]
    .into_iter()
    .enumerate()
    {
        b.set(&rootfs::config(&[prog]));
        let id = format!("bad{i}");
        let (created, stderr) =
            detached(warren(&root).args(["create", "-b"]).arg(b.path()).arg(&id));
        assert!(!created, "create of {prog} succeeded");
        assert!(
            stderr.contains(&format!("exec: {prog:?}: ")) && stderr.contains(reason),
            "{prog}: {stderr}"
        );
        assert_eq!(b.warren_ids(), ["live"], "{prog}: left behind");
        let (created, _) = detached(
            runc(&b.runc_root())
                .args(["create", "-b"])
                .arg(b.path())
                .arg(&id),
        );
        assert!(!created, "runc create of {prog} succeeded");
        let out = b.warren_run(&id);
        assert_eq!(
            out.status.code(),
            Some(code),
            "run {prog}: {}",
            text(&out).1
        );
        // runc's exec exits 255 for every failure to start the process (checked).
        let out = run(warren(&root).args(["exec", "live", "--", prog]));
        assert_eq!(
            out.status.code(),
            Some(255),
            "exec {prog}: {}",
            text(&out).1
        );
        assert!(
            text(&out).1.contains(reason),
            "exec {prog}: {}",
            text(&out).1
        );
    }
    ok(warren(&root).args(["delete", "-f", "live"]));
}

/// A hook on the host that saves its stdin to `dir/NAME.json`.
fn save_state(dir: &Path, name: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", dir.display())]})
}

fn saved_status(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name} hook did not run: {e}"));
    let state: Value = serde_json::from_str(&text).expect("state json on stdin");
    state["status"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn hooks_get_their_state_and_failures_after_start_only_warn() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("hooks", &sh("cat /tmp/start"));
    let d = b.path().join("out");
    std::fs::create_dir_all(&d).expect("mkdir");
    let failing = json!({"path": "/bin/false"});
    let mut c = sh("cat /tmp/start");
    c["hooks"] = json!({
        "prestart": [save_state(&d, "prestart")],
        "createRuntime": [save_state(&d, "createRuntime")],
        "createContainer": [save_state(&d, "createContainer")],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/start"]}],
        "poststart": [failing, save_state(&d, "poststart")],
        "poststop": [failing, save_state(&d, "poststop")]
    });
    b.set(&c);
    let root = b.warren_root();
    // create + start: the failing poststart hook does not fail start.
    detached_ok(warren(&root).args(["create", "-b"]).arg(b.path()).arg("h"));
    for name in ["prestart", "createRuntime", "createContainer"] {
        assert_eq!(saved_status(&d, name), "creating", "{name}");
    }
    let out = run(warren(&root).args(["start", "h"]));
    let stderr = text(&out).1;
    assert!(out.status.success(), "start: {stderr}");
    assert!(stderr.contains("poststart hook 0"), "no warning: {stderr}");
    assert_eq!(saved_status(&d, "poststart"), "running");
    let out = run(warren(&root).args(["delete", "-f", "h"]));
    assert!(out.status.success(), "delete: {}", text(&out).1);
    assert!(text(&out).1.contains("poststop hook 0"), "{}", text(&out).1);
    assert_eq!(saved_status(&d, "poststop"), "stopped");
    // run: the workload prints what the startContainer hook read. Without
    // no_new_privs the filter is in place before the hooks run: one that answers clone3
    // with ENOSYS (docker's, containers-common's) must not stop them.
    c["process"]["noNewPrivileges"] = json!(false);
    c["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    });
    b.set(&c);
    let out = b.warren_run("h2");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run: {stderr}");
    let state: Value = serde_json::from_str(&stdout).expect("startContainer state");
    assert_eq!(
        (state["id"].as_str(), state["status"].as_str()),
        (Some("h2"), Some("created"))
    );
    assert!(state["pid"].as_i64().is_some_and(|p| p > 0), "{state}");
}

#[test]
fn a_failing_or_slow_create_hook_fails_create_and_leaves_nothing() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("hooks-fail", &sh("true"));
    let root = b.warren_root();
    let slow = json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1});
    for (kind, hook, reason) in [
        (
            "prestart",
            json!({"path": "/bin/false"}),
            "failed with exit status: 1",
        ),
        ("createRuntime", slow, "timed out after 1s"),
    ] {
        let mut c = sh("true");
        c["hooks"] = json!({ kind: [hook] });
        c["linux"]["resources"] = json!({"pids": {"limit": 100}});
        b.set(&c);
        let (created, stderr) =
            detached(warren(&root).args(["create", "-b"]).arg(b.path()).arg("hf"));
        assert!(!created, "{kind}: create succeeded");
        assert!(
            stderr.contains(&format!("{kind} hook 0")) && stderr.contains(reason),
            "{stderr}"
        );
        assert!(b.warren_ids().is_empty(), "{kind}: left behind");
        let out = run(warren(&root).args(["state", "hf"]));
        assert!(!out.status.success(), "{kind}: state of a failed create");
    }
}

/// Makes this test process the reaper of orphans it causes (exec'd processes whose
/// runtime exited), so that it can wait for them.
fn become_subreaper() {
    // SAFETY: prctl with plain integers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Waits for `pid`, now our child by [`become_subreaper`]; its raw wait status.
fn wait_orphan(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid with a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        r,
        pid,
        "{pid} is not our child: {}",
        std::io::Error::last_os_error()
    );
    status
}

fn read_pid(path: &Path) -> i32 {
    for _ in 0..1000 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no pid in {}", path.display());
}

#[test]
fn exec_processes_outlive_the_runtime() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    become_subreaper();
    let b = Bundle::new("exec-detach", &sh("sleep 100"));
    let root = b.warren_root();
    detached_ok(
        warren(&root)
            .args(["run", "-d", "-b"])
            .arg(b.path())
            .arg("xd"),
    );
    // --detach: warren returns at once.
    let pid_file = b.path().join("detached.pid");
    detached_ok(
        warren(&root)
            .args(["exec", "--detach", "--pid-file"])
            .arg(&pid_file)
            .args(["xd", "--", "sleep", "2"]),
    );
    let first = read_pid(&pid_file);
    // Waiting: warren is killed while the process runs.
    let pid_file = b.path().join("waited.pid");
    let mut waiting = warren(&root)
        .args(["exec", "--pid-file"])
        .arg(&pid_file)
        .args(["xd", "--", "sleep", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn warren exec");
    let waited = read_pid(&pid_file);
    waiting.kill().expect("kill warren exec");
    waiting.wait().expect("reap warren exec");
    for pid in [first, waited] {
        let status = wait_orphan(pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "exec'd sleep {pid} did not exit normally: wait status {status:#x}"
        );
    }
    ok(warren(&root).args(["delete", "-f", "xd"]));
}

#[test]
fn an_unbindable_root_propagation_is_applied_after_pivot_root() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let mut c = sh("grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo");
    c["linux"]["rootfsPropagation"] = json!("unbindable");
    let b = Bundle::new("unbindable", &c);
    let out = b.warren_run("ub");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let optional: Vec<&str> = stdout
        .split(" - ")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(6)
        .collect();
    // (runc 1.1 binds the rootfs after making "/" unbindable: EINVAL, depending on
    // where the bundle lies; no comparison.)
    assert_eq!(optional, ["unbindable"], "{stdout}");
}

/// `config` without a mount namespace, mounts, masked or read-only paths.
fn without_mounts(mut c: Value) -> Value {
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "mount");
    c["mounts"] = json!([]);
    c["root"]["readonly"] = json!(false);
    c["linux"]["maskedPaths"] = json!([]);
    c["linux"]["readonlyPaths"] = json!([]);
    c
}

#[test]
fn without_a_mount_namespace_the_rootfs_is_chrooted() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let b = Bundle::new("no-mountns", &without_mounts(sh("ls /; echo pid=$$")));
    std::fs::write(b.path().join("rootfs/marker"), "").expect("write marker");
    let out = b.warren_run("nm");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.lines().any(|l| l == "marker"),
        "not in the rootfs: {stdout}"
    );
    assert!(stdout.ends_with("pid=1\n"), "{stdout}");
    // exec'd processes are chrooted too.
    b.set(&without_mounts(sh("sleep 100")));
    let root = b.warren_root();
    detached_ok(
        warren(&root)
            .args(["run", "-d", "-b"])
            .arg(b.path())
            .arg("nm2"),
    );
    let out = ok(warren(&root).args(["exec", "nm2", "--", "ls", "/"]));
    assert!(
        out.lines().any(|l| l == "marker"),
        "exec not in the rootfs: {out}"
    );
    ok(warren(&root).args(["delete", "-f", "nm2"]));
    // Mounts would change the shared mount table: refused, nothing left behind.
    let mut c = without_mounts(sh("true"));
    c["mounts"] = json!([{"destination": "/proc", "type": "proc", "source": "proc"}]);
    b.set(&c);
    let (created, stderr) = detached(
        warren(&root)
            .args(["create", "-b"])
            .arg(b.path())
            .arg("nm3"),
    );
    assert!(
        !created,
        "create with mounts and no mount namespace succeeded"
    );
    assert!(
        stderr.contains("`mounts`") && stderr.contains("needs a mount namespace of its own"),
        "{stderr}"
    );
    assert!(b.warren_ids().is_empty(), "left behind");
}

#[test]
fn joins_a_mount_namespace_by_path() {
    if !require_root("runs containers with runc and warren as root") {
        return;
    }
    let first = Bundle::new("mountns-a", &sh("sleep 100"));
    std::fs::write(first.path().join("rootfs/only-in-a"), "").expect("write marker");
    let root = first.warren_root();
    detached_ok(
        warren(&root)
            .args(["run", "-d", "-b"])
            .arg(first.path())
            .arg("ma"),
    );
    let state: Value =
        serde_json::from_str(&ok(warren(&root).args(["state", "ma"]))).expect("state json");
    let pid = state["pid"].as_i64().expect("pid");
    // The second container joins the first one's mount namespace, whose "/" is its rootfs.
    let mut c = without_mounts(sh("ls /"));
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "mount", "path": format!("/proc/{pid}/ns/mnt")}));
    c["root"] = json!({"path": "/"});
    let second = Bundle::new("mountns-b", &c);
    let out = run(warren(&root)
        .args(["run", "-b"])
        .arg(second.path())
        .arg("mb"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.lines().any(|l| l == "only-in-a"), "{stdout}");
    ok(warren(&root).args(["delete", "-f", "ma"]));
}
