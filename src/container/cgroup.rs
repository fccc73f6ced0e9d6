//! A container's cgroup: created before the workload starts, limits from the OCI
//! `linux.resources`, removed (after killing what is left) on delete.
//!
//! Works on whatever layout the host has: unified cgroup v2 (`/sys/fs/cgroup/cgroup.controllers`
//! exists; controllers are enabled down the path through `cgroup.subtree_control`, so they must
//! be delegated there) or the v1 hierarchies `/sys/fs/cgroup/<controller>` (legacy and hybrid
//! hosts; the hybrid's controller-less `unified` mount is left alone). A container that asks
//! for no limits never fails because of the layout: without a writable cgroup it runs without
//! one (a no-op [`Cgroup`]). Limits that cannot be applied are an error naming the controller
//! and the file.
//!
//! When a container gets one at all ([`needed`]): when the config sets a limit, or names a
//! `linux.cgroupsPath` (podman and other managers do, and expect to find it), or the
//! container shares the host's pid namespace (only a cgroup finds all of its processes
//! then), or it sees cgroups (a `cgroup` mount or a cgroup namespace: what it sees must be
//! its own cgroup, in every hierarchy it sees, never the caller's and its siblings, as
//! with runc). A container in its own pid namespace with none of these gets none: killing
//! its init kills everything in it, so delete needs no cgroup, and the start skips the
//! first write to a v1 `cgroup.procs` (an RCU grace period, most of a `run`'s cost). Its
//! processes stay in the caller's cgroup, like any other child.
//!
//! The container's `cgroup` mount ([`MountView`], made by `rootfs`) shows only its own
//! cgroup, read-only unless the config says `rw`: each hierarchy mounted anew in its
//! cgroup namespace (made once it is in the cgroup), or without one a bind of its own
//! directory; never the host's tree.
//!
//! Not applied: `devices` (the container's /dev holds only the configured nodes, and a user
//! namespace cannot mknod), `blockIO`, `hugepageLimits`, `network`, `rdma` (an error if set).

use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

