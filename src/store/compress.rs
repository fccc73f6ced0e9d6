//! The store's compression policy: which chunk class a file's chunks are, which zstd
//! level and filter each class gets, and the encoding of a chunk file (optional filter
//! byte, then a zstd frame; docs/FORMAT.md). The import pipeline (`writer`) only asks
//! [`file_class`] and hands chunks to a [`ChunkCompressor`]. Readers do not depend on
//! any of it: every level decodes the same way.

use super::bcj;
use super::format::FILTER_X86;

/// What a chunk holds, which decides how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Packed small files.
    Packed,
    /// (Part of) a file of chunker::ALIGN bytes or more.
    File,
    /// (Part of) an x86-64 ELF file of chunker::ALIGN bytes or more: stored through the
    /// x86 branch filter (`bcj`).
    X86,
    /// (Part of) a file of [`BULK`] bytes or more that is not x86-64 ELF.
    Bulk,
}

/// Files this big are bulk data (package lists, databases, archives, logs): most of an
/// image's bytes sit in a few of them and they rarely change between versions, so their
/// chunks get the fastest level, where a higher one would cost most of the import's CPU
/// for a small share of its size.
pub const BULK: u64 = 4 << 20;

/// zstd level for chunks of packed small files (config files, scripts, small text:
/// where a high level pays, and a small share of the bytes).
pub const LEVEL_PACKED: i32 = 8;
/// zstd level for chunks of larger files that look like text (sources, lists, docs):
/// on them level 6 compresses as well as 8 (better, on Debian's package lists).
pub const LEVEL_TEXT: i32 = 6;
/// zstd level for chunks of larger files that look like binaries but are not x86-64 ELF
/// (data, message catalogs, and compressed files, which zstd detects and stores cheaply
/// at any level): higher levels gain ~1% of their size for 2-3x the CPU.
pub const LEVEL_BINARY: i32 = 3;
/// zstd level for chunks of x86-64 ELF files, after the branch filter: with it level 3
/// stores code about as small as level 7 without it, for less than half the CPU.
pub const LEVEL_X86: i32 = 3;
/// zstd level for chunks of bulk files.
pub const LEVEL_BULK: i32 = 1;

/// Whether `data` looks like text: at most 1% of every 4th byte outside printable
/// ASCII, tab, newline, return.
pub fn looks_like_text(data: &[u8]) -> bool {
    const fn odd_bytes() -> [bool; 256] {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = b >= 0x7f || (b < 0x20 && b != 9 && b != 10 && b != 13);
            b += 1;
        }
        t
    }
    const ODD: [bool; 256] = odd_bytes();
    let sampled = data.len().div_ceil(4);
    let mut odd = 0usize;
    for (i, &b) in data.iter().step_by(4).enumerate() {
        odd += usize::from(ODD[usize::from(b)]);
        // Binary data gives up within its first few hundred samples.
        if i & 63 == 63 && odd * 100 > sampled {
            return false;
        }
    }
    odd * 100 <= sampled
}

/// The zstd level for a new chunk of class `class`; for a [`Class::File`] chunk, by
/// whether its bytes look like text. Tuned on a Debian image and a new version of it to
/// keep the store at most casync's size and a new version's additions at most 0.8x
/// casync's for the least CPU (docs/BENCHMARKS.md). Readers do not care: any level
/// decodes the same way.
pub fn level_for(data: &[u8], class: Class) -> i32 {
    match class {
        Class::Packed => LEVEL_PACKED,
        Class::X86 => LEVEL_X86,
        Class::Bulk => LEVEL_BULK,
        Class::File if looks_like_text(data) => LEVEL_TEXT,
        Class::File => LEVEL_BINARY,
    }
}

/// The class of a file of `size` bytes (at least chunker::ALIGN) that starts with `head`.
pub fn file_class(head: &[u8], size: u64) -> Class {
    if bcj::is_x86_64_elf(head) {
        Class::X86
    } else if size >= BULK {
        Class::Bulk
    } else {
        Class::File
    }
}

/// Compresses chunks into chunk-file bytes, by their class. One per thread: it keeps a
/// zstd context per level in use (switching a context's level reallocates its tables).
#[derive(Default)]
pub struct ChunkCompressor {
    contexts: Vec<(i32, zstd::bulk::Compressor<'static>)>,
}

impl ChunkCompressor {
    /// Writes the chunk file of `data` (of class `class`) to `out` (cleared first): the
    /// filter byte if the class has one, then the zstd frame. `data` is filtered in place.
    pub fn encode(
        &mut self,
        data: &mut [u8],
        class: Class,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let level = level_for(data, class);
        self.encode_at(data, class, level, out)
    }

    /// As [`encode`](Self::encode), at zstd level `level` whatever the class (a store
    /// push to a registry recompresses its chunks at a high one; any level decodes).
    pub fn encode_at(
        &mut self,
        data: &mut [u8],
        class: Class,
        level: i32,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let at = match self.contexts.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                self.contexts.push((level, new_compressor(level)?));
                self.contexts.len() - 1
            }
        };
        let header = match class {
            Class::X86 => {
                bcj::encode(data);
                &[FILTER_X86][..]
            }
            Class::Packed | Class::File | Class::Bulk => &[][..],
        };
        out.clear();
        out.extend_from_slice(header);
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        // The frame goes right after the header, into spare capacity (no zero-filling).
        let mut frame = std::io::Cursor::new(&mut *out);
        frame.set_position(header.len() as u64);
        self.contexts[at].1.compress_to_buffer(data, &mut frame)?;
        Ok(())
    }
}

/// A compression context for chunks: no checksum (the chunk id is a BLAKE3 hash of the
/// bytes, which every reader checks), the content size recorded.
fn new_compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.include_checksum(false)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_by_chunk_class() {
        let text = b"def main():\n\treturn 0  # a comment\r\n".repeat(2000);
        let mut binary = text.clone();
        for b in binary.iter_mut().step_by(40) {
            *b = 0; // 2.5% of the bytes
        }
        assert_eq!(level_for(&text, Class::File), LEVEL_TEXT);
        assert_eq!(level_for(&binary, Class::File), LEVEL_BINARY);
        assert_eq!(level_for(&binary, Class::Packed), LEVEL_PACKED);
        assert_eq!(level_for(&text, Class::Packed), LEVEL_PACKED);
        assert_eq!(level_for(&text, Class::X86), LEVEL_X86);
        assert_eq!(level_for(&text, Class::Bulk), LEVEL_BULK);
        assert_eq!(level_for(&binary, Class::Bulk), LEVEL_BULK);
    }

    #[test]
    fn file_class_by_content_then_size() {
        let elf = std::fs::read("/proc/self/exe").unwrap();
        let text = b"Package: x\nVersion: 1\n".repeat(100);
        assert_eq!(file_class(&elf, BULK), Class::X86);
        assert_eq!(file_class(&elf, 4096), Class::X86);
        assert_eq!(file_class(&text, BULK - 1), Class::File);
        assert_eq!(file_class(&text, BULK), Class::Bulk);
    }
}
