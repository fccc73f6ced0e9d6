//! The parent's half of the init protocol: clone the child with what it needs
//! ([`Init`]), talk to it over the sync socket, and turn a failure it reports into an
//! [`Error`] naming the mount, device or step.

use super::cgroup::{Cgroup, Entered};
use super::error::Error;
use super::init::{self, Init};
use super::protocol::{self, Fail, Msg, Step, tag};
use super::rootfs;
use oci_spec::runtime::LinuxNamespaceType;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Namespace type name (as in /proc/PID/ns) and clone flag.
pub(super) fn ns_info(t: LinuxNamespaceType) -> (&'static str, libc::c_int) {
    match t {
        LinuxNamespaceType::Mount => ("mnt", libc::CLONE_NEWNS),
        LinuxNamespaceType::Cgroup => ("cgroup", libc::CLONE_NEWCGROUP),
        LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
        LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
        LinuxNamespaceType::User => ("user", libc::CLONE_NEWUSER),
        LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
        LinuxNamespaceType::Network => ("net", libc::CLONE_NEWNET),
        LinuxNamespaceType::Time => ("time", libc::CLONE_NEWTIME),
    }
}

pub(super) fn open_ns(path: &Path, field: &str) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::config(field, format!("{}: {e}", path.display())))
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair")(e.into()))
}

/// The pty master's destination when `plan` asks for a terminal: the caller's fd (taken),
/// else a connection to the console socket.
pub(super) fn console_for(
    plan: &init::Process,
    fd: &mut Option<OwnedFd>,
    socket: Option<&Path>,
) -> Result<Option<OwnedFd>, Error> {
    match (plan.terminal, fd.take(), socket) {
        (false, _, _) => Ok(None),
        (true, Some(fd), _) => Ok(Some(fd)),
        (true, None, Some(path)) => Ok(Some(connect_console(path)?)),
        (true, None, None) => Err(Error::config(
            "process.terminal",
            "a terminal needs --console-socket",
        )),
    }
}

fn connect_console(path: &Path) -> Result<OwnedFd, Error> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(Error::io(format!(
        "connect console socket {}",
        path.display()
    )))?;
    Ok(OwnedFd::from(s))
}

/// Clones the child running `init` (with `flags` new namespaces); returns its pid and
/// pidfd, the parent's end of the sync socket, and, when the child was born in `cgroup`
/// (see `cgroup::born`; else the caller moves it there), this thread still in its
/// cgroups: the caller leaves them before it starts another process (born there too),
/// and may send GO first. A child that joins its v1 cgroups itself (`init.cgroup_tasks`)
/// is born only in the cgroup2 one, if any. With `init.nest` the child only makes the
/// init with those namespaces and reports its pid (`tag::PID`).
pub(super) fn spawn(
    init: &mut Init,
    flags: libc::c_int,
    cgroup: Option<&Cgroup>,
) -> Result<(i32, OwnedFd, OwnedFd, Option<Entered>), Error> {
    let (parent_end, child_end) = seqpacket_pair()?;
    let netns = take_early_netns(init);
    init.sync = child_end.as_raw_fd();
    init.parent = std::process::id() as i32;
    let mut keep: Vec<RawFd> = vec![0, 1, 2, init.sync];
    keep.extend(3..3 + init.preserve_fds);
    keep.extend(init.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    keep.extend(
        init.fifo
            .iter()
            .flat_map(|(a, b)| [a.as_raw_fd(), b.as_raw_fd()]),
    );
    keep.extend(init.stdio.iter().flatten().copied());
    keep.extend(init.console_socket);
    keep.extend(init.start_state.as_ref().map(|f| f.as_raw_fd()));
    keep.extend(init.root_fd.as_ref().map(|f| f.as_raw_fd()));
    if let init::Netns::Made(fd) = &init.netns {
        keep.push(fd.as_raw_fd());
    }
    keep.sort_unstable();
    keep.dedup();
    init.keep = keep;
    let flags = if init.nest.is_some() {
        init.nest_flags = flags;
        0
    } else {
        flags
    };
    let restore = netns.as_ref().map(enter_netns).transpose()?;
    let v1 = init.cgroup_tasks.is_empty();
    let mut entered = cgroup.and_then(|c| c.enter_thread(v1));
    let into = entered.as_ref().and_then(|e| e.cgroup2_fd());
    // SAFETY: the child only runs `Init::run`, which is async-signal-safe: it uses data
    // prepared here and never returns.
    let mut cloned = unsafe { crate::sys::clone3_fork_into(flags as u64, into) };
    if let Ok((0, _)) = cloned {
        init.run();
    }
    if let Some(e) = entered.take_if(|_| cloned.is_err()) {
        e.leave()?;
        // A cgroup that refuses a child at clone (a full pids limit, a cgroup2 directory
        // that is not a leaf) may still take it by a move: the usual way, then.
        // SAFETY: as above.
        cloned = unsafe { crate::sys::clone3_fork(flags as u64) };
        if let Ok((0, _)) = cloned {
            init.run();
        }
    }
    if let Some(own) = restore {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&own),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| Error::io("return to the runtime's network namespace")(e.into()))?;
    }
    let (pid, pidfd) = cloned.map_err(Error::io("clone3"))?;
    drop(child_end);
    let pidfd = pidfd.ok_or_else(|| Error::io("clone3")(std::io::Error::other("no pidfd")))?;
    Ok((pid, pidfd, parent_end, entered))
}

