//! Running a process in its own namespaces, on its own rootfs, with its own id range.

pub mod cgroup;
pub mod seccomp;
