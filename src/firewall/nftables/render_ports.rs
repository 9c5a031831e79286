//! The pure half of published ports in the nftables backend: one endpoint's rules, and the
//! script that adds, replaces or removes them in one transaction.
//!
//! ```text
//! prerouting/output ─▶ hostports: per endpoint and mapping  [daddr hostip] P dport H ─▶ dnat-<hash>
//! dnat-<hash>, per mapping and family:
//!     saddr <container subnet> ... mark |= 0x2000        hairpin (not for 127.0.0.1)
//!     ip saddr 127.0.0.0/8     ... mark |= 0x2000        localhost (IPv4)
//!     ... dnat to <container>:<port>                     (127.0.0.1: only from 127.0.0.0/8)
//! postrouting: marked → masquerade (render)
//! published (jumped to from forward after isolation):
//!     daddr <container> oifname <bridge> P dport <container port> ct status dnat accept
//! ```
//!
//! The pieces are those of the iptables backend (see its `render_ports`) for the same reasons:
//! the mark brings the reply of a hairpinned or localhost connection back through the host,
//! 127.0.0.0/8 destinations never enter `hostports` from prerouting (a neighbour's packet to
//! 127.0.0.1 is not DNATed past the martian check), and the forward accept needs `ct status
//! dnat`, so only published traffic reaches the container port. A run of ports maps one to one
//! through a map (nft 1.0.6 does not parse iptables' `/base` offset); a run whose container
//! ports equal its host ports keeps the port and needs none.
//!
//! Atomic per endpoint without rewriting the table: the endpoint's own nat chain is created or
//! flushed and refilled, the two dispatch chains (`hostports`, `published`) are flushed and
//! rewritten from every endpoint's rules, and chains no longer used are deleted, all in one
//! `nft -f -`. The dispatch chains hold one rule per mapping, a small text even with many
//! endpoints, and nothing else of the table (network rules, other endpoints' chains) is touched.

use std::net::IpAddr;

use super::render::{kw, nfproto, Family, Rule, FAMILIES, MASQ_MARK, TABLE};
use crate::firewall::iptables::endpoint_comment;
use crate::firewall::ports::{endpoint_hash, IpFamily, PortMapping};
use crate::firewall::EndpointPorts;

/// Dispatch chain for local destinations; one jump per published mapping.
pub const HOSTPORTS_CHAIN: &str = "hostports";
/// Forward accepts of published container ports.
pub const PUBLISHED_CHAIN: &str = "published";
/// Prefix of an endpoint's nat chain.
pub const DNAT_PREFIX: &str = "dnat-";

/// The nat chain of an endpoint: `dnat-` and the 20 hex digits the iptables backend uses too.
pub fn dnat_chain(network_id: &str, endpoint_id: &str) -> String {
    format!("{DNAT_PREFIX}{}", endpoint_hash(network_id, endpoint_id))
}

/// One endpoint's rules, both families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRules {
    /// The endpoint's nat chain.
    pub dnat_chain: String,
    /// Its content (empty: the endpoint publishes nothing, and has no chain).
    pub dnat_rules: Vec<Rule>,
    /// Its rules of `hostports`.
    pub dispatch: Vec<Rule>,
    /// Its rules of `published`.
    pub published: Vec<Rule>,
}

fn ports(m: &PortMapping, from: u16, to: u16) -> String {
    let p = m.proto.name();
    if to > from {
        format!("{p} dport {from}-{to}")
    } else {
        format!("{p} dport {from}")
    }
}

/// Matches selecting the family and, where given, source and destination: `ip saddr S ip
/// daddr D`, or `meta nfproto ipv4` when neither is given.
fn addresses(family: Family, saddr: Option<&str>, daddr: Option<IpAddr>) -> String {
    let ip = kw(family);
    let mut parts = Vec::new();
    if let Some(s) = saddr {
        parts.push(format!("{ip} saddr {s}"));
    }
    if let Some(d) = daddr {
        parts.push(format!("{ip} daddr {d}"));
    }
    if parts.is_empty() {
        parts.push(format!("meta nfproto {}", nfproto(family)));
    }
    parts.join(" ")
}

/// The DNAT statement of `m` to `addr`.
fn dnat(family: Family, addr: IpAddr, m: &PortMapping) -> String {
    let ip = kw(family);
    let host = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if m.host_port_end == m.host_port {
        return format!("dnat {ip} to {host}:{}", m.container_port);
    }
    if m.container_port == m.host_port {
        // The port stays as it is.
        return format!("dnat {ip} to {addr}");
    }
    let pairs: Vec<String> = (m.host_port..=m.host_port_end)
        .zip(m.container_port..=m.container_port_end())
        .map(|(h, c)| format!("{h} : {c}"))
        .collect();
    format!(
        "dnat {ip} to {host} : {} dport map {{ {} }}",
        m.proto.name(),
        pairs.join(", ")
    )
}

