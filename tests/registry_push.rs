//! `warren image push` to a real registry (Debian's docker-registry, distribution 2.8, on
//! loopback over TLS, see `registry/harness.rs`): what warren pushes is pulled and run by
//! podman and copied by skopeo; a push to another repository mounts the blobs instead of
//! sending them again. Split from `registry.rs` (the pull side).

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

/// Lines of `path` past its first `from` bytes.
fn new_lines(path: &Path, from: usize) -> Vec<String> {
    let all = fs::read_to_string(path).unwrap_or_default();
    all[from.min(all.len())..]
        .lines()
        .map(String::from)
        .collect()
}

fn file_len(path: &Path) -> usize {
    fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0)
}

#[test]
fn a_push_to_another_repository_mounts_the_blobs_from_the_first() {
    if !require_root("imports images whose files belong to many owners; runs podman") {
        return;
    }
    let work = scratch("registry-mount");
    let w = work.path();
    // Bearer tokens: a mount needs pull access to the repository mounted from as well.
    let reg = Registry::start(w, Auth::Token);
    let bb = busybox_image(&w.join("layout"), "bb", w);
    ok(warren(w, &reg).args(["image", "import", &format!("oci:{bb}"), "--name", "bb"]));
    let h = &reg.host;
    let creds = format!("{USER}:{PASS}");
    let push = |dest: &str| -> serde_json::Value {
        let out = ok(warren(w, &reg).args([
            "--json",
            "image",
            "push",
            "--creds",
            &creds,
            "bb",
            &format!("{h}/{dest}"),
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let counts = |r: &serde_json::Value| {
        ["uploaded_blobs", "skipped_blobs", "mounted_blobs"].map(|k| r[k].as_u64().unwrap())
    };
    let first = push("mount/a:1");
    assert_eq!(counts(&first), [2, 0, 0], "{first}");

    let access = w.join("registry/registry.log");
    let (log_at, tokens_at) = (file_len(&access), file_len(&reg.token_log));
    let second = push("mount/b:1");
    assert_eq!(counts(&second), [0, 0, 2], "{second}");
    let cert_dir = reg.certs_d.join(h);
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--creds", &creds, "--cert-dir"])
        .arg(&cert_dir)
        .arg(format!("docker://{h}/mount/b:1")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    // The registry's access log: a mount of the layer from mount/a (201), and no blob
    // sent to mount/b.
    let lines = new_lines(&access, log_at);
    let mount = format!("POST /v2/mount/b/blobs/uploads/?mount={layer}&from=mount/a ");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&mount) && l.contains("\" 201 ")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"PUT /v2/mount/b/blobs") || l.contains("\"PATCH ")),
        "{lines:#?}"
    );
    // The token asked for covers pulling from mount/a.
    let tokens = new_lines(&reg.token_log, tokens_at);
    assert!(
        tokens.iter().any(|l| l.contains("repository:mount/a:pull")),
        "{tokens:#?}"
    );

    // podman pulls the mounted image and runs it.
    let short = tempfile::Builder::new()
        .prefix("wreg")
        .tempdir_in("/tmp")
        .unwrap();
    let podman = |w: &Path| podman(w, short.path());
    ok(podman(w)
        .args(["pull", "-q", "--creds", &creds, "--cert-dir"])
        .arg(&cert_dir)
        .arg(format!("{h}/mount/b:1")));
    let ran = ok(podman(w).args([
        "run",
        "--rm",
        "--network",
        "none",
        &format!("{h}/mount/b:1"),
        "/bin/sh",
        "-c",
        "cat /hello",
    ]));
    assert_eq!(ran, "hello from bb, layer 2\n");
    let _ = run(podman(w).args(["rmi", "-a", "-f"]));

    // Repositories that lost the layer: the mount opens an upload instead (202), and the
    // layer is sent; the config still mounts.
    for repo in ["a", "b"] {
        let link = reg.storage.join(format!(
            "docker/registry/v2/repositories/mount/{repo}/_layers/sha256/{}",
            layer.trim_start_matches("sha256:")
        ));
        fs::remove_dir_all(&link).unwrap();
    }
    let log_at = file_len(&access);
    let third = push("mount/c:1");
    assert_eq!(counts(&third), [1, 0, 1], "{third}");
    let lines = new_lines(&access, log_at);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("POST /v2/mount/c/blobs/uploads/?mount=") && l.contains("\" 202 ")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"PUT /v2/mount/c/blobs/uploads/")),
        "{lines:#?}"
    );
    let copied = w.join("copied");
    ok(Command::new("skopeo")
        .args(["copy", "-q", "--src-creds", &creds, "--src-cert-dir"])
        .arg(&cert_dir)
        .arg(format!("docker://{h}/mount/c:1"))
        .arg(format!("oci:{}:c", copied.display())));
    util::assert_same_tree(
        &extract(w, &reg, "bb", "ours"),
        &util::umoci_unpack(&format!("{}:c", copied.display()), w, "umoci-c"),
    );
}
