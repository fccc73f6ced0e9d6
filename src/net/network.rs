//! Named networks: their definitions (`<state>/networks/NAME.json`), their bridges, and
//! the one lock (`<state>/networks/.lock`) that serialises every change to networks,
//! endpoints and the firewall. The default network `warren` (10.89.0.0/16) is made on
//! first use.

use super::firewall::{self, FirewallError};
use super::link::{LinkError, Netlink};
use super::netns::NetnsError;
use super::{Endpoint, Ipv4Net, Ipv6Net, NetworkDef, dns, ipam};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The network `--net bridge` means.
pub const DEFAULT_NETWORK: &str = "warren";
/// Its subnet (podman's default is 10.88.0.0/16: kept clear of it).
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";
/// The MTU when no default route names an uplink.
const FALLBACK_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "network name {0:?}: use letters, digits, '.', '_' and '-' (at most 64, not starting with '.' or '-')"
    )]
    BadName(String),
    #[error("network {0:?} already exists")]
    Exists(String),
    #[error("no network named {0:?}")]
    NotFound(String),
    #[error("subnet {subnet} of network {name:?} overlaps network {other:?} ({other_subnet})")]
    Overlap {
        name: String,
        subnet: String,
        other: String,
        other_subnet: String,
    },
    #[error("IPv6 subnet {subnet} of network {name:?} overlaps a route of the host's ({route})")]
    Routed6 {
        name: String,
        subnet: Ipv6Net,
        route: Ipv6Net,
    },
    #[error("network {name:?} is in use by container(s) {}", containers.join(", "))]
    InUse {
        name: String,
        containers: Vec<String>,
    },
    #[error(
        "bridge {bridge} of network {name:?} is already network {other:?}'s: choose another name"
    )]
    BridgeTaken {
        name: String,
        bridge: String,
        other: String,
    },
    #[error("network {network:?} ({subnet}) has no free address")]
    Full { network: String, subnet: String },
    #[error(
        "no free subnet for network {0:?} in 10.90.0.0-10.127.255.0/24: give one with --subnet"
    )]
    NoFreeSubnet(String),
    #[error("no free IPv6 /64 for network {0:?} in this host's ULA /48: give one with --subnet")]
    NoFreeSubnet6(String),
    #[error("interface {0} exists and is not a bridge")]
    NotABridge(String),
    #[error("bridge {bridge} exists and belongs to another warren state directory ({owner})")]
    BridgeInUse { bridge: String, owner: String },
    #[error("bridge networks need root (rootless: --net pasta or --net slirp4netns)")]
    NeedsRoot,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::Io { what, path, source }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub name: String,
    /// Default: a free 10.90-10.127.x.0/24 (10.89.0.0/16 for `warren`).
    pub subnet: Option<Ipv4Net>,
    /// Dual stack: an IPv6 subnet too ([`Self::subnet6`], or a free /64 of the host's
    /// ULA /48).
    pub ipv6: bool,
    /// The IPv6 subnet (implies `ipv6`).
    pub subnet6: Option<Ipv6Net>,
    pub internal: bool,
    pub isolate: bool,
}

/// The networks of one state directory.
#[derive(Clone, Debug)]
pub struct Networks {
    /// `<state_dir>/networks`: definitions and endpoints.
    pub(crate) state: PathBuf,
    /// `<run_dir>/.networks`: namespace pins, name servers' pid files.
    pub(crate) run: PathBuf,
    /// The binary the name server re-executes.
    pub(crate) exe: PathBuf,
}

/// The exclusive networks lock, held while it lives.
pub struct NetLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Networks {
    pub fn new(state_dir: &Path, run_dir: &Path, exe: &Path) -> Networks {
        Networks {
            state: state_dir.join("networks"),
            run: run_dir.join(".networks"),
            exe: exe.to_path_buf(),
        }
    }

