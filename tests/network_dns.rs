//! The name server of a network (`warren::net::dns`), as root: a bridge made with `ip`,
//! endpoint files written by the test, the responder started from the warren binary, and
//! questions asked from a network namespace on the bridge. Unknown names go to a fake
//! upstream resolver the test runs on loopback: no packet leaves the machine.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use warren::net::{Endpoint, NetworkDef};

const A: u16 = 1;
const AAAA: u16 = 28;

/// A bridge `wdnsX` with 10.231.X.1/24, and a namespace `wdnsX` on it with 10.231.X.2/24;
/// all removed on drop.
struct Lab {
    x: u8,
}

impl Lab {
    fn new(x: u8) -> Lab {
        let lab = Lab { x };
        lab.cleanup();
        let (br, ns, h, p) = lab.names();
        let ip = |args: &str| {
            common::ok(Command::new("ip").args(args.split_whitespace()));
        };
        ip(&format!("link add {br} type bridge"));
        ip(&format!("addr add 10.231.{x}.1/24 dev {br}"));
        ip(&format!("link set {br} up"));
        ip(&format!("netns add {ns}"));
        ip(&format!("link add {h} type veth peer name {p} netns {ns}"));
        ip(&format!("link set {h} master {br} up"));
        ip(&format!("-n {ns} addr add 10.231.{x}.2/24 dev {p}"));
        ip(&format!("-n {ns} link set {p} up"));
        ip(&format!("-n {ns} link set lo up"));
        lab
    }

    fn names(&self) -> (String, String, String, String) {
        let x = self.x;
        (
            format!("wdns{x}"),
            format!("wdns{x}"),
            format!("wdns{x}h"),
            format!("wdns{x}p"),
        )
    }

    fn cleanup(&self) {
        let (br, ns, h, _) = self.names();
        for args in [
            vec!["link", "del", h.as_str()],
            vec!["link", "del", br.as_str()],
            vec!["netns", "del", ns.as_str()],
        ] {
            let _ = Command::new("ip").args(args).output();
        }
    }

    /// A socket made inside the namespace (from a thread that entered it).
    fn socket<T: Send + 'static>(&self, make: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.names().1);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            make()
        })
        .join()
        .expect("thread")
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.x, 1)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The state files of network `name` in a scratch dir: definition, endpoints, run dir.
struct State {
    _dir: tempfile::TempDir,
    net: NetworkDef,
    def: PathBuf,
    endpoints: PathBuf,
    run: PathBuf,
    resolv: PathBuf,
}

impl State {
    fn new(name: &str, lab: &Lab, upstream: Ipv4Addr) -> State {
        let dir = common::scratch("network-dns");
        let networks = dir.path().join("networks");
        let endpoints = networks.join(name).join("endpoints");
        std::fs::create_dir_all(&endpoints).expect("mkdir");
        let net = NetworkDef {
            name: name.into(),
            bridge: lab.names().0,
            subnet: format!("10.231.{}.0/24", lab.x).parse().expect("subnet"),
            gateway: lab.gateway(),
            subnet6: None,
            internal: false,
            isolate: false,
            mtu: 1500,
        };
        let def = networks.join(format!("{name}.json"));
        std::fs::write(&def, serde_json::to_vec(&net).expect("json")).expect("write def");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {upstream}\n")).expect("resolv.conf");
        State {
            net,
            def,
            endpoints,
            run: dir.path().join("run"),
            resolv,
            _dir: dir,
        }
    }

    fn endpoint(&self, container: &str, addr: Ipv4Addr, v6: Option<&str>, names: &[&str]) {
        let ep = Endpoint {
            network: self.net.name.clone(),
            container: container.into(),
            addr,
            addr6: v6.map(|a| a.parse().expect("v6")),
            names: names.iter().map(|n| n.to_string()).collect(),
            ports: Vec::new(),
            veth: "unused".into(),
        };
        let path = self.endpoints.join(format!("{container}.json"));
        // As warren writes them: a temporary file renamed over the name.
        let tmp = self.endpoints.join(format!(".{container}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&ep).expect("json")).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    fn ensure(&self) {
        warren::net::dns::ensure_with(
            &self.net,
            &self.endpoints,
            &common::bin("warren"),
            &self.run,
            &self.resolv,
        )
        .unwrap_or_else(|e| panic!("{}", warren::error_line(&e)));
    }

    fn pid(&self) -> i32 {
        let file = self.run.join("dns").join(format!("{}.pid", self.net.name));
        let text = std::fs::read_to_string(&file).expect("pid file");
        text.trim().parse().expect("pid")
    }
}

impl Drop for State {
    /// Even when the test failed: no responder outlives it.
    fn drop(&mut self) {
        let _ = warren::net::dns::stop(&self.net, &self.run);
    }
}

fn alive(pid: i32) -> bool {
    // Not a zombie either: the responder's parent is init, which reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(pid)
}

fn question(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    q
}

/// A name on the wire, skipped: the offset after it.
fn skip_name(p: &[u8], mut at: usize) -> usize {
    loop {
        let n = p[at];
        if n == 0 {
            return at + 1;
        }
        if n & 0xc0 == 0xc0 {
            return at + 2;
        }
        at += 1 + usize::from(n);
    }
}

/// (rcode, the A/AAAA addresses) of an answer to a question of id `id`.
fn parse_answer(p: &[u8], id: u16) -> (u8, Vec<IpAddr>) {
    assert_eq!(p[..2], id.to_be_bytes(), "the answer has the question's id");
    let count = u16::from_be_bytes([p[6], p[7]]);
    let mut at = skip_name(p, 12) + 4;
    let mut addrs = Vec::new();
    for _ in 0..count {
        at = skip_name(p, at);
        let rtype = u16::from_be_bytes([p[at], p[at + 1]]);
        let len = usize::from(u16::from_be_bytes([p[at + 8], p[at + 9]]));
        let data = &p[at + 10..at + 10 + len];
        match (rtype, len) {
            (A, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(data).expect("a"))),
            (AAAA, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(data).expect("aaaa"))),
            _ => {}
        }
        at += 10 + len;
    }
    (p[3] & 0xf, addrs)
}

