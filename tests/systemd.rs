//! The systemd units for real: systemd boots as pid 1 of a `systemd-nspawn` machine (a
//! debootstrapped Debian, cached under /var/tmp/warren-tests/systemd-tree), with this
//! build's `warren` and `shift-mount`, the host's static busybox (the default image) and
//! the repository's units bound in. Each check asks systemd itself: `systemctl show`.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cached tree; bump the version when the debootstrap command changes.
const TREE: &str = "/var/tmp/warren-tests/systemd-tree/bookworm-v1";
/// Upper bound of any one step inside the machine (boot, a unit's start or stop).
const STEP: Duration = Duration::from_secs(60);

/// The debootstrapped tree, built once (under a lock, into a temporary sibling renamed
/// into place, so an interrupted build is never taken for a complete one).
fn tree() -> PathBuf {
    let tree = PathBuf::from(TREE);
    if tree.join("usr/lib/systemd/systemd").is_file() {
        return tree;
    }
    require_tool("debootstrap", "debootstrap");
    let parent = tree.parent().expect("the tree has a parent");
    std::fs::create_dir_all(parent).expect("create the tree's parent");
    let lock = std::fs::File::create(parent.join("lock")).expect("create the tree lock");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the tree");
    if tree.join("usr/lib/systemd/systemd").is_file() {
        return tree;
    }
    let partial = tree.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    ok(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&partial));
    std::fs::rename(&partial, &tree).expect("move the finished tree into place");
    tree
}

/// A booted machine; powered off (or killed) when dropped.
struct Machine {
    nspawn: Child,
    /// systemd's pid on the host.
    pid: u32,
    _state: tempfile::TempDir,
}

