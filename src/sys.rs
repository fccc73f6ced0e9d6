//! Thin wrappers for the kernel calls nix lacks: the only place with raw `libc::syscall`.
//!
//! Every wrapper returns `io::Result` and owns the fds it creates. Paths are `&CStr` or
//! `&Path`, converted here so callers never build C strings by hand.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `openat2(2)` resolve flags.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// `open_tree(2)` / `move_mount(2)` / `mount_setattr(2)` flags.
pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x04;
pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
pub const MOUNT_ATTR_NODEV: u64 = 0x04;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `fsconfig(2)` commands.
pub const FSCONFIG_SET_FLAG: u32 = 0;
pub const FSCONFIG_SET_STRING: u32 = 1;
pub const FSCONFIG_CMD_CREATE: u32 = 6;
pub const FSOPEN_CLOEXEC: u32 = 1;
pub const FSMOUNT_CLOEXEC: u32 = 1;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Converts a path to a C string; a NUL inside a path is an `InvalidInput` error.
pub fn cstr(path: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(path.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(2)`: open `path` relative to `dir` with `resolve` restrictions
/// (for example `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). `O_CLOEXEC` is always added.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: `path` is a valid C string and `how` a valid open_how of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match owned(ret) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            other => return other,
        }
    }
}

/// `open_tree(2)`: with `OPEN_TREE_CLONE` a detached copy of the mount at `path`.
pub fn open_tree(dir: BorrowedFd<'_>, path: &Path, flags: u32) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    // SAFETY: valid fd and C string; flags are plain integers.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), path.as_ptr(), flags) })
}

/// `mount_setattr(2)`: change attributes of a (detached) mount, e.g. `MOUNT_ATTR_IDMAP`
/// with the user namespace fd whose mapping it should apply.
pub fn mount_setattr(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: u32,
    attr_set: u64,
    attr_clr: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let path = cstr(path)?;
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    // SAFETY: valid fd, C string and mount_attr of the size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir.as_raw_fd(),
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `move_mount(2)`: attach the detached mount `from` at `to` (relative to `to_dir`).
pub fn move_mount(from: BorrowedFd<'_>, to_dir: BorrowedFd<'_>, to: &Path) -> io::Result<()> {
    let empty = c"";
    let to = cstr(to)?;
    // SAFETY: valid fds and C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `fsopen(2)`: a filesystem context for `fstype` ("overlay", "tmpfs", "proc", ...).
pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid C string.
    owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
}

/// `fsconfig(2)` with a string value (or a flag when `value` is `None`).
pub fn fsconfig_set(fs: BorrowedFd<'_>, key: &CStr, value: Option<&CStr>) -> io::Result<()> {
    let (cmd, value) = match value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: valid fd and C strings (or NULL for a flag).
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            key.as_ptr(),
            value,
            0,
        )
    })
    .map(drop)
}

/// `fsconfig(FSCONFIG_CMD_CREATE)` then `fsmount(2)`: the configured filesystem as a detached mount.
pub fn fsmount(fs: BorrowedFd<'_>, attr_flags: u64) -> io::Result<OwnedFd> {
    // SAFETY: valid fd; NULL key and value for CMD_CREATE.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: valid fd; flags are plain integers.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attr_flags,
        )
    })
}

/// `close_range(2)`: close every fd from `first` up. Async-signal-safe (no allocation),
/// for use between fork and exec.
pub fn close_range_from(first: RawFd) -> io::Result<()> {
    // SAFETY: closing fds we are about to exec away from; no Rust object is used afterwards.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) }).map(drop)
}

/// `pidfd_open(2)`: a pollable fd that becomes readable when `pid` exits.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain integers.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })
}

/// `pidfd_send_signal(2)`: signal the process behind `pidfd` without pid-reuse races.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd; NULL siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })
    .map(drop)
}

/// The path through which an entry named `name` in the directory `dir` can be reached
/// without following a symlink in `name` itself: `/proc/self/fd/N/name`. The directory is
/// pinned by its fd, so a rename elsewhere cannot redirect the call.
fn at_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<CString> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn xattr_buffer_call(
    mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        if size == 0 {
            return Ok(buf);
        }
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got < 0 {
            let err = io::Error::last_os_error();
            // Grew between the two calls: ask again.
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// Names of every xattr of `name` in `dir` (not following a symlink).
pub fn llistxattr_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<CString>> {
    let path = at_path(dir, name)?;
    // SAFETY: valid C string path and a buffer of the given size (or NULL with size 0).
    let raw =
        xattr_buffer_call(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) })?;
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
    // SAFETY: valid C strings and a buffer of the given size (or NULL with size 0).
    match xattr_buffer_call(|buf, len| unsafe {
        libc::lgetxattr(path.as_ptr(), attr.as_ptr(), buf, len)
    }) {
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
    // SAFETY: valid C strings and a value buffer of the given length.
    let ret = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Removes xattr `attr` of `name` in `dir` (not following a symlink); absent is not an error.
pub fn lremovexattr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &CStr) -> io::Result<()> {
    let path = at_path(dir, name)?;
    // SAFETY: valid C strings.
    match check(unsafe { libc::lremovexattr(path.as_ptr(), attr.as_ptr()) } as libc::c_long) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other.map(drop),
    }
}

/// `fsetxattr(2)`: sets xattr `attr` on the open file (or directory) `fd`.
pub fn fsetxattr(fd: BorrowedFd<'_>, attr: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd and C string, and a value buffer of the given length.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: start writing `fd`'s dirty pages
/// back now, without waiting, so a later fsync finds them (mostly) on disk already.
pub fn start_writeback(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd; offsets and flags are plain integers.
    let ret = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    check(ret as libc::c_long).map(drop)
}
