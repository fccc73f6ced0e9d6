//! The name server of a network: a small responder on the bridge's address (port 53, UDP
//! and TCP, in the host's network namespace) that answers its containers' names and
//! aliases from the network's endpoint files and forwards every other question to the
//! host's resolvers (podman's aardvark-dns).
//!
//! Names match without regard to case, with or without a trailing dot, and in the
//! network's own domain `NAME.<network>.warren` (where an unknown name is NXDOMAIN, not
//! forwarded). A name several endpoints share (an alias of a replica set) answers with all
//! their addresses.
//!
//! The responder is the running binary re-executed with [`MARKER`] (served by
//! [`crate::main_hook`]), in a session of its own, holding an exclusive `flock` on its pid
//! file `<run_dir>/dns/<network>.pid` as long as it lives: the lock, not the pid, says
//! whether it runs, so [`ensure`] is one `open` + `flock` when it does and a crashed one
//! leaves nothing stale. It rereads the endpoint files when their directory changes and
//! exits when the network's definition (`<networks>/<network>.json`, next to the
//! `<networks>/<network>/endpoints` directory) is gone.

mod server;
mod wire;

use super::NetworkDef;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The responder's first argument; its second is its [`Config`] as JSON.
pub const MARKER: &str = "--warren-dns-v1";

/// The resolvers unknown names go to.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the name server of network {net}: {what}")]
    Io {
        net: String,
        what: String,
        source: std::io::Error,
    },
    #[error("the name server of network {net} did not start: {reason}")]
    Start { net: String, reason: String },
    #[error(
        "the name server of network {net}: endpoints directory {} is not <networks>/{net}/endpoints",
        .dir.display()
    )]
    Layout { net: String, dir: PathBuf },
    #[error("the name server of network {net} (pid {pid}) did not stop")]
    Stop { net: String, pid: i32 },
}

/// What the responder process is told.
#[derive(Serialize, Deserialize)]
struct Config {
    network: String,
    listen: IpAddr,
    endpoints: PathBuf,
    definition: PathBuf,
    resolv_conf: PathBuf,
    pid_file: PathBuf,
}

/// Starts the network's responder unless one runs: `exe` re-executed (see
/// [`crate::main_hook`]), answering from the `*.json` [`super::Endpoint`] files in
/// `endpoints`; `run_dir` holds its pid file.
pub fn ensure(
    net: &NetworkDef,
    endpoints: &Path,
    exe: &Path,
    run_dir: &Path,
) -> Result<(), DnsError> {
    ensure_with(net, endpoints, exe, run_dir, Path::new(RESOLV_CONF))
}

/// [`ensure`], forwarding to the resolvers of `resolv_conf` (read at each forward).
pub fn ensure_with(
    net: &NetworkDef,
    endpoints: &Path,
    exe: &Path,
    run_dir: &Path,
    resolv_conf: &Path,
) -> Result<(), DnsError> {
    let io = io_err(&net.name);
    let dir = run_dir.join("dns");
    std::fs::create_dir_all(&dir).map_err(io("create the run directory"))?;
    let pid_file = dir.join(format!("{}.pid", net.name));
    let config = Config {
        network: net.name.clone(),
        listen: IpAddr::V4(net.gateway),
        endpoints: std::path::absolute(endpoints).map_err(io("resolve the endpoints"))?,
        definition: definition(net, endpoints)?,
        resolv_conf: resolv_conf.to_path_buf(),
        pid_file: std::path::absolute(&pid_file).map_err(io("resolve the pid file"))?,
    };
    let json = serde_json::to_string(&config).map_err(|e| io("encode")(e.into()))?;
    let current = |pid: Option<i32>| pid.is_some_and(|p| serves(p, &json));
    if current(running(&pid_file).map_err(io("probe the pid file"))?) {
        return Ok(());
    }
    // One starter at a time; the one that waited finds the other's responder running.
    let lock = File::create(dir.join(format!("{}.lock", net.name))).map_err(io("lock"))?;
    let _lock =
        Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io("lock")(e.into()))?;
    let pid = running(&pid_file).map_err(io("probe the pid file"))?;
    if current(pid) {
        return Ok(());
    }
    if pid.is_some() {
        // A responder of an earlier definition of this name (another gateway).
        kill(&net.name, &pid_file)?;
    }
    start(&config, &json, exe, &dir.join(format!("{}.log", net.name)))
}

