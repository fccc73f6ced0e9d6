//! Import sources: an OCI image layout, a docker archive, a tarball; each resolved to its
//! config and its layers, in order, with the digests they must have.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::OciError;
use super::blob::{Blob, Digest};

/// The OCI annotation naming a manifest in an image layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests, indexes and configs are small; refuse anything absurd before reading it.
const MAX_JSON: u64 = 16 << 20;

/// An image to import: its config JSON (if it has one) and its layers, bottom first.
#[derive(Debug)]
pub struct Source {
    pub config: Option<Vec<u8>>,
    pub layers: Vec<Blob>,
}

/// What an import source string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `oci:DIR[:TAG]`
    Layout { dir: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// A directory tree (imported by the store itself).
    Dir(PathBuf),
    /// A tar file, plain or compressed.
    Tarball(PathBuf),
    /// `-`: a tar stream on standard input.
    Stdin,
}

/// Splits `PATH[:REF]`: the longest existing path wins, so paths containing `:` work.
fn split_ref(rest: &str) -> Result<(PathBuf, Option<String>), OciError> {
    if Path::new(rest).exists() {
        return Ok((rest.into(), None));
    }
    for (i, _) in rest.match_indices(':') {
        let (path, reference) = (&rest[..i], &rest[i + 1..]);
        if Path::new(path).exists() && !reference.is_empty() {
            return Ok((path.into(), Some(reference.to_string())));
        }
    }
    Err(OciError::NotFound(rest.into()))
}

impl Location {
    /// Parses an import source: `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`, a directory
    /// or a tarball.
    pub fn parse(source: &str) -> Result<Location, OciError> {
        if let Some(rest) = source.strip_prefix("oci:") {
            let (dir, tag) = split_ref(rest)?;
            return Ok(Location::Layout { dir, tag });
        }
        if let Some(rest) = source.strip_prefix("docker-archive:") {
            let (file, reference) = split_ref(rest)?;
            return Ok(Location::DockerArchive { file, reference });
        }
        if source == "-" {
            return Ok(Location::Stdin);
        }
        let path = PathBuf::from(source);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Location::Dir(path)),
            Ok(_) => Ok(Location::Tarball(path)),
            Err(_) => Err(OciError::NotFound(path)),
        }
    }
}

fn read_limited(mut r: impl Read, what: &str) -> Result<Vec<u8>, OciError> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(|e| OciError::Io {
            path: what.into(),
            err: e,
        })?;
    if buf.len() as u64 > MAX_JSON {
        return Err(OciError::Invalid {
            what: what.into(),
            why: "larger than 16 MiB".into(),
        });
    }
    Ok(buf)
}

/// Parses JSON as `T`, naming the field that failed and what was expected there (the
/// image spec types' own parsers say only "serde failed").
fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T, OciError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        OciError::Invalid {
            what: what.into(),
            why: match path.as_str() {
                "." => e.inner().to_string(),
                _ => format!("field `{path}`: {}", e.inner()),
            },
        }
    })
}

