//! Export: an image of the store as a tarball (`tar:FILE`) or as a one-layer OCI image
//! layout (`oci:DIR[:TAG]`, added to the layout if it exists), readable by skopeo, umoci
//! and the rest of the ecosystem. File bytes come straight from the chunks.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::store::index::Record;
use crate::store::{Entry, Index, Kind, Store, chunks};

use super::OciError;
use super::blob::{Digest, Hasher};
use super::source::REF_NAME;

/// Reads spans of an image's content stream, a chunk at a time.
struct Content<'a> {
    chunks: chunks::Chunks,
    index: &'a Index,
    /// Start offset of each chunk in the stream.
    starts: Vec<u64>,
    cached: Option<(usize, Vec<u8>)>,
}

impl<'a> Content<'a> {
    fn new(chunks: chunks::Chunks, index: &'a Index) -> Self {
        let mut starts = Vec::with_capacity(index.chunks.len());
        let mut at = 0u64;
        for c in &index.chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        Content {
            chunks,
            index,
            starts,
            cached: None,
        }
    }

    /// Writes `len` bytes of the stream from `offset` to `out`.
    fn copy(
        &mut self,
        mut offset: u64,
        mut len: u64,
        path: &Path,
        out: &mut impl Write,
    ) -> Result<(), OciError> {
        while len > 0 {
            let i = self
                .starts
                .partition_point(|&s| s <= offset)
                .saturating_sub(1);
            if self.cached.as_ref().map(|c| c.0) != Some(i) {
                let c = self.index.chunks.get(i).ok_or_else(|| OciError::Invalid {
                    what: path.display().to_string(),
                    why: "content past the end of the stream".into(),
                })?;
                self.cached = Some((i, self.chunks.read(&c.id, c.len, path)?));
            }
            let data = self
                .cached
                .as_ref()
                .map(|c| c.1.as_slice())
                .unwrap_or_default();
            let from = (offset - self.starts[i]) as usize;
            let n = (data.len().saturating_sub(from) as u64).min(len) as usize;
            if n == 0 {
                return Err(OciError::Invalid {
                    what: path.display().to_string(),
                    why: "content past the end of the stream".into(),
                });
            }
            out.write_all(&data[from..from + n])
                .map_err(|e| OciError::Io {
                    path: path.to_path_buf(),
                    err: e,
                })?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}

/// Writes image `index` as a tar stream to `out` (root-relative `./` paths, numeric
/// owners, xattrs and nanosecond times as pax records, hardlinks as links).
pub fn write_tar(store: &Store, index: &Index, out: impl Write) -> Result<(), OciError> {
    // Shared, as extracts hold it: a gc must not rewrite the packs we read.
    let _lock = store.lock(false)?;
    let mut content = Content::new(store.chunks()?, index);
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    // Hardlinks last: a link must come after the file it names, wherever that sorts.
    let (links, others): (Vec<_>, Vec<_>) = index
        .records
        .iter()
        .partition(|r| matches!(r.entry.kind, Kind::Hardlink { .. }));
    for record in others.into_iter().chain(links) {
        append_record(&mut tar, &mut content, record)?;
    }
    tar.into_inner()
        .map_err(io_at(Path::new("tar")))?
        .flush()
        .map_err(io_at(Path::new("tar")))?;
    Ok(())
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> OciError {
    let p = p.to_path_buf();
    move |err| OciError::Io { path: p, err }
}

/// The pax records of `e`: its xattrs, and its mtime when it has nanoseconds.
fn pax_records(e: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in &e.xattrs {
        pax.push((
            format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
            v.clone(),
        ));
    }
    if e.mtime.nsec != 0 {
        pax.push((
            "mtime".into(),
            format!("{}.{:09}", e.mtime.sec, e.mtime.nsec).into_bytes(),
        ));
    }
    pax
}

/// Appends one index record (its pax records, header and content) as `./PATH`.
fn append_record<W: Write>(
    tar: &mut tar::Builder<W>,
    content: &mut Content<'_>,
    record: &Record,
) -> Result<(), OciError> {
    let e = &record.entry;
    let io = || io_at(&e.path);
    let mut name = PathBuf::from(".");
    name.push(&e.path);
    let pax = pax_records(e);
    if !pax.is_empty() {
        tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(u64::try_from(e.mtime.sec).unwrap_or(0));
    h.set_size(0);
    match &e.kind {
        Kind::File { size } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*size);
            // Stream the bytes through a pipe-less adapter: a reader over the chunks.
            let mut buf = Vec::with_capacity(usize::try_from(*size).unwrap_or(0).min(1 << 20));
            if *size <= 8 << 20 {
                content.copy(record.offset, *size, &e.path, &mut buf)?;
                tar.append_data(&mut h, &name, buf.as_slice())
                    .map_err(io())?;
            } else {
                let reader = ChunkReader {
                    content,
                    offset: record.offset,
                    left: *size,
                    path: &e.path,
                };
                tar.append_data(&mut h, &name, reader).map_err(io())?;
            }
        }
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, &name, io::empty()).map_err(io())?;
        }
        Kind::Symlink { target } => {
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, &name, target).map_err(io())?;
        }
        Kind::Hardlink { target } => {
            h.set_entry_type(tar::EntryType::Link);
            let mut t = PathBuf::from(".");
            t.push(target);
            tar.append_link(&mut h, &name, &t).map_err(io())?;
        }
        Kind::Char { rdev } | Kind::Block { rdev } => {
            let char = matches!(e.kind, Kind::Char { .. });
            h.set_entry_type(if char {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let (ma, mi) = (libc::major(*rdev), libc::minor(*rdev));
            h.set_device_major(ma).map_err(io())?;
            h.set_device_minor(mi).map_err(io())?;
            tar.append_data(&mut h, &name, io::empty()).map_err(io())?;
        }
        Kind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            tar.append_data(&mut h, &name, io::empty()).map_err(io())?;
        }
        // Tar has no sockets; like GNU tar, leave them out.
        Kind::Socket => {}
    }
    Ok(())
}