/// The network's definition file: `<networks>/NAME.json` for endpoints in
/// `<networks>/NAME/endpoints`.
fn definition(net: &NetworkDef, endpoints: &Path) -> Result<PathBuf, DnsError> {
    let layout = || DnsError::Layout {
        net: net.name.clone(),
        dir: endpoints.to_path_buf(),
    };
    let abs = std::path::absolute(endpoints).map_err(|_| layout())?;
    let named = abs.parent().ok_or_else(layout)?;
    if named.file_name() != Some(net.name.as_ref()) {
        return Err(layout());
    }
    let networks = named.parent().ok_or_else(layout)?;
    Ok(networks.join(format!("{}.json", net.name)))
}

/// Whether `pid` is a responder started with the config `json`.
fn serves(pid: i32, json: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let mut args = c.split(|b| *b == 0).skip(1);
        args.next() == Some(MARKER.as_bytes()) && args.next() == Some(json.as_bytes())
    })
}

fn io_err(net: &str) -> impl Fn(&str) -> Box<dyn FnOnce(std::io::Error) -> DnsError> + '_ {
    move |what: &str| {
        let (net, what) = (net.to_string(), what.to_string());
        Box::new(move |source| DnsError::Io { net, what, source })
    }
}

/// Starts the responder and waits for its word: `ready`, or why not.
fn start(config: &Config, json: &str, exe: &Path, log: &Path) -> Result<(), DnsError> {
    let io = io_err(&config.network);
    let log = File::create(log).map_err(io("create the log"))?;
    // std spawns with posix_spawn or fork+exec that runs no Rust code in between: safe
    // in a multithreaded process.
    let mut child = Command::new(exe)
        .args([MARKER, json])
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io("start"))?;
    // It forks and exits at once; the fork answers on the pipe and closes it.
    let mut word = String::new();
    let read = child
        .stdout
        .take()
        .map(|out| out.take(4096).read_to_string(&mut word));
    let status = child.wait().map_err(io("wait"))?;
    if word.trim() == "ready" {
        return Ok(());
    }
    let reason = match (read, word.trim()) {
        (_, w) if !w.is_empty() => w.to_string(),
        _ => format!(
            "{} exited ({status}) without a word: is it a warren binary whose main calls warren::main_hook()?",
            exe.display()
        ),
    };
    Err(DnsError::Start {
        net: config.network.clone(),
        reason,
    })
}

/// The pid of the responder that holds `pid_file`'s lock, if one does.
fn running(pid_file: &Path) -> std::io::Result<Option<i32>> {
    let file = match File::open(pid_file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => Ok(None),
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            // Held but not written yet: a responder starting.
            Ok(Some(text.trim().parse().unwrap_or(0)))
        }
        Err((_, e)) => Err(e.into()),
    }
}

/// Stops the network's responder (when the network is removed).
pub fn stop(net: &NetworkDef, run_dir: &Path) -> Result<(), DnsError> {
    let dir = run_dir.join("dns");
    kill(&net.name, &dir.join(format!("{}.pid", net.name)))?;
    for f in ["pid", "lock", "log"] {
        let _ = std::fs::remove_file(dir.join(format!("{}.{f}", net.name)));
    }
    Ok(())
}

