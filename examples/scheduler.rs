//! A small reconciler over `warren::runtime::Runtime`: it reads a desired-state file,
//! starts the containers it names, restarts those that exit (with exponential backoff),
//! removes those no longer wanted, and reports what runs. No shelling out: every step is
//! a library call.
//!
//! ```toml
//! [[service]]
//! name = "web"
//! image = "busybox"
//! replicas = 3
//! command = ["httpd", "-f", "-p", "8080"]
//! env = ["MODE=demo"]
//! network = "bridge:web"     # optional, as root: each replica gets an address on it
//! ports = ["18080:8080"]     # published by replica 0 (a host port has one owner)
//! ```
//!
//! On a bridge network every replica also answers to the service's name, an alias the
//! replicas share: the network's name server returns them all.
//!
//! What a scheduler author relies on:
//! - It manages only the containers it owns: those carrying its label
//!   (`warren.scheduler=OWNER`, `--owner`, default `example`). A container someone
//!   started by hand is never touched, whatever its name.
//! - Containers run under a monitor ([`Runtime::with_monitor`]): a restarted scheduler
//!   adopts the running ones ([`Runtime::attach`]) instead of killing and recreating
//!   them, and reads how the others ended, even those that exited while it was down.
//! - SIGINT/SIGTERM hand the containers over (they keep running for the next instance to
//!   adopt); with `--stop-on-exit` they are stopped (SIGTERM, then SIGKILL after
//!   `--grace-ms`) and removed. `--iterations N` ends after N passes and stops them.
//! - An exited container is restarted after a delay that doubles with each failure in a
//!   row (100 ms up to 30 s; reset once it ran for 10 s); each failure is reported with
//!   its exit status and the last lines of its log.
//!
//! `cargo run --example scheduler -- desired.toml [--iterations N] [--interval-ms MS]
//! [--owner NAME] [--root RUN_DIR] [--stop-on-exit] [--grace-ms MS]` prints one JSON line
//! per pass: `{"pass":1,"running":["web-0",...],"pids":{"web-0":PID,...},"adopted":[...],"started":[...],
//! "restarted":[...],"removed":[...],"failures":[...],"errors":[...]}`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use warren::runtime::{ContainerConfig, Handle, Network, Runtime, RuntimeOptions};

const LABEL: &str = "warren.scheduler";
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting starts its backoff afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
const LOG_LINES: usize = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Desired {
    #[serde(default)]
    service: Vec<Service>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    name: String,
    image: String,
    #[serde(default = "one")]
    replicas: u32,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    /// `bridge`, `bridge:NAME`, ... (default: none).
    #[serde(default, deserialize_with = "network")]
    network: Network,
    /// Published ports, `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]`.
    #[serde(default)]
    ports: Vec<warren::net::PortMapping>,
}

fn network<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn one() -> u32 {
    1
}

/// Names of the containers every service wants: NAME-0 .. NAME-(replicas-1).
fn wanted(desired: &Desired) -> BTreeMap<String, &Service> {
    let mut out = BTreeMap::new();
    for s in &desired.service {
        for i in 0..s.replicas {
            out.insert(format!("{}-{i}", s.name), s);
        }
    }
    out
}

#[derive(Default, Serialize)]
struct Pass {
    pass: u64,
    /// Since this scheduler started, at the end of the pass.
    elapsed_ms: u64,
    running: Vec<String>,
    /// The init pid of each running one.
    pids: BTreeMap<String, i32>,
    adopted: Vec<String>,
    started: Vec<String>,
    restarted: Vec<String>,
    removed: Vec<String>,
    failures: Vec<Failure>,
    errors: Vec<String>,
}

/// One exit of a container, as reported.
#[derive(Serialize)]
struct Failure {
    name: String,
    /// `exit code 3`, `killed by SIGKILL (OOM killed)`.
    status: String,
    code: i32,
    /// Its restart waits this long.
    delay_ms: u64,
    log: Vec<String>,
}

