//! A small reconciler over `warren::runtime::Runtime`: it reads a desired-state file,
//! starts the containers it names, restarts those that exit, removes those no longer
//! wanted, and reports what runs. No shelling out: every step is a library call.
//!
//! ```toml
//! [[service]]
//! name = "web"
//! image = "busybox"
//! replicas = 3
//! command = ["httpd", "-f", "-p", "8080"]
//! env = ["MODE=demo"]
//! ```
//!
//! `cargo run --example scheduler -- desired.toml [--iterations N] [--interval-ms MS]`
//! prints one JSON line per pass: `{"pass":1,"running":["web-0",...],"started":[...],
//! "restarted":[...],"removed":[...]}`. Without `--iterations` it runs until SIGINT.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;
use warren::runtime::{ContainerConfig, Handle, Runtime, RuntimeOptions};

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

#[derive(Default, serde::Serialize)]
struct Pass {
    pass: u64,
    running: Vec<String>,
    started: Vec<String>,
    restarted: Vec<String>,
    removed: Vec<String>,
    errors: Vec<String>,
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

struct Reconciler {
    runtime: Runtime,
    /// Containers this process started: it is their parent, so it can wait for them.
    handles: BTreeMap<String, Handle>,
}

impl Reconciler {
    fn start(&mut self, name: &str, service: &Service) -> Result<(), warren::runtime::Error> {
        let cfg = ContainerConfig {
            image: service.image.clone(),
            command: service.command.clone(),
            env: service.env.clone(),
            log: true,
            ..ContainerConfig::default()
        };
        let handle = self.runtime.run(name, cfg)?;
        self.handles.insert(name.to_string(), handle);
        Ok(())
    }

    fn pass(&mut self, desired: &Desired, n: u64) -> Pass {
        let mut report = Pass {
            pass: n,
            ..Pass::default()
        };
        let wanted = wanted(desired);
        // Exited containers: collect the status, remove, and start again if still wanted.
        let done: Vec<String> = self
            .handles
            .iter()
            .filter(|(_, h)| exited(h))
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            if let Some(h) = self.handles.remove(&name) {
                let _ = h.wait();
            }
            if let Err(e) = self.runtime.delete(&name, true) {
                report
                    .errors
                    .push(format!("{name}: {}", warren::error_line(&e)));
            }
            if let Some(service) = wanted.get(&name) {
                match self.start(&name, service) {
                    Ok(()) => report.restarted.push(name),
                    Err(e) => report
                        .errors
                        .push(format!("{name}: {}", warren::error_line(&e))),
                }
            }
        }
        // Containers that exist but are not wanted (or not ours to wait for).
        let existing: BTreeSet<String> = match self.runtime.list() {
            Ok(list) => list.into_iter().map(|c| c.name).collect(),
            Err(e) => {
                report.errors.push(warren::error_line(&e));
                return report;
            }
        };
        for name in &existing {
            let ours = self.handles.contains_key(name);
            if !wanted.contains_key(name) || !ours {
                if let Some(h) = self.handles.remove(name) {
                    let _ = h.kill(libc::SIGKILL);
                    let _ = h.wait();
                }
                match self.runtime.delete(name, true) {
                    Ok(()) if !wanted.contains_key(name) => report.removed.push(name.clone()),
                    Ok(()) => {}
                    Err(e) => report
                        .errors
                        .push(format!("{name}: {}", warren::error_line(&e))),
                }
            }
        }
        for (name, service) in &wanted {
            if !self.handles.contains_key(name) {
                match self.start(name, service) {
                    Ok(()) => report.started.push(name.clone()),
                    Err(e) => report
                        .errors
                        .push(format!("{name}: {}", warren::error_line(&e))),
                }
            }
        }
        report.running = self.handles.keys().cloned().collect();
        report
    }
}

fn main() -> anyhow::Result<()> {
    // First, before any thread: serves rootless work when this process is warren's
    // re-executed helper, and makes sure containers (clones of this process) find no
    // writable binary behind /proc/PID/exe (CVE-2019-5736).
    warren::main_hook()?;
    let mut args = std::env::args().skip(1);
    let mut file: Option<PathBuf> = None;
    let mut iterations: Option<u64> = None;
    let mut interval = Duration::from_millis(500);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => iterations = Some(args.next().unwrap_or_default().parse()?),
            "--interval-ms" => {
                interval = Duration::from_millis(args.next().unwrap_or_default().parse()?)
            }
            _ => file = Some(PathBuf::from(a)),
        }
    }
    let file = file.ok_or_else(|| {
        anyhow::anyhow!("usage: scheduler DESIRED.toml [--iterations N] [--interval-ms MS]")
    })?;
    let mut reconciler = Reconciler {
        runtime: Runtime::open(RuntimeOptions::detect())?,
        handles: BTreeMap::new(),
    };
    let mut n = 0;
    loop {
        n += 1;
        // Re-read every pass: editing the file changes what runs.
        let text = std::fs::read_to_string(&file)?;
        let desired: Desired =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let report = reconciler.pass(&desired, n);
        println!("{}", serde_json::to_string(&report)?);
        if iterations.is_some_and(|max| n >= max) {
            break;
        }
        std::thread::sleep(interval);
    }
    for (name, h) in std::mem::take(&mut reconciler.handles) {
        let _ = h.kill(libc::SIGKILL);
        let _ = h.wait();
        let _ = reconciler.runtime.delete(&name, true);
    }
    Ok(())
}
