//! Keeping the runtime binary out of the containers' reach (CVE-2019-5736).
//!
//! Container processes are clones of the process that creates them (no re-exec: that
//! is why a container starts fast), so until the workload's execve their
//! `/proc/PID/exe` is the runtime binary, and a workload that execs a
//! `#!/proc/self/exe` script runs that binary inside the container. Any container
//! process may then open it through `/proc/PID/exe` and, if that reopened file is
//! writable, overwrite it: the next runtime invocation on the host runs the container's
//! code with the host's privileges.
//!
//! [`reexec_sealed`] makes the current process run from a binary no container can
//! write, at the cost of one execve: as root a detached read-only bind mount of the
//! binary (no copy; `/proc/PID/exe` then names a read-only mount that no mount
//! namespace holds, so a write open gets `EROFS` and nobody can remount it), else (a
//! rootless caller may not make mounts in the host's mount namespace) a sealed memfd
//! copy, as runc does. Container creation and exec check [`check`] and refuse with
//! [`super::Error::ExposedBinary`] otherwise: a process that links warren calls
//! [`reexec_sealed`] first thing in `main`, as the `warren` CLI does.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Set by [`reexec_sealed`] to the pid that re-executed itself (a pid survives execve,
/// a child inheriting the variable has another one): after the exec, a binary that is
/// still not protected is an error instead of a loop. The env alone is never trusted:
/// the protection is always checked on `/proc/self/exe` itself.
const MARKER: &str = "_WARREN_SEALED_EXE";

/// `MOUNT_ATTR_RDONLY` of mount_setattr(2).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `OPEN_TREE_CLONE` of open_tree(2).
const OPEN_TREE_CLONE: u32 = 1;
/// `MFD_EXEC` (Linux 6.3): needed to exec a memfd when `vm.memfd_noexec` is 1.
const MFD_EXEC: libc::c_uint = 0x10;
/// The seals that make a memfd immutable.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

#[derive(Debug, thiserror::Error)]
pub enum ExeError {
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "re-executed from a sealed copy, but /proc/self/exe ({0}) is still writable: refusing to loop"
    )]
    StillWritable(PathBuf),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ExeError {
    move |source| ExeError::Io { what, source }
}

/// How the running binary is kept from being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// It lives on a read-only mount (ours: a detached read-only bind).
    ReadOnlyMount,
    /// It is a memfd sealed against writes, shrinking and growing.
    SealedMemfd,
    /// Neither: whether a container can write it depends on its owner, mode and the
    /// container's id mapping (see [`check`]).
    None,
}

/// What `/proc/self/exe` is.
#[derive(Debug, Clone)]
pub struct Exe {
    pub protection: Protection,
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Inspects the running binary (the inode that runs, not a path to it). It need not be
/// readable (a root-owned 0711 binary run by a rootless user).
pub(crate) fn inspect() -> Result<Exe, ExeError> {
    let exe = std::path::Path::new("/proc/self/exe");
    let meta = std::fs::metadata(exe).map_err(io("stat /proc/self/exe"))?;
    let path = std::fs::read_link(exe).unwrap_or_default();
    // A memfd is readable by its owner; F_GET_SEALS fails with EINVAL on other files.
    let seals = std::fs::File::open(exe).map_or(-1, |f| {
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }
    });
    let read_only = nix::sys::statvfs::statvfs(exe)
        .map_err(|e| ExeError::Io {
            what: "statvfs /proc/self/exe",
            source: e.into(),
        })?
        .flags()
        .contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
    let protection = if seals >= 0 && seals & SEALS == SEALS {
        Protection::SealedMemfd
    } else if read_only {
        Protection::ReadOnlyMount
    } else {
        Protection::None
    };
    Ok(Exe {
        protection,
        path,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
    })
}

/// [`inspect`] once per process (the answer only changes with an execve).
pub(crate) fn current() -> Result<&'static Exe, &'static str> {
    static EXE: OnceLock<Result<Exe, String>> = OnceLock::new();
    EXE.get_or_init(|| inspect().map_err(|e| crate::error_line(&e)))
        .as_ref()
        .map_err(String::as_str)
}

