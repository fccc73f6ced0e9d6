//! Dual-stack bridge networks end to end through the `warren` CLI (`network create
//! --ipv6`, `--subnet` given twice): containers reach each other over IPv6 by address
//! and by name (the network's name server answers AAAA); a published port is reachable
//! over IPv6 from a namespace standing for another host; NAT66 takes a container to a
//! fake upstream namespace, and an `--internal` network's containers get nowhere; once
//! everything is removed, no IPv6 address, route or rule of the test is left and IPv6
//! forwarding is as it was.
//!
//! Traffic goes only between namespaces these tests make. Each test has its own state
//! directory, container names and networks (10.231.150-159.0/24, fd00:231:15X::/64).
//! IPv6 forwarding is host-wide, so the tests here run one at a time (`LOCK`).

mod common;
#[path = "common/net.rs"]
mod net;

use common::*;
use net::{NetEnv, fetch};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

static LOCK: Mutex<()> = Mutex::new(());

const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Serves /tmp/www on port 80, with `/cgi-bin/who` answering "NAME CLIENT_ADDRESS".
fn server_script(name: &str) -> String {
    format!(
        "mkdir -p /tmp/www/cgi-bin && echo hello-from-{name} > /tmp/www/index.html && \
         printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n{name} %%s\\\\n\" \"$REMOTE_ADDR\"\\n' \
         > /tmp/www/cgi-bin/who && chmod 755 /tmp/www/cgi-bin/who && exec httpd -f -p 80 -h /tmp/www"
    )
}

/// A shell loop (in a container) fetching `/cgi-bin/who` from ADDR port 80: 20 tries,
/// half a second apart, 2 s each.
fn client_script(addr: &str) -> String {
    client_script_port(addr, 80)
}

fn client_script_port(addr: &str, port: u16) -> String {
    format!(
        "(for i in $(seq 20); do printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} {port} \
         && exit 0; sleep 0.5; done; exit 1)"
    )
}

/// One try of three at fetching ADDR port 80 (what must fail: nothing waits for it).
fn three_tries(addr: &str) -> String {
    let once = format!("printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} 80");
    format!("for i in 1 2 3; do {once} && exit 0; done; exit 1")
}

struct Env {
    net: NetEnv,
    /// Namespaces and host links the test made (not warren's).
    netns: Vec<String>,
    own_links: Vec<String>,
    servers: Vec<std::process::Child>,
    forward6_before: String,
}

impl Env {
    fn new(name: &str) -> Option<Env> {
        let net = NetEnv::new(name)?;
        require_tool("nft", "nftables");
        let forward6_before = std::fs::read_to_string(IP6_FORWARD).expect(
            "IPv6 is off on this host (no /proc/sys/net/ipv6): boot without ipv6.disable=1",
        );
        Some(Env {
            net,
            netns: Vec::new(),
            own_links: Vec::new(),
            servers: Vec::new(),
            forward6_before,
        })
    }

    /// A detached container on `network` serving HTTP on port 80, with `extra` args.
    fn server(&self, network: &str, name: &str, extra: &[&str]) {
        let net = format!("bridge:{network}");
        let script = server_script(name);
        let args = [
            "run", "-d", "--image", "busybox", "--name", name, "--net", &net,
        ];
        self.ok(&[&args[..], extra, &["--", "sh", "-c", &script]].concat());
    }

