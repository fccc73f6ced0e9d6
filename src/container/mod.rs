//! Running a process in its own namespaces, on its own rootfs, with its own id range.
//!
//! [`Container`] is the OCI lifecycle (create, start, state, kill, delete) as a library:
//! the `warren` OCI subcommands are a thin layer over it, and a scheduler can call it
//! from many threads with an in-memory [`Spec`]. The parent prepares everything
//! ([`init::Init`]); the child between clone and exec allocates nothing and takes no
//! lock. State lives in `ROOT/ID/` ([`state`]).
//!
//! A container gets a cgroup only when it needs one ([`cgroup::needed`]): limits in
//! `linux.resources`, a `linux.cgroupsPath`, no pid namespace of its own, or cgroups it
//! can see (a `cgroup` mount, a cgroup namespace). Otherwise killing its init kills
//! everything in it, and it starts without the cost of joining one.
//! A new network namespace gets its `lo` up, like crun does.
//!
//! Container processes are clones of the calling process until their execve, so that
//! process must run from a binary no container can write ([`exe`], CVE-2019-5736):
//! [`Container::create`] and [`Container::exec`] refuse otherwise. An exec'd process gets
//! the container's seccomp filter, cgroups and the process's limits before it runs.

pub mod caps;
mod child;
mod error;
pub mod exe;
pub mod hooks;
pub mod init;
mod protocol;
pub mod rootfs;
pub mod spec;
pub mod state;
pub mod userns;

pub use error::{ConfigError, Error};
use init::{CArray, Init};
use oci_spec::runtime::{ContainerState, LinuxNamespaceType, PosixRlimitType, Process, Spec};
use protocol::{Fail, Msg, Step, tag};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub use state::Record;

/// How to create a container beyond its [`Spec`].
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// The bundle: recorded in the state, base of relative paths in the config
    /// (default: the current directory).
    pub bundle: Option<PathBuf>,
    /// Use this rootfs instead of the config's `root.path`.
    pub rootfs: Option<PathBuf>,
    /// A unix socket path that receives the pty master (`process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (library callers).
    pub console_fd: Option<OwnedFd>,
    /// Write the init pid here.
    pub pid_file: Option<PathBuf>,
    /// The workload's stdin, stdout, stderr (default: inherited).
    pub stdio: [Option<OwnedFd>; 3],
    /// Keep fds 3..3+N open in the workload (sd_listen_fds / --preserve-fds).
    pub preserve_fds: u32,
    /// Exec at once instead of waiting for [`Container::start`] (`run`).
    pub start: bool,
    /// A minimal pid 1 that reaps zombies and forwards signals to the workload.
    pub init: bool,
}

/// Options for [`Container::exec`].
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub console_socket: Option<PathBuf>,
    pub console_fd: Option<OwnedFd>,
    pub stdio: [Option<OwnedFd>; 3],
    pub preserve_fds: u32,
    pub pid_file: Option<PathBuf>,
}

/// A process started by [`Container::exec`], a child of the caller.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    pidfd: OwnedFd,
}

impl ExecProcess {
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
    /// Waits for the process to exit.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        wait_pidfd(self.pidfd.as_fd())
    }
}

/// A container in `ROOT/ID`.
#[derive(Debug)]
pub struct Container {
    root: PathBuf,
    record: Record,
    /// Present when the init is alive (or a zombie we may reap).
    pidfd: Option<OwnedFd>,
    /// The init is our child: `wait` can collect its status.
    child: bool,
}

/// The live status and pidfd of a recorded container.
fn probe(r: &Record, dir: &Path) -> (ContainerState, Option<OwnedFd>) {
    if r.status == ContainerState::Creating || r.pid <= 0 {
        return (ContainerState::Creating, None);
    }
    let Ok(pidfd) = crate::sys::pidfd_open(r.pid) else {
        return (ContainerState::Stopped, None);
    };
    // The pidfd pins the process: check it is still the one we started.
    match state::proc_start(r.pid) {
        Some((start, false)) if start == r.pid_start => {
            let status = if dir.join(state::FIFO).exists() {
                ContainerState::Created
            } else {
                ContainerState::Running
            };
            (status, Some(pidfd))
        }
        Some((start, true)) if start == r.pid_start => (ContainerState::Stopped, Some(pidfd)),
        _ => (ContainerState::Stopped, None),
    }
}

