//! The container's filesystem view: mounts from the config, `/dev`, `pivot_root`, masked
//! and read-only paths. [`Plan::new`] prepares everything (C strings, flags, device
//! numbers) in the parent; [`Plan::apply`] and [`Plan::finish`] run in the child between
//! clone and exec and therefore allocate nothing and take no lock.
//!
//! A `cgroup` mount never shows the host's tree: only the container's own cgroup, in
//! each hierarchy, read-only unless the config says `rw` (see [`Cgroups`]); a mount that
//! cannot be made so is an error naming the hierarchy. A mount onto a device's path
//! (`/dev/null`) stands in for that device. `rro`, and the bind of the host's /sys that
//! replaces a sysfs a user namespace may not mount, are read-only all the way down.

use super::cgroup::MountView;
use super::init::{Fail, Step};
use super::spec::ConfigError;
use crate::sys::{self, RESOLVE_IN_ROOT};
use libc::c_ulong;
use oci_spec::runtime::{LinuxDeviceType, Spec};
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

/// A path in the config that cannot name a place inside the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{} must not contain `..`", .0.display())]
    DotDot(PathBuf),
    #[error("{} contains NUL", .0.display())]
    Nul(PathBuf),
}

/// A path inside the rootfs, split so each missing component can be created beneath the
/// root without following symlinks out of it.
#[derive(Debug)]
pub struct Inside {
    /// Relative to the rootfs ("proc/sys").
    pub rel: CString,
    /// Each prefix ("proc", "proc/sys") with its parent and last component.
    steps: Vec<(CString, CString, CString)>,
}

impl Inside {
    pub fn new(path: &Path) -> Result<Inside, PathError> {
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                Component::RootDir | Component::CurDir => {}
                _ => return Err(PathError::DotDot(path.to_owned())),
            }
        }
        let cs = |s: &str| CString::new(s).map_err(|_| PathError::Nul(path.to_owned()));
        let mut steps = Vec::new();
        for i in 0..parts.len() {
            let parent = if i == 0 {
                ".".to_owned()
            } else {
                parts[..i].join("/")
            };
            steps.push((cs(&parent)?, cs(&parts[i])?, cs(&parts[..=i].join("/"))?));
        }
        let rel = if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        };
        Ok(Inside {
            rel: cs(&rel)?,
            steps,
        })
    }

    /// Creates missing components (the last as an empty file when `file`) and returns an
    /// `O_PATH` fd of the target, resolved inside `root`.
    fn create(&self, root: RawFd, file: bool) -> Result<RawFd, i32> {
        let n = self.steps.len();
        for (i, step) in self.steps.iter().enumerate() {
            make(root, step, file && i + 1 == n)?;
        }
        sys::openat2_raw(root, &self.rel, libc::O_PATH, 0, RESOLVE_IN_ROOT).map_err(errno)
    }
}

/// `/proc/self/fd/N` in a stack buffer, the way to name an `O_PATH` fd to mount(2).
pub struct FdPath([u8; 32]);

impl FdPath {
    pub fn new(fd: RawFd) -> FdPath {
        let mut buf = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.max(0) as u32;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[prefix.len() + i] = digits[len - 1 - i];
        }
        FdPath(buf)
    }

    pub fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits.
        CStr::from_bytes_until_nul(&self.0).unwrap_or(c"/")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A filesystem mount (proc, tmpfs, devpts...).
    Fs,
    /// A bind mount of `source`.
    Bind,
    /// sysfs or mqueue: falls back to a recursive bind of the host's when the kernel
    /// refuses a new instance (a user namespace not owning the net/ipc namespace).
    Virtual,
    /// cgroup or cgroup2: the container's own cgroup only ([`CgroupOp`]), never the
    /// host's tree.
    Cgroup,
}

/// How the container's `cgroup` mounts are made; the caller knows its cgroup.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// The child makes a cgroup namespace of its own before the mounts, once it is in its
    /// cgroup (the caller moves it there before GO): the mounts then show that cgroup as
    /// the root of each hierarchy.
    pub new_ns: bool,
    /// The container's own cgroup; empty when it has none (nothing writable for a
    /// rootless caller): its `cgroup` mounts are then an empty read-only tmpfs.
    pub view: MountView,
}

