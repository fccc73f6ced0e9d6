//! Chunks, and where each one is: in a pack (`pack`: what imports and pulls write) or a
//! loose chunk file (`chunks/ab/<blake3 hex>.zst`: what a push writes, and stores of
//! format 1 and 2 hold). Either form holds the same bytes: an optional filter byte and a
//! zstd frame. A new loose chunk is written under a dot-prefixed temporary name and only
//! renamed to its final name once complete (and durable, when synced), so a final name
//! always holds a complete chunk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::pack::{self, Pack};
use super::{ChunkId, Result, Store, StoreError, bcj, io_err};

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

pub use super::format::FILTER_X86;

/// Where a chunk's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Loose(PathBuf),
    Packed {
        pack: PathBuf,
        offset: u64,
        len: u32,
    },
}

/// Every chunk a store holds: its packs, open, with a lookup of what each holds, and its
/// loose chunk files. Load it under the store lock (gc rewrites packs).
pub struct Chunks {
    store: Store,
    packs: Vec<Pack>,
    /// Packs that could not be read, with why: their chunks count as missing.
    pub bad_packs: Vec<(PathBuf, String)>,
    /// Chunk -> (pack, entry); the first pack that holds it.
    packed: HashMap<ChunkId, (usize, usize)>,
    /// Listed once: a lookup by name costs a path walk per chunk.
    loose: HashSet<ChunkId>,
    /// The packs read last, open (at most [`OPEN_PACKS`]).
    open: Mutex<VecDeque<(usize, Arc<fs::File>)>>,
}

/// Packs a [`Chunks`] keeps open: an image's chunks are in a few packs, and a store may
/// hold more packs than a process may open files.
const OPEN_PACKS: usize = 16;

impl Chunks {
    pub fn load(store: &Store) -> Result<Chunks> {
        let dir = store.packs_dir();
        let mut packs = Vec::new();
        let mut bad_packs = Vec::new();
        let listing = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io_err(&dir))?,
            // A format-2 store not written to since: loose chunks only.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names: Vec<PathBuf> = listing
            .iter()
            .filter(|e| pack::is_pack_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in names {
            match Pack::open(&path) {
                Ok(p) => packs.push(p),
                Err(StoreError::Pack { reason, .. }) => bad_packs.push((path, reason)),
                Err(e) => bad_packs.push((path, e.to_string())),
            }
        }
        let mut packed = HashMap::new();
        for (p, pack) in packs.iter().enumerate() {
            for (e, entry) in pack.entries.iter().enumerate() {
                packed.entry(entry.id).or_insert((p, e));
            }
        }
        let mut loose = HashSet::new();
        for_each_loose(store, |id, _| {
            loose.extend(id);
            Ok(())
        })?;
        Ok(Chunks {
            store: store.clone(),
            packs,
            bad_packs,
            packed,
            loose,
            open: Mutex::new(VecDeque::new()),
        })
    }

