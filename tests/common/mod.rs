//! Shared helpers for the integration tests. Tests run as root on a real kernel (CI is
//! root); a test that needs something the machine lacks panics with what to install.
//! A test that needs root says why with [`require_root`]; only a suite run unprivileged
//! on purpose (`WARREN_TEST_UNPRIVILEGED=1`) skips it, with a visible message.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The unprivileged user the rootless tests run as; `ensure_rootless_user` creates it.
pub const ROOTLESS_USER: &str = "warren-test";
/// Its subordinate id range, written to /etc/subuid and /etc/subgid.
pub const ROOTLESS_SUBIDS: (u32, u32) = (0x100000, 0x100000);

/// Set to 1 to run the suite unprivileged on purpose: tests that need root are skipped.
pub const UNPRIVILEGED_ENV: &str = "WARREN_TEST_UNPRIVILEGED";

/// Whether this test may go on: true as root. Not root, it panics (the suite is meant to
/// run as root: CI is root), unless `WARREN_TEST_UNPRIVILEGED=1` says the suite runs
/// unprivileged on purpose: then it prints `TEST: SKIPPED (needs root: why)` and returns
/// false, and the test returns at once. Use as `if !require_root("why") { return; }`.
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os(UNPRIVILEGED_ENV).is_some_and(|v| v == "1") {
        // Straight to fd 2: the test harness captures eprintln!, and a skip must show.
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("test").to_string();
        let _ = writeln!(std::io::stderr(), "{test}: SKIPPED (needs root: {why})");
        return false;
    }
    panic!(
        "this test needs root ({why}); CI runs as root: run `sudo make test`, or set \
         {UNPRIVILEGED_ENV}=1 to skip the tests that need root"
    );
}

/// Panics unless we run as root; for helpers, whose tests already passed [`require_root`].
pub fn assert_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (CI runs as root): run `sudo make test`"
    );
}

/// Panics with an install hint unless `tool` is on PATH.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{tool} is missing: apt-get install -y {package}"))
}

/// Environment variable naming a directory of binaries to test instead of the ones cargo
/// built for the tests: `make test` points it at the static release build, what ships.
pub const BIN_DIR_ENV: &str = "WARREN_TEST_BIN_DIR";

/// Path of one of this package's binaries: in `WARREN_TEST_BIN_DIR` when set (it must be
/// there), else the one cargo built for the integration tests.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(name);
        assert!(
            path.is_file(),
            "{BIN_DIR_ENV}={}: no {name} there (run `make release` first)",
            Path::new(&dir).display()
        );
        return std::fs::canonicalize(&path).unwrap_or(path);
    }
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_warren"));
    dir.with_file_name(name)
}

/// Runs a command and returns its output, panicking with stderr if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates (once) the unprivileged user `name` with a home directory and no subordinate
/// ids, and returns its (uid, gid). Needs root and useradd.
pub fn ensure_user(name: &str) -> (u32, u32) {
    assert_root("creating a test user");
    let lookup = || nix::unistd::User::from_name(name).ok().flatten();
    if lookup().is_none() {
        let out = run(Command::new("useradd").args([
            "--create-home",
            "--shell",
            "/bin/sh",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            name,
        ]));
        // Another test process may have created it concurrently.
        assert!(
            out.status.success() || lookup().is_some(),
            "useradd {name} failed: {out:?}"
        );
    }
    let user = lookup().unwrap_or_else(|| panic!("user {name} exists"));
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Creates (once) the unprivileged test user with a home directory and subordinate id
/// ranges, and returns its (uid, gid). Needs root, useradd and newuidmap (uidmap).
pub fn ensure_rootless_user() -> (u32, u32) {
    require_tool("newuidmap", "uidmap");
    let ids = ensure_user(ROOTLESS_USER);
    // Exactly our range: useradd may have given the user a default one.
    set_subid_lines(ROOTLESS_USER, &[ROOTLESS_SUBIDS]);
    ids
}

/// Gives `user` exactly the lines `ranges` (start, count) in /etc/subuid and /etc/subgid,
/// keeping every other line. Under the lock shadow's tools and warren take (an OFD write lock
/// on /etc/.pwd.lock) and replaced by rename, so concurrent tests, warren's registration of
/// its pool and useradd never lose each other's lines.
pub fn set_subid_lines(user: &str, ranges: &[(u32, u32)]) {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open("/etc/.pwd.lock")
        .expect("open /etc/.pwd.lock");
    // SAFETY: flock is plain data; all-zero is a valid value, filled in below.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    nix::fcntl::fcntl(&lock, nix::fcntl::FcntlArg::F_OFD_SETLKW(&l)).expect("lock /etc/.pwd.lock");
    let prefix = format!("{user}:");
    for file in ["/etc/subuid", "/etc/subgid"] {
        let current = std::fs::read_to_string(file).unwrap_or_default();
        let mut text: String = current
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        for (start, count) in ranges {
            text.push_str(&format!("{prefix}{start}:{count}\n"));
        }
        if text != current {
            let tmp = format!("{file}.{user}.tmp");
            std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {tmp}: {e}"));
            std::fs::rename(&tmp, file).unwrap_or_else(|e| panic!("cannot replace {file}: {e}"));
        }
    }
}

/// A command that runs `program` as the rootless test user, with a clean environment
/// pointing HOME and XDG dirs at the user's own.
pub fn as_rootless(program: &Path) -> Command {
    let (uid, gid) = ensure_rootless_user();
    let home = format!("/home/{ROOTLESS_USER}");
    let runtime = format!("/tmp/warren-test-run-{uid}");
    std::fs::create_dir_all(&runtime).expect("create runtime dir");
    nix::unistd::chown(runtime.as_str(), Some(uid.into()), Some(gid.into()))
        .expect("chown runtime dir");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--init-groups",
        "--",
    ])
    .arg(program)
    .env_clear()
    .env("USER", ROOTLESS_USER)
    .env("HOME", &home)
    .env("XDG_RUNTIME_DIR", &runtime)
    .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    cmd
}

