//! The responder's work: the name table read from the endpoint files, the answer to one
//! packet, and the UDP and TCP loops. Questions it cannot answer go to the host's
//! resolvers, each in a thread of its own (bounded), so a slow upstream stalls nobody.

use super::wire::{self, Addr, Bad, Query};
use crate::net::Endpoint;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Seconds a local answer may be cached: containers come and go.
const TTL: u32 = 5;
/// Questions being forwarded at once; more are answered SERVFAIL.
const MAX_FORWARDS: usize = 64;
/// TCP connections at once; more are closed at once.
const MAX_TCP: usize = 16;
/// How long one upstream resolver gets.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Endpoint files larger than this are not endpoints.
const MAX_ENDPOINT: u64 = 1 << 20;

/// What one responder serves.
pub struct Responder {
    /// The network's name, lower case: names under `NAME.warren` are its own.
    network: String,
    endpoints: PathBuf,
    resolv_conf: PathBuf,
    /// The responder's own address: never an upstream (no loop).
    own: IpAddr,
    table: Mutex<Table>,
    forwards: AtomicUsize,
    tcp: AtomicUsize,
}

#[derive(Default)]
struct Table {
    names: HashMap<String, Vec<Addr>>,
    /// `D.C.B.A.in-addr.arpa` to the first name of the endpoint with address A.B.C.D.
    reverse: HashMap<String, String>,
    /// The directory's mtime at the last scan.
    mtime: Option<SystemTime>,
}

/// What to do with one packet.
pub enum Action {
    Drop,
    Reply(Vec<u8>),
    Forward,
}

impl Responder {
    pub fn new(network: &str, endpoints: &Path, resolv_conf: &Path, own: IpAddr) -> Responder {
        Responder {
            network: network.to_ascii_lowercase(),
            endpoints: endpoints.to_path_buf(),
            resolv_conf: resolv_conf.to_path_buf(),
            own,
            table: Mutex::new(Table::default()),
            forwards: AtomicUsize::new(0),
            tcp: AtomicUsize::new(0),
        }
    }

