//! An image's index as a store artifact holds it (media type
//! `application/vnd.warren.store.index.v2`): the index with every chunk id left out
//! (zeroed, so they cost nothing compressed), and for each of its chunks the chunk's
//! place in the artifact's segmented packs, whose tables hold the ids. A pull fetches
//! those tables anyway, so the ids move once, not twice: the index is most of its size
//! in ids (32 bytes a chunk, incompressible).
//!
//! ```text
//! header  "wrnaidx\0", version u32 LE, 0 u32, index length u64 LE
//! index   a store index file (index/mod.rs), every chunk id zero
//! places  one zstd frame: per chunk of the index, its place (its number in the chunks
//!         of the artifact's segmented packs, in manifest order, each pack in table
//!         order) as a LEB128 of the zigzag of (place - previous place - 1)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::index::{ChunkId, Index};
use crate::store::remote::segments::Segment;

const MAGIC: &[u8; 8] = b"wrnaidx\0";
const VERSION: u32 = 1;
const HEADER: usize = 24;

/// The blob of `index`, whose chunks are at `places` (by id) in the artifact's packs;
/// `recompress` makes an index file's bytes smaller.
pub(crate) fn encode(
    index: &Index,
    places: &HashMap<ChunkId, u64>,
    recompress: impl Fn(Vec<u8>) -> Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut sparse = index.clone();
    let mut varints = Vec::with_capacity(index.chunks.len() * 2);
    let mut prev: i64 = -1;
    for c in &mut sparse.chunks {
        let place = *places
            .get(&c.id)
            .ok_or_else(|| format!("chunk {} is in none of the packs", c.id))?;
        let place = i64::try_from(place).map_err(|e| e.to_string())?;
        let delta = place - prev - 1;
        let mut z = ((delta << 1) ^ (delta >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            varints.push(if z == 0 { b } else { b | 0x80 });
            if z == 0 {
                break;
            }
        }
        prev = place;
        c.id = ChunkId([0; 32]);
    }
    let body = recompress(sparse.encode());
    let places = zstd::bulk::compress(&varints, super::repack::LEVEL).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(HEADER + body.len() + places.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&places);
    Ok(out)
}

/// The index in blob `data`, its chunk ids filled in from the tables of the artifact's
/// segmented packs, `packs` (in manifest order). Each chunk's length must be the one its
/// pack's table gives.
pub(crate) fn decode(data: &[u8], packs: &[(Arc<str>, Vec<Segment>)]) -> Result<Index, String> {
    let head = data
        .get(..HEADER)
        .ok_or("too short for a warren index blob")?;
    if &head[..8] != MAGIC {
        return Err("not a warren index blob (bad magic)".into());
    }
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if word(8) != VERSION || word(12) != 0 {
        return Err(format!(
            "index blob version {}, this warren reads {VERSION}",
            word(8)
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[16..24]);
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|e| e.to_string())?;
    let body = data[HEADER..]
        .get(..len)
        .ok_or("the index overruns the blob")?;
    let mut index = Index::decode(body).map_err(|e| e.to_string())?;
    let n = index.chunks.len();
    // At most 10 bytes a chunk: never trust the frame to say otherwise.
    let varints = zstd::bulk::decompress(&data[HEADER + len..], n.saturating_mul(10).max(1))
        .map_err(|e| format!("chunk places: zstd: {e}"))?;
    let all: Vec<_> = packs
        .iter()
        .flat_map(|(_, segs)| segs.iter().flat_map(|s| &s.chunks))
        .collect();
    let mut at = 0usize;
    let mut prev: i64 = -1;
    for (i, c) in index.chunks.iter_mut().enumerate() {
        let mut z = 0u64;
        let mut shift = 0;
        loop {
            let b = *varints.get(at).ok_or("fewer chunk places than chunks")?;
            at += 1;
            z |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 63 {
                return Err("a chunk place too long".into());
            }
        }
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let place = prev.checked_add(1).and_then(|p| p.checked_add(delta));
        let found = place
            .and_then(|p| usize::try_from(p).ok())
            .and_then(|p| all.get(p).map(|c| (p, c)));
        let (p, chunk) = found.ok_or_else(|| format!("chunk {i}: its place is in no pack"))?;
        if chunk.len != c.len {
            return Err(format!(
                "chunk {i}: {} bytes in its pack, {} in the index",
                chunk.len, c.len
            ));
        }
        c.id = chunk.id;
        prev = p as i64;
    }
    if at != varints.len() {
        return Err("more chunk places than chunks".into());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::ChunkRef;
    use crate::store::remote::segments::SegChunk;

    fn table(ids: &[(ChunkId, u32)]) -> Vec<Segment> {
        ids.chunks(2)
            .map(|run| Segment {
                at: 0,
                stored: 0,
                raw: 0,
                chunks: run
                    .iter()
                    .map(|&(id, len)| SegChunk {
                        id,
                        len,
                        offset: 0,
                        x86: false,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Chunks (id, length) in two packs, their places, and an index of some of them.
    struct Fixture {
        ids: Vec<(ChunkId, u32)>,
        packs: Vec<(Arc<str>, Vec<Segment>)>,
        places: HashMap<ChunkId, u64>,
        index: Index,
    }

    /// `n` chunks, the first `split` in pack "a", the rest in "b"; the index lists the
    /// chunks numbered `order`.
    fn fixture(n: u32, split: usize, order: &[usize]) -> Fixture {
        let ids: Vec<(ChunkId, u32)> = (0..n)
            .map(|i| (ChunkId::of(&i.to_le_bytes()), 1000 + i))
            .collect();
        let packs = vec![
            ("a".into(), table(&ids[..split])),
            ("b".into(), table(&ids[split..])),
        ];
        let places = ids
            .iter()
            .enumerate()
            .map(|(i, c)| (c.0, i as u64))
            .collect();
        let index = Index {
            name: "a:b".into(),
            created: 5,
            config: None,
            chunks: order
                .iter()
                .map(|&i| ChunkRef {
                    id: ids[i].0,
                    len: ids[i].1,
                })
                .collect(),
            records: Vec::new(),
        };
        Fixture {
            ids,
            packs,
            places,
            index,
        }
    }

    #[test]
    fn ids_come_back_from_the_pack_tables() {
        // Out of pack order, with a chunk twice.
        let Fixture {
            ids,
            packs,
            places,
            index,
        } = fixture(50, 20, &[30, 31, 32, 0, 1, 2, 49, 5, 5, 6, 20]);
        let blob = encode(&index, &places, |d| d).unwrap();
        // The ids are not in the blob.
        assert!(!blob.windows(32).any(|w| w == ids[30].0.0));
        assert_eq!(decode(&blob, &packs).unwrap(), index);
        // A table that disagrees about a length, or lacks a place: refused.
        let mut short = packs.clone();
        short[1].1[0].chunks[0].len = 7;
        assert!(decode(&blob, &short).unwrap_err().contains("in the index"));
        assert!(decode(&blob, &packs[..1]).unwrap_err().contains("no pack"));
        // A version this warren does not know.
        let mut future = blob.clone();
        future[8] = 2;
        assert!(decode(&future, &packs).unwrap_err().contains("version 2"));
        assert!(decode(&blob[..10], &packs).is_err());
        // A chunk in no pack cannot be published this way.
        let mut missing = places.clone();
        missing.remove(&ids[6].0);
        assert!(encode(&index, &missing, |d| d).is_err());
    }

    #[test]
    fn hostile_blobs_and_places_are_refused_never_a_panic() {
        let Fixture {
            ids,
            packs,
            places,
            index,
        } = fixture(40, 25, &[3, 4, 30, 0, 39, 39, 12]);
        let blob = encode(&index, &places, |d| d).unwrap();
        let len = u64::from_le_bytes(blob[16..24].try_into().unwrap()) as usize;
        let varints = zstd::bulk::decompress(&blob[HEADER + len..], 1 << 16).unwrap();
        let in_packs = |got: &Index| {
            got.chunks
                .iter()
                .all(|c| ids.iter().any(|&(id, l)| id == c.id && l == c.len))
        };
        let mut m = crate::testing::Mutator::new(0xB10B_5EED);
        let mut parsed = 0;
        for _ in 0..5_000 {
            if let Ok(got) = decode(&m.mutate(&blob), &packs) {
                assert!(in_packs(&got));
            }
            // Places a hostile writer compressed itself: each must name a chunk of the
            // packs with the index's length, one per chunk, no more.
            let mut forged = blob[..HEADER + len].to_vec();
            forged.extend(zstd::bulk::compress(&m.mutate(&varints), 1).unwrap());
            if let Ok(got) = decode(&forged, &packs) {
                parsed += 1;
                assert!(in_packs(&got));
                assert_eq!(got.chunks.len(), index.chunks.len());
            }
        }
        assert!(parsed > 0);
        // A place of more than 64 bits: refused, not shifted out of range.
        let mut long = blob[..HEADER + len].to_vec();
        long.extend(zstd::bulk::compress(&[[0xffu8; 12].as_slice(), &[0]].concat(), 1).unwrap());
        assert!(decode(&long, &packs).unwrap_err().contains("too long"));
    }
}
