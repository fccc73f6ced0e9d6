//! The shifting engine: re-owns a tree from one id range to another.
//!
//! Every entry is reached by name inside a directory fd opened with `O_NOFOLLOW`, and
//! changed with `AT_SYMLINK_NOFOLLOW` calls, so a tree rewritten while we walk it (a
//! directory swapped for a symlink) can never redirect a change outside the root. Per
//! entry: one `statx`; when the owner must change, one `listxattr` (not for symlinks,
//! which can carry neither capabilities nor ACLs), the id-carrying xattrs read before
//! `chown` (which deletes `security.capability` and clears setuid/setgid) and written back
//! shifted after it. Entries already owned right cost the `statx` only, so a second run
//! changes nothing. Directories are walked in parallel (rayon).

pub(crate) use super::meta::{Meta, set_meta_at};
use super::range::{RangeError, Shift};
use super::xattr::{self, XattrError};
use crate::sys;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What to shift and how.
#[derive(Clone, Debug)]
pub struct ShiftOptions {
    pub shift: Shift,
    /// Descend into other filesystems mounted below the root (off by default).
    pub cross_mounts: bool,
    /// Report what would change without changing anything.
    pub dry_run: bool,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Record every changed entry in the report (for `-v`).
    pub record_changes: bool,
}

impl ShiftOptions {
    pub fn new(shift: Shift) -> Self {
        ShiftOptions {
            shift,
            cross_mounts: false,
            dry_run: false,
            threads: 0,
            record_changes: false,
        }
    }
}

/// One changed entry: old and new owner.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    pub path: PathBuf,
    pub from: (u32, u32),
    pub to: (u32, u32),
}

/// An entry that could not be shifted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failure {
    pub path: PathBuf,
    pub error: String,
}

/// The outcome of a walk: counts, the changes (when recorded) and every failure.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ShiftReport {
    /// Entries visited.
    pub entries: u64,
    /// Entries whose owner or id-carrying xattrs changed.
    pub shifted: u64,
    pub changes: Vec<Change>,
    pub failures: Vec<Failure>,
    /// Mount points below the root that were left alone (without `cross_mounts`).
    pub skipped_mounts: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// Why one entry could not be shifted (goes into [`Failure::error`]).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("{call}")]
    Io {
        call: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Xattr(#[from] XattrError),
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("changed while being walked")]
    Raced,
}

fn io_err(call: &'static str) -> impl FnOnce(io::Error) -> EntryError {
    move |source| EntryError::Io { call, source }
}

fn nix_err(call: &'static str) -> impl FnOnce(nix::Error) -> EntryError {
    move |e| EntryError::Io {
        call,
        source: io::Error::from(e),
    }
}

/// How many entries pass between two progress callbacks.
const PROGRESS_EVERY: u64 = 256;
/// Entries of one directory handled per task, so one huge directory still uses every core.
const ENTRIES_PER_TASK: usize = 128;

const STATX_MASK: u32 = libc::STATX_TYPE
    | libc::STATX_MODE
    | libc::STATX_UID
    | libc::STATX_GID
    | libc::STATX_INO
    | libc::STATX_NLINK;

