//! The OCI runtime command line (`create`, `start`, `state`, `kill`, `delete`, `run`,
//! `list`, `exec`, `features`), flattened into `warren`. Flags runc/crun clients pass are
//! accepted. Output and argument parsing only: the work is `warren::container`.

use crate::Global;
use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use oci_spec::runtime::Spec;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use warren::container::{self, Container, CreateOptions, ExecOptions};

// Options shared by `create` and `run`, which each name the container's ID (`run --image`
// may leave it out). Not a doc comment: with deferred subcommands (below) a flattened
// struct's doc comment would replace the subcommand's help text.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's init pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Keep fds 3..3+N open in the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for compatibility (warren always pivots).
    #[arg(long, hide = true)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    pub notify_socket: Option<PathBuf>,
    /// Run a minimal init as pid 1 that reaps zombies and forwards signals.
    #[arg(long)]
    pub init: bool,
}

/// Each subcommand's arguments are built only when it is the one invoked: an OCI engine
/// starts warren once per container operation, and building every subcommand's
/// arguments was half of the instructions of a `warren run`'s own process.
#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Create a container from a bundle (it waits for `start`).
    Create {
        #[command(flatten)]
        create: CreateArgs,
        /// The container's ID.
        #[arg(index = 1)]
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print the state of a container (OCI state JSON).
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init.
    Kill {
        /// Accepted for compatibility (the init is killed; its pid namespace follows).
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container (its state, cgroup and mounts).
    Delete {
        /// Kill a running container first.
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it (unless --detach); with
    /// --image, a container from an image in the store instead of an OCI bundle.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// The container's ID (with --image, --name or a generated name instead).
        #[arg(index = 1)]
        id: Option<String>,
        #[command(flatten)]
        image: Box<crate::product::RunImageArgs>,
        /// Do not wait: leave the container running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give the workload a pty connected to this terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
        /// Accepted for compatibility (warren waits on a pidfd, no subreaper needed).
        #[arg(long, hide = true)]
        no_subreaper: bool,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// Only IDs.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Run a process in a running container's namespaces.
    Exec {
        /// Give the process a pty connected to this terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Do not wait for the process.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment (KEY=VALUE).
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// uid[:gid].
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// A process.json (OCI process) instead of CMD.
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        /// The command and its arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// What this runtime supports (OCI features JSON).
    Features,
}

fn root(global: &Global) -> PathBuf {
    global.root.clone().unwrap_or_else(warren::dirs::run_dir)
}

/// Logs warnings (user namespace fallbacks...) to stderr, or to --log.
fn init_logging(global: &Global) {
    let level = if global.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .without_time();
    let file = global.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

impl Command {
    /// Whether the subcommand clones container processes from this process: they must
    /// not see a writable runtime binary (`warren::container::exe`).
    pub fn starts_processes(&self) -> bool {
        matches!(
            self,
            Command::Create { .. } | Command::Run { .. } | Command::Exec { .. }
        )
    }
}

pub fn run(global: &Global, command: Command) -> Result<i32> {
    init_logging(global);
    let result = dispatch(global, command);
    if let (Err(e), Some(log)) = (&result, &global.log) {
        // OCI clients (containerd, podman) read the error from the log file.
        let msg = warren::error_line(e.as_ref());
        let line = if global.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg, "time": container::state::now_rfc3339()})
                .to_string()
        } else {
            format!("level=error msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    result
}

fn load(bundle: &Path) -> Result<Spec> {
    Ok(container::spec::load_bundle(bundle)?)
}

fn options(c: &CreateArgs) -> CreateOptions {
    CreateOptions {
        bundle: Some(c.bundle.clone()),
        console_socket: c.console_socket.clone(),
        pid_file: c.pid_file.clone(),
        preserve_fds: c.preserve_fds.max(listen_fds()),
        init: c.init,
        ..Default::default()
    }
}

/// Socket activation: fds systemd passed to us (LISTEN_FDS) go on to the workload.
fn listen_fds() -> u32 {
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Tells the workload about passed sockets the way systemd does (it is pid 1 inside).
fn add_listen_env(spec: &mut Spec) {
    let n = listen_fds();
    if n == 0 {
        return;
    }
    if let Some(p) = spec.process_mut() {
        let mut env = p.env().clone().unwrap_or_default();
        env.retain(|e| !e.starts_with("LISTEN_FDS=") && !e.starts_with("LISTEN_PID="));
        env.push(format!("LISTEN_FDS={n}"));
        env.push("LISTEN_PID=1".to_owned());
        p.set_env(Some(env));
    }
}

fn dispatch(global: &Global, command: Command) -> Result<i32> {
    let root = root(global);
    match command {
        Command::Create { create: c, id } => {
            let mut spec = load(&c.bundle)?;
            add_listen_env(&mut spec);
            Container::create(&root, &id, &spec, options(&c))?;
            Ok(0)
        }
        Command::Start { id } => {
            Container::load(&root, &id)?.start()?;
            Ok(0)
        }
        Command::State { id } => {
            let c = Container::load(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&c.state())?);
            Ok(0)
        }
        Command::Kill { id, signal, .. } => {
            let sig = container::parse_signal(&signal)?;
            Container::load(&root, &id)?.kill(sig)?;
            Ok(0)
        }
        Command::Delete { id, force } => {
            match Container::load(&root, &id) {
                Ok(c) => c.delete(force)?,
                // A runtime killed mid-create leaves no record: delete what is there.
                Err(container::Error::NotFound(_)) if root.join(&id).is_dir() => {
                    container::delete_stale(&root, &id, force)?
                }
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        Command::Run {
            image,
            create,
            id,
            detach,
            tty,
            keep,
            ..
        } => {
            if image.image.is_some() || image.config.is_some() {
                crate::product::run_image(global, &image, detach, tty)
            } else {
                let id = id.context("name the container: warren run [OPTIONS] ID")?;
                run_cmd(&root, &id, create, detach, tty, keep)
            }
        }
        Command::List { format, quiet } => {
            let all = Container::list(&root)?;
            if quiet {
                for s in &all {
                    println!("{}", s.id);
                }
            } else if format == "json" || global.json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {:<32} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for s in &all {
                    println!(
                        "{:<24} {:<8} {:<10} {:<40} {:<32} {}",
                        s.id,
                        s.pid,
                        s.status.to_string(),
                        s.bundle.display(),
                        s.created,
                        s.owner
                    );
                }
            }
            Ok(0)
        }
        Command::Exec {
            tty,
            detach,
            cwd,
            env,
            user,
            process,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            command,
        } => {
            let c = Container::load(&root, &id)?;
            let mut p = match &process {
                Some(file) => {
                    let text =
                        std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
                    serde_json::from_slice(&text)
                        .with_context(|| format!("invalid process {}", file.display()))?
                }
                None => {
                    if command.is_empty() {
                        bail!("exec: give a command after `--` or --process FILE");
                    }
                    let mut p = c.record().process.clone().unwrap_or_default();
                    p.set_args(Some(command));
                    p.set_terminal(Some(tty));
                    p
                }
            };
            if let Some(cwd) = cwd {
                p.set_cwd(cwd);
            }
            if !env.is_empty() {
                let mut all = p.env().clone().unwrap_or_default();
                all.extend(env);
                p.set_env(Some(all));
            }
            if let Some(u) = user {
                let (uid, gid) = u.split_once(':').unwrap_or((&u, "0"));
                p.user_mut()
                    .set_uid(uid.parse().context("--user: uid must be a number")?);
                p.user_mut()
                    .set_gid(gid.parse().context("--user: gid must be a number")?);
            }
            let interactive = p.terminal().unwrap_or(false) && console_socket.is_none();
            let (mask, sfd) = block_signals()?;
            let (console_fd, ours) = if interactive {
                console_pair()?
            } else {
                (None, None)
            };
            let opts = ExecOptions {
                console_socket,
                console_fd,
                pid_file,
                preserve_fds,
                ..Default::default()
            };
            let proc = c.exec(&p, opts)?;
            if detach {
                return Ok(0);
            }
            let pty = match ours {
                Some(s) => Some(recv_master(&s)?),
                None => None,
            };
            let status = supervise(proc.pidfd(), &sfd, pty.as_ref(), || Ok(proc.wait()?))?;
            drop(mask);
            Ok(container::exit_code(status))
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
    }
}

fn run_cmd(
    root: &Path,
    id: &str,
    args: CreateArgs,
    detach: bool,
    tty: bool,
    keep: bool,
) -> Result<i32> {
    let mut spec = load(&args.bundle)?;
    add_listen_env(&mut spec);
    if tty {
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(true));
        }
    }
    let interactive = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
        && args.console_socket.is_none();
    if interactive && detach {
        bail!("a terminal with --detach needs --console-socket");
    }
    let (mask, sfd) = block_signals()?;
    let (console_fd, ours) = if interactive {
        console_pair()?
    } else {
        (None, None)
    };
    let mut opts = options(&args);
    opts.start = true;
    opts.console_fd = console_fd;
    let c = Container::create(root, id, &spec, opts)?;
    if detach {
        return Ok(0);
    }
    let pty = match ours {
        Some(s) => Some(recv_master(&s)?),
        None => None,
    };
    let pidfd = c.pidfd().context("container has no process")?;
    let status = supervise(pidfd, &sfd, pty.as_ref(), || Ok(c.wait()?));
    drop(mask);
    let status = status?;
    if !keep {
        c.delete(true)?;
    }
    Ok(container::exit_code(status))
}

/// Signals the runtime forwards to the workload while it waits.
const FORWARD: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Restores the signal mask on drop.
pub(crate) struct Blocked(SigSet);
impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

pub(crate) fn block_signals() -> Result<(Blocked, SignalFd)> {
    let mut set = SigSet::empty();
    for s in FORWARD {
        set.add(*s);
    }
    let old = set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    Ok((Blocked(old), sfd))
}

pub(crate) fn console_pair() -> Result<(Option<OwnedFd>, Option<std::os::unix::net::UnixStream>)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    Ok((Some(OwnedFd::from(a)), Some(b)))
}

pub(crate) fn recv_master(sock: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the fd just arrived over SCM_RIGHTS: nothing else owns it.
                return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(*fd) });
            }
        }
    }
    bail!("the container sent no pty")
}

