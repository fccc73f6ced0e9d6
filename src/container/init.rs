//! The container's first process between clone and exec. Everything it uses is prepared
//! by the parent in [`Init`]; the child allocates nothing and takes no lock, so a
//! multithreaded host can call it. It talks to the parent over a SEQPACKET socket with
//! fixed-size messages (`protocol`) and reports a failure as (step, errno,
//! index). Its syscall helpers are in `child`, its mounts in
//! [`super::rootfs::Plan`]'s apply half.

use super::caps::CapSets;
pub use super::child::NOT_FOUND;
use super::child::{
    self, FdPath, ProcPath, StartHook, close, errno, find_program, last_errno, run_hook, send_fd,
    set_rlimits,
};
use super::protocol::{Fail, Msg, Step, recv, send, tag};
use super::rootfs;
use super::seccomp::SeccompProgram;
use crate::idmap::keeper::Nest;
use crate::sys;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub use super::child::CArray;

/// The process to exec and the identity it runs with.
pub struct Process {
    pub argv: CArray,
    pub envp: CArray,
    /// `args[0]` as configured (for messages; the child does not use it).
    pub prog: String,
    /// Where to look for argv[0]: itself when it has a '/', else each `$PATH` entry.
    pub candidates: Vec<CString>,
    pub cwd: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    /// False when the user namespace has `setgroups` denied (a single-id mapping).
    pub setgroups: bool,
    pub umask: Option<libc::mode_t>,
    /// `process.rlimits` as (resource, limit), set by the child before it changes uid.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    pub caps: CapSets,
    pub no_new_privileges: bool,
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    /// Run a minimal init as pid 1 that reaps zombies and forwards signals to the
    /// workload (`--init`), for workloads that are not a proper init.
    pub init: bool,
}

/// What the child does about its network namespace beyond [`Init::join`].
pub enum Netns {
    /// Nothing.
    Keep,
    /// Clone or the early unshare makes a new one: bring its `lo` up (like crun), once in
    /// it and privileged there.
    New,
    /// One made beside the clone, `lo` up (`net::netns::make_beside`): joined first thing.
    Made(OwnedFd),
}

/// Everything the child needs, prepared by the parent.
pub struct Init {
    /// Namespaces to join, user namespace first: (fd, CLONE_NEW*).
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// Namespaces to unshare after joining (when a user namespace was joined by path, so
    /// the new ones belong to it).
    pub unshare: libc::c_int,
    /// Namespaces to unshare in a user namespace clone just made, before GO: creating
    /// them (the network one takes a millisecond, the mount one copies the host's mount
    /// table) overlaps the parent's newuidmap and newgidmap instead of delaying their
    /// start, and they belong to the new user namespace as if clone made them.
    pub early_unshare: libc::c_int,
    /// A new user namespace was created by clone: become its root after GO.
    pub new_userns: bool,
    /// The new user namespace is made inside the caller's kept one (`idmap::keeper`):
    /// the cloned child joins it, clones the init with `nest_flags` (the namespaces),
    /// writes the init's id maps, reports its pid and exits.
    pub nest: Option<Nest>,
    pub nest_flags: libc::c_int,
    /// What the child does about its network namespace beyond `join`.
    pub netns: Netns,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    pub rootfs: Option<rootfs::Plan>,
    /// Without a mount namespace of its own (no `rootfs` plan): the rootfs to chroot
    /// into, as runc does; nothing is mounted.
    pub chroot: Option<CString>,
    /// With `chroot`: unshare the cgroup namespace first (the plan does it otherwise).
    pub chroot_cgroupns: bool,
    /// Wait for the parent's CGROUP (the init joined its cgroup) before making the
    /// cgroup namespace: the mounts before it overlap the join.
    pub cgroup_wait: bool,
    /// v1 `tasks` files to write `0` to after GO: the child joins those cgroups itself,
    /// made by the parent while it was cloned (`cgroup::Deferred`).
    pub cgroup_tasks: Vec<CString>,
    /// exec: an `O_PATH` fd of the container's root to chroot into after joining its
    /// namespaces (a container that shares our mount namespace is only chrooted).
    pub root_fd: Option<OwnedFd>,
    pub process: Process,
    /// The parent's pid, to notice it died before PR_SET_PDEATHSIG took effect.
    pub parent: libc::pid_t,
    pub sync: RawFd,
    /// `O_PATH` fd of the exec fifo, and of the host's /proc to reopen it after pivot_root.
    pub fifo: Option<(OwnedFd, OwnedFd)>,
    pub seccomp: Option<SeccompProgram>,
    /// Descriptors to become 0, 1, 2 (`None`: keep the inherited one).
    pub stdio: [Option<RawFd>; 3],
    pub console_socket: Option<RawFd>,
    /// fds 3..3+N stay open across exec (LISTEN_FDS / --preserve-fds).
    pub preserve_fds: i32,
    /// Pause for createRuntime/createContainer hooks before pivot_root.
    pub hooks: bool,
    /// Fork once more after setns so the process lands in the joined pid namespace, and
    /// report its pid (exec, or create joining a pid namespace by path).
    pub fork_after_join: bool,
    /// exec into a running container: no READY/ACK handshake, nothing is recorded.
    pub exec: bool,
    /// startContainer hooks: run in the container after start, before the workload.
    pub start_hooks: Vec<StartHook>,
    /// A memfd the parent fills with the state (status `created`) before ACK: the
    /// startContainer hooks' stdin.
    pub start_state: Option<OwnedFd>,
    /// Every fd the child uses, sorted: all others (other containers' sockets and locks
    /// opened by other threads) are closed first thing.
    pub keep: Vec<RawFd>,
}

