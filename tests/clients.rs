//! warren under the real clients (issue 16): podman (rootful and rootless), containerd's
//! `ctr` and docker run each operation once with runc and once with warren as their OCI
//! runtime, and warren's observable result (exit codes, output, state) must equal runc's.
//!
//! One test per operation, named after its client: `cargo test --test clients podman_`,
//! `ctr_`, `docker_`, `podman_rootless_`. The daemons (containerd, dockerd) are started by
//! the tests with all their state under a scratch directory and stopped by pid when the
//! last test using them ends.

mod common;
#[path = "common/rootfs.rs"]
mod rootfs;

#[path = "clients/harness.rs"]
mod harness;

#[path = "clients/steps.rs"]
mod steps;

#[path = "clients/daemons.rs"]
mod daemons;

#[path = "clients/podman.rs"]
mod podman;

#[path = "clients/containerd.rs"]
mod containerd;

#[path = "clients/docker.rs"]
mod docker;

#[path = "clients/runtime.rs"]
mod runtime;
