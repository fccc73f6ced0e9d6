//! `warren image pull` from a real registry (Debian's docker-registry, distribution 2.8)
//! on loopback, over TLS with a CA the test makes (trusted only through a certs.d root the
//! test points warren at), with htpasswd basic auth or bearer tokens from a token server
//! the test runs. Images are put there with `skopeo copy`; what warren pulls is compared
//! entry by entry with `umoci unpack` of the same image.

mod common;
#[path = "oci/util.rs"]
mod util;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::{ok, require_root, require_tool, run, scratch};

const USER: &str = "tester";
const PASS: &str = "s3cret-pass";

enum Auth {
    Htpasswd,
    Token,
}

/// A registry on 127.0.0.1 with TLS, killed when dropped (and its token server).
struct Registry {
    children: Vec<Child>,
    host: String,
    storage: PathBuf,
    /// The certs.d root holding `HOST/ca.crt`.
    certs_d: PathBuf,
    /// The token server's log: one line per token issued (`anonymous|USER SCOPE`).
    token_log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} does not listen on 127.0.0.1:{port}");
}

fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_pki(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=warren-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

/// Issues RS256 JWTs as distribution's `auth: token` wants them: anonymous requests get
/// `pull`, USER:PASS gets `pull,push`, other credentials a 401.
const TOKEN_SERVER: &str = r#"
import base64, http.server, json, os, subprocess, sys, time, urllib.parse
port, key, cert, user, pw, log = sys.argv[1:7]
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                     capture_output=True, check=True).stdout
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
good = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        auth = self.headers.get("Authorization")
        if auth is not None and auth != good:
            self.send_response(401); self.end_headers(); return
        allowed = ["pull", "push"] if auth else ["pull"]
        access = []
        for s in q.get("scope", []):
            kind, rest = s.split(":", 1)
            name, acts = rest.rsplit(":", 1)
            access.append({"type": kind, "name": name,
                           "actions": [a for a in acts.split(",") if a in allowed]})
        now = int(time.time())
        head = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": "warren-test-issuer", "sub": user if auth else "",
                  "aud": "warren-test-registry", "exp": now + 600, "nbf": now - 60,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                             input=signing.encode(), capture_output=True, check=True).stdout
        token = signing + "." + b64(sig)
        body = json.dumps({"token": token, "expires_in": 600}).encode()
        with open(log, "a") as f:
            f.write(("user" if auth else "anonymous") + " " + " ".join(q.get("scope", [])) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()
"#;

impl Registry {
    fn start(work: &Path, auth: Auth) -> Registry {
        let registry = require_tool("docker-registry", "docker-registry");
        require_tool("openssl", "openssl");
        let dir = work.join("registry");
        let pki = dir.join("pki");
        make_pki(&pki);
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let certs_d = dir.join("certs.d");
        fs::create_dir_all(certs_d.join(&host)).unwrap();
        fs::copy(pki.join("ca.crt"), certs_d.join(&host).join("ca.crt")).unwrap();
        let token_log = dir.join("tokens.log");
        let mut children = Vec::new();
        let auth_conf = match auth {
            Auth::Htpasswd => {
                require_tool("htpasswd", "apache2-utils");
                let line = ok(Command::new("htpasswd").args(["-Bbn", USER, PASS]));
                fs::write(dir.join("htpasswd"), line.trim()).unwrap();
                format!(
                    "  htpasswd:\n    realm: warren-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            Auth::Token => {
                require_tool("python3", "python3");
                openssl(
                    &pki,
                    &[
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-keyout",
                        "token.key",
                        "-out",
                        "token.crt",
                        "-days",
                        "2",
                        "-subj",
                        "/CN=warren-test-token",
                    ],
                );
                fs::write(dir.join("token.py"), TOKEN_SERVER).unwrap();
                let tport = free_port();
                let mut child = Command::new("python3")
                    .arg(dir.join("token.py"))
                    .arg(tport.to_string())
                    .arg(pki.join("token.key"))
                    .arg(pki.join("token.crt"))
                    .args([USER, PASS])
                    .arg(&token_log)
                    .spawn()
                    .expect("start the token server");
                wait_listening(tport, &mut child, "the token server");
                children.push(child);
                format!(
                    "  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: warren-test-registry\n    \
                     issuer: warren-test-issuer\n    rootcertbundle: {}\n",
                    pki.join("token.crt").display()
                )
            }
        };
        let conf = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\nauth:\n{auth_conf}",
            storage.display(),
            pki.join("server.crt").display(),
            pki.join("server.key").display(),
        );
        fs::write(dir.join("config.yml"), conf).unwrap();
        let mut child = Command::new(registry)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(fs::File::create(dir.join("registry.log")).unwrap())
            .stderr(fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .expect("start docker-registry");
        wait_listening(port, &mut child, "docker-registry");
        children.push(child);
        Registry {
            children,
            host,
            storage,
            certs_d,
            token_log,
        }
    }

    /// `skopeo copy` of `src` (oci:LAYOUT:TAG) to REPO:TAG here, as USER.
    fn put(&self, src: &str, dest: &str, all: bool) {
        require_tool("skopeo", "skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-creds", &format!("{USER}:{PASS}")])
            .arg("--dest-cert-dir")
            .arg(self.certs_d.join(&self.host));
        if all {
            cmd.arg("--all");
        }
        ok(cmd.arg(src).arg(format!("docker://{}/{dest}", self.host)));
    }

    /// The path of blob `digest` (`sha256:HEX`) in the registry's storage.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// `warren` with its state in `work`, credentials only from `work/auth.json`, and the
/// registry's CA trusted through its certs.d root.
fn warren(work: &Path, reg: &Registry) -> Command {
    let mut cmd = common::warren(work);
    cmd.env("REGISTRY_AUTH_FILE", work.join("auth.json"))
        .env("WARREN_CERTS_D", &reg.certs_d);
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        !o.status.success(),
        "{cmd:?} succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr(&o)
}

/// `LAYOUT:TAG`: a two-layer image of busybox-static (`/bin/sh`, `/hello`), the second
/// layer deleting `/etc/gone` and changing `/hello` (so a whiteout).
fn busybox_image(layout: &Path, tag: &str, work: &Path) -> String {
    let busybox = require_tool("busybox", "busybox-static");
    require_tool("umoci", "umoci");
    let image = format!("{}:{tag}", layout.display());
    if !layout.exists() {
        ok(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    ok(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = work.join(format!("bundle-{tag}"));
    ok(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let r = bundle.join("rootfs");
    fs::create_dir_all(r.join("bin")).unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::copy(&busybox, r.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "id"] {
        symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    fs::write(r.join("hello"), format!("hello from {tag}\n")).unwrap();
    fs::write(r.join("etc/gone"), "deleted in layer 2\n").unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    fs::remove_file(r.join("etc/gone")).unwrap();
    fs::write(r.join("hello"), format!("hello from {tag}, layer 2\n")).unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();
    image
}

fn extract(work: &Path, reg: &Registry, name: &str, dest: &str) -> PathBuf {
    let out = work.join(dest);
    ok(warren(work, reg).args(["image", "extract", name]).arg(&out));
    out
}

fn listed(work: &Path, reg: &Registry) -> String {
    ok(warren(work, reg).args(["--json", "image", "ls"]))
}

#[test]
fn pull_over_tls_with_basic_auth_matches_umoci_and_runs() {
    if !require_root("imports images whose files belong to many owners; runs a container") {
        return;
    }
    let work = scratch("registry-basic");
    let w = work.path();
    let reg = Registry::start(w, Auth::Htpasswd);
    let layout = util::build_layout(w);
    let layered = format!("{}:t", layout.display());
    reg.put(&format!("oci:{layered}"), "test/layered:v1", false);
    let bb = busybox_image(&w.join("bb-layout"), "bb", w);
    reg.put(&format!("oci:{bb}"), "busybox:1", false);
    let h = &reg.host;

    // No credentials, wrong ones, an untrusted CA: refused, saying why.
    let err = fails(warren(w, &reg).args(["image", "pull", &format!("{h}/busybox:1")]));
    assert!(err.contains("log in") || err.contains("--creds"), "{err}");
    let bad = format!("{USER}:wrong");
    let err =
        fails(warren(w, &reg).args(["image", "pull", "--creds", &bad, &format!("{h}/busybox:1")]));
    assert!(
        err.contains("refused the credentials of \"tester\""),
        "{err}"
    );
    let err = fails(
        warren(w, &reg)
            .env("WARREN_CERTS_D", w.join("empty"))
            .args([
                "image",
                "pull",
                "--creds",
                &format!("{USER}:{PASS}"),
                &format!("{h}/busybox:1"),
            ]),
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        !listed(w, &reg).contains("busybox"),
        "a failed pull lists nothing"
    );

    // With --creds: the layered image, entry by entry as umoci unpacks it.
    let creds = format!("{USER}:{PASS}");
    let out = ok(warren(w, &reg).args([
        "--json",
        "image",
        "pull",
        "--creds",
        &creds,
        &format!("docker://{h}/test/layered:v1"),
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["name"], format!("{h}/test/layered:v1"), "{out}");
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{layered}")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        report["layers"],
        m["layers"].as_array().unwrap().len(),
        "{out}"
    );
    let expected = util::umoci_unpack(&layered, w, "umoci");
    let got = extract(w, &reg, &format!("{h}/test/layered:v1"), "out");
    util::assert_same_tree(&expected, &got);
    assert!(!got.join("gone.txt").exists() && !got.join("opt/lower-only").exists());

    // warren login stores the credentials (checked first); pull then finds them.
    let err = fails(warren(w, &reg).args(["login", "-u", USER, "-p", "nope", h]));
    assert!(err.contains("refused"), "{err}");
    ok(warren(w, &reg).args(["login", "-u", USER, "-p", PASS, h]));
    let saved: serde_json::Value =
        serde_json::from_slice(&fs::read(w.join("auth.json")).unwrap()).unwrap();
    assert!(saved["auths"][h.as_str()]["auth"].is_string(), "{saved}");
    ok(warren(w, &reg).args(["image", "pull", &format!("{h}/busybox:1"), "bb:pulled"]));
    let bb_out = extract(w, &reg, "bb:pulled", "bb-out");
    util::assert_same_tree(&util::umoci_unpack(&bb, w, "umoci-bb"), &bb_out);
    assert!(!bb_out.join("etc/gone").exists(), "the whiteout applied");

    // A container runs from the pulled image.
    let ran = ok(warren(w, &reg).args([
        "run",
        "--rm",
        "--image",
        "bb:pulled",
        "--",
        "/bin/sh",
        "-c",
        "cat /hello; test -e /etc/gone || echo whited-out",
    ]));
    assert_eq!(ran, "hello from bb, layer 2\nwhited-out\n", "{ran}");

    ok(warren(w, &reg).args(["logout", h]));
    let err = fails(warren(w, &reg).args(["logout", h]));
    assert!(err.contains("not logged in"), "{err}");
    // --tls-verify=false goes without the CA (and without the certs.d root).
    ok(warren(w, &reg)
        .env("WARREN_CERTS_D", w.join("empty"))
        .args([
            "image",
            "pull",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("{h}/busybox:1"),
            "bb:insecure",
        ]));
}

/// `LAYOUT:multi`: an index of `bb` (this platform) and `other` (linux/s390x).
fn multi_arch_index(layout: &Path) {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap().clone();
    let by_tag = |tag: &str| {
        let mut m = manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone();
        m.as_object_mut().unwrap().remove("annotations");
        m
    };
    let mut ours = by_tag("bb");
    ours["platform"] =
        serde_json::json!({"architecture": warren::store::oci::go_arch(), "os": "linux"});
    let mut other = by_tag("other");
    other["platform"] = serde_json::json!({"architecture": "s390x", "os": "linux"});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, ours],
    }))
    .unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&nested));
    fs::write(layout.join("blobs/sha256").join(&digest), &nested).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn anonymous_bearer_tokens_and_a_multi_arch_index() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-token");
    let w = work.path();
    let reg = Registry::start(w, Auth::Token);
    let layout = w.join("layout");
    let bb = busybox_image(&layout, "bb", w);
    let other = busybox_image(&layout, "other", w);
    multi_arch_index(&layout);
    reg.put(&format!("oci:{}:multi", layout.display()), "multi:1", true);
    let h = &reg.host;

    // Anonymous: the registry's 401 sends warren to the token server for a pull token.
    let before = fs::read_to_string(&reg.token_log).unwrap_or_default();
    ok(warren(w, &reg).args(["image", "pull", &format!("{h}/multi:1"), "multi:here"]));
    let log = fs::read_to_string(&reg.token_log).unwrap();
    let new: Vec<&str> = log[before.len()..].lines().collect();
    assert!(
        !new.is_empty() && new.iter().all(|l| *l == "anonymous repository:multi:pull"),
        "{new:?}"
    );
    let got = extract(w, &reg, "multi:here", "here");
    util::assert_same_tree(&util::umoci_unpack(&bb, w, "umoci-bb"), &got);

    // Another platform on request; one the index lacks is refused, naming what it has.
    ok(warren(w, &reg).args([
        "image",
        "pull",
        "--platform",
        "linux/s390x",
        &format!("{h}/multi:1"),
        "multi:s390x",
    ]));
    let got = extract(w, &reg, "multi:s390x", "s390x");
    util::assert_same_tree(&util::umoci_unpack(&other, w, "umoci-other"), &got);
    let err = fails(warren(w, &reg).args([
        "image",
        "pull",
        "--platform",
        "linux/riscv64",
        &format!("{h}/multi:1"),
    ]));
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/s390x"),
        "{err}"
    );

    // By digest: the index's digest resolves the same way.
    let digest = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(reg.certs_d.join(h))
        .arg(format!("docker://{h}/multi:1")));
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(digest.as_bytes()))
    );
    ok(warren(w, &reg).args([
        "image",
        "pull",
        &format!("{h}/multi@{digest}"),
        "multi:bydigest",
    ]));
    // Wrong credentials at the token server: a clear error.
    let err = fails(warren(w, &reg).args([
        "image",
        "pull",
        "--creds",
        &format!("{USER}:bad"),
        &format!("{h}/multi:1"),
    ]));
    assert!(
        err.contains("token server refused the credentials"),
        "{err}"
    );
}

