use super::apply::{forwarding, tables_forwarding};
use super::nft::{transaction, valid_table};
use super::*;
use crate::net::{Endpoint, NetworkDef, PortMapping, Proto};
use std::net::Ipv4Addr;

fn net(name: &str, third: u8) -> NetworkDef {
    NetworkDef {
        name: name.to_string(),
        bridge: format!("wbr-{name}"),
        subnet: format!("10.231.{third}.0/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, 231, third, 1),
        subnet6: None,
        internal: false,
        isolate: false,
        mtu: 1500,
    }
}

fn ep(network: &str, container: &str, addr: [u8; 4], ports: &[&str]) -> Endpoint {
    Endpoint {
        network: network.to_string(),
        container: container.to_string(),
        addr: Ipv4Addr::from(addr),
        addr6: None,
        names: vec![container.to_string()],
        ports: ports
            .iter()
            .map(|p| p.parse::<PortMapping>().unwrap())
            .collect(),
        veth: format!("wv-{container}"),
    }
}

#[test]
fn ports_become_map_elements() {
    let nets = [net("a", 50), net("b", 51)];
    let eps = [
        ep(
            "a",
            "web",
            [10, 231, 50, 2],
            &["8080:80", "127.0.0.1:8081:80/udp"],
        ),
        ep("b", "db", [10, 231, 51, 2], &["9000-9001:7000-7001"]),
        // A record left for a network that is gone: ignored.
        ep("gone", "old", [10, 231, 52, 2], &["7777:80"]),
    ];
    let r = plan(&nets, &eps).unwrap();
    let a = Ipv4Addr::new(10, 231, 50, 2);
    let b = Ipv4Addr::new(10, 231, 51, 2);
    assert_eq!(
        r.ports.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
        [
            ((Proto::Tcp, 8080), (a, 80)),
            ((Proto::Tcp, 9000), (b, 7000)),
            ((Proto::Tcp, 9001), (b, 7001)),
        ]
    );
    assert_eq!(
        r.ports_at.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
        [((Ipv4Addr::LOCALHOST, Proto::Udp, 8081), (a, 80))]
    );
    assert_eq!(r.bridges.iter().collect::<Vec<_>>(), ["wbr-a", "wbr-b"]);
    assert!(r.needs_forwarding());
}

fn dual(name: &str, third: u8) -> NetworkDef {
    let mut n = net(name, third);
    n.subnet6 = Some(format!("fd00:231:{third}::/64").parse().unwrap());
    n
}

fn ep6(network: &str, container: &str, third: u8, host: u8, ports: &[&str]) -> Endpoint {
    let mut e = ep(network, container, [10, 231, third, host], ports);
    e.addr6 = Some(format!("fd00:231:{third}::{host}").parse().unwrap());
    e
}

#[test]
fn ipv6_ports_nat_and_forwarding() {
    let mut internal = dual("in", 71);
    internal.internal = true;
    let nets = [dual("a", 70), internal.clone(), net("v4", 72)];
    let eps = [
        ep6(
            "a",
            "web",
            70,
            2,
            &["8080:80", "[fd00::2]:8443:443", "[::1]:9000:80"],
        ),
        // On an IPv4-only network: published on IPv4 only.
        ep(
            "v4",
            "old",
            [10, 231, 72, 2],
            &["8081:80", "[fd00::2]:8444:80"],
        ),
        ep6("in", "hidden", 71, 2, &["8082:80"]),
    ];
    let r = plan(&nets, &eps).unwrap();
    let web6: std::net::Ipv6Addr = "fd00:231:70::2".parse().unwrap();
    assert_eq!(
        r.ports6.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
        [((Proto::Tcp, 8080), (web6, 80))]
    );
    let host6: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
    assert_eq!(
        r.ports6_at
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>(),
        [((host6, Proto::Tcp, 8443), (web6, 443))]
    );
    assert_eq!(r.ports.len(), 2, "{:?}", r.ports);
    let masq6: Vec<_> = r
        .masquerade6
        .iter()
        .map(|(n, b)| (n.to_string(), b.as_str()))
        .collect();
    assert_eq!(masq6, [("fd00:231:70::/64".to_string(), "wbr-a")]);
    assert_eq!(r.subnets6.len(), 2);
    assert!(r.needs_forwarding6());
    // Internal dual-stack networks alone need no IPv6 forwarding; IPv4-only ones neither.
    assert!(!plan(&[internal], &[]).unwrap().needs_forwarding6());
    assert!(!plan(&[net("v4", 72)], &[]).unwrap().needs_forwarding6());
    // The IPv6 port maps are endpoint elements too (16-byte addresses).
    let sets = super::elements::wanted(&r);
    let (_, name, elems) = &sets[5];
    assert_eq!(*name, "ports6_addr");
    assert_eq!(elems.values().next().unwrap(), &web6.octets().to_vec());
    assert_eq!(sets[7].2.keys().next().unwrap().len(), 16 + 4 + 4);
    // A wildcard on IPv4 and an IPv6 address conflict, as binding them would.
    let clash = [
        ep6("a", "one", 70, 2, &["8080:80"]),
        ep6("a", "two", 70, 3, &["[fd00::2]:8080:80"]),
    ];
    assert!(matches!(
        plan(&nets, &clash),
        Err(FirewallError::PortTaken { .. })
    ));
    // IPv6 changes the base set: a dual-stack network's tables are loaded anew.
    assert_ne!(
        plan(&[dual("a", 70)], &[]).unwrap().base_set(),
        plan(&[net("a", 70)], &[]).unwrap().base_set()
    );
}

#[test]
fn ipv6_forwarding_tables_are_read_from_nft() {
    let json = serde_json::json!({"nftables": [
        {"set": {"family": "inet", "table": "warren", "name": "forward6", "elem": ["wrn-a"]}},
        {"set": {"family": "inet", "table": "warren-0a1b2c3d", "name": "forward6"}},
        {"set": {"family": "inet", "table": "other", "name": "forward6", "elem": ["x"]}},
    ]});
    let got: Vec<String> = super::apply::tables_forwarding6(&json)
        .into_iter()
        .collect();
    assert_eq!(got, ["warren"]);
}

#[test]
fn internal_and_isolate_networks() {
    let mut internal = net("in", 53);
    internal.internal = true;
    let mut iso = net("iso", 54);
    iso.isolate = true;
    let open = net("open", 55);
    let eps = [
        ep("in", "hidden", [10, 231, 53, 2], &["8080:80"]),
        ep("iso", "i1", [10, 231, 54, 2], &[]),
        ep("iso", "i2", [10, 231, 54, 3], &[]),
        ep("open", "o1", [10, 231, 55, 2], &[]),
    ];
    let r = plan(&[internal.clone(), iso, open], &eps).unwrap();
    // An internal network: no masquerade, no published port, no route out.
    assert!(r.ports.is_empty());
    assert_eq!(r.internal.iter().collect::<Vec<_>>(), ["wbr-in"]);
    let masq: Vec<_> = r
        .masquerade
        .iter()
        .map(|(n, b)| (n.to_string(), b.as_str()))
        .collect();
    assert_eq!(
        masq,
        [
            ("10.231.54.0/24".into(), "wbr-iso"),
            ("10.231.55.0/24".into(), "wbr-open")
        ]
    );
    // isolate: its veths are kept apart, and its bridge is not among the open ones.
    assert_eq!(
        r.isolated_ports.iter().collect::<Vec<_>>(),
        ["wv-i1", "wv-i2"]
    );
    assert_eq!(r.intra.iter().collect::<Vec<_>>(), ["wbr-in", "wbr-open"]);
    // Internal networks alone need no forwarding.
    assert!(!plan(&[internal], &[]).unwrap().needs_forwarding());
    assert!(plan(&[], &[]).unwrap().is_empty());
}

#[test]
fn conflicting_ports_name_both_containers() {
    let nets = [net("a", 56)];
    let taken = |ports: [&str; 2]| {
        let eps = [
            ep("a", "one", [10, 231, 56, 2], &[ports[0]]),
            ep("a", "two", [10, 231, 56, 3], &[ports[1]]),
        ];
        plan(&nets, &eps)
    };
    for clash in [
        ["8080:80", "8080:81"],
        ["8080:80", "127.0.0.1:8080:80"],
        ["127.0.0.1:8080:80", "8080:80"],
        ["8079-8081:1-3", "8081:80"],
    ] {
        match taken(clash) {
            Err(FirewallError::PortTaken { first, second, .. }) => assert_eq!(
                (first.as_str(), second.as_str()),
                ("one", "two"),
                "{clash:?}"
            ),
            other => panic!("{clash:?}: {other:?}"),
        }
    }
    // Another protocol, or two different host addresses: no conflict.
    for fine in [
        ["8080:80", "8080:80/udp"],
        ["127.0.0.1:8080:80", "127.0.0.2:8080:80"],
    ] {
        assert!(taken(fine).is_ok(), "{fine:?}");
    }
}

#[test]
fn bad_interface_names_are_refused() {
    let mut n = net("a", 57);
    n.bridge = "../../x".into();
    assert!(matches!(
        plan(&[n], &[]),
        Err(FirewallError::BadName { .. })
    ));
    let mut n = net("a", 57);
    n.isolate = true;
    let mut e = ep("a", "c", [10, 231, 57, 2], &[]);
    e.veth = "a-name-longer-than-15".into();
    assert!(matches!(
        plan(&[n], &[e]),
        Err(FirewallError::BadName { .. })
    ));
}

#[test]
fn the_transaction_replaces_both_tables() {
    let json = |r: &Ruleset| {
        serde_json::to_value(transaction("warren-t1", r)).unwrap()["nftables"]
            .as_array()
            .unwrap()
            .clone()
    };
    // No network: add-then-delete of each table (a no-op when absent), nothing more.
    let empty = json(&Ruleset::default());
    assert_eq!(empty.len(), 4);
    assert!(
        empty[1]["delete"]["table"]["family"] == "inet"
            && empty[3]["delete"]["table"]["family"] == "bridge"
    );
    // Every object is in the table named.
    let eps = [ep("a", "web", [10, 231, 58, 2], &["8080:80"])];
    for cmd in json(&plan(&[net("a", 58)], &eps).unwrap()) {
        let (_, obj) = cmd.as_object().unwrap().iter().next().unwrap();
        let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
        let table = if kind == "table" {
            &body["name"]
        } else {
            &body["table"]
        };
        assert_eq!(table, "warren-t1", "{cmd}");
    }
    let eps = [ep("a", "web", [10, 231, 58, 2], &["8080:80"])];
    let cmds = json(&plan(&[net("a", 58)], &eps).unwrap());
    let text = serde_json::to_string(&cmds).unwrap();
    assert!(
        text.contains(r#"[{"concat":["tcp",8080]},"10.231.58.2"]"#),
        "{text}"
    );
    assert!(text.contains(r#"[{"concat":["tcp",8080]},80]"#), "{text}");
    assert!(
        text.contains(r#""prefix":{"addr":"10.231.58.0","len":24}"#),
        "{text}"
    );
    // Anti-spoofing: from its bridge, only the network's subnet.
    let spoof = r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":{"prefix":{"addr":"10.231.58.0","len":24}}}}"#;
    assert!(text.contains(spoof), "{text}");
    // The deletes come before every add of the new content.
    assert!(
        cmds[..4]
            .iter()
            .all(|c| c.get("add").is_some() || c.get("delete").is_some())
    );
    assert!(cmds[4..].iter().all(|c| c.get("add").is_some()));
}

#[test]
fn forwarding_is_recorded_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let sysctl = dir.path().join("ip_forward");
    let saved = dir.path().join("run/ip_forward.saved");
    let none = || Ok(false);
    std::fs::write(&sysctl, "0\n").unwrap();
    forwarding(true, none, &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "0");
    // A second apply keeps the first value on record.
    forwarding(true, none, &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "0");
    forwarding(false, none, &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "0");
    assert!(!saved.exists());
    // Already on before warren: stays on after.
    std::fs::write(&sysctl, "1\n").unwrap();
    forwarding(true, none, &sysctl, &saved).unwrap();
    forwarding(false, none, &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap().trim(), "1");
    // Never enabled by warren: left alone.
    std::fs::write(&sysctl, "0").unwrap();
    forwarding(false, none, &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "0");
}

#[test]
fn forwarding_stays_while_another_table_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let sysctl = dir.path().join("ip_forward");
    let saved = dir.path().join("ip_forward.saved");
    std::fs::write(&sysctl, "0").unwrap();
    forwarding(true, || Ok(false), &sysctl, &saved).unwrap();
    forwarding(false, || Ok(true), &sysctl, &saved).unwrap();
    // Another state directory still forwards: left on, the record kept.
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "0");
    forwarding(false, || Ok(false), &sysctl, &saved).unwrap();
    assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "0");
    assert!(!saved.exists());
}

#[test]
fn tables_needing_forwarding_are_read_from_nft() {
    let json = serde_json::json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "inet", "table": "warren", "name": "bridges", "elem": ["wrn-a"]}},
        {"set": {"family": "inet", "table": "warren", "name": "internal", "elem": ["wrn-a"]}},
        {"set": {"family": "inet", "table": "warren-0a1b2c3d", "name": "bridges", "elem": ["wrn-b", "wrn-c"]}},
        {"set": {"family": "inet", "table": "warren-0a1b2c3d", "name": "internal", "elem": ["wrn-b"]}},
        {"set": {"family": "inet", "table": "warren-ffff0000", "name": "bridges"}},
        {"set": {"family": "inet", "table": "other", "name": "bridges", "elem": ["x"]}},
    ]});
    let got: Vec<String> = tables_forwarding(&json).into_iter().collect();
    assert_eq!(got, ["warren-0a1b2c3d"]);
}

