//! Rootless networking: pasta (package `passt`) or slirp4netns attached to a container's
//! network namespace, forwarding published host ports to it.
//!
//! The helper runs as the calling user in the host's network namespace and joins the
//! container's user and network namespaces for its tap device (so `/dev/net/tun` must be
//! usable by the user: mode 0666, as on a normal Debian host). It is attached while the
//! container's init waits to go ([`Usermode`]): the only time the user may open them. Published ports listen on
//! the host's loopback unless a mapping names a host address. DNS goes through the
//! helper's own forwarder: [`Tool::nameserver`] is the address [`etc`] writes into the
//! container's resolv.conf.
//!
//! Lifetime: both helpers keep the namespace alive themselves, so a watcher
//! ([`watch`]) stops the helper when the container's init exits. A container's delete
//! stops it too (its record names it) and waits, so its ports are free once that
//! returns. The container cannot reach the helper: it runs outside the container's pid namespace (no pid to signal or
//! trace), slirp4netns's API socket is removed once the ports are added, and the helper
//! binds host ports in the host's network namespace, where the container cannot bind.

pub mod etc;
mod watch;

use super::{PortMapping, Proto};
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which user-mode network stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Pasta,
    Slirp4netns,
}

impl Tool {
    /// The program and the Debian package that has it.
    pub fn program(self) -> (&'static str, &'static str) {
        match self {
            Tool::Pasta => ("pasta", "passt"),
            Tool::Slirp4netns => ("slirp4netns", "slirp4netns"),
        }
    }

    /// The address of the helper's DNS forwarder inside the container (to the host's
    /// resolvers): pasta's `--dns-forward` address (podman's choice), slirp4netns's
    /// built-in 10.0.2.3.
    pub fn nameserver(self) -> IpAddr {
        match self {
            Tool::Pasta => IpAddr::V4(PASTA_DNS),
            Tool::Slirp4netns => IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3)),
        }
    }
}

const PASTA_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// How long a helper gets to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UsermodeError {
    #[error("{0} is not installed (apt-get install {1})")]
    Missing(&'static str, &'static str),
    #[error("{tool}: {what}")]
    Io {
        tool: &'static str,
        what: String,
        source: std::io::Error,
    },
    #[error("{tool} failed: {reason}")]
    Failed { tool: &'static str, reason: String },
}

/// A user-mode network for a container being created: attached by the creating process
/// to the init's namespaces after its id maps are written and before it is told to go.
/// Only then may the user open them: from there until its exec the init is not dumpable
/// (and no longer has the user's ids), so `/proc/PID/ns/*` is root's alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usermode {
    pub tool: Tool,
    pub ports: Vec<PortMapping>,
}

/// The running helper of one container; dropping it does not stop it (it exits with the
/// container's network namespace).
#[derive(Debug)]
pub struct Attached {
    pub pid: i32,
    /// The nameserver for the container's resolv.conf ([`Tool::nameserver`]).
    pub nameserver: IpAddr,
}

/// An I/O error of `tool` while doing `what`.
fn io_err(tool: &'static str, what: &str) -> impl FnOnce(std::io::Error) -> UsermodeError {
    let what = what.to_string();
    move |source| UsermodeError::Io { tool, what, source }
}

/// Attaches `tool` to the network namespace of `pid` (a created container's init, in
/// its user namespace), publishing `ports` (host addresses default to loopback only).
pub fn attach(tool: Tool, pid: i32, ports: &[PortMapping]) -> Result<Attached, UsermodeError> {
    let (name, package) = tool.program();
    let program = find(name).ok_or(UsermodeError::Missing(name, package))?;
    let io = |what: &'static str| io_err(name, what);
    // Taken first: the watcher follows this process, never a later one with its pid.
    let init = crate::sys::pidfd_open(pid).map_err(io("open the container's init"))?;
    let dir = PrivateDir::new().map_err(io("create a private directory"))?;
    let helper = match tool {
        Tool::Pasta => pasta(&program, pid, ports, &dir.0, &init)?,
        Tool::Slirp4netns => slirp4netns(&program, pid, ports, &dir.0, &init)?,
    };
    Ok(Attached {
        pid: helper,
        nameserver: tool.nameserver(),
    })
}

