//! Creating the non-directory entries: file content (batched, sparse), symlinks, nodes.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sys::stat::{Mode, SFlag};

use super::attrs::op_err;
use super::sparse::write_sparse;
use super::{Cache, Ctx, RESOLVE, file_size};
use crate::store::chunks::Durability;
use crate::store::index::Record;
use crate::store::{Entry, Kind, Progress, Result, io_err, nix_err};
use crate::sys;

impl Ctx<'_> {
    pub(super) fn batch(&self, records: &[&Record]) -> Result<()> {
        let mut cache = Cache {
            chunk: usize::MAX,
            data: Vec::new(),
        };
        for r in records {
            let e = &r.entry;
            let shown = self.shown(&e.path);
            match &e.kind {
                Kind::File { .. } => {
                    let fd = sys::openat2(
                        self.root.as_fd(),
                        &e.path,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                        RESOLVE,
                    )
                    .map_err(io_err(&shown))?;
                    let mut file = File::from(fd);
                    self.write_content(r, &mut cache, &mut file)?;
                    if self.durability == Durability::Files && file_size(r) > 0 {
                        // Start writeback now; the syncs at the end then find little to do.
                        sys::start_writeback(file.as_fd(), 0, 0).map_err(io_err(&shown))?;
                    }
                    self.set_meta_fd(e, file.as_fd())?;
                }
                Kind::Symlink { target } => {
                    let (parent, name) = self.parent(&e.path)?;
                    nix::unistd::symlinkat(target.as_path(), &parent, name)
                        .map_err(nix_err(&shown))?;
                    self.set_meta_at(e, parent.as_fd(), name, true)?;
                }
                Kind::Char { rdev } | Kind::Block { rdev } => {
                    self.mknod(e, kind_flag(&e.kind), *rdev)?
                }
                Kind::Fifo | Kind::Socket => self.mknod(e, kind_flag(&e.kind), 0)?,
                Kind::Dir | Kind::Hardlink { .. } => {}
            }
        }
        Ok(())
    }

    fn mknod(&self, e: &Entry, kind: SFlag, rdev: u64) -> Result<()> {
        let (parent, name) = self.parent(&e.path)?;
        nix::sys::stat::mknodat(&parent, name, kind, Mode::from_bits_truncate(0o600), rdev)
            .map_err(|err| {
                let why = match err {
                    nix::errno::Errno::EPERM => ": creating device nodes needs root",
                    _ => "",
                };
                op_err(&self.shown(&e.path), "mknod", err, why)
            })?;
        self.set_meta_at(e, parent.as_fd(), name, false)
    }

    /// Writes a file's span of the content stream, verifying each chunk as it is read.
    /// Blocks of zeros are not written: the file is sparse where the image's was.
    fn write_content(&self, r: &Record, cache: &mut Cache, file: &mut File) -> Result<()> {
        let mut off = r.offset;
        let end = r.offset + file_size(r);
        let shown = || self.shown(&r.entry.path);
        // How far the file was written: zeros after that are left to the final size.
        let mut written = 0;
        while off < end {
            let ci = self.starts.partition_point(|s| *s <= off) - 1;
            let c = &self.index.chunks[ci];
            if cache.chunk != ci {
                cache.data = self.chunks.read(&c.id, c.len, &self.shown(&r.entry.path))?;
                cache.chunk = ci;
            }
            let within = (off - self.starts[ci]) as usize;
            let take = (c.len as usize - within).min((end - off) as usize);
            let to = write_sparse(file, off - r.offset, &cache.data[within..within + take])
                .map_err(|e| io_err(shown())(e))?;
            written = written.max(to);
            off += take as u64;
            Progress::add(&self.progress.bytes, take as u64);
        }
        // Zeros skipped at the end still count: the size is the image's.
        if written < file_size(r) {
            file.set_len(file_size(r)).map_err(|e| io_err(shown())(e))?;
        }
        Ok(())
    }
}

fn kind_flag(kind: &Kind) -> SFlag {
    match kind {
        Kind::Char { .. } => SFlag::S_IFCHR,
        Kind::Block { .. } => SFlag::S_IFBLK,
        Kind::Fifo => SFlag::S_IFIFO,
        _ => SFlag::S_IFSOCK,
    }
}
