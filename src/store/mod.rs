//! The chunk-deduplicated, content-addressed image store.
pub mod busybox;
pub mod oci;
