//! The endpoints' share of warren's tables: published ports (eight maps) and the ports
//! of `isolate` networks (a set). A container's join or leave changes only these, so
//! [`sync`] reads them from the kernel and adds or deletes what differs from the plan,
//! in one transaction, when the tables were loaded for the same networks; anything
//! else (no tables, other networks, another layout) asks for a full load.

use super::netlink::{BRIDGE, Change, Elems, INET, Nfnl};
use super::plan::Ruleset;
use crate::net::Proto;
use std::io;

/// `ifname` keys: the name, NUL-padded to IFNAMSIZ.
fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// One field of a concatenated key: padded to a 4-byte register.
fn field(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(4) * 4, 0);
    v
}

fn proto(p: Proto) -> Vec<u8> {
    field(vec![match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }])
}

fn port(p: u16) -> Vec<u8> {
    p.to_be_bytes().to_vec()
}

/// The elements `rules` calls for in each endpoint-driven set or map.
pub fn wanted(rules: &Ruleset) -> Vec<(u8, &'static str, Elems)> {
    let mut maps: [Elems; 8] = Default::default();
    let mut put = |i: usize, key: Vec<u8>, addr: Vec<u8>, to_port: u16| {
        maps[i].insert(key.clone(), addr);
        maps[i + 1].insert(key, port(to_port));
    };
    let any = |p: &Proto, host: &u16| [proto(*p), field(port(*host))].concat();
    let at = |ip: Vec<u8>, p: &Proto, host: &u16| [ip, proto(*p), field(port(*host))].concat();
    for ((p, host), (addr, to)) in &rules.ports {
        put(0, any(p, host), addr.octets().to_vec(), *to);
    }
    for ((ip, p, host), (addr, to)) in &rules.ports_at {
        put(
            2,
            at(ip.octets().to_vec(), p, host),
            addr.octets().to_vec(),
            *to,
        );
    }
    for ((p, host), (addr, to)) in &rules.ports6 {
        put(4, any(p, host), addr.octets().to_vec(), *to);
    }
    for ((ip, p, host), (addr, to)) in &rules.ports6_at {
        put(
            6,
            at(ip.octets().to_vec(), p, host),
            addr.octets().to_vec(),
            *to,
        );
    }
    let isolated = rules
        .isolated_ports
        .iter()
        .map(|n| (ifname(n), Vec::new()))
        .collect();
    let [a, b, c, d, e, f, g, h] = maps;
    vec![
        (INET, "ports_addr", a),
        (INET, "ports_port", b),
        (INET, "ports_at_addr", c),
        (INET, "ports_at_port", d),
        (BRIDGE, "isolated", isolated),
        (INET, "ports6_addr", e),
        (INET, "ports6_port", f),
        (INET, "ports6_at_addr", g),
        (INET, "ports6_at_port", h),
    ]
}

/// The changes that turn `have` into `want`: deletions (of keys gone or remapped)
/// first, then additions.
pub fn diff(family: u8, set: &'static str, have: &Elems, want: &Elems) -> Vec<Change> {
    let gone = have
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(*v))
        .map(|(k, _)| Change::Delete {
            family,
            set,
            key: k.clone(),
        });
    let new = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| Change::Add {
            family,
            set,
            key: k.clone(),
            data: v.clone(),
        });
    gone.chain(new).collect()
}

/// Makes the endpoint-driven elements of tables `table` those of `rules`, when the
/// tables carry `rules`' base set. Ok(false): they do not (or a set is missing): the
/// caller loads the tables whole.
pub fn sync(table: &str, rules: &Ruleset) -> io::Result<bool> {
    let mut nl = Nfnl::open()?;
    let missing = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    match nl.elements(INET, table, &rules.base_set()) {
        Err(e) if missing(&e) => return Ok(false),
        other => other?,
    };
    let (mut deletes, mut adds) = (Vec::new(), Vec::new());
    for (family, set, want) in wanted(rules) {
        let have = match nl.elements(family, table, set) {
            Err(e) if missing(&e) => return Ok(false),
            other => other?,
        };
        for change in diff(family, set, &have, &want) {
            match change {
                Change::Delete { .. } => deletes.push(change),
                Change::Add { .. } => adds.push(change),
            }
        }
    }
    deletes.extend(adds);
    nl.commit(table, &deletes)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn keys_are_padded_fields_and_diffs_replace_what_changed() {
        let mut rules = Ruleset::default();
        let target = (Ipv4Addr::new(10, 231, 1, 2), 80);
        rules.ports.insert((Proto::Tcp, 8080), target);
        rules.isolated_ports.insert("wrnv1".into());
        let sets = wanted(&rules);
        let key = vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0];
        assert_eq!(sets[0].2, Elems::from([(key.clone(), vec![10, 231, 1, 2])]));
        assert_eq!(sets[1].2, Elems::from([(key.clone(), vec![0, 80])]));
        assert_eq!(sets[4].2.keys().next().unwrap().len(), 16);
        let have = Elems::from([(key.clone(), vec![0, 81]), (vec![1; 8], vec![0, 1])]);
        let changes = diff(INET, "ports_port", &have, &sets[1].2);
        assert_eq!(changes.len(), 3, "{changes:?}");
        let deleted = |k: &Vec<u8>| {
            changes[..2]
                .iter()
                .any(|c| matches!(c, Change::Delete { key, .. } if key == k))
        };
        assert!(deleted(&key) && deleted(&vec![1; 8]), "{changes:?}");
        assert!(matches!(&changes[2], Change::Add { data, .. } if *data == vec![0, 80]));
        assert!(diff(INET, "ports_port", &sets[1].2, &sets[1].2).is_empty());
    }
}
