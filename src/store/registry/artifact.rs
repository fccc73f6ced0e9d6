//! A registry as the chunk store: warren's packs and image indexes as an OCI artifact.
//!
//! [`push`] publishes an OCI image manifest whose `artifactType` is [`ARTIFACT_TYPE`],
//! whose config is a small JSON of [`CONFIG_TYPE`], and whose layers are segmented packs
//! ([`SEGMENTED_PACK_TYPE`]) holding the chunks of the named images and their indexes
//! ([`INDEX_V2_TYPE`], titled with the image's name). Every blob is referenced by the
//! manifest, so a registry's garbage collection keeps them. Each store pack holding
//! wanted chunks goes as a pack of just those (a push never leaks chunks of images it
//! was not asked to publish), in segments of adjacent chunks compressed together at a
//! high level (`repack.rs`, [`crate::store::remote::segments`]): the publisher pays once
//! for what every puller fetches. An index blob leaves its chunk ids to the packs' tables
//! (`index_blob.rs`). The packs are deterministic, so the same pack is sent once,
//! whatever pushes name it.
//!
//! [`pull`] (reached from `warren image pull` when the manifest's config says it is one)
//! fetches the indexes whole, verified by digest, then the pack tables and only the
//! segments holding chunks the store lacks with range requests on the pack blobs, as a
//! pull from a served store does ([`crate::store::remote`]); each chunk is checked
//! against its id, and nothing is listed before every chunk is here (see
//! `artifact_pull.rs`). Artifacts of store packs ([`PACK_TYPE`]) and whole indexes
//! ([`INDEX_TYPE`]), as pushed before, still pull; any other blob type is refused by name.

pub(super) mod index_blob;
mod repack;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::client::{Client, Method, Payload};
use super::manifest::OCI_MANIFEST;
use super::push::Sent;
use super::{Options, RegistryError};
use crate::store::index::ChunkId;
use crate::store::oci::blob::{Algorithm, Digest, Hashing};
use crate::store::{Store, StoreError};

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.warren.store.v1";
/// The config blob's media type: `{"images": [NAME...]}`.
pub const CONFIG_TYPE: &str = "application/vnd.warren.store.config.v1+json";
/// A warren store pack (see [`crate::store::pack`]): what artifacts held before segmented
/// packs; still pulled.
pub const PACK_TYPE: &str = "application/vnd.warren.store.pack.v1";
/// A segmented pack (see [`crate::store::remote::segments`]): what a push sends.
pub const SEGMENTED_PACK_TYPE: &str = "application/vnd.warren.store.pack.v2";
/// A warren image index, whole: what artifacts held before [`INDEX_V2_TYPE`]; still
/// pulled.
pub const INDEX_TYPE: &str = "application/vnd.warren.store.index.v1";
/// A warren image index whose chunk ids are in the segmented packs' tables (see
/// `artifact/index_blob.rs`): what a push sends.
pub const INDEX_V2_TYPE: &str = "application/vnd.warren.store.index.v2";
/// The annotation naming an index's image.
pub(super) const TITLE: &str = "org.opencontainers.image.title";

/// What a store push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StorePushReport {
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    pub images: Vec<String>,
    pub packs: usize,
    /// Blobs sent, and blobs the registry already had.
    pub uploaded_blobs: usize,
    pub skipped_blobs: usize,
    pub uploaded_bytes: u64,
    pub retries: u64,
}

/// One blob of the artifact.
struct Blob {
    media_type: &'static str,
    digest: Digest,
    size: u64,
    payload: Payload,
    title: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |err| RegistryError::Io {
        path: path.into(),
        err,
    }
}

