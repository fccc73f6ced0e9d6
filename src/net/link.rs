//! Links, addresses and routes over rtnetlink (`netlink-packet-route` on a synchronous
//! `netlink-sys` socket): what `ip link`/`ip addr`/`ip route` would do, without a shell.
//!
//! A socket talks to the network namespace of the thread that opened it, so
//! [`Netlink::open`] in a thread that joined a namespace configures that namespace.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// What a link dump tells about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, ... (None for a link without a kind, such as a physical NIC).
    pub kind: Option<String>,
    pub mtu: u32,
    /// Its `ifalias`: warren marks the links it makes.
    pub alias: Option<String>,
}

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

/// A failed request: what was asked, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl LinkError {
    /// The kernel's errno, when it answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError { what, source }
}

impl Netlink {
    pub fn open() -> Result<Netlink, LinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("open a socket"))?;
        socket.bind_auto().map_err(err("bind the socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(err("connect the socket"))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `msg` and collects the answers: every message of a dump, or none for a
    /// request acknowledged without error.
    fn call(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(err(what))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(err(what))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| err(what)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number != self.seq {
                    offset += len.max(1);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(_) => return Err(err(what)(e.to_io())),
                        None => return Ok(out),
                    },
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                return Ok(out);
            }
        }
    }

    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), LinkError> {
        self.call(what, msg, flags | NLM_F_ACK).map(drop)
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, LinkError> {
        let msgs = self.call(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(describe(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.call(
            &format!("find link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(describe(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates bridge `name` with `mtu` and `alias`, down.
    pub fn add_bridge(&mut self, name: &str, mtu: u32, alias: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        let what = format!("create bridge {name}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(&what, RouteNetlinkMessage::NewLink(msg), flags)?;
        self.set_alias(name, alias)
    }

    /// Sets link `name`'s `ifalias` (a create ignores it).
    pub fn set_alias(&mut self, name: &str, alias: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::IfAlias(alias.to_string()),
        ];
        let what = format!("set the alias of link {name}");
        self.request(&what, RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Creates veth pair `host` (enslaved to bridge `master`, in hairpin mode) and
    /// `peer`, the peer created directly in the network namespace `netns` (so its name
    /// never meets the host's interfaces).
    pub fn add_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        netns: BorrowedFd<'_>,
        mtu: u32,
        alias: &str,
    ) -> Result<(), LinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Controller(master),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        let what = format!("create veth pair {host}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(&what, RouteNetlinkMessage::NewLink(msg), flags)?;
        self.set_alias(host, alias)?;
        self.set_hairpin(host)
    }

    /// Turns hairpin mode on for bridge port `name` (`IFLA_BRPORT_MODE`, what `ip link
    /// set NAME type bridge_slave hairpin on` sends; a create ignores port data): a
    /// container's packet DNAT'd back to itself (its own published port, through the
    /// host's address) may leave by the port it came in by.
    pub fn set_hairpin(&mut self, name: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]),
        ];
        let what = format!("set hairpin mode on bridge port {name}");
        self.request(&what, RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Sets link `index` up.
    pub fn set_up(&mut self, index: u32) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        let what = format!("set link {index} up");
        self.request(&what, RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes link `name`; a missing link is not an error (deleting either end of a
    /// veth pair removes both).
    pub fn delete(&mut self, name: &str) -> Result<(), LinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(());
        };
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        match self.request(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(e),
            _ => Ok(()),
        }
    }

    /// Adds `addr/prefix` to link `index` (already there is not an error). An IPv6
    /// address skips duplicate address detection (`IFA_F_NODAD`): the allocator made
    /// it unique on its network, and it is usable at once, not seconds later.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes = vec![
            AddressAttribute::Local(addr),
            AddressAttribute::Address(addr),
        ];
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let what = format!("add address {addr}/{prefix} to link {index}");
        match self.request(
            &what,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Adds the default route (of `gateway`'s family) via `gateway` in the main table.
    pub fn add_default_route(&mut self, gateway: IpAddr, mtu: u32) -> Result<(), LinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(gateway);
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(gateway.into()),
            RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]),
        ];
        let what = format!("add the default route via {gateway}");
        self.request(
            &what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The MTU of the link the IPv4 default route leaves by (the uplink), if any.
    pub fn uplink_mtu(&mut self) -> Result<Option<u32>, LinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let routes = self.call("list routes", RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        let oif = routes.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            }
            _ => None,
        });
        let Some(oif) = oif else { return Ok(None) };
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.index == oif)
            .map(|l| l.mtu))
    }

    /// The destinations and prefix lengths of the main table's routes of `af` but the
    /// default route.
    fn routed(&mut self, af: AddressFamily) -> Result<Vec<(RouteAddress, u8)>, LinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = af;
        let routes = self.call("list routes", RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        Ok(routes
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length > 0
                        && r.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    let len = r.header.destination_prefix_length;
                    r.attributes.into_iter().find_map(|a| match a {
                        RouteAttribute::Destination(d) => Some((d, len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The IPv4 subnets routed on this host (to keep a picked subnet off them).
    pub fn routed_subnets(&mut self) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        Ok(self
            .routed(AddressFamily::Inet)?
            .into_iter()
            .filter_map(|(d, len)| match d {
                RouteAddress::Inet(d) => Some((d, len)),
                _ => None,
            })
            .collect())
    }

    /// The IPv6 subnets routed on this host (a picked ULA /64 stays off them), the
    /// default route left out.
    pub fn routed_subnets6(&mut self) -> Result<Vec<super::Ipv6Net>, LinkError> {
        Ok(self
            .routed(AddressFamily::Inet6)?
            .into_iter()
            .filter_map(|(d, len)| match d {
                RouteAddress::Inet6(d) => format!("{d}/{len}").parse().ok(),
                _ => None,
            })
            .collect())
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn describe(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        alias: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
