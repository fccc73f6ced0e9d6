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

// ---- idmap::shift: per-entry calls by directory fd and name, never following a symlink ----

/// The `*xattrat(2)` calls (Linux 6.13); new syscalls share one number on every architecture.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Cleared once the kernel answers ENOSYS to an `*xattrat` call; the `/proc/self/fd`
/// path fallback is used from then on.
static XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn xattrat_missing(err: &io::Error) -> bool {
    if err.raw_os_error() == Some(libc::ENOSYS) {
        XATTRAT.store(false, std::sync::atomic::Ordering::Relaxed);
        return true;
    }
    false
}

fn xattrat() -> bool {
    XATTRAT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `statx(2)` of `name` in `dir` without following a symlink (`AT_STATX_DONT_SYNC`).
pub fn statx_at(dir: BorrowedFd<'_>, name: &CStr, mask: u32) -> io::Result<libc::statx> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // The raw syscall, not glibc's `statx`: std declares that symbol weak, so in the
    // LTO'd static-pie release build it stays undefined (address 0) and a call crashes.
    // SAFETY: valid fd, C string and an out buffer of the right type.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_statx,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            mask,
            &mut stx as *mut libc::statx,
        )
    };
    check(ret).map(|_| stx)
}

/// The id of the mount `fd` is on (or is, for a detached mount): `STATX_MNT_ID_UNIQUE`
/// (Linux 6.8, never reused within a boot) when the kernel has it, else `STATX_MNT_ID`.
/// A detached mount keeps its id when it is attached.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, empty C string with AT_EMPTY_PATH, and an out buffer of the right type.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID,
            &mut stx as *mut libc::statx,
        )
    };
    check(ret)?;
    if stx.stx_mask & (libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "statx reported no mount id",
        ));
    }
    Ok(stx.stx_mnt_id)
}

/// `fchmodat2(2)` (Linux 6.6) with `AT_SYMLINK_NOFOLLOW`: a symlink put in `name`'s place
/// makes it fail (EOPNOTSUPP) instead of changing the link's target.
pub fn fchmodat_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid fd and C string; mode and flags are plain integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
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

/// One directory entry from [`read_dir`]: its name and `d_type` (`DT_*`).
pub struct DirEntry {
    pub name: CString,
    pub kind: u8,
    pub ino: u64,
}

/// Every entry of the directory `dir` except `.` and `..`, by `getdents64(2)` on the fd
/// itself (no path lookup). Reads from the fd's current position. `buf` is scratch space
/// (grown to 32 KiB), so a caller reading many directories can reuse one.
pub fn read_dir(dir: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<Vec<DirEntry>> {
    if buf.len() < 32 * 1024 {
        buf.resize(32 * 1024, 0);
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: valid fd and a writable buffer of the given size.
        let n = check(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
        while off + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen < 19 || off + reclen > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed getdents64 record",
                ));
            }
            let kind = buf[off + 18];
            let mut ino = [0u8; 8];
            ino.copy_from_slice(&buf[off..off + 8]);
            let raw = &buf[off + 19..off + reclen];
            let name = CStr::from_bytes_until_nul(raw)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unterminated name"))?;
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                out.push(DirEntry {
                    name: name.to_owned(),
                    kind,
                    ino: u64::from_ne_bytes(ino),
                });
            }
            off += reclen;
        }
    }
}

// ---- mount::overlay: layers handed over as fds ----

/// `fsconfig(2)` command that passes a file descriptor (overlayfs layers since Linux 6.13).
pub const FSCONFIG_SET_FD: u32 = 5;

/// `fsconfig(FSCONFIG_SET_FD)`: give the filesystem context `key` as an open fd, e.g. an
/// overlay `lowerdir+` that is a detached (idmapped) mount with no path of its own.
pub fn fsconfig_set_fd(fs: BorrowedFd<'_>, key: &CStr, fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fds and C string; the value pointer must be NULL for SET_FD.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FD,
            key.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            fd.as_raw_fd(),
        )
    })
    .map(drop)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`. Async-signal-safe: one syscall, no
/// allocation, errno read from the thread's own slot.
pub fn seccomp_set_mode_filter(
    prog: &libc::sock_fprog,
    flags: libc::c_uint,
) -> Result<(), nix::errno::Errno> {
    // SAFETY: `prog` points to a valid sock_fprog whose filter array outlives the call; the
    // kernel copies the program before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            prog as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(ret).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(2)` used like `fork(2)` (same stack, SIGCHLD on exit) with namespace `flags`;