/// A `cgroup` mount of the config: on a v1 or hybrid host a tmpfs holding one mount per
/// hierarchy and the host's links between them (read-only at the end); on a v2 host the
/// hierarchy itself. Each hierarchy is mounted anew in the container's cgroup namespace,
/// or, without one, its own directory of it is bound: never a hierarchy's root.
#[derive(Debug)]
struct CgroupOp {
    tmpfs: bool,
    parts: Vec<CgroupPart>,
    /// (link, target).
    links: Vec<(Inside, CString)>,
    /// nosuid, nodev, noexec, and ro unless the config says `rw`.
    flags: c_ulong,
}

#[derive(Debug)]
struct CgroupPart {
    target: Inside,
    fstype: CString,
    data: Option<CString>,
    /// The container's own directory of the hierarchy, bound without a cgroup namespace.
    dir: CString,
    /// Index of its description after those of the config's mounts.
    desc: usize,
}

#[derive(Debug)]
struct MountOp {
    target: Inside,
    file: bool,
    kind: Kind,
    source: CString,
    fstype: CString,
    flags: c_ulong,
    /// Flags that need a remount of a bind mount (ro, nosuid, ...).
    remount: c_ulong,
    data: Option<CString>,
    propagation: Vec<c_ulong>,
    /// `rro`: every mount of the tree read-only, not only its top.
    recursive_ro: bool,
    /// Host path used when a virtual filesystem falls back to a bind.
    fallback: CString,
    cgroup: Option<CgroupOp>,
}

#[derive(Debug)]
struct DevOp {
    target: Inside,
    /// `S_IFCHR | 0666` etc.
    mode: libc::mode_t,
    dev: libc::dev_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Host path to bind when mknod is not allowed (user namespace).
    host: CString,
}

/// Everything the child needs to build the container's filesystem view.
#[derive(Debug)]
pub struct Plan {
    rootfs: CString,
    root_propagation: c_ulong,
    set_root_propagation: bool,
    mounts: Vec<MountOp>,
    devices: Vec<DevOp>,
    bind_devices: bool,
    dev_links: bool,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    sysctl: Vec<(CString, CString)>,
    readonly_root: bool,
    /// unshare(CLONE_NEWCGROUP) before the mounts.
    new_cgroupns: bool,
    /// Description of each mount, then of each cgroup hierarchy, for error messages.
    pub descriptions: Vec<String>,
}