/// A reader over one file's span of the content stream.
struct ChunkReader<'c, 'a> {
    content: &'c mut Content<'a>,
    offset: u64,
    left: u64,
    path: &'c Path,
}

impl io::Read for ChunkReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left).min(1 << 20) as usize;
        if n == 0 {
            return Ok(0);
        }
        let mut out = &mut buf[..n];
        self.content
            .copy(self.offset, n as u64, self.path, &mut out)
            .map_err(io::Error::other)?;
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes what it writes.
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
    pub(crate) bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Exports image `name` to `dest`: `oci:DIR[:TAG]` (TAG defaults to the image's tag) or
/// `tar:FILE` (a plain tarball of the rootfs). Returns the manifest digest for `oci:`.
pub fn export(store: &Store, name: &str, dest: &str) -> Result<Option<String>, OciError> {
    let index = store.index(name)?;
    if let Some(file) = dest.strip_prefix("tar:") {
        let path = Path::new(file);
        let tmp = temp_beside(path);
        let out = File::create(&tmp).map_err(|e| OciError::Io {
            path: tmp.clone(),
            err: e,
        })?;
        let done =
            write_tar(store, &index, BufWriter::new(out)).and_then(|()| finish_file(&tmp, path));
        if done.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        return done.map(|()| None);
    }
    let Some(rest) = dest.strip_prefix("oci:") else {
        return Err(OciError::BadDestination(dest.into()));
    };
    // DIR:TAG when DIR exists or the last `:` part cannot be a path; else the whole is DIR.
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((d, t)) if !t.is_empty() && !t.contains('/') => (PathBuf::from(d), t.to_string()),
        _ => (
            PathBuf::from(rest),
            crate::store::ImageName::parse(name)?.tag,
        ),
    };
    write_layout(store, &index, &dir, &tag).map(Some)
}

fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

fn finish_file(tmp: &Path, path: &Path) -> Result<(), OciError> {
    let err = |source| OciError::Io {
        path: path.to_path_buf(),
        err: source,
    };
    File::open(tmp).and_then(|f| f.sync_all()).map_err(err)?;
    fs::rename(tmp, path).map_err(err)
}