/// Asks `server` over UDP from `sock`: up to 3 tries of 3 s.
fn ask(sock: &UdpSocket, server: SocketAddr, name: &str, qtype: u16) -> (u8, Vec<IpAddr>) {
    static ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        sock.send_to(&question(id, name, qtype), server)
            .expect("send");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if buf[..2] == id.to_be_bytes() {
                return parse_answer(&buf[..n], id);
            }
        }
    }
    panic!("no answer from {server} for {name}");
}

fn v4(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A fake upstream resolver on loopback: answers every question with 10.231.X.250 and
/// counts them; stops with the test process.
fn fake_upstream(
    addr: Ipv4Addr,
    answer: Ipv4Addr,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let sock = UdpSocket::bind((addr, 53)).expect("bind the fake upstream");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let q = &buf[..n];
            let end = skip_name(q, 12) + 4;
            let mut r = q[..end].to_vec();
            r[2] |= 0x80;
            r[3] = 0x80;
            r[6..8].copy_from_slice(&[0, 1]);
            r[8..12].copy_from_slice(&[0; 4]);
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4]);
            r.extend_from_slice(&answer.octets());
            let _ = sock.send_to(&r, from);
        }
    });
    count
}

#[test]
fn names_aliases_forwarding_and_hostile_packets() {
    if !common::require_root("creates a bridge and a network namespace, binds port 53") {
        return;
    }
    common::require_tool("ip", "iproute2");
    let lab = Lab::new(100);
    let upstream = Ipv4Addr::new(127, 231, 100, 53);
    let forwarded = fake_upstream(upstream, Ipv4Addr::new(10, 231, 100, 250));
    let st = State::new("tdns100", &lab, upstream);
    st.endpoint(
        "c1",
        Ipv4Addr::new(10, 231, 100, 2),
        Some("fd31::2"),
        &["c1", "web"],
    );
    st.endpoint("c2", Ipv4Addr::new(10, 231, 100, 3), None, &["c2", "Web"]);
    // An inheritable fd of the caller's must not live on in the responder.
    let (probe_r, probe_w) = nix::unistd::pipe().expect("pipe");
    st.ensure();
    drop(probe_w);
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&probe_r),
        nix::poll::PollFlags::POLLIN,
    )];
    let polled = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(2000u16));
    assert_eq!(polled, Ok(1), "the responder holds the caller's pipe");
    let pid = st.pid();
    st.ensure();
    assert_eq!(st.pid(), pid, "a second ensure starts no second responder");

    // It listens on the gateway only.
    let ss = common::ok(Command::new("ss").args(["-Hlnup"]));
    let ours: Vec<&str> = ss
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .collect();
    assert!(!ours.is_empty(), "the responder's sockets in {ss}");
    assert!(
        ours.iter().all(|l| l.contains("10.231.100.1:53")),
        "{ours:?}"
    );

    let server = SocketAddr::new(IpAddr::V4(lab.gateway()), 53);
    let sock = lab.socket(|| UdpSocket::bind("10.231.100.2:0").expect("bind in the netns"));
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert_eq!(ask(&sock, server, "c1", A), (0, vec![v4("10.231.100.2")]));
    assert_eq!(ask(&sock, server, "C2.", A), (0, vec![v4("10.231.100.3")]));
    assert_eq!(
        ask(&sock, server, "c1.tdns100.warren", A),
        (0, vec![v4("10.231.100.2")])
    );
    assert_eq!(ask(&sock, server, "c1", AAAA), (0, vec![v4("fd31::2")]));
    let (rcode, mut web) = ask(&sock, server, "web", A);
    web.sort();
    assert_eq!(
        (rcode, web),
        (0, vec![v4("10.231.100.2"), v4("10.231.100.3")])
    );
    assert_eq!(
        ask(&sock, server, "nope.tdns100.warren", A),
        (3, vec![]),
        "NXDOMAIN"
    );
    assert_eq!(forwarded.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Anything else goes to the upstream.
    assert_eq!(
        ask(&sock, server, "elsewhere.test", A),
        (0, vec![v4("10.231.100.250")])
    );
    assert_eq!(forwarded.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Endpoints come and go.
    st.endpoint("c3", Ipv4Addr::new(10, 231, 100, 4), None, &["late", "web"]);
    assert_eq!(ask(&sock, server, "late", A), (0, vec![v4("10.231.100.4")]));
    assert_eq!(ask(&sock, server, "web", A).1.len(), 3);
    std::fs::remove_file(st.endpoints.join("c1.json")).expect("rm c1");
    assert_eq!(ask(&sock, server, "c1.tdns100.warren", A), (3, vec![]));
    assert_eq!(ask(&sock, server, "web", A).1.len(), 2);

    // Hostile packets: junk, truncated questions, pointer loops, a response; over TCP a
    // length with nothing behind it. None kills it, and it still answers.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut junk = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = question(9, "c2", A);
    for i in 0..3000 {
        let mut p: Vec<u8> = match i % 3 {
            0 => (0..junk() % 600).map(|_| junk() as u8).collect(),
            1 => good[..(junk() as usize % good.len())].to_vec(),
            _ => {
                let mut p = good[..12].to_vec();
                p.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
                p
            }
        };
        if i == 7 {
            p = good.clone();
            p[2] |= 0x80;
        }
        let _ = sock.send_to(&p, server);
    }
    // Drain whatever FORMERRs came back, bounded.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    for _ in 0..5000 {
        if sock.recv_from(&mut buf).is_err() {
            break;
        }
    }
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let tcp = lab.socket(move || {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("tcp");
        c.write_all(&[0xff, 0xff, 1, 2, 3]).expect("write");
        c
    });
    drop(tcp);
    assert!(alive(pid), "the responder survived the junk");
    assert_eq!(ask(&sock, server, "c2", A), (0, vec![v4("10.231.100.3")]));

    // A question over TCP.
    let got = lab.socket(move || {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("tcp");
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let q = question(77, "late", A);
        c.write_all(&(q.len() as u16).to_be_bytes()).expect("write");
        c.write_all(&q).expect("write");
        let mut len = [0u8; 2];
        c.read_exact(&mut len).expect("read");
        let mut a = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut a).expect("read");
        a
    });
    assert_eq!(parse_answer(&got, 77), (0, vec![v4("10.231.100.4")]));

    warren::net::dns::stop(&st.net, &st.run).expect("stop");
    assert!(
        wait_gone(pid, Duration::from_secs(2)),
        "stop left pid {pid}"
    );
    assert!(!st.run.join("dns/tdns100.pid").exists());
}

