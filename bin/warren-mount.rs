//! `warren-mount`: the small setuid-root helper that lets a rootless user's containers
//! share one extracted image (installed mode 4755, like `newuidmap`).
//!
//! ```text
//! warren-mount mount SOURCE FROM TO TARGET   FROM, TO: UID or UID:GID block starts
//! warren-mount umount TARGET
//! ```
//!
//! `mount` attaches at TARGET, in the caller's (host) mount namespace, a read-only,
//! nodev bind of SOURCE whose ids in block FROM are seen as block TO. Every check is in
//! docs/SECURITY.md with the test that shows it. Identity is the real uid only: no
//! environment variable and no argument names the caller.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, StatxFlags};
use rustix::process::Uid;
use warren::idmap::range::IdRange;
use warren::idmap::subid::Subids;
use warren::idmap::userns::{Mapping, Maps};
use warren::sys;

/// The id block every source and destination is: aligned to and as long as this.
const BLOCK: u32 = 0x10000;
/// The most mounts one user may hold at once.
const MAX_MOUNTS: usize = 1024;
/// Records (`UID/MNTID`, root-only) and the log.
const STATE: &str = "/run/warren-mount";
/// The source is `IMAGES/KEY/rootfs`: the caller's warren image directory.
const IMAGES: &str = "images";
const ROOTFS: &str = "rootfs";

const USAGE: &str = "usage: warren-mount mount SOURCE FROM TO TARGET | warren-mount umount TARGET \
                     (FROM, TO: block starts UID or UID:GID; paths absolute)";

/// One id block of uids and one of gids, by their first id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    uid: u32,
    gid: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Mount {
        source: PathBuf,
        from: Block,
        to: Block,
        target: PathBuf,
    },
    Umount {
        target: PathBuf,
    },
}

/// The arguments after the program name; pure.
fn parse(args: &[OsString]) -> Result<Cmd, String> {
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    match args[..] {
        [cmd, source, from, to, target] if cmd == "mount" => Ok(Cmd::Mount {
            source: path_arg(source)?,
            from: block_arg(from)?,
            to: block_arg(to)?,
            target: path_arg(target)?,
        }),
        [cmd, target] if cmd == "umount" => Ok(Cmd::Umount {
            target: path_arg(target)?,
        }),
        _ => Err(USAGE.to_string()),
    }
}

/// An absolute path without `.`/`..` components, empty components or NUL bytes.
fn path_arg(arg: &OsStr) -> Result<PathBuf, String> {
    let bytes = arg.as_bytes();
    let bad = |why: &str| Err(format!("path {arg:?}: {why}"));
    if bytes.first() != Some(&b'/') {
        return bad("not absolute");
    }
    if bytes.len() > 4000 || bytes.contains(&0) {
        return bad("too long or holds a NUL byte");
    }
    let rest = bytes[1..].strip_suffix(b"/").unwrap_or(&bytes[1..]);
    if rest.is_empty() {
        return bad("is /");
    }
    if rest
        .split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return bad("has an empty, `.` or `..` component");
    }
    Ok(PathBuf::from(arg))
}

/// `UID` or `UID:GID`, decimal, block-aligned, not 0 (the host's own ids).
fn block_arg(arg: &OsStr) -> Result<Block, String> {
    let s = arg
        .to_str()
        .ok_or_else(|| format!("block {arg:?}: not text"))?;
    let num = |t: &str| -> Result<u32, String> {
        if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("block {s:?}: {t:?} is not a decimal id"));
        }
        let n: u32 = t
            .parse()
            .map_err(|_| format!("block {s:?}: {t} too large"))?;
        if n == 0 || n % BLOCK != 0 || u64::from(n) + u64::from(BLOCK) >= 1 << 32 {
            return Err(format!(
                "block {s:?}: {t} is not a start of a {BLOCK}-id block"
            ));
        }
        Ok(n)
    };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok(Block {
        uid: num(u)?,
        gid: num(g)?,
    })
}

/// Who runs us: by real uid, from the password database (never the environment).
struct Caller {
    uid: u32,
    name: Option<String>,
}

