//! The state directory of one container, `ROOT/ID/`: `state.json` (written atomically),
//! `exec.fifo` while created-but-not-started, and a `flock` on the directory held while
//! the container is being created or changed, so a crashed runtime never blocks the ID.

use super::cgroup::Cgroup;
pub use super::clock::{now_rfc3339, unix_from_rfc3339};
use super::error::Error;
use oci_spec::runtime::{ContainerState, Hooks};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// What warren records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub oci_version: String,
    pub id: String,
    /// `creating` until the init process reported ready, then `created`; the live status
    /// (running, stopped) is derived from the process.
    pub status: ContainerState,
    /// Init pid in the host pid namespace (0 while creating).
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot) so a recycled pid is not mistaken for it.
    pub pid_start: u64,
    /// The warren process that created the container (to detect a crash mid-create).
    pub creator: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub cgroup: Option<Cgroup>,
    /// Hooks that run after create (poststart, poststop).
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// The config's process: the defaults for `exec`.
    #[serde(default)]
    pub process: Option<oci_spec::runtime::Process>,
    /// The config's `linux.seccomp`: `exec`'d processes get the same filter.
    #[serde(default)]
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// How the init ended, once someone collected its status ([`super::exit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<super::exit::Exit>,
    /// The user-mode network helper attached to the init's namespace (pasta,
    /// slirp4netns): outside the container, so delete stops it and waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_helper: Option<HostProcess>,
}

/// A host process, by pid and start time (a recycled pid is not it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostProcess {
    pub pid: i32,
    pub pid_start: u64,
}

impl HostProcess {
    /// The live process `pid` (None when it is gone).
    pub(crate) fn of(pid: i32) -> Option<HostProcess> {
        let (pid_start, false) = proc_start(pid)? else {
            return None;
        };
        Some(HostProcess { pid, pid_start })
    }

    /// A pidfd of the process if it is still this one.
    pub(crate) fn open(&self) -> Option<OwnedFd> {
        let fd = crate::sys::pidfd_open(self.pid).ok()?;
        // The pidfd pins the pid: the start time read now is the pinned process's.
        (proc_start(self.pid)?.0 == self.pid_start).then_some(fd)
    }
}

pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const FIFO: &str = "exec.fifo";

/// A locked container directory.
pub(crate) struct Dir {
    pub path: PathBuf,
    lock: File,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Container IDs are one path component of letters, digits and `_+-.`.
pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.into()))
    }
}

/// The directory of an existing container `id` and an open file on it to lock.
fn open_lock(root: &Path, id: &str) -> Result<(PathBuf, File), Error> {
    check_id(id)?;
    // The default root an older warren left open is made private when next used; best
    // effort: reading a container's state does not depend on it.
    if root == crate::dirs::run_dir() && root.is_dir() {
        let _ = crate::dirs::make_private(root);
    }
    let path = root.join(id);
    match File::open(&path) {
        Ok(lock) => Ok((path, lock)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(id.into())),
        Err(e) => Err(io(format!("open {}", path.display()))(e)),
    }
}

impl Dir {
    /// Opens and locks (shared or exclusive, blocking) an existing container directory.
    pub fn open(root: &Path, id: &str, exclusive: bool) -> Result<Dir, Error> {
        let (path, lock) = open_lock(root, id)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        flock(&lock, op).map_err(io(format!("lock {}", path.display())))?;
        Ok(Dir { path, lock })
    }

    /// Creates and exclusively locks a new container directory. An existing directory
    /// whose creator died before finishing (no lock held, status `creating`) is stale
    /// and handed back as `Err(Stale)` for the caller to clean up.
    pub fn create(root: &Path, id: &str) -> Result<Dir, Error> {
        check_id(id)?;
        // Private: a container's state (its exec fifo, its rootfs path) is no other
        // user's business. The default root an older warren left open is tightened; a
        // `--root` given explicitly keeps its mode, each container's dir is private.
        let private = if root == crate::dirs::run_dir() {
            crate::dirs::make_private(root)
        } else {
            crate::dirs::create_private(root)
        };
        private.map_err(io(format!("create {}", root.display())))?;
        let path = root.join(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.into()));
            }
            Err(e) => return Err(io(format!("create {}", path.display()))(e)),
        }
        let lock = File::open(&path).map_err(io(format!("open {}", path.display())))?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB)
            .map_err(io(format!("lock {}", path.display())))?;
        Ok(Dir { path, lock })
    }

    /// Tries to lock without waiting: false when someone (a create in progress) holds it.
    pub fn try_open(root: &Path, id: &str) -> Result<Option<Dir>, Error> {
        let (path, lock) = open_lock(root, id)?;
        match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(Dir { path, lock })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(io(format!("lock {}", path.display()))(e)),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The record, or `None` when the creator died before writing it.
    pub fn load(&self) -> Result<Option<Record>, Error> {
        let path = self.file(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    file: path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let path = self.file(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        crate::atomic::write(&path, &bytes).map_err(io(format!("write {}", path.display())))
    }

    /// Removes the directory (the lock goes with the fd when `self` drops).
    pub fn remove(self) -> Result<(), Error> {
        crate::tree::remove_tree(&self.path)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io(format!("remove {}", self.path.display())))?;
        drop(self.lock);
        Ok(())
    }
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: valid fd; flock takes plain integers.
        let ret = unsafe { libc::flock(f.as_raw_fd(), op) };
        if ret == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The start time (field 22 of `/proc/PID/stat`) and whether the process has exited
/// (`None` when there is no such process).
pub(crate) fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The kernel's PF_EXITING task flag: set when the process starts to exit.
const PF_EXITING: u64 = 0x4;

/// Start time and "exited" from the text of `/proc/PID/stat`. Exited is a zombie (`Z`,
/// `X`) or a process already in `exit()`: a pid namespace's init that exited waits there,
/// in state `S`, until every other process of its namespace is reaped, which takes as
/// long as the parent of an exec'd process leaves it unreaped.
fn parse_stat(stat: &str) -> Option<(u64, bool)> {
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z") || fields.first() == Some(&"X");
    let flags: u64 = fields.get(6)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie || flags & PF_EXITING != 0))
}

