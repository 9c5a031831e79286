//! Published ports, driver side: Docker's `com.docker.network.portmap` option parsed strictly
//! into requests, and requests resolved into concrete mappings (host port 0 and host ranges
//! picked, conflicts with other endpoints refused) before the firewall sees them.
//!
//! Docker's semantics, from moby `daemon/network.go` (`buildCreateEndpointOptions`) and the
//! bridge driver's port allocator: each entry has one container `Port`. `HostPort` 0 means "any
//! free port" (the ephemeral range); `HostPort < HostPortEnd` (`-p 8000-8010:80`) means "any
//! one free port of that range"; `HostPortEnd` 0 means `HostPort`. A container range
//! (`-p 9000-9001:9000-9001`) arrives as one entry per port; consecutive entries are merged
//! back into one run (`PortMapping` with a host range), so a wide range costs a few rules, not
//! a few per port.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{short, DriverError};
use crate::firewall::{PortMapping, Proto};

/// The option key carrying the port bindings (CreateEndpoint, Join, Program).
pub const PORTMAP: &str = "com.docker.network.portmap";

/// The ephemeral range when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read (the
/// kernel's default).
pub const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// One port binding as Docker asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRequest {
    /// Transport protocol.
    pub proto: Proto,
    /// The container port.
    pub container_port: u16,
    /// `None` for Docker's empty `HostIP` (every address of both families).
    pub host_ip: Option<IpAddr>,
    /// 0 = any free port of the ephemeral range.
    pub host_port: u16,
    /// With `host_port`, a range to pick one port from; equal to `host_port` for one port.
    pub host_port_end: u16,
}

fn field_err(i: usize, field: &str, what: String) -> DriverError {
    DriverError::Invalid(format!("{PORTMAP}[{i}].{field} {what}"))
}

fn port_field(
    i: usize,
    obj: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<u16, DriverError> {
    match obj.get(field) {
        None | Some(Value::Null) if !required => Ok(0),
        None | Some(Value::Null) => Err(field_err(i, field, "is missing".into())),
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| field_err(i, field, format!("{v} is not a port number (0-65535)"))),
    }
}

/// Parse the portmap option. `Ok(None)` when the key is absent (so a caller can fall back to
/// what Join sent), `Ok(Some(vec![]))` for `null` or `[]`. Every field is checked; unknown
/// fields are ignored, as Docker may add some.
pub fn parse_portmap(
    options: &Map<String, Value>,
) -> Result<Option<Vec<PortRequest>>, DriverError> {
    let list = match options.get(PORTMAP) {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(DriverError::Invalid(format!(
                "{PORTMAP} must be a list of port bindings, got {other}"
            )))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let obj = entry.as_object().ok_or_else(|| {
            DriverError::Invalid(format!("{PORTMAP}[{i}] must be an object, got {entry}"))
        })?;
        let proto = match obj.get("Proto") {
            None => return Err(field_err(i, "Proto", "is missing".into())),
            Some(v) => v.as_u64().and_then(Proto::from_number).ok_or_else(|| {
                field_err(
                    i,
                    "Proto",
                    format!("{v} is not tcp (6), udp (17) or sctp (132)"),
                )
            })?,
        };
        let container_port = port_field(i, obj, "Port", true)?;
        if container_port == 0 {
            return Err(field_err(i, "Port", "0 is not a container port".into()));
        }
        let host_ip = match obj.get("HostIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                s.parse::<IpAddr>()
                    .map(|ip| ip.to_canonical())
                    .map_err(|_| field_err(i, "HostIP", format!("{s:?} is not an IP address")))?,
            ),
            Some(v) => return Err(field_err(i, "HostIP", format!("{v} is not a string"))),
        };
        if let Some(v) = obj.get("IP").filter(|v| !v.is_null() && !v.is_string()) {
            return Err(field_err(i, "IP", format!("{v} is not a string")));
        }
        let host_port = port_field(i, obj, "HostPort", false)?;
        let end = port_field(i, obj, "HostPortEnd", false)?;
        let host_port_end = if end == 0 { host_port } else { end };
        if host_port == 0 && end != 0 {
            return Err(field_err(
                i,
                "HostPortEnd",
                format!("{end} is set without a HostPort"),
            ));
        }
        if host_port_end < host_port {
            return Err(field_err(
                i,
                "HostPortEnd",
                format!("{end} is below HostPort {host_port}"),
            ));
        }
        out.push(PortRequest {
            proto,
            container_port,
            host_ip,
            host_port,
            host_port_end,
        });
    }
    Ok(Some(out))
}

