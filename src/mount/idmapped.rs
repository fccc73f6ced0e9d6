//! Idmapped mounts: a detached copy of a directory's mount whose ids are seen through a
//! user namespace's mapping. No file is touched, so the cost does not depend on the tree.

pub use crate::idmap::userns::Mapping;
use crate::idmap::userns::{self, Maps, UsernsError};
use crate::sys;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot create a user namespace for the id mapping {map}")]
    Userns {
        map: String,
        source: Box<UsernsError>,
    },
    #[error("cannot clone the mount of {path}")]
    Clone { path: PathBuf, source: io::Error },
    #[error("the kernel refuses an idmapped mount of {path}")]
    Setattr { path: PathBuf, source: io::Error },
}

/// A user namespace fd (made by [`crate::idmap::userns`]) whose uid_map and gid_map are
/// the single lines `uid` and `gid`, written directly (this runs as root).
pub fn userns_fd(uid: Mapping, gid: Mapping) -> Result<OwnedFd, IdmapError> {
    userns::userns_fd(&Maps::direct(vec![uid], vec![gid], false)).map_err(|source| {
        let line = |m: Mapping| format!("{} {} {}", m.container, m.host, m.size);
        IdmapError::Userns {
            map: format!("uid {} gid {}", line(uid), line(gid)),
            source: Box::new(source),
        }
    })
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
