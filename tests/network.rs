//! Rootful bridge networks end to end through the `warren` CLI: containers on one network
//! reach each other by address; each sees its own address, default route, MTU, hosts and
//! resolver files; 100 containers get 100 addresses and leave nothing behind; a SIGKILL
//! mid-create is cleaned by `rm` and `network prune`; a network in use cannot be removed;
//! overlapping subnets are refused.
//!
//! Traffic goes only between namespaces these tests make. Each test has its own network
//! (10.231.X.0/24, X in 1..=49), state directory and container names, and checks with
//! `ip -j link` that none of its links is left.

mod common;
#[path = "common/net.rs"]
mod net;

use common::*;
use net::NetEnv as Env;
use std::path::Path;
use std::process::Command;

#[test]
fn two_containers_on_one_network_reach_each_other_by_name_and_alias() {
    let Some(env) = Env::new("net-reach") else {
        return;
    };
    env.ok(&["network", "create", "wt3", "--subnet", "10.231.3.0/24"]);
    // The server binds port 80 as the container's root, an unprivileged host uid in a
    // namespace owned by the host: ip_unprivileged_port_start=0 there allows it.
    let server = "mkdir -p /tmp/www && echo hello-from-server > /tmp/www/index.html \
                  && exec httpd -f -p 80 -h /tmp/www";
    let args = ["run", "-d", "--image", "busybox", "--name", "wt3-server"];
    env.ok(&[
        &args[..],
        &[
            "--net",
            "bridge:wt3",
            "--alias",
            "web",
            "--",
            "sh",
            "-c",
            server,
        ],
    ]
    .concat());
    // A second container shares the alias: the name server returns both.
    let args = ["run", "-d", "--image", "busybox", "--name", "wt3-other"];
    env.ok(&[
        &args[..],
        &["--net", "bridge:wt3", "--alias", "web", "--", "sleep", "60"],
    ]
    .concat());
    let addr = env.endpoint("wt3", "wt3-server", "addr");
    let other = env.endpoint("wt3", "wt3-other", "addr");
    assert!(addr.starts_with("10.231.3."), "{addr}");
    // Bounded: 40 tries half a second apart while the server starts. By name: the
    // network's name server answers it.
    let client = "nslookup web; for i in $(seq 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 wt3-server 80 && exit 0; sleep 0.5; done; exit 1";
    let args = ["run", "--rm", "--image", "busybox", "--name", "wt3-client"];
    let out = env.ok(&[
        &args[..],
        &["--net", "bridge:wt3", "--", "sh", "-c", client],
    ]
    .concat());
    // (busybox's wget crashes on this machine: nc speaks the HTTP.)
    assert!(
        out.contains("200 OK") && out.contains("hello-from-server"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Address: {addr}")) && out.contains(&format!("Address: {other}")),
        "the shared alias did not resolve to both containers: {out}"
    );
    env.ok(&["rm", "--force", "wt3-other"]);
    env.teardown(&["wt3"]);
}

#[test]
fn a_container_sees_its_address_route_mtu_hosts_and_resolver() {
    let Some(env) = Env::new("net-view") else {
        return;
    };
    env.ok(&["network", "create", "wt4", "--subnet", "10.231.4.0/24"]);
    let net = env.inspect("wt4");
    let mtu = net["mtu"].as_u64().expect("mtu");
    assert_eq!(mtu, uplink_mtu(), "the network takes the uplink's MTU");
    let show = "ip -o -4 addr show eth0; ip route; ip -o link show eth0; \
                echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---; \
                cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
                ip link set eth0 down 2>/dev/null && echo changed || echo refused; \
                echo x >> /etc/hosts 2>/dev/null && echo writable || echo read-only";
    let out = env.ok(&[
        "run",
        "--rm",
        "--image",
        "busybox",
        "--name",
        "wt4-web",
        "--net",
        "bridge:wt4",
        "--alias",
        "www",
        "-p",
        "18080:80",
        "--",
        "sh",
        "-c",
        show,
    ]);
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    let (ifaces, hosts, resolv, rest) = (parts[0], parts[1], parts[2], parts[3]);
    // The first address after the gateway, its /24, the route via the bridge.
    assert!(ifaces.contains("inet 10.231.4.2/24"), "{ifaces}");
    assert!(
        ifaces.contains("default via 10.231.4.1 dev eth0"),
        "{ifaces}"
    );
    // The link as large as loopback's (busybox's `ip route` does not show the default
    // route's MTU, the uplink's).
    let link = format!("mtu {} ", warren::net::LINK_MTU);
    assert!(ifaces.contains(&link), "{ifaces}");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("10.231.4.2\twt4-web www"), "{hosts}");
    assert!(resolv.contains("nameserver 10.231.4.1"), "{resolv}");
    let rest: Vec<&str> = rest.lines().collect();
    // Root in the container cannot change its interfaces (the namespace is the host's)
    // nor the files (bind-mounted read-only).
    assert_eq!(rest, ["0", "refused", "read-only"], "{out}");
    env.teardown(&["wt4"]);
}

