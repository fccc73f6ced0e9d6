//! What IPv6 adds to a bridge network: its subnet (a /64 of this host's ULA /48, RFC
//! 4193, when none is given, as netavark picks them) and the sysctls that let an
//! interface hold IPv6 addresses.

use super::link::Netlink;
use super::network::{CreateOptions, NetError, io_err};
use super::{Ipv6Net, NetworkDef};
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::Path;

/// The file (in the networks directory) that keeps the host's ULA /48: its random
/// global ID is drawn once, so every network's /64 comes from one prefix.
const ULA_FILE: &str = ".ula";

/// The IPv6 subnet `opts` asks for: none, the one given (checked against the host's
/// routes), or a free /64 of the host's ULA /48. The caller holds the networks lock.
pub fn subnet_for(
    networks_dir: &Path,
    opts: &CreateOptions,
    existing: &[NetworkDef],
    nl: &mut Netlink,
) -> Result<Option<Ipv6Net>, NetError> {
    if !opts.ipv6 && opts.subnet6.is_none() {
        return Ok(None);
    }
    let mut routed = nl.routed_subnets6()?;
    // The networks' own bridges' routes: an overlap with one is named by the network.
    routed.retain(|r| !existing.iter().any(|n| n.subnet6 == Some(*r)));
    if let Some(net) = opts.subnet6 {
        if let Some(route) = routed.iter().find(|r| r.overlaps(&net)) {
            return Err(NetError::Routed6 {
                name: opts.name.clone(),
                subnet: net,
                route: *route,
            });
        }
        return Ok(Some(net));
    }
    let ula = global_prefix(networks_dir)?;
    free_subnet(ula, existing, &routed)
        .map(Some)
        .ok_or_else(|| NetError::NoFreeSubnet6(opts.name.clone()))
}

/// This state directory's ULA /48, `fdXX:XXXX:XXXX::/48`, drawn at random (40 bits) on
/// first use and kept in `networks/.ula`. The caller holds the networks lock.
pub fn global_prefix(networks_dir: &Path) -> Result<Ipv6Net, NetError> {
    let path = networks_dir.join(ULA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse::<Ipv6Net>()
                .ok()
                .filter(|n| n.prefix == 48 && n.addr.segments()[0] >> 8 == 0xfd)
                .ok_or_else(|| {
                    io_err("parse", &path)(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{:?} is not a ULA /48 (fdXX:XXXX:XXXX::/48)", text.trim()),
                    ))
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &path)(e)),
    }
    let mut id = [0u8; 5];
    let random = Path::new("/dev/urandom");
    std::fs::File::open(random)
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(io_err("read", random))?;
    let net = ula(id);
    crate::dirs::make_private(networks_dir).map_err(io_err("create", networks_dir))?;
    crate::atomic::write(&path, net.to_string().as_bytes()).map_err(io_err("write", &path))?;
    Ok(net)
}

/// `fd` + the 40-bit global ID, `::/48`.
fn ula(id: [u8; 5]) -> Ipv6Net {
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&id);
    Ipv6Net {
        addr: Ipv6Addr::from(octets),
        prefix: 48,
    }
}

/// The first /64 of `ula` (subnet IDs 0..65535) that overlaps neither a network nor a
/// route of the host.
pub fn free_subnet(ula: Ipv6Net, existing: &[NetworkDef], routed: &[Ipv6Net]) -> Option<Ipv6Net> {
    let base = u128::from(ula.network());
    (0u128..1 << 16)
        .map(|id| Ipv6Net {
            addr: Ipv6Addr::from(base | (id << 64)),
            prefix: 64,
        })
        .find(|c| {
            !existing
                .iter()
                .filter_map(|n| n.subnet6)
                .any(|n| n.overlaps(c))
                && !routed.iter().any(|r| r.overlaps(c))
        })
}

/// `net.ipv6.conf.IFNAME.disable_ipv6 = 0`: the interface may hold IPv6 addresses
/// (a host booted with IPv6 off for new interfaces would refuse them). In the calling
/// thread's network namespace.
pub fn enable_ipv6(ifname: &str) -> Result<(), NetError> {
    set_conf(ifname, "disable_ipv6", "0")
}

/// Writes `net.ipv6.conf.IFNAME.KEY` (`/proc/sys/net` is the calling thread's network
/// namespace's).
pub fn set_conf(ifname: &str, key: &str, value: &str) -> Result<(), NetError> {
    if !super::firewall::plan::valid_ifname(ifname) {
        return Err(NetError::NotABridge(ifname.to_string()));
    }
    let path = Path::new("/proc/sys/net/ipv6/conf").join(ifname).join(key);
    std::fs::write(&path, value).map_err(io_err("write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ula_is_drawn_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = global_prefix(dir.path()).unwrap();
        assert_eq!(a.prefix, 48);
        assert_eq!(a.addr.segments()[0] >> 8, 0xfd, "{a}");
        assert_eq!(global_prefix(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join(ULA_FILE), "2001:db8::/48").unwrap();
        assert!(global_prefix(dir.path()).is_err());
    }

    #[test]
    fn free_subnets_skip_networks_and_routes() {
        let ula = ula([0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(ula.to_string(), "fd12:3456:789a::/48");
        let mut net = NetworkDef {
            name: "a".into(),
            bridge: "wrn-a".into(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            subnet6: Some("fd12:3456:789a::/64".parse().unwrap()),
            internal: false,
            isolate: false,
            mtu: 1500,
        };
        let routed = ["fd12:3456:789a:1::/64".parse().unwrap()];
        let got = free_subnet(ula, std::slice::from_ref(&net), &routed).unwrap();
        assert_eq!(got.to_string(), "fd12:3456:789a:2::/64");
        // A route over the whole /48 (or wider): none free.
        let wide = ["fd00::/8".parse().unwrap()];
        net.subnet6 = None;
        assert_eq!(free_subnet(ula, &[net], &wide), None);
    }
}
