//! Import and export of OCI image layouts, docker archives and tarballs, checked against
//! what other tools (umoci, skopeo, GNU tar) make of the same inputs.

mod common;
#[path = "oci/util.rs"]
mod util;

use std::path::Path;
use std::process::Command;

use common::{ok, require_root, require_tool, scratch};
use warren::store::oci::{self, ImageConfig, ImportOptions, OciError};
use warren::store::{ExtractOptions, Store};

fn extract(store: &Store, name: &str, dest: &Path) {
    store
        .extract(name, dest, &ExtractOptions::default())
        .unwrap_or_else(|e| panic!("extract {name}: {e}"));
}

#[test]
fn umoci_layout_imports_like_umoci_unpack() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    let work = scratch("oci-layout");
    let layout = util::build_layout(work.path());
    let image = format!("{}:t", layout.display());
    let expected = util::umoci_unpack(&image, work.path(), "umoci");

    let store = Store::open(&work.path().join("store")).unwrap();
    let info = oci::import(
        &store,
        &format!("oci:{image}"),
        "layered:v1",
        &ImportOptions::default(),
    )
    .unwrap();
    assert!(info.files > 5, "{info:?}");
    let out = work.path().join("out");
    extract(&store, "layered:v1", &out);
    util::assert_same_tree(&expected, &out);

    // What the layers did, spelled out (the comparison above would also pass if both
    // tools were wrong in the same way).
    assert!(!out.join("old").exists(), "whiteout of a directory");
    assert!(
        !out.join("gone.txt").exists() && !out.join("data/a.txt").exists(),
        "whiteouts"
    );
    assert!(
        !out.join("opt/lower-only").exists() && !out.join("opt/app").exists(),
        "opaque dir"
    );
    assert_eq!(std::fs::read(out.join("opt/new")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read(out.join("data/a-link.txt")).unwrap(),
        b"shared bytes\n"
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(out.join("data/a-link.txt")).unwrap(),
        std::fs::metadata(out.join("usr/a-elsewhere")).unwrap(),
    );
    assert_eq!(
        (a.ino(), a.nlink(), a.uid(), a.gid()),
        (b.ino(), 2, 7, 8),
        "surviving hardlinks"
    );
    let passwd = std::fs::read_to_string(out.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("user:x:1000"),
        "layer 2 changed passwd: {passwd}"
    );
    let cap = warren::sys::lgetxattr_at(
        std::os::fd::AsFd::as_fd(&std::fs::File::open(out.join("usr/bin")).unwrap()),
        std::ffi::OsStr::new("tool"),
        c"security.capability",
    )
    .unwrap();
    assert!(cap.is_some(), "file capability kept");

    // The config came along.
    let config = ImageConfig::of(&store, "layered:v1").unwrap();
    assert_eq!(config.os, "linux");
    assert_eq!(config.architecture, oci::go_arch());
}

#[test]
fn docker_archive_from_skopeo_imports_like_umoci_unpack() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    require_tool("skopeo", "skopeo");
    let work = scratch("oci-docker");
    let layout = util::build_layout(work.path());
    let image = format!("{}:t", layout.display());
    let expected = util::umoci_unpack(&image, work.path(), "umoci");
    let archive = work.path().join("image.docker.tar");
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", &format!("oci:{image}")])
        .arg(format!(
            "docker-archive:{}:example/layered:t",
            archive.display()
        )));

    let store = Store::open(&work.path().join("store")).unwrap();
    let source = format!("docker-archive:{}", archive.display());
    oci::import(&store, &source, "fromdocker", &ImportOptions::default()).unwrap();
    let out = work.path().join("out");
    extract(&store, "fromdocker", &out);
    util::assert_same_tree(&expected, &out);

    // With an explicit reference, and a wrong one.
    oci::import(
        &store,
        &format!("{source}:example/layered:t"),
        "fromdocker:2",
        &ImportOptions::default(),
    )
    .unwrap();
    let err = oci::import(
        &store,
        &format!("{source}:nope:1"),
        "nope",
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, OciError::NoSuchImage { .. }), "{err}");
    assert!(err.to_string().contains("example/layered:t"), "{err}");
}

