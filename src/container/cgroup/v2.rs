//! cgroup v2 layout: one unified hierarchy; the controllers a container's limits need are
//! enabled down its path through `cgroup.subtree_control`.

use std::path::{Path, PathBuf};

use super::resources::Setting;
use super::{CgroupError, mkdir};

/// The controllers whose files `linux.resources.unified` may name.
pub(super) const CONTROLLERS: &[&str] =
    &["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "misc"];

/// Creates the path on v2, enabling the controllers the settings need on every level above
/// the leaf; returns the leaf.
pub(super) fn make(
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
