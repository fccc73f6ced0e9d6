//! Rootless containers of one image without the setuid helper: fuse-overlayfs serves each
//! container its root over the user's one extracted tree (issue 20), when `/dev/fuse` is
//! usable by the caller and `fuse-overlayfs` is on PATH.
//!
//! - The container's child opens `/dev/fuse` in the container's user namespace, mounts
//!   FUSE on it as the container's root and hands the device over a socket in the
//!   container's dir ([`crate::container::RootOverlay::fuse`]).
//! - The runtime starts `fuse-overlayfs -f` on that device in a user namespace of its own
//!   that maps the container's block (at 0), the image block (after it) and the caller's
//!   own id (after both: the way through the caller's private directories), as that
//!   namespace's root. `uidmapping=`/`gidmapping=` show the image block's ids as the
//!   container's; the container's block is listed last, so what the daemon creates for
//!   the container (new files, chowns) is owned by the container's block. A copy-up keeps
//!   the lower file's owner on disk (fuse-overlayfs copies it as is): the image block's,
//!   seen by the container through the same mapping.
//! - The daemon ends when the container's mount namespace does (the connection is
//!   aborted); `rm` waits for it (and kills it after a while), then removes the layer in
//!   the daemon's namespace, which holds every owner it may contain.

use super::{Error, Record, Runtime, io_err, rootless};
use crate::container::{RootOverlay, Upper};
use crate::idmap::alloc::Reservation;
use crate::idmap::subid::Host;
use crate::idmap::userns::{self, Mapping, Maps};
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const METHOD_FUSE: &str = "fuse-overlayfs";
/// The daemon's program.
pub const FUSE_OVERLAYFS: &str = "fuse-overlayfs";
/// In the container's dir: the socket the child hands `/dev/fuse` over, the daemon's
/// pid and start time, its stderr.
const SOCKET: &str = "fuse.sock";
const PIDFILE: &str = "fuse.pid";
const LOG: &str = "fuse.log";
/// How long the runtime waits for the child's device, and `rm` for the daemon's end.
const ACCEPT_WAIT: Duration = Duration::from_secs(120);
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The host facts the rootless method is chosen from: each the thing, or why not.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The setuid-root `warren-mount`.
    pub helper: Result<PathBuf, String>,
    /// `/dev/fuse` opened read-write by the caller.
    pub dev_fuse: Result<(), String>,
    /// `fuse-overlayfs` on PATH.
    pub fuse_overlayfs: Result<PathBuf, String>,
}

/// The method a rootless container gets, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Helper(PathBuf),
    Fuse { program: PathBuf, reason: String },
    Copy { reason: String },
}

/// The helper when installed; else fuse-overlayfs when `/dev/fuse` is usable and it is
/// installed; else a copy. Pure.
pub fn choose(f: &Facts) -> Choice {
    let no_helper = match &f.helper {
        Ok(h) => return Choice::Helper(h.clone()),
        Err(why) => why,
    };
    let fuse = f.dev_fuse.clone().and(f.fuse_overlayfs.clone());
    match fuse {
        Ok(program) => Choice::Fuse {
            reason: format!(
                "{no_helper}; {} serves the shared image through /dev/fuse",
                program.display()
            ),
            program,
        },
        Err(why) => Choice::Copy {
            reason: format!("{no_helper}; {why}"),
        },
    }
}

impl Facts {
    /// This host's facts, the helper looked up with `find_helper`.
    pub fn gather(helper: Result<PathBuf, String>) -> Facts {
        Facts {
            helper,
            dev_fuse: dev_fuse(),
            fuse_overlayfs: find_program(FUSE_OVERLAYFS),
        }
    }
}

/// Whether the caller may open `/dev/fuse` read-write (as the container's child will).
pub fn dev_fuse() -> Result<(), String> {
    let dev = Path::new("/dev/fuse");
    match fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("no /dev/fuse (load the fuse module: modprobe fuse)".to_string())
        }
        Err(e) => Err(format!(
            "/dev/fuse is not usable by you ({e}): let the user open it read-write \
             (e.g. setfacl -m u:USER:rw /dev/fuse)"
        )),
    }
}

/// `name` in an absolute PATH directory, executable; else why not.
pub fn find_program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| format!("{name} is not installed (Debian package {name})"))
}

