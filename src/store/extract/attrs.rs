//! Ownership, xattrs, mode and times of extracted entries, and the errors that name them.

use std::ffi::{CString, OsStr};
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::Ctx;
use crate::idmap::meta::{self, Meta, Step};
use crate::idmap::xattr;
use crate::store::{Entry, Result, StoreError, io_err, nix_err};
use crate::sys;

impl Ctx<'_> {
    fn ids(&self, e: &Entry) -> Result<(u32, u32)> {
        match self.shift {
            None => Ok((e.uid, e.gid)),
            Some(s) => {
                let err = |x: crate::idmap::range::RangeError| StoreError::Shift {
                    path: self.shown(&e.path),
                    reason: x.to_string(),
                };
                Ok((s.map(e.uid).map_err(err)?, s.map(e.gid).map_err(err)?))
            }
        }
    }

    /// The entry's xattrs as they should be written (ids shifted when asked).
    fn xattrs(&self, e: &Entry) -> Result<Vec<(CString, Vec<u8>)>> {
        let mut out = Vec::with_capacity(e.xattrs.len());
        for (name, value) in &e.xattrs {
            let value = match (self.shift, std::str::from_utf8(name)) {
                (Some(s), Ok(n)) if xattr::carries_ids(n) => xattr::shift_value(n, value, s)
                    .map_err(|x| StoreError::Shift {
                        path: self.shown(&e.path),
                        reason: x.to_string(),
                    })?,
                _ => value.clone(),
            };
            let name = CString::new(name.clone()).map_err(|_| StoreError::Entry {
                path: e.path.clone(),
                reason: "NUL in xattr name".into(),
            })?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// Owner, xattrs, mode, then times, on an open file or directory. The order matters:
    /// chown clears setuid bits and capabilities, so they come after it.
    pub(super) fn set_meta_fd(&self, e: &Entry, fd: BorrowedFd<'_>) -> Result<()> {
        let shown = self.shown(&e.path);
        let (uid, gid) = self.ids(e)?;
        nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|err| chown_err(&shown, uid, gid, err))?;
        for (name, value) in self.xattrs(e)? {
            sys::fsetxattr(fd, &name, &value).map_err(|err| xattr_err(&shown, &name, err))?;
        }
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(e.mode)).map_err(nix_err(&shown))?;
        let t = timespec(e);
        nix::sys::stat::futimens(fd, &t, &t).map_err(nix_err(&shown))
    }

    /// The same for an entry we cannot open (symlink, device, fifo, socket).
    pub(super) fn set_meta_at(
        &self,
        e: &Entry,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        symlink: bool,
    ) -> Result<()> {
        let shown = self.shown(&e.path);
        let (uid, gid) = self.ids(e)?;
        let xattrs = self.xattrs(e)?;
        let t = timespec(e);
        // We just created this node, but never follow a link put in its place: a symlink
        // where `e` says there is none fails the chmod.
        let kind = if symlink { libc::S_IFLNK } else { 0 };
        let meta = Meta {
            uid,
            gid,
            mode: kind | (e.mode & 0o7777),
            atime: t,
            mtime: t,
            xattrs: &xattrs,
        };
        meta::set_meta_at(dir, name, &meta).map_err(|err| match err.step {
            Step::Chown => {
                let errno = err.source.raw_os_error().unwrap_or(libc::EIO);
                chown_err(&shown, uid, gid, nix::errno::Errno::from_raw(errno))
            }
            Step::Xattr(i) => xattr_err(&shown, &xattrs[i].0, err.source),
            Step::Chmod | Step::Times => io_err(&shown)(err.source),
        })
    }
}

/// An error of operation `op` on `shown`, with `why` added to the system's message.
pub(super) fn op_err(shown: &Path, op: &str, err: nix::Error, why: &str) -> StoreError {
    StoreError::Io {
        path: shown.to_path_buf(),
        err: std::io::Error::new(
            std::io::Error::from(err).kind(),
            format!("{op}: {}{why}", err.desc()),
        ),
    }
}

/// A failed chown: outside a user namespace an unprivileged user can give files only to
/// itself, which a bare `Operation not permitted` does not say.
fn chown_err(shown: &Path, uid: u32, gid: u32, err: nix::Error) -> StoreError {
    let me = nix::unistd::geteuid();
    let op = format!("chown to {uid}:{gid}");
    match err {
        nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL if !me.is_root() => {
            let why =
                format!(" (uid {me} cannot give files to other ids outside a user namespace)");
            StoreError::ChownUnprivileged {
                path: shown.to_path_buf(),
                uid: me.as_raw(),
                err: std::io::Error::new(
                    std::io::Error::from(err).kind(),
                    format!("{op}: {}{why}", err.desc()),
                ),
            }
        }
        nix::errno::Errno::EINVAL => op_err(
            shown,
            &op,
            err,
            " (the id is not mapped in this user namespace)",
        ),
        _ => op_err(shown, &op, err, ""),
    }
}

fn xattr_err(shown: &Path, name: &CString, err: std::io::Error) -> StoreError {
    StoreError::Io {
        path: shown.to_path_buf(),
        err: std::io::Error::new(
            err.kind(),
            format!("setting xattr {}: {err}", name.to_string_lossy()),
        ),
    }
}

fn timespec(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime.sec, i64::from(e.mtime.nsec))
}
