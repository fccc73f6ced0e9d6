//! The few nf_tables netlink messages a container's join or leave needs: list the
//! elements of one set or map, and add or delete elements in one batch (one nf_tables
//! transaction: all or nothing). No `nft` process and no whole-table reload: a
//! container's change touches only its own elements. Tables, chains and rules are
//! still made by `nft` ([`super::nft`]).
//!
//! Messages are built by hand (the layout of `linux/netfilter/nf_tables.h` and
//! `nfnetlink.h`) on a `netlink-sys` socket; elements are raw key and data bytes, as
//! [`super::elements`] encodes them.

use netlink_sys::{Socket, SocketAddr};
use std::collections::BTreeMap;
use std::io;

/// `NFPROTO_INET` and `NFPROTO_BRIDGE`: the families of warren's two tables.
pub const INET: u8 = 1;
pub const BRIDGE: u8 = 7;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// A set's or map's elements: key bytes to data bytes (empty for a set).
pub type Elems = BTreeMap<Vec<u8>, Vec<u8>>;

/// One element change of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add {
        family: u8,
        set: &'static str,
        key: Vec<u8>,
        data: Vec<u8>,
    },
    Delete {
        family: u8,
        set: &'static str,
        key: Vec<u8>,
    },
}

/// An nfnetlink socket in the calling thread's network namespace.
pub struct Nfnl {
    socket: Socket,
    seq: u32,
}

