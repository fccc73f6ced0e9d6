//! The request and report of a shifted mount, its methods and errors.

use crate::idmap::range::Shift;
use crate::idmap::shift::ShiftError;
use crate::mount::copy::CopyError;
use crate::mount::idmapped::IdmapError;
use crate::mount::overlay::OverlayError;
use crate::mount::rootless::RootlessError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Test and operations knob: a comma-separated list of methods to treat as refused.
pub const DENY_ENV: &str = "WARREN_MOUNT_DENY";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Idmap,
    Metacopy,
    Copy,
}

impl Method {
    /// Fastest first: the order `auto` tries.
    pub const ALL: [Method; 3] = [Method::Idmap, Method::Metacopy, Method::Copy];

    pub fn name(self) -> &'static str {
        match self {
            Method::Idmap => "idmap",
            Method::Metacopy => "metacopy",
            Method::Copy => "copy",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| MountError::UnknownMethod(s.to_string()))
    }
}

/// What to mount.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// Lower layers, top-most first; never written.
    pub lowers: Vec<PathBuf>,
    /// Holds the container's writes and the record of the applied shift.
    pub intermediate: PathBuf,
    pub mountpoint: PathBuf,
    pub shift: Shift,
    /// `None`: the fastest method allowed (auto).
    pub method: Option<Method>,
    /// Re-shift an INTERMEDIATE recorded with another shift instead of refusing.
    pub reshift: bool,
    /// Methods to treat as refused (added to those in `WARREN_MOUNT_DENY`).
    pub deny: Vec<Method>,
}

impl MountSpec {
    pub fn new(
        lowers: Vec<PathBuf>,
        intermediate: PathBuf,
        mountpoint: PathBuf,
        shift: Shift,
    ) -> Self {
        MountSpec {
            lowers,
            intermediate,
            mountpoint,
            shift,
            method: None,
            reshift: false,
            deny: Vec::new(),
        }
    }
}

/// A method that was tried and refused.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub method: Method,
    pub error: String,
}

/// What a mount did.
#[derive(Clone, Debug, Serialize)]
pub struct MountReport {
    pub method: Method,
    /// Why this method: chosen, forced, recorded, or what refused the faster ones.
    pub reason: String,
    pub mountpoint: PathBuf,
    /// Where the shifted view is: the mountpoint, or `INTERMEDIATE/copy` when rootless.
    pub view: PathBuf,
    /// False only for a rootless copy (nothing could be mounted).
    pub mounted: bool,
    pub shift: Shift,
    /// Entries whose owner changed in this call (0 when nothing was walked).
    pub entries_shifted: u64,
    /// Whether this call walked (or copied) the tree.
    pub walked: bool,
    /// Faster methods that were refused, in order.
    pub refused: Vec<Attempt>,
    /// Wall time of the whole call, in microseconds.
    pub elapsed_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("unknown method {0:?}: expected auto, idmap, metacopy or copy")]
    UnknownMethod(String),
    #[error("no lower layer given")]
    NoLower,
    #[error("lower layer {path}")]
    Lower { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is already a mount point")]
    AlreadyMounted { path: PathBuf },
    #[error("{path} is not a mount point")]
    NotMounted { path: PathBuf },
    #[error(
        "{inner_role} {inner} {relation} {outer_role} {outer}: LOWER, INTERMEDIATE and MOUNTPOINT must be separate directories"
    )]
    Overlap {
        inner_role: &'static str,
        inner: PathBuf,
        /// "is the same directory as" or "is inside".
        relation: &'static str,
        outer_role: &'static str,
        outer: PathBuf,
    },
    #[error("{path} is not a view mounted by shift-mount: {reason}; left mounted")]
    NotAView { path: PathBuf, reason: String },
    #[error("{intermediate} was shifted with {recorded}, not {requested}")]
    ShiftMismatch {
        intermediate: PathBuf,
        recorded: Shift,
        requested: Shift,
    },
    #[error(
        "{intermediate} was set up with method {recorded}; it cannot be mounted with {requested}"
    )]
    MethodMismatch {
        intermediate: PathBuf,
        recorded: Method,
        requested: Method,
    },
    #[error("{intermediate} records lower layers {recorded:?}, not {requested:?}")]
    LowerMismatch {
        intermediate: PathBuf,
        recorded: Vec<PathBuf>,
        requested: Vec<PathBuf>,
    },
    #[error("unreadable record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("method {method} refused: {reason}")]
    Refused { method: Method, reason: String },
    #[error("no method could mount {mountpoint}: {}", summary(.refused))]
    AllRefused {
        mountpoint: PathBuf,
        refused: Vec<Attempt>,
    },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("shifting {path}")]
    Shift { path: PathBuf, source: ShiftError },
    #[error("shifting {path}: {count} entries failed, first: {first}")]
    ShiftFailures {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("rootless copy")]
    Rootless(#[source] Box<RootlessError>),
    #[error("cannot unmount {path}")]
    Unmount { path: PathBuf, source: io::Error },
}

pub(super) fn summary(refused: &[Attempt]) -> String {
    refused
        .iter()
        .map(|a| format!("{}: {}", a.method, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl MountError {
    /// True when trying a slower method may help (the kernel or filesystem refused this
    /// one); false for errors in the request or the directories themselves.
    pub(super) fn falls_back(&self) -> bool {
        matches!(
            self,
            MountError::Refused { .. } | MountError::Overlay(_) | MountError::Idmap(_)
        )
    }
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> MountError + '_ {
    move |source| MountError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The methods named in `WARREN_MOUNT_DENY`.
pub fn denied_from_env() -> Vec<Method> {
    std::env::var(DENY_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| m.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_by_name() {
        assert_eq!("metacopy".parse::<Method>().ok(), Some(Method::Metacopy));
        assert!("overlay".parse::<Method>().is_err());
    }
}
