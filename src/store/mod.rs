//! The chunk-deduplicated, content-addressed image store.
//!
//! An image is an index (every entry's metadata, each file's span in one content stream,
//! the list of chunks the stream is cut into) plus the chunks themselves: FastCDC cuts
//! the stream, a chunk is named by the BLAKE3 hash of its bytes and stored as a zstd
//! frame, in a pack file with the other chunks its import wrote or as a loose file of
//! its own. Ten versions of an image cost little more than one. Layout (plain files a
//! static web server can serve as they are, for `remote::pull`, once published; see
//! docs/FORMAT.md). A store is private (its root 0700): the packs hold every file of
//! every image, mode 0600 ones included.
//!
//! ```text
//! STORE/format                     "warren-store 3" (1 and 2 are read, and upgraded on write)
//! STORE/published                  only in a store made to be served (`warren store push`)
//! STORE/lock                       flock: shared by imports and extracts, exclusive by gc
//! STORE/packs/<blake3>.pack        the chunks of an import, with a table of them
//! STORE/packs/list                 the packs' names, for clients of a served store
//! STORE/chunks/ab/abcd....zst      loose chunks (pushes, older stores): 256 prefix dirs
//! STORE/images/NAME/TAG.idx        NAME may hold `/` (docker.io/library/debian)
//! ```

pub(crate) mod archive;
#[doc(hidden)]
pub mod bcj;
pub mod busybox;
#[doc(hidden)]
pub mod chunker;
#[doc(hidden)]
pub mod chunks;
#[doc(hidden)]
pub mod compress;
pub(crate) mod extract;
pub(crate) mod format;
pub(crate) mod gc;
pub(crate) mod imageconfig;
mod images;
#[doc(hidden)]
pub mod index;
mod name;
pub mod oci;
#[doc(hidden)]
pub mod pack;
#[cfg(feature = "remote")]
pub mod registry;
#[cfg(feature = "remote")]
pub mod remote;
pub(crate) mod writer;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

pub use extract::{ExtractOptions, ExtractReport};
pub use gc::{GcReport, Problem, VerifyReport};
pub use images::{ImageInfo, Stats};
pub use index::{ChunkId, Entry, Index, IndexError, Kind, Timestamp};
pub use name::ImageName;
pub use writer::ImageWriter;

pub use format::{PUBLISHED, STORE_FORMAT, STORE_FORMATS_READ};
const PUBLISHED_TEXT: &str = "This store is published: any user or web client that can reach it reads every file of every image in it, whatever the file's mode in the image.\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is in the message (not a `source`), so it is printed once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("image {name}: {err}")]
    Index { name: String, err: IndexError },
    #[error("no image named {0}")]
    NoSuchImage(String),
    #[error("bad image name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("chunk {chunk} is missing (needed by {path})")]
    MissingChunk { chunk: ChunkId, path: PathBuf },
    #[error("chunk {chunk} is corrupt ({reason}; needed by {path})")]
    CorruptChunk {
        chunk: ChunkId,
        path: PathBuf,
        reason: String,
    },
    #[error("entry {path}: {reason}")]
    Entry { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Destination { path: PathBuf, reason: String },
    #[error(
        "{0} is a private store: publishing into it would make its files readable by every user"
    )]
    PrivateDestination(PathBuf),
    /// A chown outside a user namespace by an unprivileged user (`uid`), who can give
    /// files only to itself.
    #[error("{path}: {err}")]
    ChownUnprivileged {
        path: PathBuf,
        uid: u32,
        err: io::Error,
    },
    #[error("{path}: cannot shift ids: {reason}")]
    Shift { path: PathBuf, reason: String },
    #[error("pack {path}: {reason}")]
    Pack { path: PathBuf, reason: String },
    #[error("{path} is not a warren store of this version (format file says {found:?})")]
    Format { path: PathBuf, found: String },
}

/// For I/O inside the chunker; the writer attaches the file's path.
impl From<io::Error> for StoreError {
    fn from(err: io::Error) -> Self {
        StoreError::Io {
            path: PathBuf::new(),
            err,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches a path to an I/O (or nix) error.
pub(crate) fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.as_ref().to_path_buf();
    move |err| StoreError::Io { path, err }
}

pub(crate) fn nix_err(path: impl AsRef<Path>) -> impl FnOnce(nix::Error) -> StoreError {
    let path = path.as_ref().to_path_buf();
    move |e| StoreError::Io {
        path,
        err: io::Error::from(e),
    }
}

/// fsyncs (or fdatasyncs) `paths` from `threads` threads at once: the waits are for the
/// disk, not the CPU, and the more syncs wait at once, the more of them one journal
/// commit serves.
pub(crate) fn sync_many(paths: &[&Path], data_only: bool, threads: usize) -> Result<()> {
    // Each thread holds one file open: stay within the fd limit.
    let threads = threads.min(crate::sys::fd_budget());
    let per = paths.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles = paths
            .chunks(per)
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || -> Result<()> {
                        for p in part {
                            let f = File::open(p).map_err(io_err(p))?;
                            let synced = if data_only {
                                f.sync_data()
                            } else {
                                f.sync_all()
                            };
                            synced.map_err(io_err(p))?;
                        }
                        Ok(())
                    })
                    // The scope still joins the threads already started.
                    .map_err(io_err("spawning a sync thread"))
            })
            .collect::<Result<Vec<_>>>()?;
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::Entry {
                    path: PathBuf::new(),
                    reason: "a sync thread panicked".into(),
                })
            })
        })
    })
}

