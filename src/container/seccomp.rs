//! Seccomp profiles (placeholder; owned by the seccomp branch).
