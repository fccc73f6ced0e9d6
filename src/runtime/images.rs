//! The host's one extracted copy of each image: `STATE/images/KEY/rootfs`, read-only
//! lower layer of every container's view. KEY is the hash of the image's index, so a
//! re-tagged or re-imported image gets a fresh tree and an unchanged one is reused.
//! Concurrent creates of the same image extract it once (a lock file per KEY).

use crate::store::{ExtractOptions, Store, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {name:?} is not in the store {store}")]
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
        let dir = self.dir.join(key(&index));
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
            // Which image of which store the tree is (for `gc`: containers record
            // image names, and a state dir may serve several stores).
            let image = dir.join(IMAGE_FILE);
            crate::atomic::write(&image, canonical(name).as_bytes())
                .map_err(io("write", &image))?;
            let from = dir.join(STORE_FILE);
            crate::atomic::write(&from, store_id(store).as_os_str().as_encoded_bytes())
                .map_err(io("write", &from))?;
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

    /// Removes the extracted trees of `store` that no image in it and no container
    /// uses: a tree stays while its image (same index) is in the store, or while any
    /// container made from an image of its name has a directory in `containers` (its
    /// record is written before its view is made, so a create in progress counts). A
    /// tree from before trees named their image and store stays while any container
    /// exists, and is `store`'s only when `store` is `default_store`. Other stores'
    /// trees are left alone.
    pub fn gc(
        &self,
        store: &Store,
        default_store: &Path,
        containers: &Path,
    ) -> Result<TreeGc, ImageError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { what, path, source }
        };
        let mut report = TreeGc::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io("read", &self.dir)(e)),
        };
        let wanted = image_keys(store)?;
        let used = container_images(containers).map_err(io("read", containers))?;
        for entry in entries {
            let entry = entry.map_err(io("read", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !entry.file_type().map_err(io("stat", &path))?.is_dir() {
                continue;
            }
            let ours = match std::fs::read(path.join(STORE_FILE)) {
                Ok(from) => from == store_id(store).as_os_str().as_encoded_bytes(),
                Err(_) => store_id(store) == canonical_path(default_store),
            };
            if !ours && !name.contains(TRASH) {
                continue;
            }
            let keep = if name.contains(TRASH) {
                false // A removal a crash interrupted.
            } else if wanted.contains(&name) || used.contains(ANY) {
                true
            } else {
                match std::fs::read_to_string(path.join(IMAGE_FILE)) {
                    Ok(image) => used.contains(image.trim()),
                    Err(_) => !used.is_empty(),
                }
            };
            if keep {
                report.kept += 1;
                continue;
            }
            report.freed_bytes += self.remove(&path, &name)?;
            report.removed.push(name);
        }
        Ok(report)
    }

    /// Moves one tree aside (a crash leaves a name no lookup matches), then removes it;
    /// its lock is held so an extraction of it cannot be under way. The bytes freed.
    fn remove(&self, path: &Path, name: &str) -> Result<u64, ImageError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { what, path, source }
        };
        let lock_path = path.join("lock");
        let _lock = match File::open(&lock_path) {
            Ok(f) => Some(
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(
                    |(_, e)| ImageError::Io {
                        what: "lock",
                        path: lock_path.clone(),
                        source: e.into(),
                    },
                )?,
            ),
            Err(_) => None,
        };
        let trash = if name.contains(TRASH) {
            path.to_path_buf()
        } else {
            let trash = self
                .dir
                .join(format!("{name}{TRASH}{}", std::process::id()));
            std::fs::rename(path, &trash).map_err(io("rename", path))?;
            trash
        };
        let bytes = tree_bytes(&trash);
        if !crate::dirs::is_root() {
            // A rootless user's shared tree is its image block's: removed in a user
            // namespace mapped onto that block.
            super::rootless_view::remove_block_tree(&trash.join("rootfs"))
                .map_err(io("remove", &trash))?;
        }
        crate::tree::remove_tree(&trash).map_err(io("remove", &trash))?;
        Ok(bytes)
    }
}

/// What [`ImageCache::gc`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct TreeGc {
    /// The keys (directory names) of the trees removed.
    pub removed: Vec<String>,
    /// Trees still used by an image or a container.
    pub kept: usize,
    /// Bytes of the regular files removed.
    pub freed_bytes: u64,
}

/// In a tree's directory: the image name it was extracted from.
const IMAGE_FILE: &str = "image";
/// A container whose image is unknown: it may use any tree.
const ANY: &str = "*";
/// In the name of a tree being removed.
const TRASH: &str = ".gc-";

/// In a tree's directory: the store it was extracted from.
const STORE_FILE: &str = "store";

/// A store's directory, as trees record it.
fn store_id(store: &Store) -> PathBuf {
    canonical_path(store.dir())
}

fn canonical_path(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The directory name of the tree extracted from an index with these bytes.
pub(crate) fn key(index: &[u8]) -> String {
    blake3::hash(index).to_hex()[..32].to_string()
}

/// `NAME:TAG`, as containers' records and trees are compared.
fn canonical(image: &str) -> String {
    crate::store::ImageName::parse(image).map_or_else(|_| image.to_string(), |n| n.to_string())
}

/// The keys of every image in the store.
fn image_keys(store: &Store) -> Result<std::collections::HashSet<String>, ImageError> {
    let mut keys = std::collections::HashSet::new();
    for name in store.names()? {
        let path = store.index_path(&name)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                keys.insert(key(&bytes));
            }
            // Removed since it was listed: its tree is no image's.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ImageError::Io {
                    what: "read",
                    path,
                    source,
                });
            }
        }
    }
    Ok(keys)
}

/// The images (canonical names) of every container with a directory in `containers`.
/// A directory whose record cannot be read (yet) counts as [`ANY`]: its image is
/// unknown, so every tree stays.
fn container_images(containers: &Path) -> std::io::Result<std::collections::HashSet<String>> {
    let mut images = std::collections::HashSet::new();
    let entries = match std::fs::read_dir(containers) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(images),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let record = entry?.path().join("warren.json");
        let image = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["image"].as_str().map(canonical));
        images.insert(image.unwrap_or_else(|| ANY.to_string()));
    }
    Ok(images)
}

/// The bytes of the regular files under `dir`, never following symlinks.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
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
