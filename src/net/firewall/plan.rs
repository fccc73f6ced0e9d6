//! What warren's table must hold, decided from the records alone (no root, no kernel):
//! which bridges exist, which subnets are masqueraded, the published-port maps.

use super::FirewallError;
use crate::net::{Endpoint, Ipv4Net, Ipv6Net, NetworkDef, Proto};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where a published port leads: a container's address and port.
pub type Target = (Ipv4Addr, u16);
/// The same on IPv6.
pub type Target6 = (Ipv6Addr, u16);

/// The content of warren's tables, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Every warren bridge.
    pub bridges: BTreeSet<String>,
    /// The bridges of `internal` networks: nothing forwarded in from, or out to, elsewhere.
    pub internal: BTreeSet<String>,
    /// Bridges whose containers may reach each other (not `isolate`).
    pub intra: BTreeSet<String>,
    /// The host ends of the veths of containers on `isolate` networks: no bridging
    /// between them.
    pub isolated_ports: BTreeSet<String>,
    /// (subnet, bridge) of every network: what a container on that bridge may send from.
    pub subnets: Vec<(Ipv4Net, String)>,
    /// (subnet, bridge) of every non-internal network: masqueraded when leaving through
    /// anything but its bridge, and when a published port sends it back into its bridge.
    pub masquerade: Vec<(Ipv4Net, String)>,
    /// Published ports on any host address: (protocol, host port) -> target.
    pub ports: BTreeMap<(Proto, u16), Target>,
    /// Published ports on one host address: (address, protocol, host port) -> target.
    pub ports_at: BTreeMap<(Ipv4Addr, Proto, u16), Target>,
    /// (gateway, bridge) of every network: its name server answers on gateway:53 to
    /// what comes in from that bridge only.
    pub dns: BTreeSet<(Ipv4Addr, String)>,
    /// (IPv6 subnet, bridge) of every dual-stack network.
    pub subnets6: Vec<(Ipv6Net, String)>,
    /// (IPv6 subnet, bridge) of every non-internal dual-stack network (NAT66, as
    /// netavark does: the containers' ULAs never leave the host).
    pub masquerade6: Vec<(Ipv6Net, String)>,
    /// Published ports on any host address, to containers with IPv6 addresses.
    pub ports6: BTreeMap<(Proto, u16), Target6>,
    /// Published ports on one IPv6 host address.
    pub ports6_at: BTreeMap<(Ipv6Addr, Proto, u16), Target6>,
}

/// The version of the tables' layout ([`super::nft`]): bumped when its chains or sets
/// change, so tables an older warren loaded are reloaded whole, never patched.
const LAYOUT: u32 = 3;

impl Ruleset {
    /// No network: warren's tables are removed.
    pub fn is_empty(&self) -> bool {
        self.bridges.is_empty()
    }

    /// The name of an empty set that marks tables loaded for this ruleset's networks
    /// (everything but the endpoints' elements) and this [`LAYOUT`]: where it exists,
    /// a container's join or leave only changes elements ([`super::elements`]).
    pub fn base_set(&self) -> String {
        let networks = format!(
            "{LAYOUT} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.bridges,
            self.internal,
            self.intra,
            self.subnets,
            self.masquerade,
            self.dns,
            self.subnets6,
            self.masquerade6
        );
        format!("base_{}", &blake3::hash(networks.as_bytes()).to_hex()[..16])
    }

    /// Whether the host must forward packets (`net.ipv4.ip_forward`).
    pub fn needs_forwarding(&self) -> bool {
        !self.masquerade.is_empty()
    }

    /// Whether the host must forward IPv6 (`net.ipv6.conf.all.forwarding`).
    pub fn needs_forwarding6(&self) -> bool {
        !self.masquerade6.is_empty()
    }
}

/// An interface name the kernel would take: 1..=15 bytes, no '/', no blanks, not `.`/`..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

fn check_ifname(owner: &str, name: &str) -> Result<(), FirewallError> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(FirewallError::BadName {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }
}

