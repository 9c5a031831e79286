//! The pure half of the nftables backend: the `nft -f -` script that makes `table inet
//! cnibridge` hold exactly the rules of a set of networks and published ports. Tested as text,
//! without root.
//!
//! Layout (one `inet` table, so one rule serves both families where it can):
//!
//! ```text
//! set bridges                        every bridge of ours (for isolation)
//! chain dnat-<hash>                  one per publishing endpoint (render_ports)
//! chain hostports                    dispatch: per mapping  [daddr] proto dport → dnat-<hash>
//! chain published                    per mapping  daddr <container> oif br dport
//!                                      ct status dnat accept
//! chain forward   filter/forward  priority filter (0)
//!   1. per network  oif br iif != br iif @bridges  drop        isolation, before any accept
//!   2. jump published
//!   3. per network: iif br oif br  accept | drop (icc off)
//!        internal:  iif br drop;  oif br drop
//!        otherwise: oif br ct state established,related accept;  iif br accept;  oif br drop
//! chain input     filter/input    priority filter (0)
//!   per non-internal network: iif br ip daddr 127.0.0.0/8 ct state != established,related drop
//! chain prerouting nat/prerouting priority dstnat (-100): local, non-loopback daddr → hostports
//! chain output     nat/output     priority -100:   local daddr (IPv6: not ::1) → hostports
//! chain postrouting nat/postrouting priority srcnat (100):
//!   1. meta mark & 0x2000 == 0x2000 masquerade                hairpin and localhost (render_ports)
//!   2. per masquerading network and subnet: saddr net daddr != net daddr != multicast
//!      oif != br masquerade
//! ```
//!
//! Why these hooks and priorities: they are the standard ones, those iptables-nft registers for its
//! `filter` and `nat` tables, so ours run beside them rather than in front or behind in a way that
//! would change NAT: of all nat base chains at one hook, the first (by priority) that sets up a
//! binding for a connection decides it, and at equal priority the order is not specified, so no one
//! else should publish the same host port. For filtering, priority matters less than it seems: a
//! packet passes *every* base chain of a hook, an `accept` only ends the chain it is in, and a
//! `drop` in any of them is final. So this table can refuse traffic, but cannot let through what
//! another table drops: on a host where dockerd manages iptables (`FORWARD` policy `DROP` plus its
//! own chains), containers of our bridges stay cut off whatever we accept.
//! This backend is for `dockerd --iptables=false` hosts, where the `FORWARD` policy is usually
//! `ACCEPT`; that is why `forward` ends each non-internal network's block with a drop of new
//! connections into the bridge (nothing enters unless published, i.e. `ct status dnat` to a
//! published container port), and why isolation between our networks comes first (a DNATed
//! connection from another of our bridges is still refused, as in the iptables backend).
//!
//! `input` mirrors the iptables backend's `CNIBRIDGE-INPUT`: published ports set
//! `route_localnet` on the bridge, which would let containers reach the host's 127.0.0.1
//! services (CVE-2020-8558); only replies to the host's own connections may arrive. As in the
//! iptables backend, an internal network's containers reach no address of the host but their
//! gateway (Docker's `--internal` leaves `INPUT` open; no route out should mean none to the host).
//!
//! A full script deletes and re-creates the table (`add table; delete table; table { … }`, one
//! transaction), so it holds exactly what was rendered, endpoint chains included, whatever was
//! there before.

use super::render_ports::{endpoint_rules, EndpointRules, HOSTPORTS_CHAIN, PUBLISHED_CHAIN};
use crate::firewall::iptables::rule_comment;
pub use crate::firewall::iptables::Family;
use crate::firewall::{EndpointPorts, NetworkRules};

/// Family and name of our table, as `nft` commands take them.
pub const TABLE: &str = "inet cnibridge";
/// The set of all our bridges.
pub const BRIDGES_SET: &str = "bridges";
/// The masquerade mark of hairpin and localhost connections (bit 13, as CNI's portmap and the
/// iptables backend).
pub const MASQ_MARK: &str = "0x2000";

