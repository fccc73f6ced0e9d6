//! Tree -> entries: walks a directory by dir fds (never following a symlink), in
//! canonical order (names sorted bytewise, depth first), and feeds every entry with its
//! full metadata and content into an [`ImageWriter`].

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::{Entry, ImageWriter, Kind, Result, Timestamp, io_err, nix_err};
use crate::sys;

/// Feeds the tree at `root` into `w`. `root` itself may be a symlink to a directory;
/// nothing below it is followed.
pub fn walk(root: &Path, w: &mut ImageWriter) -> Result<()> {
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_err(root))?;
    let st = fstat(&fd).map_err(nix_err(root))?;
    let entry = entry_of(
        &st,
        PathBuf::new(),
        Kind::Dir,
        fd.as_fd(),
        OsStr::new("."),
        root,
    )?;
    w.add(entry, None)?;
    let mut links = HashMap::new();
    walk_dir(fd.as_fd(), Path::new(""), root, w, &mut links)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    root: &Path,
    w: &mut ImageWriter,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let shown = root.join(rel);
    // The directory is pinned by its fd; /proc/self/fd/N names exactly it.
    let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names: Vec<OsString> = std::fs::read_dir(&listing)
        .map_err(io_err(&shown))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io_err(&shown))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = rel.join(&name);
        let full = root.join(&path);
        let st =
            fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(nix_err(&full))?;
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if fmt != SFlag::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(target) = links.get(&key) {
                let kind = Kind::Hardlink {
                    target: target.clone(),
                };
                w.add(entry_of(&st, path, kind, dir, &name, &full)?, None)?;
                continue;
            }
            links.insert(key, path.clone());
        }
        match fmt {
            SFlag::S_IFREG => {
                let kind = Kind::File {
                    size: st.st_size as u64,
                };
                let entry = entry_of(&st, path, kind, dir, &name, &full)?;
                let mut file = File::from(open_file(dir, &name).map_err(nix_err(&full))?);
                w.add(entry, Some(&mut file))?;
            }
            SFlag::S_IFDIR => {
                let entry = entry_of(&st, path.clone(), Kind::Dir, dir, &name, &full)?;
                w.add(entry, None)?;
                let sub = openat(
                    dir,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(nix_err(&full))?;
                walk_dir(sub.as_fd(), &path, root, w, links)?;
            }
            _ => {
                let kind = match fmt {
                    SFlag::S_IFLNK => Kind::Symlink {
                        target: nix::fcntl::readlinkat(dir, name.as_os_str())
                            .map_err(nix_err(&full))?
                            .into(),
                    },
                    SFlag::S_IFCHR => Kind::Char { rdev: st.st_rdev },
                    SFlag::S_IFBLK => Kind::Block { rdev: st.st_rdev },
                    SFlag::S_IFIFO => Kind::Fifo,
                    _ => Kind::Socket,
                };
                w.add(entry_of(&st, path, kind, dir, &name, &full)?, None)?;
            }
        }
    }
    Ok(())
}

/// Opens a regular file for reading without following a symlink, without touching its
/// atime when we may.
fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

fn entry_of(
    st: &FileStat,
    path: PathBuf,
    kind: Kind,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    full: &Path,
) -> Result<Entry> {
    let mut xattrs = Vec::new();
    let names = match sys::llistxattr_at(dir, name) {
        Ok(n) => n,
        // Filesystems without xattr support have none to record.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
        Err(e) => return Err(io_err(full)(e)),
    };
    for attr in names {
        if let Some(value) = sys::lgetxattr_at(dir, name, &attr).map_err(io_err(full))? {
            xattrs.push((attr.into_bytes(), value));
        }
    }
    xattrs.sort();
    Ok(Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: Timestamp {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        xattrs,
    })
}
