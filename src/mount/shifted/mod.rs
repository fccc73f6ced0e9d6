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

mod checks;
mod methods;
mod record;
mod spec;
mod view;

pub(crate) use checks::is_mountpoint;
pub(crate) use record::RECORD;
pub use spec::{Attempt, DENY_ENV, Method, MountError, MountReport, MountSpec, denied_from_env};
pub use view::{unmount, views_dir};

use crate::dirs;
use checks::{check_separate, resolve};
use methods::mount_method;
use record::Record;
use spec::{io_at, summary};
use std::io;

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
    let spec = &absolute(spec)?;
    if dirs::is_root() && is_mountpoint(&spec.mountpoint)? {
        return Err(MountError::AlreadyMounted {
            path: spec.mountpoint.clone(),
        });
    }
    let record = Record::load(&spec.intermediate)?;
    let mut deny = spec.deny.clone();
    deny.extend(denied_from_env());

    let (candidates, why_prefix) = candidates(spec, record.as_ref())?;

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
                    error: crate::error_line(&e),
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

/// `spec` with absolute paths (they are recorded, and shown in mountinfo), checked to be
/// separate directories; INTERMEDIATE is created.
fn absolute(spec: &MountSpec) -> Result<MountSpec, MountError> {
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
    Ok(spec)
}

/// The methods to try, and why: an INTERMEDIATE already set up keeps its method (its
/// upper dir only makes sense with it), after checking it matches the request.
fn candidates(
    spec: &MountSpec,
    record: Option<&Record>,
) -> Result<(Vec<Method>, String), MountError> {
    Ok(match (record, spec.method) {
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
    })
}