#[test]
fn a_corrupt_blob_is_refused_naming_it_and_nothing_is_listed() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-corrupt");
    let w = work.path();
    let reg = Registry::start(w, Auth::Htpasswd);
    let layout = w.join("layout");
    busybox_image(&layout, "bb", w);
    reg.put(&format!("oci:{}:bb", layout.display()), "corrupt:1", false);
    // The first (busybox) layer's blob, one byte changed, its size kept.
    let raw = ok(Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--creds",
            &format!("{USER}:{PASS}"),
            "--cert-dir",
        ])
        .arg(reg.certs_d.join(&reg.host))
        .arg(format!("docker://{}/corrupt:1", reg.host)));
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&layer);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let creds = format!("{USER}:{PASS}");
    let err = fails(warren(w, &reg).args([
        "image",
        "pull",
        "--creds",
        &creds,
        &format!("{}/corrupt:1", reg.host),
    ]));
    assert!(
        err.contains(&layer) && err.contains("nothing was imported"),
        "{err}"
    );
    assert!(!listed(w, &reg).contains("corrupt"), "nothing listed");
}

/// A registry serving one OCI layout over TLS with faults: basic auth on `/v2/`; the
/// largest layer's first GET gets a 503 with `Retry-After: 1`, the next ones a redirect to
/// "blob storage" on another authority (`localhost:PORT`), whose first answer is cut
/// after half the bytes (later ones honour `Range`). Logs `PATH auth=yes|no range=R`.
const FAKE_REGISTRY: &str = r#"
import base64, http.server, json, os, ssl, sys, threading
port, cert, key, layout, user, pw, log = sys.argv[1:8]
good = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
index = json.load(open(os.path.join(layout, "index.json")))
def blob(d): return open(os.path.join(layout, "blobs", *d.split(":")), "rb").read()
tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
big = max(json.loads(blob(tags["bb"]["digest"]))["layers"], key=lambda l: l["size"])["digest"]
seen = {"v2": 0, "storage": 0}
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        auth = self.headers.get("Authorization")
        with open(log, "a") as f:
            f.write(f"{self.path} auth={'yes' if auth else 'no'} range={self.headers.get('Range')}\n")
        parts = self.path.split("/")
        if parts[1] == "storage":
            data = blob(parts[2])
            with lock:
                seen["storage"] += 1; first = seen["storage"] == 1
            rng = self.headers.get("Range")
            if first:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2]); self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            start = int(rng.split("=")[1].rstrip("-")) if rng else 0
            code = 206 if rng else 200
            hdrs = [("Content-Range", f"bytes {start}-{len(data)-1}/{len(data)}")] if rng else []
            return self.reply(code, data[start:], hdrs)
        if auth != good:
            return self.reply(401, b"{}", [("WWW-Authenticate", 'Basic realm="fake"')])
        if self.path == "/v2/":
            return self.reply(200, b"{}")
        ref = parts[-1]
        if parts[-2] == "manifests":
            m = tags.get(ref) or {"digest": ref, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
            return self.reply(200, blob(m["digest"]), [("Content-Type", m["mediaType"])])
        if ref == big:
            with lock:
                seen["v2"] += 1; first = seen["v2"] == 1
            if first:
                return self.reply(503, b"busy", [("Retry-After", "1")])
            return self.reply(307, b"", [("Location", f"https://localhost:{port}/storage/{ref}")])
        return self.reply(200, blob(ref))
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

impl Registry {
    fn fake(work: &Path, layout: &Path) -> Registry {
        require_tool("python3", "python3");
        let dir = work.join("fake");
        let pki = dir.join("pki");
        make_pki(&pki);
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let certs_d = dir.join("certs.d");
        fs::create_dir_all(certs_d.join(&host)).unwrap();
        fs::copy(pki.join("ca.crt"), certs_d.join(&host).join("ca.crt")).unwrap();
        fs::write(dir.join("fake.py"), FAKE_REGISTRY).unwrap();
        let log = dir.join("requests.log");
        let mut child = Command::new("python3")
            .arg(dir.join("fake.py"))
            .arg(port.to_string())
            .arg(pki.join("server.crt"))
            .arg(pki.join("server.key"))
            .arg(layout)
            .args([USER, PASS])
            .arg(&log)
            .spawn()
            .expect("start the fake registry");
        wait_listening(port, &mut child, "the fake registry");
        Registry {
            children: vec![child],
            host,
            storage: dir,
            certs_d,
            token_log: log,
        }
    }
}

#[test]
fn retries_resumes_and_redirects_without_the_authorization() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-faults");
    let w = work.path();
    let layout = w.join("layout");
    let bb = busybox_image(&layout, "bb", w);
    let reg = Registry::fake(w, &layout);
    let creds = format!("{USER}:{PASS}");
    let out = ok(warren(w, &reg).args([
        "--json",
        "image",
        "pull",
        "--creds",
        &creds,
        &format!("{}/bb:bb", reg.host),
        "bb",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got = extract(w, &reg, "bb", "out");
    util::assert_same_tree(&util::umoci_unpack(&bb, w, "umoci"), &got);

    let log = fs::read_to_string(&reg.token_log).unwrap();
    let storage: Vec<&str> = log.lines().filter(|l| l.starts_with("/storage/")).collect();
    // The cut download, then the rest of it by Range; never with the registry's password.
    assert_eq!(storage.len(), 2, "{log}");
    assert!(storage.iter().all(|l| l.contains("auth=no")), "{log}");
    assert!(
        storage[0].ends_with("range=None") && storage[1].contains("range=bytes="),
        "{log}"
    );
    assert!(
        !storage[1].ends_with("range=bytes=0-"),
        "resumed where it broke: {log}"
    );
    // The 503 and the broken connection were retried.
    assert!(report["retries"].as_u64().unwrap() >= 2, "{out}");

    // Mirrors from registries.conf: a dead one is skipped, the next serves the image
    // (the registry itself, a closed port, is never needed).
    let conf = w.join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"127.0.0.1:1\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:2\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\n",
            reg.host
        ),
    )
    .unwrap();
    let out = ok(warren(w, &reg)
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .args([
            "--json",
            "image",
            "pull",
            "--creds",
            &creds,
            "127.0.0.1:1/bb:bb",
            "bb:mirrored",
        ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["from"], format!("{}/bb", reg.host), "{out}");
    assert_eq!(report["reference"], "127.0.0.1:1/bb:bb", "{out}");
    util::assert_same_tree(&got, &extract(w, &reg, "bb:mirrored", "mirrored"));
}

/// podman with private storage (`run`: a short dir, podman refuses a runroot over 50
/// characters), runc and no systemd (see ENVIRONMENT.md).
fn podman(work: &Path, run: &Path) -> Command {
    let conf = work.join("containers.conf");
    if !conf.exists() {
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
    }
    let mut cmd = Command::new(require_tool("podman", "podman"));
    cmd.env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(work.join("podman-root"))
        .arg("--runroot")
        .arg(run)
        .arg("--tmpdir")
        .arg(work.join("podman-tmp"))
        .args(["--storage-driver", "vfs", "--runtime", "runc"]);
    cmd
}

#[test]
fn pushed_images_are_pulled_and_run_by_podman_and_skopeo() {
    if !require_root("imports images whose files belong to many owners; runs podman") {
        return;
    }
    let work = scratch("registry-push");
    let w = work.path();
    let reg = Registry::start(w, Auth::Htpasswd);
    let layout = w.join("layout");
    let bb = busybox_image(&layout, "bb", w);
    ok(warren(w, &reg).args(["image", "import", &format!("oci:{bb}"), "--name", "bb"]));
    let h = &reg.host;
    let creds = format!("{USER}:{PASS}");
    let cert_dir = reg.certs_d.join(h);

    let push = |format: &str, dest: &str| -> serde_json::Value {
        let out = ok(warren(w, &reg).args([
            "--json",
            "image",
            "push",
            "--format",
            format,
            "--creds",
            &creds,
            "bb",
            &format!("{h}/{dest}"),
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let first = push("oci", "pushed:1");
    assert_eq!(
        (
            first["uploaded_blobs"].as_u64(),
            first["skipped_blobs"].as_u64()
        ),
        (Some(2), Some(0)),
        "{first}"
    );
    // Again: the registry has both blobs (HEAD), only the manifest goes.
    let again = push("oci", "pushed:2");
    assert_eq!(
        (
            again["uploaded_blobs"].as_u64(),
            again["skipped_blobs"].as_u64()
        ),
        (Some(0), Some(2)),
        "{again}"
    );
    let docker = push("docker", "pushed:docker");

    // skopeo sees what was pushed; its copy unpacks (umoci) to the tree warren stores.
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--creds", &creds, "--cert-dir"])
        .arg(&cert_dir)
        .arg(format!("docker://{h}/pushed:1")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{raw}"
    );
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--creds", &creds, "--cert-dir"])
        .arg(&cert_dir)
        .arg(format!("docker://{h}/pushed:docker")));
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw} {docker}"
    );
    ok(Command::new("skopeo")
        .args(["copy", "-q", "--src-creds", &creds, "--src-cert-dir"])
        .arg(&cert_dir)
        .arg(format!("docker://{h}/pushed:1"))
        .arg(format!("oci:{}:p", w.join("copied").display())));
    let copied = util::umoci_unpack(
        &format!("{}:p", w.join("copied").display()),
        w,
        "umoci-copied",
    );
    let ours = extract(w, &reg, "bb", "ours");
    util::assert_same_tree(&ours, &copied);

    // podman pulls it and runs it.
    let short = tempfile::Builder::new()
        .prefix("wreg")
        .tempdir_in("/tmp")
        .unwrap();
    let podman = |w: &Path| podman(w, short.path());
    ok(podman(w)
        .args(["pull", "-q", "--creds", &creds, "--cert-dir"])
        .arg(&cert_dir)
        .arg(format!("{h}/pushed:docker")));
    let ran = ok(podman(w).args([
        "run",
        "--rm",
        "--network",
        "none",
        &format!("{h}/pushed:docker"),
        "/bin/sh",
        "-c",
        "cat /hello",
    ]));
    assert_eq!(ran, "hello from bb, layer 2\n");
    let _ = run(podman(w).args(["rmi", "-a", "-f"]));
}
