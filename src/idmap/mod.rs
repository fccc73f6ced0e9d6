//! uid/gid ranges: parsing and mapping ([`range`]), the subordinate id files
//! ([`subid`]), where blocks come from ([`pool`]), per-container reservations
//! ([`alloc`], their data and errors in `reservation`), making user namespaces and writing their maps ([`userns`]), re-owning
//! trees ([`shift`]), setting an entry's metadata by name ([`meta`]) and the xattrs that
//! carry ids ([`xattr`]).

pub mod alloc;
pub mod keeper;
pub(crate) mod meta;
pub mod pool;
pub mod range;
mod reservation;
pub mod shift;
pub mod subid;
pub mod userns;
pub mod xattr;

pub use range::{IdRange, Shift};