impl Container {
    /// Creates container `id` under `root` from `spec`: namespaces, id maps, mounts and
    /// the process are set up; the workload waits for [`start`](Self::start) (unless
    /// `opts.start`). On error nothing is left behind.
    pub fn create(
        root: &Path,
        id: &str,
        spec: &Spec,
        mut opts: CreateOptions,
    ) -> Result<Container, Error> {
        spec::validate(spec).map_err(|reason| Error::Config {
            file: opts
                .bundle
                .as_ref()
                .map(|b| b.join("config.json"))
                .unwrap_or_else(|| PathBuf::from("config.json")),
            reason: reason.to_string(),
        })?;
        let bundle = match &opts.bundle {
            Some(b) => std::path::absolute(b).map_err(Error::io("bundle path"))?,
            None => std::env::current_dir().map_err(Error::io("current directory"))?,
        };
        let rootfs = opts
            .rootfs
            .clone()
            .unwrap_or_else(|| spec::rootfs_path(spec, &bundle));
        let rootfs = std::fs::canonicalize(&rootfs)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| Error::RootfsMissing(rootfs.clone()))?;
        let dir = open_new(root, id)?;
        let mut record = Record {
            oci_version: spec.version().clone(),
            id: id.to_owned(),
            status: ContainerState::Creating,
            pid: 0,
            pid_start: 0,
            creator: std::process::id() as i32,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: state::now_rfc3339(),
            // Looked up (NSS) just before the record is first saved, while the id map
            // helpers run.
            owner: String::new(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: None,
            hooks: spec.hooks().clone(),
            process: spec.process().clone(),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        };
        let mut child: Option<(i32, OwnedFd)> = None;
        let result = create_in(
            &dir,
            &mut record,
            spec,
            &bundle,
            &rootfs,
            &mut opts,
            &mut child,
        );
        match result {
            Ok(()) => {
                let pidfd = child.map(|(_, fd)| fd);
                drop(dir);
                Ok(Container {
                    root: root.to_owned(),
                    record,
                    pidfd,
                    child: true,
                })
            }
            Err(e) => {
                if let Some((pid, pidfd)) = child {
                    let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                }
                if let Some(cg) = &record.cgroup {
                    let _ = cg.destroy();
                }
                let _ = dir.remove();
                Err(e)
            }
        }
    }

    /// Opens an existing container.
    pub fn load(root: &Path, id: &str) -> Result<Container, Error> {
        let dir = state::Dir::open(root, id, false)?;
        let record = dir.load()?.ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let (_, pidfd) = probe(&record, &dir.path);
        Ok(Container {
            root: root.to_owned(),
            record,
            pidfd,
            child: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }
    /// The init's pid in the host pid namespace.
    pub fn pid(&self) -> i32 {
        self.record.pid
    }
    /// A pidfd of the init (readable when it exits), for async callers.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }
    pub fn record(&self) -> &Record {
        &self.record
    }

    fn dir_path(&self) -> PathBuf {
        self.root.join(&self.record.id)
    }

    /// The live status.
    pub fn status(&self) -> ContainerState {
        probe(&self.record, &self.dir_path()).0
    }

    /// The OCI state (`warren state`).
    pub fn state(&self) -> State {
        State::of(&self.record, self.status())
    }

    /// Lets a created container exec its workload.
    pub fn start(&mut self) -> Result<(), Error> {
        let dir = state::Dir::open(&self.root, &self.record.id, true)?;
        let (status, pidfd) = probe(&self.record, &dir.path);
        if status != ContainerState::Created {
            return Err(Error::BadState {
                id: self.record.id.clone(),
                status,
                op: "start",
            });
        }
        let fifo_path = dir.file(state::FIFO);
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::io(format!("open {}", fifo_path.display()))(e.into()))?;
        let pidfd = pidfd.ok_or(Error::InitDied("start"))?;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: fifo.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll exec fifo")(e));
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let mut b = [0u8; 1];
                if nix::unistd::read(&fifo, &mut b).unwrap_or(0) == 1 {
                    break;
                }
            }
            if fds[1].revents != 0 {
                return Err(Error::InitDied("start"));
            }
        }
        let _ = std::fs::remove_file(&fifo_path);
        let state = serde_json::to_vec(&State::of(&self.record, ContainerState::Running))
            .unwrap_or_default();
        if let Some(h) = &self.record.hooks {
            hooks::run_all("poststart", h.poststart().as_ref(), &state)?;
        }
        self.pidfd = Some(pidfd);
        Ok(())
    }

    /// Sends `signal` to the init (created or running containers only).
    pub fn kill(&self, signal: i32) -> Result<(), Error> {
        let (status, pidfd) = probe(&self.record, &self.dir_path());
        match (status, pidfd) {
            (ContainerState::Created | ContainerState::Running, Some(fd)) => {
                crate::sys::pidfd_send_signal(fd.as_fd(), signal)
                    .map_err(Error::io(format!("signal container {}", self.record.id)))
            }
            (status, _) => Err(Error::BadState {
                id: self.record.id.clone(),
                status,
                op: "kill",
            }),
        }
    }

    /// Waits for the init to exit (only when this process created it).
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        match (&self.pidfd, self.child) {
            (Some(fd), true) => wait_pidfd(fd.as_fd()),
            _ => Err(Error::NotChild(self.record.id.clone())),
        }
    }

    /// Deletes the container: a running one only with `force` (it is killed).
    pub fn delete(self, force: bool) -> Result<(), Error> {
        let child = self.child;
        let pidfd = self.pidfd;
        delete_id(
            &self.root,
            &self.record.id,
            force,
            child.then_some(()).and(pidfd),
        )
    }

    /// Runs `process` inside the running container's namespaces (like `runc exec`).
    pub fn exec(&self, process: &Process, mut opts: ExecOptions) -> Result<ExecProcess, Error> {
        let status = self.status();
        if status != ContainerState::Running && status != ContainerState::Created {
            return Err(Error::BadState {
                id: self.record.id.clone(),
                status,
                op: "exec",
            });
        }
        exec_in(self, process, &mut opts)
    }

    /// Every container under `root` with its state (unreadable entries are skipped).
    pub fn list(root: &Path) -> Result<Vec<State>, Error> {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", root.display()))(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if state::check_id(&name).is_err() {
                continue;
            }
            let path = e.path().join(state::STATE_FILE);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            let (status, _) = probe(&record, &e.path());
            out.push(State::of(&record, status));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// The OCI state document (plus runc's rootfs/created/owner).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: ContainerState,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
}

