//! Escape probes: see main.rs. Hostile image archives: the tar guard and the `tar` crate
//! must read an archive the same way, and no header makes an import buffer without bound.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

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

/// Runs `cmd` (its program, arguments and the variables it sets, nothing else of our
/// environment) under a small python3 parent that reports its peak RSS in KiB. Not wait4
/// on our own child: an exec records the old address space's peak in the new process's
/// `ru_maxrss`, and this test binary's (or setpriv's copy of it) may be far larger than
/// what the import itself uses. python3's fresh process is small.
fn run_with_rss(cmd: &Command) -> (ExitStatus, String, i64) {
    const SCRIPT: &str = "import resource, subprocess, sys\n\
        p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n\
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.exit(p.returncode if p.returncode >= 0 else 128 - p.returncode)\n";
    let mut wrapper = Command::new(require_tool("python3", "python3"));
    wrapper
        .env_clear()
        .args(["-c", SCRIPT])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapper.env(k, v);
        }
    }
    let out = crate::common::run(&mut wrapper);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rss = stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no peak RSS from the wrapper: {stdout:?}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        rss,
    )
}

/// Imports `archive` with `warren` (`cmd`, `list`: commands running it) and checks the
/// import is refused clearly within bounded memory, and no image is listed after.
fn refused_within_bounds(mut cmd: Command, store: &Path, archive: &Path, mut list: Command) {
    cmd.arg("--store")
        .arg(store)
        .args(["image", "import"])
        .arg(archive)
        .args(["--name", "dualpax"]);
    let (status, stderr, rss_kib) = run_with_rss(&cmd);
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
    if !require_root("imports into a rootful store and a rootless user's store") {
        return;
    }
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