/// A scratch directory under /var/tmp (a real disk filesystem, not tmpfs, so xattrs,
/// overlay upper dirs and immutable flags behave as in production).
pub fn scratch(name: &str) -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/warren-tests").expect("create /var/tmp/warren-tests");
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in("/var/tmp/warren-tests")
        .expect("create scratch dir")
}

/// The `<...>` flags of `lo` as `ip link show lo` prints them, e.g. "LOOPBACK,UP,LOWER_UP".
pub fn lo_flags(ip_output: &str) -> Vec<String> {
    ip_output
        .lines()
        .find(|l| l.contains(" lo: "))
        .and_then(|l| l.split_once('<'))
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(f, _)| f.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Threads that take the allocator's locks as often as they can, and a watchdog that
/// aborts the test process after 300 s instead of letting a deadlock hang the suite.
pub struct Stress {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stress {
    /// Starts `noise` allocating threads (blocks of up to `max_alloc` bytes) and the
    /// watchdog, which names `what` when it fires.
    pub fn start(noise: usize, max_alloc: usize, what: &'static str) -> Stress {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        let d = done.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..3000 {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            eprintln!("{what} hung for 300s");
            std::process::abort();
        }));
        for _ in 0..noise {
            let d = done.clone();
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !d.load(Ordering::Relaxed) {
                    let v: Vec<u8> = vec![n as u8; 1 + n % max_alloc];
                    n = n.wrapping_add(v.len());
                    drop(v);
                }
            }));
        }
        Stress { done, threads }
    }

    /// Stops the noise and the watchdog.
    pub fn stop(self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("stress thread");
        }
    }
}

/// Accepts one connection on `listener` and reads everything from the pty master it
/// carries (SCM_RIGHTS), until the workload closes its side.
pub fn read_console(listener: std::os::unix::net::UnixListener) -> String {
    let (conn, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("recvmsg");
    let fd = msg
        .cmsgs()
        .expect("cmsgs")
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(f) => f.first().copied(),
            _ => None,
        })
        .expect("an fd");
    // SAFETY: the fd just arrived over SCM_RIGHTS and is ours.
    let mut master = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut master, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The `warren` CLI with its state (store included) in `DIR/state` and its runc root in
/// `DIR/run`.
pub fn warren(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("warren"));
    cmd.env("WARREN_STATE_DIR", dir.join("state"))
        .arg("--root")
        .arg(dir.join("run"));
    cmd
}

/// Each distinct hierarchy under /sys/fs/cgroup (v1 controllers, named, the hybrid's v2).
pub fn hierarchies() -> Vec<PathBuf> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("list /sys/fs/cgroup")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for h in entries {
        let real = std::fs::canonicalize(&h).expect("canonicalize");
        if h.join("cgroup.procs").exists() && !seen.contains(&real) {
            seen.push(real);
            out.push(h);
        }
    }
    out
}

/// How many times each of newuidmap and newgidmap ran, from a [`logging_id_tools`] log
/// (both run at once, so their lines come in either order).
pub fn id_tool_calls(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).expect("read the id tools' log");
    let count = |tool: &str| text.lines().filter(|l| *l == tool).count();
    (count("newuidmap"), count("newgidmap"))
}

/// `newuidmap` and `newgidmap` in `dir` (to put first in a PATH) that log each call, by
/// name, a line each, then run the real ones; the log's path.
pub fn logging_id_tools(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("id-tools.log");
    std::fs::write(&log, "").expect("create the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod log");
    for tool in ["newuidmap", "newgidmap"] {
        let wrapper = dir.join(tool);
        let script = format!(
            "#!/bin/sh\necho {tool} >> {}\nexec /usr/bin/{tool} \"$@\"\n",
            log.display()
        );
        std::fs::write(&wrapper, script).expect("write a wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod a wrapper");
    }
    log
}
