//! Pulling a warren store artifact (see [`super::artifact`]): the indexes whole, verified
//! by digest; the pack tables (which give a version-2 index its chunk ids) and the
//! segments or chunks the store lacks with range requests on the pack blobs, through
//! [`crate::store::remote`]'s fetcher with the registry client as its transport (auth,
//! redirects without the registry's credentials, retries).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::artifact::index_blob;
use super::artifact::{CONFIG_TYPE, INDEX_TYPE, INDEX_V2_TYPE, PACK_TYPE, SEGMENTED_PACK_TYPE};
use super::client::{Client, Method, http};
use super::manifest::{Descriptor, MAX_MANIFEST, OCI_MANIFEST, parse_digest};
use super::{Options, RegistryError};
use crate::store::index::Index;
use crate::store::oci::blob::Digest;
use crate::store::remote::{self, Incoming, Range, RemoteError, Source, Transport, segments};
use crate::store::{ImageName, Progress, Store};

/// Blobs an artifact may list.
const MAX_BLOBS: usize = 4096;
/// Largest index blob accepted.
const MAX_INDEX: u64 = 1 << 30;

/// What an artifact pull did (besides what every pull reports).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArtifactPull {
    /// The images imported (their local names).
    pub images: Vec<String>,
    pub packs: usize,
    /// Distinct chunks of the images, and of those the ones fetched.
    pub chunks: u64,
    pub fetched_chunks: u64,
}

#[derive(serde::Deserialize)]
struct RawManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The registry's blobs as a transport for [`remote::fetch_images`].
struct Blobs<'a> {
    client: &'a Client,
}

fn remote_err(url: &str, e: RegistryError) -> RemoteError {
    match e {
        RegistryError::NotFound { .. } => RemoteError::NotFound { url: url.into() },
        e => RemoteError::Http {
            url: url.into(),
            reason: e.to_string(),
        },
    }
}

impl Transport for Blobs<'_> {
    fn get(&self, url: &str, range: Range, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let (header, want) = match range {
            Range::Whole => (None, None),
            Range::Span(_, 0) => return Ok(Vec::new()),
            Range::Span(at, len) => (Some(format!("bytes={at}-{}", at + len - 1)), Some(len)),
            Range::Last(len) => (Some(format!("bytes=-{len}")), Some(len)),
        };
        let headers: Vec<(&str, String)> = header.into_iter().map(|h| ("Range", h)).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .client
                .send(Method::Get, url, &headers)
                .map_err(|e| remote_err(url, e))?;
            let bad = |reason: String| RemoteError::Http {
                url: url.into(),
                reason,
            };
            match (resp.status().as_u16(), want) {
                (206, Some(_)) | (200, None) => {}
                (200, Some(_)) => return Err(bad("the registry ignores Range requests".into())),
                (404, _) => return Err(RemoteError::NotFound { url: url.into() }),
                (s, _) => return Err(bad(format!("HTTP {s}"))),
            }
            let err = match resp.into_body().with_config().limit(limit).read_to_vec() {
                Ok(body) if want.is_some_and(|n| body.len() as u64 != n) => {
                    format!("{} bytes for a range of {want:?}", body.len())
                }
                Ok(body) => {
                    self.client
                        .fetched
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    return Ok(body);
                }
                Err(ureq::Error::BodyExceedsLimit(n)) => {
                    return Err(bad(format!("more than {n} bytes")));
                }
                Err(e) => e.to_string(),
            };
            if attempt >= self.client.attempts() {
                return Err(bad(format!("{err} (after {attempt} attempts)")));
            }
            self.client.backoff(attempt, None);
        }
    }
}

/// The manifest `digest` (a warren store artifact), verified.
fn fetch_manifest(client: &Client, digest: &Digest) -> Result<RawManifest, RegistryError> {
    let url = client.url(&format!("manifests/{digest}"));
    let (data, _) =
        client.get_small(&url, &[("Accept", OCI_MANIFEST.to_string())], MAX_MANIFEST)?;
    super::check(format!("manifest {digest}"), &data, None, digest)?;
    let m: RawManifest = serde_json::from_slice(&data).map_err(|e| RegistryError::Invalid {
        what: format!("manifest {digest}"),
        why: e.to_string(),
    })?;
    if m.config.media_type != CONFIG_TYPE || m.layers.len() > MAX_BLOBS {
        return Err(RegistryError::Invalid {
            what: format!("manifest {digest}"),
            why: format!(
                "not a warren store artifact of at most {MAX_BLOBS} blobs (config {:?}, {} blobs)",
                m.config.media_type,
                m.layers.len()
            ),
        });
    }
    Ok(m)
}

