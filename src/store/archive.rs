//! Tree -> entries: walks a directory by dir fds (never following a symlink), in
//! canonical order (names sorted bytewise, depth first), and feeds every entry with its
//! full metadata and content into an [`ImageWriter`].

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::{Entry, ImageWriter, Kind, Result, StoreError, Timestamp, io_err, nix_err};
use crate::sys;

/// How far (in content bytes) the walking thread may run ahead of the import.
const AHEAD_BYTES: u64 = 64 << 20;
/// How many entries it may queue (each regular file holds an open fd until imported):
/// this many, or a quarter of the fd limit if that is less.
const AHEAD_ENTRIES: usize = 256;

/// One walked entry, and for a regular file the file, opened for reading.
type Walked = (Entry, Option<File>);

/// Feeds the tree at `root` into `w`. `root` itself may be a symlink to a directory;
/// nothing below it is followed.
///
/// A second thread does the walk (directory reads, stats, xattrs, checked opens) up to
/// [`AHEAD_BYTES`] of file content ahead, asking the kernel to read each file in
/// (`POSIX_FADV_WILLNEED`); the calling thread only reads and chunks. On a cold page
/// cache the import would otherwise wait for the disk at every file while the
/// compressing threads idle.
pub fn walk(root: &Path, w: &mut ImageWriter) -> Result<()> {
    let progress = w.progress();
    let done = &AtomicBool::new(false);
    let (tx, rx) = sync_channel(AHEAD_ENTRIES.min(sys::fd_budget()));
    std::thread::scope(|s| {
        let consumed = &progress.bytes;
        // The walker owns the sender: the import's loop ends when the walk does.
        let walker = std::thread::Builder::new()
            .name("warren-walk".into())
            .spawn_scoped(s, move || {
                walk_ahead(root, &tx, consumed, done, AHEAD_BYTES)
            })
            .map_err(io_err("spawning the walking thread"))?;
        let imported = import(&rx, w);
        // A walker waiting for room or sending stops.
        done.store(true, Ordering::Relaxed);
        drop(rx);
        let _ = walker.join();
        imported
    })
}

/// The importing side of [`walk`]: adds each walked entry, in order, until the walk ends
/// or fails.
fn import(rx: &Receiver<Result<Walked>>, w: &mut ImageWriter) -> Result<()> {
    for walked in rx {
        let (entry, file) = walked?;
        // Small files are read as they are: no lseeks for them.
        let probe = matches!(entry.kind, Kind::File { size } if size >= HOLES_FROM);
        let mut file = file.map(|f| Holes::new(f, probe));
        w.add(entry, file.as_mut().map(|f| f as &mut dyn Read))?;
    }
    Ok(())
}

/// Files from this size on are read with [`Holes`].
const HOLES_FROM: u64 = 1 << 20;

/// Reads a file, handing out its holes as zeros without reading them from the disk: a
/// 10 GiB sparse file costs the chunker's pass over zeros, not 10 GiB of reads. Where
/// `SEEK_DATA` is not supported, everything is data.
struct Holes {
    file: File,
    /// Whether to look for holes at all.
    probe: bool,
    pos: u64,
    /// The current region `[pos, end)`, and whether it is a hole.
    end: u64,
    hole: bool,
}

impl Holes {
    fn new(file: File, probe: bool) -> Holes {
        Holes {
            file,
            probe,
            pos: 0,
            end: 0,
            hole: false,
        }
    }

    /// Finds the region at `pos`.
    fn region(&mut self) {
        use std::os::fd::AsRawFd;
        if !self.probe {
            (self.hole, self.end) = (false, u64::MAX);
            return;
        }
        let seek = |whence| {
            let at = i64::try_from(self.pos).unwrap_or(i64::MAX);
            // SAFETY: lseek on an fd we own; it only moves the (unused) file offset.
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), at, whence) };
            u64::try_from(r).ok()
        };
        match seek(libc::SEEK_DATA) {
            Some(data) if data > self.pos => (self.hole, self.end) = (true, data),
            Some(_) => {
                self.hole = false;
                self.end = seek(libc::SEEK_HOLE)
                    .filter(|&h| h > self.pos)
                    .unwrap_or(u64::MAX);
            }
            // ENXIO: no data from here to the end; other errors: plain reads.
            None => {
                let enxio = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
                let size = self.file.metadata().map_or(0, |m| m.len());
                (self.hole, self.end) = match enxio && self.pos < size {
                    true => (true, size),
                    false => (false, u64::MAX),
                };
            }
        }
    }
}