/// Stops the responder holding `pid_file` (TERM, then KILL after 5 s) and waits for it.
fn kill(net: &str, pid_file: &Path) -> Result<(), DnsError> {
    let io = io_err(net);
    let mut deadline = Instant::now() + Duration::from_secs(5);
    let mut signal = nix::sys::signal::Signal::SIGTERM;
    while let Some(pid) = running(pid_file).map_err(io("probe the pid file"))? {
        // The lock says it lives; the marker says the pid is still it.
        if pid > 0 && is_responder(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        if Instant::now() >= deadline {
            // A killed process with threads takes a moment to exit and drop its lock.
            deadline = Instant::now() + Duration::from_secs(5);
            if signal == nix::sys::signal::Signal::SIGKILL {
                return Err(DnsError::Stop {
                    net: net.to_string(),
                    pid,
                });
            }
            signal = nix::sys::signal::Signal::SIGKILL;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether `pid`'s arguments are a responder's.
fn is_responder(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(MARKER.as_bytes()))
}

/// Serves the responder when this process was started as one (then exits), else returns
/// at once. Call it first thing in `main` ([`crate::main_hook`] does).
pub fn dispatch() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == MARKER) {
        let config = args
            .next()
            .and_then(|c| serde_json::from_str(c.to_str()?).ok());
        let code = match (config, args.next()) {
            (Some(c), None) => daemon(c),
            _ => 2,
        };
        std::process::exit(code);
    }
}

/// The responder process: fork away from the starter, lock, bind, answer.
fn daemon(config: Config) -> i32 {
    // Whatever the starter let through (fds without close-on-exec) is not ours to keep.
    let _ = crate::sys::close_fds(3, i32::MAX);
    // SAFETY: this process is single-threaded (a fresh exec), so fork is safe.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => return 1,
    }
    // Out of the starter's session: its terminal's signals are not ours. Nor is its
    // signal mask (`warren run` blocks SIGTERM to forward it): `stop` must reach us.
    let _ = nix::unistd::setsid();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let mut out = std::io::stdout();
    let (_lock, udp, tcp) = match bind(&config) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "{e}");
            return 1;
        }
    };
    // Bound: no capability is needed any more (reading the endpoint files is the
    // owner's right), and none may come back.
    if crate::sys::capset(0, 0, 0).is_err() || rustix::thread::set_no_new_privs(true).is_err() {
        let _ = writeln!(out, "cannot drop capabilities");
        return 1;
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    // The starter reads to the end of the pipe: close it (stdout is /dev/null from now).
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let r = Arc::new(server::Responder::new(
        &config.network,
        &config.endpoints,
        &config.resolv_conf,
        config.listen,
    ));
    server::serve_tcp(Arc::clone(&r), tcp);
    let (definition, listen) = (config.definition.clone(), config.listen);
    server::serve_udp(&r, udp, move || !still_ours(&definition, listen));
    eprintln!(
        "dns: {} is gone or names another gateway: exiting",
        config.definition.display()
    );
    0
}

/// Whether the network's definition still exists with the gateway `listen` (one that
/// cannot be read for a moment does not stop the responder).
fn still_ours(definition: &Path, listen: IpAddr) -> bool {
    match std::fs::read(definition) {
        Ok(text) => serde_json::from_slice::<NetworkDef>(&text)
            .map_or(true, |def| IpAddr::V4(def.gateway) == listen),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The pid file locked and written, the sockets bound (to the gateway only).
fn bind(config: &Config) -> Result<(Flock<File>, UdpSocket, TcpListener), String> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&config.pid_file)
        .map_err(|e| format!("pid file {}: {e}", config.pid_file.display()))?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        format!(
            "pid file {}: already locked: {e}",
            config.pid_file.display()
        )
    })?;
    let addr = SocketAddr::new(config.listen, 53);
    let udp = UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))?;
    let tcp = TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"))?;
    // Written in place: a rename would leave the lock on the old file.
    let pid = std::process::id();
    lock.set_len(0)
        .and_then(|_| lock.write_all(format!("{pid}\n").as_bytes()))
        .map_err(|e| format!("pid file {}: {e}", config.pid_file.display()))?;
    Ok((lock, udp, tcp))
}
