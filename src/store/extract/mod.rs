//! Index + chunks -> tree. Builds the tree in `DEST.partial-XXXX` and renames it to
//! `DEST` only when every entry is complete, so a failure (a missing or corrupt chunk, a
//! full disk) never leaves a tree that looks whole. Every path is resolved under the
//! destination with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, whatever the index
//! says. Files are written in parallel, in stream order, each chunk decompressed once per
//! batch and its hash checked. Ids (and the ids inside capability and ACL xattrs) are
//! shifted as entries are created, with no extra pass.

mod attrs;
mod files;
mod sparse;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use rayon::prelude::*;

use super::chunks::Durability;
use super::index::Record;
use super::{Index, Kind, Progress, Result, Store, StoreError, chunks, io_err, nix_err};
use crate::idmap::range::Shift;
use crate::sys;

/// How much content one parallel batch of files covers.
const BATCH_BYTES: u64 = 4 << 20;

/// Options of [`Store::extract`](super::Store::extract).
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Map every uid/gid (and the ids in capability/ACL xattrs) while extracting.
    pub shift: Option<Shift>,
    /// Make the tree durable before publishing DEST, so a crash never leaves a DEST with
    /// lost data (default true): one syncfs of its filesystem, or each file and directory
    /// when other writers have much more data in flight (`chunks::Durability::for_sync`).
    pub sync: bool,
    /// Counters to watch while the extract runs.
    pub progress: Option<Arc<Progress>>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            shift: None,
            sync: true,
            progress: None,
        }
    }
}

/// What an extract did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExtractReport {
    pub name: String,
    pub dest: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

const RESOLVE: u64 = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS;

