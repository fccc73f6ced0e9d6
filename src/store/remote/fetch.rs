//! The fetcher both remote pulls share: the pack tables, then only the chunks the local
//! store lacks, in runs of adjacent chunks per range request, several at once, each
//! checked against its id before it goes into a new pack; the pack, then the indexes,
//! published last. The [`Transport`] is a served store's HTTP client or a registry's.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::segments::{self, Plan};
use super::{PullOptions, RemoteError};
use crate::store::index::{ChunkId, Index};
use crate::store::{Store, StoreError, chunker, chunks, format, pack};

/// Part of a file to GET.
#[derive(Clone, Copy)]
pub(crate) enum Range {
    Whole,
    /// Offset, length.
    Span(u64, u64),
    /// The last bytes.
    Last(u64),
}

/// How chunks and pack tables are fetched: a served store's files over plain HTTP, or a
/// registry's blobs through its client (auth, redirects).
pub(crate) trait Transport: Sync {
    /// GETs `range` of `url` (at most `limit` bytes), retrying transient failures within
    /// bounds. A range comes back whole or not at all.
    fn get(&self, url: &str, range: Range, limit: u64) -> Result<Vec<u8>, RemoteError>;
}

/// Where the remote packs hold a chunk: pack URL, offset, length.
pub(crate) type RemotePacks = HashMap<ChunkId, (std::sync::Arc<str>, u64, u32)>;

