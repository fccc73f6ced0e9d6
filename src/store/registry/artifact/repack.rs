//! The blobs of a store artifact, made smaller at the publisher's expense: every chunk
//! recompressed at [`LEVEL`] (in the store's own chunk encoding, with the x86 branch
//! filter where the stored chunk has it, so a puller stores it as received), the packs
//! rebuilt from those, the index bodies recompressed too. The store imports at fast
//! levels; a published artifact is fetched by many hosts and written once.
//! Deterministic: the same chunks in the same order make the same pack, byte for byte,
//! so a re-push finds every blob already there.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::store::compress::{ChunkCompressor, Class};
use crate::store::format::FILTER_X86;
use crate::store::index::{ChunkId, Index};
use crate::store::{StoreError, chunks, pack};

use super::RegistryError;

/// zstd level of a pushed chunk and index body.
pub(crate) const LEVEL: i32 = 19;

/// Chunks read, then recompressed in parallel, at a time (bounded memory).
const BATCH: usize = 64;

/// An index file's header before its zstd body (index/mod.rs: magic, version, body
/// length, BLAKE3 of the body).
const INDEX_HEADER: usize = 8 + 4 + 8 + 32;

/// A pack in `dir` of `chunks` (id, stored bytes), in that order, each recompressed.
pub(super) fn write_pack(
    dir: &Path,
    chunks: impl Iterator<Item = Result<(ChunkId, Vec<u8>), StoreError>>,
) -> Result<PathBuf, RegistryError> {
    let writer = pack::PackWriter::with_target(dir, u64::MAX);
    let mut batch = Vec::with_capacity(BATCH);
    let mut chunks = chunks.peekable();
    while chunks.peek().is_some() {
        batch.clear();
        for c in chunks.by_ref().take(BATCH) {
            batch.push(c?);
        }
        let smaller: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|(id, stored)| recompress(id, stored))
            .collect::<Result<_, _>>()?;
        for ((id, _), data) in batch.iter().zip(smaller) {
            writer.append(*id, &data)?;
        }
    }
    let mut done = writer.finish()?;
    let (tmp, _) = done.pop().ok_or_else(|| RegistryError::Invalid {
        what: dir.display().to_string(),
        why: "no pack written".into(),
    })?;
    Ok(tmp)
}

/// Chunk `id`'s file bytes at [`LEVEL`], or `stored` if that is no smaller. The chunk is
/// checked against its id on the way: a damaged store chunk is not published.
fn recompress(id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>, RegistryError> {
    thread_local! {
        static COMPRESSOR: RefCell<ChunkCompressor> = RefCell::new(ChunkCompressor::default());
    }
    let bad = |why: String| RegistryError::Invalid {
        what: format!("chunk {id}"),
        why,
    };
    let mut raw = chunks::decode(id, 0, stored).map_err(bad)?;
    let class = match stored.first() {
        Some(&FILTER_X86) => Class::X86,
        _ => Class::File,
    };
    let mut out = Vec::new();
    COMPRESSOR
        .with_borrow_mut(|c| c.encode_at(&mut raw, class, LEVEL, &mut out))
        .map_err(|e| bad(format!("zstd: {e}")))?;
    Ok(if out.len() < stored.len() {
        out
    } else {
        stored.to_vec()
    })
}

/// An index file's bytes with the body recompressed at [`LEVEL`]; `data` as it is if
/// that is no smaller or does not read back as the same index.
pub(super) fn index(data: Vec<u8>) -> Vec<u8> {
    let Some((header, body)) = data.split_at_checked(INDEX_HEADER) else {
        return data;
    };
    let Ok(plain) = zstd::stream::decode_all(body) else {
        return data;
    };
    let Ok(smaller) = zstd::bulk::compress(&plain, LEVEL) else {
        return data;
    };
    if smaller.len() >= body.len() {
        return data;
    }
    let mut out = Vec::with_capacity(header.len() + smaller.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&smaller);
    match (Index::decode(&out), Index::decode(&data)) {
        (Ok(a), Ok(b)) if a == b => out,
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(raw: &[u8], class: Class) -> Vec<u8> {
        let mut data = raw.to_vec();
        let mut out = Vec::new();
        ChunkCompressor::default()
            .encode_at(&mut data, class, 1, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn recompressed_chunks_decode_and_keep_their_filter() {
        let elf = std::fs::read("/proc/self/exe").unwrap();
        let text = b"def main():\n    return 0  # a comment, said again\n".repeat(3000);
        for (raw, class) in [(&elf[..200_000], Class::X86), (&text[..], Class::File)] {
            let id = ChunkId::of(raw);
            let before = stored(raw, class);
            let after = recompress(&id, &before).unwrap();
            assert!(after.len() <= before.len(), "{class:?}");
            assert_eq!(after.first() == Some(&FILTER_X86), class == Class::X86);
            assert_eq!(chunks::decode(&id, raw.len() as u32, &after).unwrap(), raw);
            // Deterministic: a re-push makes the same bytes.
            assert_eq!(recompress(&id, &before).unwrap(), after);
        }
        let id = ChunkId::of(&text);
        let wrong = stored(b"not the chunk", Class::File);
        assert!(recompress(&id, &wrong).is_err());
    }

    #[test]
    fn recompressed_index_reads_back_the_same() {
        use crate::store::index::{Entry, Kind, Record, Timestamp};
        let records = (0..300)
            .map(|i| Record {
                entry: Entry {
                    path: if i == 0 {
                        "".into()
                    } else {
                        format!("f{i:04}").into()
                    },
                    kind: if i == 0 { Kind::Dir } else { Kind::Fifo },
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: Timestamp { sec: 3, nsec: 0 },
                    xattrs: Vec::new(),
                },
                offset: 0,
            })
            .collect();
        let index = Index {
            name: "a:b".into(),
            created: 5,
            config: Some(b"{\"config\":{}}".repeat(500)),
            chunks: Vec::new(),
            records,
        };
        let data = index.encode();
        let smaller = super::index(data.clone());
        assert!(smaller.len() <= data.len());
        assert_eq!(Index::decode(&smaller).unwrap(), index);
        assert_eq!(super::index(b"junk".to_vec()), b"junk");
    }
}
