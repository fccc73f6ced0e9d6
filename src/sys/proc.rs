//! Processes and credentials: pidfds, `clone3`, namespaces, ids, capabilities, seccomp,
//! fd ranges, and the loopback link of a new network namespace. `clone3`, `seccomp`,
//! `close_range` are raw syscalls (rustix lacks them).

use std::ffi::CStr;
use std::io;
use std::num::NonZeroI32;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use rustix::process::{Pid, PidfdFlags, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets, Gid, ThreadNameSpaceType, Uid};

use super::{borrow, check, owned};

// ---- pidfds ----

/// `pidfd_open(2)`: a pollable fd that becomes readable when `pid` exits.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// `pidfd_send_signal(2)`: signal the process behind `pidfd` without pid-reuse races.
/// Signal 0 checks that the process exists; it is a raw call, as rustix's `Signal`
/// cannot hold 0.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    if let Some(sig) = NonZeroI32::new(signal) {
        // SAFETY: the kernel checks the number; an invalid one is an EINVAL, not UB
        // (rustix passes it through unchanged).
        let sig = unsafe { Signal::from_raw_nonzero_unchecked(sig) };
        return Ok(rustix::process::pidfd_send_signal(pidfd, sig)?);
    }
    // SAFETY: valid fd; NULL siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })
    .map(drop)
}

// ---- creating the container's init ----

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(2)` used like `fork(2)` (same stack, SIGCHLD on exit) with namespace `flags`;
/// returns `(0, None)` in the child and `(pid, pidfd)` in the parent.
///
/// # Safety
/// In a multithreaded process the child may only run async-signal-safe code (no
/// allocation, no locks) until it execs or exits.
pub unsafe fn clone3_fork(flags: u64) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    // SAFETY: the caller's contract is ours.
    unsafe { clone3_fork_into(flags, None) }
}

/// [`clone3_fork`], the child born in the cgroup2 directory `cgroup` (`CLONE_INTO_CGROUP`:
/// no migration afterwards).
///
/// # Safety
/// As [`clone3_fork`].
pub unsafe fn clone3_fork_into(
    flags: u64,
    cgroup: Option<RawFd>,
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut pidfd: libc::c_int = -1;
    let into = cgroup.map_or(0, |_| CLONE_INTO_CGROUP);
    let args = CloneArgs {
        flags: flags | CLONE_PIDFD | into,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // With CLONE_PARENT the kernel takes the exit signal from the caller's parent.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; with stack 0 the child
    // continues on a copy of this stack like fork(2). The caller upholds the child's rules.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = check(ret)? as libc::pid_t;
    if pid == 0 {
        return Ok((0, None));
    }
    // SAFETY: the kernel stored a fresh pidfd that only we own.
    Ok((pid, Some(unsafe { OwnedFd::from_raw_fd(pidfd) })))
}

/// True when the user namespace `ns` is a child of the caller's own and owned by its
/// effective uid (`NS_GET_PARENT`, `NS_GET_OWNER_UID`): the caller has every capability
/// in it, and nobody else made it.
pub fn userns_is_own_child(ns: BorrowedFd<'_>) -> io::Result<bool> {
    const NS_GET_PARENT: libc::c_ulong = 0xb702;
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
    let mut owner: libc::uid_t = 0;
    // SAFETY: a valid fd and a pointer to a uid_t, which this ioctl fills.
    check(unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_OWNER_UID, &mut owner) } as libc::c_long)?;
    // SAFETY: a valid fd; the ioctl returns a new fd or -1.
    let parent = owned(unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT) } as libc::c_long)?;
    let (a, b) = (
        rustix::fs::fstat(&parent)?,
        rustix::fs::stat("/proc/self/ns/user")?,
    );
    Ok(
        owner == rustix::process::geteuid().as_raw()
            && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
    )
}

// ---- between clone and exec: every call here is async-signal-safe ----

/// No blocked signal and default dispositions: for a container's workload (the host may
/// block signals to forward them, and ignored ones would survive exec) and a detached
/// process a runtime forks. Async-signal-safe.
pub fn reset_signals() {
    // SAFETY: sigaction/sigprocmask with valid zeroed structures; async-signal-safe.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// `setns(2)` with a pidfd or namespace fd. Async-signal-safe.
pub fn setns_raw(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: used for this one call; a closed fd is only an EBADF from the kernel.
    let fd = unsafe { borrow(fd) };
    let kinds = ThreadNameSpaceType::from_bits_retain(nstype as u32);
    Ok(rustix::thread::move_into_thread_name_spaces(fd, kinds)?)
}

/// `setresuid(2)` for the calling thread only, by raw syscall. glibc's wrapper broadcasts
/// the change to every thread it knows of, which after a raw clone in a multithreaded
/// process waits forever for threads that do not exist in the child: use this between
/// clone and exec.
pub fn setresuid_raw(uid: libc::uid_t) -> io::Result<()> {
    let uid = Uid::from_raw_unchecked(uid);
    Ok(rustix::thread::set_thread_res_uid(uid, uid, uid)?)
}

/// `setresgid(2)` for the calling thread only (see [`setresuid_raw`]).
pub fn setresgid_raw(gid: libc::gid_t) -> io::Result<()> {
    let gid = Gid::from_raw_unchecked(gid);
    Ok(rustix::thread::set_thread_res_gid(gid, gid, gid)?)
}

/// `setgroups(2)` for the calling thread only (see [`setresuid_raw`]).
pub fn setgroups_raw(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `Gid` is `repr(transparent)` over `gid_t`: same size, alignment and values.
    let groups = unsafe { std::slice::from_raw_parts(groups.as_ptr().cast::<Gid>(), groups.len()) };
    Ok(rustix::thread::set_thread_groups(groups)?)
}

/// `capset(2)` (version 3) for the calling thread: 64-bit effective, permitted and
/// inheritable masks. Async-signal-safe.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let sets = CapabilitySets {
        effective: CapabilitySet::from_bits_retain(effective),
        permitted: CapabilitySet::from_bits_retain(permitted),
        inheritable: CapabilitySet::from_bits_retain(inheritable),
    };
    Ok(rustix::thread::set_capabilities(None, sets)?)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`. Async-signal-safe: one syscall, no