/// Shifts every entry under `root` (including `root`); `progress` is called with the
/// number of entries done so far. Per-entry failures go in the report, not the error.
pub fn shift_tree(
    root: &Path,
    opts: &ShiftOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<ShiftReport, ShiftError> {
    // Validate the shift once: after this every in-range id maps.
    Shift::new(opts.shift.to, opts.shift.range)?;
    let open_err = |source: io::Error| ShiftError::Open {
        path: root.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(root).map_err(open_err)?;
    let walker = Walker {
        opts,
        progress,
        hardlinks: Mutex::new(HashSet::new()),
        entries: AtomicU64::new(0),
        shifted: AtomicU64::new(0),
        report: Mutex::new(ShiftReport::default()),
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = if threads > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| ShiftError::Threads(e.to_string()))?;
        Some(pool)
    } else {
        None
    };

    if meta.is_dir() {
        // The root itself is shifted as `.` of its own fd, so a root without a parent
        // (`/`) needs no special case.
        let fd = open_dir(None, root).map_err(open_err)?;
        let dir = Arc::new(DirFd {
            fd,
            path: root.to_path_buf(),
        });
        let root_path = || root.to_path_buf();
        if walker
            .entry(dir.fd.as_fd(), c".", &root_path, true)
            .is_some()
        {
            match &pool {
                Some(pool) => pool.scope(|scope| walker.walk(scope, dir)),
                None => walker.walk_here(dir),
            }
        }
    } else {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = root
            .file_name()
            .and_then(|n| sys::cstr(n).ok())
            .ok_or_else(|| open_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let fd = open_dir(None, parent).map_err(open_err)?;
        walker.entry(fd.as_fd(), &name, &|| root.to_path_buf(), true);
    }

    let mut report = walker
        .report
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    report.entries = walker.entries.load(Ordering::Relaxed);
    report.shifted = walker.shifted.load(Ordering::Relaxed);
    report.changes.sort_by(|a, b| a.path.cmp(&b.path));
    report.failures.sort_by(|a, b| a.path.cmp(&b.path));
    report.skipped_mounts.sort();
    if let Some(progress) = progress {
        progress(report.entries);
    }
    Ok(report)
}

/// Opens a directory without following a symlink in its last component: relative to
/// `parent`'s fd when given, else the (user-supplied) path as is.
fn open_dir(parent: Option<BorrowedFd<'_>>, path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match parent {
        Some(p) => openat(p, path, flags, Mode::empty()),
        None => nix::fcntl::open(path, flags, Mode::empty()),
    };
    fd.map_err(io::Error::from)
}

/// An open directory and its path (for messages only; never used to reach files).
struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

/// An id-carrying xattr of one entry: its value before and after the shift, and whether
/// it must be written (the capability always: chown deletes it).
struct IdXattr {
    name: &'static CStr,
    old: Vec<u8>,
    new: Vec<u8>,
    write: bool,
}

struct Walker<'a> {
    opts: &'a ShiftOptions,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// (dev, ino) of multiply-linked inodes already shifted.
    hardlinks: Mutex<HashSet<(u64, u64)>>,
    entries: AtomicU64,
    shifted: AtomicU64,
    report: Mutex<ShiftReport>,
}

