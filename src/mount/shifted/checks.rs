//! Where the directories of a mount are: path resolution, mountinfo, and the check that
//! LOWER, INTERMEDIATE and MOUNTPOINT do not overlap.

use super::spec::{MountError, io_at};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: the
/// longest existing prefix is canonicalised and the rest appended (`..` applied lexically:
/// a directory that does not exist is no symlink).
pub(super) fn resolve(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let parts: Vec<_> = abs.components().collect();
    for i in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..i].iter().collect();
        match std::fs::canonicalize(&prefix) {
            Ok(mut out) => {
                for part in &parts[i..] {
                    match part {
                        std::path::Component::Normal(name) => out.push(name),
                        std::path::Component::ParentDir => {
                            out.pop();
                        }
                        _ => {}
                    }
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// Refuses LOWER, INTERMEDIATE and MOUNTPOINT directories that are the same as, inside,
/// or contain one another (the writes would land in a lower layer, or the view would
/// cover its own layers). Compared by canonical path, by (dev, ino), and by the place in
/// the filesystem (mount root + path below the mount), which sees through bind mounts.
pub(super) fn check_separate(
    lowers: &[PathBuf],
    intermediate: &Path,
    mountpoint: &Path,
) -> Result<(), MountError> {
    let mut dirs: Vec<(&'static str, &Path)> =
        lowers.iter().map(|l| ("LOWER", l.as_path())).collect();
    dirs.push(("INTERMEDIATE", intermediate));
    dirs.push(("MOUNTPOINT", mountpoint));
    let table = mounts()?;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let overlap = |inner_role, inner: &Path, outer_role, outer: &Path| {
        let (i, o) = (fs_location(inner, &table), fs_location(outer, &table));
        let same = inner == outer
            || id(inner).is_some_and(|x| id(outer) == Some(x))
            || (i.is_some() && i == o);
        let inside = inner.starts_with(outer)
            || i.zip(o).is_some_and(|((idev, ipath), (odev, opath))| {
                idev == odev && ipath.starts_with(opath)
            });
        (same || inside).then(|| MountError::Overlap {
            inner_role,
            inner: inner.to_path_buf(),
            relation: if same {
                "is the same directory as"
            } else {
                "is inside"
            },
            outer_role,
            outer: outer.to_path_buf(),
        })
    };
    for (i, &(a_role, a)) in dirs.iter().enumerate() {
        for &(b_role, b) in &dirs[i + 1..] {
            // Several lower layers may share a tree; the kernel judges those.
            if a_role == "LOWER" && b_role == "LOWER" {
                continue;
            }
            if let Some(e) = overlap(a_role, a, b_role, b).or_else(|| overlap(b_role, b, a_role, a))
            {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Where the canonical `path` is in its filesystem: (device, path from the filesystem's
/// root), from the mount it is under. A directory seen through a bind mount has the same
/// location as through its original path.
fn fs_location(path: &Path, table: &[MountInfo]) -> Option<(String, PathBuf)> {
    // The deepest mount point above `path`; the last of equals is the one on top.
    let mount = table
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())?;
    let below = path.strip_prefix(&mount.point).ok()?;
    Some((mount.dev.clone(), mount.root.join(below)))
}

/// True when `path` is itself a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> Result<bool, MountError> {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Ok(false);
    };
    Ok(mount_points()?.contains(&canon))
}

/// Every mount point in this mount namespace.
fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    Ok(mounts()?.into_iter().map(|m| m.point).collect())
}

/// One line of /proc/self/mountinfo.
pub(super) struct MountInfo {
    pub(super) point: PathBuf,
    /// The directory of the filesystem mounted there (`/` unless a bind of a subtree).
    pub(super) root: PathBuf,
    /// `major:minor` of the filesystem.
    pub(super) dev: String,
    /// "FSTYPE from SOURCE", for messages.
    pub(super) what: String,
}

/// Every mount in this mount namespace, in mount order.
pub(super) fn mounts() -> Result<Vec<MountInfo>, MountError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(io_at(info))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?.to_string();
            let root = PathBuf::from(unescape(f.next()?));
            let point = PathBuf::from(unescape(f.next()?));
            let mut fs = l.split_once(" - ")?.1.split(' ');
            let what = format!(
                "{} from {}",
                fs.next()?,
                unescape(fs.next()?).to_string_lossy()
            );
            Some(MountInfo {
                point,
                root,
                dev,
                what,
            })
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/var/a\\040b\\134c"), "/var/a b\\c");
        assert_eq!(unescape("/plain\\9"), "/plain\\9");
    }
}