impl Init {
    /// The child's life. Never returns: execs the workload or exits with 127 after
    /// reporting a failure to the parent.
    pub fn run(&self) -> ! {
        if let Some(nest) = &self.nest {
            if let Err(f) = self.clone_nested(nest) {
                let _ = send(self.sync, f.to_msg());
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(127) }
            }
        }
        let fail = match self.setup() {
            Ok(never) => match never {},
            Err(f) => f,
        };
        let _ = send(self.sync, fail.to_msg());
        // SAFETY: _exit is async-signal-safe and skips atexit handlers of the parent's copy.
        unsafe { libc::_exit(127) }
    }

    /// Joins the kept user namespace and clones the init in a new one inside it (the
    /// caller's child, by CLONE_PARENT), then writes its maps as root of the kept one:
    /// returns in the init; this process reports the init's pid and exits.
    fn clone_nested(&self, nest: &Nest) -> Result<(), Fail> {
        sys::setns_raw(nest.userns.as_raw_fd(), libc::CLONE_NEWUSER)
            .map_err(|e| Fail::new(Step::UserNs, errno(e), 0))?;
        let flags = (self.nest_flags | libc::CLONE_PARENT) as u64;
        // SAFETY: this child of a clone runs async-signal-safe code only, and so does
        // its own child, which continues `run`.
        let pid = match unsafe { sys::clone3_fork(flags) } {
            Ok((0, _)) => return Ok(()),
            Ok((pid, _pidfd)) => pid,
            Err(e) => return Err(Fail::new(Step::Fork, errno(e), 0)),
        };
        let written = child::write_file(ProcPath::new(pid, b"uid_map").as_cstr(), &nest.uid_map)
            .map_err(|e| Fail::new(Step::UserNs, e, 1))
            .and_then(|()| {
                child::write_file(ProcPath::new(pid, b"gid_map").as_cstr(), &nest.gid_map)
                    .map_err(|e| Fail::new(Step::UserNs, e, 2))
            });
        let msg = match written {
            Ok(()) => Msg {
                tag: tag::PID,
                a: pid,
                ..Default::default()
            },
            Err(f) => {
                // SAFETY: kill with plain integers: the init we just made, unmapped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                f.to_msg()
            }
        };
        let _ = send(self.sync, msg);
        // SAFETY: plain exit.
        unsafe { libc::_exit(0) }
    }

    fn setup(&self) -> Result<std::convert::Infallible, Fail> {
        child::reset_signals();
        let mut next = 0;
        for &fd in &self.keep {
            if fd > next {
                let _ = sys::close_fds(next, fd - 1);
            }
            next = fd + 1;
        }
        let _ = sys::close_fds(next, RawFd::MAX);
        // SAFETY: prctl with plain integers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        // What needs no id map is done while the parent writes them (newuidmap and
        // newgidmap take milliseconds); a failure is reported after GO, when the parent
        // listens.
        let early = self.before_go();
        // A parent that died before PR_SET_PDEATHSIG took effect shows as EOF here.
        self.wait_for(tag::GO)?;
        self.join_cgroups()?;
        // Not dumpable from here until exec: nothing in the container can open /proc/PID/exe
        // (the runtime binary) or our memory while we hold host resources. Not before GO:
        // an unprivileged parent writes our /proc/PID/{setgroups,uid_map,gid_map}, which a
        // non-dumpable process gives to root.
        // SAFETY: prctl with plain integers.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let early = early?;
        if self.new_userns {
            become_root()?;
        }
        let root = match early {
            Early::Done(root) => root,
            Early::Pending(rootfs) => self.after_go(rootfs)?,
        };
        if let Some(plan) = &self.rootfs {
            let root = plan.apply(root, &|| self.wait_cgroup())?;
            if self.hooks {
                send(self.sync, Msg::tag(tag::HOOKS)).map_err(|e| Fail::new(Step::Sync, e, 0))?;
                self.wait_for(tag::HOOKS_DONE)?;
            }
            plan.pivot(root)?;
            plan.finish()?;
        } else if let Some(path) = &self.chroot {
            self.enter_chroot(path)?;
        }
        let p = &self.process;
        if p.terminal {
            self.console()?;
        }
        if !self.exec {
            send(self.sync, Msg::tag(tag::READY)).map_err(|e| Fail::new(Step::Sync, e, 0))?;
        }
        // While the parent records the state: nothing here runs the workload, and a
        // failure is read by the parent whatever it is waiting for.
        set_rlimits(&p.rlimits)?;
        // Like runc: without no_new_privs, installing a filter needs CAP_SYS_ADMIN, so it
        // goes in before the capability drop (what follows must pass it, as under runc);
        // with it, as late as possible.
        if !p.no_new_privileges {
            self.install_seccomp()?;
        }
        self.identity()?;
        // Now, as the workload's user in its cwd, so that a program that cannot run fails
        // `create` (like runc) rather than a started container that stops at once.
        let prog = find_program(&p.candidates)?;
        self.stdio()?;
        if !self.exec {
            self.wait_for(tag::ACK)?;
            // From here the container outlives the runtime that created it.
            // SAFETY: prctl with plain integers.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
            // Without an exec fifo (run) the parent waits for the exec itself, which
            // comes after this: it needs no separate word.
            if self.fifo.is_some() {
                send(self.sync, Msg::tag(tag::DETACHED))
                    .map_err(|e| Fail::new(Step::Sync, e, 1))?;
            }
        }
        if self.exec {
            // An exec'd process outlives the runtime (`exec --detach`), which waits for
            // the execve (EOF on the sync socket) or a failure before it returns.
            // SAFETY: prctl with plain integers.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        }
        if let Some((fifo, proc)) = &self.fifo {
            wait_start(fifo.as_raw_fd(), proc.as_raw_fd())?;
        }
        let state = self.start_state.as_ref().map_or(-1, |f| f.as_raw_fd());
        for (i, hook) in self.start_hooks.iter().enumerate() {
            run_hook(hook, state).map_err(|e| Fail::new(Step::Hook, e, i as u32))?;
        }
        sys::cloexec_range_from(3 + self.preserve_fds)
            .map_err(|e| Fail::new(Step::Stdio, errno(e), 3))?;
        if p.no_new_privileges {
            self.install_seccomp()?;
        }
        if p.init {
            child::mini_init().map_err(|e| Fail::new(Step::Fork, e, 1))?;
        }
        let path = &p.candidates[prog];
        // SAFETY: valid C string and NULL-terminated arrays prepared before fork.
        unsafe { libc::execve(path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
        Err(Fail::new(Step::Exec, last_errno(), prog as u32))
    }

    /// After GO, when namespaces were still to join or make (see [`Init::before_go`]):
    /// joins and makes them, forks into a joined pid namespace, sets the names and binds
    /// the root. `rootfs`: its `O_PATH` fd, or -1 when not open yet. Returns the new root
    /// mount's fd (or -1 without a rootfs).
    fn after_go(&self, mut rootfs: RawFd) -> Result<RawFd, Fail> {
        for (i, (fd, kind)) in self.join.iter().enumerate() {
            sys::setns_raw(fd.as_raw_fd(), *kind)
                .map_err(|e| Fail::new(Step::Setns, errno(e), i as u32))?;
            if *kind == libc::CLONE_NEWUSER {
                become_root()?;
            }
        }
        if self.unshare != 0 {
            // SAFETY: plain integers; this process is single-threaded.
            if unsafe { libc::unshare(self.unshare) } < 0 {
                return Err(Fail::new(Step::Unshare, last_errno(), 0));
            }
        }
        if let Some(root) = &self.root_fd {
            // SAFETY: a valid fd and C string.
            if unsafe { libc::fchdir(root.as_raw_fd()) } < 0
                || unsafe { libc::chroot(c".".as_ptr()) } < 0
            {
                return Err(Fail::new(Step::PivotRoot, last_errno(), 2));
            }
        }
        if let Some(plan) = &self.rootfs {
            if rootfs < 0 {
                rootfs = plan.open_root()?;
            }
        }
        if self.fork_after_join {
            self.fork_into_joined()?;
        }
        self.names()?;
        match &self.rootfs {
            Some(plan) => plan.bind_root(rootfs),
            None => Ok(-1),
        }
    }

    /// Before GO, in a child whose new namespaces all belong to it (clone made them, or
    /// the early unshare): the early unshare, `lo`, host and domain names, and the root
    /// bind. None of it needs an id map or the cgroup: no inode is created and no inode
    /// permission is checked, only capabilities over namespaces this process owns (which
    /// it holds in full in its new user namespace before any map exists). Mounts inside
    /// the rootfs wait for GO: they create mount points and tmpfs roots owned by the
    /// mapped root and need its access to the image's files.
    fn before_go(&self) -> Result<Early, Fail> {
        if let Netns::Made(fd) = &self.netns {
            sys::setns_raw(fd.as_raw_fd(), libc::CLONE_NEWNET)
                .map_err(|e| Fail::new(Step::Loopback, errno(e), 1))?;
        }
        if self.early_unshare != 0 {
            // SAFETY: plain integers; this process is single-threaded.
            if unsafe { libc::unshare(self.early_unshare) } < 0 {
                return Err(Fail::new(Step::Unshare, last_errno(), 0));
            }
        }
        // The rootfs is looked up with the caller's credentials, in the container's mount
        // namespace: now when it exists, else after the unshare that makes it (after GO).
        let rootfs = match &self.rootfs {
            Some(plan) if self.unshare & libc::CLONE_NEWNS == 0 => match plan.open_root() {
                // A way only the mapped ids may take (podman --userns=auto hands its
                // storage to them): looked up again once the maps are written.
                Err(f) if self.new_userns && f.errno == libc::EACCES => -1,
                r => r?,
            },
            _ => -1,
        };
        let late_root = self.rootfs.as_ref().is_some_and(|p| p.root_after_go());
        if !self.join.is_empty()
            || self.unshare != 0
            || self.fork_after_join
            || rootfs < 0
            || late_root
        {
            return Ok(Early::Pending(rootfs));
        }
        self.names()?;
        match &self.rootfs {
            Some(plan) => Ok(Early::Done(plan.bind_root(rootfs)?)),
            None => Ok(Early::Done(-1)),
        }
    }

    /// `lo` up in a new network namespace, the host and domain names.
    fn names(&self) -> Result<(), Fail> {
        if let Netns::New = self.netns {
            sys::set_link_up(c"lo").map_err(|e| Fail::new(Step::Loopback, errno(e), 0))?;
        }
        if let Some(h) = &self.hostname {
            // SAFETY: valid buffer and length.
            if unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) } < 0 {
                return Err(Fail::new(Step::Hostname, last_errno(), 0));
            }
        }
        if let Some(d) = &self.domainname {
            // SAFETY: valid buffer and length.
            if unsafe { libc::setdomainname(d.as_ptr(), d.as_bytes().len()) } < 0 {
                return Err(Fail::new(Step::Hostname, last_errno(), 1));
            }
        }
        Ok(())
    }

    /// Forks once more so the process that goes on is in the joined pid namespace; the
    /// parent side reports its pid and exits.
    fn fork_into_joined(&self) -> Result<(), Fail> {
        // CLONE_PARENT: the process that goes on is the caller's child (it can wait for
        // it) and lands in the joined pid namespace.
        // SAFETY: this process is single-threaded; the child continues the setup.
        let pid = match unsafe { sys::clone3_fork(libc::CLONE_PARENT as u64) } {
            Ok((pid, _pidfd)) => pid,
            Err(e) => return Err(Fail::new(Step::Fork, errno(e), 0)),
        };
        if pid > 0 {
            let _ = send(
                self.sync,
                Msg {
                    tag: tag::PID,
                    a: pid,
                    ..Default::default()
                },
            );
            // SAFETY: plain exit.
            unsafe { libc::_exit(0) }
        }
        // SAFETY: prctl with plain integers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        Ok(())
    }

    /// The rootfs of a container without a mount namespace of its own: the cgroup
    /// namespace, the create hooks (as before pivot_root), then chroot.
    fn enter_chroot(&self, path: &CStr) -> Result<(), Fail> {
        if self.chroot_cgroupns {
            self.wait_cgroup()?;
            // SAFETY: a plain flag; this process is single-threaded.
            if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } < 0 {
                return Err(Fail::new(Step::Unshare, last_errno(), 1));
            }
        }
        if self.hooks {
            send(self.sync, Msg::tag(tag::HOOKS)).map_err(|e| Fail::new(Step::Sync, e, 0))?;
            self.wait_for(tag::HOOKS_DONE)?;
        }
        // SAFETY: valid C strings.
        if unsafe { libc::chroot(path.as_ptr()) } < 0 || unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
            return Err(Fail::new(Step::PivotRoot, last_errno(), 1));
        }
        Ok(())
    }

    /// Before the cgroup namespace is made: the parent's word that we are in our cgroup.
    fn wait_cgroup(&self) -> Result<(), Fail> {
        if self.cgroup_wait {
            self.wait_for(tag::CGROUP)?;
        }
        Ok(())
    }

    fn install_seccomp(&self) -> Result<(), Fail> {
        match &self.seccomp {
            Some(prog) => prog
                .install()
                .map_err(|e| Fail::new(Step::Seccomp, e as i32, 0)),
            None => Ok(()),
        }
    }

    /// Moves this process into each of `cgroup_tasks` (a thread moving itself takes no
    /// global lock: see `cgroup::born`); its children are born there.
    fn join_cgroups(&self) -> Result<(), Fail> {
        for (i, tasks) in self.cgroup_tasks.iter().enumerate() {
            child::write_file(tasks, b"0").map_err(|e| Fail::new(Step::Cgroup, e, i as u32))?;
        }
        Ok(())
    }

    fn wait_for(&self, want: u32) -> Result<(), Fail> {
        match recv(self.sync) {
            Ok(Some(m)) if m.tag == want => Ok(()),
            Ok(_) => Err(Fail::new(Step::Sync, libc::EPIPE, want)),
            Err(e) => Err(Fail::new(Step::Sync, e, want)),
        }
    }

    /// User, groups, capabilities, no_new_privs, cwd, umask.
    fn identity(&self) -> Result<(), Fail> {
        let p = &self.process;
        let caps = p.caps;
        // SAFETY: prctl with plain integers (each call below as well).
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        for cap in 0..=caps.last as u32 {
            if caps.bounding & (1u64 << cap) == 0 {
                // SAFETY: as above.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r < 0 && last_errno() != libc::EINVAL {
                    return Err(Fail::new(Step::Capabilities, last_errno(), cap));
                }
            }
        }
        if p.setgroups {
            sys::setgroups_raw(&p.groups).map_err(|e| Fail::new(Step::Groups, errno(e), 0))?;
        } else if !p.groups.is_empty() {
            return Err(Fail::new(Step::Groups, libc::EPERM, 1));
        }
        sys::setresgid_raw(p.gid).map_err(|e| Fail::new(Step::Setgid, errno(e), p.gid))?;
        sys::setresuid_raw(p.uid).map_err(|e| Fail::new(Step::Setuid, errno(e), p.uid))?;
        // The cwd may only be reachable as the target user.
        // SAFETY: valid C string.
        if unsafe { libc::chdir(p.cwd.as_ptr()) } < 0 {
            return Err(Fail::new(Step::Cwd, last_errno(), 0));
        }
        sys::capset(caps.effective, caps.permitted, caps.inheritable)
            .map_err(|e| Fail::new(Step::Capabilities, errno(e), u32::MAX))?;
        // SAFETY: prctl with plain integers.
        unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
        }
        for cap in 0..=caps.last as u32 {
            if caps.ambient & (1u64 << cap) != 0 {
                // Like runc: a capability that cannot be ambient (not inheritable) is skipped.
                // SAFETY: prctl with plain integers.
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        cap as libc::c_ulong,
                        0,
                        0,
                    )
                };
            }
        }
        if p.no_new_privileges {
            // SAFETY: prctl with plain integers.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return Err(Fail::new(Step::NoNewPrivileges, last_errno(), 0));
            }
        }
        if let Some(mask) = p.umask {
            // SAFETY: plain integer.
            unsafe { libc::umask(mask) };
        }
        Ok(())
    }

    fn stdio(&self) -> Result<(), Fail> {
        // Move the sources out of 0..2 first so a dup2 cannot clobber a later source.
        let mut moved = [-1; 3];
        for (i, fd) in self.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                // SAFETY: plain fcntl on an fd we were given.
                let n = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
                if n < 0 {
                    return Err(Fail::new(Step::Stdio, last_errno(), i as u32));
                }
                moved[i] = n;
            }
        }
        for (i, fd) in moved.iter().enumerate() {
            if *fd >= 0 {
                // SAFETY: dup2 onto a standard fd (clears O_CLOEXEC on the copy).
                if unsafe { libc::dup2(*fd, i as RawFd) } < 0 {
                    return Err(Fail::new(Step::Stdio, last_errno(), i as u32));
                }
                close(*fd);
            }
        }
        Ok(())
    }

    /// A new pty: its master goes to the console socket, its slave becomes stdio and the
    /// controlling terminal.
    fn console(&self) -> Result<(), Fail> {
        let f = |e, i| Fail::new(Step::Console, e, i);
        // SAFETY: valid C string.
        let master = unsafe {
            libc::open(
                c"/dev/pts/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        let master = if master < 0 {
            // SAFETY: valid C string.
            let m = unsafe {
                libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            };
            if m < 0 {
                return Err(f(last_errno(), 0));
            }
            m
        } else {
            master
        };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK takes a pointer to int.
        if unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) } < 0 {
            return Err(f(last_errno(), 1));
        }
        if let Some((rows, cols)) = self.process.console_size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ takes a pointer to winsize.
            unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
        }
        // SAFETY: TIOCGPTPEER returns a new fd for the slave.
        let slave = unsafe {
            libc::ioctl(
                master,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if slave < 0 {
            return Err(f(last_errno(), 2));
        }
        if let Some(sock) = self.console_socket {
            send_fd(sock, master).map_err(|e| f(e, 3))?;
        }
        close(master);
        // SAFETY: setsid and ioctl with plain arguments.
        unsafe {
            libc::setsid();
            if libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                return Err(f(last_errno(), 4));
            }
            for i in 0..3 {
                if libc::dup2(slave, i) < 0 {
                    return Err(f(last_errno(), 5));
                }
            }
        }
        close(slave);
        Ok(())
    }
}