    /// Pack `p` (of [`packs`](Chunks::packs)), open.
    fn pack_file(&self, p: usize) -> Result<Arc<fs::File>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, f)) = open.iter().find(|(q, _)| *q == p) {
            return Ok(f.clone());
        }
        let path = &self.packs[p].path;
        let f = Arc::new(fs::File::open(path).map_err(io_err(path))?);
        if open.len() == OPEN_PACKS {
            open.pop_front();
        }
        open.push_back((p, f.clone()));
        Ok(f)
    }

    /// The stored bytes of entry `e` of pack `p`.
    pub fn read_packed(&self, p: usize, e: usize) -> Result<Vec<u8>> {
        let pack = &self.packs[p];
        pack.read(&*self.pack_file(p)?, &pack.entries[e])
    }

    /// The published packs.
    pub fn packs(&self) -> &[Pack] {
        &self.packs
    }

    /// Where chunk `id` is, if the store has it.
    pub fn location(&self, id: &ChunkId) -> Option<Location> {
        if let Some(&(p, e)) = self.packed.get(id) {
            let (pack, entry) = (&self.packs[p], &self.packs[p].entries[e]);
            return Some(Location::Packed {
                pack: pack.path.clone(),
                offset: entry.offset,
                len: entry.len,
            });
        }
        self.loose
            .contains(id)
            .then(|| Location::Loose(self.store.chunk_path(id)))
    }

    /// Whether the store has chunk `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.packed.contains_key(id) || self.loose.contains(id)
    }

    /// Chunk `id`'s stored bytes (filter byte and zstd frame), or `None` if the store
    /// lacks it.
    pub fn raw(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        if let Some(&(p, e)) = self.packed.get(id) {
            return self.read_packed(p, e).map(Some);
        }
        let path = self.store.chunk_path(id);
        match fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Reads chunk `id`, decompresses it and checks its length and hash. `for_path` names
    /// the file that needs it, for the error.
    pub fn read(&self, id: &ChunkId, len: u32, for_path: &Path) -> Result<Vec<u8>> {
        let data = self.raw(id)?.ok_or_else(|| StoreError::MissingChunk {
            chunk: *id,
            path: for_path.to_path_buf(),
        })?;
        decode(id, len, &data).map_err(|reason| StoreError::CorruptChunk {
            chunk: *id,
            path: for_path.to_path_buf(),
            reason,
        })
    }
}

/// Decompresses a chunk file's bytes and checks them against `id` (and `len` when known).
pub fn decode(id: &ChunkId, len: u32, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    // A chunk is at most chunker::MAX_SIZE bytes; never trust a frame to say otherwise.
    let cap = if len > 0 {
        len as usize
    } else {
        super::chunker::MAX_SIZE
    };
    // One decompression context per thread: creating one per chunk shows in profiles.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let (x86, frame) = match data.split_first() {
        Some((&FILTER_X86, frame)) => (true, frame),
        _ => (false, data),
    };
    let mut raw = DCTX
        .with_borrow_mut(|d| {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d {
                Some(d) => d.decompress(frame, cap),
                None => zstd::bulk::decompress(frame, cap),
            }
        })
        .map_err(|e| format!("zstd: {e}"))?;
    if len > 0 && raw.len() != len as usize {
        return Err(format!("{} bytes, index says {len}", raw.len()));
    }
    if x86 {
        bcj::decode(&mut raw);
    }
    if ChunkId::of(&raw) != *id {
        return Err("hash mismatch".into());
    }
    Ok(raw)
}

/// Writes compressed chunk bytes to a temporary file beside the chunk's final path.
/// Returns (temporary path, final path).
pub fn write_temp(store: &Store, id: &ChunkId, compressed: &[u8]) -> Result<(PathBuf, PathBuf)> {
    let dest = store.chunk_path(id);
    let tmp = dest.with_file_name(format!(
        ".{id}.tmp.{}.{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(store.file_mode())
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(compressed).map_err(io_err(&tmp))?;
    Ok((tmp, dest))
}

/// How new files are made durable before they are published: new chunks before they get
/// their final names ([`publish`]), an extracted tree before it is renamed to DEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Not at all (`--no-sync`): a machine crash may lose or truncate them.
    None,
    /// `syncfs` of their filesystem (for chunks, once before and once after the renames):
    /// one pass over the disk and one cache flush however many files there are (OSTree
    /// commits this way), but it also waits for whatever else is dirty on that filesystem.
    Filesystem,
    /// `fdatasync` of each file, then `fsync` of each directory: only our own files.
    Files,
}

impl Durability {
    /// For a synced publish of `written` new bytes while `dirty` bytes (ours included)
    /// wait for writeback system-wide: a syncfs unless it would wait for more of other
    /// writers' data than of ours (and more than 64 MiB); per file when unknown.
    pub fn for_sync(written: u64, dirty: Option<u64>) -> Durability {
        match dirty {
            Some(d) if d.saturating_sub(written) <= written.max(64 << 20) => Durability::Filesystem,
            _ => Durability::Files,
        }
    }
}

/// Starts a `syncfs` of the filesystem holding `dir` on a thread of its own, so chunks
/// already written go to disk while an import finishes; [`publish`]'s own syncfs then has
/// little left. Join it for the result: a write error is reported only to it.
pub fn start_flush(dir: PathBuf) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let fd = fs::File::open(&dir).map_err(io_err(&dir))?;
        nix::unistd::syncfs(&fd).map_err(|e| io_err(&dir)(e.into()))
    })
}

