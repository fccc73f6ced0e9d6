//! The OCI runtime command line, runc's subcommands (`create`, `start`, `state`, `kill`,
//! `delete`, `run`, `list`, `exec`, `pause`, `resume`, `update`, `events`, `features`;
//! `ps ID` comes through the product's `ps`), flattened into `warren`. Flags runc/crun
//! clients pass are accepted. Output and argument parsing only: the work is
//! `warren::container`.

mod events;
mod exec;
pub mod log;
pub mod ps;
mod term;
mod update;

use crate::Global;
use anyhow::{Context, Result, bail};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
// Also used by the product's `run --image`.
pub(crate) use term::{block_signals, console_pair, recv_master, supervise, winsize};
use warren::container::{self, Container, CreateOptions};

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
        #[command(flatten)]
        args: Box<exec::ExecArgs>,
    },
    /// Suspend every process of a container (cgroup freezer).
    Pause { id: String },
    /// Resume a paused container.
    Resume { id: String },
    /// Change the resource limits of a running container.
    Update {
        #[command(flatten)]
        args: Box<update::UpdateArgs>,
    },
    /// Print a container's resource statistics (JSON, one event a line).
    Events {
        /// Print the statistics once and exit.
        #[arg(long)]
        stats: bool,
        /// How often to print them (a Go duration: 5s, 500ms).
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// What this runtime supports (OCI features JSON).
    Features,
}

pub fn root(global: &Global) -> PathBuf {
    global.root.clone().unwrap_or_else(warren::dirs::run_dir)
}

impl Command {
    /// Whether the subcommand clones container processes from this process that a
    /// container process could reach before their workload's execve: they must not see a
    /// writable runtime binary (`warren::container::exe::init_exposed`). A config that
    /// does not load is answered with yes; its error comes later.
    pub fn needs_sealed_binary(&self) -> bool {
        match self {
            Command::Create { .. } | Command::Exec { .. } => true,
            Command::Run { create, image, .. }
                if image.image.is_none() && image.config.is_none() =>
            {
                let Ok(spec) = load(&create.bundle) else {
                    return true;
                };
                let exposed = container::exe::init_exposed(&spec, true, create.init);
                *READ.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((create.bundle.clone(), spec));
                exposed
            }
            Command::Run { .. } => true,
            _ => false,
        }
    }
}

/// Runs an OCI subcommand; its error, if any, is logged to `--log` by `main`.
pub fn run(global: &Global, command: Command) -> Result<i32> {
    log::check_format(&global.log_format)?;
    log::init(global);
    dispatch(global, command)
}

/// A config `main` read already (see [`Command::needs_sealed_binary`]), for the command
/// itself: read and parsed once.
static READ: Mutex<Option<(PathBuf, Spec)>> = Mutex::new(None);

/// The config of `bundle`.
fn load(bundle: &Path) -> Result<Spec> {
    let read = READ.lock().unwrap_or_else(|p| p.into_inner()).take();
    match read {
        Some((b, spec)) if b == bundle => Ok(spec),
        _ => Ok(container::spec::load_bundle(bundle)?),
    }
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
                crate::product::run_image(global, &image, &create, id, detach, tty)
            } else {
                let id = id.context("name the container: warren run [OPTIONS] ID")?;
                run_cmd(&root, &id, create, detach, tty, keep)
            }
        }
        Command::List { format, quiet } => {
            let mut all = Container::list(&root)?;
            // Like runc, the owner is named when listed (no user lookup on each create).
            let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default();
            for s in all.iter_mut().filter(|s| s.owner.is_empty()) {
                s.owner = me.clone();
            }
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
                        s.status_name(),
                        s.bundle.display(),
                        s.created,
                        s.owner
                    );
                }
            }
            Ok(0)
        }
        // Like runc: a failed exec exits 255, the process's own status is passed on.
        Command::Exec { args } => exec::exec(&root, *args).or_else(|e| {
            let msg = format!("exec failed: {}", warren::error_line(e.as_ref()));
            log::error(global, &msg);
            if global.json {
                println!("{}", serde_json::json!({ "error": msg }));
            } else {
                eprintln!("warren: {msg}");
            }
            Ok(255)
        }),
        Command::Pause { id } => {
            Container::load(&root, &id)?.pause()?;
            Ok(0)
        }
        Command::Resume { id } => {
            Container::load(&root, &id)?.resume()?;
            Ok(0)
        }
        Command::Update { args } => update::update(&root, &args),
        Command::Events {
            stats,
            interval,
            id,
        } => events::events(&root, &id, stats, &interval),
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
    let wait = || match keep {
        true => c.wait(),
        false => c.wait_to_delete(),
    };
    let status = supervise(pidfd, &sfd, pty.as_ref(), true, || Ok(wait()?));
    drop(mask);
    let status = status?;
    if !keep {
        c.delete(true)?;
    }
    Ok(container::exit_code(status))
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
