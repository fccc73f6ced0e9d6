//! The blobs of a store artifact, made smaller at the publisher's expense: the chunks of
//! each pack in segments of adjacent chunks compressed together at [`LEVEL`] (with the
//! x86 branch filter where the stored chunk has it; see
//! [`crate::store::remote::segments`]), the index bodies recompressed too. The store
//! imports at fast levels, chunk by chunk; a published artifact is fetched by many hosts
//! and written once.
//! Deterministic: the same chunks in the same order make the same pack, byte for byte,
//! so a re-push finds every blob already there.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::store::format::FILTER_X86;
use crate::store::index::{ChunkId, Index};
use crate::store::remote::segments;
use crate::store::{StoreError, bcj, chunks};

use super::RegistryError;

/// zstd level of a pushed segment and index body.
pub(crate) const LEVEL: i32 = 19;

/// A segment holds adjacent chunks up to this many bytes (decompressed): the bigger, the
/// better zstd compresses a variant's new files, and the more a pull that lacks one chunk
/// of it fetches besides. bench/registry.sh's variant moves 0.80x its layer with 1 MiB
/// segments, 0.79x with 4 MiB (docs/BENCHMARKS.md).
const SEGMENT: usize = 4 << 20;

/// A chunk this big (of a big file) is a segment of its own: it gains little from its
/// neighbours, and a small change to a big file then moves only the chunks it touches.
const ALONE: usize = 128 << 10;

/// Segments compressed in parallel at a time (bounded memory).
const BATCH: usize = 8;

/// An index file's header before its zstd body (index/mod.rs: magic, version, body
/// length, BLAKE3 of the body).
const INDEX_HEADER: usize = 8 + 4 + 8 + 32;

/// A segment being filled: its chunks (id, length, x86 filtered) and their bytes.
#[derive(Default)]
struct Segment {
    chunks: Vec<(ChunkId, u32, bool)>,
    raw: Vec<u8>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |err| RegistryError::Io {
        path: path.into(),
        err,
    }
}

/// A segmented pack in `dir` of `chunks` (id, stored bytes), in that order: runs of
/// adjacent chunks compressed together at [`LEVEL`]. Each chunk is checked against its
/// id on the way: a damaged store chunk is not published.
pub(super) fn write_pack(
    dir: &Path,
    chunks: impl Iterator<Item = Result<(ChunkId, Vec<u8>), StoreError>>,
) -> Result<PathBuf, RegistryError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!(
        "segmented.{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut w = segments::Writer::create(&path).map_err(io(&path))?;
    let mut ready = Vec::with_capacity(BATCH);
    let mut cur = Segment::default();
    for c in chunks {
        let (id, stored) = c?;
        let mut raw = chunks::decode(&id, 0, &stored).map_err(|why| RegistryError::Invalid {
            what: format!("chunk {id}"),
            why,
        })?;
        let x86 = stored.first() == Some(&FILTER_X86);
        if x86 {
            bcj::encode(&mut raw);
        }
        let alone = raw.len() >= ALONE;
        if !cur.chunks.is_empty() && (alone || cur.raw.len() + raw.len() > SEGMENT) {
            ready.push(std::mem::take(&mut cur));
        }
        cur.chunks.push((id, raw.len() as u32, x86));
        cur.raw.extend_from_slice(&raw);
        if alone {
            ready.push(std::mem::take(&mut cur));
        }
        if ready.len() >= BATCH {
            flush(&mut w, &mut ready).map_err(io(&path))?;
        }
    }
    if !cur.chunks.is_empty() {
        ready.push(cur);
    }
    flush(&mut w, &mut ready).map_err(io(&path))?;
    w.finish(LEVEL).map_err(io(&path))?;
    Ok(path)
}

/// Compresses `ready` in parallel, appends them in order.
fn flush(w: &mut segments::Writer, ready: &mut Vec<Segment>) -> std::io::Result<()> {
    thread_local! {
        static CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    }
    let frames: Vec<Vec<u8>> = ready
        .par_iter()
        .map(|s| {
            CCTX.with_borrow_mut(|c| {
                if c.is_none() {
                    let mut z = zstd::bulk::Compressor::new(LEVEL)?;
                    // Every chunk is checked against its id: no frame checksum.
                    z.include_checksum(false)?;
                    *c = Some(z);
                }
                match c {
                    Some(c) => c.compress(&s.raw),
                    None => zstd::bulk::compress(&s.raw, LEVEL),
                }
            })
        })
        .collect::<Result<_, _>>()?;
    for (s, frame) in ready.iter().zip(frames) {
        w.add(&s.chunks, &frame)?;
    }
    ready.clear();
    Ok(())
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
    use crate::store::compress::{ChunkCompressor, Class};

    fn stored(raw: &[u8], class: Class) -> Vec<u8> {
        let mut data = raw.to_vec();
        let mut out = Vec::new();
        ChunkCompressor::default()
            .encode_at(&mut data, class, 1, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn segmented_pack_holds_every_chunk_checked_and_filtered() {
        let elf = std::fs::read("/proc/self/exe").unwrap();
        let text = b"def main():\n    return 0  # a comment, said again\n".repeat(3000);
        let mut raws: Vec<(Vec<u8>, Class)> = Vec::new();
        // Small chunks that fill segments, big ones alone, x86 ones filtered.
        for i in 0..40u8 {
            let mut t = text[..20_000 + usize::from(i) * 100].to_vec();
            t.push(i);
            raws.push((t, Class::File));
        }
        raws.push((elf[..200_000].to_vec(), Class::X86));
        raws.push((elf[..60_000].to_vec(), Class::X86));
        raws.push((text.clone(), Class::File));
        let chunks: Vec<(ChunkId, Vec<u8>)> = raws
            .iter()
            .map(|(r, class)| (ChunkId::of(r), stored(r, *class)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let make = || {
            let p = write_pack(dir.path(), chunks.iter().cloned().map(Ok)).unwrap();
            std::fs::read(p).unwrap()
        };
        let data = make();
        // Deterministic: a re-push makes the same bytes.
        assert_eq!(make(), data);
        let segs = segments::parse(&data).unwrap();
        assert!(segs.len() > 2 && segs.len() < raws.len(), "{}", segs.len());
        let mut n = 0;
        for seg in &segs {
            let frame = &data[seg.at as usize..(seg.at + seg.stored) as usize];
            let raw = segments::decompress(seg, frame).unwrap();
            for c in &seg.chunks {
                let mut bytes = raw[c.offset as usize..][..c.len as usize].to_vec();
                let (want, class) = &raws[n];
                assert_eq!(c.x86, *class == Class::X86);
                if c.x86 {
                    bcj::decode(&mut bytes);
                }
                assert_eq!(&bytes, want);
                assert_eq!(c.id, chunks[n].0);
                n += 1;
            }
        }
        assert_eq!(n, raws.len());
        // The text compresses far better together than chunk by chunk.
        let alone: usize = chunks.iter().map(|c| c.1.len()).sum();
        assert!(data.len() < alone, "{} vs {alone}", data.len());
        // A damaged chunk is not published.
        let mut bad = chunks.clone();
        bad[3].1 = stored(b"not the chunk", Class::File);
        assert!(write_pack(dir.path(), bad.into_iter().map(Ok)).is_err());
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
