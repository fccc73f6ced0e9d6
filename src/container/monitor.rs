//! The container monitor: a small process that is the init's parent instead of the
//! creator, so the exit facts ([`super::exit`]) are recorded even after the creator (a
//! scheduler) died, and the creator never has a container child to reap. Like podman's
//! conmon and containerd's shim, which run `runc create` below themselves and wait for the
//! init that is reparented to them; here the monitor runs the create itself.
//!
//! The monitor is the caller's binary re-executed (`/proc/self/exe` with a marker
//! argument, like the rootless helper, never a fork of a multithreaded caller), sealed
//! ([`super::exe::reexec_sealed`]) since the init is its clone. It takes the request (the
//! config, the options, the stdio fds) in one message over a socket on its stdin, forks
//! once so the caller only reaps a process that exits at once, and the fork, in its own
//! session, creates the container, answers, waits for the init, records its exit facts
//! and exits. Opt-in ([`crate::runtime::Runtime::with_monitor`]): the OCI CLI's clients
//! (conmon, the shim) are monitors already.

use super::Container;
use super::create::CreateOptions;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The monitor's only argument.
pub const MARKER: &str = "--warren-monitor-v1";

/// Set by [`dispatch`]: this program's `main` serves the marker.
static HOOKED: AtomicBool = AtomicBool::new(false);

/// The largest request (a config is a few KiB).
const MAX_REQUEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(
        "the container monitor re-executes {}, but this program never called warren::main_hook(): call it first thing in main, or name a warren binary as the helper (Runtime::with_helper)",
        crate::mount::rootless::SELF_EXE
    )]
    NoHook,
    #[error("the container monitor {helper}: {what}")]
    Io {
        helper: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("the container monitor {helper}: {reason}")]
    Failed { helper: PathBuf, reason: String },
    /// The create in the monitor failed (its error, as a line).
    #[error("{0}")]
    Create(String),
    #[error("preserved fds cannot pass through the container monitor")]
    PreserveFds,
}

#[derive(Serialize, Deserialize)]
struct Request {
    root: PathBuf,
    id: String,
    spec: Spec,
    bundle: PathBuf,
    rootfs: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    start: bool,
    init: bool,
    #[serde(default)]
    root_overlay: Option<crate::container::rootfs::RootOverlay>,
    #[serde(default)]
    usermode: Option<crate::net::usermode::Usermode>,
    /// Which of stdin, stdout, stderr, the console socket come as fds, in that order.
    fds: [bool; 4],
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Created,
    Failed(String),
}

/// Creates container `id` in a monitor started from `helper`; the caller gets it loaded
/// (not its child: [`Container::wait`] reads the facts the monitor records).
pub fn create(
    helper: &Path,
    root: &Path,
    id: &str,
    spec: &Spec,
    mut opts: CreateOptions,
) -> Result<Container, MonitorError> {
    if helper == Path::new(crate::mount::rootless::SELF_EXE) && !HOOKED.load(Ordering::SeqCst) {
        return Err(MonitorError::NoHook);
    }
    if opts.preserve_fds > 0 {
        return Err(MonitorError::PreserveFds);
    }
    let io = |what: &str| {
        let (helper, what) = (helper.to_path_buf(), what.to_string());
        move |source| MonitorError::Io {
            helper,
            what,
            source,
        }
    };
    let abs = |p: &Path| std::path::absolute(p).map_err(io("resolve a path"));
    let bundle = match &opts.bundle {
        Some(b) => abs(b)?,
        None => std::env::current_dir().map_err(io("current directory"))?,
    };
    // Stdio left unset is the caller's own, as it would be for a clone of the caller.
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut present = [false; 4];
    for (i, slot) in opts.stdio.iter_mut().enumerate() {
        let fd = match slot.take() {
            Some(fd) => Some(fd),
            // SAFETY: fds 0..2 are the caller's stdio for the duration of the call.
            None => unsafe { std::os::fd::BorrowedFd::borrow_raw(i as RawFd) }
                .try_clone_to_owned()
                .ok(),
        };
        present[i] = fd.is_some();
        fds.extend(fd);
    }
    if let Some(c) = opts.console_fd.take() {
        present[3] = true;
        fds.push(c);
    }
    let request = Request {
        root: abs(root)?,
        id: id.to_string(),
        spec: spec.clone(),
        bundle,
        rootfs: opts.rootfs.as_deref().map(abs).transpose()?,
        console_socket: opts.console_socket.as_deref().map(abs).transpose()?,
        pid_file: opts.pid_file.as_deref().map(abs).transpose()?,
        start: opts.start,
        init: opts.init,
        root_overlay: opts.root_overlay.take(),
        usermode: opts.usermode.take(),
        fds: present,
    };
    let bytes = serde_json::to_vec(&request).map_err(|e| io("encode")(e.into()))?;
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io("socketpair")(e.into()))?;
    // std spawns with posix_spawn or fork+exec that runs no Rust code in between: safe
    // in a multithreaded process.
    let mut child = Command::new(helper)
        .arg(MARKER)
        .current_dir("/")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start"))?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = send(&ours, &bytes, &raw).map_err(io("send the request"));
    drop(fds);
    if sent.is_err() {
        // It would wait for the request forever.
        let _ = child.kill();
    }
    // It forks and exits at once: reaping it now leaves the caller no child.
    let waited = child.wait().map_err(io("wait"))?;
    sent?;
    let reply = recv(&ours, 64 << 10).map_err(io("read the answer"))?.0;
    let failed = |reason: String| MonitorError::Failed {
        helper: helper.to_path_buf(),
        reason,
    };
    match serde_json::from_slice::<Reply>(&reply) {
        Ok(Reply::Created) => {
            Container::load(root, id).map_err(|e| MonitorError::Create(crate::error_line(&e)))
        }
        Ok(Reply::Failed(e)) => Err(MonitorError::Create(e)),
        Err(_) if reply.is_empty() => Err(failed(format!(
            "exited ({waited}) without answering: is it a warren binary whose main calls warren::main_hook()?"
        ))),
        Err(e) => Err(failed(format!("bad answer: {e}"))),
    }
}

