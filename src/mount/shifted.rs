//! A shifted view of an image: what a container mounts as its root. One API over three
//! methods, fastest first:
//!
//! - `idmap`: each lower layer is an idmapped mount (ids `base..base+R` seen as
//!   `S..S+R`) under an overlay. Nothing is walked: the cost does not depend on the tree.
//! - `metacopy`: an overlay with `metacopy=on,index=on`, then `idmap::shift` walks the
//!   view; only metadata is copied up.
//! - `copy`: a full shifted copy in `INTERMEDIATE/copy`, bind-mounted at the mountpoint
//!   (rootless: left there for the caller, since an unprivileged user cannot mount in the
//!   initial namespaces).
//!
//! The container's writes land in INTERMEDIATE (`upper/`, `work/`, or `copy/`); the lower
//! layers are never written. What was applied is recorded in `INTERMEDIATE/shift-mount.json`
//! (written atomically), so mounting the same INTERMEDIATE again walks nothing.

use super::copy::{self, CopyError};
use super::idmapped::{self, IdmapError, Mapping};
use super::overlay::{self, Layer, Overlay, OverlayError};
use super::rootless::{self, RootlessError};
use crate::idmap::range::{IdRange, Shift};
use crate::idmap::shift::{self as engine, ShiftError, ShiftOptions};
use crate::{atomic, dirs, sys};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The record of what was applied to an INTERMEDIATE directory.
pub const RECORD: &str = "shift-mount.json";
/// Test and operations knob: a comma-separated list of methods to treat as refused.
pub const DENY_ENV: &str = "WARREN_MOUNT_DENY";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Idmap,
    Metacopy,
    Copy,
}

impl Method {
    /// Fastest first: the order `auto` tries.
    pub const ALL: [Method; 3] = [Method::Idmap, Method::Metacopy, Method::Copy];

    pub fn name(self) -> &'static str {
        match self {
            Method::Idmap => "idmap",
            Method::Metacopy => "metacopy",
            Method::Copy => "copy",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| MountError::UnknownMethod(s.to_string()))
    }
}

/// What to mount.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// Lower layers, top-most first; never written.
    pub lowers: Vec<PathBuf>,
    /// Holds the container's writes and the record of the applied shift.
    pub intermediate: PathBuf,
    pub mountpoint: PathBuf,
    pub shift: Shift,
    /// `None`: the fastest method allowed (auto).
    pub method: Option<Method>,
    /// Re-shift an INTERMEDIATE recorded with another shift instead of refusing.
    pub reshift: bool,
    /// Methods to treat as refused (added to those in `WARREN_MOUNT_DENY`).
    pub deny: Vec<Method>,
}

impl MountSpec {
    pub fn new(
        lowers: Vec<PathBuf>,
        intermediate: PathBuf,
        mountpoint: PathBuf,
        shift: Shift,
    ) -> Self {
        MountSpec {
            lowers,
            intermediate,
            mountpoint,
            shift,
            method: None,
            reshift: false,
            deny: Vec::new(),
        }
    }
}

/// A method that was tried and refused.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub method: Method,
    pub error: String,
}

