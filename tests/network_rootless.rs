//! Rootless networking (`warren::net::usermode`): as the unprivileged test user, a
//! process in its own user and network namespace (`unshare -U -r -n`, standing for a
//! container's init) serves HTTP on port 8080; pasta or slirp4netns attached to it
//! publishes that port on the host's loopback, the host reaches it there (only there),
//! and the helper exits when the process does.
//!
//! Each test runs its body again as the test user (this binary under setpriv). The
//! helpers open `/dev/net/tun` as that user: a normal Debian host has it mode 0666 (udev),
//! this VM (no udev) 0600, so the test makes it 0666 while it runs and restores it.

mod common;

use common::{ROOTLESS_USER, as_rootless, ensure_rootless_user, run, scratch};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warren::net::usermode::{self, Tool};

/// Set in the child: the directory the parent made for it.
const CHILD_DIR: &str = "WARREN_TEST_NET_ROOTLESS_DIR";

/// /dev/net/tun's mode, widened while any test of this process needs it.
static TUN: Mutex<(usize, u32)> = Mutex::new((0, 0));

struct TunOpen;

impl TunOpen {
    fn new() -> TunOpen {
        let mut t = TUN.lock().unwrap_or_else(|p| p.into_inner());
        if t.0 == 0 {
            let meta = std::fs::metadata("/dev/net/tun")
                .expect("/dev/net/tun (the tun module): needed by pasta and slirp4netns");
            t.1 = meta.permissions().mode() & 0o7777;
            set_tun_mode(0o666);
        }
        t.0 += 1;
        TunOpen
    }
}

fn set_tun_mode(mode: u32) {
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(mode))
        .expect("chmod /dev/net/tun");
}

impl Drop for TunOpen {
    fn drop(&mut self) {
        let mut t = TUN.lock().unwrap_or_else(|p| p.into_inner());
        t.0 -= 1;
        if t.0 == 0 {
            set_tun_mode(t.1);
        }
    }
}

