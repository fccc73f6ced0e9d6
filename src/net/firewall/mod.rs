//! warren's nftables tables: masquerade out of non-internal networks, published ports
//! (DNAT from the host's addresses, from the host itself and hairpin), isolation between
//! networks. One pair of tables per state directory (`warren` for the default one,
//! `warren-HASH` for others). The tables are a pure function of the networks and endpoints on record
//! ([`plan`]), loaded in one transaction ([`nft`]), so `apply` after any change, or
//! after a crash, makes the host match the files.
//!
//! Networks change through `nft -j -f -` (the `nftables` crate; Debian package
//! `nftables`), as podman's netavark does: nft checks the whole batch before the kernel
//! sees it, and the batch is one nf_tables transaction (all or nothing). A container's
//! join or leave ([`update`]) only adds or deletes its elements of the published-port
//! maps and the isolation set over nf_tables netlink ([`elements`]), one small
//! transaction with no process and no reload, while the tables were loaded for the
//! same networks (a marker set says so); else it too loads them whole.
//!
//! What callers owe the rules: each container's veth has hairpin mode on (with
//! br_netfilter, a container reaching its own published port is bridged back out of its
//! port), and a network's bridge is deleted before the apply that drops the network
//! (its `route_localnet=1` is only safe under the `localnet` chain).

pub mod apply;
pub mod elements;
pub mod netlink;
pub mod nft;
pub mod plan;
pub mod registry;

pub use plan::{Ruleset, plan};

use super::{Endpoint, NetworkDef};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install Debian's nftables package ({0})")]
    NftMissing(std::io::Error),
    #[error("nftables: nft -j -f - failed: {0}")]
    Nft(String),
    #[error("nftables table {0:?}: not `warren` or `warren-` and letters, digits, '-', '_'")]
    BadTable(String),
    #[error("{owner}: {name:?} is not an interface name")]
    BadName { owner: String, name: String },
    #[error("published port {port}: taken by {first}, wanted by {second}")]
    PortTaken {
        port: String,
        first: String,
        second: String,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes the tables `table` (`inet` and `bridge`; one name per state directory, see
/// [`nft::valid_table`]) exactly what `networks` and `endpoints` call for, in one
/// transaction; with no networks, removes them. Other state directories' tables are
/// left alone (a drop in any table's forward chain wins, so their isolation adds up).
/// Enables `net.ipv4.ip_forward` while a non-internal network exists, keeping its
/// previous value in `forward_saved` (a file in a per-boot place: the run dir) to
/// restore once no warren table needs forwarding; the same for
/// `net.ipv6.conf.all.forwarding` while a non-internal dual-stack network exists (its
/// value kept in `ip6_forward.saved` beside `forward_saved`). Callers hold the
/// networks lock.
pub fn apply(
    table: &str,
    networks: &[NetworkDef],
    endpoints: &[Endpoint],
    forward_saved: &Path,
) -> Result<(), FirewallError> {
    set(table, networks, endpoints, forward_saved, false)
}

/// [`apply`] after a change of endpoints only (a container's join or leave): when the
/// tables were loaded for these networks, only the endpoints' elements change;
/// otherwise (no tables yet, other networks, a crash's leftovers, an older layout)
/// the tables are loaded whole, as `apply` does.
pub fn update(
    table: &str,
    networks: &[NetworkDef],
    endpoints: &[Endpoint],
    forward_saved: &Path,
) -> Result<(), FirewallError> {
    set(table, networks, endpoints, forward_saved, true)
}

fn set(
    table: &str,
    networks: &[NetworkDef],
    endpoints: &[Endpoint],
    forward_saved: &Path,
    elements_only: bool,
) -> Result<(), FirewallError> {
    if !nft::valid_table(table) {
        return Err(FirewallError::BadTable(table.to_string()));
    }
    let rules = plan(networks, endpoints)?;
    let _host = apply::host_lock()?;
    let synced = elements_only
        && !rules.is_empty()
        && elements::sync(table, &rules).unwrap_or_else(|e| {
            tracing::debug!(table, "changing elements failed ({e}): loading the tables");
            false
        });
    if !synced {
        apply::load(table, &rules)?;
    }
    apply::route_localnet(&rules)?;
    if synced && !rules.needs_forwarding() && !rules.needs_forwarding6() {
        // The load that made these tables settled forwarding for these networks.
        return Ok(());
    }
    apply::forwarding(
        rules.needs_forwarding(),
        || apply::others_forward(table),
        Path::new(apply::IP_FORWARD),
        forward_saved,
    )?;
    apply::forwarding(
        rules.needs_forwarding6(),
        || apply::others_forward6(table),
        Path::new(apply::IP6_FORWARD),
        &forward6_saved(forward_saved),
    )
}

/// Where IPv6 forwarding's previous value is kept: beside IPv4's.
pub fn forward6_saved(forward_saved: &Path) -> PathBuf {
    forward_saved.with_file_name("ip6_forward.saved")
}

#[cfg(test)]
mod tests;
