//! `ImageWriter`: the streaming import API. Entries arrive in any order with their
//! content as a reader; content goes through FastCDC on the caller's thread, chunks are
//! hashed there and handed to worker threads that compress the ones the store lacks and
//! append them to a new pack. Memory holds the entries' metadata and at most
//! [`IN_FLIGHT`] bytes of queued chunks, never a file.
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
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::fcntl::Flock;

use super::chunker::{self, Chunker};
use super::compress::{ChunkCompressor, Class, file_class};
use super::index::{ChunkRef, Record, normalize};
use super::pack::PackWriter;
use super::{
    ChunkId, Entry, ImageInfo, ImageName, Index, Kind, Progress, Result, Store, StoreError,
    Timestamp, chunks, io_err,
};

/// Chunk buffers queued for the writer threads or being compressed take at most this
/// much memory (by capacity; a single bigger chunk still goes). Deep enough that the
/// importing thread and the compressors rarely wait for each other when files change
/// from many small ones to a few big ones: with a queue of 4 chunks the two cores were
/// idle ~11% of an import (docs/BENCHMARKS.md).
const IN_FLIGHT: usize = 16 << 20;

/// A chunk on its way to a writer thread: id, bytes, class, and its share of
/// [`IN_FLIGHT`].
type Job = (ChunkId, Vec<u8>, Class, Charge);

/// A queued chunk's share of [`IN_FLIGHT`], given back when the chunk is done with or
/// dropped unprocessed (by a worker that is gone): the importing thread never waits for
/// room that cannot come.
struct Charge {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_flight -= self.bytes;
        self.shared.room.notify_one();
    }
}

struct Shared {
    store: Store,
    /// Make chunks and index durable before publishing (see `ImageWriter::set_sync`).
    sync: std::sync::atomic::AtomicBool,
    progress: Arc<Progress>,
    error: Mutex<Option<StoreError>>,
    /// What the store held when the import began (the lock we hold keeps gc from
    /// removing any of it).
    stored: chunks::Chunks,
    /// The new pack(s), being written.
    packs: PackWriter,
    /// The finished packs, until published: (temporary path, final path).
    pending: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Chunk buffers the workers are done with, for the next chunks.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Bytes of chunk buffers queued or being compressed (see [`IN_FLIGHT`]), and a signal
    /// when they go down.
    in_flight: Mutex<usize>,
    room: std::sync::Condvar,
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
    /// Waits until `bytes` more fit in [`IN_FLIGHT`] (or nothing is in flight), and takes
    /// them.
    fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *in_flight > 0 && *in_flight + bytes > IN_FLIGHT {
            in_flight = self
                .room
                .wait(in_flight)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_flight += bytes;
        Charge {
            shared: self.clone(),
            bytes,
        }
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

/// One chunk cut from the stream: record it, and queue it for writing unless this import
/// already queued the same bytes.
fn emit(
    data: &[u8],
    chunks: &mut Vec<ChunkRef>,
    seen: &mut HashSet<ChunkId>,
    tx: &Option<SyncSender<Job>>,
    shared: &Arc<Shared>,
    class: Class,
) -> Result<()> {
    let id = ChunkId::of(data);
    chunks.push(ChunkRef {
        id,
        len: data.len() as u32,
    });
    Progress::add(&shared.progress.chunks, 1);
    Progress::add(&shared.progress.bytes, data.len() as u64);
    if seen.insert(id) {
        let mut owned = shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        owned.clear();
        owned.extend_from_slice(data);
        let charge = shared.charge(owned.capacity());
        let sent = tx.as_ref().map(|tx| tx.send((id, owned, class, charge)));
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
    let mut compressor = ChunkCompressor::default();
    // The chunk file's bytes: filter header, zstd frame. Reused from chunk to chunk.
    let mut out = Vec::new();
    loop {
        let msg = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        // The charge goes back after the buffer is in `spare` for the next chunk.
        let Ok((id, mut data, class, _charge)) = msg else {
            return;
        };
        // After a failure, keep draining so the producer never blocks forever.
        if !shared.failed()
            && let Err(e) = store_chunk(shared, &mut compressor, &mut out, id, &mut data, class)
        {
            shared.fail(e);
        }
        shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(data);
    }
}

/// Appends chunk `id` (`data`, of class `class`) to the new pack, unless the store has it
/// (then it is reused: the lock we hold keeps gc from removing it).
fn store_chunk(
    shared: &Shared,
    compressor: &mut ChunkCompressor,
    out: &mut Vec<u8>,
    id: ChunkId,
    data: &mut [u8],
    class: Class,
) -> Result<()> {
    if shared.stored.contains(&id) {
        return Ok(());
    }
    compressor
        .encode(data, class, out)
        .map_err(io_err(format!("zstd compressing chunk {id}")))?;
    shared.packs.append(id, out)?;
    let p = &shared.progress;
    Progress::add(&p.new_chunks, 1);
    Progress::add(&p.new_bytes, data.len() as u64);
    Progress::add(&p.stored_bytes, out.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x86-64 ELF file's chunks are stored filtered, anything else's as bare frames,
    /// and both come back byte for byte; a version-1 store is upgraded by the import and
    /// its old chunks still read.
    #[test]
    fn x86_files_are_filtered_and_round_trip_in_an_upgraded_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("format")).unwrap(),
            super::super::STORE_FORMAT
        );
        // A version-1 store holding a version-1 chunk (a bare frame) and its image.
        fs::write(dir.join("format"), super::super::STORE_FORMATS_READ[0]).unwrap();
        let old = b"an old chunk\n".repeat(100);
        let old_id = ChunkId::of(&old);
        fs::write(
            store.chunk_path(&old_id),
            zstd::bulk::compress(&old, 19).unwrap(),
        )
        .unwrap();
        let store = Store::open(&dir).unwrap();

        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = exe[..exe.len().min(3_000_000)].to_vec();
        // Other bytes (the same bytes in a non-ELF file would be the same chunks).
        let not_elf: Vec<u8> = elf.iter().rev().copied().collect();
        let file = |path: &str, size: usize| Entry {
            path: path.into(),
            kind: Kind::File { size: size as u64 },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: vec![],
        };
        let mut w = store.writer().unwrap();
        w.add(file("old", old.len()), Some(&mut &old[..])).unwrap();
        w.add(file("elf", elf.len()), Some(&mut &elf[..])).unwrap();
        w.add(file("not-elf", not_elf.len()), Some(&mut &not_elf[..]))
            .unwrap();
        w.commit("x86", None).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("format")).unwrap(),
            super::super::STORE_FORMAT
        );

