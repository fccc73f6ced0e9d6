//! A guard in front of the tar parser: the `tar` crate reads GNU long-name/long-link and
//! pax extension members into memory whole, whatever size their header claims, so a
//! hostile (often compressed) archive could make it allocate without bound. This reader
//! follows the 512-byte block structure as the bytes go by and fails as soon as such a
//! member is larger than the limit, before the parser sees it.

use std::io::{self, Read};

const BLOCK: u64 = 512;

/// The largest GNU long-name or pax member accepted (xattrs travel in pax records, each
/// up to 64 KiB).
pub const MAX_EXTENSION: u64 = 16 << 20;

enum State {
    Header {
        buf: Box<[u8; 512]>,
        filled: usize,
    },
    /// Skipping `left` bytes of data and padding; a pax member's bytes are kept.
    Data {
        left: u64,
        pax: Option<(Vec<u8>, u64)>,
    },
    /// Old GNU sparse extension headers, then data.
    SparseExt {
        buf: Box<[u8; 512]>,
        filled: usize,
        data: u64,
    },
    /// After the end-of-archive block: whatever follows is not parsed.
    Done,
}

/// Wraps a tar stream; errors with `InvalidData` on an oversized extension member.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    /// The size a pax `size` record gives the next member.
    next_size: Option<u64>,
    limit: u64,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        TarGuard {
            inner,
            state: header(),
            next_size: None,
            limit,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { buf, filled } => {
                    let n = data.len().min(512 - *filled);
                    buf[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == 512 {
                        let block = std::mem::replace(buf, Box::new([0; 512]));
                        self.state = self.after_header(&block)?;
                    }
                }
                State::SparseExt {
                    buf,
                    filled,
                    data: size,
                } => {
                    let n = data.len().min(512 - *filled);
                    buf[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == 512 {
                        let more = buf[504] != 0;
                        let size = *size;
                        self.state = if more {
                            State::SparseExt {
                                buf: Box::new([0; 512]),
                                filled: 0,
                                data: size,
                            }
                        } else {
                            data_state(size, false)
                        };
                    }
                }
                State::Data { left, pax } => {
                    let n = (data.len() as u64).min(*left) as usize;
                    if let Some((bytes, size)) = pax {
                        let want = (*size as usize).saturating_sub(bytes.len()).min(n);
                        bytes.extend_from_slice(&data[..want]);
                    }
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        if let Some((bytes, _)) = pax.take() {
                            self.next_size = pax_size(&bytes).or(self.next_size);
                        }
                        self.state = header();
                    }
                }
            }
        }
        Ok(())
    }

    fn after_header(&mut self, block: &[u8; 512]) -> io::Result<State> {
        if block.iter().all(|&b| b == 0) {
            return Ok(State::Done);
        }
        let kind = block[156];
        let size = parse_size(&block[124..136]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "tar header with a malformed size",
            )
        })?;
        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            if size > self.limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "tar extension member of {size} bytes (type {:?}) exceeds the limit {}",
                        kind as char, self.limit
                    ),
                ));
            }
            return Ok(data_state(size, kind == b'x'));
        }
        let size = self.next_size.take().unwrap_or(size);
        if kind == b'S' && block[482] != 0 {
            return Ok(State::SparseExt {
                buf: Box::new([0; 512]),
                filled: 0,
                data: size,
            });
        }
        Ok(data_state(size, false))
    }
}

fn header() -> State {
    State::Header {
        buf: Box::new([0; 512]),
        filled: 0,
    }
}

fn data_state(size: u64, keep: bool) -> State {
    let padded = size.div_ceil(BLOCK).saturating_mul(BLOCK);
    if padded == 0 {
        return header();
    }
    State::Data {
        left: padded,
        pax: keep.then(|| (Vec::new(), size)),
    }
}

/// A tar numeric field: octal text, or base-256 when the high bit of the first byte is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `size` record of pax extension data (`LEN key=value\n` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut found = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return found;
        }
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            found = std::str::from_utf8(v).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    found
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(data: &[u8], limit: u64) -> io::Result<u64> {
        // Small reads, to cross block boundaries at odd places.
        let mut g = TarGuard::new(data, limit);
        let mut total = 0;
        let mut buf = [0u8; 37];
        loop {
            let n = g.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    #[test]
    fn ordinary_archives_pass_untouched() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        h.set_mode(0o644);
        b.append_data(&mut h, "x".repeat(300), &[7u8; 1000][..])
            .unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.a", &[1u8; 2000][..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "after-pax", &b"hello"[..]).unwrap();
        let data = b.into_inner().unwrap();
        assert_eq!(pass(&data, 1 << 20).unwrap(), data.len() as u64);
        // And the parser behind it sees everything.
        let mut a = tar::Archive::new(TarGuard::new(&data[..], 1 << 20));
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["x".repeat(300), "after-pax".to_string()]);
    }

    #[test]
    fn oversized_extension_members_are_refused() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 40);
        h.set_cksum();
        let data = h.as_bytes().to_vec();
        let err = pass(&data, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn pax_size_records_move_the_next_header() {
        assert_eq!(pax_size(b"20 size=12345678901\n"), Some(12_345_678_901));
        assert_eq!(pax_size(b"11 path=ab\n"), None);
        assert_eq!(parse_size(b"0000000012\0"), Some(10));
        assert_eq!(
            parse_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
    }
}
