//! `warren image pull` from a real registry (Debian's docker-registry, distribution 2.8)
//! on loopback, over TLS with a CA the test makes (trusted only through a certs.d root the
//! test points warren at), with htpasswd basic auth or bearer tokens from a token server
//! the test runs. Images are put there with `skopeo copy`; what warren pulls is compared
//! entry by entry with `umoci unpack` of the same image.

mod common;
#[allow(dead_code)]
#[path = "registry/harness.rs"]
mod harness;
#[path = "oci/util.rs"]
mod util;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{ok, require_root, run, scratch};
use harness::*;

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

    // A short name, tried at each unqualified-search registry in turn (the first is down).
    let conf = w.join("registries.conf");
    fs::write(
        &conf,
        format!("unqualified-search-registries = [\"127.0.0.1:1\", \"{h}\"]\n"),
    )
    .unwrap();
    let out = ok(warren(w, &reg)
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .args(["--json", "image", "pull", "busybox:1"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["name"], format!("{h}/busybox:1"), "{out}");

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
    // Images with zstd layers, as Docker v2 schema 2 (a manifest list too): each pulls to what umoci unpacks. (Each its own image: skopeo would reuse
    // a blob the registry has instead of recompressing it.)
    let variants: [(&str, &[&str], &str); 3] = [
        ("zstd", &["--dest-compress-format", "zstd"], "tar+zstd"),
        ("docker", &["--format", "v2s2"], "rootfs.diff.tar.gzip"),
        (
            "multi",
            &["--format", "v2s2", "--all"],
            "manifest.list.v2+json",
        ),
    ];
    for (tag, flags, media) in variants {
        let image = match tag {
            "multi" => bb.clone(),
            _ => busybox_image(&layout, tag, w),
        };
        let dest = format!("variant:{tag}");
        reg.put_with(&format!("oci:{}:{tag}", layout.display()), &dest, flags);
        let raw = ok(Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(reg.certs_d.join(h))
            .arg(format!("docker://{h}/{dest}")));
        assert!(raw.contains(media), "{dest}: {raw}");
        ok(warren(w, &reg).args(["image", "pull", &format!("{h}/{dest}"), &dest]));
        let got = extract(w, &reg, &dest, &format!("variant-{tag}"));
        util::assert_same_tree(
            &util::umoci_unpack(&image, w, &format!("umoci-{tag}")),
            &got,
        );
    }

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

#[test]
fn retries_resumes_and_redirects_without_the_authorization() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-faults");
    let w = work.path();
    let layout = w.join("layout");
    let bb = busybox_image(&layout, "bb", w);
    let reg = Registry::fake(w, &layout, 1);
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

    // Uncompressed layers (skopeo compresses what it sends; this registry serves the
    // layout as it is).
    uncompressed_copy(&layout, "bb", "plain");
    ok(warren(w, &reg).args([
        "image",
        "pull",
        "--creds",
        &creds,
        &format!("{}/bb:plain", reg.host),
        "bb:plain",
    ]));
    util::assert_same_tree(&got, &extract(w, &reg, "bb:plain", "plain"));

    // A hostile registry: a non-distributable layer, a manifest past the size cap, a
    // layer bigger than its descriptor says. Each refused, saying why; nothing listed.
    add_variant(&layout, "bb", "foreign", |m| {
        m["layers"][0]["mediaType"] =
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into();
    });
    add_variant(&layout, "bb", "huge", |m| {
        m["annotations"] = serde_json::json!({"pad": "x".repeat(5 << 20)});
    });
    add_variant(&layout, "bb", "short", |m| {
        let small = m["layers"][1]["size"].as_u64().unwrap();
        m["layers"][1]["size"] = (small - 10).into();
    });
    for (tag, why) in [
        ("foreign", "non-distributable"),
        ("huge", "more than"),
        ("short", "its descriptor says"),
    ] {
        let err = fails(warren(w, &reg).args([
            "image",
            "pull",
            "--creds",
            &creds,
            &format!("{}/bb:{tag}", reg.host),
            &format!("bad:{tag}"),
        ]));
        assert!(err.contains(why), "{tag}: {err}");
    }
    assert!(!listed(w, &reg).contains("bad"), "{}", listed(w, &reg));
}

#[test]
fn an_interrupted_pull_resumes_where_it_broke() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-resume");
    let w = work.path();
    let layout = w.join("layout");
    let bb = busybox_image(&layout, "bb", w);
    // Every attempt of the first pull breaks off: it fails, keeping what arrived.
    let reg = Registry::fake(w, &layout, 4);
    let creds = format!("{USER}:{PASS}");
    let pull = |w: &Path| {
        run(warren(w, &reg).args([
            "image",
            "pull",
            "--creds",
            &creds,
            &format!("{}/bb:bb", reg.host),
            "bb",
        ]))
    };
    let first = pull(w);
    assert!(!first.status.success());
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(
        err.contains("/blobs/sha256:") && err.contains("after 4 attempts"),
        "{err}"
    );
    assert!(!listed(w, &reg).contains("bb"));
    let blobs = w.join("state/store/registry-blobs");
    let part = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "part"))
        .expect("a partial blob kept");
    let kept = fs::metadata(&part).unwrap().len();
    assert!(kept > 0);

    // The next pull asks only for the rest.
    let second = pull(w);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let log = fs::read_to_string(&reg.token_log).unwrap();
    let storage: Vec<&str> = log.lines().filter(|l| l.starts_with("/storage/")).collect();
    assert_eq!(storage.len(), 5, "{log}");
    assert!(
        storage[4].ends_with(&format!("range=bytes={kept}-")),
        "{log}"
    );
    util::assert_same_tree(
        &util::umoci_unpack(&bb, w, "umoci"),
        &extract(w, &reg, "bb", "out"),
    );
    assert!(!part.exists(), "the partial blob is used up");
}

