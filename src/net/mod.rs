//! Container networks: a Linux bridge per named network, an address per container on it,
//! published ports, a firewall table of warren's own, names served to the network's
//! containers, and rootless networking through pasta or slirp4netns.
//!
//! A network may be dual-stack (`subnet6`): its bridge holds the subnet's `::1`, each
//! container an address of it (no DAD) and a default route through the bridge, the
//! firewall applies the same policy to IPv6 (NAT66 out of non-internal networks, as
//! netavark does) and the name server answers AAAA.
//!
//! The types here are what the stages share: a network's definition ([`NetworkDef`]),
//! one container's place on it ([`Endpoint`]) and a published port ([`PortMapping`]).
//! The state files hold these; the firewall and the name server are functions of them, so
//! whatever a crash left half done, the next change or `warren network prune` makes the
//! host match the files again.

pub mod attach;
pub mod dns;
pub mod firewall;
pub mod hosts;
pub mod ipam;
pub mod ipv6;
pub mod link;
pub mod netns;
pub mod network;
pub mod usermode;

pub use attach::{Joined, Pruned};
pub use network::{CreateOptions, DEFAULT_NETWORK, NetError, Networks};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 subnet, `10.89.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// The mask of `prefix` bits, as a host-order integer.
    pub fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, NetParseError> {
        let bad = || NetParseError::Subnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(bad());
        }
        let net = Ipv4Net { addr, prefix };
        // The canonical form: host bits zero, so a subnet has one spelling.
        Ok(Ipv4Net {
            addr: net.network(),
            prefix,
        })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = NetParseError;
    fn try_from(s: String) -> Result<Self, NetParseError> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 subnet, `fd12:3456:789a:1::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Net {
    pub fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.network())
    }

    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The subnet's `::1`: the bridge's own address (the containers' gateway).
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network()) + 1)
    }
}

impl FromStr for Ipv6Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, NetParseError> {
        let bad = || NetParseError::Subnet6(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        // Room for the gateway and containers; never a link-local, multicast or
        // loopback range.
        let special = addr.is_loopback()
            || addr.is_unspecified()
            || addr.is_multicast()
            || addr.segments()[0] & 0xffc0 == 0xfe80;
        if !(8..=120).contains(&prefix) || special {
            return Err(bad());
        }
        let net = Ipv6Net { addr, prefix };
        Ok(Ipv6Net {
            addr: net.network(),
            prefix,
        })
    }
}

impl TryFrom<String> for Ipv6Net {
    type Error = NetParseError;
    fn try_from(s: String) -> Result<Self, NetParseError> {
        s.parse()
    }
}

impl From<Ipv6Net> for String {
    fn from(n: Ipv6Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A named network: one bridge on the host, one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    pub name: String,
    /// The Linux bridge's name (at most 15 bytes).
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The bridge's own address: the containers' default route and name server.
    pub gateway: Ipv4Addr,
    /// Its IPv6 subnet (dual stack; a ULA /64 unless one was given), the bridge's
    /// address being its `::1`. None: IPv4 only (and every record from before IPv6).
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    /// No route out: no masquerade, no forwarding to anything but the network itself.
    #[serde(default)]
    pub internal: bool,
    /// Containers of this network cannot reach each other either.
    #[serde(default)]
    pub isolate: bool,
    /// The uplink's MTU: the containers' default route's, so what leaves the host is
    /// sized for it from the start (the bridge and veths use [`LINK_MTU`]).
    pub mtu: u32,
}

impl NetworkDef {
    /// The bridge's IPv6 address, when the network has IPv6.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.subnet6.map(|n| n.gateway())
    }
}

/// The MTU of a network's bridge and veths. Traffic on the host (container to
/// container, the host to a container) moves in segments as large as on loopback: at
/// an uplink's 1500 a TCP stream over a veth costs about twice the CPU per byte.
/// Traffic to the outside is sized by the default route's MTU ([`NetworkDef::mtu`]).
pub const LINK_MTU: u32 = 65520;

/// The transport of a published port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `-p [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|udp]`: host ports
/// `host_port..host_port+count` go to `container_port..container_port+count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortMapping {
    /// Only traffic to this host address (default: any of the host's addresses).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    /// How many consecutive ports (1 for a single port).
    pub count: u16,
    pub proto: Proto,
}

impl PortMapping {
    /// The (host port, container port) pairs this mapping publishes.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        (0..self.count).map(|i| (self.host_port + i, self.container_port + i))
    }
}

/// `N` or `N-M`: (first, count).
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let p = s.parse::<u16>().ok()?;
            (p, p)
        }
    };
    (first != 0 && last >= first).then(|| (first, last - first + 1))
}

