//! The walk over the lower layers: merged as overlayfs would, entries of a directory
//! copied in parallel (unless deferred), hardlinks kept.

use super::meta::{CopyError, CopyReport, dir_flags, kind_of, set_meta};
use super::plan::{Pending, Plan};
use crate::idmap::range::Shift;
use crate::sys;
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use rayon::prelude::*;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
const OVERLAY_OPAQUE: &CStrLit = c"trusted.overlay.opaque";
/// Marks an upper file whose data is the lower file's (an empty value: no digest).
const OVERLAY_METACOPY: &CStrLit = c"trusted.overlay.metacopy";
/// An upper file's link count relative to its own (`U+0`: the upper inode's count);
/// overlayfs reads it for every file whose lower inode has more than one link.
const OVERLAY_NLINK: &CStrLit = c"trusted.overlay.nlink";
type CStrLit = std::ffi::CStr;

/// Where the first copy of a multiply-linked file is, once made, or why it was not.
type FirstLink = Arc<OnceLock<Result<PathBuf, (io::ErrorKind, String)>>>;

/// Walks the layers; entries of a directory are copied in parallel unless deferred.
struct Copier<'a> {
    shift: Shift,
    /// (dev, ino) of a multiply-linked source file -> its first copy, relative to `dst_root`.
    links: Mutex<HashMap<(u64, u64), FirstLink>>,
    dst_root: OwnedFd,
    dst_path: &'a Path,
    entries: AtomicU64,
    shifted: AtomicU64,
    /// False while the bottom-most layer is copied (into an empty tree).
    merging: AtomicBool,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// When set, metadata is recorded here instead of applied (one entry at a time: a
    /// link copies its first copy's recorded metadata).
    defer: Option<Mutex<&'a mut Plan>>,
    /// What regular files get: their data, or (an overlay's upper dir) only their size.
    data: Data,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Data {
    Copy,
    Metacopy,
}

pub(super) fn copy_into(
    lowers: &[PathBuf],
    dst: &Path,
    shift: Shift,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    defer: Option<&mut Plan>,
    data: Data,
) -> Result<CopyReport, CopyError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: nix::Error| CopyError::Io {
            path,
            source: e.into(),
        }
    };
    std::fs::create_dir(dst).map_err(|source| CopyError::Io {
        path: dst.to_path_buf(),
        source,
    })?;
    let dst_root = nix::fcntl::open(dst, dir_flags(), Mode::empty()).map_err(io_err(dst))?;
    let copier = Copier {
        shift,
        links: Mutex::new(HashMap::new()),
        dst_root,
        dst_path: dst,
        entries: AtomicU64::new(0),
        shifted: AtomicU64::new(0),
        merging: AtomicBool::new(false),
        progress,
        defer: defer.map(Mutex::new),
        data,
    };
    let threads = if copier.defer.is_some() {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    // A pool of our own: the global one may be unusable in a forked child.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| CopyError::Io {
            path: dst.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
    pool.install(|| copier.copy_layers(lowers))?;
    Ok(CopyReport {
        entries: copier.entries.into_inner(),
        shifted: copier.shifted.into_inner(),
    })
}

