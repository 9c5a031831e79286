//! Forgetting the connection-tracking entries of freshly published UDP ports, as Docker's
//! bridge does. UDP has no handshake: a client that sent to a host port before it was published
//! (a DNS or syslog client retrying) has a conntrack entry towards the host itself, and the
//! kernel keeps matching its datagrams to that entry (refreshing it with every datagram), so
//! they would never see the new DNAT rule and never reach the container.
//!
//! How: one ctnetlink dump of the conntrack table per address family, and a delete, by its
//! original tuple, of every UDP entry whose original destination port is one just published. A
//! failure only delays the new mapping for such clients, so callers log it and go on.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use super::{PortMapping, Proto};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;

/// After an endpoint's ports are published: forget the UDP flows to them, logging the outcome.
pub(crate) async fn after_publish(ports: &super::EndpointPorts) {
    let udp = udp_ports(&ports.mappings);
    if udp.is_empty() {
        return;
    }
    let endpoint = ports
        .endpoint_id
        .get(..12)
        .unwrap_or(&ports.endpoint_id)
        .to_string();
    match tokio::task::spawn_blocking(move || forget_udp_flows(&udp)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(%endpoint, flows = n, "forgot UDP flows that predate the published ports")
        }
        Ok(Err(e)) => {
            tracing::warn!(%endpoint, error = %e, "cannot forget earlier UDP flows to the published ports; their clients reach the container once those flows expire")
        }
        Err(e) => tracing::warn!(%endpoint, error = %e, "conntrack clean-up did not run"),
    }
}

/// The host ports of `mappings` that are UDP.
pub fn udp_ports(mappings: &[PortMapping]) -> BTreeSet<u16> {
    mappings
        .iter()
        .filter(|m| m.proto == Proto::Udp)
        .flat_map(|m| m.host_port..=m.host_port_end)
        .collect()
}

/// Delete the conntrack entries of UDP flows to any of `ports`, in both families, in the
/// calling thread's network namespace. Returns how many were deleted. Blocking.
pub fn forget_udp_flows(ports: &BTreeSet<u16>) -> io::Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let sock = Ctnetlink::open()?;
    let mut deleted = 0;
    for family in [libc_af_inet(), libc_af_inet6()] {
        let doomed: Vec<Vec<u8>> = sock
            .dump(family)?
            .into_iter()
            .filter_map(|msg| orig_tuple(&msg))
            .filter(|tuple| udp_dst_port(tuple).is_some_and(|p| ports.contains(&p)))
            .collect();
        for tuple in doomed {
            // Gone meanwhile (expired, or deleted by someone else) is fine.
            match sock.delete(family, &tuple) {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

fn libc_af_inet() -> u8 {
    nix::libc::AF_INET as u8
}

fn libc_af_inet6() -> u8 {
    nix::libc::AF_INET6 as u8
}

/// A ctnetlink socket; requests are answered in order, one at a time.
struct Ctnetlink {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl Ctnetlink {
    fn open() -> io::Result<Ctnetlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // A blocked kernel answer must not hang a Docker request forever.
        let tv = nix::sys::time::TimeVal::new(5, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        Ok(Ctnetlink {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    fn request(&self, msg_type: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<u32> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let len = NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, res_id 0 (big endian).
        buf.extend_from_slice(&[family, 0, 0, 0]);
        buf.extend_from_slice(attrs);
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty())?;
        Ok(seq)
    }

    /// Every message answering `seq` until DONE (dump) or the ACK/error (single request).
    /// Returns the payloads after the nfgenmsg header.
    fn answers(&self, seq: u32) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let msg_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-nix::libc::EIO);
                        return match code {
                            0 => Ok(out),
                            c => Err(io::Error::from_raw_os_error(-c)),
                        };
                    }
                    _ => out.push(body.get(NFGEN_HDRLEN..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    fn dump(&self, family: u8) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[])?;
        self.answers(seq)
    }

    /// Delete the entry with this original tuple (the attribute as the dump gave it).
    fn delete(&self, family: u8, orig_tuple: &[u8]) -> io::Result<()> {
        let seq = self.request(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            orig_tuple,
        )?;
        self.answers(seq).map(|_| ())
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes in `b`, as (type without flags, whole attribute bytes, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[..len], &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

/// The whole `CTA_TUPLE_ORIG` attribute of one dumped entry.
fn orig_tuple(entry: &[u8]) -> Option<Vec<u8>> {
    attrs(entry)
        .into_iter()
        .find(|(k, _, _)| *k == CTA_TUPLE_ORIG)
        .map(|(_, whole, _)| whole.to_vec())
}

/// The destination port of a UDP original tuple.
fn udp_dst_port(tuple: &[u8]) -> Option<u16> {
    let (_, _, payload) = attrs(tuple).into_iter().next()?;
    let proto = attrs(payload)
        .into_iter()
        .find(|(k, _, _)| *k == CTA_TUPLE_PROTO)?
        .2;
    let fields = attrs(proto);
    let num = fields.iter().find(|(k, _, _)| *k == CTA_PROTO_NUM)?.2;
    if num.first() != Some(&IPPROTO_UDP) {
        return None;
    }
    let port = fields.iter().find(|(k, _, _)| *k == CTA_PROTO_DST_PORT)?.2;
    Some(u16::from_be_bytes([*port.first()?, *port.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// A dumped entry as the kernel nests it: orig tuple { ip { src, dst }, proto { num, ports } }.
    fn entry(proto: u8, dport: u16) -> Vec<u8> {
        let nested = 0x8000;
        let ip = attr(
            1 | nested,
            &[attr(1, &[10, 0, 0, 1]), attr(2, &[10, 0, 0, 2])].concat(),
        );
        let ports = [
            attr(CTA_PROTO_NUM, &[proto]),
            attr(2, &4000u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        let tuple = attr(
            CTA_TUPLE_ORIG | nested,
            &[ip, attr(CTA_TUPLE_PROTO | nested, &ports)].concat(),
        );
        // A reply tuple and a status after it, as in a real entry.
        [tuple, attr(2 | nested, &[]), attr(3, &[0, 0, 0, 8])].concat()
    }

    #[test]
    fn finds_the_udp_destination_port_of_the_original_tuple() {
        let e = entry(IPPROTO_UDP, 9000);
        let tuple = orig_tuple(&e).unwrap();
        assert_eq!(udp_dst_port(&tuple), Some(9000));
        assert_eq!(tuple, attrs(&e)[0].1.to_vec());
        let tcp = entry(6, 9000);
        assert_eq!(udp_dst_port(&orig_tuple(&tcp).unwrap()), None);
    }

    #[test]
    fn garbage_is_ignored_not_a_panic() {
        for b in [&b""[..], &[1, 0], &[200, 0, 1, 0], &[8, 0, 1, 0, 1]] {
            let _ = orig_tuple(b).map(|t| udp_dst_port(&t));
        }
    }

    #[test]
    fn only_udp_ports_count() {
        let ms = [
            PortMapping::single(Proto::Tcp, None, 80, 80),
            PortMapping {
                proto: Proto::Udp,
                container_port: 9000,
                host_ip: None,
                host_port: 9000,
                host_port_end: 9001,
            },
        ];
        assert_eq!(udp_ports(&ms), BTreeSet::from([9000, 9001]));
    }
}