/// Where the child stands at GO.
enum Early {
    /// Namespaces still to join or make: the rootfs's `O_PATH` fd (or -1).
    Pending(RawFd),
    /// Names set and the root bound: the new root mount's fd (or -1 without a rootfs).
    Done(RawFd),
}

/// After the parent wrote the id maps: uid/gid 0 of the new user namespace.
fn become_root() -> Result<(), Fail> {
    sys::setresgid_raw(0).map_err(|e| Fail::new(Step::Setgid, errno(e), 0))?;
    sys::setresuid_raw(0).map_err(|e| Fail::new(Step::Setuid, errno(e), 0))?;
    // A new effective uid clears the parent-death signal: arm it again. (A parent that
    // died in between shows as EOF on the sync socket.)
    // SAFETY: prctl with plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    Ok(())
}

/// Blocks until `start` opens the exec fifo: opens it for writing through the host's
/// /proc (the container may have none) and writes one byte.
fn wait_start(fifo: RawFd, proc: RawFd) -> Result<(), Fail> {
    let path = FdPath::new(fifo);
    // "/proc/self/fd/N" relative to the host /proc fd: skip the "/proc/" prefix.
    let rel = &path.as_cstr().to_bytes_with_nul()[6..];
    let rel = CStr::from_bytes_with_nul(rel).unwrap_or(c"self");
    // SAFETY: valid fd and C string.
    let fd = unsafe { libc::openat(proc, rel.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Fail::new(Step::ExecFifo, last_errno(), 0));
    }
    // SAFETY: one byte from a static buffer.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let e = last_errno();
    close(fd);
    if n != 1 {
        return Err(Fail::new(Step::ExecFifo, e, 1));
    }
    Ok(())
}
