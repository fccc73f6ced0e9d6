//! Which repositories of a registry hold a blob warren pushed: `STORE/registry-sources.json`,
//! so a push to another repository of the same registry mounts the blob from there
//! instead of uploading it again. Only a hint (a registry may have deleted the blob since;
//! the mount then fails and the blob is uploaded), bounded in size, replaced atomically.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::registry::RegistryError;

const FILE: &str = "registry-sources.json";
const LOCK: &str = "registry-sources.lock";
/// Blobs remembered (the oldest are forgotten first).
const MAX_BLOBS: usize = 4096;
/// Repositories remembered per blob (the most recent).
const MAX_REPOS: usize = 8;
const MAX_FILE: u64 = 8 << 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    /// `HOST[:PORT]` of the registry's API.
    host: String,
    digest: String,
    /// Oldest first.
    repos: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Sources {
    /// Least recently recorded first.
    blobs: Vec<Entry>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |err| RegistryError::Io {
        path: path.into(),
        err,
    }
}

fn read(path: &Path) -> Result<Sources, RegistryError> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sources::default()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut data = Vec::new();
    file.take(MAX_FILE)
        .read_to_end(&mut data)
        .map_err(io(path))?;
    // A damaged hint file is not worth failing a push for: start again.
    Ok(serde_json::from_slice(&data).unwrap_or_else(|e| {
        tracing::warn!(
            "{}: {e}; forgetting which repositories hold which blobs",
            path.display()
        );
        Sources::default()
    }))
}

/// The repositories of `host` other than `except` known to hold `digest`, most recent first.
pub fn holders(store_dir: &Path, host: &str, digest: &str, except: &str) -> Vec<String> {
    let path = store_dir.join(FILE);
    let sources = read(&path).unwrap_or_default();
    sources
        .blobs
        .iter()
        .find(|e| e.host == host && e.digest == digest)
        .map(|e| {
            e.repos
                .iter()
                .rev()
                .filter(|r| *r != except && is_repository(r))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A repository name as the distribution spec allows (what goes into a mount's query).
fn is_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
}

/// Records that `repo` at `host` holds each of `digests`.
pub fn record(
    store_dir: &Path,
    host: &str,
    repo: &str,
    digests: &[String],
) -> Result<(), RegistryError> {
    let lock_path = store_dir.join(LOCK);
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    // Two pushes at once: one read-modify-write after the other, no update lost.
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(&lock_path)(e.into()))?;
    let path: PathBuf = store_dir.join(FILE);
    let mut sources = read(&path)?;
    for d in digests {
        let at = sources
            .blobs
            .iter()
            .position(|e| e.host == host && e.digest == *d);
        let mut entry = match at {
            Some(i) => sources.blobs.remove(i),
            None => Entry {
                host: host.into(),
                digest: d.clone(),
                repos: Vec::new(),
            },
        };
        entry.repos.retain(|r| r != repo);
        entry.repos.push(repo.into());
        let extra = entry.repos.len().saturating_sub(MAX_REPOS);
        entry.repos.drain(..extra);
        sources.blobs.push(entry);
    }
    let extra = sources.blobs.len().saturating_sub(MAX_BLOBS);
    sources.blobs.drain(..extra);
    let data = serde_json::to_vec(&sources).map_err(|e| io(&path)(std::io::Error::other(e)))?;
    crate::atomic::write(&path, &data).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_holders_are_bounded_and_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let blob = "sha256:aa".to_string();
        assert!(holders(d, "h:1", &blob, "x").is_empty());
        record(d, "h:1", "a", std::slice::from_ref(&blob)).unwrap();
        record(d, "h:1", "b", std::slice::from_ref(&blob)).unwrap();
        record(d, "h:2", "c", std::slice::from_ref(&blob)).unwrap();
        assert_eq!(holders(d, "h:1", &blob, "x"), ["b", "a"]);
        assert_eq!(holders(d, "h:1", &blob, "b"), ["a"]);
        assert_eq!(holders(d, "h:2", &blob, "x"), ["c"]);
        for i in 0..MAX_REPOS + 3 {
            record(d, "h:1", &format!("r{i}"), std::slice::from_ref(&blob)).unwrap();
        }
        let all = holders(d, "h:1", &blob, "x");
        assert_eq!(all.len(), MAX_REPOS);
        assert_eq!(all[0], format!("r{}", MAX_REPOS + 2));
        let many: Vec<String> = (0..MAX_BLOBS + 5).map(|i| format!("sha256:{i}")).collect();
        record(d, "h:3", "z", &many).unwrap();
        assert!(
            holders(d, "h:1", &blob, "x").is_empty(),
            "the oldest forgotten"
        );
        assert_eq!(holders(d, "h:3", &many[MAX_BLOBS + 4], "x"), ["z"]);
        record(d, "h:4", "a&from=b", std::slice::from_ref(&blob)).unwrap();
        assert!(
            holders(d, "h:4", &blob, "x").is_empty(),
            "not a repository name"
        );
        std::fs::write(d.join(FILE), b"{not json").unwrap();
        assert!(holders(d, "h:3", "sha256:1", "x").is_empty());
        record(d, "h:3", "z", std::slice::from_ref(&blob)).unwrap();
        assert_eq!(holders(d, "h:3", &blob, "x"), ["z"]);
    }
}