/// Stores `data` as a blob of the layout; returns its descriptor fields.
fn put_blob(dir: &Path, data: &[u8]) -> Result<(Digest, u64), OciError> {
    let digest = Digest::sha256(data);
    let path = dir.join(digest.blob_path());
    crate::atomic::write(&path, data).map_err(|e| OciError::Io { path, err: e })?;
    Ok((digest, data.len() as u64))
}

fn write_layout(store: &Store, index: &Index, dir: &Path, tag: &str) -> Result<String, OciError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        crate::atomic::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_at(&layout))?;
    }
    let (layer, layer_size) = write_layer(store, index, dir, &blobs)?;
    let config = layout_config(index, &layer)?;
    let (config_digest, config_size) = put_blob(dir, &config)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_size}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let (manifest_digest, manifest_size) = put_blob(dir, &manifest)?;
    tag_manifest(dir, tag, &manifest_digest, manifest_size)?;
    Ok(manifest_digest.to_string())
}

/// The layer blob: an uncompressed tar (its digest is its diff id), hashed while written.
fn write_layer(
    store: &Store,
    index: &Index,
    dir: &Path,
    blobs: &Path,
) -> Result<(Digest, u64), OciError> {
    let tmp = blobs.join(format!(".layer.tmp{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_at(&tmp))?;
    let mut w = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Hasher::new(super::blob::Algorithm::Sha256),
        bytes: 0,
    };
    let written = write_tar(store, index, &mut w);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let (layer, layer_size) = (w.hasher.finish(), w.bytes);
    drop(w.inner);
    finish_file(&tmp, &dir.join(layer.blob_path()))?;
    Ok((layer, layer_size))
}

/// The image's config: the stored one with `layer` as its rootfs.
pub(crate) fn layout_config(index: &Index, layer: &Digest) -> Result<Vec<u8>, OciError> {
    let stored = index.config.clone().unwrap_or_else(super::minimal_config);
    let mut config: serde_json::Value =
        serde_json::from_slice(&stored).map_err(|e| OciError::Invalid {
            what: format!("config of {}", index.name),
            why: e.to_string(),
        })?;
    let obj = config.as_object_mut().ok_or_else(|| OciError::Invalid {
        what: format!("config of {}", index.name),
        why: "not a JSON object".into(),
    })?;
    obj.entry("architecture")
        .or_insert_with(|| super::go_arch().into());
    obj.entry("os").or_insert_with(|| "linux".into());
    obj.insert(
        "rootfs".into(),
        serde_json::json!({"type": "layers", "diff_ids": [layer.to_string()]}),
    );
    obj.insert(
        "history".into(),
        serde_json::json!([{"created_by": "warren image export", "comment": index.name}]),
    );
    Ok(serde_json::to_vec(&config).unwrap_or_default())
}

/// index.json: keeps other images, replaces the one tagged `tag` with the manifest.
fn tag_manifest(dir: &Path, tag: &str, manifest: &Digest, size: u64) -> Result<(), OciError> {
    let index_path = dir.join("index.json");
    let mut oci_index: serde_json::Value = match fs::read(&index_path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| OciError::Invalid {
            what: index_path.display().to_string(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            serde_json::json!({"schemaVersion": 2, "manifests": []})
        }
        Err(e) => return Err(io_at(&index_path)(e)),
    };
    let manifests = oci_index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| OciError::Invalid {
            what: index_path.display().to_string(),
            why: "no manifests array".into(),
        })?;
    manifests.retain(|m| {
        m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
            .and_then(|v| v.as_str())
            != Some(tag)
    });
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest.to_string(),
        "size": size,
        "annotations": {REF_NAME: tag},
        "platform": {"architecture": super::go_arch(), "os": "linux"},
    }));
    let data = serde_json::to_vec_pretty(&oci_index).unwrap_or_default();
    crate::atomic::write(&index_path, &data).map_err(io_at(&index_path))
}