/// `name` on the usual PATH (the caller's PATH may be a container's or empty).
fn find(name: &str) -> Option<PathBuf> {
    ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A 0700 directory of our own for pid files and sockets, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("warren-net-{}-{n}", std::process::id()));
        // create, not create_all: an existing one (someone else's) is an error.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// pasta's `-t`/`-u` spec of one mapping: `[ADDR/]HOST[-END]:CONTAINER[-END]`.
fn pasta_spec(p: &PortMapping) -> String {
    let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let last = |first: u16| first + (p.count - 1);
    format!(
        "{ip}/{}-{}:{}-{}",
        p.host_port,
        last(p.host_port),
        p.container_port,
        last(p.container_port)
    )
}

/// pasta's arguments: the container's namespaces configured, only the published ports
/// forwarded (pasta's default would forward every port the container binds, and the
/// host's loopback ports into it), the host not reachable as the gateway.
fn pasta_args(pid: i32, ports: &[PortMapping], pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--config-net",
        "--quiet",
        "--no-map-gw",
        "--dns-forward",
        &PASTA_DNS.to_string(),
        "-T",
        "none",
        "-U",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, proto) in [("-t", Proto::Tcp), ("-u", Proto::Udp)] {
        let specs: Vec<String> = ports
            .iter()
            .filter(|p| p.proto == proto)
            .map(pasta_spec)
            .collect();
        args.push(flag.into());
        args.push(if specs.is_empty() {
            "none".into()
        } else {
            specs.join(",")
        });
    }
    args.push("-P".into());
    args.push(pid_file.display().to_string());
    args.push(pid.to_string());
    args
}

/// pasta daemonizes once it is set up: its exit says whether it is, its pid file says who.
fn pasta(
    program: &Path,
    pid: i32,
    ports: &[PortMapping],
    dir: &Path,
    init: &OwnedFd,
) -> Result<i32, UsermodeError> {
    let io = |what: &'static str| io_err("pasta", what);
    let pid_file = dir.join("pasta.pid");
    let mut cmd = std::process::Command::new(program);
    cmd.args(pasta_args(pid, ports, &pid_file))
        .env_clear()
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only close_range, which is async-signal-safe.
    unsafe {
        // The daemon lives as long as the container: none of the caller's fds with it
        // (std marks its own close-on-exec; a caller's inheritable one would stay open).
        cmd.pre_exec(|| crate::sys::cloexec_range_from(3));
    }
    let out = cmd.output().map_err(io("start"))?;
    let daemon: Option<i32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let (true, Some(daemon)) = (out.status.success(), daemon) else {
        let text = String::from_utf8_lossy(&out.stderr);
        // Without a syslog socket it complains about each line: not the reason.
        let reason: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
            .collect();
        return Err(UsermodeError::Failed {
            tool: "pasta",
            reason: format!("{} ({})", reason.join("; "), out.status),
        });
    };
    let pidfd = crate::sys::pidfd_open(daemon).map_err(io("open the daemon"))?;
    watch::start(init, &watch::Helper::Running(pidfd)).map_err(io("start the watcher"))?;
    Ok(daemon)
}

