//! FastCDC over a stream fed piece by piece (file after file): bytes are buffered until
//! at least `MAX_SIZE` are pending, so every cut is the one FastCDC would make on the
//! whole concatenated stream. The sizes are part of the store format: changing them
//! changes every chunk id (see docs/FORMAT.md).

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

pub const MIN_SIZE: usize = 16 * 1024;
pub const AVG_SIZE: usize = 64 * 1024;
pub const MAX_SIZE: usize = 256 * 1024;

/// How much we read ahead; several chunks' worth so cuts rarely need a refill.
const BUF_SIZE: usize = 4 * MAX_SIZE;

pub struct Chunker {
    buf: Vec<u8>,
    start: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        let (mask_s, mask_l) = select_masks(AVG_SIZE, Normalization::Level1);
        Chunker {
            buf: Vec::with_capacity(BUF_SIZE),
            start: 0,
            mask_s,
            mask_l,
        }
    }
}

impl Chunker {
    fn cut_len(&self, data: &[u8]) -> usize {
        let (_, n) = cut(
            data,
            MIN_SIZE,
            AVG_SIZE,
            MAX_SIZE,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n.clamp(1, data.len())
    }

    /// Emits every chunk that is certain with `MAX_SIZE` bytes of lookahead.
    fn drain<E: From<io::Error>>(
        &mut self,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.buf.len() - self.start >= MAX_SIZE {
            let n = self.cut_len(&self.buf[self.start..]);
            emit(&self.buf[self.start..self.start + n])?;
            self.start += n;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
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
            // After a drain fewer than MAX_SIZE bytes are pending, so there is room to read.
            self.drain(&mut emit)?;
            let old = self.buf.len();
            self.buf.resize(BUF_SIZE, 0);
            let got = r.read(&mut self.buf[old..]);
            self.buf.truncate(old + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Ends the stream: emits what is left.
    pub fn finish<E>(&mut self, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while self.start < self.buf.len() {
            let n = self.cut_len(&self.buf[self.start..]);
            emit(&self.buf[self.start..self.start + n])?;
            self.start += n;
        }
        self.buf.clear();
        self.start = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut c = Chunker::default();
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
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let whole = chunks_of(&[&data]);
        let pieces: Vec<&[u8]> = data.chunks(7777).collect();
        assert_eq!(whole, chunks_of(&pieces));
        assert_eq!(whole.concat(), data);
        assert!(whole.len() > 10);
        assert!(whole.iter().all(|c| c.len() <= MAX_SIZE));
    }
}
