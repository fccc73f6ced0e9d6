//! Compiled programs by content address: blake3 of the compiler format, the architecture
//! and the profile's JSON; in memory for this process and as files under the state dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use oci_spec::runtime::LinuxSeccomp;
use seccompiler::sock_filter;

use super::compile::{BPF_MAX_LEN, compile_uncached};
use super::{SeccompError, SeccompProgram};

/// Where [`compile_with_cache_report`] found the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    Memory,
    Disk,
    Compiled,
}

/// Compiles `profile`, reusing an earlier compile of the same profile from this process or
/// from the on-disk cache in [`cache_dir`].
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    compile_with_cache_report(profile, Some(&cache_dir())).map(|(program, _)| program)
}

/// `$state_dir/seccomp-cache`.
pub fn cache_dir() -> PathBuf {
    crate::dirs::state_dir().join("seccomp-cache")
}

/// The cache file for `profile` under `dir`: `<blake3 key>.bpf`.
pub fn cache_path(profile: &LinuxSeccomp, dir: &Path) -> Result<PathBuf, SeccompError> {
    Ok(dir.join(format!("{}.bpf", cache_key(profile)?.to_hex())))
}

/// Drops the in-process cache (the disk cache is kept).
pub fn clear_memory_cache() {
    memory().clear();
}

static MEMORY: LazyLock<Mutex<HashMap<[u8; 32], SeccompProgram>>> = LazyLock::new(Default::default);

fn memory() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], SeccompProgram>> {
    // A poisoned cache only means another thread panicked mid-insert of a complete value.
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Like [`compile`], with the disk cache in `cache_dir` (None: memory only), and telling where
/// the program came from. The disk cache is best effort: an unreadable, corrupt or unwritable
/// cache file only costs a compile.
pub fn compile_with_cache_report(
    profile: &LinuxSeccomp,
    cache_dir: Option<&Path>,
) -> Result<(SeccompProgram, CacheSource), SeccompError> {
    let key = cache_key(profile)?;
    if let Some(program) = memory().get(key.as_bytes()) {
        return Ok((program.clone(), CacheSource::Memory));
    }
    let path = cache_dir.map(|d| d.join(format!("{}.bpf", key.to_hex())));
    let loaded = path.as_deref().and_then(|p| {
        let bytes = std::fs::read(p).ok()?;
        let program = decode(&bytes, &key);
        if program.is_none() {
            tracing::warn!("ignoring corrupt seccomp cache file {}", p.display());
        }
        program
    });
    let (program, source) = match loaded {
        Some(program) => (program, CacheSource::Disk),
        None => {
            let program = compile_uncached(profile)?;
            if let Some(path) = &path {
                let stored = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| crate::atomic::write(path, &encode(&program, &key)));
                if let Err(e) = stored {
                    tracing::debug!("seccomp cache {} not written: {e}", path.display());
                }
            }
            (program, CacheSource::Compiled)
        }
    };
    memory().insert(*key.as_bytes(), program.clone());
    Ok((program, source))
}

/// Bumped whenever compilation changes, so old cache files are never reused.
const FORMAT: &[u8] = b"warren-seccomp-v1";
const MAGIC: &[u8; 8] = b"WRNBPF01";

/// blake3 over the compiler format, the target arch and the profile's JSON. The JSON is
/// canonical: serde writes the typed struct's fields in declaration order and it holds no maps.
fn cache_key(profile: &LinuxSeccomp) -> Result<blake3::Hash, SeccompError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(FORMAT);
    hasher.update(&[0]);
    hasher.update(std::env::consts::ARCH.as_bytes());
    hasher.update(&[0]);
    hasher.update(&serde_json::to_vec(profile)?);
    Ok(hasher.finalize())
}

/// Cache file: magic, flags u32, count u32, count × (code u16, jt u8, jf u8, k u32), then
/// blake3(key ‖ all of the above) so a torn or flipped file is never installed.
fn encode(program: &SeccompProgram, key: &blake3::Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + program.filter.len() * 8 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&program.flags.to_le_bytes());
    out.extend_from_slice(&(program.filter.len() as u32).to_le_bytes());
    for ins in program.filter.iter() {
        out.extend_from_slice(&ins.code.to_le_bytes());
        out.extend_from_slice(&[ins.jt, ins.jf]);
        out.extend_from_slice(&ins.k.to_le_bytes());
    }
    let sum = blake3::Hasher::new()
        .update(key.as_bytes())
        .update(&out)
        .finalize();
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(bytes: &[u8], key: &blake3::Hash) -> Option<SeccompProgram> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let flags = u32_at(8)?;
    let count = u32_at(12)? as usize;
    if count == 0 || count > BPF_MAX_LEN || bytes.len() != 16 + count * 8 + 32 {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    let expected = blake3::Hasher::new()
        .update(key.as_bytes())
        .update(body)
        .finalize();
    if expected.as_bytes() != sum {
        return None;
    }
    let filter = body[16..]
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(SeccompProgram { filter, flags })
}