/// The daemon's namespace: the container's block at 0, the image block after it, the
/// caller's own id after both; uid lines, then gid lines. Pure.
pub fn daemon_lines(
    own: (u32, u32),
    ids: &Reservation,
    image: &Reservation,
) -> (Vec<Mapping>, Vec<Mapping>) {
    let (c, i) = (ids.uids.len, image.uids.len);
    let lines = |own: u32, block, img| {
        vec![
            Mapping::onto(0, block),
            Mapping::onto(c, img),
            Mapping {
                container: c + i,
                host: own,
                size: 1,
            },
        ]
    };
    (
        lines(own.0, ids.uids, image.uids),
        lines(own.1, ids.gids, image.gids),
    )
}

fn daemon_maps(host: &Host, ids: &Reservation, image: &Reservation) -> Result<Maps, Error> {
    let (uid, gid) = daemon_lines((host.uid, host.gid), ids, image);
    Maps::subordinate(host, uid, gid, userns::helpers())
        .map_err(|e| fuse_err(Path::new("/etc/subuid"), crate::error_line(&e)))
}

/// `-o` for fuse-overlayfs: the layers and the id mappings (the image block's ids shown
/// as the container's; the container's block last, so new files are owned by it).
pub fn options(lower: &Path, upper: &Path, work: &Path, block: u32, image: u32) -> Option<String> {
    // `block`: the container block's length (where the image block starts in the daemon's
    // namespace); `image`: the image block's length.
    let paths = [lower, upper, work].map(|p| p.to_str());
    let [Some(l), Some(u), Some(w)] = paths else {
        return None;
    };
    // Separators of the option string and of the lower dir list.
    if [l, u, w].iter().any(|p| p.contains([',', ':', '\\', '='])) {
        return None;
    }
    let map = format!("{block}:0:{image}:0:0:{block}");
    Some(format!(
        "lowerdir={l},upperdir={u},workdir={w},uidmapping={map},gidmapping={map}"
    ))
}

fn fuse_err(path: &Path, msg: String) -> Error {
    Error::Io {
        what: "fuse-overlayfs",
        path: path.to_path_buf(),
        source: std::io::Error::other(msg),
    }
}

impl Runtime {
    /// Starts serving `record`'s container the shared tree of `image` through
    /// fuse-overlayfs: the layer's dirs, the daemon's namespace, the socket, and a thread
    /// that starts the daemon on the device the container's child hands over.
    pub(super) fn fuse_view(
        &self,
        program: &Path,
        image: &str,
        record: &Record,
        ids: &Reservation,
    ) -> Result<RootOverlay, Error> {
        let (lower, block) = self.shared_tree(image)?;
        let dir = self.container_dir(&record.name);
        let dir = fs::canonicalize(&dir).map_err(io_err("resolve", &dir))?;
        let layer = dir.join("layer");
        super::rootless_view::mkdir(&layer, 0o700)?;
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        let opts = options(&lower, &upper, &work, ids.uids.len, ids.uids.len).ok_or_else(|| {
            fuse_err(
                &dir,
                "a path holds one of , : \\ = (or is not UTF-8)".into(),
            )
        })?;
        let request = rootless::Request::MakeDirs {
            paths: vec![upper.as_path().into(), work.as_path().into()],
        };
        rootless::in_userns(&self.helper, ids.uids.shift(), request)?;
        let host = Host::current().map_err(|e| fuse_err(&dir, crate::error_line(&e)))?;
        let ns = userns::userns_fd(&daemon_maps(&host, ids, &block)?)
            .map_err(|e| fuse_err(&dir, crate::error_line(&e)))?;
        let listener = listen(&dir)?;
        let log_path = dir.join(LOG);
        let log = fs::File::create(&log_path).map_err(io_err("create", &log_path))?;
        let daemon = Daemon {
            program: program.to_path_buf(),
            opts,
            ns,
            log,
            pidfile: dir.join(PIDFILE),
            sock: dir.join(SOCKET),
        };
        std::thread::Builder::new()
            .name("fuse-overlayfs".into())
            .spawn(move || daemon.serve(listener))
            .map_err(io_err("start a thread for", &dir))?;
        super::rootless_view::mkdir(&record.rootfs, 0o755)?;
        Ok(RootOverlay {
            lower,
            upper: Some(Upper { dir: upper, work }),
            fuse: Some(dir.join(SOCKET)),
        })
    }