/// Mount propagation option name to its flag.
pub fn propagation_flag(name: &str) -> Option<c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// Splits mount options into flags, propagation and filesystem data (like runc).
fn parse_options(opts: &[String]) -> (c_ulong, c_ulong, Vec<c_ulong>, Vec<String>) {
    let (mut set, mut clear, mut prop, mut data) = (0, 0, Vec::new(), Vec::new());
    for o in opts {
        let (s, c): (c_ulong, c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            // Read-only all the way down (the submounts of an rbind too): see `recursive_ro`.
            "rro" => (libc::MS_RDONLY, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "tmpcopyup" | "idmap" | "ridmap" | "" => (0, 0),
            other => {
                if let Some(p) = propagation_flag(other) {
                    prop.push(p);
                } else {
                    data.push(other.to_owned());
                }
                (0, 0)
            }
        };
        set |= s;
        clear |= c;
    }
    (set & !clear, clear, prop, data)
}

fn cstring(s: impl AsRef<std::ffi::OsStr>, field: &str) -> Result<CString, ConfigError> {
    sys::cstr(s).map_err(|_| ConfigError::new(field, "contains a NUL byte"))
}

/// Plans the `cgroup` mount at `dest` (config field `field`), read-only unless `rw`.
fn cgroup_op(
    dest: &Path,
    cgroups: &Cgroups,
    ro: bool,
    field: &str,
    descriptions: &mut Vec<String>,
) -> Result<CgroupOp, ConfigError> {
    let inside = |p: &Path| Inside::new(p).map_err(|e| ConfigError::new(field, e));
    let view = &cgroups.view;
    let mut parts = Vec::new();
    for h in &view.hierarchies {
        let target = dest.join(&h.name);
        let how = if cgroups.new_ns {
            format!("type {}, in the container's cgroup namespace", h.fstype)
        } else {
            format!("the container's cgroup {}, bound", h.dir.display())
        };
        parts.push(CgroupPart {
            target: inside(&target)?,
            fstype: cstring(h.fstype, field)?,
            data: (!h.data.is_empty())
                .then(|| cstring(&h.data, field))
                .transpose()?,
            dir: cstring(&h.dir, field)?,
            desc: descriptions.len(),
        });
        descriptions.push(format!(
            "mount cgroup hierarchy {} on {} ({how})",
            if h.name.is_empty() {
                "cgroup2"
            } else {
                &h.name
            },
            target.display()
        ));
    }
    let links = view
        .links
        .iter()
        .map(|(name, to)| Ok((inside(&dest.join(name))?, cstring(to, field)?)))
        .collect::<Result<_, ConfigError>>()?;
    // v2: the one hierarchy is the mount; else (v1, hybrid, or no cgroup of its own) a
    // tmpfs holds them.
    let unified = matches!(&view.hierarchies[..], [h] if h.name.is_empty());
    Ok(CgroupOp {
        tmpfs: !unified,
        parts,
        links,
        flags: libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC
            | if ro { libc::MS_RDONLY } else { 0 },
    })
}

struct DefaultDev {
    path: &'static str,
    major: u32,
    minor: u32,
}

const DEFAULT_DEVICES: &[DefaultDev] = &[
    DefaultDev {
        path: "/dev/null",
        major: 1,
        minor: 3,
    },
    DefaultDev {
        path: "/dev/zero",
        major: 1,
        minor: 5,
    },
    DefaultDev {
        path: "/dev/full",
        major: 1,
        minor: 7,
    },
    DefaultDev {
        path: "/dev/random",
        major: 1,
        minor: 8,
    },
    DefaultDev {
        path: "/dev/urandom",
        major: 1,
        minor: 9,
    },
    DefaultDev {
        path: "/dev/tty",
        major: 5,
        minor: 0,
    },
];

impl Plan {
    /// Prepares the rootfs setup for `spec` with the rootfs at `rootfs` (absolute) and
    /// config-relative bind sources taken from `bundle`.
    pub fn new(
        spec: &Spec,
        rootfs: &Path,
        bundle: &Path,
        userns: bool,
        cgroups: &Cgroups,
    ) -> Result<Plan, ConfigError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let mut mounts = Vec::new();
        let mut descriptions = Vec::new();
        let mut cgroup_descriptions = Vec::new();
        let mut dev_bound = false;
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let field = format!("mounts[{i}]");
            let dest = m.destination();
            let fstype = m.typ().clone().unwrap_or_default();
            let (mut flags, clear, propagation, data) =
                parse_options(m.options().as_deref().unwrap_or(&[]));
            let is_bind = fstype == "bind" || flags & libc::MS_BIND != 0;
            let source = m.source().clone().unwrap_or_default();
            let kind = if is_bind {
                Kind::Bind
            } else if matches!(fstype.as_str(), "cgroup" | "cgroup2") {
                Kind::Cgroup
            } else if matches!(fstype.as_str(), "sysfs" | "mqueue") {
                Kind::Virtual
            } else {
                Kind::Fs
            };
            let (source, file) = if is_bind {
                let src = if source.is_absolute() {
                    source.clone()
                } else {
                    bundle.join(&source)
                };
                let meta = std::fs::metadata(&src).map_err(|e| {
                    ConfigError::new(format!("{field}.source"), format!("{}: {e}", src.display()))
                })?;
                flags |= libc::MS_BIND;
                (src, !meta.is_dir())
            } else {
                (source.clone(), false)
            };
            if dest == Path::new("/dev") && is_bind {
                dev_bound = true;
            }
            let remount = if is_bind {
                flags
                    & (libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC
                        | libc::MS_NOATIME
                        | libc::MS_NODIRATIME
                        | libc::MS_RELATIME
                        | libc::MS_STRICTATIME)
            } else {
                0
            };
            let fallback = match fstype.as_str() {
                "sysfs" => "/sys",
                "mqueue" => "/dev/mqueue",
                _ => "",
            };
            let cgroup = match kind {
                Kind::Cgroup => Some(cgroup_op(
                    dest,
                    cgroups,
                    clear & libc::MS_RDONLY == 0,
                    &field,
                    &mut cgroup_descriptions,
                )?),
                _ => None,
            };
            descriptions.push(format!(
                "mount {} on {} (type {})",
                source.display(),
                dest.display(),
                if fstype.is_empty() { "bind" } else { &fstype }
            ));
            let data = (!data.is_empty()).then(|| data.join(","));
            mounts.push(MountOp {
                target: Inside::new(dest)
                    .map_err(|e| ConfigError::new(format!("{field}.destination"), e))?,
                file,
                kind,
                source: cstring(&source, &field)?,
                fstype: cstring(&fstype, &field)?,
                flags: if is_bind {
                    flags & (libc::MS_BIND | libc::MS_REC)
                } else {
                    flags
                },
                remount,
                data: data.map(|d| cstring(d, &field)).transpose()?,
                propagation,
                recursive_ro: m.options().iter().flatten().any(|o| o == "rro"),
                fallback: cstring(fallback, &field)?,
                cgroup,
            });
        }
        descriptions.append(&mut cgroup_descriptions);

        // A mount onto a device's path (`-v FILE:/dev/null`) stands in for the device.
        let mounted = |t: &Inside| mounts.iter().position(|m: &MountOp| m.target.rel == t.rel);
        let mut devices = Vec::new();
        if !dev_bound {
            for d in DEFAULT_DEVICES {
                devices.push(DevOp {
                    target: Inside::new(Path::new(d.path))
                        .map_err(|e| ConfigError::new("devices", e))?,
                    mode: libc::S_IFCHR | 0o666,
                    dev: libc::makedev(d.major, d.minor),
                    uid: 0,
                    gid: 0,
                    host: cstring(d.path, "devices")?,
                });
            }
            devices.retain(|d| mounted(&d.target).is_none());
        }
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            let field = format!("linux.devices[{i}]");
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                LinuxDeviceType::A => {
                    return Err(ConfigError::new(
                        format!("{field}.type"),
                        "`a` is not a device node type",
                    ));
                }
            };
            if !d.path().is_absolute() {
                return Err(ConfigError::new(
                    format!("{field}.path"),
                    "must be absolute",
                ));
            }
            // A config device replaces a default one at the same path.
            let target =
                Inside::new(d.path()).map_err(|e| ConfigError::new(format!("{field}.path"), e))?;
            if let Some(m) = mounted(&target) {
                return Err(ConfigError::new(
                    format!("{field}.path"),
                    format!(
                        "{} is also the destination of mounts[{m}]: keep one of them",
                        d.path().display()
                    ),
                ));
            }
            devices.retain(|o: &DevOp| o.target.rel != target.rel);
            devices.push(DevOp {
                target,
                mode: kind | (d.file_mode().unwrap_or(0o666) & 0o7777),
                dev: libc::makedev(d.major() as u32, d.minor() as u32),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
                host: cstring(d.path(), &field)?,
            });
        }

        let list = |v: &Option<Vec<String>>, field: &str| -> Result<Vec<CString>, ConfigError> {
            v.iter()
                .flatten()
                .map(|p| cstring(p, field))
                .collect::<Result<_, _>>()
        };
        let mut sysctl = Vec::new();
        for (k, v) in linux.sysctl().iter().flatten() {
            let field = format!("linux.sysctl.{k}");
            if k.contains("..") || k.contains('/') && k.starts_with('/') {
                return Err(ConfigError::new(field, "invalid key"));
            }
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            sysctl.push((cstring(path, &field)?, cstring(v, &field)?));
        }
        let prop = linux.rootfs_propagation().clone().unwrap_or_default();
        let root_propagation = if prop.is_empty() {
            libc::MS_SLAVE | libc::MS_REC
        } else {
            propagation_flag(&prop).ok_or_else(|| {
                ConfigError::new("linux.rootfsPropagation", format!("unknown {prop:?}"))
            })?
        };
        Ok(Plan {
            rootfs: cstring(rootfs, "root.path")?,
            root_propagation,
            set_root_propagation: !prop.is_empty(),
            mounts,
            devices,
            bind_devices: userns,
            dev_links: !dev_bound,
            masked: list(linux.masked_paths(), "linux.maskedPaths")?,
            readonly: list(linux.readonly_paths(), "linux.readonlyPaths")?,
            sysctl,
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            new_cgroupns: cgroups.new_ns,
            descriptions,
        })
    }

    /// In the child, first thing in its new mount namespace and before it becomes the
    /// container's root: an `O_PATH` fd of the rootfs, looked up with the caller's own
    /// credentials. Container root (a subordinate uid) may not be able to traverse the
    /// way there (a 0700 home holding the rootfs).
    pub fn open_root(&self) -> Result<RawFd, Fail> {
        // SAFETY: valid C string; the fd is closed before exec (O_CLOEXEC).
        let root = unsafe {
            libc::open(
                self.rootfs.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if root < 0 {
            return Err(Fail::new(Step::RootOpen, last_errno(), 0));
        }
        Ok(root)
    }

    /// In the child, before pivot_root: the configured mounts and `/dev` on the root mount
    /// from [`bind_root`](Plan::bind_root). Returns that fd (closed on failure).
    pub fn apply(&self, root: RawFd) -> Result<RawFd, Fail> {
        if self.new_cgroupns {
            // SAFETY: a plain flag; this process is single-threaded.
            if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } < 0 {
                let e = last_errno();
                close(root);
                return Err(Fail::new(Step::Unshare, e, 1));
            }
        }
        if let Err(f) = self.mount_all(root) {
            close(root);
            return Err(f);
        }
        Ok(root)
    }

    /// In the child: makes the host's mounts invisible to changes here and binds the
    /// rootfs (the fd from [`open_root`](Plan::open_root), consumed) onto itself. Returns
    /// the fd of the new root mount. Needs no id map: it creates no inode and checks no
    /// inode permission, only the mount namespace's capabilities.
    pub fn bind_root(&self, rootfs: RawFd) -> Result<RawFd, Fail> {
        let result = self.bind_root_fd(rootfs);
        close(rootfs);
        result
    }

    fn bind_root_fd(&self, rootfs: RawFd) -> Result<RawFd, Fail> {
        // No propagation back to the host, whatever the host's "/" is.
        let root_flags = if self.root_propagation & (libc::MS_SHARED) != 0 {
            libc::MS_SLAVE | libc::MS_REC
        } else {
            self.root_propagation | libc::MS_REC
        };
        mount(None, c"/", None, root_flags, None)
            .map_err(|e| Fail::new(Step::RootPropagation, e, 0))?;
        // A recursive bind of the rootfs through its fd (never its path again), attached
        // on top of it; the tree's fd then names the new mount's root.
        let tree = sys::open_tree_raw(
            rootfs,
            c"",
            sys::OPEN_TREE_CLONE
                | sys::OPEN_TREE_CLOEXEC
                | sys::AT_RECURSIVE
                | libc::AT_EMPTY_PATH as u32,
        )
        .map_err(|e| Fail::new(Step::RootBind, errno(e), 0))?;
        if let Err(e) = sys::move_mount_raw(
            tree,
            c"",
            rootfs,
            c"",
            sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH,
        ) {
            close(tree);
            return Err(Fail::new(Step::RootBind, errno(e), 1));
        }
        Ok(tree)
    }

    fn mount_all(&self, root: RawFd) -> Result<(), Fail> {
        for (i, m) in self.mounts.iter().enumerate() {
            let fail = |e| Fail::new(Step::Mount, e, i as u32);
            let target = m.target.create(root, m.file).map_err(fail)?;
            let path = FdPath::new(target);
            let t = path.as_cstr();
            let res = match (m.kind, &m.cgroup) {
                (Kind::Cgroup, Some(op)) => {
                    close(target);
                    self.mount_cgroup(root, m, op, i)?;
                    continue;
                }
                (Kind::Bind, _) => mount(Some(&m.source), t, None, m.flags, None)
                    .map(|()| (m.remount, m.recursive_ro)),
                _ => {
                    match mount(
                        Some(&m.source),
                        t,
                        Some(&m.fstype),
                        m.flags,
                        m.data.as_deref(),
                    ) {
                        Err(e)
                            if m.kind == Kind::Virtual
                                && matches!(e, libc::EPERM | libc::EINVAL | libc::EBUSY) =>
                        {
                            mount(
                                Some(&m.fallback),
                                t,
                                None,
                                libc::MS_BIND | libc::MS_REC,
                                None,
                            )
                            .map(|()| {
                                // The host's submounts come along (the cgroup tree under
                                // /sys): read-only too when the config asked for ro.
                                let f = m.flags
                                    & (libc::MS_RDONLY
                                        | libc::MS_NOSUID
                                        | libc::MS_NODEV
                                        | libc::MS_NOEXEC);
                                (f, f & libc::MS_RDONLY != 0)
                            })
                        }
                        other => other.map(|()| (0, false)),
                    }
                }
            };
            close(target);
            // Remount and propagation apply to the new mount: look the path up again so
            // the fd names the mount's root, not the directory beneath it.
            let res = res.and_then(|(remount, recursive_ro)| {
                if remount == 0 && m.propagation.is_empty() {
                    return Ok(());
                }
                let top = sys::openat2_raw(root, &m.target.rel, libc::O_PATH, 0, RESOLVE_IN_ROOT)
                    .map_err(errno)?;
                let p = FdPath::new(top);
                let r = (|| {
                    if remount != 0 {
                        let flags = libc::MS_BIND | libc::MS_REMOUNT | remount | locked_flags(top);
                        mount(None, p.as_cstr(), None, flags, None)?;
                    }
                    if recursive_ro {
                        set_recursive(top, remount)?;
                    }
                    m.propagation
                        .iter()
                        .try_for_each(|f| mount(None, p.as_cstr(), None, *f, None))
                })();
                close(top);
                r
            });
            res.map_err(fail)?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            self.device(root, d)
                .map_err(|e| Fail::new(Step::Device, e, i as u32))?;
        }
        if self.dev_links {
            let dev = sys::openat2_raw(
                root,
                c"dev",
                libc::O_PATH | libc::O_DIRECTORY,
                0,
                RESOLVE_IN_ROOT,
            )
            .map_err(|e| Fail::new(Step::Device, errno(e), u32::MAX))?;
            for (name, to) in [
                (c"fd", c"/proc/self/fd"),
                (c"stdin", c"/proc/self/fd/0"),
                (c"stdout", c"/proc/self/fd/1"),
                (c"stderr", c"/proc/self/fd/2"),
                (c"ptmx", c"pts/ptmx"),
                (c"core", c"/proc/kcore"),
            ] {
                // SAFETY: valid fd and C strings. An existing entry is left alone.
                unsafe { libc::symlinkat(to.as_ptr(), dev, name.as_ptr()) };
            }
            close(dev);
        }
        Ok(())
    }

    /// In the child: the `cgroup` mount `m` (config index `i`), planned by [`cgroup_op`].
    fn mount_cgroup(&self, root: RawFd, m: &MountOp, op: &CgroupOp, i: usize) -> Result<(), Fail> {
        let fail = |e| Fail::new(Step::Mount, e, i as u32);
        let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if op.tmpfs {
            let t = m.target.create(root, false).map_err(fail)?;
            let r = mount(
                Some(c"tmpfs"),
                FdPath::new(t).as_cstr(),
                Some(c"tmpfs"),
                base,
                Some(c"mode=755"),
            );
            close(t);
            r.map_err(fail)?;
        }
        for part in &op.parts {
            let fail = |e| Fail::new(Step::Mount, e, (self.mounts.len() + part.desc) as u32);
            let t = part.target.create(root, false).map_err(fail)?;
            let path = FdPath::new(t);
            let r = if self.new_cgroupns {
                // Rooted at the container's cgroup: what it shows is its own.
                mount(
                    Some(&part.fstype),
                    path.as_cstr(),
                    Some(&part.fstype),
                    op.flags,
                    part.data.as_deref(),
                )
            } else {
                mount(Some(&part.dir), path.as_cstr(), None, libc::MS_BIND, None)
                    .and_then(|()| remount(root, &part.target.rel, op.flags))
            };
            close(t);
            r.map_err(fail)?;
        }
        for (link, to) in &op.links {
            let (dir, name) = link.create_parent(root).map_err(fail)?;
            // SAFETY: valid fd and C strings.
            let r = unsafe { libc::symlinkat(to.as_ptr(), dir, name.as_ptr()) };
            let e = last_errno();
            close(dir);
            if r < 0 {
                return Err(fail(e));
            }
        }
        if op.tmpfs {
            // Nothing to write there: read-only whatever the config says.
            remount(root, &m.target.rel, base | libc::MS_RDONLY).map_err(fail)?;
        }
        Ok(())
    }

    fn device(&self, root: RawFd, d: &DevOp) -> Result<(), i32> {
        if self.bind_devices {
            let target = d.target.create(root, true)?;
            let path = FdPath::new(target);
            let r = mount(Some(&d.host), path.as_cstr(), None, libc::MS_BIND, None);
            close(target);
            return r;
        }
        let parent_made = d.target.create_parent(root)?;
        let (dir, name) = parent_made;
        // SAFETY: valid fd and C string.
        unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
        // The mode the config asked for, set by mknod itself: no umask, and no chmod by
        // name afterwards (which would follow a symlink swapped in meanwhile).
        // SAFETY: umask and mknodat with a valid fd and C string; single-threaded child.
        let mut r = unsafe {
            let umask = libc::umask(0);
            let r = libc::mknodat(dir, name.as_ptr(), d.mode, d.dev);
            libc::umask(umask);
            r
        };
        if r == 0 {
            // SAFETY: valid fd and C string; AT_SYMLINK_NOFOLLOW.
            r = unsafe {
                libc::fchownat(dir, name.as_ptr(), d.uid, d.gid, libc::AT_SYMLINK_NOFOLLOW)
            };
        }
        if r == 0 && d.mode & 0o7000 != 0 {
            // chown cleared setuid/setgid: put them back, never through a symlink.
            // SAFETY: `dir` is open until the close below.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
            if let Err(e) = sys::fchmodat_nofollow(fd, name, d.mode & 0o7777) {
                close(dir);
                return Err(errno(e));
            }
        }
        let err = last_errno();
        close(dir);
        if r < 0 { Err(err) } else { Ok(()) }
    }

    /// In the child: switches to the rootfs (`root` from [`apply`](Plan::apply),
    /// consumed) and detaches the old root.
    pub fn pivot(&self, root: RawFd) -> Result<(), Fail> {
        let f = |e| Fail::new(Step::PivotRoot, e, 0);
        // SAFETY: plain fd.
        let r = unsafe { libc::fchdir(root) };
        let err = last_errno();
        close(root);
        if r < 0 {
            return Err(f(err));
        }
        sys::pivot_root(c".", c".").map_err(|e| f(errno(e)))?;
        // The old root is stacked under the new one: keep its unmount from propagating.
        mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None).map_err(f)?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } < 0 {
            return Err(f(last_errno()));
        }
        // SAFETY: valid C string.
        if unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
            return Err(f(last_errno()));
        }
        if self.set_root_propagation {
            mount(None, c"/", None, self.root_propagation, None)
                .map_err(|e| Fail::new(Step::RootPropagation, e, 1))?;
        }
        Ok(())
    }

    /// In the child after pivot_root: sysctls, masked and read-only paths, read-only root.
    pub fn finish(&self) -> Result<(), Fail> {
        for (i, (path, value)) in self.sysctl.iter().enumerate() {
            write_file(path, value.to_bytes()).map_err(|e| Fail::new(Step::Sysctl, e, i as u32))?;
        }
        for (i, p) in self.masked.iter().enumerate() {
            mask(p).map_err(|e| Fail::new(Step::Masked, e, i as u32))?;
        }
        for (i, p) in self.readonly.iter().enumerate() {
            match readonly(p) {
                Err(e) if e == libc::ENOENT => {}
                other => other.map_err(|e| Fail::new(Step::Readonly, e, i as u32))?,
            }
        }
        if self.readonly_root {
            remount_ro(c"/").map_err(|e| Fail::new(Step::Readonly, e, u32::MAX))?;
        }
        Ok(())
    }

    pub fn masked_path(&self, i: usize) -> String {
        self.masked
            .get(i)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn readonly_path(&self, i: usize) -> String {
        self.readonly
            .get(i)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into())
    }
    pub fn sysctl_path(&self, i: usize) -> String {
        self.sysctl
            .get(i)
            .map(|p| p.0.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn device_path(&self, i: usize) -> String {
        self.devices
            .get(i)
            .map(|d| format!("/{}", d.target.rel.to_string_lossy()))
            .unwrap_or_else(|| "/dev symlinks".into())
    }
}

impl Inside {
    /// Creates the parent directories and returns (parent dir fd, last component).
    fn create_parent(&self, root: RawFd) -> Result<(RawFd, &CStr), i32> {
        let Some((parent, name, _)) = self.steps.last() else {
            return Err(libc::EINVAL);
        };
        // Every directory but the last component.
        for step in &self.steps[..self.steps.len() - 1] {
            make(root, step, false)?;
        }
        let dir = sys::openat2_raw(
            root,
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE_IN_ROOT,
        )
        .map_err(errno)?;
        Ok((dir, name))
    }
}

/// One step of `mkdir -p` beneath `root` (RESOLVE_IN_ROOT): creates `name` in `parent`
/// (an empty file when `file`, else a directory) unless `full` exists.
fn make(
    root: RawFd,
    (parent, name, full): &(CString, CString, CString),
    file: bool,
) -> Result<(), i32> {
    match sys::openat2_raw(root, full, libc::O_PATH, 0, RESOLVE_IN_ROOT) {
        Ok(fd) => {
            close(fd);
            return Ok(());
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(errno(e)),
    }
    let dir = sys::openat2_raw(
        root,
        parent,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT,
    )
    .map_err(errno)?;
    let res = if file {
        // SAFETY: valid fd and C string.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd >= 0 {
            close(fd);
        }
        fd
    } else {
        // SAFETY: valid fd and C string.
        unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) }
    };
    let err = last_errno();
    close(dir);
    if res < 0 && err != libc::EEXIST {
        return Err(err);
    }
    Ok(())
}

