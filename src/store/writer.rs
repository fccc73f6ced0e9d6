//! `ImageWriter`: the streaming import API. Entries arrive in any order with their
//! content as a reader; content goes through FastCDC on the caller's thread, chunks are
//! hashed there and handed to worker threads that compress and write the ones the store
//! lacks. Memory holds the entries' metadata and a bounded queue of chunks, never a file.
//!
//! Crash safety: new chunks are written under temporary names (their writeback started
//! at once); `commit` fdatasyncs them, renames them to their final names, fsyncs their
//! directories, and only then publishes the index atomically. A writer killed at any
//! point leaves at most temporary files (removed by gc) and never an index pointing at a
//! missing chunk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::fcntl::Flock;

use super::chunker::{self, Chunker};
use super::index::{ChunkRef, Record, normalize};
use super::{
    ChunkId, Entry, ImageInfo, ImageName, Index, Kind, Progress, Result, Store, StoreError,
    Timestamp, chunks, io_err,
};

/// zstd level for chunks of packed small files (config files, scripts, small text:
/// where a high level pays, and a small share of the bytes).
pub const LEVEL_PACKED: i32 = 8;
/// zstd level for chunks of larger files that look like text (sources, lists, docs):
/// on them level 6 compresses as well as 8 (better, on Debian's package lists).
pub const LEVEL_TEXT: i32 = 6;
/// zstd level for chunks of larger files that look like binaries (code, data, and
/// compressed files, which zstd detects and stores cheaply at any level).
pub const LEVEL_BINARY: i32 = 7;