/// Live counters of an import or extract, for progress bars (read them from another
/// thread while the work runs).
#[derive(Debug, Default)]
pub struct Progress {
    /// Content bytes read (import) or written (extract) so far.
    pub bytes: AtomicU64,
    /// Content bytes expected in all (extract; 0 when unknown).
    pub total: AtomicU64,
    /// Chunks in the stream so far.
    pub chunks: AtomicU64,
    /// Chunks the store did not have.
    pub new_chunks: AtomicU64,
    /// Uncompressed bytes of those new chunks.
    pub new_bytes: AtomicU64,
    /// Compressed bytes written to the store.
    pub stored_bytes: AtomicU64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Options of [`Store::import_dir`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Counters to watch while the import runs.
    pub progress: Option<std::sync::Arc<Progress>>,
    /// Opaque config blob stored with the image.
    pub config: Option<Vec<u8>>,
    /// Skip making the chunks durable before the index is published (see
    /// [`ImageWriter::set_sync`]).
    pub no_sync: bool,
}

/// A content-addressed chunk store on disk.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// Opened as (or found to be) a store to serve: its new files are world-readable.
    published: bool,
}

/// The mode of a new chunk or pack file in a published or a private store.
pub(crate) fn file_mode(published: bool) -> u32 {
    if published { 0o644 } else { 0o600 }
}

/// True when every user may list and enter `dir` (a store an older warren pushed).
fn world_readable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005)
}

