//! `ImageWriter`: the streaming import API. Entries arrive in any order with their
//! content as a reader; content goes through FastCDC on the caller's thread, chunks are
//! hashed there and handed to worker threads that compress the ones the store lacks and
//! append them to a new pack. Memory holds the entries' metadata and at most
//! [`IN_FLIGHT`](pipeline::IN_FLIGHT) bytes of queued chunks, never a file.
//!
//! Crash safety: the pack is written under a temporary name; `commit` writes its table,
//! makes it durable (`chunks::publish`: a syncfs, or the file itself when others have
//! much data in flight), renames it to its final name, makes the name durable, and only
//! then publishes the index atomically. A writer killed at any point leaves at most a
//! temporary file, which gc removes, and never an index pointing at a missing chunk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::fcntl::Flock;

use super::chunker::{self, Chunker};
use super::compress::{Class, file_class};
use super::index::{ChunkRef, Record, normalize};
use super::pack::PackWriter;
use super::{
    ChunkId, Entry, ImageInfo, ImageName, Index, Kind, Progress, Result, Store, StoreError,
    Timestamp, chunks, io_err,
};

mod pipeline;
#[cfg(test)]
mod tests;

use pipeline::{Job, Shared, emit, worker};

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
        store.upgrade()?;
        let shared = Arc::new(Shared {
            stored: store.chunks()?,
            packs: {
                let packs = PackWriter::new(&store.packs_dir());
                packs.set_writeback(true);
                packs
            },
            store,
            sync: std::sync::atomic::AtomicBool::new(true),
            progress,
            error: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            in_flight: Mutex::new(0),
            room: std::sync::Condvar::new(),
        });
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Bounded by IN_FLIGHT; the count only caps a run of tiny chunks.
        let (tx, rx) = sync_channel::<Job>(1024);
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
    /// of the machine (not of the process) may then leave an index naming chunks of a
    /// pack that was never written or is truncated; [`Store::verify_and_repair`] finds it
    /// and removes it, then a re-import of the images it names restores them. Default
    /// `true`. Set it before committing.
    pub fn set_sync(&mut self, sync: bool) {
        self.shared
            .sync
            .store(sync, std::sync::atomic::Ordering::Relaxed);
        self.shared.packs.set_writeback(sync);
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
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, Class::Packed))?;
            chunker.set_sizes(sizes);
        }
        // A small file's bytes run together with its neighbours' (packed). A bigger
        // file's class is known from its first chunk, which starts with the file.
        let mut class = (!aligned).then_some(Class::Packed);
        let mut class_of = |data: &[u8]| *class.get_or_insert_with(|| file_class(data, size_hint));
        let n = chunker.feed(r, |data| {
            emit(data, chunks, seen, tx, shared, class_of(data))
        })?;
        if aligned {
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, class_of(data)))?;
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
            chunker.finish(|data| emit(data, chunks, seen, tx, shared, Class::Packed))?;
        }
        // The last chunks are queued: build the index while the workers finish them and
        // (syncing the filesystem) while what they wrote so far goes to disk.
        self.tx = None;
        let durability = if self.shared.sync.load(std::sync::atomic::Ordering::Relaxed) {
            let written = Progress::get(&self.shared.progress.stored_bytes);
            chunks::Durability::for_sync(written, crate::sys::dirty_bytes())
        } else {
            chunks::Durability::None
        };
        let flushing = (durability == chunks::Durability::Filesystem)
            .then(|| chunks::start_flush(self.shared.store.packs_dir()));
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
        self.stop_workers();
        if let Some(e) = self.shared.take_error() {
            return Err(e);
        }

        let store = self.shared.store.clone();
        let pending = self.shared.packs.finish()?;
        // Removed by drop if publishing fails.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&pending);
        if let Some(flush) = flushing {
            flush.join().unwrap_or_else(|_| {
                Err(StoreError::Entry {
                    path: PathBuf::new(),
                    reason: "the flushing thread panicked".into(),
                })
            })?;
        }
        chunks::publish(&pending, durability)?;
        if !pending.is_empty() {
            super::pack::update_list(&store.packs_dir())?;
        }
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