    /// Runs `script` in a new container on `network`; its output, and whether it
    /// succeeded.
    fn client(&self, network: &str, name: &str, script: &str) -> (bool, String) {
        let net = format!("bridge:{network}");
        let args = [
            "run", "--rm", "--image", "busybox", "--name", name, "--net", &net,
        ];
        let out = run(self.warren().args(args).args(["--", "sh", "-c", script]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// A namespace linked to the host by a veth: the host side has HOST6/64, the
    /// namespace's side PEER6/64 (both without DAD), the namespace serves HTTP on 80.
    fn peer(&mut self, tag: &str, host6: &str, peer6: &str) -> String {
        let ns = format!("w6t-{tag}");
        let veth = format!("w6t{tag}");
        let _ = run(Command::new("ip").args(["netns", "del", &ns]));
        let _ = run(Command::new("ip").args(["link", "del", &veth]));
        ip(&format!("netns add {ns}"));
        self.netns.push(ns.clone());
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {ns}"
        ));
        self.own_links.push(veth.clone());
        ip(&format!("addr add {host6}/64 dev {veth} nodad"));
        ip(&format!("link set {veth} up"));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} addr add {peer6}/64 dev eth0 nodad"));
        ip(&format!("-n {ns} link set eth0 up"));
        self.httpd(&ns, tag);
        ns
    }