impl Nfnl {
    pub fn open() -> io::Result<Nfnl> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not hang a container's start.
        let timeout = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        Ok(Nfnl { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The elements of set `set` of table `family table` (NotFound when the table or
    /// the set does not exist).
    pub fn elements(&mut self, family: u8, table: &str, set: &str) -> io::Result<Elems> {
        let seq = self.next_seq();
        let mut m = Msg::new(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
        m.str(NFTA_SET_ELEM_LIST_TABLE, table);
        m.str(NFTA_SET_ELEM_LIST_SET, set);
        self.socket.send(&m.finish(), 0)?;
        let mut out = Elems::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            for (ty, msg_seq, payload) in messages(&data) {
                if msg_seq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        error_of(payload)?;
                        return Ok(out);
                    }
                    _ => parse_elems(payload.get(4..).unwrap_or_default(), &mut out),
                }
            }
        }
    }

    /// Applies `changes` to table `table` in one transaction.
    pub fn commit(&mut self, table: &str, changes: &[Change]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut buf = batch_marker(NFNL_MSG_BATCH_BEGIN, self.next_seq());
        let first = self.seq.wrapping_add(1);
        for change in changes {
            let seq = self.next_seq();
            let (family, set, ty, flags) = match change {
                Change::Add { family, set, .. } => {
                    (*family, *set, NFT_MSG_NEWSETELEM, NLM_F_CREATE)
                }
                Change::Delete { family, set, .. } => (*family, *set, NFT_MSG_DELSETELEM, 0),
            };
            let mut m = Msg::new(ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq, family);
            m.str(NFTA_SET_ELEM_LIST_TABLE, table);
            m.str(NFTA_SET_ELEM_LIST_SET, set);
            let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            let elem = m.nest(NFTA_LIST_ELEM);
            let (key, data) = match change {
                Change::Add { key, data, .. } => (key, Some(data)),
                Change::Delete { key, .. } => (key, None),
            };
            let k = m.nest(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, key);
            m.end(k);
            if let Some(data) = data.filter(|d| !d.is_empty()) {
                let d = m.nest(NFTA_SET_ELEM_DATA);
                m.attr(NFTA_DATA_VALUE, data);
                m.end(d);
            }
            m.end(elem);
            m.end(list);
            buf.extend_from_slice(&m.finish());
        }
        let last = self.seq;
        buf.extend_from_slice(&batch_marker(NFNL_MSG_BATCH_END, self.next_seq()));
        self.socket.send(&buf, 0)?;
        // One acknowledgement per change, or the first error (the batch is then undone).
        let mut acked = 0;
        while acked < changes.len() {
            let (data, _) = self.socket.recv_from_full()?;
            for (ty, seq, payload) in messages(&data) {
                if ty == NLMSG_ERROR {
                    error_of(payload)?;
                    if (first..=last).contains(&seq) {
                        acked += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The errno of an NLMSG_ERROR payload (0: an acknowledgement).
fn error_of(payload: &[u8]) -> io::Result<()> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink error"))?;
    match code {
        0 => Ok(()),
        c => Err(io::Error::from_raw_os_error(-c)),
    }
}

/// The messages of a netlink datagram: (type, sequence number, payload).
fn messages(data: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let len = u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        if len < 16 || at + len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes([data[at + 4], data[at + 5]]);
        let seq = u32::from_ne_bytes([data[at + 8], data[at + 9], data[at + 10], data[at + 11]]);
        out.push((ty, seq, &data[at + 16..at + len]));
        at += align(len);
    }
    out
}

/// The attributes in `data`: (type without flags, payload).
fn attrs(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[at], data[at + 1]]) as usize;
        if len < 4 || at + len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes([data[at + 2], data[at + 3]]) & 0x3fff;
        out.push((ty, &data[at + 4..at + len]));
        at += align(len);
    }
    out
}

/// The elements of one NEWSETELEM message (its attributes, after the nfgenmsg).
fn parse_elems(data: &[u8], out: &mut Elems) {
    let value = |nested: &[u8]| {
        attrs(nested)
            .into_iter()
            .find(|(t, _)| *t == NFTA_DATA_VALUE)
            .map(|(_, v)| v.to_vec())
    };
    for (_, list) in attrs(data)
        .into_iter()
        .filter(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
    {
        for (_, elem) in attrs(list)
            .into_iter()
            .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        {
            let (mut key, mut val) = (None, Vec::new());
            for (t, a) in attrs(elem) {
                match t {
                    NFTA_SET_ELEM_KEY => key = value(a),
                    NFTA_SET_ELEM_DATA => val = value(a).unwrap_or_default(),
                    _ => {}
                }
            }
            if let Some(key) = key {
                out.insert(key, val);
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A batch's begin or end message.
fn batch_marker(ty: u16, seq: u32) -> Vec<u8> {
    let mut m = Msg { buf: Vec::new() };
    m.header(ty, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
    m.finish()
}

/// One netlink message being built.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    /// An nf_tables message of `family`.
    fn new(msg: u16, flags: u16, seq: u32, family: u8) -> Msg {
        let mut m = Msg { buf: Vec::new() };
        m.header((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, seq, family, 0);
        m
    }

    /// nlmsghdr (its length filled by `finish`) and nfgenmsg.
    fn header(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    /// Starts a nested attribute; `end` closes it.
    fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_message_parses_back() {
        let mut m = Msg::new(NFT_MSG_NEWSETELEM, NLM_F_REQUEST, 7, INET);
        m.str(NFTA_SET_ELEM_LIST_TABLE, "warren");
        let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let elem = m.nest(NFTA_LIST_ELEM);
        let k = m.nest(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, &[6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        m.end(k);
        let d = m.nest(NFTA_SET_ELEM_DATA);
        m.attr(NFTA_DATA_VALUE, &[0, 80]);
        m.end(d);
        m.end(elem);
        m.end(list);
        let buf = m.finish();
        let msgs = messages(&buf);
        assert_eq!(msgs.len(), 1);
        let (ty, seq, payload) = msgs[0];
        assert_eq!((ty, seq), ((10 << 8) | 12, 7));
        let mut out = Elems::new();
        parse_elems(&payload[4..], &mut out);
        let want = Elems::from([(vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0], vec![0, 80])]);
        assert_eq!(out, want);
    }
}
