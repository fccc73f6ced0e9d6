//! A [`Ruleset`] as one nftables transaction (JSON for `nft -j -f -`): delete the
//! tables if present, add them anew with every set, map, chain and rule.
//!
//! `table inet NAME` holds NAT and forwarding; `table bridge NAME` holds only the
//! `isolate` drop, since traffic between two ports of one bridge never reaches the inet
//! hooks unless br_netfilter is on (and it may be off). NAME is `warren` for the default
//! state directory, `warren-HASH` for any other: one pair of tables per state directory.
//!
//! IPv6 (dual-stack networks) lives in the same `inet` table: NAT66 masquerade,
//! `ports6*` maps DNAT'ing published ports on the host's IPv6 addresses, the same
//! forward chain (it matches interfaces, not addresses), and per-bridge source checks
//! (the network's /64, link-local and `::` only). A `forward6` set names the bridges
//! that need IPv6 forwarding, for other state directories to see.
//!
//! An empty set `base_HASH` names the networks the tables were loaded for (see
//! `Ruleset::base_set`): a container's join or leave then changes only the elements of
//! `ports_*` and `isolated` ([`super::elements`]). The `input` chain keeps each
//! network's name server (gateway:53) to its own bridge.

use super::plan::Ruleset;
use crate::net::{Ipv4Net, Ipv6Net, Proto};
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::schema::{
    Chain, Map, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

/// The tables of the default state directory (`inet warren` and `bridge warren`).
pub const DEFAULT_TABLE: &str = "warren";

/// What every table warren makes is called: `warren` or `warren-...`.
pub fn is_warren_table(name: &str) -> bool {
    name == DEFAULT_TABLE || name.starts_with("warren-")
}

/// A table name `apply` takes: `warren`, or `warren-` and up to 32 letters, digits,
/// '-' or '_' (never another program's table).
pub fn valid_table(name: &str) -> bool {
    name == DEFAULT_TABLE
        || name.strip_prefix("warren-").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The transaction that makes the kernel's tables `table` hold `rules` (or removes
/// them, when empty).
pub fn transaction(table: &str, rules: &Ruleset) -> Nftables<'static> {
    let mut tx = Tx {
        b: Batch::new(),
        table: table.to_string(),
    };
    for family in [NfFamily::INet, NfFamily::Bridge] {
        // `add` is a no-op on an existing table: the `delete` then never fails.
        tx.b.add(NfListObject::Table(tx.table(family)));
        tx.b.delete(NfListObject::Table(tx.table(family)));
    }
    if !rules.is_empty() {
        tx.inet(rules);
        tx.bridge(rules);
    }
    tx.b.to_nftables()
}

/// 127.0.0.0/8.
const LOOPBACK: Ipv4Net = Ipv4Net {
    addr: std::net::Ipv4Addr::new(127, 0, 0, 0),
    prefix: 8,
};

/// fe80::/10 and ::/128: what a container's neighbour discovery sends from.
const LINK_LOCAL: Ipv6Net = Ipv6Net {
    addr: std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
    prefix: 10,
};
const UNSPECIFIED: Ipv6Net = Ipv6Net {
    addr: std::net::Ipv6Addr::UNSPECIFIED,
    prefix: 128,
};

/// The batch being built, and the name of the tables it fills.
struct Tx {
    b: Batch<'static>,
    table: String,
}

impl Tx {
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(self.table.clone())
    }

    fn table(&self, family: NfFamily) -> Table<'static> {
        Table {
            family,
            name: self.name(),
            handle: None,
        }
    }

    fn inet(&mut self, rules: &Ruleset) {
        self.b.add(NfListObject::Table(self.table(NfFamily::INet)));
        let names = |set: &BTreeSet<String>| set.iter().map(|n| s(n)).collect();
        let pairs = |set: &BTreeSet<String>| set.iter().map(|n| concat([s(n), s(n)])).collect();
        let two_names =
            || SetTypeValue::Concatenated(vec![SetType::Ifname, SetType::Ifname].into());
        let isolated: BTreeSet<String> = rules.bridges.difference(&rules.intra).cloned().collect();
        let forward6: BTreeSet<String> = rules.masquerade6.iter().map(|(_, b)| b.clone()).collect();
        // Marks what these tables were loaded for (see `Ruleset::base_set`).
        self.add_set(NfFamily::INet, rules.base_set(), one(SetType::Mark), vec![]);
        let gateways: BTreeSet<_> = rules.dns.iter().map(|(gw, _)| *gw).collect();
        let gateway_bridge =
            || SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Ifname].into());
        let dns = rules.dns.iter().map(|(gw, br)| concat([addr(*gw), s(br)]));
        for (name, set_type, elems) in [
            (
                "gateways",
                one(SetType::Ipv4Addr),
                gateways.iter().map(|g| addr(*g)).collect(),
            ),
            ("dns", gateway_bridge(), dns.collect()),
            ("bridges", one(SetType::Ifname), names(&rules.bridges)),
            // The bridges that need IPv6 forwarding (see `apply::others_forward`).
            ("forward6", one(SetType::Ifname), names(&forward6)),
            ("internal", one(SetType::Ifname), names(&rules.internal)),
            // (bridge, bridge): traffic within one network, allowed or not.
            ("intra", two_names(), pairs(&rules.intra)),
            ("apart", two_names(), pairs(&isolated)),
        ] {
            self.add_set(NfFamily::INet, name, set_type, elems);
        }
        self.port_maps(rules);
        use {NfChainType::*, NfHook::*};
        for (name, kind, hook, prio) in [
            ("prerouting", NAT, Prerouting, -100),
            ("output", NAT, Output, -100),
            ("postrouting", NAT, Postrouting, 100),
            ("forward", Filter, Forward, 0),
            ("localnet", Filter, Prerouting, -300),
            ("input", Filter, Input, 0),
        ] {
            self.base(NfFamily::INet, name, kind, hook, prio);
        }
        for name in ["published", "to_net"] {
            self.b.add(NfListObject::Chain(Chain {
                family: NfFamily::INet,
                table: self.name(),
                name: name.into(),
                ..Chain::default()
            }));
        }
        self.nat_rules(rules);
        self.filter_rules();
        for (subnet, bridge) in &rules.subnets {
            // No spoofing: what comes in from a bridge comes from its subnet.
            let from = eq(meta(MetaKey::Iifname), s(bridge));
            let spoofed = ne(payload("ip", "saddr"), prefix(*subnet));
            let drop = vec![from, spoofed, Statement::Drop(None)];
            self.rule(NfFamily::INet, "localnet", drop);
        }
        for bridge in &rules.bridges {
            // The same for IPv6: its subnet, or link-local and unspecified (neighbour
            // discovery); on a network without IPv6, only those.
            let mut expr = vec![eq(meta(MetaKey::Iifname), s(bridge))];
            let own = rules.subnets6.iter().filter(|(_, b)| b == bridge);
            for net in own.map(|(n, _)| *n).chain([LINK_LOCAL, UNSPECIFIED]) {
                expr.push(ne(payload("ip6", "saddr"), prefix6(net)));
            }
            expr.push(Statement::Drop(None));
            self.rule(NfFamily::INet, "localnet", expr);
        }
    }

    /// Two maps per key, one for the address and one for the port: nft 1.0.6 (Debian 12)
    /// takes no concatenated map data in JSON. Both are hash lookups on the same key.
    fn port_maps(&mut self, rules: &Ruleset) {
        let (proto, service) = (SetType::InetProto, SetType::InetService);
        let any = || SetTypeValue::Concatenated(vec![proto, service].into());
        let at = |addr: SetType| SetTypeValue::Concatenated(vec![addr, proto, service].into());
        let key = |p: &Proto, port: &u16| concat([proto_name(*p), num(*port)]);
        let key_at =
            |ip: String, p: &Proto, port: &u16| concat([s(&ip), proto_name(*p), num(*port)]);
        let target = |a: String, port: u16| (s(&a), port);
        let v4 = SetType::Ipv4Addr;
        let v6 = SetType::Ipv6Addr;
        let maps = [
            (
                "ports",
                any(),
                v4,
                (rules.ports.iter())
                    .map(|((p, h), t)| (key(p, h), target(t.0.to_string(), t.1)))
                    .collect::<Vec<_>>(),
            ),
            (
                "ports_at",
                at(v4),
                v4,
                (rules.ports_at.iter())
                    .map(|((ip, p, h), t)| {
                        (key_at(ip.to_string(), p, h), target(t.0.to_string(), t.1))
                    })
                    .collect(),
            ),
            (
                "ports6",
                any(),
                v6,
                (rules.ports6.iter())
                    .map(|((p, h), t)| (key(p, h), target(t.0.to_string(), t.1)))
                    .collect(),
            ),
            (
                "ports6_at",
                at(v6),
                v6,
                (rules.ports6_at.iter())
                    .map(|((ip, p, h), t)| {
                        (key_at(ip.to_string(), p, h), target(t.0.to_string(), t.1))
                    })
                    .collect(),
            ),
        ];
        for (name, key, addr_type, keys) in maps {
            let to_addr = keys
                .iter()
                .map(|(k, t)| Expression::List(vec![k.clone(), t.0.clone()]));
            self.add_map(
                format!("{name}_addr"),
                key.clone(),
                one(addr_type),
                to_addr.collect(),
            );
            let to_port = keys
                .iter()
                .map(|(k, t)| Expression::List(vec![k.clone(), num(t.1)]));
            let port_map = format!("{name}_port");
            self.add_map(port_map, key, one(SetType::InetService), to_port.collect());
        }
    }

    /// DNAT of published ports (to the host's own addresses, from anywhere: other hosts,
    /// containers, the host itself) and the masquerades that make replies come back.
    fn nat_rules(&mut self, rules: &Ruleset) {
        let fib_type = Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        }));
        let local = eq(fib_type, s("local"));
        let r = |tx: &mut Tx, chain, expr| tx.rule(NfFamily::INet, chain, expr);
        r(self, "prerouting", vec![local.clone(), jump("published")]);
        r(self, "output", vec![local, jump("published")]);
        let (l4, dport) = (|| meta(MetaKey::L4proto), || payload("th", "dport"));
        for (family, ip, nat, suffix) in [
            ("ipv4", "ip", NATFamily::IP, ""),
            ("ipv6", "ip6", NATFamily::IP6, "6"),
        ] {
            let at_key = concat([payload(ip, "daddr"), l4(), dport()]);
            // Never ::1 (no route_localnet for IPv6: DNAT'd, it would be dropped, not
            // refused, and `localhost` clients would wait instead of trying 127.0.0.1).
            let not_lo = ne(payload("ip6", "daddr"), s("::1"));
            let is = || match suffix {
                "" => vec![eq(meta(MetaKey::Nfproto), s(family))],
                _ => vec![not_lo.clone()],
            };
            let (at, any) = (format!("ports{suffix}_at"), format!("ports{suffix}"));
            r(
                self,
                "published",
                [is(), vec![dnat(at_key, &at, nat)]].concat(),
            );
            let any_key = concat([l4(), dport()]);
            r(
                self,
                "published",
                [is(), vec![dnat(any_key, &any, nat)]].concat(),
            );
        }
        // The host reaching 127.0.0.1:PORT: the container must answer the bridge's address.
        let oif = || meta(MetaKey::Oifname);
        let from_lo = vec![eq(oif(), s("@bridges")), saddr_in(LOOPBACK), masquerade()];
        r(self, "postrouting", from_lo);
        for (subnet, bridge) in &rules.masquerade {
            // Hairpin: a container reaching a published port of its own network.
            let dnatted = ct_is("status", s("dnat"));
            let hairpin = vec![
                saddr_in(*subnet),
                eq(oif(), s(bridge)),
                dnatted,
                masquerade(),
            ];
            r(self, "postrouting", hairpin);
            let out = vec![saddr_in(*subnet), ne(oif(), s(bridge)), masquerade()];
            r(self, "postrouting", out);
        }
        for (subnet, bridge) in &rules.masquerade6 {
            let from = || eq(payload("ip6", "saddr"), prefix6(*subnet));
            let dnatted = ct_is("status", s("dnat"));
            let hairpin = vec![from(), eq(oif(), s(bridge)), dnatted, masquerade()];
            r(self, "postrouting", hairpin);
            let out = vec![from(), ne(oif(), s(bridge)), masquerade()];
            r(self, "postrouting", out);
        }
    }

    /// Forwarding into a bridge: the network's own traffic (unless `isolate`), replies and
    /// published ports only; out of an internal bridge: nothing. `localnet` undoes what
    /// `route_localnet` would open: a container sending to, or as, 127.0.0.0/8.
    fn filter_rules(&mut self) {
        let (iif, oif) = (|| meta(MetaKey::Iifname), || meta(MetaKey::Oifname));
        let replies = Expression::List(vec![s("established"), s("related")]);
        let (accept, drop) = (|| Statement::Accept(None), || Statement::Drop(None));
        let rules = [
            ("forward", vec![eq(oif(), s("@bridges")), jump("to_net")]),
            ("forward", vec![eq(iif(), s("@internal")), drop()]),
            (
                "to_net",
                vec![eq(concat([iif(), oif()]), s("@intra")), accept()],
            ),
            ("to_net", vec![ct_is("state", replies), accept()]),
            ("to_net", vec![eq(iif(), s("@internal")), drop()]),
            // `isolate`: not even through a published port (with br_netfilter, that hairpin
            // is bridged, and the bridge table drops it alike).
            (
                "to_net",
                vec![eq(concat([iif(), oif()]), s("@apart")), drop()],
            ),
            ("to_net", vec![ct_is("status", s("dnat")), accept()]),
            ("to_net", vec![drop()]),
        ];
        for (chain, expr) in rules {
            self.rule(NfFamily::INet, chain, expr);
        }
        for field in ["daddr", "saddr"] {
            let m = eq(payload("ip", field), prefix(LOOPBACK));
            let expr = vec![eq(iif(), s("@bridges")), m, drop()];
            self.rule(NfFamily::INet, "localnet", expr);
        }
        // A network's name server (gateway:53) answers its own bridge only: not other
        // networks, other hosts, nor the host itself.
        for proto in ["tcp", "udp"] {
            let expr = vec![
                eq(payload("ip", "daddr"), s("@gateways")),
                eq(payload(proto, "dport"), num(53)),
                ne(concat([payload("ip", "daddr"), iif()]), s("@dns")),
                drop(),
            ];
            self.rule(NfFamily::INet, "input", expr);
        }
    }

    fn bridge(&mut self, rules: &Ruleset) {
        self.b
            .add(NfListObject::Table(self.table(NfFamily::Bridge)));
        let ports = rules.isolated_ports.iter().map(|n| s(n)).collect();
        self.add_set(NfFamily::Bridge, "isolated", one(SetType::Ifname), ports);
        let (family, prio) = (NfFamily::Bridge, -200);
        self.base(
            family,
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            prio,
        );
        let drop = vec![
            eq(meta(MetaKey::Iifname), s("@isolated")),
            Statement::Drop(None),
        ];
        self.rule(NfFamily::Bridge, "forward", drop);
    }

    fn add_set(
        &mut self,
        family: NfFamily,
        name: impl Into<Cow<'static, str>>,
        set_type: SetTypeValue<'static>,
        elem: Vec<Expression<'static>>,
    ) {
        let set = NfListObject::Set(Box::new(Set {
            family,
            table: self.name(),
            name: name.into(),
            set_type,
            elem: (!elem.is_empty()).then(|| elem.into()),
            ..Set::default()
        }));
        self.b.add(set);
    }

    fn add_map(
        &mut self,
        name: String,
        key: SetTypeValue<'static>,
        value: SetTypeValue<'static>,
        elem: Vec<Expression<'static>>,
    ) {
        let map = NfListObject::Map(Box::new(Map {
            family: NfFamily::INet,
            table: self.name(),
            name: name.into(),
            set_type: key,
            map: value,
            elem: (!elem.is_empty()).then(|| elem.into()),
            ..Map::default()
        }));
        self.b.add(map);
    }

    fn base(
        &mut self,
        family: NfFamily,
        name: &'static str,
        kind: NfChainType,
        hook: NfHook,
        prio: i32,
    ) {
        self.b.add(NfListObject::Chain(Chain {
            family,
            table: self.name(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }

    fn rule(&mut self, family: NfFamily, chain: &'static str, expr: Vec<Statement<'static>>) {
        self.b.add(NfListObject::Rule(Rule {
            family,
            table: self.name(),
            chain: chain.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }
}

// Small builders for the crate's JSON schema.

fn s(text: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(text.to_string()))
}

fn num(n: u16) -> Expression<'static> {
    Expression::Number(u32::from(n))
}

fn proto_name(p: Proto) -> Expression<'static> {
    s(&p.to_string())
}

fn concat<const N: usize>(parts: [Expression<'static>; N]) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(&net.network().to_string())),
        len: u32::from(net.prefix),
    }))
}

fn prefix6(net: Ipv6Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(&net.network().to_string())),
        len: u32::from(net.prefix),
    }))
}

fn saddr_in(net: Ipv4Net) -> Statement<'static> {
    eq(payload("ip", "saddr"), prefix(net))
}

fn matching(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matching(left, Operator::EQ, right)
}

fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matching(left, Operator::NEQ, right)
}

/// `ct KEY VALUE`: a flag test (`in`), as nft writes it.
fn ct_is(key: &'static str, value: Expression<'static>) -> Statement<'static> {
    let ct = Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }));
    matching(ct, Operator::IN, value)
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

/// `dnat ip[6] to KEY map @NAME_addr : KEY map @NAME_port`.
fn dnat(key: Expression<'static>, name: &str, family: NATFamily) -> Statement<'static> {
    let lookup = |suffix: &str| {
        Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
            key: key.clone(),
            data: s(&format!("@{name}_{suffix}")),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(lookup("addr")),
        family: Some(family),
        port: Some(lookup("port")),
        flags: None,
    }))
}

fn addr(ip: std::net::Ipv4Addr) -> Expression<'static> {
    s(&ip.to_string())
}

fn one(t: SetType) -> SetTypeValue<'static> {
    SetTypeValue::Single(t)
}
