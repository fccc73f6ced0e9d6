//! Remote stores: a store directory served as static files by any web server.
//!
//! [`pull`] fetches an image's index, then only the chunks the local store lacks, in
//! parallel, each checked against its BLAKE3 id before it is appended to a new pack; the
//! pack, then the index, are published last, so a failed pull (a dead server, a corrupt
//! chunk) leaves the local store as it was. A chunk is fetched from the server's packs
//! when its `packs/list` names one that holds it (runs of adjacent chunks in one range
//! request: the server must honour `Range`), else as a loose file.
//! The fetching is in [`fetch`], shared with pulls of a registry's warren store artifacts
//! ([`crate::store::registry::artifact`]), whose packs are [`segments`]: zstd frames of
//! adjacent chunks, fetched whole and checked chunk by chunk.
//! [`push`] writes the chunks (as loose files) and indexes a store directory lacks, chunks
//! first, so a server never offers an index whose chunks are missing.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod fetch;
pub(crate) mod segments;

pub(crate) use fetch::{Incoming, Range, Source, Transport, fetch_images};

use crate::store::index::{ChunkId, Index};
use crate::store::{ImageName, Progress, Store, StoreError, chunks, format};

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
