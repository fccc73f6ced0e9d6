//! Containers from images, by name: `warren run --image`, `ps`, `stop`, `rm`, `logs`,
//! over `warren::runtime::Runtime`.

use crate::{Global, oci};
use anyhow::{Context, Result, bail};
use oci_spec::runtime::ContainerState;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warren::container::Container;
use warren::runtime::{BindMount, ConfigFile, ContainerConfig, Network, Runtime, RuntimeOptions};

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// List containers made from images; with an ID, runc's `ps` of that container.
    Ps {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Accepted for podman users: every container is listed, stopped ones too.
        #[arg(short, long)]
        all: bool,
        /// With an ID: table or json (runc's --format).
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// An OCI container's ID (runc's `ps ID [PS_ARGS...]`).
        id: Option<String>,
        /// With an ID: arguments for the host's ps (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the timeout; returns once they
    /// have exited.
    Stop {
        /// The containers' names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Print everything warren records about a container, as JSON.
    Inspect {
        /// The container's name.
        name: String,
    },
    /// Remove a container, its writable layer, view and id block.
    Rm {
        /// The containers' names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill it first if it runs.
        #[arg(short, long)]
        force: bool,
        /// No error for a container that does not exist (podman's `rm --ignore`).
        #[arg(short, long)]
        ignore: bool,
    },
    /// Print the output of a detached container.
    Logs {
        /// The container's name.
        name: String,
        /// Keep printing as it grows, until the container stops.
        #[arg(short, long)]
        follow: bool,
    },
}

// `warren run --image ...` options (flattened into `run`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RunImageArgs {
    /// Run a container from this image in the store (NAME[:TAG]); without it, `run`
    /// takes an OCI bundle.
    #[arg(long)]
    pub image: Option<String>,
    /// Container name (default: the image's name plus a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Read the container's settings from a TOML file (as container@.service does).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Remove a container of the same name first (restarts under systemd).
    #[arg(long)]
    pub replace: bool,
    /// none (loopback only), host, bridge (the default network), bridge:NAME, pasta,
    /// slirp4netns, or a network namespace path.
    #[arg(long = "net", alias = "network")]
    pub net: Option<String>,
    /// Publish a port: [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|udp].
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Another name the container answers to on its bridge network.
    #[arg(long = "alias", value_name = "NAME")]
    pub alias: Vec<String>,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bind-mount a host path: SRC:DST[:ro].
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// UID[:GID] or NAME[:GROUP] inside the container.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The container's hostname (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory limit: bytes, or with a k, m, g or t suffix (512m, 1g).
    #[arg(long)]
    pub memory: Option<String>,
    /// Most processes the container may have.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// CPU limit in cores (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Turn off the default seccomp profile.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The command and its arguments (default: the image's).
    #[arg(last = true, index = 2)]
    pub command: Vec<String>,
}

pub fn runtime(global: &Global) -> Result<Runtime> {
    let mut opts = RuntimeOptions::detect();
    if let Some(store) = &global.store {
        opts.store_dir = store.clone();
    }
    if let Some(root) = &global.root {
        opts.run_dir = root.clone();
    }
    crate::ranges::announce_pool()?;
    Ok(Runtime::open(opts)?)
}

pub fn run(global: &Global, command: Command) -> Result<i32> {
    if let Command::Ps {
        id: Some(id),
        format,
        ps_args,
        ..
    } = &command
    {
        return oci::ps::ps(&oci::root(global), id, format, ps_args);
    }
    let rt = runtime(global)?;
    match command {
        Command::Ps { quiet, .. } => crate::ps::ps(&rt, global.json, quiet),
        Command::Inspect { name } => crate::ps::inspect(&rt, &name),
        Command::Stop { names, time } => {
            let timeout = Duration::from_secs(time);
            each(global, &names, "stopped", |name| {
                stop(&rt, name, timeout).map(|()| true)
            })
        }
        Command::Rm {
            names,
            force,
            ignore,
        } => each(global, &names, "removed", |name| {
            match rt.delete(name, force) {
                Ok(()) => Ok(true),
                Err(warren::runtime::Error::NotFound(_)) if ignore => Ok(false),
                Err(e) => Err(e.into()),
            }
        }),
        Command::Logs { name, follow } => logs(&rt, &name, follow, global.json),
    }
}

