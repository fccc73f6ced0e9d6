//! Extended attributes of an entry named in a directory fd, never following a symlink:
//! the `*xattrat(2)` calls (Linux 6.13; raw, rustix lacks them) with a fallback through
//! `/proc/self/fd/N/name` and rustix's `l*xattr`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::XattrFlags;

use super::check;

/// The path through which an entry named `name` in the directory `dir` can be reached
/// without following a symlink in `name` itself: `/proc/self/fd/N/name`. The directory is
/// pinned by its fd, so a rename elsewhere cannot redirect the call.
fn at_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<CString> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// A list or value read by size query then read, asked again if it grew in between.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        if buf.is_empty() {
            return Ok(buf);
        }
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Names of every xattr of `name` in `dir` (not following a symlink).
pub fn llistxattr_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<CString>> {
    let path = at_path(dir, name)?;
    let raw = read_sized(
        || rustix::fs::llistxattr_query(&path),
        |buf| rustix::fs::llistxattr(&path, buf),
    )?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

/// The value of xattr `attr` of `name` in `dir` (not following a symlink);
/// `Ok(None)` when the entry has no such attribute.
pub fn lgetxattr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
    let path = at_path(dir, name)?;
    match read_sized(
        || rustix::fs::lgetxattr_query(&path, attr),
        |buf| rustix::fs::lgetxattr(&path, attr, buf),
    ) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets xattr `attr` of `name` in `dir` (not following a symlink).
pub fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attr: &CStr,
    value: &[u8],
) -> io::Result<()> {
    let path = at_path(dir, name)?;
    Ok(rustix::fs::lsetxattr(
        &path,
        attr,
        value,
        XattrFlags::empty(),
    )?)
}

/// `fsetxattr(2)`: sets xattr `attr` on the open file (or directory) `fd`.
pub fn fsetxattr(fd: BorrowedFd<'_>, attr: &CStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(fd, attr, value, XattrFlags::empty())?)
}

// ---- the `*xattrat` calls: one syscall per entry, no path to build ----

/// New syscalls share one number on every architecture.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Cleared once the kernel answers ENOSYS to an `*xattrat` call; the `/proc/self/fd`
/// path fallback is used from then on.
static XATTRAT: AtomicBool = AtomicBool::new(true);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn xattrat_missing(err: &io::Error) -> bool {
    if err.raw_os_error() == Some(libc::ENOSYS) {
        XATTRAT.store(false, Ordering::Relaxed);
        return true;
    }
    false
}

fn xattrat() -> bool {
    XATTRAT.load(Ordering::Relaxed)
}

/// The raw, NUL-separated xattr name list of `name` in `dir` (not following a symlink)
/// into `buf`. One syscall for the common case of a short list.
pub fn listxattrat(dir: BorrowedFd<'_>, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    if xattrat() {
        loop {
            if buf.capacity() < 256 {
                buf.reserve(256);
            }
            let cap = buf.capacity();
            // SAFETY: valid fd and C string; the buffer has `cap` writable bytes.
            let ret = unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    buf.as_mut_ptr(),
                    cap,
                )
            };
            match check(ret) {
                Ok(n) => {
                    // SAFETY: the kernel wrote `n <= cap` bytes.
                    unsafe { buf.set_len(n as usize) };
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                    buf.reserve(cap * 4);
                }
                Err(e) if xattrat_missing(&e) => break,
                Err(e) => return Err(e),
            }
        }
    }
    let names = llistxattr_at(dir, OsStr::from_bytes(name.to_bytes()))?;
    buf.clear();
    for n in names {
        buf.extend_from_slice(n.as_bytes_with_nul());
    }
    Ok(())
}

/// The value of xattr `attr` of `name` in `dir` (not following a symlink); `None` if absent.
pub fn getxattrat(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
    if xattrat() {
        let mut buf = vec![0u8; 256];
        loop {
            let mut args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: buf.len() as u32,
                flags: 0,
            };
            // SAFETY: valid fd and C strings; `args` points at a buffer of `size` bytes.
            let ret = unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    attr.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            match check(ret) {
                Ok(n) => {
                    buf.truncate(n as usize);
                    return Ok(Some(buf));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                    let len = buf.len() * 16;
                    buf.resize(len, 0);
                }
                Err(e) if xattrat_missing(&e) => break,
                Err(e) => return Err(e),
            }
        }
    }
    lgetxattr_at(dir, OsStr::from_bytes(name.to_bytes()), attr)
}

/// Sets xattr `attr` of `name` in `dir` (not following a symlink).
pub fn setxattrat(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, value: &[u8]) -> io::Result<()> {
    if xattrat() {
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: 0,
        };
        // SAFETY: valid fd and C strings; `args` points at `size` readable bytes.
        let ret = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match check(ret) {
            Err(e) if xattrat_missing(&e) => {}
            other => return other.map(drop),
        }
    }
    lsetxattr_at(dir, OsStr::from_bytes(name.to_bytes()), attr, value)
}
