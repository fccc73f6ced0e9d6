//! cgroup v1 layout: one hierarchy per controller (or controller group) under the root,
//! the container's directory created in each.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{CgroupError, mkdir};

/// v1 hierarchies a container joins (those the host has), so its processes are accounted and
/// limited in each, and freezer lets destroy stop a fork bomb.
pub(super) const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
];

/// (controller, mount, real name: see [`real_name`]) for each hierarchy under a v1 root, one entry per distinct mount
/// (`cpu` and `cpuacct` are often links to one `cpu,cpuacct` hierarchy): the controllers'
/// first, by controller name, then every other one (a named `name=systemd` hierarchy, a
/// hybrid host's `unified` cgroup2), by its own name. The container joins them all, so
/// that each one it sees shows its own cgroup, never the caller's.
pub(super) fn hierarchies(root: &Path) -> Vec<(&'static str, PathBuf, OsString)> {
    let mut seen = Vec::new();
    let mut probed: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    let mut add = |name: &'static str, dir: PathBuf| {
        // The directory listing names the controllers' directories again.
        if probed.contains(&dir) {
            return;
        }
        probed.push(dir.clone());
        if !dir.join("cgroup.procs").exists() {
            return;
        }
        let real = real_name(&dir);
        if !seen.contains(&real) {
            seen.push(real.clone());
            out.push((name, dir, real.unwrap_or_default()));
        }
    };
    for controller in CONTROLLERS {
        add(controller, root.join(controller));
    }
    let mut others: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    others.sort();
    for dir in others {
        add("", dir);
    }
    out
}

/// The name of the hierarchy `dir` is, its link followed (`cpu` -> `cpu,cpuacct`). The
/// links sit next to the hierarchies, so one readlink does what canonicalize's walk of
/// every component would (this runs for each hierarchy on every container start).
pub(super) fn real_name(dir: &Path) -> Option<OsString> {
    match std::fs::read_link(dir) {
        Ok(target) => target.file_name().map(OsString::from),
        Err(_) => dir.file_name().map(OsString::from),
    }
}

/// Whether `root` holds a v1 hierarchy: a controller's first (one stat on most hosts).
pub(super) fn present(root: &Path) -> bool {
    CONTROLLERS
        .iter()
        .any(|c| root.join(c).join("cgroup.procs").exists())
        || !hierarchies(root).is_empty()
}

/// Makes each planned leaf (the directories from its base down when they are missing
/// too: the leaf alone first, most often the only one missing); returns the leaf
/// directories.
pub(super) fn make(
    leaves: &[(&'static str, PathBuf, PathBuf)],
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut made = Vec::new();
    for (controller, base, leaf) in leaves {
        match make_leaf(controller, base, leaf) {
            // A hierarchy of no controller (a named or the hybrid's cgroup2 one) it cannot
            // join is left out: the container's cgroup mount shows only those it joined.
            Err(e) if controller.is_empty() => {
                tracing::debug!(
                    "cgroup hierarchy {} left out: {}",
                    base.display(),
                    crate::error_line(&e)
                );
            }
            Err(e) => {
                for leaf in &made {
                    let _ = std::fs::remove_dir(leaf);
                }
                return Err(e);
            }
            Ok(()) => made.push(leaf.clone()),
        }
    }
    Ok(made)
}

/// Makes `leaf` below `base`. A new v1 cpuset has no cpus or mems, and no process can
/// join it until they are set: each cpuset directory made gets its parent's.
fn make_leaf(controller: &str, base: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let cpuset = controller == "cpuset";
    let below = leaf.strip_prefix(base).unwrap_or(leaf);
    let new = match mkdir(leaf) {
        Err(CgroupError::Create { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && below.parent().is_some() =>
        {
            let mut dir = base.to_path_buf();
            for c in below.components() {
                dir.push(c);
                if mkdir(&dir)? && cpuset {
                    inherit(&dir)?;
                }
            }
            return Ok(());
        }
        made => made?,
    };
    if cpuset {
        match new {
            true => inherit(leaf)?,
            // One made earlier (a client's, or a crash's) is filled in only where empty.
            false => ["cpuset.cpus", "cpuset.mems"]
                .into_iter()
                .try_for_each(|file| cpuset_value(leaf, file).map(drop))?,
        }
    }
    Ok(())
}

/// Gives `dir`, just made, its parent's cpuset cpus and mems.
fn inherit(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let value = cpuset_value(parent, file)?;
        let path = dir.join(file);
        std::fs::write(&path, &value).map_err(io_err(&path))?;
    }
    Ok(())
}

/// The cpuset `file` of `dir`: its own, else (empty: made but never filled in) its
/// parent's, written there first.
fn cpuset_value(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    let current = crate::sys::read_proc(&path).map_err(io_err(&path))?;
    let current = current.trim();
    match dir.parent() {
        Some(parent) if current.is_empty() && parent.join(file).exists() => {
            let value = cpuset_value(parent, file)?;
            std::fs::write(&path, &value).map_err(io_err(&path))?;
            Ok(value)
        }
        _ => Ok(current.to_string()),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, source }
}
