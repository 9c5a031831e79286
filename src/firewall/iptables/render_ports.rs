//! The pure half of published ports: the rules of one endpoint for one address family, and the
//! `iptables-restore --noflush` script that adds, replaces or removes them without touching any
//! other endpoint's rules. Modelled on the CNI portmap plugin.
//!
//! ```text
//! nat PREROUTING  ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL ─▶ CNIBRIDGE-HOSTPORTS
//! nat OUTPUT                       -m addrtype --dst-type LOCAL ─▶ CNIBRIDGE-HOSTPORTS
//! CNIBRIDGE-HOSTPORTS: per endpoint and mapping  [-d hostip] -p P --dport H ─▶ CNIB-DN-<hash>
//! CNIB-DN-<hash>, per mapping:
//!     -s <container subnet> ... ─▶ CNIBRIDGE-HOSTPORT-SETMARK     hairpin (not for 127.0.0.1)
//!     -s 127.0.0.0/8        ... ─▶ CNIBRIDGE-HOSTPORT-SETMARK     localhost (IPv4)
//!     ... -j DNAT --to-destination <container>:<port>            (127.0.0.1: only from -s 127/8)
//! CNIBRIDGE-HOSTPORT-SETMARK: MARK 0x2000/0x2000;  CNIBRIDGE-HOSTPORT-MASQ (first in
//!     CNIBRIDGE-POSTROUTING): marked → MASQUERADE
//! filter CNIBRIDGE-PUBLISHED (in CNIBRIDGE-FORWARD after isolation):
//!     -d <container> -o <bridge> ─▶ CNIB-FW-<hash>: per container port, ctstate DNAT → ACCEPT
//! ```
//!
//! Why each piece: the mark makes the reply of a hairpinned or localhost connection come back
//! through the host (masqueraded to the bridge address), without which the container would
//! answer the other container directly, or could not answer 127.0.0.1 at all. Destinations in
//! 127.0.0.0/8 are kept out of `PREROUTING`'s jump, so a neighbour sending to 127.0.0.1 is never
//! DNATed past the kernel's martian check (moby drops these in raw `PREROUTING` instead). The
//! filter accept matches `--ctstate DNAT`, so it opens the container port to published traffic
//! only, not to anyone who routes to the container address directly. Ranges DNAT with an offset
//! (`a-b/base`) so host port N reaches container port N - base + a exactly, not any port of
//! the range.

use std::net::IpAddr;

use super::render::Family;
pub use crate::firewall::ports::DEFAULT_MASQ_BIT;
use crate::firewall::ports::{endpoint_hash, IpFamily, PortMapping, PortOptions};
use crate::firewall::EndpointPorts;

/// nat chain jumped to for local destinations; holds one jump per published mapping.
pub const HOSTPORTS_CHAIN: &str = "CNIBRIDGE-HOSTPORTS";
/// nat chain setting the masquerade mark.
pub const SETMARK_CHAIN: &str = "CNIBRIDGE-HOSTPORT-SETMARK";
/// nat chain masquerading marked packets, first in `CNIBRIDGE-POSTROUTING`.
pub const MASQ_CHAIN: &str = "CNIBRIDGE-HOSTPORT-MASQ";
/// filter chain accepting forwarded traffic to published container ports.
pub const PUBLISHED_CHAIN: &str = "CNIBRIDGE-PUBLISHED";
/// The masquerade mark (bit 13, CNI portmap's default `markMasqBit`).
pub const MASQ_MARK: &str = "0x2000/0x2000";
/// Prefix of an endpoint's nat chain.
pub const DNAT_PREFIX: &str = "CNIB-DN-";
/// Prefix of an endpoint's filter chain.
pub const ACCEPT_PREFIX: &str = "CNIB-FW-";

/// The comment on an endpoint's rules: `cnibridge ep <first 12 characters of the id>`.
pub fn endpoint_comment(endpoint_id: &str) -> String {
    let short: String = endpoint_id.chars().take(12).collect();
    format!("cnibridge ep {short}")
}

/// The nat chain of an endpoint: `CNIB-DN-` and 20 hex digits (28 characters, under
/// iptables' limit of 28 for chain names).
pub fn dnat_chain(network_id: &str, endpoint_id: &str) -> String {
    format!("{DNAT_PREFIX}{}", endpoint_hash(network_id, endpoint_id))
}

/// The filter chain of an endpoint: `CNIB-FW-` and the same 20 hex digits.
pub fn accept_chain(network_id: &str, endpoint_id: &str) -> String {
    format!("{ACCEPT_PREFIX}{}", endpoint_hash(network_id, endpoint_id))
}