        let index = store.index("x86").unwrap();
        let (mut filtered, mut bare) = (0, 0);
        let stored = store.chunks().unwrap();
        for c in &index.chunks {
            match stored.raw(&c.id).unwrap().unwrap()[0] {
                chunks::FILTER_X86 => filtered += 1,
                0x28 => bare += 1,
                b => panic!("chunk file starts with {b:#x}"),
            }
        }
        if super::super::bcj::is_x86_64_elf(&elf) {
            assert!(
                filtered >= 2 && bare >= 3,
                "{filtered} filtered, {bare} bare"
            );
        }
        let out = tmp.path().join("out");
        let opts = super::super::ExtractOptions {
            sync: false,
            ..Default::default()
        };
        store.extract("x86", &out, &opts).unwrap();
        assert_eq!(fs::read(out.join("old")).unwrap(), old);
        assert_eq!(fs::read(out.join("elf")).unwrap(), elf);
        assert_eq!(fs::read(out.join("not-elf")).unwrap(), not_elf);
    }

    /// The importing thread waits while IN_FLIGHT bytes are queued, goes on as soon as a
    /// chunk is done with or dropped unprocessed, and never waits with nothing in flight.
    #[test]
    fn chunks_in_flight_stay_within_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let writer = store.writer().unwrap();
        let shared = writer.shared.clone();
        let in_flight = || *shared.in_flight.lock().unwrap();

        let oversized = shared.charge(IN_FLIGHT + 1);
        assert_eq!(in_flight(), IN_FLIGHT + 1);
        drop(oversized);
        assert_eq!(in_flight(), 0);

        let queued: Job = (
            ChunkId::of(b"x"),
            Vec::new(),
            Class::Packed,
            shared.charge(IN_FLIGHT - 10),
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let charge = shared.charge(100);
                done_tx.send(()).unwrap();
                charge
            })
        };
        let timeout = std::time::Duration::from_millis(200);
        assert!(
            done_rx.recv_timeout(timeout).is_err(),
            "charged past the budget"
        );
        drop(queued);
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let charge = waiter.join().unwrap();
        assert_eq!(in_flight(), 100);
        drop(charge);
        assert_eq!(in_flight(), 0);
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