    /// Takes the lock every change holds (blocks until it is free).
    pub fn lock(&self) -> Result<NetLock, NetError> {
        crate::dirs::make_private(&self.state).map_err(io_err("create", &self.state))?;
        let path = self.state.join(".lock");
        let file = File::create(&path).map_err(io_err("create", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(NetLock)
            .map_err(|(_, e)| io_err("lock", &path)(e.into()))
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.state.join(format!("{name}.json"))
    }

    /// Where the endpoints of network `name` are recorded (what its name server reads).
    pub fn endpoints_dir(&self, name: &str) -> PathBuf {
        self.state.join(name).join("endpoints")
    }

    /// The directory of network namespace pins.
    pub fn netns_dir(&self) -> PathBuf {
        self.run.join("netns")
    }

    /// The pinned network namespace of `container` (on a bridge network).
    pub fn netns_path(&self, container: &str) -> PathBuf {
        self.netns_dir().join(container)
    }

    /// The run directory the name servers keep their pid files in.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// The mark on the links this state directory made (their `ifalias`), so `prune`
    /// never touches another installation's.
    pub(crate) fn tag(&self) -> String {
        format!("warren:{}", self.state.display())
    }

    /// The name of this state directory's nftables tables: `warren` for the default
    /// one, `warren-` + 8 hex digits of its path's hash for any other, so two state
    /// directories on one host never replace each other's rules.
    pub fn firewall_table(&self) -> String {
        table_name(self.state_dir(), &crate::dirs::default_state_dir())
    }

    /// Every network defined, by name.
    pub fn list(&self) -> Result<Vec<NetworkDef>, NetError> {
        let entries = match std::fs::read_dir(&self.state) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.state)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err("read", &self.state))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_none_or(|n| n.starts_with('.') || !n.ends_with(".json")) {
                continue;
            }
            out.push(read_def(&path)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Network `name`'s definition.
    pub fn get(&self, name: &str) -> Result<NetworkDef, NetError> {
        check_name(name)?;
        let path = self.def_path(name);
        if !path.exists() {
            return Err(NetError::NotFound(name.to_string()));
        }
        read_def(&path)
    }

    /// Network `name` and the containers on it.
    pub fn inspect(&self, name: &str) -> Result<(NetworkDef, Vec<Endpoint>), NetError> {
        let def = self.get(name)?;
        Ok((def, ipam::endpoints(&self.endpoints_dir(name))?))
    }

    /// Every endpoint of every network.
    pub fn all_endpoints(&self) -> Result<Vec<Endpoint>, NetError> {
        let mut out = Vec::new();
        for def in self.list()? {
            out.extend(ipam::endpoints(&self.endpoints_dir(&def.name))?);
        }
        Ok(out)
    }

    /// Defines a network and makes its bridge.
    pub fn create(&self, opts: &CreateOptions) -> Result<NetworkDef, NetError> {
        let _lock = self.lock()?;
        self.create_locked(opts)
    }

    pub(crate) fn create_locked(&self, opts: &CreateOptions) -> Result<NetworkDef, NetError> {
        check_name(&opts.name)?;
        require_root()?;
        if self.def_path(&opts.name).exists() {
            return Err(NetError::Exists(opts.name.clone()));
        }
        let existing = self.list()?;
        let mut nl = Netlink::open()?;
        let subnet = match opts.subnet {
            Some(s) => s,
            None if opts.name == DEFAULT_NETWORK => DEFAULT_SUBNET
                .parse()
                .map_err(|_| NetError::NoFreeSubnet(opts.name.clone()))?,
            None => {
                let routed = nl.routed_subnets()?;
                free_subnet(&existing, &routed)
                    .ok_or_else(|| NetError::NoFreeSubnet(opts.name.clone()))?
            }
        };
        let subnet6 = super::ipv6::subnet_for(&self.state, opts, &existing, &mut nl)?;
        let def = NetworkDef {
            name: opts.name.clone(),
            bridge: bridge_name(&opts.name),
            subnet,
            gateway: ipam::gateway_of(subnet),
            subnet6,
            internal: opts.internal,
            isolate: opts.isolate,
            mtu: nl.uplink_mtu()?.unwrap_or(FALLBACK_MTU),
        };
        check_conflicts(&def, &existing)?;
        // The record first: whatever a crash leaves, `remove` and `prune` find.
        let path = self.def_path(&def.name);
        let bytes = serde_json::to_vec_pretty(&def).map_err(|source| NetError::Parse {
            path: path.clone(),
            source,
        })?;
        let existed = nl.link(&def.bridge)?.is_some();
        crate::atomic::write(&path, &bytes).map_err(io_err("write", &path))?;
        let made = self
            .ensure_bridge(&mut nl, &def)
            .and_then(|_| self.apply_firewall());
        if let Err(e) = made {
            if !existed {
                let _ = nl.delete(&def.bridge);
            }
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(def)
    }

    /// Network `name`, made with the defaults if it is the default network and missing.
    /// The caller holds the lock.
    pub(crate) fn get_or_default(&self, name: &str) -> Result<NetworkDef, NetError> {
        match self.get(name) {
            Err(NetError::NotFound(_)) if name == DEFAULT_NETWORK => {
                self.create_locked(&CreateOptions {
                    name: name.to_string(),
                    ..CreateOptions::default()
                })
            }
            other => other,
        }
    }

    /// Makes the network's bridge (if a reboot or crash left none): its address, up.
    /// Returns its index.
    pub(crate) fn ensure_bridge(
        &self,
        nl: &mut Netlink,
        def: &NetworkDef,
    ) -> Result<u32, NetError> {
        let link = match nl.link(&def.bridge)? {
            Some(l) => l,
            None => {
                nl.add_bridge(&def.bridge, super::LINK_MTU, &self.tag())?;
                nl.link(&def.bridge)?
                    .ok_or_else(|| NetError::NotABridge(def.bridge.clone()))?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(NetError::NotABridge(def.bridge.clone()));
        }
        // Another installation's (another state directory's) bridge of that name: never
        // share it. (None: made by a create that died before marking it.)
        if let Some(other) = link.alias.as_deref().filter(|a| *a != self.tag()) {
            return Err(NetError::BridgeInUse {
                bridge: def.bridge.clone(),
                owner: other.to_string(),
            });
        }
        nl.add_address(link.index, def.gateway.into(), def.subnet.prefix)?;
        if let Some(net6) = def.subnet6 {
            super::ipv6::enable_ipv6(&def.bridge)?;
            // Its routes are warren's: no router advertisement (from a container) adds any.
            super::ipv6::set_conf(&def.bridge, "accept_ra", "0")?;
            nl.add_address(link.index, net6.gateway().into(), net6.prefix)?;
        }
        nl.set_up(link.index)?;
        Ok(link.index)
    }

    /// Removes network `name`: refused while containers are on it.
    pub fn remove(&self, name: &str) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let def = self.get(name)?;
        let endpoints = ipam::endpoints(&self.endpoints_dir(name))?;
        if !endpoints.is_empty() {
            return Err(NetError::InUse {
                name: name.to_string(),
                containers: endpoints.into_iter().map(|e| e.container).collect(),
            });
        }
        dns::stop(&def, &self.run)?;
        Netlink::open()?.delete(&def.bridge)?;
        let dir = self.state.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &dir)(e));
            }
            _ => {}
        }
        let path = self.def_path(name);
        std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
        self.apply_firewall()
    }

    /// Makes the firewall match the records (loading the tables whole). The caller
    /// holds the lock.
    pub(crate) fn apply_firewall(&self) -> Result<(), NetError> {
        self.set_firewall(false)
    }

    /// [`Self::apply_firewall`] after a change of endpoints only: only their elements
    /// change while the tables match the networks (see [`firewall::update`]).
    pub(crate) fn update_firewall(&self) -> Result<(), NetError> {
        self.set_firewall(true)
    }

    fn set_firewall(&self, endpoints_only: bool) -> Result<(), NetError> {
        let defs = self.list()?;
        let endpoints = self.all_endpoints()?;
        let saved = self.run.join("ip_forward.saved");
        let table = self.firewall_table();
        if !defs.is_empty() {
            firewall::registry::record(&table, self.state_dir())?;
        }
        if endpoints_only {
            firewall::update(&table, &defs, &endpoints, &saved)?;
        } else {
            firewall::apply(&table, &defs, &endpoints, &saved)?;
        }
        if defs.is_empty() {
            firewall::registry::forget(&table)?;
        }
        Ok(())
    }

    /// The state directory (the parent of `networks`).
    fn state_dir(&self) -> &Path {
        self.state.parent().unwrap_or(&self.state)
    }

    /// Removes the tables of state directories that no longer exist (see
    /// [`firewall::registry`]); returns their names.
    pub(crate) fn prune_stale_tables(&self) -> Result<Vec<String>, NetError> {
        let default = crate::dirs::default_state_dir();
        let table_of = |dir: &Path| table_name(dir, &default);
        Ok(firewall::registry::prune_stale(&table_of)?)
    }
}

