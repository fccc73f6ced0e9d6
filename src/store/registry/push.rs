//! `push`: an image of the store to a registry as a standard one-layer image (gzip tar
//! layer, OCI or Docker v2s2 manifest). Blobs the repository has are not sent again
//! (HEAD), and blobs another repository of the registry holds (one warren pushed them to,
//! see [`sources`]) are mounted from there instead of uploaded.
//!
//! One layer: the store keeps an image as one merged tree (chunks and an index), not as
//! its layers, so a pulled image's layer blobs cannot be reproduced byte for byte.

mod sources;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::client::{Client, Method, Payload, http};
use super::manifest::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};
use super::reference::{self, Reference};
use super::{Options, RegistryError};
use crate::store::Store;
use crate::store::oci::blob::{Algorithm, Digest, Hasher};
use crate::store::oci::export::HashingWriter;

const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The manifest flavour to push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Oci,
    Docker,
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    pub name: String,
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    /// Blobs sent, blobs the repository already had, and blobs mounted from another
    /// repository of the registry (not sent).
    pub uploaded_blobs: usize,
    pub skipped_blobs: usize,
    pub mounted_blobs: usize,
    pub uploaded_bytes: u64,
    pub retries: u64,
}

/// The image's tree as a gzip tar at `path`: (blob digest, blob size, diff id).
fn write_layer(
    store: &Store,
    name: &str,
    path: &Path,
) -> Result<(Digest, u64, Digest), RegistryError> {
    let io_err = |err| RegistryError::Io {
        path: path.into(),
        err,
    };
    let index = store.index(name)?;
    let gz = HashingWriter {
        inner: BufWriter::new(File::create(path).map_err(io_err)?),
        hasher: Hasher::new(Algorithm::Sha256),
        bytes: 0,
    };
    let mut tar = HashingWriter {
        inner: flate2::write::GzEncoder::new(gz, flate2::Compression::default()),
        hasher: Hasher::new(Algorithm::Sha256),
        bytes: 0,
    };
    crate::store::oci::export::write_tar(store, &index, &mut tar)?;
    let diff_id = tar.hasher.finish();
    let mut gz = tar.inner.finish().map_err(io_err)?;
    gz.flush().map_err(io_err)?;
    Ok((gz.hasher.finish(), gz.bytes, diff_id))
}

/// The first registry `reference` resolves to, and a client allowed to push there.
pub(super) fn target(
    reference: &str,
    opts: &Options,
) -> Result<(reference::Reference, Client), RegistryError> {
    let r = reference::resolve(reference, &opts.registries_conf)?
        .into_iter()
        .next()
        .ok_or_else(|| RegistryError::BadReference {
            reference: reference.into(),
            why: "no registry to push to".into(),
        })?;
    let client = Client::new(opts, r.api_host(), &r.repository, "pull,push")?;
    Ok((r, client))
}

/// Pushes image `name` of `store` to `reference` (which needs a tag or a registry
/// given in full; a short name goes to the first search registry).
pub fn push(
    store: &Store,
    name: &str,
    reference: &str,
    format: Format,
    opts: &Options,
) -> Result<PushReport, RegistryError> {
    let (r, client) = target(reference, opts)?;
    let dir = store.dir().join(super::pull::BLOB_DIR);
    super::pull::make_private_dir(&dir)?;
    let layer_path = dir.join(format!("push-{}.tar.gz", std::process::id()));
    let result = push_layer(store, name, &r, format, &client, &layer_path);
    let _ = fs::remove_file(&layer_path);
    result
}

fn push_layer(
    store: &Store,
    name: &str,
    r: &Reference,
    format: Format,
    client: &Client,
    layer_path: &Path,
) -> Result<PushReport, RegistryError> {
    let (layer, layer_size, diff_id) = write_layer(store, name, layer_path)?;
    let config = crate::store::oci::export::layout_config(&store.index(name)?, &diff_id)?;
    let config_digest = Digest::sha256(&config);
    let (manifest_type, config_type, layer_type) = match format {
        Format::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
        Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": layer.to_string(), "size": layer_size}],
    }))
    .map_err(|e| RegistryError::Invalid {
        what: "manifest".into(),
        why: e.to_string(),
    })?;
    let mut report = PushReport {
        name: name.into(),
        reference: r.to_string(),
        digest: Digest::sha256(&manifest).to_string(),
        uploaded_blobs: 0,
        skipped_blobs: 0,
        mounted_blobs: 0,
        uploaded_bytes: 0,
        retries: 0,
    };
    let blobs = [
        (layer, layer_size, Payload::File(layer_path.to_path_buf())),
        (config_digest, config.len() as u64, Payload::Bytes(config)),
    ];
    let store_dir = store.dir();
    for (digest, size, payload) in &blobs {
        match upload_blob(client, store_dir, digest, payload)? {
            Sent::Uploaded => {
                report.uploaded_blobs += 1;
                report.uploaded_bytes += size;
            }
            Sent::Present => report.skipped_blobs += 1,
            Sent::Mounted => report.mounted_blobs += 1,
        }
    }
    let tag = r.manifest_ref();
    let url = client.url(&format!("manifests/{tag}"));
    let resp = client.send_with(
        Method::Put,
        &url,
        &[("Content-Type", manifest_type.to_string())],
        &Payload::Bytes(manifest),
    )?;
    expect(&resp, &url, &[200, 201])?;
    let digests: Vec<String> = blobs.iter().map(|(d, _, _)| d.to_string()).collect();
    if let Err(e) = sources::record(store_dir, client.host(), client.repository(), &digests) {
        tracing::warn!("{e}: the next push to another repository uploads these blobs again");
    }
    report.retries = client.retries.load(Ordering::Relaxed);
    Ok(report)
}

