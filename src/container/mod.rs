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
mod control;
mod create;
mod delete;
mod error;
pub mod exe;
mod exec;
pub(crate) mod hooks;
pub(crate) mod init;
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
pub use process::{ExecProcess, exit_code, parse_signal};
pub use state::{Record, State};

use oci_spec::runtime::{ContainerState, Process, Spec};
use process::wait_pidfd;
use state::probe;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

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
                crate::sys::pidfd_send_signal(fd.as_fd(), signal)
                    .map_err(Error::io(format!("signal container {}", self.record.id)))?;
                // A frozen process dies only once thawed (runc thaws for SIGKILL too).
                if signal == libc::SIGKILL && self.paused()? {
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
                };
                state.paused = c.paused().unwrap_or(false);
            }
            out.push(state);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[doc(hidden)]
pub mod cgroup;
#[doc(hidden)]
pub mod seccomp;
