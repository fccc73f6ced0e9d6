//! The record of what was applied to an INTERMEDIATE directory (`shift-mount.json`).

use super::spec::{Method, MountError, io_at};
use crate::atomic;
use crate::idmap::range::Shift;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// The record of what was applied to an INTERMEDIATE directory.
pub const RECORD: &str = "shift-mount.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum State {
    /// A walk or copy was started; a crash here means: do it again.
    Shifting,
    Shifted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) version: u32,
    pub(super) method: Method,
    pub(super) shift: Shift,
    pub(super) lowers: Vec<PathBuf>,
    pub(super) state: State,
}

pub(super) const RECORD_VERSION: u32 = 1;

impl Record {
    pub(super) fn load(intermediate: &Path) -> Result<Option<Record>, MountError> {
        let path = intermediate.join(RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| MountError::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MountError::Io { path, source: e }),
        }
    }

    pub(super) fn store(&self, intermediate: &Path) -> Result<(), MountError> {
        let path = intermediate.join(RECORD);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MountError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic::write(&path, &bytes).map_err(io_at(&path))
    }
}