/// The table an endpoint chain of ours lives in, from its name.
pub fn table_of_endpoint_chain(chain: &str) -> Option<&'static str> {
    if chain.starts_with(DNAT_PREFIX) {
        Some("nat")
    } else if chain.starts_with(ACCEPT_PREFIX) {
        Some("filter")
    } else {
        None
    }
}

/// One endpoint's rules in one family. Rule texts are what follows `-A <chain> `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRules {
    /// The endpoint's nat chain.
    pub dnat_chain: String,
    /// Jumps from `CNIBRIDGE-HOSTPORTS` into it.
    pub dnat_jumps: Vec<String>,
    /// Its content.
    pub dnat_rules: Vec<String>,
    /// The endpoint's filter chain.
    pub accept_chain: String,
    /// Jumps from `CNIBRIDGE-PUBLISHED` into it (none if only 127.0.0.1 mappings, which never
    /// cross `FORWARD`).
    pub accept_jumps: Vec<String>,
    /// Its content.
    pub accept_rules: Vec<String>,
}

impl EndpointRules {
    /// The chains to declare, with their table.
    pub fn chains(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("nat", self.dnat_chain.as_str())];
        if !self.accept_jumps.is_empty() {
            out.push(("filter", self.accept_chain.as_str()));
        }
        out
    }
}

/// Where an endpoint's connections that need masquerade are sent: our mark chain, a `MARK` of
/// the network's own `markMasqBit`, or the operator's `externalSetMarkChain`; `None` without
/// `snat` (portmap then leaves hairpin and localhost connections alone).
fn set_mark_target(o: &PortOptions) -> Option<String> {
    if !o.snat {
        return None;
    }
    Some(match (&o.external_set_mark_chain, o.mark_masq_bit) {
        (Some(chain), _) => chain.clone(),
        (None, bit) if bit == DEFAULT_MASQ_BIT => SETMARK_CHAIN.to_string(),
        (None, bit) => format!("MARK --set-xmark {}", masq_mark(bit)),
    })
}

/// The masquerade mark of `bit` as `value/mask`.
pub fn masq_mark(bit: u8) -> String {
    let v = 1u32 << (bit & 31);
    format!("{v:#x}/{v:#x}")
}