/// The zstd level for a new chunk, by whether it holds packed small files and, if not,
/// whether its bytes look like text (at most 1% of every 4th byte outside printable
/// ASCII, tab, newline, return). Tuned on a Debian image and a new version of it to
/// keep the store at most casync's size and a new version's additions at most 0.8x
/// casync's for the least CPU (docs/BENCHMARKS.md). Readers do not care: any level
/// decodes the same way.
pub fn level_for(data: &[u8], packed: bool) -> i32 {
    if packed {
        return LEVEL_PACKED;
    }
    let (mut sampled, mut odd) = (0usize, 0usize);
    for &b in data.iter().step_by(4) {
        sampled += 1;
        odd += usize::from(b >= 0x7f || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')));
    }
    if odd * 100 <= sampled {
        LEVEL_TEXT
    } else {
        LEVEL_BINARY
    }
}

/// A chunk on its way to a writer thread: id, bytes, whether it holds packed small files.
type Job = (ChunkId, Vec<u8>, bool);

struct Shared {
    store: Store,
    /// Make chunks and index durable before publishing (see `ImageWriter::set_sync`).
    sync: std::sync::atomic::AtomicBool,
    progress: Arc<Progress>,
    error: Mutex<Option<StoreError>>,
    /// New chunks written so far: (temporary path, final path).
    pending: Mutex<Vec<(PathBuf, PathBuf)>>,
}

impl Shared {
    fn fail(&self, e: StoreError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(e);
    }
    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
    fn take_error(&self) -> Option<StoreError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// An import in progress. Holds the store's shared lock (a concurrent gc waits for it).
/// Dropping it without [`commit`](ImageWriter::commit) publishes nothing and removes the
/// chunks it wrote.
pub struct ImageWriter {
    _lock: Flock<File>,
    shared: Arc<Shared>,
    entries: BTreeMap<PathBuf, Record>,
    chunker: Chunker,
    stream_len: u64,
    chunks: Vec<ChunkRef>,
    seen: HashSet<ChunkId>,
    tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// A file's content failed half-way: the stream no longer matches the entries.
    broken: bool,
}

impl ImageWriter {
    pub(crate) fn new(store: Store) -> Result<ImageWriter> {
        Self::with_progress(store, Arc::default())
    }

    /// A writer that reports into `progress`.
    pub fn with_progress(store: Store, progress: Arc<Progress>) -> Result<ImageWriter> {
        let lock = store.lock(false)?;
        let shared = Arc::new(Shared {
            store,
            sync: std::sync::atomic::AtomicBool::new(true),
            progress,
            error: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
        });
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (tx, rx) = sync_channel::<Job>(2 * n);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..n {
            let (rx, shared) = (rx.clone(), shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("warren-chunk-{i}"))
                .spawn(move || worker(&rx, &shared));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => return Err(io_err("spawning a chunk writer thread")(e)),
            }
        }
        Ok(ImageWriter {
            _lock: lock,
            shared,
            entries: BTreeMap::new(),
            chunker: Chunker::default(),
            stream_len: 0,
            chunks: Vec::new(),
            seen: HashSet::new(),
            tx: Some(tx),
            workers,
            broken: false,
        })
    }

    /// With `false`, commit publishes without waiting for the disk (like casync): a crash
    /// of the machine (not of the process) may then leave an index naming chunks that
    /// were never written or are truncated; [`Store::verify_and_repair`] finds them and
    /// removes the corrupt ones, then a re-import of the images it names restores them.
    /// Default `true`. Set it before adding content.
    pub fn set_sync(&mut self, sync: bool) {
        self.shared
            .sync
            .store(sync, std::sync::atomic::Ordering::Relaxed);
    }

    /// The live counters of this import.
    pub fn progress(&self) -> Arc<Progress> {
        self.shared.progress.clone()
    }

    /// Adds (or replaces) an entry. For a file, `content` is read to its end and its
    /// length becomes the file's size. A non-directory replacing a directory drops what
    /// was under it.
    pub fn add(&mut self, mut entry: Entry, content: Option<&mut dyn Read>) -> Result<()> {
        if let Some(e) = self.shared.take_error() {
            self.broken = true;
            return Err(e);
        }
        self.check_broken()?;
        let bad = |path: &Path, reason: &str| StoreError::Entry {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        entry.path = normalize_entry(&entry.path)?;
        entry.mode &= 0o7777;
        if entry.mtime.nsec >= 1_000_000_000 {
            return Err(bad(&entry.path, "mtime nanoseconds >= 10^9"));
        }
        if entry.path.as_os_str().is_empty() && entry.kind != Kind::Dir {
            return Err(bad(&entry.path, "the image root must be a directory"));
        }
        if entry
            .xattrs
            .iter()
            .any(|(n, _)| n.is_empty() || n.contains(&0))
        {
            return Err(bad(&entry.path, "empty xattr name or NUL in it"));
        }
        match &mut entry.kind {
            Kind::Hardlink { target } => {
                *target = normalize(target).map_err(|e| bad(&entry.path, &e.to_string()))?;
                if target.as_os_str().is_empty() {
                    return Err(bad(&entry.path, "hardlink to the image root"));
                }
            }
            Kind::Symlink { target } => {
                let t = target.as_os_str();
                if t.is_empty() || std::os::unix::ffi::OsStrExt::as_bytes(t).contains(&0) {
                    return Err(bad(&entry.path, "empty symlink target or NUL in it"));
                }
            }
            _ => {}
        }
        let mut offset = 0;
        if let Kind::File { size } = &mut entry.kind {
            offset = self.stream_len;
            let declared = *size;
            *size = match content {
                Some(r) => match self.feed(r, declared) {
                    Ok(n) => n,
                    Err(e) => {
                        self.broken = true;
                        return Err(match e {
                            StoreError::Io { err, .. } => StoreError::Io {
                                path: entry.path.clone(),
                                err,
                            },
                            e => e,
                        });
                    }
                },
                None if *size == 0 => 0,
                None => return Err(bad(&entry.path, "file without content")),
            };
            self.stream_len += *size;
        }
        if entry.kind != Kind::Dir {
            self.remove_under(&entry.path);
        }
        self.entries
            .insert(entry.path.clone(), Record { entry, offset });
        Ok(())
    }

    fn check_broken(&self) -> Result<()> {
        if self.broken {
            return Err(StoreError::Entry {
                path: PathBuf::new(),
                reason: "an earlier add failed while reading content: this import cannot continue"
                    .into(),
            });
        }
        Ok(())
    }

    /// Removes `path` and everything under it (an OCI whiteout).
    pub fn remove(&mut self, path: &Path) -> Result<()> {
        let path = normalize_entry(path)?;
        self.remove_under(&path);
        self.entries.remove(&path);
        Ok(())
    }

    /// Removes everything under directory `path`, keeping `path` (an OCI opaque whiteout).
    pub fn clear_dir(&mut self, path: &Path) -> Result<()> {
        let path = normalize_entry(path)?;
        self.remove_under(&path);
        Ok(())
    }

    /// The entry added at `path`, if any.
    pub fn entry(&self, path: &Path) -> Option<&Entry> {
        let path = normalize(path).ok()?;
        self.entries.get(&path).map(|r| &r.entry)
    }

    fn remove_under(&mut self, path: &Path) {
        // Component-wise order puts every descendant right after `path`.
        let under: Vec<PathBuf> = self
            .entries
            .range::<Path, _>((std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(path))
            .cloned()
            .collect();
        for k in under {
            self.entries.remove(&k);
        }
    }

    /// Streams `r` (a file of about `size_hint` bytes) into the content stream; returns
    /// its length.
    fn feed(&mut self, r: &mut dyn Read, size_hint: u64) -> Result<u64> {
        let Self {
            chunker,
            chunks,
            seen,
            tx,
            shared,
            ..
        } = self;
        // Files of chunker::ALIGN bytes or more start and end on a chunk boundary.
        let (sizes, aligned) = chunker::sizes_for(size_hint);
        if aligned {
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, true))?;
            chunker.set_sizes(sizes);
        }
        // A small file's bytes run together with its neighbours' (packed).
        let packed = !aligned;
        let n = chunker.feed(r, |data| emit(data, chunks, seen, tx, shared, packed))?;
        if aligned {
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, false))?;
            chunker.set_sizes(chunker::SMALL);
        }
        Ok(n)
    }

    /// Publishes the image as `name` (`NAME[:TAG]`), atomically replacing an image of
    /// that name. `config` is an opaque blob kept with it.
    pub fn commit(mut self, name: &str, config: Option<Vec<u8>>) -> Result<ImageInfo> {
        let image = ImageName::parse(name)?;
        self.check_broken()?;
        {
            let Self {
                chunker,
                chunks,
                seen,
                tx,
                shared,
                ..
            } = &mut self;
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, true))?;
        }
        self.stop_workers();
        if let Some(e) = self.shared.take_error() {
            return Err(e);
        }
        self.complete_tree()?;
        let index = Index {
            name: image.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            config,
            chunks: std::mem::take(&mut self.chunks),
            records: std::mem::take(&mut self.entries).into_values().collect(),
        };
        let data = index.encode();
        // Never publish what we could not read back.
        Index::decode(&data).map_err(|err| StoreError::Index {
            name: image.to_string(),
            err,
        })?;

        let store = self.shared.store.clone();
        let pending = std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        publish_chunks(
            &pending,
            self.shared.sync.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let path = store.images_dir().join(image.rel_path());
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        crate::atomic::write(&path, &data).map_err(io_err(&path))?;

        let mut info = ImageInfo::of(&index, data.len() as u64);
        let p = &self.shared.progress;
        info.new_chunks = Progress::get(&p.new_chunks);
        info.new_bytes = Progress::get(&p.stored_bytes) + data.len() as u64;
        Ok(info)
    }

    /// Adds missing parent directories (and the root), and checks that every parent is a
    /// directory and every hardlink names a linkable entry (following link chains).
    fn complete_tree(&mut self) -> Result<()> {
        let default_dir = |path: PathBuf| Record {
            entry: Entry {
                path,
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: Timestamp::default(),
                xattrs: Vec::new(),
            },
            offset: 0,
        };
        let mut missing = vec![PathBuf::new()];
        for (path, rec) in &self.entries {
            for anc in path.ancestors().skip(1) {
                match self.entries.get(anc) {
                    Some(r) if r.entry.kind == Kind::Dir => break,
                    Some(_) => {
                        return Err(StoreError::Entry {
                            path: path.clone(),
                            reason: format!("parent {anc:?} is not a directory"),
                        });
                    }
                    None => missing.push(anc.to_path_buf()),
                }
            }
            let _ = rec;
        }
        for m in missing {
            self.entries
                .entry(m.clone())
                .or_insert_with(|| default_dir(m));
        }
        let links: Vec<(PathBuf, PathBuf)> = self
            .entries
            .iter()
            .filter_map(|(p, r)| match &r.entry.kind {
                Kind::Hardlink { target } => Some((p.clone(), target.clone())),
                _ => None,
            })
            .collect();
        for (path, mut target) in links {
            let mut hops = 0;
            loop {
                match self.entries.get(&target).map(|r| &r.entry.kind) {
                    Some(Kind::Hardlink { target: next }) if hops < 64 && *next != path => {
                        target = next.clone();
                        hops += 1;
                    }
                    Some(Kind::Dir | Kind::Hardlink { .. }) | None => {
                        return Err(StoreError::Entry {
                            path,
                            reason: format!(
                                "hardlink target {target:?} is missing or not linkable"
                            ),
                        });
                    }
                    Some(_) => break,
                }
            }
            if let Some(r) = self.entries.get_mut(&path) {
                r.entry.kind = Kind::Hardlink { target };
            }
        }
        Ok(())
    }

    fn stop_workers(&mut self) {
        self.tx = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                self.shared.fail(StoreError::Entry {
                    path: PathBuf::new(),
                    reason: "a chunk writer thread panicked".into(),
                });
            }
        }
    }
}

