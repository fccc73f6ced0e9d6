//! Pulling from a store served by a real web server (nginx on loopback), pushing to a
//! store directory; a server that dies mid-pull and one that serves a corrupt chunk.

mod common;
#[path = "oci/util.rs"]
mod util;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{require_root, require_tool, scratch};
use warren::store::remote::{self, PullOptions, RemoteError};
use warren::store::{ExtractOptions, ImportOptions, Progress, Store};

/// The user the web server runs as: an unprivileged one, as a real server's
/// (`www-data`), so it reads only what is published.
const SERVER_UID: u32 = 65534;

/// nginx serving `root` on 127.0.0.1 at a free port as [`SERVER_UID`], stopped when
/// dropped.
struct Nginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
}

impl Nginx {
    fn start(root: &Path, prefix: &Path, limit_rate: Option<&str>) -> Nginx {
        let nginx = require_tool("nginx", "nginx-light");
        fs::create_dir_all(prefix).unwrap();
        let id = Some(SERVER_UID.into());
        nix::unistd::chown(prefix, id, Some(SERVER_UID.into())).unwrap();
        // The scratch dirs above `root` and `prefix` are private: let the server pass.
        for dir in [root, prefix] {
            for a in dir.ancestors().skip(1) {
                if !a.starts_with("/var/tmp/warren-tests/") {
                    break;
                }
                let mode = fs::metadata(a).unwrap().permissions().mode();
                fs::set_permissions(a, fs::Permissions::from_mode(mode | 0o011)).unwrap();
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rate = limit_rate
            .map(|r| format!("limit_rate {r};"))
            .unwrap_or_default();
        let conf = format!(
            "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {p}/access.log;
  client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;
  uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root}; {rate} }}
}}
",
            p = prefix.display(),
            root = root.display(),
        );
        fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("setpriv")
            .args([
                format!("--reuid={SERVER_UID}"),
                format!("--regid={SERVER_UID}"),
                "--clear-groups".to_string(),
            ])
            .arg(nginx)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .spawn()
            .expect("start nginx");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nginx {
                    child,
                    port,
                    prefix: prefix.to_path_buf(),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "nginx did not come up: {}",
            fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Paths the server was asked for, from its access log.
    fn requests(&self) -> Vec<String> {
        let log = fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split('"').nth(1)?.split(' ').nth(1).map(str::to_string))
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pseudo-random, incompressible bytes (so chunks are real-sized on the wire).
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

/// A source store with `base` (files of noise) and `variant` (base, one file changed,
/// two added); a private one, or one published to be served as it is.
fn source_store(work: &Path, files: usize) -> Store {
    source_store_as(work, files, false)
}

fn source_store_as(work: &Path, files: usize, published: bool) -> Store {
    let dir = work.join("source");
    let store = if published {
        Store::open_published(&dir).unwrap()
    } else {
        Store::open(&dir).unwrap()
    };
    let tree = work.join("tree");
    for i in 0..files {
        let p = tree.join(format!("d{}/f{i}", i % 4));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, noise(i as u64, 100_000 + i * 1000)).unwrap();
    }
    store
        .import_dir(&tree, "base", &ImportOptions::default())
        .unwrap();
    fs::write(tree.join("d0/f0"), noise(1000, 120_000)).unwrap();
    fs::write(tree.join("new1"), noise(1001, 300_000)).unwrap();
    fs::write(tree.join("new2"), b"small").unwrap();
    store
        .import_dir(&tree, "variant", &ImportOptions::default())
        .unwrap();
    store
}

fn chunk_set(store: &Store, name: &str) -> HashSet<String> {
    store
        .index(name)
        .unwrap()
        .chunks
        .iter()
        .map(|c| c.id.to_string())
        .collect()
}

fn assert_untouched(store: &Store) {
    assert!(store.list().unwrap().is_empty(), "an image was published");
    let warren::store::chunks::Scan { chunks, temps } = warren::store::chunks::scan(store).unwrap();
    assert!(
        chunks.is_empty() && temps.is_empty(),
        "left behind: {chunks:?} {temps:?}"
    );
    let packs: Vec<_> = fs::read_dir(store.dir().join("packs")).unwrap().collect();
    assert!(packs.is_empty(), "left behind: {packs:?}");
}

fn same_image(a: &Store, b: &Store, name: &str, work: &Path) {
    let (x, y) = (
        work.join(format!("{name}-a")),
        work.join(format!("{name}-b")),
    );
    a.extract(name, &x, &ExtractOptions::default()).unwrap();
    b.extract(name, &y, &ExtractOptions::default()).unwrap();
    util::assert_same_tree(&x, &y);
}

