//! The DNS wire format, as much as the responder needs: a query's header and question,
//! and answers of A and AAAA records. Every packet comes from a container, so every read
//! is bounds-checked, compression pointers may only point backwards (no loops), names are
//! at most 255 bytes, and nothing here panics on any input.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

/// The largest answer over UDP without EDNS; a larger one is truncated (TC) so the client
/// retries over TCP.
pub const UDP_MAX: usize = 512;

/// The longest name on the wire (RFC 1035 2.3.4).
const NAME_MAX: usize = 255;

/// A query's question, and what the answer copies from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The header's flags word (opcode, RD, ...).
    pub flags: u16,
    /// The name's labels as they came (case kept: resolvers check it, 0x20 encoding).
    pub labels: Vec<Vec<u8>>,
    pub qtype: u16,
    pub qclass: u16,
}

/// Why a packet is not a query we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Shorter than a header, or a response: dropped without an answer (no loops
    /// between responders, no amplification of junk).
    Drop,
    /// A header with a broken question: answered FORMERR.
    Format,
    /// An opcode other than QUERY: answered NOTIMP.
    NotImplemented,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    let b = p.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads the name at `at`; returns its labels and the offset after it (after the first
/// pointer, when it has one).
pub fn read_name(p: &[u8], mut at: usize) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut labels = Vec::new();
    let mut len = 1usize;
    let mut end = None;
    // A pointer must go strictly backwards: each jump lowers `at`, so there is no loop.
    let mut limit = at;
    loop {
        let n = *p.get(at)?;
        match n & 0xc0 {
            0x00 if n == 0 => {
                return Some((labels, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = p.get(at + 1..at + 1 + usize::from(n))?;
                len += 1 + label.len();
                if len > NAME_MAX {
                    return None;
                }
                labels.push(label.to_vec());
                at += 1 + usize::from(n);
            }
            0xc0 => {
                let target = usize::from(u16_at(p, at)? & 0x3fff);
                if target >= limit {
                    return None;
                }
                end.get_or_insert(at + 2);
                limit = target;
                at = target;
            }
            // 0x40 and 0x80: extended and reserved label types.
            _ => return None,
        }
    }
}

/// Parses a packet as a query with one question.
pub fn parse_query(p: &[u8]) -> Result<Query, Bad> {
    let id = u16_at(p, 0).ok_or(Bad::Drop)?;
    let flags = u16_at(p, 2).ok_or(Bad::Drop)?;
    if p.len() < 12 || flags & 0x8000 != 0 {
        return Err(Bad::Drop);
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(Bad::NotImplemented);
    }
    if u16_at(p, 4) != Some(1) {
        return Err(Bad::Format);
    }
    let (labels, at) = read_name(p, 12).ok_or(Bad::Format)?;
    let qtype = u16_at(p, at).ok_or(Bad::Format)?;
    let qclass = u16_at(p, at + 2).ok_or(Bad::Format)?;
    Ok(Query {
        id,
        flags,
        labels,
        qtype,
        qclass,
    })
}

/// Just the id and flags of a packet too broken to parse, for a FORMERR or NOTIMP.
pub fn error_reply(p: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let id = u16_at(p, 0)?;
    let flags = u16_at(p, 2)?;
    // QR, the opcode and RD copied, RA; no question.
    let flags = 0x8000 | (flags & 0x7900) | 0x0080 | u16::from(rcode & 0xf);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// One address of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// The answer to `q`: `addrs` as records of its name (authoritative), truncated with TC
/// when longer than `max` bytes.
pub fn answer(q: &Query, rcode: u8, addrs: &[Addr], ttl: u32, max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(UDP_MAX);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD copied, RA.
    let mut flags = 0x8400 | (q.flags & 0x0100) | 0x0080 | u16::from(rcode & 0xf);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for l in &q.labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    let mut count: u16 = 0;
    for a in addrs {
        let (rtype, data): (u16, Vec<u8>) = match a {
            Addr::V4(ip) => (TYPE_A, ip.octets().to_vec()),
            Addr::V6(ip) => (TYPE_AAAA, ip.octets().to_vec()),
        };
        let record = 2 + 2 + 2 + 4 + 2 + data.len();
        if out.len() + record > max || count == u16::MAX {
            flags |= 0x0200;
            out[2..4].copy_from_slice(&flags.to_be_bytes());
            break;
        }
        // A pointer to the question's name, at offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
        count += 1;
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    out
}

/// The answer to a PTR question `q`: the name `target` (dot-separated, at most 255
/// bytes on the wire, labels at most 63; longer ones are not answered).
pub fn answer_ptr(q: &Query, target: &str, ttl: u32, max: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for l in target.split('.').filter(|l| !l.is_empty()) {
        if l.len() > 63 {
            return answer(q, RCODE_SERVFAIL, &[], ttl, max);
        }
        data.push(l.len() as u8);
        data.extend_from_slice(l.as_bytes());
    }
    data.push(0);
    let mut out = answer(q, 0, &[], ttl, max);
    if data.len() > NAME_MAX || out.len() + 12 + data.len() > max {
        return answer(q, RCODE_SERVFAIL, &[], ttl, max);
    }
    out[6..8].copy_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&TYPE_PTR.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_parses_and_is_answered() {
        let q = parse_query(&query(7, "Web.example", TYPE_A)).expect("parse");
        assert_eq!(q.labels, [b"Web".to_vec(), b"example".to_vec()]);
        assert_eq!((q.id, q.qtype, q.qclass), (7, TYPE_A, CLASS_IN));
        let a = answer(&q, 0, &[Addr::V4(Ipv4Addr::new(10, 0, 0, 2))], 5, UDP_MAX);
        assert_eq!(&a[0..2], &7u16.to_be_bytes());
        assert_eq!(a[2] & 0x80, 0x80, "QR");
        assert_eq!(&a[6..8], &[0, 1], "one answer");
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 2]);
        // The answer parses back as a name at 12 (the pointer target) and is not a query.
        assert_eq!(parse_query(&a), Err(Bad::Drop));
    }

    #[test]
    fn many_addresses_are_truncated_for_udp() {
        let q = parse_query(&query(1, "x", TYPE_A)).expect("parse");
        let addrs: Vec<Addr> = (0..100)
            .map(|i| Addr::V4(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        let a = answer(&q, 0, &addrs, 5, UDP_MAX);
        assert!(a.len() <= UDP_MAX);
        assert_eq!(a[2] & 0x02, 0x02, "TC");
        let full = answer(&q, 0, &addrs, 5, 65535);
        assert_eq!(u16_at(&full, 6), Some(100));
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_refused() {
        let mut p = query(1, "a", TYPE_A);
        p.truncate(12);
        // A pointer to itself, then one forwards.
        for name in [
            &[0xc0, 12][..],
            &[0xc0, 14, 0][..],
            &[1, b'a', 0xc0, 12][..],
        ] {
            let mut pkt = p.clone();
            pkt.extend_from_slice(name);
            pkt.extend_from_slice(&[0, 1, 0, 1]);
            assert_eq!(parse_query(&pkt), Err(Bad::Format), "{name:?}");
        }
        // A name longer than 255 bytes.
        let mut pkt = p.clone();
        for _ in 0..5 {
            pkt.push(63);
            pkt.extend_from_slice(&[b'x'; 63]);
        }
        pkt.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&pkt), Err(Bad::Format));
    }

    /// A small xorshift: deterministic junk, no dependency.
    fn junk(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_and_truncated_packets_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let good = query(9, "some.name.example", TYPE_AAAA);
        for len in 0..=good.len() {
            let _ = parse_query(&good[..len]);
            let _ = error_reply(&good[..len], RCODE_FORMERR);
        }
        for _ in 0..200_000 {
            let len = (junk(&mut seed) % 80) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| junk(&mut seed) as u8).collect();
            // Half of them look like queries, so the name parser gets the junk.
            if p.len() > 12 && junk(&mut seed) % 2 == 0 {
                p[2] = 0x01;
                p[3] = 0;
                p[4] = 0;
                p[5] = 1;
            }
            if let Ok(q) = parse_query(&p) {
                let a = answer(&q, 0, &[Addr::V6(Ipv6Addr::LOCALHOST)], 5, UDP_MAX);
                assert!(a.len() <= UDP_MAX || q.labels.is_empty());
            }
            let _ = read_name(&p, (junk(&mut seed) % 90) as usize);
        }
    }
}
