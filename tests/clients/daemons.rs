//! The daemons the tests start (containerd, dockerd) and what their teardown needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to open its socket, and to exit once told to.
const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// A daemon we started, stopped by pid (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: std::process::Child,
    what: &'static str,
}

impl Daemon {
    pub fn start(what: &'static str, mut cmd: Command, socket: &Path, dir: &Path) -> Daemon {
        let log = std::fs::File::create(dir.join("log")).expect("daemon log");
        let log2 = log.try_clone().expect("daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut daemon = Daemon { child, what };
        let deadline = Instant::now() + DAEMON_WAIT;
        while !socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                panic!("{what} exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not open {} in {DAEMON_WAIT:?}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DAEMON_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM: killed", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILLs every process whose command line holds `needle` (our daemons' shims).
pub fn kill_naming(needle: &Path) {
    let needle = needle.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(&needle)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Detaches every mount beneath `dir` (what a killed client left), deepest first.
pub fn unmount_beneath(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}
