//! The name server of a network: a small responder on the bridge's address (port 53)
//! that answers its containers' names and aliases from the network's endpoint files and
//! forwards every other question to the host's resolvers (podman's aardvark-dns).
//!
//! (Stub: the DNS helper replaces this file.)

use super::NetworkDef;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the name server of network {0}")]
    Server(String),
}

/// Starts the network's responder unless one runs: `exe` re-executed (see
/// [`crate::main_hook`]), answering from the `*.json` [`super::Endpoint`] files in
/// `endpoints`; `run_dir` holds its pid file.
pub fn ensure(
    net: &NetworkDef,
    endpoints: &Path,
    exe: &Path,
    run_dir: &Path,
) -> Result<(), DnsError> {
    let _ = (net, endpoints, exe, run_dir);
    Ok(())
}

/// Stops the network's responder (when the network is removed).
pub fn stop(net: &NetworkDef, run_dir: &Path) -> Result<(), DnsError> {
    let _ = (net, run_dir);
    Ok(())
}