#[test]
fn pull_fetches_only_the_chunks_the_local_store_lacks() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-pull");
    let source = source_store(work.path(), 24);
    let served = work.path().join("served");
    let pushed = remote::push(&source, &served, &[]).unwrap();
    assert_eq!(pushed.images.len(), 2);
    assert!(pushed.copied_chunks > 10, "{pushed:?}");
    let again = remote::push(&source, &served, &[]).unwrap();
    assert_eq!(
        again.copied_chunks, 0,
        "a second push copies nothing: {again:?}"
    );

    let mut server = Nginx::start(&served, &work.path().join("nginx"), None);
    let local = Store::open(&work.path().join("local")).unwrap();
    let base = remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap();
    assert_eq!(base.fetched_chunks, base.chunks);
    same_image(&source, &local, "base", work.path());

    let before = server.requests().len();
    let variant = remote::pull(&server.url(), "variant", &local, &PullOptions::default()).unwrap();
    same_image(&source, &local, "variant", work.path());
    let new: HashSet<String> = &chunk_set(&source, "variant") - &chunk_set(&source, "base");
    assert_eq!(variant.fetched_chunks as usize, new.len(), "{variant:?}");
    assert!(variant.fetched_chunks < variant.chunks / 2, "{variant:?}");
    // The server saw exactly the index, the pack list (there is none: push writes loose
    // chunks) and those chunks.
    let asked: HashSet<String> = server.requests()[before..].iter().cloned().collect();
    let mut expected: HashSet<String> = new
        .iter()
        .map(|h| format!("/chunks/{}/{h}.zst", &h[..2]))
        .collect();
    expected.insert("/images/variant/latest.idx".into());
    expected.insert("/packs/list".into());
    assert_eq!(asked, expected);

    // Pulled again: nothing to fetch but the index. Under another local name too.
    let third = remote::pull(&server.url(), "variant", &local, &PullOptions::default()).unwrap();
    assert_eq!(third.fetched_chunks, 0);
    let opts = PullOptions {
        local_name: Some("copy:v2".into()),
        ..PullOptions::default()
    };
    remote::pull(&server.url(), "variant", &local, &opts).unwrap();
    assert_eq!(local.index("copy:v2").unwrap().name, "copy:v2");

    let err = remote::pull(&server.url(), "nope", &local, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err}");
    server.kill();
}

#[test]
fn pull_from_a_store_served_as_it_is_fetches_ranges_of_its_packs() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-packs");
    let source = source_store_as(work.path(), 24, true);
    let packs: Vec<PathBuf> = source
        .chunks()
        .unwrap()
        .packs()
        .iter()
        .map(|p| p.path.clone())
        .collect();
    assert_eq!(packs.len(), 2, "one pack per import");
    let mut server = Nginx::start(source.dir(), &work.path().join("nginx"), None);
    let local = Store::open(&work.path().join("local")).unwrap();
    let base = remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap();
    assert_eq!(base.fetched_chunks, base.chunks);
    same_image(&source, &local, "base", work.path());
    // Adjacent chunks come in one range: besides the index, the list and each pack's
    // trailer and table, a request per MiB of chunks.
    let ranges = server.requests().len() - 2 - 2 * packs.len();
    assert!(
        (1..=4).contains(&ranges) && base.chunks >= 24,
        "{ranges} ranges for {base:?}"
    );

    let before = server.requests().len();
    let variant = remote::pull(&server.url(), "variant", &local, &PullOptions::default()).unwrap();
    same_image(&source, &local, "variant", work.path());
    let new: HashSet<String> = &chunk_set(&source, "variant") - &chunk_set(&source, "base");
    assert_eq!(variant.fetched_chunks as usize, new.len(), "{variant:?}");
    // The index, the list, and ranges of packs: no loose chunk, no whole pack.
    let asked = &server.requests()[before..];
    let pack_urls: HashSet<String> = packs
        .iter()
        .map(|p| format!("/packs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert!(
        asked.iter().all(|r| r == "/images/variant/latest.idx"
            || r == "/packs/list"
            || pack_urls.contains(r)),
        "{asked:?}"
    );
    let variant_pack: u64 = packs
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .min()
        .unwrap();
    assert!(
        variant.fetched_bytes < variant_pack + 300_000,
        "{variant:?} vs a pack of {variant_pack}"
    );

    // A hostile list or table is refused by name, and nothing is published.
    let fresh = Store::open(&work.path().join("fresh")).unwrap();
    let list = source.dir().join("packs/list");
    let good = fs::read(&list).unwrap();
    fs::write(&list, "../../etc/passwd\n").unwrap();
    let err = remote::pull(&server.url(), "base", &fresh, &PullOptions::default()).unwrap_err();
    assert!(
        matches!(&err, RemoteError::BadPack { url, .. } if url.ends_with("/packs/list")),
        "{err}"
    );
    fs::write(&list, good).unwrap();
    let pack = &packs[0];
    let len = fs::metadata(pack).unwrap().len();
    let mut table_byte = fs::read(pack).unwrap()[len as usize - 40];
    table_byte ^= 1;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(pack).unwrap();
        f.write_all_at(&[table_byte], len - 40).unwrap();
    }
    let err = remote::pull(&server.url(), "base", &fresh, &PullOptions::default()).unwrap_err();
    assert!(err.to_string().contains("table checksum mismatch"), "{err}");
    assert_untouched(&fresh);
    server.kill();
}

