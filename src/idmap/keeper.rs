//! The caller's own user namespace, kept between runs, so that a rootless container's
//! user namespace needs no setuid helper.
//!
//! An unprivileged caller maps its subordinate ids only through the setuid
//! `newuidmap`/`newgidmap`: two execs per container, ~3 ms of a start here. Instead, once,
//! a user namespace is made that maps everything the caller may map ([`entitlement`]: its
//! own id and its subordinate lines), and a small process, the keeper, keeps it alive and
//! names itself in a pid file. A container's user namespace is then made *inside* it, by
//! a process that joined it and so may write any map of its ids directly
//! (`container::init`; the rootless helper likewise, [`enter_nested`]). The kept namespace
//! maps each id to itself, so the container's maps are written as they are, and it sees
//! the same `/proc/self/uid_map` and the same host ids as with the helpers: only a
//! namespace between differs. Rootless podman's pause process
//! holds its namespace the same way.
//!
//! A kept namespace is used only if it is a child of the caller's own namespace, owned by
//! the caller, and maps exactly the current entitlement ([`find`]): one made anywhere else
//! (inside a container with the same ids, say) is never nested into. The keeper exits once
//! its pid file is gone or names another keeper, or after [`IDLE`] without a use (each
//! use touches the file).

use super::range::IdRange;
use super::subid::Host;
use super::userns::{Mapping, Maps, UsernsError, lines, write_proc};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// How long a keeper waits for a use before it exits.
pub const IDLE: Duration = Duration::from_secs(60);
/// How often a keeper looks at its pid file.
const CHECK: Duration = Duration::from_secs(2);
/// The kernel's limit on the lines of one id map.
const MAX_LINES: usize = 340;

/// The maps of a kept namespace: its ids (the `container` side) onto the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub uid: Vec<Mapping>,
    pub gid: Vec<Mapping>,
}

/// A container's user namespace to make inside the kept one.
pub struct Nest {
    /// The kept namespace, to join.
    pub userns: OwnedFd,
    /// The container's `uid_map` and `gid_map`, in the kept namespace's ids.
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
}

/// Everything `host`'s caller may map, each id as itself: its own id, then its
/// subordinate lines. `None` when no namespace can hold them all (lines overlapping each
/// other or the caller's own id, which the kernel refuses in one map, or more lines than
/// it takes).
pub fn entitlement(host: &Host) -> Option<Entitlement> {
    let user = host.user.as_deref();
    Some(Entitlement {
        uid: own_then(host.uid, host.subuid.of(user, host.uid).map(|e| e.range))?,
        gid: own_then(host.gid, host.subgid.of(user, host.uid).map(|e| e.range))?,
    })
}

fn own_then(own: u32, ranges: impl Iterator<Item = IdRange>) -> Option<Vec<Mapping>> {
    let mut maps = vec![Mapping {
        container: own,
        host: own,
        size: 1,
    }];
    let span = |m: &Mapping| (u64::from(m.host), u64::from(m.host) + u64::from(m.size));
    for r in ranges {
        let (start, end) = (u64::from(r.start), u64::from(r.start) + u64::from(r.len));
        // A line repeated (by name and by uid) adds nothing; a partial overlap is refused.
        if maps.iter().map(span).any(|(s, e)| s <= start && end <= e) {
            continue;
        }
        if maps.iter().map(span).any(|(s, e)| start < e && s < end) {
            return None;
        }
        maps.push(Mapping {
            container: r.start,
            host: r.start,
            size: r.len,
        });
    }
    (maps.len() <= MAX_LINES).then_some(maps)
}

