//! The container's filesystem view: mounts from the config, `/dev`, `pivot_root`, masked
//! and read-only paths. [`Plan::new`] prepares everything (C strings, flags, device
//! numbers) in the parent (`plan`); [`Plan::apply`] and [`Plan::finish`] run in the
//! child between clone and exec (`apply`) and therefore allocate nothing and take no
//! lock.
//!
//! A `cgroup` mount never shows the host's tree: only the container's own cgroup, in
//! each hierarchy, read-only unless the config says `rw` (see [`Cgroups`]); a mount that
//! cannot be made so is an error naming the hierarchy. A mount onto a device's path
//! (`/dev/null`) stands in for that device. `rro`, and the bind of the host's /sys that
//! replaces a sysfs a user namespace may not mount, are read-only all the way down.

mod apply;
mod options;
mod overlay;
mod plan;
#[cfg(test)]
mod tests;

pub use options::propagation_flag;
pub use overlay::{RootOverlay, Upper};
pub(crate) use plan::{Cgroups, Plan};
#[cfg(test)]
pub(crate) use plan::{Inside, PathError};
