//! uid/gid ranges: parsing and mapping ([`range`]), per-container reservations
//! ([`alloc`]), re-owning trees ([`shift`]) and the xattrs that carry ids ([`xattr`]).

pub mod alloc;
pub mod range;
pub mod shift;
pub mod xattr;

pub use range::{IdRange, Shift};
