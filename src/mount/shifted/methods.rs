//! The per-method mount code: idmapped lowers, a metacopy overlay, a shifted copy (bind-mounted,
//! or left in place when rootless).

use super::record::{RECORD_VERSION, Record, State};
use super::spec::{Method, MountError, MountSpec, io_at};
use super::view::{attach_view, detach_view};
use crate::idmap::range::{IdRange, Shift};
use crate::idmap::shift::{self as engine, ShiftOptions};
use crate::mount::copy::{self, CopyError};
use crate::mount::idmapped::{self, Mapping};
use crate::mount::overlay::{Layer, Overlay};
use crate::mount::rootless;
use crate::{dirs, sys};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// (entries shifted, walked, view, mounted, why)
pub(super) type Outcome = (u64, bool, PathBuf, bool, &'static str);

/// Tries one method.
pub(super) fn mount_method(
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
    let at = Job {
        method,
        spec,
        record,
        progress,
        done: record.is_some_and(|r| r.state == State::Shifted && r.shift == spec.shift),
    };
    match method {
        Method::Idmap => idmap(&at),
        Method::Metacopy => metacopy(&at),
        Method::Copy => copy(&at, rootless),
    }
}

/// One method's attempt: what every method reads.
struct Job<'a> {
    method: Method,
    spec: &'a MountSpec,
    record: Option<&'a Record>,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// The record says this shift was applied in full.
    done: bool,
}

impl Job<'_> {
    /// The record this attempt stores.
    fn record(&self, state: State) -> Record {
        Record {
            version: RECORD_VERSION,
            method: self.method,
            shift: self.spec.shift,
            lowers: self.spec.lowers.clone(),
            state,
        }
    }
}

/// Idmapped lower layers under an overlay: nothing is walked, except an upper dir written
/// under an older shift.
fn idmap(at: &Job<'_>) -> Result<Outcome, MountError> {
    let Job {
        spec,
        record,
        progress,
        done,
        ..
    } = *at;
    let new_record = |state| at.record(state);
    let upper = spec.intermediate.join("upper");
    let work = spec.intermediate.join("work");
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

/// A metacopy overlay whose upper dir is built shifted (a new INTERMEDIATE) or walked.
fn metacopy(at: &Job<'_>) -> Result<Outcome, MountError> {
    let Job {
        spec,
        record,
        progress,
        done,
        ..
    } = *at;
    let new_record = |state| at.record(state);
    let upper = spec.intermediate.join("upper");
    let work = spec.intermediate.join("work");
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

/// A full shifted copy in `INTERMEDIATE/copy`, bind-mounted (as root) or left there.
fn copy(at: &Job<'_>, rootless: bool) -> Result<Outcome, MountError> {
    let Job {
        method,
        spec,
        record,
        progress,
        done,
        ..
    } = *at;
    let new_record = |state| at.record(state);
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

/// Stores the record of a mounted view; unmounts it again when that fails.
fn finish(spec: &MountSpec, record: Record) -> Result<(), MountError> {
    record
        .store(&spec.intermediate)
        .inspect_err(|_| detach_view(spec))
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
            let ns =
                idmapped::userns_fd(Mapping::onto(base.0, target), Mapping::onto(base.1, target))?;
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