    /// Undoes what [`Runtime::fuse_view`] left in `dir` (nothing when it made nothing):
    /// waits for the daemon's end (killing it after a while), then removes the layer in
    /// the daemon's namespace.
    pub(super) fn remove_fuse_view(&self, dir: &Path, ids: &Reservation) -> Result<(), Error> {
        let sock = dir.join(SOCKET);
        if fs::symlink_metadata(&sock).is_err() {
            return Ok(());
        }
        stop_daemon(&dir.join(PIDFILE))?;
        let layer = dir.join("layer");
        if fs::symlink_metadata(&layer).is_ok() {
            let block = self.ids.alloc(super::rootless_view::IMAGE_BLOCK)?;
            let host = Host::current().map_err(|e| fuse_err(dir, crate::error_line(&e)))?;
            // Copy-ups keep the image block's owners: only a namespace of both blocks
            // may remove them (warren's own no-follow removal, as for the other views).
            let request = rootless::Request::Remove {
                paths: vec![layer.as_path().into()],
            };
            let maps = daemon_maps(&host, ids, &block)?;
            rootless::in_userns_maps(&self.helper, ids.uids.shift(), &maps, request)?;
        }
        for f in [SOCKET, PIDFILE, LOG] {
            let _ = fs::remove_file(dir.join(f));
        }
        Ok(())
    }
}

/// The socket the container's child connects to, at `dir/fuse.sock` (bound through
/// `/proc/self/fd`: a long state path fits no `sun_path`).
fn listen(dir: &Path) -> Result<UnixListener, Error> {
    let sock = dir.join(SOCKET);
    let _ = fs::remove_file(&sock);
    let d = fs::File::open(dir).map_err(io_err("open", dir))?;
    let via = format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd());
    let listener = UnixListener::bind(&via).map_err(io_err("bind", &sock))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("bind", &sock))?;
    Ok(listener)
}

/// What the thread needs to start the daemon.
struct Daemon {
    program: PathBuf,
    opts: String,
    ns: OwnedFd,
    log: fs::File,
    pidfile: PathBuf,
    /// The socket's path: once `rm` removed it, nobody waits for the device any more.
    sock: PathBuf,
}

impl Daemon {
    /// Waits (bounded) for the child's device, starts the daemon on it and reaps it.
    fn serve(self, listener: UnixListener) {
        let dev = match receive(&listener, &self.sock) {
            Ok(dev) => dev,
            Err(e) => {
                let _ = writeln!(&self.log, "warren: no /dev/fuse from the container: {e}");
                return;
            }
        };
        drop(listener);
        match self.spawn(&dev) {
            Ok(mut child) => {
                drop(dev);
                let _ = child.wait();
            }
            Err(e) => {
                let _ = writeln!(
                    &self.log,
                    "warren: starting {}: {e}",
                    self.program.display()
                );
            }
        }
    }

    fn spawn(&self, dev: &OwnedFd) -> std::io::Result<std::process::Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(["-f", "-o", &self.opts, "/dev/fd/3"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log.try_clone()?);
        let (ns, dev) = (self.ns.as_raw_fd(), dev.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions on integers (setns, setgroups, set*id, dup2, fcntl).
        unsafe { cmd.pre_exec(move || enter(ns, dev)) };
        let child = cmd.spawn()?;
        let start = start_time(child.id() as i32).unwrap_or_default();
        crate::atomic::write(
            &self.pidfile,
            format!("{} {start}\n", child.id()).as_bytes(),
        )?;
        Ok(child)
    }
}

/// In a forked child: root of the user namespace `ns`, the device as fd 3.
fn enter(ns: RawFd, dev: RawFd) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls on integers and a null group list.
    unsafe {
        check(libc::setns(ns, libc::CLONE_NEWUSER))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(0, 0, 0))?;
        check(libc::setresuid(0, 0, 0))?;
        if dev == 3 {
            check(libc::fcntl(3, libc::F_SETFD, 0))
        } else {
            check(libc::dup2(dev, 3))
        }
    }
}

