//! `pull`: manifest, config and layer blobs from a registry, verified, then imported as
//! an OCI layout's layers are.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::client::{Client, Method, http};
use super::manifest::{self, Descriptor, Manifest, Platform, parse_digest};
use super::reference::{self, Reference};
use super::{Options, RegistryError};
use crate::store::oci::blob::{Blob, Digest, Hashing};
use crate::store::oci::{self, ImportOptions};
use crate::store::{ImageInfo, Progress, Store};

/// Where downloaded blobs wait for their import, under the store.
pub(super) const BLOB_DIR: &str = "registry-blobs";

/// What to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The platform to pick from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// The local name (default: `HOST/REPO:TAG`).
    pub name: Option<String>,
    /// Download counters: `bytes` so far of `total`.
    pub progress: Option<Arc<Progress>>,
    /// How the layers are imported.
    pub import: ImportOptions,
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    pub name: String,
    /// The reference pulled, fully qualified.
    pub reference: String,
    /// Where it came from: `HOST/REPO` (a mirror's, when one served it).
    pub from: String,
    /// The image manifest's digest.
    pub digest: String,
    pub layers: usize,
    /// Blob bytes downloaded by this pull.
    pub fetched_bytes: u64,
    /// Retried requests.
    pub retries: u64,
    pub image: ImageInfo,
    /// For a warren store artifact: the images it held, and the chunks fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<super::ArtifactPull>,
}

/// Pulls `reference` into `store`. A short name is tried at each search registry in turn
/// (see [`reference::resolve`]).
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &Options,
    pull: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let candidates = reference::resolve(reference, &opts.registries_conf)?;
    let last = candidates.len() - 1;
    for (i, r) in candidates.iter().enumerate() {
        match pull_one(store, r, opts, pull) {
            Err(
                e @ (RegistryError::NotFound { .. }
                | RegistryError::Auth { .. }
                | RegistryError::Http { .. }
                | RegistryError::Tls { .. }),
            ) if i < last => {
                tracing::warn!("{r}: {e}; trying the next search registry");
            }
            other => return other,
        }
    }
    Err(RegistryError::BadReference {
        reference: reference.into(),
        why: "no registry to try".into(),
    })
}

