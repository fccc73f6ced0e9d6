//! Loading and checking `config.json`: errors name the field and the reason.

use super::Error;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// Reads `BUNDLE/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::Io {
        what: format!("read {}", path.display()),
        source: e,
    })?;
    parse(&text).map_err(|reason| Error::Config { file: path, reason })
}

/// Parses a config, naming the field (as a JSON path) that failed, then checks it.
pub fn parse(text: &[u8]) -> Result<Spec, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("field `{path}`: {inner}")
        }
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Semantic checks serde cannot do.
pub fn validate(spec: &Spec) -> Result<(), String> {
    let process = spec.process().as_ref().ok_or("field `process`: missing")?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err("field `process.args`: must name the program to run".into()),
    }
    if !process.cwd().is_absolute() {
        return Err(format!(
            "field `process.cwd`: {:?} must be an absolute path",
            process.cwd()
        ));
    }
    for (i, env) in process.env().iter().flatten().enumerate() {
        if !env.contains('=') {
            return Err(format!(
                "field `process.env[{i}]`: {env:?} is not KEY=VALUE"
            ));
        }
    }
    let root = spec.root().as_ref().ok_or("field `root`: missing")?;
    if root.path().as_os_str().is_empty() {
        return Err("field `root.path`: empty".into());
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(format!(
                "field `mounts[{i}].destination`: {:?} must be an absolute path",
                m.destination()
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if seen.contains(&ns.typ()) {
                return Err(format!(
                    "field `linux.namespaces[{i}]`: namespace {} listed twice",
                    ns.typ()
                ));
            }
            seen.push(ns.typ());
        }
        let has_userns = seen.contains(&LinuxNamespaceType::User);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if has_maps && !has_userns {
            return Err(
                "field `linux.uidMappings`: given without a user namespace in `linux.namespaces`"
                    .into(),
            );
        }
        if let Some(p) = linux.rootfs_propagation() {
            if !p.is_empty() && super::rootfs::propagation_flag(p).is_none() {
                return Err(format!(
                    "field `linux.rootfsPropagation`: unknown mode {p:?} (shared, slave, private, unbindable, rshared, rslave, rprivate, runbindable)"
                ));
            }
        }
    }
    Ok(())
}

/// The rootfs path of `spec`, relative paths taken from `bundle`.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> PathBuf {
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
