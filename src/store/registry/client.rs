//! The registry HTTP client: ureq with rustls, TLS roots from the system bundle plus
//! `certs.d/HOST/*.crt`, basic and bearer-token auth (the `WWW-Authenticate` dance),
//! redirects followed by hand so `Authorization` never goes to another host, and bounded
//! retries on disconnects, 5xx and 429 (honouring `Retry-After`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ureq::http::Response;

use super::auth::Credentials;
use super::{Options, RegistryError};

/// The system's CA bundle (Debian's; other distributions' paths are tried too).
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
const MAX_REDIRECTS: u32 = 5;
const MAX_TOKEN: u64 = 1 << 20;
/// Scopes taken from a token challenge.
const MAX_SCOPES: usize = 4;
/// Longest `Retry-After` honoured; a server asking for more gets this.
const MAX_RETRY_AFTER: u64 = 30;

pub type Body = ureq::Body;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// A request's body: sent again whole on a retry (a file is reopened).
#[derive(Clone, Debug)]
pub enum Payload {
    Empty,
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A client for one repository on one registry.
pub struct Client {
    agent: ureq::Agent,
    /// `https://HOST[:PORT]`.
    base: String,
    host: String,
    repository: String,
    creds: Option<Credentials>,
    /// The `Authorization` value that worked (or was obtained) last.
    auth: Mutex<Option<String>>,
    /// Actions the token is asked for (`pull`, or `pull,push`).
    actions: String,
    attempts: u32,
    pub retries: AtomicU64,
    /// Blob bytes received (counted by the caller).
    pub fetched: AtomicU64,
}

fn tls_error(path: &Path, why: impl ToString) -> RegistryError {
    RegistryError::Tls {
        path: path.into(),
        why: why.to_string(),
    }
}

/// Every certificate in the PEM file at `path`.
fn pem_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let data = std::fs::read(path).map_err(|e| tls_error(path, e))?;
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(&data) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| tls_error(path, e))? {
            out.push(c);
        }
    }
    Ok(out)
}

