//! `net::firewall::apply` against real traffic, without warren's container code: each test
//! builds its topology with `ip` (bridges; network namespaces standing for containers,
//! for another host and for an upstream router), serves HTTP with busybox httpd in them,
//! and checks what reaches what with bounded requests (busybox nc).
//!
//! Each test has tables of its own (`warren-fwt-TAG`, as a state directory of its own
//! would), but ip_forward is host-wide, so the tests here run one at a time (`LOCK`).
//! Addresses are 10.231.50-99.x (this file's share); every test removes what it made.

mod common;
#[path = "common/net.rs"]
mod net;

use net::fetch;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use warren::net::firewall::{self, FirewallError};
use warren::net::{Endpoint, NetworkDef, PortMapping};

static LOCK: Mutex<()> = Mutex::new(());

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn ip(args: &str) {
    common::ok(Command::new("ip").args(args.split_whitespace()));
}

fn in_ns(ns: &str, args: &str) {
    ip(&format!("netns exec {ns} ip {args}"));
}

/// The test's topology, taken down on drop (also when an assertion fails).
struct Topo {
    tag: String,
    netns: Vec<String>,
    links: Vec<String>,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
    forward_before: String,
    /// The tables this test loads into (the first is `apply`'s).
    tables: Vec<String>,
}

impl Topo {
    fn new(tag: &str) -> Topo {
        common::require_tool("ip", "iproute2");
        common::require_tool("nft", "nftables");
        common::require_tool("busybox", "busybox-static");
        Topo {
            tag: tag.to_string(),
            netns: Vec::new(),
            links: Vec::new(),
            servers: Vec::new(),
            dir: common::scratch("network-firewall"),
            forward_before: std::fs::read_to_string(IP_FORWARD).unwrap(),
            tables: vec![format!("warren-fwt-{tag}")],
        }
    }

    /// The test's (first) table.
    fn table(&self) -> &str {
        &self.tables[0]
    }

    /// Where `apply` keeps ip_forward's previous value (a run dir of the test's own).
    fn saved(&self) -> PathBuf {
        self.saved_of(self.table())
    }

