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
    if is_hub(host) {
        k.push(HUB_SERVER.into());
        k.push("index.docker.io".into());
        k.push(super::reference::DOCKER_HUB.into());
    }
    k
}

/// Docker Hub's name in docker's config and credential helpers.
const HUB_SERVER: &str = "https://index.docker.io/v1/";

/// Docker Hub, by its name or its API host.
fn is_hub(host: &str) -> bool {
    host == super::reference::DOCKER_HUB || host == super::reference::DOCKER_HUB_API
}

/// The server name a credential helper knows `host` by (docker's, for Docker Hub).
fn server_url(host: &str) -> &str {
    if is_hub(host) { HUB_SERVER } else { host }
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

/// How long a credential helper may take (one asking on a locked keychain may wait on
/// the user; one that hangs is killed).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Output read from a helper.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// Runs `docker-credential-NAME ACTION` with `input` on its stdin: its exit status and
/// output. Errors name the helper.
fn run_helper(
    name: &str,
    action: &str,
    host: &str,
    input: &[u8],
) -> Result<(bool, Vec<u8>), RegistryError> {
    use std::io::{Read, Write};
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
        why: format!("credential helper {program} {action}: {why}"),
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its status, not by EPIPE.
        let _ = stdin.write_all(input);
    }
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_HELPER_OUTPUT).read_to_end(&mut out);
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(MAX_HELPER_OUTPUT).read_to_end(&mut err);
        }
        (out, err)
    });
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(s) => break s,
            None if start.elapsed() > HELPER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer in {HELPER_TIMEOUT:?}; killed it")));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let (out, err) = reader.join().unwrap_or_default();
    if status.success() {
        return Ok((true, out));
    }
    // Helpers print "credentials not found in native keychain" on stdout; others on stderr.
    let said = String::from_utf8_lossy(if out.is_empty() { &err } else { &out })
        .trim()
        .chars()
        .take(400)
        .collect::<String>();
    if said.contains("credentials not found") {
        return Ok((false, out));
    }
    Err(fail(format!("{status}: {said}")))
}

/// `docker-credential-NAME get` for `host` (none when it has no credentials for it).
fn helper(name: &str, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let (found, out) = run_helper(name, "get", host, server_url(host).as_bytes())?;
    if !found {
        // Not an error: the registry may allow anonymous pulls.
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out).map_err(|e| RegistryError::Auth {
        host: host.into(),
        why: format!("credential helper docker-credential-{name} get: {e}"),
    })?;
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

/// The helper `v` (a config file) names for `host`: `credHelpers[host]`, else `credsStore`.
fn helper_for(v: &Value, host: &str) -> Option<String> {
    v.get("credHelpers")
        .and_then(|h| keys(host).iter().find_map(|k| h.get(k)))
        .or_else(|| v.get("credsStore"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
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
        if let Some(store) = v
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            if let Some(c) = helper(store, host)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// Adds (or replaces) `host`'s entry in `path`, keeping everything else in the file; the
/// file is replaced atomically and is readable by its owner only. When the file names a
/// credential helper for `host` (`credHelpers`, `credsStore`), the helper stores the
/// credentials (`store`) and the file gets an empty entry, as docker does.
/// Returns the helper's program name when one stored them.
pub fn login(
    path: &Path,
    host: &str,
    creds: &Credentials,
) -> Result<Option<String>, RegistryError> {
    let mut v = read_json(path)?.unwrap_or_else(|| serde_json::json!({}));
    let helper = helper_for(&v, host);
    if let Some(name) = &helper {
        let input = serde_json::json!({
            "ServerURL": server_url(host),
            "Username": creds.username,
            "Secret": creds.password,
        });
        run_helper(name, "store", host, input.to_string().as_bytes())?;
    }
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
    let entry = match helper {
        Some(_) => serde_json::json!({}),
        None => {
            let raw = format!("{}:{}", creds.username, creds.password);
            let auth = base64::engine::general_purpose::STANDARD.encode(raw);
            serde_json::json!({ "auth": auth })
        }
    };
    auths.insert(host.into(), entry);
    write(path, &v)?;
    Ok(helper.map(|h| format!("docker-credential-{h}")))
}

/// Removes `host`'s entry from `path` (and from its credential helper, `erase`); false
/// when there was none.
pub fn logout(path: &Path, host: &str) -> Result<bool, RegistryError> {
    let Some(mut v) = read_json(path)? else {
        return Ok(false);
    };
    let mut erased = false;
    if let Some(name) = helper_for(&v, host) {
        erased = run_helper(&name, "erase", host, server_url(host).as_bytes())?.0;
    }
    let Some(auths) = v.get_mut("auths").and_then(Value::as_object_mut) else {
        return Ok(erased);
    };
    let mut removed = false;
    for k in keys(host) {
        removed |= auths.remove(&k).is_some();
    }
    if removed {
        write(path, &v)?;
    }
    Ok(removed || erased)
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
