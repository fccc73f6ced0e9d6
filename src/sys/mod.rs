//! Kernel calls nix lacks, by kind: the only place with raw syscalls.
//!
//! Calls go through `rustix` (its linux_raw backend: inline syscalls, no glibc symbol, so
//! nothing weak stays undefined in the static release build) wherever it has them; a raw
//! `libc::syscall` remains only for what it lacks: `mount_setattr`, `fchmodat2`,
//! `close_range`, the `*xattrat` calls, `clone3`, `seccomp`, and `pidfd_send_signal` with
//! signal 0. Every wrapper returns `io::Result` and owns the fds it creates. Paths are
//! `&CStr` or `&Path`, converted here so callers never build C strings by hand.
//!
//! - `fs`: openat2, statx, fchmodat2, getdents, writeback;
//! - `mount`: the new mount API (open_tree, move_mount, fsopen/fsconfig/fsmount,
//!   mount_setattr), pivot_root, mount ids;
//! - `xattr`: extended attributes by directory fd and name;
//! - `proc`: processes and credentials: pidfds, clone3, setns, set*id, capset, seccomp,
//!   fd ranges, loopback.
//!
//! The calls marked async-signal-safe allocate nothing and take no lock: they are what the
//! child may use between clone and exec.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub(crate) mod bpf;
mod fs;
mod mount;
mod proc;
mod xattr;

pub use fs::*;
pub use mount::*;
pub use proc::*;
pub use xattr::*;

/// Converts a path to a C string; a NUL inside a path is an `InvalidInput` error.
pub fn cstr(path: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(path.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The result of a raw syscall: negative is the thread's errno.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A raw syscall's new fd, owned.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A raw fd (or `AT_FDCWD`) a caller passed, borrowed for one call.
///
/// # Safety
/// `fd` must be open (or `AT_FDCWD`) for the duration of the call that uses it.
unsafe fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: the caller's promise; rustix itself borrows AT_FDCWD the same way.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