    /// The same for table `table` (one run dir per table: one per state dir).
    fn saved_of(&self, table: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("run-{table}/ip_forward.saved"))
    }

    fn apply(&self, nets: &[NetworkDef], eps: &[Endpoint]) -> Result<(), FirewallError> {
        self.apply_in(self.table(), nets, eps)
    }

    /// `apply` as the state directory owning `table` would.
    fn apply_in(
        &self,
        table: &str,
        nets: &[NetworkDef],
        eps: &[Endpoint],
    ) -> Result<(), FirewallError> {
        firewall::apply(table, nets, eps, &self.saved_of(table))
    }

    /// A network and its bridge (`wf{tag}{n}`) on 10.231.THIRD.0/24, gateway .1.
    fn network(&mut self, n: &str, third: u8) -> NetworkDef {
        let bridge = format!("wf{}{n}", self.tag);
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&format!("link add {bridge} type bridge"));
        self.links.push(bridge.clone());
        ip(&format!("addr add 10.231.{third}.1/24 dev {bridge}"));
        ip(&format!("link set {bridge} up"));
        NetworkDef {
            name: format!("fw-{}-{n}", self.tag),
            bridge,
            subnet: format!("10.231.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, third, 1),
            subnet6: None,
            internal: false,
            isolate: false,
            mtu: 1500,
        }
    }

    fn netns(&mut self, name: &str) -> String {
        let ns = format!("wf{}-{name}", self.tag);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&format!("netns add {ns}"));
        self.netns.push(ns.clone());
        in_ns(&ns, "link set lo up");
        ns
    }

    /// A container on `net` with address .HOST, serving HTTP on `ports`.
    fn container(&mut self, net: &NetworkDef, name: &str, host: u8, ports: &[&str]) -> Endpoint {
        let ns = self.netns(name);
        let veth = format!("wf{}{name}", self.tag);
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {ns}"
        ));
        self.links.push(veth.clone());
        ip(&format!("link set {veth} master {} up", net.bridge));
        // As netavark does: with br_netfilter on, a container reaching its own published
        // port is DNAT'd back out of the port it came in by (a bridge "hairpin").
        ip(&format!("link set {veth} type bridge_slave hairpin on"));
        let [a, b, c, _] = net.gateway.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        in_ns(&ns, &format!("addr add {addr}/24 dev eth0"));
        in_ns(&ns, "link set eth0 up");
        in_ns(&ns, &format!("route add default via {}", net.gateway));
        for port in [80, 81] {
            self.serve(&ns, name, port);
        }
        Endpoint {
            network: net.name.clone(),
            container: name.to_string(),
            addr,
            addr6: None,
            names: vec![name.to_string()],
            ports: ports
                .iter()
                .map(|p| p.parse::<PortMapping>().unwrap())
                .collect(),
            veth,
        }
    }

    /// A namespace behind a veth to the host: the host is 10.231.THIRD.1, it is .2.
    fn peer(&mut self, name: &str, third: u8) -> String {
        let ns = self.netns(name);
        let veth = format!("wf{}{name}", self.tag);
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {ns}"
        ));
        self.links.push(veth.clone());
        ip(&format!("addr add 10.231.{third}.1/24 dev {veth}"));
        ip(&format!("link set {veth} up"));
        in_ns(&ns, &format!("addr add 10.231.{third}.2/24 dev eth0"));
        in_ns(&ns, "link set eth0 up");
        self.serve(&ns, name, 80);
        ns
    }

    /// busybox httpd on PORT in NS; `/cgi-bin/who` answers "NAME:PORT CLIENT_ADDRESS".
    fn serve(&mut self, ns: &str, name: &str, port: u16) {
        self.httpd(Some(ns), name, "127.0.0.1", port);
    }

    /// busybox httpd on ADDR:PORT only, in NS or on the host.
    fn httpd(&mut self, ns: Option<&str>, name: &str, addr: &str, port: u16) {
        let root = self.dir.path().join(format!("{name}-{port}"));
        let cgi = root.join("cgi-bin");
        std::fs::create_dir_all(&cgi).unwrap();
        let script = format!(
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n{name}:{port} %s\\n' \"$REMOTE_ADDR\"\n"
        );
        std::fs::write(cgi.join("who"), script).unwrap();
        common::ok(Command::new("chmod").arg("755").arg(cgi.join("who")));
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "busybox"]);
                c
            }
            None => Command::new("busybox"),
        };
        let listen = match ns {
            // In a namespace of its own: every address (the loopback for the check below).
            Some(_) => port.to_string(),
            None => format!("{addr}:{port}"),
        };
        let child = cmd
            .args(["httpd", "-f", "-p", &listen, "-h"])
            .arg(&root)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
        // Up when it answers (bounded: 50 tries).
        for _ in 0..50 {
            if fetch(ns, addr, port).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("httpd in {ns:?} on {addr}:{port} did not come up");
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for link in &self.links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // Whatever the test got to: no table of ours left, ip_forward as it was.
        for table in &self.tables {
            let _ = firewall::apply(table, &[], &[], &self.saved_of(table));
        }
        let _ = std::fs::write(IP_FORWARD, self.forward_before.trim());
    }
}

/// The answer's first word (who answered: "NAME:PORT").
fn who(ns: Option<&str>, addr: &str, port: u16) -> Option<String> {
    fetch(ns, addr, port).map(|s| s.split_whitespace().next().unwrap_or("").to_string())
}

