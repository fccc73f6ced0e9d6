//! Waiting on a container process from the terminal: signals forwarded, a pty relayed.

use anyhow::{Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Signals the runtime forwards to the workload while it waits.
const FORWARD: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Restores the signal mask on drop.
pub struct Blocked(SigSet);
impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

pub fn block_signals() -> Result<(Blocked, SignalFd)> {
    let mut set = SigSet::empty();
    for s in FORWARD {
        set.add(*s);
    }
    let old = set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    Ok((Blocked(old), sfd))
}

pub fn console_pair() -> Result<(Option<OwnedFd>, Option<std::os::unix::net::UnixStream>)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    Ok((Some(OwnedFd::from(a)), Some(b)))
}

pub fn recv_master(sock: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the fd just arrived over SCM_RIGHTS: nothing else owns it.
                return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(*fd) });
            }
        }
    }
    bail!("the container sent no pty")
}

/// Waits for the process behind `pidfd`, forwarding signals, and proxying a pty between
/// this terminal and the workload when there is one. `copy_size`: give the pty this
/// terminal's size now (runc's way), for a pty not sized before the start.
pub fn supervise(
    pidfd: std::os::fd::BorrowedFd<'_>,
    sfd: &SignalFd,
    pty: Option<&OwnedFd>,
    copy_size: bool,
    wait: impl FnOnce() -> Result<std::process::ExitStatus>,
) -> Result<std::process::ExitStatus> {
    let stdin = std::io::stdin();
    let raw = match pty {
        Some(m) if nix::unistd::isatty(&stdin).unwrap_or(false) => {
            let saved = nix::sys::termios::tcgetattr(&stdin)?;
            let mut r = saved.clone();
            nix::sys::termios::cfmakeraw(&mut r);
            nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &r)?;
            if copy_size {
                copy_winsize(m);
            }
            Some(saved)
        }
        _ => None,
    };
    let mut stdin_open = pty.is_some();
    let mut master_open = pty.is_some();
    let mut buf = [0u8; 8192];
    let result = loop {
        let mut fds = vec![
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(m) = pty {
            fds.push(libc::pollfd {
                fd: if master_open { m.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(std::io::Error::last_os_error().into());
        }
        if fds[1].revents != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let Some(m) = pty {
                        copy_winsize(m);
                        continue;
                    }
                }
                let _ = warren::sys::pidfd_send_signal(pidfd, sig);
            }
        }
        if let Some(m) = pty {
            if master_open && fds[2].revents != 0 {
                match nix::unistd::read(m, &mut buf) {
                    Ok(0) | Err(_) => master_open = false,
                    Ok(k) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..k]);
                        let _ = out.flush();
                    }
                }
            }
            if stdin_open && fds[3].revents != 0 {
                match nix::unistd::read(&stdin, &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(k) => {
                        let _ = nix::unistd::write(m, &buf[..k]);
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            // Drain what the workload printed last.
            if let Some(m) = pty {
                let _ = nix::fcntl::fcntl(
                    m,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                );
                while master_open {
                    match nix::unistd::read(m, &mut buf) {
                        Ok(k) if k > 0 => {
                            let _ = std::io::stdout().write_all(&buf[..k]);
                        }
                        _ => master_open = false,
                    }
                }
                let _ = std::io::stdout().flush();
            }
            break wait();
        }
    };
    if let Some(saved) = raw {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &saved);
    }
    result
}

/// This terminal's size (rows, columns), when stdin is one.
pub fn winsize() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ with a valid winsize pointer.
    let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

fn copy_winsize(master: &OwnedFd) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize pointer.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}
