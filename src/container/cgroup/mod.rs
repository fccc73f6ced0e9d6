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
//! When a container gets one at all ([`needed`]): when the config sets a limit (zero and
//! empty values are unset, as in runc), device rules a privileged runtime applies (every
//! runc client sends them, and `runc spec` writes a deny-all: so each container a client
//! or a runc-style config makes gets a cgroup of its own, `warren/<id>` by default, as
//! with runc), a `linux.cgroupsPath` (podman and other managers name one, and expect to
//! find it), or the container shares the host's pid namespace (only a cgroup finds all
//! of its processes then), or it sees cgroups (a `cgroup` mount or a cgroup namespace:
//! what it sees must be its own cgroup, in every hierarchy it sees, never the caller's
//! and its siblings, as with runc). A container in its own pid namespace with none of
//! these (what `warren run` makes) gets none: killing its init kills everything in it,
//! so delete needs no cgroup, and the start skips the first write to a v1 `cgroup.procs`
//! (an RCU grace period, most of a `run`'s cost). Its processes stay in the caller's
//! cgroup, like any other child; it cannot be paused or updated.
//!
//! The container's `cgroup` mount ([`MountView`], made by `rootfs`) shows only its own
//! cgroup, read-only unless the config says `rw`: each hierarchy mounted anew in its
//! cgroup namespace (made once it is in the cgroup), or without one a bind of its own
//! directory; never the host's tree.
//!
//! Not applied: `blockIO`, `hugepageLimits`, `network`, `rdma` (an error if set to
//! anything but zero or empty).
//!
//! Where (`placement` has the rules): `runtime::Runtime` containers beneath the
//! caller's own cgroup (`caller:` paths; on v2 the caller's processes move to a
//! `supervisor` leaf beside the container's), so a `Delegate=yes` unit or a user's
//! delegated subtree keeps its workload; runc-CLI containers by runc's rules for
//! `cgroupsPath`, `warren/<id>` below each hierarchy's root without one.
//!
//! Here: the [`Cgroup`] type, layout detection, [`needed`]. By concern: `placement` (where
//! a request's directories go, pure), `resources` (the
//! OCI resources -> file writes table, pure), `devices` (device rules: v1 files, the v2
//! eBPF filter), `v1` and `v2` (each layout's directories), `view` (the container's
//! `cgroup` mount), `freeze` (pause/resume), `update` (new limits for a live cgroup),
//! `stats` (usage as runc's `events --stats`). Everything takes the cgroup root as an
//! argument ([`Cgroup::create_at`]), so the unit tests run on fixture trees without root.

use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use resources::{Setting, settings};

mod born;
mod devices;
mod freeze;
mod placement;
mod resources;
mod stats;
mod update;
mod v1;
mod v2;
mod view;

pub(crate) use born::Entered;
pub use devices::resources_for;
pub use placement::{CALLER_PREFIX, SUPERVISOR, under_caller};
pub use stats::{Blkio, BlkioEntry, Cpu, CpuUsage, Memory, MemoryEntry, Pids, Stats, Throttling};
pub use view::{HierarchyView, MountView};