/// The extra CAs for `host`: `*.crt` in `DIR/HOST/` for each certs.d `DIR`, and in the
/// `cert_dir`.
fn host_certs(opts: &Options, host: &str) -> Result<Vec<PathBuf>, RegistryError> {
    let mut out = Vec::new();
    let dirs = opts.certs_dirs.iter().map(|d| d.join(host));
    for d in dirs.chain(opts.cert_dir.clone()) {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(tls_error(&d, e)),
        };
        for e in entries {
            let p = e.map_err(|e| tls_error(&d, e))?.path();
            if p.extension().is_some_and(|x| x == "crt") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn tls_config(opts: &Options, host: &str) -> Result<ureq::tls::TlsConfig, RegistryError> {
    let builder = ureq::tls::TlsConfig::builder();
    if !opts.tls_verify {
        return Ok(builder.disable_verification(true).build());
    }
    let extra = host_certs(opts, host)?;
    let system = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    if extra.is_empty() && system.is_none() {
        return Ok(builder.build());
    }
    let mut certs = Vec::new();
    for path in system.into_iter().chain(extra.iter().map(PathBuf::as_path)) {
        certs.extend(pem_certs(path)?);
    }
    Ok(builder
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

/// The `HOST[:PORT]` of an absolute URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// Whether `HOST[:PORT]` is this machine (plain http there is not on the wire).
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `location` (from a redirect of `url`) made absolute.
pub fn resolve_location(url: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = url.split_once("://").map_or("https", |(s, _)| s);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let origin = format!("{scheme}://{}", authority(url));
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = url.split('?').next().unwrap_or(url);
    match path.rfind('/') {
        Some(i) if i > origin.len() => format!("{}/{location}", &path[..i]),
        _ => format!("{origin}/{location}"),
    }
}

/// The parameters of a `WWW-Authenticate` challenge: scheme (lowercase) and `key=value`
/// pairs (values may be quoted and contain commas).
pub fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key.trim().to_ascii_lowercase(), value.to_string()));
        rest = after;
    }
    (scheme.to_ascii_lowercase(), params)
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Seconds a 429/503 asks to wait (`Retry-After: SECONDS`), bounded.
fn retry_after(resp: &Response<Body>) -> Option<u64> {
    let secs: u64 = header(resp, "retry-after")?.trim().parse().ok()?;
    Some(secs.min(MAX_RETRY_AFTER))
}

impl Client {
    /// A client for `repository` at `host` (the API host), asking tokens for `actions`.
    pub fn new(
        opts: &Options,
        host: &str,
        repository: &str,
        actions: &str,
    ) -> Result<Client, RegistryError> {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(opts.timeout))
            .timeout_send_request(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .timeout_recv_body(Some(opts.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(opts.jobs.max(1))
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(opts, host)?)
            .build();
        let creds = match &opts.creds {
            Some(c) => Some(c.clone()),
            None => super::auth::lookup(&opts.auth_files, host)?,
        };
        Ok(Client {
            agent: config.into(),
            base: format!("https://{host}"),
            host: host.into(),
            repository: repository.into(),
            creds,
            auth: Mutex::new(None),
            actions: actions.into(),
            attempts: opts.attempts.max(1),
            retries: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        })
    }

    /// `https://HOST/v2/REPO/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn current_auth(&self) -> Option<String> {
        self.auth.lock().ok().and_then(|a| a.clone())
    }

    /// One request, redirects followed; `Authorization` only to the registry's own host.
    fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut url = url.to_string();
        let auth = self.current_auth();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = match method {
                Method::Get => ureq::http::Request::get(&url),
                Method::Head => ureq::http::Request::head(&url),
                Method::Post => ureq::http::Request::post(&url),
                Method::Put => ureq::http::Request::put(&url),
            };
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            // The registry's credentials go to the registry only, and never in clear text
            // (a redirect to http:// on the same host gets none).
            let ours = url.starts_with("https://") && authority(&url) == self.host;
            if let Some(a) = auth.as_ref().filter(|_| ours) {
                req = req.header("Authorization", a);
            }
            let resp = match payload {
                Payload::Empty if matches!(method, Method::Get | Method::Head) => {
                    self.agent.run(req.body(()).map_err(ureq::Error::Http)?)?
                }
                Payload::Empty => {
                    let req = req.header("Content-Length", "0");
                    self.agent
                        .run(req.body(&[][..]).map_err(ureq::Error::Http)?)?
                }
                Payload::Bytes(b) => self
                    .agent
                    .run(req.body(b.as_slice()).map_err(ureq::Error::Http)?)?,
                Payload::File(p) => {
                    let f = std::fs::File::open(p)?;
                    self.agent.run(req.body(f).map_err(ureq::Error::Http)?)?
                }
            };
            let location = header(&resp, "location").map(str::to_string);
            match (resp.status().is_redirection(), location) {
                (true, Some(loc)) => url = resolve_location(&url, &loc),
                _ => return Ok(resp),
            }
        }
        Err(ureq::Error::TooManyRedirects)
    }

    /// Sends a request to `url`, authenticating on a 401 and retrying transient failures
    /// within bounds. Returns any other response (the caller checks its status).
    pub fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>, RegistryError> {
        self.send_with(method, url, headers, &Payload::Empty)
    }

    /// GETs `url`, a small document (a manifest, a config): its body, at most `limit`
    /// bytes, and its content type. A 404 is [`RegistryError::NotFound`].
    pub fn get_small(
        &self,
        url: &str,
        headers: &[(&str, String)],
        limit: u64,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let resp = self.send(Method::Get, url, headers)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::NotFound { what: url.into() }),
            s => return Err(http(url, format!("HTTP {s}"))),
        }
        let content_type = header(&resp, "content-type")
            .unwrap_or_default()
            .to_string();
        let data = resp
            .into_body()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| body_error(url, e))?;
        Ok((data, content_type))
    }

    /// [`Client::send`] with a body.
    pub fn send_with(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload,
    ) -> Result<Response<Body>, RegistryError> {
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            attempt += 1;
            let (wait, reason) = match self.send_once(method, url, headers, payload) {
                Ok(resp) if resp.status() == 401 && !authenticated => {
                    authenticated = true;
                    let challenge = header(&resp, "www-authenticate").unwrap_or_default();
                    self.authenticate(challenge)?;
                    attempt -= 1;
                    continue;
                }
                Ok(resp) if resp.status() == 401 || resp.status() == 403 => {
                    return Err(RegistryError::Auth {
                        host: self.host.clone(),
                        why: match &self.creds {
                            Some(c) => format!(
                                "the registry refused the credentials of {:?} (HTTP {})",
                                c.username,
                                resp.status().as_u16()
                            ),
                            None => format!(
                                "access denied (HTTP {}); log in first (warren login {})",
                                resp.status().as_u16(),
                                self.host
                            ),
                        },
                    });
                }
                Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                    let wait = retry_after(&resp);
                    (wait, format!("HTTP {}", resp.status().as_u16()))
                }
                Ok(resp) => return Ok(resp),
                Err(e @ (ureq::Error::BadUri(_) | ureq::Error::HostNotFound)) => {
                    return Err(http(url, e.to_string()));
                }
                Err(e) => (None, e.to_string()),
            };
            if attempt >= self.attempts {
                return Err(http(url, format!("{reason} (after {attempt} attempts)")));
            }
            self.backoff(attempt, wait);
        }
    }

    /// Waits before retry `attempt` (`Retry-After` seconds when the server gave them).
    pub fn backoff(&self, attempt: u32, retry_after: Option<u64>) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let wait = match retry_after {
            Some(s) => Duration::from_secs(s),
            None => Duration::from_millis(200 << attempt.min(5)),
        };
        std::thread::sleep(wait);
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Answers a 401's challenge: basic credentials, or a bearer token from the realm.
    fn authenticate(&self, challenge: &str) -> Result<(), RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        let value = match scheme.as_str() {
            "basic" => match &self.creds {
                Some(c) => c.basic(),
                None => {
                    return Err(RegistryError::Auth {
                        host: self.host.clone(),
                        why: format!(
                            "the registry wants a user name and password; use --creds or warren login {}",
                            self.host
                        ),
                    });
                }
            },
            "bearer" => format!("Bearer {}", self.token(&params)?),
            _ => {
                return Err(RegistryError::Auth {
                    host: self.host.clone(),
                    why: format!("unsupported authentication challenge {challenge:?}"),
                });
            }
        };
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(value);
        }
        Ok(())
    }

    /// A bearer token from the challenge's realm, with our credentials when we have them.
    fn token(&self, params: &[(String, String)]) -> Result<String, RegistryError> {
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let realm = get("realm").unwrap_or_default();
        let auth_err = |why: String| RegistryError::Auth {
            host: self.host.clone(),
            why,
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(auth_err(format!(
                "token realm {realm:?} is not an http(s) URL"
            )));
        }
        let mut req = self.agent.get(realm);
        let ours = format!("repository:{}:", self.repository);
        let mut scopes = Vec::new();
        if !self.repository.is_empty() {
            scopes.push(format!("{ours}{}", self.actions));
        }
        // What the request needs on other repositories (a mount needs pull on the one it
        // mounts from): the challenge's scopes, a few.
        for s in get("scope").unwrap_or_default().split(' ').take(MAX_SCOPES) {
            let own = !self.repository.is_empty() && s.starts_with(&ours);
            if !s.is_empty() && s.len() <= 512 && !own && !scopes.iter().any(|x| x == s) {
                scopes.push(s.to_string());
            }
        }
        for scope in &scopes {
            req = req.query("scope", scope);
        }
        if let Some(service) = get("service") {
            req = req.query("service", service);
        }
        if let Some(c) = &self.creds {
            if !(realm.starts_with("https://") || is_loopback(authority(realm))) {
                return Err(auth_err(format!(
                    "token realm {realm} is plain http: not sending the password there"
                )));
            }
            req = req.header("Authorization", &c.basic());
        }
        let resp = req.call().map_err(|e| http(realm, e.to_string()))?;
        if resp.status() == 401 || resp.status() == 403 {
            return Err(auth_err(match &self.creds {
                Some(c) => format!(
                    "the token server refused the credentials of {:?}",
                    c.username
                ),
                None => "the token server wants credentials; use --creds or warren login".into(),
            }));
        }
        if resp.status() != 200 {
            return Err(http(
                realm,
                format!("HTTP {} from the token server", resp.status().as_u16()),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let data = resp
            .into_body()
            .with_config()
            .limit(MAX_TOKEN)
            .read_to_vec()
            .map_err(|e| http(realm, e.to_string()))?;
        let t: Token = serde_json::from_slice(&data)
            .map_err(|e| http(realm, format!("token response: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| auth_err("the token server sent no usable token".into()))
    }
}

/// Checks `opts.creds` against the registry at `host` (its `/v2/` endpoint), as
/// `login` does before storing them.
pub fn check_login(opts: &Options, host: &str) -> Result<(), RegistryError> {
    let api = if host == super::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        host
    };
    let client = Client::new(opts, api, "", "pull")?;
    let url = format!("{}/v2/", client.base);
    let resp = client.send(Method::Get, &url, &[])?;
    match resp.status().as_u16() {
        200 => Ok(()),
        s => Err(http(&url, format!("HTTP {s}"))),
    }
}

/// A failed body read: past a size cap says which.
pub fn body_error(url: &str, e: ureq::Error) -> RegistryError {
    match e {
        ureq::Error::BodyExceedsLimit(n) => http(url, format!("more than the {n} bytes allowed")),
        e => http(url, e.to_string()),
    }
}

pub fn http(url: &str, reason: String) -> RegistryError {
    RegistryError::Http {
        url: url.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_locations_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.io/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert_eq!(parse_challenge("Basic realm=x").1[0].1, "x");
        assert_eq!(authority("https://h:5000/v2/x"), "h:5000");
        assert!(
            is_loopback("127.0.0.1:80") && is_loopback("[::1]:5000") && is_loopback("localhost")
        );
        assert!(!is_loopback("auth.example:443") && !is_loopback("10.0.0.1"));
        let u = "https://h/v2/r/blobs/sha256:1";
        assert_eq!(resolve_location(u, "https://s3/x?a=1"), "https://s3/x?a=1");
        assert_eq!(resolve_location(u, "/b/c"), "https://h/b/c");
        assert_eq!(resolve_location(u, "//cdn/x"), "https://cdn/x");
        assert_eq!(resolve_location(u, "c"), "https://h/v2/r/blobs/c");
    }
}
