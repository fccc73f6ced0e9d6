//! The image index: every entry's metadata, each file's span in the content stream, and
//! the list of chunks the stream is cut into. Binary, versioned, checksummed, documented in
//! docs/FORMAT.md. The parser treats its input as hostile: every length is checked against
//! what is left before anything is allocated, and every path is validated.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use super::format::{INDEX_MAGIC as MAGIC, INDEX_VERSION as VERSION};
/// Header: magic, version, body length, BLAKE3 of the body.
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// Refuse bodies that would decompress past this (an index of a huge image is ~100 MiB).
const MAX_BODY: u64 = 1 << 30;

/// A chunk's name: the BLAKE3 hash of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let mut id = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(ChunkId(id))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// One chunk of the content stream: its id and uncompressed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// What an entry is, with the fields only that type has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of `size` bytes, its content in the stream.
    File {
        size: u64,
    },
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// Another name for the entry at `target` (a path in the same image).
    Hardlink {
        target: PathBuf,
    },
    Char {
        rdev: u64,
    },
    Block {
        rdev: u64,
    },
    Fifo,
    Socket,
}

impl Kind {
    fn tag(&self) -> u8 {
        match self {
            Kind::File { .. } => 1,
            Kind::Dir => 2,
            Kind::Symlink { .. } => 3,
            Kind::Hardlink { .. } => 4,
            Kind::Char { .. } => 5,
            Kind::Block { .. } => 6,
            Kind::Fifo => 7,
            Kind::Socket => 8,
        }
    }
}

/// A modification time: seconds since the epoch and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One entry of an image tree. `path` is relative to the image root; the root itself is
/// the empty path (`.` and a leading `/` or `./` are accepted and normalized away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Every extended attribute, name and value as raw bytes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An entry as stored: for files, where their content starts in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub entry: Entry,
    /// Offset of a file's content in the content stream (0 for other kinds).
    pub offset: u64,
}

/// A parsed image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    /// Unix seconds when the image was committed.
    pub created: i64,
    /// Opaque blob given at import (e.g. the OCI image config JSON).
    pub config: Option<Vec<u8>>,
    /// The content stream, in order.
    pub chunks: Vec<ChunkRef>,
    /// Entries sorted by path (component-wise), root first, each path once.
    pub records: Vec<Record>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("not a warren index (bad magic)")]
    BadMagic,
    #[error(
        "index format version {0} is not supported (this warren reads versions 1 to {VERSION})"
    )]
    Version(u32),
    #[error("index is truncated ({0})")]
    Truncated(&'static str),
    #[error("index checksum mismatch: the file is corrupted")]
    Checksum,
    #[error("index body does not decompress: {0}")]
    Decompress(String),
    #[error("invalid index: {0}")]
    Invalid(String),
}

/// Normalizes an entry path: strips `/`, `./` and `.` components; rejects `..`, NUL and
/// anything else that could name a place outside the image root.
pub fn normalize(path: &Path) -> Result<PathBuf, IndexError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(IndexError::Invalid(format!("path {path:?} contains NUL")));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(IndexError::Invalid(format!(
                    "path {path:?} leaves the image"
                )));
            }
        }
    }
    Ok(out)
}

impl Index {
    /// Content bytes of every file entry.
    pub fn content_bytes(&self) -> u64 {
        self.records
            .iter()
            .map(|r| match r.entry.kind {
                Kind::File { size } => size,
                _ => 0,
            })
            .sum()
    }