/// Threads syncing files one by one: the more fdatasyncs wait at once, the more share a
/// journal commit (a synced import of the bench tree: 1.35-1.42 s with 64 vs 1.44-1.49 s
/// with 16).
const SYNC_THREADS: usize = 64;

/// Makes new chunk files (`(temporary, final)` paths, all in one store) durable as
/// `durability` says, then gives them their final names, durably.
pub fn publish(pending: &[(PathBuf, PathBuf)], durability: Durability) -> Result<()> {
    use rayon::prelude::*;
    let Some((_, first)) = pending.first() else {
        return Ok(());
    };
    // Renames in different prefix directories do not contend.
    let rename_all = || {
        pending
            .par_iter()
            .try_for_each(|(tmp, dest)| fs::rename(tmp, dest).map_err(io_err(dest)))
    };
    match durability {
        Durability::None => rename_all(),
        Durability::Filesystem => {
            let dir = first.parent().unwrap_or(Path::new("/"));
            let fd = fs::File::open(dir).map_err(io_err(dir))?;
            let syncfs = || nix::unistd::syncfs(&fd).map_err(|e| io_err(dir)(e.into()));
            syncfs()?;
            rename_all()?;
            syncfs()
        }
        Durability::Files => {
            let temps: Vec<&Path> = pending.iter().map(|(t, _)| t.as_path()).collect();
            super::sync_many(&temps, true, SYNC_THREADS)?;
            rename_all()?;
            let dirs: std::collections::HashSet<&Path> =
                pending.iter().filter_map(|(_, d)| d.parent()).collect();
            super::sync_many(&dirs.into_iter().collect::<Vec<_>>(), false, SYNC_THREADS)
        }
    }
}

/// What `scan` finds: every chunk with its file size, and every temporary file.
pub struct Scan {
    pub chunks: Vec<(ChunkId, u64)>,
    pub temps: Vec<PathBuf>,
}

/// Every loose chunk file in the store with its size, and every leftover temporary file.
pub fn scan(store: &Store) -> Result<Scan> {
    let mut chunks = Vec::new();
    let mut temps = Vec::new();
    for_each_loose(store, |id, e| {
        match id {
            Some(id) => chunks.push((id, e.metadata().map_err(io_err(e.path()))?.len())),
            None => temps.push(e.path()),
        }
        Ok(())
    })?;
    Ok(Scan { chunks, temps })
}

/// Calls `f` with each loose chunk file's id, and with `None` for each temporary file
/// (dot-named); other files are not ours and left alone.
fn for_each_loose(
    store: &Store,
    mut f: impl FnMut(Option<ChunkId>, &fs::DirEntry) -> Result<()>,
) -> Result<()> {
    for i in 0..256 {
        let dir = store.chunks_dir().join(format!("{i:02x}"));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                f(None, &e)?;
            } else if let Some(id) = name
                .strip_suffix(super::format::CHUNK_SUFFIX)
                .and_then(ChunkId::from_hex)
            {
                f(Some(id), &e)?;
            }
        }
    }
    Ok(())
}