impl Machine {
    /// Boots the tree on a throw-away overlay (`--volatile=overlay`: the cached tree is
    /// never written), with `/var/lib/warren` on a scratch directory of a real disk.
    fn boot(name: &str) -> Machine {
        assert_root("booting a systemd-nspawn machine");
        require_tool("systemd-nspawn", "systemd-container");
        require_tool("nsenter", "util-linux");
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "the default image needs the host's busybox: apt-get install -y busybox-static"
        );
        let tree = tree();
        let state = scratch("systemd-state");
        let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
        let bind_ro = |src: &Path, dst: &str| format!("--bind-ro={}:{dst}", src.display());
        let mut nspawn = Command::new("systemd-nspawn")
            .args([
                "-q",
                "-b",
                "--volatile=overlay",
                "--register=no",
                "--keep-unit",
            ])
            .args(["--console=passive", "-D"])
            .arg(&tree)
            .arg(format!("--machine=warren-{name}-{}", std::process::id()))
            .arg(bind_ro(&bin("warren"), "/usr/local/bin/warren"))
            .arg(bind_ro(busybox, "/usr/bin/busybox"))
            .arg(bind_ro(&bin("shift-mount"), "/usr/local/bin/shift-mount"))
            .arg(bind_ro(
                &units.join("container@.service"),
                "/etc/systemd/system/container@.service",
            ))
            .arg(bind_ro(
                &units.join("shift-mount@.service"),
                "/etc/systemd/system/shift-mount@.service",
            ))
            .arg(format!("--bind={}:/var/lib/warren", state.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-nspawn");
        let pid = match wait_until(|| systemd_pid(nspawn.id())) {
            Some(pid) => pid,
            None => {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
                panic!("systemd-nspawn started no systemd within {STEP:?}");
            }
        };
        let m = Machine {
            nspawn,
            pid,
            _state: state,
        };
        // Until systemd has its bus up, systemctl cannot even ask: retry then.
        let mut last = String::new();
        let booted = wait_until(|| {
            let out = m.sh("systemctl is-system-running --wait");
            last = format!("{out:?}");
            let state = String::from_utf8_lossy(&out.stdout);
            matches!(state.trim(), "running" | "degraded").then_some(())
        });
        assert!(booted.is_some(), "the machine did not boot: {last}");
        m
    }

    /// Runs `script` with `sh -c` in the machine's namespaces, bounded by `STEP`.
    fn sh(&self, script: &str) -> Output {
        run(Command::new("timeout")
            .arg(STEP.as_secs().to_string())
            .args([
                "nsenter",
                "-t",
                &self.pid.to_string(),
                "-a",
                "sh",
                "-c",
                script,
            ]))
    }

    /// `script`'s stdout; panics unless it succeeds.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `text` to `path` in the machine (on its volatile overlay).
    fn write(&self, path: &str, text: &str) {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c"])
            .arg(format!("mkdir -p \"$(dirname {path})\" && cat > {path}"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start nsenter");
        let mut stdin = child.stdin.take().expect("nsenter's stdin");
        stdin.write_all(text.as_bytes()).expect("write to nsenter");
        drop(stdin);
        assert!(
            child.wait().expect("wait for nsenter").success(),
            "write {path}"
        );
    }

    /// One property of a unit, as `systemctl show -P` prints it.
    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} {unit}"))
            .trim()
            .to_string()
    }

    /// Waits (bounded) until `property` of `unit` satisfies `want`; returns its value.
    fn wait_show(&self, unit: &str, property: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = wait_until(|| {
            last = self.show(unit, property);
            want(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| {
            panic!(
                "{unit} {property} stayed {last:?} for {STEP:?}\n{}",
                self.journal(unit)
            )
        })
    }

    /// Waits (bounded) until the journal of `unit` holds `needle`.
    fn wait_journal(&self, unit: &str, needle: &str) {
        if wait_until(|| self.journal(unit).contains(needle).then_some(())).is_none() {
            panic!("no {needle:?} in {unit}'s journal:\n{}", self.journal(unit));
        }
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.sh(&format!("journalctl --no-pager -o cat -u {unit}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["10", "nsenter", "-t", &self.pid.to_string(), "-a"])
            .args(["systemctl", "poweroff"])
            .output();
        if wait_until(|| self.nspawn.try_wait().ok().flatten()).is_none() {
            // Killing its pid 1 ends the machine's whole pid namespace; nspawn follows.
            let pid1 = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGKILL);
            if wait_until(|| self.nspawn.try_wait().ok().flatten()).is_none() {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
            }
        }
    }
}

/// Polls `f` every 100 ms until it gives a value, for at most `STEP`.
fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the systemd that `nspawn` started (its child, named systemd).
fn systemd_pid(nspawn: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd")
        })
}

fn container_toml(command: &str, init: bool) -> String {
    format!("image = \"busybox\"\ncommand = {command}\ninit = {init}\n")
}

/// Start reaches active once the workload runs (Type=notify); with `init = true` a
/// workload that installs no SIGTERM handler stops at once, and without it the stop runs
/// into the timeout a drop-in set; the container is removed after either; `warren logs`
/// points to the journal.
#[test]
fn container_unit_starts_stops_and_takes_drop_ins() {
    if !require_root("boots systemd in a systemd-nspawn machine") {
        return;
    }
    let m = Machine::boot("stop");
    let sleeper = r#"["sh", "-c", "echo greeting=$GREETING; exec sleep 1000"]"#;
    m.write(
        "/etc/warren/containers/web.toml",
        &container_toml(sleeper, true),
    );
    m.write(
        "/etc/warren/containers/bare.toml",
        &container_toml(sleeper, false),
    );
    m.write(
        "/etc/systemd/system/container@bare.service.d/test.conf",
        "[Service]\nTimeoutStopSec=3\nEnvironment=WARREN_RUN_ARGS=\"-e GREETING=dropin\"\n",
    );
    m.ok("systemctl daemon-reload");

    // Start returns once READY=1 came: the unit is active and warren is its main process.
    m.ok("systemctl start container@web container@bare");
    for unit in ["container@web", "container@bare"] {
        assert_eq!(m.show(unit, "ActiveState"), "active", "{}", m.journal(unit));
        assert_eq!(m.show(unit, "SubState"), "running");
        let main = m.show(unit, "MainPID");
        assert_eq!(m.ok(&format!("cat /proc/{main}/comm")).trim(), "warren");
    }
    assert_eq!(m.show("container@bare", "TimeoutStopUSec"), "3s");
    let ps = m.ok("warren ps");
    assert!(ps.contains("web") && ps.contains("bare"), "{ps}");
    m.wait_journal("container@bare", "greeting=dropin\n");
    // The drop-in is for that instance only.
    m.wait_journal("container@web", "greeting=\n");
    let logs = m.sh("warren logs web");
    let err = String::from_utf8_lossy(&logs.stderr);
    assert!(
        !logs.status.success() && err.contains("journalctl -u container@web.service"),
        "{logs:?}"
    );

    // With init = true the SIGTERM reaches a workload that is not pid 1: a clean stop.
    m.ok("systemctl stop container@web");
    assert_eq!(m.show("container@web", "Result"), "success");
    // As pid 1 the workload ignores SIGTERM: the stop times out (the drop-in's 3 s).
    m.ok("systemctl stop container@bare");
    assert_eq!(m.show("container@bare", "Result"), "timeout");
    // ExecStopPost removed both, quietly.
    let ps = m.ok("warren ps -q");
    assert!(ps.trim().is_empty(), "left behind: {ps}");
    for unit in ["container@web", "container@bare"] {
        let journal = m.journal(unit);
        assert!(!journal.contains("no container named"), "{journal}");
    }
}

/// A crashing workload is restarted; warren's own failure (125: the image is missing)
/// and a command that is not there (127) fail once and are not restarted.
#[test]
fn container_unit_restarts_crashes_but_not_its_own_failures() {
    if !require_root("boots systemd in a systemd-nspawn machine") {
        return;
    }
    let m = Machine::boot("restart");
    m.write(
        "/etc/warren/containers/crash.toml",
        &container_toml(r#"["sh", "-c", "sleep 0.5; exit 3"]"#, false),
    );
    m.write(
        "/etc/warren/containers/missing.toml",
        "image = \"no-such-image\"\n",
    );
    m.write(
        "/etc/warren/containers/nocmd.toml",
        &container_toml(r#"["/no/such/program"]"#, false),
    );

    m.ok("systemctl start container@crash");
    m.wait_show("container@crash", "NRestarts", |n| {
        n.parse::<u32>().is_ok_and(|n| n >= 2)
    });
    m.wait_journal("container@crash", "code=exited, status=3");
    m.ok("systemctl stop container@crash");

    for (unit, code) in [("container@missing", "125"), ("container@nocmd", "127")] {
        // The failure may come before or after READY=1: `start` may or may not fail.
        let _ = m.sh(&format!("systemctl start {unit}"));
        let state = m.wait_show(unit, "ActiveState", |s| {
            matches!(s, "failed" | "activating" | "inactive")
        });
        let journal = m.journal(unit);
        assert_eq!(state, "failed", "{unit}: {journal}");
        assert_eq!(m.show(unit, "ExecMainStatus"), code, "{unit}: {journal}");
        assert_eq!(m.show(unit, "NRestarts"), "0", "{unit}: {journal}");
        assert!(!journal.contains("no container named"), "{journal}");
    }
    let journal = m.journal("container@missing");
    assert!(journal.contains("no-such-image"), "{journal}");
}

/// shift-mount@ as the README describes it: LOWER from `warren image extract`, a
/// MOUNTPOINT that does not exist yet (the unit creates it); stop unmounts.
#[test]
fn shift_mount_unit_creates_its_mountpoint_and_unmounts() {
    if !require_root("boots systemd in a systemd-nspawn machine") {
        return;
    }
    let m = Machine::boot("shift");
    // The first run imports the default image; then the shared tree, as the README says.
    m.ok("warren run --rm --image busybox -- true");
    m.ok("mkdir -p /var/lib/warren/trees && warren image extract busybox /var/lib/warren/trees/busybox");
    m.write(
        "/etc/warren/shift-mount/web.conf",
        "LOWER=/var/lib/warren/trees/busybox\n\
         INTERMEDIATE=/var/lib/warren/views/web\n\
         MOUNTPOINT=/srv/web/rootfs\n\
         SHIFT=0x30000\n\
         RANGE=0x10000\n",
    );
    assert!(!m.sh("test -e /srv/web").status.success());
    m.ok("systemctl start shift-mount@web");
    assert_eq!(m.show("shift-mount@web", "ActiveState"), "active");
    assert!(
        m.sh("mountpoint -q /srv/web/rootfs").status.success(),
        "{}",
        m.journal("shift-mount@web")
    );
    let owner = m.ok("stat -c %u /srv/web/rootfs/bin/busybox");
    assert_eq!(owner.trim(), 0x30000.to_string(), "shifted owner");
    m.ok("systemctl stop shift-mount@web");
    assert!(!m.sh("mountpoint -q /srv/web/rootfs").status.success());
    assert_eq!(m.show("shift-mount@web", "Result"), "success");
}
