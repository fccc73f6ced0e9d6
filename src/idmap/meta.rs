//! Setting an entry's metadata by name in a directory fd, never through a symlink: what
//! extracting an image (`store::extract`) and copying or shifting a tree (`mount::copy`)
//! both do to entries they cannot open.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use nix::unistd::{Gid, Uid};

use crate::sys;

/// What [`set_meta_at`] gives an entry (ids and xattr values already shifted).
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    pub uid: u32,
    pub gid: u32,
    /// `st_mode`: its type says whether there is a mode to set (a symlink has none).
    pub mode: u32,
    pub atime: nix::sys::time::TimeSpec,
    pub mtime: nix::sys::time::TimeSpec,
    pub xattrs: &'a [(std::ffi::CString, Vec<u8>)],
}

/// The step of [`set_meta_at`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Chown,
    /// Setting `meta.xattrs[i]`.
    Xattr(usize),
    Chmod,
    Times,
}

/// A failed [`set_meta_at`]: which step, and the system's error.
#[derive(Debug)]
pub struct MetaError {
    pub step: Step,
    pub source: io::Error,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match self.step {
            Step::Chown => "chown",
            Step::Xattr(_) => "setxattr",
            Step::Chmod => "chmod",
            Step::Times => "utimensat",
        };
        write!(f, "{call}: {}", self.source)
    }
}

impl std::error::Error for MetaError {}

impl From<MetaError> for io::Error {
    fn from(e: MetaError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Sets owner, xattrs, mode and times of `name` in `dir`, in that order (chown clears
/// setuid bits and capabilities), never following a symlink: one found where `meta` says
/// there is none fails the chmod instead of changing the link's target.
pub fn set_meta_at(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta<'_>) -> Result<(), MetaError> {
    let step = |step: Step| move |e: io::Error| MetaError { step, source: e };
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| step(Step::Chown)(e.into()))?;
    for (i, (attr, value)) in meta.xattrs.iter().enumerate() {
        sys::lsetxattr_at(dir, name, attr, value).map_err(step(Step::Xattr(i)))?;
    }
    if meta.mode & libc::S_IFMT != libc::S_IFLNK {
        let cname = sys::cstr(name).map_err(step(Step::Chmod))?;
        sys::fchmodat_nofollow(dir, &cname, meta.mode & 0o7777).map_err(step(Step::Chmod))?;
    }
    nix::sys::stat::utimensat(
        dir,
        name,
        &meta.atime,
        &meta.mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| step(Step::Times)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn set_meta_at_never_follows_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("target");
        std::fs::write(&target, b"x").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink(&target, tmp.path().join("link")).expect("symlink");
        let dir = std::fs::File::open(tmp.path()).expect("open");
        let t = nix::sys::time::TimeSpec::new(1, 0);
        let meta = Meta {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: libc::S_IFREG | 0o666,
            atime: t,
            mtime: t,
            xattrs: &[],
        };
        assert!(set_meta_at(dir.as_fd(), OsStr::new("link"), &meta).is_err());
        let st = std::fs::metadata(&target).expect("stat");
        assert_eq!(st.mode() & 0o7777, 0o600, "chmod through the link");
        assert_ne!(st.mtime(), 1, "times set through the link");
        // The same call on a regular file sets everything.
        set_meta_at(dir.as_fd(), OsStr::new("target"), &meta).expect("set_meta_at");
        let st = std::fs::metadata(&target).expect("stat");
        assert_eq!((st.mode() & 0o7777, st.mtime()), (0o666, 1));
    }
}
