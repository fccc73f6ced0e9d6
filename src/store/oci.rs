//! Images from and to the container ecosystem: OCI image layouts, docker archives and
//! tarballs in, OCI image layouts and tarballs out.
//!
//! Import never unpacks a rootfs to disk. Pass 1 reads every layer's tar headers (and
//! verifies every digest) to compute the final tree ([`layer::Tree`]); pass 2 streams each
//! layer again and hands the surviving files' bytes straight to the store's writer. A
//! hostile or corrupt archive fails before the image is committed, so the store never
//! lists it. The OCI image config travels as the image's config blob ([`ImageConfig`]).

#[doc(hidden)]
pub mod blob;
pub(crate) mod export;
#[doc(hidden)]
pub mod guard;
#[doc(hidden)]
pub mod layer;
pub(crate) mod source;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::store::{Entry, ImageInfo, ImageWriter, Kind, Store, StoreError, Timestamp};

pub use super::imageconfig::{go_arch, minimal_config};
pub use export::export;
pub use layer::Limits;
use layer::{Meta, NodeKind};
pub use source::Location;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    // Causes are in the messages (not `source`), so they print once.
    #[error("{}: {err}", shorten(&path.display().to_string()))]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {why}", shorten(what))]
    Invalid { what: String, why: String },
    #[error("{what}: digest is {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{origin}: no image {wanted:?} (available: {available})")]
    NoSuchImage {
        origin: String,
        wanted: String,
        available: String,
    },
    #[error("{origin} holds several images; name one of: {available}")]
    Ambiguous { origin: String, available: String },
    #[error("layer {layer} ({name}): {err}")]
    Layer {
        layer: usize,
        name: String,
        err: layer::LayerError,
    },
    #[error(transparent)]
    Verify(#[from] blob::VerifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {name} changed between the two import passes ({what})")]
    Changed { name: String, what: String },
    #[error("export to {0:?}: use oci:DIR[:TAG] or tar:FILE")]
    BadDestination(String),
}

/// A name or path for a message: whole up to ~500 bytes, else its head and tail around an
/// ellipsis (a hostile archive's 4 KiB path would bury the error).
pub fn shorten(s: &str) -> String {
    const KEEP: usize = 240;
    if s.len() <= 2 * KEEP + 16 {
        return s.to_string();
    }
    let mut head = KEEP;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - KEEP;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{} ({} bytes)", &s[..head], &s[tail..], s.len())
}

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The OCI image config JSON to store instead of the source's (a tarball or directory
    /// has none; they get [`minimal_config`] unless this is set).
    pub config: Option<Vec<u8>>,
    /// Keep char/block device nodes. `None`: only when running as root; unprivileged
    /// imports skip them with a warning, as other rootless tools do.
    pub allow_devices: Option<bool>,
    /// Sizes past which an archive is refused.
    pub limits: Limits,
    /// Counters to watch (bytes and files added), as for the store's own imports.
    pub progress: Option<std::sync::Arc<crate::store::Progress>>,
}

/// Imports `source` into `store` as image `name` (`NAME[:TAG]`). `source` is
/// `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`, a tarball (plain, gzip or zstd, told by
/// content), `-` (such a tarball on standard input, see [`import_stream`]), or a directory
/// (the store's own `import_dir`).
pub fn import(
    store: &Store,
    source: &str,
    name: &str,
    opts: &ImportOptions,
) -> Result<ImageInfo, OciError> {
    crate::store::ImageName::parse(name)?;
    let src = match Location::parse(source)? {
        Location::Dir(dir) => {
            let o = crate::store::ImportOptions {
                progress: opts.progress.clone(),
                config: Some(opts.config.clone().unwrap_or_else(minimal_config)),
                ..Default::default()
            };
            return Ok(store.import_dir(&dir, name, &o)?);
        }
        Location::Layout { dir, tag } => source::layout(&dir, tag.as_deref())?,
        Location::DockerArchive { file, reference } => {
            source::docker_archive(&file, reference.as_deref())?
        }
        Location::Tarball(file) => source::tarball(&file)?,
        Location::Stdin => {
            let config = opts.config.clone().unwrap_or_else(minimal_config);
            return import_stream(store, std::io::stdin().lock(), name, config, opts);
        }
    };
    let config = opts
        .config
        .clone()
        .or(src.config.clone())
        .unwrap_or_else(minimal_config);
    import_layers(store, &src.layers, name, config, opts)
}

