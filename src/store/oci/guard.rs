//! A guard around the tar parser. The `tar` crate reads GNU long-name/long-link and pax
//! extension members into memory whole, whatever size their header claims, so a hostile
//! (often compressed) archive could make it allocate without bound.
//!
//! The guard does not parse the archive itself: a second parser would disagree with the
//! `tar` crate somewhere (one took the last pax `size` record, the crate the first, and a
//! 109 KB archive then made the crate buffer gigabytes). Instead the crate reads through
//! the guard in its seeking mode, so every skip over member data is a `seek` and every
//! `read` it makes while looking for the next entry is a header block, an extension
//! member or a sparse map: exactly what it keeps in memory. [`Entries`] arms the guard
//! for the duration of each `next()`, and the guard refuses past [`MAX_EXTENSION`] bytes.
//! The first block read after a seek is the header the crate is about to use, checked
//! with the crate's own accessors so an oversized extension member fails before a byte
//! of it is read.
//!
//! What the caller reads from an entry is not counted: it must stream it. In particular
//! it must not call `pax_extensions()` on an entry that is itself a pax member (a `g`, or
//! an `x` without ustar magic, which the crate returns as an entry): the crate would read
//! it whole. `layer::decode` returns before that; the fuzz target `tar` checks it.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BLOCK: usize = 512;

/// The most bytes of headers and extension members (GNU long name and link, pax records;
/// xattrs travel in pax records, each up to 64 KiB) the parser may read for one entry.
pub const MAX_EXTENSION: u64 = 16 << 20;

/// Shared between the guard (inside the `tar` crate's archive) and [`Entries`].
#[derive(Default)]
struct Arm {
    armed: AtomicBool,
    used: AtomicU64,
}

/// The reader the `tar` crate sees.
pub struct TarGuard<R> {
    inner: R,
    skip: fn(&mut R, u64) -> io::Result<()>,
    pos: u64,
    arm: Arc<Arm>,
    limit: u64,
    /// The header block being read (after a seek while armed) and how much of it.
    header: Option<(Box<[u8; BLOCK]>, usize)>,
    /// With [`Archive::record`]: the offsets where the parser read a header block.
    seen: Option<Vec<u64>>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Skips forward by reading (what a compressed stream allows); the bytes still go through
/// every reader below, so digests see them.
fn skip_by_reading<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "tar stream ends inside a member ({} bytes missing)",
                n - copied
            ),
        ));
    }
    Ok(())
}

fn skip_by_seeking<R: Seek>(r: &mut R, n: u64) -> io::Result<()> {
    let n = i64::try_from(n).map_err(|_| invalid(format!("tar member of {n} bytes")))?;
    r.seek(SeekFrom::Current(n)).map(drop)
}

impl<R: Read> TarGuard<R> {
    fn new(inner: R, skip: fn(&mut R, u64) -> io::Result<()>, arm: Arc<Arm>) -> Self {
        TarGuard {
            inner,
            skip,
            pos: 0,
            arm,
            limit: MAX_EXTENSION,
            header: None,
            seen: None,
        }
    }

    /// A whole header block was read: refuse an oversized extension member now.
    fn check_header(&self, block: &[u8; BLOCK]) -> io::Result<()> {
        if block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(block);
        let kind = h.entry_type();
        // The members the crate reads whole, on the same conditions as the crate.
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let extension = recognized
            && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        match h.entry_size() {
            Ok(size) if extension && size > self.limit => Err(invalid(format!(
                "tar extension member of {size} bytes (type {:?}) exceeds the limit {}",
                kind.as_byte() as char,
                self.limit
            ))),
            _ => Ok(()),
        }
    }

    fn account(&mut self, data: &[u8]) -> io::Result<()> {
        let used = self
            .arm
            .used
            .fetch_add(data.len() as u64, Ordering::Relaxed)
            + data.len() as u64;
        if used > self.limit {
            return Err(invalid(format!(
                "the headers and extension members of one tar entry exceed the limit {}",
                self.limit
            )));
        }
        if let Some((mut buf, filled)) = self.header.take() {
            let n = data.len().min(BLOCK - filled);
            buf[filled..filled + n].copy_from_slice(&data[..n]);
            if filled + n == BLOCK {
                self.check_header(&buf)?;
            } else {
                self.header = Some((buf, filled + n));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        if self.arm.armed.load(Ordering::Relaxed) {
            self.account(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Only what the `tar` crate does: skip forward from the current position.
impl<R: Read> Seek for TarGuard<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Current(n) = pos else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "tar guard: seek",
            ));
        };
        let n = u64::try_from(n)
            .map_err(|_| io::Error::new(io::ErrorKind::Unsupported, "tar guard: seek back"))?;
        (self.skip)(&mut self.inner, n)?;
        self.pos += n;
        if self.arm.armed.load(Ordering::Relaxed) {
            // The crate reads the next header right after skipping to it.
            self.header = Some((Box::new([0; BLOCK]), 0));
            if let Some(seen) = &mut self.seen {
                seen.push(self.pos);
            }
        }
        Ok(self.pos)
    }
}

/// A tar archive read through the guard: the only way warren reads tar streams.
pub struct Archive<R: Read> {
    tar: tar::Archive<TarGuard<R>>,
    arm: Arc<Arm>,
}

impl<R: Read> Archive<R> {
    /// A stream read once, front to back; member data that is not read is read past.
    pub fn new(inner: R) -> Self {
        Self::with(inner, skip_by_reading::<R>)
    }

