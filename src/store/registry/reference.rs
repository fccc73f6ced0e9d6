//! Image references: `[docker://]HOST/REPO[:TAG][@DIGEST]`, and short names resolved the
//! way `registries.conf` users expect.

use std::path::Path;

use super::RegistryError;
use crate::store::oci::blob::Digest;

/// Docker Hub's name in references, and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A fully qualified reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// `library/busybox`, `org/app`.
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host the registry API answers on.
    pub fn api_host(&self) -> &str {
        api_host_of(&self.registry)
    }

    /// What `/v2/REPO/manifests/` takes: the digest if there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// A local image name for it: `HOST/REPO:TAG` (or the digest's first 12 hex digits
    /// as the tag when only a digest is given).
    pub fn local_name(&self) -> String {
        let tag = match (&self.tag, &self.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => format!("{}-{}", d.algorithm.name(), &d.hex[..12]),
            (None, None) => "latest".into(),
        };
        format!("{}/{}:{tag}", self.registry, self.repository)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The host a registry's API answers on (Docker Hub's differs from its name).
pub fn api_host_of(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

fn bad(reference: &str, why: &str) -> RegistryError {
    RegistryError::BadReference {
        reference: reference.into(),
        why: why.into(),
    }
}

/// Whether the first path component names a registry (as docker decides: a `.` or a
/// `:` in it, or `localhost`).
fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.as_bytes()[0] != b'.'
        && tag.as_bytes()[0] != b'-'
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a reference. A name without a registry is returned with `registry` empty;
/// [`resolve`] fills it in.
pub fn parse(s: &str) -> Result<Reference, RegistryError> {
    let rest = s.strip_prefix("docker://").unwrap_or(s);
    let (rest, digest) = match rest.split_once('@') {
        Some((r, d)) => {
            let d = Digest::parse(d).ok_or_else(|| bad(s, "the digest is not sha256:HEX"))?;
            (r, Some(d))
        }
        None => (rest, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
        None => (rest, None),
    };
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(bad(s, "the tag is [A-Za-z0-9._-], 1-128 characters"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, repo)) if is_registry(first) => (first.to_string(), repo.to_string()),
        _ => (String::new(), name.to_string()),
    };
    if registry
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
    {
        return Err(bad(s, "the registry is not HOST[:PORT]"));
    }
    if !valid_repository(&repository) {
        return Err(bad(
            s,
            "the repository is lowercase [a-z0-9._-] components separated by '/'",
        ));
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".into())
    } else {
        tag
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// The registries a short name is tried at, in order: `unqualified-search-registries`
/// from `registries.conf` when it names any, else Docker Hub.
pub fn search_registries(registries_conf: &Path) -> Result<Vec<String>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Conf {
        #[serde(default, rename = "unqualified-search-registries")]
        search: Vec<String>,
    }
    let text = match std::fs::read_to_string(registries_conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![DOCKER_HUB.into()]),
        Err(err) => {
            return Err(RegistryError::Io {
                path: registries_conf.into(),
                err,
            });
        }
    };
    let conf: Conf = toml::from_str(&text).map_err(|e| RegistryError::Invalid {
        what: registries_conf.display().to_string(),
        why: e.message().to_string(),
    })?;
    if conf.search.is_empty() {
        return Ok(vec![DOCKER_HUB.into()]);
    }
    Ok(conf.search)
}

/// The fully qualified references `s` may mean, in the order to try them.
pub fn resolve(s: &str, registries_conf: &Path) -> Result<Vec<Reference>, RegistryError> {
    let parsed = parse(s)?;
    if !parsed.registry.is_empty() {
        return Ok(vec![parsed]);
    }
    let mut out = Vec::new();
    for registry in search_registries(registries_conf)? {
        let mut r = parsed.clone();
        if registry == DOCKER_HUB && !r.repository.contains('/') {
            r.repository = format!("library/{}", r.repository);
        }
        r.registry = registry;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qualified_and_short_names() {
        let r = parse("docker://127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        let r = parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("", Some("latest"))
        );
        let none = Path::new("/nonexistent/registries.conf");
        let all = resolve("busybox", none).unwrap();
        assert_eq!(all[0].to_string(), "docker.io/library/busybox:latest");
        assert_eq!(all[0].api_host(), "registry-1.docker.io");
        assert_eq!(resolve("org/app:1", none).unwrap()[0].repository, "org/app");
    }

    #[test]
    fn refuses_bad_references() {
        for s in [
            "Busybox",
            "a//b",
            "x.io/a:b:c",
            "x.io/a@sha256:zz",
            "x.io/a:-t",
            "",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn search_registries_come_from_registries_conf() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            "unqualified-search-registries = [\"quay.io\", \"docker.io\"]\n",
        )
        .unwrap();
        let all = resolve("busybox", &conf).unwrap();
        let names: Vec<String> = all.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            ["quay.io/busybox:latest", "docker.io/library/busybox:latest"]
        );
    }
}
