//! The new mount API (open_tree, move_mount, fsopen/fsconfig/fsmount; `mount_setattr` is
//! raw, rustix lacks it), `pivot_root` and mount ids.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::{AtFlags, StatxFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags};

use super::{borrow, check};

/// `open_tree(2)` / `move_mount(2)` / `mount_setattr(2)` flags.
pub const OPEN_TREE_CLONE: u32 = OpenTreeFlags::OPEN_TREE_CLONE.bits();
pub const OPEN_TREE_CLOEXEC: u32 = OpenTreeFlags::OPEN_TREE_CLOEXEC.bits();
pub const AT_RECURSIVE: u32 = OpenTreeFlags::AT_RECURSIVE.bits();
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH.bits();
/// `move_mount(2)` flag: the target is `to` itself (an `O_PATH` fd), not a path in it.
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH.bits();
pub const MOUNT_ATTR_RDONLY: u64 = MountAttrFlags::MOUNT_ATTR_RDONLY.bits() as u64;
pub const MOUNT_ATTR_NOSUID: u64 = MountAttrFlags::MOUNT_ATTR_NOSUID.bits() as u64;
pub const MOUNT_ATTR_NODEV: u64 = MountAttrFlags::MOUNT_ATTR_NODEV.bits() as u64;
pub const MOUNT_ATTR_NOEXEC: u64 = MountAttrFlags::MOUNT_ATTR_NOEXEC.bits() as u64;
pub const MOUNT_ATTR_IDMAP: u64 = MountAttrFlags::MOUNT_ATTR_IDMAP.bits() as u64;

/// `open_tree(2)`: with `OPEN_TREE_CLONE` a detached copy of the mount at `path`.
pub fn open_tree(dir: BorrowedFd<'_>, path: &Path, flags: u32) -> io::Result<OwnedFd> {
    Ok(rustix::mount::open_tree(
        dir,
        path,
        OpenTreeFlags::from_bits_retain(flags),
    )?)
}

/// `open_tree(2)` on a prepared C string, returning the raw fd: no allocation, so usable
/// between fork and exec.
pub fn open_tree_raw(dir: RawFd, path: &CStr, flags: u32) -> io::Result<RawFd> {
    // SAFETY: used for this one call; a closed fd is only an EBADF from the kernel.
    let dir = unsafe { borrow(dir) };
    let tree = rustix::mount::open_tree(dir, path, OpenTreeFlags::from_bits_retain(flags))?;
    Ok(tree.into_raw_fd())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
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
    let path = super::cstr(path)?;
    let userns = userns.map_or(0, |fd| fd.as_raw_fd() as u64);
    setattr(dir.as_raw_fd(), &path, flags, attr_set, attr_clr, userns)
}

/// `mount_setattr(2)` on a prepared C string, no user namespace: no allocation, so usable
/// between fork and exec (e.g. `AT_EMPTY_PATH | AT_RECURSIVE` on an `O_PATH` fd).
pub fn mount_setattr_raw(
    dir: RawFd,
    path: &CStr,
    flags: u32,
    attr_set: u64,
    attr_clr: u64,
) -> io::Result<()> {
    setattr(dir, path, flags, attr_set, attr_clr, 0)
}

fn setattr(
    dir: RawFd,
    path: &CStr,
    flags: u32,
    attr_set: u64,
    attr_clr: u64,
    userns_fd: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: plain fd, valid C string and a mount_attr of the size passed, alive for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir,
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
    Ok(rustix::mount::move_mount(
        from,
        c"",
        to_dir,
        to,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// `move_mount(2)` on prepared C strings: no allocation, so usable between fork and exec.
pub fn move_mount_raw(
    from: RawFd,
    from_path: &CStr,
    to: RawFd,
    to_path: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: used for this one call; a closed fd is only an EBADF from the kernel.
    let (from, to) = unsafe { (borrow(from), borrow(to)) };
    let flags = MoveMountFlags::from_bits_retain(flags);
    Ok(rustix::mount::move_mount(
        from, from_path, to, to_path, flags,
    )?)
}

/// `fsopen(2)`: a filesystem context for `fstype` ("overlay", "tmpfs", "proc", ...).
pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?)
}

/// `fsconfig(2)` with a string value (or a flag when `value` is `None`).
pub fn fsconfig_set(fs: BorrowedFd<'_>, key: &CStr, value: Option<&CStr>) -> io::Result<()> {
    Ok(match value {
        Some(v) => rustix::mount::fsconfig_set_string(fs, key, v),
        None => rustix::mount::fsconfig_set_flag(fs, key),
    }?)
}

/// `fsconfig(FSCONFIG_SET_FD)`: give the filesystem context `key` as an open fd, e.g. an
/// overlay `lowerdir+` (Linux 6.13) that is a detached (idmapped) mount with no path of
/// its own.
pub fn fsconfig_set_fd(fs: BorrowedFd<'_>, key: &CStr, fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::mount::fsconfig_set_fd(fs, key, fd)?)
}

/// `fsconfig(FSCONFIG_CMD_CREATE)` then `fsmount(2)`: the configured filesystem as a detached mount.
pub fn fsmount(fs: BorrowedFd<'_>, attr_flags: u64) -> io::Result<OwnedFd> {
    rustix::mount::fsconfig_create(fs)?;
    let attr = MountAttrFlags::from_bits_retain(attr_flags as u32);
    Ok(rustix::mount::fsmount(
        fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        attr,
    )?)
}

/// `pivot_root(2)`. Async-signal-safe.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    Ok(rustix::process::pivot_root(new_root, put_old)?)
}

/// The id of the mount `fd` is on (or is, for a detached mount): `STATX_MNT_ID_UNIQUE`
/// (Linux 6.8, never reused within a boot) when the kernel has it, else `STATX_MNT_ID`.
/// A detached mount keeps its id when it is attached.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let wanted = libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID;
    let stx = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::from_bits_retain(wanted),
    )?;
    if stx.stx_mask & wanted == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "statx reported no mount id",
        ));
    }
    Ok(stx.stx_mnt_id)
}
