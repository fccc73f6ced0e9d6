//! Merging image layers from their tar headers alone.
//!
//! Pass 1 of an import feeds every layer's headers, in order, to a [`Tree`]: OCI whiteouts
//! (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) delete what lower layers put there,
//! a later entry replaces an earlier one, hardlinks are resolved to the member whose bytes
//! they share, and every hostile construct is refused. [`Tree::finish`] yields a [`Plan`]:
//! the final tree, and for each layer which tar members carry content that survives, so
//! pass 2 can stream exactly those bytes into the store. Nothing touches the disk.

/// A path inside the image: components joined by `/`, no leading `/`; the root is empty.
pub type RelPath = Vec<u8>;

/// Names overlayfs interprets; an image must not smuggle them into a lower layer.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The longest file name (one path component) Linux filesystems take.
const NAME_MAX: usize = 255;
/// A symlink's target is at most PATH_MAX - 1 bytes.
const TARGET_MAX: usize = 4095;

/// A tar member: layer number and its position among the archive's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub layer: usize,
    pub index: usize,
}

/// Ownership, permissions, time and extended attributes of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file whose bytes are those of `member`.
    File {
        size: u64,
        member: Member,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    Char {
        rdev: u64,
    },
    Block {
        rdev: u64,
    },
    Fifo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub meta: Meta,
}

/// What a tar header says, before merging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    File { size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
    Hardlink { target: Vec<u8> },
    Char { rdev: u64 },
    Block { rdev: u64 },
    Fifo,
}

/// One tar entry's header, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Position among the layer's tar entries (pass 2 finds the content by it).
    pub index: usize,
    /// The raw path as archived.
    pub path: Vec<u8>,
    pub kind: HeaderKind,
    pub meta: Meta,
}

/// Bounds past which an archive is refused as absurd.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: u64,
    pub max_file_size: u64,
    /// Sum of the sizes of every file member of every layer.
    pub max_total_size: u64,
    pub max_path_len: usize,
    pub max_depth: usize,
    pub max_xattr_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 20_000_000,
            max_file_size: 64 << 30,
            max_total_size: 1 << 40,
            max_path_len: 4096,
            max_depth: 256,
            // The kernel's XATTR_SIZE_MAX.
            max_xattr_size: 65536,
        }
    }
}

/// Why a layer was refused. Paths are shown lossily as UTF-8.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("entry {path:?}: {reason}")]
    Unsafe { path: String, reason: &'static str },
    #[error("entry {path:?}: its parent {parent:?} is a symlink; refusing to write through it")]
    ThroughSymlink { path: String, parent: String },
    #[error("entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("hardlink {path:?} points to {target:?}, which is not a file in the image")]
    HardlinkOutside { path: String, target: String },
    #[error("entry {path:?}: {what} {size} exceeds the limit {limit}")]
    TooLarge {
        path: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("entry {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType { path: String, kind: char },
    #[error("entry {path:?}: bad pax record {key}")]
    BadPax { path: String, key: String },
    #[error("reading the tar stream: {0}")]
    Tar(std::io::Error),
}

// By hand, not `#[from]`: the cause is in the message, so it must not also be a `source`.
impl From<std::io::Error> for LayerError {
    fn from(e: std::io::Error) -> Self {
        LayerError::Tar(e)
    }
}

fn show(path: &[u8]) -> String {
    super::shorten(&String::from_utf8_lossy(path))
}

/// Normalizes an archived path: drops `.` and empty components (so `./a//b/` is `a/b`),
/// refuses `..` and absolute paths.
pub fn normalize(raw: &[u8], limits: &Limits) -> Result<RelPath, LayerError> {
    let unsafe_path = |reason| LayerError::Unsafe {
        path: show(raw),
        reason,
    };
    if raw.len() > limits.max_path_len {
        return Err(unsafe_path("path too long"));
    }
    if raw.first() == Some(&b'/') {
        return Err(unsafe_path("absolute path"));
    }
    if raw.contains(&0) {
        return Err(unsafe_path("NUL byte in path"));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut depth = 0;
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(unsafe_path("`..` component escapes the image")),
            // Extraction could not create it: refuse it now, naming it.
            _ if c.len() > NAME_MAX => {
                return Err(unsafe_path("a name longer than 255 bytes (NAME_MAX)"));
            }
            _ => {}
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
        depth += 1;
    }
    if depth > limits.max_depth {
        return Err(unsafe_path("path too deep"));
    }
    Ok(out)
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

fn base(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(path, |i| &path[i + 1..])
}

fn join(dir: &[u8], name: &[u8]) -> RelPath {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

mod decode;
mod tree;

pub use decode::{decode, read_headers};
pub use tree::{Plan, Tree};

#[cfg(test)]
mod tests;