/// Runs `op` on each name (false: nothing to do, say nothing), printing each name done (podman's output) or, with --json,
/// one `{"name": .., WHAT: true}` or `{"name": .., "error": ..}` object per name. Exits
/// 1 when any failed.
fn each(
    global: &Global,
    names: &[String],
    what: &str,
    op: impl Fn(&str) -> Result<bool>,
) -> Result<i32> {
    let mut code = 0;
    for name in names {
        let result = op(name);
        if result.is_err() {
            code = 1;
        }
        match (result, global.json) {
            (Ok(false), _) => {}
            (Ok(true), false) => println!("{name}"),
            (Ok(true), true) => println!("{}", serde_json::json!({ "name": name, what: true })),
            (Err(e), false) => eprintln!("warren: {name}: {}", warren::error_line(e.as_ref())),
            (Err(e), true) => println!(
                "{}",
                serde_json::json!({ "name": name, "error": warren::error_line(e.as_ref()) })
            ),
        }
    }
    Ok(code)
}

/// How long `stop` waits for a container to exit after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// SIGTERM, up to `timeout` for the container to exit, then SIGKILL; returns once its
/// init has exited (its pidfd is readable), so a `rm` right after never finds it running.
fn stop(rt: &Runtime, name: &str, timeout: Duration) -> Result<()> {
    let c = match Container::load(&rt.options().run_dir, name) {
        Ok(c) => c,
        Err(warren::container::Error::NotFound(_)) => {
            rt.record(name)?;
            return Ok(()); // Still being created, or a crash left only the record.
        }
        Err(e) => return Err(e.into()),
    };
    let (Some(pidfd), ContainerState::Created | ContainerState::Running) = (c.pidfd(), c.status())
    else {
        return Ok(());
    };
    // Either may fail because it exited meanwhile: the pidfd says.
    if !timeout.is_zero() {
        let _ = c.kill(libc::SIGTERM);
        if exited(pidfd, timeout)? {
            return Ok(());
        }
    }
    let _ = c.kill(libc::SIGKILL);
    if exited(pidfd, KILL_WAIT)? {
        return Ok(());
    }
    bail!(
        "container {name} is still running {}s after SIGKILL",
        KILL_WAIT.as_secs()
    )
}

/// Waits up to `timeout` for the process behind `pidfd` to exit.
fn exited(pidfd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("poll the container's pidfd");
        }
    }
}

