//! Pack files: the chunks an import writes, back to back in one file, with a table of
//! where each one is at the end. One file per import instead of one per chunk: the
//! per-file create, rename and writeback cost a tenth of a synced import on a one-file-
//! per-chunk store (docs/BENCHMARKS.md). Each chunk's bytes are exactly what a loose
//! chunk file would hold, so a chunk is copied between the two forms as it is.
//!
//! ```text
//! header   "wrnpack\0", version u32 LE, 0 u32
//! chunks   chunk file bytes, back to back
//! table    per chunk, in file order: id [32], length u32 LE (36 bytes)
//! trailer  table offset u64 LE, count u64 LE, BLAKE3(table)[..8], "wrnpend\0"
//! ```
//!
//! A pack is written under a dot-prefixed temporary name and published under
//! `packs/<BLAKE3 of its table>.pack`, so a final name always holds a complete pack.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ChunkId, Result, StoreError, io_err};

use super::format::{
    PACK_END_MAGIC as END_MAGIC, PACK_MAGIC as MAGIC, PACK_SUFFIX, PACK_VERSION as VERSION,
};
const HEADER: u64 = 16;
const ENTRY: usize = 36;
const TRAILER: usize = 32;

/// A pack grows to about this size before the next chunks start another: big enough
/// that packs stay few, small enough that gc rewriting a pack that is part garbage
/// copies little.
pub const TARGET_SIZE: u64 = 256 << 20;

/// Where a chunk's bytes are in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// A published pack's table. It holds no file open: a store may have more packs than a
/// process may open files (`chunks::Chunks` keeps a few open).
#[derive(Debug)]
pub struct Pack {
    pub path: PathBuf,
    /// The file's size.
    pub size: u64,
    /// In file order.
    pub entries: Vec<Entry>,
}

impl Pack {
    /// Opens the pack at `path` and reads its table; every offset is checked against the
    /// file. An error says what is wrong with it.
    pub fn open(path: &Path) -> Result<Pack> {
        let bad = |reason: String| StoreError::Pack {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < HEADER + TRAILER as u64 {
            return Err(bad(format!("{len} bytes: too short for a pack")));
        }
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0).map_err(io_err(path))?;
        let mut trailer = [0u8; TRAILER];
        file.read_exact_at(&mut trailer, len - TRAILER as u64)
            .map_err(io_err(path))?;
        let (table_at, table_len) = layout(len, &header, &trailer).map_err(bad)?;
        let mut table = vec![0u8; table_len as usize];
        file.read_exact_at(&mut table, table_at)
            .map_err(io_err(path))?;
        let entries = decode_table(&trailer, &table, table_at).map_err(bad)?;
        Ok(Pack {
            path: path.to_path_buf(),
            size: len,
            entries,
        })
    }

    /// The bytes of `entry` (one of this pack's), as a chunk file holds them, from `file`
    /// (this pack, open).
    pub fn read(&self, file: &File, entry: &Entry) -> Result<Vec<u8>> {
        let mut data = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut data, entry.offset)
            .map_err(io_err(&self.path))?;
        Ok(data)
    }
}

/// Where the table of a pack of `len` bytes is, by its header and trailer: (offset,
/// length).
fn layout(
    len: u64,
    header: &[u8; HEADER as usize],
    trailer: &[u8; TRAILER],
) -> std::result::Result<(u64, u64), String> {
    if &header[..8] != MAGIC {
        return Err("not a pack (bad magic)".into());
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(format!(
            "pack version {version}, this warren reads {VERSION}"
        ));
    }
    if header[12..] != [0; 4] {
        return Err("reserved header bytes set".into());
    }
    let (table_at, table_len) = table_span(trailer)?;
    if table_at + table_len != len - TRAILER as u64 {
        return Err(format!(
            "table at {table_at}+{table_len} does not end at the trailer"
        ));
    }
    Ok((table_at, table_len))
}

