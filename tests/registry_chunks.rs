//! A registry as warren's chunk store: `warren store push REF` publishes packs and image
//! indexes as an OCI artifact to a real registry (Debian's docker-registry over TLS with
//! htpasswd, see `registry/harness.rs`), and `warren image pull REF` of it fetches the
//! pack tables and then only the chunks the store lacks, with range requests on the pack
//! blobs. Bytes moved are counted from the registry's own access log.

mod common;
#[allow(dead_code)]
#[path = "registry/harness.rs"]
mod harness;
#[path = "oci/util.rs"]
mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, require_root, require_tool, scratch};
use harness::*;

fn creds() -> String {
    format!("{USER}:{PASS}")
}

/// `warren --json ...` with the registry's CA trusted, parsed.
fn json(work: &Path, reg: &Registry, args: &[&str]) -> serde_json::Value {
    let out = ok(warren(work, reg).arg("--json").args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Bytes not to be found anywhere else: each byte from a hash of `seed` and its offset.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of text: words picked by [`noise`], compressible but not trivially so.
fn words(len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "import", "def", "return", "self", "value", "None", "for", "in", "if", "else", "class",
        "yield", "lambda", "with", "as", "raise",
    ];
    let mut out = Vec::with_capacity(len + 16);
    for (i, b) in noise(4, len).into_iter().enumerate() {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[usize::from(b & 15)].as_bytes());
        out.push(if i % 9 == 8 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A tree with many owners, modes, xattrs, a capability, links and a fifo (the layered
/// OCI test image, unpacked), plus 16 MiB of noise so it has many chunks.
fn base_tree(work: &Path) -> PathBuf {
    let layout = util::build_layout(work);
    let tree = util::umoci_unpack(&format!("{}:t", layout.display()), work, "base-bundle");
    fs::write(tree.join("data/noise.bin"), noise(1, NOISE)).unwrap();
    tree
}

/// The bytes of the registry's responses to GETs of REPO's blobs logged after `from`
/// (the access log: `"GET /v2/REPO/blobs/... HTTP/1.1" STATUS BYTES`).
const NOISE: usize = 16 << 20;

fn blob_bytes(reg: &Registry, repo: &str, from: usize) -> (u64, usize) {
    let log = fs::read_to_string(reg.storage.parent().unwrap().join("registry.log")).unwrap();
    let needle = format!("\"GET /v2/{repo}/blobs/");
    let mut bytes = 0;
    let mut requests = 0;
    for line in log[from..].lines().filter(|l| l.contains(&needle)) {
        let after = line.split("HTTP/1.1\" ").nth(1).unwrap_or_default();
        let mut f = after.split_whitespace();
        let (status, size) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        assert!(status == "200" || status == "206", "{line}");
        bytes += size.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        requests += 1;
    }
    (bytes, requests)
}

fn log_len(reg: &Registry) -> usize {
    fs::metadata(reg.storage.parent().unwrap().join("registry.log"))
        .unwrap()
        .len() as usize
}

#[test]
fn store_artifact_round_trip_and_a_variant_moves_only_its_new_chunks() {
    if !require_root("imports trees whose files belong to many owners") {
        return;
    }
    let work = scratch("registry-chunks");
    let w = work.path();
    let reg = Registry::start(w, Auth::Htpasswd);
    let h = reg.host.clone();
    let (pusher, puller) = (w.join("pusher"), w.join("puller"));
    let base = base_tree(w);
    // The variant: the base plus 1 MiB of new noise, a small file changed, and 64 bytes
    // changed in the middle of the big one (which a layer would carry whole).
    let variant = w.join("variant-tree");
    ok(Command::new("cp").arg("-a").arg(&base).arg(&variant));
    let added = noise(2, 1 << 20);
    fs::write(variant.join("data/added.bin"), &added).unwrap();
    fs::write(variant.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let big = variant.join("data/noise.bin");
    let mut data = fs::read(&big).unwrap();
    data[NOISE / 2..NOISE / 2 + 64].fill(0);
    fs::write(&big, data).unwrap();
    for (tree, name) in [(&base, "base:1"), (&variant, "variant:1")] {
        ok(warren(&pusher, &reg)
            .args(["image", "import", "--name", name])
            .arg(tree));
    }

    // The push: an OCI manifest with warren's artifactType, config and blob types.
    let c = creds();
    let r = json(
        &pusher,
        &reg,
        &[
            "store",
            "push",
            "--creds",
            &c,
            &format!("{h}/chunks:base"),
            "base:1",
        ],
    );
    assert!(r["uploaded_blobs"].as_u64().unwrap() >= 3, "{r}");
    let again = json(
        &pusher,
        &reg,
        &[
            "store",
            "push",
            "--creds",
            &c,
            &format!("{h}/chunks:base"),
            "base:1",
        ],
    );
    assert_eq!(
        again["uploaded_blobs"], 0,
        "the registry had them all: {again}"
    );
    assert_eq!(again["digest"], r["digest"], "the same artifact: {again}");
    // Every blob (packs rebuilt from recompressed chunks, indexes, config) is the same
    // byte for byte: all found by HEAD.
    assert_eq!(
        again["skipped_blobs"].as_u64().unwrap(),
        r["uploaded_blobs"].as_u64().unwrap() + r["skipped_blobs"].as_u64().unwrap(),
        "a re-push is all HEAD-skipped: {again}"
    );
    json(
        &pusher,
        &reg,
        &[
            "store",
            "push",
            "--creds",
            &c,
            &format!("{h}/chunks:variant"),
            "variant:1",
        ],
    );
    require_tool("skopeo", "skopeo");
    let raw = ok(Command::new("skopeo")
        .args(["inspect", "--raw", "--creds", &c, "--cert-dir"])
        .arg(reg.certs_d.join(&h))
        .arg(format!("docker://{h}/chunks:base")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["artifactType"], "application/vnd.warren.store.v1",
        "{raw}"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.warren.store.config.v1+json"
    );
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"application/vnd.warren.store.pack.v2"),
        "{raw}"
    );
    let index = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.warren.store.index.v2")
        .unwrap_or_else(|| panic!("no index blob: {raw}"));
    assert_eq!(
        index["annotations"]["org.opencontainers.image.title"],
        "base:1"
    );

    // Into an empty store: the same tree, entry by entry.
    let from = log_len(&reg);
    let p = json(
        &puller,
        &reg,
        &["image", "pull", "--creds", &c, &format!("{h}/chunks:base")],
    );
    assert_eq!(p["name"], "base:1", "{p}");
    assert_eq!(p["artifact"]["images"][0], "base:1", "{p}");
    let (base_bytes, _) = blob_bytes(&reg, "chunks", from);
    assert!(
        base_bytes > NOISE as u64,
        "the base moved whole: {base_bytes}"
    );
    let out = extract(&puller, &reg, "base:1", "base-out");
    util::assert_same_tree(&base, &out);
    // The chunks are stored as received (recompressed by the pusher): the store verifies.
    ok(warren(&puller, &reg).args(["store", "verify"]));

    // The variant, with the base here: about its new chunks move, not the image.
    let from = log_len(&reg);
    let p = json(
        &puller,
        &reg,
        &[
            "image",
            "pull",
            "--creds",
            &c,
            &format!("{h}/chunks:variant"),
        ],
    );
    assert_eq!(p["name"], "variant:1", "{p}");
    let (moved, requests) = blob_bytes(&reg, "chunks", from);
    let new = added.len() as u64;
    // What a layer of the variant's changes holds: the new file and the changed one, whole.
    let layer = new + NOISE as u64;
    eprintln!("variant: {moved} bytes in {requests} blob requests; its layer: {layer} bytes");
    // The new file, plus the chunks around the change (at most two of at most 2 MiB).
    assert!(
        moved <= new + (4 << 20) + (256 << 10),
        "{moved} bytes moved for {new} new bytes ({p})"
    );
    assert!(
        moved < layer / 3,
        "{moved} bytes: not far fewer than {layer}"
    );
    assert!(
        moved >= new,
        "the new chunks came from the registry: {moved}"
    );
    assert_eq!(
        p["fetched_bytes"], moved,
        "warren counts what the registry sent"
    );
    let out = extract(&puller, &reg, "variant:1", "variant-out");
    util::assert_same_tree(&variant, &out);
    ok(warren(&puller, &reg).args(["store", "verify"]));

    // The other way: a host with the variant pulls the base, whose big file's chunks it
    // has but the one or two around the change. Those are segments of their own (a big
    // file's chunks are), so a 4 MiB segment of the file does not move for them.
    let other = w.join("other");
    let pull = |tag: &str| {
        json(
            &other,
            &reg,
            &["image", "pull", "--creds", &c, &format!("{h}/chunks:{tag}")],
        )
    };
    pull("variant");
    let from = log_len(&reg);
    pull("base");
    let (moved, requests) = blob_bytes(&reg, "chunks", from);
    eprintln!("base after the variant: {moved} bytes in {requests} blob requests");
    assert!(
        moved <= (4 << 20) + (256 << 10),
        "{moved} bytes moved for the chunks around a 64-byte change and a small file"
    );
    let out = extract(&other, &reg, "base:1", "base-out-2");
    util::assert_same_tree(&base, &out);
}

fn packs_in(work: &Path) -> usize {
    fs::read_dir(work.join("state/store/packs"))
        .map(|d| {
            d.filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().ends_with(".pack")
            })
            .count()
        })
        .unwrap_or(0)
}

/// A registry on loopback, and a pusher's store holding `img:1`: `noise_len` bytes of
/// noise (`seed`) and 1 MiB of words; returns the registry and the pusher's and a
/// puller's state dirs.
fn registry_with_image(w: &Path, seed: u64, noise_len: usize) -> (Registry, PathBuf, PathBuf) {
    let reg = Registry::start(w, Auth::Htpasswd);
    let (pusher, puller) = (w.join("pusher"), w.join("puller"));
    let tree = w.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("noise"), noise(seed, noise_len)).unwrap();
    fs::write(tree.join("words.txt"), words(1 << 20)).unwrap();
    ok(warren(&pusher, &reg)
        .args(["image", "import", "--name", "img:1"])
        .arg(&tree));
    (reg, pusher, puller)
}

#[test]
fn a_corrupt_pack_or_index_blob_is_refused_with_nothing_listed() {
    let work = scratch("registry-chunks-bad");
    let w = work.path();
    let (reg, pusher, puller) = registry_with_image(w, 3, 2 << 20);
    let h = reg.host.clone();
    let c = creds();
    let blobs = |tag: &str| -> Vec<serde_json::Value> {
        ok(warren(&pusher, &reg).args([
            "store",
            "push",
            "--creds",
            &c,
            &format!("{h}/bad:{tag}"),
            "img:1",
        ]));
        let raw = ok(Command::new(require_tool("skopeo", "skopeo"))
            .args(["inspect", "--raw", "--creds", &c, "--cert-dir"])
            .arg(reg.certs_d.join(&h))
            .arg(format!("docker://{h}/bad:{tag}")));
        let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
        m["layers"].as_array().unwrap().clone()
    };
    let layers = blobs("t");
    let pack = layers
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.warren.store.pack.v2")
        .unwrap();
    // The same chunks as the store's pack, recompressed at a higher level: smaller.
    let stored: u64 = fs::read_dir(pusher.join("state/store/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let sent = pack["size"].as_u64().unwrap();
    assert!(
        sent < stored,
        "the pushed pack ({sent} bytes) is smaller than the store's ({stored} bytes)"
    );
    // One byte in the middle of the chunks flipped, in the registry's storage.
    let path = reg.blob_data(pack["digest"].as_str().unwrap());
    let mut data = fs::read(&path).unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x55;
    fs::write(&path, &data).unwrap();
    let pull = |what: &str| {
        fails(warren(&puller, &reg).args(["image", "pull", "--creds", &c, &format!("{h}/bad:t")]))
            .contains(what)
    };
    let err =
        fails(warren(&puller, &reg).args(["image", "pull", "--creds", &c, &format!("{h}/bad:t")]));
    assert!(err.contains("corrupt"), "{err}");
    assert!(!listed(&puller, &reg).contains("img"), "nothing listed");
    assert_eq!(packs_in(&puller), 0, "no pack published");
    // Put the pack back, break the index: refused by its digest.
    data[at] ^= 0x55;
    fs::write(&path, &data).unwrap();
    let index = layers
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.warren.store.index.v2")
        .unwrap();
    let ipath = reg.blob_data(index["digest"].as_str().unwrap());
    let mut idata = fs::read(&ipath).unwrap();
    let last = idata.len() - 1;
    idata[last] ^= 1;
    fs::write(&ipath, &idata).unwrap();
    assert!(pull("digest"), "an index with the wrong digest is refused");
    assert!(!listed(&puller, &reg).contains("img"), "nothing listed");
    assert_eq!(packs_in(&puller), 0, "no pack published");
    // Repaired: the pull goes through, under the name asked for.
    idata[last] ^= 1;
    fs::write(&ipath, &idata).unwrap();
    let r = json(
        &puller,
        &reg,
        &[
            "image",
            "pull",
            "--creds",
            &c,
            &format!("{h}/bad:t"),
            "renamed:2",
        ],
    );
    assert_eq!(r["name"], "renamed:2", "{r}");
    let out = extract(&puller, &reg, "renamed:2", "out");
    assert_eq!(fs::read(out.join("noise")).unwrap(), noise(3, 2 << 20));
    assert_eq!(fs::read(out.join("words.txt")).unwrap(), words(1 << 20));
    ok(warren(&puller, &reg).args(["store", "verify"]));
}

/// Puts `blobs` and the manifest `manifest` (tagged `tag`) in repository `repo` straight
/// into the registry's storage, as distribution lays them out: an artifact made by hand
/// (an older warren's, or a newer one's).
fn plant(reg: &Registry, repo: &str, tag: &str, manifest: &[u8], blobs: &[&[u8]]) {
    let v2 = reg.storage.join("docker/registry/v2");
    let link = |rel: PathBuf, digest: &str| {
        let path = v2.join("repositories").join(repo).join(rel);
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("link"), digest).unwrap();
    };
    let put = |data: &[u8]| {
        let digest = sha256(data);
        let path = reg.blob_data(&digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        digest
    };
    for b in blobs {
        let d = put(b);
        link(Path::new("_layers/sha256").join(&d[7..]), &d);
    }
    let d = put(manifest);
    link(Path::new("_manifests/revisions/sha256").join(&d[7..]), &d);
    link(Path::new("_manifests/tags").join(tag).join("current"), &d);
    link(
        Path::new("_manifests/tags")
            .join(tag)
            .join("index/sha256")
            .join(&d[7..]),
        &d,
    );
}

#[test]
fn an_older_artifact_still_pulls_and_an_unknown_pack_is_refused_by_name() {
    let work = scratch("registry-chunks-old");
    let w = work.path();
    let (reg, pusher, puller) = registry_with_image(w, 5, 1 << 20);
    let h = reg.host.clone();
    let c = creds();
    ok(warren(&pusher, &reg).args([
        "store",
        "push",
        "--creds",
        &c,
        &format!("{h}/old:new"),
        "img:1",
    ]));
    let raw = ok(Command::new(require_tool("skopeo", "skopeo"))
        .args(["inspect", "--raw", "--creds", &c, "--cert-dir"])
        .arg(reg.certs_d.join(&h))
        .arg(format!("docker://{h}/old:new")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let at = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["mediaType"] == "application/vnd.warren.store.pack.v2")
        .unwrap_or_else(|| panic!("no segmented pack: {raw}"));
    // What an older warren pushed: the store's own pack (one import: the image's chunks),
    // as a version-1 pack blob, beside the same index and config.
    let packs: Vec<PathBuf> = fs::read_dir(pusher.join("state/store/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let old_pack = fs::read(&packs[0]).unwrap();
    let with_pack = |media_type: &str, data: &[u8]| {
        let mut old = m.clone();
        old["layers"][at] = serde_json::json!({
            "mediaType": media_type,
            "digest": sha256(data),
            "size": data.len(),
        });
        old
    };
    // And the store's own index file, whole, as a version-1 index blob.
    let idx = |dir: PathBuf| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "idx"))
            .collect()
    };
    let images = pusher.join("state/store/images");
    let mut found = idx(images.clone());
    for e in fs::read_dir(&images).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(idx(p));
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let old_index = fs::read(&found[0]).unwrap();
    let mut v1 = with_pack("application/vnd.warren.store.pack.v1", &old_pack);
    let i = v1["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["mediaType"] == "application/vnd.warren.store.index.v2")
        .unwrap_or_else(|| panic!("no index: {raw}"));
    v1["layers"][i]["mediaType"] = "application/vnd.warren.store.index.v1".into();
    v1["layers"][i]["digest"] = sha256(&old_index).into();
    v1["layers"][i]["size"] = old_index.len().into();
    let v1 = serde_json::to_vec(&v1).unwrap();
    plant(&reg, "old", "v1", &v1, &[&old_pack, &old_index]);
    let r = json(
        &puller,
        &reg,
        &["image", "pull", "--creds", &c, &format!("{h}/old:v1")],
    );
    assert_eq!(r["name"], "img:1", "{r}");
    let out = extract(&puller, &reg, "img:1", "out-v1");
    assert_eq!(fs::read(out.join("noise")).unwrap(), noise(5, 1 << 20));
    assert_eq!(fs::read(out.join("words.txt")).unwrap(), words(1 << 20));
    ok(warren(&puller, &reg).args(["store", "verify"]));

    // A newer warren's pack: refused, naming what it is, nothing listed.
    let fresh = w.join("fresh");
    let v3 = serde_json::to_vec(&with_pack(
        "application/vnd.warren.store.pack.v3",
        &old_pack,
    ))
    .unwrap();
    plant(&reg, "old", "v3", &v3, &[&old_pack]);
    let err =
        fails(warren(&fresh, &reg).args(["image", "pull", "--creds", &c, &format!("{h}/old:v3")]));
    assert!(
        err.contains("application/vnd.warren.store.pack.v3"),
        "names the media type: {err}"
    );
    // A segmented pack of a version this warren does not know (in its trailer).
    let new_pack = fs::read(reg.blob_data(m["layers"][at]["digest"].as_str().unwrap())).unwrap();
    let mut future = new_pack.clone();
    let n = future.len();
    future[n - 40 + 16] = 9;
    let v2 =
        serde_json::to_vec(&with_pack("application/vnd.warren.store.pack.v2", &future)).unwrap();
    plant(&reg, "old", "future", &v2, &[&future]);
    let err = fails(warren(&fresh, &reg).args([
        "image",
        "pull",
        "--creds",
        &c,
        &format!("{h}/old:future"),
    ]));
    assert!(err.contains("version 9, this warren reads 1"), "{err}");
    assert!(!listed(&fresh, &reg).contains("img"), "nothing listed");
    assert_eq!(packs_in(&fresh), 0, "no pack published");
}
