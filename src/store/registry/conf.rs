//! `registries.conf` (v2 format) `[[registry]]` tables: where a reference is really
//! fetched from. A matching table's mirrors are tried first, then its `location`.

use std::path::Path;

use super::RegistryError;
use super::reference::Reference;

/// A place to fetch a reference from: the API host and the repository there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub repository: String,
    /// `insecure = true` in registries.conf: TLS is not verified there.
    pub insecure: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Conf {
    #[serde(default)]
    registry: Vec<Table>,
}

#[derive(Debug, serde::Deserialize)]
struct Table {
    prefix: Option<String>,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
}

#[derive(Debug, serde::Deserialize)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

fn read(path: &Path) -> Result<Conf, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Conf::default()),
        Err(err) => {
            return Err(RegistryError::Io {
                path: path.into(),
                err,
            });
        }
    };
    toml::from_str(&text).map_err(|e| RegistryError::Invalid {
        what: path.display().to_string(),
        why: e.message().to_string(),
    })
}

/// `full` (`HOST/REPO`) with `prefix` replaced by `location`, split into host and repo.
fn rewrite(full: &str, prefix: &str, location: &str) -> Option<(String, String)> {
    let rest = full.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let new = format!("{location}{rest}");
    let (host, repo) = new.split_once('/')?;
    Some((
        super::reference::api_host_of(host).to_string(),
        repo.to_string(),
    ))
}

/// Where to fetch `r` from, in order: the mirrors of the `[[registry]]` with the longest
/// matching prefix, then its location; without one, the reference's own registry.
pub fn endpoints(r: &Reference, conf: &Path) -> Result<Vec<Endpoint>, RegistryError> {
    let full = format!("{}/{}", r.registry, r.repository);
    let own = Endpoint {
        host: r.api_host().to_string(),
        repository: r.repository.clone(),
        insecure: false,
    };
    let conf = read(conf)?;
    let best = conf
        .registry
        .iter()
        .filter_map(|t| {
            let prefix = t.prefix.clone().unwrap_or_else(|| t.location.clone());
            rewrite(&full, &prefix, &prefix).map(|_| (prefix, t))
        })
        .max_by_key(|(p, _)| p.len());
    let Some((prefix, table)) = best else {
        return Ok(vec![own]);
    };
    if table.blocked {
        return Err(RegistryError::BadReference {
            reference: r.to_string(),
            why: format!("registries.conf blocks {prefix}"),
        });
    }
    let mut out = Vec::new();
    for m in &table.mirror {
        if let Some((host, repository)) = rewrite(&full, &prefix, &m.location) {
            out.push(Endpoint {
                host,
                repository,
                insecure: m.insecure,
            });
        }
    }
    let location = if table.location.is_empty() {
        &prefix
    } else {
        &table.location
    };
    match rewrite(&full, &prefix, location) {
        Some((host, repository)) => out.push(Endpoint {
            host,
            repository,
            insecure: table.insecure,
        }),
        None => out.push(own),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_then_the_location() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            r#"
[[registry]]
prefix = "docker.io/library"
location = "docker.io/library"
[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true

[[registry]]
location = "blocked.io"
blocked = true
"#,
        )
        .unwrap();
        let r = super::super::reference::resolve("busybox", Path::new("/nonexistent")).unwrap();
        let e = endpoints(&r[0], &conf).unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (e[0].host.as_str(), e[0].repository.as_str()),
            ("mirror.local:5000", "hub/busybox")
        );
        assert!(e[0].insecure);
        assert_eq!(
            (e[1].host.as_str(), e[1].repository.as_str()),
            ("registry-1.docker.io", "library/busybox")
        );
        let other = super::super::reference::parse("quay.io/a/b").unwrap();
        assert_eq!(endpoints(&other, &conf).unwrap()[0].host, "quay.io");
        let blocked = super::super::reference::parse("blocked.io/a").unwrap();
        assert!(endpoints(&blocked, &conf).is_err());
    }
}
