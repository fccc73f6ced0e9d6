//! Index + chunks -> tree. Builds the tree in `DEST.partial-XXXX` and renames it to
//! `DEST` only when every entry is complete, so a failure (a missing or corrupt chunk, a
//! full disk) never leaves a tree that looks whole. Every path is resolved under the
//! destination with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, whatever the index
//! says. Files are written in parallel, in stream order, each chunk decompressed once per
//! batch and its hash checked. Ids (and the ids inside capability and ACL xattrs) are
//! shifted as entries are created, with no extra pass.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use rayon::prelude::*;

use super::chunks::Durability;
use super::index::Record;
use super::{Entry, Index, Kind, Progress, Result, Store, StoreError, chunks, io_err, nix_err};
use crate::idmap::meta::{self, Meta, Step};
use crate::idmap::range::Shift;
use crate::idmap::xattr;
use crate::sys;

/// How much content one parallel batch of files covers.
const BATCH_BYTES: u64 = 4 << 20;

/// Options of [`Store::extract`](super::Store::extract).
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Map every uid/gid (and the ids in capability/ACL xattrs) while extracting.
    pub shift: Option<Shift>,
    /// Make the tree durable before publishing DEST, so a crash never leaves a DEST with
    /// lost data (default true): one syncfs of its filesystem, or each file and directory
    /// when other writers have much more data in flight (`chunks::Durability::for_sync`).
    pub sync: bool,
    /// Counters to watch while the extract runs.
    pub progress: Option<Arc<Progress>>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            shift: None,
            sync: true,
            progress: None,
        }
    }
}

/// What an extract did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExtractReport {
    pub name: String,
    pub dest: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

const RESOLVE: u64 = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS;