/// The ruleset `networks` and `endpoints` call for. Endpoints of networks not in
/// `networks` are ignored (a record left by a crash); so are the ports of `internal`
/// networks (no route in), and mappings to an IPv6 host address of a container without
/// IPv6 or to `::1` (IPv6 has no `route_localnet`: the kernel drops a packet from ::1
/// that would leave the host's loopback, so DNAT cannot take it to a bridge).
pub fn plan(networks: &[NetworkDef], endpoints: &[Endpoint]) -> Result<Ruleset, FirewallError> {
    let mut rules = Ruleset::default();
    let mut by_name = BTreeMap::new();
    for net in networks {
        check_ifname(&net.name, &net.bridge)?;
        by_name.insert(net.name.as_str(), net);
        rules.bridges.insert(net.bridge.clone());
        rules.subnets.push((net.subnet, net.bridge.clone()));
        rules.dns.insert((net.gateway, net.bridge.clone()));
        if net.internal {
            rules.internal.insert(net.bridge.clone());
        } else {
            rules.masquerade.push((net.subnet, net.bridge.clone()));
        }
        if !net.isolate {
            rules.intra.insert(net.bridge.clone());
        }
        if let Some(subnet6) = net.subnet6 {
            rules.subnets6.push((subnet6, net.bridge.clone()));
            if !net.internal {
                rules.masquerade6.push((subnet6, net.bridge.clone()));
            }
        }
    }
    let mut owners = Owners::default();
    for ep in endpoints {
        let Some(net) = by_name.get(ep.network.as_str()) else {
            continue;
        };
        if net.isolate {
            check_ifname(&ep.container, &ep.veth)?;
            rules.isolated_ports.insert(ep.veth.clone());
        }
        if !net.internal {
            publish(&mut rules, &mut owners, ep)?;
        }
    }
    Ok(rules)
}

/// Who published what, to name both sides of a conflict.
#[derive(Default)]
struct Owners {
    /// On any host address.
    any: BTreeMap<(Proto, u16), String>,
    /// On one host address, and the first of those per (protocol, port).
    at: BTreeMap<(IpAddr, Proto, u16), String>,
    at_port: BTreeMap<(Proto, u16), String>,
}

impl Owners {
    /// Records `container` as the owner of the port, or names the container that has
    /// it already: a wildcard conflicts with any address, an address with itself (what
    /// binding the ports would give).
    fn claim(
        &mut self,
        ip: Option<IpAddr>,
        key: (Proto, u16),
        container: &str,
    ) -> Result<(), String> {
        if let Some(other) = self.any.get(&key) {
            return Err(other.clone());
        }
        match ip {
            None => {
                if let Some(other) = self.at_port.get(&key) {
                    return Err(other.clone());
                }
                self.any.insert(key, container.to_string());
            }
            Some(ip) => {
                if let Some(other) = self.at.get(&(ip, key.0, key.1)) {
                    return Err(other.clone());
                }
                self.at.insert((ip, key.0, key.1), container.to_string());
                self.at_port
                    .entry(key)
                    .or_insert_with(|| container.to_string());
            }
        }
        Ok(())
    }
}

fn publish(rules: &mut Ruleset, owners: &mut Owners, ep: &Endpoint) -> Result<(), FirewallError> {
    for m in &ep.ports {
        if let Some(IpAddr::V6(ip)) = m.host_ip {
            let why = if ip.is_loopback() {
                "IPv6 loopback cannot be DNAT'd to a bridge (no route_localnet for IPv6)"
            } else if ep.addr6.is_none() {
                "the container has no IPv6 address (its network has no IPv6)"
            } else {
                ""
            };
            if !why.is_empty() {
                tracing::warn!(container = %ep.container, port = %m, "not published: {why}");
                continue;
            }
        }
        for (host_port, container_port) in m.pairs() {
            let key = (m.proto, host_port);
            owners
                .claim(m.host_ip, key, &ep.container)
                .map_err(|first| FirewallError::PortTaken {
                    port: format!("{host_port}/{}", m.proto),
                    first,
                    second: ep.container.clone(),
                })?;
            let target = (ep.addr, container_port);
            let target6 = ep.addr6.map(|a| (a, container_port));
            match (m.host_ip, target6) {
                (None, _) => {
                    rules.ports.insert(key, target);
                    if let Some(t6) = target6 {
                        rules.ports6.insert(key, t6);
                    }
                }
                (Some(IpAddr::V4(ip)), _) => {
                    rules.ports_at.insert((ip, m.proto, host_port), target);
                }
                (Some(IpAddr::V6(ip)), Some(t6)) => {
                    rules.ports6_at.insert((ip, m.proto, host_port), t6);
                }
                (Some(IpAddr::V6(_)), None) => {}
            }
        }
    }
    Ok(())
}