    /// busybox httpd on port 80 in NS; `/cgi-bin/who` answers "NAME CLIENT_ADDRESS".
    fn httpd(&mut self, ns: &str, name: &str) {
        let root = self.dir.path().join(format!("www-{name}"));
        let cgi = root.join("cgi-bin");
        std::fs::create_dir_all(&cgi).unwrap();
        let script = format!(
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n{name} %s\\n' \"$REMOTE_ADDR\"\n"
        );
        std::fs::write(cgi.join("who"), script).unwrap();
        ok(Command::new("chmod").arg("755").arg(cgi.join("who")));
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(&root)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
        for _ in 0..50 {
            if fetch(Some(ns), "::1", 80).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("httpd in {ns} did not come up");
    }

    /// Removes every container and network of this test, then checks that no link,
    /// IPv6 address, route or nftables rule of `subnets6` is left, and that IPv6
    /// forwarding is as it was.
    fn teardown(&mut self, networks: &[&str], subnets6: &[&str]) {
        let run_dir = self.dir.path().join("run");
        let nets = warren::net::Networks::new(&self.state(), &run_dir, std::path::Path::new("x"));
        let table = nets.firewall_table();
        self.net.teardown(networks);
        // The test's own links go too: what is left after is warren's.
        self.cleanup_own();
        let addrs = ok(Command::new("ip").args(["-j", "-6", "addr", "show"]));
        let routes = ok(Command::new("ip").args(["-j", "-6", "route", "show", "table", "all"]));
        let rules = ok(Command::new("nft").args(["-j", "list", "ruleset"]));
        for prefix in subnets6 {
            assert!(
                !addrs.contains(prefix),
                "an address in {prefix} left: {addrs}"
            );
            assert!(
                !routes.contains(prefix),
                "a route to {prefix} left: {routes}"
            );
            assert!(!rules.contains(prefix), "a rule on {prefix} left: {rules}");
        }
        assert!(
            !rules.contains(&format!("\"{table}\"")),
            "table {table} left: {rules}"
        );
        assert_eq!(
            std::fs::read_to_string(IP6_FORWARD).unwrap().trim(),
            self.forward6_before.trim(),
            "IPv6 forwarding not restored"
        );
    }

    fn cleanup_own(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.servers.clear();
        for link in self.own_links.drain(..) {
            let _ = run(Command::new("ip").args(["link", "del", &link]));
        }
        for ns in self.netns.drain(..) {
            let _ = run(Command::new("ip").args(["netns", "del", &ns]));
        }
    }
}

impl Drop for Env {
    /// A failed test still takes away what it made (a passing one has nothing left);
    /// IPv6 forwarding is put back last, once warren's networks are gone.
    fn drop(&mut self) {
        self.net.remove_all();
        self.cleanup_own();
        let _ = std::fs::write(IP6_FORWARD, self.forward6_before.trim());
    }
}

impl std::ops::Deref for Env {
    type Target = NetEnv;
    fn deref(&self) -> &NetEnv {
        &self.net
    }
}

fn ip(args: &str) {
    ok(Command::new("ip").args(args.split_whitespace()));
}

/// [`fetch`], retried while a container's server starts (20 tries).
fn fetch_retry(ns: Option<&str>, addr: &str, port: u16) -> Option<String> {
    for _ in 0..20 {
        if let Some(got) = fetch(ns, addr, port) {
            return Some(got);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

#[test]
fn two_containers_reach_each_other_over_ipv6_by_address_and_name() {
    // Held across the Env (taken first, dropped last): it reads and restores
    // IPv6 forwarding.
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("net6-reach") else {
        return;
    };
    // --ipv6 without a subnet: a /64 of the state directory's own ULA /48.
    env.ok(&[
        "network",
        "create",
        "w6r",
        "--subnet",
        "10.231.150.0/24",
        "--ipv6",
    ]);
    let net = env.inspect("w6r");
    let subnet6 = net["subnet6"]
        .as_str()
        .expect("subnet6 in inspect")
        .to_string();
    assert!(
        subnet6.starts_with("fd") && subnet6.ends_with("::/64"),
        "{subnet6}"
    );
    let ula = std::fs::read_to_string(env.state().join("networks/.ula")).unwrap();
    let ula_prefix = ula.trim().trim_end_matches("::/48");
    assert!(subnet6.starts_with(ula_prefix), "{subnet6} not in {ula}");
    env.server("w6r", "w6r-server", &[]);
    let addr6 = env.endpoint("w6r", "w6r-server", "addr6");
    let gateway6 = subnet6.replace("::/64", "::1");
    assert_eq!(addr6, subnet6.replace("::/64", "::2"));
    assert_eq!(net["gateway6"].as_str(), Some(gateway6.as_str()), "{net}");

    // By address, and by name: the network's name server answers AAAA.
    let script = format!(
        "ip -o -6 addr show eth0; ip -6 route; cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; \
         cat /etc/hosts; {}; nslookup -type=AAAA w6r-server; \
         a=$(nslookup -type=AAAA w6r-server | awk '/^Address:? .*:.*:/ {{print $NF}}' | tail -n 1); \
         echo \"resolved=$a\"; {}",
        client_script(&addr6),
        client_script("$a"),
    );
    let (ok_, out) = env.client("w6r", "w6r-client", &script);
    assert!(ok_, "{out}");
    let client6 = subnet6.replace("::/64", "::3");
    assert!(out.contains(&format!("inet6 {client6}/64")), "{out}");
    assert!(out.contains(&format!("default via {gateway6}")), "{out}");
    assert!(
        out.contains(&format!("{client6}\tw6r-client")),
        "hosts: {out}"
    );
    assert!(
        out.contains(&format!("resolved={addr6}")),
        "no AAAA answer: {out}"
    );
    // Both requests came over IPv6, from the client's own address (no NAT inside).
    let seen = format!("w6r-server [{client6}]");
    assert_eq!(out.matches(&seen).count(), 2, "{out}");
    env.teardown(&["w6r"], &[subnet6.trim_end_matches("::/64")]);
}

#[test]
fn a_published_port_is_reachable_over_ipv6_from_another_host() {
    // Held across the Env (taken first, dropped last): it reads and restores
    // IPv6 forwarding.
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("net6-publish") else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "w6p",
        "--subnet",
        "10.231.151.0/24",
        "--subnet",
        "fd00:231:151::/64",
    ]);
    let other = env.peer("po", "fd00:231:159::1", "fd00:231:159::2");
    // The other host knows the way to the containers' subnet: only the firewall stops it.
    ip(&format!(
        "-n {other} route add fd00:231:151::/64 via fd00:231:159::1"
    ));
    // An IPv6 subnet on a route of the host's, or over another network's: refused.
    for (subnet, why) in [
        ("fd00:231:159::/64", "fd00:231:159::/64"),
        ("fd00:231:150::/47", "\"w6p\""),
    ] {
        let v4 = ["network", "create", "w6x", "--subnet", "10.231.154.0/24"];
        let out = run(env.warren().args(v4).args(["--subnet", subnet]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{subnet}: {err}"
        );
    }
    env.server(
        "w6p",
        "w6p-web",
        &["-p", "18151:80", "-p", "[fd00:231:159::1]:18152:80"],
    );
    let web6 = env.endpoint("w6p", "w6p-web", "addr6");
    assert_eq!(web6, "fd00:231:151::2");

    // From the other host to the host's IPv6 address: the container, seeing the real
    // client (DNAT, no masquerade).
    let seen = fetch_retry(Some(&other), "fd00:231:159::1", 18151);
    assert_eq!(seen.as_deref(), Some("w6p-web fd00:231:159::2"));
    let seen = fetch(Some(&other), "fd00:231:159::1", 18152);
    assert_eq!(seen.as_deref(), Some("w6p-web fd00:231:159::2"));
    // From the host itself, to its own IPv6 address.
    let seen = fetch(None, "fd00:231:159::1", 18151);
    assert!(seen.is_some_and(|s| s.starts_with("w6p-web ")));
    // Hairpin: another container of the network, through the host's IPv6 address (the
    // reply comes back masqueraded to the bridge's address).
    let hairpin = client_script_port("fd00:231:159::1", 18151);
    let (reached, out) = env.client("w6p", "w6p-peer", &hairpin);
    assert!(
        reached && out.contains("w6p-web [fd00:231:151::1]"),
        "{out}"
    );
    // Not published, or straight to the container's address: nothing.
    assert_eq!(fetch(Some(&other), "fd00:231:159::1", 18153), None);
    assert_eq!(fetch(Some(&other), &web6, 80), None);
    env.teardown(&["w6p"], &["fd00:231:151:"]);
}

#[test]
fn nat66_reaches_upstream_and_internal_networks_do_not() {
    // Held across the Env (taken first, dropped last): it reads and restores
    // IPv6 forwarding.
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("net6-nat") else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "w6n",
        "--subnet",
        "10.231.152.0/24",
        "--subnet",
        "fd00:231:152::/64",
    ]);
    env.ok(&[
        "network",
        "create",
        "w6i",
        "--internal",
        "--subnet",
        "10.231.153.0/24",
        "--subnet",
        "fd00:231:153::/64",
    ]);
    assert_eq!(
        std::fs::read_to_string(IP6_FORWARD).unwrap().trim(),
        "1",
        "a non-internal IPv6 network needs forwarding"
    );
    // The upstream has no route back to the containers' subnets: an answer at all
    // proves the masquerade, and it sees the host's address.
    env.peer("up", "fd00:231:158::1", "fd00:231:158::2");
    let (reached, out) = env.client("w6n", "w6n-c", &client_script("fd00:231:158::2"));
    assert!(reached, "{out}");
    assert!(out.contains("up [fd00:231:158::1]"), "{out}");
    // Internal: its containers reach each other over IPv6, but nothing outside.
    env.server("w6i", "w6i-web", &[]);
    let internal6 = env.endpoint("w6i", "w6i-web", "addr6");
    let script = format!(
        "{} && {}",
        client_script(&internal6),
        three_tries("fd00:231:158::2")
    );
    let (reached, out) = env.client("w6i", "w6i-c", &script);
    assert!(out.contains("w6i-web [fd00:231:153::"), "{out}");
    assert!(!reached && !out.contains("up ["), "{out}");
    // Networks apart over IPv6, both ways.
    env.server("w6n", "w6n-web", &[]);
    let open6 = env.endpoint("w6n", "w6n-web", "addr6");
    // (Up first: the next check's failure must be the firewall's.)
    let (reached, out) = env.client("w6n", "w6n-c2", &client_script(&open6));
    assert!(reached, "{out}");
    let (reached, out) = env.client("w6n", "w6n-c3", &three_tries(&internal6));
    assert!(!reached, "{out}");
    let (reached, out) = env.client("w6i", "w6i-c2", &three_tries(&open6));
    assert!(!reached, "{out}");
    env.teardown(&["w6n", "w6i"], &["fd00:231:152:", "fd00:231:153:"]);
}