#[test]
fn one_responder_for_racing_ensures_and_it_exits_with_its_network() {
    if !common::require_root("creates a bridge, binds port 53") {
        return;
    }
    common::require_tool("ip", "iproute2");
    let lab = Lab::new(101);
    let st = std::sync::Arc::new(State::new(
        "tdns101",
        &lab,
        Ipv4Addr::new(127, 231, 101, 53),
    ));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let st = st.clone();
            std::thread::spawn(move || st.ensure())
        })
        .collect();
    for t in threads {
        t.join().expect("ensure");
    }
    let pid = st.pid();
    let marker = warren::net::dns::MARKER;
    let count = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            let text = String::from_utf8_lossy(c);
            text.contains(marker) && text.contains("tdns101")
        })
        .count();
    assert_eq!(count, 1, "four racing ensures start one responder");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");

    // The network is made again with another gateway: ensure replaces the responder, and
    // the old one is gone.
    common::ok(Command::new("ip").args(["addr", "add", "10.231.101.254/24", "dev", "wdns101"]));
    let mut renewed = st.net.clone();
    renewed.gateway = Ipv4Addr::new(10, 231, 101, 254);
    std::fs::write(&st.def, serde_json::to_vec(&renewed).expect("json")).expect("write def");
    let mut st = std::sync::Arc::into_inner(st).expect("one owner");
    st.net = renewed;
    st.ensure();
    let new = st.pid();
    assert_ne!(new, pid);
    assert!(
        wait_gone(pid, Duration::from_secs(2)),
        "the old responder {pid} stays"
    );
    let pid = new;

    // The definition goes: the responder follows within its check interval.
    std::fs::remove_file(&st.def).expect("rm the definition");
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "pid {pid} outlived its network"
    );
    // stop after that is a no-op.
    warren::net::dns::stop(&st.net, &st.run).expect("stop");
}
