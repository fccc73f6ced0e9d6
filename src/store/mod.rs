//! The chunk-deduplicated, content-addressed image store.
