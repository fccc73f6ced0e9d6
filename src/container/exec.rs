//! `exec`: a new process in a running container's namespaces, cgroups, seccomp filter
//! and limits (like `runc exec`).

use super::error::Error;
use super::exe;
use super::init::{Init, Netns};
use super::process::{ExecProcess, apply_limits, compile_seccomp, process_plan, wait_pidfd};
use super::protocol::tag;
use super::spawn::{console_for, expect, ns_info, open_ns, send, spawn};
use super::state::Record;
use oci_spec::runtime::{LinuxNamespaceType, Process};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Options for [`Container::exec`](super::Container::exec).
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub console_socket: Option<PathBuf>,
    pub console_fd: Option<OwnedFd>,
    pub stdio: [Option<OwnedFd>; 3],
    pub preserve_fds: u32,
    pub pid_file: Option<PathBuf>,
}

/// Runs `process` in the container whose init `record` describes.
pub(super) fn exec_in(
    record: &Record,
    process: &Process,
    opts: &mut ExecOptions,
) -> Result<ExecProcess, Error> {
    let pid = record.pid;
    let (join, user) = namespaces_of(pid)?;
    // A container in our mount namespace is only chrooted (see create): so is the process.
    let root_fd = if join.iter().any(|(_, flag)| *flag == libc::CLONE_NEWNS) {
        None
    } else {
        let path = PathBuf::from(format!("/proc/{pid}/root"));
        Some(open_path(&path)?)
    };
    let uid_ranges = if user {
        Some(uid_ranges_of(pid)?)
    } else {
        None
    };
    exe::check(uid_ranges.as_deref())?;
    let setgroups = std::fs::read_to_string(format!("/proc/{pid}/setgroups"))
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    let proc_plan = process_plan(process, setgroups)?;
    // The container's filter, as its init has it (`process` has no profile of its own).
    let seccomp = compile_seccomp(record.seccomp.as_ref())?;
    let cgroups = init_cgroups(pid)?;
    let console = console_for(
        &proc_plan,
        &mut opts.console_fd,
        opts.console_socket.as_deref(),
    )?;
    let mut init = Init {
        join,
        unshare: 0,
        early_unshare: 0,
        new_userns: false,
        nest: None,
        nest_flags: 0,
        netns: Netns::Keep,
        hostname: None,
        domainname: None,
        rootfs: None,
        chroot: None,
        chroot_cgroupns: false,
        cgroup_wait: false,
        cgroup_tasks: Vec::new(),
        root_fd,
        process: proc_plan,
        parent: 0,
        sync: -1,
        fifo: None,
        seccomp,
        stdio: [0, 1, 2].map(|i| opts.stdio[i].as_ref().map(|f| f.as_raw_fd())),
        console_socket: console.as_ref().map(|f| f.as_raw_fd()),
        preserve_fds: opts.preserve_fds as i32,
        hooks: false,
        fork_after_join: true,
        exec: true,
        start_hooks: Vec::new(),
        start_state: None,
        keep: Vec::new(),
    };
    let (mid, mid_fd, sock, _) = spawn(&mut init, 0, None)?;
    let reap_mid = || {
        let _ = crate::sys::pidfd_send_signal(mid_fd.as_fd(), libc::SIGKILL);
        let _ = wait_pidfd(mid_fd.as_fd());
    };
    // Until GO the child waits in our namespaces with our credentials: it joins the
    // container's cgroups and gets its limits now, and the process it forks in the
    // container inherits both before it can run anything.
    let prepared = join_cgroups(&cgroups, mid, record.cgroup.is_some())
        .and_then(|()| apply_limits(mid, process, user))
        .and_then(|()| send(&sock, tag::GO));
    if let Err(e) = prepared {
        reap_mid();
        return Err(e);
    }
    let target = match expect(&sock, None, &init, "exec") {
        Ok(Some(m)) if m.tag == tag::PID => m.a,
        Ok(_) => {
            reap_mid();
            return Err(Error::InitDied("exec"));
        }
        Err(e) => {
            reap_mid();
            return Err(e);
        }
    };
    let _ = wait_pidfd(mid_fd.as_fd());
    let pidfd = crate::sys::pidfd_open(target).map_err(Error::io("pidfd_open"))?;
    if let Some(p) = &opts.pid_file {
        crate::atomic::write(p, target.to_string().as_bytes())
            .map_err(Error::io(format!("write {}", p.display())))?;
    }
    // The grandchild waits for nothing more; EOF when it execs.
    if let Some(m) = expect(&sock, None, &init, "exec")? {
        let _ = m;
    }
    drop(console);
    Ok(ExecProcess { pid: target, pidfd })
}

