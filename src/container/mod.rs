//! Running a process in its own namespaces, on its own rootfs, with its own id range.