/// Both families, in the order their rules are written.
pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// The address expression keyword of a family (`ip saddr`, `ip6 daddr`).
pub fn kw(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// `meta nfproto` value of a family, for rules that match no address of it.
pub fn nfproto(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// A rule of ours: the chain and the text after `add rule inet cnibridge <chain> `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Chain name.
    pub chain: String,
    /// Matches, statement and comment.
    pub text: String,
}

impl Rule {
    /// A rule in `chain`.
    pub fn new(chain: &str, text: impl Into<String>) -> Rule {
        Rule {
            chain: chain.to_string(),
            text: text.into(),
        }
    }

    /// The rule as one command of a script.
    pub fn add_command(&self) -> String {
        format!("add rule {TABLE} {} {}\n", self.chain, self.text)
    }
}

/// Our base chains: name, then `type … hook … priority …` (see the module comment for why).
/// Policy `accept`: traffic none of our rules decides is left to the host's other tables.
pub const BASE_CHAINS: [(&str, &str); 5] = [
    (
        "forward",
        "type filter hook forward priority filter; policy accept;",
    ),
    (
        "input",
        "type filter hook input priority filter; policy accept;",
    ),
    (
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    // nft 1.0.6 refuses the name `dstnat` outside prerouting; -100 is its value.
    (
        "output",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
];

/// Rules of ours that do not depend on any network.
fn static_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            "prerouting",
            "ip daddr != 127.0.0.0/8 fib daddr type local jump hostports",
        ),
        Rule::new(
            "prerouting",
            "ip6 daddr != ::1 fib daddr type local jump hostports",
        ),
        // The host's own 127.0.0.1 connections may reach ports published on every address or
        // on 127.0.0.1 (route_localnet); IPv6 has no such thing, so ::1 stays local.
        Rule::new(
            "output",
            "meta nfproto ipv4 fib daddr type local jump hostports",
        ),
        Rule::new(
            "output",
            "ip6 daddr != ::1 fib daddr type local jump hostports",
        ),
        Rule::new(
            "postrouting",
            format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade"),
        ),
    ]
}

/// The rules of one network: its isolation rule (which goes in front of the published ports)
/// and the rest (`forward`, `input`, `postrouting`), each in order.
fn network_rules(net: &NetworkRules) -> (Vec<Rule>, Vec<Rule>) {
    let br = format!("\"{}\"", net.bridge);
    let c = format!("comment \"{}\"", rule_comment(&net.network_id));
    let isolation = vec![Rule::new(
        "forward",
        format!("oifname {br} iifname != {br} iifname @{BRIDGES_SET} drop {c}"),
    )];
    let verdict = if net.icc { "accept" } else { "drop" };
    let mut rules = vec![Rule::new(
        "forward",
        format!("iifname {br} oifname {br} {verdict} {c}"),
    )];
    if net.internal {
        rules.push(Rule::new("forward", format!("iifname {br} drop {c}")));
        rules.push(Rule::new("forward", format!("oifname {br} drop {c}")));
        // No traffic out means none to the host's other addresses either (Docker's bridge
        // leaves INPUT open): only the network's own gateway and replies to the host.
        for subnet in &net.subnets {
            let ip = if subnet.addr().is_ipv4() { "ip" } else { "ip6" };
            rules.push(Rule::new(
                "input",
                format!("iifname {br} {ip} daddr {} return {c}", subnet.trunc()),
            ));
        }
        rules.push(Rule::new(
            "input",
            format!(
                "iifname {br} fib daddr type local ct state != {{ established, related }} drop {c}"
            ),
        ));
    } else {
        rules.push(Rule::new(
            "forward",
            format!("oifname {br} ct state established,related accept {c}"),
        ));
        rules.push(Rule::new("forward", format!("iifname {br} accept {c}")));
        // Without Docker's FORWARD DROP, this is what keeps the outside out.
        rules.push(Rule::new("forward", format!("oifname {br} drop {c}")));
        // Internal networks publish nothing, so their bridge never gets route_localnet.
        rules.push(Rule::new(
            "input",
            format!(
                "iifname {br} ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop {c}"
            ),
        ));
    }
    for family in FAMILIES {
        if !family.masquerades(net) {
            continue;
        }
        let ip = kw(family);
        for subnet in net.subnets.iter().filter(|s| family.has(s)) {
            let subnet = subnet.trunc();
            rules.push(Rule::new(
                "postrouting",
                format!(
                    "{ip} saddr {subnet} {ip} daddr != {subnet} {ip} daddr != {} oifname != {br} masquerade {c}",
                    family.multicast()
                ),
            ));
        }
    }
    (isolation, rules)
}