/// Where cgroup filesystems are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {controller}: {}: writing {value:?}", path.display())]
    Write {
        controller: String,
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cgroup {controller}: {message}")]
    Unsupported { controller: String, message: String },
    #[error("cgroup: cannot create {}{hint}", path.display())]
    Create {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cgroup: {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup: {} is not delegated to this process (not writable){hint}", path.display())]
    NotDelegated { path: PathBuf, hint: &'static str },
    #[error("cgroup: invalid path {path:?}: {message}")]
    Path { path: String, message: &'static str },
    #[error("cgroup: {}: processes {pids:?} still running after SIGKILL", path.display())]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("container {id} has no cgroup: {reason}")]
    Missing { id: String, reason: String },
    #[error("cgroup freezer: {}: still {state:?} after {seconds} s", path.display())]
    FreezeTimeout {
        path: PathBuf,
        state: String,
        seconds: u64,
    },
}

/// Cgroup version of the directories a [`Cgroup`] lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// A container's cgroup. Serializable so the container state can record it and a later
/// `delete --force` can [`destroy`](Cgroup::destroy) it after a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cgroup {
    /// The path the request named, below its anchor (each hierarchy's root, or the
    /// caller's cgroup: see `placement`), e.g. `warren/web`.
    path: PathBuf,
    /// Where the cgroup filesystems are mounted (state files older than this field: the
    /// default).
    #[serde(default = "default_root")]
    root: PathBuf,
    /// None: no cgroup (a no-op).
    version: Option<Version>,
    /// The leaf directories holding the processes: one for v2, one per v1 hierarchy.
    dirs: Vec<PathBuf>,
    /// The resources applied (at create, then merged with each [`update`](Cgroup::update)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resources: Option<LinuxResources>,
    /// The v1 hierarchies as found when the cgroup was made, for the rest of that start.
    #[serde(skip)]
    known: Known,
}

/// Host facts found while making a cgroup (each v1 hierarchy's real name, whether it is
/// a cgroup2 one), so the steps after it need not ask the kernel again. A cache, not part
/// of the cgroup: not recorded (a cgroup read from a state file asks), never compared.
#[derive(Clone, Debug, Default)]
struct Known(Vec<placement::Hierarchy>);

impl PartialEq for Known {
    fn eq(&self, _: &Known) -> bool {
        true
    }
}

/// What [`Cgroup::create_deferred`] leaves to do: the v1 controllers' directories to
/// make, and the limits to apply.
#[derive(Debug)]
pub(crate) struct Deferred {
    leaves: Vec<(&'static str, PathBuf, PathBuf)>,
    settings: Vec<Setting>,
    devices: Option<Vec<devices::Rule>>,
}

impl Deferred {
    /// Makes the rest of `cgroup` (on failure the caller destroys it).
    pub(crate) fn make(&self, cgroup: &Cgroup) -> Result<(), CgroupError> {
        v1::make(&self.leaves).map_err(|e| with_hint(e, Version::V1))?;
        self.apply(cgroup)
    }

    fn apply(&self, cgroup: &Cgroup) -> Result<(), CgroupError> {
        cgroup.apply(&self.settings)?;
        cgroup.apply_devices(self.devices.as_deref())
    }
}

/// Whether a container needs a cgroup (the policy is in the module docs): a limit in
/// `resources` (device rules included, when this runtime may apply them; or a setting
/// warren rejects, so [`Cgroup::create`] can say so), a `cgroups_path`, no pid namespace
/// of its own, or cgroups it can see (`sees_cgroups`: a `cgroup` mount or a new cgroup
/// namespace, which must show its own cgroup and nothing of the caller's).
pub fn needed(
    resources: Option<&LinuxResources>,
    cgroups_path: Option<&str>,
    own_pid_namespace: bool,
    sees_cgroups: bool,
) -> bool {
    let limits = !matches!(settings(resources, Version::V1), Ok(s) if s.is_empty())
        || !matches!(settings(resources, Version::V2), Ok(s) if s.is_empty())
        || !matches!(devices::rules(resources), Ok(None));
    limits || cgroups_path.is_some_and(|p| !p.is_empty()) || !own_pid_namespace || sees_cgroups
}

impl Cgroup {
    /// Creates the container's cgroup under [`DEFAULT_ROOT`] and applies `resources`.
    /// `cgroups_path` is the OCI `linux.cgroupsPath` (default `warren/<name>` below each
    /// hierarchy's root; [`under_caller`] for beneath the caller's own cgroup).
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
        let own = own_cgroup(cgroups_path)?;
        Self::create_in(root, &own, name, resources, cgroups_path)
    }

    /// Like [`create_at`](Cgroup::create_at), with the caller's `/proc/self/cgroup` given.
    pub(super) fn create_in(
        root: &Path,
        own: &str,
        name: &str,
        resources: Option<&LinuxResources>,
        cgroups_path: Option<&str>,
    ) -> Result<Cgroup, CgroupError> {
        let (cgroup, rest) = Self::prepare(root, own, name, resources, cgroups_path, false)?;
        debug_assert!(rest.is_none());
        Ok(cgroup)
    }

    /// Like [`create`](Cgroup::create), for a caller that clones the container's init
    /// meanwhile. On a v1 host, when the config sets limits (a cgroup that cannot be
    /// made is then an error whenever it is found out), only the hierarchies of no
    /// controller are made here; making the controllers' directories and applying the
    /// limits is left to [`Deferred::make`], which may run while the init is cloned, and
    /// the init joins them itself ([`Cgroup::v1_tasks`]). Else all is done here (`None`).
    pub(crate) fn create_deferred(
        name: &str,
        resources: Option<&LinuxResources>,
        cgroups_path: Option<&str>,
    ) -> Result<(Cgroup, Option<Deferred>), CgroupError> {
        let own = own_cgroup(cgroups_path)?;
        let root = Path::new(DEFAULT_ROOT);
        Self::prepare(root, &own, name, resources, cgroups_path, true)
    }

    /// [`create_in`](Cgroup::create_in), with the controllers' directories and the
    /// limits left to the caller when `defer` may (see [`create_deferred`]).
    fn prepare(
        root: &Path,
        own: &str,
        name: &str,
        resources: Option<&LinuxResources>,
        cgroups_path: Option<&str>,
        defer: bool,
    ) -> Result<(Cgroup, Option<Deferred>), CgroupError> {
        let request = placement::Request::parse(name, cgroups_path)?;
        let version = detect(root);
        let settings = settings(resources, version.unwrap_or(Version::V1))?;
        let devices = devices::rules(resources)?;
        let noop = Cgroup {
            path: request.path.clone(),
            root: root.to_path_buf(),
            version: None,
            dirs: vec![],
            resources: None,
            known: Known::default(),
        };
        let wanted = settings
            .first()
            .map(|s| s.controller)
            .or(devices.as_ref().map(|_| "devices"));
        let Some(version) = version else {
            return match wanted {
                None => Ok((noop, None)),
                Some(controller) => Err(CgroupError::Unsupported {
                    controller: controller.into(),
                    message: format!("no cgroup filesystem under {}", root.display()),
                }),
            };
        };
        let defer = defer && wanted.is_some() && version == Version::V1;
        let mut later = Vec::new();
        let mut known = Known::default();
        let made = place(root, own, version, &request).and_then(|(p, hierarchies)| {
            known = Known(hierarchies);
            match version {
                Version::V2 => v2::make(root, &p, &settings),
                Version::V1 if defer => {
                    let (controllers, named) = p.leaves.into_iter().partition(|l| !l.0.is_empty());
                    later = controllers;
                    let planned = later.iter().map(|(_, _, leaf)| leaf.clone());
                    Ok(planned.chain(v1::make(&named)?).collect())
                }
                Version::V1 => v1::make(&p.leaves),
            }
        });
        let cgroup = match made {
            Ok(dirs) => Cgroup {
                path: request.path,
                root: root.to_path_buf(),
                version: Some(version),
                dirs,
                resources: resources.cloned(),
                known,
            },
            Err(e) if wanted.is_none() => {
                tracing::debug!("running without a cgroup: {}", crate::error_line(&e));
                return Ok((noop, None));
            }
            Err(e) => return Err(with_hint(e, version)),
        };
        let rest = Deferred {
            leaves: later,
            settings,
            devices,
        };
        if defer {
            return Ok((cgroup, Some(rest)));
        }
        if let Err(e) = rest.apply(&cgroup) {
            // Nothing half-done: a cgroup without its limits is not left behind.
            let _ = cgroup.destroy();
            return Err(e);
        }
        Ok((cgroup, None))
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
        let request = placement::Request::parse(name, cgroups_path)?;
        let version = detect(root);
        let dirs: Vec<PathBuf> = match version {
            Some(v) => {
                let own = own_cgroup(cgroups_path)?;
                let (mut planned, _) = place(root, &own, v, &request)?;
                if let Some(split) = planned.split {
                    // Not split yet: where it would be.
                    planned.leaves = vec![("", split.clone(), split.join(&request.path))];
                }
                planned
                    .leaves
                    .into_iter()
                    .map(|(_, _, leaf)| leaf)
                    .collect()
            }
            None => vec![],
        };
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        Ok(Cgroup {
            path: request.path,
            root: root.to_path_buf(),
            version: version.filter(|_| !dirs.is_empty()),
            dirs,
            resources: None,
            known: Known::default(),
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

    /// The `tasks` files of the cgroup's v1 directories, where a process moves itself
    /// by writing `0` (see `born`).
    pub(crate) fn v1_tasks(&self) -> Vec<PathBuf> {
        let v1 = self.dirs.iter().filter(|d| !self.in_cgroup2(d));
        v1.map(|d| d.join("tasks")).collect()
    }

    /// Whether `dir` is in a cgroup2 hierarchy (a v2 host's, or a hybrid one's `unified`).
    fn in_cgroup2(&self, dir: &Path) -> bool {
        if self.version == Some(Version::V2) {
            return true;
        }
        let point = self.hierarchy_of(dir);
        match self.known(&point) {
            Some(h) => h.cgroup2,
            None => point.join("cgroup.controllers").exists(),
        }
    }

    /// The real name of the v1 hierarchy mounted at `point` (see `v1::real_name`).
    fn real_name(&self, point: &Path) -> Option<OsString> {
        match self.known(point) {
            Some(h) => Some(OsString::from(&h.name)),
            None => v1::real_name(point),
        }
    }

    fn known(&self, point: &Path) -> Option<&placement::Hierarchy> {
        self.known.0.iter().find(|h| h.mount == point)
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
        // Most often the processes are gone (the init was reaped): an rmdir of each
        // directory then succeeds with nothing read. A busy one (EBUSY: processes left)
        // takes the kill loop.
        if self.remove_empty() {
            return Ok(());
        }
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

    /// Removes each directory while the removals succeed; true when none is left.
    fn remove_empty(&self) -> bool {
        self.dirs.iter().all(|dir| match std::fs::remove_dir(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == ErrorKind::NotFound,
        })
    }

    /// The directory holding the memory controller's files, if the cgroup has one.
    pub(crate) fn memory_dir(&self) -> Option<&Path> {
        self.version?;
        self.dir_for("memory").ok()
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
                // A hybrid host's v2 kill does not reach tasks a v1 freezer holds (a paused
                // container): thawed, they die.
                if let Some(f) = freezer {
                    let _ = std::fs::write(f.join("freezer.state"), "THAWED");
                }
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
                value: s.value.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Device rules: written to v1 `devices.*`, or a device program attached on v2.
    fn apply_devices(&self, rules: Option<&[devices::Rule]>) -> Result<(), CgroupError> {
        let Some(rules) = rules else {
            return Ok(());
        };
        match self.version {
            Some(Version::V2) => devices::apply_v2(self.dir_for("devices")?, rules),
            _ => devices::apply_v1(self.dir_for("devices")?, rules),
        }
    }

    /// The first of the cgroup's directories holding `file` (v1 controllers may share a
    /// hierarchy under another name: `cpuacct` in `cpu,cpuacct`).
    fn dir_with(&self, file: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .map(PathBuf::as_path)
            .find(|d| d.join(file).exists())
    }

    /// The hierarchy (its mount) a directory of this cgroup is in: the root on v2,
    /// `<root>/<hierarchy>` on v1.
    fn hierarchy_of(&self, dir: &Path) -> PathBuf {
        match (self.version, dir.strip_prefix(&self.root)) {
            (Some(Version::V1), Ok(rest)) => match rest.components().next() {
                Some(first) => self.root.join(first),
                None => self.root.clone(),
            },
            _ => self.root.clone(),
        }
    }

    fn dir_for(&self, controller: &'static str) -> Result<&Path, CgroupError> {
        let found = match self.version {
            Some(Version::V2) => self.dirs.first().map(PathBuf::as_path),
            _ => self
                .dirs
                .iter()
                .find(|d| {
                    self.hierarchy_of(d)
                        .file_name()
                        .is_some_and(|h| h == controller)
                })
                .map(PathBuf::as_path),
        };
        found.ok_or_else(|| CgroupError::Unsupported {
            controller: controller.into(),
            message: "the host has no v1 hierarchy for this controller".into(),
        })
    }
}

/// v2 when the root is a cgroup2 mount, v1 when it holds controller hierarchies.
fn detect(root: &Path) -> Option<Version> {
    if root.join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if v1::present(root) {
        Some(Version::V1)
    } else {
        None
    }
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

/// The caller's `/proc/self/cgroup`, read only when the request is relative to it.
fn own_cgroup(cgroups_path: Option<&str>) -> Result<String, CgroupError> {
    if cgroups_path.is_none_or(|p| p.starts_with('/')) {
        return Ok(String::new());
    }
    let path = PathBuf::from("/proc/self/cgroup");
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })
}

/// Plans the request's directories from this host's facts (see `placement`), and splits
/// the caller's v2 cgroup when the plan says so; returns the v1 hierarchies found too.
fn place(
    root: &Path,
    own: &str,
    version: Version,
    request: &placement::Request,
) -> Result<(placement::Placement, Vec<placement::Hierarchy>), CgroupError> {
    let hierarchies: Vec<placement::Hierarchy> = match version {
        Version::V2 => vec![],
        Version::V1 => v1::hierarchies(root)
            .into_iter()
            .map(|(controller, mount, name)| placement::Hierarchy {
                controller,
                name: name.to_string_lossy().into_owned(),
                cgroup2: mount.join("cgroup.controllers").exists(),
                mount,
            })
            .collect(),
    };
    let facts = placement::Facts {
        root,
        version,
        hierarchies: &hierarchies,
        own,
        writable: &writable,
    };
    Ok((placement::plan(request, &facts)?, hierarchies))
}

/// Whether this process may make cgroups in `dir` and move processes into it.
fn writable(dir: &Path) -> bool {
    use nix::unistd::{AccessFlags, access};
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
        && access(&dir.join("cgroup.procs"), AccessFlags::W_OK).is_ok()
}

/// The hint for a cgroup this process may not make: what actually helps, for a rootless
/// caller on this layout or for root.
fn hint(version: Version, errno: Option<i32>) -> &'static str {
    let rootless = !nix::unistd::geteuid().is_root();
    match (errno, rootless, version) {
        (Some(libc::EROFS), _, _) => " (the cgroup filesystem is read-only here)",
        (Some(libc::EACCES | libc::EPERM) | None, true, Version::V2) => {
            " (run under a delegated cgroup: systemd-run --user --scope -p Delegate=yes COMMAND, \
             or in a unit with Delegate=yes)"
        }
        (Some(libc::EACCES | libc::EPERM) | None, true, Version::V1) => {
            " (cgroup v1 is not delegated to users: root must make a cgroup you own in each \
             hierarchy and move your shell into it, or run as root)"
        }
        (Some(libc::EACCES | libc::EPERM) | None, false, _) => {
            " (not writable: a systemd unit needs Delegate=yes)"
        }
        _ => "",
    }
}

/// Adds the hint to an error about a cgroup this process may not make.
fn with_hint(e: CgroupError, version: Version) -> CgroupError {
    match e {
        CgroupError::Create { path, source, .. } => CgroupError::Create {
            hint: hint(version, source.raw_os_error()),
            path,
            source,
        },
        CgroupError::NotDelegated { path, .. } => CgroupError::NotDelegated {
            path,
            hint: hint(version, None),
        },
        e => e,
    }
}

/// Makes cgroup directory `path`; true when it did not exist.
fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CgroupError::Create {
            path: path.into(),
            hint: "",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests;
