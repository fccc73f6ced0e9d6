//! Which state directory each warren table belongs to: `/run/warren-tables/TABLE` holds
//! its path, written before the tables are first loaded and removed after they are
//! removed. A state directory deleted with its networks still defined leaves tables no
//! record calls for; any state directory's `network prune` removes those (and only
//! those) whose recorded directory is gone. A table without a record (an older warren's,
//! or loaded by hand) is never touched.

use super::{FirewallError, apply, nft};
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The registry (root's /run: no other user writes it).
pub const REGISTRY: &str = "/run/warren-tables";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FirewallError {
    let path = path.to_path_buf();
    move |source| FirewallError::Io { path, source }
}

/// Records `state_dir` as the owner of tables `table` (a no-op when it is already).
pub fn record(table: &str, state_dir: &Path) -> Result<(), FirewallError> {
    if !nft::valid_table(table) {
        return Err(FirewallError::BadTable(table.to_string()));
    }
    let state_dir = std::path::absolute(state_dir).map_err(io(state_dir))?;
    let path = Path::new(REGISTRY).join(table);
    if owner(table).as_deref() == Some(state_dir.as_path()) {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(REGISTRY)
        .map_err(io(Path::new(REGISTRY)))?;
    let text = state_dir.as_os_str().as_encoded_bytes();
    crate::atomic::write(&path, text).map_err(io(&path))
}

/// The state directory recorded for tables `table`.
pub fn owner(table: &str) -> Option<PathBuf> {
    if !nft::valid_table(table) {
        return None;
    }
    let bytes = std::fs::read(Path::new(REGISTRY).join(table)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Some(PathBuf::from(text))
}

/// Drops the record of tables `table` (gone already is not an error).
pub fn forget(table: &str) -> Result<(), FirewallError> {
    if !nft::valid_table(table) {
        return Err(FirewallError::BadTable(table.to_string()));
    }
    let path = Path::new(REGISTRY).join(table);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}

/// Removes the tables of every recorded state directory that no longer exists, and
/// their records. `table_of` names the tables a state directory has: a record whose
/// directory would not own its table's name is left alone. Returns the tables removed.
pub fn prune_stale(table_of: &dyn Fn(&Path) -> String) -> Result<Vec<String>, FirewallError> {
    let _host = apply::host_lock()?;
    let entries = match std::fs::read_dir(REGISTRY) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(Path::new(REGISTRY))(e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let table = entry.file_name().to_string_lossy().into_owned();
        let Some(dir) = owner(&table) else { continue };
        let gone =
            matches!(std::fs::symlink_metadata(&dir), Err(e) if e.kind() == ErrorKind::NotFound);
        if !gone || table_of(&dir) != table {
            continue;
        }
        // An empty ruleset: the transaction that deletes both tables.
        apply::load(&table, &super::Ruleset::default())?;
        forget(&table)?;
        tracing::info!(table, state_dir = %dir.display(), "removed the tables of a state directory that is gone");
        removed.push(table);
    }
    removed.sort();
    Ok(removed)
}
