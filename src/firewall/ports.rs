//! Published ports (`docker run -p`): the firewall intent of one endpoint.
//!
//! `EndpointPorts` is what the driver hands to `Firewall::add_ports` and stores in the endpoint
//! record, so `reconcile` can replay it after a restart. Its mappings are *resolved*: host port 0
//! and Docker's "any port of this range" requests were already turned into concrete ports by
//! the driver, and a range here maps one to one (`8000-8001` → container `80-81`).

use std::fmt;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{safe_name, FirewallError};

/// Transport protocol of a mapping (Docker's `Proto` numbers are the IANA ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// 6.
    Tcp,
    /// 17.
    Udp,
    /// 132.
    Sctp,
}

impl Proto {
    /// The protocol of an IANA protocol number, if it is one Docker publishes.
    pub fn from_number(n: u64) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The name iptables and Docker's CLI use (`tcp`, `udp`, `sctp`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CNI portmap's keys for a network's published ports. The default is portmap's default,
/// which is what cnibridge always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOptions {
    /// `snat`: mark hairpin and localhost connections for masquerade.
    pub snat: bool,
    /// `masqAll`: mark connections from any source, not only the container subnet and localhost.
    #[serde(default)]
    pub masq_all: bool,
    /// `markMasqBit`: the fwmark bit (0..=31) of the masquerade mark.
    pub mark_masq_bit: u8,
    /// `externalSetMarkChain`: the operator's chain (nat table) that sets the mark instead of
    /// ours; with it cnibridge neither creates the chain nor masquerades for this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_set_mark_chain: Option<String>,
    /// `conditionsV4` / `conditionsV6`: iptables match arguments (one per element) added to
    /// the rules that send host-port traffic to this network's containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions_v4: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions_v6: Vec<String>,
}

/// CNI portmap's default `markMasqBit` (the mark 0x2000).
pub const DEFAULT_MASQ_BIT: u8 = 13;

impl Default for PortOptions {
    fn default() -> Self {
        PortOptions {
            snat: true,
            masq_all: false,
            mark_masq_bit: DEFAULT_MASQ_BIT,
            external_set_mark_chain: None,
            conditions_v4: Vec::new(),
            conditions_v6: Vec::new(),
        }
    }
}

/// An address family, for deciding which mappings go into iptables and which into ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// One published port or run of ports, resolved: host ports `host_port..=host_port_end` map one
/// to one onto container ports `container_port..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Transport protocol.
    pub proto: Proto,
    /// First container port.
    pub container_port: u16,
    /// The host address the port is published on. `None` is Docker's empty `HostIP`: every
    /// address of both families. `0.0.0.0` / `::` are every address of that family only.
    pub host_ip: Option<IpAddr>,
    /// First host port (never 0 once resolved).
    pub host_port: u16,
    /// Last host port; equal to `host_port` for a single port.
    pub host_port_end: u16,
}

impl PortMapping {
    /// A single host port mapped onto a single container port.
    pub fn single(proto: Proto, host_ip: Option<IpAddr>, host_port: u16, container: u16) -> Self {
        PortMapping {
            proto,
            container_port: container,
            host_ip,
            host_port,
            host_port_end: host_port,
        }
    }

    /// Number of ports in the run minus one.
    fn span(&self) -> u16 {
        self.host_port_end.saturating_sub(self.host_port)
    }

    /// Last container port of the run.
    pub fn container_port_end(&self) -> u16 {
        self.container_port.saturating_add(self.span())
    }

    /// Whether the mapping is served by that family's tables.
    pub fn in_family(&self, family: IpFamily) -> bool {
        matches!(
            (self.host_ip, family),
            (None, _) | (Some(IpAddr::V4(_)), IpFamily::V4) | (Some(IpAddr::V6(_)), IpFamily::V6)
        )
    }

    /// The host address to match on, if the mapping is bound to one (not all addresses).
    pub fn specific_host_ip(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    /// Published on a loopback address (`127.0.0.1`): reachable from the host only.
    pub fn on_loopback(&self) -> bool {
        self.host_ip.is_some_and(|ip| ip.is_loopback())
    }

    /// Whether a connection from the host to `127.0.0.1:<port>` must reach the container
    /// (IPv4, published on every address or on a loopback one), which needs the localhost
    /// mark and `route_localnet` on the bridge.
    pub fn reachable_via_localhost(&self) -> bool {
        match self.host_ip {
            None => true,
            Some(IpAddr::V4(ip)) => ip.is_unspecified() || ip.is_loopback(),
            Some(IpAddr::V6(_)) => false,
        }
    }

    /// Whether both mappings claim a common host port: same protocol, overlapping port runs
    /// and host addresses that overlap (unset covers everything, `0.0.0.0`/`::` cover their
    /// family).
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port <= other.host_port_end
            && other.host_port <= self.host_port_end
            && host_ips_overlap(self.host_ip, other.host_ip)
    }
}

