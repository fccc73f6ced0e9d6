//! The errors and report of a copy, and setting one entry's shifted metadata.

use crate::idmap::range::Shift;
use crate::idmap::shift::{self, Meta};
use crate::idmap::xattr;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};
use nix::sys::time::TimeSpec;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot copy {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot shift {path}")]
    Shift {
        path: PathBuf,
        source: xattr::XattrError,
    },
}

impl CopyError {
    pub(super) fn kind(&self) -> io::ErrorKind {
        match self {
            CopyError::Io { source, .. } => source.kind(),
            CopyError::Shift { .. } => io::ErrorKind::InvalidData,
        }
    }
}

/// What a copy did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyReport {
    /// Entries written.
    pub entries: u64,
    /// Entries whose owner or id-carrying xattrs the shift changed.
    pub shifted: u64,
}

pub(super) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Shifts and sets owner, xattrs, mode and times ([`shift::set_meta_at`], which never
/// follows a symlink). True when the shift changed an id.
pub(super) fn set_meta(
    dst: BorrowedFd<'_>,
    dname: &OsStr,
    st: &FileStat,
    xattrs: &[(CString, Vec<u8>)],
    shift: Shift,
    spath: &Path,
    dpath: &Path,
) -> Result<bool, CopyError> {
    let dst_err = |e: io::Error| CopyError::Io {
        path: dpath.to_path_buf(),
        source: e,
    };
    let shift_err = |source| CopyError::Shift {
        path: spath.to_path_buf(),
        source,
    };
    let uid = shift.map(st.st_uid).map_err(|e| shift_err(e.into()))?;
    let gid = shift.map(st.st_gid).map_err(|e| shift_err(e.into()))?;
    let mut changed = uid != st.st_uid || gid != st.st_gid;
    let mut shifted = Vec::with_capacity(xattrs.len());
    for (attr, value) in xattrs {
        let new = xattr::shift_value(&attr.to_string_lossy(), value, shift).map_err(shift_err)?;
        changed |= new != *value;
        shifted.push((attr.clone(), new));
    }
    let meta = Meta {
        uid,
        gid,
        mode: st.st_mode,
        atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
        mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        xattrs: &shifted,
    };
    shift::set_meta_at(dst, dname, &meta).map_err(|e| dst_err(e.into()))?;
    Ok(changed)
}

pub(super) fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// True when `shift` changes an entry's owner or an id-carrying xattr.
pub(super) fn changes(st: &FileStat, xattrs: &[(CString, Vec<u8>)], shift: Shift) -> bool {
    shift.map(st.st_uid).ok() != Some(st.st_uid)
        || shift.map(st.st_gid).ok() != Some(st.st_gid)
        || xattrs.iter().any(|(name, value)| {
            let name = name.to_string_lossy();
            xattr::carries_ids(&name)
                && xattr::shift_value(&name, value, shift).ok().as_deref() != Some(value.as_slice())
        })
}