/// The tables named `table` in `nft -j list ruleset`, as "family name".
fn tables(table: &str) -> Vec<String> {
    let out = common::ok(Command::new("nft").args(["-j", "list", "ruleset"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["name"] == table)
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// How many elements the map `inet TABLE NAME` holds.
fn map_len(table: &str, name: &str) -> usize {
    let out = common::ok(Command::new("nft").args(["-j", "list", "map", "inet", table, name]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("map"))
        .and_then(|m| m.get("elem"))
        .map_or(0, |e| e.as_array().unwrap().len())
}

fn read_forward() -> String {
    std::fs::read_to_string(IP_FORWARD)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn published_ports_reach_the_container_and_nothing_else_does() {
    if !common::require_root("bridges, network namespaces and nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new("p");
    let forward_before = read_forward();
    let net = t.network("n", 50);
    let web = t.container(&net, "web", 2, &["18080:80", "127.0.0.1:18081:81"]);
    let peer = t.container(&net, "peer", 3, &[]);
    let other = t.peer("other", 60);
    // The other host knows the way to the containers' subnet: only the firewall stops it.
    in_ns(&other, "route add 10.231.50.0/24 via 10.231.60.1");
    t.apply(std::slice::from_ref(&net), &[web.clone(), peer.clone()])
        .unwrap();
    assert_eq!(read_forward(), "1");
    assert_eq!(std::fs::read_to_string(t.saved()).unwrap(), forward_before);

    // From another host, to the host's address: the container, seeing the real client.
    let seen = fetch(Some(&other), "10.231.60.1", 18080);
    assert_eq!(seen.as_deref(), Some("web:80 10.231.60.2"));
    // From the host itself: its own addresses and loopback (route_localnet + masquerade).
    assert_eq!(who(None, "10.231.60.1", 18080).as_deref(), Some("web:80"));
    assert_eq!(who(None, "127.0.0.1", 18080).as_deref(), Some("web:80"));
    assert_eq!(who(None, "127.0.0.1", 18081).as_deref(), Some("web:81"));
    // Hairpin: another container, and the container itself, through the host's addresses.
    for addr in ["10.231.50.1", "10.231.60.1"] {
        assert_eq!(
            who(Some("wfp-peer"), addr, 18080).as_deref(),
            Some("web:80"),
            "{addr}"
        );
        assert_eq!(
            who(Some("wfp-web"), addr, 18080).as_deref(),
            Some("web:80"),
            "{addr}"
        );
    }
    // 127.0.0.1:18081 is published on loopback only: not on the host's other addresses.
    assert_eq!(who(Some(&other), "10.231.60.1", 18081), None);
    // Not published, or straight to a container's address from outside: nothing.
    assert_eq!(who(Some(&other), "10.231.50.2", 81), None);
    assert_eq!(who(Some(&other), "10.231.50.2", 80), None);
    assert_eq!(who(Some(&other), "10.231.50.3", 80), None);
    // Within the network, containers reach each other.
    assert_eq!(
        who(Some("wfp-peer"), "10.231.50.2", 81).as_deref(),
        Some("web:81")
    );

    // The endpoint gone: its DNAT is gone.
    t.apply(std::slice::from_ref(&net), std::slice::from_ref(&peer))
        .unwrap();
    assert_eq!(map_len(t.table(), "ports_addr"), 0);
    assert_eq!(who(Some(&other), "10.231.60.1", 18080), None);
    assert_eq!(who(None, "127.0.0.1", 18080), None);

    // No network: no table, ip_forward as before, nothing on record.
    t.apply(&[], &[]).unwrap();
    assert!(tables(t.table()).is_empty(), "{:?}", tables(t.table()));
    // (Unless a test elsewhere on the host has a warren table that forwards right now.)
    if !firewall::apply::others_forward(t.table()).unwrap() {
        assert_eq!(read_forward(), forward_before);
        assert!(!t.saved().exists());
    }
}

#[test]
fn networks_are_isolated_masqueraded_or_internal() {
    if !common::require_root("bridges, network namespaces and nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new("i");
    let a = t.network("a", 52);
    let b = t.network("b", 53);
    let mut c = t.network("c", 54);
    c.internal = true;
    let mut d = t.network("d", 55);
    d.isolate = true;
    let eps = [
        t.container(&a, "a1", 2, &[]),
        t.container(&a, "a2", 3, &[]),
        t.container(&b, "b1", 2, &[]),
        t.container(&c, "c1", 2, &[]),
        t.container(&c, "c2", 3, &[]),
        t.container(&d, "d1", 2, &[]),
        t.container(&d, "d2", 3, &["18085:80"]),
    ];
    // A service of the host's on an internal network's gateway (as its name server is).
    t.httpd(None, "gw", "10.231.54.1", 18086);
    let up = t.peer("up", 61);
    let nets = [a, b, c, d];
    t.apply(&nets, &eps).unwrap();
    assert_eq!(
        tables(t.table()),
        ["inet warren-fwt-i", "bridge warren-fwt-i"]
    );

    // Out through the host: the upstream sees the host's address (it has no route back
    // to the containers' subnets, so an answer at all proves the masquerade).
    let seen = fetch(Some("wfi-a1"), "10.231.61.2", 80);
    assert_eq!(seen.as_deref(), Some("up:80 10.231.61.1"));
    assert_eq!(
        who(Some("wfi-d1"), "10.231.61.2", 80).as_deref(),
        Some("up:80")
    );
    // Internal: no way out, but its containers reach each other.
    assert_eq!(who(Some("wfi-c1"), "10.231.61.2", 80), None);
    assert_eq!(
        who(Some("wfi-c1"), "10.231.54.3", 80).as_deref(),
        Some("c2:80")
    );
    // Networks apart, both ways, internal included.
    assert_eq!(who(Some("wfi-a1"), "10.231.53.2", 80), None);
    assert_eq!(who(Some("wfi-b1"), "10.231.52.2", 80), None);
    assert_eq!(who(Some("wfi-c1"), "10.231.52.2", 80), None);
    assert_eq!(who(Some("wfi-a1"), "10.231.54.2", 80), None);
    // One network: together; `isolate`: apart.
    assert_eq!(
        who(Some("wfi-a1"), "10.231.52.3", 80).as_deref(),
        Some("a2:80")
    );
    assert_eq!(who(Some("wfi-d1"), "10.231.55.3", 80), None);
    assert_eq!(who(Some("wfi-d2"), "10.231.55.2", 80), None);
    // Not even through a published port; which other networks do reach.
    assert_eq!(who(Some("wfi-d1"), "10.231.55.1", 18085), None);
    assert_eq!(
        who(Some("wfi-a1"), "10.231.55.1", 18085).as_deref(),
        Some("d2:80")
    );
    assert_eq!(
        who(Some("wfi-a1"), "10.231.52.1", 18085).as_deref(),
        Some("d2:80")
    );
    // The host's own services on the gateway: input is not warren's to filter.
    assert_eq!(
        who(Some("wfi-c1"), "10.231.54.1", 18086).as_deref(),
        Some("gw:18086")
    );
    // The upstream cannot open connections into a network.
    in_ns(&up, "route add 10.231.52.0/24 via 10.231.61.1");
    assert_eq!(who(Some(&up), "10.231.52.2", 80), None);

    t.apply(&[], &[]).unwrap();
    assert!(tables(t.table()).is_empty(), "{:?}", tables(t.table()));
}

#[test]
fn three_hundred_endpoints_fill_the_maps() {
    if !common::require_root("nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topo::new("m");
    // Records only: the maps are what is checked, no bridge is needed for that.
    let net: NetworkDef = NetworkDef {
        name: "fw-m".into(),
        bridge: "wfm-none".into(),
        subnet: "10.231.56.0/22".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 231, 56, 1),
        subnet6: None,
        internal: false,
        isolate: false,
        mtu: 1500,
    };
    let eps: Vec<Endpoint> = (0..300u16)
        .map(|i| Endpoint {
            network: net.name.clone(),
            container: format!("c{i}"),
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 231, 56, 2)) + u32::from(i)),
            addr6: None,
            names: vec![format!("c{i}")],
            ports: vec![
                format!("{}:80", 20000 + i).parse().unwrap(),
                format!("127.0.0.1:{}:53/udp", 30000 + i).parse().unwrap(),
            ],
            veth: format!("wfm{i}"),
        })
        .collect();
    let start = std::time::Instant::now();
    t.apply(std::slice::from_ref(&net), &eps).unwrap();
    // For the record (no assertion on time): one apply with 600 published ports.
    eprintln!("apply, 300 endpoints: {:?}", start.elapsed());
    for (map, n) in [
        ("ports_addr", 300),
        ("ports_port", 300),
        ("ports_at_addr", 300),
        ("ports_at_port", 300),
    ] {
        assert_eq!(map_len(t.table(), map), n, "{map}");
    }
    // One element checked end to end: 20299/tcp goes to the 300th container's port 80.
    let out =
        common::ok(Command::new("nft").args(["list", "map", "inet", t.table(), "ports_addr"]));
    assert!(out.contains("tcp . 20299 : 10.231.57.45"), "{out}");
    // A second apply with 299 replaces the first: 299 elements, not 599.
    t.apply(std::slice::from_ref(&net), &eps[1..]).unwrap();
    assert_eq!(map_len(t.table(), "ports_addr"), 299);
    t.apply(&[], &[]).unwrap();
    assert!(tables(t.table()).is_empty());
}

#[test]
fn a_port_conflict_changes_nothing() {
    if !common::require_root("nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topo::new("c");
    let net = NetworkDef {
        name: "fw-c".into(),
        bridge: "wfc-none".into(),
        subnet: "10.231.62.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 231, 62, 1),
        subnet6: None,
        internal: false,
        isolate: false,
        mtu: 1500,
    };
    let ep = |name: &str, host: u8, port: &str| Endpoint {
        network: net.name.clone(),
        container: name.into(),
        addr: Ipv4Addr::new(10, 231, 62, host),
        addr6: None,
        names: vec![name.into()],
        ports: vec![port.parse().unwrap()],
        veth: format!("wfc{host}"),
    };
    let first = ep("one", 2, "18090:80");
    t.apply(std::slice::from_ref(&net), std::slice::from_ref(&first))
        .unwrap();
    let clash = [first.clone(), ep("two", 3, "18090:81")];
    let err = t.apply(std::slice::from_ref(&net), &clash).unwrap_err();
    assert!(matches!(err, FirewallError::PortTaken { .. }), "{err}");
    // The table loaded before is still there, whole.
    assert_eq!(map_len(t.table(), "ports_addr"), 1);
    t.apply(&[], &[]).unwrap();
    assert!(tables(t.table()).is_empty());
}

#[test]
fn two_state_dirs_keep_their_own_tables() {
    if !common::require_root("bridges, network namespaces and nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new("s");
    let second = "warren-fwt-s2".to_string();
    t.tables.push(second.clone());
    let first = t.table().to_string();
    let a = t.network("a", 63);
    let b = t.network("b", 64);
    let a1 = t.container(&a, "a1", 2, &["18091:80"]);
    let b1 = t.container(&b, "b1", 2, &["18092:80"]);
    let other = t.peer("other", 65);
    in_ns(&other, "route add 10.231.63.0/24 via 10.231.65.1");
    in_ns(&other, "route add 10.231.64.0/24 via 10.231.65.1");
    // Two state directories, each applying only its own network.
    t.apply_in(&first, std::slice::from_ref(&a), std::slice::from_ref(&a1))
        .unwrap();
    t.apply_in(&second, std::slice::from_ref(&b), std::slice::from_ref(&b1))
        .unwrap();
    assert_eq!(
        tables(&first),
        [format!("inet {first}"), format!("bridge {first}")]
    );
    assert_eq!(
        tables(&second),
        [format!("inet {second}"), format!("bridge {second}")]
    );
    assert_eq!(
        who(Some(&other), "10.231.65.1", 18091).as_deref(),
        Some("a1:80")
    );
    assert_eq!(
        who(Some(&other), "10.231.65.1", 18092).as_deref(),
        Some("b1:80")
    );
    assert_eq!(who(Some(&other), "10.231.63.2", 80), None);
    // Isolated across state directories too: each table drops what enters its bridges.
    assert_eq!(who(Some("wfs-a1"), "10.231.64.2", 80), None);
    assert_eq!(who(Some("wfs-b1"), "10.231.63.2", 80), None);
    // Published ports are for everyone, the other state directory's containers included.
    assert_eq!(
        who(Some("wfs-a1"), "10.231.65.1", 18092).as_deref(),
        Some("b1:80")
    );

    // The first state directory's last network gone: only its tables go, and as the
    // second still forwards, ip_forward stays on and the first keeps its record.
    t.apply_in(&first, &[], &[]).unwrap();
    assert!(tables(&first).is_empty(), "{:?}", tables(&first));
    assert_eq!(tables(&second).len(), 2);
    assert_eq!(
        who(Some(&other), "10.231.65.1", 18092).as_deref(),
        Some("b1:80")
    );
    assert_eq!(who(None, "127.0.0.1", 18092).as_deref(), Some("b1:80"));
    assert_eq!(who(Some(&other), "10.231.65.1", 18091), None);
    assert_eq!(read_forward(), "1");
    assert!(t.saved_of(&first).exists());
    assert!(t.saved_of(&second).exists());

    // The second gone too: nothing of either left; the first's record is settled on
    // its next apply, once no warren table forwards.
    t.apply_in(&second, &[], &[]).unwrap();
    assert!(tables(&second).is_empty());
    // (Unless a table of another state directory on the host forwards right now.)
    if !firewall::apply::others_forward(&second).unwrap() {
        assert!(!t.saved_of(&second).exists());
    }
    t.apply_in(&first, &[], &[]).unwrap();
    // (Unless a test elsewhere on the host has a warren table that forwards right now.)
    if !firewall::apply::others_forward(&first).unwrap() {
        assert!(!t.saved_of(&first).exists());
        assert_eq!(read_forward(), t.forward_before.trim());
    }
}

/// A datagram from inside NS (a thread that joined it) to SERVER, and the answer, if
/// one comes (2 tries, 1 s each).
fn udp_ask(ns: &str, server: &str) -> Option<String> {
    let path = format!("/run/netns/{ns}");
    let server: std::net::SocketAddr = server.parse().unwrap();
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).expect("open the netns");
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind in the netns");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..2 {
            sock.send_to(b"question", server).ok()?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
    .join()
    .expect("the asking thread")
}

/// A stand-in name server on ADDR:53/udp: answers "answer" to every datagram, until
/// the returned flag is set (or 120 s pass).
fn udp_echo(addr: &str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sock = std::net::UdpSocket::bind((addr, 53)).expect("bind the stand-in name server");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let flag = stop.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(b"answer", from);
            }
        }
    });
    stop
}

#[test]
fn a_networks_name_server_answers_its_own_bridge_only() {
    if !common::require_root("bridges, network namespaces and nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new("d");
    let a = t.network("a", 66);
    let b = t.network("b", 67);
    let inside = t.container(&a, "in", 2, &[]);
    let outside = t.container(&b, "out", 2, &[]);
    let other = t.peer("other", 68);
    in_ns(&other, "route add 10.231.66.0/24 via 10.231.68.1");
    // The name server of network a listens on its gateway, TCP and UDP port 53.
    t.httpd(None, "dns", "10.231.66.1", 53);
    let stop = udp_echo("10.231.66.1");
    let (ns_in, ns_out) = ("wfd-in", "wfd-out");
    let server = "10.231.66.1:53";
    // Without warren's tables every one of them reaches it: only the firewall stops them.
    for ns in [ns_in, ns_out, other.as_str()] {
        assert!(fetch(Some(ns), "10.231.66.1", 53).is_some(), "{ns}: tcp");
        assert_eq!(udp_ask(ns, server).as_deref(), Some("answer"), "{ns}: udp");
    }
    t.apply(&[a.clone(), b.clone()], &[inside, outside])
        .unwrap();
    let got = fetch(Some(ns_in), "10.231.66.1", 53);
    assert!(
        got.is_some_and(|g| g.starts_with("dns:53")),
        "its own network: tcp"
    );
    assert_eq!(udp_ask(ns_in, server).as_deref(), Some("answer"), "udp");
    for ns in [ns_out, other.as_str()] {
        assert_eq!(fetch(Some(ns), "10.231.66.1", 53), None, "{ns}: tcp");
        assert_eq!(udp_ask(ns, server), None, "{ns}: udp");
    }
    assert_eq!(fetch(None, "10.231.66.1", 53), None, "the host itself");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.apply(&[], &[]).unwrap();
}

/// The handle of table `inet TABLE` (a new one each time the table is made anew).
fn table_handle(table: &str) -> u64 {
    let out = common::ok(Command::new("nft").args(["-j", "list", "tables", "inet"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("table"))
        .find(|t| t["name"] == table)
        .and_then(|t| t["handle"].as_u64())
        .unwrap_or_else(|| panic!("no table inet {table}"))
}

#[test]
fn an_endpoint_update_changes_only_elements_and_repairs_them() {
    if !common::require_root("bridges, network namespaces and nftables") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new("u");
    let net = t.network("n", 69);
    let web = t.container(&net, "web", 2, &["18090:80"]);
    let api = t.container(&net, "api", 3, &["127.0.0.1:18091:81"]);
    let update = |t: &Topo, eps: &[Endpoint]| {
        firewall::update(t.table(), std::slice::from_ref(&net), eps, &t.saved())
    };
    // No tables yet: loaded whole.
    update(&t, std::slice::from_ref(&web)).unwrap();
    assert_eq!(who(None, "127.0.0.1", 18090).as_deref(), Some("web:80"));
    let handle = table_handle(t.table());
    // A container joins and leaves: its elements come and go, the tables stay.
    update(&t, &[web.clone(), api.clone()]).unwrap();
    assert_eq!(who(None, "127.0.0.1", 18091).as_deref(), Some("api:81"));
    assert_eq!(map_len(t.table(), "ports_at_port"), 1);
    update(&t, std::slice::from_ref(&web)).unwrap();
    assert_eq!(who(None, "127.0.0.1", 18091), None);
    assert_eq!(map_len(t.table(), "ports_at_port"), 0);
    assert_eq!(table_handle(t.table()), handle, "reloaded for an endpoint");
    // An element no record calls for (a crash's leftover), or one changed by hand: the
    // next update puts them right.
    let set = |args: &str| {
        let cmd = format!("add element inet {} {args}", t.table());
        common::ok(Command::new("nft").args(cmd.split_whitespace()));
    };
    set("ports_addr { tcp . 18092 : 10.231.69.9 }");
    set("ports_port { tcp . 18092 : 80 }");
    common::ok(
        Command::new("nft").args(
            format!(
                "delete element inet {} ports_port {{ tcp . 18090 }}",
                t.table()
            )
            .split_whitespace(),
        ),
    );
    update(&t, std::slice::from_ref(&web)).unwrap();
    assert_eq!(map_len(t.table(), "ports_addr"), 1);
    assert_eq!(map_len(t.table(), "ports_port"), 1);
    assert_eq!(who(None, "127.0.0.1", 18090).as_deref(), Some("web:80"));
    assert_eq!(table_handle(t.table()), handle);
    // Another network's tables (or an older layout's): loaded whole.
    let other = t.network("o", 70);
    firewall::update(
        t.table(),
        &[net.clone(), other],
        std::slice::from_ref(&web),
        &t.saved(),
    )
    .unwrap();
    assert_ne!(
        table_handle(t.table()),
        handle,
        "the tables were not reloaded"
    );
    assert_eq!(who(None, "127.0.0.1", 18090).as_deref(), Some("web:80"));
    t.apply(&[], &[]).unwrap();
    assert!(tables(t.table()).is_empty());
}
