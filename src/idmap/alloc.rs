//! Persistent, locked reservations of one id block per container name.
//!
//! The reservations live in `STATE_DIR/ranges.json`, rewritten atomically under an
//! exclusive `flock` on `STATE_DIR/ranges.lock` (a separate file: the rename replaces the
//! state file's inode). Readers need no lock: they see the old file or the new one.
//!
//! As root, blocks come from a [`Pool`] (default: 0x10000-id blocks from 0x10000 up to
//! 2^31), with equal uid and gid blocks. As an unprivileged user, blocks come only from
//! that user's `/etc/subuid` and `/etc/subgid` ranges, which `newuidmap` will accept.

use super::range::{DEFAULT_BLOCK, IdRange, RangeError};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "ranges.json";
const LOCK_FILE: &str = "ranges.lock";
const FORMAT_VERSION: u32 = 1;

/// The end (exclusive) of the default root pool: 2^31.
pub const ROOT_POOL_END: u64 = 1 << 31;

/// One container's ids: a uid block and a gid block (equal as root).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub name: String,
    pub uids: IdRange,
    pub gids: IdRange,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {source}")]
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
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AllocError + '_ {
    move |source| AllocError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where blocks may come from: `block`-sized blocks laid from the start of each range.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pool {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub block: u32,
}

impl Pool {
    /// One range shared by uids and gids (the root pool): reservations get equal blocks.
    pub fn new(range: IdRange, block: u32) -> Result<Self, RangeError> {
        if block == 0 {
            return Err(RangeError::Empty);
        }
        Ok(Pool {
            uids: vec![range],
            gids: vec![range],
            block,
        })
    }

    /// The default root pool: blocks of 0x10000 from 0x10000 up to 2^31.
    pub fn root_default() -> Self {
        let range = IdRange {
            start: DEFAULT_BLOCK,
            len: (ROOT_POOL_END - u64::from(DEFAULT_BLOCK)) as u32,
        };
        Pool {
            uids: vec![range],
            gids: vec![range],
            block: DEFAULT_BLOCK,
        }
    }

    /// The subordinate ids of `user` (matched by name or uid) in `subuid` and `subgid`
    /// files; an error saying what to add when either holds less than one block.
    pub fn from_subids(
        subuid: &Path,
        subgid: &Path,
        user: Option<&str>,
        uid: u32,
        block: u32,
    ) -> Result<Self, AllocError> {
        let uids = subid_ranges(subuid, user, uid, block)?;
        let gids = subid_ranges(subgid, user, uid, block)?;
        Ok(Pool { uids, gids, block })
    }

    /// The pool of the calling user: the root default as root, else its subids.
    pub fn for_current_user() -> Result<Self, AllocError> {
        if crate::dirs::is_root() {
            return Ok(Pool::root_default());
        }
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        Pool::from_subids(
            Path::new("/etc/subuid"),
            Path::new("/etc/subgid"),
            name.as_deref(),
            uid.as_raw(),
            DEFAULT_BLOCK,
        )
    }

    fn symmetric(&self) -> bool {
        self.uids == self.gids
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |r: &[IdRange]| {
            r.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.symmetric() {
            write!(f, "pool {}", list(&self.uids))
        } else {
            write!(f, "uids {} / gids {}", list(&self.uids), list(&self.gids))
        }
    }
}

/// The ranges of `user`/`uid` in a subuid-format file (`name_or_uid:start:count`).
fn subid_ranges(
    file: &Path,
    user: Option<&str>,
    uid: u32,
    block: u32,
) -> Result<Vec<IdRange>, AllocError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_at(file)(e)),
    };
    let uid_str = uid.to_string();
    let mut mine = Vec::new();
    let mut highest_end: u64 = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        let Ok(range) = IdRange::new(start, count) else {
            continue;
        };
        highest_end = highest_end.max(range.end());
        if owner == uid_str || Some(owner) == user {
            mine.push(range);
        }
    }
    let have: u64 = mine.iter().map(|r| u64::from(r.len)).sum();
    if !mine.iter().any(|r| r.len >= block) {
        // Suggest a block-aligned range past everyone else's.
        let b = u64::from(block);
        let start = highest_end.max(0x10_0000).div_ceil(b) * b;
        let who = user.map_or(uid_str.clone(), str::to_string);
        let flag = if file.ends_with("subgid") {
            "--add-subgids"
        } else {
            "--add-subuids"
        };
        return Err(AllocError::TooFewSubids {
            suggest: format!("{who}:{start}:{}", 16 * b),
            usermod: format!("usermod {flag} {start}-{} {who}", start + 16 * b - 1),
            user: who,
            file: file.to_path_buf(),
            have,
            need: block,
        });
    }
    Ok(mine)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    version: u32,
    reservations: Vec<Reservation>,
}

