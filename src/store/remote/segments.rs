//! Segmented packs: the packs of a registry's warren store artifact (media type
//! `application/vnd.warren.store.pack.v2`). A store pack compresses each chunk alone; a
//! variant that only adds files shares no chunk with its base, so what it moves is what
//! per-chunk compression leaves. Here each zstd frame (a segment) holds a run of adjacent
//! chunks, so the compressor sees the context of its neighbours; a pull fetches the
//! segments holding chunks it lacks, decompresses each once and checks every chunk
//! against its id before storing it (recompressed as the local store keeps chunks).
//!
//! ```text
//! header   "wrnsegp\0", version u32 LE, 0 u32
//! segments zstd frames back to back: each the bytes of a run of chunks (an x86 chunk
//!          with the store's branch filter applied), back to back
//! table    one zstd frame: segment count u32, chunk count u32; per segment its frame's
//!          length u32 and chunk count u32; per chunk its id [32]; per chunk its length
//!          u32; per chunk its flags u8 (1: x86 filter). All LE, in file order: a chunk's
//!          segment and its offset in the decompressed segment follow from the counts
//!          and lengths.
//! trailer  table offset u64, table length u64, version u32, 0 u32, BLAKE3(table)[..8],
//!          "wrnsend\0"
//! ```
//!
//! A reader knows the version from the trailer (the only part a pull reads besides the
//! table and segments) and refuses any other.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::RemoteError;
use super::fetch::{Range, Transport};
use crate::store::compress::{ChunkCompressor, Class};
use crate::store::index::ChunkId;
use crate::store::pack::PackWriter;
use crate::store::{bcj, chunker};

pub(crate) const MAGIC: &[u8; 8] = b"wrnsegp\0";
pub(crate) const END_MAGIC: &[u8; 8] = b"wrnsend\0";
pub(crate) const VERSION: u32 = 1;
const HEADER: u64 = 16;
/// Bytes of the trailer (the pack's last bytes).
pub(crate) const TRAILER: usize = 40;
/// Largest decompressed segment a reader accepts (a writer makes them at most 4 MiB);
/// its frame may be a little bigger, never more than zstd's bound for it.
pub(crate) const MAX_SEGMENT: u64 = 8 << 20;
/// Largest table (compressed, and decompressed) a reader accepts.
pub(crate) const MAX_TABLE: u64 = 256 << 20;
/// A chunk's flag: its bytes in the segment have the x86 branch filter applied.
pub(crate) const FLAG_X86: u8 = 1;

/// A chunk in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegChunk {
    pub id: ChunkId,
    pub len: u32,
    /// Where it starts in the decompressed segment.
    pub offset: u32,
    pub x86: bool,
}

/// A segment: where its frame is in the pack, and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub at: u64,
    pub stored: u64,
    /// Decompressed length: the sum of its chunks' lengths.
    pub raw: u64,
    pub chunks: Vec<SegChunk>,
}

