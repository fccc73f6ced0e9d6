//! Addresses for a network's containers. The endpoint files are the allocation record:
//! an address is taken while `<network>/endpoints/CONTAINER.json` holds it, and free once
//! that file is gone. A new endpoint's file is written (crash-safe, by rename) under the
//! networks lock before anything uses its address, so no two endpoints ever get one
//! address, and a crash leaves at most a record that `rm` or `network prune` clears.

use super::network::{NetError, io_err};
use super::{Endpoint, Ipv4Net, Ipv6Net, NetworkDef, PortMapping};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The lowest address of `subnet` that is neither its network, broadcast, `gateway` nor
/// in `used`.
pub fn pick(subnet: Ipv4Net, gateway: Ipv4Addr, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let broadcast = u32::from(subnet.network()) | !subnet.mask();
    (first..broadcast)
        .map(Ipv4Addr::from)
        .find(|a| *a != gateway && !used.contains(a))
}

/// How many addresses of an IPv6 subnet [`pick6`] looks at: more containers than
/// any host runs, and a bound on the search.
const SCAN6: u128 = 1 << 20;

/// The lowest address of `subnet` after its `::1` (the gateway) not in `used`
/// (`::0` is the subnet-router anycast address).
pub fn pick6(subnet: Ipv6Net, used: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let first = u128::from(subnet.network()) + 2;
    let size = (!subnet.mask()).saturating_add(1);
    (first..first + SCAN6.min(size.saturating_sub(2)))
        .map(Ipv6Addr::from)
        .find(|a| !used.contains(a))
}

/// The first host address of `subnet`: the bridge's own (the gateway).
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The endpoint file of `container` in `dir`.
pub fn endpoint_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.json"))
}

/// Every endpoint recorded in `dir` (none when it does not exist).
pub fn endpoints(dir: &Path) -> Result<Vec<Endpoint>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err("read", dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_none_or(|n| n.starts_with('.') || !n.ends_with(".json")) {
            continue;
        }
        out.push(read_endpoint(&path)?);
    }
    out.sort_by(|a, b| a.container.cmp(&b.container));
    Ok(out)
}

fn read_endpoint(path: &Path) -> Result<Endpoint, NetError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| NetError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// What a container asks of its place on a network.
pub struct Request<'a> {
    pub container: &'a str,
    pub names: Vec<String>,
    pub ports: Vec<PortMapping>,
    pub veth: String,
}

/// Takes a free address of `net` for `req` and records the endpoint in `dir`. The caller
/// holds the networks lock.
pub fn allocate(dir: &Path, net: &NetworkDef, req: Request<'_>) -> Result<Endpoint, NetError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let taken = endpoints(dir)?;
    let used: BTreeSet<Ipv4Addr> = taken.iter().map(|e| e.addr).collect();
    let addr = pick(net.subnet, net.gateway, &used).ok_or_else(|| NetError::Full {
        network: net.name.clone(),
        subnet: net.subnet.to_string(),
    })?;
    let addr6 = match net.subnet6 {
        None => None,
        Some(subnet6) => {
            let used6: BTreeSet<Ipv6Addr> = taken.iter().filter_map(|e| e.addr6).collect();
            let a = pick6(subnet6, &used6).ok_or_else(|| NetError::Full {
                network: net.name.clone(),
                subnet: subnet6.to_string(),
            })?;
            Some(a)
        }
    };
    let endpoint = Endpoint {
        network: net.name.clone(),
        container: req.container.to_string(),
        addr,
        addr6,
        names: req.names,
        ports: req.ports,
        veth: req.veth,
    };
    write(dir, &endpoint)?;
    Ok(endpoint)
}

fn write(dir: &Path, endpoint: &Endpoint) -> Result<(), NetError> {
    let path = endpoint_path(dir, &endpoint.container);
    let bytes = serde_json::to_vec_pretty(endpoint).map_err(|source| NetError::Parse {
        path: path.clone(),
        source,
    })?;
    crate::atomic::write(&path, &bytes).map_err(io_err("write", &path))
}

