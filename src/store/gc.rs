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

pub(crate) fn verify(store: &Store) -> Result<VerifyReport> {
    // Shared lock: a concurrent gc would make chunks vanish under us.
    let _lock = store.lock(false)?;
    let mut problems = Vec::new();
    let on_disk: HashSet<ChunkId> = chunks::list(store)?.into_iter().map(|(id, _)| id).collect();
    let names = store.names()?;
    for name in &names {
        match store.index(name) {
            Ok(index) => {
                let mut missing: Vec<ChunkId> = index
                    .chunks
                    .iter()
                    .map(|c| c.id)
                    .filter(|id| !on_disk.contains(id))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                missing.sort();
                for id in missing {
                    problems.push(Problem {
                        object: format!("chunk {id}"),
                        error: format!("missing, referenced by image {name}"),
                    });
                }
            }
            Err(e) => problems.push(Problem {
                object: format!("image {name}"),
                error: e.to_string(),
            }),
        }
    }
    let mut ids: Vec<ChunkId> = on_disk.into_iter().collect();
    ids.sort();
    let mut bad: Vec<Problem> = ids
        .par_iter()
        .filter_map(|id| {
            let path = store.chunk_path(id);
            let err = match fs::read(&path) {
                Ok(data) => chunks::decode(id, 0, &data).err(),
                Err(e) => Some(e.to_string()),
            };
            err.map(|error| Problem {
                object: format!("chunk {id}"),
                error: format!("{error} ({})", path.display()),
            })
        })
        .collect();
    bad.sort_by(|a, b| a.object.cmp(&b.object));
    problems.extend(bad);
    Ok(VerifyReport {
        images: names.len() as u64,
        chunks: ids.len() as u64,
        problems,
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