/// One message with `fds` attached.
fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message (empty at EOF) and the fds that came with it.
fn recv(sock: &OwnedFd, max: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these fds for us; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

/// Serves the monitor when this process was started as one (then exits), else returns at
/// once. Call it first thing in `main` ([`crate::main_hook`] does).
pub fn dispatch() {
    HOOKED.store(true, Ordering::SeqCst);
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == MARKER) && args.next().is_none() {
        // The init is our clone: run from a binary no container can write.
        if super::exe::reexec_sealed().is_err() {
            std::process::exit(125);
        }
        std::process::exit(serve());
    }
}

/// The monitor: read the request, fork, create, answer, wait, record.
fn serve() -> i32 {
    // SAFETY: the caller gave us the socket as stdin; nothing else owns fd 0.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    // Whatever else the caller let through (fds without close-on-exec) is not ours to
    // keep open for the container's lifetime.
    let _ = crate::sys::close_fds(3, RawFd::MAX);
    let Ok((bytes, fds)) = recv(&sock, MAX_REQUEST) else {
        return 2;
    };
    let Ok(request) = serde_json::from_slice::<Request>(&bytes) else {
        let _ = answer(&sock, Reply::Failed("bad request".into()));
        return 2;
    };
    // The caller reaps us at once; the fork carries on in its own session, out of reach
    // of the caller's terminal signals.
    // SAFETY: this process is single-threaded (a fresh exec), so fork is safe.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => return 1,
    }
    let _ = nix::unistd::setsid();
    run(sock, request, fds)
}

fn answer(sock: &OwnedFd, reply: Reply) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    send(sock, &bytes, &[])
}

/// In the forked monitor: the create, the answer, the wait.
fn run(sock: OwnedFd, r: Request, fds: Vec<OwnedFd>) -> i32 {
    let mut fds = fds.into_iter();
    let mut take = |present: bool| present.then(|| fds.next()).flatten();
    // Stdio the caller had closed is /dev/null, never our own (fd 0 is the socket).
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ok()
            .map(OwnedFd::from)
    };
    let mut stdio = [take(r.fds[0]), take(r.fds[1]), take(r.fds[2])];
    for slot in stdio.iter_mut().filter(|s| s.is_none()) {
        *slot = null();
    }
    let console_fd = take(r.fds[3]);
    let opts = CreateOptions {
        bundle: Some(r.bundle),
        rootfs: r.rootfs,
        console_socket: r.console_socket,
        console_fd,
        pid_file: r.pid_file,
        stdio,
        preserve_fds: 0,
        start: r.start,
        init: r.init,
        root_overlay: r.root_overlay,
        usermode: r.usermode,
    };
    // A caller killed since it sent the request gets no container: made now, it would
    // appear after the caller's `rm` found nothing (the answer below catches a caller
    // gone during the create: the container's directory is there by then, and an `rm`
    // waits for its lock).
    if caller_gone(&sock) {
        return 1;
    }
    let container = match Container::create(&r.root, &r.id, &r.spec, opts) {
        Ok(c) => c,
        Err(e) => {
            let _ = answer(&sock, Reply::Failed(crate::error_line(&e)));
            return 1;
        }
    };
    if answer(&sock, Reply::Created).is_err() {
        // The caller is gone before it knew of the container: undo it.
        let _ = container.delete(true);
        return 1;
    }
    drop(sock);
    match container.wait() {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// Whether the caller's end of `sock` is closed (it died): poll without waiting.
fn caller_gone(sock: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether `pid` is a monitor (its argv is this binary's and the marker).
pub(crate) fn is_monitor(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(MARKER.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_caller_that_closed_its_end_is_gone() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert!(!caller_gone(&b));
        drop(a);
        assert!(caller_gone(&b));
    }

    #[test]
    fn a_message_carries_its_fds() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        send(&a, b"{\"x\":1}", &[w.as_raw_fd()]).expect("send");
        drop(w);
        let (bytes, mut fds) = recv(&b, 1024).expect("recv");
        assert_eq!(bytes, b"{\"x\":1}");
        assert_eq!(fds.len(), 1);
        std::fs::File::from(fds.remove(0))
            .write_all(b"hi")
            .expect("write through the passed fd");
        let mut got = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut got)
            .expect("read");
        assert_eq!(got, "hi");
        drop(a);
        assert!(recv(&b, 1024).expect("eof").0.is_empty(), "EOF is empty");
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        send(&a, &[b'x'; 100], &[]).expect("send");
        assert!(recv(&b, 10).is_err());
    }
}