/// slirp4netns runs in the foreground (as the watcher's child), says when it is ready on
/// fd 3, and takes the published ports over its API socket, removed afterwards.
fn slirp4netns(
    program: &Path,
    pid: i32,
    ports: &[PortMapping],
    dir: &Path,
    init: &OwnedFd,
) -> Result<i32, UsermodeError> {
    let io = |what: &'static str| io_err("slirp4netns", what);
    let api = dir.join("api.sock");
    let mut argv: Vec<&OsStr> = vec![program.as_os_str()];
    let api_arg = format!("--api-socket={}", api.display());
    let fixed = [
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-seccomp",
        "--ready-fd=3",
    ];
    argv.extend(fixed.iter().map(OsStr::new));
    // The sandbox runs slirp4netns in the container's user namespace, where the user has
    // no id (a container's block is its subordinate ids): it could create no file, the
    // API socket included. The published ports need that socket; without any, sandboxed.
    if ports.is_empty() {
        argv.push(OsStr::new("--enable-sandbox"));
    } else {
        argv.push(OsStr::new(&api_arg));
    }
    let pid_arg = pid.to_string();
    argv.extend([OsStr::new(&pid_arg), OsStr::new("tap0")]);
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| io("arguments")(e.into()))?;
    let log_path = dir.join("slirp4netns.log");
    let log = std::fs::File::options()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&log_path)
        .map_err(io("create the log"))?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
    let helper = watch::Helper::Start {
        argv,
        keep: ready_w,
        log: OwnedFd::from(log.try_clone().map_err(io("log"))?),
    };
    let child = watch::start(init, &helper).map_err(io("start"))?;
    drop(helper);
    let failed = |what: &str| {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        UsermodeError::Failed {
            tool: "slirp4netns",
            reason: format!("{what}: {}", text.trim()),
        }
    };
    if !ready(&ready_r) {
        return Err(failed("not ready"));
    }
    for p in ports {
        for (host, container) in p.pairs() {
            add_hostfwd(&api, p, host, container).map_err(|e| failed(&e))?;
        }
    }
    Ok(child)
}

/// Whether the helper wrote to its ready fd within [`READY_TIMEOUT`] (EOF: it died).
fn ready(fd: &OwnedFd) -> bool {
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = READY_TIMEOUT.as_millis() as u16;
    let timeout = nix::poll::PollTimeout::from(ms.max(1));
    if !matches!(nix::poll::poll(&mut pfd, timeout), Ok(n) if n > 0) {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(nix::unistd::read(fd, &mut b), Ok(1))
}

/// One `add_hostfwd` request over slirp4netns's API socket (a request per connection).
fn add_hostfwd(api: &Path, p: &PortMapping, host: u16, container: u16) -> Result<(), String> {
    let request = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": p.proto.to_string(),
            "host_addr": p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_string(),
            "host_port": host,
            "guest_port": container,
        }
    });
    let mut sock = std::os::unix::net::UnixStream::connect(api)
        .map_err(|e| format!("connect {}: {e}", api.display()))?;
    let _ = sock.set_read_timeout(Some(READY_TIMEOUT));
    sock.write_all(request.to_string().as_bytes())
        .and_then(|_| sock.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("add_hostfwd {host}: {e}"))?;
    let mut reply = String::new();
    let _ = (&mut sock).take(64 << 10).read_to_string(&mut reply);
    let answer: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    if answer.get("return").is_some() {
        Ok(())
    } else {
        Err(format!("add_hostfwd {host}->{container}: {}", reply.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasta_publishes_only_the_mappings_on_loopback_by_default() {
        let ports: Vec<PortMapping> = ["18080:8080", "0.0.0.0:9000-9001:7000-7001/udp"]
            .iter()
            .map(|p| p.parse().expect("port"))
            .collect();
        let args = pasta_args(42, &ports, Path::new("/x/pid")).join(" ");
        assert!(
            args.contains("-t 127.0.0.1/18080-18080:8080-8080"),
            "{args}"
        );
        assert!(args.contains("-u 0.0.0.0/9000-9001:7000-7001"), "{args}");
        assert!(args.contains("-T none -U none"), "{args}");
        assert!(args.ends_with("-P /x/pid 42"), "{args}");
        let none = pasta_args(42, &[], Path::new("/x/pid")).join(" ");
        assert!(
            none.contains("-t none") && none.contains("-u none"),
            "{none}"
        );
    }
}