impl State {
    fn of(r: &Record, status: ContainerState) -> State {
        State {
            oci_version: r.oci_version.clone(),
            id: r.id.clone(),
            status,
            pid: if status == ContainerState::Stopped {
                0
            } else {
                r.pid
            },
            bundle: r.bundle.clone(),
            rootfs: r.rootfs.clone(),
            created: r.created.clone(),
            owner: r.owner.clone(),
            annotations: r.annotations.clone(),
        }
    }
}

/// Parses a signal name (`TERM`, `SIGTERM`, `sigterm`) or number.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::UnknownSignal(s.to_owned()));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(rt) = name.strip_prefix("SIGRTMIN") {
        let base = libc::SIGRTMIN();
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.parse().map_err(|_| Error::UnknownSignal(s.to_owned()))?
        };
        return Ok(base + off);
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::UnknownSignal(s.to_owned()))
}

fn wait_pidfd(fd: BorrowedFd<'_>) -> Result<ExitStatus, Error> {
    loop {
        // SAFETY: an all-zero siginfo is a valid out buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd and out pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("wait for container process")(e));
        }
        // SAFETY: waitid filled a SIGCHLD siginfo.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        let raw = match code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        return Ok(ExitStatus::from_raw(raw));
    }
}

/// The shell-style exit code of a status: the code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Creates the state directory, reclaiming a stale one left by a runtime that died
/// mid-create.
fn open_new(root: &Path, id: &str) -> Result<state::Dir, Error> {
    match state::Dir::create(root, id) {
        Err(Error::Exists(_)) => {
            let Some(dir) = state::Dir::try_open(root, id)? else {
                return Err(Error::Exists(id.to_owned()));
            };
            let record = dir.load()?;
            if record
                .as_ref()
                .is_some_and(|r| r.status != ContainerState::Creating)
            {
                return Err(Error::Exists(id.to_owned()));
            }
            cleanup(dir, record.as_ref(), None)?;
            state::Dir::create(root, id)
        }
        other => other,
    }
}