/// An index blob, whole, checked against its descriptor.
fn fetch_index(client: &Client, d: &Descriptor) -> Result<Vec<u8>, RegistryError> {
    let digest = parse_digest(&d.digest, "index")?;
    let url = client.url(&format!("blobs/{digest}"));
    let blob = format!("index {digest}");
    if d.size > MAX_INDEX {
        return Err(RegistryError::Invalid {
            what: blob,
            why: format!("{} bytes, more than the {MAX_INDEX} allowed", d.size),
        });
    }
    let data = Blobs { client }
        .get(&url, Range::Whole, d.size + 1)
        .map_err(|e| http(&url, e.to_string()))?;
    super::check(blob, &data, Some(d.size), &digest)?;
    Ok(data)
}

/// Pulls the warren store artifact `digest` from `client`'s repository into `store`:
/// every image it holds, under its own name (or `name`, when it holds one image).
pub(super) fn pull(
    store: &Store,
    client: &Client,
    digest: &Digest,
    name: Option<&str>,
    opts: &Options,
    progress: Option<Arc<Progress>>,
) -> Result<ArtifactPull, RegistryError> {
    let m = fetch_manifest(client, digest)?;
    let (mut packs, mut segmented): (Vec<Arc<str>>, Vec<Arc<str>>) = (Vec::new(), Vec::new());
    let mut indexes = Vec::new();
    for d in &m.layers {
        match d.media_type.as_str() {
            t @ (PACK_TYPE | SEGMENTED_PACK_TYPE) => {
                let digest = parse_digest(&d.digest, "pack")?;
                let url = client.url(&format!("blobs/{digest}")).into();
                match t {
                    PACK_TYPE => packs.push(url),
                    _ => segmented.push(url),
                }
            }
            t @ (INDEX_TYPE | INDEX_V2_TYPE) => {
                indexes.push((t == INDEX_V2_TYPE, &d.digest, fetch_index(client, d)?));
            }
            other => {
                return Err(RegistryError::Invalid {
                    what: format!("blob {}", d.digest),
                    why: format!(
                        "unknown media type {other:?} in a warren store artifact (this warren \
                         reads {PACK_TYPE}, {SEGMENTED_PACK_TYPE}, {INDEX_TYPE} and \
                         {INDEX_V2_TYPE})"
                    ),
                });
            }
        }
    }
    // The segmented packs' tables: the ids of a version-2 index's chunks.
    let tables = segments::tables(&Blobs { client }, &segmented)?;
    let mut images = Vec::new();
    for (v2, digest, data) in indexes {
        let index = match v2 {
            true => index_blob::decode(&data, &tables),
            false => Index::decode(&data).map_err(|e| e.to_string()),
        };
        let index = index.map_err(|why| RegistryError::Invalid {
            what: format!("index {digest}"),
            why,
        })?;
        images.push((if v2 { index.encode() } else { data }, index));
    }
    if name.is_some() && images.len() != 1 {
        return Err(RegistryError::Invalid {
            what: format!("manifest {digest}"),
            why: format!(
                "a local name was given, but the artifact holds {} images",
                images.len()
            ),
        });
    }
    let mut incoming = Vec::new();
    for (bytes, mut index) in images {
        let bytes = match name {
            Some(n) if n != index.name => {
                index.name = n.to_string();
                index.encode()
            }
            _ => bytes,
        };
        // A hostile registry's name could point anywhere: it must be a valid image name.
        ImageName::parse(&index.name)?;
        incoming.push(Incoming {
            path: store.index_path(&index.name)?,
            bytes,
            index,
        });
    }
    let ropts = remote::PullOptions {
        jobs: opts.jobs.max(1),
        attempts: opts.attempts,
        timeout: opts.timeout,
        local_name: None,
        progress,
    };
    let done = remote::fetch_images(
        &Blobs { client },
        Source::Packs {
            plain: &packs,
            segmented: tables,
        },
        store,
        &incoming,
        &ropts,
    )?;
    Ok(ArtifactPull {
        images: incoming.into_iter().map(|i| i.index.name).collect(),
        packs: packs.len() + segmented.len(),
        chunks: done.chunks,
        fetched_chunks: done.fetched_chunks,
    })
}