/// The MTU of the host's default-route interface.
fn uplink_mtu() -> u64 {
    let out = ok(Command::new("ip").args(["-j", "route", "show", "default"]));
    let routes: serde_json::Value = serde_json::from_str(&out).expect("ip -j route");
    let Some(dev) = routes[0]["dev"].as_str() else {
        return 1500;
    };
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu")).expect("mtu");
    mtu.trim().parse().expect("an MTU")
}

#[test]
fn a_hundred_containers_get_distinct_addresses_and_all_tear_down() {
    let Some(env) = Env::new("net-hundred") else {
        return;
    };
    env.ok(&["network", "create", "wt6", "--subnet", "10.231.6.0/24"]);
    // Four processes at a time: the networks lock keeps their allocations apart.
    std::thread::scope(|s| {
        for t in 0..4 {
            let env = &env;
            s.spawn(move || {
                for i in 0..25 {
                    let name = format!("wt6-{t}-{i}");
                    env.ok(&[
                        "run",
                        "-d",
                        "--image",
                        "busybox",
                        "--name",
                        &name,
                        "--net",
                        "bridge:wt6",
                        "--",
                        "sleep",
                        "600",
                    ]);
                }
            });
        }
    });
    let net = env.inspect("wt6");
    let eps = net["containers"].as_array().expect("containers");
    let addrs: std::collections::BTreeSet<&str> =
        eps.iter().filter_map(|e| e["addr"].as_str()).collect();
    assert_eq!((eps.len(), addrs.len()), (100, 100), "{addrs:?}");
    assert!(!addrs.contains("10.231.6.1"), "the gateway is the bridge's");
    // One veth each, plus the bridge, all marked as this state directory's.
    assert_eq!(env.links().len(), 101);
    assert_eq!(env.pins().len(), 100);
    env.teardown(&["wt6"]);
    let endpoints = env.state().join("networks");
    assert!(
        !endpoints.join("wt6").exists(),
        "the network's records are gone"
    );
}