/// Kills what is left of a container and removes its cgroup and state directory.
fn cleanup(dir: state::Dir, record: Option<&Record>, pidfd: Option<OwnedFd>) -> Result<(), Error> {
    if let Some(r) = record {
        let (status, probed) = probe(r, &dir.path);
        if let Some(fd) = pidfd.or(probed) {
            if status != ContainerState::Stopped {
                let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Wait (bounded) for the exit so the cgroup empties.
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 5000) };
        }
        if let Some(cg) = &r.cgroup {
            cg.destroy()?;
        }
        if r.status != ContainerState::Creating {
            if let Some(h) = &r.hooks {
                let state =
                    serde_json::to_vec(&State::of(r, ContainerState::Stopped)).unwrap_or_default();
                // Poststop hook failures are logged, not fatal (the spec says so).
                if let Err(e) = hooks::run_all("poststop", h.poststop().as_ref(), &state) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
    dir.remove()
}

fn delete_id(root: &Path, id: &str, force: bool, our_child: Option<OwnedFd>) -> Result<(), Error> {
    let dir = if force {
        state::Dir::open(root, id, true)?
    } else {
        lock_briefly(root, id)?
    };
    let record = dir.load()?;
    if let Some(r) = &record {
        let (status, _) = probe(r, &dir.path);
        if status == ContainerState::Running && !force {
            return Err(Error::BadState {
                id: id.to_owned(),
                status,
                op: "delete (use --force)",
            });
        }
        if status == ContainerState::Creating
            && !force
            && r.creator > 0
            && state::proc_start(r.creator).is_some()
        {
            return Err(Error::BadState {
                id: id.to_owned(),
                status,
                op: "delete",
            });
        }
    }
    // Reap our own child so no zombie is left.
    let reap = our_child.as_ref().map(|fd| fd.as_raw_fd());
    cleanup(dir, record.as_ref(), None)?;
    if let Some(fd) = reap {
        // SAFETY: an all-zero siginfo is a valid out buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd; WNOHANG never blocks.
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
    }
    Ok(())
}

/// Locks a container directory, waiting up to a second: a child cloned by another thread
/// may hold a copy of the lock for the instant before it closes foreign fds, while a
/// create in progress holds it for longer.
fn lock_briefly(root: &Path, id: &str) -> Result<state::Dir, Error> {
    for _ in 0..200 {
        if let Some(d) = state::Dir::try_open(root, id)? {
            return Ok(d);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(Error::BadState {
        id: id.to_owned(),
        status: ContainerState::Creating,
        op: "delete",
    })
}

/// Deletes a container directory that has no readable record (a runtime killed before it
/// wrote one); without `force` only when no create is still holding it.
pub fn delete_stale(root: &Path, id: &str, force: bool) -> Result<(), Error> {
    let dir = if force {
        state::Dir::open(root, id, true)?
    } else {
        lock_briefly(root, id)?
    };
    let record = dir.load()?;
    cleanup(dir, record.as_ref(), None)
}

/// Namespace type name (as in /proc/PID/ns) and clone flag.
fn ns_info(t: LinuxNamespaceType) -> (&'static str, libc::c_int) {
    match t {
        LinuxNamespaceType::Mount => ("mnt", libc::CLONE_NEWNS),
        LinuxNamespaceType::Cgroup => ("cgroup", libc::CLONE_NEWCGROUP),
        LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
        LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
        LinuxNamespaceType::User => ("user", libc::CLONE_NEWUSER),
        LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
        LinuxNamespaceType::Network => ("net", libc::CLONE_NEWNET),
        LinuxNamespaceType::Time => ("time", libc::CLONE_NEWTIME),
    }
}

fn open_ns(path: &Path, field: &str) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::config(field, format!("{}: {e}", path.display())))
}

/// Like runc: an AppArmor profile warren cannot apply is an error (here AppArmor is
/// never applied), an SELinux label is ignored where SELinux is disabled.
fn check_lsm(p: &Process) -> Result<(), Error> {
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        let why = if enabled {
            "warren cannot apply AppArmor profiles"
        } else {
            "AppArmor is not enabled on this host"
        };
        return Err(Error::config(
            "process.apparmorProfile",
            format!("{profile:?}: {why}"),
        ));
    }
    if p.selinux_label().as_deref().is_some_and(|s| !s.is_empty())
        && Path::new("/sys/fs/selinux/enforce").exists()
    {
        return Err(Error::config(
            "process.selinuxLabel",
            "warren cannot apply SELinux labels",
        ));
    }
    Ok(())
}

/// The process part of the plan: argv, env, identity, capabilities.
fn process_plan(p: &Process, setgroups: bool) -> Result<init::Process, Error> {
    check_lsm(p)?;
    let cs = |s: &str, field: &str| {
        CString::new(s).map_err(|_| Error::config(field, "contains a NUL byte"))
    };
    let args = p.args().clone().unwrap_or_default();
    let argv = args
        .iter()
        .map(|a| cs(a, "process.args"))
        .collect::<Result<Vec<_>, _>>()?;
    let env = p.env().clone().unwrap_or_default();
    let envp = env
        .iter()
        .map(|e| cs(e, "process.env"))
        .collect::<Result<Vec<_>, _>>()?;
    let prog = args.first().cloned().unwrap_or_default();
    let candidates = if prog.contains('/') {
        vec![cs(&prog, "process.args")?]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| {
                cs(
                    &format!("{}/{prog}", d.trim_end_matches('/')),
                    "process.args",
                )
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let caps = match p.capabilities() {
        Some(c) => caps::CapSets::from_spec(c).map_err(|r| Error::Config {
            file: "config.json".into(),
            reason: r.to_string(),
        })?,
        None => caps::CapSets::none(),
    };
    let user = p.user();
    Ok(init::Process {
        argv: CArray::new(argv),
        envp: CArray::new(envp),
        candidates,
        cwd: CString::new(p.cwd().as_os_str().as_encoded_bytes())
            .map_err(|_| Error::config("process.cwd", "contains a NUL byte"))?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        setgroups,
        umask: user.umask(),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        terminal: p.terminal().unwrap_or(false),
        console_size: p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16)),
        init: false,
    })
}

/// startContainer hooks as C strings for the child (they run from the container's root).
fn start_hooks(
    hooks: Option<&oci_spec::runtime::Hooks>,
) -> Result<Vec<(CString, CArray, CArray)>, Error> {
    let mut out = Vec::new();
    for (i, h) in hooks
        .and_then(|h| h.start_container().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("hooks.startContainer[{i}]");
        let cs =
            |s: &str| CString::new(s).map_err(|_| Error::config(&field, "contains a NUL byte"));
        let path = cs(&h.path().to_string_lossy())?;
        let mut argv = h.args().clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(h.path().to_string_lossy().into_owned());
        }
        let argv = argv.iter().map(|a| cs(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = h
            .env()
            .iter()
            .flatten()
            .map(|e| cs(e))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((path, CArray::new(argv), CArray::new(envp)));
    }
    Ok(out)
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Sets the process's rlimits and oom_score_adj from the parent (which may raise them
/// where the child, in its user namespace, could not).
fn apply_limits(pid: i32, p: &Process) -> Result<(), Error> {
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: valid rlimit pointer; NULL old value.
        if unsafe { libc::prlimit(pid, rlimit_resource(r.typ()), &lim, std::ptr::null_mut()) } < 0 {
            return Err(Error::config(
                &format!("process.rlimits[{i}]"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(|e| Error::config("process.oomScoreAdj", e))?;
    }
    Ok(())
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair")(e.into()))
}

/// The pty master's destination when `plan` asks for a terminal: the caller's fd (taken),
/// else a connection to the console socket.
fn console_for(
    plan: &init::Process,
    fd: &mut Option<OwnedFd>,
    socket: Option<&Path>,
) -> Result<Option<OwnedFd>, Error> {
    match (plan.terminal, fd.take(), socket) {
        (false, _, _) => Ok(None),
        (true, Some(fd), _) => Ok(Some(fd)),
        (true, None, Some(path)) => Ok(Some(connect_console(path)?)),
        (true, None, None) => Err(Error::config(
            "process.terminal",
            "a terminal needs --console-socket",
        )),
    }
}

fn connect_console(path: &Path) -> Result<OwnedFd, Error> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(Error::io(format!(
        "connect console socket {}",
        path.display()
    )))?;
    Ok(OwnedFd::from(s))
}

/// Clones the child running `init` (with `flags` new namespaces); returns its pid and
/// pidfd, and the parent's end of the sync socket.
fn spawn(init: &mut Init, flags: libc::c_int) -> Result<(i32, OwnedFd, OwnedFd), Error> {
    let (parent_end, child_end) = seqpacket_pair()?;
    init.sync = child_end.as_raw_fd();
    init.parent = std::process::id() as i32;
    let mut keep: Vec<RawFd> = vec![0, 1, 2, init.sync];
    keep.extend(3..3 + init.preserve_fds);
    keep.extend(init.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    keep.extend(
        init.fifo
            .iter()
            .flat_map(|(a, b)| [a.as_raw_fd(), b.as_raw_fd()]),
    );
    keep.extend(init.stdio.iter().flatten().copied());
    keep.extend(init.console_socket);
    keep.sort_unstable();
    keep.dedup();
    init.keep = keep;
    // SAFETY: the child only runs `Init::run`, which is async-signal-safe: it uses data
    // prepared here and never returns.
    let (pid, pidfd) =
        unsafe { crate::sys::clone3_fork(flags as u64) }.map_err(Error::io("clone3"))?;
    if pid == 0 {
        init.run();
    }
    drop(child_end);
    let pidfd = pidfd.ok_or_else(|| Error::io("clone3")(std::io::Error::other("no pidfd")))?;
    Ok((pid, pidfd, parent_end))
}

fn describe(f: Fail, plan: Option<&rootfs::Plan>, init: &Init) -> Error {
    let i = f.index as usize;
    let what = match f.step {
        Step::Mount => plan
            .and_then(|p| p.descriptions.get(i).cloned())
            .unwrap_or_else(|| "mount".into()),
        Step::Device => format!(
            "create device {}",
            plan.map(|p| p.device_path(i)).unwrap_or_default()
        ),
        Step::Masked => format!(
            "mask {}",
            plan.map(|p| p.masked_path(i)).unwrap_or_default()
        ),
        Step::Readonly => format!(
            "make {} read-only",
            plan.map(|p| p.readonly_path(i)).unwrap_or_default()
        ),
        Step::Sysctl => format!(
            "set sysctl {}",
            plan.map(|p| p.sysctl_path(i)).unwrap_or_default()
        ),
        Step::Exec => format!(
            "exec {:?}",
            init.process
                .candidates
                .first()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        Step::Cwd => format!("chdir to process.cwd {:?}", init.process.cwd),
        Step::Setuid => format!("set uid {}", f.index),
        Step::Setgid => format!("set gid {}", f.index),
        Step::Groups if f.index == 1 => {
            "process.user.additionalGids need setgroups, denied in this user namespace".into()
        }
        Step::Setns => format!("join namespace {}", i),
        Step::Loopback => "bring up lo in the new network namespace".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    Error::Init {
        what,
        errno: nix::errno::Errno::from_raw(f.errno),
    }
}

/// Waits for the child's next message, mapping a failure or an EOF to an error.
fn expect(
    sock: &OwnedFd,
    plan: Option<&rootfs::Plan>,
    init: &Init,
    during: &'static str,
) -> Result<Option<Msg>, Error> {
    match protocol::recv(sock.as_raw_fd()) {
        Ok(Some(m)) if m.tag == tag::FAIL => Err(describe(Fail::from_msg(m), plan, init)),
        Ok(m) => Ok(m),
        Err(_) => Err(Error::InitDied(during)),
    }
}

fn send(sock: &OwnedFd, t: u32) -> Result<(), Error> {
    protocol::send(
        sock.as_raw_fd(),
        Msg {
            tag: t,
            ..Default::default()
        },
    )
    .map_err(|_| Error::InitDied("create"))
}

#[allow(clippy::too_many_arguments)]
fn create_in(
    dir: &state::Dir,
    record: &mut Record,
    spec: &Spec,
    bundle: &Path,
    rootfs_path: &Path,
    opts: &mut CreateOptions,
    child: &mut Option<(i32, OwnedFd)>,
) -> Result<(), Error> {
    let linux = spec.linux().clone().unwrap_or_default();
    let process = spec.process().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if !crate::dirs::is_root()
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        // Unprivileged, nothing works without one: add it rather than fail.
        let mut user = oci_spec::runtime::LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        namespaces.push(user);
    }
    let mut flags = 0;
    let mut join = Vec::new();
    let mut user_joined = false;
    let mut pid_joined = false;
    for (i, ns) in namespaces.iter().enumerate() {
        let (_, flag) = ns_info(ns.typ());
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                if ns.typ() == LinuxNamespaceType::Time {
                    // setns() of it only moves later children, like pid (below): not yet.
                    return Err(Error::config(
                        &format!("linux.namespaces[{i}].path"),
                        "joining an existing time namespace is not supported yet",
                    ));
                }
                let fd = open_ns(p, &format!("linux.namespaces[{i}].path"))?;
                if ns.typ() == LinuxNamespaceType::User {
                    user_joined = true;
                    join.insert(0, (fd, flag));
                } else {
                    // setns() of a pid namespace only moves later children: the child
                    // forks once more after joining, and the grandchild is the init.
                    pid_joined |= ns.typ() == LinuxNamespaceType::Pid;
                    join.push((fd, flag));
                }
            }
            _ => flags |= flag,
        }
    }
    let new_userns = flags & libc::CLONE_NEWUSER != 0;
    // The cgroup namespace is made by the child once it is in its cgroup (rootfs::Plan),
    // so that it is rooted there and shows nothing of the caller's.
    let new_cgroupns = flags & libc::CLONE_NEWCGROUP != 0;
    flags &= !libc::CLONE_NEWCGROUP;
    if flags & libc::CLONE_NEWNS == 0 {
        return Err(Error::config(
            "linux.namespaces",
            "warren needs a new mount namespace (type \"mount\")",
        ));
    }
    let (clone_flags, unshare) = if user_joined {
        if flags & libc::CLONE_NEWPID != 0 {
            return Err(Error::config(
                "linux.namespaces",
                "a new pid namespace together with a user namespace joined by path is not supported",
            ));
        }
        (0, flags)
    } else {
        (flags, 0)
    };
    // With a new user namespace, the child makes these itself while the maps are written.
    let early_unshare = if new_userns && !user_joined {
        flags & (libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
    } else {
        0
    };
    let clone_flags = clone_flags & !early_unshare;
    let maps = if new_userns {
        let (maps, warning) = userns::Maps::plan(
            userns::Mapping::from_spec(linux.uid_mappings().as_deref().unwrap_or(&[])),
            userns::Mapping::from_spec(linux.gid_mappings().as_deref().unwrap_or(&[])),
        )?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        Some(maps)
    } else {
        None
    };
    // Our clone children show the runtime binary as /proc/PID/exe: no container process
    // may be able to write it (a user namespace joined by path has maps we cannot see).
    let uid_ranges: Option<Vec<(u32, u32)>> = maps
        .as_ref()
        .map(|m| m.uid.iter().map(|r| (r.host, r.size)).collect());
    exe::check(uid_ranges.as_deref())?;
    let cgroups_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let own_pid_namespace = flags & libc::CLONE_NEWPID != 0;
    // Made before the plan, which mounts it (and recorded at once, so that a runtime
    // killed now leaves nothing a later create or delete cannot find).
    let cgroup_mount = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")));
    if cgroup::needed(
        linux.resources().as_ref(),
        cgroups_path.as_deref(),
        own_pid_namespace,
        new_cgroupns || cgroup_mount,
    ) {
        record.cgroup = Some(cgroup::Cgroup::create(
            &record.id,
            linux.resources().as_ref(),
            cgroups_path.as_deref(),
        )?);
        dir.save(record)?;
    }
    let cgroups = rootfs::Cgroups {
        new_ns: new_cgroupns,
        view: match &record.cgroup {
            Some(cg) if cgroup_mount => cg.mount_view()?,
            _ => Default::default(),
        },
    };
    let plan = rootfs::Plan::new(
        spec,
        rootfs_path,
        bundle,
        new_userns || user_joined,
        &cgroups,
    )
    .map_err(|e| Error::Config {
        file: bundle.join("config.json"),
        reason: e.to_string(),
    })?;
    let setgroups = !maps.as_ref().is_some_and(|m| m.deny_setgroups);
    let mut proc_plan = process_plan(&process, setgroups)?;
    proc_plan.init = opts.init;
    let seccomp = match linux.seccomp() {
        Some(profile) => Some(seccomp::compile(profile)?),
        None => None,
    };
    let console = console_for(
        &proc_plan,
        &mut opts.console_fd,
        opts.console_socket.as_deref(),
    )?;
    let fifo = if opts.start {
        None
    } else {
        let path = dir.file(state::FIFO);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| Error::io(format!("mkfifo {}", path.display()))(e.into()))?;
        // Writable by the container's root whatever the umask and id mapping.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(Error::io(format!("chmod {}", path.display())))?;
        let o = |p: &Path, f| {
            nix::fcntl::open(
                p,
                f | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::io(format!("open {}", p.display()))(e.into()))
        };
        Some((
            o(&path, nix::fcntl::OFlag::O_PATH)?,
            o(
                Path::new("/proc"),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            )?,
        ))
    };
    let uts = flags & libc::CLONE_NEWUTS != 0
        || namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Uts);
    let hostname = match spec.hostname() {
        Some(h) if !h.is_empty() => {
            if !uts {
                return Err(Error::config("hostname", "needs a uts namespace"));
            }
            Some(
                CString::new(h.as_str())
                    .map_err(|_| Error::config("hostname", "contains a NUL byte"))?,
            )
        }
        _ => None,
    };
    let domainname = match spec.domainname() {
        Some(h) if !h.is_empty() && uts => Some(
            CString::new(h.as_str())
                .map_err(|_| Error::config("domainname", "contains a NUL byte"))?,
        ),
        _ => None,
    };
    let hooks = spec.hooks().as_ref();
    let has_early_hooks = hooks.is_some_and(|h| {
        h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || {
                #[allow(deprecated)]
                h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            }
    });

    let mut init = Init {
        join,
        unshare,
        early_unshare,
        new_userns,
        loopback: flags & libc::CLONE_NEWNET != 0,
        hostname,
        domainname,
        rootfs: Some(plan),
        process: proc_plan,
        parent: 0,
        sync: -1,
        fifo,
        seccomp,
        stdio: [0, 1, 2].map(|i| opts.stdio[i].as_ref().map(|f| f.as_raw_fd())),
        console_socket: console.as_ref().map(|f| f.as_raw_fd()),
        preserve_fds: opts.preserve_fds as i32,
        hooks: has_early_hooks,
        fork_after_join: pid_joined,
        exec: false,
        start_hooks: start_hooks(hooks)?,
        keep: Vec::new(),
    };
    let (pid, pidfd, sock) = spawn(&mut init, clone_flags)?;
    *child = Some((pid, pidfd));
    // The child holds its own copies now.
    opts.stdio = Default::default();
    drop(console);
    let plan = init.rootfs.as_ref();
    // Until GO the child can do nothing but exit (and dies with us), and a directory
    // without a record is reclaimed as stale: the record is needed before GO only to
    // name a cgroup (saved above), else it is written while the child mounts and we
    // would wait anyway.
    let writing = match &maps {
        Some(m) => Some(m.start(pid)?),
        None => None,
    };
    // The child makes its cgroup namespace after GO: it must be in its cgroup by then.
    let joined = new_cgroupns && record.cgroup.is_some();
    if joined {
        if let Some(cg) = &record.cgroup {
            cg.add_pid(pid)?;
        }
    }
    if let Some(w) = writing {
        w.finish()?;
    }
    // Before GO the child runs nothing and still has our credentials, so we may set its
    // limits (a child made in a new user namespace could not raise a hard limit itself:
    // that needs CAP_SYS_RESOURCE in the initial one); a forked init inherits them.
    apply_limits(pid, &process)?;
    send(&sock, tag::GO)?;
    let pid = if pid_joined {
        // The child joined the pid namespace and forked the init (our child too, by
        // CLONE_PARENT), which goes on with the setup; it reports its pid and exits.
        let init_pid = match expect(&sock, plan, &init, "create")? {
            Some(m) if m.tag == tag::PID => m.a,
            _ => return Err(Error::InitDied("create")),
        };
        let init_fd = crate::sys::pidfd_open(init_pid).map_err(Error::io("pidfd_open"))?;
        if let Some((_, mid)) = child.replace((init_pid, init_fd)) {
            let _ = wait_pidfd(mid.as_fd());
        }
        init_pid
    } else {
        pid
    };
    // While the child sets up its mounts (it runs nothing of the workload before ACK):
    // joining a v1 cgroup waits for an RCU grace period, milliseconds worth overlapping.
    if let Some(cg) = record.cgroup.as_ref().filter(|_| !joined) {
        cg.add_pid(pid)?;
    }
    let (start, _) = state::proc_start(pid).ok_or(Error::InitDied("create"))?;
    record.pid = pid;
    record.pid_start = start;
    record.owner = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    dir.save(record)?;
    loop {
        match expect(&sock, plan, &init, "create")? {
            Some(m) if m.tag == tag::HOOKS => {
                let st = serde_json::to_vec(&State::of(record, ContainerState::Creating))
                    .unwrap_or_default();
                if let Some(h) = hooks {
                    #[allow(deprecated)]
                    hooks::run_all("prestart", h.prestart().as_ref(), &st)?;
                    hooks::run_all("createRuntime", h.create_runtime().as_ref(), &st)?;
                    hooks::run_all("createContainer", h.create_container().as_ref(), &st)?;
                }
                send(&sock, tag::HOOKS_DONE)?;
            }
            Some(m) if m.tag == tag::READY => break,
            _ => return Err(Error::InitDied("create")),
        }
    }
    record.status = ContainerState::Created;
    dir.save(record)?;
    if let Some(p) = &opts.pid_file {
        crate::atomic::write(p, pid.to_string().as_bytes())
            .map_err(Error::io(format!("write {}", p.display())))?;
    }
    if let Err(e) = send(&sock, tag::ACK) {
        // The child sets its identity while we record: a failure there is waiting.
        expect(&sock, plan, &init, "create")?;
        return Err(e);
    }
    if !opts.start {
        match expect(&sock, plan, &init, "create")? {
            Some(m) if m.tag == tag::DETACHED => {}
            _ => return Err(Error::InitDied("create")),
        }
    }
    if opts.start {
        // EOF: the exec happened (the socket is close-on-exec); a message: it failed.
        if let Some(m) = expect(&sock, plan, &init, "exec")? {
            return Err(Error::Init {
                what: format!("unexpected message {}", m.tag),
                errno: nix::errno::Errno::EPROTO,
            });
        }
        if let Some(h) = hooks {
            let st =
                serde_json::to_vec(&State::of(record, ContainerState::Running)).unwrap_or_default();
            hooks::run_all("poststart", h.poststart().as_ref(), &st)?;
        }
    }
    Ok(())
}

fn exec_in(c: &Container, process: &Process, opts: &mut ExecOptions) -> Result<ExecProcess, Error> {
    let pid = c.record.pid;
    let mut join = Vec::new();
    let mut user = false;
    for t in [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Time,
    ] {
        let (name, flag) = ns_info(t);
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        if let (Ok(a), Ok(b)) = (theirs, ours) {
            use std::os::unix::fs::MetadataExt;
            if a.ino() != b.ino() || a.dev() != b.dev() {
                let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
                join.push((open_ns(&path, "exec namespace")?, flag));
                user |= t == LinuxNamespaceType::User;
            }
        }
    }
    let uid_ranges = if user {
        Some(uid_ranges_of(pid)?)
    } else {
        None
    };
    exe::check(uid_ranges.as_deref())?;
    let setgroups = std::fs::read_to_string(format!("/proc/{pid}/setgroups"))
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    let proc_plan = process_plan(process, setgroups)?;
    // The container's filter, as its init has it (`process` has no profile of its own).
    let seccomp = match &c.record.seccomp {
        Some(profile) => Some(seccomp::compile(profile)?),
        None => None,
    };
    let cgroups = init_cgroups(pid)?;
    let console = console_for(
        &proc_plan,
        &mut opts.console_fd,
        opts.console_socket.as_deref(),
    )?;
    let mut init = Init {
        join,
        unshare: 0,
        early_unshare: 0,
        new_userns: false,
        loopback: false,
        hostname: None,
        domainname: None,
        rootfs: None,
        process: proc_plan,
        parent: 0,
        sync: -1,
        fifo: None,
        seccomp,
        stdio: [0, 1, 2].map(|i| opts.stdio[i].as_ref().map(|f| f.as_raw_fd())),
        console_socket: console.as_ref().map(|f| f.as_raw_fd()),
        preserve_fds: opts.preserve_fds as i32,
        hooks: false,
        fork_after_join: true,
        exec: true,
        start_hooks: Vec::new(),
        keep: Vec::new(),
    };
    let (mid, mid_fd, sock) = spawn(&mut init, 0)?;
    let reap_mid = || {
        let _ = crate::sys::pidfd_send_signal(mid_fd.as_fd(), libc::SIGKILL);
        let _ = wait_pidfd(mid_fd.as_fd());
    };
    // Until GO the child waits in our namespaces with our credentials: it joins the
    // container's cgroups and gets its limits now, and the process it forks in the
    // container inherits both before it can run anything.
    let prepared = join_cgroups(&cgroups, mid, c.record.cgroup.is_some())
        .and_then(|()| apply_limits(mid, process))
        .and_then(|()| send(&sock, tag::GO));
    if let Err(e) = prepared {
        reap_mid();
        return Err(e);
    }
    let target = match expect(&sock, None, &init, "exec") {
        Ok(Some(m)) if m.tag == tag::PID => m.a,
        Ok(_) => {
            reap_mid();
            return Err(Error::InitDied("exec"));
        }
        Err(e) => {
            reap_mid();
            return Err(e);
        }
    };
    let _ = wait_pidfd(mid_fd.as_fd());
    let pidfd = crate::sys::pidfd_open(target).map_err(Error::io("pidfd_open"))?;
    if let Some(p) = &opts.pid_file {
        crate::atomic::write(p, target.to_string().as_bytes())
            .map_err(Error::io(format!("write {}", p.display())))?;
    }
    // The grandchild waits for nothing more; EOF when it execs.
    if let Some(m) = expect(&sock, None, &init, "exec")? {
        let _ = m;
    }
    drop(console);
    Ok(ExecProcess { pid: target, pidfd })
}

/// The host uid ranges `(first, count)` mapped in the user namespace of `pid`.
fn uid_ranges_of(pid: i32) -> Result<Vec<(u32, u32)>, Error> {
    let path = format!("/proc/{pid}/uid_map");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("read {path}")))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[1], f[2]))
        })
        .collect())
}

