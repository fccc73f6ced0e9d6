//! Chunk files: one zstd frame per chunk at `chunks/ab/<blake3 hex>.zst`. A new chunk is
//! written under a dot-prefixed temporary name and only renamed to its final name when
//! its import commits (after it is synced), so a final name always holds a complete
//! chunk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ChunkId, Result, Store, StoreError, io_err};

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Reads chunk `id`, decompresses it and checks its length and hash. `for_path` names the
/// file that needs it, for the error.
pub fn read(store: &Store, id: &ChunkId, len: u32, for_path: &Path) -> Result<Vec<u8>> {
    let path = store.chunk_path(id);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::MissingChunk {
                chunk: *id,
                path: for_path.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    decode(id, len, &data).map_err(|reason| StoreError::CorruptChunk {
        chunk: *id,
        path: for_path.to_path_buf(),
        reason,
    })
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
    let raw = DCTX
        .with_borrow_mut(|d| {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d {
                Some(d) => d.decompress(data, cap),
                None => zstd::bulk::decompress(data, cap),
            }
        })
        .map_err(|e| format!("zstd: {e}"))?;
    if len > 0 && raw.len() != len as usize {
        return Err(format!("{} bytes, index says {len}", raw.len()));
    }
    if ChunkId::of(&raw) != *id {
        return Err("hash mismatch".into());
    }
    Ok(raw)
}

/// Writes compressed chunk bytes to a temporary file beside the chunk's final path
/// (starting its writeback when it will be synced).
/// Returns (temporary path, final path).
pub fn write_temp(
    store: &Store,
    id: &ChunkId,
    compressed: &[u8],
    sync: bool,
) -> Result<(PathBuf, PathBuf)> {
    let dest = store.chunk_path(id);
    let tmp = dest.with_file_name(format!(
        ".{id}.tmp.{}.{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(compressed).map_err(io_err(&tmp))?;
    // Writeback starts now, so the fdatasync at commit has little left to wait for.
    if sync {
        crate::sys::start_writeback(std::os::fd::AsFd::as_fd(&f)).map_err(io_err(&tmp))?;
    }
    Ok((tmp, dest))
}

/// What `scan` finds: every chunk with its file size, and every temporary file.
pub struct Scan {
    pub chunks: Vec<(ChunkId, u64)>,
    pub temps: Vec<PathBuf>,
}

/// Every chunk file in the store with its size, and every leftover temporary file.
pub fn scan(store: &Store) -> Result<Scan> {
    let mut chunks = Vec::new();
    let mut temps = Vec::new();
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
            let id = name.strip_suffix(".zst").and_then(ChunkId::from_hex);
            match id {
                Some(id) if !name.starts_with('.') => {
                    let len = e.metadata().map_err(io_err(e.path()))?.len();
                    chunks.push((id, len));
                }
                _ if name.starts_with('.') => temps.push(e.path()),
                _ => {} // not ours: leave it alone
            }
        }
    }
    Ok(Scan { chunks, temps })
}

/// Every chunk file in the store with its size.
pub fn list(store: &Store) -> Result<Vec<(ChunkId, u64)>> {
    Ok(scan(store)?.chunks)
}
