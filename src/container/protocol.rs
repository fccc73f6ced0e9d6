//! The parent<->child protocol on the sync socket: fixed-size [`Msg`]s with a [`tag`],
//! and a failure of the child as (step, errno, index). Both ends use [`send`] and
//! [`recv`]; they allocate nothing, so the child may call them between clone and exec.

use std::os::fd::RawFd;

/// What failed in the child.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sync = 1,
    Setns,
    Unshare,
    Hostname,
    RootPropagation,
    RootBind,
    RootOpen,
    Mount,
    Device,
    PivotRoot,
    Sysctl,
    Masked,
    Readonly,
    Console,
    Groups,
    Setgid,
    Setuid,
    Capabilities,
    NoNewPrivileges,
    Cwd,
    Stdio,
    ExecFifo,
    Seccomp,
    Exec,
    Fork,
    Hook,
    Loopback,
    Rlimit,
    /// Joining the kept user namespace (0), writing the uid (1) or gid (2) map inside it.
    UserNs,
    /// Joining the cgroup of `cgroup_tasks[index]`.
    Cgroup,
    Unknown,
}

impl Step {
    fn from_u32(v: u32) -> Step {
        if (Step::Sync as u32..Step::Unknown as u32).contains(&v) {
            // SAFETY: Step is repr(u32) with contiguous discriminants from Sync (1) to
            // Unknown, and `v` lies in that range.
            unsafe { std::mem::transmute::<u32, Step>(v) }
        } else {
            Step::Unknown
        }
    }
}

/// A failure in the child: the step, the errno and which item (mount index...).
#[derive(Debug, Clone, Copy)]
pub struct Fail {
    pub step: Step,
    pub errno: i32,
    pub index: u32,
}

impl Fail {
    pub fn new(step: Step, errno: i32, index: u32) -> Fail {
        Fail { step, errno, index }
    }
}

/// Messages on the sync socket.
pub mod tag {
    /// parent -> child: ids mapped, cgroup joined; go on.
    pub const GO: u32 = 1;
    /// child -> parent: namespaces and mounts are ready, hooks may run (pid is valid).
    pub const HOOKS: u32 = 2;
    /// parent -> child: hooks done.
    pub const HOOKS_DONE: u32 = 3;
    /// child -> parent: everything is set up; waiting for ACK.
    pub const READY: u32 = 4;
    /// parent -> child: state recorded; continue (to the exec fifo, or exec).
    pub const ACK: u32 = 5;
    /// child -> parent: a failure (a = errno, b = step, c = index).
    pub const FAIL: u32 = 6;
    /// child -> parent (exec): the pid of the process that will exec, in `a`.
    pub const PID: u32 = 7;
    /// child -> parent: PR_SET_PDEATHSIG cleared, the parent may exit (create only: with
    /// start, the exec that follows tells the same).
    pub const DETACHED: u32 = 8;
    /// parent -> child: the init is in its cgroup; the cgroup namespace may be made.
    pub const CGROUP: u32 = 9;
}

/// One message: a tag and three words whose meaning depends on it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Msg {
    pub tag: u32,
    pub a: i32,
    pub b: u32,
    pub c: u32,
}

impl Msg {
    /// A message with only a tag.
    pub fn tag(tag: u32) -> Msg {
        Msg {
            tag,
            ..Default::default()
        }
    }
}

/// Sends one message; the errno on failure.
pub fn send(fd: RawFd, msg: Msg) -> Result<(), i32> {
    // SAFETY: sending a plain repr(C) struct from the stack.
    let n = unsafe {
        libc::send(
            fd,
            (&msg as *const Msg).cast(),
            std::mem::size_of::<Msg>(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n as usize == std::mem::size_of::<Msg>() {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// Receives one message; `Ok(None)` on EOF (the peer closed or exec'd).
pub fn recv(fd: RawFd) -> Result<Option<Msg>, i32> {
    let mut msg = Msg::default();
    let mut reset = false;
    loop {
        // SAFETY: receiving into a plain repr(C) struct on the stack.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut msg as *mut Msg).cast(),
                std::mem::size_of::<Msg>(),
                0,
            )
        };
        if n < 0 {
            let e = last_errno();
            // A peer that exits leaving our last message unread makes the kernel report
            // ECONNRESET once, ahead of what it sent before exiting (its failure): read on.
            if e == libc::EINTR || (e == libc::ECONNRESET && !reset) {
                reset |= e == libc::ECONNRESET;
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(None);
        }
        return Ok(Some(msg));
    }
}

impl Fail {
    pub fn to_msg(self) -> Msg {
        Msg {
            tag: tag::FAIL,
            a: self.errno,
            b: self.step as u32,
            c: self.index,
        }
    }
    pub fn from_msg(m: Msg) -> Fail {
        Fail {
            step: Step::from_u32(m.b),
            errno: m.a,
            index: m.c,
        }
    }
}

/// The calling thread's errno.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::Step;

    /// The child fails and exits while our next message waits unread in its queue: the
    /// kernel reports ECONNRESET first, and its failure must still be read.
    #[test]
    fn a_failure_sent_before_exit_survives_our_unread_message() {
        use super::{Msg, recv, send, tag};
        use std::os::fd::AsRawFd;
        let (parent, child) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        send(child.as_raw_fd(), Msg::tag(tag::FAIL)).expect("child sends its failure");
        send(parent.as_raw_fd(), Msg::tag(tag::CGROUP)).expect("parent sends on");
        drop(child);
        let got = recv(parent.as_raw_fd()).expect("no ECONNRESET");
        assert_eq!(got.map(|m| m.tag), Some(tag::FAIL));
        assert!(recv(parent.as_raw_fd()).expect("then EOF").is_none());
    }

    #[test]
    fn steps_round_trip_through_their_number() {
        for step in [Step::Sync, Step::RootBind, Step::Hook, Step::Loopback] {
            assert_eq!(Step::from_u32(step as u32), step);
        }
        assert_eq!(Step::from_u32(0), Step::Unknown);
        assert_eq!(Step::from_u32(Step::Unknown as u32), Step::Unknown);
        assert_eq!(Step::from_u32(u32::MAX), Step::Unknown);
    }
}