/// See [`Networks::firewall_table`].
pub fn table_name(state_dir: &Path, default_state_dir: &Path) -> String {
    if state_dir == default_state_dir {
        return firewall::nft::DEFAULT_TABLE.to_string();
    }
    let hash = blake3::hash(state_dir.as_os_str().as_encoded_bytes()).to_hex();
    format!("{}-{}", firewall::nft::DEFAULT_TABLE, &hash[..8])
}

fn read_def(path: &Path) -> Result<NetworkDef, NetError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| NetError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn require_root() -> Result<(), NetError> {
    if crate::dirs::is_root() {
        Ok(())
    } else {
        Err(NetError::NeedsRoot)
    }
}

/// A network name: what a file name and a `bridge:NAME` can hold.
pub fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::BadName(name.to_string()))
    }
}

/// `wrn-NAME`, or when that passes the kernel's 15 bytes, `wrn-` + the name's first 5
/// bytes + `-` + 5 hex digits of its hash: long names that share a start stay apart.
pub fn bridge_name(name: &str) -> String {
    let full = format!("wrn-{name}");
    if full.len() <= 15 {
        return full;
    }
    let hash = blake3::hash(name.as_bytes()).to_hex();
    // Names are ASCII (check_name), so any byte index is a char boundary.
    format!("wrn-{}-{}", &name[..5], &hash[..5])
}