/// Reads a blob of a layout that `descriptor` (for messages: what names it) says has
/// `size` bytes and `digest`, refusing it when either differs.
fn read_verified(
    dir: &Path,
    digest: &Digest,
    size: u64,
    descriptor: &str,
) -> Result<Vec<u8>, OciError> {
    let path = dir.join(digest.blob_path());
    let file = open_beneath(dir, &digest.blob_path())?;
    let data = read_limited(file, &path.to_string_lossy())?;
    if data.len() as u64 != size {
        return Err(OciError::Invalid {
            what: format!("blob {digest}"),
            why: format!(
                "its descriptor in {descriptor} gives a size of {size} bytes, the blob has {}",
                data.len()
            ),
        });
    }
    let actual = Digest::sha256(&data);
    let actual = if digest.algorithm == actual.algorithm {
        actual
    } else {
        let mut h = super::blob::Hasher::new(digest.algorithm);
        h.update(&data);
        h.finish()
    };
    if actual != *digest {
        return Err(OciError::DigestMismatch {
            what: path.display().to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(data)
}

/// Opens `rel` inside `dir` without following symlinks out of it.
fn open_beneath(dir: &Path, rel: &Path) -> Result<File, OciError> {
    let io_err = |source| OciError::Io {
        path: dir.join(rel),
        err: source,
    };
    super::blob::open_regular(Some(dir), rel).map_err(io_err)
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, OciError> {
    Digest::parse(s).ok_or_else(|| OciError::Invalid {
        what: what.into(),
        why: format!("unsupported or malformed digest {s:?} (sha256/sha512 only)"),
    })
}

fn diff_ids(config: &[u8], what: &str) -> Result<Vec<Digest>, OciError> {
    let parsed: ImageConfiguration = parse_json(config, what)?;
    parsed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| parse_digest(d, what))
        .collect()
}

fn is_layer(media: &MediaType) -> Result<(), String> {
    match media {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => Ok(()),
        MediaType::Other(s) if s.starts_with("application/vnd.docker.image.rootfs.") => Ok(()),
        other => Err(format!("unsupported layer media type {other}")),
    }
}

/// The one of `candidates`; none is [`OciError::NoSuchImage`], several
/// [`OciError::Ambiguous`], both listing what `available` names.
fn pick_one<T: Copy>(
    candidates: &[T],
    origin: &Path,
    wanted: &str,
    available: impl Fn() -> String,
) -> Result<T, OciError> {
    match candidates {
        [one] => Ok(*one),
        [] => Err(OciError::NoSuchImage {
            origin: origin.display().to_string(),
            wanted: wanted.into(),
            available: available(),
        }),
        _ => Err(OciError::Ambiguous {
            origin: origin.display().to_string(),
            available: available(),
        }),
    }
}

/// A manifest (`what`) must list as many layers as its config has diff_ids.
fn check_layer_count(what: &str, layers: usize, diffs: &[Digest]) -> Result<(), OciError> {
    if diffs.len() != layers {
        return Err(OciError::Invalid {
            what: what.into(),
            why: format!(
                "{layers} layers but the config lists {} diff_ids",
                diffs.len()
            ),
        });
    }
    Ok(())
}

/// Resolves `oci:DIR[:TAG]`: the manifest tagged TAG (or the only one), following one
/// image index level to this machine's platform.
pub fn layout(dir: &Path, tag: Option<&str>) -> Result<Source, OciError> {
    check_layout_version(dir)?;
    let (digest, size, named_by) = layout_manifest(dir, tag)?;
    let manifest_data = read_verified(dir, &digest, size, &named_by)?;
    let manifest: ImageManifest = parse_json(&manifest_data, &format!("manifest {digest}"))?;
    let config_digest = parse_digest(manifest.config().digest().as_ref(), &digest.to_string())?;
    let config = read_verified(
        dir,
        &config_digest,
        manifest.config().size(),
        &format!("manifest {digest}"),
    )?;
    let diffs = diff_ids(&config, &format!("config {config_digest}"))?;
    check_layer_count(&digest.to_string(), manifest.layers().len(), &diffs)?;
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(diffs) {
        let d = parse_digest(layer.digest().as_ref(), &digest.to_string())?;
        is_layer(layer.media_type()).map_err(|why| OciError::Invalid {
            what: d.to_string(),
            why,
        })?;
        // Open now so a blob that leads out of the layout, or is no file, is refused early.
        drop(open_beneath(dir, &d.blob_path())?);
        layers.push(Blob {
            name: d.to_string(),
            path: d.blob_path(),
            root: Some(dir.to_path_buf()),
            offset: 0,
            len: None,
            size: Some(layer.size()),
            digest: Some(d),
            diff_id: Some(diff_id),
        });
    }
    Ok(Source {
        config: Some(config),
        layers,
    })
}

/// The layout's `oci-layout` file must say version 1.x.
fn check_layout_version(dir: &Path) -> Result<(), OciError> {
    let marker = dir.join("oci-layout");
    let version = read_limited(
        open_beneath(dir, Path::new("oci-layout"))?,
        &marker.to_string_lossy(),
    )?;
    let version: serde_json::Value = serde_json::from_slice(&version).unwrap_or_default();
    if !version["imageLayoutVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("1."))
    {
        return Err(OciError::Invalid {
            what: marker.display().to_string(),
            why: format!(
                "unsupported image layout version {}",
                version["imageLayoutVersion"]
            ),
        });
    }
    Ok(())
}

/// The manifest `tag` names in the layout's index.json (through one nested image index,
/// to this machine's platform): its digest, size, and what names it.
fn layout_manifest(dir: &Path, tag: Option<&str>) -> Result<(Digest, u64, String), OciError> {
    let index_path = dir.join("index.json");
    let what = index_path.display().to_string();
    let data = read_limited(open_beneath(dir, Path::new("index.json"))?, &what)?;
    let index: ImageIndex = parse_json(&data, &what)?;
    let ref_name = |m: &oci_spec::image::Descriptor| {
        m.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| tag.is_none() || ref_name(m).as_deref() == tag)
        .collect();
    let tags = || {
        let tags: Vec<String> = index.manifests().iter().filter_map(ref_name).collect();
        tags.join(", ")
    };
    let descriptor = pick_one(&candidates, dir, tag.unwrap_or(""), tags)?;
    let mut digest = parse_digest(descriptor.digest().as_ref(), &what)?;
    let mut media = descriptor.media_type().clone();
    let mut size = descriptor.size();
    let mut named_by = what;
    if media == MediaType::ImageIndex {
        let nested = read_verified(dir, &digest, size, &named_by)?;
        let nested: ImageIndex = parse_json(&nested, &format!("index {digest}"))?;
        let arch = super::go_arch();
        let pick = nested.manifests().iter().find(|m| {
            m.platform().as_ref().is_none_or(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        });
        let Some(pick) = pick else {
            return Err(OciError::NoSuchImage {
                origin: dir.display().to_string(),
                wanted: format!("linux/{arch}"),
                available: "other platforms".into(),
            });
        };
        named_by = format!("index {digest}");
        digest = parse_digest(pick.digest().as_ref(), &digest.to_string())?;
        media = pick.media_type().clone();
        size = pick.size();
    }
    if media != MediaType::ImageManifest
        && media != MediaType::Other("application/vnd.docker.distribution.manifest.v2+json".into())
    {
        return Err(OciError::Invalid {
            what: digest.to_string(),
            why: format!("unsupported manifest media type {media}"),
        });
    }
    Ok((digest, size, named_by))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Whether docker reference `full` (as `docker save` records it) is `short`, which may
/// leave out the default registry (`docker.io/`) and namespace (`library/`).
fn same_reference(full: &str, short: &str) -> bool {
    full == short
        || full.strip_prefix("docker.io/") == Some(short)
        || full.strip_prefix("docker.io/library/") == Some(short)
}

/// A docker archive's regular members: where each is (offset, size), and the bytes of
/// the small JSON ones (manifest, configs).
struct Members {
    at: HashMap<String, (u64, u64)>,
    small: HashMap<String, Vec<u8>>,
}

/// Resolves `docker-archive:FILE[:REF]` (`docker save` / `skopeo copy docker-archive:`):
/// an uncompressed tar whose members are read in place, by offset.
pub fn docker_archive(file: &Path, reference: Option<&str>) -> Result<Source, OciError> {
    let members = archive_members(file)?;
    let what = format!("{}:manifest.json", file.display());
    let Some(manifest) = members.small.get("manifest.json") else {
        return Err(OciError::Invalid {
            what,
            why: "no manifest.json: not a docker archive".into(),
        });
    };
    let manifests: Vec<DockerManifest> =
        serde_json::from_slice(manifest).map_err(|e| OciError::Invalid {
            what: what.clone(),
            why: e.to_string(),
        })?;
    let tags = || {
        manifests
            .iter()
            .flat_map(|m| m.repo_tags.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<&DockerManifest> = match reference {
        Some(r) => manifests
            .iter()
            .filter(|m| {
                m.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| same_reference(t, r)))
            })
            .collect(),
        None => manifests.iter().collect(),
    };
    let m = pick_one(&chosen, file, reference.unwrap_or(""), tags)?;
    let config = archive_config(&members, m, &what)?;
    let diffs = diff_ids(&config, &m.config)?;
    check_layer_count(&what, m.layers.len(), &diffs)?;
    let mut layers = Vec::new();
    for (name, diff_id) in m.layers.iter().zip(diffs) {
        let Some(&(offset, len)) = members.at.get(member_name(name)) else {
            return Err(OciError::Invalid {
                what: what.clone(),
                why: format!("layer {name} is not in the archive"),
            });
        };
        // `blobs/sha256/HEX` members are named by the digest of their stored bytes.
        let digest = name
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::parse(&format!("sha256:{h}")));
        layers.push(Blob {
            name: name.clone(),
            path: file.to_path_buf(),
            root: None,
            offset,
            len: Some(len),
            size: Some(len),
            digest,
            diff_id: Some(diff_id),
        });
    }
    Ok(Source {
        config: Some(config),
        layers,
    })
}

/// A member name as the manifest writes it, as the archive lists it.
fn member_name(name: &str) -> &str {
    name.trim_start_matches("./")
}

/// Lists the archive's members, reading the small JSON ones; refuses a compressed one.
fn archive_members(file: &Path) -> Result<Members, OciError> {
    let io_err = |source| OciError::Io {
        path: file.to_path_buf(),
        err: source,
    };
    let mut f = super::blob::open_regular(None, file).map_err(io_err)?;
    // Members are read in place by offset, which a compressed archive does not allow.
    let compression = super::blob::detect(&mut io::BufReader::new(&mut f)).map_err(io_err)?;
    if compression != super::blob::Compression::None {
        return Err(OciError::Invalid {
            what: file.display().to_string(),
            why: format!("a {compression:?}-compressed docker archive: decompress it first"),
        });
    }
    io::Seek::rewind(&mut f).map_err(io_err)?;
    let mut members = Members {
        at: HashMap::new(),
        small: HashMap::new(),
    };
    let mut archive = super::guard::Archive::seekable(&mut f);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let name = member_name(&String::from_utf8_lossy(&entry.path_bytes())).to_string();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        if name == "manifest.json" || name.ends_with(".json") && !name.contains('/') {
            members
                .small
                .insert(name.clone(), read_limited(&mut entry, &name)?);
        } else if name.starts_with("blobs/") && size <= MAX_JSON {
            // Newer docker saves configs as blobs too; keep small ones at hand.
            members
                .small
                .insert(name.clone(), read_limited(&mut entry, &name)?);
        }
        members.at.insert(name, (offset, size));
    }
    Ok(members)
}

/// The config manifest `m` names, checked against the sha256 its name carries
/// (`HEX.json` or `blobs/sha256/HEX`).
fn archive_config(members: &Members, m: &DockerManifest, what: &str) -> Result<Vec<u8>, OciError> {
    let config = members
        .small
        .get(member_name(&m.config))
        .cloned()
        .ok_or_else(|| OciError::Invalid {
            what: what.into(),
            why: format!("config {} is not in the archive", m.config),
        })?;
    let config_hex = Path::new(&m.config)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(expected) = Digest::parse(&format!("sha256:{config_hex}")) {
        let actual = Digest::sha256(&config);
        if actual != expected {
            return Err(OciError::DigestMismatch {
                what: m.config.clone(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(config)
}

/// A tarball (plain, gzip or zstd) as the single layer of an image without config.
pub fn tarball(file: &Path) -> Result<Source, OciError> {
    super::blob::open_regular(None, file).map_err(|source| OciError::Io {
        path: file.to_path_buf(),
        err: source,
    })?;
    Ok(Source {
        config: None,
        layers: vec![Blob {
            name: file.display().to_string(),
            path: file.to_path_buf(),
            root: None,
            offset: 0,
            len: None,
            size: None,
            digest: None,
            diff_id: None,
        }],
    })
}
