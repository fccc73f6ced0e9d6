//! Rootless networking: pasta (package `passt`) or slirp4netns attached to a container's
//! network namespace, forwarding published host ports to it.
//!
//! (Stub: the rootless-networking helper replaces this file.)

use super::PortMapping;

/// Which user-mode network stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Pasta,
    Slirp4netns,
}

#[derive(Debug, thiserror::Error)]
pub enum UsermodeError {
    #[error("{0} is not installed (apt-get install {1})")]
    Missing(&'static str, &'static str),
}

/// The running helper of one container; dropping it does not stop it (it exits with the
/// container's network namespace).
#[derive(Debug)]
pub struct Attached {
    pub pid: i32,
}

/// Attaches `tool` to the network namespace of `pid` (a created container's init, in
/// its user namespace), publishing `ports` (host addresses default to loopback only).
pub fn attach(tool: Tool, pid: i32, ports: &[PortMapping]) -> Result<Attached, UsermodeError> {
    let _ = (tool, pid, ports);
    Err(UsermodeError::Missing("pasta", "passt"))
}