/// Every chunk file in the store with its size.
pub fn list(store: &Store) -> Result<Vec<(ChunkId, u64)>> {
    Ok(scan(store)?.chunks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn syncfs_unless_others_have_more_in_flight_than_we_wrote() {
        use Durability::{Files, Filesystem};
        const MIB: u64 = 1 << 20;
        assert_eq!(Durability::for_sync(90 * MIB, Some(95 * MIB)), Filesystem);
        assert_eq!(Durability::for_sync(MIB, Some(60 * MIB)), Filesystem);
        assert_eq!(Durability::for_sync(MIB, Some(70 * MIB)), Files);
        assert_eq!(Durability::for_sync(90 * MIB, Some(200 * MIB)), Files);
        assert_eq!(Durability::for_sync(90 * MIB, None), Files);
    }

    #[test]
    fn publish_renames_every_chunk_whatever_the_durability() {
        for durability in [Durability::None, Durability::Filesystem, Durability::Files] {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path()).unwrap();
            let pending: Vec<_> = (0..20u8)
                .map(|i| {
                    let data = vec![i; 100];
                    let id = ChunkId::of(&data);
                    let frame = zstd::bulk::compress(&data, 3).unwrap();
                    (write_temp(&store, &id, &frame).unwrap(), id, data)
                })
                .collect();
            let paths: Vec<_> = pending.iter().map(|(p, ..)| p.clone()).collect();
            publish(&paths, durability).unwrap();
            for ((tmp, dest), id, data) in &pending {
                assert!(!tmp.exists(), "{durability:?}: {tmp:?} left");
                assert_eq!(dest, &store.chunk_path(id));
                assert_eq!(
                    &store
                        .chunks()
                        .unwrap()
                        .read(id, 100, Path::new("f"))
                        .unwrap(),
                    data
                );
            }
        }
    }

    use super::*;

    /// Files this process holds open under `dir`.
    fn open_under(dir: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn reads_from_many_packs_with_a_few_files_open() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        // 40 packs of one chunk each.
        let w = pack::PackWriter::with_target(&store.packs_dir(), 1);
        let all: Vec<_> = (0..40u8)
            .map(|i| {
                let data = vec![i; 1000];
                let id = ChunkId::of(&data);
                w.append(id, &zstd::bulk::compress(&data, 3).unwrap())
                    .unwrap();
                (id, data)
            })
            .collect();
        for (tmp, name) in w.finish().unwrap() {
            fs::rename(tmp, name).unwrap();
        }
        let chunks = store.chunks().unwrap();
        assert_eq!(chunks.packs().len(), 40);
        assert_eq!(open_under(tmp.path()), 0, "loading opens nothing for long");
        for (id, data) in &all {
            assert_eq!(&chunks.read(id, 1000, Path::new("f")).unwrap(), data);
        }
        assert_eq!(open_under(tmp.path()), OPEN_PACKS);
        drop(chunks);
        assert_eq!(open_under(tmp.path()), 0);
    }

    fn code() -> Vec<u8> {
        // x86-64 code if this test runs on x86-64; any bytes do for the round trip.
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        exe[exe.len() / 2..][..300_000].to_vec()
    }

    #[test]
    fn decodes_bare_frames_and_filtered_chunks() {
        let raw = code();
        let id = ChunkId::of(&raw);
        // Format 1 (and unfiltered format 2): a bare zstd frame.
        let bare = zstd::bulk::compress(&raw, 3).unwrap();
        assert_eq!(decode(&id, raw.len() as u32, &bare).unwrap(), raw);
        assert_eq!(decode(&id, 0, &bare).unwrap(), raw);
        // Filtered: FILTER_X86, then the frame of the filtered bytes.
        let mut filtered = raw.clone();
        bcj::encode(&mut filtered);
        let mut file = vec![FILTER_X86];
        file.extend(zstd::bulk::compress(&filtered, 3).unwrap());
        assert_eq!(decode(&id, raw.len() as u32, &file).unwrap(), raw);
        // Without the flag those bytes are not the chunk; an unknown flag is no frame.
        let err = decode(&id, raw.len() as u32, &file[1..]).unwrap_err();
        assert!(
            err.contains("hash mismatch") || cfg!(not(target_arch = "x86_64")),
            "{err}"
        );
        let mut unknown = file.clone();
        unknown[0] = 0x02;
        assert!(
            decode(&id, raw.len() as u32, &unknown)
                .unwrap_err()
                .starts_with("zstd")
        );
        assert!(decode(&id, 0, &[FILTER_X86]).is_err());
        assert!(decode(&id, 0, &[]).is_err());
    }
}
