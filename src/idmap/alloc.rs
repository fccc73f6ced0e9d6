//! Persistent, locked reservations of one id block per container name.
//!
//! The reservations live in `STATE_DIR/ranges.json`, rewritten atomically under an
//! exclusive `flock` on `STATE_DIR/ranges.lock` (a separate file: the rename replaces the
//! state file's inode). Readers need no lock: they see the old file or the new one.
//!
//! Blocks come from a [`Pool`]: as root the `warren:` lines of `/etc/subuid` and
//! `/etc/subgid` (see [`super::pool`]), with equal uid and gid blocks; as an unprivileged
//! user only that user's own lines, which `newuidmap` will accept. A reservation made
//! earlier is handed back only while it still lies inside the pool.

pub use super::pool::Pool;
use super::range::IdRange;
pub use super::reservation::{AllocError, Reservation};
use super::reservation::{FORMAT_VERSION, io_at};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;

const STATE_FILE: &str = "ranges.json";
const LOCK_FILE: &str = "ranges.lock";

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
                // Ids the pool no longer holds may now be another user's: never map them.
                if !self.pool.holds(r.uids, r.gids) {
                    return Err(AllocError::OutsidePool {
                        name: name.to_string(),
                        uids: r.uids,
                        gids: r.gids,
                        pool: self.pool.to_string(),
                    });
                }
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