/// True when the container's pidfd says its workload has exited (a zero-timeout poll).
fn exited(handle: &Handle) -> bool {
    let Some(fd) = handle.pidfd() else {
        return true;
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

/// A container this scheduler owns.
struct Owned {
    handle: Handle,
    since: Instant,
}

/// Failures in a row and when the next start may happen.
#[derive(Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

struct Reconciler {
    runtime: Runtime,
    owner: String,
    owned: BTreeMap<String, Owned>,
    backoff: BTreeMap<String, Backoff>,
    born: Instant,
}

impl Reconciler {
    fn start(&mut self, name: &str, service: &Service) -> Result<(), warren::runtime::Error> {
        let first = name.ends_with("-0");
        let cfg = ContainerConfig {
            image: service.image.clone(),
            command: service.command.clone(),
            env: service.env.clone(),
            log: true,
            labels: [(LABEL.to_string(), self.owner.clone())].into(),
            network: service.network.clone(),
            ports: if first {
                service.ports.clone()
            } else {
                Vec::new()
            },
            aliases: vec![service.name.clone()],
            ..ContainerConfig::default()
        };
        let handle = self.runtime.run(name, cfg)?;
        let since = Instant::now();
        self.owned.insert(name.to_string(), Owned { handle, since });
        Ok(())
    }

    /// Containers carrying our label, whatever their state; the running ones unknown to
    /// us (a previous instance started them) are adopted.
    fn adopt(&mut self, report: &mut Pass) -> BTreeSet<String> {
        let list = match self.runtime.list() {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(warren::error_line(&e));
                return BTreeSet::new();
            }
        };
        let mut ours = BTreeSet::new();
        for c in list {
            if c.labels.get(LABEL) != Some(&self.owner) {
                continue;
            }
            ours.insert(c.name.clone());
            if self.owned.contains_key(&c.name) {
                continue;
            }
            match self.runtime.attach(&c.name) {
                Ok(handle) => {
                    if c.status == "running" {
                        report.adopted.push(c.name.clone());
                    }
                    let since = Instant::now();
                    self.owned.insert(c.name, Owned { handle, since });
                }
                Err(e) => report
                    .errors
                    .push(format!("{}: {}", c.name, warren::error_line(&e))),
            }
        }
        ours
    }

    /// An exited container: its facts, its log's tail, its next delay; then removed.
    fn collect(&mut self, name: &str, report: &mut Pass) {
        let Some(owned) = self.owned.remove(name) else {
            return;
        };
        let exit = owned.handle.wait_exit();
        let log = log_tail(&self.runtime.log_path(name));
        drop(owned.handle);
        if let Err(e) = self.runtime.delete(name, true) {
            report
                .errors
                .push(format!("{name}: {}", warren::error_line(&e)));
        }
        let b = self.backoff.entry(name.to_string()).or_default();
        if owned.since.elapsed() >= HEALTHY_AFTER {
            b.failures = 0;
        }
        b.failures += 1;
        let delay = BACKOFF_FIRST
            .saturating_mul(1 << (b.failures - 1).min(16))
            .min(BACKOFF_MAX);
        b.not_before = Some(Instant::now() + delay);
        let (status, code) = match exit {
            Ok(e) => (e.to_string(), e.status_code()),
            Err(e) => (warren::error_line(&e), -1),
        };
        report.failures.push(Failure {
            name: name.to_string(),
            status,
            code,
            delay_ms: delay.as_millis() as u64,
            log,
        });
    }

    fn pass(&mut self, desired: &Desired, n: u64) -> Pass {
        let mut report = Pass {
            pass: n,
            ..Pass::default()
        };
        let wanted = wanted(desired);
        let ours = self.adopt(&mut report);
        let done: Vec<String> = (self.owned.iter())
            .filter(|(_, o)| exited(&o.handle))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &done {
            self.collect(name, &mut report);
        }
        // Ours but no longer wanted.
        for name in ours.iter().filter(|n| !wanted.contains_key(*n)) {
            self.owned.remove(name);
            match self.runtime.delete(name, true) {
                Ok(()) => report.removed.push(name.clone()),
                Err(e) => report
                    .errors
                    .push(format!("{name}: {}", warren::error_line(&e))),
            }
        }
        for (name, service) in &wanted {
            if self.owned.contains_key(name) {
                continue;
            }
            // A name someone else's container holds is not ours to take.
            if !ours.contains(name) && self.runtime.record(name).is_ok() {
                report
                    .errors
                    .push(format!("{name}: a container not ours has this name"));
                continue;
            }
            let b = self.backoff.entry(name.clone()).or_default();
            if b.not_before.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let again = b.failures > 0;
            match self.start(name, service) {
                Ok(()) if again => report.restarted.push(name.clone()),
                Ok(()) => report.started.push(name.clone()),
                Err(e) => report
                    .errors
                    .push(format!("{name}: {}", warren::error_line(&e))),
            }
        }
        report.pids = (self.owned.iter())
            .map(|(n, o)| (n.clone(), o.handle.pid()))
            .collect();
        report.running = report.pids.keys().cloned().collect();
        report.elapsed_ms = self.born.elapsed().as_millis() as u64;
        report
    }

    /// Stops every owned container: SIGTERM, SIGKILL after `grace`, then removes it.
    fn stop_all(&mut self, grace: Duration) {
        for o in self.owned.values() {
            let _ = o.handle.kill(libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.owned.values().all(|o| exited(&o.handle)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (name, o) in std::mem::take(&mut self.owned) {
            if !exited(&o.handle) {
                let _ = o.handle.kill(libc::SIGKILL);
            }
            let _ = o.handle.wait_exit();
            drop(o);
            if let Err(e) = self.runtime.delete(&name, true) {
                eprintln!("scheduler: remove {name}: {}", warren::error_line(&e));
            }
        }
    }
}

/// The last lines of a container's log.
fn log_tail(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_LINES);
    lines[from..].iter().map(|l| l.to_string()).collect()
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`]; the loop ends at its next check.
fn catch_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { sigaction(s, &action) }?;
    }
    Ok(())
}

struct Args {
    file: PathBuf,
    iterations: Option<u64>,
    interval: Duration,
    owner: String,
    root: Option<PathBuf>,
    stop_on_exit: bool,
    grace: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut file: Option<PathBuf> = None;
    let mut out = Args {
        file: PathBuf::new(),
        iterations: None,
        interval: Duration::from_millis(500),
        owner: "example".into(),
        root: None,
        stop_on_exit: false,
        grace: Duration::from_secs(2),
    };
    let ms = |v: Option<String>| -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(v.unwrap_or_default().parse()?))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => out.iterations = Some(args.next().unwrap_or_default().parse()?),
            "--interval-ms" => out.interval = ms(args.next())?,
            "--grace-ms" => out.grace = ms(args.next())?,
            "--owner" => out.owner = args.next().unwrap_or_default(),
            "--root" => out.root = args.next().map(PathBuf::from),
            "--stop-on-exit" => out.stop_on_exit = true,
            _ => file = Some(PathBuf::from(a)),
        }
    }
    out.file = file.ok_or_else(|| {
        anyhow::anyhow!(
            "usage: scheduler DESIRED.toml [--iterations N] [--interval-ms MS] [--owner NAME] [--root RUN_DIR] [--stop-on-exit] [--grace-ms MS]"
        )
    })?;
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    // First, before any thread: serves rootless work and the container monitor when this
    // process is warren's re-executed helper, and makes sure containers (clones of this
    // process) find no writable binary behind /proc/PID/exe (CVE-2019-5736).
    warren::main_hook()?;
    let born = Instant::now();
    let args = parse_args()?;
    catch_signals()?;
    let mut opts = RuntimeOptions::detect();
    if let Some(root) = &args.root {
        opts.run_dir = root.clone();
    }
    let mut reconciler = Reconciler {
        runtime: Runtime::open(opts)?.with_monitor(true),
        owner: args.owner.clone(),
        owned: BTreeMap::new(),
        backoff: BTreeMap::new(),
        born,
    };
    let mut n = 0;
    while !STOP.load(Ordering::SeqCst) {
        n += 1;
        // Re-read every pass: editing the file changes what runs.
        let text = std::fs::read_to_string(&args.file)?;
        let desired: Desired =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        let report = reconciler.pass(&desired, n);
        println!("{}", serde_json::to_string(&report)?);
        if args.iterations.is_some_and(|max| n >= max) {
            reconciler.stop_all(args.grace);
            return Ok(());
        }
        let wake = Instant::now() + args.interval;
        while Instant::now() < wake && !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10).min(args.interval));
        }
    }
    if args.stop_on_exit {
        reconciler.stop_all(args.grace);
    } else {
        // Handed over: the monitors keep the containers and record how they end.
        eprintln!(
            "scheduler: stopping; {} containers left running for the next instance",
            reconciler.owned.len()
        );
    }
    Ok(())
}