/// Whether two host address selections share an address.
pub fn host_ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified() || a == b)
        }
    }
}

impl fmt::Display for PortMapping {
    /// `8080/tcp`, `127.0.0.1:8080/tcp`, `[::1]:8000-8001/udp`, then `->80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}", self.host_port)?;
        if self.span() > 0 {
            write!(f, "-{}", self.host_port_end)?;
        }
        write!(f, "/{}->{}", self.proto, self.container_port)?;
        if self.span() > 0 {
            write!(f, "-{}", self.container_port_end())?;
        }
        Ok(())
    }
}

/// The published ports of one endpoint: everything the firewall needs to install (and later
/// remove or replay) its rules, without looking at anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPorts {
    /// Docker NetworkID.
    pub network_id: String,
    /// Docker EndpointID.
    pub endpoint_id: String,
    /// The network's bridge (where the DNATed traffic leaves).
    pub bridge: String,
    /// The container's IPv4 address with the network's prefix length: the address is the DNAT
    /// target, the subnet is the source the hairpin rule marks for masquerade.
    pub container_ipv4: Option<Ipv4Net>,
    /// The same for IPv6.
    pub container_ipv6: Option<Ipv6Net>,
    /// The mappings, resolved.
    pub mappings: Vec<PortMapping>,
    /// The network's portmap keys, carried with the ports so they are installed (and replayed
    /// from the endpoint record) without looking at the network.
    #[serde(default)]
    pub options: PortOptions,
}

impl EndpointPorts {
    /// Whether any IPv4 mapping answers on `127.0.0.1`.
    pub fn needs_route_localnet(&self) -> bool {
        self.container_ipv4.is_some() && self.mappings.iter().any(|m| m.reachable_via_localhost())
    }
}

fn invalid(field: &'static str, value: String, reason: &'static str) -> FirewallError {
    FirewallError::Invalid {
        field,
        value,
        reason,
    }
}

/// Check that portmap's keys can go into rules: a chain name that is one, a mark bit of 32,
/// and conditions on one line without quotes (each is pasted into a restore script).
pub fn validate_port_options(o: &PortOptions) -> Result<(), FirewallError> {
    if let Some(chain) = &o.external_set_mark_chain {
        if !safe_name(chain) || chain.len() > 28 {
            return Err(invalid(
                "externalSetMarkChain",
                chain.clone(),
                "must be an iptables chain name of 1-28 letters, digits, '_', '.', '-'",
            ));
        }
    }
    if o.mark_masq_bit > 31 {
        return Err(invalid(
            "markMasqBit",
            o.mark_masq_bit.to_string(),
            "must be a bit number from 0 to 31",
        ));
    }
    for c in o.conditions_v4.iter().chain(&o.conditions_v6) {
        if c.trim().is_empty()
            || c.contains(['\n', '\r', '"', '\'', '#'])
            || c.contains(" -j ")
            || c.starts_with("-j ")
            || c.contains(" -g ")
        {
            return Err(invalid(
                "conditionsV4/conditionsV6",
                c.clone(),
                "must be iptables match arguments on one line, without quotes, '#' or a -j/-g target",
            ));
        }
    }
    Ok(())
}