/// Where the table is, by the trailer: (offset, length). Checks the version.
pub(crate) fn table_span(trailer: &[u8; TRAILER]) -> Result<(u64, u64), String> {
    if &trailer[32..] != END_MAGIC {
        return Err("not a segmented pack (no trailer)".into());
    }
    let version = u32_at(trailer, 16);
    if version != VERSION || u32_at(trailer, 20) != 0 {
        return Err(format!(
            "segmented pack version {version}, this warren reads {VERSION}"
        ));
    }
    let (at, len) = (u64_at(trailer, 0), u64_at(trailer, 8));
    if at < HEADER || len > MAX_TABLE || at.checked_add(len).is_none() {
        return Err(format!("table of {len} bytes at {at} does not fit"));
    }
    Ok((at, len))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The segments of the pack whose trailer is `trailer` and whose table, at `table_at`,
/// is `table`: checksum, counts and lengths checked, every frame between the header and
/// the table, no segment bigger than [`MAX_SEGMENT`] decompressed.
pub(crate) fn decode_table(
    trailer: &[u8; TRAILER],
    table: &[u8],
    table_at: u64,
) -> Result<Vec<Segment>, String> {
    if blake3::hash(table).as_bytes()[..8] != trailer[24..32] {
        return Err("table checksum mismatch".into());
    }
    let plain = zstd::bulk::decompress(table, MAX_TABLE as usize)
        .map_err(|e| format!("table: zstd: {e}"))?;
    let head = plain.get(..8).ok_or("table: too short")?;
    let (nseg, nchunk) = (u32_at(head, 0) as usize, u32_at(head, 4) as usize);
    let want = 8 + nseg as u64 * 8 + nchunk as u64 * 37;
    if plain.len() as u64 != want {
        return Err(format!(
            "table of {} bytes for {nseg} segments and {nchunk} chunks",
            plain.len()
        ));
    }
    let segs = &plain[8..8 + nseg * 8];
    let ids = &plain[8 + nseg * 8..][..nchunk * 32];
    let lens = &plain[8 + nseg * 8 + nchunk * 32..][..nchunk * 4];
    let flags = &plain[8 + nseg * 8 + nchunk * 36..];
    let mut out = Vec::with_capacity(nseg);
    let (mut at, mut next) = (HEADER, 0usize);
    for s in segs.chunks_exact(8) {
        let (stored, count) = (u64::from(u32_at(s, 0)), u32_at(s, 4) as usize);
        let bound = zstd::zstd_safe::compress_bound(MAX_SEGMENT as usize) as u64;
        if stored == 0 || stored > bound {
            return Err(format!("segment {}: a frame of {stored} bytes", out.len()));
        }
        let end = next
            .checked_add(count)
            .filter(|&e| e <= nchunk && count > 0);
        let end = end.ok_or("a segment's chunks overrun the table")?;
        let mut raw = 0u64;
        let mut chunks = Vec::with_capacity(count);
        for c in next..end {
            let len = u32_at(lens, c * 4);
            if len == 0 || len as usize > chunker::MAX_SIZE || flags[c] & !FLAG_X86 != 0 {
                return Err(format!("chunk {c}: length {len}, flags {}", flags[c]));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&ids[c * 32..c * 32 + 32]);
            chunks.push(SegChunk {
                id: ChunkId(id),
                len,
                offset: raw as u32,
                x86: flags[c] & FLAG_X86 != 0,
            });
            raw += u64::from(len);
            if raw > MAX_SEGMENT {
                return Err(format!("segment {} over {MAX_SEGMENT} bytes", out.len()));
            }
        }
        out.push(Segment {
            at,
            stored,
            raw,
            chunks,
        });
        (at, next) = (at + stored, end);
    }
    if next != nchunk || at != table_at {
        return Err(format!(
            "segments end at {at} with {next} chunks; table at {table_at}, {nchunk} chunks"
        ));
    }
    Ok(out)
}

/// Decompresses segment `seg` (its frame, `frame`): exactly its declared length or an
/// error.
pub(crate) fn decompress(seg: &Segment, frame: &[u8]) -> Result<Vec<u8>, String> {
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
                Some(d) => d.decompress(frame, seg.raw as usize),
                None => zstd::bulk::decompress(frame, seg.raw as usize),
            }
        })
        .map_err(|e| format!("segment at {} is corrupt: zstd: {e}", seg.at))?;
    if raw.len() as u64 != seg.raw {
        return Err(format!(
            "segment at {} is corrupt: {} bytes, its table says {}",
            seg.at,
            raw.len(),
            seg.raw
        ));
    }
    Ok(raw)
}

/// Writes a segmented pack: [`add`](Self::add) each segment in order, then
/// [`finish`](Self::finish).
pub(crate) struct Writer {
    file: BufWriter<File>,
    at: u64,
    segments: Vec<u8>,
    nseg: u32,
    ids: Vec<u8>,
    lens: Vec<u8>,
    flags: Vec<u8>,
}

