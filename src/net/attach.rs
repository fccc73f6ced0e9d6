//! A container joining and leaving a bridge network, and `prune`.
//!
//! Join, under the networks lock: the endpoint file first (its address taken), then the
//! bridge (if missing), a pinned network namespace, a veth pair into it, the address and
//! default route inside, the firewall, the name server. Every later step can be undone
//! from the file alone: a failed join undoes itself, and whatever a SIGKILL leaves, the
//! container's `rm`, its next create, or `prune` removes.

use super::link::{LinkError, Netlink};
use super::network::{NetError, Networks};
use super::{Endpoint, NetworkDef, PortMapping, dns, ipam, netns};
use std::io;
use std::path::PathBuf;

/// The container side of its veth pair.
pub const CONTAINER_IF: &str = "eth0";

/// A container's place on a network, ready for it to join.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The pinned network namespace the container joins.
    pub netns: PathBuf,
    pub network: NetworkDef,
    pub endpoint: Endpoint,
}

/// What `prune` removed.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    /// Endpoints (container names) whose container was gone.
    pub endpoints: Vec<String>,
    /// Bridges and veths no record called for.
    pub links: Vec<String>,
    /// Namespace pins no endpoint called for.
    pub netns: Vec<String>,
    /// nftables tables of state directories that no longer exist.
    pub tables: Vec<String>,
}

fn link_io(e: LinkError) -> io::Error {
    io::Error::other(format!("{e}: {}", e.source))
}

fn net_io(e: NetError) -> io::Error {
    io::Error::other(e.to_string())
}

/// In a container's namespace (the calling thread's): IPv6 on for its interfaces
/// (`all`, `default`, `lo`, eth0), whatever a namespace's defaults were; no router
/// advertisements taken (its routes are warren's).
fn enable_ipv6_inside() -> Result<(), NetError> {
    for ifname in ["all", "default", "lo", CONTAINER_IF] {
        super::ipv6::enable_ipv6(ifname)?;
    }
    super::ipv6::set_conf(CONTAINER_IF, "accept_ra", "0")
}

impl Networks {
    /// The host side of `container`'s veth: `wrnv` and 11 hex digits of a hash of this
    /// state directory and the name (15 bytes, the kernel's limit).
    pub fn veth_name(&self, container: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.state.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        h.update(container.as_bytes());
        format!("wrnv{}", &h.finalize().to_hex()[..11])
    }

    /// Where `container`'s /etc/hosts and /etc/resolv.conf are kept on the host: a
    /// directory every component of whose path the container's root (an unprivileged
    /// host uid) may traverse, as a bind mount's source is looked up with its
    /// credentials; `/run/warren-etc/VETH`, the veth's name being unique to this state
    /// directory and container. The parent is 0711: its entries cannot be listed.
    pub fn etc_dir(&self, container: &str) -> PathBuf {
        PathBuf::from(super::hosts::ETC_ROOT).join(self.veth_name(container))
    }

    /// Puts `container` on `network` (the default network is made on first use), named
    /// by its name and `aliases`, publishing `ports`. Leftovers of an earlier endpoint of
    /// the same container are removed first.
    pub fn join(
        &self,
        network: &str,
        container: &str,
        aliases: &[String],
        ports: &[PortMapping],
    ) -> Result<Joined, NetError> {
        if !crate::dirs::is_root() {
            return Err(NetError::NeedsRoot);
        }
        let _lock = self.lock()?;
        self.leave_locked(container)?;
        let def = self.get_or_default(network)?;
        let mut names = vec![container.to_string()];
        names.extend(aliases.iter().filter(|a| *a != container).cloned());
        let req = ipam::Request {
            container,
            names,
            ports: ports.to_vec(),
            veth: self.veth_name(container),
        };
        let endpoint = ipam::allocate(&self.endpoints_dir(&def.name), &def, req)?;
        match self.plumb(&def, &endpoint) {
            Ok(netns) => Ok(Joined {
                netns,
                network: def,
                endpoint,
            }),
            Err(e) => {
                let _ = self.leave_locked(container);
                Err(e)
            }
        }
    }