/// Where cgroup filesystems are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// v1 hierarchies a container joins (those the host has), so its processes are accounted and
/// limited in each, and freezer lets destroy stop a fork bomb.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {controller}: {}: {source}", path.display())]
    Write {
        controller: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cgroup {controller}: {message}")]
    Unsupported { controller: String, message: String },
    #[error("cgroup: cannot create {}: {source}{hint}", path.display())]
    Create {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cgroup: {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup: invalid path {path:?}: {message}")]
    Path { path: String, message: &'static str },
    #[error("cgroup: {}: processes {pids:?} still running after SIGKILL", path.display())]
    Busy { path: PathBuf, pids: Vec<i32> },
}

/// Cgroup version of the directories a [`Cgroup`] lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// A container's cgroup. Serializable so the container state can record it and a later
/// `delete --force` can [`destroy`](Cgroup::destroy) it after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Path below each hierarchy's root, e.g. `warren/web`.
    path: PathBuf,
    /// None: no cgroup (a no-op).
    version: Option<Version>,
    /// The leaf directories holding the processes: one for v2, one per v1 hierarchy.
    dirs: Vec<PathBuf>,
}

/// One value to write: `file` in the directory of `controller`.
struct Setting {
    controller: &'static str,
    file: String,
    value: String,
}

/// Whether a container needs a cgroup (the policy is in the module docs): a limit in
/// `resources` (or a setting warren rejects, so [`Cgroup::create`] can say so), a
/// `cgroups_path`, no pid namespace of its own, or cgroups it can see (`sees_cgroups`: a
/// `cgroup` mount or a new cgroup namespace, which must show its own cgroup and nothing
/// of the caller's).
pub fn needed(
    resources: Option<&LinuxResources>,
    cgroups_path: Option<&str>,
    own_pid_namespace: bool,
    sees_cgroups: bool,
) -> bool {
    let limits = !matches!(settings(resources, Version::V1), Ok(s) if s.is_empty())
        || !matches!(settings(resources, Version::V2), Ok(s) if s.is_empty());
    limits || cgroups_path.is_some_and(|p| !p.is_empty()) || !own_pid_namespace || sees_cgroups
}

impl Cgroup {
    /// Creates the container's cgroup under [`DEFAULT_ROOT`] and applies `resources`.
    /// `cgroups_path` is the OCI `linux.cgroupsPath` (default `warren/<name>`).
    pub fn create(
        name: &str,
        resources: Option<&LinuxResources>,
        cgroups_path: Option<&str>,
    ) -> Result<Cgroup, CgroupError> {
        Self::create_at(Path::new(DEFAULT_ROOT), name, resources, cgroups_path)
    }

    /// Like [`create`](Cgroup::create), with the cgroup filesystems mounted under `root`.
    pub fn create_at(
        root: &Path,
        name: &str,
        resources: Option<&LinuxResources>,
        cgroups_path: Option<&str>,
    ) -> Result<Cgroup, CgroupError> {
        let path = relative_path(name, cgroups_path)?;
        let version = detect(root);
        let settings = match version {
            Some(v) => settings(resources, v)?,
            None => settings(resources, Version::V1)?,
        };
        let noop = Cgroup {
            path: path.clone(),
            version: None,
            dirs: vec![],
        };
        let Some(version) = version else {
            return match settings.first() {
                None => Ok(noop),
                Some(s) => Err(CgroupError::Unsupported {
                    controller: s.controller.into(),
                    message: format!("no cgroup filesystem under {}", root.display()),
                }),
            };
        };
        let made = match version {
            Version::V2 => make_v2(root, &path, &settings),
            Version::V1 => make_v1(root, &path),
        };
        let cgroup = match made {
            Ok(dirs) => Cgroup {
                path,
                version: Some(version),
                dirs,
            },
            Err(e) if settings.is_empty() => {
                tracing::debug!("running without a cgroup: {e}");
                return Ok(noop);
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = cgroup.apply(&settings) {
            // Nothing half-done: a cgroup without its limits is not left behind.
            let _ = cgroup.destroy();
            return Err(e);
        }
        Ok(cgroup)
    }

    /// The existing cgroup for `name` and `cgroups_path` under [`DEFAULT_ROOT`], without
    /// creating anything; a no-op when none exists.
    pub fn open(name: &str, cgroups_path: Option<&str>) -> Result<Cgroup, CgroupError> {
        Self::open_at(Path::new(DEFAULT_ROOT), name, cgroups_path)
    }

    /// Like [`open`](Cgroup::open), with the cgroup filesystems mounted under `root`.
    pub fn open_at(
        root: &Path,
        name: &str,
        cgroups_path: Option<&str>,
    ) -> Result<Cgroup, CgroupError> {
        let path = relative_path(name, cgroups_path)?;
        let version = detect(root);
        let dirs: Vec<PathBuf> = match version {
            Some(Version::V2) => vec![root.join(&path)],
            Some(Version::V1) => v1_hierarchies(root)
                .into_iter()
                .map(|(_, h)| h.join(&path))
                .collect(),
            None => vec![],
        };
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        Ok(Cgroup {
            path,
            version: version.filter(|_| !dirs.is_empty()),
            dirs,
        })
    }

    /// True when the container runs without a cgroup.
    pub fn is_noop(&self) -> bool {
        self.version.is_none()
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Path below each hierarchy's root, e.g. `warren/web`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directories holding the processes (empty for a no-op cgroup).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves process `pid` (and its threads) into the cgroup, in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            std::fs::write(&path, pid.to_string())
                .map_err(|source| CgroupError::Io { path, source })?;
        }
        Ok(())
    }

    /// The processes in the cgroup, sorted (a missing directory holds none).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            match std::fs::read_to_string(&path) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Io { path, source }),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Kills every process left in the cgroup and removes its directories. Idempotent:
    /// destroying a destroyed (or no-op) cgroup succeeds.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for dir in &self.dirs {
            // A just-killed process leaves the cgroup when it finishes exiting.
            let mut attempt = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(source) => {
                        return Err(CgroupError::Io {
                            path: dir.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGKILLs everything in the cgroup until it is empty. v2 has `cgroup.kill`; on v1 the
    /// freezer stops a fork bomb from outrunning the kill loop.
    fn kill_all(&self) -> Result<(), CgroupError> {
        let freezer = self.dirs.iter().find(|d| d.join("freezer.state").exists());
        for _ in 0..200 {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            let cgroup_kill = self
                .dirs
                .iter()
                .map(|d| d.join("cgroup.kill"))
                .find(|p| p.exists());
            if let Some(path) = cgroup_kill {
                std::fs::write(&path, "1").map_err(|source| CgroupError::Io { path, source })?;
            } else {
                if let Some(f) = freezer {
                    let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
                }
                for pid in pids {
                    // Gone already (ESRCH) is what we want.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                if let Some(f) = freezer {
                    let _ = std::fs::write(f.join("freezer.state"), "THAWED");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = self.pids()?;
        match pids.is_empty() {
            true => Ok(()),
            false => Err(CgroupError::Busy {
                path: self.dirs.first().cloned().unwrap_or_default(),
                pids,
            }),
        }
    }

    fn apply(&self, settings: &[Setting]) -> Result<(), CgroupError> {
        for s in settings {
            let dir = self.dir_for(s.controller)?;
            let path = dir.join(&s.file);
            std::fs::write(&path, &s.value).map_err(|source| CgroupError::Write {
                controller: s.controller.into(),
                path: path.clone(),
                source: io::Error::new(source.kind(), format!("writing {:?}: {source}", s.value)),
            })?;
        }
        Ok(())
    }

    fn dir_for(&self, controller: &'static str) -> Result<&Path, CgroupError> {
        let found = match self.version {
            Some(Version::V2) => self.dirs.first(),
            // v1 leaves are <root>/<controller>/<path>.
            _ => self.dirs.iter().find(|d| {
                d.ancestors()
                    .nth(self.path.components().count())
                    .and_then(Path::file_name)
                    .is_some_and(|h| h == controller)
            }),
        };
        found
            .map(PathBuf::as_path)
            .ok_or_else(|| CgroupError::Unsupported {
                controller: controller.into(),
                message: "the host has no v1 hierarchy for this controller".into(),
            })
    }
}

/// v2 when the root is a cgroup2 mount, v1 when it holds controller hierarchies.
fn detect(root: &Path) -> Option<Version> {
    if root.join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if !v1_hierarchies(root).is_empty() {
        Some(Version::V1)
    } else {
        None
    }
}

/// (controller, mount) for each hierarchy under a v1 root, one entry per distinct mount
/// (`cpu` and `cpuacct` are often links to one `cpu,cpuacct` hierarchy): the controllers'
/// first, by controller name, then every other one (a named `name=systemd` hierarchy, a
/// hybrid host's `unified` cgroup2), by its own name. The container joins them all, so
/// that each one it sees shows its own cgroup, never the caller's.
fn v1_hierarchies(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut add = |name: &'static str, dir: PathBuf| {
        if !dir.join("cgroup.procs").exists() {
            return;
        }
        let real = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if !seen.contains(&real) {
            seen.push(real);
            out.push((name, dir));
        }
    };
    for controller in V1_CONTROLLERS {
        add(controller, root.join(controller));
    }
    let mut others: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    others.sort();
    for dir in others {
        add("", dir);
    }
    out
}

/// The OCI cgroupsPath as a path below the hierarchy root (absolute or relative, both are
/// placed under the root; no `..` may climb out).
fn relative_path(name: &str, cgroups_path: Option<&str>) -> Result<PathBuf, CgroupError> {
    let raw = match cgroups_path {
        Some(p) if p.contains(':') => {
            return Err(CgroupError::Path {
                path: p.into(),
                message: "systemd slice:prefix:name paths are not supported; use a path",
            });
        }
        Some(p) => p.to_string(),
        None => format!("warren/{name}"),
    };
    let mut path = PathBuf::new();
    for c in Path::new(&raw).components() {
        match c {
            Component::Normal(part) => path.push(part),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(CgroupError::Path {
                    path: raw,
                    message: "`..` is not allowed",
                });
            }
        }
    }
    if path.as_os_str().is_empty() {
        return Err(CgroupError::Path {
            path: raw,
            message: "the container cannot use the root cgroup",
        });
    }
    Ok(path)
}

fn create_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            " (not writable: cgroup delegation is needed, e.g. a systemd unit with Delegate=yes, or run as root)"
        }
        _ => "",
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.into(),
            hint: create_hint(&e),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Creates the path in every v1 hierarchy (those of no controller when it can); returns
/// the leaf directories.
fn make_v1(root: &Path, path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut made = Vec::new();
    for (controller, hierarchy) in v1_hierarchies(root) {
        let mut dir = hierarchy.clone();
        let result = path.components().try_for_each(|c| {
            dir.push(c);
            mkdir(&dir)?;
            // A new v1 cpuset has no cpus or mems, and no process can join it until set.
            if controller == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    inherit(&dir, file)?;
                }
            }
            Ok(())
        });
        match result {
            // A hierarchy of no controller (a named or the hybrid's cgroup2 one) it cannot
            // join is left out: the container's cgroup mount shows only those it joined.
            Err(e) if controller.is_empty() => {
                tracing::debug!("cgroup hierarchy {} left out: {e}", hierarchy.display());
                let _ = std::fs::remove_dir(&dir);
            }
            Err(e) => {
                for leaf in &made {
                    let _ = std::fs::remove_dir(leaf);
                }
                return Err(e);
            }
            Ok(()) => made.push(dir),
        }
    }
    Ok(made)
}

/// Copies a v1 cpuset file from the parent when it is empty here.
fn inherit(dir: &Path, file: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CgroupError::Io { path, source }
    };
    let current = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    if current.trim().is_empty() {
        let parent = dir.parent().unwrap_or(dir).join(file);
        let value = std::fs::read_to_string(&parent).map_err(io_err(&parent))?;
        std::fs::write(&path, value.trim()).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Creates the path on v2, enabling the controllers the settings need on every level above
/// the leaf; returns the leaf.
fn make_v2(root: &Path, path: &Path, settings: &[Setting]) -> Result<Vec<PathBuf>, CgroupError> {
    let mut needed: Vec<&str> = settings.iter().map(|s| s.controller).collect();
    needed.sort_unstable();
    needed.dedup();
    let mut dir = root.to_path_buf();
    for c in path.components() {
        for controller in &needed {
            enable_v2(&dir, controller)?;
        }
        dir.push(c);
        mkdir(&dir)?;
    }
    Ok(vec![dir])
}

fn enable_v2(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let available = dir.join("cgroup.controllers");
    let list = std::fs::read_to_string(&available).map_err(|source| CgroupError::Io {
        path: available.clone(),
        source,
    })?;
    if !list.split_whitespace().any(|c| c == controller) {
        return Err(CgroupError::Unsupported {
            controller: controller.into(),
            message: format!(
                "not available in {} (delegate it: systemd Delegate=yes)",
                available.display()
            ),
        });
    }
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(&subtree, format!("+{controller}")).map_err(|source| CgroupError::Write {
        controller: controller.into(),
        path: subtree,
        source,
    })
}

/// The files to write for `resources` on `version`, in a working order.
fn settings(
    resources: Option<&LinuxResources>,
    version: Version,
) -> Result<Vec<Setting>, CgroupError> {
    let mut out = Vec::new();
    let Some(r) = resources else {
        return Ok(out);
    };
    let mut set = |controller: &'static str, file: &str, value: String| {
        out.push(Setting {
            controller,
            file: file.into(),
            value,
        })
    };
    let unsupported = |controller: &str, message: &str| CgroupError::Unsupported {
        controller: controller.into(),
        message: message.into(),
    };
    let v1 = version == Version::V1;
    // -1 (or 0 for pids) means no limit.
    let limit = |v: i64| match (v < 0, v1) {
        (true, true) => "-1".to_string(),
        (true, false) => "max".to_string(),
        (false, _) => v.to_string(),
    };

    if let Some(m) = r.memory() {
        if let Some(v) = m.limit() {
            set(
                "memory",
                if v1 {
                    "memory.limit_in_bytes"
                } else {
                    "memory.max"
                },
                limit(v),
            );
        }
        if let Some(v) = m.reservation() {
            set(
                "memory",
                if v1 {
                    "memory.soft_limit_in_bytes"
                } else {
                    "memory.low"
                },
                limit(v),
            );
        }
        if let Some(swap) = m.swap() {
            if v1 {
                // OCI swap is memory+swap, which is what memsw limits.
                set("memory", "memory.memsw.limit_in_bytes", limit(swap));
            } else {
                // v2 limits swap alone.
                let value = match (swap, m.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l >= 0 && s >= l => (s - l).to_string(),
                    _ => {
                        return Err(unsupported(
                            "memory",
                            "linux.resources.memory.swap needs a memory limit no larger than it",
                        ));
                    }
                };
                set("memory", "memory.swap.max", value);
            }
        }
        if let Some(v) = m.swappiness() {
            if !v1 {
                return Err(unsupported("memory", "swappiness has no cgroup v2 file"));
            }
            set("memory", "memory.swappiness", v.to_string());
        }
        if m.disable_oom_killer() == Some(true) {
            if !v1 {
                return Err(unsupported(
                    "memory",
                    "disableOOMKiller has no cgroup v2 file",
                ));
            }
            set("memory", "memory.oom_control", "1".into());
        }
    }
    if let Some(c) = r.cpu() {
        if v1 {
            if let Some(v) = c.shares() {
                set("cpu", "cpu.shares", v.to_string());
            }
            // The period first: the kernel checks the quota against it.
            if let Some(v) = c.period() {
                set("cpu", "cpu.cfs_period_us", v.to_string());
            }
            if let Some(v) = c.quota() {
                set("cpu", "cpu.cfs_quota_us", limit(v));
            }
            if let Some(v) = c.realtime_period() {
                set("cpu", "cpu.rt_period_us", v.to_string());
            }
            if let Some(v) = c.realtime_runtime() {
                set("cpu", "cpu.rt_runtime_us", v.to_string());
            }
        } else {
            if let Some(shares) = c.shares() {
                // The conversion runc, crun and systemd share: [2, 262144] -> [1, 10000].
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                set("cpu", "cpu.weight", weight.to_string());
            }
            if c.quota().is_some() || c.period().is_some() {
                let quota = c
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".into(), |q| q.to_string());
                set(
                    "cpu",
                    "cpu.max",
                    format!("{quota} {}", c.period().unwrap_or(100_000)),
                );
            }
            if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
                return Err(unsupported(
                    "cpu",
                    "realtime scheduling limits need cgroup v1",
                ));
            }
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset", "cpuset.cpus", cpus.into());
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset", "cpuset.mems", mems.into());
        }
    }
    if let Some(p) = r.pids() {
        let max = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        set("pids", "pids.max", max);
    }
    if let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        if v1 {
            return Err(unsupported(
                "unified",
                "linux.resources.unified needs cgroup v2",
            ));
        }
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let controller = match key.split_once('.') {
                Some((c, _)) if !key.contains('/') => V2_CONTROLLERS.iter().find(|k| **k == c),
                _ => None,
            };
            let Some(controller) = controller else {
                return Err(unsupported(
                    "unified",
                    &format!("unknown cgroup v2 file {key:?}"),
                ));
            };
            set(controller, key, value.clone());
        }
    }
    for (present, what) in [
        (r.block_io().is_some(), "blkio"),
        (
            r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
            "hugetlb",
        ),
        (r.network().is_some(), "net_cls"),
        (r.rdma().as_ref().is_some_and(|h| !h.is_empty()), "rdma"),
    ] {
        if present {
            return Err(unsupported(
                what,
                "limits for this controller are not supported by warren",
            ));
        }
    }
    Ok(out)
}

const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "misc"];

