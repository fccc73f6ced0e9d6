//! Hostile archives (tests/corpus/hostile/, made by its make.py) are refused with an error
//! that names the problem, and leave nothing behind in the store: no image, no chunk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, require_root, require_tool, scratch};
use warren::store::Store;
use warren::store::oci::{self, ImportOptions, OciError};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/hostile")
}

/// The single-layer cases and a word their error must contain.
const CASES: &[(&str, &str)] = &[
    ("dotdot.tar", "escapes the image"),
    ("dotdot-inner.tar", "escapes the image"),
    ("absolute.tar", "absolute path"),
    ("hardlink-dotdot.tar", "not a file in the image"),
    ("hardlink-absolute.tar", "not a file in the image"),
    ("hardlink-missing.tar", "not a file in the image"),
    ("symlink-parent.tar", "is a symlink"),
    ("symlink-parent-relative.tar", "is a symlink"),
    ("symlink-parent-hardlink.tar", "not a file in the image"),
    ("whiteout-dotdot.tar", "whiteout"),
    ("huge-file.tar", "exceeds the limit"),
    ("huge-longname.tar", "exceeds the limit"),
    ("dual-pax.tar", "exceeds the limit"),
    ("name-max.tar", "longer than 255 bytes (NAME_MAX)"),
];

fn assert_store_empty(store: &Store) {
    assert!(store.list().unwrap().is_empty(), "an image was published");
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunks, 0, "chunks were left behind: {stats:?}");
}

fn umoci_layout(work: &Path, layers: &[&str]) -> String {
    require_tool("umoci", "umoci");
    let layout = work.join(format!("layout-{}", layers[0]));
    let image = format!("{}:t", layout.display());
    ok(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    ok(Command::new("umoci").args(["new", "--image", &image]));
    for l in layers {
        ok(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .arg(corpus().join(l)));
    }
    format!("oci:{image}")
}

#[test]
fn hostile_tarballs_and_layers_are_refused() {
    if !require_root("extracts layers with other owners and device nodes") {
        return;
    }
    let work = scratch("oci-hostile");
    let store = Store::open(&work.path().join("store")).unwrap();
    for (file, why) in CASES {
        let path = corpus().join(file);
        assert!(
            path.is_file(),
            "{} missing: run make.py there",
            path.display()
        );
        for source in [
            path.display().to_string(),
            umoci_layout(work.path(), &[file]),
        ] {
            let err = oci::import(&store, &source, "hostile", &ImportOptions::default())
                .expect_err(&format!("{source} was accepted"));
            assert!(matches!(err, OciError::Layer { .. }), "{source}: {err:?}");
            assert!(
                err.to_string().contains(why),
                "{source}: {err} (expected {why:?})"
            );
            assert_store_empty(&store);
        }
    }
    // Across layers: layer 1 plants a symlink, layer 2 writes through it.
    let source = umoci_layout(
        work.path(),
        &["symlink-parent-layer.1.tar", "symlink-parent-layer.2.tar"],
    );
    let err = oci::import(&store, &source, "hostile", &ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("lib/escaped.so") && err.to_string().contains("is a symlink"),
        "{err}"
    );
    assert_store_empty(&store);
}

fn good_layout(work: &Path) -> (PathBuf, String) {
    // A benign one-layer image: the busybox-free minimal tree of a tar crate archive.
    let tar = work.join("good.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    b.append_data(&mut h, "hello", &b"world"[..]).unwrap();
    b.into_inner().unwrap();
    let layout = work.join("good");
    let image = format!("{}:t", layout.display());
    ok(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    ok(Command::new("umoci").args(["new", "--image", &image]));
    ok(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image])
        .arg(&tar));
    (layout, format!("oci:{image}"))
}

fn layer_blob(layout: &Path) -> PathBuf {
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(&d.as_str().unwrap()["sha256:".len()..])
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    blob(&manifest["layers"][0]["digest"])
}

#[test]
fn layers_that_do_not_match_their_digest_are_refused() {
    if !require_root("extracts layers with other owners and device nodes") {
        return;
    }
    require_tool("umoci", "umoci");
    let work = scratch("oci-digest");
    let store = Store::open(&work.path().join("store")).unwrap();
    let (layout, source) = good_layout(work.path());
    oci::import(&store, &source, "good", &ImportOptions::default()).unwrap();
    store.remove("good").unwrap();
    store.gc().unwrap();

    // Same size, one byte changed in the middle.
    let blob = layer_blob(&layout);
    let mut data = fs::read(&blob).unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x55;
    fs::write(&blob, &data).unwrap();
    let err = oci::import(&store, &source, "bad", &ImportOptions::default()).unwrap_err();
    let digest = blob.file_name().unwrap().to_string_lossy().into_owned();
    assert!(matches!(err, OciError::Verify(_)), "{err:?}");
    assert!(
        err.to_string().contains(&digest) && err.to_string().contains("descriptor"),
        "{err}"
    );
    assert_store_empty(&store);

    // A blob that is a symlink leading out of the layout.
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &blob).unwrap();
    let err = oci::import(&store, &source, "bad", &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, OciError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&digest) && err.to_string().contains("outside the layout"),
        "{err}"
    );
    assert_store_empty(&store);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Stores `value` as a blob of `layout`; returns its digest and size.