/// The canonical form of an entry path, or an error naming it.
fn normalize_entry(path: &Path) -> Result<PathBuf> {
    normalize(path).map_err(|e| StoreError::Entry {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Threads syncing new chunks at commit: an import has thousands of small files, and the
/// more fdatasyncs wait at once, the more share a journal commit (a synced import of the
/// bench tree: 1.35-1.42 s with 64 vs 1.44-1.49 s with 16; `--no-sync` 1.35 s).
const SYNC_THREADS: usize = 64;

/// Makes new chunks durable, then gives them their final names, durably. Only our own
/// files are synced (a syncfs would also wait for everything else on the filesystem).
fn publish_chunks(pending: &[(PathBuf, PathBuf)], sync: bool) -> Result<()> {
    use rayon::prelude::*;
    if sync {
        // Their writeback started as they were written; what is left is mostly journal
        // commits, which concurrent syncs share.
        let temps: Vec<&Path> = pending.iter().map(|(t, _)| t.as_path()).collect();
        super::sync_many(&temps, true, SYNC_THREADS)?;
    }
    // Renames in different prefix directories do not contend.
    pending
        .par_iter()
        .try_for_each(|(tmp, dest)| fs::rename(tmp, dest).map_err(io_err(dest)))?;
    if !sync {
        return Ok(());
    }
    let dirs: HashSet<&Path> = pending.iter().filter_map(|(_, d)| d.parent()).collect();
    super::sync_many(&dirs.into_iter().collect::<Vec<_>>(), false, SYNC_THREADS)
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        self.stop_workers();
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (tmp, _) in pending.iter() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// One chunk cut from the stream: record it, and queue it for writing unless this import
/// already queued the same bytes.
fn emit(
    data: &[u8],
    chunks: &mut Vec<ChunkRef>,
    seen: &mut HashSet<ChunkId>,
    tx: &Option<SyncSender<Job>>,
    shared: &Shared,
    packed: bool,
) -> Result<()> {
    let id = ChunkId::of(data);
    chunks.push(ChunkRef {
        id,
        len: data.len() as u32,
    });
    Progress::add(&shared.progress.chunks, 1);
    Progress::add(&shared.progress.bytes, data.len() as u64);
    if seen.insert(id) {
        let sent = tx.as_ref().map(|tx| tx.send((id, data.to_vec(), packed)));
        if !matches!(sent, Some(Ok(()))) {
            // Workers are gone: they stopped on an error, which commit/add reports.
            return Err(shared.take_error().unwrap_or_else(|| StoreError::Entry {
                path: PathBuf::new(),
                reason: "chunk writer threads stopped".into(),
            }));
        }
    }
    if shared.failed() {
        return Err(shared.take_error().unwrap_or_else(|| StoreError::Entry {
            path: PathBuf::new(),
            reason: "chunk writer failed".into(),
        }));
    }
    Ok(())
}

/// Compresses and writes queued chunks the store does not already have.
fn worker(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    // One context per level in use (switching a context's level reallocates its tables).
    let mut compressors: Vec<(i32, zstd::bulk::Compressor<'static>)> = Vec::new();
    loop {
        let msg = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((id, data, packed)) = msg else { return };
        if shared.failed() {
            continue; // keep draining so the producer never blocks forever
        }
        let dest = shared.store.chunk_path(&id);
        if dest.exists() {
            continue; // reused: the lock we hold keeps gc from removing it
        }
        let level = level_for(&data, packed);
        let at = match compressors.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => match zstd::bulk::Compressor::new(level) {
                Ok(c) => {
                    compressors.push((level, c));
                    compressors.len() - 1
                }
                Err(e) => {
                    shared.fail(io_err("zstd compressor")(e));
                    continue;
                }
            },
        };
        let written = compressors[at]
            .1
            .compress(&data)
            .map_err(io_err(&dest))
            .and_then(|z| {
                let sync = shared.sync.load(std::sync::atomic::Ordering::Relaxed);
                let paths = chunks::write_temp(&shared.store, &id, &z, sync)?;
                Ok((paths, z.len()))
            });
        match written {
            Ok((paths, stored)) => {
                let p = &shared.progress;
                Progress::add(&p.new_chunks, 1);
                Progress::add(&p.new_bytes, data.len() as u64);
                Progress::add(&p.stored_bytes, stored as u64);
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(paths);
            }
            Err(e) => shared.fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_by_chunk_class() {
        let text = b"def main():\n\treturn 0  # a comment\r\n".repeat(2000);
        let mut binary = text.clone();
        for b in binary.iter_mut().step_by(40) {
            *b = 0; // 2.5% of the bytes
        }
        assert_eq!(level_for(&text, false), LEVEL_TEXT);
        assert_eq!(level_for(&binary, false), LEVEL_BINARY);
        assert_eq!(level_for(&binary, true), LEVEL_PACKED);
        assert_eq!(level_for(&text, true), LEVEL_PACKED);
    }

    /// Every way in names the path it refused.
    #[test]
    fn escaping_paths_are_entry_errors_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let mut w = store.writer().unwrap();
        let bad = Path::new("a/../../x");
        let entry = Entry {
            path: bad.into(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: vec![],
        };
        let results = [w.add(entry, None), w.remove(bad), w.clear_dir(bad)];
        for r in results {
            match r {
                Err(StoreError::Entry { path, .. }) => assert_eq!(path, bad),
                other => panic!("{other:?}"),
            }
        }
    }
}