    fn with(inner: R, skip: fn(&mut R, u64) -> io::Result<()>) -> Self {
        let arm = Arc::new(Arm::default());
        Archive {
            tar: tar::Archive::new(TarGuard::new(inner, skip, arm.clone())),
            arm,
        }
    }

    /// Another limit than [`MAX_EXTENSION`] (for tests and fuzzing).
    pub fn with_limit(self, limit: u64) -> Self {
        self.map(|g| TarGuard { limit, ..g })
    }

    /// Keeps the offset and type of every header block the parser reads (for tests).
    pub fn record(self) -> Self {
        self.map(|g| TarGuard {
            seen: Some(Vec::new()),
            ..g
        })
    }

    fn map(self, f: impl FnOnce(TarGuard<R>) -> TarGuard<R>) -> Self {
        Archive {
            tar: tar::Archive::new(f(self.tar.into_inner())),
            arm: self.arm,
        }
    }

    /// The entries, each parsed under the limit.
    pub fn entries(&mut self) -> io::Result<Entries<'_, R>> {
        Ok(Entries {
            inner: self.tar.entries_with_seek()?,
            arm: &self.arm,
        })
    }

    /// Where the parser read header blocks, with [`Archive::record`].
    pub fn seen(self) -> Vec<u64> {
        self.tar.into_inner().seen.unwrap_or_default()
    }
}

impl<R: Read + Seek> Archive<R> {
    /// A seekable file: member data that is not read is seeked over.
    pub fn seekable(inner: R) -> Self {
        Self::with(inner, skip_by_seeking::<R>)
    }
}

/// The entries of an [`Archive`].
pub struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, TarGuard<R>>,
    arm: &'a Arm,
}

impl<'a, R: Read> Iterator for Entries<'a, R> {
    type Item = io::Result<tar::Entry<'a, TarGuard<R>>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.arm.used.store(0, Ordering::Relaxed);
        self.arm.armed.store(true, Ordering::Relaxed);
        let next = self.inner.next();
        self.arm.armed.store(false, Ordering::Relaxed);
        next
    }
}

/// What one parse saw of each entry: header offset, type, path, size and the first bytes
/// of content (sparse files can be far larger than the archive).
type Listing = (Vec<(u64, u64, u8, Vec<u8>, u64, Vec<u8>)>, Option<String>);

fn list<'a, R: Read + 'a>(entries: impl Iterator<Item = io::Result<tar::Entry<'a, R>>>) -> Listing {
    let mut out = Vec::new();
    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => return (out, Some(err.to_string())),
        };
        let mut head = Vec::new();
        if let Err(err) = e.by_ref().take(4096).read_to_end(&mut head) {
            return (out, Some(err.to_string()));
        }
        out.push((
            e.raw_header_position(),
            e.raw_file_position(),
            e.header().entry_type().as_byte(),
            e.path_bytes().into_owned(),
            e.size(),
            head,
        ));
    }
    (out, None)
}

