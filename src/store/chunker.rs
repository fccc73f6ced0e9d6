//! FastCDC over a stream fed piece by piece (file after file).
//!
//! Files smaller than [`ALIGN`] are packed: their bytes run together and are cut with
//! the [`SMALL`] sizes, so a directory of tiny files makes a few chunks and a new tiny
//! file disturbs a small chunk only. A file of [`ALIGN`] bytes or more starts and ends on
//! a chunk boundary, so it dedups like a whole file whatever its neighbours do (a new
//! file inserted next to it costs nothing), and is cut with the bigger [`LARGE`] sizes,
//! which compress better, make fewer chunk files and keep the index short. Bytes are buffered until a full
//! max-size lookahead is pending, so every cut is the one FastCDC makes on that run of
//! bytes as a whole, however it was fed. These numbers are part of the store format:
//! changing them changes chunk ids (see docs/FORMAT.md and docs/BENCHMARKS.md for how
//! they were tuned).

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

/// FastCDC sizes: min, average, max.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

/// For packed small files.
pub const SMALL: Sizes = Sizes {
    min: 4 * 1024,
    avg: 16 * 1024,
    max: 64 * 1024,
};
/// For files of ALIGN bytes or more. Big chunks compress better (a file of up to ~128 KiB
/// is one chunk, whole), and make fewer files to write; a changed byte disturbs ~512 KiB
/// of a big file (format version 2; version 1 had 16/64/256 KiB).
pub const LARGE: Sizes = Sizes {
    min: 128 * 1024,
    avg: 512 * 1024,
    max: 2048 * 1024,
};
/// Files this big or bigger are chunk-aligned and use [`LARGE`].
pub const ALIGN: u64 = 4 * 1024;
/// No chunk is bigger.
pub const MAX_SIZE: usize = LARGE.max;

/// How much we read ahead; several chunks' worth so cuts rarely need a refill.
const BUF_SIZE: usize = 4 * MAX_SIZE;

/// The sizes for a file of `size` bytes, and whether it is chunk-aligned.
pub fn sizes_for(size: u64) -> (Sizes, bool) {
    if size >= ALIGN {
        (LARGE, true)
    } else {
        (SMALL, false)
    }
}

pub struct Chunker {
    /// Allocated (and zeroed) once; bytes pending are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    sizes: Sizes,
    mask_s: u64,
    mask_l: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        let mut c = Chunker {
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
            sizes: SMALL,
            mask_s: 0,
            mask_l: 0,
        };
        c.set_sizes(SMALL);
        c
    }
}

impl Chunker {
    /// Switches sizes; call only at a chunk boundary (after [`finish`](Self::finish)).
    pub fn set_sizes(&mut self, sizes: Sizes) {
        let (mask_s, mask_l) = select_masks(sizes.avg, Normalization::Level1);
        self.sizes = sizes;
        self.mask_s = mask_s;
        self.mask_l = mask_l;
    }

    fn cut_len(&self, data: &[u8]) -> usize {
        let (_, n) = cut(
            data,
            self.sizes.min,
            self.sizes.avg,
            self.sizes.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n.clamp(1, data.len())
    }

    /// Emits every chunk that is certain with a max-size lookahead.
    fn drain<E: From<io::Error>>(
        &mut self,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.end - self.start >= self.sizes.max {
            let n = self.cut_len(&self.buf[self.start..self.end]);
            emit(&self.buf[self.start..self.start + n])?;
            self.start += n;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        Ok(())
    }

    /// Appends everything `r` yields to the stream, emitting finished chunks. Returns the
    /// number of bytes read.
    pub fn feed<E: From<io::Error>>(
        &mut self,
        r: &mut dyn Read,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut total = 0u64;
        loop {
            // After a drain fewer than max bytes are pending, so there is room to read.
            self.drain(&mut emit)?;
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.end += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Ends the current run of bytes: emits what is left as its last chunk(s).
    pub fn finish<E>(&mut self, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while self.start < self.end {
            let n = self.cut_len(&self.buf[self.start..self.end]);
            emit(&self.buf[self.start..self.start + n])?;
            self.start += n;
        }
        self.start = 0;
        self.end = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(pieces: &[&[u8]], sizes: Sizes) -> Vec<Vec<u8>> {
        let mut c = Chunker::default();
        c.set_sizes(sizes);
        let mut out = Vec::new();
        for p in pieces {
            let mut r: &[u8] = p;
            c.feed(&mut r, |ch: &[u8]| -> io::Result<()> {
                out.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
        }
        c.finish(|ch: &[u8]| -> io::Result<()> {
            out.push(ch.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn cuts_do_not_depend_on_how_the_stream_is_fed() {
        // xorshift64: not periodic within the data, so the cuts are content-defined.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..12_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for sizes in [SMALL, LARGE] {
            let whole = chunks_of(&[&data], sizes);
            let pieces: Vec<&[u8]> = data.chunks(7777).collect();
            assert_eq!(whole, chunks_of(&pieces, sizes));
            assert_eq!(whole.concat(), data);
            assert!(whole.len() > 10);
            assert!(whole.iter().all(|c| c.len() <= sizes.max));
        }
    }

    #[test]
    fn size_classes() {
        assert_eq!(sizes_for(100), (SMALL, false));
        assert_eq!(sizes_for(ALIGN - 1), (SMALL, false));
        assert_eq!(sizes_for(ALIGN), (LARGE, true));
    }
}
