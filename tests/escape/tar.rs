//! Escape probes: see main.rs. Hostile image archives: the tar guard and the `tar` crate
//! must read an archive the same way, and no header makes an import buffer without bound.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::common::{
    as_rootless, bin, ensure_rootless_user, ok, require_root, require_tool, scratch,
};

/// A ustar header block.
fn header(kind: u8, path: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn pad(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Escape 7's archive: a pax member with `size=512` then `size=2^40` (the old guard took
/// the last record and skipped 1 TiB; the crate takes the first), a 512-byte file, then a
/// pax member claiming 3 GiB followed by `big` bytes of it, gzip-compressed (a few hundred
/// KB on disk). Written with python3's zlib, which is fast where a debug build is not.
fn dual_pax(dir: &Path, big: u64) -> PathBuf {
    require_tool("python3", "python3");
    let mut head = Vec::new();
    let records = b"12 size=512\n22 size=1099511627776\n";
    head.extend(header(b'x', "PaxHeaders/f", records.len() as u64));
    pad(&mut head, records);
    head.extend(header(b'0', "f", 0));
    pad(&mut head, &[b'f'; 512]);
    head.extend(header(b'x', "PaxHeaders/huge", 3 << 30));
    let head_file = dir.join("head.bin");
    std::fs::write(&head_file, &head).unwrap();
    let out = dir.join("dual-pax.tar.gz");
    ok(Command::new("python3").args([
        "-c",
        "import gzip, sys\n\
         with gzip.open(sys.argv[2], 'wb', 6) as g:\n\
         \x20   g.write(open(sys.argv[1], 'rb').read())\n\
         \x20   chunk = b'x' * (1 << 20)\n\
         \x20   for _ in range(int(sys.argv[3]) >> 20): g.write(chunk)\n",
        head_file.to_str().unwrap(),
        out.to_str().unwrap(),
        &big.to_string(),
    ]));
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out
}

/// Waits for `child`, and returns its status, its stderr and its peak RSS in KiB (wait4's
/// ru_maxrss: that process alone, whatever else the test binary runs).
fn wait_with_rss(mut child: std::process::Child) -> (ExitStatus, String, i64) {
    use std::io::Read;
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let stderr = reader.join().unwrap();
    (ExitStatus::from_raw(status), stderr, usage.ru_maxrss)
}

/// Imports `archive` with `warren` (`cmd`, `list`: commands running it) and checks the
/// import is refused clearly within bounded memory, and no image is listed after.
fn refused_within_bounds(mut cmd: Command, store: &Path, archive: &Path, mut list: Command) {
    let child = cmd
        .arg("--store")
        .arg(store)
        .args(["image", "import"])
        .arg(archive)
        .args(["--name", "dualpax"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr, rss_kib) = wait_with_rss(child);
    assert!(!status.success(), "the dual-pax archive was imported");
    assert!(
        rss_kib < 128 << 10,
        "the import peaked at {} MiB of RSS: a header made it buffer a member",
        rss_kib >> 10
    );
    assert!(
        stderr.contains("exceeds the limit"),
        "unclear refusal: {stderr}"
    );
    let listed = ok(list.arg("--store").arg(store).args(["image", "list"]));
    assert!(!listed.contains("dualpax"), "the image is listed: {listed}");
}

/// Escape 7, as root and as an unprivileged user: the archive that drove an import to
/// 2.6 GB of RSS is refused, naming the limit, in well under 128 MiB, and no image is
/// listed. The huge member carries 256 MiB here: buffering it would show in the RSS.
#[test]
fn dual_pax_size_archive_is_refused_within_bounded_memory() {
    require_root();
    let work = scratch("escape-tar");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = dual_pax(work.path(), 256 << 20);
    refused_within_bounds(
        Command::new(bin("warren")),
        &work.path().join("store"),
        &archive,
        Command::new(bin("warren")),
    );
    // Rootless: the user's own store.
    let (uid, gid) = ensure_rootless_user();
    let store = work.path().join("user-store");
    std::fs::create_dir(&store).unwrap();
    nix::unistd::chown(&store, Some(uid.into()), Some(gid.into())).unwrap();
    refused_within_bounds(
        as_rootless(&bin("warren")),
        &store,
        &archive,
        as_rootless(&bin("warren")),
    );
}