/// returns `(0, None)` in the child and `(pid, pidfd)` in the parent.
///
/// # Safety
/// In a multithreaded process the child may only run async-signal-safe code (no
/// allocation, no locks) until it execs or exits.
pub unsafe fn clone3_fork(flags: u64) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    const CLONE_PIDFD: u64 = 0x1000;
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // With CLONE_PARENT the kernel takes the exit signal from the caller's parent.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; with stack 0 the child
    // continues on a copy of this stack like fork(2). The caller upholds the child's rules.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = check(ret)? as libc::pid_t;
    if pid == 0 {
        return Ok((0, None));
    }
    // SAFETY: the kernel stored a fresh pidfd that only we own.
    Ok((pid, Some(unsafe { OwnedFd::from_raw_fd(pidfd) })))
}

/// `pivot_root(2)`. Async-signal-safe.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `capset(2)` (version 3) for the calling thread: 64-bit effective, permitted and
/// inheritable masks. Async-signal-safe.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let word = |i: u32| Data {
        effective: (effective >> (32 * i)) as u32,
        permitted: (permitted >> (32 * i)) as u32,
        inheritable: (inheritable >> (32 * i)) as u32,
    };
    let data = [word(0), word(1)];
    // SAFETY: valid header and two data words, as capset v3 expects.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })
        .map(drop)
}

/// `openat2(2)` on a prepared C string, returning the raw fd: no allocation, so usable
/// between fork and exec. `O_CLOEXEC` is always added.
pub fn openat2_raw(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<RawFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: valid C string and open_how of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match check(ret) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            other => return other.map(|fd| fd as RawFd),
        }
    }
}

/// `close_range(2)` with `CLOSE_RANGE_CLOEXEC`: every fd from `first` up is closed at exec
/// (so a failed exec can still be reported). Async-signal-safe.
pub fn cloexec_range_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: only sets a flag on fds of this process.
    check(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(drop)
}

/// `setns(2)` with a pidfd or namespace fd. Async-signal-safe.
pub fn setns_raw(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::setns(fd, nstype) } as libc::c_long).map(drop)
}

/// `close_range(2)` over `first..=last`. Async-signal-safe.
pub fn close_fds(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: closing fds of this process that the caller no longer uses.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) })
        .map(drop)
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

/// How many files a pool of work may hold open at once: a quarter of the soft
/// `RLIMIT_NOFILE` (the rest is left to the caller's own fds), at least 1.
pub fn fd_budget() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).unwrap_or(usize::MAX).max(1)
}

/// Bytes waiting to be written back system-wide (`Dirty` + `Writeback` of
/// /proc/meminfo), if it can be read.
pub fn dirty_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |field: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(field))?;
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((kib("Dirty:")? + kib("Writeback:")?) * 1024)
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: start writing the dirty
/// pages of that range of `fd` (`len` 0: to the end) back now, without waiting, so a
/// later fsync or syncfs finds them (mostly) on disk already.
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
    // SAFETY: valid fd; offsets and flags are plain integers.
    let ret =
        unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    check(ret as libc::c_long).map(drop)
}

// ---- runtime: bringing loopback up in a container's network namespace ----

/// Sets `IFF_UP` on the network interface `name` (e.g. `lo`) of the calling thread's
/// network namespace.
pub fn set_link_up(name: &CStr) -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is owned at once.
    let sock =
        owned(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
                as libc::c_long,
        )?;
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: the flags member of the union is what SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
}

/// `setresuid(2)` as a raw syscall. glibc's wrapper broadcasts the change to every thread
/// it knows of, which after a raw clone in a multithreaded process waits forever for
/// threads that do not exist in the child: use this between clone and exec.
pub fn setresuid_raw(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// `setresgid(2)` as a raw syscall (see [`setresuid_raw`]).
pub fn setresgid_raw(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

/// `setgroups(2)` as a raw syscall (see [`setresuid_raw`]).
pub fn setgroups_raw(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: valid array of the given length.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}

// ---- container: the rootfs as a detached mount, between clone and exec ----

/// `move_mount(2)` flag: the target is `to` itself (an `O_PATH` fd), not a path in it.
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

/// `open_tree(2)` on a prepared C string, returning the raw fd: no allocation, so usable
/// between fork and exec.
pub fn open_tree_raw(dir: RawFd, path: &CStr, flags: u32) -> io::Result<RawFd> {
    // SAFETY: valid C string; fd and flags are plain integers.
    check(unsafe { libc::syscall(libc::SYS_open_tree, dir, path.as_ptr(), flags) })
        .map(|fd| fd as RawFd)
}

/// `move_mount(2)` on prepared C strings: no allocation, so usable between fork and exec.
pub fn move_mount_raw(
    from: RawFd,
    from_path: &CStr,
    to: RawFd,
    to_path: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid C strings; fds and flags are plain integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from,
            from_path.as_ptr(),
            to,
            to_path.as_ptr(),
            flags,
        )
    })
    .map(drop)
}