fn put_blob(layout: &Path, value: &serde_json::Value) -> (String, usize) {
    let data = serde_json::to_vec(value).unwrap();
    let digest = warren::store::oci::blob::Digest::sha256(&data);
    fs::write(layout.join(digest.blob_path()), &data).unwrap();
    (digest.to_string(), data.len())
}

/// Imports `source` off the test thread: a hang fails the test instead of stalling it.
fn import_err(store: &Store, source: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let (store, source) = (store.clone(), source.to_string());
    std::thread::spawn(move || {
        let r = oci::import(&store, &source, "bad", &ImportOptions::default());
        let _ = tx.send(r.map(|_| ()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the import hung");
    r.expect_err("a malformed layout was imported").to_string()
}

/// A FIFO in a layout is refused, not waited on; descriptors whose size disagrees with
/// their blob are refused naming both sizes; a malformed index.json names the field.
#[test]
fn malformed_layouts_are_refused_clearly() {
    if !require_root("extracts layers with other owners and device nodes") {
        return;
    }
    require_tool("umoci", "umoci");
    let work = scratch("oci-malformed");
    let store = Store::open(&work.path().join("store")).unwrap();
    let fresh = |name: &str| {
        let dir = work.path().join(name);
        fs::create_dir(&dir).unwrap();
        good_layout(&dir)
    };
    let mkfifo = |path: &Path| {
        fs::remove_file(path).unwrap();
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    };

    // A FIFO for a layer blob, and for index.json.
    let (layout, source) = fresh("fifo-layer");
    let blob = layer_blob(&layout);
    mkfifo(&blob);
    let err = import_err(&store, &source);
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    let (layout, source) = fresh("fifo-index");
    mkfifo(&layout.join("index.json"));
    let err = import_err(&store, &source);
    assert!(err.contains("index.json: is a FIFO"), "{err}");
    assert_store_empty(&store);

    // The manifest's descriptor (in index.json) one byte short.
    let (layout, source) = fresh("manifest-size");
    let mut index = read_json(&layout.join("index.json"));
    let size = index["manifests"][0]["size"].as_u64().unwrap();
    index["manifests"][0]["size"] = (size - 1).into();
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let err = import_err(&store, &source);
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert!(
        err.contains(digest)
            && err.contains(&format!("size of {} bytes, the blob has {size}", size - 1)),
        "{err}"
    );

    // The config's descriptor (in the manifest) 7 bytes long.
    let (layout, source) = fresh("config-size");
    let mut index = read_json(&layout.join("index.json"));
    let old = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest = read_json(&layout.join("blobs/sha256").join(&old["sha256:".len()..]));
    let size = manifest["config"]["size"].as_u64().unwrap();
    manifest["config"]["size"] = (size + 7).into();
    let (digest, len) = put_blob(&layout, &manifest);
    index["manifests"][0]["digest"] = digest.clone().into();
    index["manifests"][0]["size"] = len.into();
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let err = import_err(&store, &source);
    let config = manifest["config"]["digest"].as_str().unwrap();
    assert!(
        err.contains(config)
            && err.contains(&digest)
            && err.contains(&format!("size of {} bytes, the blob has {size}", size + 7)),
        "{err}"
    );

    // A size that is not a number.
    let (layout, source) = fresh("index-field");
    let mut index = read_json(&layout.join("index.json"));
    index["manifests"][0]["size"] = "big".into();
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let err = import_err(&store, &source);
    assert!(
        err.contains("field `manifests[0].size`") && err.contains("expected u64"),
        "{err}"
    );
    assert_store_empty(&store);
}

#[test]
fn device_nodes_are_kept_by_root_and_skipped_otherwise() {
    if !require_root("extracts layers with other owners and device nodes") {
        return;
    }
    let work = scratch("oci-devices");
    let tar = work.path().join("dev.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_size(0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, "etc/keep", &b"ok"[..]).unwrap();
    b.into_inner().unwrap();
    let store = Store::open(&work.path().join("store")).unwrap();
    let source = tar.display().to_string();

    oci::import(&store, &source, "rooted", &ImportOptions::default()).unwrap();
    let out = work.path().join("rooted");
    store.extract("rooted", &out, &Default::default()).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::symlink_metadata(out.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (1, 3));

    let opts = ImportOptions {
        allow_devices: Some(false),
        ..ImportOptions::default()
    };
    oci::import(&store, &source, "rootless", &opts).unwrap();
    let out = work.path().join("rootless");
    store
        .extract("rootless", &out, &Default::default())
        .unwrap();
    assert!(out.join("dev").is_dir() && !out.join("dev/null").exists());
    assert_eq!(fs::read(out.join("etc/keep")).unwrap(), b"ok");
}
