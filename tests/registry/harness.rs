//! The registries the registry tests pull from: docker-registry over TLS (a CA made here)
//! with htpasswd or a token server, and a faulty fake; images built with umoci; podman.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use crate::common::{self, ok, require_tool, run};

pub const USER: &str = "tester";
pub const PASS: &str = "s3cret-pass";

pub enum Auth {
    Htpasswd,
    Token,
}

/// A registry on 127.0.0.1 with TLS, killed when dropped (and its token server).
pub struct Registry {
    children: Vec<Child>,
    pub host: String,
    pub storage: PathBuf,
    /// The certs.d root holding `HOST/ca.crt`.
    pub certs_d: PathBuf,
    /// The token server's log: one line per token issued (`anonymous|USER SCOPE`).
    pub token_log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_listening(port: u16, child: &mut Child, what: &str) {
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

pub fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub fn make_pki(dir: &Path) {
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
pub const TOKEN_SERVER: &str = include_str!("token_server.py");

impl Registry {
    pub fn start(work: &Path, auth: Auth) -> Registry {
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
    pub fn put(&self, src: &str, dest: &str, all: bool) {
        self.put_with(src, dest, if all { &["--all"] } else { &[] });
    }

    /// [`Registry::put`] with more `skopeo copy` flags (`--format v2s2`, compression).
    pub fn put_with(&self, src: &str, dest: &str, flags: &[&str]) {
        require_tool("skopeo", "skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-creds", &format!("{USER}:{PASS}")])
            .arg("--dest-cert-dir")
            .arg(self.certs_d.join(&self.host))
            .args(flags);
        ok(cmd.arg(src).arg(format!("docker://{}/{dest}", self.host)));
    }

    /// The path of blob `digest` (`sha256:HEX`) in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
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
pub fn warren(work: &Path, reg: &Registry) -> Command {
    let mut cmd = common::warren(work);
    cmd.env("REGISTRY_AUTH_FILE", work.join("auth.json"))
        .env("WARREN_CERTS_D", &reg.certs_d);
    cmd
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn fails(cmd: &mut Command) -> String {
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
pub fn busybox_image(layout: &Path, tag: &str, work: &Path) -> String {
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
    // --refresh-bundle: the next repack is a layer on top of this one, not a replacement.
    ok(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &image])
        .arg(&bundle));
    fs::remove_file(r.join("etc/gone")).unwrap();
    fs::write(r.join("hello"), format!("hello from {tag}, layer 2\n")).unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();
    image
}

pub fn extract(work: &Path, reg: &Registry, name: &str, dest: &str) -> PathBuf {
    let out = work.join(dest);
    ok(warren(work, reg).args(["image", "extract", name]).arg(&out));
    out
}

pub fn listed(work: &Path, reg: &Registry) -> String {
    ok(warren(work, reg).args(["--json", "image", "ls"]))
}

/// A registry serving one OCI layout over TLS with faults: basic auth on `/v2/`; the
/// largest layer's first GET gets a 503 with `Retry-After: 1`, the next ones a redirect to
/// "blob storage" on another authority (`localhost:PORT`), whose first `cuts` answers are
/// cut after half the bytes asked for (`Range` honoured). Logs `PATH auth=yes|no range=R`.
pub const FAKE_REGISTRY: &str = include_str!("fake_registry.py");

impl Registry {
    pub fn fake(work: &Path, layout: &Path, cuts: u32) -> Registry {
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
            .arg(cuts.to_string())
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

/// podman with private storage (`run`: a short dir, podman refuses a runroot over 50
/// characters), runc and no systemd (see ENVIRONMENT.md).
pub fn podman(work: &Path, run: &Path) -> Command {
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

/// `LAYOUT:multi`: an index of `bb` (this platform) and `other` (linux/s390x).
pub fn multi_arch_index(layout: &Path) {
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

pub fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
    )
}

/// Adds `LAYOUT:to`: image `from`'s manifest changed by `edit` (which may add blobs).
pub fn add_variant(layout: &Path, from: &str, to: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from)
        .unwrap()
        .clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(blob_path(layout, desc["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    edit(&mut manifest);
    let data = serde_json::to_vec(&manifest).unwrap();
    let d = sha256(&data);
    fs::write(blob_path(layout, &d), &data).unwrap();
    let mut new = desc.clone();
    new["digest"] = d.into();
    new["size"] = data.len().into();
    new["annotations"]["org.opencontainers.image.ref.name"] = to.into();
    index["manifests"].as_array_mut().unwrap().push(new);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

pub fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Adds `LAYOUT:to`: image `from` with its layers decompressed (same config: its
/// diff_ids are the uncompressed digests).
pub fn uncompressed_copy(layout: &Path, from: &str, to: &str) {
    add_variant(layout, from, to, |manifest| {
        for l in manifest["layers"].as_array_mut().unwrap() {
            let gz = fs::read(blob_path(layout, l["digest"].as_str().unwrap())).unwrap();
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar)
                .unwrap();
            let d = sha256(&tar);
            fs::write(blob_path(layout, &d), &tar).unwrap();
            l["digest"] = d.into();
            l["size"] = tar.len().into();
            l["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        }
    });
}