/// `maps` (ids inside onto host ids) as maps onto the ids of a namespace whose own maps
/// are `outer`. A mapping that spans two of its lines is split (the kernel wants each
/// line within one line of the parent's map). `None` when a host id is not in `outer`.
pub fn translate(maps: &[Mapping], outer: &[Mapping]) -> Option<Vec<Mapping>> {
    let mut out = Vec::new();
    for m in maps {
        let (mut inside, mut host, mut left) =
            (u64::from(m.container), u64::from(m.host), u64::from(m.size));
        while left > 0 {
            let o = outer.iter().find(|o| {
                u64::from(o.host) <= host && host < u64::from(o.host) + u64::from(o.size)
            })?;
            let n = left.min(u64::from(o.host) + u64::from(o.size) - host);
            out.push(Mapping {
                container: u32::try_from(inside).ok()?,
                host: u32::try_from(u64::from(o.container) + host - u64::from(o.host)).ok()?,
                size: u32::try_from(n).ok()?,
            });
            inside += n;
            host += n;
            left -= n;
        }
    }
    (out.len() <= MAX_LINES).then_some(out)
}

/// The keeper's pid file: in the caller's runtime dir (`dirs::run_dir`), private to it.
pub fn pid_file(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join(".userns-keeper")
}

/// `maps` to make inside the caller's kept namespace, found through `pid_file` or made
/// (its maps `entitled`, written by newuidmap/newgidmap through `outer`).
pub fn nest(
    pid_file: &Path,
    entitled: &Entitlement,
    outer: &Maps,
    maps: &Maps,
) -> Result<Nest, UsernsError> {
    let unusable = |what: &str| UsernsError::Io {
        what: format!("kept user namespace ({}): {what}", pid_file.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let uid = translate(&maps.uid, &entitled.uid).ok_or_else(|| unusable("uid outside it"))?;
    let gid = translate(&maps.gid, &entitled.gid).ok_or_else(|| unusable("gid outside it"))?;
    let userns = match find(pid_file, entitled) {
        Some(ns) => ns,
        None => {
            start(pid_file, outer)?;
            find(pid_file, entitled).ok_or_else(|| unusable("not found once made"))?
        }
    };
    Ok(Nest {
        userns,
        uid_map: lines(&uid).into_bytes(),
        gid_map: lines(&gid).into_bytes(),
    })
}

/// Moves this process's further work into a user namespace made inside the kept one
/// `kept`, with the maps of a [`Nest`]: joins `kept`, forks, and the child makes the
/// namespace while the parent, which holds every capability in `kept`, writes its maps.
/// Returns `None` in the child (in its namespace, maps written, dying with the parent),
/// and in the parent, once the child is gone, `Some` of the exit code to pass on. The
/// rootless helper's way to its namespace without newuidmap (`mount::rootless`).
///
/// # Safety
/// Only in a single-threaded process: a user namespace is joined only by one, and the
/// child of the fork runs on.
pub unsafe fn enter_nested(
    kept: RawFd,
    uid_map: &[u8],
    gid_map: &[u8],
) -> Result<Option<i32>, String> {
    use nix::sys::wait::WaitStatus;
    use nix::unistd::ForkResult;
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("kept user namespace: {what}: {e}")
    };
    crate::sys::setns_raw(kept, libc::CLONE_NEWUSER).map_err(err("join"))?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err("pipe")(e.into()));
    let (made_r, made_w) = pipe()?;
    let (maps_r, maps_w) = pipe()?;
    let parent = nix::unistd::getpid();
    // SAFETY: single-threaded (this function's contract): the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| err("fork")(e.into()))? {
        ForkResult::Child => {
            drop((made_r, maps_w));
            // SAFETY: prctl with plain integers. The parent check closes the window before.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            if nix::unistd::getppid() != parent {
                return Err("kept user namespace: the parent is gone".into());
            }
            let made = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
            let errno = made.err().map_or(0, |e| e as i32);
            rustix::io::write(&made_w, &errno.to_ne_bytes()).map_err(|e| err("write")(e.into()))?;
            made.map_err(|e| err("unshare")(e.into()))?;
            drop(made_w);
            // The parent's word: one NUL when the maps are written, else why not (nothing:
            // it died).
            let word = std::io::read_to_string(std::fs::File::from(maps_r)).map_err(err("read"))?;
            match word.as_str() {
                "\0" => Ok(None),
                "" => Err("kept user namespace: the map writer died".into()),
                why => Err(why.to_string()),
            }
        }
        ForkResult::Parent { child } => {
            drop((made_w, maps_r));
            let mut errno = [0u8; 4];
            let made = matches!(rustix::io::read(&made_r, &mut errno), Ok(4))
                && i32::from_ne_bytes(errno) == 0;
            if made {
                let pid = child.as_raw();
                let written = write_proc(pid, "uid_map", uid_map)
                    .and_then(|()| write_proc(pid, "gid_map", gid_map));
                let word = match written {
                    Ok(()) => "\0".to_string(),
                    Err(e) => crate::error_line(&e),
                };
                let _ = rustix::io::write(&maps_w, word.as_bytes());
            }
            drop(maps_w);
            Ok(Some(match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => 1,
            }))
        }
    }
}