/// One hierarchy of a container's cgroup as its `cgroup` mount shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HierarchyView {
    /// Its name under the mount ("memory", "cpu,cpuacct", "unified"); empty on a unified
    /// v2 host, whose one hierarchy is the mount itself.
    pub name: String,
    /// The container's own directory in it, on the host (a bind source; never the root).
    pub dir: PathBuf,
    /// `cgroup` or `cgroup2`.
    pub fstype: &'static str,
    /// v1: the options naming the hierarchy (its controllers, `name=`), as the host mounts
    /// it, for a mount of it in the container's cgroup namespace; empty for cgroup2.
    pub data: String,
}

/// What a container's `cgroup` mount shows: its own cgroup in each hierarchy it joined,
/// and the links the host has beside them (`cpu` -> `cpu,cpuacct`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountView {
    pub hierarchies: Vec<HierarchyView>,
    /// (name, target) of each link to one of `hierarchies`.
    pub links: Vec<(String, String)>,
}

impl Cgroup {
    /// The view of this cgroup for the container's `cgroup` mount, from the host's mounts
    /// (`/proc/self/mountinfo`); empty for a no-op cgroup.
    pub fn mount_view(&self) -> Result<MountView, CgroupError> {
        if self.is_noop() {
            return Ok(MountView::default());
        }
        let path = PathBuf::from("/proc/self/mountinfo");
        let info = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            source,
        })?;
        self.mount_view_in(&info)
    }

    fn mount_view_in(&self, mountinfo: &str) -> Result<MountView, CgroupError> {
        let depth = self.path.components().count();
        let mut view = MountView::default();
        let mut parent = None;
        for dir in &self.dirs {
            let point = dir.ancestors().nth(depth).unwrap_or(dir);
            let real = std::fs::canonicalize(point).map_err(|source| CgroupError::Io {
                path: point.to_path_buf(),
                source,
            })?;
            let Some((fstype, options)) = cgroup_mount(mountinfo, &real) else {
                return Err(CgroupError::Unsupported {
                    controller: real.display().to_string(),
                    message: "not a cgroup mount in /proc/self/mountinfo".into(),
                });
            };
            let name = match self.version {
                Some(Version::V2) => String::new(),
                _ => {
                    parent = real.parent().map(Path::to_path_buf);
                    real.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                }
            };
            let data = match fstype {
                "cgroup" => hierarchy_options(&options),
                _ => String::new(),
            };
            view.hierarchies.push(HierarchyView {
                name,
                dir: real.join(&self.path),
                fstype,
                data,
            });
        }
        // Links such as cpu -> cpu,cpuacct, to the hierarchies shown.
        for entry in parent
            .iter()
            .flat_map(std::fs::read_dir)
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if view.hierarchies.iter().any(|h| h.name == target) {
                let name = entry.file_name().to_string_lossy().into_owned();
                view.links.push((name, target));
            }
        }
        view.links.sort();
        Ok(view)
    }
}

