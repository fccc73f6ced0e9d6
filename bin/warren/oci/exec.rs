//! `warren exec`: runc's arguments (`runc exec --help`), turned into an OCI process the
//! way runc's `getProcess` does: `--process FILE` as given, or the container's process
//! with the command and the flags' changes on top.

use super::term::{block_signals, console_pair, recv_master, supervise};
use anyhow::{Context, Result, bail};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, Process};
use std::path::{Path, PathBuf};
use warren::container::{self, Container, ExecOptions};

// Not a doc comment: it would replace the subcommand's help text.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Unix socket that receives the pty master (with --tty).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment (KEY=VALUE).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Allocate a pseudo-terminal (TERM=xterm unless the environment sets TERM).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Keep stdin connected (it always is: accepted for podman's `exec -it`).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// UID[:GID].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(long, short = 'g')]
    pub additional_gids: Vec<String>,
    /// A process.json (OCI process) instead of the command; the other process flags are
    /// ignored, as runc does.
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Write the process's pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// SELinux label of the process (refused: this host has no SELinux).
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile of the process (refused when AppArmor is off).
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability to the bounding, effective and permitted sets.
    #[arg(long, short = 'c')]
    pub cap: Vec<String>,
    /// Keep fds 3..3+N open in the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Run the process in a sub-cgroup (not supported: refused).
    #[arg(long)]
    pub cgroup: Vec<String>,
    /// Allow exec in a paused container.
    #[arg(long)]
    pub ignore_paused: bool,
    /// The container's ID.
    pub id: String,
    /// The command and its arguments (`--` before it is optional).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn exec(root: &Path, a: ExecArgs) -> Result<i32> {
    if !a.cgroup.is_empty() {
        bail!("exec --cgroup is not supported by warren");
    }
    let c = Container::load(root, &a.id)?;
    if !a.ignore_paused && c.state().paused {
        bail!(
            "container {} is paused: cannot exec (use --ignore-paused to override)",
            a.id
        );
    }
    let p = match &a.process {
        Some(file) => read_process(file)?,
        None => process_of(c.record().process.clone().unwrap_or_default(), &a)?,
    };
    if p.args().as_ref().is_none_or(|v| v.is_empty()) {
        bail!("exec: give a command (after the ID) or --process FILE: args must not be empty");
    }
    if p.selinux_label().as_ref().is_some_and(|l| !l.is_empty())
        && !Path::new("/sys/fs/selinux/enforce").exists()
    {
        bail!("selinux label is specified in config, but selinux is disabled or not supported");
    }
    if !p.cwd().is_absolute() {
        bail!("exec: cwd {:?} must be an absolute path", p.cwd());
    }
    if p.terminal().unwrap_or(false) && a.detach && a.console_socket.is_none() {
        bail!("exec: a terminal with --detach needs --console-socket");
    }
    let interactive = p.terminal().unwrap_or(false) && a.console_socket.is_none();
    let mut p = p;
    if interactive && p.console_size().is_none() {
        // The pty gets this terminal's size before the process starts (podman's way).
        p.set_console_size(super::term::winsize().and_then(|(rows, cols)| {
            oci_spec::runtime::BoxBuilder::default()
                .height(rows)
                .width(cols)
                .build()
                .ok()
        }));
    }
    let (mask, sfd) = block_signals()?;
    let (console_fd, ours) = if interactive {
        console_pair()?
    } else {
        (None, None)
    };
    let opts = ExecOptions {
        console_socket: a.console_socket,
        console_fd,
        pid_file: a.pid_file,
        preserve_fds: a.preserve_fds,
        ..Default::default()
    };
    let proc = c.exec(&p, opts)?;
    if a.detach {
        return Ok(0);
    }
    let pty = ours.as_ref().map(recv_master).transpose()?;
    let status = supervise(proc.pidfd(), &sfd, pty.as_ref(), true, || Ok(proc.wait()?))?;
    drop(mask);
    Ok(container::exit_code(status))
}

fn read_process(file: &Path) -> Result<Process> {
    let text = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let de = &mut serde_json::Deserializer::from_slice(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!(
            "invalid process {}: `{path}`: {}",
            file.display(),
            e.inner()
        )
    })
}

/// The container's process with the command line's changes (runc's `getProcess`).
fn process_of(mut p: Process, a: &ExecArgs) -> Result<Process> {
    p.set_args(Some(a.command.clone()));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &a.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    if !a.cap.is_empty() {
        add_caps(&mut p, &a.cap)?;
    }
    if !a.env.is_empty() {
        // A variable given again replaces the config's (runc sets them in order).
        let mut all = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let key = kv.split('=').next().unwrap_or_default();
            all.retain(|e| e.split('=').next() != Some(key));
            all.push(kv.clone());
        }
        p.set_env(Some(all));
    }
    p.set_terminal(Some(a.tty));
    let env = p.env().clone().unwrap_or_default();
    if a.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        p.set_env(Some(env.into_iter().chain(["TERM=xterm".into()]).collect()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(u) = &a.user {
        let mut parts = u.split(':');
        let (uid, gid) = (parts.next().unwrap_or(""), parts.next());
        if parts.next().is_some() {
            bail!("--user: invalid user format {u:?}: UID[:GID]");
        }
        p.user_mut().set_uid(id_arg("uid", uid)?);
        if let Some(gid) = gid {
            p.user_mut().set_gid(id_arg("gid", gid)?);
        }
    }
    if !a.additional_gids.is_empty() {
        let mut gids = p.user().additional_gids().clone().unwrap_or_default();
        for g in &a.additional_gids {
            gids.push(id_arg("additional gid", g)?);
        }
        p.user_mut().set_additional_gids(Some(gids));
    }
    Ok(p)
}

fn id_arg(what: &str, s: &str) -> Result<u32> {
    s.parse()
        .with_context(|| format!("--user: {what} {s:?} must be a number"))
}

/// `--cap`: added to the bounding, effective and permitted sets (not ambient: it needs
/// inheritable, which runc never sets either).
fn add_caps(p: &mut Process, names: &[String]) -> Result<()> {
    let mut added = Capabilities::new();
    for name in names {
        let full = match name.to_ascii_uppercase() {
            n if n.starts_with("CAP_") => n,
            n => format!("CAP_{n}"),
        };
        let cap: Capability = serde_json::from_value(full.into())
            .map_err(|_| anyhow::anyhow!("--cap: unknown capability {name:?}"))?;
        added.insert(cap);
    }
    let with = |set: &Option<Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.extend(added.iter().cloned());
        Some(set)
    };
    // A process without `capabilities` has none (oci-spec's default would be a few).
    let mut caps = p.capabilities().clone().unwrap_or_else(|| {
        let mut c = LinuxCapabilities::default();
        c.set_bounding(None);
        c.set_effective(None);
        c.set_permitted(None);
        c.set_inheritable(None);
        c.set_ambient(None);
        c
    });
    let (b, e, pm) = (
        with(caps.bounding()),
        with(caps.effective()),
        with(caps.permitted()),
    );
    caps.set_bounding(b);
    caps.set_effective(e);
    caps.set_permitted(pm);
    p.set_capabilities(Some(caps));
    Ok(())
}