/// What the host says about its ports; the driver's only view of them, so tests can fake it.
pub trait HostPorts: Send + Sync + 'static {
    /// The ephemeral range host port 0 is picked from.
    fn ephemeral_range(&self) -> (u16, u16);
    /// Whether no socket of the host holds `port` for `proto` on `host_ip` (`None` = any
    /// address).
    fn is_free(&self, proto: Proto, host_ip: Option<IpAddr>, port: u16) -> bool;
}

/// The real host: `/proc/sys/net/ipv4/ip_local_port_range` and a trial `bind()`. Runs in the
/// daemon's (host) namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHostPorts;

impl HostPorts for SystemHostPorts {
    fn ephemeral_range(&self) -> (u16, u16) {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
                match (it.next().flatten(), it.next().flatten()) {
                    (Some(a), Some(b)) if 0 < a && a <= b => Some((a, b)),
                    _ => None,
                }
            })
            .unwrap_or(DEFAULT_EPHEMERAL)
    }

    fn is_free(&self, proto: Proto, host_ip: Option<IpAddr>, port: u16) -> bool {
        let addrs: Vec<IpAddr> = match host_ip {
            Some(ip) => vec![ip],
            None => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
        };
        addrs
            .into_iter()
            .all(|ip| !bind_in_use(proto, SocketAddr::new(ip, port)))
    }
}

/// Whether binding `addr` fails with EADDRINUSE. Any other failure (an address the host does
/// not have, no IPv6, no SCTP module) means nobody can hold the port there either. The probe
/// binds as docker-proxy would (Go listeners set `SO_REUSEADDR` for TCP, not for UDP): a
/// listener, a bound socket and a connection's local port count, a closed connection in
/// TIME_WAIT does not.
fn bind_in_use(proto: Proto, addr: SocketAddr) -> bool {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockProtocol, SockType};
    use nix::sys::socket::{SockaddrIn, SockaddrIn6};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let (ty, protocol) = match proto {
        Proto::Tcp => (SockType::Stream, SockProtocol::Tcp),
        Proto::Udp => (SockType::Datagram, SockProtocol::Udp),
        Proto::Sctp => (SockType::Stream, SockProtocol::Sctp),
    };
    let Ok(fd) = socket(family, ty, SockFlag::SOCK_CLOEXEC, protocol) else {
        return false;
    };
    if proto != Proto::Udp {
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReuseAddr, &true);
    }
    let res = match addr {
        SocketAddr::V4(a) => bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => {
            // Only this family: a dual-stack [::] bind would report IPv4 holders twice.
            let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::Ipv6V6Only, &true);
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(a))
        }
    };
    res == Err(nix::errno::Errno::EADDRINUSE)
}

/// Every mapping the driver has published, by (network id, endpoint id): the ledger conflicts
/// are checked against. Rebuilt from the endpoint records at start.
pub type PortTable = BTreeMap<(String, String), Vec<PortMapping>>;

/// The address families the endpoint can be reached in.
#[derive(Debug, Clone, Copy)]
pub struct Families {
    /// It has an IPv4 address.
    pub v4: bool,
    /// It has an IPv6 address.
    pub v6: bool,
}

fn port_text(ip: Option<IpAddr>, port: u16, proto: Proto) -> String {
    match ip {
        Some(ip) if !ip.is_unspecified() => match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}/{proto}"),
            IpAddr::V4(v4) => format!("{v4}:{port}/{proto}"),
        },
        _ => format!("{port}/{proto}"),
    }
}