/// `DIR/docker-credential-warrentest`: keeps one login in `DIR/stored.json` (`store`,
/// `get`, `erase`, each logged in `DIR/calls.log`); `docker-credential-warrenbroken`
/// fails as a locked keychain would.
fn fake_helpers(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let helpers = [
        (
            "warrentest",
            format!(
                "#!/bin/sh\nread -r input\necho \"$1 $input\" >> {d}/calls.log\n\
                 case \"$1\" in\n\
                 store) echo \"$input\" > {d}/stored.json ;;\n\
                 get) if grep -q \"\\\"ServerURL\\\":\\\"$input\\\"\" {d}/stored.json 2>/dev/null; \
                 then cat {d}/stored.json; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
                 erase) if [ -e {d}/stored.json ]; then rm {d}/stored.json; \
                 else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
                 *) exit 2 ;;\nesac\n"
            ),
        ),
        (
            "warrenbroken",
            "#!/bin/sh\necho 'the keychain is locked' >&2\nexit 3\n".to_string(),
        ),
    ];
    for (name, script) in helpers {
        let p = dir.join(format!("docker-credential-{name}"));
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn credential_helpers_get_store_and_erase_logins() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-helpers");
    let w = work.path();
    let reg = Registry::start(w, Auth::Htpasswd);
    let bb = busybox_image(&w.join("layout"), "bb", w);
    reg.put(&format!("oci:{bb}"), "helped:1", false);
    let h = reg.host.clone();
    let bin = w.join("helpers");
    fake_helpers(&bin);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let auth = w.join("auth.json");
    let with_helpers = |w: &Path| {
        let mut cmd = warren(w, &reg);
        cmd.env("PATH", &path);
        cmd
    };
    let pull =
        |name: &str| run(with_helpers(w).args(["image", "pull", &format!("{h}/helped:1"), name]));
    let calls = || fs::read_to_string(bin.join("calls.log")).unwrap_or_default();

    // warren login with a credsStore: the helper stores the password, the file has an
    // empty entry and no secret.
    fs::write(&auth, r#"{"credsStore":"warrentest"}"#).unwrap();
    let said = ok(with_helpers(w).args(["login", "-u", USER, "-p", PASS, &h]));
    assert!(
        said.contains("saved by docker-credential-warrentest"),
        "{said}"
    );
    let stored = fs::read_to_string(bin.join("stored.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"ServerURL": h, "Username": USER, "Secret": PASS})
    );
    let file = fs::read_to_string(&auth).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(saved["auths"][h.as_str()], serde_json::json!({}), "{file}");
    assert_eq!(saved["credsStore"], "warrentest", "{file}");
    assert!(!file.contains(PASS) && !file.contains("\"auth\""), "{file}");

    // The pull gets them from the helper (`get` with the registry's name).
    let o = pull("helped:store");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(calls().contains(&format!("get {h}")), "{}", calls());
    let got = extract(w, &reg, "helped:store", "out");
    util::assert_same_tree(&util::umoci_unpack(&bb, w, "umoci"), &got);

    // credHelpers for this registry wins over credsStore (and over `auths`).
    fs::write(
        &auth,
        serde_json::json!({"credsStore": "warrenbroken", "credHelpers": {h.as_str(): "warrentest"}})
            .to_string(),
    )
    .unwrap();
    let o = pull("helped:per-host");
    assert!(o.status.success(), "{}", stderr(&o));

    // A helper that fails: the error names it and says what it said; nothing listed.
    fs::write(&auth, r#"{"credsStore":"warrenbroken"}"#).unwrap();
    let err = stderr(&pull("helped:broken"));
    assert!(
        err.contains("docker-credential-warrenbroken get") && err.contains("keychain is locked"),
        "{err}"
    );
    fs::write(
        &auth,
        r#"{"credHelpers":{"x":"y"},"credsStore":"warrenmissing"}"#,
    )
    .unwrap();
    let err = stderr(&pull("helped:missing"));
    assert!(err.contains("docker-credential-warrenmissing"), "{err}");
    assert!(!listed(w, &reg).contains("broken") && !listed(w, &reg).contains("missing"));

    // logout erases the login from the helper; a pull is then anonymous and refused.
    fs::write(&auth, &file).unwrap();
    ok(with_helpers(w).args(["logout", &h]));
    assert!(calls().contains(&format!("erase {h}")), "{}", calls());
    assert!(!bin.join("stored.json").exists());
    let err = stderr(&pull("helped:after"));
    assert!(err.contains("log in") || err.contains("--creds"), "{err}");
    let err = fails(with_helpers(w).args(["logout", &h]));
    assert!(err.contains("not logged in"), "{err}");
}

/// A gzip layer (several gzip members, as `MultiGzDecoder` reads them) of a tar holding
/// one file of `size` zero bytes (a multiple of 16 MiB): about 1/1000 of its size.
fn zeros_bomb(size: u64) -> Vec<u8> {
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let mut out = gz(header.as_bytes());
    let chunk = gz(&vec![0u8; 16 << 20]);
    for _ in 0..size / (16 << 20) {
        out.extend_from_slice(&chunk);
    }
    out.extend(gz(&[0u8; 1024])); // the end-of-archive blocks
    out
}

#[test]
fn a_hostile_registry_is_bounded_layer_count_config_size_and_bombs() {
    if !require_root("imports images whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-hostile");
    let w = work.path();
    let layout = w.join("layout");
    busybox_image(&layout, "bb", w);
    let reg = Registry::fake(w, &layout, 0);
    let creds = format!("{USER}:{PASS}");
    add_variant(&layout, "bb", "many", |m| {
        let one = m["layers"][0].clone();
        m["layers"] = vec![one; 300].into();
    });
    add_variant(&layout, "bb", "bigconfig", |m| {
        m["config"]["size"] = (5u64 << 20).into();
    });
    // 640 MiB of zeros in a 0.7 MB layer: more than 512 MiB + 100 x 0.7 MB, refused at the
    // file's header, before its zeros are inflated (and its diff_id, not computed here,
    // compared).
    let bomb = zeros_bomb(640 << 20);
    let bomb_digest = sha256(&bomb);
    fs::write(blob_path(&layout, &bomb_digest), &bomb).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": warren::store::oci::go_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    fs::write(blob_path(&layout, &config_digest), &config).unwrap();
    add_variant(&layout, "bb", "bomb", |m| {
        m["config"]["digest"] = config_digest.clone().into();
        m["config"]["size"] = config.len().into();
        m["layers"] = serde_json::json!([{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": bomb_digest,
            "size": bomb.len(),
        }]);
    });
    for (tag, why) in [
        ("many", "300 layers, more than 256"),
        ("bigconfig", "more than the 4194304 allowed"),
        ("bomb", "size 671088640 exceeds the limit"),
    ] {
        let err = fails(warren(w, &reg).args([
            "image",
            "pull",
            "--creds",
            &creds,
            &format!("{}/bb:{tag}", reg.host),
            &format!("bad:{tag}"),
        ]));
        assert!(err.contains(why), "{tag}: {err}");
    }
    assert!(!listed(w, &reg).contains("bad"), "{}", listed(w, &reg));
    // Nothing downloaded is left behind.
    let left: Vec<_> = fs::read_dir(w.join("state/store/registry-blobs"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().ends_with(".lock")),
        "{left:?}"
    );
}