/// A tree with the awkward cases, made with plain std calls.
fn sample_tree(root: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/file"), b"deep").unwrap();
    std::fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("setuid"), std::fs::Permissions::from_mode(0o4711)).unwrap();
    std::os::unix::fs::lchown(root.join("a/b"), Some(1234), Some(5678)).unwrap();
    symlink("../../etc/passwd", root.join("a/rel-link")).unwrap();
    std::fs::hard_link(root.join("a/b/c/file"), root.join("hard")).unwrap();
    let long = "n".repeat(120) + "/" + &"m".repeat(120);
    std::fs::create_dir_all(root.join(&long)).unwrap();
    std::fs::write(root.join(&long).join("f"), vec![7u8; 200_000]).unwrap();
    util::xattr_set(&root.join("setuid"), "user.note", b"\x00binary\xff");
}

#[test]
fn tarballs_are_told_by_content_not_name() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    require_tool("zstd", "zstd");
    let work = scratch("oci-tarball");
    let tree = work.path().join("tree");
    sample_tree(&tree);
    let plain = work.path().join("plain.tar");
    ok(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&plain)
        .arg("."));
    // Misleading names on purpose.
    let gz = work.path().join("image.zst");
    let zs = work.path().join("image.tar.gz");
    ok(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", plain.display(), gz.display())));
    ok(Command::new("zstd")
        .args(["-q", "-f"])
        .arg(&plain)
        .arg("-o")
        .arg(&zs));

    let store = Store::open(&work.path().join("store")).unwrap();
    for (i, file) in [&plain, &gz, &zs].into_iter().enumerate() {
        let name = format!("tarball:{i}");
        oci::import(
            &store,
            &file.display().to_string(),
            &name,
            &ImportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let out = work.path().join(format!("out{i}"));
        extract(&store, &name, &out);
        util::assert_same_tree(&tree, &out);
        // A tarball has no config: the minimal one stands in.
        let config = ImageConfig::of(&store, &name).unwrap();
        assert_eq!(config.command(), ["/bin/sh"]);
        assert!(config.env.iter().any(|e| e.starts_with("PATH=")));
    }

    // A config given at import is kept as is.
    let given = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/app"],"Cmd":["--serve"],"Env":["A=1"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"8080/tcp":{}},"Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let opts = ImportOptions {
        config: Some(given.to_vec()),
        ..ImportOptions::default()
    };
    oci::import(&store, &plain.display().to_string(), "configured", &opts).unwrap();
    let c = ImageConfig::of(&store, "configured").unwrap();
    assert_eq!(c.command(), ["/app", "--serve"]);
    assert_eq!(
        (c.working_dir.as_deref(), c.user.as_deref()),
        (Some("/srv"), Some("1000:1000"))
    );
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(
        store.image_config("configured").unwrap().as_deref(),
        Some(&given[..])
    );

    // A directory goes to the store's own walker, with the config too.
    oci::import(&store, &tree.display().to_string(), "fromdir", &opts).unwrap();
    let out = work.path().join("outdir");
    extract(&store, "fromdir", &out);
    util::assert_same_tree(&tree, &out);
    assert_eq!(ImageConfig::of(&store, "fromdir").unwrap(), c);
}

#[test]
fn export_round_trips_and_other_tools_accept_it() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    require_tool("skopeo", "skopeo");
    let work = scratch("oci-export");
    let layout = util::build_layout(work.path());
    let store = Store::open(&work.path().join("store")).unwrap();
    oci::import(
        &store,
        &format!("oci:{}:t", layout.display()),
        "layered",
        &ImportOptions::default(),
    )
    .unwrap();
    let original = work.path().join("original");
    extract(&store, "layered", &original);

    // oci:DIR:TAG, read back by skopeo, umoci and warren.
    let exported = work.path().join("exported");
    let digest = oci::export(&store, "layered", &format!("oci:{}:v1", exported.display())).unwrap();
    assert!(digest.is_some_and(|d| d.starts_with("sha256:")));
    let inspect =
        ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:v1", exported.display())]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Os"], "linux", "{inspect}");
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspect}"
    );
    let unpacked = util::umoci_unpack(
        &format!("{}:v1", exported.display()),
        work.path(),
        "umoci-export",
    );
    util::assert_same_tree(&original, &unpacked);
    oci::import(
        &store,
        &format!("oci:{}:v1", exported.display()),
        "again",
        &ImportOptions::default(),
    )
    .unwrap();
    let again = work.path().join("again");
    extract(&store, "again", &again);
    util::assert_same_tree(&original, &again);
    assert_eq!(
        ImageConfig::of(&store, "again").unwrap(),
        ImageConfig::of(&store, "layered").unwrap(),
        "config survives the round trip"
    );

    // A second tag joins the same layout; both stay readable.
    oci::export(&store, "again", &format!("oci:{}:v2", exported.display())).unwrap();
    ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:v1", exported.display())]));
    ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:v2", exported.display())]));

    // tar:FILE, read back by GNU tar and by warren.
    let tarball = work.path().join("rootfs.tar");
    oci::export(&store, "layered", &format!("tar:{}", tarball.display())).unwrap();
    let untarred = work.path().join("untarred");
    std::fs::create_dir(&untarred).unwrap();
    ok(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&untarred));
    util::assert_same_tree(&original, &untarred);
    oci::import(
        &store,
        &tarball.display().to_string(),
        "fromtar",
        &ImportOptions::default(),
    )
    .unwrap();
    let fromtar = work.path().join("fromtar");
    extract(&store, "fromtar", &fromtar);
    util::assert_same_tree(&original, &fromtar);

    let err = oci::export(&store, "layered", "zip:/tmp/x").unwrap_err();
    assert!(matches!(err, OciError::BadDestination(_)), "{err}");
}

