//! cgroup v2 layout: one unified hierarchy; the controllers a container's limits need are
//! enabled down its path through `cgroup.subtree_control`.

use std::path::{Path, PathBuf};

use super::placement::{Placement, SUPERVISOR};
use super::resources::Setting;
use super::{CgroupError, mkdir};

/// The controllers whose files `linux.resources.unified` may name.
pub(super) const CONTROLLERS: &[&str] =
    &["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "misc"];

/// Makes the planned leaf (splitting the caller's cgroup first when planned); returns it.
pub(super) fn make(
    root: &Path,
    planned: &Placement,
    settings: &[Setting],
) -> Result<Vec<PathBuf>, CgroupError> {
    if let Some(dir) = &planned.split {
        split(dir)?;
    }
    let Some((_, _, leaf)) = planned.leaves.first() else {
        return Ok(vec![]);
    };
    let below = leaf.strip_prefix(root).map_err(|_| CgroupError::Path {
        path: leaf.display().to_string(),
        message: "not below the cgroup root",
    })?;
    make_path(root, below, settings)
}

/// Moves every process of `dir` into its `supervisor` leaf (podman's `--cgroups=split`):
/// a cgroup with processes cannot enable controllers for the container's leaf beside it.
fn split(dir: &Path) -> Result<(), CgroupError> {
    let supervisor = dir.join(SUPERVISOR);
    mkdir(&supervisor)?;
    let from = dir.join("cgroup.procs");
    let to = supervisor.join("cgroup.procs");
    // A few rounds, for processes forked meanwhile.
    for _ in 0..10 {
        let text = std::fs::read_to_string(&from).map_err(|source| CgroupError::Io {
            path: from.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            break;
        }
        for pid in text.split_whitespace() {
            match std::fs::write(&to, pid) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    return Err(CgroupError::Write {
                        controller: "cgroup.procs".into(),
                        path: to,
                        value: pid.into(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Creates the path on v2, enabling the controllers the settings need on every level above
/// the leaf; returns the leaf.
pub(super) fn make_path(
    root: &Path,
    path: &Path,
    settings: &[Setting],
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut needed: Vec<&str> = settings.iter().map(|s| s.controller).collect();
    needed.sort_unstable();
    needed.dedup();
    let mut dir = root.to_path_buf();
    for c in path.components() {
        for controller in &needed {
            enable(&dir, controller)?;
        }
        dir.push(c);
        mkdir(&dir)?;
    }
    Ok(vec![dir])
}

fn enable(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let available = dir.join("cgroup.controllers");
    let list = std::fs::read_to_string(&available).map_err(|source| CgroupError::Io {
        path: available.clone(),
        source,
    })?;
    if !list.split_whitespace().any(|c| c == controller) {
        return Err(CgroupError::Unsupported {
            controller: controller.into(),
            message: format!(
                "not available in {} (delegate it: systemd Delegate=yes)",
                available.display()
            ),
        });
    }
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(&subtree, format!("+{controller}")).map_err(|source| CgroupError::Write {
        controller: controller.into(),
        path: subtree,
        value: format!("+{controller}"),
        source,
    })
}