/// The blocks are distinct, wholly inside the caller's subuid and subgid lines and
/// inside no other owner's lines. Pure: the files come in as arguments.
fn check_blocks(
    c: &Caller,
    subuid: &Subids,
    subgid: &Subids,
    from: Block,
    to: Block,
) -> Result<(), String> {
    let range = |start| IdRange::new(start, BLOCK).map_err(|e| e.to_string());
    let (fu, tu, fg, tg) = (
        range(from.uid)?,
        range(to.uid)?,
        range(from.gid)?,
        range(to.gid)?,
    );
    if fu.overlaps(&tu) || fg.overlaps(&tg) {
        return Err("the source and destination blocks overlap".into());
    }
    let name = c.name.as_deref();
    for (file, r) in [(subuid, fu), (subuid, tu), (subgid, fg), (subgid, tg)] {
        if !file.covers(name, c.uid, r) {
            return Err(format!(
                "ids {}..{} are not all yours in {} ({})",
                r.start,
                r.end(),
                file.path.display(),
                file.describe_lines(name, c.uid)
            ));
        }
        if let Some(e) = file
            .entries
            .iter()
            .find(|e| !e.is_of(name, c.uid) && e.range.overlaps(&r))
        {
            return Err(format!(
                "ids {}..{} are also another owner's: {} {e}",
                r.start,
                r.end(),
                file.path.display()
            ));
        }
    }
    Ok(())
}

/// Runs `f` with the caller's uid as the effective (and filesystem) uid, so every open
/// in it is the caller's; root again afterwards.
fn as_caller<T>(c: &Caller, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let (real, root) = (Uid::from_raw(c.uid), Uid::ROOT);
    rustix::thread::set_thread_res_uid(real, real, root).map_err(|e| format!("seteuid: {e}"))?;
    let out = f();
    rustix::thread::set_thread_res_uid(real, root, root).map_err(|e| format!("seteuid 0: {e}"))?;
    out
}

/// `path` (or `name` in `dir`) opened without following any symlink or magic link.
fn open_at(dir: Option<BorrowedFd<'_>>, path: &Path, flags: i32) -> Result<OwnedFd, String> {
    let resolve = sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS;
    let (dir, resolve) = match dir {
        Some(d) => (d, resolve | sys::RESOLVE_BENEATH),
        None => (rustix::fs::CWD, resolve),
    };
    sys::openat2(dir, path, flags | libc::O_NOFOLLOW, 0, resolve)
        .map_err(|e| format!("open {} (as you, no symlinks): {e}", path.display()))
}

fn stat(fd: BorrowedFd<'_>, what: &Path) -> Result<fs::Metadata, String> {
    let file = fs::File::from(fd.try_clone_to_owned().map_err(|e| format!("dup: {e}"))?);
    file.metadata()
        .map_err(|e| format!("stat {}: {e}", what.display()))
}

/// A directory of the caller's own that nobody else may write.
fn check_own_dir(fd: BorrowedFd<'_>, c: &Caller, path: &Path) -> Result<(), String> {
    let m = stat(fd, path)?;
    if !m.is_dir() || m.uid() != c.uid || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of yours that only you may write",
            path.display()
        ));
    }
    Ok(())
}

/// The source, opened as the caller: `.../images/KEY/rootfs`, `images` and `KEY` the
/// caller's own, `rootfs` a directory owned by the source block's root.
fn open_source(c: &Caller, source: &Path, from: Block) -> Result<OwnedFd, String> {
    let key = source
        .parent()
        .filter(|_| source.file_name() == Some(OsStr::new(ROOTFS)));
    let images = key
        .and_then(Path::parent)
        .filter(|i| i.file_name() == Some(OsStr::new(IMAGES)));
    let (Some(key), Some(images)) = (key, images) else {
        return Err(format!(
            "source {}: not IMAGES/KEY/{ROOTFS} of a warren image directory",
            source.display()
        ));
    };
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let images_fd = open_at(None, images, dir_flags)?;
    check_own_dir(images_fd.as_fd(), c, images)?;
    let key_fd = open_at(
        Some(images_fd.as_fd()),
        Path::new(key.file_name().unwrap_or_default()),
        dir_flags,
    )?;
    check_own_dir(key_fd.as_fd(), c, key)?;
    let src = open_at(Some(key_fd.as_fd()), Path::new(ROOTFS), dir_flags)?;
    let m = stat(src.as_fd(), source)?;
    if !m.is_dir() || m.uid() != from.uid || m.gid() != from.gid {
        return Err(format!(
            "source {}: owned by {}:{}, not by the source block's root {}:{}",
            source.display(),
            m.uid(),
            m.gid(),
            from.uid,
            from.gid
        ));
    }
    Ok(src)
}

