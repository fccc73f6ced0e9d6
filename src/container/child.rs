//! No-allocation helpers for the child between clone and exec (see `init`):
//! errno handling, `/proc/self/fd/N` names, mount(2) and friends on prepared C strings,
//! hooks, the mini init, rlimits and the program lookup. Nothing here allocates or takes
//! a lock; data comes prepared by the parent (a [`CArray`] is built before clone).

pub use super::protocol::last_errno;
use super::protocol::{Fail, Step};
use crate::sys;
pub use crate::sys::reset_signals;
use libc::c_ulong;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

/// A NULL-terminated array of C strings, built before fork.
pub struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl CArray {
    pub fn new(strings: Vec<CString>) -> CArray {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CArray {
            _strings: strings,
            ptrs,
        }
    }
    pub fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}

pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn close(fd: RawFd) {
    // SAFETY: closing an fd this code opened and no longer uses.
    unsafe { libc::close(fd) };
}

/// mount(2) on prepared C strings; the errno on failure.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    // SAFETY: valid C strings or NULL, as mount(2) allows.
    let r = unsafe {
        libc::mount(
            source.map_or(std::ptr::null(), CStr::as_ptr),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// Writes `n` in decimal at the start of `out` (10 bytes are enough); returns the length.
pub fn write_decimal(mut n: u32, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (o, d) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *o = *d;
    }
    len
}

/// `/proc/self/fd/N` in a stack buffer, the way to name an `O_PATH` fd to mount(2).
pub struct FdPath([u8; 32]);

impl FdPath {
    pub fn new(fd: RawFd) -> FdPath {
        let mut buf = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        write_decimal(fd.max(0) as u32, &mut buf[prefix.len()..]);
        FdPath(buf)
    }

    pub fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits.
        CStr::from_bytes_until_nul(&self.0).unwrap_or(c"/")
    }
}

/// `/proc/PID/NAME` in a stack buffer.
pub struct ProcPath([u8; 48]);

impl ProcPath {
    /// `name` is at most 16 bytes (a longer one is cut).
    pub fn new(pid: libc::pid_t, name: &[u8]) -> ProcPath {
        let mut buf = [0u8; 48];
        buf[..6].copy_from_slice(b"/proc/");
        let mut at = 6 + write_decimal(pid.max(0) as u32, &mut buf[6..]);
        buf[at] = b'/';
        at += 1;
        let n = name.len().min(16);
        buf[at..at + n].copy_from_slice(&name[..n]);
        ProcPath(buf)
    }

    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.0).unwrap_or(c"/")
    }
}

/// Writes `data` to an existing file.
pub fn write_file(path: &CStr, data: &[u8]) -> Result<(), i32> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: valid fd and buffer of the given length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = last_errno();
    close(fd);
    if n < 0 { Err(e) } else { Ok(()) }
}

/// A startContainer hook, prepared before clone.
pub struct StartHook {
    pub path: CString,
    pub argv: CArray,
    pub envp: CArray,
    /// Milliseconds, or -1 for none.
    pub timeout_ms: i32,
}

/// Runs one hook to completion with `state` (an fd of the state JSON, or -1) as its
/// stdin; a non-zero exit is ECANCELED, running past its timeout ETIMEDOUT (it is killed).
pub fn run_hook(hook: &StartHook, state: RawFd) -> Result<(), i32> {
    let (pid, pidfd) = fork_for_hook()?;
    if pid == 0 {
        // SAFETY: lseek/dup2 on an fd we hold; valid C string and NULL-terminated arrays
        // prepared before clone.
        unsafe {
            if state >= 0 {
                // Every hook reads the state from its start.
                libc::lseek(state, 0, libc::SEEK_SET);
                libc::dup2(state, 0);
            }
            libc::execve(hook.path.as_ptr(), hook.argv.as_ptr(), hook.envp.as_ptr());
            libc::_exit(127)
        }
    }
    if let Some(fd) = pidfd.as_ref().filter(|_| hook.timeout_ms >= 0) {
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            events: libc::POLLIN,
            revents: 0,
        };
        let r = loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, hook.timeout_ms) };
            if r >= 0 || last_errno() != libc::EINTR {
                break r;
            }
        };
        if r == 0 {
            // SAFETY: kill and waitpid of our own child with plain arguments.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(libc::ETIMEDOUT);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && last_errno() != libc::EINTR {
            return Err(last_errno());
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(libc::ECANCELED)
    }
}

