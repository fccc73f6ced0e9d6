//! What interrupted registry pulls and pushes leave in `STORE/registry-blobs`: partial
//! downloads kept to be resumed (`HEX.part`, with `HEX.lock`), finished blobs a killed
//! pull did not import (`HEX.PID.N`), push scratch. The next pull and `warren store gc`
//! remove what is stale.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::RegistryError;
use super::pull::BLOB_DIR;
use crate::store::Store;

/// A partial download untouched this long is abandoned: the next pull, or `store gc`,
/// removes it.
pub const STALE_PART: Duration = Duration::from_secs(24 * 3600);

/// What interrupted pulls and pushes left in `STORE/registry-blobs`: removes `.part`
/// files (and their locks) untouched for [`STALE_PART`] that no pull holds, and the
/// finished blobs and push scratch of processes that are gone. Returns the files removed.
pub fn clean_blobs(store: &Store) -> Result<u64, RegistryError> {
    clean_dir(&store.dir().join(BLOB_DIR), STALE_PART)
}

pub(super) fn clean_dir(dir: &Path, max_age: Duration) -> Result<u64, RegistryError> {
    let io = |err| RegistryError::Io {
        path: dir.into(),
        err,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= max_age);
        removed += if let Some(hex) = name.strip_suffix(".part") {
            if old {
                remove_unlocked(&path, &dir.join(format!("{hex}.lock")))
            } else {
                0
            }
        } else if let Some(hex) = name.strip_suffix(".lock") {
            if old && !dir.join(format!("{hex}.part")).exists() {
                remove_unlocked(&path, &path)
            } else {
                0
            }
        } else {
            u64::from(owner_gone(&name) && remove_any(&path))
        };
    }
    Ok(removed)
}

/// Removes `path` (and `lock`) when no pull holds `lock` (a missing lock is free);
/// returns the files removed.
fn remove_unlocked(path: &Path, lock: &Path) -> u64 {
    use nix::fcntl::{Flock, FlockArg};
    let held = match File::open(lock) {
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Some(held),
            Err(_) => return 0,
        },
        Err(_) => None,
    };
    let mut gone = u64::from(fs::remove_file(path).is_ok());
    if held.is_some() && lock != path {
        gone += u64::from(fs::remove_file(lock).is_ok());
    }
    gone
}

fn remove_any(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).is_ok(),
        Ok(_) => fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// Whether `name` is a pull's finished blob (`HEX.PID.N`), a push's layer
/// (`push-PID.tar.gz`) or a store push's scratch (`artifact-PID.N`) whose process is gone.
fn owner_gone(name: &str) -> bool {
    let pid = if let Some(rest) = name.strip_prefix("push-") {
        rest.strip_suffix(".tar.gz")
    } else if let Some(rest) = name.strip_prefix("artifact-") {
        rest.split('.').next()
    } else {
        let mut parts = name.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(hex), Some(pid), Some(_), None) if hex.len() >= 64 => Some(pid),
            _ => None,
        }
    };
    pid.and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_parts_and_dead_pulls_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hex = |c: char| c.to_string().repeat(64);
        let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        let write = |name: String, aged: bool| {
            let f = File::create(d.join(&name)).unwrap();
            if aged {
                f.set_modified(old).unwrap();
            }
            name
        };
        let stale = write(format!("{}.part", hex('a')), true);
        let stale_lock = write(format!("{}.lock", hex('a')), true);
        let fresh = write(format!("{}.part", hex('b')), false);
        let held = write(format!("{}.part", hex('c')), true);
        let held_lock = write(format!("{}.lock", hex('c')), true);
        // A pull still holds c's lock: its part stays, however old.
        let _lock = nix::fcntl::Flock::lock(
            File::open(d.join(&held_lock)).unwrap(),
            nix::fcntl::FlockArg::LockExclusive,
        )
        .unwrap();
        // No process has pid 0x7fffffff; this one is alive.
        let dead = write(format!("{}.2147483647.0", hex('d')), false);
        let mine = write(format!("{}.{}.0", hex('e'), std::process::id()), false);
        let other = write("unrelated".into(), true);
        assert_eq!(clean_dir(d, STALE_PART).unwrap(), 3);
        for gone in [&stale, &stale_lock, &dead] {
            assert!(!d.join(gone).exists(), "{gone} stays");
        }
        for kept in [&fresh, &held, &held_lock, &mine, &other] {
            assert!(d.join(kept).exists(), "{kept} went");
        }
    }
}
