//! The host's one extracted copy of each image: `STATE/images/KEY/rootfs`, read-only
//! lower layer of every container's view. KEY is the hash of the image's index, so a
//! re-tagged or re-imported image gets a fresh tree and an unchanged one is reused.
//! Concurrent creates of the same image extract it once (a lock file per KEY).

use crate::store::{ExtractOptions, Store, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {name:?} is not in the store {store}: import it (`warren image import DIR --name {name}`, `warren image import oci:DIR --name {name}`) or pull it (`warren image pull URL {name}`)"
    )]
    Missing { name: String, store: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Busybox(#[from] crate::store::busybox::BusyboxError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The extracted images under one directory.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
}

impl ImageCache {
    pub fn new(dir: PathBuf) -> Self {
        ImageCache { dir }
    }

    /// The extracted rootfs of image `name`, extracting it first if this host has not.
    pub fn rootfs(&self, store: &Store, name: &str) -> Result<PathBuf, ImageError> {
        let index_path = store.index_path(name)?;
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::Missing {
                    name: name.to_string(),
                    store: store.dir().to_path_buf(),
                });
            }
            Err(source) => {
                return Err(ImageError::Io {
                    what: "read",
                    path: index_path,
                    source,
                });
            }
        };
        let key = blake3::hash(&index).to_hex();
        let dir = self.dir.join(&key[..32]);
        let rootfs = dir.join("rootfs");
        if rootfs.is_dir() {
            return Ok(rootfs);
        }
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { what, path, source }
        };
        // Private (see crate::dirs): the tree keeps the image's real ids, setuid binaries
        // and device nodes, none of which another host user may reach.
        crate::dirs::make_private(&self.dir).map_err(io("create", &self.dir))?;
        crate::dirs::create_private(&dir).map_err(io("create", &dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| ImageError::Io {
                what: "lock",
                path: lock_path.clone(),
                source: e.into(),
            },
        )?;
        // Another create may have extracted it while we waited for the lock.
        if !rootfs.is_dir() {
            // The store extracts into a temporary sibling and renames: a crash leaves
            // no `rootfs` that looks complete.
            store.extract(name, &rootfs, &ExtractOptions::default())?;
        }
        Ok(rootfs)
    }

    /// Imports the embedded default image unless the store has it. Under a lock, so
    /// concurrent creates import it once (each import would write a new index, and so a
    /// new extracted tree).
    pub fn ensure_default(&self, store: &Store) -> Result<(), ImageError> {
        if store.index(DEFAULT_IMAGE).is_ok() {
            return Ok(());
        }
        let _lock = self.lock(&self.dir.join("default.lock"))?;
        if store.index(DEFAULT_IMAGE).is_err() {
            import_default(store)?;
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> Result<nix::fcntl::Flock<File>, ImageError> {
        let io = |what, source| ImageError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        crate::dirs::make_private(&self.dir).map_err(|e| io("create", e))?;
        let file = File::create(path).map_err(|e| io("create", e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("lock", e.into()))
    }

    /// Every extracted tree's directory (for `warren image prune` and disk accounting).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The image `warren run` falls back on when the store lacks it: the embedded busybox
/// rootfs, built from the host's static busybox.
pub const DEFAULT_IMAGE: &str = "busybox";

/// True for the names that mean the embedded default image.
pub(crate) fn is_default(name: &str) -> bool {
    name == DEFAULT_IMAGE || name == "busybox:latest"
}

/// Imports the embedded default image into `store`, streamed from the host's static
/// busybox with nothing written outside the store.
pub(crate) fn import_default(store: &Store) -> Result<(), ImageError> {
    use crate::store::busybox;
    busybox::import(store, DEFAULT_IMAGE, Path::new(busybox::DEFAULT_BUSYBOX))?;
    Ok(())
}