/// The chunks of every pack the server at `base` lists (none if it lists none: a store
/// `push` wrote has loose chunks only).
fn remote_packs(client: &dyn Transport, base: &str) -> Result<RemotePacks, RemoteError> {
    let list_url = format!("{base}/{}/{}", format::PACKS_DIR, format::PACK_LIST);
    let list = match client.get(&list_url, Range::Whole, 64 << 20) {
        Ok(list) => list,
        Err(RemoteError::NotFound { .. }) => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let bad = |reason: String| RemoteError::BadPack {
        url: list_url.clone(),
        reason,
    };
    let list = String::from_utf8(list).map_err(|_| bad("not UTF-8".into()))?;
    let mut urls = Vec::new();
    for name in list.lines() {
        if !pack::is_pack_name(name) {
            return Err(bad(format!("{name:?} is not a pack's name")));
        }
        urls.push(format!("{base}/{}/{name}", format::PACKS_DIR).into());
    }
    pack_tables(client, &urls)
}

/// The chunks of the packs at `urls`, by their tables (a trailer and a table read with
/// two range requests per pack), each table checked as a local one is.
pub(crate) fn pack_tables(
    client: &dyn Transport,
    urls: &[std::sync::Arc<str>],
) -> Result<RemotePacks, RemoteError> {
    let mut found = HashMap::new();
    for url in urls {
        let bad = |reason: String| RemoteError::BadPack {
            url: url.to_string(),
            reason,
        };
        let len = pack::TRAILER_LEN as u64;
        let trailer: [u8; pack::TRAILER_LEN] = client
            .get(url, Range::Last(len), len)?
            .try_into()
            .map_err(|_| bad("short trailer".into()))?;
        let (table_at, table_len) = pack::table_span(&trailer).map_err(bad)?;
        let table = client.get(url, Range::Span(table_at, table_len), 1 << 30)?;
        let entries = pack::decode_table(&trailer, &table, table_at).map_err(bad)?;
        for e in entries {
            found.entry(e.id).or_insert((url.clone(), e.offset, e.len));
        }
    }
    Ok(found)
}

/// Where a pull's chunks are.
pub(crate) enum Source<'a> {
    /// A served store at this base URL: in the packs it lists, else in loose chunk files.
    Served(&'a str),
    /// In these packs: store packs (a registry artifact's v1 packs, by URL) and segmented
    /// packs (its v2 ones, see [`segments`], their tables already fetched).
    Packs {
        plain: &'a [std::sync::Arc<str>],
        segmented: segments::Tables,
    },
}

/// An image to publish once its chunks are here.
pub(crate) struct Incoming {
    /// Where its index goes.
    pub path: PathBuf,
    /// The index's bytes, as published.
    pub bytes: Vec<u8>,
    pub index: Index,
}

/// What [`fetch_images`] did.
pub(crate) struct Fetched {
    /// Distinct chunks of the images.
    pub chunks: u64,
    /// Of those, fetched (the rest were local already), and their stored bytes.
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
}

/// Fetches the chunks of `images` that `local` lacks from `source` through `client`, each
/// checked against its id, into a new pack; publishes the pack, then the indexes. On an
/// error nothing is published.
pub(crate) fn fetch_images(
    client: &dyn Transport,
    source: Source,
    local: &Store,
    images: &[Incoming],
    opts: &PullOptions,
) -> Result<Fetched, RemoteError> {
    // Hold the store's shared lock: a gc must not remove chunks these indexes will need.
    let _lock = local.lock(false)?;
    // Chunks fetched from a version-2 remote may be filtered: no version-1 reader here.
    local.upgrade()?;
    let mut seen = HashSet::new();
    let wanted: Vec<(ChunkId, u32)> = images
        .iter()
        .flat_map(|i| &i.index.chunks)
        .filter(|c| seen.insert(c.id))
        .map(|c| (c.id, c.len))
        .collect();
    let have = local.chunks()?;
    let missing: Vec<(ChunkId, u32)> = wanted
        .iter()
        .copied()
        .filter(|(id, _)| !have.contains(id))
        .collect();
    if let Some(p) = &opts.progress {
        p.total.store(
            missing.iter().map(|c| u64::from(c.1)).sum(),
            Ordering::Relaxed,
        );
    }
    let (packs, segs, base) = match source {
        _ if missing.is_empty() => (HashMap::new(), Vec::new(), None),
        Source::Served(base) => (remote_packs(client, base)?, Vec::new(), Some(base)),
        Source::Packs { plain, segmented } => (pack_tables(client, plain)?, segmented, None),
    };
    let batches = batches(&missing, &packs, Plan::new(segs), base)?;

    // Fetch, verify, append to a new pack; publish only when every chunk is good.
    let pack = pack::PackWriter::new(&local.packs_dir());
    pack.set_writeback(true);
    // On an error, dropping the pack writer unfinished removes its temporary file.
    let (fetched_bytes, fetched_chunks) = fetch_batches(client, base, &batches, &pack, opts)?;
    let written = pack.written();
    let new_packs = pack.finish()?;
    if let Err(e) = publish(local, &new_packs, written, images) {
        for (tmp, _) in &new_packs {
            let _ = fs::remove_file(tmp);
        }
        return Err(e.into());
    }
    Ok(Fetched {
        chunks: wanted.len() as u64,
        fetched_chunks,
        fetched_bytes,
    })
}

/// Fetches `batches` with `opts.jobs` threads into `pack`, stopping at the first error.
/// Returns the bytes and chunks fetched.
fn fetch_batches(
    client: &dyn Transport,
    base: Option<&str>,
    batches: &[Batch],
    pack: &pack::PackWriter,
    opts: &PullOptions,
) -> Result<(u64, u64), RemoteError> {
    let next = AtomicUsize::new(0);
    let fetched_bytes = AtomicU64::new(0);
    let fetched_chunks = AtomicU64::new(0);
    let failure: Mutex<Option<RemoteError>> = Mutex::new(None);
    let limit = (chunker::MAX_SIZE as u64) * 2 + 4096;
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, 64).min(batches.len().max(1)) {
            s.spawn(|| {
                loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    match fetch_batch(client, base, pack, batch, limit) {
                        Ok(done) => {
                            for (n, len) in done {
                                fetched_bytes.fetch_add(n, Ordering::Relaxed);
                                fetched_chunks.fetch_add(1, Ordering::Relaxed);
                                if let Some(p) = &opts.progress {
                                    p.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
                                    p.new_chunks.fetch_add(1, Ordering::Relaxed);
                                    p.stored_bytes.fetch_add(n, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or(None) {
        return Err(e);
    }
    Ok((fetched_bytes.into_inner(), fetched_chunks.into_inner()))
}

/// Publishes the fetched packs (`written` bytes), then the images' indexes.
fn publish(
    local: &Store,
    new_packs: &[(PathBuf, PathBuf)],
    written: u64,
    images: &[Incoming],
) -> Result<(), StoreError> {
    let durability = chunks::Durability::for_sync(written, crate::sys::dirty_bytes());
    chunks::publish(new_packs, durability)?;
    if !new_packs.is_empty() {
        pack::update_list(&local.packs_dir())?;
    }
    for image in images {
        if let Some(parent) = image.path.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                path: parent.to_path_buf(),
                err: e,
            })?;
        }
        crate::atomic::write(&image.path, &image.bytes).map_err(|e| StoreError::Io {
            path: image.path.clone(),
            err: e,
        })?;
    }
    Ok(())
}

/// What one request fetches.
enum Batch {
    Chunks(ChunkBatch),
    Segments(segments::Batch),
}

/// Chunks fetched with one request: a run of adjacent chunks of one pack, or one loose
/// chunk.
struct ChunkBatch {
    /// The pack's URL and the run's offset in it; `None` for a loose chunk.
    pack: Option<(std::sync::Arc<str>, u64)>,
    /// Each chunk's id, length and stored length (in the pack).
    chunks: Vec<(ChunkId, u32, u32)>,
    /// Stored bytes of the run.
    bytes: u64,
}

/// At most this much of a pack per request: the chunks an image adds lie together in a
/// pack, so a few requests fetch them, and 8 jobs still share the work.
const BATCH_BYTES: u64 = 1 << 20;

/// The requests that fetch `missing`: runs of adjacent chunks of a pack, loose chunks one
/// by one (from a served store at `base`; without one every chunk must be in a pack).
fn batches(
    missing: &[(ChunkId, u32)],
    packs: &RemotePacks,
    mut segs: Plan,
    base: Option<&str>,
) -> Result<Vec<Batch>, RemoteError> {
    let mut out = Vec::new();
    let mut packed = Vec::new();
    for &(id, len) in missing {
        match (packs.get(&id), base) {
            (Some((url, at, stored)), _) => packed.push((url, *at, *stored, id, len)),
            (None, _) if segs.want(&id, len)? => {}
            (None, Some(_)) => out.push(ChunkBatch {
                pack: None,
                chunks: vec![(id, len, 0)],
                bytes: 0,
            }),
            (None, None) => {
                return Err(RemoteError::BadPack {
                    url: format!("chunk {id}"),
                    reason: "in none of the packs, yet an index needs it".into(),
                });
            }
        }
    }
    packed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (url, at, stored, id, len) in packed {
        let follows = |b: &ChunkBatch| {
            b.pack
                .as_ref()
                .is_some_and(|(u, start)| u == url && start + b.bytes == at)
                && b.bytes + u64::from(stored) <= BATCH_BYTES
        };
        match out.last_mut().filter(|b| follows(b)) {
            Some(b) => {
                b.chunks.push((id, len, stored));
                b.bytes += u64::from(stored);
            }
            None => out.push(ChunkBatch {
                pack: Some((url.clone(), at)),
                chunks: vec![(id, len, stored)],
                bytes: u64::from(stored),
            }),
        }
    }
    let mut out: Vec<Batch> = out.into_iter().map(Batch::Chunks).collect();
    out.extend(segs.batches(BATCH_BYTES).into_iter().map(Batch::Segments));
    Ok(out)
}

/// Downloads a batch, checks each chunk, appends each to `pack`; returns per chunk its
/// stored size and length.
fn fetch_batch(
    client: &dyn Transport,
    base: Option<&str>,
    pack: &pack::PackWriter,
    batch: &Batch,
    limit: u64,
) -> Result<Vec<(u64, u32)>, RemoteError> {
    match batch {
        Batch::Chunks(b) => fetch_chunks(client, base, pack, b, limit),
        Batch::Segments(b) => segments::fetch(client, pack, b),
    }
}

/// Downloads a run of a store pack or a loose chunk (see [`fetch_batch`]).
fn fetch_chunks(
    client: &dyn Transport,
    base: Option<&str>,
    pack: &pack::PackWriter,
    batch: &ChunkBatch,
    limit: u64,
) -> Result<Vec<(u64, u32)>, RemoteError> {
    let (url, data) = match &batch.pack {
        Some((pack, at)) => {
            let data = client.get(pack, Range::Span(*at, batch.bytes), batch.bytes)?;
            (format!("{pack} at {at}"), data)
        }
        None => {
            let base = base.unwrap_or_default();
            let url = format!("{base}/{}", format::chunk_rel(&batch.chunks[0].0));
            let data = client.get(&url, Range::Whole, limit)?;
            (url, data)
        }
    };
    let mut done = Vec::new();
    let mut rest = &data[..];
    for &(id, len, stored) in &batch.chunks {
        let bytes = match batch.pack {
            Some(_) => {
                // `get` checked the body is `batch.bytes` long: the sum of these lengths.
                let (bytes, after) = rest.split_at(stored as usize);
                rest = after;
                bytes
            }
            None => &data[..],
        };
        chunks::decode(&id, len, bytes).map_err(|reason| RemoteError::BadChunk {
            chunk: id,
            url: url.clone(),
            reason,
        })?;
        pack.append(id, bytes)?;
        done.push((bytes.len() as u64, len));
    }
    Ok(done)
}