/// Imports already-resolved layers (bottom first) with `config` as the image's config.
pub fn import_layers(
    store: &Store,
    layers: &[blob::Blob],
    name: &str,
    config: Vec<u8>,
    opts: &ImportOptions,
) -> Result<ImageInfo, OciError> {
    let plan = plan_layers(layers, opts)?;
    for w in &plan.warnings {
        tracing::warn!("{name}: {w}");
    }

    // Pass 2: everything but file content first, then each layer's surviving files.
    let mut writer = match &opts.progress {
        Some(p) => crate::store::ImageWriter::with_progress(store.clone(), p.clone())?,
        None => store.writer()?,
    };
    writer.add(entry(b"", Kind::Dir, &plan.root), None)?;
    for (path, node) in &plan.nodes {
        let kind = match &node.kind {
            NodeKind::File { .. } => continue,
            NodeKind::Dir => Kind::Dir,
            NodeKind::Symlink { target } => Kind::Symlink {
                target: os_path(target),
            },
            NodeKind::Char { rdev } => Kind::Char { rdev: *rdev },
            NodeKind::Block { rdev } => Kind::Block { rdev: *rdev },
            NodeKind::Fifo => Kind::Fifo,
        };
        writer.add(entry(path, kind, &node.meta), None)?;
    }
    let files: BTreeMap<&[u8], &layer::Node> = plan
        .nodes
        .iter()
        .filter(|(_, n)| matches!(n.kind, NodeKind::File { .. }))
        .map(|(p, n)| (p.as_slice(), n))
        .collect();
    for (i, b) in layers.iter().enumerate() {
        add_files(&mut writer, i, b, &plan.content[i], &files)?;
    }
    for (path, target) in &plan.hardlinks {
        let meta = files
            .get(target.as_slice())
            .map(|n| n.meta.clone())
            .unwrap_or_default();
        writer.add(
            entry(
                path,
                Kind::Hardlink {
                    target: os_path(target),
                },
                &meta,
            ),
            None,
        )?;
    }
    Ok(writer.commit(name, Some(config))?)
}

/// Pass 1 of [`import_layers`]: every layer's headers (each blob's digest checked) merged
/// into the final tree.
fn plan_layers(layers: &[blob::Blob], opts: &ImportOptions) -> Result<layer::Plan, OciError> {
    let allow_devices = opts.allow_devices.unwrap_or_else(crate::dirs::is_root);
    // Files cannot hold more than their layers may decompress to: a bomb's file header
    // fails before its zeros are inflated.
    let mut cap = 0u64;
    for (i, b) in layers.iter().enumerate() {
        let stored = blob::stored_len(b).map_err(|e| layer_err(i, b)(layer::LayerError::Tar(e)))?;
        cap = cap.saturating_add(blob::expansion_cap(stored));
    }
    let mut limits = opts.limits;
    limits.max_total_size = limits.max_total_size.min(cap);
    limits.max_file_size = limits.max_file_size.min(cap);
    let mut tree = layer::Tree::new(limits, allow_devices);
    for (i, b) in layers.iter().enumerate() {
        let read = || -> Result<Vec<layer::Header>, OciError> {
            let io = |e| layer_err(i, b)(layer::LayerError::Tar(e));
            let (mut opened, raw) = blob::open(b, true).map_err(io)?;
            let headers = {
                let mut archive = guard::Archive::new(&mut opened.tar);
                layer::read_headers(&mut archive, &limits).map_err(layer_err(i, b))?
            };
            blob::verify(b, opened, raw)?;
            Ok(headers)
        };
        // A corrupt blob fails in many ways; its digest is the root cause to report.
        let headers = read().map_err(|e| match blob::check_raw(b) {
            Err(mismatch) => OciError::Verify(mismatch),
            Ok(()) => e,
        })?;
        tree.apply_layer(i, &headers).map_err(layer_err(i, b))?;
    }
    Ok(tree.finish(layers.len()))
}

