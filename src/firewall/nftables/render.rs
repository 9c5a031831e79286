//! The pure half of the nftables backend: the `nft -f -` script that makes `table inet
//! cnibridge` hold exactly the rules of a set of networks and published ports. Tested as text,
//! without root.
//!
//! Layout (one `inet` table, so one rule serves both families where it can). Each network owns
//! three chains and one element in each set and map below, keyed by its bridge (or, for
//! masquerade, its subnets): adding or removing a network touches only those, with no rule
//! handle and nothing of any other network.
//!
//! ```text
//! set bridges       type ifname           every bridge of ours
//! set same_bridge   type ifname . ifname  br . br per network
//! map forward_nets  type ifname : verdict br : jump fwd-<h>     (h: 20 hex digits of the id)
//! map input_nets    type ifname : verdict br : jump in-<h>
//! map masq_v4 / masq_v6 (intervals)       subnet : jump nat-<h>  per masquerading family
//! chain fwd-<h>     the network's forward rules:
//!                     iif br oif br  accept | drop (icc off)
//!                     internal:  iif br drop;  oif br drop
//!                     otherwise: oif br ct state established,related accept;  iif br accept;
//!                                oif br ct status dnat accept;  oif br drop
//! chain in-<h>      non-internal: iif br ip daddr 127.0.0.0/8 ct state != established,related drop
//!                   internal: iif br daddr <subnet> return; iif br local daddr new drop
//! chain nat-<h>     per masquerading subnet: saddr net daddr != net daddr != multicast
//!                     oif != br masquerade
//! chain dnat-<hash>                  one per publishing endpoint (render_ports)
//! chain hostports                    dispatch: per mapping  [daddr] proto dport → dnat-<hash>
//! chain published                    per mapping  daddr <container> oif br dport
//!                                      ct status dnat accept
//! chain forward   filter/forward  priority filter (0)
//!   1. iif @bridges oif @bridges iif . oif != @same_bridge drop    isolation, before any accept
//!   2. jump published
//!   3. iifname vmap @forward_nets;  oifname vmap @forward_nets
//! chain input     filter/input    priority filter (0):  iifname vmap @input_nets
//! chain prerouting nat/prerouting priority dstnat (-100): local, non-loopback daddr → hostports
//! chain output     nat/output     priority -100:   local daddr (IPv6: not ::1) → hostports
//! chain postrouting nat/postrouting priority srcnat (100):
//!   1. meta mark & 0x2000 == 0x2000 masquerade                hairpin and localhost (render_ports)
//!   2. ip saddr vmap @masq_v4;  ip6 saddr vmap @masq_v6
//! ```
//!
//! After isolation, a forwarded packet has at most one of our bridges on either side (or the
//! same on both), so dispatching on the input bridge, then on the output bridge, reaches the one
//! network whose rules decide it; every path through `fwd-<h>` ends in a verdict. Two networks
//! cannot share a bridge or an overlapping masqueraded subnet (a map holds one verdict per key);
//! Docker's IPAM and ours never hand out either.
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
//! there before. A network's script (`render_network_update`) adds or removes its chains and
//! elements in one transaction too.

use ipnet::IpNet;

use super::render_ports::{endpoint_rules, EndpointRules, HOSTPORTS_CHAIN, PUBLISHED_CHAIN};
use crate::firewall::iptables::rule_comment;
pub use crate::firewall::iptables::Family;
use crate::firewall::ports::endpoint_hash;
use crate::firewall::{EndpointPorts, NetworkRules};

/// Family and name of our table, as `nft` commands take them.
pub const TABLE: &str = "inet cnibridge";
/// The set of all our bridges.
pub const BRIDGES_SET: &str = "bridges";
/// `bridge . bridge` of every network: traffic between two of ours is dropped unless in it.
pub const SAME_BRIDGE_SET: &str = "same_bridge";
/// Bridge → the network's forward chain.
pub const FORWARD_MAP: &str = "forward_nets";
/// Bridge → the network's input chain.
pub const INPUT_MAP: &str = "input_nets";
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

/// The masquerade map of a family.
pub fn masq_map(family: Family) -> &'static str {
    match family {
        Family::V4 => "masq_v4",
        Family::V6 => "masq_v6",
    }
}

