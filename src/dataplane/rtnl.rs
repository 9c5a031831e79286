//! The one place that talks rtnetlink: every request goes through `Rtnl`, and every failure
//! comes back as an `NlError` with a typed `NlKind`, so the dataplane logic never looks at an
//! errno.
//!
//! Reads (single lookups and dumps) are sent as raw requests rather than through rtnetlink's
//! `get()` builders, because the connection forwards `NLMSG_DONE` (see `NetlinkDataplane::new`)
//! to let us see `NLM_F_DUMP_INTR`, and rtnetlink's read streams treat a forwarded `DONE` as an
//! unexpected message.

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use rtnetlink::{Handle, LinkUnspec};

/// `IFLA_BRPORT_MODE`: the bridge port's hairpin switch (`linux/if_link.h`).
const IFLA_BRPORT_MODE: u16 = 4;

/// How often a dump interrupted by a concurrent change is retried; the CNI plugins'
/// `netlinksafe` package uses the same bound.
const DUMP_ATTEMPTS: usize = 5;

/// What kind of failure a netlink request met, as far as the dataplane cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NlKind {
    /// ENODEV / ENOENT: the object is not there.
    NotFound,
    /// EEXIST: an object with that name or address is already there.
    Exists,
    /// EBUSY.
    Busy,
    /// A dump kept being interrupted by concurrent changes.
    Interrupted,
    /// Anything else.
    Other,
}

/// A classified netlink failure; `detail` is the kernel's text for logs and error messages.
#[derive(Debug, Clone)]
pub(crate) struct NlError {
    pub(crate) kind: NlKind,
    pub(crate) detail: String,
}

impl NlError {
    fn other(detail: impl Into<String>) -> Self {
        NlError {
            kind: NlKind::Other,
            detail: detail.into(),
        }
    }

    fn from_errno(raw: i32) -> Self {
        let errno = Errno::from_raw(raw.abs());
        let kind = match errno {
            Errno::ENODEV | Errno::ENOENT => NlKind::NotFound,
            Errno::EEXIST => NlKind::Exists,
            Errno::EBUSY => NlKind::Busy,
            Errno::EINTR => NlKind::Interrupted,
            _ => NlKind::Other,
        };
        NlError {
            kind,
            detail: format!("{} ({})", errno.desc(), errno),
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl From<rtnetlink::Error> for NlError {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) => NlError::from_errno(msg.raw_code()),
            other => NlError::other(other.to_string()),
        }
    }
}

/// The kind of a link, from `IFLA_INFO_KIND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkKind {
    Bridge,
    Veth,
    /// Any other kind, or none (e.g. a physical NIC or `lo`).
    Other(String),
}