impl Walker<'_> {
    fn fail(&self, path: PathBuf, error: impl ToString) {
        self.lock_report().failures.push(Failure {
            path,
            error: error.to_string(),
        });
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, ShiftReport> {
        self.report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `dir` and hands its entries to tasks in batches. A subdirectory is opened
    /// in its own task, just before it is read: opened eagerly, a directory with
    /// thousands of subdirectories would hold thousands of fds while they wait.
    fn walk<'s>(&'s self, scope: &rayon::Scope<'s>, dir: Arc<DirFd>) {
        let Some(entries) = self.read(&dir) else {
            return;
        };
        let mut entries = entries.into_iter();
        loop {
            let batch: Vec<sys::DirEntry> = entries.by_ref().take(ENTRIES_PER_TASK).collect();
            if batch.is_empty() {
                break;
            }
            let dir = Arc::clone(&dir);
            scope.spawn(move |scope| {
                for entry in batch {
                    let Some(stx) = self.visit(&dir, &entry.name) else {
                        continue;
                    };
                    let dir = Arc::clone(&dir);
                    scope.spawn(move |scope| {
                        if let Some(child) = self.open_child(&dir, &entry.name, &stx) {
                            self.walk(scope, child);
                        }
                    });
                }
            });
        }
    }

    /// The same walk on the calling thread only: no task hand-offs when one core is all
    /// there is. Depth first, so open directory fds stay about as many as the tree is deep.
    fn walk_here(&self, root: Arc<DirFd>) {
        let mut stack = vec![(root, None::<std::vec::IntoIter<sys::DirEntry>>)];
        while let Some((dir, entries)) = stack.last_mut() {
            let entries = match entries {
                Some(entries) => entries,
                None => match self.read(dir) {
                    Some(list) => entries.insert(list.into_iter()),
                    None => {
                        stack.pop();
                        continue;
                    }
                },
            };
            match entries.next() {
                Some(entry) => {
                    let child = self
                        .visit(dir, &entry.name)
                        .and_then(|stx| self.open_child(dir, &entry.name, &stx));
                    if let Some(child) = child {
                        stack.push((child, None));
                    }
                }
                None => {
                    stack.pop();
                }
            }
        }
    }

    /// The entries of `dir` in inode order, so consecutive stats and chowns touch
    /// neighbouring inode-table blocks rather than hash order's scattered ones.
    fn read(&self, dir: &DirFd) -> Option<Vec<sys::DirEntry>> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut entries = BUF
            .with_borrow_mut(|buf| sys::read_dir(dir.fd.as_fd(), buf))
            .map_err(|e| self.fail(dir.path.clone(), format!("getdents: {e}")))
            .ok()?;
        entries.sort_unstable_by_key(|e| e.ino);
        Some(entries)
    }

    /// Shifts one entry of `dir`; when it is a directory to walk, returns its statx.
    fn visit(&self, dir: &DirFd, name: &CStr) -> Option<sys::Statx> {
        let path = || dir.path.join(OsStr::from_bytes(name.to_bytes()));
        let stx = self.entry(dir.fd.as_fd(), name, &path, false)?;
        (u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR).then_some(stx)
    }

    /// Opens the subdirectory `name` of `dir`, which `stx` described.
    fn open_child(&self, dir: &DirFd, name: &CStr, stx: &sys::Statx) -> Option<Arc<DirFd>> {
        let path = || dir.path.join(OsStr::from_bytes(name.to_bytes()));
        let fd = match open_dir(
            Some(dir.fd.as_fd()),
            Path::new(OsStr::from_bytes(name.to_bytes())),
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            // A symlink or file swapped in since the statx: not ours to follow.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                self.fail(path(), EntryError::Raced);
                return None;
            }
            Err(e) => {
                self.fail(path(), format!("open: {e}"));
                return None;
            }
        };
        // The directory we opened must be the one we looked at (not another mount).
        match nix::sys::stat::fstat(&fd) {
            Ok(st)
                if st.st_ino == stx.stx_ino
                    && st.st_dev == libc::makedev(stx.stx_dev_major, stx.stx_dev_minor) => {}
            Ok(_) => {
                self.fail(path(), EntryError::Raced);
                return None;
            }
            Err(e) => {
                self.fail(path(), format!("fstat: {e}"));
                return None;
            }
        }
        Some(Arc::new(DirFd { fd, path: path() }))
    }

    /// Shifts the entry `name` in `dir`. Returns its statx when the walk should go on into
    /// it, `None` when it vanished, failed to stat, or is a mount point left alone.
    fn entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &dyn Fn() -> PathBuf,
        is_root: bool,
    ) -> Option<sys::Statx> {
        let stx = match sys::statx_at(dir, name, STATX_MASK) {
            Ok(stx) => stx,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            Err(e) => {
                self.fail(path(), format!("statx: {e}"));
                return None;
            }
        };
        let mount_root = rustix::fs::StatxAttributes::MOUNT_ROOT;
        if !is_root
            && !self.opts.cross_mounts
            && stx.stx_attributes_mask.contains(mount_root)
            && stx.stx_attributes.contains(mount_root)
        {
            self.lock_report().skipped_mounts.push(path());
            return None;
        }
        let done = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(progress) = self.progress
            && done % PROGRESS_EVERY == 0
        {
            progress(done);
        }
        match self.change(dir, name, &stx) {
            Ok(Some((from, to))) => {
                self.shifted.fetch_add(1, Ordering::Relaxed);
                if self.opts.record_changes {
                    self.lock_report().changes.push(Change {
                        path: path(),
                        from,
                        to,
                    });
                }
            }
            Ok(None) => {}
            Err(EntryError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return None;
            }
            Err(e) => self.fail(path(), crate::error_line(&e)),
        }
        Some(stx)
    }

    /// Re-owns one entry (with its capability, ACLs and setuid/setgid bits). Returns the
    /// old and new owner when it changed, `None` when it was already right.
    #[allow(clippy::type_complexity)]
    fn change(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        stx: &sys::Statx,
    ) -> Result<Option<((u32, u32), (u32, u32))>, EntryError> {
        let shift = self.opts.shift;
        let from = (stx.stx_uid, stx.stx_gid);
        let to = (shift.map(from.0)?, shift.map(from.1)?);
        if from == to {
            return Ok(None);
        }
        let kind = u32::from(stx.stx_mode) & libc::S_IFMT;
        if kind != libc::S_IFDIR && stx.stx_nlink > 1 && !self.first_link(stx) {
            // Another name of this inode is (being) shifted.
            return Ok(None);
        }
        if self.opts.dry_run {
            return Ok(Some((from, to)));
        }
        // Read and shift id-carrying xattrs first: chown deletes the capability, and a
        // malformed one must fail the entry before anything is lost.
        let xattrs = if kind == libc::S_IFLNK {
            Vec::new()
        } else {
            id_xattrs(dir, name, shift)?
        };
        chown(dir, name, to).map_err(nix_err("chown"))?;
        // chown clears setuid (and setgid) on non-directories; the mode is put back.
        let mode = u32::from(stx.stx_mode);
        let restore_mode = kind != libc::S_IFDIR
            && kind != libc::S_IFLNK
            && mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        let mode = restore_mode.then_some(mode & 0o7777);
        if let Err(e) = restore_after_chown(dir, name, mode, &xattrs) {
            // Half done must not look done: an entry left with its new owner would be
            // skipped by the next run. Put the old owner, mode and values back.
            let _ = chown(dir, name, from);
            if let Some(mode) = mode {
                let _ = sys::fchmodat_nofollow(dir, name, mode);
            }
            for x in &xattrs {
                let _ = sys::setxattrat(dir, name, x.name, &x.old);
            }
            return Err(e);
        }
        Ok(Some((from, to)))
    }

    /// True for the first name of a multiply linked inode met (the one that shifts it).
    fn first_link(&self, stx: &sys::Statx) -> bool {
        let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
        self.hardlinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert((dev, stx.stx_ino))
    }
}

