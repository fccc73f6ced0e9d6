//! Writing file content with holes where the image's blocks are all zeros.

use std::fs::File;

/// The unit of holes: a file system block.
pub(super) const HOLE: u64 = 4096;

/// Writes `data` at offset `at` of a file just created (so every byte not written reads as
/// zero), leaving out the pieces, cut at block boundaries, that are all zeros: whole blocks
/// of them become holes. Returns the offset just past the last byte written (`at` if none).
pub(super) fn write_sparse(file: &File, at: u64, data: &[u8]) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // The pending run of data to write: where it starts in `data`.
    let mut run: Option<usize> = None;
    let mut end = at;
    let mut i = 0;
    while i < data.len() {
        let pos = at + i as u64;
        let n = ((HOLE - pos % HOLE) as usize).min(data.len() - i);
        let zero = is_zero(&data[i..i + n]);
        match (zero, run) {
            (true, Some(start)) => {
                file.write_all_at(&data[start..i], at + start as u64)?;
                end = pos;
                run = None;
            }
            (false, None) => run = Some(i),
            _ => {}
        }
        i += n;
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], at + start as u64)?;
        end = at + data.len() as u64;
    }
    Ok(end)
}

pub(super) fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}