/// The entries of a whole pack held in memory, checked as [`Pack::open`] checks a file
/// (for the fuzzer and its regression corpus).
pub fn parse(data: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let len = data.len() as u64;
    if len < HEADER + TRAILER as u64 {
        return Err(format!("{len} bytes: too short for a pack"));
    }
    let (header, rest) = data.split_at(HEADER as usize);
    let trailer = &rest[rest.len() - TRAILER..];
    let (header, trailer) = match (header.try_into(), trailer.try_into()) {
        (Ok(h), Ok(t)) => (h, t),
        _ => return Err("short header or trailer".into()),
    };
    let (table_at, table_len) = layout(len, header, trailer)?;
    let table = &data[table_at as usize..(table_at + table_len) as usize];
    decode_table(trailer, table, table_at)
}

/// Bytes of a pack's trailer (its last bytes).
pub const TRAILER_LEN: usize = TRAILER;

/// Where a pack's table is, by its trailer: (offset, length).
pub fn table_span(trailer: &[u8; TRAILER]) -> std::result::Result<(u64, u64), String> {
    if &trailer[24..] != END_MAGIC {
        return Err("truncated (no trailer)".into());
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&trailer[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (table_at, count) = (u64_at(0), u64_at(8));
    count
        .checked_mul(ENTRY as u64)
        .filter(|len| table_at >= HEADER && table_at.checked_add(*len).is_some())
        .map(|len| (table_at, len))
        .ok_or_else(|| format!("table of {count} chunks at {table_at} does not fit"))
}

/// The entries of the table `table` found by `trailer` at `table_at`, with their offsets
/// (the chunks lie back to back from the header to the table), once its checksum and
/// lengths are checked.
pub fn decode_table(
    trailer: &[u8; TRAILER],
    table: &[u8],
    table_at: u64,
) -> std::result::Result<Vec<Entry>, String> {
    if blake3::hash(table).as_bytes()[..8] != trailer[16..24] {
        return Err("table checksum mismatch".into());
    }
    let mut offset = HEADER;
    let entries = table
        .chunks_exact(ENTRY)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let entry = Entry {
                id: ChunkId(id),
                offset,
                len: u32::from_le_bytes([e[32], e[33], e[34], e[35]]),
            };
            offset = offset.saturating_add(u64::from(entry.len));
            entry
        })
        .collect();
    if offset != table_at {
        return Err(format!(
            "its chunks end at {offset}, its table starts at {table_at}"
        ));
    }
    Ok(entries)
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A pack being written under a temporary name.
struct Open {
    file: Arc<File>,
    tmp: PathBuf,
    end: u64,
    /// Writeback was started for the bytes before this offset.
    flushed: u64,
    entries: Vec<Entry>,
}

/// With writeback on, the disk is asked to take each this many bytes of a pack as they
/// are written, so a sync at the end waits for the last ones only.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Appends chunks to new packs in `dir`, from any number of threads at once: each
/// append takes its place under a lock and writes outside it. [`finish`] writes the
/// tables; dropping it unfinished removes the temporary files.
///
/// [`finish`]: PackWriter::finish
pub struct PackWriter {
    dir: PathBuf,
    /// Of new packs: world-readable only in a published store (`dir` is `STORE/packs`).
    mode: u32,
    open: Mutex<Vec<Open>>,
    target: u64,
    writeback: AtomicBool,
}

impl PackWriter {
    pub fn new(dir: &Path) -> PackWriter {
        Self::with_target(dir, TARGET_SIZE)
    }

    /// Starts another pack once the current one holds `target` bytes.
    pub fn with_target(dir: &Path, target: u64) -> PackWriter {
        let published = dir
            .parent()
            .is_some_and(|store| store.join(super::PUBLISHED).exists());
        PackWriter {
            dir: dir.to_path_buf(),
            mode: super::file_mode(published),
            open: Mutex::new(Vec::new()),
            target,
            writeback: AtomicBool::new(false),
        }
    }

    /// Whether to start writing the packs back to disk as they grow (for a synced
    /// publish: by then most of the pack is on disk). Off by default.
    pub fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Relaxed);
    }

    /// Appends chunk `id`'s file bytes.
    pub fn append(&self, id: ChunkId, data: &[u8]) -> Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| StoreError::Entry {
            path: PathBuf::new(),
            reason: format!("chunk {id} of {} bytes", data.len()),
        })?;
        let (file, offset, tmp, flush) = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.last().is_none_or(|p| p.end >= self.target) {
                let tmp = self.dir.join(format!(
                    ".{}.{}{PACK_SUFFIX}.tmp",
                    std::process::id(),
                    NEXT_TMP.fetch_add(1, Ordering::Relaxed)
                ));
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(self.mode)
                    .open(&tmp)
                    .map_err(io_err(&tmp))?;
                let mut header = [0u8; HEADER as usize];
                header[..8].copy_from_slice(MAGIC);
                header[8..12].copy_from_slice(&VERSION.to_le_bytes());
                file.write_all_at(&header, 0).map_err(io_err(&tmp))?;
                open.push(Open {
                    file: Arc::new(file),
                    tmp,
                    end: HEADER,
                    flushed: 0,
                    entries: Vec::new(),
                });
            }
            let Some(p) = open.last_mut() else {
                unreachable!("a pack was just opened")
            };
            let offset = p.end;
            p.end += u64::from(len);
            p.entries.push(Entry { id, offset, len });
            // The bytes before this chunk's: other threads are (almost always) done
            // writing them. Pages still to come go back with the final sync.
            let flush = (self.writeback.load(Ordering::Relaxed)
                && offset - p.flushed >= WRITEBACK_STEP)
                .then(|| (std::mem::replace(&mut p.flushed, offset), offset));
            (p.file.clone(), offset, p.tmp.clone(), flush)
        };
        file.write_all_at(data, offset).map_err(io_err(&tmp))?;
        if let Some((from, to)) = flush {
            crate::sys::start_writeback(file.as_fd(), from, to - from).map_err(io_err(&tmp))?;
        }
        Ok(())
    }

    /// Writes each pack's table and trailer (call once every append has returned).
    /// Returns the packs as (temporary path, final path) to publish, emptying the writer.
    pub fn finish(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut done = Vec::new();
        for p in open.iter() {
            let mut table = Vec::with_capacity(p.entries.len() * ENTRY + TRAILER);
            // In offset order (the order of `append`'s reservations), so offsets follow.
            for e in &p.entries {
                table.extend_from_slice(&e.id.0);
                table.extend_from_slice(&e.len.to_le_bytes());
            }
            let hash = blake3::hash(&table);
            table.extend_from_slice(&p.end.to_le_bytes());
            table.extend_from_slice(&(p.entries.len() as u64).to_le_bytes());
            table.extend_from_slice(&hash.as_bytes()[..8]);
            table.extend_from_slice(END_MAGIC);
            p.file.write_all_at(&table, p.end).map_err(io_err(&p.tmp))?;
            let name = self.dir.join(format!("{}{PACK_SUFFIX}", hash.to_hex()));
            done.push((p.tmp.clone(), name));
        }
        open.clear();
        Ok(done)
    }

    /// Bytes written so far, tables not included.
    pub fn written(&self) -> u64 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.iter().map(|p| p.end - HEADER).sum()
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(PoisonError::into_inner);
        for p in open.drain(..) {
            let _ = std::fs::remove_file(&p.tmp);
        }
    }
}