/// Turn one endpoint's requests into mappings: explicit ports checked against every other
/// endpoint's (`table`, without this endpoint) and against the earlier requests, ranges and
/// port 0 resolved to the lowest port that is neither published by us nor bound on the host,
/// consecutive results merged into runs.
pub fn resolve(
    requests: &[PortRequest],
    families: Families,
    table: &PortTable,
    host: &dyn HostPorts,
) -> Result<Vec<PortMapping>, DriverError> {
    let mut chosen: Vec<PortMapping> = Vec::new();
    for r in requests {
        check_family(r, families)?;
        let holder = |m: &PortMapping| -> Option<String> {
            if let Some(((net, ep), _)) = table
                .iter()
                .find(|(_, ms)| ms.iter().any(|other| other.overlaps(m)))
            {
                return Some(format!("endpoint {} (network {})", short(ep), short(net)));
            }
            chosen
                .iter()
                .any(|other| other.overlaps(m))
                .then(|| "this container".to_string())
        };
        let at = |port| PortMapping::single(r.proto, r.host_ip, port, r.container_port);
        let mapping = if r.host_port != 0 && r.host_port == r.host_port_end {
            let m = at(r.host_port);
            let port = port_text(r.host_ip, r.host_port, r.proto);
            if let Some(h) = holder(&m) {
                return Err(DriverError::Invalid(format!(
                    "host port {port} is already published by {h}"
                )));
            }
            // Docker's bridge fails here too (docker-proxy cannot bind); without the check the
            // DNAT would silently take the port's outside traffic from the host's service.
            if !host.is_free(r.proto, r.host_ip, r.host_port) {
                return Err(DriverError::Invalid(format!(
                    "host port {port} is already in use on the host; stop what listens on it or \
                     publish another host port"
                )));
            }
            m
        } else {
            let (from, to) = if r.host_port == 0 {
                host.ephemeral_range()
            } else {
                (r.host_port, r.host_port_end)
            };
            let m = (from..=to)
                .map(at)
                .find(|m| holder(m).is_none() && host.is_free(r.proto, r.host_ip, m.host_port))
                .ok_or_else(|| {
                    DriverError::Invalid(format!(
                        "no free host port in {}-{}/{} for container port {}: all are published or in use",
                        from, to, r.proto, r.container_port
                    ))
                })?;
            tracing::info!(port = %m, "picked a free host port");
            m
        };
        chosen.push(mapping);
    }
    Ok(merge_runs(chosen))
}

fn check_family(r: &PortRequest, f: Families) -> Result<(), DriverError> {
    let problem = match r.host_ip {
        None if !f.v4 && !f.v6 => Some("the endpoint has no address"),
        Some(IpAddr::V4(_)) if !f.v4 => Some("the endpoint has no IPv4 address"),
        Some(IpAddr::V6(_)) if !f.v6 => Some("the endpoint has no IPv6 address"),
        Some(IpAddr::V6(ip)) if ip.is_loopback() => {
            Some("IPv6 loopback cannot be forwarded to a container (no route_localnet for IPv6)")
        }
        Some(ip) if ip.is_multicast() => Some("a multicast address cannot be published on"),
        _ => None,
    };
    match problem {
        Some(p) => Err(DriverError::Invalid(format!(
            "cannot publish {} to container port {}: {p}",
            port_text(r.host_ip, r.host_port, r.proto),
            r.container_port
        ))),
        None => Ok(()),
    }
}

/// Merge mappings whose host and container ports both continue the previous one (same protocol
/// and host address) into one run. Order: by protocol, host address, host port.
pub fn merge_runs(mut ms: Vec<PortMapping>) -> Vec<PortMapping> {
    ms.sort_by_key(|m| (m.proto, m.host_ip, m.host_port));
    let mut out: Vec<PortMapping> = Vec::with_capacity(ms.len());
    for m in ms {
        if let Some(last) = out.last_mut() {
            let continues = last.proto == m.proto
                && last.host_ip == m.host_ip
                && u32::from(last.host_port_end) + 1 == u32::from(m.host_port)
                && u32::from(last.container_port_end()) + 1 == u32::from(m.container_port);
            if continues {
                last.host_port_end = m.host_port_end;
                continue;
            }
        }
        out.push(m);
    }
    out
}

/// The mappings as one line for logs: `8080/tcp->80, 127.0.0.1:5353/udp->53`.
pub fn describe(ms: &[PortMapping]) -> String {
    ms.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "ports_tests.rs"]
mod tests;
