//! warren: a rootless container runtime and image toolkit.
//!
//! A host keeps one copy of each image in a chunk-deduplicated store ([`store`]); every
//! container sees it through its own uid/gid block ([`idmap`]) by a shifted mount
//! ([`mount`]), and runs in its own namespaces ([`container`]). [`runtime::Runtime`] ties
//! these together for the `warren` CLI, systemd units and schedulers that link this crate.
//! See `docs/ARCHITECTURE.md` for the module map and data flow.

pub mod atomic;
pub mod container;
pub mod dirs;
pub mod idmap;
pub mod mount;
pub mod runtime;
pub mod store;
pub mod sys;
pub mod systemd;