pub use super::format::PACK_LIST as LIST;

/// Rewrites `dir`'s [`LIST`] from the directory, atomically, after packs were published
/// or removed. Writers take turns by a lock on the directory, and each writes what it
/// lists then: the last one's list holds every pack.
pub fn update_list(dir: &Path) -> Result<()> {
    let lock = match File::open(dir) {
        Ok(f) => f,
        // A store of format 2 that no import wrote to: no packs to list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err(dir)(e.into()))?;
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let name = e.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if is_pack_name(&name) {
            names.push(format!("{name}\n"));
        }
    }
    names.sort();
    let path = dir.join(LIST);
    crate::atomic::write(&path, names.concat().as_bytes()).map_err(io_err(&path))
}

/// Whether `name` (a file name in `packs/`) is a published pack's.
pub fn is_pack_name(name: &str) -> bool {
    name.strip_suffix(PACK_SUFFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32) -> (ChunkId, Vec<u8>) {
        let data: Vec<u8> = (0..100 + i * 37).map(|b| (b * 7 + i) as u8).collect();
        (ChunkId::of(&data), data)
    }

    fn publish(done: &[(PathBuf, PathBuf)]) {
        for (tmp, name) in done {
            std::fs::rename(tmp, name).unwrap();
        }
    }

    #[test]
    fn round_trip_from_many_threads_with_rollover() {
        let tmp = tempfile::tempdir().unwrap();
        let w = PackWriter::with_target(tmp.path(), 4000);
        let all: Vec<_> = (0..200).map(chunk).collect();
        std::thread::scope(|s| {
            for part in all.chunks(50) {
                let w = &w;
                s.spawn(move || {
                    for (id, data) in part {
                        w.append(*id, data).unwrap();
                    }
                });
            }
        });
        let done = w.finish().unwrap();
        assert!(done.len() > 5, "{} packs", done.len());
        publish(&done);
        let mut found = std::collections::HashMap::new();
        for (_, name) in &done {
            assert!(is_pack_name(&name.file_name().unwrap().to_string_lossy()));
            let pack = Pack::open(name).unwrap();
            let file = File::open(name).unwrap();
            for e in &pack.entries {
                assert!(found.insert(e.id, pack.read(&file, e).unwrap()).is_none());
            }
        }
        assert_eq!(found.len(), all.len());
        for (id, data) in &all {
            assert_eq!(&found[id], data);
        }
        // Nothing but the published packs is left.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), done.len());
    }

    #[test]
    fn writeback_as_the_pack_grows_keeps_every_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let w = PackWriter::new(tmp.path());
        w.set_writeback(true);
        let all: Vec<_> = (0..24u8)
            .map(|i| {
                let data = vec![i; 1 << 20];
                (ChunkId::of(&data), data)
            })
            .collect();
        for (id, data) in &all {
            w.append(*id, data).unwrap();
        }
        let done = w.finish().unwrap();
        publish(&done);
        let pack = Pack::open(&done[0].1).unwrap();
        let file = File::open(&done[0].1).unwrap();
        assert_eq!(pack.entries.len(), all.len());
        for (e, (id, data)) in pack.entries.iter().zip(&all) {
            assert_eq!((&e.id, &pack.read(&file, e).unwrap()), (id, data));
        }
    }

    #[test]
    fn every_damage_to_table_or_trailer_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let w = PackWriter::new(tmp.path());
        for i in 0..3 {
            let (id, data) = chunk(i);
            w.append(id, &data).unwrap();
        }
        let done = w.finish().unwrap();
        publish(&done);
        let path = &done[0].1;
        let good = std::fs::read(path).unwrap();
        let table_at = good.len() - TRAILER - 3 * ENTRY;
        // Any flipped byte of header, table or trailer; any truncation.
        for at in (0..HEADER as usize).chain(table_at..good.len()) {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(path, &bad).unwrap();
            assert!(Pack::open(path).is_err(), "byte {at} flipped");
        }
        for len in [0, 10, HEADER as usize + TRAILER, good.len() - 1] {
            std::fs::write(path, &good[..len]).unwrap();
            let err = Pack::open(path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        std::fs::write(path, &good).unwrap();
        assert_eq!(Pack::open(path).unwrap().entries.len(), 3);
    }

    /// tests/corpus/pack/: seeds (`valid.pack`, a real import's pack) and what `cargo fuzz
    /// run pack` (fuzz/) found. Every input gives entries or an error, never a panic.
    #[test]
    fn regression_corpus_never_panics() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pack");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let parsed = parse(&std::fs::read(&path).unwrap());
            let name = path.file_name().unwrap().to_string_lossy();
            if name == "truncated.pack" {
                assert!(parsed.is_err());
            }
            if name == "valid.pack" {
                // The same as a file.
                assert_eq!(Pack::open(&path).unwrap().entries, parsed.unwrap());
            }
            n += 1;
        }
        assert!(n >= 2, "corpus missing in {dir:?}");
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let w = PackWriter::new(tmp.path());
            let (id, data) = chunk(1);
            w.append(id, &data).unwrap();
            assert_eq!(w.written(), data.len() as u64);
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // And a writer with nothing appended makes no pack.
        assert!(PackWriter::new(tmp.path()).finish().unwrap().is_empty());
    }
}
