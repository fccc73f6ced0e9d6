//! The child's half of a FUSE root (see [`super::RootOverlay::fuse`]); no allocation.
//!
//! Before GO, with the caller's credentials in the container's new user namespace: open
//! `/dev/fuse` (the connection's namespace is the opener's: the ids the daemon answers
//! with are the container's) and connect to the runtime's socket (named through an
//! `O_PATH` fd of its directory: a long state path fits no `sun_path`). After GO, as the
//! container's root: mount FUSE on the device, hand the device to the runtime (which
//! starts fuse-overlayfs on it) and attach the mount on the rootfs.

use crate::container::child::{FdPath, close, errno, last_errno, send_fd, write_decimal};
use crate::container::protocol::{Fail, Step};
use crate::sys;
use std::ffi::CStr;
use std::os::fd::{AsFd, IntoRawFd, RawFd};

/// Failure indexes under `Step::RootOpen` (30 + stage: /dev/fuse, the socket's
/// directory, socket, connect) and `Step::RootBind` (40 + stage: fsopen, an option,
/// fsmount, handing the device over, attach).
const OPEN: u32 = 30;
const MOUNT: u32 = 40;

/// `/dev/fuse` and a socket connected to `dir/name`, both close-on-exec.
pub(super) fn open(dir: &CStr, name: &CStr) -> Result<(RawFd, RawFd), Fail> {
    let fail = |i: u32| Fail::new(Step::RootOpen, last_errno(), OPEN + i);
    // SAFETY: a valid C string; the fd is closed after the mount or at exec.
    let dev = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(fail(0));
    }
    match connect(dir, name) {
        Ok(sock) => Ok((dev, sock)),
        Err(f) => {
            close(dev);
            Err(f)
        }
    }
}

fn connect(dir: &CStr, name: &CStr) -> Result<RawFd, Fail> {
    let fail = |i: u32| Fail::new(Step::RootOpen, last_errno(), OPEN + i);
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a valid C string.
    let d = unsafe { libc::open(dir.as_ptr(), flags) };
    if d < 0 {
        return Err(fail(1));
    }
    // SAFETY: plain integers.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        let f = fail(2);
        close(d);
        return Err(f);
    }
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let via = FdPath::new(d);
    let parts = [via.as_cstr().to_bytes(), b"/", name.to_bytes()];
    for (n, b) in parts.into_iter().flatten().enumerate() {
        if n + 1 >= addr.sun_path.len() {
            close(d);
            close(sock);
            return Err(Fail::new(Step::RootOpen, libc::ENAMETOOLONG, OPEN + 3));
        }
        addr.sun_path[n] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a socket and an initialised address of `len` bytes.
    let r = unsafe { libc::connect(sock, (&raw const addr).cast(), len) };
    let f = fail(3);
    close(d);
    if r < 0 {
        close(sock);
        return Err(f);
    }
    Ok(sock)
}

/// After GO: FUSE on `dev` attached on `rootfs`, `dev` handed over on `sock`. Returns the
/// mount's fd. The caller closes `dev` and `sock`.
pub(super) fn mount(dev: RawFd, sock: RawFd, rootfs: RawFd) -> Result<RawFd, Fail> {
    let fail = |i: u32| move |e: std::io::Error| Fail::new(Step::RootBind, errno(e), MOUNT + i);
    if dev < 0 || sock < 0 {
        return Err(Fail::new(Step::RootBind, libc::EBADF, MOUNT));
    }
    let fs = sys::fsopen(c"fuse").map_err(fail(0))?;
    let fs = fs.as_fd();
    let mut digits = [0u8; 16];
    let fd = decimal(dev as u32, &mut digits);
    let options: [(&CStr, Option<&CStr>); 7] = [
        (c"source", Some(c"fuse-overlayfs")),
        (c"fd", Some(fd)),
        (c"rootmode", Some(c"40000")),
        (c"user_id", Some(c"0")),
        (c"group_id", Some(c"0")),
        // Every process of the container (its user namespace), whatever its ids; the
        // kernel checks modes and owners as on any filesystem.
        (c"allow_other", None),
        (c"default_permissions", None),
    ];
    for (key, value) in options {
        sys::fsconfig_set(fs, key, value).map_err(fail(1))?;
    }
    // The kernel queues FUSE_INIT; the first lookup waits for the daemon's answer.
    let mnt = sys::fsmount(fs, 0).map_err(fail(2))?.into_raw_fd();
    if let Err(e) = send_fd(sock, dev) {
        close(mnt);
        return Err(Fail::new(Step::RootBind, e, MOUNT + 3));
    }
    let flags = sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH;
    if let Err(e) = sys::move_mount_raw(mnt, c"", rootfs, c"", flags) {
        close(mnt);
        return Err(fail(4)(e));
    }
    Ok(mnt)
}

/// `n` in decimal as a C string in `buf`.
fn decimal(n: u32, buf: &mut [u8; 16]) -> &CStr {
    let len = write_decimal(n, buf);
    buf[len] = 0;
    CStr::from_bytes_until_nul(&buf[..=len]).unwrap_or(c"")
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal() {
        let mut buf = [0u8; 16];
        assert_eq!(super::decimal(0, &mut buf), c"0");
        assert_eq!(super::decimal(4_294_967_295, &mut buf), c"4294967295");
    }
}
