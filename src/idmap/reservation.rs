//! A reserved id block and what can go wrong reserving one: the data and errors that
//! [`super::pool`] (where blocks come from) and [`super::alloc`] (who holds which) share.

use super::range::{IdRange, RangeError};
use super::subid::{Entry, SubidError};
use std::io;
use std::path::{Path, PathBuf};

/// The version of `ranges.json` this code reads and writes.
pub(super) const FORMAT_VERSION: u32 = 1;

/// One container's ids: a uid block and a gid block (equal as root).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub name: String,
    pub uids: IdRange,
    pub gids: IdRange,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: unsupported format version {version} (expected {FORMAT_VERSION})")]
    Version { path: PathBuf, version: u32 },
    #[error("invalid reservation name {0:?}: 1-255 bytes, no '/' or control characters")]
    InvalidName(String),
    #[error("no reservation named {0:?}")]
    NotFound(String),
    #[error(
        "user {user} has {have} subordinate ids in {file} but one container needs {need}: \
         add the line `{suggest}` to {file} (as root: `{usermod}`)"
    )]
    TooFewSubids {
        user: String,
        file: PathBuf,
        have: u64,
        need: u32,
        suggest: String,
        usermod: String,
    },
    #[error("no free block of {block:#x} ids left for {name:?} in {pool}")]
    Exhausted {
        name: String,
        block: u32,
        pool: String,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error(transparent)]
    Subids(#[from] SubidError),
    #[error(
        "{file} has no `warren:` line holding a whole block of {block:#x} ids: the root id pool \
         is warren's lines in /etc/subuid and /etc/subgid"
    )]
    NoPool { file: PathBuf, block: u32 },
    #[error(
        "the root id pool {pool} overlaps {} {other} of user {}: that user could map \
         those container ids with newuidmap",
        file.display(), other.owner
    )]
    PoolOverlap {
        file: PathBuf,
        pool: IdRange,
        other: Entry,
    },
    #[error(
        "a host account named `warren` (uid {uid}) exists: newuidmap would let it map every \
         id of the root pool (the `warren:` lines of /etc/subuid and /etc/subgid); rename \
         or remove that account"
    )]
    PoolOwnerIsAccount { uid: u32 },
    #[error("cannot register {range} for warren: it holds no whole {block:#x}-aligned block")]
    RegisterTooSmall { range: IdRange, block: u32 },
    #[error("cannot register {range} for warren: it overlaps {} {other}", file.display())]
    RegisterOverlap {
        file: PathBuf,
        range: IdRange,
        other: Entry,
    },
    #[error(
        "no room left for a root id pool above the lines of {} and {}",
        subuid.display(), subgid.display()
    )]
    NoRoomForPool { subuid: PathBuf, subgid: PathBuf },
    #[error("{name:?} holds uids {uids} / gids {gids}, outside the {pool}")]
    OutsidePool {
        name: String,
        uids: IdRange,
        gids: IdRange,
        pool: String,
    },
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AllocError + '_ {
    move |source| AllocError::Io {
        path: path.to_path_buf(),
        source,
    }
}