/// Rules of ours that do not depend on any network, in the base chains.
fn static_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            "forward",
            format!(
                "iifname @{BRIDGES_SET} oifname @{BRIDGES_SET} iifname . oifname != @{SAME_BRIDGE_SET} drop"
            ),
        ),
        Rule::new("forward", format!("jump {PUBLISHED_CHAIN}")),
        Rule::new("forward", format!("iifname vmap @{FORWARD_MAP}")),
        Rule::new("forward", format!("oifname vmap @{FORWARD_MAP}")),
        Rule::new("input", format!("iifname vmap @{INPUT_MAP}")),
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
        // The hairpin/localhost masquerade goes first, as in the iptables backend.
        Rule::new(
            "postrouting",
            format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade"),
        ),
        Rule::new(
            "postrouting",
            format!("ip saddr vmap @{}", masq_map(Family::V4)),
        ),
        Rule::new(
            "postrouting",
            format!("ip6 saddr vmap @{}", masq_map(Family::V6)),
        ),
    ]
}

/// The chains of one network: forward, input, nat (`fwd-`, `in-`, `nat-` and 20 hex digits
/// of the network id, so any id fits nft's limit on names).
pub fn network_chains(network_id: &str) -> [String; 3] {
    // The endpoint id is empty, which no endpoint's is: no collision with an endpoint's hash.
    let h = endpoint_hash(network_id, "");
    [format!("fwd-{h}"), format!("in-{h}"), format!("nat-{h}")]
}

/// The rules of one network's three chains, in order.
pub fn network_rules(net: &NetworkRules) -> [(String, Vec<Rule>); 3] {
    let [fwd, input, nat] = network_chains(&net.network_id);
    let br = format!("\"{}\"", net.bridge);
    let c = format!("comment \"{}\"", rule_comment(&net.network_id));
    let verdict = if net.icc { "accept" } else { "drop" };
    let f = |text: String| Rule::new(&fwd, text);
    let i = |text: String| Rule::new(&input, text);
    let mut forward = vec![f(format!("iifname {br} oifname {br} {verdict} {c}"))];
    let mut inputs = Vec::new();
    if net.internal {
        forward.push(f(format!("iifname {br} drop {c}")));
        forward.push(f(format!("oifname {br} drop {c}")));
        // No traffic out means none to the host's other addresses either (Docker's bridge
        // leaves INPUT open): only the network's own gateway and replies to the host.
        for subnet in &net.subnets {
            let ip = if subnet.addr().is_ipv4() { "ip" } else { "ip6" };
            inputs.push(i(format!(
                "iifname {br} {ip} daddr {} return {c}",
                subnet.trunc()
            )));
        }
        inputs.push(i(format!(
            "iifname {br} fib daddr type local ct state != {{ established, related }} drop {c}"
        )));
    } else {
        forward.push(f(format!(
            "oifname {br} ct state established,related accept {c}"
        )));
        forward.push(f(format!("iifname {br} accept {c}")));
        // Connections anyone DNATed into the bridge (e.g. the real `portmap` of a CNI runtime
        // sharing the network through the exported conflist); only a DNAT rule can put a
        // connection in this state, so nothing unpublished opens.
        forward.push(f(format!("oifname {br} ct status dnat accept {c}")));
        // Without Docker's FORWARD DROP, this is what keeps the outside out.
        forward.push(f(format!("oifname {br} drop {c}")));
        // Internal networks publish nothing, so their bridge never gets route_localnet.
        inputs.push(i(format!(
            "iifname {br} ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop {c}"
        )));
    }
    let mut masq = Vec::new();
    for (family, subnet) in masqueraded(net) {
        let ip = kw(family);
        masq.push(Rule::new(
            &nat,
            format!(
                "{ip} saddr {subnet} {ip} daddr != {subnet} {ip} daddr != {} oifname != {br} masquerade {c}",
                family.multicast()
            ),
        ));
    }
    [(fwd, forward), (input, inputs), (nat, masq)]
}

/// The subnets the network masquerades, with their family, host bits dropped.
fn masqueraded(net: &NetworkRules) -> Vec<(Family, IpNet)> {
    FAMILIES
        .into_iter()
        .filter(|f| f.masquerades(net))
        .flat_map(|f| {
            net.subnets
                .iter()
                .filter(move |s| f.has(s))
                .map(move |s| (f, s.trunc()))
        })
        .collect()
}

/// The elements of one network: (set or map, element as written between braces).
pub fn network_elements(net: &NetworkRules) -> Vec<(&'static str, String)> {
    let [fwd, input, nat] = network_chains(&net.network_id);
    let br = format!("\"{}\"", net.bridge);
    let mut out = Vec::new();
    // `ingressPolicy: open` takes no part in isolation, as with the CNI firewall plugin.
    if net.isolate {
        out.push((BRIDGES_SET, br.clone()));
        out.push((SAME_BRIDGE_SET, format!("{br} . {br}")));
    }
    out.push((FORWARD_MAP, format!("{br} : jump {fwd}")));
    out.push((INPUT_MAP, format!("{br} : jump {input}")));
    for (family, subnet) in masqueraded(net) {
        out.push((masq_map(family), format!("{subnet} : jump {nat}")));
    }
    out
}

