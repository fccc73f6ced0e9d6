//! The watcher that ties a user-mode network helper to its container. pasta and
//! slirp4netns keep the container's network namespace alive themselves (their sockets and
//! tap device are in it), so neither ever sees it go: a small process waits on the
//! container init's pidfd and stops the helper when the init exits, and exits itself when
//! the helper does.
//!
//! The watcher is a double fork of the caller (a session of its own, reparented at once,
//! so the caller reaps nothing later). The caller may be multithreaded: after the fork
//! only async-signal-safe calls run (raw syscalls on fds and buffers made before it), no
//! allocation, no locks.

use crate::sys;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// What the watcher watches.
pub enum Helper {
    /// A helper that runs already (pasta, daemonized): its pidfd.
    Running(OwnedFd),
    /// A helper the watcher starts as its own child (slirp4netns): `argv[0]` is an
    /// absolute path; `keep` becomes its fd 3; stdout and stderr go to `log`.
    Start {
        argv: Vec<CString>,
        keep: OwnedFd,
        log: OwnedFd,
    },
}

/// Starts the watcher of `helper` for the init behind `init` (a pidfd); returns the pid
/// of the helper it started (0 for [`Helper::Running`]).
pub fn start(init: &OwnedFd, helper: &Helper) -> io::Result<i32> {
    // The started helper's pid comes back over this pipe.
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let argv_ptrs: Vec<*const libc::c_char> = match helper {
        Helper::Start { argv, .. } => argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        Helper::Running(_) => Vec::new(),
    };
    let path = c"PATH=/usr/local/bin:/usr/bin:/bin";
    let envp = [path.as_ptr(), std::ptr::null()];
    let null = c"/dev/null";
    // SAFETY: fork in a possibly multithreaded caller: the child runs only
    // async-signal-safe syscalls on memory prepared above, then exits.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return Err(io::Error::last_os_error());
    }
    if first == 0 {
        // SAFETY: see above; the intermediate only makes a session and forks again.
        unsafe {
            libc::setsid();
            if libc::fork() == 0 {
                watcher(
                    init,
                    helper,
                    report_w.as_raw_fd(),
                    &argv_ptrs,
                    &envp,
                    null.as_ptr(),
                );
            }
            libc::_exit(0);
        }
    }
    drop(report_w);
    // The intermediate exits at once.
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(first), None)?;
    if let Helper::Running(_) = helper {
        return Ok(0);
    }
    let mut pid = [0u8; 4];
    let n = nix::unistd::read(&report_r, &mut pid)?;
    if n != 4 {
        return Err(io::Error::other("the watcher could not start the helper"));
    }
    Ok(i32::from_ne_bytes(pid))
}

/// The watcher: never returns.
///
/// # Safety
/// Only in the fork of [`start`]: async-signal-safe calls only.
unsafe fn watcher(
    init: &OwnedFd,
    helper: &Helper,
    report: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    null: *const libc::c_char,
) -> ! {
    // SAFETY (whole body): raw syscalls on fds this process holds and on the buffers
    // `start` prepared before the fork.
    unsafe {
        let dev_null = libc::open(null, libc::O_RDWR | libc::O_CLOEXEC);
        let helper_fd = match helper {
            Helper::Running(fd) => fd.as_raw_fd(),
            Helper::Start { keep, log, .. } => {
                let child = libc::fork();
                if child == 0 {
                    // The helper: fd 3 the kept fd, stdio the log, nothing else.
                    libc::dup2(dev_null, 0);
                    libc::dup2(log.as_raw_fd(), 1);
                    libc::dup2(log.as_raw_fd(), 2);
                    if keep.as_raw_fd() == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0);
                    } else {
                        libc::dup2(keep.as_raw_fd(), 3);
                    }
                    let _ = sys::close_fds(4, RawFd::MAX);
                    libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                    libc::_exit(127);
                }
                let bytes = child.to_ne_bytes();
                libc::write(report, bytes.as_ptr().cast(), 4);
                libc::syscall(libc::SYS_pidfd_open, child, 0) as RawFd
            }
        };
        // Nothing of the caller's stays open for the container's lifetime.
        keep_only(&[init.as_raw_fd(), helper_fd]);
        let mut fds = [
            libc::pollfd {
                fd: init.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: helper_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {}
        if fds[1].revents == 0 {
            // The container is gone, the helper not: kill it at once. Neither helper has
            // anything to save, pasta ignores SIGTERM, and its listeners would refuse the
            // ports of the container's next run (a restart, `run --rm` again).
            let _ = sys::pidfd_send_signal(helper.as_fd_or(helper_fd), libc::SIGKILL);
        }
        // Our own child, reaped.
        if let Helper::Start { .. } = helper {
            let mut status = 0;
            libc::wait(&mut status);
        }
        libc::_exit(0)
    }
}

/// Closes every fd but `keep` (two of them). Async-signal-safe.
fn keep_only(keep: &[RawFd; 2]) {
    let (lo, hi) = if keep[0] < keep[1] {
        (keep[0], keep[1])
    } else {
        (keep[1], keep[0])
    };
    if lo > 0 {
        let _ = sys::close_fds(0, lo - 1);
    }
    if hi > lo + 1 {
        let _ = sys::close_fds(lo + 1, hi - 1);
    }
    let _ = sys::close_fds(hi + 1, RawFd::MAX);
}

trait FdOr {
    fn as_fd_or(&self, raw: RawFd) -> std::os::fd::BorrowedFd<'_>;
}

impl FdOr for Helper {
    /// The helper's pidfd: its own, or `raw` (the one the watcher opened).
    fn as_fd_or(&self, raw: RawFd) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Helper::Running(fd) => fd.as_fd(),
            // SAFETY: `raw` is open in the watcher for its lifetime (it never closes it).
            Helper::Start { .. } => unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
        }
    }
}