/// allocation, errno read from the thread's own slot.
pub fn seccomp_set_mode_filter(
    prog: &libc::sock_fprog,
    flags: libc::c_uint,
) -> Result<(), nix::errno::Errno> {
    // SAFETY: `prog` points to a valid sock_fprog whose filter array outlives the call; the
    // kernel copies the program before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            prog as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(ret).map(drop)
}

/// `close_range(2)` with `CLOSE_RANGE_CLOEXEC`: every fd from `first` up is closed at exec
/// (so a failed exec can still be reported). Async-signal-safe.
pub fn cloexec_range_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: only sets a flag on fds of this process.
    check(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(drop)
}

/// `close_range(2)` over `first..=last`. Async-signal-safe.
pub fn close_fds(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: closing fds of this process that the caller no longer uses.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) })
        .map(drop)
}

/// Sets `IFF_UP` on the network interface `name` (e.g. `lo`) of the calling thread's
/// network namespace.
pub fn set_link_up(name: &CStr) -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is owned at once.
    let sock =
        owned(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
                as libc::c_long,
        )?;
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: the flags member of the union is what SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
}

// ---- resources ----

/// How many files a pool of work may hold open at once: a quarter of the soft
/// `RLIMIT_NOFILE` (the rest is left to the caller's own fds), at least 1.
pub fn fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    usize::try_from(soft / 4).unwrap_or(usize::MAX).max(1)
}

/// A thread started by [`spawn_beside`]; dropped, it is waited for.
pub struct Beside<T> {
    thread: Option<std::thread::JoinHandle<T>>,
    /// The thread's work is done; it waits for `release` before it exits.
    done: Arc<std::sync::atomic::AtomicBool>,
    release: Arc<std::sync::atomic::AtomicBool>,
    /// The CPUs it may run on once joined (its creator's).
    cpus: Option<libc::cpu_set_t>,
}

/// Spawns `f` on a thread with a small stack, kept off the calling thread's CPU (see
/// [`Beside::move_off`]).
pub fn spawn_beside<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<Beside<T>> {
    let mut beside = spawn_small(f)?;
    beside.move_off();
    Ok(beside)
}

/// Spawns `f` on a thread with a small stack, wherever the scheduler puts it: for work
/// that fills the gaps while the caller waits (see [`spawn_beside`]).
///
/// The thread does not exit before it is joined: glibc sets an exited thread's affinity
/// by tid 0, which is the caller's own (the container's init, cloned next, would inherit
/// it). So it waits, parked, once its work is done (or has panicked).
pub fn spawn_small<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<Beside<T>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    struct Hold(Arc<AtomicBool>, Arc<AtomicBool>);
    impl Drop for Hold {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
            while !self.1.load(Ordering::Acquire) {
                std::thread::park();
            }
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let hold = Hold(done.clone(), release.clone());
    let thread = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let _hold = hold;
            f()
        })?;
    Ok(Beside {
        thread: Some(thread),
        done,
        release,
        cpus: None,
    })
}

