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

pub(crate) mod caps;
mod child;
mod clock;
mod control;
mod create;
mod delete;
mod error;
pub mod exe;
mod exec;
pub mod exit;
pub(crate) mod hooks;
pub(crate) mod init;
pub mod monitor;
mod namespaces;
mod process;
mod protocol;
pub(crate) mod rootfs;
mod spawn;
pub mod spec;
pub mod state;
pub mod userns;

pub use create::CreateOptions;
pub use delete::delete_stale;
pub use error::{ConfigError, Error};
pub use exec::ExecOptions;
pub use exit::Exit;
pub use process::{ExecProcess, exit_code, parse_signal};
pub use rootfs::{RootOverlay, Upper};
pub use state::{Record, State};

use oci_spec::runtime::{ContainerState, Process, Spec};
use process::wait_pidfd;
use state::probe;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

/// A container in `ROOT/ID`.
#[derive(Debug)]
pub struct Container {
    root: PathBuf,
    record: Record,
    /// Present when the init is alive (or a zombie we may reap).
    pidfd: Option<OwnedFd>,
    /// The init is our child: `wait` can collect its status.
    child: bool,
    /// Our child's status was collected (else dropping us reaps it in the background).
    reaped: AtomicBool,
}

impl Container {
    /// Creates container `id` under `root` from `spec`: namespaces, id maps, mounts and
    /// the process are set up; the workload waits for [`start`](Self::start) (unless
    /// `opts.start`). On error nothing is left behind.
    pub fn create(
        root: &Path,
        id: &str,
        spec: &Spec,
        opts: CreateOptions,
    ) -> Result<Container, Error> {
        let (record, pidfd) = create::create(root, id, spec, opts)?;
        Ok(Container {
            root: root.to_owned(),
            record,
            pidfd,
            child: true,
            reaped: AtomicBool::new(false),
        })
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
            reaped: AtomicBool::new(false),
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

    /// The OCI state (`warren state`): `paused` when its cgroup is frozen.
    pub fn state(&self) -> State {
        let status = self.status();
        let mut state = State::of(&self.record, status);
        state.paused = status == ContainerState::Running && self.paused().unwrap_or(false);
        state
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
            hooks::run_warn("poststart", h.poststart().as_ref(), &state);
        }
        self.pidfd = Some(pidfd);
        Ok(())
    }

    /// Sends `signal` to the init (created or running containers only).
    pub fn kill(&self, signal: i32) -> Result<(), Error> {
        let (status, pidfd) = probe(&self.record, &self.dir_path());
        match (status, pidfd) {
            (ContainerState::Created | ContainerState::Running, Some(fd)) => {
                // A frozen process dies only once thawed (runc thaws for SIGKILL too).
                // Asked before the signal: one that was not frozen may be gone right
                // after, its cgroup removed by the `run` that waited for it.
                let thaw = signal == libc::SIGKILL && self.paused()?;
                crate::sys::pidfd_send_signal(fd.as_fd(), signal)
                    .map_err(Error::io(format!("signal container {}", self.record.id)))?;
                if thaw {
                    self.resume()?;
                }
                Ok(())
            }
            (status, _) => Err(Error::BadState {
                id: self.record.id.clone(),
                status,
                op: "kill",
            }),
        }
    }