/// Writes the maps of a [`Nest`] for process `pid`, whose user namespace was made inside
/// the kept one: from a forked child that joins the kept namespace (every capability
/// there), as only a process in a namespace's parent may write its maps.
pub fn write_inside(nest: &Nest, pid: i32) -> Result<(), UsernsError> {
    let path = |file: &str| CString::new(format!("/proc/{pid}/{file}")).unwrap_or_default();
    let files = [
        (path("uid_map"), nest.uid_map.as_slice()),
        (path("gid_map"), nest.gid_map.as_slice()),
    ];
    let kept = std::os::fd::AsRawFd::as_raw_fd(&nest.userns);
    let failed = |step: &str| UsernsError::Io {
        what: format!("kept user namespace ({pid}): {step}"),
        source: std::io::Error::other("failed"),
    };
    // SAFETY: the child makes only async-signal-safe calls (setns, open, write, close,
    // _exit) on data prepared here: sound after a fork of a multithreaded process.
    let child = match unsafe { nix::unistd::fork() }.map_err(|_| failed("fork"))? {
        nix::unistd::ForkResult::Child => unsafe {
            if libc::setns(kept, libc::CLONE_NEWUSER) != 0 {
                libc::_exit(1);
            }
            for (i, (path, data)) in files.iter().enumerate() {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0
                    || libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize
                {
                    libc::_exit(2 + i as i32);
                }
                libc::close(fd);
            }
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(nix::sys::wait::WaitStatus::Exited(_, 1)) => Err(failed("join")),
        Ok(nix::sys::wait::WaitStatus::Exited(_, 2)) => Err(failed("write uid_map")),
        Ok(nix::sys::wait::WaitStatus::Exited(_, 3)) => Err(failed("write gid_map")),
        _ => Err(failed("the map writer died")),
    }
}

/// The namespace of the keeper `pid_file` names, if it is the caller's own child
/// namespace and maps exactly `entitled`; touches the file (the keeper's idle clock).
pub fn find(pid_file: &Path, entitled: &Entitlement) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    // Everything below is read through this directory: one process, even if the pid is
    // reused meanwhile (then its namespace must pass the same checks).
    let proc = rustix::fs::open(
        format!("/proc/{pid}"),
        flags | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .ok()?;
    let ns = rustix::fs::openat(&proc, "ns/user", flags, Mode::empty()).ok()?;
    if !crate::sys::userns_is_own_child(ns.as_fd()).ok()? {
        return None;
    }
    let read = |name: &str| {
        let fd = rustix::fs::openat(&proc, name, flags, Mode::empty()).ok()?;
        std::io::read_to_string(std::fs::File::from(fd)).ok()
    };
    let same = parse_map(&read("uid_map")?)? == entitled.uid
        && parse_map(&read("gid_map")?)? == entitled.gid
        && read("setgroups")?.trim() == "allow";
    if !same {
        return None;
    }
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        pid_file,
        &now,
        rustix::fs::AtFlags::empty(),
    );
    Some(ns)
}