/// Our chains with their rules, in the order the table declares them: endpoint chains first,
/// then the dispatch chains, so every jump target exists before a rule names it; then the base
/// chains. The header is the base chain's `type … hook … priority …`.
pub fn table_chains(
    networks: &[NetworkRules],
    ports: &[EndpointPorts],
) -> Vec<(String, Option<&'static str>, Vec<Rule>)> {
    let endpoints: Vec<EndpointRules> = ports.iter().map(endpoint_rules).collect();
    let mut chains: Vec<(String, Option<&'static str>, Vec<Rule>)> = endpoints
        .iter()
        .filter(|e| !e.dnat_rules.is_empty())
        .map(|e| (e.dnat_chain.clone(), None, e.dnat_rules.clone()))
        .collect();
    chains.push((
        HOSTPORTS_CHAIN.to_string(),
        None,
        endpoints.iter().flat_map(|e| e.dispatch.clone()).collect(),
    ));
    chains.push((
        PUBLISHED_CHAIN.to_string(),
        None,
        endpoints.iter().flat_map(|e| e.published.clone()).collect(),
    ));
    let per_net: Vec<(Vec<Rule>, Vec<Rule>)> = networks.iter().map(network_rules).collect();
    let mut all: Vec<Rule> = per_net.iter().flat_map(|(iso, _)| iso.clone()).collect();
    all.push(Rule::new("forward", format!("jump {PUBLISHED_CHAIN}")));
    // The hairpin/localhost masquerade goes first in postrouting, as in the iptables backend.
    all.extend(static_rules());
    all.extend(per_net.into_iter().flat_map(|(_, rules)| rules));
    for (name, header) in BASE_CHAINS {
        let rules = all.iter().filter(|r| r.chain == name).cloned().collect();
        chains.push((name.to_string(), Some(header), rules));
    }
    chains
}

/// The `nft -f -` script that makes our table exactly `networks` and `ports`, as one
/// transaction: the table is deleted (`add` first, so the delete cannot fail on a missing one)
/// and, if any network is left, written anew. With no network the table is gone.
pub fn render_table(networks: &[NetworkRules], ports: &[EndpointPorts]) -> String {
    let mut out = format!("add table {TABLE}\ndelete table {TABLE}\n");
    if networks.is_empty() {
        return out;
    }
    out.push_str(&format!("table {TABLE} {{\n"));
    // A set refuses an element twice, and nothing else stops two networks naming one bridge.
    let bridges: std::collections::BTreeSet<String> = networks
        .iter()
        .map(|n| format!("\"{}\"", n.bridge))
        .collect();
    out.push_str(&format!(
        "\tset {BRIDGES_SET} {{\n\t\ttype ifname\n\t\telements = {{ {} }}\n\t}}\n",
        bridges.into_iter().collect::<Vec<_>>().join(", ")
    ));
    for (name, header, rules) in table_chains(networks, ports) {
        out.push_str(&format!("\tchain {name} {{\n"));
        if let Some(h) = header {
            out.push_str(&format!("\t\t{h}\n"));
        }
        for r in rules {
            out.push_str(&format!("\t\t{}\n", r.text));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