impl Writer {
    /// Creates `path` (which must not exist) and writes the header.
    pub(crate) fn create(path: &Path) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(MAGIC)?;
        file.write_all(&VERSION.to_le_bytes())?;
        file.write_all(&[0; 4])?;
        Ok(Writer {
            file,
            at: HEADER,
            segments: Vec::new(),
            nseg: 0,
            ids: Vec::new(),
            lens: Vec::new(),
            flags: Vec::new(),
        })
    }

    /// Appends a segment: `frame`, the zstd frame of `chunks`' bytes (id, length, x86
    /// filtered) back to back.
    pub(crate) fn add(
        &mut self,
        chunks: &[(ChunkId, u32, bool)],
        frame: &[u8],
    ) -> std::io::Result<()> {
        let too_big = || std::io::Error::other("segment too big");
        let stored = u32::try_from(frame.len()).map_err(|_| too_big())?;
        let count = u32::try_from(chunks.len()).map_err(|_| too_big())?;
        self.file.write_all(frame)?;
        self.at += frame.len() as u64;
        self.segments.extend_from_slice(&stored.to_le_bytes());
        self.segments.extend_from_slice(&count.to_le_bytes());
        self.nseg += 1;
        for (id, len, x86) in chunks {
            self.ids.extend_from_slice(&id.0);
            self.lens.extend_from_slice(&len.to_le_bytes());
            self.flags.push(if *x86 { FLAG_X86 } else { 0 });
        }
        Ok(())
    }

    /// Writes the table (compressed at `level`) and the trailer.
    pub(crate) fn finish(mut self, level: i32) -> std::io::Result<()> {
        let nchunk = u32::try_from(self.flags.len()).map_err(std::io::Error::other)?;
        let mut plain = Vec::with_capacity(8 + self.segments.len() + self.flags.len() * 37);
        plain.extend_from_slice(&self.nseg.to_le_bytes());
        plain.extend_from_slice(&nchunk.to_le_bytes());
        for part in [&self.segments, &self.ids, &self.lens, &self.flags] {
            plain.extend_from_slice(part);
        }
        let table = zstd::bulk::compress(&plain, level)?;
        self.file.write_all(&table)?;
        let mut trailer = Vec::with_capacity(TRAILER);
        trailer.extend_from_slice(&self.at.to_le_bytes());
        trailer.extend_from_slice(&(table.len() as u64).to_le_bytes());
        trailer.extend_from_slice(&VERSION.to_le_bytes());
        trailer.extend_from_slice(&[0; 4]);
        trailer.extend_from_slice(&blake3::hash(&table).as_bytes()[..8]);
        trailer.extend_from_slice(END_MAGIC);
        self.file.write_all(&trailer)?;
        self.file.flush()
    }
}

/// The segments of a whole segmented pack held in memory (tests).
#[cfg(test)]
pub(crate) fn parse(data: &[u8]) -> Result<Vec<Segment>, String> {
    if data.len() < HEADER as usize + TRAILER || &data[..8] != MAGIC {
        return Err("not a segmented pack".into());
    }
    if u32_at(data, 8) != VERSION {
        return Err(format!(
            "segmented pack version {}, this warren reads {VERSION}",
            u32_at(data, 8)
        ));
    }
    let trailer: &[u8; TRAILER] = data[data.len() - TRAILER..]
        .try_into()
        .map_err(|_| "short trailer")?;
    let (at, len) = table_span(trailer)?;
    if at + len != (data.len() - TRAILER) as u64 {
        return Err("the table does not end at the trailer".into());
    }
    decode_table(trailer, &data[at as usize..(at + len) as usize], at)
}

/// Segmented packs' URLs and segments, by their tables.
pub(crate) type Tables = Vec<(Arc<str>, Vec<Segment>)>;

/// The segments of the segmented packs at `urls`, by their tables (a trailer and a table
/// read with two range requests per pack).
pub(crate) fn tables(client: &dyn Transport, urls: &[Arc<str>]) -> Result<Tables, RemoteError> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let bad = |reason: String| RemoteError::BadPack {
            url: url.to_string(),
            reason,
        };
        let len = TRAILER as u64;
        let trailer: [u8; TRAILER] = client
            .get(url, Range::Last(len), len)?
            .try_into()
            .map_err(|_| bad("short trailer".into()))?;
        let (at, len) = table_span(&trailer).map_err(bad)?;
        let table = client.get(url, Range::Span(at, len), len)?;
        out.push((
            url.clone(),
            decode_table(&trailer, &table, at).map_err(bad)?,
        ));
    }
    Ok(out)
}

/// The segments to fetch for the chunks a pull lacks.
pub(crate) struct Plan {
    packs: Tables,
    /// Where each chunk is first found: pack, segment, chunk in the segment.
    place: HashMap<ChunkId, (usize, usize, usize)>,
    /// Per segment to fetch, the chunks wanted from it.
    wanted: BTreeMap<(usize, usize), Vec<usize>>,
}