/// The target, opened as the caller: a directory the caller owns, in one it owns.
fn open_target(c: &Caller, target: &Path) -> Result<OwnedFd, String> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let parent_fd = open_at(None, parent, libc::O_PATH | libc::O_DIRECTORY)?;
    check_own_dir(parent_fd.as_fd(), c, parent)?;
    let name = Path::new(target.file_name().unwrap_or_default());
    let fd = open_at(
        Some(parent_fd.as_fd()),
        name,
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    check_own_dir(fd.as_fd(), c, target)?;
    Ok(fd)
}

/// The id of the mount `fd` is on, as `/proc/self/mountinfo` numbers it.
fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, String> {
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let stx =
        rustix::fs::statx(fd, c"", flags, StatxFlags::MNT_ID).map_err(|e| format!("statx: {e}"))?;
    Ok(stx.stx_mnt_id)
}

/// The ids of every mount in our (the caller's) mount namespace.
fn live_mounts() -> Result<Vec<u64>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect())
}

/// `/run/warren-mount/UID`, root's only, locked for the rest of the run.
fn records(c: &Caller) -> Result<(PathBuf, fs::File), String> {
    let dir = Path::new(STATE).join(c.uid.to_string());
    for d in [Path::new(STATE), &dir] {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", d.display())),
        }
        let m = fs::symlink_metadata(d).map_err(|e| format!("stat {}: {e}", d.display()))?;
        if !m.is_dir() || m.uid() != 0 || m.mode() & 0o077 != 0 {
            return Err(format!("{} is not root's private directory", d.display()));
        }
    }
    let lock_path = dir.join(".lock");
    let lock =
        fs::File::create(&lock_path).map_err(|e| format!("create {}: {e}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("lock: {e}"))?;
    Ok((dir, lock))
}

/// The recorded mounts still attached (stale records removed).
fn prune(dir: &Path) -> Result<usize, String> {
    let live = live_mounts()?;
    let mut count = 0;
    for entry in fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
    {
        match entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(id) if live.contains(&id) => count += 1,
            Some(_) => {
                let _ = fs::remove_file(entry.path());
            }
            None => {}
        }
    }
    Ok(count)
}

fn log(line: &str) {
    let path = Path::new(STATE).join("log");
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path);
    if let Ok(mut f) = file {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let _ = writeln!(f, "{} {line}", now.map_or(0, |d| d.as_secs()));
    }
}