impl<T> Beside<T> {
    /// Keeps the thread off the calling thread's CPU when another is allowed. A new thread
    /// is queued on its creator's CPU and runs once that one blocks; a woken creator may
    /// share its CPU with the thread too. Either way another core may idle meanwhile, and
    /// work meant to overlap the caller's would not. [`Beside::join`] lets it back (a core
    /// busy meanwhile should not hold it).
    pub fn move_off(&mut self) {
        use std::os::unix::thread::JoinHandleExt;
        if self.done.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Some(pthread) = self.thread.as_ref().map(|t| t.as_pthread_t()) else {
            return;
        };
        // SAFETY: cpu_set_t is plain old data; all-zero is an empty set.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a valid set of `size` bytes; sched_getcpu takes nothing.
        let (got, cpu) = unsafe {
            (
                libc::sched_getaffinity(0, size, &mut cpus),
                libc::sched_getcpu(),
            )
        };
        if got < 0 || cpu < 0 {
            return;
        }
        let mut others = cpus;
        // SAFETY: `cpu` is a CPU number the kernel gave, below CPU_SETSIZE.
        unsafe { libc::CPU_CLR(cpu as usize, &mut others) };
        // SAFETY: reads a valid set.
        if unsafe { libc::CPU_COUNT(&others) } == 0 {
            return;
        }
        // SAFETY: a live thread's handle (it exits only once released by `wait`) and a
        // valid set.
        if unsafe { libc::pthread_setaffinity_np(pthread, size, &others) } == 0 {
            self.cpus.get_or_insert(cpus);
        }
    }

    /// Waits for the thread's result.
    pub fn join(mut self) -> std::thread::Result<T> {
        self.wait()
            .unwrap_or_else(|| Err(Box::new("joined already")))
    }

    fn wait(&mut self) -> Option<std::thread::Result<T>> {
        use std::os::unix::thread::JoinHandleExt;
        use std::sync::atomic::Ordering;
        let thread = self.thread.take()?;
        let done = self.done.load(Ordering::Acquire);
        if let Some(cpus) = self.cpus.as_ref().filter(|_| !done) {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: a live thread's handle (it exits only once released, below) and a
            // valid set.
            unsafe { libc::pthread_setaffinity_np(thread.as_pthread_t(), size, cpus) };
        }
        self.release.store(true, Ordering::Release);
        thread.thread().unpark();
        Some(thread.join())
    }
}

impl<T> Drop for Beside<T> {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cpus() -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain old data; a valid set of its own size.
        unsafe {
            let mut cpus: libc::cpu_set_t = std::mem::zeroed();
            let got = libc::sched_getaffinity(0, std::mem::size_of_val(&cpus), &mut cpus);
            assert_eq!(got, 0, "sched_getaffinity");
            cpus
        }
    }

    fn same(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
        // SAFETY: reads two valid sets.
        (0..libc::CPU_SETSIZE as usize)
            .all(|i| unsafe { libc::CPU_ISSET(i, a) == libc::CPU_ISSET(i, b) })
    }

    /// A helper moved off after its work is done must not move its caller: glibc sets an
    /// exited thread's affinity by tid 0, the caller's own (a container's init cloned next
    /// inherited it). The helper stays alive, parked, until joined.
    #[test]
    fn moving_a_finished_helper_leaves_the_caller_alone() {
        let before = own_cpus();
        // SAFETY: reads a valid set.
        let n = unsafe { libc::CPU_COUNT(&before) };
        assert!(
            n >= 2,
            "needs two CPUs to tell a move from none; this process has {n}"
        );
        let mut helper = spawn_small(|| 7).expect("spawn");
        while !helper.done.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        helper.move_off();
        assert!(same(&own_cpus(), &before), "the caller was moved");
        let mut busy = spawn_beside(|| std::thread::sleep(std::time::Duration::from_millis(20)))
            .expect("spawn");
        busy.move_off();
        assert!(same(&own_cpus(), &before), "the caller was moved");
        busy.join().expect("join");
        assert_eq!(helper.join().expect("join"), 7);
        assert!(same(&own_cpus(), &before), "the caller was moved");
        // A helper that panicked is held as well.
        let mut failed =
            spawn_small(|| -> u8 { panic!("a helper's panic, on purpose") }).expect("spawn");
        while !failed.done.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        failed.move_off();
        assert!(same(&own_cpus(), &before), "the caller was moved");
        assert!(failed.join().is_err());
    }
}
