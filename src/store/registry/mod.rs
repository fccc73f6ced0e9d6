//! OCI registries (the distribution API): pull an image by reference into the store.
//!
//! [`pull`] resolves a reference ([`reference`]), fetches its manifest (an index or
//! manifest list resolved to one platform, [`manifest`]) and config, then downloads the
//! layers' compressed blobs, several at once, each verified by size and digest, into
//! `STORE/registry-blobs/` (a partial blob is resumed with a `Range` request by the next
//! attempt or the next pull; the verified blobs are removed once imported). The layers are then imported exactly as an OCI layout's are
//! ([`crate::store::oci::import_layers`]: whiteouts, owners, xattrs, the config's
//! diff_ids checked), so nothing is listed before every byte was verified. Authentication
//! and TLS are in [`client`] and [`auth`]. [`push`] sends an image as a one-layer gzip image.
//! [`artifact`] makes a registry warren's chunk store: `warren store push` publishes packs
//! and indexes as an OCI artifact, and [`pull`] of one fetches only the chunks the store
//! lacks, with range requests on the pack blobs.

pub mod artifact;
mod artifact_pull;
pub mod auth;
pub mod client;
pub mod conf;
mod leftovers;
pub mod manifest;
mod pull;
mod push;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use artifact::{StorePushReport, push as store_push};
pub use artifact_pull::ArtifactPull;
pub use auth::Credentials;
pub use leftovers::{STALE_PART, clean_blobs};
pub use manifest::Platform;
pub use pull::{PullOptions, PullReport, pull};
pub use push::{Format, PushReport, push};
pub use reference::Reference;

use crate::store::StoreError;
use crate::store::oci::OciError;
use crate::store::oci::blob::{Algorithm, Digest, Hasher};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference:?} is not an image reference: {why}")]
    BadReference { reference: String, why: String },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{host}: {why}")]
    Auth { host: String, why: String },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{blob}: digest is {actual}, expected {expected}; nothing was imported")]
    DigestMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("{blob}: {actual} bytes, its descriptor says {expected}; nothing was imported")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference} has no image for {wanted} (it has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("layer {blob} is foreign or non-distributable ({media_type}); refusing to fetch it")]
    Foreign { blob: String, media_type: String },
    #[error("TLS: {}: {why}", path.display())]
    Tls { path: PathBuf, why: String },
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// Not an image: a warren store artifact (pulled as one).
    #[error("manifest {digest} is a warren store artifact")]
    StoreArtifact { digest: Digest },
    #[error(transparent)]
    Remote(#[from] crate::store::remote::RemoteError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct Options {
    /// Verify the registry's TLS certificate (off only when asked: `--tls-verify=false`).
    pub tls_verify: bool,
    /// certs.d roots: `DIR/HOST[:PORT]/*.crt` are trusted CAs for that registry.
    pub certs_dirs: Vec<PathBuf>,
    /// A directory whose `*.crt` are trusted CAs for whatever registry is contacted
    /// (podman's `--cert-dir`).
    pub cert_dir: Option<PathBuf>,
    /// Credentials to use instead of the auth files'.
    pub creds: Option<Credentials>,
    /// Where to look credentials up ([`auth::default_files`]).
    pub auth_files: Vec<PathBuf>,
    /// For short names' `unqualified-search-registries`.
    pub registries_conf: PathBuf,
    /// Attempts per request before a transient failure is final.
    pub attempts: u32,
    /// Per phase of a request (connect, response, each body read).
    pub timeout: Duration,
    /// Blobs downloaded at once.
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls_verify: true,
            certs_dirs: vec![
                "/etc/containers/certs.d".into(),
                "/etc/docker/certs.d".into(),
            ],
            cert_dir: None,
            creds: None,
            auth_files: auth::default_files(),
            registries_conf: "/etc/containers/registries.conf".into(),
            attempts: 4,
            timeout: Duration::from_secs(60),
            jobs: 4,
        }
    }
}

/// The digest of `data` with `algorithm`.
pub(crate) fn hash(algorithm: Algorithm, data: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(data);
    h.finish()
}

/// Checks `data`, fetched as `blob`, against the size (when one was given) and the digest
/// it was named by.
pub(crate) fn check(
    blob: String,
    data: &[u8],
    size: Option<u64>,
    digest: &Digest,
) -> Result<(), RegistryError> {
    if let Some(expected) = size
        && data.len() as u64 != expected
    {
        return Err(RegistryError::SizeMismatch {
            blob,
            expected,
            actual: data.len() as u64,
        });
    }
    let actual = hash(digest.algorithm, data);
    if &actual != digest {
        return Err(RegistryError::DigestMismatch {
            blob,
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}