/// Frees `container`'s address (its endpoint file); none recorded is not an error.
pub fn release(dir: &Path, container: &str) -> Result<(), NetError> {
    let path = endpoint_path(dir, container);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str) -> NetworkDef {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkDef {
            name: "t".into(),
            bridge: "wrn-t".into(),
            subnet,
            gateway: gateway_of(subnet),
            subnet6: None,
            internal: false,
            isolate: false,
            mtu: 1500,
        }
    }

    fn req(c: &str) -> Request<'_> {
        Request {
            container: c,
            names: vec![c.to_string()],
            ports: vec![],
            veth: format!("v-{c}"),
        }
    }

    #[test]
    fn pick_skips_network_gateway_broadcast_and_used() {
        let n: Ipv4Net = "10.1.2.0/30".parse().unwrap();
        let gw = gateway_of(n);
        assert_eq!(gw, Ipv4Addr::new(10, 1, 2, 1));
        let mut used = BTreeSet::new();
        assert_eq!(pick(n, gw, &used), Some(Ipv4Addr::new(10, 1, 2, 2)));
        used.insert(Ipv4Addr::new(10, 1, 2, 2));
        // .3 is the broadcast address: a /30 holds one container.
        assert_eq!(pick(n, gw, &used), None);
    }

    #[test]
    fn allocations_are_distinct_persistent_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("endpoints");
        let n = net("10.231.7.0/29");
        let names = ["a", "b", "c", "d", "e"];
        let got: Vec<Ipv4Addr> = names
            .iter()
            .map(|c| allocate(&d, &n, req(c)).unwrap().addr)
            .collect();
        let distinct: BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{got:?}");
        assert!(got.iter().all(|a| n.subnet.contains(*a) && *a != n.gateway));
        // A /29 has 6 host addresses, one the gateway: the sixth container finds none.
        let err = allocate(&d, &n, req("f")).unwrap_err();
        assert!(err.to_string().contains("10.231.7.0/29"), "{err}");
        // Freed on release, and the record (the files) is what counts after a restart.
        release(&d, "b").unwrap();
        release(&d, "b").unwrap();
        let again = allocate(&d, &n, req("f")).unwrap();
        assert_eq!(again.addr, got[1]);
        let on_disk = endpoints(&d).unwrap();
        assert_eq!(on_disk.len(), 5);
        assert_eq!(on_disk.iter().find(|e| e.container == "f").unwrap(), &again);
    }

    #[test]
    fn ipv6_addresses_are_distinct_and_freed_with_the_ipv4_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("endpoints");
        let mut n = net("10.231.9.0/24");
        let six: Ipv6Net = "fd00:231:9::/120".parse().unwrap();
        n.subnet6 = Some(six);
        let a = allocate(&d, &n, req("a")).unwrap();
        let b = allocate(&d, &n, req("b")).unwrap();
        assert_eq!(a.addr6, Some("fd00:231:9::2".parse().unwrap()));
        assert_eq!(b.addr6, Some("fd00:231:9::3".parse().unwrap()));
        release(&d, "a").unwrap();
        assert_eq!(allocate(&d, &n, req("c")).unwrap().addr6, a.addr6);
        // A /127's two addresses are the anycast and the gateway: none for containers.
        let tiny = Ipv6Net {
            addr: "fd00::".parse().unwrap(),
            prefix: 127,
        };
        assert_eq!(pick6(tiny, &BTreeSet::new()), None);
        // An IPv4-only network's endpoints have none.
        let v4 = allocate(&dir.path().join("v4"), &net("10.231.10.0/24"), req("x")).unwrap();
        assert_eq!(v4.addr6, None);
    }

    #[test]
    fn concurrent_allocations_under_the_lock_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("endpoints");
        // The networks lock (an flock of its own open file per taker) is what serialises
        // allocations, between threads as between processes.
        let nets = crate::net::Networks::new(dir.path(), dir.path(), Path::new("/bin/true"));
        let n = net("10.231.8.0/24");
        std::thread::scope(|s| {
            for t in 0..4 {
                let (d, n, nets) = (&d, &n, &nets);
                s.spawn(move || {
                    for i in 0..20 {
                        let c = format!("c{t}-{i}");
                        let _g = nets.lock().unwrap();
                        allocate(d, n, req(&c)).unwrap();
                    }
                });
            }
        });
        let all = endpoints(&d).unwrap();
        let addrs: BTreeSet<_> = all.iter().map(|e| e.addr).collect();
        assert_eq!((all.len(), addrs.len()), (80, 80));
    }
}