/// The id-carrying xattrs of an entry (capability, ACLs), with their values shifted.
fn id_xattrs(dir: BorrowedFd<'_>, name: &CStr, shift: Shift) -> Result<Vec<IdXattr>, EntryError> {
    let mut xattrs = Vec::new();
    let mut names = Vec::new();
    sys::listxattrat(dir, name, &mut names).map_err(io_err("listxattr"))?;
    for attr in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let (cname, key) = match attr {
            b"security.capability" => (c"security.capability", xattr::CAPABILITY),
            b"system.posix_acl_access" => (c"system.posix_acl_access", xattr::ACL_ACCESS),
            b"system.posix_acl_default" => (c"system.posix_acl_default", xattr::ACL_DEFAULT),
            _ => continue,
        };
        let Some(old) = sys::getxattrat(dir, name, cname).map_err(io_err("getxattr"))? else {
            continue;
        };
        let new = xattr::shift_value(key, &old, shift)?;
        // chown drops the capability: it must be written back even if unchanged.
        let write = key == xattr::CAPABILITY || new != old;
        xattrs.push(IdXattr {
            name: cname,
            old,
            new,
            write,
        });
    }
    Ok(xattrs)
}

fn chown(dir: BorrowedFd<'_>, name: &CStr, (uid, gid): (u32, u32)) -> nix::Result<()> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Puts back what a chown cleared: the setuid/setgid `mode` (when there is one) and the
/// shifted xattrs.
fn restore_after_chown(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: Option<u32>,
    xattrs: &[IdXattr],
) -> Result<(), EntryError> {
    if let Some(mode) = mode {
        sys::fchmodat_nofollow(dir, name, mode).map_err(io_err("chmod"))?;
    }
    for x in xattrs.iter().filter(|x| x.write) {
        sys::setxattrat(dir, name, x.name, &x.new).map_err(io_err("setxattr"))?;
    }
    Ok(())
}