/// Forks for a hook: `(0, None)` in the child, `(pid, pidfd)` in the parent. The
/// seccomp filter may already be in place (see `Init::setup`), and common profiles
/// (docker's, containers-common's) answer clone3 with ENOSYS: then plain clone, and
/// pidfd_open for the timeout.
fn fork_for_hook() -> Result<(libc::pid_t, Option<std::os::fd::OwnedFd>), i32> {
    // SAFETY: single-threaded here; the child only execs or exits.
    match unsafe { sys::clone3_fork(0) } {
        Ok(r) => return Ok(r),
        Err(e) if e.raw_os_error() != Some(libc::ENOSYS) => return Err(errno(e)),
        Err(_) => {}
    }
    // SAFETY: clone(SIGCHLD) is fork(2) without libc's bookkeeping, fine in this
    // single-threaded process whose child only execs or exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(last_errno());
    }
    if pid == 0 {
        return Ok((0, None));
    }
    // SAFETY: pidfd_open with plain integers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh fd only we own (when the call succeeded).
    let pidfd = (fd >= 0).then(|| unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd)
    });
    Ok((pid as libc::pid_t, pidfd))
}

/// The workload's pid, for the mini init's signal handler.
static WORKLOAD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = WORKLOAD.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forks: the child returns to exec the workload; this process stays as pid 1, forwards
/// signals to it, reaps every zombie and exits with the workload's status.
pub fn mini_init() -> Result<(), i32> {
    // SAFETY: this process is single-threaded now; the child only continues to exec.
    let pid = match unsafe { sys::clone3_fork(0) } {
        Ok((pid, _)) => pid,
        // The seccomp filter is in place, and the default profile answers clone3 with
        // ENOSYS: plain clone, which is fork(2) without libc's bookkeeping.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // SAFETY: as above; the child only continues to exec.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            if r < 0 {
                return Err(last_errno());
            }
            r as libc::pid_t
        }
        Err(e) => return Err(errno(e)),
    };
    if pid == 0 {
        return Ok(());
    }
    WORKLOAD.store(pid, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installing a handler that only calls kill(2); zeroed sigaction is valid.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = libc::SA_RESTART;
        for sig in 1..=64 {
            if !matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD | 32 | 33) {
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            // SAFETY: plain exit.
            unsafe { libc::_exit(code) }
        }
        if r < 0 && last_errno() == libc::ECHILD {
            // SAFETY: plain exit.
            unsafe { libc::_exit(127) }
        }
    }
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS), with a short name as payload.
pub fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    let mut payload = *b"/dev/ptmx";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // Space for one fd, aligned for cmsghdr.
    let mut cbuf = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: all-zero msghdr is valid; fields are filled below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = space;
    // SAFETY: the control buffer is large enough for one cmsghdr with one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: a fully initialised msghdr.
    if unsafe { libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `process.rlimits`, while this process still has the uid it was cloned with (like
/// runc: once the uid changed, lowering works but a failure would be EPERM-prone, and
/// RLIMIT_NPROC must be in place when setresuid counts the user's processes).
pub fn set_rlimits(limits: &[(libc::__rlimit_resource_t, libc::rlimit)]) -> Result<(), Fail> {
    for (i, (resource, lim)) in limits.iter().enumerate() {
        // SAFETY: a valid rlimit on the stack of this process.
        if unsafe { libc::setrlimit(*resource, lim) } < 0 {
            return Err(Fail::new(Step::Rlimit, last_errno(), i as u32));
        }
    }
    Ok(())
}

/// The index in `candidates` of the program to exec, like execvp (and runc's lookup): the
/// first regular file we may execute. Else ENOENT (index [`NOT_FOUND`]) when none exists,
/// or the error of the last one that exists but cannot be executed (a directory, no x
/// bit: EACCES).
pub fn find_program(candidates: &[CString]) -> Result<usize, Fail> {
    let mut fail = Fail::new(Step::Exec, libc::ENOENT, NOT_FOUND);
    for (i, c) in candidates.iter().enumerate() {
        // SAFETY: an all-zero stat is a valid out buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out pointer.
        if unsafe { libc::stat(c.as_ptr(), &mut st) } < 0 {
            let e = last_errno();
            if e != libc::ENOENT && e != libc::ENOTDIR {
                fail = Fail::new(Step::Exec, e, i as u32);
            }
            continue;
        }
        // SAFETY: valid C string.
        let executable = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
        if executable {
            return Ok(i);
        }
        fail = Fail::new(Step::Exec, libc::EACCES, i as u32);
    }
    Err(fail)
}

/// The index of a [`Step::Exec`] failure when no candidate exists.
pub const NOT_FOUND: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_are_built_on_the_stack() {
        assert_eq!(
            ProcPath::new(4242, b"uid_map").as_cstr(),
            c"/proc/4242/uid_map"
        );
        assert_eq!(
            ProcPath::new(i32::MAX, b"a_name_longer_than_sixteen").as_cstr(),
            c"/proc/2147483647/a_name_longer_th"
        );
        assert_eq!(FdPath::new(7).as_cstr(), c"/proc/self/fd/7");
    }
}
