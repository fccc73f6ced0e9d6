//! Planning the container's filesystem view, in the parent: everything the child will
//! need (C strings, flags, device numbers, the order of the mounts) is made here, from
//! the config and what the caller knows of the host (its cgroup, whether a bind source
//! is a directory), so that `apply` allocates nothing. Reads nothing of the
//! host itself: unit-testable without root ([`Plan::with_sources`]).

use super::options::{parse_options, propagation_flag};
use crate::container::cgroup::MountView;
use crate::container::error::ConfigError;
use crate::sys;
use libc::c_ulong;
use oci_spec::runtime::{LinuxDeviceType, Spec};
use std::ffi::CString;
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
    pub(super) steps: Vec<(CString, CString, CString)>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct CgroupOp {
    pub(super) tmpfs: bool,
    pub(super) parts: Vec<CgroupPart>,
    /// (link, target).
    pub(super) links: Vec<(Inside, CString)>,
    /// nosuid, nodev, noexec, and ro unless the config says `rw`.
    pub(super) flags: c_ulong,
}

#[derive(Debug)]
pub(super) struct CgroupPart {
    pub(super) target: Inside,
    pub(super) fstype: CString,
    pub(super) data: Option<CString>,
    /// The container's own directory of the hierarchy, bound without a cgroup namespace.
    pub(super) dir: CString,
    /// Index of its description after those of the config's mounts.
    pub(super) desc: usize,
}

#[derive(Debug)]
pub(super) struct MountOp {
    pub(super) target: Inside,
    pub(super) file: bool,
    pub(super) kind: Kind,
    pub(super) source: CString,
    pub(super) fstype: CString,
    pub(super) flags: c_ulong,
    /// Flags that need a remount of a bind mount (ro, nosuid, ...).
    pub(super) remount: c_ulong,
    pub(super) data: Option<CString>,
    pub(super) propagation: Vec<c_ulong>,
    /// `rro`: every mount of the tree read-only, not only its top.
    pub(super) recursive_ro: bool,
    /// Host path used when a virtual filesystem falls back to a bind.
    pub(super) fallback: CString,
    pub(super) cgroup: Option<CgroupOp>,
}

#[derive(Debug)]
pub(super) struct DevOp {
    pub(super) target: Inside,
    /// `S_IFCHR | 0666` etc.
    pub(super) mode: libc::mode_t,
    pub(super) dev: libc::dev_t,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    /// Host path to bind when mknod is not allowed (user namespace).
    pub(super) host: CString,
}

/// Everything the child needs to build the container's filesystem view.
#[derive(Debug)]
pub struct Plan {
    pub(super) rootfs: CString,
    pub(super) root_propagation: c_ulong,
    pub(super) set_root_propagation: bool,
    pub(super) mounts: Vec<MountOp>,
    pub(super) devices: Vec<DevOp>,
    pub(super) bind_devices: bool,
    pub(super) dev_links: bool,
    pub(super) masked: Vec<CString>,
    pub(super) readonly: Vec<CString>,
    pub(super) sysctl: Vec<(CString, CString)>,
    pub(super) readonly_root: bool,
    /// unshare(CLONE_NEWCGROUP) before the mounts.
    pub(super) new_cgroupns: bool,
    /// Description of each mount, then of each cgroup hierarchy, for error messages.
    pub descriptions: Vec<String>,
    /// An overlay made as the root before it is bound (a rootless shared image).
    pub(super) root_overlay: Option<super::overlay::Prepared>,
}

impl Plan {
    /// Makes the root an overlay of `o`'s layers (see [`super::RootOverlay`]).
    pub(crate) fn set_root_overlay(&mut self, o: &super::RootOverlay) -> Result<(), ConfigError> {
        let p = super::overlay::Prepared::new(o)
            .map_err(|_| ConfigError::new("root.path", "an overlay layer path holds a NUL byte"))?;
        self.root_overlay = Some(p);
        Ok(())
    }

    /// True when the root is made after GO (an overlay needs the id maps).
    pub(crate) fn root_after_go(&self) -> bool {
        self.root_overlay.is_some()
    }
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

/// Whether a bind source is a directory (else a file is bound onto a file): the one fact
/// of the host a plan needs, looked up by [`Plan::new`], given by tests.
pub type SourceIsDir<'a> = &'a dyn Fn(&Path) -> std::io::Result<bool>;

impl Plan {
    /// Prepares the rootfs setup for `spec` with the rootfs at `rootfs` (absolute) and
    /// config-relative bind sources taken from `bundle`; `userns`: the container has a
    /// user namespace (devices are bound, not made).
    pub fn new(
        spec: &Spec,
        rootfs: &Path,
        bundle: &Path,
        userns: bool,
        cgroups: &Cgroups,
    ) -> Result<Plan, ConfigError> {
        let is_dir = |p: &Path| std::fs::metadata(p).map(|m| m.is_dir());
        Plan::with_sources(spec, rootfs, bundle, userns, cgroups, &is_dir)
    }