/// A `uid_map`/`gid_map` as read: lines of three numbers.
fn parse_map(text: &str) -> Option<Vec<Mapping>> {
    text.lines()
        .map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some(Mapping {
                container: f.next()??,
                host: f.next()??,
                size: f.next()??,
            })
        })
        .collect()
}

/// Starts a keeper: a detached process that makes a user namespace and waits; `outer`
/// writes its maps, then `pid_file` names it.
fn start(pid_file: &Path, outer: &Maps) -> Result<(), UsernsError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| UsernsError::Io { what, source: e }
    };
    if let Some(dir) = pid_file.parent() {
        crate::dirs::create_private(dir).map_err(io(&format!("create {}", dir.display())))?;
    }
    let path = CString::new(pid_file.as_os_str().as_bytes())
        .map_err(|e| io("pid file")(std::io::Error::other(e)))?;
    let argv = argv_area();
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
    let ready_raw = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    // SAFETY: the child runs only `keep`, which is async-signal-safe (no allocation, no
    // lock) on data prepared here, and never returns.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| io("fork")(e.into()))? {
        // SAFETY: a freshly forked child, as `keep` requires.
        nix::unistd::ForkResult::Child => unsafe { keep(ready_raw, &path, argv) },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let _ = nix::sys::wait::waitpid(child, None);
    let mut word = [0u8; 8];
    let n = rustix::io::read(&ready_r, &mut word).map_err(|e| io("read")(e.into()))?;
    let pid = i32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
    let errno = i32::from_ne_bytes([word[4], word[5], word[6], word[7]]);
    if n != 8 || errno != 0 {
        let e = if n == 8 {
            std::io::Error::from_raw_os_error(errno)
        } else {
            std::io::Error::other("the keeper died")
        };
        return Err(UsernsError::Unshare(e));
    }
    let written = outer.write(pid).and_then(|()| {
        crate::atomic::write(pid_file, format!("{pid}\n").as_bytes())
            .map_err(io(&format!("write {}", pid_file.display())))
    });
    if written.is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    written
}

/// The bounds of this process's argument strings (`/proc/self/stat` fields 48 and 49),
/// which a keeper overwrites: it must not show its creator's command line.
fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(45);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// The keeper's life, in a forked child: detach, make the namespace, report its pid (and
/// the errno of unshare) on `ready`, then wait while `pid_file` names it and was used
/// within [`IDLE`].
///
/// # Safety
/// Call only in a freshly forked child; it calls only async-signal-safe functions.
unsafe fn keep(ready: RawFd, pid_file: &CStr, argv: Option<(usize, usize)>) -> ! {
    // SAFETY: async-signal-safe calls on plain values and buffers of the stated sizes.
    unsafe {
        // The creator may block signals it forwards: `kill` must end a keeper.
        crate::sys::reset_signals();
        libc::setsid();
        // A second fork: the keeper is nobody's child here, and the creator reaps the first.
        match libc::fork() {
            0 => {}
            _ => libc::_exit(0),
        }
        let errno = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        let me = libc::getpid();
        let mut word = [0u8; 8];
        word[..4].copy_from_slice(&me.to_ne_bytes());
        word[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(ready, word.as_ptr().cast(), 8);
        if errno != 0 {
            libc::_exit(1);
        }
        // Nothing of the creator's is held open (a client waits for EOF on its pipes).
        let _ = crate::sys::close_fds(0, RawFd::MAX);
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, c"warren-keeper".as_ptr(), 0, 0, 0);
        if let Some((start, end)) = argv {
            // This process's own argument strings, which nothing here reads: `ps` shows
            // the keeper's name, not the command that made it (as systemd renames).
            let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
            area.fill(0);
            let name = b"warren-keeper";
            let n = name.len().min(area.len().saturating_sub(1));
            area[..n].copy_from_slice(&name[..n]);
        }
        let pause = libc::timespec {
            tv_sec: CHECK.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        loop {
            libc::nanosleep(&pause, std::ptr::null_mut());
            if !still_kept(pid_file, me) {
                libc::_exit(0);
            }
        }
    }
}

/// True while `pid_file` names `me` and was touched within [`IDLE`]. Async-signal-safe.
fn still_kept(pid_file: &CStr, me: libc::pid_t) -> bool {
    // SAFETY: stat, clock_gettime, open, read and close on valid pointers and buffers.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let mut now: libc::timespec = std::mem::zeroed();
        if libc::stat(pid_file.as_ptr(), &mut st) != 0
            || libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) != 0
            || now.tv_sec - st.st_mtime > IDLE.as_secs() as libc::time_t
        {
            return false;
        }
        let fd = libc::open(pid_file.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 16];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n > 0 && parse_pid(&buf[..n as usize]) == Some(me)
    }
}

