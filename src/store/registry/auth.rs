//! Registry credentials where users already keep them: containers' `auth.json` and
//! docker's `config.json` (`auths`, `credsStore`, `credHelpers`), and `login`/`logout`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use super::RegistryError;

const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and password (or token) for basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// Parses `USER:PASS`.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The files credentials are looked up in, first match wins: `$REGISTRY_AUTH_FILE` alone
/// when set, else `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`
/// and `~/.docker/config.json`.
pub fn default_files() -> Vec<PathBuf> {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return vec![f.into()];
    }
    let mut out = Vec::new();
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(Path::new(&run).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        out.push(Path::new(&home).join(".config/containers/auth.json"));
        out.push(Path::new(&home).join(".docker/config.json"));
    }
    out
}

/// Where `login` writes: the first of [`default_files`].
pub fn login_file() -> Option<PathBuf> {
    default_files().into_iter().next()
}

fn read_json(path: &Path) -> Result<Option<Value>, RegistryError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(RegistryError::Io {
                path: path.into(),
                err,
            });
        }
    };
    let mut data = Vec::new();
    file.take(MAX_AUTH_FILE)
        .read_to_end(&mut data)
        .map_err(|err| RegistryError::Io {
            path: path.into(),
            err,
        })?;
    let v = serde_json::from_slice(&data).map_err(|e| RegistryError::Invalid {
        what: path.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(Some(v))
}

/// The keys an `auths` entry for `host` may have.
fn keys(host: &str) -> Vec<String> {
    let mut k = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if host == super::reference::DOCKER_HUB {
        k.push("https://index.docker.io/v1/".into());
        k.push("index.docker.io".into());
    }
    k
}

fn decode_auth(path: &Path, entry: &Value) -> Result<Option<Credentials>, RegistryError> {
    let Some(auth) = entry.get("auth").and_then(Value::as_str) else {
        return Ok(None);
    };
    let invalid = |why: &str| RegistryError::Invalid {
        what: path.display().to_string(),
        why: why.into(),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| invalid("an `auth` entry is not base64"))?;
    let raw = String::from_utf8(raw).map_err(|_| invalid("an `auth` entry is not UTF-8"))?;
    Ok(Credentials::parse(&raw))
}

/// Runs `docker-credential-NAME get` for `host`.
fn helper(name: &str, host: &str) -> Result<Option<Credentials>, RegistryError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(RegistryError::Invalid {
            what: format!("credential helper {name:?}"),
            why: "not a helper name".into(),
        });
    }
    let program = format!("docker-credential-{name}");
    let fail = |why: String| RegistryError::Auth {
        host: host.into(),
        why: format!("{program}: {why}"),
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        // "credentials not found" is not an error: the registry may allow anonymous pulls.
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    let field = |k| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Credentials::parse(&format!(
        "{}:{}",
        field("Username"),
        field("Secret")
    )))
}

/// The credentials for `host` in `files` (see [`default_files`]), if any.
pub fn lookup(files: &[PathBuf], host: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in files {
        let Some(v) = read_json(path)? else {
            continue;
        };
        if let Some(h) = v
            .get("credHelpers")
            .and_then(|h| keys(host).iter().find_map(|k| h.get(k)))
            .and_then(Value::as_str)
        {
            return helper(h, host);
        }
        let auths = v.get("auths");
        for k in keys(host) {
            if let Some(entry) = auths.and_then(|a| a.get(&k)) {
                if let Some(c) = decode_auth(path, entry)? {
                    return Ok(Some(c));
                }
            }
        }
        if let Some(store) = v.get("credsStore").and_then(Value::as_str) {
            if let Some(c) = helper(store, host)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// Adds (or replaces) `host`'s entry in `path`, keeping everything else in the file; the
/// file is replaced atomically and is readable by its owner only.
pub fn login(path: &Path, host: &str, creds: &Credentials) -> Result<(), RegistryError> {
    let mut v = read_json(path)?.unwrap_or_else(|| serde_json::json!({}));
    let invalid = || RegistryError::Invalid {
        what: path.display().to_string(),
        why: "not a JSON object with an `auths` object".into(),
    };
    let obj = v.as_object_mut().ok_or_else(invalid)?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(invalid)?;
    let raw = format!("{}:{}", creds.username, creds.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(raw);
    auths.insert(host.into(), serde_json::json!({ "auth": auth }));
    write(path, &v)
}

/// Removes `host`'s entry from `path`; false when there was none.
pub fn logout(path: &Path, host: &str) -> Result<bool, RegistryError> {
    let Some(mut v) = read_json(path)? else {
        return Ok(false);
    };
    let Some(auths) = v.get_mut("auths").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let mut removed = false;
    for k in keys(host) {
        removed |= auths.remove(&k).is_some();
    }
    if removed {
        write(path, &v)?;
    }
    Ok(removed)
}

fn write(path: &Path, v: &Value) -> Result<(), RegistryError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |err| RegistryError::Io {
        path: path.into(),
        err,
    };
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io)?;
    }
    let mut data = serde_json::to_vec_pretty(v).map_err(|e| io(std::io::Error::other(e)))?;
    data.push(b'\n');
    crate::atomic::write_with(path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        std::io::Write::write_all(f, &data)
    })
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_lookup_logout_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/auth.json");
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(&file, r#"{"auths":{"other.io":{"auth":"eDp5"}},"keep":1}"#).unwrap();
        let c = Credentials::parse("u:p:w").unwrap();
        login(&file, "reg.io:5000", &c).unwrap();
        let files = [file.clone()];
        assert_eq!(lookup(&files, "reg.io:5000").unwrap(), Some(c));
        assert_eq!(lookup(&files, "other.io").unwrap().unwrap().username, "x");
        assert_eq!(lookup(&files, "none.io").unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(logout(&file, "reg.io:5000").unwrap());
        assert!(!logout(&file, "reg.io:5000").unwrap());
        let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v["keep"], 1);
        assert!(v["auths"].get("other.io").is_some());
    }
}