    /// Waits for the init to exit; its status when it is our child (the exit facts are
    /// recorded), else what its monitor or creator recorded ([`Container::wait_exit`]).
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        self.wait_and_record(true)
    }

    /// [`Container::wait`] for a caller that deletes the container next (`runc run`):
    /// the exit facts of our child are not recorded, as nothing would read them.
    pub fn wait_to_delete(&self) -> Result<ExitStatus, Error> {
        self.wait_and_record(false)
    }

    fn wait_and_record(&self, record: bool) -> Result<ExitStatus, Error> {
        match (&self.pidfd, self.child) {
            (Some(fd), true) => {
                let status = wait_pidfd(fd.as_fd())?;
                self.reaped.store(true, Ordering::SeqCst);
                if !record {
                    return Ok(status);
                }
                let facts = Exit::of(status, self.record.cgroup.as_ref());
                let (pid, start) = (self.record.pid, self.record.pid_start);
                // The status is collected: a failure to record it does not lose it.
                if let Err(e) = state::record_exit(&self.root, &self.record.id, pid, start, &facts)
                {
                    tracing::warn!(
                        "record the exit of {}: {}",
                        self.id(),
                        crate::error_line(&e)
                    );
                }
                Ok(status)
            }
            _ => Ok(self.wait_exit()?.exit_status()),
        }
    }

    /// Waits for the init to exit and returns its exit facts, whoever its parent is: our
    /// child is reaped; another's (a monitor's, a creator's) is watched through its
    /// pidfd, then the facts its parent records are read. Facts nobody recorded (a
    /// creator that died without a monitor) come back empty (`Exit::default()`).
    pub fn wait_exit(&self) -> Result<Exit, Error> {
        if self.child && self.pidfd.is_some() {
            self.wait()?;
            return Ok(self.exit()?.unwrap_or_default());
        }
        if let Some(fd) = &self.pidfd {
            wait_readable(fd.as_fd(), -1)?;
        }
        // The parent records the facts right after it reaps: wait for it (a monitor
        // exits then) or, bounded, for the facts to appear.
        let creator = self.record.creator;
        if creator > 0 && creator != std::process::id() as i32 {
            if monitor::is_monitor(creator) {
                if let Ok(fd) = crate::sys::pidfd_open(creator) {
                    wait_readable(fd.as_fd(), 10_000)?;
                }
            } else if state::proc_start(creator).is_some() {
                for _ in 0..100 {
                    if self.exit()?.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        Ok(self.exit()?.unwrap_or_default())
    }

    /// The recorded exit facts (read afresh), once someone collected the status.
    pub fn exit(&self) -> Result<Option<Exit>, Error> {
        match state::Dir::open(&self.root, &self.record.id, false) {
            Ok(dir) => Ok(dir.load()?.and_then(|r| r.exit)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the init is this process's child (its status is ours to collect).
    pub fn is_child(&self) -> bool {
        self.child
    }

    /// Deletes the container: a running one only with `force` (it is killed).
    pub fn delete(mut self, force: bool) -> Result<(), Error> {
        let child = self.child;
        let pidfd = self.pidfd.take();
        // `delete_id` reaps our child.
        self.reaped.store(true, Ordering::SeqCst);
        delete::delete_id(
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
        exec::exec_in(&self.record, process, &mut opts)
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
            let mut state = State::of(&record, status);
            if status == ContainerState::Running {
                let c = Container {
                    root: root.to_owned(),
                    record,
                    pidfd: None,
                    child: false,
                    reaped: AtomicBool::new(false),
                };
                state.paused = c.paused().unwrap_or(false);
            }
            out.push(state);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// Polls `fd` readable (`timeout_ms`, -1: forever): a pidfd is once its process exited,
/// a child or not.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> Result<(), Error> {
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, timeout_ms) } >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io("poll a pidfd")(e));
        }
    }
}

/// A child dropped before its status was collected is reaped by a thread that waits for
/// it and records its exit facts: no zombie is left whatever the caller does.
impl Drop for Container {
    fn drop(&mut self) {
        if !self.child || self.reaped.load(Ordering::SeqCst) {
            return;
        }
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        let orphan = Container {
            root: self.root.clone(),
            record: self.record.clone(),
            pidfd: Some(pidfd),
            child: true,
            // Its own drop spawns nothing.
            reaped: AtomicBool::new(true),
        };
        let spawned = std::thread::Builder::new()
            .name("warren-reaper".into())
            .stack_size(1 << 20)
            .spawn(move || {
                if let Err(e) = orphan.wait() {
                    tracing::warn!("reap container {}: {}", orphan.id(), crate::error_line(&e));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("reap container {}: no thread: {e}", self.record.id);
        }
    }
}

#[doc(hidden)]
pub mod cgroup;
#[doc(hidden)]
pub mod seccomp;
