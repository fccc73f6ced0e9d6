//! Deleting a container: kill what is left, remove its cgroup, run the poststop hooks,
//! remove its state directory; and reclaiming one a crashed runtime left behind.

use super::error::Error;
use super::hooks;
use super::state::{self, Record, State, probe};
use oci_spec::runtime::ContainerState;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// Creates the state directory, reclaiming a stale one left by a runtime that died
/// mid-create.
pub(super) fn open_new(root: &Path, id: &str) -> Result<state::Dir, Error> {
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
            // A paused (frozen) init dies only once thawed (a dead one is not frozen;
            // destroy's kill loop thaws what else is left).
            let live = status != ContainerState::Stopped;
            if let Some(cg) = r.cgroup.as_ref().filter(|c| live && !c.is_noop()) {
                let _ = cg.thaw();
            }
            // Wait (bounded) for the exit so the cgroup empties.
            let _ = super::wait_readable(fd.as_fd(), 5000);
        }
        // Its watcher stops the network helper too, but in its own time: gone before we
        // return, it holds no published port that the next run needs.
        if let Some(fd) = r.network_helper.and_then(|h| h.open()) {
            let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            let _ = super::wait_readable(fd.as_fd(), 5000);
        }
        if let Some(cg) = &r.cgroup {
            cg.destroy()?;
        }
        if r.status != ContainerState::Creating {
            if let Some(h) = &r.hooks {
                let state =
                    serde_json::to_vec(&State::of(r, ContainerState::Stopped)).unwrap_or_default();
                // Poststop hook failures are logged, not fatal, and the rest still run
                // (the spec says so).
                hooks::run_warn("poststop", h.poststop().as_ref(), &state);
            }
        }
    }
    dir.remove()
}

pub(super) fn delete_id(
    root: &Path,
    id: &str,
    force: bool,
    our_child: Option<OwnedFd>,
) -> Result<(), Error> {
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
                op: "delete without force",
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