    /// [`Plan::new`] with the bind sources' kinds from `is_dir`: reads nothing of the host.
    pub fn with_sources(
        spec: &Spec,
        rootfs: &Path,
        bundle: &Path,
        userns: bool,
        cgroups: &Cgroups,
        is_dir: SourceIsDir,
    ) -> Result<Plan, ConfigError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let mut mounts = Vec::new();
        let mut descriptions = Vec::new();
        let mut cgroup_descriptions = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let (op, description) =
                mount_op(m, i, bundle, cgroups, is_dir, &mut cgroup_descriptions)?;
            mounts.push(op);
            descriptions.push(description);
        }
        descriptions.append(&mut cgroup_descriptions);
        let dev_bound = spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new("/dev") && is_bind(m));
        let devices = devices(&linux, &mounts, dev_bound)?;
        let list = |v: &Option<Vec<String>>, field: &str| -> Result<Vec<CString>, ConfigError> {
            v.iter()
                .flatten()
                .map(|p| cstring(p, field))
                .collect::<Result<_, _>>()
        };
        let sysctl = sysctls(&linux)?;
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
            root_overlay: None,
            descriptions,
        })
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

/// A bind mount: type `bind`, or a `bind`/`rbind` option.
fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    let (flags, ..) = parse_options(m.options().as_deref().unwrap_or(&[]));
    m.typ().as_deref() == Some("bind") || flags & libc::MS_BIND != 0
}

/// Flags a bind mount takes only by a remount.
const BIND_REMOUNT: c_ulong = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME;

/// Plans config mount `i` and describes it; a `cgroup` mount's hierarchies are described
/// in `cgroup_descriptions`.
fn mount_op(
    m: &oci_spec::runtime::Mount,
    i: usize,
    bundle: &Path,
    cgroups: &Cgroups,
    is_dir: SourceIsDir,
    cgroup_descriptions: &mut Vec<String>,
) -> Result<(MountOp, String), ConfigError> {
    let field = format!("mounts[{i}]");
    let dest = m.destination();
    let fstype = m.typ().clone().unwrap_or_default();
    let (mut flags, clear, propagation, data) =
        parse_options(m.options().as_deref().unwrap_or(&[]));
    let is_bind = is_bind(m);
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
        let dir = is_dir(&src).map_err(|e| {
            ConfigError::new(format!("{field}.source"), format!("{}: {e}", src.display()))
        })?;
        flags |= libc::MS_BIND;
        (src, !dir)
    } else {
        (source.clone(), false)
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
            cgroup_descriptions,
        )?),
        _ => None,
    };
    let description = format!(
        "mount {} on {} (type {})",
        source.display(),
        dest.display(),
        if fstype.is_empty() { "bind" } else { &fstype }
    );
    let data = (!data.is_empty()).then(|| data.join(","));
    let op = MountOp {
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
        remount: if is_bind { flags & BIND_REMOUNT } else { 0 },
        data: data.map(|d| cstring(d, &field)).transpose()?,
        propagation,
        recursive_ro: m.options().iter().flatten().any(|o| o == "rro"),
        fallback: cstring(fallback, &field)?,
        cgroup,
    };
    Ok((op, description))
}

/// The device nodes: the default ones unless `/dev` is bound (and but those a mount
/// stands in for: `-v FILE:/dev/null`), then the config's, each replacing a default one
/// at its path.
fn devices(
    linux: &oci_spec::runtime::Linux,
    mounts: &[MountOp],
    dev_bound: bool,
) -> Result<Vec<DevOp>, ConfigError> {
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
    Ok(devices)
}

/// `linux.sysctl` as (`/proc/sys/...` path, value).
fn sysctls(linux: &oci_spec::runtime::Linux) -> Result<Vec<(CString, CString)>, ConfigError> {
    let mut sysctl = Vec::new();
    for (k, v) in linux.sysctl().iter().flatten() {
        let field = format!("linux.sysctl.{k}");
        if k.contains("..") || k.contains('/') && k.starts_with('/') {
            return Err(ConfigError::new(field, "invalid key"));
        }
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        sysctl.push((cstring(path, &field)?, cstring(v, &field)?));
    }
    Ok(sysctl)
}
