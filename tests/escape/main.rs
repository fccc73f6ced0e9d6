//! Escape probes: each tries a way out of the box (container -> host, container ->
//! container, host user -> container, hostile image) and fails if it works again.
//! docs/SECURITY.md maps each threat to the probe that shows it is closed.
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/rootfs.rs"]
mod rootfs;

mod cgroup;
mod exe;
mod exec;
mod ids;
mod perms;
mod tar;
