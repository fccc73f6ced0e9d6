//! Idmapped mounts: a detached copy of a directory's mount whose ids are seen through a
//! user namespace's mapping. No file is touched, so the cost does not depend on the tree.

use crate::idmap::range::IdRange;
use crate::sys;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot create a user namespace for the id mapping {map}")]
    Userns { map: String, source: io::Error },
    #[error("cannot clone the mount of {path}")]
    Clone { path: PathBuf, source: io::Error },
    #[error("the kernel refuses an idmapped mount of {path}")]
    Setattr { path: PathBuf, source: io::Error },
}

impl IdmapError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            IdmapError::Userns { source, .. }
            | IdmapError::Clone { source, .. }
            | IdmapError::Setattr { source, .. } => source.raw_os_error(),
        }
    }
}

/// One id mapping: ids `inside .. inside + target.len` become `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub inside: u32,
    pub target: IdRange,
}

impl Mapping {
    fn line(&self) -> String {
        self.target.map_line(self.inside)
    }
}

/// A user namespace fd whose uid_map and gid_map are `uid` and `gid`. A child process
/// unshares the namespace and waits; we write its maps, open `/proc/PID/ns/user`, then
/// kill and reap it. The namespace lives on through the fd.
pub fn userns_fd(uid: Mapping, gid: Mapping) -> Result<OwnedFd, IdmapError> {
    let fail = |source: io::Error| IdmapError::Userns {
        map: format!("uid {} gid {}", uid.line().trim(), gid.line().trim()),
        source,
    };
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| fail(e.into()))?;
    let (hold_r, hold_w) = nix::unistd::pipe().map_err(|e| fail(e.into()))?;
    let (ready_w_raw, hold_r_raw) = (ready_w.as_raw_fd(), hold_r.as_raw_fd());
    let (ready_r_raw, hold_w_raw) = (ready_r.as_raw_fd(), hold_w.as_raw_fd());
    // SAFETY: fork is sound here because the child below never returns into Rust code
    // that could touch state another thread left locked.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| fail(e.into()))? {
        // SAFETY: the child calls only async-signal-safe functions (close, unshare, write,
        // read, _exit) on fds it already has, with stack buffers: no allocation.
        nix::unistd::ForkResult::Child => unsafe {
            // Our copy of the write end would keep `read` below from ever seeing EOF.
            libc::close(hold_w_raw);
            libc::close(ready_r_raw);
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(ready_w_raw, (&ok as *const u8).cast(), 1);
            let mut byte = 0u8;
            // Blocks until the parent is done with us (or closes the pipe by dying).
            libc::read(hold_r_raw, (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(hold_r);
    let result = (|| {
        let mut ok = [0u8; 1];
        let n = nix::unistd::read(ready_r.as_fd(), &mut ok)?;
        if n != 1 || ok[0] != 1 {
            return Err(io::Error::other(
                "the helper process could not unshare a user namespace",
            ));
        }
        let proc = PathBuf::from(format!("/proc/{}", child.as_raw()));
        fs::write(proc.join("uid_map"), uid.line())?;
        fs::write(proc.join("gid_map"), gid.line())?;
        let ns = fs::File::open(proc.join("ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    drop(hold_w);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result.map_err(fail)
}

/// A detached clone of the mount at `path` (the directory itself, not its submounts),
/// idmapped through `userns`, `nosuid` and `nodev`: a lower layer is only read through
/// the overlay above it, whose own mount decides what its setuid binaries and device
/// nodes may do.
pub fn idmapped_clone(path: &Path, userns: &OwnedFd) -> Result<OwnedFd, IdmapError> {
    let tree = sys::open_tree(
        nix::fcntl::AT_FDCWD,
        path,
        sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC,
    )
    .map_err(|source| IdmapError::Clone {
        path: path.to_path_buf(),
        source,
    })?;
    sys::mount_setattr(
        tree.as_fd(),
        Path::new(""),
        libc::AT_EMPTY_PATH as u32,
        sys::MOUNT_ATTR_IDMAP | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        0,
        Some(userns.as_fd()),
    )
    .map_err(|source| IdmapError::Setattr {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(tree)
}

/// The block an existing tree's ids live in: its root's id rounded down to `range`, so
/// an image already shifted to another block maps as well as a plain one.
pub fn source_base(id: u32, range: u32) -> u32 {
    id - id % range.max(1)
}
