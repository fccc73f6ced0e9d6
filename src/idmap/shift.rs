//! The shifting engine: re-owns a tree from one id range to another.
//!
//! STUB: the public types and signature below are the contract other modules build on
//! (mount::shifted, store::extract callers); the implementation lands with shift-own.

use super::range::{RangeError, Shift};
use std::path::{Path, PathBuf};

/// What to shift and how.
#[derive(Clone, Debug)]
pub struct ShiftOptions {
    pub shift: Shift,
    /// Descend into other filesystems mounted below the root (off by default).
    pub cross_mounts: bool,
    /// Report what would change without changing anything.
    pub dry_run: bool,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Record every changed entry in the report (for `-v`).
    pub record_changes: bool,
}

impl ShiftOptions {
    pub fn new(shift: Shift) -> Self {
        ShiftOptions {
            shift,
            cross_mounts: false,
            dry_run: false,
            threads: 0,
            record_changes: false,
        }
    }
}

/// One changed entry: old and new owner.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    pub path: PathBuf,
    pub from: (u32, u32),
    pub to: (u32, u32),
}

/// An entry that could not be shifted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failure {
    pub path: PathBuf,
    pub error: String,
}

/// The outcome of a walk: counts, the changes (when recorded) and every failure.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ShiftReport {
    /// Entries visited.
    pub entries: u64,
    /// Entries whose owner or id-carrying xattrs changed.
    pub shifted: u64,
    pub changes: Vec<Change>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// Shifts every entry under `root` (including `root`); `progress` is called with the
/// number of entries done so far. Per-entry failures go in the report, not the error.
pub fn shift_tree(
    root: &Path,
    opts: &ShiftOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<ShiftReport, ShiftError> {
    let _ = (opts, progress);
    Err(ShiftError::Open {
        path: root.to_path_buf(),
        source: std::io::Error::other("idmap::shift is not implemented yet"),
    })
}