    /// Rereads the endpoint files when their directory changed. A change within the
    /// filesystem's timestamp granularity of the last scan might share its mtime, so a
    /// directory changed in the last two seconds is always reread.
    fn refresh(&self, table: &mut Table) {
        let mtime = std::fs::metadata(&self.endpoints)
            .and_then(|m| m.modified())
            .ok();
        let recent = mtime
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < Duration::from_secs(2));
        if mtime == table.mtime && !recent {
            return;
        }
        (table.names, table.reverse) = scan(&self.endpoints, &self.network);
        table.mtime = mtime;
    }

    /// The addresses of `q`'s name on this network: `None` when the name is not ours.
    fn lookup(&self, q: &Query) -> Option<Vec<Addr>> {
        let mut name = lower(q);
        let domain = format!(".{}.warren", self.network);
        let ours = name.ends_with(&domain);
        if ours {
            name.truncate(name.len() - domain.len());
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut table);
        match table.names.get(&name) {
            Some(addrs) => Some(addrs.clone()),
            // The network's own domain is answered here, found or not.
            None if ours => Some(Vec::new()),
            None => None,
        }
    }

    /// The name of the endpoint a reverse name (`D.C.B.A.in-addr.arpa`) stands for.
    fn reverse(&self, q: &Query) -> Option<String> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut table);
        table.reverse.get(&lower(q)).cloned()
    }

    /// The answer to one packet of at most `max` bytes, or that it goes upstream.
    pub fn handle(&self, packet: &[u8], max: usize) -> Action {
        let q = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(Bad::Drop) => return Action::Drop,
            Err(Bad::Format) => return reply(wire::error_reply(packet, wire::RCODE_FORMERR)),
            Err(Bad::NotImplemented) => {
                return reply(wire::error_reply(packet, wire::RCODE_NOTIMP));
            }
        };
        if q.qclass != wire::CLASS_IN || q.labels.is_empty() {
            return Action::Forward;
        }
        if q.qtype == wire::TYPE_PTR {
            return match self.reverse(&q) {
                Some(target) => Action::Reply(wire::answer_ptr(&q, &target, TTL, max)),
                None => Action::Forward,
            };
        }
        let Some(addrs) = self.lookup(&q) else {
            return Action::Forward;
        };
        if addrs.is_empty() {
            return Action::Reply(wire::answer(&q, wire::RCODE_NXDOMAIN, &[], TTL, max));
        }
        let wanted: Vec<Addr> = addrs
            .into_iter()
            .filter(|a| match (a, q.qtype) {
                (_, wire::TYPE_ANY) => true,
                (Addr::V4(_), t) => t == wire::TYPE_A,
                (Addr::V6(_), t) => t == wire::TYPE_AAAA,
            })
            .collect();
        // A name of ours without records of that type: NOERROR, no answers.
        Action::Reply(wire::answer(&q, 0, &wanted, TTL, max))
    }

    /// The host's resolvers, read now (resolv.conf may change under us), never this
    /// responder itself.
    fn upstreams(&self) -> Vec<SocketAddr> {
        let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
            .filter(|ip| *ip != self.own)
            .take(3)
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }

    /// Asks the upstreams in turn; the first answer with the query's id, or SERVFAIL.
    fn forward(&self, packet: &[u8]) -> Option<Vec<u8>> {
        for up in self.upstreams() {
            if let Some(a) = ask(up, packet) {
                return Some(a);
            }
        }
        wire::error_reply(packet, wire::RCODE_SERVFAIL)
    }

    /// Forwards in a thread of its own; `send` gets the answer. Over the limit: SERVFAIL.
    fn forward_async(self: &Arc<Self>, packet: Vec<u8>, send: impl FnOnce(&[u8]) + Send + 'static) {
        if self.forwards.fetch_add(1, Ordering::SeqCst) >= MAX_FORWARDS {
            self.forwards.fetch_sub(1, Ordering::SeqCst);
            if let Some(r) = wire::error_reply(&packet, wire::RCODE_SERVFAIL) {
                send(&r);
            }
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new().spawn(move || {
            if let Some(r) = me.forward(&packet) {
                send(&r);
            }
            me.forwards.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            self.forwards.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The question's name, lower case, dot-separated, without the trailing dot.
fn lower(q: &Query) -> String {
    q.labels
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

fn reply(r: Option<Vec<u8>>) -> Action {
    r.map_or(Action::Drop, Action::Reply)
}

/// One question to one upstream over UDP, from a fresh socket (a random port, connected:
/// only that upstream's packets arrive), bounded in time and packets.
fn ask(up: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let any: SocketAddr = match up {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().ok()?,
        SocketAddr::V6(_) => "[::]:0".parse().ok()?,
    };
    let sock = UdpSocket::bind(any).ok()?;
    sock.connect(up).ok()?;
    sock.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    sock.send(packet).ok()?;
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; 65535];
    for _ in 0..8 {
        if Instant::now() >= deadline {
            break;
        }
        let n = sock.recv(&mut buf).ok()?;
        if n >= 12 && buf[..2] == packet[..2] && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

type Names = HashMap<String, Vec<Addr>>;

/// The names of the endpoint files in `dir`, lower case, without a trailing dot (a name
/// shared by several endpoints has all their addresses), and the reverse names of their
/// IPv4 addresses (to `NAME.<network>.warren`).
fn scan(dir: &Path, network: &str) -> (Names, HashMap<String, String>) {
    let mut names: Names = HashMap::new();
    let mut reverse = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (names, reverse);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    // The same order of addresses for the same files.
    files.sort();
    for path in files {
        let Some(ep) = read_endpoint(&path) else {
            continue;
        };
        if let Some(first) = ep.names.first() {
            let [a, b, c, d] = ep.addr.octets();
            let first = first.trim_end_matches('.').to_ascii_lowercase();
            let target = format!("{first}.{network}.warren");
            if let Some(addr6) = ep.addr6 {
                reverse.entry(ip6_arpa(addr6)).or_insert(target.clone());
            }
            reverse
                .entry(format!("{d}.{c}.{b}.{a}.in-addr.arpa"))
                .or_insert(target);
        }
        for name in &ep.names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let addrs = names.entry(name).or_default();
            addrs.push(Addr::V4(ep.addr));
            addrs.extend(ep.addr6.map(Addr::V6));
        }
    }
    (names, reverse)
}

/// The reverse name of an IPv6 address: its 32 nibbles, last first, `.ip6.arpa`.
fn ip6_arpa(addr: std::net::Ipv6Addr) -> String {
    let mut out = String::with_capacity(72);
    for byte in addr.octets().iter().rev() {
        out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
    }
    out + "ip6.arpa"
}

fn read_endpoint(path: &Path) -> Option<Endpoint> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    file.take(MAX_ENDPOINT).read_to_end(&mut text).ok()?;
    match serde_json::from_slice(&text) {
        Ok(ep) => Some(ep),
        Err(e) => {
            eprintln!("dns: skipping {}: {e}", path.display());
            None
        }
    }
}

/// Serves UDP until `stop` says so (checked at least every second).
pub fn serve_udp(r: &Arc<Responder>, sock: UdpSocket, stop: impl Fn() -> bool) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    let mut checked = Instant::now();
    loop {
        if checked.elapsed() >= Duration::from_secs(1) {
            if stop() {
                return;
            }
            checked = Instant::now();
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let packet = &buf[..n];
        match r.handle(packet, wire::UDP_MAX) {
            Action::Drop => {}
            Action::Reply(a) => {
                let _ = sock.send_to(&a, from);
            }
            Action::Forward => {
                let s = Arc::clone(&sock);
                r.forward_async(packet.to_vec(), move |a| {
                    let _ = s.send_to(a, from);
                });
            }
        }
    }
}

/// Serves TCP in a thread of its own: a thread per connection (bounded), each message a
/// 2-byte length and a query, the connection closed after 10 s idle or 32 queries.
pub fn serve_tcp(r: Arc<Responder>, listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if r.tcp.fetch_add(1, Ordering::SeqCst) >= MAX_TCP {
                r.tcp.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let me = Arc::clone(&r);
            let spawned = std::thread::Builder::new().spawn(move || {
                let _ = me.tcp_conn(conn);
                me.tcp.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                r.tcp.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
}

impl Responder {
    fn tcp_conn(&self, mut conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        for _ in 0..32 {
            let mut len = [0u8; 2];
            conn.read_exact(&mut len)?;
            let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut packet)?;
            let answer = match self.handle(&packet, 65535) {
                Action::Drop => return Ok(()),
                Action::Reply(a) => a,
                Action::Forward => match self.forward(&packet) {
                    Some(a) => a,
                    None => return Ok(()),
                },
            };
            let Ok(n) = u16::try_from(answer.len()) else {
                return Ok(());
            };
            conn.write_all(&n.to_be_bytes())?;
            conn.write_all(&answer)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn endpoint(dir: &Path, container: &str, addr: [u8; 4], names: &[&str]) {
        let ep = Endpoint {
            network: "n1".into(),
            container: container.into(),
            addr: Ipv4Addr::from(addr),
            addr6: None,
            names: names.iter().map(|n| n.to_string()).collect(),
            ports: Vec::new(),
            veth: "veth0".into(),
        };
        let text = serde_json::to_vec(&ep).expect("encode");
        std::fs::write(dir.join(format!("{container}.json")), text).expect("write");
    }

    fn addrs(a: &Action) -> Vec<[u8; 4]> {
        let Action::Reply(p) = a else {
            panic!("not a reply")
        };
        let n = usize::from(u16::from_be_bytes([p[6], p[7]]));
        (0..n)
            .map(|i| {
                let end = p.len() - i * 16;
                [p[end - 4], p[end - 3], p[end - 2], p[end - 1]]
            })
            .rev()
            .collect()
    }

    fn rcode(a: &Action) -> u8 {
        match a {
            Action::Reply(p) => p[3] & 0xf,
            _ => panic!("not a reply"),
        }
    }

    #[test]
    fn names_aliases_and_the_domain_are_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        endpoint(dir.path(), "a", [10, 0, 0, 2], &["web-1", "Web"]);
        endpoint(dir.path(), "b", [10, 0, 0, 3], &["web-2", "web."]);
        std::fs::write(dir.path().join("junk.json"), b"{").expect("write");
        let r = Responder::new(
            "N1",
            dir.path(),
            Path::new("/nonexistent"),
            "10.0.0.1".parse().unwrap(),
        );
        let ask = |name: &str, t: u16| r.handle(&wire::query(3, name, t), wire::UDP_MAX);
        assert_eq!(addrs(&ask("web-1", wire::TYPE_A)), [[10, 0, 0, 2]]);
        assert_eq!(addrs(&ask("WEB-2.", wire::TYPE_A)), [[10, 0, 0, 3]]);
        assert_eq!(
            addrs(&ask("web", wire::TYPE_A)),
            [[10, 0, 0, 2], [10, 0, 0, 3]]
        );
        assert_eq!(
            addrs(&ask("web-1.n1.warren", wire::TYPE_A)),
            [[10, 0, 0, 2]]
        );
        assert_eq!(
            rcode(&ask("nothing.n1.warren", wire::TYPE_A)),
            wire::RCODE_NXDOMAIN
        );
        assert_eq!(addrs(&ask("web-1", wire::TYPE_AAAA)), Vec::<[u8; 4]>::new());
        assert_eq!(rcode(&ask("web-1", wire::TYPE_AAAA)), 0);
        assert!(matches!(ask("example.org", wire::TYPE_A), Action::Forward));
        let Action::Reply(ptr) = ask("3.0.0.10.in-addr.arpa", wire::TYPE_PTR) else {
            panic!("no PTR answer")
        };
        let (rcode, count) = (ptr[3] & 0xf, u16::from_be_bytes([ptr[6], ptr[7]]));
        assert_eq!((rcode, count), (0, 1));
        let end = ptr.len();
        let (target, _) = wire::read_name(&ptr, end - "web-2.n1.warren".len() - 2).expect("name");
        assert_eq!(target.join(&b'.'), b"web-2.n1.warren".to_vec());
        assert!(matches!(
            ask("9.0.0.10.in-addr.arpa", wire::TYPE_PTR),
            Action::Forward
        ));
        let six: std::net::Ipv6Addr = "fd00:1::a2".parse().unwrap();
        let arpa = ip6_arpa(six);
        assert!(
            arpa.starts_with("2.a.0.0.0.0.0.0") && arpa.ends_with(".1.0.0.0.0.0.d.f.ip6.arpa"),
            "{arpa}"
        );
        // No upstream: SERVFAIL.
        let q = wire::query(3, "example.org", wire::TYPE_A);
        assert_eq!(
            r.forward(&q).map(|p| p[3] & 0xf),
            Some(wire::RCODE_SERVFAIL)
        );
        // A new endpoint is seen at the next question.
        endpoint(dir.path(), "c", [10, 0, 0, 4], &["late"]);
        assert_eq!(addrs(&ask("late", wire::TYPE_A)), [[10, 0, 0, 4]]);
        std::fs::remove_file(dir.path().join("c.json")).expect("rm");
        assert!(matches!(ask("late", wire::TYPE_A), Action::Forward));
    }
}