fn ports_match(m: &PortMapping, from: u16, to: u16) -> String {
    let p = m.proto.name();
    if to > from {
        format!("-p {p} -m {p} --dport {from}:{to}")
    } else {
        format!("-p {p} -m {p} --dport {from}")
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}

/// The rules of `p` in `family`; `None` when the endpoint publishes nothing there (no address
/// of the family, or every mapping bound to an address of the other one).
pub fn endpoint_rules(family: Family, p: &EndpointPorts) -> Option<EndpointRules> {
    let (addr, subnet): (IpAddr, String) = match family {
        Family::V4 => p
            .container_ipv4
            .map(|n| (IpAddr::V4(n.addr()), n.trunc().to_string()))?,
        Family::V6 => p
            .container_ipv6
            .map(|n| (IpAddr::V6(n.addr()), n.trunc().to_string()))?,
    };
    let fam = match family {
        Family::V4 => IpFamily::V4,
        Family::V6 => IpFamily::V6,
    };
    let mappings: Vec<&PortMapping> = p.mappings.iter().filter(|m| m.in_family(fam)).collect();
    if mappings.is_empty() {
        return None;
    }
    let comment = format!(
        "-m comment --comment \"{}\"",
        endpoint_comment(&p.endpoint_id)
    );
    let mut r = EndpointRules {
        dnat_chain: dnat_chain(&p.network_id, &p.endpoint_id),
        dnat_jumps: Vec::new(),
        dnat_rules: Vec::new(),
        accept_chain: accept_chain(&p.network_id, &p.endpoint_id),
        accept_jumps: Vec::new(),
        accept_rules: Vec::new(),
    };
    let o = &p.options;
    let conditions = match family {
        Family::V4 => &o.conditions_v4,
        Family::V6 => &o.conditions_v6,
    };
    let conditions: String = conditions.iter().map(|c| format!(" {c}")).collect();
    let set_mark = set_mark_target(&p.options);
    for m in mappings {
        let dst = m
            .specific_host_ip()
            .map(|ip| format!("-d {} ", host(ip)))
            .unwrap_or_default();
        let on_host = format!("{dst}{}", ports_match(m, m.host_port, m.host_port_end));
        r.dnat_jumps.push(format!(
            "{on_host}{conditions} {comment} -j {}",
            r.dnat_chain
        ));
        if let Some(set_mark) = &set_mark {
            if o.masq_all {
                // portmap's masqAll: every connection, so replies always come back through us.
                r.dnat_rules
                    .push(format!("{on_host} {comment} -j {set_mark}"));
            } else {
                if !m.on_loopback() {
                    r.dnat_rules
                        .push(format!("-s {subnet} {on_host} {comment} -j {set_mark}"));
                }
                if family == Family::V4 && m.reachable_via_localhost() {
                    r.dnat_rules
                        .push(format!("-s 127.0.0.0/8 {on_host} {comment} -j {set_mark}"));
                }
            }
        }
        let to = match (addr, m.host_port_end > m.host_port) {
            (IpAddr::V4(a), false) => format!("{a}:{}", m.container_port),
            (IpAddr::V6(a), false) => format!("[{a}]:{}", m.container_port),
            (IpAddr::V4(a), true) => format!(
                "{a}:{}-{}/{}",
                m.container_port,
                m.container_port_end(),
                m.host_port
            ),
            (IpAddr::V6(a), true) => format!(
                "[{a}]:{}-{}/{}",
                m.container_port,
                m.container_port_end(),
                m.host_port
            ),
        };
        // A port on 127.0.0.1 is DNATed only for the host's own loopback traffic.
        let src = if m.on_loopback() {
            "-s 127.0.0.0/8 "
        } else {
            ""
        };
        r.dnat_rules.push(format!(
            "{src}{on_host} {comment} -j DNAT --to-destination {to}"
        ));
        if !m.on_loopback() {
            let accept = format!(
                "{} -m conntrack --ctstate DNAT {comment} -j ACCEPT",
                ports_match(m, m.container_port, m.container_port_end())
            );
            if !r.accept_rules.contains(&accept) {
                r.accept_rules.push(accept);
            }
        }
    }
    if !r.accept_rules.is_empty() {
        r.accept_jumps.push(format!(
            "-d {} -o {} {comment} -j {}",
            host(addr),
            p.bridge,
            r.accept_chain
        ));
    }
    Some(r)
}

/// The script that turns `old` (what is installed for this endpoint, if anything) into `new`
/// (`None` = remove) in one family, touching only the endpoint's chains and its jumps. `None`
/// when the family holds nothing of the endpoint before or after.
///
/// The `-D` of the old jumps needs them installed exactly as `old` says; if someone removed
/// them, the restore fails as a whole and the caller rewrites everything instead.
pub fn render_port_update(
    family: Family,
    old: Option<&EndpointPorts>,
    new: Option<&EndpointPorts>,
) -> Option<String> {
    let old = old.and_then(|p| endpoint_rules(family, p));
    let new = new.and_then(|p| endpoint_rules(family, p));
    if old.is_none() && new.is_none() {
        return None;
    }
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let parts = |r: &EndpointRules| -> (String, String, Vec<String>, Vec<String>) {
            if table == "nat" {
                let c = r.dnat_chain.clone();
                (
                    c,
                    HOSTPORTS_CHAIN.into(),
                    r.dnat_jumps.clone(),
                    r.dnat_rules.clone(),
                )
            } else {
                let c = r.accept_chain.clone();
                (
                    c,
                    PUBLISHED_CHAIN.into(),
                    r.accept_jumps.clone(),
                    r.accept_rules.clone(),
                )
            }
        };
        let old = old.as_ref().map(parts).filter(|(_, _, j, _)| !j.is_empty());
        let new = new.as_ref().map(parts).filter(|(_, _, j, _)| !j.is_empty());
        if old.is_none() && new.is_none() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        if let Some((chain, _, _, _)) = &new {
            // Declaring creates the chain, or (with --noflush) flushes it; -F does not rely on
            // the latter.
            out.push_str(&format!(":{chain} - [0:0]\n-F {chain}\n"));
        }
        if let Some((_, from, jumps, _)) = &old {
            for j in jumps {
                out.push_str(&format!("-D {from} {j}\n"));
            }
        }
        match &new {
            Some((chain, from, jumps, rules)) => {
                for rule in rules {
                    out.push_str(&format!("-A {chain} {rule}\n"));
                }
                for j in jumps {
                    out.push_str(&format!("-A {from} {j}\n"));
                }
            }
            None => {
                if let Some((chain, _, _, _)) = &old {
                    out.push_str(&format!("-F {chain}\n-X {chain}\n"));
                }
            }
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

#[cfg(test)]
#[path = "render_ports_tests.rs"]
mod tests;