/// The reservations in one state directory, handed out from one pool.
#[derive(Clone, Debug)]
pub struct Allocator {
    dir: PathBuf,
    pool: Pool,
}

impl Allocator {
    /// Reservations kept in `state_dir` (created if missing), new blocks from `pool`.
    pub fn open(state_dir: impl Into<PathBuf>, pool: Pool) -> Result<Self, AllocError> {
        let dir = state_dir.into();
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(Allocator { dir, pool })
    }

    /// The calling user's allocator: `warren::dirs::state_dir()` and
    /// [`Pool::for_current_user`].
    pub fn for_current_user() -> Result<Self, AllocError> {
        Allocator::open(crate::dirs::state_dir(), Pool::for_current_user()?)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The block reserved for `name`, reserving a free one first if it has none. The same
    /// name always gets the same block back.
    pub fn alloc(&self, name: &str) -> Result<Reservation, AllocError> {
        check_name(name)?;
        self.update(|reservations| {
            if let Some(r) = reservations.iter().find(|r| r.name == name) {
                return Ok((r.clone(), false));
            }
            let (uids, gids) = self.free_block(name, reservations)?;
            let r = Reservation {
                name: name.to_string(),
                uids,
                gids,
            };
            reservations.push(r.clone());
            Ok((r, true))
        })
    }

    /// The reservation of `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<Reservation>, AllocError> {
        Ok(self.list()?.into_iter().find(|r| r.name == name))
    }

    /// Releases `name`'s block and returns what it held.
    pub fn free(&self, name: &str) -> Result<Reservation, AllocError> {
        self.update(|reservations| {
            let i = reservations
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| AllocError::NotFound(name.to_string()))?;
            Ok((reservations.remove(i), true))
        })
    }

    /// Every reservation, by name.
    pub fn list(&self) -> Result<Vec<Reservation>, AllocError> {
        self.read()
    }

    fn read(&self) -> Result<Vec<Reservation>, AllocError> {
        let path = self.state_file();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let state: State = serde_json::from_slice(&data).map_err(|source| AllocError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if state.version != FORMAT_VERSION {
            return Err(AllocError::Version {
                path,
                version: state.version,
            });
        }
        Ok(state.reservations)
    }

    /// Runs `f` on the reservations under the lock; writes them back when it says so.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut Vec<Reservation>) -> Result<(T, bool), AllocError>,
    ) -> Result<T, AllocError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        let _lock: nix::fcntl::Flock<File> =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io_at(&lock_path)(e.into()))?;
        let mut reservations = self.read()?;
        let (out, changed) = f(&mut reservations)?;
        if changed {
            reservations.sort_by(|a, b| a.name.cmp(&b.name));
            let state = State {
                version: FORMAT_VERSION,
                reservations,
            };
            let path = self.state_file();
            let data = serde_json::to_vec_pretty(&state).map_err(|source| AllocError::Corrupt {
                path: path.clone(),
                source,
            })?;
            crate::atomic::write(&path, &data).map_err(io_at(&path))?;
        }
        Ok(out)
    }

    /// The first free block (first fit), equal for uids and gids when the pool is.
    fn free_block(
        &self,
        name: &str,
        taken: &[Reservation],
    ) -> Result<(IdRange, IdRange), AllocError> {
        let block = self.pool.block;
        let exhausted = || AllocError::Exhausted {
            name: name.to_string(),
            block,
            pool: self.pool.to_string(),
        };
        let uid_taken: Vec<IdRange> = taken.iter().map(|r| r.uids).collect();
        let gid_taken: Vec<IdRange> = taken.iter().map(|r| r.gids).collect();
        if self.pool.symmetric() {
            let both: Vec<IdRange> = uid_taken.into_iter().chain(gid_taken).collect();
            let b = first_fit(&self.pool.uids, block, &both).ok_or_else(exhausted)?;
            return Ok((b, b));
        }
        let uids = first_fit(&self.pool.uids, block, &uid_taken).ok_or_else(exhausted)?;
        let gids = first_fit(&self.pool.gids, block, &gid_taken).ok_or_else(exhausted)?;
        Ok((uids, gids))
    }
}

