//! Remote stores: a store directory served as static files by any web server.
//!
//! [`pull`] fetches an image's index, then only the chunks the local store lacks, in
//! parallel, each checked against its BLAKE3 id before it is appended to a new pack; the
//! pack, then the index, are published last, so a failed pull (a dead server, a corrupt
//! chunk) leaves the local store as it was. A chunk is fetched from the server's packs
//! when its `packs/list` names one that holds it (runs of adjacent chunks in one range
//! request: the server must honour `Range`), else as a loose file.
//! [`push`] writes the chunks (as loose files) and indexes a store directory lacks, chunks
//! first, so a server never offers an index whose chunks are missing.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::store::index::{ChunkId, Index};
use crate::store::{ImageName, Progress, Store, StoreError, chunker, chunks, format, pack};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: not found on the server")]
    NotFound { url: String },
    #[error("chunk {chunk} from {url} is corrupt ({reason}); nothing was published")]
    BadChunk {
        chunk: ChunkId,
        url: String,
        reason: String,
    },
    #[error("index {url} is invalid: {reason}")]
    BadIndex { url: String, reason: String },
    #[error("pack {url} is invalid: {reason}")]
    BadPack { url: String, reason: String },
    #[error("{url}: not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Concurrent chunk downloads.
    pub jobs: usize,
    /// Attempts per request before a transient failure (connection, timeout, 5xx) is final.
    pub attempts: u32,
    /// Give up on a connect, or a response or body, that takes longer than this.
    pub timeout: Duration,
    /// Store the image under this name instead of the remote one.
    pub local_name: Option<String>,
    /// Counters to watch: `chunks`/`total` (chunks to fetch), `bytes` (bytes downloaded).
    pub progress: Option<std::sync::Arc<Progress>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            jobs: 8,
            attempts: 4,
            timeout: Duration::from_secs(60),
            local_name: None,
            progress: None,
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    pub name: String,
    /// Distinct chunks of the image.
    pub chunks: u64,
    /// Of those, fetched from the server (the rest were local already).
    pub fetched_chunks: u64,
    /// Bytes transferred: the index and the fetched (compressed) chunks.
    pub fetched_bytes: u64,
    /// Retried requests.
    pub retries: u64,
}

fn base_url(url: &str) -> Result<String, RemoteError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(RemoteError::BadUrl { url: url.into() });
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The index path of `name` relative to a store's root, as in its URL.
fn index_rel(name: &ImageName) -> String {
    let rel = format::index_rel(&name.name, &name.tag);
    format!("{}/{rel}", format::IMAGES_DIR)
}

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

/// One HTTP client with retries.
struct Client {
    agent: ureq::Agent,
    attempts: u32,
    retries: AtomicU64,
}

