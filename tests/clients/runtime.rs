//! The fixes of issue 16 this part owns, on the runc-compatible CLI itself (no client).
