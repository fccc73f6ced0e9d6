//! A root made in the container's own user and mount namespace: kernel overlayfs
//! (`userxattr`) over a read-only lower layer, with an upper and work dir owned by the
//! container's id block. A rootless `Runtime` uses it over the shared image a privileged
//! helper idmapped into the container's block (`warren-mount`): the lower's mount was
//! made in the host's mount namespace, so in the container's copy it is locked and
//! container root cannot make it writable.
//!
//! The layers are opened in the child before GO with the caller's credentials (the way
//! there is the user's own private directories, which the mapped ids cannot traverse) and
//! the overlay made after GO, as the container's root (overlayfs creates its work dirs).
//!
//! With no [`RootOverlay::upper`] the root is the lower itself, read-only: a read-only
//! container reads at the lower's speed, with no overlay between (overlayfs opens a
//! backing file for every open). Its mount is a copy of the locked one: it stays read-only.
//!
//! With [`RootOverlay::fuse`] the root is FUSE served by fuse-overlayfs instead (no
//! privileged helper): before GO the child opens `/dev/fuse` (so the connection belongs to
//! the container's user namespace: the ids the daemon answers with are the container's)
//! and connects to the runtime's socket; after GO it mounts FUSE on that device as the
//! container's root, hands the device to the runtime (which starts the daemon on it) and
//! attaches the mount as the root.

use crate::container::child::{FdPath, close, errno};
use crate::container::protocol::{Fail, Step};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

#[path = "fuse.rs"]
mod fuse;

/// The layers of a root made in the container (absolute paths).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootOverlay {
    pub lower: PathBuf,
    /// The writable layer; `None`: the root is `lower` itself, read-only.
    pub upper: Option<Upper>,
    /// The root is FUSE, served by a daemon the runtime starts once the child hands it
    /// `/dev/fuse` over this socket (the layers are the daemon's then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse: Option<PathBuf>,
}

/// An overlay's upper and work dirs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upper {
    pub dir: PathBuf,
    pub work: PathBuf,
}

/// [`RootOverlay`] as the child uses it: C strings, and the fds opened before GO.
#[derive(Debug)]
pub(crate) struct Prepared {
    paths: [CString; 3],
    /// How many of `paths` are layers: 3, or 1 for a read-only root (the lower alone).
    layers: usize,
    fds: [AtomicI32; 3],
    /// A FUSE root: the socket's directory and file name.
    fuse: Option<[CString; 2]>,
}

/// Failure indexes under `Step::RootOpen` (10 + layer: lower, upper, work) and
/// `Step::RootBind` (20 + stage: fsopen, the three layers, userxattr, fsmount, attach).
const OPEN: u32 = 10;
const MOUNT: u32 = 20;

impl Prepared {
    pub(crate) fn new(o: &RootOverlay) -> std::io::Result<Prepared> {
        let (upper, work) = match &o.upper {
            Some(u) => (sys::cstr(&u.dir)?, sys::cstr(&u.work)?),
            None => (CString::default(), CString::default()),
        };
        Ok(Prepared {
            paths: [sys::cstr(&o.lower)?, upper, work],
            layers: if o.upper.is_some() { 3 } else { 1 },
            fds: [AtomicI32::new(-1), AtomicI32::new(-1), AtomicI32::new(-1)],
            fuse: match &o.fuse {
                Some(sock) => {
                    let dir = sock.parent().unwrap_or(std::path::Path::new("/"));
                    let name = sock.file_name().unwrap_or_default();
                    Some([sys::cstr(dir)?, sys::cstr(name)?])
                }
                None => None,
            },
        })
    }

    /// In the child, in its mount namespace, with the caller's credentials: `O_PATH` fds
    /// of the lower, upper and work dirs.
    pub(super) fn open(&self) -> Result<(), Fail> {
        if let Some([dir, name]) = &self.fuse {
            let (dev, sock) = fuse::open(dir, name)?;
            for (i, fd) in [dev, sock].into_iter().enumerate() {
                let old = self.fds[i].swap(fd, Ordering::Relaxed);
                if old >= 0 {
                    close(old);
                }
            }
            return Ok(());
        }
        for (i, path) in self.paths[..self.layers].iter().enumerate() {
            // SAFETY: a valid C string; the fd is closed in `mount` (or at exec, O_CLOEXEC).
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(Fail::new(
                    Step::RootOpen,
                    crate::container::child::last_errno(),
                    OPEN + i as u32,
                ));
            }
            let old = self.fds[i].swap(fd, Ordering::Relaxed);
            if old >= 0 {
                close(old);
            }
        }
        Ok(())
    }

    /// The root is the lower itself (read-only), not an overlay.
    pub(super) fn is_lower_only(&self) -> bool {
        self.fuse.is_none() && self.layers == 1
    }

    /// In the child after GO, as the container's root: the overlay (or the lower alone)
    /// attached on `rootfs` (an `O_PATH` fd of the root directory). Returns the fd of the
    /// attached mount's root.
    pub(super) fn mount(&self, rootfs: RawFd) -> Result<RawFd, Fail> {
        let fds = [0, 1, 2].map(|i| self.fds[i].swap(-1, Ordering::Relaxed));
        let result = if self.fuse.is_some() {
            fuse::mount(fds[0], fds[1], rootfs)
        } else if self.is_lower_only() {
            // A recursive copy of the lower's mount: its lock (read-only) comes along.
            super::apply::bind_onto(fds[0], rootfs)
        } else {
            make(fds, rootfs)
        };
        for fd in fds.into_iter().filter(|&fd| fd >= 0) {
            close(fd);
        }
        result
    }
}

fn make(fds: [RawFd; 3], rootfs: RawFd) -> Result<RawFd, Fail> {
    let fail = |i: u32| move |e: std::io::Error| Fail::new(Step::RootBind, errno(e), MOUNT + i);
    if fds.iter().any(|&fd| fd < 0) {
        return Err(Fail::new(Step::RootBind, libc::EBADF, MOUNT));
    }
    let fs = sys::fsopen(c"overlay").map_err(fail(0))?;
    let fs = fs.as_fd();
    for (i, key) in [c"lowerdir+", c"upperdir", c"workdir"]
        .into_iter()
        .enumerate()
    {
        // SAFETY: the fd is open until `mount` closes it after this call returns.
        let fd = unsafe { BorrowedFd::borrow_raw(fds[i]) };
        // A kernel whose overlayfs takes no fd for this key takes its /proc path.
        if let Err(e) = sys::fsconfig_set_fd(fs, key, fd) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(fail(1 + i as u32)(e));
            }
            let path = FdPath::new(fds[i]);
            sys::fsconfig_set(fs, key, Some(path.as_cstr())).map_err(fail(1 + i as u32))?;
        }
    }
    sys::fsconfig_set(fs, c"userxattr", None).map_err(fail(4))?;
    let mnt = sys::fsmount(fs, 0).map_err(fail(5))?.into_raw_fd();
    let flags = sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH;
    if let Err(e) = sys::move_mount_raw(mnt, c"", rootfs, c"", flags) {
        close(mnt);
        return Err(fail(6)(e));
    }
    Ok(mnt)
}