impl Copier<'_> {
    fn copy_layers(&self, lowers: &[PathBuf]) -> Result<(), CopyError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: nix::Error| CopyError::Io {
                path,
                source: e.into(),
            }
        };
        let dst = self.dst_path;
        // Bottom-most first, so each higher layer lands on top.
        for (i, lower) in lowers.iter().rev().enumerate() {
            self.merging.store(i > 0, Ordering::Relaxed);
            let src = nix::fcntl::open(lower.as_path(), dir_flags(), Mode::empty())
                .map_err(io_err(lower))?;
            let st = nix::sys::stat::fstat(&src).map_err(io_err(lower))?;
            let root = self.dst_root.try_clone().map_err(|source| CopyError::Io {
                path: dst.to_path_buf(),
                source,
            })?;
            let root_again = root.try_clone().map_err(|source| CopyError::Io {
                path: dst.to_path_buf(),
                source,
            })?;
            self.copy_dir(src, root, lower, Path::new(""))?;
            // The root itself: dst root <- lower root's metadata.
            let lower_root = nix::fcntl::open(lower.as_path(), dir_flags(), Mode::empty())
                .map_err(io_err(lower))?;
            self.apply_meta(
                lower_root.as_fd(),
                OsStr::new("."),
                root_again.as_fd(),
                OsStr::new("."),
                &st,
                lower,
                dst,
            )?;
            self.links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        Ok(())
    }

    fn copy_dir(
        &self,
        src: OwnedFd,
        dst: OwnedFd,
        src_path: &Path,
        rel: &Path,
    ) -> Result<(), CopyError> {
        let io_err = |path: PathBuf| {
            move |e: nix::Error| CopyError::Io {
                path,
                source: e.into(),
            }
        };
        let src_dup = src.try_clone().map_err(|source| CopyError::Io {
            path: src_path.to_path_buf(),
            source,
        })?;
        let mut dir = Dir::from_fd(src_dup).map_err(io_err(src_path.to_path_buf()))?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io_err(src_path.to_path_buf()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        let each = |name: OsString| self.copy_entry(&src, &dst, src_path, rel, &name);
        if self.defer.is_some() {
            names.into_iter().try_for_each(each)
        } else {
            names.into_par_iter().try_for_each(each)
        }
    }

    /// Copies `name` from `src` (at `src_path`) into `dst` (at `rel` in the copy).
    fn copy_entry(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        src_path: &Path,
        rel: &Path,
        name: &OsStr,
    ) -> Result<(), CopyError> {
        let spath = src_path.join(name);
        let drel = rel.join(name);
        let dpath = self.dst_path.join(&drel);
        let st = nix::sys::stat::fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
            CopyError::Io {
                path: spath.clone(),
                source: e.into(),
            }
        })?;
        let kind = kind_of(&st);
        let whiteout = kind == SFlag::S_IFCHR && st.st_rdev == 0;
        // The bottom-most layer lands in an empty tree: nothing there to merge or replace.
        if self.merging.load(Ordering::Relaxed) {
            let existing = nix::sys::stat::fstatat(dst, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
            let existing_dir = existing.is_some_and(|e| kind_of(&e) == SFlag::S_IFDIR);
            let opaque = kind == SFlag::S_IFDIR
                && sys::lgetxattr_at(src.as_fd(), name, OVERLAY_OPAQUE)
                    .ok()
                    .flatten()
                    .is_some_and(|v| v == b"y");
            // Replace what a lower layer put here, unless both are directories to merge.
            if existing.is_some() && !(kind == SFlag::S_IFDIR && existing_dir && !opaque) {
                crate::tree::remove_tree_at(dst.as_fd(), name).map_err(|source| CopyError::Io {
                    path: dpath.clone(),
                    source,
                })?;
                // Nothing of the replaced entry may outlive it, not even its metadata.
                if let Some(plan) = &self.defer {
                    plan.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .forget(&drel);
                }
            }
        }
        if whiteout {
            return Ok(());
        }
        if self.create(src, dst, name, &st, kind, &spath, &drel, &dpath)? {
            self.apply_meta(src.as_fd(), name, dst.as_fd(), name, &st, &spath, &dpath)?;
        }
        Ok(())
    }

    /// Creates the copy of one entry; false when it became a hardlink (no metadata to set).
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        st: &FileStat,
        kind: SFlag,
        spath: &Path,
        drel: &Path,
        dpath: &Path,
    ) -> Result<bool, CopyError> {
        let src_err = |e: nix::Error| CopyError::Io {
            path: spath.to_path_buf(),
            source: e.into(),
        };
        let dst_err = |e: nix::Error| CopyError::Io {
            path: dpath.to_path_buf(),
            source: e.into(),
        };
        let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(p) = self.progress {
            p(entries);
        }
        match kind {
            SFlag::S_IFDIR => {
                match nix::sys::stat::mkdirat(dst, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(dst_err(e)),
                }
                let s =
                    nix::fcntl::openat(src, name, dir_flags(), Mode::empty()).map_err(src_err)?;
                let d =
                    nix::fcntl::openat(dst, name, dir_flags(), Mode::empty()).map_err(dst_err)?;
                self.copy_dir(s, d, spath, drel)?;
            }
            SFlag::S_IFREG if st.st_nlink > 1 => {
                return self.create_linked(src, dst, name, st, spath, drel, dpath);
            }
            SFlag::S_IFREG => self.create_file(src, dst, name, st, spath, dpath)?,
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(src, name).map_err(src_err)?;
                nix::unistd::symlinkat(target.as_os_str(), dst, name).map_err(dst_err)?;
            }
            _ => {
                nix::sys::stat::mknodat(
                    dst,
                    name,
                    kind,
                    Mode::from_bits_truncate(0o600),
                    st.st_rdev,
                )
                .map_err(dst_err)?;
            }
        }
        Ok(true)
    }

    /// A file with more than one link: the first of its links met is made (then the
    /// others may link to it); the others become hardlinks of it (false: they get no
    /// metadata of their own).
    #[allow(clippy::too_many_arguments)]
    fn create_linked(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        st: &FileStat,
        spath: &Path,
        drel: &Path,
        dpath: &Path,
    ) -> Result<bool, CopyError> {
        let cell = {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            match links.entry((st.st_dev, st.st_ino)) {
                Entry::Occupied(first) => Err(first.get().clone()),
                Entry::Vacant(v) => Ok(v.insert(Arc::default()).clone()),
            }
        };
        match cell {
            Ok(cell) => {
                let made = self.create_file(src, dst, name, st, spath, dpath);
                let _ = cell.set(match &made {
                    Ok(()) => Ok(drel.to_path_buf()),
                    Err(e) => Err((e.kind(), e.to_string())),
                });
                made.map(|()| true)
            }
            Err(cell) => {
                let first = match cell.wait() {
                    Ok(first) => first,
                    Err((kind, why)) => {
                        return Err(CopyError::Io {
                            path: dpath.to_path_buf(),
                            source: io::Error::new(*kind, format!("a hardlink of {why}")),
                        });
                    }
                };
                self.link_to_first(first, dst, name, drel, dpath)?;
                Ok(false)
            }
        }
    }

    /// Another link of a file whose first link is `first` (relative to the copy's root).
    fn link_to_first(
        &self,
        first: &Path,
        dst: &OwnedFd,
        name: &OsStr,
        drel: &Path,
        dpath: &Path,
    ) -> Result<(), CopyError> {
        nix::unistd::linkat(&self.dst_root, first, dst, name, AtFlags::empty()).map_err(|e| {
            CopyError::Io {
                path: dpath.to_path_buf(),
                source: e.into(),
            }
        })?;
        // Deferred, the link gets the first one's metadata too, in case a higher layer
        // replaces the first.
        if let Some(plan) = &self.defer {
            let mut plan = plan.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(meta) = plan.entries.get(first).cloned() {
                plan.entries.insert(drel.to_path_buf(), meta);
            }
        }
        Ok(())
    }

    /// A regular file: a copy of the source's data, or a sparse file of its size marked
    /// as metacopy (an empty one is complete as it is).
    fn create_file(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        st: &FileStat,
        spath: &Path,
        dpath: &Path,
    ) -> Result<(), CopyError> {
        let dst_err = |source: io::Error| CopyError::Io {
            path: dpath.to_path_buf(),
            source,
        };
        let d = nix::fcntl::openat(
            dst,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| dst_err(e.into()))?;
        if self.data == Data::Copy {
            let s = nix::fcntl::openat(
                src,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| CopyError::Io {
                path: spath.to_path_buf(),
                source: e.into(),
            })?;
            let (mut s, mut d) = (std::fs::File::from(s), std::fs::File::from(d));
            io::copy(&mut s, &mut d).map_err(dst_err)?;
            return Ok(());
        }
        if st.st_size > 0 {
            nix::unistd::ftruncate(&d, st.st_size).map_err(|e| dst_err(e.into()))?;
            sys::fsetxattr(d.as_fd(), OVERLAY_METACOPY, b"").map_err(dst_err)?;
        }
        if st.st_nlink > 1 {
            sys::fsetxattr(d.as_fd(), OVERLAY_NLINK, b"U+0").map_err(dst_err)?;
        }
        Ok(())
    }

    /// Reads the source's xattrs, then applies owner, xattrs, mode and times to the copy
    /// (or, deferred, records them for [`apply_plan`](super::apply_plan)).
    #[allow(clippy::too_many_arguments)]
    fn apply_meta(
        &self,
        src: BorrowedFd<'_>,
        sname: &OsStr,
        dst: BorrowedFd<'_>,
        dname: &OsStr,
        st: &FileStat,
        spath: &Path,
        dpath: &Path,
    ) -> Result<(), CopyError> {
        let read_err = |source| CopyError::Io {
            path: spath.to_path_buf(),
            source,
        };
        let mut xattrs = Vec::new();
        for attr in sys::llistxattr_at(src, sname).map_err(read_err)? {
            // Overlay internals describe the layer, not the file.
            if attr.to_bytes().starts_with(b"trusted.overlay.") {
                continue;
            }
            if let Some(value) = sys::lgetxattr_at(src, sname, &attr).map_err(read_err)? {
                xattrs.push((attr, value));
            }
        }
        if let Some(plan) = &self.defer {
            let rel = dpath
                .strip_prefix(self.dst_path)
                .unwrap_or(dpath)
                .to_path_buf();
            // A higher layer's directory merged over a lower one: its metadata wins.
            plan.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entries
                .insert(
                    rel,
                    Pending {
                        st: *st,
                        xattrs,
                        source: spath.to_path_buf(),
                    },
                );
            return Ok(());
        }
        if set_meta(dst, dname, st, &xattrs, self.shift, spath, dpath)? {
            self.shifted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The copy's directory was moved and a symlink put at its path after the copy opened
    /// it: replacing a lower layer's entries must act on the opened directory, never on
    /// what the path now leads to.
    #[test]
    fn replacing_entries_never_follows_a_swapped_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let at = |p: &str| tmp.path().join(p);
        // The higher layer: a file `a` and a file `d` replacing what is below.
        fs::create_dir(at("upper")).expect("mkdir");
        fs::write(at("upper/a"), b"new").expect("write");
        fs::write(at("upper/d"), b"new").expect("write");
        // The copy so far (a lower layer's `a` and `d/x`), and the victim the path now reaches.
        for root in ["copy", "victim"] {
            fs::create_dir_all(at(&format!("{root}/d"))).expect("mkdir");
            fs::write(at(&format!("{root}/a")), root).expect("write");
            fs::write(at(&format!("{root}/d/x")), root).expect("write");
        }
        let open = |p: &str| nix::fcntl::open(&at(p), dir_flags(), Mode::empty()).expect("open");
        let dst_root = open("copy");
        std::os::unix::fs::symlink(at("victim"), at("swapped")).expect("symlink");
        let swapped = at("swapped");
        let mut plan = Plan::default();
        let copier = Copier {
            shift: Shift { to: 0, range: 0 },
            links: Mutex::new(HashMap::new()),
            dst_root,
            dst_path: &swapped,
            entries: AtomicU64::new(0),
            shifted: AtomicU64::new(0),
            merging: AtomicBool::new(true),
            progress: None,
            defer: Some(Mutex::new(&mut plan)),
            data: Data::Copy,
        };
        copier
            .copy_dir(open("upper"), open("copy"), &at("upper"), Path::new(""))
            .expect("copy");
        assert_eq!(fs::read(at("copy/a")).expect("read"), b"new");
        assert_eq!(fs::read(at("copy/d")).expect("read"), b"new");
        assert_eq!(fs::read(at("victim/a")).expect("victim/a"), b"victim");
        assert_eq!(fs::read(at("victim/d/x")).expect("victim/d/x"), b"victim");
    }
}