/// Differential check (the fuzz target `tar` and the corpus test run it): parses `data`
/// with the `tar` crate alone and through the guard with `limit`. Both must list the same
/// entries, except that the guard may stop with an error at an entry whose headers and
/// extension members take more than `limit` bytes; and the guard must have seen the
/// header block of every entry it passed. Returns what differs.
#[doc(hidden)]
pub fn differential(data: &[u8], limit: u64) -> Result<(), String> {
    let (plain, plain_err) = list(
        tar::Archive::new(data)
            .entries()
            .map_err(|e| e.to_string())?,
    );
    let mut guarded = Archive::new(data).with_limit(limit).record();
    let (seen_entries, guard_err) = list(guarded.entries().map_err(|e| e.to_string())?);
    let seen = guarded.seen();
    for e in &seen_entries {
        if !seen.contains(&e.0) {
            return Err(format!("the guard did not see the header at {}", e.0));
        }
    }
    let n = seen_entries.len();
    if plain.len() < n || plain[..n] != seen_entries[..] {
        return Err(format!(
            "the guarded parse listed {seen_entries:?}, the crate {plain:?}"
        ));
    }
    match guard_err {
        None if plain.len() == n && plain_err.is_none() => Ok(()),
        None => Err(format!("the guard passed, the crate failed: {plain_err:?}")),
        Some(err) => {
            // Refused: the crate must have failed too, or needed more than the limit.
            // Where the refused entry's first header block is.
            let after = n.checked_sub(1).map(|i| seen_entries[i].0);
            let start = seen
                .iter()
                .copied()
                .find(|&at| after.is_none_or(|a| at > a));
            match (plain.get(n), start) {
                (None, _) if plain_err.is_some() => Ok(()),
                (None, _) => Err(format!("the guard refused ({err}) the end of the archive")),
                (Some(next), Some(start)) if next.1.saturating_sub(start) > limit => Ok(()),
                (Some(next), start) => Err(format!(
                    "the guard refused entry {n} ({err}) that the crate read from {start:?}: {next:?}"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(data: &[u8], limit: u64) -> io::Result<Vec<(String, u64)>> {
        let mut a = Archive::new(data).with_limit(limit);
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let mut content = Vec::new();
            e.read_to_end(&mut content)?;
            assert_eq!(content.len() as u64, e.size());
            out.push((
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.size(),
            ));
        }
        Ok(out)
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        body
    }

    fn header(kind: tar::EntryType, path: &str, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        *h.as_bytes()
    }

    fn pad(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
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
        assert_eq!(
            names(&data, 1 << 20).unwrap(),
            [("x".repeat(300), 1000), ("after-pax".to_string(), 5)]
        );
        differential(&data, 1 << 20).unwrap();
        // A limit below the pax member refuses the second entry, not the first.
        differential(&data, 1500).unwrap();
        assert!(names(&data, 1500).is_err());
    }

    #[test]
    fn oversized_extension_members_are_refused_before_reading() {
        let mut data = header(tar::EntryType::GNULongName, "././@LongLink", 1 << 40).to_vec();
        data.extend_from_slice(&[b'a'; 4096]);
        let err = names(&data, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    /// Escape 7: `size=512` then `size=2^40` in one pax member, then a pax member of 64 MiB
    /// (it claimed 3 GiB in the original). The crate takes the first record; whatever it
    /// takes, it must not buffer the big member.
    #[test]
    fn dual_pax_size_cannot_smuggle_a_huge_member() {
        let mut data = Vec::new();
        let ext = pax(&[("size", b"512"), ("size", b"1099511627776")]);
        data.extend_from_slice(&header(
            tar::EntryType::XHeader,
            "PaxHeaders/f",
            ext.len() as u64,
        ));
        pad(&mut data, &ext);
        data.extend_from_slice(&header(tar::EntryType::Regular, "f", 0));
        pad(&mut data, &[1u8; 512]);
        let big = 64 << 20;
        data.extend_from_slice(&header(tar::EntryType::XHeader, "PaxHeaders/g", big));
        data.resize(data.len() + big as usize, b'x');
        data.extend_from_slice(&header(tar::EntryType::Regular, "g", 0));
        data.resize(data.len() + 1024, 0);
        let err = names(&data, MAX_EXTENSION).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        differential(&data, MAX_EXTENSION).unwrap();
        // The entries before it are read as the crate reads them: the first record wins.
        let mut a = Archive::new(&data[..]).with_limit(MAX_EXTENSION);
        let mut entries = a.entries().unwrap();
        let first = entries.next().unwrap().unwrap();
        assert_eq!((first.size(), &first.path_bytes()[..]), (512, &b"f"[..]));
    }

    #[test]
    fn many_small_extension_members_share_one_budget() {
        // A long name and a pax member each under the limit, together over it.
        let mut data = Vec::new();
        let name = vec![b'n'; 3000];
        data.extend_from_slice(&header(tar::EntryType::GNULongName, "././@LongLink", 3001));
        pad(&mut data, &[&name[..], b"\0"].concat());
        let ext = pax(&[("SCHILY.xattr.user.a", &[b'v'; 3000])]);
        data.extend_from_slice(&header(
            tar::EntryType::XHeader,
            "PaxHeaders/f",
            ext.len() as u64,
        ));
        pad(&mut data, &ext);
        data.extend_from_slice(&header(tar::EntryType::Regular, "f", 3));
        pad(&mut data, b"abc");
        data.resize(data.len() + 1024, 0);
        assert_eq!(names(&data, 1 << 20).unwrap()[0].1, 3);
        let err = names(&data, 5000).unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
        differential(&data, 5000).unwrap();
    }

    /// tests/corpus/tar/ (what `cargo fuzz run tar` found, see fuzz/) and the hostile
    /// archives: the guard and the crate agree on each, at a small limit and the real one.
    #[test]
    fn corpus_parses_alike_with_and_without_the_guard() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut n = 0;
        for dir in ["tar", "hostile"] {
            for f in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = f.unwrap().path();
                if dir == "hostile" && path.extension().is_none_or(|e| e != "tar") {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                for limit in [1024, MAX_EXTENSION] {
                    if let Err(why) = differential(&data, limit) {
                        panic!("{}: {why}", path.display());
                    }
                }
                n += 1;
            }
        }
        assert!(n > 10, "only {n} corpus files");
    }

    #[test]
    fn truncated_members_are_errors() {
        let mut data = header(tar::EntryType::Regular, "f", 4096).to_vec();
        data.extend_from_slice(&[0; 100]);
        let mut a = Archive::new(&data[..]);
        let mut entries = a.entries().unwrap();
        entries.next().unwrap().unwrap();
        assert!(entries.next().unwrap().is_err());
    }
}