/// The `cgroup.procs` files of the cgroups `pid` is in, one per hierarchy (v1
/// controllers, named v1 hierarchies, the v2 tree), from `/proc/PID/cgroup` and where
/// this process sees each hierarchy mounted. Hierarchies this process shares with `pid`
/// are left out (nothing to join).
fn init_cgroups(pid: i32) -> Result<Vec<PathBuf>, Error> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(Error::io(format!("read {p}")));
    let theirs = read(&format!("/proc/{pid}/cgroup"))?;
    let ours = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in theirs.lines() {
        if ours.lines().any(|l| l == line) {
            continue;
        }
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if path.split('/').any(|c| c == "..") {
            return Err(Error::io(format!("cgroup of container init {pid}"))(
                std::io::Error::other(format!("{line:?} is outside this cgroup namespace")),
            ));
        }
        let Some(dir) = cgroup_mount(&mountinfo, controllers, path) else {
            // A hierarchy not mounted here (e.g. a v1 one on a v2 host): nothing to write.
            continue;
        };
        out.push(dir.join("cgroup.procs"));
    }
    Ok(out)
}

/// Where the cgroup `path` of the hierarchy with `controllers` (`""`: v2) is, from a
/// mount of that hierarchy in `mountinfo` whose root contains it.
fn cgroup_mount(mountinfo: &str, controllers: &str, path: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point, fstype, options) = (left[3], left[4], right[0], right[2]);
        let matches = if controllers.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && {
                let opts: Vec<&str> = options.split(',').collect();
                controllers.split(',').all(|c| opts.contains(&c))
            }
        };
        if !matches {
            continue;
        }
        let rest = if root == "/" {
            path.trim_start_matches('/')
        } else {
            match path.strip_prefix(root) {
                Some(r) if r.is_empty() || r.starts_with('/') => r.trim_start_matches('/'),
                _ => continue,
            }
        };
        return Some(Path::new(&unescape_mountinfo(mount_point)).join(rest));
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves `pid` into each cgroup of `procs`. Rootless without a cgroup of its own (no
/// limits to escape) a hierarchy we may not write is left alone, like runc does.
fn join_cgroups(procs: &[PathBuf], pid: i32, managed: bool) -> Result<(), Error> {
    for path in procs {
        if let Err(e) = std::fs::write(path, pid.to_string()) {
            let denied = matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            );
            if denied && !managed && !crate::dirs::is_root() {
                tracing::debug!("exec: cannot join {}: {e}", path.display());
                continue;
            }
            return Err(Error::io(format!("join {}", path.display()))(e));
        }
    }
    Ok(())
}

pub mod cgroup;
pub mod seccomp;