pub(crate) fn extract(
    store: &Store,
    index: &Index,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport> {
    // Decided up front: writeback is started file by file only for per-file syncs.
    let durability = if opts.sync {
        let bytes = index.content_bytes();
        Durability::for_sync(bytes, sys::dirty_bytes().map(|d| d + bytes))
    } else {
        Durability::None
    };
    extract_durably(store, index, dest, opts, durability)
}

fn extract_durably(
    store: &Store,
    index: &Index,
    dest: &Path,
    opts: &ExtractOptions,
    durability: Durability,
) -> Result<ExtractReport> {
    let dest_err = |reason: &str| StoreError::Destination {
        path: dest.to_path_buf(),
        reason: reason.to_string(),
    };
    let fname = dest
        .file_name()
        .ok_or_else(|| dest_err("has no file name"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut rd = std::fs::read_dir(dest).map_err(io_err(dest))?;
            if rd.next().is_some() {
                return Err(dest_err("exists and is not empty"));
            }
        }
        Ok(_) => return Err(dest_err("exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dest)(e)),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut pname = fname.to_os_string();
    pname.push(format!(".partial-{:x}{:x}", std::process::id(), nanos));
    let partial = parent.join(pname);
    std::fs::create_dir(&partial).map_err(io_err(&partial))?;
    let result = (|| {
        let root: OwnedFd = nix::fcntl::open(
            &partial,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_err(&partial))?;
        let ctx = Ctx::new(store.chunks()?, index, root, dest, opts, durability);
        ctx.run()?;
        match durability {
            Durability::None => {}
            // One pass over the disk for the whole tree, data and metadata.
            Durability::Filesystem => {
                let fd = File::open(&partial).map_err(io_err(&partial))?;
                nix::unistd::syncfs(&fd).map_err(|e| io_err(&partial)(e.into()))?;
            }
            // Our files and directories only; their writeback started as they were written.
            Durability::Files => {
                let (mut files, mut dirs) = (Vec::new(), vec![partial.clone()]);
                for r in &index.records {
                    match r.entry.kind {
                        Kind::File { .. } => files.push(partial.join(&r.entry.path)),
                        Kind::Dir if !r.entry.path.as_os_str().is_empty() => {
                            dirs.push(partial.join(&r.entry.path))
                        }
                        _ => {}
                    }
                }
                super::sync_many(
                    &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
                    true,
                    16,
                )?;
                super::sync_many(
                    &dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
                    false,
                    16,
                )?;
            }
        }
        std::fs::rename(&partial, dest).map_err(io_err(dest))?;
        if durability != Durability::None {
            File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = crate::tree::remove_tree(&partial);
        return Err(e);
    }
    Ok(ExtractReport {
        name: index.name.clone(),
        dest: dest.to_path_buf(),
        entries: index.records.len() as u64,
        files: index.file_count(),
        bytes: index.content_bytes(),
    })
}

struct Ctx<'a> {
    chunks: chunks::Chunks,
    index: &'a Index,
    root: OwnedFd,
    /// Shown in errors instead of the temporary directory.
    dest: &'a Path,
    shift: Option<Shift>,
    durability: Durability,
    progress: Arc<Progress>,
    /// Stream offset where each chunk starts.
    starts: Vec<u64>,
}

/// The chunk a batch decompressed last: consecutive small files share it.
struct Cache {
    chunk: usize,
    data: Vec<u8>,
}

impl<'a> Ctx<'a> {
    fn new(
        chunks: chunks::Chunks,
        index: &'a Index,
        root: OwnedFd,
        dest: &'a Path,
        opts: &ExtractOptions,
        durability: Durability,
    ) -> Self {
        let mut starts = Vec::with_capacity(index.chunks.len());
        let mut at = 0u64;
        for c in &index.chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        let progress = opts.progress.clone().unwrap_or_default();
        Progress::add(&progress.total, index.content_bytes());
        Ctx {
            chunks,
            index,
            root,
            dest,
            shift: opts.shift,
            durability,
            progress,
            starts,
        }
    }

    fn run(&self) -> Result<()> {
        let records = &self.index.records;
        // 1. Directories, parents first (records are sorted), private until the end.
        for r in records.iter().skip(1) {
            if r.entry.kind == Kind::Dir {
                let (parent, name) = self.parent(&r.entry.path)?;
                nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(nix_err(self.shown(&r.entry.path)))?;
            }
        }
        // 2. Files in stream order, cut into batches that run in parallel; other
        // non-directories in one more batch.
        let mut files: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r.entry.kind, Kind::File { .. }))
            .collect();
        files.sort_by_key(|r| r.offset);
        let mut batches: Vec<Vec<&Record>> = Vec::new();
        let mut bytes = u64::MAX;
        for r in files {
            if bytes >= BATCH_BYTES {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += file_size(r) + 512;
            if let Some(b) = batches.last_mut() {
                b.push(r);
            }
        }
        batches.push(
            records
                .iter()
                .filter(|r| {
                    !matches!(
                        r.entry.kind,
                        Kind::File { .. } | Kind::Dir | Kind::Hardlink { .. }
                    )
                })
                .collect(),
        );
        batches.par_iter().try_for_each(|b| self.batch(b))?;
        // 3. Hardlinks, now that their targets exist.
        for r in records {
            if let Kind::Hardlink { target } = &r.entry.kind {
                let (tparent, tname) = self.parent(target)?;
                let (parent, name) = self.parent(&r.entry.path)?;
                nix::unistd::linkat(&tparent, tname, &parent, name, AtFlags::empty())
                    .map_err(nix_err(self.shown(&r.entry.path)))?;
            }
        }
        // 4. Directory metadata, deepest first, so their times survive their contents.
        for r in records.iter().rev() {
            if r.entry.kind == Kind::Dir {
                let path = &r.entry.path;
                let rel = if path.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    path.as_path()
                };
                let fd = sys::openat2(
                    self.root.as_fd(),
                    rel,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    RESOLVE,
                )
                .map_err(io_err(self.shown(path)))?;
                self.set_meta_fd(&r.entry, fd.as_fd())?;
            }
        }
        Ok(())
    }

    /// The path errors show: under DEST, a long one shortened.
    fn shown(&self, path: &Path) -> PathBuf {
        let full = self.dest.join(path);
        PathBuf::from(crate::store::oci::shorten(&full.to_string_lossy()))
    }

    /// The parent directory of `path` (resolved beneath the root, no symlinks) and the
    /// last component.
    fn parent<'p>(&self, path: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
        let name = path.file_name().ok_or_else(|| StoreError::Entry {
            path: path.to_path_buf(),
            reason: "no file name".into(),
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = sys::openat2(
            self.root.as_fd(),
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE,
        )
        .map_err(io_err(self.shown(path)))?;
        Ok((fd, name))
    }

    fn batch(&self, records: &[&Record]) -> Result<()> {
        let mut cache = Cache {
            chunk: usize::MAX,
            data: Vec::new(),
        };
        for r in records {
            let e = &r.entry;
            let shown = self.shown(&e.path);
            match &e.kind {
                Kind::File { .. } => {
                    let fd = sys::openat2(
                        self.root.as_fd(),
                        &e.path,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                        RESOLVE,
                    )
                    .map_err(io_err(&shown))?;
                    let mut file = File::from(fd);
                    self.write_content(r, &mut cache, &mut file)?;
                    if self.durability == Durability::Files && file_size(r) > 0 {
                        // Start writeback now; the syncs at the end then find little to do.
                        sys::start_writeback(file.as_fd(), 0, 0).map_err(io_err(&shown))?;
                    }
                    self.set_meta_fd(e, file.as_fd())?;
                }
                Kind::Symlink { target } => {
                    let (parent, name) = self.parent(&e.path)?;
                    nix::unistd::symlinkat(target.as_path(), &parent, name)
                        .map_err(nix_err(&shown))?;
                    self.set_meta_at(e, parent.as_fd(), name, true)?;
                }
                Kind::Char { rdev } | Kind::Block { rdev } => {
                    self.mknod(e, kind_flag(&e.kind), *rdev)?
                }
                Kind::Fifo | Kind::Socket => self.mknod(e, kind_flag(&e.kind), 0)?,
                Kind::Dir | Kind::Hardlink { .. } => {}
            }
        }
        Ok(())
    }

    fn mknod(&self, e: &Entry, kind: SFlag, rdev: u64) -> Result<()> {
        let (parent, name) = self.parent(&e.path)?;
        nix::sys::stat::mknodat(&parent, name, kind, Mode::from_bits_truncate(0o600), rdev)
            .map_err(|err| {
                let why = match err {
                    nix::errno::Errno::EPERM => ": creating device nodes needs root",
                    _ => "",
                };
                op_err(&self.shown(&e.path), "mknod", err, why)
            })?;
        self.set_meta_at(e, parent.as_fd(), name, false)
    }

    /// Writes a file's span of the content stream, verifying each chunk as it is read.
    /// Blocks of zeros are not written: the file is sparse where the image's was.
    fn write_content(&self, r: &Record, cache: &mut Cache, file: &mut File) -> Result<()> {
        let mut off = r.offset;
        let end = r.offset + file_size(r);
        let shown = || self.shown(&r.entry.path);
        // How far the file was written: zeros after that are left to the final size.
        let mut written = 0;
        while off < end {
            let ci = self.starts.partition_point(|s| *s <= off) - 1;
            let c = &self.index.chunks[ci];
            if cache.chunk != ci {
                cache.data = self.chunks.read(&c.id, c.len, &self.shown(&r.entry.path))?;
                cache.chunk = ci;
            }
            let within = (off - self.starts[ci]) as usize;
            let take = (c.len as usize - within).min((end - off) as usize);
            let to = write_sparse(file, off - r.offset, &cache.data[within..within + take])
                .map_err(|e| io_err(shown())(e))?;
            written = written.max(to);
            off += take as u64;
            Progress::add(&self.progress.bytes, take as u64);
        }
        // Zeros skipped at the end still count: the size is the image's.
        if written < file_size(r) {
            file.set_len(file_size(r)).map_err(|e| io_err(shown())(e))?;
        }
        Ok(())
    }

    fn ids(&self, e: &Entry) -> Result<(u32, u32)> {
        match self.shift {
            None => Ok((e.uid, e.gid)),
            Some(s) => {
                let err = |x: crate::idmap::range::RangeError| StoreError::Shift {
                    path: self.shown(&e.path),
                    reason: x.to_string(),
                };
                Ok((s.map(e.uid).map_err(err)?, s.map(e.gid).map_err(err)?))
            }
        }
    }

    /// The entry's xattrs as they should be written (ids shifted when asked).
    fn xattrs(&self, e: &Entry) -> Result<Vec<(CString, Vec<u8>)>> {
        let mut out = Vec::with_capacity(e.xattrs.len());
        for (name, value) in &e.xattrs {
            let value = match (self.shift, std::str::from_utf8(name)) {
                (Some(s), Ok(n)) if xattr::carries_ids(n) => xattr::shift_value(n, value, s)
                    .map_err(|x| StoreError::Shift {
                        path: self.shown(&e.path),
                        reason: x.to_string(),
                    })?,
                _ => value.clone(),
            };
            let name = CString::new(name.clone()).map_err(|_| StoreError::Entry {
                path: e.path.clone(),
                reason: "NUL in xattr name".into(),
            })?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// Owner, xattrs, mode, then times, on an open file or directory. The order matters:
    /// chown clears setuid bits and capabilities, so they come after it.
    fn set_meta_fd(&self, e: &Entry, fd: BorrowedFd<'_>) -> Result<()> {
        let shown = self.shown(&e.path);
        let (uid, gid) = self.ids(e)?;
        nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|err| chown_err(&shown, uid, gid, err))?;
        for (name, value) in self.xattrs(e)? {
            sys::fsetxattr(fd, &name, &value).map_err(|err| xattr_err(&shown, &name, err))?;
        }
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(e.mode)).map_err(nix_err(&shown))?;
        let t = timespec(e);
        nix::sys::stat::futimens(fd, &t, &t).map_err(nix_err(&shown))
    }

    /// The same for an entry we cannot open (symlink, device, fifo, socket).
    fn set_meta_at(
        &self,
        e: &Entry,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        symlink: bool,
    ) -> Result<()> {
        let shown = self.shown(&e.path);
        let (uid, gid) = self.ids(e)?;
        let xattrs = self.xattrs(e)?;
        let t = timespec(e);
        // We just created this node, but never follow a link put in its place: a symlink
        // where `e` says there is none fails the chmod.
        let kind = if symlink { libc::S_IFLNK } else { 0 };
        let meta = Meta {
            uid,
            gid,
            mode: kind | (e.mode & 0o7777),
            atime: t,
            mtime: t,
            xattrs: &xattrs,
        };
        meta::set_meta_at(dir, name, &meta).map_err(|err| match err.step {
            Step::Chown => {
                let errno = err.source.raw_os_error().unwrap_or(libc::EIO);
                chown_err(&shown, uid, gid, nix::errno::Errno::from_raw(errno))
            }
            Step::Xattr(i) => xattr_err(&shown, &xattrs[i].0, err.source),
            Step::Chmod | Step::Times => io_err(&shown)(err.source),
        })
    }
}

/// An error of operation `op` on `shown`, with `why` added to the system's message.
fn op_err(shown: &Path, op: &str, err: nix::Error, why: &str) -> StoreError {
    StoreError::Io {
        path: shown.to_path_buf(),
        err: std::io::Error::new(
            std::io::Error::from(err).kind(),
            format!("{op}: {}{why}", err.desc()),
        ),
    }
}

/// A failed chown: outside a user namespace an unprivileged user can give files only to
/// itself, which a bare `Operation not permitted` does not say.
fn chown_err(shown: &Path, uid: u32, gid: u32, err: nix::Error) -> StoreError {
    let me = nix::unistd::geteuid();
    let why = match err {
        nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL if !me.is_root() => format!(
            " (uid {me} cannot give files to other ids outside a user namespace: extract \
             with `--shift {me} --range 1` to own every file, or inside `warren run` or \
             `unshare -r`, where the image's ids are mapped)"
        ),
        nix::errno::Errno::EINVAL => " (the id is not mapped in this user namespace)".into(),
        _ => String::new(),
    };
    op_err(shown, &format!("chown to {uid}:{gid}"), err, &why)
}

fn xattr_err(shown: &Path, name: &CString, err: std::io::Error) -> StoreError {
    StoreError::Io {
        path: shown.to_path_buf(),
        err: std::io::Error::new(
            err.kind(),
            format!("setting xattr {}: {err}", name.to_string_lossy()),
        ),
    }
}

/// The unit of holes: a file system block.
const HOLE: u64 = 4096;

/// Writes `data` at offset `at` of a file just created (so every byte not written reads as
/// zero), leaving out the pieces, cut at block boundaries, that are all zeros: whole blocks
/// of them become holes. Returns the offset just past the last byte written (`at` if none).
fn write_sparse(file: &File, at: u64, data: &[u8]) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // The pending run of data to write: where it starts in `data`.
    let mut run: Option<usize> = None;
    let mut end = at;
    let mut i = 0;
    while i < data.len() {
        let pos = at + i as u64;
        let n = ((HOLE - pos % HOLE) as usize).min(data.len() - i);
        let zero = is_zero(&data[i..i + n]);
        match (zero, run) {
            (true, Some(start)) => {
                file.write_all_at(&data[start..i], at + start as u64)?;
                end = pos;
                run = None;
            }
            (false, None) => run = Some(i),
            _ => {}
        }
        i += n;
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], at + start as u64)?;
        end = at + data.len() as u64;
    }
    Ok(end)
}

fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

fn file_size(r: &Record) -> u64 {
    match r.entry.kind {
        Kind::File { size } => size,
        _ => 0,
    }
}

fn kind_flag(kind: &Kind) -> SFlag {
    match kind {
        Kind::Char { .. } => SFlag::S_IFCHR,
        Kind::Block { .. } => SFlag::S_IFBLK,
        Kind::Fifo => SFlag::S_IFIFO,
        _ => SFlag::S_IFSOCK,
    }
}

fn timespec(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime.sec, i64::from(e.mtime.nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of zeros are left out wherever they fall; whole blocks of them are holes.
    #[test]
    fn write_sparse_skips_zeros_and_keeps_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let file = File::create(&path).unwrap();
        let mut want = vec![0u8; 64 << 10];
        want[100] = 1;
        want[5000..5003].copy_from_slice(b"abc");
        want[(64 << 10) - 1] = 9;
        // Fed in odd pieces, as chunks cut a file.
        let mut at = 0;
        for piece in want.chunks(3001) {
            let end = write_sparse(&file, at, piece).unwrap();
            assert!((at..=at + piece.len() as u64).contains(&end));
            at += piece.len() as u64;
        }
        file.set_len(want.len() as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Blocks 0, 1 and 15 hold data; the 12 between are holes.
        assert!(
            file.metadata().unwrap().blocks() * 512 <= 4 * HOLE,
            "not sparse"
        );
        assert!(
            is_zero(&[0; 33]) && !is_zero(&[0, 0, 1]) && !is_zero(&[[0; 16], [1; 16]].concat())
        );
    }
    use crate::store::index::{ChunkRef, Record};
    use crate::store::{ImportOptions, Timestamp};

    /// Whichever way the tree is made durable, DEST gets all of it and nothing is left
    /// beside it.
    #[test]
    fn every_durability_extracts_the_whole_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("small"), b"tiny").unwrap();
        std::fs::write(src.join("d/e/big"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("d/empty"), b"").unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        store
            .import_dir(&src, "t", &ImportOptions::default())
            .unwrap();
        let index = store.index("t").unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for durability in [Durability::None, Durability::Filesystem, Durability::Files] {
            let dest = out.join(format!("{durability:?}"));
            let opts = ExtractOptions::default();
            let report = extract_durably(&store, &index, &dest, &opts, durability).unwrap();
            assert_eq!(report.files, 3, "{durability:?}");
            assert_eq!(std::fs::read(dest.join("small")).unwrap(), b"tiny");
            assert_eq!(
                std::fs::read(dest.join("d/e/big")).unwrap(),
                vec![7u8; 300_000]
            );
            assert_eq!(std::fs::read(dest.join("d/empty")).unwrap(), b"");
        }
        let mut left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["Files", "Filesystem", "None"]);
    }

    /// Bypasses the index parser's path checks: openat2 alone must keep writes in DEST.
    #[test]
    fn openat2_keeps_writes_beneath_dest_even_past_the_parser() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"pwned").unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        store
            .import_dir(&src, "good", &ImportOptions::default())
            .unwrap();
        let chunks: Vec<ChunkRef> = store.index("good").unwrap().chunks;
        let rec = |path: &str, kind: Kind| Record {
            entry: Entry {
                path: path.into(),
                kind,
                mode: 0o644,
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                mtime: Timestamp::default(),
                xattrs: vec![],
            },
            offset: 0,
        };
        let outside = tmp.path().join("escaped");
        let cases = [
            vec![rec("../escaped", Kind::File { size: 5 })],
            vec![rec(outside.to_str().unwrap(), Kind::File { size: 5 })],
            vec![
                rec(
                    "link",
                    Kind::Symlink {
                        target: "..".into(),
                    },
                ),
                rec("link/escaped", Kind::File { size: 5 }),
            ],
            vec![
                rec(
                    "abs",
                    Kind::Symlink {
                        target: tmp.path().into(),
                    },
                ),
                rec("abs/escaped", Kind::Hardlink { target: "x".into() }),
            ],
        ];
        for (i, mut records) in cases.into_iter().enumerate() {
            records.insert(0, rec("", Kind::Dir));
            let index = Index {
                name: "evil:latest".into(),
                created: 0,
                config: None,
                chunks: chunks.clone(),
                records,
            };
            let dest = tmp.path().join("inner").join(format!("dest{i}"));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let r = extract(&store, &index, &dest, &ExtractOptions::default());
            assert!(r.is_err(), "case {i} extracted");
            assert!(!outside.exists(), "case {i} wrote outside");
            assert!(!tmp.path().join("inner/escaped").exists(), "case {i}");
            assert!(!dest.exists(), "case {i} left DEST");
        }
    }

    /// A symlink found where a device node should be: its mode is not changed, and the
    /// mode never reaches the link's target.
    #[test]
    fn set_meta_at_never_chmods_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, tree.join("node")).unwrap();
        let index = Index {
            name: "t:latest".into(),
            created: 0,
            config: None,
            chunks: vec![],
            records: vec![],
        };
        let root: OwnedFd =
            nix::fcntl::open(&tree, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let dir = root.try_clone().unwrap();
        let ctx = Ctx::new(
            store.chunks().unwrap(),
            &index,
            root,
            &tree,
            &ExtractOptions::default(),
            Durability::None,
        );
        let entry = Entry {
            path: "node".into(),
            kind: Kind::Fifo,
            mode: 0o4777,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime: Timestamp::default(),
            xattrs: vec![],
        };
        let r = ctx.set_meta_at(&entry, dir.as_fd(), OsStr::new("node"), false);
        assert!(r.is_err(), "chmod of a symlink succeeded");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the symlink's target was chmodded");
    }
}
