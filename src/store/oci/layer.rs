//! Merging image layers from their tar headers alone.
//!
//! Pass 1 of an import feeds every layer's headers, in order, to a [`Tree`]: OCI whiteouts
//! (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) delete what lower layers put there,
//! a later entry replaces an earlier one, hardlinks are resolved to the member whose bytes
//! they share, and every hostile construct is refused. [`Tree::finish`] yields a [`Plan`]:
//! the final tree, and for each layer which tar members carry content that survives, so
//! pass 2 can stream exactly those bytes into the store. Nothing touches the disk.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

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

/// Reads the headers of one layer's tar stream (its content is skipped, not buffered).
/// The reader is left just past the archive's end marker.
pub fn read_headers<R: Read>(
    archive: &mut super::guard::Archive<R>,
    limits: &Limits,
) -> Result<Vec<Header>, LayerError> {
    let mut headers = Vec::new();
    for (index, entry) in archive.entries()?.enumerate() {
        let mut entry = entry?;
        if let Some(header) = decode(index, &mut entry, limits)? {
            headers.push(header);
        }
    }
    Ok(headers)
}

/// Decodes one tar entry's header; `None` for entries that carry no file (global pax).
pub fn decode<R: Read>(
    index: usize,
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
) -> Result<Option<Header>, LayerError> {
    use tar::EntryType as T;
    let path = entry.path_bytes().into_owned();
    let header = entry.header();
    let et = header.entry_type();
    let link = || {
        entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default()
    };
    let rdev = || {
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        libc::makedev(major, minor)
    };
    let kind = match et {
        T::Regular | T::Continuous | T::GNUSparse => HeaderKind::File { size: entry.size() },
        T::Directory => HeaderKind::Dir,
        T::Symlink => HeaderKind::Symlink { target: link() },
        T::Link => HeaderKind::Hardlink { target: link() },
        T::Char => HeaderKind::Char { rdev: rdev() },
        T::Block => HeaderKind::Block { rdev: rdev() },
        T::Fifo => HeaderKind::Fifo,
        T::XGlobalHeader => return Ok(None),
        other => {
            return Err(LayerError::UnsupportedType {
                path: show(&path),
                kind: other.as_byte() as char,
            });
        }
    };
    // Refuse an absurd size before the stream is skipped (or inflated) past it.
    if let HeaderKind::File { size } = kind {
        if size > limits.max_file_size {
            return Err(LayerError::TooLarge {
                path: show(&path),
                what: "file size",
                size,
                limit: limits.max_file_size,
            });
        }
    }
    let mut meta = Meta {
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        uid: u32::try_from(header.uid().unwrap_or(0)).unwrap_or(u32::MAX),
        gid: u32::try_from(header.gid().unwrap_or(0)).unwrap_or(u32::MAX),
        mtime: i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0),
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    let bad = |key: &[u8]| LayerError::BadPax {
        path: show(&path),
        key: show(key),
    };
    // Reached only for the kinds above: on a pax member returned as an entry (`g`, or an
    // `x` the crate does not recognize) this would read the member whole (see guard.rs).
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match key {
                b"uid" => meta.uid = number().ok_or_else(|| bad(key))?,
                b"gid" => meta.gid = number().ok_or_else(|| bad(key))?,
                b"mtime" => {
                    (meta.mtime, meta.mtime_nsec) = pax_time(value).ok_or_else(|| bad(key))?
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        if value.len() > limits.max_xattr_size {
                            return Err(LayerError::TooLarge {
                                path: show(&path),
                                what: "xattr size",
                                size: value.len() as u64,
                                limit: limits.max_xattr_size as u64,
                            });
                        }
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    meta.xattrs.sort();
    meta.xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(Some(Header {
        index,
        path,
        kind,
        meta,
    }))
}

/// Parses a pax time `SECONDS[.FRACTION]` (possibly negative) into seconds and nanoseconds.
fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (sec, frac) = text.split_once('.').unwrap_or((text, ""));
    let sec: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if sec < 0 && nsec > 0 {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        return Some((sec - 1, 1_000_000_000 - nsec));
    }
    Some((sec, nsec))
}

/// The image tree as the layers seen so far build it.
pub struct Tree {
    limits: Limits,
    allow_devices: bool,
    root: Meta,
    nodes: BTreeMap<RelPath, Node>,
    entries: u64,
    total_size: u64,
    warnings: Vec<String>,
}

/// The merged image: every entry of the final tree and where its content lives.
#[derive(Debug)]
pub struct Plan {
    /// Metadata of `/` (from the last layer that archived `./`, else 0755 root).
    pub root: Meta,
    /// Every entry except the root, sorted by path. A `File` whose member another, earlier
    /// path already carries is listed in `hardlinks` instead.
    pub nodes: Vec<(RelPath, Node)>,
    /// (path, target) pairs: `path` is a hardlink to the file at `target` (in `nodes`).
    pub hardlinks: Vec<(RelPath, RelPath)>,
    /// Per layer: the members whose bytes pass 2 streams, and the file path they become.
    pub content: Vec<HashMap<usize, RelPath>>,
    /// What was dropped and why (device nodes when unprivileged, overlay xattrs).
    pub warnings: Vec<String>,
}

impl Tree {
    /// An empty tree. `allow_devices`: keep char/block device nodes (only root can create
    /// them); otherwise they are skipped with a warning, as other rootless tools do.
    pub fn new(limits: Limits, allow_devices: bool) -> Tree {
        Tree {
            limits,
            allow_devices,
            root: Meta {
                mode: 0o755,
                ..Meta::default()
            },
            nodes: BTreeMap::new(),
            entries: 0,
            total_size: 0,
            warnings: Vec::new(),
        }
    }

    /// Counts one more archive entry against the entry limit.
    fn count_entry(&mut self, h: &Header) -> Result<(), LayerError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(LayerError::TooLarge {
                path: show(&h.path),
                what: "entry count",
                size: self.entries,
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Applies layer number `layer`, given its headers in archive order. Whiteouts apply
    /// to the lower layers only, so they go first regardless of where the archive put them.
    pub fn apply_layer(&mut self, layer: usize, headers: &[Header]) -> Result<(), LayerError> {
        let mut normalized = Vec::with_capacity(headers.len());
        for h in headers {
            self.count_entry(h)?;
            normalized.push(normalize(&h.path, &self.limits)?);
        }
        for (h, path) in headers.iter().zip(&normalized) {
            let name = base(path);
            if name == OPAQUE {
                let dir = parent(path).unwrap_or(b"");
                self.check_parents(path)?;
                self.remove_children(dir);
            } else if let Some(victim) = name.strip_prefix(WHITEOUT) {
                if victim.is_empty() || victim == b"." || victim == b".." {
                    return Err(LayerError::Unsafe {
                        path: show(&h.path),
                        reason: "whiteout of `.`, `..` or nothing",
                    });
                }
                self.check_parents(path)?;
                let victim = join(parent(path).unwrap_or(b""), victim);
                self.remove(&victim);
            }
        }
        for (h, path) in headers.iter().zip(normalized) {
            if base(&path).starts_with(WHITEOUT) {
                continue;
            }
            self.add(
                Member {
                    layer,
                    index: h.index,
                },
                h,
                path,
            )?;
        }
        Ok(())
    }

    /// Applies one entry of a single archive read as a stream (nothing below it, so
    /// whiteouts hide nothing and are dropped). Returns the path and the node it became,
    /// `None` when it was dropped; the root is the empty path.
    pub fn apply_streamed(&mut self, h: &Header) -> Result<Option<(RelPath, Node)>, LayerError> {
        self.count_entry(h)?;
        let path = normalize(&h.path, &self.limits)?;
        if base(&path).starts_with(WHITEOUT) {
            return Ok(None);
        }
        self.add(
            Member {
                layer: 0,
                index: h.index,
            },
            h,
            path.clone(),
        )?;
        if path.is_empty() {
            return Ok(Some((
                path,
                Node {
                    kind: NodeKind::Dir,
                    meta: self.root.clone(),
                },
            )));
        }
        Ok(self.nodes.get(&path).cloned().map(|n| (path, n)))
    }

    /// Refuses a path whose parent is (or goes through) a symlink or a non-directory, and
    /// creates missing parents as 0755 root directories, as extractors do.
    fn check_parents(&mut self, path: &[u8]) -> Result<(), LayerError> {
        let mut end = 0;
        let mut missing = Vec::new();
        while let Some(i) = path[end..].iter().position(|&b| b == b'/') {
            end += i;
            let dir = &path[..end];
            match self.nodes.get(dir).map(|n| &n.kind) {
                Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink { .. }) => {
                    return Err(LayerError::ThroughSymlink {
                        path: show(path),
                        parent: show(dir),
                    });
                }
                Some(_) => {
                    return Err(LayerError::ParentNotDir {
                        path: show(path),
                        parent: show(dir),
                    });
                }
                None => missing.push(dir.to_vec()),
            }
            end += 1;
        }
        for dir in missing {
            let meta = Meta {
                mode: 0o755,
                ..Meta::default()
            };
            self.nodes.insert(
                dir,
                Node {
                    kind: NodeKind::Dir,
                    meta,
                },
            );
        }
        Ok(())
    }

    fn remove_children(&mut self, dir: &[u8]) {
        let prefix = if dir.is_empty() {
            Vec::new()
        } else {
            join(dir, b"")
        };
        let doomed: Vec<RelPath> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    fn remove(&mut self, path: &[u8]) {
        if self.nodes.remove(path).is_some() {
            self.remove_children(path);
        }
    }

    fn add(&mut self, member: Member, h: &Header, path: RelPath) -> Result<(), LayerError> {
        let mut meta = h.meta.clone();
        let before = meta.xattrs.len();
        meta.xattrs
            .retain(|(name, _)| !OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)));
        if meta.xattrs.len() != before {
            self.warnings
                .push(format!("{}: dropped overlayfs xattrs", show(&path)));
        }
        let kind = match &h.kind {
            HeaderKind::File { size } => {
                let too_large = |what, size, limit| LayerError::TooLarge {
                    path: show(&path),
                    what,
                    size,
                    limit,
                };
                if *size > self.limits.max_file_size {
                    return Err(too_large("file size", *size, self.limits.max_file_size));
                }
                self.total_size = self.total_size.saturating_add(*size);
                if self.total_size > self.limits.max_total_size {
                    return Err(too_large(
                        "total size",
                        self.total_size,
                        self.limits.max_total_size,
                    ));
                }
                NodeKind::File {
                    size: *size,
                    member,
                }
            }
            HeaderKind::Dir => NodeKind::Dir,
            HeaderKind::Symlink { target } if target.len() > TARGET_MAX => {
                return Err(LayerError::Unsafe {
                    path: show(&path),
                    reason: "symlink target longer than 4095 bytes (PATH_MAX)",
                });
            }
            HeaderKind::Symlink { target } => NodeKind::Symlink {
                target: target.clone(),
            },
            HeaderKind::Char { .. } | HeaderKind::Block { .. } if !self.allow_devices => {
                self.warnings.push(format!(
                    "{}: device node skipped (creating device nodes needs root)",
                    show(&path)
                ));
                self.check_parents(&path)?;
                self.remove(&path);
                return Ok(());
            }
            HeaderKind::Char { rdev } => NodeKind::Char { rdev: *rdev },
            HeaderKind::Block { rdev } => NodeKind::Block { rdev: *rdev },
            HeaderKind::Fifo => NodeKind::Fifo,
            HeaderKind::Hardlink { target } => {
                let outside = || LayerError::HardlinkOutside {
                    path: show(&path),
                    target: show(target),
                };
                let target = normalize(target, &self.limits).map_err(|_| outside())?;
                // Every key's parents are directories, so a hit cannot go through a symlink.
                let node = match self.nodes.get(&target) {
                    Some(node) if node.kind != NodeKind::Dir => node.clone(),
                    _ => return Err(outside()),
                };
                if path.is_empty() {
                    return Err(outside());
                }
                self.check_parents(&path)?;
                self.put(path, node);
                return Ok(());
            }
        };
        if path.is_empty() {
            if kind != NodeKind::Dir {
                return Err(LayerError::Unsafe {
                    path: show(&h.path),
                    reason: "the image root must be a directory",
                });
            }
            self.root = meta;
            return Ok(());
        }
        self.check_parents(&path)?;
        self.put(path, Node { kind, meta });
        Ok(())
    }

    fn put(&mut self, path: RelPath, node: Node) {
        let is_dir = node.kind == NodeKind::Dir;
        let old = self.nodes.insert(path.clone(), node);
        if matches!(
            old,
            Some(Node {
                kind: NodeKind::Dir,
                ..
            })
        ) && !is_dir
        {
            self.remove_children(&path);
        }
    }

    /// The final tree, with hardlink groups: files sharing a member become one file (the
    /// first path in sorted order) and hardlinks to it.
    pub fn finish(self, layers: usize) -> Plan {
        let mut content: Vec<HashMap<usize, RelPath>> = vec![HashMap::new(); layers];
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut hardlinks = Vec::new();
        for (path, node) in self.nodes {
            if let NodeKind::File { member, .. } = node.kind {
                match content[member.layer].get(&member.index) {
                    Some(first) => {
                        hardlinks.push((path, first.clone()));
                        continue;
                    }
                    None => {
                        content[member.layer].insert(member.index, path.clone());
                    }
                }
            }
            nodes.push((path, node));
        }
        Plan {
            root: self.root,
            nodes,
            hardlinks,
            content,
            warnings: self.warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            ..Meta::default()
        }
    }

    fn h(index: usize, path: &str, kind: HeaderKind) -> Header {
        Header {
            index,
            path: path.as_bytes().to_vec(),
            kind,
            meta: meta(0o644),
        }
    }

    fn file(index: usize, path: &str) -> Header {
        h(index, path, HeaderKind::File { size: 3 })
    }

    fn dir(index: usize, path: &str) -> Header {
        h(index, path, HeaderKind::Dir)
    }

    fn link(index: usize, path: &str, target: &str) -> Header {
        h(
            index,
            path,
            HeaderKind::Hardlink {
                target: target.as_bytes().to_vec(),
            },
        )
    }

    fn sym(index: usize, path: &str, target: &str) -> Header {
        h(
            index,
            path,
            HeaderKind::Symlink {
                target: target.as_bytes().to_vec(),
            },
        )
    }

    fn merge(layers: &[Vec<Header>]) -> Result<Plan, LayerError> {
        let mut tree = Tree::new(Limits::default(), true);
        for (i, l) in layers.iter().enumerate() {
            tree.apply_layer(i, l)?;
        }
        Ok(tree.finish(layers.len()))
    }

    fn paths(plan: &Plan) -> Vec<String> {
        plan.nodes.iter().map(|(p, _)| show(p)).collect()
    }

    #[test]
    fn normalize_paths() {
        let l = Limits::default();
        assert_eq!(normalize(b"./a//b/./c/", &l).unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./", &l).unwrap(), b"");
        assert!(matches!(
            normalize(b"/etc/passwd", &l),
            Err(LayerError::Unsafe { .. })
        ));
        assert!(matches!(
            normalize(b"a/../../x", &l),
            Err(LayerError::Unsafe { .. })
        ));
        assert!(matches!(
            normalize(b"..", &l),
            Err(LayerError::Unsafe { .. })
        ));
        assert_eq!(normalize(b"a/..b/c..", &l).unwrap(), b"a/..b/c..");
        let long = [b'n'; 256];
        let err = normalize(&[&b"d/"[..], &long].concat(), &l).unwrap_err();
        assert!(err.to_string().contains("NAME_MAX"), "{err}");
        assert!(normalize(&long[..255], &l).is_ok());
        // A 4 KiB path shows as its head and tail.
        let deep = "d/".repeat(2000) + "x/..";
        let err = normalize(deep.as_bytes(), &l).unwrap_err().to_string();
        assert!(
            err.len() < 600 && err.contains("…") && err.ends_with("escapes the image"),
            "{err}"
        );
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
        let base = vec![
            dir(0, "etc/"),
            file(1, "etc/a"),
            file(2, "etc/b"),
            dir(3, "opt/"),
            dir(4, "opt/sub/"),
            file(5, "opt/sub/x"),
            file(6, "opt/y"),
            file(7, "keep"),
        ];
        // The opaque marker comes after the layer's own opt/new: it must still survive.
        let top = vec![
            dir(0, "opt/"),
            file(1, "opt/new"),
            file(2, "opt/.wh..wh..opq"),
            file(3, "etc/.wh.a"),
            file(4, ".wh.nothing-there"),
        ];
        let plan = merge(&[base, top]).unwrap();
        assert_eq!(paths(&plan), ["etc", "etc/b", "keep", "opt", "opt/new"]);
        assert_eq!(plan.content[0].len(), 2); // etc/b and keep
        assert_eq!(
            plan.content[1].get(&1).map(|p| show(p)),
            Some("opt/new".into())
        );
    }

    #[test]
    fn whiteout_of_a_directory_removes_its_subtree_and_it_can_come_back() {
        let base = vec![
            dir(0, "d"),
            file(1, "d/x"),
            dir(2, "d/e"),
            file(3, "d/e/y"),
            file(4, "dx"),
        ];
        let top = vec![file(0, ".wh.d"), dir(1, "d"), file(2, "d/z")];
        let plan = merge(&[base, top]).unwrap();
        assert_eq!(paths(&plan), ["d", "d/z", "dx"]);
    }

    #[test]
    fn replacing_a_directory_by_a_file_drops_its_children() {
        let base = vec![dir(0, "d"), file(1, "d/x")];
        let top = vec![file(0, "d")];
        let plan = merge(&[base, top]).unwrap();
        assert_eq!(paths(&plan), ["d"]);
        assert!(matches!(
            plan.nodes[0].1.kind,
            NodeKind::File {
                member: Member { layer: 1, index: 0 },
                ..
            }
        ));
        // And a directory over a directory keeps them, with the new metadata.
        let base = vec![dir(0, "d"), file(1, "d/x")];
        let mut top = dir(0, "d");
        top.meta = Meta {
            mode: 0o700,
            uid: 5,
            ..Meta::default()
        };
        let plan = merge(&[base, vec![top]]).unwrap();
        assert_eq!(paths(&plan), ["d", "d/x"]);
        assert_eq!(plan.nodes[0].1.meta.uid, 5);
    }

    #[test]
    fn hardlinks_group_by_member_and_survive_their_target() {
        let base = vec![file(0, "a"), link(1, "b", "a"), link(2, "./c", "./a")];
        // Layer 2 deletes `a` and replaces `c`: `b` must still hold layer 0's bytes.
        let top = vec![file(0, ".wh.a"), file(1, "c")];
        let plan = merge(&[base, top]).unwrap();
        assert_eq!(paths(&plan), ["b", "c"]);
        assert!(plan.hardlinks.is_empty());
        assert_eq!(plan.content[0].get(&0).map(|p| show(p)), Some("b".into()));
        // Without the deletion the group stays a group.
        let plan = merge(&[vec![file(0, "a"), link(1, "b", "a"), link(2, "c", "a")]]).unwrap();
        assert_eq!(paths(&plan), ["a"]);
        let links: Vec<_> = plan
            .hardlinks
            .iter()
            .map(|(p, t)| (show(p), show(t)))
            .collect();
        assert_eq!(links, [("b".into(), "a".into()), ("c".into(), "a".into())]);
        // A hardlink to a file of a lower layer.
        let plan = merge(&[vec![file(0, "a")], vec![link(0, "b", "a")]]).unwrap();
        assert_eq!(plan.hardlinks, [(b"b".to_vec(), b"a".to_vec())]);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let refused = |layers: &[Vec<Header>]| merge(layers).unwrap_err();
        assert!(matches!(
            refused(&[vec![file(0, "../evil")]]),
            LayerError::Unsafe { .. }
        ));
        assert!(matches!(
            refused(&[vec![file(0, "/etc/passwd")]]),
            LayerError::Unsafe { .. }
        ));
        assert!(matches!(
            refused(&[vec![link(0, "x", "/etc/shadow")]]),
            LayerError::HardlinkOutside { .. }
        ));
        assert!(matches!(
            refused(&[vec![link(0, "x", "../../etc/shadow")]]),
            LayerError::HardlinkOutside { .. }
        ));
        assert!(matches!(
            refused(&[vec![link(0, "x", "missing")]]),
            LayerError::HardlinkOutside { .. }
        ));
        assert!(matches!(
            refused(&[vec![dir(0, "d"), link(1, "x", "d")]]),
            LayerError::HardlinkOutside { .. }
        ));
        // Writing through a symlink, in the same layer or a later one, and whiteouts too.
        assert!(matches!(
            refused(&[vec![sym(0, "etc", "/etc"), file(1, "etc/passwd")]]),
            LayerError::ThroughSymlink { .. }
        ));
        assert!(matches!(
            refused(&[vec![sym(0, "l", "/")], vec![file(0, "l/tmp/x")]]),
            LayerError::ThroughSymlink { .. }
        ));
        assert!(matches!(
            refused(&[vec![sym(0, "l", "/")], vec![file(0, "l/.wh.etc")]]),
            LayerError::ThroughSymlink { .. }
        ));
        assert!(matches!(
            refused(&[vec![file(0, "f"), file(1, "f/x")]]),
            LayerError::ParentNotDir { .. }
        ));
        assert!(matches!(
            refused(&[vec![file(0, "d/.wh..")]]),
            LayerError::Unsafe { .. }
        ));
        let mut huge = file(0, "big");
        huge.kind = HeaderKind::File { size: 1 << 50 };
        assert!(matches!(
            refused(&[vec![huge]]),
            LayerError::TooLarge { .. }
        ));
        // A symlink itself may point anywhere: it is data.
        let plan = merge(&[vec![sym(0, "l", "../../../../etc/shadow")]]).unwrap();
        assert_eq!(paths(&plan), ["l"]);
    }

    #[test]
    fn devices_are_skipped_unprivileged_and_overlay_xattrs_dropped() {
        let mut tree = Tree::new(Limits::default(), false);
        let mut f = file(1, "f");
        f.meta.xattrs = vec![
            (b"trusted.overlay.redirect".to_vec(), b"/etc".to_vec()),
            (b"user.keep".to_vec(), b"1".to_vec()),
        ];
        let layer = vec![
            h(
                0,
                "dev/null",
                HeaderKind::Char {
                    rdev: libc::makedev(1, 3),
                },
            ),
            f,
        ];
        tree.apply_layer(0, &layer).unwrap();
        let plan = tree.finish(1);
        assert_eq!(paths(&plan), ["dev", "f"]);
        assert_eq!(
            plan.nodes[1].1.meta.xattrs,
            [(b"user.keep".to_vec(), b"1".to_vec())]
        );
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    }

    #[test]
    fn decodes_real_tar_headers() {
        let mut b = tar::Builder::new(Vec::new());
        let mut hd = tar::Header::new_gnu();
        hd.set_entry_type(tar::EntryType::Regular);
        hd.set_size(3);
        hd.set_mode(0o4755);
        hd.set_uid(1000);
        hd.set_gid(100);
        hd.set_mtime(1_700_000_000);
        b.append_pax_extensions([
            ("SCHILY.xattr.user.x", b"v".as_slice()),
            ("mtime", b"1700000000.25".as_slice()),
        ])
        .unwrap();
        b.append_data(&mut hd, "a/very/long/".repeat(20) + "name", &b"abc"[..])
            .unwrap();
        let mut hd = tar::Header::new_gnu();
        hd.set_entry_type(tar::EntryType::Link);
        hd.set_size(0);
        b.append_link(&mut hd, "hl", "a/very/long/".repeat(20) + "name")
            .unwrap();
        let data = b.into_inner().unwrap();
        let mut archive = super::super::guard::Archive::new(&data[..]);
        let headers = read_headers(&mut archive, &Limits::default()).unwrap();
        assert_eq!(headers.len(), 2);
        let f = &headers[0];
        assert_eq!(f.kind, HeaderKind::File { size: 3 });
        assert_eq!((f.meta.mode, f.meta.uid, f.meta.gid), (0o4755, 1000, 100));
        assert_eq!(
            (f.meta.mtime, f.meta.mtime_nsec),
            (1_700_000_000, 250_000_000)
        );
        assert_eq!(f.meta.xattrs, [(b"user.x".to_vec(), b"v".to_vec())]);
        assert_eq!(
            headers[1].kind,
            HeaderKind::Hardlink {
                target: ("a/very/long/".repeat(20) + "name").into_bytes()
            }
        );
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
    }
}