/// One connection's one fd, within [`ACCEPT_WAIT`] and while `sock` exists.
fn receive(listener: &UnixListener, sock: &Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsFd, FromRawFd};
    let deadline = Instant::now() + ACCEPT_WAIT;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline || fs::symlink_metadata(sock).is_err() {
            return Err(std::io::Error::other("timed out, or the container is gone"));
        }
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
    };
    conn.set_nonblocking(false)?;
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this fd; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("the container sent no fd"))
}

/// Field 22 of `/proc/PID/stat`: the process's start time (a recycled pid differs);
/// `None` once it is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Waits for the daemon recorded in `pidfile` to end; kills it after [`EXIT_WAIT`].
fn stop_daemon(pidfile: &Path) -> Result<(), Error> {
    let Ok(text) = fs::read_to_string(pidfile) else {
        return Ok(());
    };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next()) else {
        return Ok(());
    };
    let pid = pid as i32;
    let alive = || start_time(pid).is_some_and(|s| s == start);
    let deadline = Instant::now() + EXIT_WAIT;
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let deadline = Instant::now() + EXIT_WAIT;
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if alive() {
        return Err(fuse_err(pidfile, format!("the daemon {pid} does not end")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(helper: bool, dev: bool, prog: bool) -> Facts {
        Facts {
            helper: if helper {
                Ok("/bin/warren-mount".into())
            } else {
                Err("no helper".into())
            },
            dev_fuse: if dev {
                Ok(())
            } else {
                Err("no /dev/fuse".into())
            },
            fuse_overlayfs: if prog {
                Ok("/usr/bin/fuse-overlayfs".into())
            } else {
                Err("fuse-overlayfs is not installed (Debian package fuse-overlayfs)".into())
            },
        }
    }

    #[test]
    fn the_helper_first_then_fuse_then_a_copy() {
        for (dev, prog) in [(true, true), (false, true), (true, false), (false, false)] {
            assert_eq!(
                choose(&facts(true, dev, prog)),
                Choice::Helper("/bin/warren-mount".into())
            );
        }
        match choose(&facts(false, true, true)) {
            Choice::Fuse { program, reason } => {
                assert_eq!(program, Path::new("/usr/bin/fuse-overlayfs"));
                assert!(
                    reason.starts_with("no helper; /usr/bin/fuse-overlayfs"),
                    "{reason}"
                );
            }
            c => panic!("{c:?}"),
        }
        let copy = |dev, prog| match choose(&facts(false, dev, prog)) {
            Choice::Copy { reason } => reason,
            c => panic!("{c:?}"),
        };
        assert_eq!(copy(false, true), "no helper; no /dev/fuse");
        assert_eq!(
            copy(true, false),
            "no helper; fuse-overlayfs is not installed (Debian package fuse-overlayfs)"
        );
        assert_eq!(copy(false, false), "no helper; no /dev/fuse");
    }

    #[test]
    fn options_list_the_containers_block_last_and_refuse_separators() {
        let p = |s: &str| PathBuf::from(s);
        let o = options(
            &p("/s/i/rootfs"),
            &p("/s/c/upper"),
            &p("/s/c/work"),
            65536,
            65536,
        );
        assert_eq!(
            o.as_deref(),
            Some(
                "lowerdir=/s/i/rootfs,upperdir=/s/c/upper,workdir=/s/c/work,\
                 uidmapping=65536:0:65536:0:0:65536,gidmapping=65536:0:65536:0:0:65536"
            )
        );
        for bad in ["/s/a,b", "/s/a:b", "/s/a=b", "/s/a\\b"] {
            assert_eq!(
                options(&p(bad), &p("/u"), &p("/w"), 65536, 65536),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_daemon_maps_both_blocks_and_the_callers_id() {
        let r = |start| Reservation {
            name: "x".into(),
            uids: crate::idmap::range::IdRange::new(start, 65536).unwrap(),
            gids: crate::idmap::range::IdRange::new(start + 7, 65536).unwrap(),
        };
        let (uid, gid) = daemon_lines((1000, 1001), &r(165536), &r(100000));
        let m = |container, host, size| Mapping {
            container,
            host,
            size,
        };
        assert_eq!(
            uid,
            [
                m(0, 165536, 65536),
                m(65536, 100000, 65536),
                m(131072, 1000, 1)
            ]
        );
        assert_eq!(
            gid,
            [
                m(0, 165543, 65536),
                m(65536, 100007, 65536),
                m(131072, 1001, 1)
            ]
        );
    }
}