impl FromStr for PortMapping {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, NetParseError> {
        let bad = || NetParseError::Port(s.to_string());
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        // The host address may be IPv6 in brackets: `[::1]:8080:80`.
        let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (ip, rest) = rest.split_once("]:").ok_or_else(bad)?;
            (Some(IpAddr::V6(ip.parse().map_err(|_| bad())?)), rest)
        } else {
            match spec.matches(':').count() {
                1 => (None, spec),
                2 => {
                    let (ip, rest) = spec.split_once(':').ok_or_else(bad)?;
                    (Some(IpAddr::V4(ip.parse().map_err(|_| bad())?)), rest)
                }
                _ => return Err(bad()),
            }
        };
        let (host, container) = ports.split_once(':').ok_or_else(bad)?;
        let (host_port, count) = port_range(host).ok_or_else(bad)?;
        let (container_port, n) = port_range(container).ok_or_else(bad)?;
        if n != count {
            return Err(bad());
        }
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            count,
            proto,
        })
    }
}

impl TryFrom<String> for PortMapping {
    type Error = NetParseError;
    fn try_from(s: String) -> Result<Self, NetParseError> {
        s.parse()
    }
}

impl From<PortMapping> for String {
    fn from(p: PortMapping) -> String {
        p.to_string()
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        let range = |f: &mut fmt::Formatter<'_>, p: u16| {
            if self.count > 1 {
                write!(f, "{}-{}", p, p + (self.count - 1))
            } else {
                write!(f, "{p}")
            }
        };
        range(f, self.host_port)?;
        f.write_str(":")?;
        range(f, self.container_port)?;
        write!(f, "/{}", self.proto)
    }
}

/// One container's place on a network: what the firewall publishes and the name server
/// answers. Written when the container joins, removed when it leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub network: String,
    pub container: String,
    pub addr: Ipv4Addr,
    #[serde(default)]
    pub addr6: Option<Ipv6Addr>,
    /// The names it answers to on its network: the container's name, then its aliases
    /// (an alias may be shared by several containers: the name server returns them all).
    pub names: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The host side of its veth pair.
    pub veth: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetParseError {
    #[error("subnet {0:?}: expected an IPv4 network like 10.89.0.0/24 (prefix at most /30)")]
    Subnet(String),
    #[error(
        "subnet {0:?}: expected an IPv6 network like fd00:1:2:3::/64 (prefix /8 to /120; not loopback, link-local or multicast)"
    )]
    Subnet6(String),
    #[error("port {0:?}: expected [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|udp]")]
    Port(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_print_back() {
        for (text, canonical) in [
            ("8080:80", "8080:80/tcp"),
            ("127.0.0.1:8080:80/udp", "127.0.0.1:8080:80/udp"),
            ("[::1]:8080:80", "[::1]:8080:80/tcp"),
            ("9000-9002:7000-7002/tcp", "9000-9002:7000-7002/tcp"),
        ] {
            let p: PortMapping = text.parse().unwrap();
            assert_eq!(p.to_string(), canonical);
            assert_eq!(canonical.parse::<PortMapping>().unwrap(), p);
        }
        let r: PortMapping = "9000-9002:7000-7002".parse().unwrap();
        assert_eq!(
            r.pairs().collect::<Vec<_>>(),
            [(9000, 7000), (9001, 7001), (9002, 7002)]
        );
        for bad in [
            "80",
            "0:80",
            "8080:80/sctp",
            "1-3:1-2",
            "x:80:80",
            "1:2:3:4",
            "5-3:5-3",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets_are_canonical_and_overlap_checked() {
        let n: Ipv4Net = "10.89.0.7/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.89.0.0/24");
        assert!(n.contains("10.89.0.254".parse().unwrap()));
        assert!(!n.contains("10.89.1.1".parse().unwrap()));
        assert!(n.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!n.overlaps(&"10.90.0.0/16".parse().unwrap()));
        for bad in ["10.89.0.0", "10.89.0.0/31", "10.89.0.0/x", "::1/64"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_subnets_are_canonical_and_old_records_load() {
        let n: Ipv6Net = "fd12:3456:789a:1::7/64".parse().unwrap();
        assert_eq!(n.to_string(), "fd12:3456:789a:1::/64");
        assert_eq!(n.gateway().to_string(), "fd12:3456:789a:1::1");
        assert!(n.contains("fd12:3456:789a:1:ffff::2".parse().unwrap()));
        assert!(!n.contains("fd12:3456:789a:2::2".parse().unwrap()));
        assert!(n.overlaps(&"fd12:3456:789a::/48".parse().unwrap()));
        for bad in [
            "fd00::/7",
            "fd00::/121",
            "::1/64",
            "fe80::/64",
            "ff02::/16",
            "10.0.0.0/8",
        ] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
        // A record from before IPv6 (no field) and one written with `null` both load.
        let old = r#"{"name":"a","bridge":"wrn-a","subnet":"10.1.0.0/24","gateway":"10.1.0.1","mtu":1500}"#;
        let def: NetworkDef = serde_json::from_str(old).unwrap();
        assert_eq!(def.subnet6, None);
        let null = old.replace(r#""mtu""#, r#""subnet6":null,"mtu""#);
        assert_eq!(serde_json::from_str::<NetworkDef>(&null).unwrap(), def);
        let mut v6 = def.clone();
        v6.subnet6 = Some(n);
        let text = serde_json::to_string(&v6).unwrap();
        assert!(
            text.contains(r#""subnet6":"fd12:3456:789a:1::/64""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<NetworkDef>(&text).unwrap(), v6);
    }
}