impl Client {
    fn new(opts: &PullOptions) -> Client {
        let config = ureq::Agent::config_builder()
            // Per phase, not global: with a global timeout ureq resolves every request's
            // host on a new thread.
            .timeout_connect(Some(opts.timeout))
            .timeout_send_request(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .timeout_recv_body(Some(opts.timeout))
            .http_status_as_error(false)
            // Keep a connection per job alive (the default keeps 3 and reconnects the rest).
            .max_idle_connections_per_host(opts.jobs.max(1))
            .max_idle_connections(opts.jobs.max(1) * 2)
            .build();
        Client {
            agent: config.into(),
            attempts: opts.attempts.max(1),
            retries: AtomicU64::new(0),
        }
    }
}

impl Transport for Client {
    fn get(&self, url: &str, range: Range, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let (header, want) = match range {
            Range::Whole => (None, None),
            Range::Span(_, 0) => return Ok(Vec::new()),
            Range::Span(at, len) => (Some(format!("bytes={at}-{}", at + len - 1)), Some(len)),
            Range::Last(len) => (Some(format!("bytes=-{len}")), Some(len)),
        };
        let expected = if header.is_some() { 206 } else { 200 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url);
            if let Some(h) = &header {
                req = req.header("Range", h);
            }
            let err = match req.call() {
                Ok(resp) if resp.status() == 200 && expected == 206 => {
                    return Err(RemoteError::Http {
                        url: url.into(),
                        reason: "the server ignores Range requests".into(),
                    });
                }
                Ok(resp) if resp.status() == expected => {
                    match resp.into_body().with_config().limit(limit).read_to_vec() {
                        Ok(body) if want.is_some_and(|n| body.len() as u64 != n) => {
                            return Err(RemoteError::Http {
                                url: url.into(),
                                reason: format!("{} bytes for a range of {want:?}", body.len()),
                            });
                        }
                        Ok(body) => return Ok(body),
                        Err(ureq::Error::BodyExceedsLimit(n)) => {
                            return Err(RemoteError::Http {
                                url: url.into(),
                                reason: format!("more than {n} bytes"),
                            });
                        }
                        Err(e) => (true, e.to_string()),
                    }
                }
                Ok(resp) if resp.status() == 404 => {
                    return Err(RemoteError::NotFound { url: url.into() });
                }
                Ok(resp) => (
                    resp.status().is_server_error() || resp.status() == 429,
                    format!("HTTP {}", resp.status()),
                ),
                Err(
                    e @ (ureq::Error::BadUri(_)
                    | ureq::Error::HostNotFound
                    | ureq::Error::RequireHttpsOnly(_)),
                ) => (false, e.to_string()),
                Err(e) => (true, e.to_string()),
            };
            let (transient, reason) = err;
            if !transient || attempt >= self.attempts {
                let reason = if attempt > 1 {
                    format!("{reason} (after {attempt} attempts)")
                } else {
                    reason
                };
                return Err(RemoteError::Http {
                    url: url.into(),
                    reason,
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
        }
    }
}

/// Pulls image `name` (`NAME[:TAG]`) from the store served at `url` into `local`.
pub fn pull(
    url: &str,
    name: &str,
    local: &Store,
    opts: &PullOptions,
) -> Result<PullReport, RemoteError> {
    let base = base_url(url)?;
    let remote_name = ImageName::parse(name)?;
    let local_name = opts
        .local_name
        .clone()
        .unwrap_or_else(|| remote_name.to_string());
    let index_path = local.index_path(&local_name)?;
    let client = Client::new(opts);

    let index_url = format!("{base}/{}", index_rel(&remote_name));
    let data = client.get(&index_url, Range::Whole, 1 << 30)?;
    let mut index = Index::decode(&data).map_err(|e| RemoteError::BadIndex {
        url: index_url.clone(),
        reason: e.to_string(),
    })?;
    let index_bytes = data.len() as u64;
    let bytes = if index.name == local_name {
        data
    } else {
        index.name = local_name.clone();
        index.encode()
    };
    let image = Incoming {
        path: index_path,
        bytes,
        index,
    };
    let done = fetch_images(&client, Source::Served(&base), local, &[image], opts)?;
    Ok(PullReport {
        name: local_name,
        chunks: done.chunks,
        fetched_chunks: done.fetched_chunks,
        fetched_bytes: index_bytes + done.fetched_bytes,
        retries: client.retries.into_inner(),
    })
}

/// Where a pull's chunks are.
pub(crate) enum Source<'a> {
    /// A served store at this base URL: in the packs it lists, else in loose chunk files.
    Served(&'a str),
    /// In these packs (URLs), every one.
    Packs(&'a [std::sync::Arc<str>]),
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
    let (packs, base) = match source {
        _ if missing.is_empty() => (HashMap::new(), None),
        Source::Served(base) => (remote_packs(client, base)?, Some(base)),
        Source::Packs(urls) => (pack_tables(client, urls)?, None),
    };
    let batches = batches(&missing, &packs, base)?;

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

/// Chunks fetched with one request: a run of adjacent chunks of one pack, or one loose
/// chunk.
struct Batch {
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
    base: Option<&str>,
) -> Result<Vec<Batch>, RemoteError> {
    let mut out = Vec::new();
    let mut packed = Vec::new();
    for &(id, len) in missing {
        match (packs.get(&id), base) {
            (Some((url, at, stored)), _) => packed.push((url, *at, *stored, id, len)),
            (None, Some(_)) => out.push(Batch {
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
        let follows = |b: &Batch| {
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
            None => out.push(Batch {
                pack: Some((url.clone(), at)),
                chunks: vec![(id, len, stored)],
                bytes: u64::from(stored),
            }),
        }
    }
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

/// Makes fetched or copied chunk files durable and gives them their final names.
fn publish_files(files: &[(PathBuf, PathBuf)]) -> Result<(), StoreError> {
    let written = files
        .iter()
        .filter_map(|(tmp, _)| fs::metadata(tmp).ok())
        .map(|m| m.len())
        .sum();
    chunks::publish(
        files,
        chunks::Durability::for_sync(written, crate::sys::dirty_bytes()),
    )
}

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub images: Vec<String>,
    /// Chunks copied (the destination lacked them).
    pub copied_chunks: u64,
    /// Compressed bytes of those chunks.
    pub copied_bytes: u64,
    /// Chunks the destination had already.
    pub present_chunks: u64,
}

/// Writes into the store directory `dest` (created if missing) the chunks and indexes
/// of `images` (every image when empty) that it lacks: the directory to put on any web
/// server for [`pull`]. Chunks go first and are synced before any index is published.
pub fn push(local: &Store, dest: &Path, images: &[String]) -> Result<PushReport, RemoteError> {
    let target = Store::open_published(dest)?;
    let names = if images.is_empty() {
        local.names()?
    } else {
        images.to_vec()
    };
    let _lock = local.lock(false)?;
    let _dest_lock = target.lock(false)?;
    target.upgrade()?;
    let mut report = PushReport::default();
    let mut indexes = Vec::new();
    let mut done = HashSet::new();
    let mut pending: Vec<(PathBuf, PathBuf)> = Vec::new();
    let (have, there) = (local.chunks()?, target.chunks()?);
    let mut copy = || -> Result<(), RemoteError> {
        for name in &names {
            let src = local.index_path(name)?;
            let data = fs::read(&src).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StoreError::NoSuchImage(name.clone()),
                _ => StoreError::Io {
                    path: src.clone(),
                    err: e,
                },
            })?;
            let index = Index::decode(&data).map_err(|source| StoreError::Index {
                name: name.clone(),
                err: source,
            })?;
            for c in &index.chunks {
                if !done.insert(c.id) {
                    continue;
                }
                if there.contains(&c.id) {
                    report.present_chunks += 1;
                    continue;
                }
                // Loose, whatever the form here: what `pull` fetches by name.
                let data = have.raw(&c.id)?.ok_or_else(|| StoreError::MissingChunk {
                    chunk: c.id,
                    path: src.clone(),
                })?;
                pending.push(chunks::write_temp(&target, &c.id, &data)?);
                report.copied_chunks += 1;
                report.copied_bytes += data.len() as u64;
            }
            indexes.push((target.index_path(name)?, data));
            report.images.push(name.clone());
        }
        Ok(())
    };
    let copied = copy().and_then(|()| Ok(publish_files(&pending)?));
    if let Err(e) = copied {
        for (tmp, _) in &pending {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    for (path, data) in indexes {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                path: parent.to_path_buf(),
                err: e,
            })?;
        }
        crate::atomic::write(&path, &data).map_err(|e| StoreError::Io {
            path: path.clone(),
            err: e,
        })?;
    }
    Ok(report)
}