/// Refuses a network whose subnets overlap, or whose bridge name equals, another's.
pub fn check_conflicts(def: &NetworkDef, existing: &[NetworkDef]) -> Result<(), NetError> {
    for other in existing {
        let overlap = |subnet: String, other_subnet: String| NetError::Overlap {
            name: def.name.clone(),
            subnet,
            other: other.name.clone(),
            other_subnet,
        };
        if other.subnet.overlaps(&def.subnet) {
            return Err(overlap(def.subnet.to_string(), other.subnet.to_string()));
        }
        if let (Some(a), Some(b)) = (def.subnet6, other.subnet6) {
            if a.overlaps(&b) {
                return Err(overlap(a.to_string(), b.to_string()));
            }
        }
        if other.bridge == def.bridge {
            return Err(NetError::BridgeTaken {
                name: def.name.clone(),
                bridge: def.bridge.clone(),
                other: other.name.clone(),
            });
        }
    }
    Ok(())
}

/// The first 10.90.0.0/24 .. 10.127.255.0/24 that overlaps neither a network nor a
/// subnet routed on the host.
pub fn free_subnet(
    existing: &[NetworkDef],
    routed: &[(std::net::Ipv4Addr, u8)],
) -> Option<Ipv4Net> {
    let default: Option<Ipv4Net> = DEFAULT_SUBNET.parse().ok();
    (0x0a5a_0000u32..0x0a80_0000)
        .step_by(256)
        .map(|a| Ipv4Net {
            addr: a.into(),
            prefix: 24,
        })
        .find(|c| {
            !existing.iter().any(|n| n.subnet.overlaps(c))
                && !default.is_some_and(|d| d.overlaps(c))
                && !routed.iter().any(|(addr, prefix)| {
                    Ipv4Net {
                        addr: *addr,
                        prefix: *prefix,
                    }
                    .overlaps(c)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, subnet: &str) -> NetworkDef {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkDef {
            name: name.into(),
            bridge: bridge_name(name),
            subnet,
            gateway: ipam::gateway_of(subnet),
            subnet6: None,
            internal: false,
            isolate: false,
            mtu: 1500,
        }
    }

    #[test]
    fn bridge_names_fit_and_stay_apart() {
        assert_eq!(bridge_name("web"), "wrn-web");
        assert_eq!(bridge_name("elevenchars"), "wrn-elevenchars");
        let a = bridge_name("frontend-production");
        let b = bridge_name("frontend-staging");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("wrn-front"));
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_state_dir_has_its_own_table() {
        let default = Path::new("/var/lib/warren");
        assert_eq!(table_name(default, default), "warren");
        let a = table_name(Path::new("/tmp/a/state"), default);
        let b = table_name(Path::new("/tmp/b/state"), default);
        assert!(a.starts_with("warren-") && a.len() == 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, table_name(Path::new("/tmp/a/state"), default));
        assert!(firewall::nft::valid_table(&a));
    }

    #[test]
    fn overlapping_subnets_are_refused_by_name() {
        let existing = [def("web", "10.231.1.0/24")];
        let err = check_conflicts(&def("db", "10.231.0.0/16"), &existing).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("db") && msg.contains("web") && msg.contains("10.231.1.0/24"),
            "{msg}"
        );
        check_conflicts(&def("db", "10.231.2.0/24"), &existing).unwrap();
    }

    #[test]
    fn picked_subnets_avoid_networks_routes_and_the_default() {
        let existing = [def("a", "10.90.0.0/24")];
        let routed = [("10.90.1.0".parse().unwrap(), 24)];
        let got = free_subnet(&existing, &routed).unwrap();
        assert_eq!(got.to_string(), "10.90.2.0/24");
        let routed = [("10.0.0.0".parse().unwrap(), 8)];
        assert_eq!(free_subnet(&[], &routed), None);
    }
}