/// Pass 2 for layer `i`: adds the files of `b` the plan keeps (`wanted`: member index to
/// path), which must be the members pass 1 saw.
fn add_files(
    writer: &mut ImageWriter,
    i: usize,
    b: &blob::Blob,
    wanted: &HashMap<usize, Vec<u8>>,
    files: &BTreeMap<&[u8], &layer::Node>,
) -> Result<(), OciError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let io = |e| layer_err(i, b)(layer::LayerError::Tar(e));
    let (mut opened, _) = blob::open(b, false).map_err(io)?;
    let mut archive = guard::Archive::new(&mut opened.tar);
    let mut left = wanted.len();
    for (index, e) in archive.entries().map_err(io)?.enumerate() {
        let mut e = e.map_err(io)?;
        let Some(path) = wanted.get(&index) else {
            continue;
        };
        let Some(node) = files.get(path.as_slice()) else {
            continue;
        };
        let NodeKind::File { size, .. } = node.kind else {
            continue;
        };
        if e.size() != size {
            return Err(OciError::Changed {
                name: b.name.clone(),
                what: format!("size of member {index}"),
            });
        }
        writer.add(entry(path, Kind::File { size }, &node.meta), Some(&mut e))?;
        left -= 1;
        if left == 0 {
            break;
        }
    }
    if left > 0 {
        return Err(OciError::Changed {
            name: b.name.clone(),
            what: format!("{left} members missing"),
        });
    }
    Ok(())
}

/// Imports one tar stream (plain, gzip or zstd) read once, front to back: the whole
/// archive is the image, each entry checked as in [`import_layers`] and added as it comes.
/// A hardlink whose target a later entry replaces is refused (a stream cannot be read
/// twice to resolve it); import from a file instead.
pub fn import_stream(
    store: &Store,
    input: impl std::io::Read,
    name: &str,
    config: Vec<u8>,
    opts: &ImportOptions,
) -> Result<ImageInfo, OciError> {
    use std::collections::HashMap;
    let stream = blob::Blob {
        name: "standard input".into(),
        path: PathBuf::from("-"),
        root: None,
        offset: 0,
        len: None,
        digest: None,
        size: None,
        diff_id: None,
    };
    let io = |e| layer_err(0, &stream)(layer::LayerError::Tar(e));
    let allow_devices = opts.allow_devices.unwrap_or_else(crate::dirs::is_root);
    let mut tree = layer::Tree::new(opts.limits, allow_devices);
    let mut writer = match &opts.progress {
        Some(p) => crate::store::ImageWriter::with_progress(store.clone(), p.clone())?,
        None => store.writer()?,
    };
    writer.add(entry(b"", Kind::Dir, &tree_root()), None)?;
    let mut archive =
        guard::Archive::new(blob::decompress(std::io::BufReader::new(input)).map_err(io)?);
    // Hardlinked paths and the file each names.
    let mut links: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut targets: std::collections::BTreeSet<Vec<u8>> = Default::default();
    for (index, e) in archive.entries().map_err(io)?.enumerate() {
        let mut e = e.map_err(io)?;
        let Some(h) = layer::decode(index, &mut e, &opts.limits).map_err(layer_err(0, &stream))?
        else {
            continue;
        };
        let Some((path, node)) = tree.apply_streamed(&h).map_err(layer_err(0, &stream))? else {
            continue;
        };
        // Replacing a hardlink's target (or a directory above one) would change what the
        // link means; directory metadata updates are harmless.
        let mut below = path.clone();
        below.push(b'/');
        let replaces_target = targets.contains(&path)
            || (!matches!(h.kind, layer::HeaderKind::Dir)
                && targets
                    .range(below.clone()..)
                    .next()
                    .is_some_and(|t| t.starts_with(&below)));
        if replaces_target {
            return Err(OciError::Invalid {
                what: format!("standard input: {}", String::from_utf8_lossy(&path)),
                why: "replaces the target of an earlier hardlink; import from a file instead"
                    .into(),
            });
        }
        let kind = match (&h.kind, &node.kind) {
            (layer::HeaderKind::Hardlink { target }, _) => {
                let target =
                    layer::normalize(target, &opts.limits).map_err(layer_err(0, &stream))?;
                let target = links.get(&target).cloned().unwrap_or(target);
                links.insert(path.clone(), target.clone());
                targets.insert(target.clone());
                Kind::Hardlink {
                    target: os_path(&target),
                }
            }
            (_, NodeKind::File { size, .. }) => {
                writer.add(
                    entry(&path, Kind::File { size: *size }, &node.meta),
                    Some(&mut e),
                )?;
                continue;
            }
            (_, NodeKind::Dir) => Kind::Dir,
            (_, NodeKind::Symlink { target }) => Kind::Symlink {
                target: os_path(target),
            },
            (_, NodeKind::Char { rdev }) => Kind::Char { rdev: *rdev },
            (_, NodeKind::Block { rdev }) => Kind::Block { rdev: *rdev },
            (_, NodeKind::Fifo) => Kind::Fifo,
        };
        writer.add(entry(&path, kind, &node.meta), None)?;
    }
    Ok(writer.commit(name, Some(config))?)
}

