//! A full copy of one or more lower layers into a fresh directory, shifted on the way:
//! the fallback when the kernel allows neither an idmapped nor a metacopy overlay.
//!
//! Everything goes through dir fds without following symlinks. Ids are mapped with
//! [`Shift::map`] and id-carrying xattrs with [`xattr::shift_value`] (the rules of
//! shift-own); the owner is set before capabilities and mode, since chown clears both.
//! Hardlinks stay hardlinks. Layers are merged as overlayfs would: top-most wins, a
//! whiteout (char 0:0) removes, an opaque directory hides what is below.
//!
//! A rootless copy ([`copy_deferred`], [`apply_plan`]) keeps, per path, only the top-most
//! layer's metadata, and applies it from a user namespace only to an entry still of the
//! recorded type.
//!
//! [`metacopy_upper`] writes no file data at all: it builds the upper directory a
//! `metacopy=on` overlay would hold after a shift through it copied every entry up, each
//! regular file a sparse file of the right size marked `trusted.overlay.metacopy`, whose
//! data overlayfs reads from the lower file at the same path. Built directly on the upper
//! filesystem, before the overlay is mounted, it skips overlayfs's per-entry copy-up (a
//! temporary file in `work/` and a rename, serialised on the filesystem's rename lock).
//!
//! [`xattr::shift_value`]: crate::idmap::xattr::shift_value

mod meta;
mod plan;
mod walk;

pub use meta::{CopyError, CopyReport};
pub use plan::{Plan, apply_plan};

use crate::idmap::range::Shift;
use std::path::{Path, PathBuf};
use walk::{Data, copy_into};

/// Copies `lowers` (top-most first) into `dst`, which must not exist yet, applying `shift`.
pub fn copy_shifted(
    lowers: &[PathBuf],
    dst: &Path,
    shift: Shift,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<CopyReport, CopyError> {
    copy_into(lowers, dst, shift, progress, None, Data::Copy)
}

/// Builds, in `dst` (which must not exist yet), the upper directory of a `metacopy=on`
/// overlay over `lowers` in which every entry was copied up shifted: the same tree as
/// [`copy_shifted`] but no file data. `dst` must be on a filesystem with `trusted.*`
/// xattrs, and the overlay must be mounted with `metacopy=on` and `lowers` unchanged.
pub fn metacopy_upper(
    lowers: &[PathBuf],
    dst: &Path,
    shift: Shift,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<CopyReport, CopyError> {
    copy_into(lowers, dst, shift, progress, None, Data::Metacopy)
}

/// Copies structure and content only, as the caller, and returns the owners, xattrs, modes
/// and times to apply with [`apply_plan`] (for a rootless copy, whose ids can only be set
/// from inside a user namespace, where the source's real ids cannot be read).
pub fn copy_deferred(
    lowers: &[PathBuf],
    dst: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Plan, CopyError> {
    let mut plan = Plan::default();
    copy_into(
        lowers,
        dst,
        Shift { to: 0, range: 0 },
        progress,
        Some(&mut plan),
        Data::Copy,
    )?;
    Ok(plan)
}