/// What a mount did.
#[derive(Clone, Debug, Serialize)]
pub struct MountReport {
    pub method: Method,
    /// Why this method: chosen, forced, recorded, or what refused the faster ones.
    pub reason: String,
    pub mountpoint: PathBuf,
    /// Where the shifted view is: the mountpoint, or `INTERMEDIATE/copy` when rootless.
    pub view: PathBuf,
    /// False only for a rootless copy (nothing could be mounted).
    pub mounted: bool,
    pub shift: Shift,
    /// Entries whose owner changed in this call (0 when nothing was walked).
    pub entries_shifted: u64,
    /// Whether this call walked (or copied) the tree.
    pub walked: bool,
    /// Faster methods that were refused, in order.
    pub refused: Vec<Attempt>,
    /// Wall time of the whole call, in microseconds.
    pub elapsed_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("unknown method {0:?}: expected auto, idmap, metacopy or copy")]
    UnknownMethod(String),
    #[error("no lower layer given")]
    NoLower,
    #[error("lower layer {path}: {source}")]
    Lower { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is already a mount point (a view an interrupted run left there goes with `shift-mount --unmount {path}`)"
    )]
    AlreadyMounted { path: PathBuf },
    #[error("{path} is not a mount point")]
    NotMounted { path: PathBuf },
    #[error(
        "{inner_role} {inner} {relation} {outer_role} {outer}: LOWER, INTERMEDIATE and MOUNTPOINT must be separate directories"
    )]
    Overlap {
        inner_role: &'static str,
        inner: PathBuf,
        /// "is the same directory as" or "is inside".
        relation: &'static str,
        outer_role: &'static str,
        outer: PathBuf,
    },
    #[error("{path} is not a view mounted by shift-mount: {reason}; left mounted")]
    NotAView { path: PathBuf, reason: String },
    #[error(
        "{intermediate} was shifted with {recorded}, not {requested}: use another directory, or --reshift"
    )]
    ShiftMismatch {
        intermediate: PathBuf,
        recorded: Shift,
        requested: Shift,
    },
    #[error(
        "{intermediate} was set up with method {recorded}; it cannot be mounted with {requested}"
    )]
    MethodMismatch {
        intermediate: PathBuf,
        recorded: Method,
        requested: Method,
    },
    #[error("{intermediate} records lower layers {recorded:?}, not {requested:?}")]
    LowerMismatch {
        intermediate: PathBuf,
        recorded: Vec<PathBuf>,
        requested: Vec<PathBuf>,
    },
    #[error("unreadable record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("method {method} refused: {reason}")]
    Refused { method: Method, reason: String },
    #[error("no method could mount {mountpoint}: {}", summary(.refused))]
    AllRefused {
        mountpoint: PathBuf,
        refused: Vec<Attempt>,
    },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("shifting {path}: {source}")]
    Shift { path: PathBuf, source: ShiftError },
    #[error("shifting {path}: {count} entries failed, first: {first}")]
    ShiftFailures {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("rootless copy: {0}")]
    Rootless(Box<RootlessError>),
    #[error("cannot unmount {path}: {source}")]
    Unmount { path: PathBuf, source: io::Error },
}