/// The namespaces of `pid` this process is not in, to join (user namespace first), and
/// whether its user namespace is one of them.
fn namespaces_of(pid: i32) -> Result<(Vec<(OwnedFd, libc::c_int)>, bool), Error> {
    let mut join = Vec::new();
    let mut user = false;
    for t in [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Time,
    ] {
        let (name, flag) = ns_info(t);
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        if let (Ok(a), Ok(b)) = (theirs, ours) {
            use std::os::unix::fs::MetadataExt;
            if a.ino() != b.ino() || a.dev() != b.dev() {
                let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
                join.push((open_ns(&path, "exec namespace")?, flag));
                user |= t == LinuxNamespaceType::User;
            }
        }
    }
    Ok((join, user))
}

/// An `O_PATH` directory fd of `path`.
fn open_path(path: &Path) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open {}", path.display()))(e.into()))
}

/// The host uid ranges `(first, count)` mapped in the user namespace of `pid`.
fn uid_ranges_of(pid: i32) -> Result<Vec<(u32, u32)>, Error> {
    let path = format!("/proc/{pid}/uid_map");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("read {path}")))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[1], f[2]))
        })
        .collect())
}

/// The `cgroup.procs` files of the cgroups `pid` is in, one per hierarchy (v1
/// controllers, named v1 hierarchies, the v2 tree), from `/proc/PID/cgroup` and where
/// this process sees each hierarchy mounted. Hierarchies this process shares with `pid`
/// are left out (nothing to join).
fn init_cgroups(pid: i32) -> Result<Vec<PathBuf>, Error> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(Error::io(format!("read {p}")));
    let theirs = read(&format!("/proc/{pid}/cgroup"))?;
    let ours = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in theirs.lines() {
        if ours.lines().any(|l| l == line) {
            continue;
        }
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if path.split('/').any(|c| c == "..") {
            return Err(Error::io(format!("cgroup of container init {pid}"))(
                std::io::Error::other(format!("{line:?} is outside this cgroup namespace")),
            ));
        }
        let Some(dir) = cgroup_mount(&mountinfo, controllers, path) else {
            // A hierarchy not mounted here (e.g. a v1 one on a v2 host): nothing to write.
            continue;
        };
        out.push(dir.join("cgroup.procs"));
    }
    Ok(out)
}

/// Where the cgroup `path` of the hierarchy with `controllers` (`""`: v2) is, from a
/// mount of that hierarchy in `mountinfo` whose root contains it.
fn cgroup_mount(mountinfo: &str, controllers: &str, path: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point, fstype, options) = (left[3], left[4], right[0], right[2]);
        let matches = if controllers.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && {
                let opts: Vec<&str> = options.split(',').collect();
                controllers.split(',').all(|c| opts.contains(&c))
            }
        };
        if !matches {
            continue;
        }
        let rest = if root == "/" {
            path.trim_start_matches('/')
        } else {
            match path.strip_prefix(root) {
                Some(r) if r.is_empty() || r.starts_with('/') => r.trim_start_matches('/'),
                _ => continue,
            }
        };
        return Some(Path::new(&unescape_mountinfo(mount_point)).join(rest));
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves `pid` into each cgroup of `procs`. Rootless without a cgroup of its own (no
/// limits to escape) a hierarchy we may not write is left alone, like runc does.
fn join_cgroups(procs: &[PathBuf], pid: i32, managed: bool) -> Result<(), Error> {
    for path in procs {
        if let Err(e) = std::fs::write(path, pid.to_string()) {
            let denied = matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            );
            if denied && !managed && !crate::dirs::is_root() {
                tracing::debug!("exec: cannot join {}: {e}", path.display());
                continue;
            }
            return Err(Error::io(format!("join {}", path.display()))(e));
        }
    }
    Ok(())
}