/// A scratch directory the test user owns (0755); returns it and the user's uid.
fn user_scratch(name: &str) -> (tempfile::TempDir, u32) {
    let (uid, gid) = ensure_rootless_user();
    let dir = scratch(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    (dir, uid)
}

/// In the parent (root): runs `name` again as the test user and checks it passed; returns
/// false. In the child: true (the caller runs the body).
fn in_child(name: &str) -> bool {
    if std::env::var_os(CHILD_DIR).is_some() {
        return true;
    }
    if !common::require_root("runs the test as the rootless user and opens /dev/net/tun to it") {
        return false;
    }
    let (dir, _) = user_scratch("network-rootless");
    let _tun = TunOpen::new();
    let mut cmd = as_rootless(&std::env::current_exe().expect("test binary"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path());
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} as {ROOTLESS_USER}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{name} as {ROOTLESS_USER}:\n{text}");
    false
}

/// The namespace's process, killed when the test ends (pass or fail): it holds nothing
/// of the test's (stdio /dev/null), so a failure never hangs the parent.
struct Init(Child);

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `busybox httpd` on port 8080 in a new user and network namespace, serving `marker`.
fn container(dir: &Path, marker: &str) -> Init {
    let www = dir.join(format!("www-{marker}"));
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), marker).expect("index.html");
    let init = Command::new("unshare")
        .args([
            "-U", "-r", "-n", "--", "busybox", "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Init)
        .expect("unshare busybox httpd");
    // Attached before `unshare` made its namespaces, a helper would join ours (EPERM).
    let pid = init.0.id();
    let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
    let made = (0..500).any(|_| {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"));
        theirs.is_ok_and(|t| t != ours) || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    });
    assert!(made, "unshare made no network namespace in 5 s");
    init
}

/// `GET /` at `addr`, retried for up to 10 s (the server may not listen yet).
fn get(addr: SocketAddr) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut text = String::new();
            let _ = c.take(1 << 20).read_to_string(&mut text);
            if text.starts_with("HTTP/") {
                return Some(text);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The tool publishes 127.0.0.1:`port` to the namespace's 8080, on loopback only, and
/// exits with the namespace's process.
fn publishes_and_follows_the_container(tool: Tool, port: u16) {
    let (program, package) = tool.program();
    common::require_tool(program, package);
    common::require_tool("busybox", "busybox-static");
    let dir = std::path::PathBuf::from(std::env::var_os(CHILD_DIR).expect("child dir"));
    let marker = format!("hello-through-{program}");
    let mut init = container(&dir, &marker);
    let pid = init.0.id() as i32;
    let mapping = format!("{port}:8080").parse().expect("mapping");
    // A pipe the caller holds across the attach: whatever stays running (helper, watcher)
    // must not keep it open, or a caller reading its own child's output would hang.
    let (probe_r, probe_w) = nix::unistd::pipe().expect("pipe");
    let attached = usermode::attach(tool, pid, &[mapping])
        .unwrap_or_else(|e| panic!("{}", warren::error_line(&e)));
    drop(probe_w);
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&probe_r),
        nix::poll::PollFlags::POLLIN,
    )];
    let polled = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(2000u16));
    assert_eq!(
        polled,
        Ok(1),
        "the pipe's write end lives on in {program} or its watcher"
    );
    assert_eq!(attached.nameserver, tool.nameserver());
    assert!(alive(attached.pid), "{program} runs");

    let loopback: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let page = get(loopback).unwrap_or_else(|| panic!("nothing at {loopback}"));
    assert!(page.contains(&marker), "{page}");
    // Loopback only: not on the host's other addresses.
    let listeners = common::ok(Command::new("ss").args(["-Hltn"]));
    let ours: Vec<&str> = listeners
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .collect();
    assert!(
        !ours.is_empty()
            && ours
                .iter()
                .all(|l| l.contains(&format!("127.0.0.1:{port}"))),
        "{ours:?}"
    );

    // The container goes: so does its helper, and the port.
    init.0.kill().expect("kill the namespace's process");
    init.0.wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(attached.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(attached.pid), "{program} outlived the container");
    assert!(
        TcpStream::connect_timeout(&loopback, Duration::from_secs(2)).is_err(),
        "{loopback} still open"
    );
}

#[test]
fn pasta_publishes_a_port_on_loopback() {
    if in_child("pasta_publishes_a_port_on_loopback") {
        publishes_and_follows_the_container(Tool::Pasta, 18380);
    }
}

#[test]
fn slirp4netns_publishes_a_port_on_loopback() {
    if in_child("slirp4netns_publishes_a_port_on_loopback") {
        publishes_and_follows_the_container(Tool::Slirp4netns, 18381);
    }
}

