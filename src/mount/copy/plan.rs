//! The deferred metadata of a rootless copy ([`Plan`]), its wire form for the rootless
//! helper, and applying it from inside the user namespace.

use super::meta::{CopyError, changes, dir_flags, kind_of, set_meta};
use crate::idmap::range::Shift;
use crate::mount::wire::Bytes;
use crate::sys;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
/// One entry's metadata, read from the source, to apply later.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) st: FileStat,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
    pub(super) source: PathBuf,
}

/// The metadata of a copy made by [`copy_deferred`](super::copy_deferred): the top-most
/// layer's entry at each path, relative to the copy's root ("" for the root).
#[derive(Debug, Default)]
pub struct Plan {
    pub(super) entries: BTreeMap<PathBuf, Pending>,
}

/// A [`Plan`] entry as the rootless helper's request carries it ([`crate::mount::rootless`]):
/// only what [`apply_plan`] reads.
#[derive(serde::Serialize, serde::Deserialize)]
struct WireEntry {
    path: Bytes,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
    xattrs: Vec<(Bytes, Bytes)>,
    source: Bytes,
}

impl serde::Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter().map(|(path, p)| {
            WireEntry {
                path: Bytes::from(path.as_path()),
                mode: p.st.st_mode,
                uid: p.st.st_uid,
                gid: p.st.st_gid,
                atime: (p.st.st_atime, p.st.st_atime_nsec),
                mtime: (p.st.st_mtime, p.st.st_mtime_nsec),
                xattrs: p
                    .xattrs
                    .iter()
                    .map(|(k, v)| (Bytes(k.as_bytes().to_vec()), Bytes(v.clone())))
                    .collect(),
                source: Bytes::from(p.source.as_path()),
            }
        }))
    }
}

impl<'de> serde::Deserialize<'de> for Plan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut plan = Plan::default();
        for e in <Vec<WireEntry> as serde::Deserialize>::deserialize(d)? {
            // SAFETY: `stat` is plain integers, for which all-zero is a valid value; the
            // fields apply_plan reads are filled in below.
            let mut st: FileStat = unsafe { std::mem::zeroed() };
            st.st_mode = e.mode;
            st.st_uid = e.uid;
            st.st_gid = e.gid;
            (st.st_atime, st.st_atime_nsec) = e.atime;
            (st.st_mtime, st.st_mtime_nsec) = e.mtime;
            let mut xattrs = Vec::with_capacity(e.xattrs.len());
            for (name, value) in e.xattrs {
                let name = CString::new(name.0).map_err(serde::de::Error::custom)?;
                xattrs.push((name, value.0));
            }
            let source = e.source.to_path_buf();
            plan.entries
                .insert(e.path.to_path_buf(), Pending { st, xattrs, source });
        }
        Ok(plan)
    }
}

impl Plan {
    /// Forgets `rel` and everything under it (a higher layer replaced or removed it).
    pub(super) fn forget(&mut self, rel: &Path) {
        // Paths order by component, so what is under `rel` directly follows it.
        let under: Vec<PathBuf> = self
            .entries
            .range::<Path, _>((std::ops::Bound::Included(rel), std::ops::Bound::Unbounded))
            .map(|(path, _)| path)
            .take_while(|path| path.starts_with(rel))
            .cloned()
            .collect();
        for path in under {
            self.entries.remove(&path);
        }
    }
}

/// Applies a [`Plan`] to the copy at `dst` with `shift` (ids as the calling namespace sees
/// them); returns the entries whose ids `counted` (the same shift seen from the host) changes.
pub fn apply_plan(dst: &Path, plan: &Plan, shift: Shift, counted: Shift) -> Result<u64, CopyError> {
    let root = nix::fcntl::open(dst, dir_flags(), Mode::empty()).map_err(|e| CopyError::Io {
        path: dst.to_path_buf(),
        source: e.into(),
    })?;
    let mut shifted = 0;
    let mut linked = HashSet::new();
    // Reversed: children before their directory.
    for (rel, p) in plan.entries.iter().rev() {
        let dpath = dst.join(rel);
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => (Path::new(""), OsStr::new(".")),
        };
        // The copy is ours and not yet visible, but never follow a link inside it anyway.
        let dir = match sys::openat2(
            root.as_fd(),
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS,
        ) {
            Ok(dir) => dir,
            Err(source) => {
                return Err(CopyError::Io {
                    path: dpath,
                    source,
                });
            }
        };
        let now = match nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(now) => now,
            Err(e) => {
                return Err(CopyError::Io {
                    path: dpath,
                    source: e.into(),
                });
            }
        };
        // Not what the plan recorded (the copy changed under us): leave it alone.
        if kind_of(&now) != kind_of(&p.st) {
            continue;
        }
        // Hardlinks: one inode, set (and counted) once.
        if kind_of(&now) != SFlag::S_IFDIR
            && now.st_nlink > 1
            && !linked.insert((now.st_dev, now.st_ino))
        {
            continue;
        }
        set_meta(
            dir.as_fd(),
            name,
            &p.st,
            &p.xattrs,
            shift,
            &p.source,
            &dpath,
        )?;
        shifted += u64::from(changes(&p.st, &p.xattrs, counted));
    }
    Ok(shifted)
}