/// A network namespace joined by path while a new user namespace is made (a bridge
/// network's, owned by the host's user namespace): the child, root only in its new user
/// namespace, may not join it. It is joined here instead, by the cloning thread (as runc
/// joins paths before its unshare), so the child starts in it.
fn take_early_netns(init: &mut Init) -> Option<OwnedFd> {
    if !init.new_userns {
        return None;
    }
    let i = init
        .join
        .iter()
        .position(|(_, k)| *k == libc::CLONE_NEWNET)?;
    Some(init.join.remove(i).0)
}

/// Moves this thread into `netns`; returns its own, to come back to.
fn enter_netns(netns: &OwnedFd) -> Result<OwnedFd, Error> {
    let own = open_ns(
        Path::new("/proc/thread-self/ns/net"),
        "the runtime's network namespace",
    )?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(netns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| Error::io("join the network namespace")(e.into()))?;
    Ok(own)
}

fn describe(f: Fail, plan: Option<&rootfs::Plan>, init: &Init) -> Error {
    let i = f.index as usize;
    if f.step == Step::Exec {
        return exec_error(f, &init.process);
    }
    let what = match f.step {
        Step::Mount => plan
            .and_then(|p| p.descriptions.get(i).cloned())
            .unwrap_or_else(|| "mount".into()),
        Step::Device => format!(
            "create device {}",
            plan.map(|p| p.device_path(i)).unwrap_or_default()
        ),
        Step::Masked => format!(
            "mask {}",
            plan.map(|p| p.masked_path(i)).unwrap_or_default()
        ),
        Step::Readonly => format!(
            "make {} read-only",
            plan.map(|p| p.readonly_path(i)).unwrap_or_default()
        ),
        Step::Sysctl => format!(
            "set sysctl {}",
            plan.map(|p| p.sysctl_path(i)).unwrap_or_default()
        ),
        Step::Cwd => format!("chdir to process.cwd {:?}", init.process.cwd),
        Step::Setuid => format!("set uid {}", f.index),
        Step::Setgid => format!("set gid {}", f.index),
        Step::Groups if f.index == 1 => {
            "process.user.additionalGids need setgroups, denied in this user namespace".into()
        }
        Step::Setns => format!("join namespace {}", i),
        Step::Rlimit => format!("set process.rlimits[{i}]"),
        Step::Hook => format!("hooks.startContainer[{i}]"),
        Step::Loopback if f.index == 1 => "join the new network namespace".into(),
        Step::Loopback => "bring up lo in the new network namespace".into(),
        Step::Cgroup => match init.cgroup_tasks.get(i) {
            Some(t) => format!("join its cgroup ({})", t.to_string_lossy()),
            None => "join its cgroup".into(),
        },
        Step::UserNs => match f.index {
            0 => "join the kept user namespace".into(),
            1 => "write the uid map inside the kept user namespace".into(),
            _ => "write the gid map inside the kept user namespace".into(),
        },
        other => format!("{other:?}").to_lowercase(),
    };
    Error::Init {
        what,
        errno: nix::errno::Errno::from_raw(f.errno),
    }
}

/// The program of `process` could not be executed (see `init::find_program`).
fn exec_error(f: Fail, process: &init::Process) -> Error {
    if f.index == init::NOT_FOUND && !process.prog.contains('/') {
        return Error::Exec {
            path: process.prog.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "executable file not found in $PATH",
            ),
        };
    }
    let path = match process.candidates.get(f.index as usize) {
        Some(c) => c.to_string_lossy().into_owned(),
        None => process.prog.clone(),
    };
    // The kind for the exit code, the errno's name in the message like other failures.
    let kind = std::io::Error::from_raw_os_error(f.errno).kind();
    Error::Exec {
        path,
        source: std::io::Error::new(kind, nix::errno::Errno::from_raw(f.errno).to_string()),
    }
}

/// Waits for the child's next message, mapping a failure or an EOF to an error.
pub(super) fn expect(
    sock: &OwnedFd,
    plan: Option<&rootfs::Plan>,
    init: &Init,
    during: &'static str,
) -> Result<Option<Msg>, Error> {
    match protocol::recv(sock.as_raw_fd()) {
        Ok(Some(m)) if m.tag == tag::FAIL => Err(describe(Fail::from_msg(m), plan, init)),
        Ok(m) => Ok(m),
        Err(_) => Err(Error::InitDied(during)),
    }
}

pub(super) fn send(sock: &OwnedFd, t: u32) -> Result<(), Error> {
    protocol::send(
        sock.as_raw_fd(),
        Msg {
            tag: t,
            ..Default::default()
        },
    )
    .map_err(|_| Error::InitDied("create"))
}