/// Publishes the packs and indexes of `images` (all when empty) of `store` to
/// `reference` as a warren store artifact.
pub fn push(
    store: &Store,
    reference: &str,
    images: &[String],
    opts: &Options,
) -> Result<StorePushReport, RegistryError> {
    let (r, client) = super::push::target(reference, opts)?;
    let names = if images.is_empty() {
        store.names()?
    } else {
        images.to_vec()
    };
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = store.dir().join(super::pull::BLOB_DIR).join(format!(
        "artifact-{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    super::pull::make_private_dir(&dir)?;
    let result = (|| {
        // Shared, until the packs are sent: a gc must not rewrite them meanwhile.
        let _lock = store.lock(false)?;
        let blobs = collect(store, &names, &dir)?;
        send(&client, store.dir(), &r, blobs, &names)
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The blobs of the artifact: packs (in `dir` when made for it), then indexes.
fn collect(store: &Store, names: &[String], dir: &Path) -> Result<Vec<Blob>, RegistryError> {
    let mut indexes = Vec::new();
    // Each wanted chunk's first place in the images' content, in order: a pack's chunks
    // go in that order, files side by side as in a layer's tar (a store pack has them in
    // the order an import's threads wrote them), which segments compress better.
    let mut wanted: HashMap<ChunkId, usize> = HashMap::new();
    for name in names {
        let index = store.index(name)?;
        for c in &index.chunks {
            let next = wanted.len();
            wanted.entry(c.id).or_insert(next);
        }
        indexes.push((name.clone(), index));
    }
    let all = store.chunks()?;
    let mut taken: HashSet<ChunkId> = HashSet::new();
    // Each chunk's place in the packs, in the order they are sent (see `index_blob.rs`).
    let mut places: HashMap<ChunkId, u64> = HashMap::new();
    let mut place = |id: ChunkId| {
        let next = places.len() as u64;
        places.entry(id).or_insert(next);
    };
    let mut blobs = Vec::new();
    for (p, pack) in all.packs().iter().enumerate() {
        let mut entries: Vec<usize> = (0..pack.entries.len())
            .filter(|&e| {
                let id = pack.entries[e].id;
                wanted.contains_key(&id) && taken.insert(id)
            })
            .collect();
        entries.sort_by_key(|&e| wanted.get(&pack.entries[e].id));
        if entries.is_empty() {
            continue;
        }
        entries.iter().for_each(|&e| place(pack.entries[e].id));
        let chunks = entries.iter().map(|&e| {
            let id = pack.entries[e].id;
            all.read_packed(p, e).map(|data| (id, data))
        });
        blobs.push(file_blob(&repack::write_pack(dir, chunks)?)?);
    }
    let mut loose: Vec<ChunkId> = wanted
        .keys()
        .filter(|id| !taken.contains(id))
        .copied()
        .collect();
    if !loose.is_empty() {
        // In content order: the same loose chunks make the same pack, sent once.
        loose.sort_by_key(|id| wanted.get(id));
        loose.iter().for_each(|id| place(*id));
        let chunks = loose.iter().map(|id| {
            all.raw(id)?
                .map(|data| (*id, data))
                .ok_or_else(|| StoreError::MissingChunk {
                    chunk: *id,
                    path: store.dir().to_path_buf(),
                })
        });
        blobs.push(file_blob(&repack::write_pack(dir, chunks)?)?);
    }
    for (name, index) in indexes {
        let data = index_blob::encode(&index, &places, repack::index).map_err(|why| {
            RegistryError::Invalid {
                what: format!("index of {name}"),
                why,
            }
        })?;
        blobs.push(Blob {
            media_type: INDEX_V2_TYPE,
            digest: Digest::sha256(&data),
            size: data.len() as u64,
            payload: Payload::Bytes(data),
            title: Some(name),
        });
    }
    Ok(blobs)
}

fn file_blob(path: &Path) -> Result<Blob, RegistryError> {
    let h = Hashing::new(File::open(path).map_err(io(path))?, Some(Algorithm::Sha256));
    let (digest, size) = h.finish().map_err(io(path))?;
    Ok(Blob {
        media_type: SEGMENTED_PACK_TYPE,
        digest: digest.unwrap_or_else(|| Digest::sha256(b"")),
        size,
        payload: Payload::File(path.to_path_buf()),
        title: None,
    })
}

/// Uploads the blobs the repository lacks, the config, then the manifest.
fn send(
    client: &Client,
    store_dir: &Path,
    r: &super::Reference,
    mut blobs: Vec<Blob>,
    names: &[String],
) -> Result<StorePushReport, RegistryError> {
    let config = serde_json::to_vec(&serde_json::json!({ "images": names })).map_err(json_err)?;
    let config_desc = serde_json::json!({
        "mediaType": CONFIG_TYPE,
        "digest": Digest::sha256(&config).to_string(),
        "size": config.len(),
    });
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            let mut d = serde_json::json!({
                "mediaType": b.media_type,
                "digest": b.digest.to_string(),
                "size": b.size,
            });
            if let Some(t) = &b.title {
                d["annotations"] = serde_json::json!({ TITLE: t });
            }
            d
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config_desc,
        "layers": layers,
    }))
    .map_err(json_err)?;
    let mut report = StorePushReport {
        reference: r.to_string(),
        digest: Digest::sha256(&manifest).to_string(),
        images: names.to_vec(),
        packs: blobs
            .iter()
            .filter(|b| b.media_type == SEGMENTED_PACK_TYPE)
            .count(),
        uploaded_blobs: 0,
        skipped_blobs: 0,
        uploaded_bytes: 0,
        retries: 0,
    };
    blobs.push(Blob {
        media_type: CONFIG_TYPE,
        digest: Digest::sha256(&config),
        size: config.len() as u64,
        payload: Payload::Bytes(config),
        title: None,
    });
    for b in &blobs {
        match super::push::upload_blob(client, store_dir, &b.digest, &b.payload)? {
            Sent::Uploaded => {
                report.uploaded_blobs += 1;
                report.uploaded_bytes += b.size;
            }
            Sent::Present | Sent::Mounted => report.skipped_blobs += 1,
        }
    }
    let url = client.url(&format!("manifests/{}", r.manifest_ref()));
    let resp = client.send_with(
        Method::Put,
        &url,
        &[("Content-Type", OCI_MANIFEST.to_string())],
        &Payload::Bytes(manifest),
    )?;
    super::push::expect(&resp, &url, &[200, 201])?;
    report.retries = client.retries.load(Ordering::Relaxed);
    Ok(report)
}

fn json_err(e: serde_json::Error) -> RegistryError {
    RegistryError::Invalid {
        what: "artifact manifest".into(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_warren_s() {
        for t in [
            ARTIFACT_TYPE,
            CONFIG_TYPE,
            PACK_TYPE,
            SEGMENTED_PACK_TYPE,
            INDEX_TYPE,
            INDEX_V2_TYPE,
        ] {
            assert!(t.starts_with("application/vnd.warren.store."), "{t}");
        }
    }
}