/// The parts of a link message the dataplane decides on.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) kind: LinkKind,
    /// Index of the master (bridge) this link is enslaved to.
    pub(crate) controller: Option<u32>,
    pub(crate) up: bool,
    pub(crate) promisc: bool,
    pub(crate) mac: Option<Vec<u8>>,
    pub(crate) mtu: Option<u32>,
    /// For a veth: the peer's index (`IFLA_LINK`).
    pub(crate) peer_index: Option<u32>,
    /// For a veth: set when the peer lives in another namespace.
    pub(crate) peer_in_other_netns: bool,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: LinkKind::Other(String::new()),
            controller: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            mac: None,
            mtu: None,
            peer_index: None,
            peer_in_other_netns: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) if index != 0 => link.controller = Some(index),
                LinkAttribute::Address(mac) => link.mac = Some(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                LinkAttribute::Link(index) if index != 0 => link.peer_index = Some(index),
                LinkAttribute::LinkNetNsId(_) => link.peer_in_other_netns = true,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = match kind {
                                InfoKind::Bridge => LinkKind::Bridge,
                                InfoKind::Veth => LinkKind::Veth,
                                other => LinkKind::Other(other.to_string()),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A cloned rtnetlink handle plus the error mapping; cheap to clone.
#[derive(Clone)]
pub(crate) struct Rtnl {
    handle: Handle,
    /// The kernel runs one dump at a time per netlink socket and answers a second one with
    /// EBUSY; every request shares this socket (twenty parallel CreateNetworks list twenty
    /// bridges' addresses at once), so dumps take turns. They are short: one link's addresses
    /// or one bridge's ports.
    dumps: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Rtnl {
    pub(crate) fn new(handle: Handle) -> Self {
        Rtnl {
            handle,
            dumps: Default::default(),
        }
    }

    /// Look a link up by name; a missing link is `Ok(None)`.
    pub(crate) async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NlError> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(query));
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(req).map_err(NlError::from)?;
        let mut found = None;
        while let Some(msg) = responses.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    found = Some(Link::from_message(link));
                }
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    let err = NlError::from_errno(err.raw_code());
                    return match err.kind {
                        NlKind::NotFound => Ok(None),
                        _ => Err(err),
                    };
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// All links enslaved to `controller`. The kernel filters the dump by `IFLA_MASTER`; the
    /// result is filtered again here so an old kernel ignoring the filter cannot mislead us.
    pub(crate) async fn links_with_controller(
        &self,
        controller: u32,
    ) -> Result<Vec<Link>, NlError> {
        let mut query = LinkMessage::default();
        query.attributes.push(LinkAttribute::Controller(controller));
        let links = self
            .dump(RouteNetlinkMessage::GetLink(query), |msg| match msg {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .await?;
        Ok(links
            .into_iter()
            .filter(|l| l.controller == Some(controller))
            .collect())
    }

    /// The addresses (with prefix) on the link with that index. With strict checking on the
    /// socket the kernel filters by the index; the result is filtered again here for kernels
    /// that dump every link's addresses.
    pub(crate) async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NlError> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Unspec;
        query.header.index = index;
        let all = match self
            .dump(RouteNetlinkMessage::GetAddress(query), |msg| match msg {
                RouteNetlinkMessage::NewAddress(addr) => Some(addr),
                _ => None,
            })
            .await
        {
            Ok(all) => all,
            // A filtered dump of a link that is gone is ENODEV; unfiltered it was empty.
            Err(e) if e.kind == NlKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(all
            .into_iter()
            .filter(|a| a.header.index == index)
            .filter_map(|a| address_of(&a))
            .collect())
    }

    /// `RTM_NEWLINK` with `NLM_F_CREATE|NLM_F_EXCL`.
    pub(crate) async fn add_link(&self, msg: LinkMessage) -> Result<(), NlError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Change an existing link (`RTM_SETLINK`); the message names it by index or name.
    pub(crate) async fn set_link(&self, msg: LinkMessage) -> Result<(), NlError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Change bridge-port attributes (`RTM_NEWLINK` without create flags, which `RTM_SETLINK`
    /// cannot do for `IFLA_INFO_SLAVE_DATA`).
    pub(crate) async fn set_port(&self, msg: LinkMessage) -> Result<(), NlError> {
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Bring a link up.
    pub(crate) async fn set_up(&self, index: u32) -> Result<(), NlError> {
        self.set_link(LinkUnspec::new_with_index(index).up().build())
            .await
    }

    /// Delete a link by name in one request; the kernel resolves `IFLA_IFNAME`.
    pub(crate) async fn del_link_by_name(&self, name: &str) -> Result<(), NlError> {
        let msg = LinkUnspec::new_with_name(name).build();
        self.handle
            .link()
            .del_with_message(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// `RTM_DELLINK` with a message of our own (a group delete: index 0 and `IFLA_GROUP`).
    pub(crate) async fn del_link_with(&self, msg: LinkMessage) -> Result<(), NlError> {
        self.handle
            .link()
            .del_with_message(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Delete a link by index.
    pub(crate) async fn del_link(&self, index: u32) -> Result<(), NlError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Add an address (with its prefix) to a link.
    pub(crate) async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NlError> {
        self.handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Remove an address (with its prefix) from a link.
    pub(crate) async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NlError> {
        let mut msg = AddressMessage::default();
        msg.header.family = match addr {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        if addr.addr().is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(NlError::from)
    }

    /// Set a bridge port's hairpin mode the way the CNI plugins' netlink library does: an
    /// `AF_BRIDGE` `RTM_SETLINK` carrying a nested `IFLA_PROTINFO`, which the bridge's
    /// `ndo_bridge_setlink` applies to the port.
    pub(crate) async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
        ]));
        self.set_link(msg).await
    }

    /// A traffic-control request (qdisc or filter, new or delete) with `flags` added to
    /// `NLM_F_REQUEST | NLM_F_ACK`; rtnetlink's tc builders cannot name a filter's handle.
    pub(crate) async fn tc(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(req).map_err(NlError::from)?;
        while let Some(msg) = responses.next().await {
            if let NetlinkPayload::Error(err) = msg.payload {
                if err.code.is_some() {
                    return Err(NlError::from_errno(err.raw_code()));
                }
            }
        }
        Ok(())
    }

    /// Run a dump, retrying when the kernel flags it `NLM_F_DUMP_INTR` (the object list changed
    /// while it was being walked, so the answer may be inconsistent) or reports EINTR/overrun.
    async fn dump<T>(
        &self,
        request: RouteNetlinkMessage,
        pick: impl Fn(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NlError> {
        let _turn = self.dumps.lock().await;
        for _ in 0..DUMP_ATTEMPTS {
            let mut req = NetlinkMessage::from(request.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut handle = self.handle.clone();
            let mut responses = handle.request(req).map_err(NlError::from)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(msg) = responses.next().await {
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => out.extend(pick(inner)),
                    NetlinkPayload::Done(_) => break,
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        let err = NlError::from_errno(err.raw_code());
                        if err.kind != NlKind::Interrupted {
                            return Err(err);
                        }
                        interrupted = true;
                        break;
                    }
                    NetlinkPayload::Overrun(_) => {
                        interrupted = true;
                        break;
                    }
                    _ => {}
                }
            }
            if !interrupted {
                return Ok(out);
            }
            tracing::debug!("netlink dump interrupted by a concurrent change; retrying");
        }
        Err(NlError {
            kind: NlKind::Interrupted,
            detail: format!("dump interrupted {DUMP_ATTEMPTS} times by concurrent changes"),
        })
    }
}

/// The address of an `RTM_NEWADDR` message: `IFA_LOCAL` is the interface's own address on
/// IPv4 (`IFA_ADDRESS` is the peer on point-to-point links); IPv6 only sends `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut local: Option<IpAddr> = None;
    let mut address: Option<IpAddr> = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_kinds() {
        assert_eq!(NlError::from_errno(-19).kind, NlKind::NotFound);
        assert_eq!(NlError::from_errno(-2).kind, NlKind::NotFound);
        assert_eq!(NlError::from_errno(-17).kind, NlKind::Exists);
        assert_eq!(NlError::from_errno(-16).kind, NlKind::Busy);
        assert_eq!(NlError::from_errno(-4).kind, NlKind::Interrupted);
        assert_eq!(NlError::from_errno(-1).kind, NlKind::Other);
        assert!(NlError::from_errno(-19).detail.contains("ENODEV"));
    }
}