#[test]
fn a_sigkill_mid_create_is_cleaned_by_rm_and_prune() {
    let Some(env) = Env::new("net-sigkill") else {
        return;
    };
    env.ok(&["network", "create", "wt7", "--subnet", "10.231.7.0/24"]);
    let endpoints = env.state().join("networks/wt7/endpoints");
    for (round, cleaner) in ["rm", "prune"].iter().enumerate() {
        let name = format!("wt7-k{round}");
        let mut child = env
            .warren()
            .args(["run", "--image", "busybox", "--name", &name])
            .args(["--net", "bridge:wt7", "--", "sleep", "600"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start warren run");
        // Killed as soon as its endpoint is recorded: somewhere in the join (or just
        // after it), with its veth, namespace and address half made.
        let file = endpoints.join(format!("{name}.json"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !file.exists() {
            assert!(std::time::Instant::now() < deadline, "{name} never joined");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        if *cleaner == "prune" {
            // The container's record is still there: prune keeps what it calls for.
            env.ok(&["network", "prune"]);
            assert!(
                file.exists(),
                "prune kept the endpoint of an existing container"
            );
        }
        env.ok(&["rm", "-f", &name]);
        assert!(!file.exists(), "{cleaner}: the endpoint record is gone");
        assert_eq!(
            env.links().iter().filter(|l| l.starts_with("wrnv")).count(),
            0
        );
        assert_eq!(env.pins(), Vec::<String>::new(), "{cleaner}: pins left");
    }
    // What no record calls for: an endpoint whose container is gone, a link marked as
    // this state directory's, a namespace pin. Prune removes them all.
    write_stale_endpoint(&endpoints, "wt7-gone");
    let tag = format!("warren:{}", env.state().join("networks").display());
    ok(Command::new("ip").args(["link", "add", "wrnvdeadbeef00", "type", "bridge"]));
    ok(Command::new("ip").args(["link", "set", "dev", "wrnvdeadbeef00", "alias", &tag]));
    let pin = env.dir.path().join("run/.networks/netns/wt7-gone");
    std::fs::create_dir_all(pin.parent().unwrap()).expect("create the pins' directory");
    std::fs::write(&pin, "").expect("write a pin");
    let out = env.ok(&["network", "prune"]);
    assert!(out.contains("endpoint wt7-gone"), "{out}");
    assert!(out.contains("link wrnvdeadbeef00"), "{out}");
    assert!(
        !endpoints.join("wt7-gone.json").exists() && !pin.exists(),
        "{out}"
    );
    env.teardown(&["wt7"]);
}

/// An endpoint record with no container (what a crash between a container's removal
/// and its endpoint's leaves).
fn write_stale_endpoint(dir: &Path, name: &str) {
    let ep = serde_json::json!({
        "network": "wt7", "container": name, "addr": "10.231.7.200",
        "names": [name], "veth": "wrnvdeadbeef01",
    });
    std::fs::write(dir.join(format!("{name}.json")), ep.to_string()).expect("write endpoint");
}

#[test]
fn a_network_in_use_is_not_removed_and_overlaps_are_refused() {
    let Some(env) = Env::new("net-refuse") else {
        return;
    };
    env.ok(&["network", "create", "wt8", "--subnet", "10.231.8.0/24"]);
    let out = run(env
        .warren()
        .args(["network", "create", "wt8b", "--subnet", "10.231.8.128/25"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("overlaps") && err.contains("wt8") && err.contains("10.231.8.0/24"),
        "{err}"
    );
    env.ok(&[
        "run",
        "-d",
        "--image",
        "busybox",
        "--name",
        "wt8-a",
        "--net",
        "bridge:wt8",
        "--",
        "sleep",
        "600",
    ]);
    let out = run(env.warren().args(["network", "rm", "wt8"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use") && err.contains("wt8-a"), "{err}");
    // ls shows it, as JSON too.
    let ls: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "ls", "--json"])).expect("ls --json");
    assert_eq!(ls[0]["name"], "wt8");
    assert_eq!(ls[0]["bridge"], "wrn-wt8");
    env.teardown(&["wt8"]);
}

/// A published port reached from another host: a namespace joined to the host by a
/// veth plays it, and connects to the host's address on that link. An unpublished port
/// is not reachable, not even straight to the container's address (the other host has a
/// route to the network); the container reaches its own published port through the
/// host's address (hairpin: its veth is in hairpin mode).
#[test]
fn a_published_port_is_reachable_from_another_host() {
    let Some(env) = Env::new("net-publish") else {
        return;
    };
    require_tool("nsenter", "util-linux");
    let peer = "wt9-peer";
    let _ = run(Command::new("ip").args(["netns", "del", peer]));
    let _ = run(Command::new("ip").args(["link", "del", "wt9-h"]));
    ok(Command::new("ip").args(["netns", "add", peer]));
    let setup = [
        "link add wt9-h type veth peer name wt9-p",
        "link set wt9-p netns wt9-peer",
        "addr add 10.231.9.1/30 dev wt9-h",
        "link set wt9-h up",
        "-n wt9-peer addr add 10.231.9.2/30 dev wt9-p",
        "-n wt9-peer link set wt9-p up",
        "-n wt9-peer link set lo up",
        // The other host knows the way to the network: only the firewall stops it.
        "-n wt9-peer route add 10.231.10.0/24 via 10.231.9.1",
    ];
    for cmd in setup {
        ok(Command::new("ip").args(cmd.split(' ')));
    }
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish_checks(&env, peer)));
    let _ = run(Command::new("ip").args(["link", "del", "wt9-h"]));
    let _ = run(Command::new("ip").args(["netns", "del", peer]));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    env.teardown(&["wt10"]);
}

/// One HTTP GET of `addr:port` by busybox nc, run by `prefix` (a command that enters a
/// namespace), `tries` times at most, half a second apart: the answer, if any.
fn get(prefix: &[&str], addr: &str, port: u16, tries: u32) -> Option<String> {
    let fetch = format!(
        "for i in $(seq {tries}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {addr} {port} && exit 0; sleep 0.5; done; exit 1"
    );
    let mut cmd = Command::new("timeout");
    cmd.arg("30").args(prefix).args(["sh", "-c", &fetch]);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn publish_checks(env: &Env, peer: &str) {
    env.ok(&["network", "create", "wt10", "--subnet", "10.231.10.0/24"]);
    let server = "mkdir -p /tmp/w /tmp/u && echo web-80 > /tmp/w/index.html \
                  && echo web-81 > /tmp/u/index.html && httpd -p 81 -h /tmp/u \
                  && exec httpd -f -p 80 -h /tmp/w";
    env.ok(&[
        "run",
        "-d",
        "--image",
        "busybox",
        "--name",
        "wt10-web",
        "--net",
        "bridge:wt10",
        "-p",
        "18090:80",
        "--",
        "sh",
        "-c",
        server,
    ]);
    let in_peer = ["ip", "netns", "exec", peer];
    // From the peer, the host's 10.231.9.1:18090 is the container's port 80 (bounded:
    // 20 tries while the server starts).
    let got = get(&in_peer, "10.231.9.1", 18090, 20);
    assert!(
        got.as_deref().is_some_and(|t| t.contains("web-80")),
        "{got:?}"
    );
    // Port 81 is served (the container itself sees it) but not published: the peer
    // reaches it neither through the host nor straight at the container's address.
    let addr = env.endpoint("wt10", "wt10-web", "addr");
    let pin = env.dir.path().join("run/.networks/netns/wt10-web");
    let net_arg = format!("--net={}", pin.display());
    let in_container = ["nsenter", net_arg.as_str()];
    let own = get(&in_container, &addr, 81, 10);
    assert!(
        own.as_deref().is_some_and(|t| t.contains("web-81")),
        "{own:?}"
    );
    for (addr, port) in [(addr.as_str(), 81), (addr.as_str(), 80), ("10.231.9.1", 81)] {
        let got = get(&in_peer, addr, port, 1);
        assert_eq!(got, None, "{addr}:{port} reached from the other host");
    }
    // Hairpin: the container, through the host's addresses, to its own published port.
    for host in ["10.231.9.1", "10.231.10.1"] {
        let got = get(&in_container, host, 18090, 3);
        assert!(
            got.as_deref().is_some_and(|t| t.contains("web-80")),
            "{host}: {got:?}"
        );
    }
    let inspect = env.inspect("wt10");
    let veth = inspect["containers"][0]["veth"].as_str().expect("a veth");
    let out = ok(Command::new("ip").args(["-j", "-d", "link", "show", veth]));
    let link: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    assert_eq!(
        link[0]["linkinfo"]["info_slave_data"]["hairpin"],
        serde_json::Value::Bool(true),
        "{out}"
    );
}

/// `--net bridge` is the network `warren` (10.89.0.0/16), made on first use. (The only
/// test that uses it: its bridge `wrn-warren` is one per host.)
#[test]
fn the_default_network_is_made_on_first_use() {
    let Some(env) = Env::new("net-default") else {
        return;
    };
    let out = env.ok(&[
        "run",
        "--rm",
        "--image",
        "busybox",
        "--name",
        "wt-default",
        "--net",
        "bridge",
        "--",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(out.contains("inet 10.89.0.2/16"), "{out}");
    let net = env.inspect("warren");
    assert_eq!(
        (net["subnet"].as_str(), net["bridge"].as_str()),
        (Some("10.89.0.0/16"), Some("wrn-warren"))
    );
    env.teardown(&["warren"]);
}

/// The state directory recorded for each warren table (`/run/warren-tables/TABLE`).
fn registry() -> Vec<(String, String)> {
    std::fs::read_dir("/run/warren-tables")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), owner)
        })
        .collect()
}

/// The names of the nftables tables of `family`.
fn nft_tables(family: &str) -> Vec<String> {
    let out = ok(Command::new("nft").args(["-j", "list", "tables", family]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j list tables");
    v["nftables"]
        .as_array()
        .expect("nftables")
        .iter()
        .filter_map(|o| o["table"]["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn prune_removes_the_tables_of_a_state_dir_that_is_gone() {
    let Some(env) = Env::new("net-stale-tables") else {
        return;
    };
    require_tool("nft", "nftables");
    let gone = Env::new("net-stale-gone").expect("root");
    env.ok(&["network", "create", "wt47", "--subnet", "10.231.47.0/24"]);
    gone.ok(&["network", "create", "wt46", "--subnet", "10.231.46.0/24"]);
    let table_of = |env: &Env| {
        let state = env.state().display().to_string();
        registry()
            .into_iter()
            .find(|(_, owner)| *owner == state)
            .map(|(table, _)| table)
            .unwrap_or_else(|| panic!("no table recorded for {state}: {:?}", registry()))
    };
    let (ours, theirs) = (table_of(&env), table_of(&gone));
    for family in ["inet", "bridge"] {
        let tables = nft_tables(family);
        assert!(
            tables.contains(&ours) && tables.contains(&theirs),
            "{tables:?}"
        );
    }
    // The second state directory is deleted with its network still defined: its bridge
    // goes by hand, its tables stay behind.
    for link in gone.links() {
        ok(Command::new("ip").args(["link", "del", &link]));
    }
    std::fs::remove_dir_all(gone.state()).expect("remove the state directory");
    let out = env.ok(&["network", "prune"]);
    // Every Env's drop prunes too: another test's may have taken the table first.
    assert!(
        out.contains(&format!("table {theirs}")) || !registry().iter().any(|(t, _)| *t == theirs),
        "{out}"
    );
    for family in ["inet", "bridge"] {
        let tables = nft_tables(family);
        assert!(!tables.contains(&theirs), "{family}: {tables:?}");
        assert!(
            tables.contains(&ours),
            "a live state dir's table stays: {tables:?}"
        );
    }
    assert!(registry().iter().all(|(t, _)| *t != theirs), "record left");
    // Its tables and record go with its last network.
    env.teardown(&["wt47"]);
    assert!(!nft_tables("inet").contains(&ours));
    assert!(registry().iter().all(|(t, _)| *t != ours), "record left");
}
