//! Mounted views, recorded in `RUN_DIR/views` so that [`unmount`] takes down only what
//! `mount` put up.

use super::checks::mounts;
use super::spec::{MountError, MountSpec, io_at};
use crate::mount::overlay;
use crate::{atomic, dirs, sys};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Where mounted views are recorded, one file per mountpoint: `unmount` takes down only
/// what `mount` put up. Under the run dir: mounts, like these files, end at reboot.
pub fn views_dir() -> PathBuf {
    dirs::run_dir().join("views")
}

/// The record of one mounted view.
#[derive(Debug, Serialize, Deserialize)]
struct View {
    mountpoint: PathBuf,
    intermediate: PathBuf,
    /// The mount's id (`sys::mount_id`): another mount stacked on or put in its place
    /// later has another.
    mount_id: u64,
}

impl View {
    fn path(mountpoint: &Path) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
        views_dir().join(format!("{}.json", hex::encode(digest)))
    }

    fn load(mountpoint: &Path) -> Result<Option<View>, MountError> {
        let path = View::path(mountpoint);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<View>(&bytes)
                .map(|v| (v.mountpoint == mountpoint).then_some(v))
                .map_err(|e| MountError::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MountError::Io { path, source: e }),
        }
    }

    fn store(&self) -> Result<(), MountError> {
        let dir = views_dir();
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let path = View::path(&self.mountpoint);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MountError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic::write(&path, &bytes).map_err(io_at(&path))
    }

    fn remove(mountpoint: &Path) {
        let _ = std::fs::remove_file(View::path(mountpoint));
    }
}

/// Attaches the detached mount `mnt` at the mountpoint, recorded first as a view of
/// INTERMEDIATE (a detached mount already has the id it keeps once attached), so a run
/// that dies at any point after this leaves a view `unmount` accepts.
pub(super) fn attach_view(spec: &MountSpec, mnt: BorrowedFd<'_>) -> Result<(), MountError> {
    let mount_id = sys::mount_id(mnt).map_err(io_at(&spec.mountpoint))?;
    View {
        mountpoint: spec.mountpoint.clone(),
        intermediate: spec.intermediate.clone(),
        mount_id,
    }
    .store()?;
    overlay::attach(mnt, &spec.mountpoint).map_err(|e| {
        View::remove(&spec.mountpoint);
        e.into()
    })
}

/// Takes down a view this call mounted (on a later failure).
pub(super) fn detach_view(spec: &MountSpec) {
    if detach(&spec.mountpoint).is_ok() {
        View::remove(&spec.mountpoint);
    }
}

/// Unmounts `path`, waiting out a passing reference: another process's child holds the
/// fds it inherited until its exec, a lookup holds the mount for its walk, and either makes
/// umount fail with EBUSY for that moment. A view still busy after ~1 s is reported, as
/// containerd's unmount does after its retries.
fn detach(path: &Path) -> Result<(), MountError> {
    let mut tries = 20;
    loop {
        match nix::mount::umount2(path, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) if tries > 0 => {
                tries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            done => {
                return done.map_err(|e| MountError::Unmount {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

/// Unmounts a view mounted by [`mount`](super::mount), and nothing else: a mountpoint with
/// no record in [`views_dir`], or whose top mount is not the one recorded, is refused and
/// left mounted. The idmapped lower mounts were never attached anywhere: they go with the
/// overlay that holds them.
pub fn unmount(mountpoint: &Path) -> Result<(), MountError> {
    let not_mounted = || MountError::NotMounted {
        path: mountpoint.to_path_buf(),
    };
    let canon = std::fs::canonicalize(mountpoint).map_err(|_| not_mounted())?;
    // The last mount listed at a path is the one on top, the one umount would take.
    let Some(what) = mounts()?
        .into_iter()
        .filter(|m| m.point == canon)
        .map(|m| m.what)
        .next_back()
    else {
        return Err(not_mounted());
    };
    let refuse = |reason: String| MountError::NotAView {
        path: canon.clone(),
        reason,
    };
    let Some(view) = View::load(&canon)? else {
        return Err(refuse(format!(
            "{what}, with no record in {}",
            views_dir().display()
        )));
    };
    let top = nix::fcntl::open(
        &canon,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io_at(&canon)(e.into()))?;
    let id = sys::mount_id(top.as_fd()).map_err(io_at(&canon))?;
    drop(top); // an open fd on the mount would make umount fail with EBUSY
    if id != view.mount_id {
        return Err(refuse(format!(
            "{what} covers the view of {} recorded there",
            view.intermediate.display()
        )));
    }
    detach(&canon)?;
    View::remove(&canon);
    Ok(())
}