fn tree_root() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

fn layer_err(i: usize, b: &blob::Blob) -> impl Fn(layer::LayerError) -> OciError + '_ {
    move |source| OciError::Layer {
        layer: i,
        name: b.name.clone(),
        err: source,
    }
}

fn os_path(p: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(p))
}

fn entry(path: &[u8], kind: Kind, meta: &Meta) -> Entry {
    Entry {
        path: os_path(path),
        kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime: Timestamp {
            sec: meta.mtime,
            nsec: meta.mtime_nsec,
        },
        xattrs: meta.xattrs.clone(),
    }
}

/// The parts of an OCI image config a runtime and `warren image inspect` use.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Parses an OCI image config JSON blob.
    pub fn from_json(data: &[u8]) -> Result<ImageConfig, OciError> {
        let parsed = oci_spec::image::ImageConfiguration::from_reader(data).map_err(|e| {
            OciError::Invalid {
                what: "image config".into(),
                why: e.to_string(),
            }
        })?;
        let mut out = ImageConfig {
            architecture: parsed.architecture().to_string(),
            os: parsed.os().to_string(),
            ..ImageConfig::default()
        };
        if let Some(c) = parsed.config() {
            out.entrypoint = c.entrypoint().clone().unwrap_or_default();
            out.cmd = c.cmd().clone().unwrap_or_default();
            out.env = c.env().clone().unwrap_or_default();
            out.working_dir = c.working_dir().clone().filter(|w| !w.is_empty());
            out.user = c.user().clone().filter(|u| !u.is_empty());
            out.exposed_ports = c.exposed_ports().clone().unwrap_or_default();
            out.labels = c.labels().clone().unwrap_or_default().into_iter().collect();
            out.stop_signal = c.stop_signal().clone();
        }
        Ok(out)
    }

    /// The config of image `name` in `store`; an image stored without one gets the
    /// defaults of [`minimal_config`].
    pub fn of(store: &Store, name: &str) -> Result<ImageConfig, OciError> {
        match store.image_config(name)? {
            Some(blob) => ImageConfig::from_json(&blob),
            None => ImageConfig::from_json(&minimal_config()),
        }
    }

    /// The process to run when a container gives none: Entrypoint followed by Cmd.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}