#[test]
fn a_corrupt_chunk_is_named_and_nothing_is_published() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-corrupt");
    let source = source_store(work.path(), 12);
    let served = work.path().join("served");
    remote::push(&source, &served, &["base".to_string()]).unwrap();
    // Swap one chunk's bytes for a valid zstd frame of other bytes.
    let victim = source.index("base").unwrap().chunks[3].id;
    let served_store = Store::open(&served).unwrap();
    fs::write(
        served_store.chunk_path(&victim),
        zstd::encode_all(&b"evil bytes"[..], 3).unwrap(),
    )
    .unwrap();

    let server = Nginx::start(&served, &work.path().join("nginx"), None);
    let local = Store::open(&work.path().join("local")).unwrap();
    let err = remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap_err();
    assert!(
        matches!(err, RemoteError::BadChunk { chunk, .. } if chunk == victim),
        "{err:?}"
    );
    assert!(err.to_string().contains(&victim.to_string()), "{err}");
    assert_untouched(&local);
}

#[test]
fn a_server_dying_mid_pull_leaves_the_store_unchanged_and_a_retry_completes() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-dying");
    let source = source_store(work.path(), 48);
    let served = work.path().join("served");
    remote::push(&source, &served, &[]).unwrap();
    // Slow enough that the pull is still running when the server dies.
    let mut server = Nginx::start(&served, &work.path().join("nginx"), Some("40k"));
    let url = server.url();
    let local = Store::open(&work.path().join("local")).unwrap();
    let progress = Arc::new(Progress::default());
    let opts = PullOptions {
        progress: Some(progress.clone()),
        jobs: 4,
        attempts: 3,
        ..PullOptions::default()
    };
    let pulling = {
        let (url, local, opts) = (url.clone(), local.clone(), opts.clone());
        std::thread::spawn(move || remote::pull(&url, "base", &local, &opts))
    };
    while progress.new_chunks.load(Ordering::Relaxed) < 2 {
        assert!(
            !pulling.is_finished(),
            "the pull ended before the server died"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.kill();
    let err = pulling.join().unwrap().unwrap_err();
    assert!(matches!(err, RemoteError::Http { .. }), "{err:?}");
    assert_untouched(&local);

    // A server is back (full speed): the same pull completes.
    let server = Nginx::start(&served, &work.path().join("nginx2"), None);
    let report = remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap();
    assert_eq!(report.fetched_chunks, report.chunks);
    same_image(&source, &local, "base", work.path());
}

/// A tiny HTTP server over `root` that fails each path twice before serving it: first
/// with a 503, then by dropping the connection halfway through the body.
fn flaky_server(root: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let n = seen.entry(path.clone()).or_default();
            *n += 1;
            let body = fs::read(root.join(path.trim_start_matches('/')));
            let _ = match (*n, body) {
                (1, _) => stream.write_all(
                    b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
                (_, Err(_)) => stream.write_all(
                    b"HTTP/1.1 404 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
                (2, Ok(body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|()| stream.write_all(&body[..body.len() / 2]))
                }
                (_, Ok(body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|()| stream.write_all(&body))
                }
            };
        }
    });
    url
}

#[test]
fn transient_failures_are_retried() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-flaky");
    let source = source_store(work.path(), 6);
    let served = work.path().join("served");
    remote::push(&source, &served, &["base".to_string()]).unwrap();
    let url = flaky_server(served);
    let local = Store::open(&work.path().join("local")).unwrap();
    let report = remote::pull(&url, "base", &local, &PullOptions::default()).unwrap();
    // Every request (the index and each chunk) failed twice, then worked; the pack list
    // (push writes none) failed once, then was not found.
    assert_eq!(
        report.retries,
        2 * (report.fetched_chunks + 1) + 1,
        "{report:?}"
    );
    same_image(&source, &local, "base", work.path());

    // With fewer attempts than failures, the pull fails and publishes nothing.
    let fresh = Store::open(&work.path().join("fresh")).unwrap();
    let opts = PullOptions {
        attempts: 2,
        ..PullOptions::default()
    };
    let url2 = flaky_server(work.path().join("served"));
    let err = remote::pull(&url2, "base", &fresh, &opts).unwrap_err();
    assert!(
        matches!(err, RemoteError::Http { .. }) && err.to_string().contains("after 2 attempts"),
        "{err}"
    );
    assert_untouched(&fresh);
}

#[test]
fn a_private_store_is_not_served_and_a_pushed_copy_is() {
    if !require_root("makes stores of files owned by many ids and serves them as another user") {
        return;
    }
    let work = scratch("remote-private");
    let source = source_store(work.path(), 4);
    let server = Nginx::start(source.dir(), &work.path().join("nginx"), None);
    let local = Store::open(&work.path().join("local")).unwrap();
    let err = remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_untouched(&local);
    // Publishing is the explicit act: push writes a served copy.
    let served = work.path().join("served");
    remote::push(&source, &served, &[]).unwrap();
    let server = Nginx::start(&served, &work.path().join("nginx2"), None);
    remote::pull(&server.url(), "base", &local, &PullOptions::default()).unwrap();
    same_image(&source, &local, "base", work.path());
}