/// The key of an element (what `delete element` names): the text before ` : `.
fn element_key(element: &str) -> &str {
    element.split(" : ").next().unwrap_or(element)
}

/// Our sets and maps: keyword, name and declaration (type, flags).
pub const SETS: [(&str, &str, &str); 6] = [
    ("set", BRIDGES_SET, "type ifname"),
    ("set", SAME_BRIDGE_SET, "type ifname . ifname"),
    ("map", FORWARD_MAP, "type ifname : verdict"),
    ("map", INPUT_MAP, "type ifname : verdict"),
    (
        "map",
        "masq_v4",
        "type ipv4_addr : verdict\n\t\tflags interval",
    ),
    (
        "map",
        "masq_v6",
        "type ipv6_addr : verdict\n\t\tflags interval",
    ),
];

/// Our chains with their rules, in the order the table declares them: each network's chains,
/// endpoint chains, then the dispatch chains, so every jump target exists before a rule names
/// it; then the base chains. The header is the base chain's `type … hook … priority …`.
pub fn table_chains(
    networks: &[NetworkRules],
    ports: &[EndpointPorts],
) -> Vec<(String, Option<&'static str>, Vec<Rule>)> {
    let mut chains: Vec<(String, Option<&'static str>, Vec<Rule>)> = networks
        .iter()
        .flat_map(network_rules)
        .map(|(name, rules)| (name, None, rules))
        .collect();
    let endpoints: Vec<EndpointRules> = ports.iter().map(endpoint_rules).collect();
    chains.extend(
        endpoints
            .iter()
            .filter(|e| !e.dnat_rules.is_empty())
            .map(|e| (e.dnat_chain.clone(), None, e.dnat_rules.clone())),
    );
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
    let all = static_rules();
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
    for (kind, name, decl) in SETS {
        // A set refuses a key twice; nothing else stops two networks naming one bridge, so the
        // first network keeps it.
        let mut keys = std::collections::BTreeSet::new();
        let elements: Vec<String> = networks
            .iter()
            .flat_map(network_elements)
            .filter(|(set, e)| *set == name && keys.insert(element_key(e).to_string()))
            .map(|(_, e)| e)
            .collect();
        out.push_str(&format!("\t{kind} {name} {{\n\t\t{decl}\n"));
        if !elements.is_empty() {
            out.push_str(&format!("\t\telements = {{ {} }}\n", elements.join(", ")));
        }
        out.push_str("\t}\n");
    }
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

/// The transaction that turns one network from `old` (installed, if anything) into `new`
/// (`None` = removed), touching only its chains and elements: the old elements `new` does not
/// keep are deleted, the network's chains created (or flushed) and refilled, and its elements
/// added (adding one that is there already is no error, so a re-sent network repairs what was
/// removed under it). A removed network's elements go first, then its chains. It fails as a
/// whole if our table is gone or an element to delete is missing; the caller then rewrites the
/// table.
pub fn render_network_update(old: Option<&NetworkRules>, new: Option<&NetworkRules>) -> String {
    let kept: Vec<(&str, String)> = new
        .map(network_elements)
        .unwrap_or_default()
        .into_iter()
        .map(|(s, e)| (s, element_key(&e).to_string()))
        .collect();
    let mut out = String::new();
    for (set, e) in old.map(network_elements).unwrap_or_default() {
        let k = element_key(&e).to_string();
        if !kept.contains(&(set, k.clone())) {
            out.push_str(&format!("delete element {TABLE} {set} {{ {k} }}\n"));
        }
    }
    match new {
        Some(net) => {
            for (chain, rules) in network_rules(net) {
                out.push_str(&format!(
                    "add chain {TABLE} {chain}\nflush chain {TABLE} {chain}\n"
                ));
                for r in rules {
                    out.push_str(&r.add_command());
                }
            }
            for (set, e) in network_elements(net) {
                out.push_str(&format!("add element {TABLE} {set} {{ {e} }}\n"));
            }
        }
        None => {
            if let Some(net) = old {
                for chain in network_chains(&net.network_id) {
                    out.push_str(&format!(
                        "flush chain {TABLE} {chain}\ndelete chain {TABLE} {chain}\n"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