#[test]
fn busybox_builder_makes_a_working_image() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    require_tool("busybox", "busybox-static");
    let work = scratch("oci-busybox");
    let tree = work.path().join("tree");
    warren::store::busybox::busybox_tree(&tree, Path::new(warren::store::busybox::DEFAULT_BUSYBOX))
        .unwrap();
    let store = Store::open(&work.path().join("store")).unwrap();
    let opts = ImportOptions {
        config: Some(warren::store::busybox::busybox_config()),
        ..ImportOptions::default()
    };
    oci::import(&store, &tree.display().to_string(), "busybox", &opts).unwrap();
    let out = work.path().join("out");
    extract(&store, "busybox", &out);
    util::assert_same_tree(&tree, &out);
    // The applets work inside the tree: run its shell chrooted.
    let said = ok(Command::new("chroot").arg(&out).args([
        "/bin/sh",
        "-c",
        "ls /bin/sh && id -u && echo $((6*7))",
    ]));
    assert_eq!(said, "/bin/sh\n0\n42\n");
    let c = ImageConfig::of(&store, "busybox").unwrap();
    assert_eq!(c.command(), ["/bin/sh"]);
    assert!(c.env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("tmp")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o1777);

    // Straight into the store, no tree on disk: the same image but for times.
    let busybox = Path::new(warren::store::busybox::DEFAULT_BUSYBOX);
    warren::store::busybox::import(&store, "embedded", busybox).unwrap();
    let direct = work.path().join("direct");
    extract(&store, "embedded", &direct);
    let strip = |p: &Path| {
        let mut snap = util::snapshot(p);
        snap.values_mut().for_each(|s| s.mtime = None);
        snap
    };
    assert_eq!(strip(&out), strip(&direct));
    let said = ok(Command::new("chroot")
        .arg(&direct)
        .args(["/bin/sh", "-c", "echo $((6*7))"]));
    assert_eq!(said, "42\n");
    assert_eq!(ImageConfig::of(&store, "embedded").unwrap(), c);
}