/// Whether no process of a container whose user namespace maps host uids `uid_ranges`
/// (`(first, count)`; `None`: no user namespace of its own) can open the running binary
/// for writing: it is sealed, or its owner is not mapped (so no container process is its
/// owner or holds a capability over it) and no group or other write bit is set (a
/// process in a user namespace may keep unmapped supplementary groups).
pub(crate) fn unreachable(exe: &Exe, uid_ranges: Option<&[(u32, u32)]>) -> bool {
    if exe.protection != Protection::None {
        return true;
    }
    let Some(ranges) = uid_ranges else {
        return false;
    };
    let mapped = ranges
        .iter()
        .any(|&(first, count)| exe.uid >= first && (exe.uid - first) < count);
    !mapped && exe.mode & 0o022 == 0
}

/// Whether a container process can reach a clone of this process (`/proc/PID/exe`) before
/// it execs the workload. Not when the container is created and started in one step
/// (`run`: the state lock keeps `exec` out until the workload's execve) in a new pid
/// namespace (nothing else is in it), with no hook run inside the container and no
/// warren init staying on as pid 1. Only an exposed init needs a sealed binary: `run`
/// skips a second execve (~4 ms), as a process nothing can reach is no way in.
pub fn init_exposed(spec: &oci_spec::runtime::Spec, start: bool, init: bool) -> bool {
    use oci_spec::runtime::LinuxNamespaceType;
    let new_pid = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        });
    let hooks_inside = spec.hooks().as_ref().is_some_and(|h| {
        h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
    });
    !start || !new_pid || init || hooks_inside
}

/// Ok when a container mapping host uids `uid_ranges` cannot write the running binary.
pub fn check(uid_ranges: Option<&[(u32, u32)]>) -> Result<(), super::Error> {
    let exe = current().map_err(|e| super::Error::ExposedBinary {
        exe: PathBuf::from("/proc/self/exe"),
        reason: e.to_owned(),
    })?;
    if unreachable(exe, uid_ranges) {
        return Ok(());
    }
    Err(super::Error::ExposedBinary {
        exe: exe.path.clone(),
        reason: format!(
            "owner {} mode {:o} on a writable mount",
            exe.uid,
            exe.mode & 0o7777
        ),
    })
}

/// Makes the current process run from a binary containers cannot write; call it first
/// thing in `main`, before any thread starts (it execs the same argv and environment).
/// Returns at once when the binary already is protected: on a read-only mount, a sealed
/// memfd, or (rootless) owned by root and not group/other writable, which no rootless
/// container can map.
pub fn reexec_sealed() -> Result<(), ExeError> {
    let exe = inspect()?;
    // A rootless caller's containers map only its own uid and its subordinate ids, never
    // host root: a root-owned binary without group or other write is out of their reach.
    let rootless_safe = !crate::dirs::is_root() && exe.uid == 0 && exe.mode & 0o022 == 0;
    if exe.protection != Protection::None || rootless_safe {
        return Ok(());
    }
    let me = std::process::id().to_string();
    if std::env::var_os(MARKER).is_some_and(|v| v == me.as_str()) {
        return Err(ExeError::StillWritable(exe.path));
    }
    let fd = match read_only_bind() {
        Ok(fd) => fd,
        Err(_) => sealed_memfd()?,
    };
    let cs = |s: OsString| CString::new(s.into_vec()).ok();
    let argv: Vec<CString> = std::env::args_os().filter_map(cs).collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != MARKER)
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cs(kv)
        })
        .collect();
    envp.push(CString::new(format!("{MARKER}={me}")).map_err(|e| io("marker")(e.into()))?);
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: a valid fd, an empty C string with AT_EMPTY_PATH, and NULL-terminated
    // arrays of C strings that outlive the call. Returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(io("execveat sealed binary")(std::io::Error::last_os_error()))
}

