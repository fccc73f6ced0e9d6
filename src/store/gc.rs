//! Store maintenance: `verify` (every chunk's hash, every index's references) and `gc`
//! (remove chunks no index references). gc takes the store lock exclusively, so it waits
//! for imports and extracts in progress: an import never loses a chunk it wrote or reused.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{ChunkId, Result, Store, chunks, io_err};

/// One bad object found by `verify`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    /// The chunk (`chunk <id>`) or image (`image <name>`) at fault.
    pub object: String,
    pub error: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub images: u64,
    pub chunks: u64,
    pub problems: Vec<Problem>,
    /// Images that reference a missing or corrupt chunk: re-import (or pull) each to
    /// restore it (after a repair, for a corrupt one).
    pub damaged_images: Vec<String>,
    /// Corrupt chunk files a repair removed (hex ids), so the next import or pull of an
    /// image that needs them writes them afresh.
    pub removed_chunks: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GcReport {
    pub kept_chunks: u64,
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    /// Temporary files left by killed imports.
    pub removed_temp_files: u64,
}

/// Checks every chunk and index. With `repair`, removes every corrupt chunk file: an
/// import or pull reuses any chunk whose file exists, so a bad one must go before a
/// re-import can write it again. Indexes are never touched.
pub(crate) fn verify(store: &Store, repair: bool) -> Result<VerifyReport> {
    // Shared lock: a concurrent gc would make chunks vanish under us. A repair takes it
    // exclusively: no import may be reusing a chunk it is about to remove.
    let _lock = store.lock(repair)?;
    let mut problems = Vec::new();
    let on_disk: HashSet<ChunkId> = chunks::list(store)?.into_iter().map(|(id, _)| id).collect();
    let names = store.names()?;
    let mut uses: Vec<(&String, HashSet<ChunkId>)> = Vec::new();
    for name in &names {
        match store.index(name) {
            Ok(index) => {
                let ids: HashSet<ChunkId> = index.chunks.iter().map(|c| c.id).collect();
                let mut missing: Vec<ChunkId> = ids
                    .iter()
                    .filter(|id| !on_disk.contains(id))
                    .copied()
                    .collect();
                missing.sort();
                for id in missing {
                    problems.push(Problem {
                        object: format!("chunk {id}"),
                        error: format!("missing, referenced by image {name}"),
                    });
                }
                uses.push((name, ids));
            }
            Err(e) => problems.push(Problem {
                object: format!("image {name}"),
                error: e.to_string(),
            }),
        }
    }
    let mut ids: Vec<ChunkId> = on_disk.iter().copied().collect();
    ids.sort();
    // (id, error, whether the file was read and its bytes are bad)
    let mut bad: Vec<(ChunkId, String, bool)> = ids
        .par_iter()
        .filter_map(|id| {
            let path = store.chunk_path(id);
            let (error, corrupt) = match fs::read(&path) {
                Ok(data) => (chunks::decode(id, 0, &data).err()?, true),
                Err(e) => (e.to_string(), false),
            };
            Some((*id, format!("{error} ({})", path.display()), corrupt))
        })
        .collect();
    bad.sort_by_key(|b| b.0);
    let mut removed_chunks = Vec::new();
    for (id, error, corrupt) in &bad {
        problems.push(Problem {
            object: format!("chunk {id}"),
            error: error.clone(),
        });
        if repair && *corrupt {
            let path = store.chunk_path(id);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(&path)(e));
                }
                _ => removed_chunks.push(id.to_string()),
            }
        }
    }
    let unusable: HashSet<ChunkId> = bad.iter().map(|b| b.0).collect();
    let damaged_images = uses
        .iter()
        .filter(|(_, ids)| {
            ids.iter()
                .any(|id| !on_disk.contains(id) || unusable.contains(id))
        })
        .map(|(name, _)| name.to_string())
        .collect();
    Ok(VerifyReport {
        images: names.len() as u64,
        chunks: ids.len() as u64,
        problems,
        damaged_images,
        removed_chunks,
    })
}

pub(crate) fn gc(store: &Store) -> Result<GcReport> {
    let _lock = store.lock(true)?;
    let mut live = HashSet::new();
    // An index we cannot read could reference anything: refuse rather than guess.
    for name in store.names()? {
        let index = store.index(&name)?;
        live.extend(index.chunks.iter().map(|c| c.id));
    }
    let chunks::Scan {
        chunks: all,
        mut temps,
    } = chunks::scan(store)?;
    temps.extend(index_temps(store)?);
    let mut report = GcReport {
        kept_chunks: 0,
        removed_chunks: 0,
        removed_bytes: 0,
        removed_temp_files: 0,
    };
    let remove = |p: &PathBuf| match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(p)(e)),
        _ => Ok(()),
    };
    for (id, len) in all {
        if live.contains(&id) {
            report.kept_chunks += 1;
        } else {
            remove(&store.chunk_path(&id))?;
            report.removed_chunks += 1;
            report.removed_bytes += len;
        }
    }
    // With the exclusive lock held no import is running: every temporary file is stale.
    for t in temps {
        remove(&t)?;
        report.removed_temp_files += 1;
    }
    Ok(report)
}

/// Temporary files of index writes (`.TAG.idx.tmp.*`) a killed import left behind.
fn index_temps(store: &Store) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![store.images_dir()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().map_err(io_err(e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if name.starts_with('.') && name.contains(".tmp.") {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}