/// The lowest `block`-sized block, laid from the start of a pool range, overlapping none
/// of `taken`. Jumps past each collision, so it is O(reservations²) at worst.
fn first_fit(pool: &[IdRange], block: u32, taken: &[IdRange]) -> Option<IdRange> {
    for range in pool {
        let b = u64::from(block);
        let mut start = u64::from(range.start);
        while start + b <= range.end() {
            let candidate = IdRange::new(start as u32, block).ok()?;
            match taken
                .iter()
                .filter(|t| t.overlaps(&candidate))
                .map(|t| t.end())
                .max()
            {
                None => return Some(candidate),
                // Next block boundary of this range at or past the collision's end.
                Some(end) => {
                    let steps = (end - u64::from(range.start)).div_ceil(b);
                    start = u64::from(range.start) + steps * b;
                }
            }
        }
    }
    None
}

fn check_name(name: &str) -> Result<(), AllocError> {
    if name.is_empty()
        || name.len() > 255
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(AllocError::InvalidName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u32, len: u32) -> IdRange {
        IdRange::new(start, len).unwrap()
    }

    #[test]
    fn first_fit_skips_taken_blocks_and_stays_in_pool() {
        let pool = [r(0x10000, 0x30000)];
        assert_eq!(first_fit(&pool, 0x10000, &[]), Some(r(0x10000, 0x10000)));
        let taken = [r(0x10000, 0x10000), r(0x20005, 1)];
        assert_eq!(first_fit(&pool, 0x10000, &taken), Some(r(0x30000, 0x10000)));
        let full = [r(0x10000, 0x30000)];
        assert_eq!(first_fit(&pool, 0x10000, &full), None);
    }

    #[test]
    fn subids_by_name_or_uid_and_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subuid");
        std::fs::write(
            &f,
            "alice:100000:65536\n1001:165536:65536\nbob:231072:100\n",
        )
        .unwrap();
        let alice = subid_ranges(&f, Some("alice"), 1000, 0x10000).unwrap();
        assert_eq!(alice, vec![r(100000, 65536)]);
        let by_uid = subid_ranges(&f, None, 1001, 0x10000).unwrap();
        assert_eq!(by_uid, vec![r(165536, 65536)]);
        let err = subid_ranges(&f, Some("bob"), 1002, 0x10000).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bob:1048576:1048576"), "{msg}");
        assert!(msg.contains(&f.display().to_string()), "{msg}");
    }

    #[test]
    fn alloc_is_stable_distinct_and_freeable() {
        let dir = tempfile::tempdir().unwrap();
        let a =
            Allocator::open(dir.path(), Pool::new(r(0x10000, 0x20000), 0x10000).unwrap()).unwrap();
        let x = a.alloc("x").unwrap();
        let y = a.alloc("y").unwrap();
        assert_eq!(x.uids, x.gids);
        assert!(!x.uids.overlaps(&y.uids));
        assert_eq!(a.alloc("x").unwrap(), x);
        assert!(matches!(a.alloc("z"), Err(AllocError::Exhausted { .. })));
        assert_eq!(a.free("x").unwrap(), x);
        assert!(matches!(a.free("x"), Err(AllocError::NotFound(_))));
        assert_eq!(a.alloc("z").unwrap().uids, x.uids);
        assert_eq!(a.get("y").unwrap(), Some(y));
        assert!(a.alloc("a/b").is_err());
    }
}
