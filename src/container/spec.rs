//! Loading and checking `config.json`: errors name the field and the reason.

pub use super::error::ConfigError;
use super::error::Error;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// Reads `BUNDLE/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::Io {
        what: format!("read {}", path.display()),
        source: e,
    })?;
    parse(&text).map_err(|e| Error::Config {
        file: path,
        reason: e.to_string(),
    })
}

/// Parses a config, naming the field (as a JSON path) that failed, then checks it.
pub fn parse(text: &[u8]) -> Result<Spec, ConfigError> {
    // Tracking the path costs on every field: only a config that fails is parsed again
    // with it.
    let spec: Spec = serde_json::from_slice(text).map_err(|plain| {
        let de = &mut serde_json::Deserializer::from_slice(text);
        match serde_path_to_error::deserialize::<_, Spec>(de) {
            Err(e) => {
                let path = e.path().to_string();
                ConfigError {
                    field: (path != ".").then_some(path),
                    reason: e.into_inner().to_string(),
                }
            }
            Ok(_) => ConfigError {
                field: None,
                reason: plain.to_string(),
            },
        }
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// `ociVersion` must be a SemVer 2.0.0 version (the runtime spec says so) of major
/// version 1, the one this runtime implements.
fn check_version(version: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::new("ociVersion", format!("{version:?} {why}")));
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let rest = &version[core.len()..];
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'))
    };
    if parts.len() != 3 || !parts.iter().all(numeric) {
        return bad("is not a SemVer version (MAJOR.MINOR.PATCH, like 1.0.2)");
    }
    let ident =
        |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let (pre, build) = match rest.split_once('+') {
        Some((pre, build)) => (pre, Some(build)),
        None => (rest, None),
    };
    let pre_ok = pre.is_empty()
        || pre
            .strip_prefix('-')
            .is_some_and(|p| p.split('.').all(ident));
    if !pre_ok || build.is_some_and(|b| !b.split('.').all(ident)) {
        return bad("is not a SemVer version (MAJOR.MINOR.PATCH, like 1.0.2)");
    }
    if parts[0] != "1" {
        return bad("is not supported: this runtime implements version 1 of the OCI runtime spec");
    }
    Ok(())
}

/// Semantic checks serde cannot do.
pub(crate) fn validate(spec: &Spec) -> Result<(), ConfigError> {
    check_version(spec.version())?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ConfigError::new("process", "missing"))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => {
            return Err(ConfigError::new(
                "process.args",
                "must name the program to run",
            ));
        }
    }
    if !process.cwd().is_absolute() {
        return Err(ConfigError::new(
            "process.cwd",
            format!("{:?} must be an absolute path", process.cwd()),
        ));
    }
    for (i, env) in process.env().iter().flatten().enumerate() {
        if !env.contains('=') {
            return Err(ConfigError::new(
                format!("process.env[{i}]"),
                format!("{env:?} is not KEY=VALUE"),
            ));
        }
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ConfigError::new("root", "missing"))?;
    if root.path().as_os_str().is_empty() {
        return Err(ConfigError::new("root.path", "empty"));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(ConfigError::new(
                format!("mounts[{i}].destination"),
                format!("{:?} must be an absolute path", m.destination()),
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if seen.contains(&ns.typ()) {
                return Err(ConfigError::new(
                    format!("linux.namespaces[{i}]"),
                    format!("namespace {} listed twice", ns.typ()),
                ));
            }
            seen.push(ns.typ());
        }
        let has_userns = seen.contains(&LinuxNamespaceType::User);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if has_maps && !has_userns {
            return Err(ConfigError::new(
                "linux.uidMappings",
                "given without a user namespace in `linux.namespaces`",
            ));
        }
        if let Some(p) = linux.rootfs_propagation() {
            if !p.is_empty() && super::rootfs::propagation_flag(p).is_none() {
                return Err(ConfigError::new(
                    "linux.rootfsPropagation",
                    format!(
                        "unknown mode {p:?} (shared, slave, private, unbindable, rshared, rslave, rprivate, runbindable)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The rootfs path of `spec`, relative paths taken from `bundle`.
pub(crate) fn rootfs_path(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mut process: serde_json::Value) -> Vec<u8> {
        process["user"] = serde_json::json!({"uid": 0, "gid": 0});
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": "1.0.2",
            "process": process,
            "root": {"path": "rootfs"}
        }))
        .unwrap()
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&config(serde_json::json!({"args": ["sh"], "cwd": "rel"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("process.cwd"));
        assert_eq!(
            e.to_string(),
            "field `process.cwd`: \"rel\" must be an absolute path"
        );
        let e = parse(&config(serde_json::json!({"args": 5, "cwd": "/"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("process.args"));
        assert!(
            e.to_string()
                .starts_with("field `process.args`: invalid type"),
            "{e}"
        );
        let e = parse(b"[").unwrap_err();
        assert_eq!(e.field, None);
        assert!(!e.to_string().contains("field"), "{e}");
        let e = parse(&config(
            serde_json::json!({"args": ["sh"], "cwd": "/", "env": ["X"]}),
        ))
        .unwrap_err();
        assert_eq!(
            e,
            ConfigError::new("process.env[0]", "\"X\" is not KEY=VALUE")
        );
    }

    #[test]
    fn oci_version_must_be_semver_major_1() {
        for good in [
            "1.0.2",
            "1.0.2-dev",
            "1.2.0",
            "1.0.0-rc.1+build.5",
            "1.10.0",
        ] {
            assert_eq!(check_version(good), Ok(()), "{good}");
        }
        for bad in [
            "invalid", "", "1.0", "1.0.2.3", "01.0.0", "1.0.x", "1.0.2-", "2.0.0", "v1.0.0",
        ] {
            let e = check_version(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("ociVersion"), "{bad}");
        }
        let e = parse(
            &serde_json::to_vec(&serde_json::json!({
                "ociVersion": "invalid",
                "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "root": {"path": "rootfs"}
            }))
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `ociVersion`: \"invalid\" is not a SemVer version (MAJOR.MINOR.PATCH, like 1.0.2)"
        );
    }

    #[test]
    fn path_errors_are_typed() {
        let e = super::super::rootfs::Inside::new(Path::new("/a/../b")).unwrap_err();
        assert_eq!(
            e,
            super::super::rootfs::PathError::DotDot(PathBuf::from("/a/../b"))
        );
        assert_eq!(e.to_string(), "/a/../b must not contain `..`");
    }
}
