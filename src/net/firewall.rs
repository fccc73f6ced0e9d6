//! warren's nftables table: masquerade out of non-internal networks, published ports
//! (DNAT from the host's addresses, from the host itself and hairpin), isolation between
//! networks. The table is a pure function of the networks and endpoints on record, so
//! `apply` after any change, or after a crash, makes the host match the files.
//!
//! (Stub: the firewall helper replaces this file.)

use super::{Endpoint, NetworkDef};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nftables: {0}")]
    Nft(String),
}

/// Makes warren's table exactly what `networks` and `endpoints` call for, in one
/// transaction; with no networks, removes the table. Callers hold the networks lock.
pub fn apply(networks: &[NetworkDef], endpoints: &[Endpoint]) -> Result<(), FirewallError> {
    let _ = (networks, endpoints);
    Ok(())
}
