//! cgroups (placeholder; owned by the seccomp branch).