/// The OCI state document (plus runc's rootfs/created/owner). A frozen container is
/// `status: Running` with `paused` set, and reads `"status": "paused"` in JSON, as runc's.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(into = "StateJson", from = "StateJson")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: ContainerState,
    /// Its processes are frozen (`warren pause`).
    pub paused: bool,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: HashMap<String, String>,
}

impl State {
    pub(crate) fn of(r: &Record, status: ContainerState) -> State {
        State {
            oci_version: r.oci_version.clone(),
            id: r.id.clone(),
            status,
            paused: false,
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

    /// The status as `state` prints it: creating, created, running, paused or stopped.
    pub fn status_name(&self) -> String {
        if self.paused && self.status == ContainerState::Running {
            "paused".into()
        } else {
            self.status.to_string()
        }
    }
}

/// [`State`] as JSON: the status a string that may be `paused`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateJson {
    oci_version: String,
    id: String,
    status: String,
    pid: i32,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    owner: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    annotations: HashMap<String, String>,
}

impl From<State> for StateJson {
    fn from(s: State) -> StateJson {
        StateJson {
            status: s.status_name(),
            oci_version: s.oci_version,
            id: s.id,
            pid: s.pid,
            bundle: s.bundle,
            rootfs: s.rootfs,
            created: s.created,
            owner: s.owner,
            annotations: s.annotations,
        }
    }
}

impl From<StateJson> for State {
    fn from(s: StateJson) -> State {
        let (status, paused) = match s.status.as_str() {
            "creating" => (ContainerState::Creating, false),
            "created" => (ContainerState::Created, false),
            "running" => (ContainerState::Running, false),
            "paused" => (ContainerState::Running, true),
            _ => (ContainerState::Stopped, false),
        };
        State {
            oci_version: s.oci_version,
            id: s.id,
            status,
            paused,
            pid: s.pid,
            bundle: s.bundle,
            rootfs: s.rootfs,
            created: s.created,
            owner: s.owner,
            annotations: s.annotations,
        }
    }
}

/// The live status and pidfd of a recorded container.
pub(crate) fn probe(r: &Record, dir: &Path) -> (ContainerState, Option<OwnedFd>) {
    if r.status == ContainerState::Creating || r.pid <= 0 {
        return (ContainerState::Creating, None);
    }
    let Ok(pidfd) = crate::sys::pidfd_open(r.pid) else {
        return (ContainerState::Stopped, None);
    };
    // The pidfd pins the process: check it is still the one we started.
    match proc_start(r.pid) {
        Some((start, false)) if start == r.pid_start => {
            let status = if dir.join(FIFO).exists() {
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

/// Records `exit` in the state of container `id` under `root` if it still is the one
/// whose init was `pid` started at `pid_start` (a container recreated under the same
/// name is left alone). A container deleted meanwhile is no error.
pub(crate) fn record_exit(
    root: &Path,
    id: &str,
    pid: i32,
    pid_start: u64,
    exit: &super::exit::Exit,
) -> Result<(), Error> {
    let dir = match Dir::open(root, id, true) {
        Ok(d) => d,
        Err(Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(mut record) = dir.load()? else {
        return Ok(());
    };
    if record.pid != pid || record.pid_start != pid_start || record.exit.is_some() {
        return Ok(());
    }
    record.exit = Some(exit.clone());
    dir.save(&record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exiting_process_counts_as_exited() {
        // Fields after the name: state, ppid, pgrp, session, tty, tpgid, flags, ...
        let stat = |state: &str, flags: u64| {
            format!("42 (a (b) c) {state} 1 42 42 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 777 0")
        };
        assert_eq!(parse_stat(&stat("S", 0x400100)), Some((777, false)));
        assert_eq!(parse_stat(&stat("S", 0x40050c)), Some((777, true)));
        assert_eq!(parse_stat(&stat("Z", 0x400100)), Some((777, true)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn paused_reads_and_writes_as_runc_does() {
        let mut s: State = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "id": "a", "status": "paused", "pid": 5,
            "bundle": "/b", "rootfs": "/b/rootfs", "created": "t", "owner": ""
        }))
        .unwrap();
        assert!(s.paused && s.status == ContainerState::Running);
        assert_eq!(serde_json::to_value(&s).unwrap()["status"], "paused");
        s.paused = false;
        assert_eq!(serde_json::to_value(&s).unwrap()["status"], "running");
    }
}