/// A rootless container on `tool` (the `warren` CLI as the test user, publishing a
/// port: the helper attaches to a real container's namespaces) reads its
/// /etc/resolv.conf: the helper's DNS forwarder with the host's search and options lines,
/// read-only, from a directory its root (a subordinate uid) can reach; `--rm` removes
/// that directory. No query is sent.
fn a_rootless_container_has_a_resolv_conf(tool: Tool, port: u16) {
    if !common::require_root("runs warren as the rootless user and opens /dev/net/tun to it") {
        return;
    }
    let (program, package) = tool.program();
    common::require_tool(program, package);
    let (dir, uid) = user_scratch("network-rootless-resolv");
    let state = dir.path().join("state");
    let _tun = TunOpen::new();
    let name = format!("resolv-{program}-{}", std::process::id());
    let show = "cat /etc/resolv.conf; echo ---; \
                echo x >> /etc/resolv.conf 2>/dev/null && echo writable || echo read-only";
    let publish = format!("127.0.0.1:{port}:80");
    let mut cmd = as_rootless(&common::bin("warren"));
    cmd.env("WARREN_STATE_DIR", &state).args([
        "run", "--rm", "--image", "busybox", "--name", &name, "--net", program, "-p", &publish,
        "--", "sh", "-c", show,
    ]);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (resolv, rest) = text.split_once("---\n").expect("two parts");
    let host = warren::net::hosts::host_resolv_conf();
    let want = warren::net::hosts::resolv_conf_with(&[tool.nameserver()], &host);
    assert_eq!(resolv, want, "host's:\n{host}");
    let line = format!("nameserver {}\n", tool.nameserver());
    assert!(resolv.contains(&line), "{resolv}");
    assert_eq!(rest.trim(), "read-only", "{text}");
    let kept = warren::net::usermode::etc::dir_for(uid, &state, &name);
    assert!(!kept.exists(), "{} outlived the container", kept.display());
    // The helper dies with the container: at once the port is free for its next run.
    let again = run(as_rootless(&common::bin("warren"))
        .env("WARREN_STATE_DIR", &state)
        .args([
            "run", "--rm", "--image", "busybox", "--name", &name, "--net", program,
        ])
        .args(["-p", &publish, "--", "true"]));
    assert!(
        again.status.success(),
        "a second run on {publish}: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_rootless_pasta_container_has_a_resolv_conf() {
    a_rootless_container_has_a_resolv_conf(Tool::Pasta, 18382);
}

#[test]
fn a_rootless_slirp4netns_container_has_a_resolv_conf() {
    a_rootless_container_has_a_resolv_conf(Tool::Slirp4netns, 18383);
}

/// The pids of processes whose open pidfds refer to `pid` (its watcher).
fn pidfd_holders(pid: i32) -> Vec<i32> {
    let want = format!("Pid:\t{pid}\n");
    let procs = std::fs::read_dir("/proc").expect("/proc");
    let pids = procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|p| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fdinfo")) else {
            return false;
        };
        fds.filter_map(Result::ok)
            .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains(&want)))
    })
    .collect()
}

/// `rm` stops a rootless container's pasta itself, and returns only once it is gone:
/// with its watcher stopped (SIGSTOP), the helper is still gone the moment `rm -f`
/// returns, and its published port is free for the next run.
#[test]
fn rm_stops_the_network_helper_before_it_returns() {
    if !common::require_root("runs warren as the rootless user and stops its processes") {
        return;
    }
    common::require_tool("pasta", "passt");
    let (dir, uid) = user_scratch("network-rootless-rm");
    let state = dir.path().join("state");
    let _tun = TunOpen::new();
    let name = format!("rm-helper-{}", std::process::id());
    let publish = "127.0.0.1:18384:80";
    let warren = |args: &[&str]| {
        let mut cmd = as_rootless(&common::bin("warren"));
        cmd.env("WARREN_STATE_DIR", &state).args(args);
        cmd
    };
    common::ok(&mut warren(&[
        "run", "-d", "--image", "busybox", "--name", &name, "--net", "pasta", "-p", publish, "--",
        "sleep", "1000",
    ]));
    // Removed however the test ends.
    let _container = Removed(warren(&["rm", "-f", &name]));
    // pasta runs as passt.avx2 or the like: found by its arguments.
    let found = Command::new("pgrep")
        .args(["-u", &uid.to_string(), "-f", "18384-18384:80"])
        .output()
        .expect("pgrep");
    let pasta: Vec<i32> = String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pasta.len(), 1, "one pasta: {pasta:?}");
    let helper = pasta[0];
    let watchers = pidfd_holders(helper);
    assert!(!watchers.is_empty(), "pasta {helper} has a watcher");
    let signal = |sig| {
        for w in &watchers {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*w), sig);
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let removed = run(&mut warren(&["rm", "-f", &name]));
    let gone = !alive(helper);
    signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        removed.status.success(),
        "rm: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(gone, "pasta {helper} outlived rm -f");
    std::net::TcpListener::bind("127.0.0.1:18384").expect("the published port is free");
}

/// Runs its command when dropped.
struct Removed(Command);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = self.0.output();
    }
}