fn pull_one(
    store: &Store,
    r: &Reference,
    opts: &Options,
    pull: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let name = pull.name.clone().unwrap_or_else(|| r.local_name());
    crate::store::ImageName::parse(&name)?;
    let endpoints = super::conf::endpoints(r, &opts.registries_conf)?;
    let last = endpoints.len() - 1;
    let mut fetched = None;
    for (i, e) in endpoints.iter().enumerate() {
        match fetch(store, e, r, opts, pull) {
            Ok(f) => {
                fetched = Some(f);
                break;
            }
            Err(
                err @ (RegistryError::NotFound { .. }
                | RegistryError::Http { .. }
                | RegistryError::Auth { .. }
                | RegistryError::Tls { .. }),
            ) if i < last => {
                tracing::warn!("mirror {}: {err}; trying the next", e.host);
            }
            Err(err) => return Err(err),
        }
    }
    let (m, config, paths, client) = match fetched {
        Some(Got::Image(m, config, paths, client)) => (m, config, paths, client),
        Some(Got::Artifact(client, digest, artifact)) => {
            return artifact_report(store, r, &client, &digest, artifact);
        }
        None => {
            return Err(RegistryError::NotFound {
                what: r.to_string(),
            });
        }
    };
    let diff_ids = diff_ids(&config, &m)?;
    let blobs: Vec<Blob> = m
        .layers
        .iter()
        .zip(diff_ids)
        .zip(&paths)
        .map(|((l, diff_id), path)| {
            Ok(Blob {
                name: l.digest.clone(),
                path: path.clone(),
                root: None,
                offset: 0,
                len: None,
                digest: Some(parse_digest(&l.digest, "layer")?),
                size: Some(l.size),
                diff_id: Some(diff_id),
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    let image = oci::import_layers(store, &blobs, &name, config, &pull.import);
    for p in &paths {
        let _ = fs::remove_file(p);
    }
    let image = image?;
    Ok(PullReport {
        name: image.name.clone(),
        reference: r.to_string(),
        from: format!("{}/{}", client.host(), client.repository()),
        digest: m.digest.to_string(),
        layers: m.layers.len(),
        fetched_bytes: client.fetched.load(Ordering::Relaxed),
        retries: client.retries.load(Ordering::Relaxed),
        image,
        artifact: None,
    })
}

fn artifact_report(
    store: &Store,
    r: &Reference,
    client: &Client,
    digest: &Digest,
    artifact: super::ArtifactPull,
) -> Result<PullReport, RegistryError> {
    let first = artifact
        .images
        .first()
        .ok_or_else(|| RegistryError::Invalid {
            what: format!("manifest {digest}"),
            why: "a warren store artifact with no image".into(),
        })?;
    Ok(PullReport {
        name: first.clone(),
        reference: r.to_string(),
        from: format!("{}/{}", client.host(), client.repository()),
        digest: digest.to_string(),
        layers: artifact.packs + artifact.images.len(),
        fetched_bytes: client.fetched.load(Ordering::Relaxed),
        retries: client.retries.load(Ordering::Relaxed),
        image: store.inspect(first)?,
        artifact: Some(artifact),
    })
}

/// What `fetch` got from an endpoint: an image's manifest, config and layer blobs (as
/// files), or a warren store artifact, pulled.
enum Got {
    Image(Manifest, Vec<u8>, Vec<PathBuf>, Client),
    Artifact(Client, Digest, super::ArtifactPull),
}

fn fetch(
    store: &Store,
    e: &super::conf::Endpoint,
    r: &Reference,
    opts: &Options,
    pull: &PullOptions,
) -> Result<Got, RegistryError> {
    let mut opts = opts.clone();
    opts.tls_verify &= !e.insecure;
    let client = Client::new(&opts, &e.host, &e.repository, "pull")?;
    let platform = pull.platform.clone().unwrap_or_else(Platform::host);
    let dir = store.dir().join(BLOB_DIR);
    make_private_dir(&dir)?;
    if let Err(e) = super::leftovers::clean_dir(&dir, super::leftovers::STALE_PART) {
        tracing::warn!("cleaning {}: {e}", dir.display());
    }
    let m = match manifest::resolve(&client, &r.manifest_ref(), &platform) {
        Err(RegistryError::StoreArtifact { digest }) => {
            let name = pull.name.as_deref();
            let progress = pull.progress.clone();
            let a = super::artifact_pull::pull(store, &client, &digest, name, &opts, progress)?;
            return Ok(Got::Artifact(client, digest, a));
        }
        m => m?,
    };
    let total: u64 = m.layers.iter().map(|l| l.size).sum();
    if total > pull.import.limits.max_total_size {
        return Err(RegistryError::Invalid {
            what: format!("manifest {}", m.digest),
            why: format!(
                "its layers are {total} bytes, more than the {} allowed",
                pull.import.limits.max_total_size
            ),
        });
    }
    let config = fetch_config(&client, &m.config)?;
    diff_ids(&config, &m)?;
    let progress = pull.progress.clone().unwrap_or_default();
    progress.total.store(total, Ordering::Relaxed);
    let paths = download_all(&client, &m.layers, &dir, opts.jobs, &progress)?;
    Ok(Got::Image(m, config, paths, client))
}

pub(super) fn make_private_dir(dir: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| RegistryError::Io {
            path: dir.into(),
            err,
        })
}

/// The config blob, in memory (it is small), verified.
fn fetch_config(client: &Client, d: &Descriptor) -> Result<Vec<u8>, RegistryError> {
    let digest = parse_digest(&d.digest, "config")?;
    let url = client.url(&format!("blobs/{digest}"));
    let (data, _) = client.get_small(&url, &[], manifest::MAX_MANIFEST)?;
    super::check(format!("config {digest}"), &data, Some(d.size), &digest)?;
    Ok(data)
}

fn diff_ids(config: &[u8], m: &Manifest) -> Result<Vec<Digest>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let what = format!("config {}", m.config.digest);
    let c: Config = serde_json::from_slice(config).map_err(|e| RegistryError::Invalid {
        what: what.clone(),
        why: e.to_string(),
    })?;
    if c.rootfs.diff_ids.len() != m.layers.len() {
        return Err(RegistryError::Invalid {
            what,
            why: format!(
                "{} diff_ids for the manifest's {} layers",
                c.rootfs.diff_ids.len(),
                m.layers.len()
            ),
        });
    }
    c.rootfs
        .diff_ids
        .iter()
        .map(|d| parse_digest(d, &what))
        .collect()
}

/// Downloads every layer blob, `jobs` at once; the first failure stops the rest.
fn download_all(
    client: &Client,
    layers: &[Descriptor],
    dir: &Path,
    jobs: usize,
    progress: &Progress,
) -> Result<Vec<PathBuf>, RegistryError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<std::sync::Mutex<Option<Result<PathBuf, RegistryError>>>> =
        layers.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, layers.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = layers.get(i) else { break };
                    let r = download(client, layer, dir, progress);
                    failed.fetch_or(r.is_err(), Ordering::Relaxed);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let mut out = Vec::new();
    let (mut first_err, mut missing) = (None, None);
    for (i, slot) in results.into_iter().enumerate() {
        match slot.into_inner().ok().flatten() {
            Some(Ok(path)) => out.push(path),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {
                missing.get_or_insert(RegistryError::Invalid {
                    what: format!("layer {}", layers[i].digest),
                    why: "not downloaded (another layer failed)".into(),
                });
            }
        }
    }
    match first_err.or(missing) {
        None => Ok(out),
        Some(e) => {
            // The finished blobs go too: only a partial one is worth resuming.
            for p in &out {
                let _ = fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// The digest of the file at `path`.
fn hash_file(path: &Path, digest: &Digest) -> std::io::Result<(Digest, u64)> {
    let h = Hashing::new(File::open(path)?, Some(digest.algorithm));
    let (d, n) = h.finish()?;
    Ok((d.unwrap_or_else(|| digest.clone()), n))
}

/// Downloads one blob to `dir/HEX.PID.N` (resuming `dir/HEX.part`), verified. A digest or size
/// mismatch, or a broken connection, is retried from scratch or from where it broke,
/// within the client's attempts.
fn download(
    client: &Client,
    layer: &Descriptor,
    dir: &Path,
    progress: &Progress,
) -> Result<PathBuf, RegistryError> {
    let digest = parse_digest(&layer.digest, "layer")?;
    // This pull's own name for the finished blob: another pull of the same layer (which
    // waits for the lock below, then fetches its own copy) never removes it under us.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let done = dir.join(format!("{}.{}.{n}", digest.hex, std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |err| RegistryError::Io { path: p, err }
    };
    // One download of a blob at a time: the `.part` file is shared, to resume it.
    let lock_path = dir.join(format!("{}.lock", digest.hex));
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(&lock_path)(e.into()))?;
    let part = dir.join(format!("{}.part", digest.hex));
    let url = client.url(&format!("blobs/{digest}"));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match fetch_into(client, &url, &part, layer.size, progress) {
            Ok(()) => {
                let (actual, n) = hash_file(&part, &digest).map_err(io(&part))?;
                if actual == digest && n == layer.size {
                    fs::rename(&part, &done).map_err(io(&done))?;
                    return Ok(done);
                }
                let _ = fs::remove_file(&part);
                RegistryError::DigestMismatch {
                    blob: format!("layer {digest}"),
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                }
            }
            Err(e @ (RegistryError::Http { .. } | RegistryError::SizeMismatch { .. })) => e,
            Err(e) => return Err(e),
        };
        if attempt >= client.attempts() {
            return Err(match err {
                RegistryError::Http { url, reason } => RegistryError::Http {
                    url,
                    reason: format!(
                        "{reason} (after {attempt} attempts; a partial download is kept for the next pull)"
                    ),
                },
                other => other,
            });
        }
        tracing::warn!("{err}; retrying");
        client.backoff(attempt, None);
    }
}

/// GETs the rest of the blob at `url` into `part` (a `Range` from what `part` holds).
fn fetch_into(
    client: &Client,
    url: &str,
    part: &Path,
    size: u64,
    progress: &Progress,
) -> Result<(), RegistryError> {
    let io = |err| RegistryError::Io {
        path: part.into(),
        err,
    };
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let have = if have >= size { 0 } else { have };
    let headers = match have {
        0 => vec![],
        n => vec![("Range", format!("bytes={n}-"))],
    };
    let resp = client.send(Method::Get, url, &headers)?;
    let append = match resp.status().as_u16() {
        200 => false,
        206 if have > 0 => true,
        404 => return Err(RegistryError::NotFound { what: url.into() }),
        s => return Err(http(url, format!("HTTP {s}"))),
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(io)?;
    let start = if append { have } else { 0 };
    // One byte more than the blob may have, to tell a too-long blob.
    let left = size - start + 1;
    let mut body = resp.into_body().into_with_config().limit(left + 1).reader();
    let mut buf = vec![0u8; 256 << 10];
    let mut written = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // Keep what arrived: the next attempt asks for the rest.
                file.flush().map_err(io)?;
                return Err(http(url, format!("after {written} bytes: {e}")));
            }
        };
        file.write_all(&buf[..n]).map_err(io)?;
        written += n as u64;
        Progress::add(&progress.bytes, n as u64);
        client.fetched.fetch_add(n as u64, Ordering::Relaxed);
        if written > size {
            drop(file);
            let _ = fs::remove_file(part);
            return Err(RegistryError::SizeMismatch {
                blob: format!("layer at {url}"),
                expected: size,
                actual: written,
            });
        }
    }
    if written < size {
        return Err(http(
            url,
            format!("the connection ended after {written} of {size} bytes"),
        ));
    }
    Ok(())
}