#[test]
fn a_tar_stream_imports_in_one_pass() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    let work = scratch("oci-stream");
    let tree = work.path().join("tree");
    sample_tree(&tree);
    let tarball = work.path().join("tree.tar.gz");
    ok(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&tree)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    let store = Store::open(&work.path().join("store")).unwrap();
    let input = std::fs::File::open(&tarball).unwrap();
    oci::import_stream(
        &store,
        input,
        "streamed",
        oci::minimal_config(),
        &ImportOptions::default(),
    )
    .unwrap();
    let out = work.path().join("out");
    extract(&store, "streamed", &out);
    util::assert_same_tree(&tree, &out);

    // Hostile streams are refused the same way, leaving nothing.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/hostile");
    for (file, why) in [
        ("dotdot.tar", "escapes"),
        ("symlink-parent.tar", "is a symlink"),
        ("hardlink-missing.tar", "not a file"),
    ] {
        let input = std::fs::File::open(corpus.join(file)).unwrap();
        let err = oci::import_stream(
            &store,
            input,
            "bad",
            oci::minimal_config(),
            &ImportOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(why), "{file}: {err}");
    }
    // A hardlink whose target is replaced later cannot be resolved in one pass.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(3);
    b.append_data(&mut h.clone(), "a", &b"old"[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Link);
    l.set_size(0);
    b.append_link(&mut l, "b", "a").unwrap();
    b.append_data(&mut h, "a", &b"new"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let err = oci::import_stream(
        &store,
        &data[..],
        "bad",
        oci::minimal_config(),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("hardlink"), "{err}");
    assert_eq!(store.list().unwrap().len(), 1, "only the good image");
    // From a file, both passes resolve it: b keeps the old bytes.
    let path = work.path().join("relink.tar");
    std::fs::write(&path, &data).unwrap();
    oci::import(
        &store,
        &path.display().to_string(),
        "relinked",
        &ImportOptions::default(),
    )
    .unwrap();
    let out = work.path().join("relinked");
    extract(&store, "relinked", &out);
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"new");
    assert_eq!(std::fs::read(out.join("b")).unwrap(), b"old");
}

#[test]
fn a_multi_platform_index_resolves_to_this_platform() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    let work = scratch("oci-multi");
    let layout = util::build_layout(work.path());
    let image = format!("{}:t", layout.display());
    let expected = util::umoci_unpack(&image, work.path(), "umoci");
    // Wrap the manifest in a nested image index next to another platform's.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut ours = index["manifests"][0].clone();
    ours.as_object_mut().unwrap().remove("annotations");
    ours["platform"] = serde_json::json!({"architecture": oci::go_arch(), "os": "linux"});
    let mut other = ours.clone();
    other["platform"] = serde_json::json!({"architecture": "s390x", "os": "linux"});
    other["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, ours],
    }))
    .unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&nested));
    std::fs::write(layout.join("blobs/sha256").join(&digest), &nested).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let store = Store::open(&work.path().join("store")).unwrap();
    oci::import(
        &store,
        &format!("oci:{}:multi", layout.display()),
        "multi",
        &ImportOptions::default(),
    )
    .unwrap();
    let out = work.path().join("out");
    extract(&store, "multi", &out);
    util::assert_same_tree(&expected, &out);
    // Two images in the layout: naming none is ambiguous.
    let err = oci::import(
        &store,
        &format!("oci:{}", layout.display()),
        "x",
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OciError::Ambiguous { .. }) && err.to_string().contains("multi"),
        "{err}"
    );
}

#[test]
fn export_puts_hardlinks_after_their_targets() {
    if !require_root("imports images whose files belong to many owners (chown)") {
        return;
    }
    use warren::store::{Entry, Kind, Timestamp};
    let work = scratch("oci-export-links");
    let store = Store::open(&work.path().join("store")).unwrap();
    let entry = |path: &str, kind: Kind| Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        uid: 3,
        gid: 4,
        mtime: Timestamp {
            sec: 1_600_000_000,
            nsec: 5,
        },
        xattrs: vec![],
    };
    let mut w = store.writer().unwrap();
    w.add(entry("", Kind::Dir), None).unwrap();
    w.add(
        entry("z-target", Kind::File { size: 4 }),
        Some(&mut &b"data"[..]),
    )
    .unwrap();
    w.add(
        entry(
            "a-link",
            Kind::Hardlink {
                target: "z-target".into(),
            },
        ),
        None,
    )
    .unwrap();
    w.commit("links", None).unwrap();
    let tarball = work.path().join("links.tar");
    oci::export(&store, "links", &format!("tar:{}", tarball.display())).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    ok(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&out));
    use std::os::unix::fs::MetadataExt;
    let (a, z) = (
        std::fs::metadata(out.join("a-link")).unwrap(),
        std::fs::metadata(out.join("z-target")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink(), a.uid(), a.gid()), (z.ino(), 2, 3, 4));
    assert_eq!(std::fs::read(out.join("a-link")).unwrap(), b"data");
    assert_eq!((z.mtime(), z.mtime_nsec()), (1_600_000_000, 5));
}
