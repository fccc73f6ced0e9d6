//! Store maintenance: `verify` (every chunk's hash, every index's references) and `gc`
//! (remove chunks no index references, rewriting packs that hold some). gc takes the store lock exclusively, so it waits
//! for imports and extracts in progress: an import never loses a chunk it wrote or reused.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{ChunkId, Result, Store, chunks, io_err, pack};

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
    /// Corrupt chunks a repair removed (hex ids), so the next import or pull of an
    /// image that needs them writes them afresh.
    pub removed_chunks: Vec<String>,
    /// Unreadable packs a repair removed (paths).
    pub removed_packs: Vec<String>,
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

/// One stored copy of a chunk.
#[derive(Clone, Copy)]
enum Stored {
    Loose,
    /// (pack, entry) in `Chunks::packs()`.
    Packed(usize, usize),
}

/// Every stored copy of every chunk: packs first (in `Chunks` order), then loose files.
fn copies(all: &chunks::Chunks, loose: &[(ChunkId, u64)]) -> Vec<(ChunkId, Stored)> {
    let packed = all.packs().iter().enumerate().flat_map(|(p, pack)| {
        pack.entries
            .iter()
            .enumerate()
            .map(move |(e, entry)| (entry.id, Stored::Packed(p, e)))
    });
    packed
        .chain(loose.iter().map(|(id, _)| (*id, Stored::Loose)))
        .collect()
}

/// Checks every chunk and index. With `repair`, removes every corrupt chunk (rewriting
/// the packs that hold one) and every unreadable pack: an import or pull reuses any chunk
/// the store holds, so a bad one must go before a re-import can write it again. Indexes
/// are never touched.
pub(crate) fn verify(store: &Store, repair: bool) -> Result<VerifyReport> {
    // Shared lock: a concurrent gc would make chunks vanish under us. A repair takes it
    // exclusively: no import may be reusing a chunk it is about to remove.
    let _lock = store.lock(repair)?;
    let mut problems = Vec::new();
    let all = store.chunks()?;
    let loose = chunks::list(store)?;
    let copies = copies(&all, &loose);
    let on_disk: HashSet<ChunkId> = copies.iter().map(|c| c.0).collect();
    let mut removed_packs = Vec::new();
    for (path, error) in &all.bad_packs {
        problems.push(Problem {
            object: format!("pack {}", path.display()),
            error: error.clone(),
        });
        if repair {
            remove(path)?;
            removed_packs.push(path.display().to_string());
        }
    }
    let names = store.names()?;
    let uses = image_uses(store, &names, &on_disk, &mut problems);
    let bad = bad_copies(store, &all, &copies);
    let removed_chunks = report_bad(store, &all, &bad, repair, &mut problems)?;
    let unusable: HashSet<ChunkId> = bad.iter().map(|b| b.id).collect();
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
        chunks: on_disk.len() as u64,
        problems,
        damaged_images,
        removed_chunks,
        removed_packs,
    })
}

/// The chunks each readable image references; a problem for each unreadable index and
/// for each referenced chunk the store does not hold.
fn image_uses<'a>(
    store: &Store,
    names: &'a [String],
    on_disk: &HashSet<ChunkId>,
    problems: &mut Vec<Problem>,
) -> Vec<(&'a String, HashSet<ChunkId>)> {
    let mut uses = Vec::new();
    for name in names {
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
    uses
}

/// A stored copy of a chunk that cannot be used.
struct BadCopy {
    id: ChunkId,
    copy: Stored,
    error: String,
    /// It was read and its bytes are bad (not merely unreadable).
    corrupt: bool,
}

/// Every copy that does not read back as its chunk, sorted by id (read in parallel).
fn bad_copies(store: &Store, all: &chunks::Chunks, copies: &[(ChunkId, Stored)]) -> Vec<BadCopy> {
    let mut bad: Vec<BadCopy> = copies
        .par_iter()
        .filter_map(|&(id, copy)| {
            let (data, shown) = match copy {
                Stored::Loose => {
                    let path = store.chunk_path(&id);
                    (
                        fs::read(&path).map_err(io_err(&path)),
                        path.display().to_string(),
                    )
                }
                Stored::Packed(p, e) => {
                    let (pack, entry) = (&all.packs()[p], &all.packs()[p].entries[e]);
                    let shown = format!("{} at {}", pack.path.display(), entry.offset);
                    (all.read_packed(p, e), shown)
                }
            };
            let (error, corrupt) = match data {
                Ok(data) => (chunks::decode(&id, 0, &data).err()?, true),
                Err(e) => (e.to_string(), false),
            };
            Some(BadCopy {
                id,
                copy,
                error: format!("{error} ({shown})"),
                corrupt,
            })
        })
        .collect();
    bad.sort_by_key(|b| b.id);
    bad
}

/// A problem for each bad copy; with `repair`, removes the corrupt ones (rewriting the
/// packs that hold one). Returns the ids removed.
fn report_bad(
    store: &Store,
    all: &chunks::Chunks,
    bad: &[BadCopy],
    repair: bool,
    problems: &mut Vec<Problem>,
) -> Result<Vec<String>> {
    let mut removed_chunks = Vec::new();
    let mut drop_from: Vec<HashSet<usize>> = vec![HashSet::new(); all.packs().len()];
    for b in bad {
        problems.push(Problem {
            object: format!("chunk {}", b.id),
            error: b.error.clone(),
        });
        if repair && b.corrupt {
            match b.copy {
                Stored::Loose => remove(&store.chunk_path(&b.id))?,
                Stored::Packed(p, e) => {
                    drop_from[p].insert(e);
                }
            }
            removed_chunks.push(b.id.to_string());
        }
    }
    for (pack, dropped) in all.packs().iter().zip(&drop_from) {
        if !dropped.is_empty() {
            let keep: Vec<usize> = (0..pack.entries.len())
                .filter(|e| !dropped.contains(e))
                .collect();
            rewrite(store, pack, &keep)?;
        }
    }
    if repair {
        pack::update_list(&store.packs_dir())?;
    }
    Ok(removed_chunks)
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(p)(e)),
        _ => Ok(()),
    }
}

