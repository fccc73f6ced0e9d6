//! Merging decoded headers, layer by layer, into the final image tree.

use std::collections::{BTreeMap, HashMap};

use super::{
    Header, HeaderKind, LayerError, Limits, Member, Meta, Node, NodeKind, OPAQUE,
    OVERLAY_XATTR_PREFIXES, RelPath, TARGET_MAX, WHITEOUT, base, join, normalize, parent, show,
};

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