/// The calling thread's errno.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
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

/// Flags the kernel locks on a mount made in a less privileged user namespace: a remount
/// must repeat them or fail with EPERM.
fn locked_flags(fd: RawFd) -> c_ulong {
    // SAFETY: an all-zero statvfs is a valid out buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstatvfs(fd, &mut st) } < 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// mount_setattr(2) with AT_RECURSIVE: `flags` (MS_RDONLY, MS_NOSUID, MS_NODEV,
/// MS_NOEXEC) on the mount at `fd` and every mount beneath it. Allocation-free.
fn set_recursive(fd: RawFd, flags: c_ulong) -> Result<(), i32> {
    let mut set = 0;
    for (ms, attr) in [
        (libc::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
    ] {
        if flags & ms != 0 {
            set |= attr;
        }
    }
    let at = libc::AT_EMPTY_PATH as u32 | sys::AT_RECURSIVE;
    sys::mount_setattr_raw(fd, c"", at, set, 0).map_err(errno)
}

/// Remounts the mount at `rel` (resolved in `root` again, so the fd names the mount's
/// root) with `flags` (MS_RDONLY, MS_NOSUID...), keeping the locked ones.
fn remount(root: RawFd, rel: &CStr, flags: c_ulong) -> Result<(), i32> {
    let top = sys::openat2_raw(root, rel, libc::O_PATH, 0, RESOLVE_IN_ROOT).map_err(errno)?;
    let p = FdPath::new(top);
    let all = libc::MS_BIND | libc::MS_REMOUNT | flags | locked_flags(top);
    let r = mount(None, p.as_cstr(), None, all, None);
    close(top);
    r
}

fn remount_ro(path: &CStr) -> Result<(), i32> {
    let fd = sys::openat2_raw(libc::AT_FDCWD, path, libc::O_PATH, 0, 0).map_err(errno)?;
    let locked = locked_flags(fd);
    close(fd);
    mount(
        None,
        path,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
        None,
    )
}

fn readonly(path: &CStr) -> Result<(), i32> {
    mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
    remount_ro(path)
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask(path: &CStr) -> Result<(), i32> {
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } < 0 {
        let e = last_errno();
        return if e == libc::ENOENT { Ok(()) } else { Err(e) };
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            Some(c"tmpfs"),
            path,
            Some(c"tmpfs"),
            libc::MS_RDONLY,
            Some(c"size=0k"),
        )
    } else {
        mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None)
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
