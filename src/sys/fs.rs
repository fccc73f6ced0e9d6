//! Files by directory fd: `openat2`, `statx`, `fchmodat2`, `getdents64`, writeback.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RawDir, ResolveFlags, StatxFlags};

use super::{borrow, check};

pub use rustix::fs::Statx;

/// `openat2(2)` resolve flags.
pub const RESOLVE_NO_SYMLINKS: u64 = ResolveFlags::NO_SYMLINKS.bits();
pub const RESOLVE_BENEATH: u64 = ResolveFlags::BENEATH.bits();
pub const RESOLVE_IN_ROOT: u64 = ResolveFlags::IN_ROOT.bits();
pub const RESOLVE_NO_XDEV: u64 = ResolveFlags::NO_XDEV.bits();
pub const RESOLVE_NO_MAGICLINKS: u64 = ResolveFlags::NO_MAGICLINKS.bits();

/// `openat2(2)` with `O_CLOEXEC` added, retried while the kernel asks for a retry (a
/// rename raced the lookup). No allocation for a `&CStr` path.
fn openat2_cloexec(
    dir: BorrowedFd<'_>,
    path: impl rustix::path::Arg + Copy,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let oflags = OFlags::from_bits_retain((flags | libc::O_CLOEXEC) as u32);
    let resolve = ResolveFlags::from_bits_retain(resolve);
    loop {
        match rustix::fs::openat2(dir, path, oflags, Mode::from_bits_retain(mode), resolve) {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return Ok(other?),
        }
    }
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
    openat2_cloexec(dir, path, flags, mode, resolve)
}

/// `openat2(2)` on a prepared C string, returning the raw fd: no allocation, so usable
/// between fork and exec. `dir` may be `AT_FDCWD`. `O_CLOEXEC` is always added.
pub fn openat2_raw(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<RawFd> {
    // SAFETY: used for this one call; a closed fd is only an EBADF from the kernel.
    let dir = unsafe { borrow(dir) };
    openat2_cloexec(dir, path, flags, mode, resolve).map(IntoRawFd::into_raw_fd)
}

/// `statx(2)` of `name` in `dir` without following a symlink (`AT_STATX_DONT_SYNC`).
/// By rustix's raw syscall, not glibc's `statx`: std declares that symbol weak, so in the
/// LTO'd static-pie release build it stays undefined (address 0) and a call crashes.
pub fn statx_at(dir: BorrowedFd<'_>, name: &CStr, mask: u32) -> io::Result<Statx> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC;
    Ok(rustix::fs::statx(
        dir,
        name,
        flags,
        StatxFlags::from_bits_retain(mask),
    )?)
}

/// `fchmodat2(2)` (Linux 6.6) with `AT_SYMLINK_NOFOLLOW`: a symlink put in `name`'s place
/// makes it fail (EOPNOTSUPP) instead of changing the link's target. Raw: rustix's
/// `chmodat` refuses `AT_SYMLINK_NOFOLLOW` without trying the call.
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

/// One directory entry from [`read_dir`]: its name and inode number.
pub struct DirEntry {
    pub name: CString,
    pub ino: u64,
}

/// Every entry of the directory `dir` except `.` and `..`, by `getdents64(2)` on the fd
/// itself (no path lookup). Reads from the fd's current position. `buf` is scratch space
/// (its capacity grown to 32 KiB), so a caller reading many directories can reuse one.
pub fn read_dir(dir: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<Vec<DirEntry>> {
    buf.clear();
    buf.reserve(32 * 1024);
    let mut entries = RawDir::new(dir, buf.spare_capacity_mut());
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push(DirEntry {
                name: name.to_owned(),
                ino: entry.ino(),
            });
        }
    }
    Ok(out)
}

/// A /proc text file in as few reads as it takes. Such files report size 0, and std's
/// `read_to_string` then starts with a 32-byte read and doubles from there: eight reads
/// for a mountinfo.
pub fn read_proc(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