/// Segments of one pack fetched with one request, and the chunks wanted from each.
pub(crate) struct Batch {
    url: Arc<str>,
    at: u64,
    pub bytes: u64,
    segments: Vec<Segment>,
}

impl Plan {
    pub(crate) fn new(packs: Tables) -> Plan {
        let mut place = HashMap::new();
        for (p, (_, segs)) in packs.iter().enumerate() {
            for (s, seg) in segs.iter().enumerate() {
                for (c, chunk) in seg.chunks.iter().enumerate() {
                    place.entry(chunk.id).or_insert((p, s, c));
                }
            }
        }
        Plan {
            packs,
            place,
            wanted: BTreeMap::new(),
        }
    }

    /// Marks chunk `id` (`len` bytes, by the index) to fetch; false if no segment has it.
    pub(crate) fn want(&mut self, id: &ChunkId, len: u32) -> Result<bool, RemoteError> {
        let Some(&(p, s, c)) = self.place.get(id) else {
            return Ok(false);
        };
        let chunk = &self.packs[p].1[s].chunks[c];
        if chunk.len != len {
            return Err(RemoteError::BadPack {
                url: self.packs[p].0.to_string(),
                reason: format!("chunk {id}: {} bytes, the index says {len}", chunk.len),
            });
        }
        self.wanted.entry((p, s)).or_default().push(c);
        Ok(true)
    }

    /// The requests: runs of adjacent wanted segments of a pack, up to `max` bytes each
    /// (at least one segment).
    pub(crate) fn batches(self, max: u64) -> Vec<Batch> {
        let mut out: Vec<(usize, Batch)> = Vec::new();
        for ((p, s), chunks) in self.wanted {
            let (url, segs) = &self.packs[p];
            let seg = &segs[s];
            let wanted = Segment {
                chunks: chunks.iter().map(|&c| seg.chunks[c]).collect(),
                ..seg.clone()
            };
            match out.last_mut() {
                Some((q, b))
                    if *q == p && b.at + b.bytes == seg.at && b.bytes + seg.stored <= max =>
                {
                    b.bytes += seg.stored;
                    b.segments.push(wanted);
                }
                _ => out.push((
                    p,
                    Batch {
                        url: url.clone(),
                        at: seg.at,
                        bytes: seg.stored,
                        segments: vec![wanted],
                    },
                )),
            }
        }
        out.into_iter().map(|(_, b)| b).collect()
    }
}

/// Downloads `batch`, decompresses each segment once, checks each wanted chunk against
/// its id, and appends it to `pack` as the local store keeps chunks. Returns per chunk its
/// stored size and length.
pub(crate) fn fetch(
    client: &dyn Transport,
    pack: &PackWriter,
    batch: &Batch,
) -> Result<Vec<(u64, u32)>, RemoteError> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<ChunkCompressor> =
            std::cell::RefCell::new(ChunkCompressor::default());
    }
    let data = client.get(&batch.url, Range::Span(batch.at, batch.bytes), batch.bytes)?;
    let mut done = Vec::new();
    let mut rest = &data[..];
    let mut out = Vec::new();
    for seg in &batch.segments {
        let url = batch.url.to_string();
        // `get` checked the body is `batch.bytes` long: the sum of these lengths.
        let (frame, after) = rest.split_at(seg.stored as usize);
        rest = after;
        let raw = decompress(seg, frame).map_err(|reason| RemoteError::BadPack {
            url: url.clone(),
            reason,
        })?;
        for c in &seg.chunks {
            let at = c.offset as usize;
            let mut bytes = raw[at..at + c.len as usize].to_vec();
            if c.x86 {
                bcj::decode(&mut bytes);
            }
            if ChunkId::of(&bytes) != c.id {
                return Err(RemoteError::BadChunk {
                    chunk: c.id,
                    url,
                    reason: "hash mismatch".into(),
                });
            }
            let class = if c.x86 { Class::X86 } else { Class::File };
            COMPRESSOR
                .with_borrow_mut(|z| z.encode(&mut bytes, class, &mut out))
                .map_err(|e| RemoteError::BadChunk {
                    chunk: c.id,
                    url: url.clone(),
                    reason: format!("zstd: {e}"),
                })?;
            pack.append(c.id, &out)?;
            done.push((out.len() as u64, c.len));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