/// Replaces `pack` by a pack of its entries `keep` (none: no pack), durably: the new
/// pack is published before the old one goes, so a crash in between leaves both (gc
/// then drops the copies). Returns the bytes this freed.
fn rewrite(store: &Store, pack: &pack::Pack, keep: &[usize]) -> Result<u64> {
    let w = pack::PackWriter::new(&store.packs_dir());
    if !keep.is_empty() {
        let file = fs::File::open(&pack.path).map_err(io_err(&pack.path))?;
        for &e in keep {
            let entry = &pack.entries[e];
            w.append(entry.id, &pack.read(&file, entry)?)?;
        }
    }
    let new = w.finish()?;
    let new_size = match new.first() {
        Some((tmp, _)) => fs::metadata(tmp).map_err(io_err(tmp))?.len(),
        None => 0,
    };
    chunks::publish(&new, chunks::Durability::Files)?;
    remove(&pack.path)?;
    Ok(pack.size.saturating_sub(new_size))
}

pub(crate) fn gc(store: &Store) -> Result<GcReport> {
    let _lock = store.lock(true)?;
    let mut live = HashSet::new();
    // An index we cannot read could reference anything: refuse rather than guess.
    for name in store.names()? {
        let index = store.index(&name)?;
        live.extend(index.chunks.iter().map(|c| c.id));
    }
    let all = store.chunks()?;
    let chunks::Scan {
        chunks: loose,
        mut temps,
    } = chunks::scan(store)?;
    temps.extend(index_temps(store)?);
    temps.extend(pack_temps(store)?);
    // One copy of each live chunk stays: the first, packs before loose files.
    let mut kept = HashSet::new();
    let mut keep: Vec<Vec<usize>> = vec![Vec::new(); all.packs().len()];
    let mut removed_bytes = 0;
    let mut before = HashSet::new();
    for (id, copy) in copies(&all, &loose) {
        before.insert(id);
        let stays = live.contains(&id) && kept.insert(id);
        match copy {
            Stored::Packed(p, e) if stays => keep[p].push(e),
            Stored::Packed(..) => {}
            Stored::Loose if stays => {}
            Stored::Loose => {
                let path = store.chunk_path(&id);
                removed_bytes += fs::metadata(&path).map_or(0, |m| m.len());
                remove(&path)?;
            }
        }
    }
    for (pack, keep) in all.packs().iter().zip(&keep) {
        if keep.len() < pack.entries.len() {
            removed_bytes += rewrite(store, pack, keep)?;
        }
    }
    // Also heals a list a crash left stale.
    pack::update_list(&store.packs_dir())?;
    // With the exclusive lock held no import is running: every temporary file is stale.
    let removed_temp_files = temps.len() as u64;
    for t in &temps {
        remove(t)?;
    }
    Ok(GcReport {
        kept_chunks: kept.len() as u64,
        removed_chunks: (before.len() - kept.len()) as u64,
        removed_bytes,
        removed_temp_files,
    })
}

/// Temporary pack files a killed import (or gc) left behind.
fn pack_temps(store: &Store) -> Result<Vec<PathBuf>> {
    let dir = store.packs_dir();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err(&dir))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    Ok(out)
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
