//! Shifted views of an image: overlayfs ([`overlay`]), idmapped mounts ([`idmapped`]),
//! a shifted full copy ([`copy`], made from a user namespace when rootless: [`rootless`]),
//! and the one API over them ([`shifted`]).

pub mod copy;
pub(crate) mod idmapped;
pub mod overlay;
pub mod rootless;
pub mod shifted;
mod wire;

pub use shifted::{Method, MountError, MountReport, MountSpec, mount, unmount};
