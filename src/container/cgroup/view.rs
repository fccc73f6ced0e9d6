//! What a container's `cgroup` mount shows: its own cgroup in each hierarchy it joined,
//! found from the host's `/proc/self/mountinfo`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::{Cgroup, CgroupError, Version};

/// One hierarchy of a container's cgroup as its `cgroup` mount shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HierarchyView {
    /// Its name under the mount ("memory", "cpu,cpuacct", "unified"); empty on a unified
    /// v2 host, whose one hierarchy is the mount itself.
    pub name: String,
    /// The container's own directory in it, on the host (a bind source; never the root).
    pub dir: PathBuf,
    /// `cgroup` or `cgroup2`.
    pub fstype: &'static str,
    /// v1: the options naming the hierarchy (its controllers, `name=`), as the host mounts
    /// it, for a mount of it in the container's cgroup namespace; empty for cgroup2.
    pub data: String,
}

/// What a container's `cgroup` mount shows: its own cgroup in each hierarchy it joined,
/// and the links the host has beside them (`cpu` -> `cpu,cpuacct`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountView {
    pub hierarchies: Vec<HierarchyView>,
    /// (name, target) of each link to one of `hierarchies`.
    pub links: Vec<(String, String)>,
}

impl Cgroup {
    /// The view of this cgroup for the container's `cgroup` mount, from the host's mounts
    /// (`/proc/self/mountinfo`); empty for a no-op cgroup.
    pub fn mount_view(&self) -> Result<MountView, CgroupError> {
        if self.is_noop() {
            return Ok(MountView::default());
        }
        let path = PathBuf::from("/proc/self/mountinfo");
        let info = crate::sys::read_proc(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            source,
        })?;
        self.mount_view_in(&info)
    }

    fn mount_view_in(&self, mountinfo: &str) -> Result<MountView, CgroupError> {
        let mut view = MountView::default();
        let mut parent = None;
        let mounts = mounts(mountinfo);
        let root = std::fs::canonicalize(&self.root).map_err(|source| CgroupError::Io {
            path: self.root.clone(),
            source,
        })?;
        for dir in &self.dirs {
            let point = self.hierarchy_of(dir);
            let below = dir.strip_prefix(&point).unwrap_or(dir);
            let real = match (self.version, self.real_name(&point)) {
                (Some(Version::V1), Some(name)) if point != self.root => root.join(name),
                _ => root.clone(),
            };
            let Some((fstype, options)) = cgroup_mount(&mounts, &real) else {
                return Err(CgroupError::Unsupported {
                    controller: real.display().to_string(),
                    message: "not a cgroup mount in /proc/self/mountinfo".into(),
                });
            };
            let name = match self.version {
                Some(Version::V2) => String::new(),
                _ => {
                    parent = real.parent().map(Path::to_path_buf);
                    real.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                }
            };
            let data = match fstype {
                "cgroup" => hierarchy_options(&options),
                _ => String::new(),
            };
            view.hierarchies.push(HierarchyView {
                name,
                dir: real.join(below),
                fstype,
                data,
            });
        }
        // Links such as cpu -> cpu,cpuacct, to the hierarchies shown.
        for entry in parent
            .iter()
            .flat_map(std::fs::read_dir)
            .flatten()
            .flatten()
        {
            // Only links (the entry's type comes with the listing: no call for the rest).
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if view.hierarchies.iter().any(|h| h.name == target) {
                let name = entry.file_name().to_string_lossy().into_owned();
                view.links.push((name, target));
            }
        }
        view.links.sort();
        Ok(view)
    }
}

/// The filesystem type (`cgroup` or `cgroup2`) and superblock options of the mount at
/// `point` in a mountinfo text (the last one there: it is the one visible).
fn cgroup_mount(mounts: &[(Cow<'_, str>, &str)], point: &Path) -> Option<(&'static str, String)> {
    let mut found = None;
    for (mount_point, right) in mounts {
        if Path::new(mount_point.as_ref()) != point {
            continue;
        }
        let mut fields = right.split(' ');
        let fstype = match fields.next() {
            Some("cgroup") => "cgroup",
            Some("cgroup2") => "cgroup2",
            _ => {
                found = None;
                continue;
            }
        };
        let options = fields.nth(1).unwrap_or_default().to_string();
        found = Some((fstype, options));
    }
    found
}

/// Each mount of `mountinfo`, in order: (mount point, the fields after ` - `). Parsed
/// once per view: a host running many containers has hundreds of mounts.
fn mounts(mountinfo: &str) -> Vec<(Cow<'_, str>, &str)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let point = if point.contains('\\') {
                Cow::Owned(unescape(point))
            } else {
                Cow::Borrowed(point)
            };
            Some((point, right))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The options of a v1 superblock that name its hierarchy (controllers, `name=`, `none`):
/// mounting it again with exactly these gives the same hierarchy. `release_agent` and the
/// flags are left out (only the initial namespaces may set them).
fn hierarchy_options(superblock: &str) -> String {
    superblock
        .split(',')
        .filter(|o| {
            !matches!(
                *o,
                "rw" | "ro"
                    | "noprefix"
                    | "xattr"
                    | "clone_children"
                    | "cpuset_v2_mode"
                    | "favordynmods"
                    | "nofavordynmods"
                    | ""
            ) && !o.starts_with("release_agent=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found_in_mountinfo_with_their_options() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,memory
60 23 0:41 / /mnt/over rw - cgroup cgroup rw,pids
61 23 0:42 / /mnt/over rw - tmpfs tmpfs rw
";
        let get = |p: &str| cgroup_mount(&mounts(info), Path::new(p));
        assert_eq!(
            get("/sys/fs/cgroup/cpu,cpuacct"),
            Some(("cgroup", "rw,cpu,cpuacct".into()))
        );
        assert_eq!(get("/sys/fs/cgroup/unified").map(|m| m.0), Some("cgroup2"));
        assert_eq!(
            get("/sys/fs/cgroup/with space").map(|m| m.1),
            Some("rw,memory".into())
        );
        // Not a cgroup mount, or one hidden by a later mount.
        assert_eq!(get("/sys/fs/cgroup"), None);
        assert_eq!(get("/mnt/over"), None);
        assert_eq!(hierarchy_options("rw,cpu,cpuacct"), "cpu,cpuacct");
        assert_eq!(
            hierarchy_options("rw,xattr,release_agent=/x,name=systemd"),
            "name=systemd"
        );
        assert_eq!(
            hierarchy_options("rw,noprefix,release_agent=/sbin/x,cpuset"),
            "cpuset"
        );
    }
}