    /// Everything after the endpoint's record: links, addresses, firewall, name server.
    fn plumb(&self, def: &NetworkDef, ep: &Endpoint) -> Result<PathBuf, NetError> {
        let mut nl = Netlink::open()?;
        let bridge = self.ensure_bridge(&mut nl, def)?;
        let pin = self.netns_path(&ep.container);
        netns::create(&pin)?;
        let ns = std::fs::File::open(&pin).map_err(super::network::io_err("open", &pin))?;
        nl.add_veth(
            &ep.veth,
            bridge,
            CONTAINER_IF,
            std::os::fd::AsFd::as_fd(&ns),
            super::LINK_MTU,
            &self.tag(),
        )?;
        let host = nl.link(&ep.veth)?.ok_or_else(|| {
            NetError::Link(LinkError {
                what: format!("find veth {} just made", ep.veth),
                source: io::ErrorKind::NotFound.into(),
            })
        })?;
        nl.set_up(host.index)?;
        let (addr, prefix, gateway, mtu) = (ep.addr, def.subnet.prefix, def.gateway, def.mtu);
        // (address, prefix, gateway) on IPv6, when the network has it.
        let v6 = ep
            .addr6
            .zip(def.subnet6)
            .map(|(a, n)| (a, n.prefix, n.gateway()));
        netns::run_in(&pin, move || {
            let mut inner = Netlink::open().map_err(link_io)?;
            let eth = inner
                .link(CONTAINER_IF)
                .map_err(link_io)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "eth0 is missing"))?;
            inner
                .add_address(eth.index, addr.into(), prefix)
                .map_err(link_io)?;
            if let Some((addr6, prefix6, _)) = v6 {
                enable_ipv6_inside().map_err(net_io)?;
                inner
                    .add_address(eth.index, addr6.into(), prefix6)
                    .map_err(link_io)?;
            }
            inner.set_up(eth.index).map_err(link_io)?;
            inner
                .add_default_route(gateway.into(), mtu)
                .map_err(link_io)?;
            match v6 {
                Some((_, _, gateway6)) => inner
                    .add_default_route(gateway6.into(), mtu)
                    .map_err(link_io),
                None => Ok(()),
            }
        })?;
        self.update_firewall()?;
        dns::ensure(def, &self.endpoints_dir(&def.name), &self.exe, &self.run)?;
        Ok(pin)
    }

    /// Takes `container` off every network: its veth, namespace pin, address and
    /// endpoint record, then the firewall. Nothing recorded is not an error.
    pub fn leave(&self, container: &str) -> Result<(), NetError> {
        let pin = self.netns_path(container);
        let recorded = self
            .list()?
            .iter()
            .any(|d| ipam::endpoint_path(&self.endpoints_dir(&d.name), container).exists());
        if !recorded && !pin.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        self.leave_locked(container)
    }

    fn leave_locked(&self, container: &str) -> Result<(), NetError> {
        let mut removed = false;
        let mut nl = None;
        for def in self.list()? {
            let dir = self.endpoints_dir(&def.name);
            let path = ipam::endpoint_path(&dir, container);
            if !path.exists() {
                continue;
            }
            let ep = ipam::endpoints(&dir)?
                .into_iter()
                .find(|e| e.container == container);
            if let Some(ep) = ep {
                let nl = match &mut nl {
                    Some(nl) => nl,
                    None => nl.insert(Netlink::open()?),
                };
                nl.delete(&ep.veth)?;
            }
            ipam::release(&dir, container)?;
            removed = true;
        }
        // The pin goes last: with it goes the container side of the veth.
        netns::remove(&self.netns_path(container))?;
        let etc = self.etc_dir(container);
        match std::fs::remove_dir_all(&etc) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(super::network::io_err("remove", &etc)(e));
            }
            _ => {}
        }
        if removed {
            self.update_firewall()?;
        }
        Ok(())
    }

    /// Removes the endpoints of containers for which `exists` is false, then every link
    /// marked as this state directory's and every namespace pin that no record calls
    /// for, and makes the firewall match.
    pub fn prune(&self, exists: &dyn Fn(&str) -> bool) -> Result<Pruned, NetError> {
        let _lock = self.lock()?;
        let mut pruned = Pruned::default();
        for ep in self.all_endpoints()? {
            if !exists(&ep.container) {
                self.leave_locked(&ep.container)?;
                pruned.endpoints.push(ep.container);
            }
        }
        let defs = self.list()?;
        let endpoints = self.all_endpoints()?;
        for pin in netns::pins(&self.netns_dir()) {
            if !endpoints.iter().any(|e| e.container == pin) {
                netns::remove(&self.netns_path(&pin))?;
                pruned.netns.push(pin);
            }
        }
        if crate::dirs::is_root() {
            let mut nl = Netlink::open()?;
            let tag = self.tag();
            for link in nl.links()? {
                let wanted = defs.iter().any(|d| d.bridge == link.name)
                    || endpoints.iter().any(|e| e.veth == link.name);
                if link.alias.as_deref() == Some(tag.as_str()) && !wanted {
                    nl.delete(&link.name)?;
                    pruned.links.push(link.name);
                }
            }
        }
        self.apply_firewall()?;
        if crate::dirs::is_root() {
            pruned.tables = self.prune_stale_tables()?;
        }
        Ok(pruned)
    }
}