/// A decimal pid followed by a newline, without allocating.
fn parse_pid(text: &[u8]) -> Option<libc::pid_t> {
    let digits = text.strip_suffix(b"\n").unwrap_or(text);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i32, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(i32::from(d - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container: u32, host: u32, size: u32) -> Mapping {
        Mapping {
            container,
            host,
            size,
        }
    }

    fn r(start: u32, len: u32) -> IdRange {
        IdRange { start, len }
    }

    #[test]
    fn the_entitlement_is_the_own_id_then_each_line_each_id_as_itself() {
        let maps = own_then(1000, [r(100000, 65536), r(300000, 10)].into_iter()).unwrap();
        assert_eq!(
            maps,
            [
                m(1000, 1000, 1),
                m(100000, 100000, 65536),
                m(300000, 300000, 10)
            ]
        );
        // A line named twice (by name and by uid) counts once.
        let twice = own_then(1000, [r(100000, 65536), r(100000, 65536)].into_iter());
        assert_eq!(twice.unwrap().len(), 2);
        // Overlaps the kernel would refuse in one map: no kept namespace.
        assert!(own_then(100005, [r(100000, 65536)].into_iter()).is_none());
        assert!(own_then(1000, [r(100000, 10), r(100005, 10)].into_iter()).is_none());
        assert!(own_then(1000, (0..400).map(|i| r(100000 + i * 10, 10))).is_none());
    }

    #[test]
    fn a_container_map_is_written_as_is_split_at_the_kept_lines() {
        let outer = own_then(1000, [r(100000, 10), r(100010, 10)].into_iter()).unwrap();
        // The usual rootless map: root is the caller, the rest a line.
        let maps = [m(0, 1000, 1), m(1, 100000, 10)];
        assert_eq!(translate(&maps, &outer).unwrap(), maps);
        // A block across two adjacent lines becomes two lines.
        assert_eq!(
            translate(&[m(0, 100005, 10)], &outer).unwrap(),
            [m(0, 100005, 5), m(5, 100010, 5)]
        );
        // Beyond the caller's lines: not here.
        assert!(translate(&[m(0, 100015, 10)], &outer).is_none());
        assert!(translate(&[m(0, 0, 1)], &outer).is_none());
        // A shifted outer map (ids inside differ) is translated.
        let shifted = [m(0, 1000, 1), m(1, 100000, 65536)];
        assert_eq!(
            translate(&[m(0, 100050, 50)], &shifted).unwrap(),
            [m(0, 51, 50)]
        );
    }

    #[test]
    fn maps_and_pids_parse_as_the_kernel_prints_them() {
        let text = "         0       1000          1\n         1     100000      65536\n";
        assert_eq!(
            parse_map(text).unwrap(),
            [m(0, 1000, 1), m(1, 100000, 65536)]
        );
        assert!(parse_map("0 1000\n").is_none());
        assert_eq!(parse_pid(b"4242\n"), Some(4242));
        assert_eq!(parse_pid(b"42x\n"), None);
        assert_eq!(parse_pid(b"\n"), None);
        assert_eq!(parse_pid(b"99999999999\n"), None);
    }
}