    /// Number of file entries (hardlinks not counted).
    pub fn file_count(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| matches!(r.entry.kind, Kind::File { .. }))
            .count() as u64
    }

    /// Length of the content stream.
    pub fn stream_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Serializes to the on-disk format (header + zstd-compressed body).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.chunks.len() * 36 + self.records.len() * 64);
        put_bytes(&mut b, self.name.as_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        match &self.config {
            Some(c) => {
                b.push(1);
                put_bytes(&mut b, c);
            }
            None => b.push(0),
        }
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            b.extend_from_slice(&c.id.0);
            b.extend_from_slice(&c.len.to_le_bytes());
        }
        b.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        for r in &self.records {
            let e = &r.entry;
            put_bytes(&mut b, e.path.as_os_str().as_bytes());
            b.push(e.kind.tag());
            match &e.kind {
                Kind::File { size } => {
                    b.extend_from_slice(&size.to_le_bytes());
                    b.extend_from_slice(&r.offset.to_le_bytes());
                }
                Kind::Symlink { target } | Kind::Hardlink { target } => {
                    put_bytes(&mut b, target.as_os_str().as_bytes())
                }
                Kind::Char { rdev } | Kind::Block { rdev } => {
                    b.extend_from_slice(&rdev.to_le_bytes())
                }
                Kind::Dir | Kind::Fifo | Kind::Socket => {}
            }
            b.extend_from_slice(&e.mode.to_le_bytes());
            b.extend_from_slice(&e.uid.to_le_bytes());
            b.extend_from_slice(&e.gid.to_le_bytes());
            b.extend_from_slice(&e.mtime.sec.to_le_bytes());
            b.extend_from_slice(&e.mtime.nsec.to_le_bytes());
            b.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
            for (name, value) in &e.xattrs {
                put_bytes(&mut b, name);
                put_bytes(&mut b, value);
            }
        }
        // Level 6: ~5% smaller than 3 for a few ms (a 1 MB body); the index is a visible
        // share of what a new image version adds. Writing to a Vec cannot fail.
        let body = zstd::bulk::compress(&b, 6).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(&b).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses and validates an index file's bytes. Never panics on any input.
    pub fn decode(data: &[u8]) -> Result<Index, IndexError> {
        Index::decode_body(&body(data)?)
    }

    /// The config blob of an index file's bytes, checked as [`Index::decode`] checks them
    /// but without parsing the entries (what a container start needs of its image).
    pub fn decode_config(data: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let body = body(data)?;
        let (_, _, config) = read_head(&mut Reader {
            data: &body,
            pos: 0,
        })?;
        Ok(config)
    }

    /// Parses an uncompressed body (exposed for fuzzing past the checksum).
    pub fn decode_body(body: &[u8]) -> Result<Index, IndexError> {
        let mut r = Reader { data: body, pos: 0 };
        let (name, created, config) = read_head(&mut r)?;
        let nchunks = r.count(36, "chunk count")?;
        let mut chunks = Vec::with_capacity(nchunks);
        let mut stream_len = 0u64;
        for _ in 0..nchunks {
            let mut id = [0u8; 32];
            id.copy_from_slice(r.take(32, "chunk id")?);
            let len = r.u32("chunk length")?;
            if len == 0 {
                return Err(IndexError::Invalid("empty chunk".into()));
            }
            stream_len += u64::from(len);
            chunks.push(ChunkRef {
                id: ChunkId(id),
                len,
            });
        }
        // The smallest record: empty path, tag, fixed fields, no xattrs.
        let nrecords = r.count(4 + 1 + 12 + 12 + 4, "entry count")?;
        let mut records: Vec<Record> = Vec::with_capacity(nrecords);
        for _ in 0..nrecords {
            let raw = r.bytes("path")?;
            let path = PathBuf::from(OsStr::from_bytes(raw));
            if !is_canonical(raw) || (raw.is_empty() != records.is_empty()) {
                return Err(IndexError::Invalid(format!(
                    "path {path:?} is not canonical (or the root is not first)"
                )));
            }
            if let Some(prev) = records.last()
                && path_cmp(prev.entry.path.as_os_str().as_bytes(), raw) != Ordering::Less
            {
                return Err(IndexError::Invalid(format!(
                    "entries out of order at {path:?}"
                )));
            }
            let (kind, offset) = read_kind(&mut r, &path, stream_len)?;
            if records.is_empty() && kind != Kind::Dir {
                return Err(IndexError::Invalid("the root is not a directory".into()));
            }
            let mode = r.u32("mode")?;
            if mode & !0o7777 != 0 {
                return Err(IndexError::Invalid(format!("{path:?}: mode {mode:o}")));
            }
            let uid = r.u32("uid")?;
            let gid = r.u32("gid")?;
            let sec = r.u64("mtime")? as i64;
            let nsec = r.u32("mtime nsec")?;
            if nsec >= 1_000_000_000 {
                return Err(IndexError::Invalid(format!("{path:?}: mtime nsec {nsec}")));
            }
            let nx = r.count32(8, "xattr count")?;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                let name = r.bytes("xattr name")?.to_vec();
                if name.is_empty() || name.contains(&0) {
                    return Err(IndexError::Invalid(format!("{path:?}: bad xattr name")));
                }
                xattrs.push((name, r.bytes("xattr value")?.to_vec()));
            }
            records.push(Record {
                entry: Entry {
                    path,
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime: Timestamp { sec, nsec },
                    xattrs,
                },
                offset,
            });
        }
        if r.pos != body.len() {
            return Err(IndexError::Invalid(
                "trailing bytes after the entries".into(),
            ));
        }
        let index = Index {
            name,
            created,
            config,
            chunks,
            records,
        };
        index.check_links()?;
        Ok(index)
    }

    /// Every hardlink names an earlier-sorted or later entry that exists and is neither a
    /// directory nor a hardlink; every entry's parent is a directory in the index.
    fn check_links(&self) -> Result<(), IndexError> {
        for r in &self.records {
            let path = &r.entry.path;
            if let Some(parent) = path.parent() {
                match self.find(parent) {
                    Some(p) if p.entry.kind == Kind::Dir => {}
                    _ => {
                        return Err(IndexError::Invalid(format!(
                            "{path:?}: parent is not a directory in the index"
                        )));
                    }
                }
            }
            if let Kind::Hardlink { target } = &r.entry.kind {
                match self.find(target).map(|t| &t.entry.kind) {
                    Some(Kind::Dir | Kind::Hardlink { .. }) | None => {
                        return Err(IndexError::Invalid(format!(
                            "{path:?}: hardlink target {target:?} is missing or not linkable"
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The record at `path` (binary search: records are sorted).
    pub fn find(&self, path: &Path) -> Option<&Record> {
        let bytes = path.as_os_str().as_bytes();
        let found = if is_canonical(bytes) {
            self.records
                .binary_search_by(|r| path_cmp(r.entry.path.as_os_str().as_bytes(), bytes))
        } else {
            self.records
                .binary_search_by(|r| r.entry.path.as_path().cmp(path))
        };
        found.ok().map(|i| &self.records[i])
    }
}

/// Checks the header of an index file's bytes and returns its body, decompressed and
/// checked against the header's checksum.
fn body(data: &[u8]) -> Result<Vec<u8>, IndexError> {
    if data.len() < 8 {
        return Err(IndexError::Truncated("header"));
    }
    if &data[..8] != MAGIC {
        return Err(IndexError::BadMagic);
    }
    if data.len() < HEADER_LEN {
        return Err(IndexError::Truncated("header"));
    }
    let mut h = Reader { data, pos: 8 };
    let version = h.u32("version")?;
    if !(1..=VERSION).contains(&version) {
        return Err(IndexError::Version(version));
    }
    let body_len = h.u64("body length")?;
    if body_len > MAX_BODY {
        return Err(IndexError::Invalid(format!(
            "body length {body_len} too large"
        )));
    }
    let hash = h.take(32, "checksum")?;
    let body = zstd::bulk::decompress(&data[HEADER_LEN..], body_len as usize)
        .map_err(|e| IndexError::Decompress(e.to_string()))?;
    if body.len() as u64 != body_len {
        return Err(IndexError::Truncated("body"));
    }
    if blake3::hash(&body).as_bytes() != hash {
        return Err(IndexError::Checksum);
    }
    Ok(body)
}

/// The body's first fields: the image name, when it was made, its config blob.
fn read_head(r: &mut Reader<'_>) -> Result<(String, i64, Option<Vec<u8>>), IndexError> {
    let name = String::from_utf8(r.bytes("name")?.to_vec())
        .map_err(|_| IndexError::Invalid("image name is not UTF-8".into()))?;
    let created = r.u64("created")? as i64;
    let config = match r.u8("config flag")? {
        0 => None,
        1 => Some(r.bytes("config")?.to_vec()),
        f => return Err(IndexError::Invalid(format!("config flag {f}"))),
    };
    Ok((name, created, config))
}

/// Whether `path` is an entry path as [`normalize`] leaves it: the root (empty), or
/// names joined by single `/`s, none `.` or `..`, no NUL. Checked on bytes, without the
/// allocation and component walk of normalizing (an index holds thousands of entries).
fn is_canonical(path: &[u8]) -> bool {
    path.is_empty()
        || !path.contains(&0)
            && path
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// How canonical paths sort component by component (as [`Path`]'s `Ord` does), by their
/// bytes: at the first difference, a path whose component ends there (at a `/`, or at its
/// end) is the smaller. `Path`'s comparison re-parses components on every call, which
/// made the sortedness and parent checks most of a container start's image work.
fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some(i) if a[i] == b'/' => Ordering::Less,
        Some(i) if b[i] == b'/' => Ordering::Greater,
        Some(i) => a[i].cmp(&b[i]),
    }
}

/// Reads an entry's type and its type's fields; a file's content offset too (else 0).
fn read_kind(r: &mut Reader<'_>, path: &Path, stream_len: u64) -> Result<(Kind, u64), IndexError> {
    let mut offset = 0;
    let kind = match r.u8("entry type")? {
        1 => {
            let size = r.u64("file size")?;
            offset = r.u64("file offset")?;
            if offset.checked_add(size).is_none_or(|end| end > stream_len) {
                return Err(IndexError::Invalid(format!(
                    "{path:?}: content span beyond the stream"
                )));
            }
            Kind::File { size }
        }
        2 => Kind::Dir,
        t @ (3 | 4) => {
            let target = PathBuf::from(OsStr::from_bytes(r.bytes("link target")?));
            if target.as_os_str().is_empty() || target.as_os_str().as_bytes().contains(&0) {
                return Err(IndexError::Invalid(format!("{path:?}: bad link target")));
            }
            if t == 3 {
                Kind::Symlink { target }
            } else {
                if normalize(&target)? != target {
                    return Err(IndexError::Invalid(format!(
                        "{path:?}: hardlink target not canonical"
                    )));
                }
                Kind::Hardlink { target }
            }
        }
        5 => Kind::Char {
            rdev: r.u64("rdev")?,
        },
        6 => Kind::Block {
            rdev: r.u64("rdev")?,
        },
        7 => Kind::Fifo,
        8 => Kind::Socket,
        t => return Err(IndexError::Invalid(format!("{path:?}: entry type {t}"))),
    };
    Ok((kind, offset))
}

fn put_bytes(b: &mut Vec<u8>, data: &[u8]) {
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IndexError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(IndexError::Truncated(what))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, IndexError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, IndexError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, IndexError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], IndexError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A count of items at least `min_size` bytes each: bounded by what is left, so a
    /// garbled count cannot make us allocate.
    fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize, IndexError> {
        let n = self.u64(what)?;
        self.bounded(n, min_size, what)
    }
    fn count32(&mut self, min_size: usize, what: &'static str) -> Result<usize, IndexError> {
        let n = u64::from(self.u32(what)?);
        self.bounded(n, min_size, what)
    }
    fn bounded(&self, n: u64, min_size: usize, what: &'static str) -> Result<usize, IndexError> {
        let left = (self.data.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(IndexError::Truncated(what));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests;