#[test]
fn table_names_are_warrens() {
    for ok in ["warren", "warren-0a1b2c3d", "warren-fw_t-1"] {
        assert!(valid_table(ok), "{ok}");
    }
    for bad in [
        "",
        "nat",
        "warren-",
        "warrenx",
        "warren-a b",
        "warren-a;",
        &format!("warren-{}", "a".repeat(33)),
    ] {
        assert!(!valid_table(bad), "{bad}");
    }
}

/// The JSON for one network with ports, for checking by hand with `nft -c -j -f`.
#[test]
fn dump_for_nft_check() {
    if let Some(out) = std::env::var_os("WARREN_FW_DUMP") {
        let mut iso = net("iso", 59);
        iso.isolate = true;
        let mut internal = net("in", 60);
        internal.internal = true;
        let eps = [
            ep(
                "a",
                "web",
                [10, 231, 58, 2],
                &["8080:80", "127.0.0.1:8081:80/udp"],
            ),
            ep("iso", "x", [10, 231, 59, 2], &[]),
        ];
        let mut eps = eps.to_vec();
        eps.push(ep6(
            "six",
            "v6",
            61,
            2,
            &["8090:80", "[fd00::2]:8091:81/udp"],
        ));
        let r = plan(&[net("a", 58), iso, internal, dual("six", 61)], &eps).unwrap();
        std::fs::write(
            out,
            serde_json::to_string(&transaction("warren", &r)).unwrap(),
        )
        .unwrap();
    }
}
