//! Manifests: OCI image manifest and index, Docker v2 schema 2 manifest and manifest
//! list; fetched with size caps, verified by digest, an index resolved to one platform.

use serde::Deserialize;

use super::RegistryError;
use super::client::Client;
use crate::store::oci::blob::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Manifests and configs are small; a registry sending more is refused.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Layers an image may have.
pub const MAX_LAYERS: usize = 256;

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Platform, RegistryError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(RegistryError::Invalid {
                what: format!("platform {s:?}"),
                why: "expected OS/ARCH[/VARIANT], e.g. linux/amd64".into(),
            }),
        }
    }

    /// This machine's: `linux/` and Go's name for the architecture.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: crate::store::oci::go_arch().into(),
            variant: None,
        }
    }

    fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// An image manifest: its config and layers.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn parse_digest(s: &str, what: &str) -> Result<Digest, RegistryError> {
    Digest::parse(s).ok_or_else(|| RegistryError::Invalid {
        what: what.into(),
        why: format!("{s:?} is not a sha256/sha512 digest"),
    })
}

/// GETs manifest `reference` (tag or digest): its bytes, media type and digest.
fn fetch(client: &Client, reference: &str) -> Result<(Vec<u8>, String, Digest), RegistryError> {
    let url = client.url(&format!("manifests/{reference}"));
    let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
    let (data, content_type) = client.get_small(&url, &[("Accept", accept)], MAX_MANIFEST)?;
    let digest = match Digest::parse(reference) {
        Some(expected) => {
            super::check(format!("manifest {reference}"), &data, None, &expected)?;
            expected
        }
        None => Digest::sha256(&data),
    };
    Ok((data, content_type, digest))
}

/// Resolves `reference` to an image manifest for `platform` (through an index or
/// manifest list when the reference names one).
pub fn resolve(
    client: &Client,
    reference: &str,
    platform: &Platform,
) -> Result<Manifest, RegistryError> {
    let (data, content_type, digest) = fetch(client, reference)?;
    let raw = parse(&data, &digest)?;
    let media = raw.media_type.clone().unwrap_or(content_type);
    let is_index = raw.manifests.is_some() || media == OCI_INDEX || media == DOCKER_LIST;
    if !is_index {
        return manifest(raw, digest);
    }
    let manifests = raw.manifests.unwrap_or_default();
    let chosen = manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or_else(|| RegistryError::NoPlatform {
            reference: format!("{}@{digest}", client.host()),
            wanted: platform.to_string(),
            available: manifests
                .iter()
                .filter_map(|m| m.platform.as_ref().map(Platform::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    if chosen.size > MAX_MANIFEST {
        return Err(too_big(&chosen.digest, chosen.size));
    }
    let (data, _, digest) = fetch(client, &chosen.digest)?;
    if data.len() as u64 != chosen.size {
        return Err(RegistryError::SizeMismatch {
            blob: format!("manifest {digest}"),
            expected: chosen.size,
            actual: data.len() as u64,
        });
    }
    let raw = parse(&data, &digest)?;
    if raw.manifests.is_some() {
        return Err(invalid(&digest, "an index inside an index"));
    }
    manifest(raw, digest)
}

fn parse(data: &[u8], digest: &Digest) -> Result<Raw, RegistryError> {
    let raw: Raw = serde_json::from_slice(data).map_err(|e| invalid(digest, &e.to_string()))?;
    if raw.schema_version != 2 {
        return Err(invalid(
            digest,
            "schema version 1 manifests are not supported (the registry should serve schema 2)",
        ));
    }
    Ok(raw)
}

fn invalid(digest: &Digest, why: &str) -> RegistryError {
    RegistryError::Invalid {
        what: format!("manifest {digest}"),
        why: why.into(),
    }
}

fn too_big(digest: &str, size: u64) -> RegistryError {
    RegistryError::Invalid {
        what: digest.into(),
        why: format!("{size} bytes, more than the {MAX_MANIFEST} allowed"),
    }
}

fn manifest(raw: Raw, digest: Digest) -> Result<Manifest, RegistryError> {
    let config = raw.config.ok_or_else(|| invalid(&digest, "no config"))?;
    if config.media_type == super::artifact::CONFIG_TYPE {
        return Err(RegistryError::StoreArtifact { digest });
    }
    if ![OCI_CONFIG, DOCKER_CONFIG, ""].contains(&config.media_type.as_str()) {
        return Err(invalid(
            &digest,
            &format!(
                "config media type {} is not an image config",
                config.media_type
            ),
        ));
    }
    if config.size > MAX_MANIFEST {
        return Err(too_big(&config.digest, config.size));
    }
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(invalid(
            &digest,
            &format!("{} layers, more than {MAX_LAYERS}", layers.len()),
        ));
    }
    for l in &layers {
        check_layer(l)?;
    }
    Ok(Manifest {
        digest,
        config,
        layers,
    })
}

/// Layers must be tars (plain, gzip, zstd) the registry serves: foreign and
/// non-distributable layers (fetched from elsewhere, under other terms) are refused.
fn check_layer(l: &Descriptor) -> Result<(), RegistryError> {
    let m = l.media_type.as_str();
    if m.contains("foreign") || m.contains("nondistributable") || l.urls.is_some() {
        return Err(RegistryError::Foreign {
            blob: l.digest.clone(),
            media_type: m.into(),
        });
    }
    let ok = matches!(
        m,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    );
    if !ok {
        return Err(RegistryError::Invalid {
            what: format!("layer {}", l.digest),
            why: format!("unsupported layer media type {m:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_layers() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        let any = Platform::parse("linux/arm64").unwrap();
        assert!(any.matches(&p) && !p.matches(&Platform::host()) || go_is_arm());
        let d = |m: &str| Descriptor {
            media_type: m.into(),
            digest: "sha256:x".into(),
            size: 1,
            platform: None,
            urls: None,
        };
        assert!(check_layer(&d("application/vnd.oci.image.layer.v1.tar+zstd")).is_ok());
        assert!(matches!(
            check_layer(&d(
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            )),
            Err(RegistryError::Foreign { .. })
        ));
        assert!(check_layer(&d("application/x-whatever")).is_err());
    }

    fn go_is_arm() -> bool {
        crate::store::oci::go_arch() == "arm64"
    }
}