pub(super) fn expect(
    resp: &ureq::http::Response<ureq::Body>,
    url: &str,
    codes: &[u16],
) -> Result<(), RegistryError> {
    let s = resp.status().as_u16();
    if codes.contains(&s) {
        return Ok(());
    }
    Err(http(url, format!("HTTP {s}")))
}

/// What became of a blob.
pub(super) enum Sent {
    Uploaded,
    /// The repository had it.
    Present,
    /// Mounted from another repository of the registry.
    Mounted,
}

/// Sends one blob unless the repository has it (HEAD) or can mount it from a repository
/// warren knows holds it.
pub(super) fn upload_blob(
    client: &Client,
    store_dir: &Path,
    digest: &Digest,
    payload: &Payload,
) -> Result<Sent, RegistryError> {
    let blob_url = client.url(&format!("blobs/{digest}"));
    let head = client.send(Method::Head, &blob_url, &[])?;
    if head.status() == 200 {
        return Ok(Sent::Present);
    }
    let mut upload = None;
    let holders = sources::holders(
        store_dir,
        client.host(),
        &digest.to_string(),
        client.repository(),
    );
    for from in holders.iter().take(MAX_MOUNT_TRIES) {
        let start = client.url(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let resp = match client.send_with(Method::Post, &start, &[], &Payload::Empty) {
            Ok(r) => r,
            // No pull access to `from` (any more): upload instead.
            Err(e @ RegistryError::Auth { .. }) => {
                tracing::info!("mounting {digest} from {from}: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        match resp.status().as_u16() {
            201 => return Ok(Sent::Mounted),
            // The registry did not mount (it may not have the blob there any more, or not
            // support mounts) and opened an ordinary upload instead.
            202 => {
                upload = Some(upload_location(&resp, &start)?);
                break;
            }
            s => tracing::info!("mounting {digest} from {from}: HTTP {s}"),
        }
    }
    let upload = match upload {
        Some(u) => u,
        None => {
            let start = client.url("blobs/uploads/");
            let resp = client.send_with(Method::Post, &start, &[], &Payload::Empty)?;
            expect(&resp, &start, &[202])?;
            upload_location(&resp, &start)?
        }
    };
    put_blob(client, &upload, digest, payload)?;
    Ok(Sent::Uploaded)
}

/// Repositories a blob's mount is tried from before uploading it.
const MAX_MOUNT_TRIES: usize = 3;

/// The upload session's URL, from a 202's `Location`.
fn upload_location(
    resp: &ureq::http::Response<ureq::Body>,
    start: &str,
) -> Result<String, RegistryError> {
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| http(start, "no Location for the upload".into()))?;
    Ok(super::client::resolve_location(start, location))
}

/// Sends the whole blob to the upload session at `upload` (a monolithic PUT).
fn put_blob(
    client: &Client,
    upload: &str,
    digest: &Digest,
    payload: &Payload,
) -> Result<(), RegistryError> {
    let sep = if upload.contains('?') { '&' } else { '?' };
    let put = format!("{upload}{sep}digest={digest}");
    let len = match payload {
        Payload::Empty => 0,
        Payload::Bytes(b) => b.len() as u64,
        Payload::File(p) => fs::metadata(p)
            .map_err(|err| RegistryError::Io {
                path: PathBuf::from(p),
                err,
            })?
            .len(),
    };
    let headers = [
        ("Content-Type", "application/octet-stream".to_string()),
        ("Content-Length", len.to_string()),
    ];
    let resp = client.send_with(Method::Put, &put, &headers, payload)?;
    expect(&resp, &put, &[201, 204])
}