fn do_mount(
    c: &Caller,
    source: &Path,
    from: Block,
    to: Block,
    target: &Path,
) -> Result<(), String> {
    let subuid =
        Subids::read(Path::new(warren::idmap::subid::SUBUID)).map_err(|e| e.to_string())?;
    let subgid =
        Subids::read(Path::new(warren::idmap::subid::SUBGID)).map_err(|e| e.to_string())?;
    check_blocks(c, &subuid, &subgid, from, to)?;
    let (dir, _lock) = records(c)?;
    if prune(&dir)? >= MAX_MOUNTS {
        return Err(format!(
            "you already hold {MAX_MOUNTS} mounts (the most one user may)"
        ));
    }
    let (src, tgt) = as_caller(c, || {
        Ok((open_source(c, source, from)?, open_target(c, target)?))
    })?;
    let flags = sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    let tree =
        sys::open_tree(src.as_fd(), Path::new(""), flags).map_err(|e| format!("open_tree: {e}"))?;
    let map = |from, to| {
        vec![Mapping {
            container: from,
            host: to,
            size: BLOCK,
        }]
    };
    let maps = Maps::direct(map(from.uid, to.uid), map(from.gid, to.gid), false);
    let userns =
        warren::idmap::userns::userns_fd(&maps).map_err(|e| format!("user namespace: {e}"))?;
    let attrs = sys::MOUNT_ATTR_IDMAP | sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr(
        tree.as_fd(),
        Path::new(""),
        libc::AT_EMPTY_PATH as u32,
        attrs,
        0,
        Some(userns.as_fd()),
    )
    .map_err(|e| format!("idmapped mount of {}: {e}", source.display()))?;
    // Recorded before it is attached: a kill in between leaves a stale record (pruned),
    // never an unrecorded mount.
    let id = mount_id(tree.as_fd())?;
    // mountinfo's ids are reused; the unique one (Linux 6.8) never is: `umount` checks it.
    let unique = sys::mount_id(tree.as_fd()).map_err(|e| format!("statx: {e}"))?;
    let record = dir.join(id.to_string());
    let text = format!(
        "{}\n{}\n{}:{}\n{}:{}\n{unique}\n",
        target.display(),
        source.display(),
        from.uid,
        from.gid,
        to.uid,
        to.gid
    );
    let tmp = dir.join(format!(".{id}.tmp"));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &record))
        .map_err(|e| format!("write {}: {e}", record.display()))?;
    let to_flags = sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH;
    let (fd, tfd) = (
        std::os::fd::AsRawFd::as_raw_fd(&tree),
        std::os::fd::AsRawFd::as_raw_fd(&tgt),
    );
    if let Err(e) = sys::move_mount_raw(fd, c"", tfd, c"", to_flags) {
        let _ = fs::remove_file(&record);
        return Err(format!("attach at {}: {e}", target.display()));
    }
    log(&format!(
        "uid {} mount {} {}:{} -> {}:{} at {} (mount {id})",
        c.uid,
        source.display(),
        from.uid,
        from.gid,
        to.uid,
        to.gid,
        target.display()
    ));
    Ok(())
}

fn do_umount(c: &Caller, target: &Path) -> Result<(), String> {
    let (dir, _lock) = records(c)?;
    let fd = as_caller(c, || {
        open_at(None, target, libc::O_PATH | libc::O_DIRECTORY)
    })?;
    let id = mount_id(fd.as_fd())?;
    let record = dir.join(id.to_string());
    let unique = sys::mount_id(fd.as_fd()).map_err(|e| format!("statx: {e}"))?;
    let recorded = fs::read_to_string(&record).unwrap_or_default();
    if recorded.lines().nth(4) != Some(unique.to_string().as_str()) {
        return Err(format!(
            "{}: no mount of yours that warren-mount made is there",
            target.display()
        ));
    }
    // Through our fd, never the path again: a renamed directory cannot redirect it.
    let proc_path = CString::new(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| e.to_string())?;
    rustix::mount::unmount(proc_path.as_c_str(), rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| format!("umount {}: {e}", target.display()))?;
    let _ = fs::remove_file(&record);
    log(&format!(
        "uid {} umount {} (mount {id})",
        c.uid,
        target.display()
    ));
    Ok(())
}

/// fds 0, 1 and 2 open (to /dev/null if the caller closed them), so nothing we open
/// later becomes our stderr.
fn standard_fds() -> Result<(), String> {
    loop {
        let fd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        if std::os::fd::AsRawFd::as_raw_fd(&fd) > 2 {
            return Ok(());
        }
        // A standard fd it now fills: keep it open.
        std::mem::forget(fd);
    }
}

fn run() -> Result<(), String> {
    standard_fds()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = parse(&args)?;
    if !rustix::process::geteuid().is_root() {
        return Err("not installed setuid root (chown root, chmod 4755)".into());
    }
    let uid = rustix::process::getuid().as_raw();
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    let caller = Caller { uid, name };
    if uid == 0 {
        return Err("root needs no helper (warren idmaps images itself)".into());
    }
    match cmd {
        Cmd::Mount {
            source,
            from,
            to,
            target,
        } => do_mount(&caller, &source, from, to, &target),
        Cmd::Umount { target } => do_umount(&caller, &target),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("warren-mount: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
#[path = "warren-mount/tests.rs"]
mod tests;
