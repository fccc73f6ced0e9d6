//! Containers from images, by name: `warren run --image`, `ps`, `stop`, `rm`, `logs`,
//! over `warren::runtime::Runtime`.

use crate::{Global, oci};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warren::runtime::{BindMount, ConfigFile, ContainerConfig, Network, Runtime, RuntimeOptions};

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// List containers made from images; with an ID, runc's `ps` of that container.
    Ps {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// With an ID: table or json (runc's --format).
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// An OCI container's ID (runc's `ps ID [PS_ARGS...]`).
        id: Option<String>,
        /// With an ID: arguments for the host's ps (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    Stop {
        name: String,
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Remove a container, its writable layer, view and id block.
    Rm {
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
    /// none (loopback only), host, or a network namespace path.
    #[arg(long = "net", alias = "network")]
    pub net: Option<String>,
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
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 512M).
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
        Command::Ps { quiet, .. } => {
            let list = rt.list()?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if quiet {
                list.iter().for_each(|c| println!("{}", c.name));
            } else {
                println!(
                    "{:<20} {:<20} {:<9} {:>8}  {:<20} VIEW",
                    "NAME", "IMAGE", "STATUS", "PID", "IDS"
                );
                for c in list {
                    let ids = c.ids.map(|r| r.uids.to_string()).unwrap_or_default();
                    let pid = if c.pid > 0 {
                        c.pid.to_string()
                    } else {
                        "-".into()
                    };
                    println!(
                        "{:<20} {:<20} {:<9} {:>8}  {:<20} {}",
                        c.name,
                        c.image,
                        c.status,
                        pid,
                        ids,
                        c.method.unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Stop { name, time } => {
            stop(&rt, &name, Duration::from_secs(time))?;
            Ok(0)
        }
        Command::Rm {
            names,
            force,
            ignore,
        } => {
            if names.is_empty() {
                bail!("name at least one container to remove");
            }
            let mut code = 0;
            for name in names {
                match rt.delete(&name, force) {
                    Ok(()) => println!("{name}"),
                    Err(warren::runtime::Error::NotFound(_)) if ignore => {}
                    Err(e) => {
                        eprintln!("warren: {name}: {}", warren::error_line(&e));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Command::Logs { name, follow } => logs(&rt, &name, follow),
    }
}

fn stop(rt: &Runtime, name: &str, timeout: Duration) -> Result<()> {
    let running = |rt: &Runtime| {
        rt.state(name)
            .map(|s| !matches!(s.status, oci_spec::runtime::ContainerState::Stopped))
            .unwrap_or(false)
    };
    if !running(rt) {
        rt.state(name)?;
        return Ok(());
    }
    rt.kill(name, libc::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while running(rt) {
        if Instant::now() >= deadline {
            let _ = rt.kill(name, libc::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn logs(rt: &Runtime, name: &str, follow: bool) -> Result<i32> {
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
    loop {
        std::io::copy(&mut file, &mut out)?;
        out.flush()?;
        let stopped = rt
            .state(name)
            .map(|s| matches!(s.status, oci_spec::runtime::ContainerState::Stopped))
            .unwrap_or(true);
        if !follow || stopped {
            std::io::copy(&mut file, &mut out)?;
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
        cfg.mounts
            .push(v.parse::<BindMount>().map_err(anyhow::Error::msg)?);
    }
    if let Some(net) = &args.net {
        cfg.network = net.parse::<Network>()?;
    }
    cfg.user = args.user.clone().or(cfg.user);
    cfg.workdir = args.workdir.clone().or(cfg.workdir);
    cfg.hostname = args.hostname.clone().or(cfg.hostname);
    let memory = args
        .memory
        .as_deref()
        .map(warren::runtime::config::parse_bytes)
        .transpose()?;
    if memory.is_some() || args.pids_limit.is_some() || args.cpus.is_some() {
        cfg.resources = warren::runtime::config::limits(memory, args.pids_limit, args.cpus)?;
    }
    cfg.no_seccomp |= args.no_seccomp;
    cfg.read_only |= args.read_only;
    Ok(cfg)
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
    let rt = runtime(global)?;
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
        println!("{}", handle.name);
        return Ok(0);
    }
    let (mask, signals) = oci::block_signals()?;
    let ours = if tty {
        let (theirs, ours) = oci::console_pair()?;
        cfg.terminal = true;
        cfg.console = theirs;
        ours
    } else {
        None
    };
    let handle = rt.run(&name, cfg)?;
    started(&rt, &name, handle.pid(), create, true)?;
    let pty = ours.as_ref().map(oci::recv_master).transpose()?;
    let _ = warren::systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    let status = match handle.pidfd() {
        Some(pidfd) => oci::supervise(pidfd, &signals, pty.as_ref(), || Ok(handle.wait()?)),
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