/// Check that an endpoint's ports can go into rules: safe names, real ports, runs that stay
/// within 1–65535, and a container address for every family a mapping is bound to.
pub fn validate_ports(p: &EndpointPorts) -> Result<(), FirewallError> {
    validate_port_options(&p.options)?;
    for (field, value) in [
        ("network_id", &p.network_id),
        ("endpoint_id", &p.endpoint_id),
    ] {
        if !safe_name(value) {
            return Err(invalid(
                field,
                value.clone(),
                "must be non-empty, not start with '-' and only contain letters, digits, '_', '.', '-'",
            ));
        }
    }
    if !safe_name(&p.bridge) || p.bridge.len() > 15 {
        return Err(invalid(
            "bridge",
            p.bridge.clone(),
            "must be an interface name of 1-15 letters, digits, '_', '.', '-', not starting with '-'",
        ));
    }
    if p.container_ipv4.is_none() && p.container_ipv6.is_none() {
        return Err(invalid(
            "container address",
            "none".into(),
            "an endpoint needs an address to publish ports to",
        ));
    }
    for m in &p.mappings {
        let bad = |reason| invalid("mapping", m.to_string(), reason);
        if m.host_port == 0 || m.container_port == 0 {
            return Err(bad(
                "ports are 1-65535 (host port 0 is resolved before this)",
            ));
        }
        if m.host_port_end < m.host_port
            || u32::from(m.container_port) + u32::from(m.span()) > u32::from(u16::MAX)
        {
            return Err(bad(
                "the host range must be ascending and the container range fit in 1-65535",
            ));
        }
        match m.host_ip {
            Some(ip) if ip.is_multicast() => {
                return Err(bad("a multicast address cannot be published on"))
            }
            Some(IpAddr::V6(ip)) if ip.is_loopback() => {
                return Err(bad(
                    "IPv6 has no route_localnet: a port on ::1 cannot be forwarded to a container",
                ))
            }
            Some(IpAddr::V4(_)) if p.container_ipv4.is_none() => {
                return Err(bad("an IPv4 host address needs an IPv4 container address"))
            }
            Some(IpAddr::V6(_)) if p.container_ipv6.is_none() => {
                return Err(bad("an IPv6 host address needs an IPv6 container address"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// 20 hex digits identifying (network, endpoint), for chain names: FNV-1a (64 bit) over the
/// two ids, once in each order. Any stable function would do; this one needs no dependency and
/// is pinned by a test, since installed chain names must not change between versions (a
/// change would only leave work to `reconcile`, which removes chains nobody claims).
pub fn endpoint_hash(network_id: &str, endpoint_id: &str) -> String {
    // NUL separates the ids (it cannot occur in either), so ("ab", "c") and ("a", "bc") differ.
    fn fnv1a(first: &str, second: &str) -> u64 {
        let bytes = first.bytes().chain([0u8]).chain(second.bytes());
        bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    let a = fnv1a(network_id, endpoint_id);
    let b = fnv1a(endpoint_id, network_id);
    format!("{a:016x}{b:016x}")[..20].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_ip: Option<&str>, from: u16, to: u16) -> PortMapping {
        PortMapping {
            proto: Proto::Tcp,
            container_port: 80,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
            host_port: from,
            host_port_end: to,
        }
    }

    #[test]
    fn overlap_follows_docker_host_ip_semantics() {
        // Unset HostIP covers both families; 0.0.0.0 only IPv4; specific addresses only
        // themselves.
        assert!(m(None, 8080, 8080).overlaps(&m(Some("127.0.0.1"), 8080, 8080)));
        assert!(m(None, 8080, 8080).overlaps(&m(Some("::1"), 8080, 8080)));
        assert!(m(Some("0.0.0.0"), 8080, 8080).overlaps(&m(Some("10.0.0.1"), 8080, 8080)));
        assert!(!m(Some("0.0.0.0"), 8080, 8080).overlaps(&m(Some("::"), 8080, 8080)));
        assert!(!m(Some("10.0.0.1"), 8080, 8080).overlaps(&m(Some("10.0.0.2"), 8080, 8080)));
        assert!(m(None, 8000, 8010).overlaps(&m(None, 8010, 8020)));
        assert!(!m(None, 8000, 8009).overlaps(&m(None, 8010, 8020)));
        let udp = PortMapping {
            proto: Proto::Udp,
            ..m(None, 8080, 8080)
        };
        assert!(!udp.overlaps(&m(None, 8080, 8080)));
    }

    #[test]
    fn display_names_the_binding() {
        assert_eq!(m(None, 8080, 8080).to_string(), "8080/tcp->80");
        assert_eq!(
            m(Some("127.0.0.1"), 8000, 8001).to_string(),
            "127.0.0.1:8000-8001/tcp->80-81"
        );
        assert_eq!(m(Some("fd00::1"), 5, 5).to_string(), "[fd00::1]:5/tcp->80");
    }

    #[test]
    fn chain_hash_is_stable_and_short() {
        let h = endpoint_hash("net", "ep");
        assert_eq!(h.len(), 20);
        assert_eq!(h, endpoint_hash("net", "ep"));
        assert_ne!(h, endpoint_hash("ep", "net"));
        // Pinned: installed chains are found again by this name after an upgrade.
        assert_eq!(h, "7cbd3052e4ff1265dfc4");
    }

    #[test]
    fn validation_names_what_cannot_be_installed() {
        let base = EndpointPorts {
            network_id: "n1".into(),
            endpoint_id: "e1".into(),
            bridge: "br0".into(),
            container_ipv4: Some("10.1.0.2/24".parse().unwrap()),
            container_ipv6: None,
            mappings: vec![m(None, 8080, 8080)],
            options: Default::default(),
        };
        assert!(validate_ports(&base).is_ok());
        for (mapping, needle) in [
            (m(Some("::1"), 8080, 8080), "::1"),
            (m(Some("fd00::1"), 8080, 8080), "IPv6 container address"),
            (m(None, 0, 0), "1-65535"),
            (m(None, 9, 8), "ascending"),
            (
                PortMapping {
                    container_port: 65535,
                    ..m(None, 1, 2)
                },
                "fit",
            ),
        ] {
            let bad = EndpointPorts {
                mappings: vec![mapping],
                ..base.clone()
            };
            let err = validate_ports(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let no_addr = EndpointPorts {
            container_ipv4: None,
            ..base.clone()
        };
        assert!(validate_ports(&no_addr).is_err());
        let bad_id = EndpointPorts {
            endpoint_id: "e 1".into(),
            ..base
        };
        assert!(validate_ports(&bad_id).is_err());
    }
}