fn logs(rt: &Runtime, name: &str, follow: bool, json: bool) -> Result<i32> {
    rt.record(name)?;
    let path = rt.log_path(name);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(unit) = journal_unit(rt, name) {
                bail!(
                    "container {name} runs under {unit}: its output is in the journal: journalctl -u {unit}"
                )
            }
            bail!("container {name} has no log: only detached containers (`run -d`) write one")
        }
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    // With --json, each piece read is one `{"name": .., "log": ..}` line.
    let mut copy = |file: &mut std::fs::File| -> Result<()> {
        if !json {
            std::io::copy(file, &mut out)?;
            return Ok(out.flush()?);
        }
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        if !buf.is_empty() || !follow {
            let log = String::from_utf8_lossy(&buf);
            writeln!(out, "{}", serde_json::json!({ "name": name, "log": log }))?;
        }
        Ok(out.flush()?)
    };
    loop {
        copy(&mut file)?;
        let stopped = rt
            .state(name)
            .map(|s| matches!(s.status, ContainerState::Stopped))
            .unwrap_or(true);
        if !follow || stopped {
            if follow {
                copy(&mut file)?;
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The library config for `args`: the TOML file's settings, then the flags on top.
fn container_config(args: &RunImageArgs) -> Result<ContainerConfig> {
    let mut cfg = match &args.config {
        Some(path) => ConfigFile::load(path)?.into_config(path)?,
        None => ContainerConfig::default(),
    };
    if let Some(image) = &args.image {
        cfg.image = image.clone();
    }
    if cfg.image.is_empty() {
        bail!("no image: pass --image NAME or set `image` in the --config file");
    }
    if !args.command.is_empty() {
        cfg.command = args.command.clone();
    }
    cfg.env.extend(args.env.iter().cloned());
    for v in &args.volume {
        cfg.mounts.push(volume(v)?);
    }
    if let Some(net) = &args.net {
        cfg.network = net.parse::<Network>()?;
    }
    for p in &args.publish {
        let port = p
            .parse::<warren::net::PortMapping>()
            .map_err(|e| anyhow::anyhow!("-p {p}: {}", warren::error_line(&e)))?;
        cfg.ports.push(port);
    }
    cfg.aliases.extend(args.alias.iter().cloned());
    cfg.user = args.user.clone().or(cfg.user);
    cfg.workdir = args.workdir.clone().or(cfg.workdir);
    cfg.hostname = args.hostname.clone().or(cfg.hostname);
    let memory = args
        .memory
        .as_deref()
        .map(|m| warren::runtime::config::parse_bytes(m).with_context(|| format!("--memory {m}")))
        .transpose()?;
    if memory.is_some() || args.pids_limit.is_some() || args.cpus.is_some() {
        cfg.resources = warren::runtime::config::limits(memory, args.pids_limit, args.cpus)?;
    }
    cfg.no_seccomp |= args.no_seccomp;
    cfg.read_only |= args.read_only;
    check_memory(&cfg, args)?;
    Ok(cfg)
}

/// `-v SRC:DST[:ro]`, its source checked here so an error names the flag (not the
/// generated config's `mounts[N].source`).
fn volume(v: &str) -> Result<BindMount> {
    let m = v
        .parse::<BindMount>()
        .map_err(|e| anyhow::anyhow!("-v {v}: {}", warren::error_line(&e)))?;
    if let Err(e) = std::fs::metadata(&m.source) {
        let why = e.raw_os_error().map_or_else(
            || e.to_string(),
            |n| nix::errno::Errno::from_raw(n).desc().into(),
        );
        bail!("-v {v}: {}: {why}", m.source.display());
    }
    Ok(m)
}

/// Below this a container's init cannot even start (podman's minimum too).
const MIN_MEMORY: i64 = 6 << 20;

/// A memory limit too small to start anything fails here, saying so, rather than as
/// "container init died" from the OOM killer.
fn check_memory(cfg: &ContainerConfig, args: &RunImageArgs) -> Result<()> {
    let limit = cfg
        .resources
        .as_ref()
        .and_then(|r| r.memory().as_ref()?.limit());
    match limit {
        Some(m) if m < MIN_MEMORY => {
            let from = match (&args.memory, &args.config) {
                (Some(flag), _) => format!("--memory {flag}"),
                (None, Some(file)) => format!("`memory` in {}", file.display()),
                (None, None) => "memory".into(),
            };
            bail!(
                "{from}: {m} bytes is below the 6 MiB a container needs (a size takes a suffix: 512k, 512m, 1g)"
            )
        }
        _ => Ok(()),
    }
}

fn default_name(image: &str) -> String {
    let base: String = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split(':')
        .next()
        .unwrap_or("c")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{base}-{:06x}",
        (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff
    )
}

/// The container's name: `--name`, the positional ID, or one made from the image.
fn image_run_name(args: &RunImageArgs, id: Option<String>, image: &str) -> Result<String> {
    match (&args.name, id) {
        (Some(name), Some(id)) if *name != id => {
            bail!("two names: --name {name} and the ID {id}; give one")
        }
        (Some(name), _) => Ok(name.clone()),
        (None, Some(id)) => Ok(id),
        (None, None) => Ok(default_name(image)),
    }
}

/// The OCI `run` flags an image run cannot honour are refused, naming the flag.
fn refuse_bundle_flags(create: &oci::CreateArgs) -> Result<()> {
    if create.bundle != std::path::Path::new(".") {
        bail!("--bundle runs an OCI bundle; --image and --config run an image: give one");
    }
    if create.console_socket.is_some() {
        bail!("--console-socket is for OCI bundles; with --image use -t");
    }
    if create.preserve_fds > 0 {
        bail!("--preserve-fds is for OCI bundles; with --image, LISTEN_FDS are not passed on");
    }
    Ok(())
}

/// Writes the container's host pid to `path` (runc's `--pid-file`): a temporary
/// sibling renamed into place, so a reader never sees a partial pid.
fn write_pid_file(path: &std::path::Path, pid: i32) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("--pid-file {}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(pid.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("--pid-file {}", path.display()))
    })
}

/// Where a container run by a systemd unit (`WARREN_UNIT`, set by container@.service)
/// notes the unit, so `warren logs` can point at the journal.
fn unit_note(rt: &Runtime, name: &str) -> PathBuf {
    rt.log_path(name).with_file_name("unit")
}

/// The systemd unit whose journal holds `name`'s output, if a unit ran it.
pub fn journal_unit(rt: &Runtime, name: &str) -> Option<String> {
    let unit = std::fs::read_to_string(unit_note(rt, name)).ok()?;
    let unit = unit.trim();
    (!unit.is_empty()).then(|| unit.to_string())
}

/// `warren run --image`: create, start, and (unless detached) supervise until exit:
/// signals are forwarded, a pty relayed with `-t`, READY=1 sent to systemd, and the
/// workload's exit status becomes ours. `create` holds the OCI flags `run` shares:
/// `--init` and `--pid-file` are honoured, the bundle-only ones refused.
pub fn run_image(
    global: &Global,
    args: &RunImageArgs,
    create: &oci::CreateArgs,
    id: Option<String>,
    detach: bool,
    tty: bool,
) -> Result<i32> {
    refuse_bundle_flags(create)?;
    // Detached, the container outlives this process: a monitor collects its exit
    // status for `ps` (podman's conmon); in the foreground we wait for it ourselves.
    let rt = runtime(global)?.with_monitor(detach);
    let mut cfg = container_config(args)?;
    cfg.init |= create.init;
    let name = image_run_name(args, id, &cfg.image)?;
    if args.replace {
        match rt.delete(&name, true) {
            Ok(()) | Err(warren::runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if detach {
        if tty {
            bail!("-t needs a terminal to relay: drop -d, or drop -t and read `warren logs`");
        }
        cfg.log = true;
        let handle = rt.run(&name, cfg)?;
        started(&rt, &name, handle.pid(), create, false)?;
        let _ = warren::systemd::notify("READY=1");
        if global.json {
            println!("{}", serde_json::json!({ "name": handle.name }));
        } else {
            println!("{}", handle.name);
        }
        return Ok(0);
    }
    let (mask, signals) = oci::block_signals()?;
    let ours = if tty {
        let (theirs, ours) = oci::console_pair()?;
        cfg.terminal = true;
        cfg.console = theirs;
        // Sized before the start (process.consoleSize), as exec does: the workload's
        // first look at its terminal sees this one's size.
        cfg.console_size = oci::winsize();
        ours
    } else {
        None
    };
    let handle = rt.run(&name, cfg)?;
    started(&rt, &name, handle.pid(), create, true)?;
    let pty = ours.as_ref().map(oci::recv_master).transpose()?;
    let _ = warren::systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    let status = match handle.pidfd() {
        Some(pidfd) => oci::supervise(pidfd, &signals, pty.as_ref(), false, || Ok(handle.wait()?)),
        None => Ok(handle.wait()?),
    };
    drop(mask);
    let _ = warren::systemd::notify("STOPPING=1");
    drop(handle);
    if args.rm {
        if let Err(e) = rt.delete(&name, true) {
            eprintln!("warren: remove {name}: {}", warren::error_line(&e));
        }
    }
    Ok(warren::container::exit_code(status?))
}

/// After the start: the pid file and, when the output goes to a unit's journal, the unit
/// note; if either cannot be written the container is removed again.
fn started(
    rt: &Runtime,
    name: &str,
    pid: i32,
    create: &oci::CreateArgs,
    journal: bool,
) -> Result<()> {
    let unit = std::env::var("WARREN_UNIT")
        .ok()
        .filter(|u| journal && !u.is_empty());
    let result = (|| -> Result<()> {
        if let Some(path) = &create.pid_file {
            write_pid_file(path, pid)?;
        }
        if let Some(unit) = unit {
            let note = unit_note(rt, name);
            std::fs::write(&note, unit).with_context(|| format!("write {}", note.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = rt.delete(name, true);
    }
    result
}