pub(crate) fn extract(
    store: &Store,
    index: &Index,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport> {
    // Decided up front: writeback is started file by file only for per-file syncs.
    let durability = if opts.sync {
        let bytes = index.content_bytes();
        Durability::for_sync(bytes, sys::dirty_bytes().map(|d| d + bytes))
    } else {
        Durability::None
    };
    extract_durably(store, index, dest, opts, durability)
}

fn extract_durably(
    store: &Store,
    index: &Index,
    dest: &Path,
    opts: &ExtractOptions,
    durability: Durability,
) -> Result<ExtractReport> {
    let dest_err = |reason: &str| StoreError::Destination {
        path: dest.to_path_buf(),
        reason: reason.to_string(),
    };
    let fname = dest
        .file_name()
        .ok_or_else(|| dest_err("has no file name"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut rd = std::fs::read_dir(dest).map_err(io_err(dest))?;
            if rd.next().is_some() {
                return Err(dest_err("exists and is not empty"));
            }
        }
        Ok(_) => return Err(dest_err("exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dest)(e)),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut pname = fname.to_os_string();
    pname.push(format!(".partial-{:x}{:x}", std::process::id(), nanos));
    let partial = parent.join(pname);
    std::fs::create_dir(&partial).map_err(io_err(&partial))?;
    let result = (|| {
        let root: OwnedFd = nix::fcntl::open(
            &partial,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_err(&partial))?;
        let ctx = Ctx::new(store.chunks()?, index, root, dest, opts, durability);
        ctx.run()?;
        match durability {
            Durability::None => {}
            // One pass over the disk for the whole tree, data and metadata.
            Durability::Filesystem => {
                let fd = File::open(&partial).map_err(io_err(&partial))?;
                nix::unistd::syncfs(&fd).map_err(|e| io_err(&partial)(e.into()))?;
            }
            // Our files and directories only; their writeback started as they were written.
            Durability::Files => {
                let (mut files, mut dirs) = (Vec::new(), vec![partial.clone()]);
                for r in &index.records {
                    match r.entry.kind {
                        Kind::File { .. } => files.push(partial.join(&r.entry.path)),
                        Kind::Dir if !r.entry.path.as_os_str().is_empty() => {
                            dirs.push(partial.join(&r.entry.path))
                        }
                        _ => {}
                    }
                }
                super::sync_many(
                    &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
                    true,
                    16,
                )?;
                super::sync_many(
                    &dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
                    false,
                    16,
                )?;
            }
        }
        std::fs::rename(&partial, dest).map_err(io_err(dest))?;
        if durability != Durability::None {
            File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = crate::tree::remove_tree(&partial);
        return Err(e);
    }
    Ok(ExtractReport {
        name: index.name.clone(),
        dest: dest.to_path_buf(),
        entries: index.records.len() as u64,
        files: index.file_count(),
        bytes: index.content_bytes(),
    })
}

struct Ctx<'a> {
    chunks: chunks::Chunks,
    index: &'a Index,
    root: OwnedFd,
    /// Shown in errors instead of the temporary directory.
    dest: &'a Path,
    shift: Option<Shift>,
    durability: Durability,
    progress: Arc<Progress>,
    /// Stream offset where each chunk starts.
    starts: Vec<u64>,
}

/// The chunk a batch decompressed last: consecutive small files share it.
struct Cache {
    chunk: usize,
    data: Vec<u8>,
}

impl<'a> Ctx<'a> {
    fn new(
        chunks: chunks::Chunks,
        index: &'a Index,
        root: OwnedFd,
        dest: &'a Path,
        opts: &ExtractOptions,
        durability: Durability,
    ) -> Self {
        let mut starts = Vec::with_capacity(index.chunks.len());
        let mut at = 0u64;
        for c in &index.chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        let progress = opts.progress.clone().unwrap_or_default();
        Progress::add(&progress.total, index.content_bytes());
        Ctx {
            chunks,
            index,
            root,
            dest,
            shift: opts.shift,
            durability,
            progress,
            starts,
        }
    }

    fn run(&self) -> Result<()> {
        let records = &self.index.records;
        // 1. Directories, parents first (records are sorted), private until the end.
        for r in records.iter().skip(1) {
            if r.entry.kind == Kind::Dir {
                let (parent, name) = self.parent(&r.entry.path)?;
                nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(nix_err(self.shown(&r.entry.path)))?;
            }
        }
        // 2. Files in stream order, cut into batches that run in parallel; other
        // non-directories in one more batch.
        let mut files: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r.entry.kind, Kind::File { .. }))
            .collect();
        files.sort_by_key(|r| r.offset);
        let mut batches: Vec<Vec<&Record>> = Vec::new();
        let mut bytes = u64::MAX;
        for r in files {
            if bytes >= BATCH_BYTES {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += file_size(r) + 512;
            if let Some(b) = batches.last_mut() {
                b.push(r);
            }
        }
        batches.push(
            records
                .iter()
                .filter(|r| {
                    !matches!(
                        r.entry.kind,
                        Kind::File { .. } | Kind::Dir | Kind::Hardlink { .. }
                    )
                })
                .collect(),
        );
        batches.par_iter().try_for_each(|b| self.batch(b))?;
        // 3. Hardlinks, now that their targets exist.
        for r in records {
            if let Kind::Hardlink { target } = &r.entry.kind {
                let (tparent, tname) = self.parent(target)?;
                let (parent, name) = self.parent(&r.entry.path)?;
                nix::unistd::linkat(&tparent, tname, &parent, name, AtFlags::empty())
                    .map_err(nix_err(self.shown(&r.entry.path)))?;
            }
        }
        // 4. Directory metadata, deepest first, so their times survive their contents.
        for r in records.iter().rev() {
            if r.entry.kind == Kind::Dir {
                let path = &r.entry.path;
                let rel = if path.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    path.as_path()
                };
                let fd = sys::openat2(
                    self.root.as_fd(),
                    rel,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    RESOLVE,
                )
                .map_err(io_err(self.shown(path)))?;
                self.set_meta_fd(&r.entry, fd.as_fd())?;
            }
        }
        Ok(())
    }

    /// The path errors show: under DEST, a long one shortened.
    fn shown(&self, path: &Path) -> PathBuf {
        let full = self.dest.join(path);
        PathBuf::from(crate::store::oci::shorten(&full.to_string_lossy()))
    }

    /// The parent directory of `path` (resolved beneath the root, no symlinks) and the
    /// last component.
    fn parent<'p>(&self, path: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
        let name = path.file_name().ok_or_else(|| StoreError::Entry {
            path: path.to_path_buf(),
            reason: "no file name".into(),
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = sys::openat2(
            self.root.as_fd(),
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE,
        )
        .map_err(io_err(self.shown(path)))?;
        Ok((fd, name))
    }
}

fn file_size(r: &Record) -> u64 {
    match r.entry.kind {
        Kind::File { size } => size,
        _ => 0,
    }
}