/// A detached read-only bind mount of the running binary (needs CAP_SYS_ADMIN over the
/// mount namespace, i.e. root on the host).
fn read_only_bind() -> Result<OwnedFd, ExeError> {
    let raw = crate::sys::open_tree_raw(
        libc::AT_FDCWD,
        c"/proc/self/exe",
        OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
    )
    .map_err(io("open_tree /proc/self/exe"))?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    crate::sys::mount_setattr(
        fd.as_fd(),
        std::path::Path::new(""),
        libc::AT_EMPTY_PATH as u32,
        MOUNT_ATTR_RDONLY,
        0,
        None,
    )
    .map_err(io("make the binary's bind mount read-only"))?;
    Ok(fd)
}

/// A copy of the running binary in a memfd sealed against any change.
fn sealed_memfd() -> Result<OwnedFd, ExeError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: a valid C string and plain flags.
    let mut raw = unsafe { libc::memfd_create(c"warren".as_ptr(), flags | MFD_EXEC) };
    if raw < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before Linux 6.3: no MFD_EXEC, and memfds are executable.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(c"warren".as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(io("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let src = std::fs::File::open("/proc/self/exe").map_err(io("open /proc/self/exe"))?;
    let mut left = src.metadata().map_err(io("stat /proc/self/exe"))?.len();
    while left > 0 {
        // SAFETY: two valid fds; NULL offset uses and advances the source's position.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                left.min(1 << 30) as usize,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("copy the binary into a memfd")(e));
        }
        if n == 0 {
            return Err(io("copy the binary into a memfd")(std::io::Error::from(
                std::io::ErrorKind::UnexpectedEof,
            )));
        }
        left -= n as u64;
    }
    // SAFETY: fcntl with plain integers on our memfd.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io("seal the memfd")(std::io::Error::last_os_error()));
    }
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(uid: u32, mode: u32) -> Exe {
        Exe {
            protection: Protection::None,
            path: PathBuf::from("/x"),
            uid,
            gid: uid,
            mode,
        }
    }

    #[test]
    fn a_writable_binary_is_reachable_without_a_user_namespace() {
        assert!(!unreachable(&exe(0, 0o100755), None));
        let mut sealed = exe(0, 0o100755);
        sealed.protection = Protection::ReadOnlyMount;
        assert!(unreachable(&sealed, None));
    }

    #[test]
    fn an_unmapped_owner_without_group_or_other_write_is_unreachable() {
        let maps = [(1000, 1), (100000, 65536)];
        assert!(unreachable(&exe(0, 0o100755), Some(&maps)));
        assert!(!unreachable(&exe(1000, 0o100755), Some(&maps)));
        assert!(!unreachable(&exe(100005, 0o100755), Some(&maps)));
        assert!(!unreachable(&exe(0, 0o100775), Some(&maps)));
        assert!(!unreachable(&exe(0, 0o100757), Some(&maps)));
    }

    fn spec(extra: serde_json::Value) -> oci_spec::runtime::Spec {
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        serde_json::from_value(config).unwrap()
    }

    #[test]
    fn only_run_in_a_new_pid_namespace_with_nothing_inside_keeps_the_init_unreachable() {
        let plain = spec(serde_json::json!({}));
        assert!(!init_exposed(&plain, true, false));
        // `create` leaves the init waiting where `exec` can join it.
        assert!(init_exposed(&plain, false, false));
        // warren's own init stays on as pid 1.
        assert!(init_exposed(&plain, true, true));
        let hook = serde_json::json!({"path": "/bin/true"});
        for kind in ["createContainer", "startContainer"] {
            let hooked = spec(serde_json::json!({"hooks": {kind: [hook]}}));
            assert!(init_exposed(&hooked, true, false), "{kind}");
        }
        let host_pid = spec(serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}));
        assert!(init_exposed(&host_pid, true, false));
        let joined = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"}]}}));
        assert!(init_exposed(&joined, true, false));
    }
}