/// The filesystem type (`cgroup` or `cgroup2`) and superblock options of the mount at
/// `point` in a mountinfo text (the last one there: it is the one visible).
fn cgroup_mount(mountinfo: &str, point: &Path) -> Option<(&'static str, String)> {
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        if Path::new(&unescape(mount_point)) != point {
            continue;
        }
        let mut fields = right.split(' ');
        let fstype = match fields.next() {
            Some("cgroup") => "cgroup",
            Some("cgroup2") => "cgroup2",
            _ => {
                found = None;
                continue;
            }
        };
        let options = fields.nth(1).unwrap_or_default().to_string();
        found = Some((fstype, options));
    }
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The options of a v1 superblock that name its hierarchy (controllers, `name=`, `none`):
/// mounting it again with exactly these gives the same hierarchy. `release_agent` and the
/// flags are left out (only the initial namespaces may set them).
fn hierarchy_options(superblock: &str) -> String {
    superblock
        .split(',')
        .filter(|o| {
            !matches!(
                *o,
                "rw" | "ro"
                    | "noprefix"
                    | "xattr"
                    | "clone_children"
                    | "cpuset_v2_mode"
                    | "favordynmods"
                    | "nofavordynmods"
                    | ""
            ) && !o.starts_with("release_agent=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found_in_mountinfo_with_their_options() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,memory
60 23 0:41 / /mnt/over rw - cgroup cgroup rw,pids
61 23 0:42 / /mnt/over rw - tmpfs tmpfs rw
";
        let get = |p: &str| cgroup_mount(info, Path::new(p));
        assert_eq!(
            get("/sys/fs/cgroup/cpu,cpuacct"),
            Some(("cgroup", "rw,cpu,cpuacct".into()))
        );
        assert_eq!(get("/sys/fs/cgroup/unified").map(|m| m.0), Some("cgroup2"));
        assert_eq!(
            get("/sys/fs/cgroup/with space").map(|m| m.1),
            Some("rw,memory".into())
        );
        // Not a cgroup mount, or one hidden by a later mount.
        assert_eq!(get("/sys/fs/cgroup"), None);
        assert_eq!(get("/mnt/over"), None);
        assert_eq!(hierarchy_options("rw,cpu,cpuacct"), "cpu,cpuacct");
        assert_eq!(
            hierarchy_options("rw,xattr,release_agent=/x,name=systemd"),
            "name=systemd"
        );
        assert_eq!(
            hierarchy_options("rw,noprefix,release_agent=/sbin/x,cpuset"),
            "cpuset"
        );
    }
}