impl Read for Holes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.end {
            self.region();
        }
        let want = buf
            .len()
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        let n = if self.hole {
            buf[..want].fill(0);
            want
        } else {
            self.file.read_at(&mut buf[..want], self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// The walking thread of [`walk`]: sends every entry of the tree at `root` in order, or
/// the error that stopped the walk, staying at most `window` bytes of file content ahead
/// of `consumed` (the bytes the import has read). Stops early at `done`; returns the
/// bytes of file content it sent.
fn walk_ahead(
    root: &Path,
    tx: &SyncSender<Result<Walked>>,
    consumed: &AtomicU64,
    done: &AtomicBool,
    window: u64,
) -> u64 {
    let mut sent = 0u64;
    let stopped = || StoreError::Entry {
        path: root.to_path_buf(),
        reason: "the import stopped".into(),
    };
    let walked = walk_tree(root, &mut |(entry, file)| {
        if let Some(f) = &file {
            // Never more than `window` ahead: a big tree must not evict what was read
            // ahead before the import gets to it.
            while sent > consumed.load(Ordering::Relaxed) + window {
                if done.load(Ordering::Relaxed) {
                    return Err(stopped());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Advice only: the import reads the file either way.
            let _ = nix::fcntl::posix_fadvise(
                f.as_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
            if let Kind::File { size } = entry.kind {
                sent += size;
            }
        }
        tx.send(Ok((entry, file))).map_err(|_| stopped())
    });
    if let Err(e) = walked {
        let _ = tx.send(Err(e));
    }
    sent
}

fn walk_tree(root: &Path, sink: &mut dyn FnMut(Walked) -> Result<()>) -> Result<()> {
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
    sink((entry, None))?;
    let mut links = HashMap::new();
    walk_dir(fd.as_fd(), Path::new(""), root, sink, &mut links)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    root: &Path,
    sink: &mut dyn FnMut(Walked) -> Result<()>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let shown = root.join(rel);
    // getdents64 on the pinned fd itself: no path lookup the tree could redirect.
    let mut names: Vec<OsString> = sys::read_dir(dir, &mut Vec::new())
        .map_err(io_err(&shown))?
        .into_iter()
        .map(|e| OsString::from_vec(e.name.into_bytes()))
        .collect();
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
                sink((entry_of(&st, path, kind, dir, &name, &full)?, None))?;
                continue;
            }
            links.insert(key, path.clone());
        }
        match fmt {
            SFlag::S_IFREG => {
                let kind = Kind::File {
                    size: st.st_size as u64,
                };
                let file = File::from(open_file(dir, &name, &st, &full)?);
                let entry = entry_of(&st, path, kind, dir, &name, &full)?;
                sink((entry, Some(file)))?;
            }
            SFlag::S_IFDIR => {
                let entry = entry_of(&st, path.clone(), Kind::Dir, dir, &name, &full)?;
                sink((entry, None))?;
                let sub = openat(
                    dir,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(nix_err(&full))?;
                walk_dir(sub.as_fd(), &path, root, sink, links)?;
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
                sink((entry_of(&st, path, kind, dir, &name, &full)?, None))?;
            }
        }
    }
    Ok(())
}

/// Opens the regular file `name` that the walk saw as `seen`, for reading: without
/// following a symlink, without blocking (a FIFO swapped in after the stat would
/// otherwise hang the import until a writer came), without touching its atime when we
/// may. Whatever was opened must be that same regular file, else an error naming `full`.
fn open_file(dir: BorrowedFd<'_>, name: &OsStr, seen: &FileStat, full: &Path) -> Result<OwnedFd> {
    let changed = |now: &str| StoreError::Entry {
        path: full.to_path_buf(),
        reason: format!("changed while importing: no longer the regular file listed ({now})"),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(dir, name, flags, Mode::empty()),
        other => other,
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err(changed("now a symlink")),
        Err(Errno::ENOENT) => return Err(changed("it is gone")),
        Err(e) => return Err(nix_err(full)(e)),
    };
    let st = fstat(&fd).map_err(nix_err(full))?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(changed("now a special file"));
    }
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) {
        return Err(changed("now another file"));
    }
    Ok(fd)
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
    // Names come from getdents (or are "."): never a NUL inside.
    let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| StoreError::Entry {
        path: full.to_path_buf(),
        reason: "NUL in a file name".into(),
    })?;
    let mut names = Vec::new();
    match sys::listxattrat(dir, &cname, &mut names) {
        Ok(()) => {}
        // Filesystems without xattr support have none to record.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => names.clear(),
        Err(e) => return Err(io_err(full)(e)),
    }
    for attr in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let attr = std::ffi::CString::new(attr).map_err(|e| io_err(full)(e.into()))?;
        if let Some(value) = sys::getxattrat(dir, &cname, &attr).map_err(io_err(full))? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Stats `name` in `dir` as the walk does, lets `swap` replace it, then opens it.
    fn open_after(swap: impl FnOnce(&Path)) -> Result<OwnedFd> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"content").unwrap();
        let dir = nix::fcntl::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let seen = fstatat(&dir, "f", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        swap(&path);
        // Off the test thread: a blocking open must fail the test, not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open_file(dir.as_fd(), OsStr::new("f"), &seen, &path));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("open_file blocked on what replaced the file")
    }

    fn reason(r: Result<OwnedFd>) -> String {
        match r {
            Err(StoreError::Entry { path, reason }) => {
                assert!(path.ends_with("f"), "{path:?}");
                reason
            }
            other => panic!("expected an entry error, got {other:?}"),
        }
    }

    #[test]
    fn the_walk_stays_within_its_window_and_stops_when_told() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        for name in ["a", "d/b", "d/c", "e"] {
            std::fs::write(tmp.path().join(name), vec![7u8; 600_000]).unwrap();
        }
        std::os::unix::fs::symlink("a", tmp.path().join("link")).unwrap();
        let names = |rx: &Receiver<Result<Walked>>| -> Vec<String> {
            rx.try_iter()
                .map(|w| w.map_or("ERR".into(), |(e, _)| e.path.display().to_string()))
                .collect()
        };
        // Nothing consumed: up to "d/b" (1.2 MB > 1 MB), then it waits.
        let (consumed, done) = (AtomicU64::new(0), AtomicBool::new(false));
        let (tx, rx) = sync_channel(100);
        std::thread::scope(|s| {
            let t = s.spawn(|| walk_ahead(tmp.path(), &tx, &consumed, &done, 1_000_000));
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!t.is_finished(), "it went past its window");
            done.store(true, Ordering::Relaxed);
            assert_eq!(t.join().unwrap(), 1_200_000);
        });
        // Told to stop, it ends with an error.
        assert_eq!(names(&rx), ["", "a", "d", "d/b", "ERR"]);
        // Everything consumed as it goes: the whole tree, the symlink not followed.
        let (consumed, done) = (AtomicU64::new(u64::MAX / 2), AtomicBool::new(false));
        let (tx, rx) = sync_channel(100);
        assert_eq!(walk_ahead(tmp.path(), &tx, &consumed, &done, 0), 2_400_000);
        assert_eq!(names(&rx), ["", "a", "d", "d/b", "d/c", "e", "link"]);
    }

    #[test]
    fn unchanged_file_opens_and_reads() {
        let mut f = File::from(open_after(|_| {}).unwrap());
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "content");
    }

    #[test]
    fn file_swapped_for_a_fifo_is_an_error_not_a_hang() {
        let r = open_after(|p| {
            std::fs::remove_file(p).unwrap();
            nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o644)).unwrap();
        });
        assert!(reason(r).contains("special file"));
    }

    #[test]
    fn file_swapped_for_another_file_or_a_symlink_or_removed_is_an_error() {
        let r = open_after(|p| {
            // Made before the old one goes, so it cannot reuse its inode number.
            let new = p.with_file_name("new");
            std::fs::write(&new, b"other").unwrap();
            std::fs::rename(&new, p).unwrap();
        });
        assert!(reason(r).contains("another file"));
        let r = open_after(|p| {
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", p).unwrap();
        });
        assert!(reason(r).contains("symlink"));
        let r = open_after(|p| std::fs::remove_file(p).unwrap());
        assert!(reason(r).contains("gone"));
    }
}