impl Store {
    /// Opens the store at `dir`, creating its layout on first use. A store is private:
    /// its root is created 0700, and an existing one an older warren left open is made
    /// 0700 (every file of it is reached through the root, so that is enough), unless it
    /// was published ([`Store::open_published`]).
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_as(dir, false)
    }

    /// Opens or creates the store at `dir` to be served by a web server (what
    /// `warren store push DIR` writes): readable by every user who can reach it, so
    /// every file of every image in it, whatever its mode in the image, is public. Marked
    /// by `STORE/published`, so a later [`Store::open`] leaves it readable.
    pub fn open_published(dir: &Path) -> Result<Store> {
        Store::open_as(dir, true)
    }

    fn open_as(dir: &Path, publish: bool) -> Result<Store> {
        let format = dir.join(format::FORMAT_FILE);
        let marker = dir.join(PUBLISHED);
        let published = publish || marker.exists();
        let store = Store {
            dir: dir.to_path_buf(),
            published,
        };
        if publish && !marker.exists() && format.exists() && !world_readable(dir) {
            return Err(StoreError::PrivateDestination(dir.to_path_buf()));
        }
        let was_store = format.exists();
        let fresh = match fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err(dir)(e)),
        };
        let layout_dir = |p: &Path| {
            if published {
                fs::create_dir_all(p).map_err(io_err(p))
            } else {
                crate::dirs::create_private(p).map_err(io_err(p))
            }
        };
        layout_dir(dir)?;
        if publish && !marker.exists() {
            crate::atomic::write(&marker, PUBLISHED_TEXT.as_bytes()).map_err(io_err(&marker))?;
        }
        match fs::read_to_string(&format) {
            Ok(found) if found == STORE_FORMAT || STORE_FORMATS_READ.contains(&found.as_str()) => {}
            Ok(found) => {
                return Err(StoreError::Format {
                    path: format,
                    found,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Prefix dirs first, the format file last: a store with a format file is
                // complete.
                layout_dir(&store.chunks_dir())?;
                for i in 0..256 {
                    layout_dir(&store.chunks_dir().join(format!("{i:02x}")))?;
                }
                for d in [store.images_dir(), store.packs_dir()] {
                    layout_dir(&d)?;
                }
                crate::atomic::write(&format, STORE_FORMAT.as_bytes()).map_err(io_err(&format))?;
            }
            Err(e) => return Err(io_err(&format)(e)),
        }
        if !published && (fresh || was_store) {
            // A directory that held something else (`--store` pointed at a home, or at
            // /tmp) keeps its mode: the layout dirs holding the data are private.
            crate::dirs::make_private(dir).map_err(io_err(dir))?;
        }
        Ok(store)
    }

    /// True when the store was opened or created to be served ([`Store::open_published`]).
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// The mode of a new chunk or pack file: only the owner reads one in a private store
    /// (should its root ever be opened up), everyone in a published one.
    pub(crate) fn file_mode(&self) -> u32 {
        file_mode(self.published)
    }

    /// Before writing chunks of this version into the store: rewrites an older format
    /// file as the current one (atomically, once `packs/` exists), so an older warren
    /// refuses the store rather than missing chunks or finding ones it cannot decode.
    /// Call with the store lock held.
    pub(crate) fn upgrade(&self) -> Result<()> {
        let format = self.dir.join(format::FORMAT_FILE);
        match fs::read_to_string(&format) {
            Ok(found) if STORE_FORMATS_READ.contains(&found.as_str()) => {
                let packs = self.packs_dir();
                fs::create_dir_all(&packs).map_err(io_err(&packs))?;
                crate::atomic::write(&format, STORE_FORMAT.as_bytes()).map_err(io_err(&format))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(io_err(&format)(e)),
        }
    }

    /// `state_dir()/store`: `/var/lib/warren/store` as root, `$XDG_DATA_HOME/warren/store`
    /// otherwise.
    pub fn default_dir() -> PathBuf {
        crate::dirs::state_dir().join("store")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.dir.join(format::CHUNKS_DIR)
    }

    pub(crate) fn packs_dir(&self) -> PathBuf {
        self.dir.join(format::PACKS_DIR)
    }

    /// Every chunk the store holds and where (take the store lock first if a gc may
    /// run: [`Store::extract`] and imports do).
    pub fn chunks(&self) -> Result<chunks::Chunks> {
        chunks::Chunks::load(self)
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.dir.join(format::IMAGES_DIR)
    }

    /// Where chunk `id` lives as a loose file.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(format::chunk_rel(id))
    }

    /// Where the index of image `name` lives.
    pub fn index_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.images_dir().join(ImageName::parse(name)?.rel_path()))
    }

    /// Takes the store lock: shared for imports and extracts, exclusive for gc.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<Flock<File>> {
        let path = self.dir.join(format::LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(file, arg).map_err(|(_, e)| nix_err(&path)(e))
    }

    /// Begins an import. The writer holds the store's shared lock until it is committed or
    /// dropped, so a concurrent gc cannot remove a chunk it wrote or reused.
    pub fn writer(&self) -> Result<ImageWriter> {
        ImageWriter::new(self.clone())
    }

    /// Imports the tree at `dir` (never following symlinks) as image `name`.
    pub fn import_dir(&self, dir: &Path, name: &str, opts: &ImportOptions) -> Result<ImageInfo> {
        ImageName::parse(name)?;
        let progress = opts.progress.clone().unwrap_or_default();
        let mut w = ImageWriter::with_progress(self.clone(), progress)?;
        w.set_sync(!opts.no_sync);
        archive::walk(dir, &mut w)?;
        w.commit(name, opts.config.clone())
    }

    /// Rebuilds image `name` at `dest` (which must not exist, or be an empty directory).
    pub fn extract(&self, name: &str, dest: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
        let _lock = self.lock(false)?;
        let index = self.index(name)?;
        extract::extract(self, &index, dest, opts)
    }

    /// Checks every chunk's hash and every index's references.
    pub fn verify(&self) -> Result<VerifyReport> {
        gc::verify(self, false)
    }

    /// [`verify`](Store::verify), then removes every corrupt chunk file (waiting for
    /// imports in progress), so that re-importing or pulling the images the report names
    /// in `damaged_images` writes those chunks afresh. Indexes are never touched.
    pub fn verify_and_repair(&self) -> Result<VerifyReport> {
        gc::verify(self, true)
    }

    /// Removes every chunk no index references (and temporary files of dead imports).
    pub fn gc(&self) -> Result<GcReport> {
        gc::gc(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn chmod(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn stores_are_private_unless_published() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        Store::open(&private).unwrap();
        assert_eq!(mode(&private), 0o700);
        // An older store left open is tightened when opened.
        chmod(&private, 0o755);
        assert!(!Store::open(&private).unwrap().is_published());
        assert_eq!(mode(&private), 0o700);
        // Publishing it in place is refused: push writes a published copy elsewhere.
        assert!(Store::open_published(&private).is_err());
        assert!(!private.join(PUBLISHED).exists());

        let served = tmp.path().join("served");
        Store::open_published(&served).unwrap();
        chmod(&served, 0o755);
        let again = Store::open(&served).unwrap();
        assert!(again.is_published());
        assert_eq!(mode(&served), 0o755, "a published store stays readable");

        // A directory holding other things keeps its mode; the store's own dirs do not.
        let home = tmp.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::write(home.join(".profile"), "").unwrap();
        chmod(&home, 0o755);
        Store::open(&home).unwrap();
        assert_eq!(mode(&home), 0o755);
        for d in ["chunks", "chunks/ab", "packs", "images"] {
            assert_eq!(mode(&home.join(d)), 0o700, "{d}");
        }
    }
}