fn summary(refused: &[Attempt]) -> String {
    refused
        .iter()
        .map(|a| format!("{}: {}", a.method, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl MountError {
    /// True when trying a slower method may help (the kernel or filesystem refused this
    /// one); false for errors in the request or the directories themselves.
    fn falls_back(&self) -> bool {
        matches!(
            self,
            MountError::Refused { .. } | MountError::Overlay(_) | MountError::Idmap(_)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    /// A walk or copy was started; a crash here means: do it again.
    Shifting,
    Shifted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    method: Method,
    shift: Shift,
    lowers: Vec<PathBuf>,
    state: State,
}

const RECORD_VERSION: u32 = 1;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> MountError + '_ {
    move |source| MountError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Record {
    fn load(intermediate: &Path) -> Result<Option<Record>, MountError> {
        let path = intermediate.join(RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| MountError::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MountError::Io { path, source: e }),
        }
    }

    fn store(&self, intermediate: &Path) -> Result<(), MountError> {
        let path = intermediate.join(RECORD);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MountError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic::write(&path, &bytes).map_err(io_at(&path))
    }
}

/// The methods named in `WARREN_MOUNT_DENY`.
pub fn denied_from_env() -> Vec<Method> {
    std::env::var(DENY_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| m.parse().ok())
        .collect()
}

/// Mounts the shifted view described by `spec`. On error nothing stays mounted.
pub fn mount(spec: &MountSpec) -> Result<MountReport, MountError> {
    mount_with_progress(spec, None)
}

/// [`mount`], calling `progress` with the entries done while walking or copying.
pub fn mount_with_progress(
    spec: &MountSpec,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<MountReport, MountError> {
    let started = std::time::Instant::now();
    if spec.lowers.is_empty() {
        return Err(MountError::NoLower);
    }
    // Absolute paths: they are recorded, and shown in mountinfo.
    let mut spec = spec.clone();
    for lower in spec.lowers.iter_mut() {
        let canon = std::fs::canonicalize(&*lower).map_err(|source| MountError::Lower {
            path: lower.clone(),
            source,
        })?;
        if !canon.is_dir() {
            return Err(MountError::Lower {
                path: lower.clone(),
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        *lower = canon;
    }
    spec.mountpoint = std::fs::canonicalize(&spec.mountpoint).map_err(io_at(&spec.mountpoint))?;
    // Checked before INTERMEDIATE is created: creating it inside LOWER would write there.
    let intermediate = resolve(&spec.intermediate).map_err(io_at(&spec.intermediate))?;
    check_separate(&spec.lowers, &intermediate, &spec.mountpoint)?;
    std::fs::create_dir_all(&intermediate).map_err(io_at(&intermediate))?;
    spec.intermediate = std::fs::canonicalize(&intermediate).map_err(io_at(&intermediate))?;
    let spec = &spec;
    if dirs::is_root() && is_mountpoint(&spec.mountpoint)? {
        return Err(MountError::AlreadyMounted {
            path: spec.mountpoint.clone(),
        });
    }
    let record = Record::load(&spec.intermediate)?;
    let mut deny = spec.deny.clone();
    deny.extend(denied_from_env());

    // An INTERMEDIATE already set up keeps its method: its upper dir only makes sense with it.
    let (candidates, why_prefix) = match (&record, spec.method) {
        (Some(r), Some(m)) if r.method != m => {
            return Err(MountError::MethodMismatch {
                intermediate: spec.intermediate.clone(),
                recorded: r.method,
                requested: m,
            });
        }
        (Some(r), _) => {
            if r.lowers != spec.lowers {
                return Err(MountError::LowerMismatch {
                    intermediate: spec.intermediate.clone(),
                    recorded: r.lowers.clone(),
                    requested: spec.lowers.clone(),
                });
            }
            if r.shift != spec.shift && !spec.reshift {
                return Err(MountError::ShiftMismatch {
                    intermediate: spec.intermediate.clone(),
                    recorded: r.shift,
                    requested: spec.shift,
                });
            }
            (
                vec![r.method],
                format!("recorded in {}", spec.intermediate.join(RECORD).display()),
            )
        }
        (None, Some(m)) => (vec![m], "requested".to_string()),
        (None, None) => (Method::ALL.to_vec(), String::new()),
    };

    let mut refused = Vec::new();
    for method in candidates {
        let attempt = if deny.contains(&method) {
            Err(MountError::Refused {
                method,
                reason: format!("denied by {DENY_ENV}"),
            })
        } else {
            mount_method(method, spec, record.as_ref(), progress)
        };
        match attempt {
            Ok((entries_shifted, walked, view, mounted, why)) => {
                let mut reason = if why_prefix.is_empty() {
                    why.to_string()
                } else {
                    format!("{why_prefix}; {why}")
                };
                if !refused.is_empty() {
                    reason = format!("{reason} (faster methods refused: {})", summary(&refused));
                }
                return Ok(MountReport {
                    method,
                    reason,
                    mountpoint: spec.mountpoint.clone(),
                    view,
                    mounted,
                    shift: spec.shift,
                    entries_shifted,
                    walked,
                    refused,
                    elapsed_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                });
            }
            Err(e) if spec.method.is_none() && record.is_none() && e.falls_back() => {
                refused.push(Attempt {
                    method,
                    error: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(MountError::AllRefused {
        mountpoint: spec.mountpoint.clone(),
        refused,
    })
}

/// (entries shifted, walked, view, mounted, why)
type Outcome = (u64, bool, PathBuf, bool, &'static str);

fn mount_method(
    method: Method,
    spec: &MountSpec,
    record: Option<&Record>,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Outcome, MountError> {
    let rootless = !dirs::is_root();
    if rootless && method != Method::Copy {
        return Err(MountError::Refused {
            method,
            reason: "an unprivileged user cannot mount in the initial namespaces".into(),
        });
    }
    let done = record.is_some_and(|r| r.state == State::Shifted && r.shift == spec.shift);
    let new_record = |state| Record {
        version: RECORD_VERSION,
        method,
        shift: spec.shift,
        lowers: spec.lowers.clone(),
        state,
    };
    let upper = spec.intermediate.join("upper");
    let work = spec.intermediate.join("work");
    match method {
        Method::Idmap => {
            let overlay = Overlay {
                lowers: idmapped_lowers(&spec.lowers, spec.shift)?,
                upper: upper.clone(),
                work,
                metacopy: false,
                index: true,
            };
            make_dirs(&[&overlay.upper, &overlay.work])?;
            if record.is_none() {
                own_like_lower(&overlay.upper, &spec.lowers[0], spec.shift)?;
            }
            // Files the container wrote under an older shift are re-owned in the upper dir;
            // the record says so first, so a run that dies midway is walked again.
            let shifted = if record.is_some() && !done {
                new_record(State::Shifting).store(&spec.intermediate)?;
                walk(&upper, spec.shift, progress)?
            } else {
                0
            };
            attach_view(spec, overlay.create()?.as_fd())?;
            finish(spec, new_record(State::Shifted))?;
            Ok((
                shifted,
                record.is_some() && !done,
                spec.mountpoint.clone(),
                true,
                "idmapped lower layers: no per-file work",
            ))
        }
        Method::Metacopy => {
            let overlay = Overlay {
                lowers: spec.lowers.iter().cloned().map(Layer::Path).collect(),
                upper,
                work,
                metacopy: true,
                index: true,
            };
            // A new INTERMEDIATE: the shifted upper dir is built before mounting, with no
            // overlayfs copy-up at all. An upper dir of unknown state is walked instead.
            if record.is_none() && !overlay.upper.exists() {
                let n = metacopy_upper(spec, &overlay.upper, progress)?;
                make_dirs(&[&overlay.work])?;
                if let Err(e) = overlay
                    .create()
                    .map_err(MountError::from)
                    .and_then(|mnt| attach_view(spec, mnt.as_fd()))
                {
                    let _ = crate::tree::remove_tree(&overlay.upper);
                    return Err(e);
                }
                finish(spec, new_record(State::Shifted))?;
                return Ok((
                    n,
                    true,
                    spec.mountpoint.clone(),
                    true,
                    "metacopy overlay: only metadata is copied up, straight into the upper dir",
                ));
            }
            make_dirs(&[&overlay.upper, &overlay.work])?;
            attach_view(spec, overlay.create()?.as_fd())?;
            // Mounted and recorded as a view before the walk: if this process dies midway,
            // `--unmount` takes the view down and the `shifting` record makes the next
            // mount walk again.
            let walked = (|| {
                if done {
                    return Ok(None);
                }
                new_record(State::Shifting).store(&spec.intermediate)?;
                let n = walk(&spec.mountpoint, spec.shift, progress)?;
                new_record(State::Shifted).store(&spec.intermediate)?;
                Ok(Some(n))
            })();
            match walked {
                Ok(n) => Ok((
                    n.unwrap_or(0),
                    n.is_some(),
                    spec.mountpoint.clone(),
                    true,
                    "metacopy overlay: only metadata is copied up",
                )),
                Err(e) => {
                    detach_view(spec);
                    Err(e)
                }
            }
        }
        Method::Copy => {
            let view = spec.intermediate.join("copy");
            let (shifted, walked) = if done && view.is_dir() {
                (0, false)
            } else if rootless && record.is_some_and(|r| r.shift != spec.shift) {
                return Err(MountError::Refused {
                    method,
                    reason: format!(
                        "a rootless copy cannot be re-shifted; remove {} and mount again",
                        spec.intermediate.display()
                    ),
                });
            } else if rootless {
                new_record(State::Shifting).store(&spec.intermediate)?;
                (rootless_copy(spec, &view, progress)?, true)
            } else if record.is_some() && view.is_dir() {
                // Same copy, another shift (--reshift).
                new_record(State::Shifting).store(&spec.intermediate)?;
                (walk(&view, spec.shift, progress)?, true)
            } else {
                new_record(State::Shifting).store(&spec.intermediate)?;
                let tmp = spec.intermediate.join("copy.tmp");
                (
                    fresh_copy(&spec.lowers, &tmp, &view, spec.shift, progress)?,
                    true,
                )
            };
            if rootless {
                new_record(State::Shifted).store(&spec.intermediate)?;
                return Ok((
                    shifted,
                    walked,
                    view,
                    false,
                    "full shifted copy (rootless: not mounted, the view is the copy itself)",
                ));
            }
            bind(spec, &view)?;
            finish(spec, new_record(State::Shifted))?;
            Ok((
                shifted,
                walked,
                spec.mountpoint.clone(),
                true,
                "full shifted copy, bind-mounted",
            ))
        }
    }
}

/// Stores the record of a mounted view; unmounts it again when that fails.
fn finish(spec: &MountSpec, record: Record) -> Result<(), MountError> {
    record
        .store(&spec.intermediate)
        .inspect_err(|_| detach_view(spec))
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: the
/// longest existing prefix is canonicalised and the rest appended (`..` applied lexically:
/// a directory that does not exist is no symlink).
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let parts: Vec<_> = abs.components().collect();
    for i in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..i].iter().collect();
        match std::fs::canonicalize(&prefix) {
            Ok(mut out) => {
                for part in &parts[i..] {
                    match part {
                        std::path::Component::Normal(name) => out.push(name),
                        std::path::Component::ParentDir => {
                            out.pop();
                        }
                        _ => {}
                    }
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// Refuses LOWER, INTERMEDIATE and MOUNTPOINT directories that are the same as, inside,
/// or contain one another (the writes would land in a lower layer, or the view would
/// cover its own layers). Compared by canonical path, by (dev, ino), and by the place in
/// the filesystem (mount root + path below the mount), which sees through bind mounts.
fn check_separate(
    lowers: &[PathBuf],
    intermediate: &Path,
    mountpoint: &Path,
) -> Result<(), MountError> {
    let mut dirs: Vec<(&'static str, &Path)> =
        lowers.iter().map(|l| ("LOWER", l.as_path())).collect();
    dirs.push(("INTERMEDIATE", intermediate));
    dirs.push(("MOUNTPOINT", mountpoint));
    let table = mounts()?;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let overlap = |inner_role, inner: &Path, outer_role, outer: &Path| {
        let (i, o) = (fs_location(inner, &table), fs_location(outer, &table));
        let same = inner == outer
            || id(inner).is_some_and(|x| id(outer) == Some(x))
            || (i.is_some() && i == o);
        let inside = inner.starts_with(outer)
            || i.zip(o).is_some_and(|((idev, ipath), (odev, opath))| {
                idev == odev && ipath.starts_with(opath)
            });
        (same || inside).then(|| MountError::Overlap {
            inner_role,
            inner: inner.to_path_buf(),
            relation: if same {
                "is the same directory as"
            } else {
                "is inside"
            },
            outer_role,
            outer: outer.to_path_buf(),
        })
    };
    for (i, &(a_role, a)) in dirs.iter().enumerate() {
        for &(b_role, b) in &dirs[i + 1..] {
            // Several lower layers may share a tree; the kernel judges those.
            if a_role == "LOWER" && b_role == "LOWER" {
                continue;
            }
            if let Some(e) = overlap(a_role, a, b_role, b).or_else(|| overlap(b_role, b, a_role, a))
            {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Where the canonical `path` is in its filesystem: (device, path from the filesystem's
/// root), from the mount it is under. A directory seen through a bind mount has the same
/// location as through its original path.
fn fs_location(path: &Path, table: &[MountInfo]) -> Option<(String, PathBuf)> {
    // The deepest mount point above `path`; the last of equals is the one on top.
    let mount = table
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())?;
    let below = path.strip_prefix(&mount.point).ok()?;
    Some((mount.dev.clone(), mount.root.join(below)))
}

/// Gives the overlay's upper root the shifted owner and the mode of the top lower root:
/// overlayfs shows the upper root's attributes, and it must be the container's, not ours.
fn own_like_lower(upper: &Path, lower: &Path, shift: Shift) -> Result<(), MountError> {
    let meta = std::fs::symlink_metadata(lower).map_err(|source| MountError::Lower {
        path: lower.to_path_buf(),
        source,
    })?;
    let map = |id| {
        shift.map(id).map_err(|e| MountError::Refused {
            method: Method::Idmap,
            reason: e.to_string(),
        })
    };
    std::os::unix::fs::lchown(upper, Some(map(meta.uid())?), Some(map(meta.gid())?))
        .map_err(io_at(upper))?;
    std::fs::set_permissions(
        upper,
        std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
    )
    .map_err(io_at(upper))
}

fn make_dirs(dirs: &[&PathBuf]) -> Result<(), MountError> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(io_at(d))?;
    }
    Ok(())
}

/// Each lower as a detached idmapped mount. The source block is the lower root's ids
/// rounded down to the range, so a tree already shifted elsewhere maps too.
fn idmapped_lowers(lowers: &[PathBuf], shift: Shift) -> Result<Vec<Layer>, MountError> {
    let target = IdRange::new(shift.to, shift.range).map_err(|e| MountError::Refused {
        method: Method::Idmap,
        reason: e.to_string(),
    })?;
    let mut namespaces: Vec<((u32, u32), std::os::fd::OwnedFd)> = Vec::new();
    let mut layers = Vec::new();
    for lower in lowers {
        let meta = std::fs::metadata(lower).map_err(|source| MountError::Lower {
            path: lower.clone(),
            source,
        })?;
        let base = (
            idmapped::source_base(meta.uid(), shift.range),
            idmapped::source_base(meta.gid(), shift.range),
        );
        if !namespaces.iter().any(|(b, _)| *b == base) {
            let ns = idmapped::userns_fd(
                Mapping {
                    inside: base.0,
                    target,
                },
                Mapping {
                    inside: base.1,
                    target,
                },
            )?;
            namespaces.push((base, ns));
        }
        let ns = namespaces
            .iter()
            .find(|(b, _)| *b == base)
            .map(|(_, ns)| ns)
            .ok_or_else(|| MountError::Refused {
                method: Method::Idmap,
                reason: "lost a user namespace".into(),
            })?;
        let fd = idmapped::idmapped_clone(lower, ns)?;
        layers.push(Layer::Mount {
            fd,
            source: lower.clone(),
        });
    }
    Ok(layers)
}

/// Copies the lowers to `view` through a temporary directory, so a crash never leaves a
/// half copy that looks whole.
fn fresh_copy(
    lowers: &[PathBuf],
    tmp: &Path,
    view: &Path,
    shift: Shift,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<u64, MountError> {
    for stale in [tmp, view] {
        if stale.exists() {
            crate::tree::remove_tree(stale).map_err(io_at(stale))?;
        }
    }
    match copy::copy_shifted(lowers, tmp, shift, progress) {
        Ok(report) => {
            std::fs::rename(tmp, view).map_err(io_at(view))?;
            Ok(report.shifted)
        }
        Err(e) => {
            let _ = crate::tree::remove_tree(tmp);
            Err(e.into())
        }
    }
}

/// Builds the upper dir of a metacopy overlay in `upper.tmp` and renames it into place, so
/// a crash never leaves a partial one under the final name.
fn metacopy_upper(
    spec: &MountSpec,
    upper: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<u64, MountError> {
    let tmp = spec.intermediate.join("upper.tmp");
    make_dirs(&[&spec.intermediate])?;
    if tmp.exists() {
        crate::tree::remove_tree(&tmp).map_err(io_at(&tmp))?;
    }
    match copy::metacopy_upper(&spec.lowers, &tmp, spec.shift, progress) {
        Ok(report) => {
            std::fs::rename(&tmp, upper).map_err(io_at(upper))?;
            Ok(report.shifted)
        }
        Err(e) => {
            let _ = crate::tree::remove_tree(&tmp);
            // An upper filesystem without trusted xattrs cannot hold a metacopy overlay.
            match e {
                CopyError::Io { source, .. } if source.kind() == io::ErrorKind::Unsupported => {
                    Err(MountError::Refused {
                        method: Method::Metacopy,
                        reason: format!(
                            "{} has no trusted.* xattrs: {source}",
                            spec.intermediate.display()
                        ),
                    })
                }
                e => Err(e.into()),
            }
        }
    }
}

/// A rootless copy: structure and content copied as the caller (who can read the lower
/// layers' real ids), then owners, xattrs and modes applied from inside a user namespace
/// that maps the block (where ids can be set, but the lower layers' ids read as nobody).
fn rootless_copy(
    spec: &MountSpec,
    view: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<u64, MountError> {
    let tmp = spec.intermediate.join("copy.tmp");
    let in_ns = |request| {
        rootless::in_userns(Path::new(rootless::SELF_EXE), spec.shift, request)
            .map_err(|e| MountError::Rootless(Box::new(e)))
    };
    // Leftovers are owned by the block: only the namespace can remove them.
    if tmp.exists() || view.exists() {
        let paths = vec![tmp.as_path().into(), view.into()];
        in_ns(rootless::Request::Remove { paths })?;
    }
    let plan = copy::copy_deferred(&spec.lowers, &tmp, progress).inspect_err(|_| {
        let _ = crate::tree::remove_tree(&tmp);
    })?;
    in_ns(rootless::Request::ApplyPlan {
        tmp: tmp.as_path().into(),
        view: view.into(),
        plan,
    })
}

/// Runs the shifting engine over `root`; any entry that failed fails the whole walk.
fn walk(
    root: &Path,
    shift: Shift,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<u64, MountError> {
    let mut opts = ShiftOptions::new(shift);
    opts.threads = walk_threads();
    let report = engine::shift_tree(root, &opts, progress).map_err(|source| MountError::Shift {
        path: root.to_path_buf(),
        source,
    })?;
    if let Some(first) = report.failures.first() {
        return Err(MountError::ShiftFailures {
            path: root.to_path_buf(),
            count: report.failures.len(),
            first: format!("{}: {}", first.path.display(), first.error),
        });
    }
    Ok(report.shifted)
}

/// Threads for a walk: through an overlay each chown is a copy-up that mostly waits
/// (journal, rename lock), so several per core keep the cores busy.
fn walk_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).min(32)
}

/// Bind-mounts `src` at the mountpoint as a recorded view (open_tree clone + move_mount).
fn bind(spec: &MountSpec, src: &Path) -> Result<(), MountError> {
    let tree = sys::open_tree(
        nix::fcntl::AT_FDCWD,
        src,
        sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC,
    )
    .map_err(io_at(src))?;
    attach_view(spec, tree.as_fd())
}

/// Where mounted views are recorded, one file per mountpoint: `unmount` takes down only
/// what `mount` put up. Under the run dir: mounts, like these files, end at reboot.
pub fn views_dir() -> PathBuf {
    dirs::run_dir().join("views")
}

/// The record of one mounted view.
#[derive(Debug, Serialize, Deserialize)]
struct View {
    mountpoint: PathBuf,
    intermediate: PathBuf,
    /// The mount's id (`sys::mount_id`): another mount stacked on or put in its place
    /// later has another.
    mount_id: u64,
}

impl View {
    fn path(mountpoint: &Path) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
        views_dir().join(format!("{}.json", hex::encode(digest)))
    }

    fn load(mountpoint: &Path) -> Result<Option<View>, MountError> {
        let path = View::path(mountpoint);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<View>(&bytes)
                .map(|v| (v.mountpoint == mountpoint).then_some(v))
                .map_err(|e| MountError::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MountError::Io { path, source: e }),
        }
    }

    fn store(&self) -> Result<(), MountError> {
        let dir = views_dir();
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let path = View::path(&self.mountpoint);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MountError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic::write(&path, &bytes).map_err(io_at(&path))
    }

    fn remove(mountpoint: &Path) {
        let _ = std::fs::remove_file(View::path(mountpoint));
    }
}

/// Attaches the detached mount `mnt` at the mountpoint, recorded first as a view of
/// INTERMEDIATE (a detached mount already has the id it keeps once attached), so a run
/// that dies at any point after this leaves a view `unmount` accepts.
fn attach_view(spec: &MountSpec, mnt: BorrowedFd<'_>) -> Result<(), MountError> {
    let mount_id = sys::mount_id(mnt).map_err(io_at(&spec.mountpoint))?;
    View {
        mountpoint: spec.mountpoint.clone(),
        intermediate: spec.intermediate.clone(),
        mount_id,
    }
    .store()?;
    overlay::attach(mnt, &spec.mountpoint).map_err(|e| {
        View::remove(&spec.mountpoint);
        e.into()
    })
}

/// Takes down a view this call mounted (on a later failure).
fn detach_view(spec: &MountSpec) {
    if detach(&spec.mountpoint).is_ok() {
        View::remove(&spec.mountpoint);
    }
}

/// True when `path` is itself a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> Result<bool, MountError> {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Ok(false);
    };
    Ok(mount_points()?.contains(&canon))
}

/// Every mount point in this mount namespace.
fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    Ok(mounts()?.into_iter().map(|m| m.point).collect())
}

/// One line of /proc/self/mountinfo.
struct MountInfo {
    point: PathBuf,
    /// The directory of the filesystem mounted there (`/` unless a bind of a subtree).
    root: PathBuf,
    /// `major:minor` of the filesystem.
    dev: String,
    /// "FSTYPE from SOURCE", for messages.
    what: String,
}

/// Every mount in this mount namespace, in mount order.
fn mounts() -> Result<Vec<MountInfo>, MountError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(io_at(info))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?.to_string();
            let root = PathBuf::from(unescape(f.next()?));
            let point = PathBuf::from(unescape(f.next()?));
            let mut fs = l.split_once(" - ")?.1.split(' ');
            let what = format!(
                "{} from {}",
                fs.next()?,
                unescape(fs.next()?).to_string_lossy()
            );
            Some(MountInfo {
                point,
                root,
                dev,
                what,
            })
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

fn detach(path: &Path) -> Result<(), MountError> {
    nix::mount::umount2(path, nix::mount::MntFlags::empty()).map_err(|e| MountError::Unmount {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Unmounts a view mounted by [`mount`], and nothing else: a mountpoint with no record in
/// [`views_dir`], or whose top mount is not the one recorded, is refused and left
/// mounted. The idmapped lower mounts were never attached anywhere: they go with the
/// overlay that holds them.
pub fn unmount(mountpoint: &Path) -> Result<(), MountError> {
    let not_mounted = || MountError::NotMounted {
        path: mountpoint.to_path_buf(),
    };
    let canon = std::fs::canonicalize(mountpoint).map_err(|_| not_mounted())?;
    // The last mount listed at a path is the one on top, the one umount would take.
    let Some(what) = mounts()?
        .into_iter()
        .filter(|m| m.point == canon)
        .map(|m| m.what)
        .next_back()
    else {
        return Err(not_mounted());
    };
    let refuse = |reason: String| MountError::NotAView {
        path: canon.clone(),
        reason,
    };
    let Some(view) = View::load(&canon)? else {
        return Err(refuse(format!(
            "{what}, with no record in {}",
            views_dir().display()
        )));
    };
    let top = nix::fcntl::open(
        &canon,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io_at(&canon)(e.into()))?;
    let id = sys::mount_id(top.as_fd()).map_err(io_at(&canon))?;
    drop(top); // an open fd on the mount would make umount fail with EBUSY
    if id != view.mount_id {
        return Err(refuse(format!(
            "{what} covers the view of {} recorded there",
            view.intermediate.display()
        )));
    }
    detach(&canon)?;
    View::remove(&canon);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/var/a\\040b\\134c"), "/var/a b\\c");
        assert_eq!(unescape("/plain\\9"), "/plain\\9");
    }

    #[test]
    fn methods_parse_by_name() {
        assert_eq!("metacopy".parse::<Method>().ok(), Some(Method::Metacopy));
        assert!("overlay".parse::<Method>().is_err());
    }
}