/// Waits for the process behind `pidfd`, forwarding signals, and proxying a pty between
/// this terminal and the workload when there is one.
pub(crate) fn supervise(
    pidfd: std::os::fd::BorrowedFd<'_>,
    sfd: &SignalFd,
    pty: Option<&OwnedFd>,
    wait: impl FnOnce() -> Result<std::process::ExitStatus>,
) -> Result<std::process::ExitStatus> {
    let stdin = std::io::stdin();
    let raw = match pty {
        Some(m) if nix::unistd::isatty(&stdin).unwrap_or(false) => {
            let saved = nix::sys::termios::tcgetattr(&stdin)?;
            let mut r = saved.clone();
            nix::sys::termios::cfmakeraw(&mut r);
            nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &r)?;
            copy_winsize(m);
            Some(saved)
        }
        _ => None,
    };
    let mut stdin_open = pty.is_some();
    let mut master_open = pty.is_some();
    let mut buf = [0u8; 8192];
    let result = loop {
        let mut fds = vec![
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(m) = pty {
            fds.push(libc::pollfd {
                fd: if master_open { m.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(std::io::Error::last_os_error().into());
        }
        if fds[1].revents != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let Some(m) = pty {
                        copy_winsize(m);
                        continue;
                    }
                }
                let _ = warren::sys::pidfd_send_signal(pidfd, sig);
            }
        }
        if let Some(m) = pty {
            if master_open && fds[2].revents != 0 {
                match nix::unistd::read(m, &mut buf) {
                    Ok(0) | Err(_) => master_open = false,
                    Ok(k) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..k]);
                        let _ = out.flush();
                    }
                }
            }
            if stdin_open && fds[3].revents != 0 {
                match nix::unistd::read(&stdin, &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(k) => {
                        let _ = nix::unistd::write(m, &buf[..k]);
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            // Drain what the workload printed last.
            if let Some(m) = pty {
                let _ = nix::fcntl::fcntl(
                    m,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                );
                while master_open {
                    match nix::unistd::read(m, &mut buf) {
                        Ok(k) if k > 0 => {
                            let _ = std::io::stdout().write_all(&buf[..k]);
                        }
                        _ => master_open = false,
                    }
                }
                let _ = std::io::stdout().flush();
            }
            break wait();
        }
    };
    if let Some(saved) = raw {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &saved);
    }
    result
}

fn copy_winsize(master: &OwnedFd) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize pointer.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
            "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
            "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync",
            "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": { "io.github.warren.runtime": "warren" }
    })
}