/// The rules of `p` (both families; none for a family without a container address or mapping).
pub fn endpoint_rules(p: &EndpointPorts) -> EndpointRules {
    let chain = dnat_chain(&p.network_id, &p.endpoint_id);
    let c = format!("comment \"{}\"", endpoint_comment(&p.endpoint_id));
    let mut r = EndpointRules {
        dnat_chain: chain.clone(),
        dnat_rules: Vec::new(),
        dispatch: Vec::new(),
        published: Vec::new(),
    };
    for family in FAMILIES {
        let (addr, subnet, fam): (IpAddr, String, IpFamily) = match family {
            Family::V4 => match p.container_ipv4 {
                Some(n) => (IpAddr::V4(n.addr()), n.trunc().to_string(), IpFamily::V4),
                None => continue,
            },
            Family::V6 => match p.container_ipv6 {
                Some(n) => (IpAddr::V6(n.addr()), n.trunc().to_string(), IpFamily::V6),
                None => continue,
            },
        };
        for m in p.mappings.iter().filter(|m| m.in_family(fam)) {
            let dst = m.specific_host_ip();
            let on_host = ports(m, m.host_port, m.host_port_end);
            let rule = |text: String| Rule::new(&chain, text);
            r.dispatch.push(Rule::new(
                HOSTPORTS_CHAIN,
                format!(
                    "{} {on_host} jump {chain} {c}",
                    addresses(family, None, dst)
                ),
            ));
            let mark = format!("meta mark set meta mark | {MASQ_MARK}");
            // portmap's snat off: hairpin and localhost connections are left alone; masqAll:
            // every connection is marked.
            if p.options.snat && p.options.masq_all {
                r.dnat_rules.push(rule(format!(
                    "{} {on_host} {mark} {c}",
                    addresses(family, None, dst)
                )));
            }
            let by_source = p.options.snat && !p.options.masq_all;
            if by_source && !m.on_loopback() {
                r.dnat_rules.push(rule(format!(
                    "{} {on_host} {mark} {c}",
                    addresses(family, Some(&subnet), dst)
                )));
            }
            if by_source && family == Family::V4 && m.reachable_via_localhost() {
                r.dnat_rules.push(rule(format!(
                    "{} {on_host} {mark} {c}",
                    addresses(family, Some("127.0.0.0/8"), dst)
                )));
            }
            // A port on 127.0.0.1 is DNATed only for the host's own loopback traffic.
            let src = m.on_loopback().then_some("127.0.0.0/8");
            r.dnat_rules.push(rule(format!(
                "{} {on_host} {} {c}",
                addresses(family, src, dst),
                dnat(family, addr, m)
            )));
            if !m.on_loopback() {
                let accept = Rule::new(
                    PUBLISHED_CHAIN,
                    format!(
                        "{} oifname \"{}\" {} ct status dnat accept {c}",
                        addresses(family, None, Some(addr)),
                        p.bridge,
                        ports(m, m.container_port, m.container_port_end())
                    ),
                );
                if !r.published.contains(&accept) {
                    r.published.push(accept);
                }
            }
        }
    }
    r
}

/// The script that turns `old` (what is installed for this endpoint, if anything) into `new`
/// (`None` = remove), given `all`: every endpoint's ports once the change is made (so with `new`
/// and without `old`), in the order they are kept. One transaction touching only this
/// endpoint's chain and the two dispatch chains. It fails as a whole if our table or a chain
/// it jumps to is gone; the caller then rewrites the table.
pub fn render_port_update(
    all: &[EndpointPorts],
    old: Option<&EndpointPorts>,
    new: Option<&EndpointPorts>,
) -> String {
    let new = new.map(endpoint_rules).filter(|e| !e.dnat_rules.is_empty());
    let old = old.map(endpoint_rules).filter(|e| !e.dnat_rules.is_empty());
    let mut out = String::new();
    if let Some(e) = &new {
        // `add` creates the chain or leaves it be; the flush empties it either way.
        out.push_str(&format!(
            "add chain {TABLE} {0}\nflush chain {TABLE} {0}\n",
            e.dnat_chain
        ));
        for r in &e.dnat_rules {
            out.push_str(&r.add_command());
        }
    }
    out.push_str(&render_dispatch(all));
    if let Some(o) = old.filter(|o| new.as_ref().map(|n| &n.dnat_chain) != Some(&o.dnat_chain)) {
        out.push_str(&render_chain_removal(&o.dnat_chain));
    }
    out
}

/// The two dispatch chains (`hostports`, `published`) flushed and rewritten from `all`, every
/// endpoint's ports.
pub fn render_dispatch(all: &[EndpointPorts]) -> String {
    let mut out = String::new();
    let every: Vec<EndpointRules> = all.iter().map(endpoint_rules).collect();
    for chain in [HOSTPORTS_CHAIN, PUBLISHED_CHAIN] {
        out.push_str(&format!("flush chain {TABLE} {chain}\n"));
        for e in &every {
            let rules = match chain {
                HOSTPORTS_CHAIN => &e.dispatch,
                _ => &e.published,
            };
            for r in rules {
                out.push_str(&r.add_command());
            }
        }
    }
    out
}

/// Delete an endpoint chain no longer referenced (once the dispatch chains are rewritten);
/// `add` first so a chain someone deleted already does not fail the transaction.
pub fn render_chain_removal(chain: &str) -> String {
    format!("add chain {TABLE} {chain}\ndelete chain {TABLE} {chain}\n")
}

#[cfg(test)]
#[path = "render_ports_tests.rs"]
mod tests;
