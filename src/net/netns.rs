//! Named network namespaces, as `ip netns` makes them: a new namespace pinned by a bind
//! mount of its `/proc/thread-self/ns/net` on a file, so it outlives the thread that made
//! it, and a container joins it by that path. The pins live in one directory that is a
//! shared mount of its own, so unpinning reaches every mount namespace that copied it.
//!
//! Work inside a namespace runs on a short-lived thread that joined it: the process
//! keeps its own namespace, and other threads are untouched.

use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: {what}")]
pub struct NetnsError {
    pub what: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> NetnsError {
    let (what, path) = (what.into(), path.to_path_buf());
    move |source| NetnsError { what, path, source }
}

/// Runs `f` on a thread that joined the network namespace `ns` (a pin or /proc path).
pub fn run_in<T: Send>(
    ns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, NetnsError> {
    let file = File::open(ns).map_err(err("open", ns))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(LinkNameSpaceType::Network),
            )
            .map_err(io::Error::from)
            .map_err(err("join", ns))?;
            f().map_err(err("configure", ns))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(err("configure", ns)(io::Error::other(
                "the thread panicked",
            )))
        })
    })
}

/// Makes `dir` a shared mount point of its own (once), as `ip netns` does for /run/netns.
fn ensure_pin_dir(dir: &Path) -> Result<(), NetnsError> {
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    let is_mount = crate::mount::shifted::is_mountpoint(dir)
        .map_err(|e| err("check", dir)(io::Error::other(e.to_string())))?;
    if !is_mount {
        rustix::mount::mount_bind(dir, dir).map_err(|e| err("bind-mount", dir)(e.into()))?;
    }
    rustix::mount::mount_change(dir, MountPropagationFlags::SHARED)
        .map_err(|e| err("make shared", dir)(e.into()))
}

/// Creates a network namespace pinned at `pin` (a file in its directory), with loopback
/// up and the sysctls a container needs; an existing pin is replaced.
pub fn create(pin: &Path) -> Result<(), NetnsError> {
    let dir = pin
        .parent()
        .ok_or_else(|| err("locate", pin)(io::ErrorKind::InvalidInput.into()))?;
    ensure_pin_dir(dir)?;
    remove(pin)?;
    File::create(pin).map_err(err("create", pin))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: only CLONE_NEWNET: this thread's fd table and files stay shared.
            unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", pin)?;
            setup_inside()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")))
    });
    if let Err(e) = made {
        let _ = remove(pin);
        return Err(err("create", pin)(e));
    }
    Ok(())
}

/// A network namespace being made on a thread of its own (see [`make_beside`]).
pub struct Making(crate::sys::Beside<io::Result<OwnedFd>>);

/// Starts making a new network namespace with `lo` up, on a short-lived thread (the
/// process keeps its own); [`Making::finish`] gives an fd that holds it, for a process to
/// join. A new namespace (its loopback device, its sysctl tables) costs about as much as
/// everything else a container's start does before its clone: made beside, the two
/// overlap when another core is free.
pub fn make_beside() -> io::Result<Making> {
    let thread = crate::sys::spawn_beside(|| -> io::Result<OwnedFd> {
        // SAFETY: only CLONE_NEWNET: this thread's fd table and files stay shared.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
        crate::sys::set_link_up(c"lo")?;
        Ok(File::open("/proc/thread-self/ns/net")?.into())
    })?;
    Ok(Making(thread))
}

impl Making {
    /// Waits for the namespace.
    pub fn finish(self) -> io::Result<OwnedFd> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")))
    }
}

/// Inside a new namespace: loopback up; unprivileged ports from 0, so a container's root
/// (an unprivileged host uid) can bind port 80, as docker allows; ping for every group.
fn setup_inside() -> io::Result<()> {
    crate::sys::set_link_up(c"lo")?;
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
    Ok(())
}

/// Unpins and removes the namespace pinned at `pin` (gone already is not an error).
pub fn remove(pin: &Path) -> Result<(), NetnsError> {
    match rustix::mount::unmount(pin, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(err("unmount", pin)(e.into())),
    }
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove", pin)(e)),
        _ => Ok(()),
    }
}

/// The pins in `dir` (container names).
pub fn pins(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
