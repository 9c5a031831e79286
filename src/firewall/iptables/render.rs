//! The pure half of the iptables backend: the `iptables-restore --noflush` script that makes
//! our chains hold exactly the rules of a set of networks and published ports, for one address
//! family. Tested as text, without root.
//!
//! Layout (the same in iptables and ip6tables; only the nat rules differ by family):
//!
//! ```text
//! filter FORWARD ──(appended)──▶ CNIBRIDGE-FORWARD
//!   1. -j CNIBRIDGE-ISOLATION-1               isolation between cnibridge networks, first
//!   2. -j CNIBRIDGE-PUBLISHED                 published container ports (render_ports)
//!   3. per network, in the order the networks were added (a network's rules in their order):
//!        -i br -o br            ACCEPT | DROP (icc off)
//!        internal:   -i br ! -o br DROP;  -o br ! -i br DROP
//!        otherwise:  -o br ctstate RELATED,ESTABLISHED ACCEPT;  -o br ctstate DNAT ACCEPT;
//!                    -i br ! -o br ACCEPT
//! CNIBRIDGE-ISOLATION-1: per network  -i br ! -o br -j CNIBRIDGE-ISOLATION-2
//! CNIBRIDGE-ISOLATION-2: per network  -o br -j DROP
//! filter INPUT ──(appended)──▶ CNIBRIDGE-INPUT
//!   IPv4, per non-internal network: -i br -d 127.0.0.0/8 ctstate !RELATED,ESTABLISHED DROP
//!   per internal network: -i br -d net RETURN;  -i br dst-type LOCAL ctstate !RELATED,ESTABLISHED DROP
//! nat POSTROUTING ──(appended)──▶ CNIBRIDGE-POSTROUTING
//!   1. -j CNIBRIDGE-HOSTPORT-MASQ             published ports' hairpin/localhost masquerade
//!   2. per masquerading network and subnet of the family:
//!        -s net -d <multicast> RETURN;  -s net ! -d net ! -o br MASQUERADE
//! nat PREROUTING, OUTPUT ──(appended)──▶ CNIBRIDGE-HOSTPORTS    (see render_ports)
//! ```
//!
//! The two isolation chains are Docker's two-stage scheme: two rules per network, not one per
//! pair of networks, and a packet leaving one of our bridges for another one is dropped before
//! any ACCEPT of ours sees it (so a container cannot reach another network's published port
//! through the host address either). Whatever no rule decides falls back to `FORWARD` (Docker's
//! policy is `DROP`): nothing reaches a container from outside unless it is published.
//!
//! `CNIBRIDGE-INPUT` exists because published ports set `route_localnet` on the bridge (so the
//! host's `127.0.0.1:<port>` can be DNATed to a container): that sysctl would also let
//! containers reach the host's own services on 127.0.0.1 (CVE-2020-8558); only replies to the
//! host's connections may arrive from a bridge for 127.0.0.0/8.
//!
//! Every per-network rule carries the comment `cnibridge net <id12>`, every per-endpoint one
//! `cnibridge ep <id12>`; the jumps from built-in chains carry none, so
//! `iptables -C <builtin> <matches> -j <chain>` finds them.
//!
//! A network's rules are appended to (and deleted from) the shared chains by
//! `render_network_update`, behind the fixed jumps at their head, so adding or removing one
//! network touches nothing of the others; every network's rules match its own bridge (or
//! subnet), so their order between networks does not matter. Published ports live in
//! per-endpoint chains (`render_ports`): `add_ports`/`del_ports` change only those and their
//! jumps. The full script (the shared base, at the first change, after a failure, at reconcile)
//! declares, flushes and refills every chain of ours, endpoint chains included, and deletes
//! (`-X`) the stale ones it is told about, in one transaction. The nftables backend renders the
//! same intent into one `inet` table.

use ipnet::IpNet;

use super::render_ports::{
    endpoint_rules, masq_mark, table_of_endpoint_chain, DEFAULT_MASQ_BIT, HOSTPORTS_CHAIN,
    MASQ_CHAIN, MASQ_MARK, PUBLISHED_CHAIN, SETMARK_CHAIN,
};
use crate::firewall::{EndpointPorts, NetworkRules};

/// Our chain in the filter table, jumped to from `FORWARD`.
pub const FORWARD_CHAIN: &str = "CNIBRIDGE-FORWARD";
/// First isolation stage: traffic leaving one of our bridges for another interface.
pub const ISOLATION_1: &str = "CNIBRIDGE-ISOLATION-1";
/// Second isolation stage: ... that enters one of our bridges.
pub const ISOLATION_2: &str = "CNIBRIDGE-ISOLATION-2";
/// Our chain in the nat table, jumped to from `POSTROUTING`.
pub const POSTROUTING_CHAIN: &str = "CNIBRIDGE-POSTROUTING";
/// Our chain in the filter table, jumped to from `INPUT`.
pub const INPUT_CHAIN: &str = "CNIBRIDGE-INPUT";

/// The rule comment carries this prefix and the first 12 characters of the network id, so an
/// operator (or a later GC) can tell which network a rule belongs to.
const COMMENT_PREFIX: &str = "cnibridge net";

/// Our chains, per table, in the order they are declared. Every chain listed here is declared
/// and flushed by each full script, so its content is always exactly what was rendered.
pub const TABLES: [(&str, &[&str]); 2] = [
    (
        "filter",
        &[
            FORWARD_CHAIN,
            ISOLATION_1,
            ISOLATION_2,
            PUBLISHED_CHAIN,
            INPUT_CHAIN,
        ],
    ),
    (
        "nat",
        &[
            POSTROUTING_CHAIN,
            HOSTPORTS_CHAIN,
            SETMARK_CHAIN,
            MASQ_CHAIN,
        ],
    ),
];

/// Rules of ours that do not depend on any network: (table, chain, rule).
fn static_rules() -> [(&'static str, &'static str, String); 5] {
    [
        ("filter", FORWARD_CHAIN, format!("-j {ISOLATION_1}")),
        ("filter", FORWARD_CHAIN, format!("-j {PUBLISHED_CHAIN}")),
        ("nat", POSTROUTING_CHAIN, format!("-j {MASQ_CHAIN}")),
        (
            "nat",
            SETMARK_CHAIN,
            format!("-j MARK --set-xmark {MASQ_MARK}"),
        ),
        (
            "nat",
            MASQ_CHAIN,
            format!("-m mark --mark {MASQ_MARK} -j MASQUERADE"),
        ),
    ]
}

/// A jump from a built-in chain into one of ours: the only rules we own outside our chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// Table of both chains.
    pub table: &'static str,
    /// The built-in chain the jump is appended to.
    pub from: &'static str,
    /// Matches before `-j`, as `iptables -S` prints them (may be empty).
    pub matches: &'static str,
    /// Our chain.
    pub to: &'static str,
}

impl Jump {
    /// The rule after `-A <from> `.
    pub fn spec(&self) -> String {
        if self.matches.is_empty() {
            format!("-j {}", self.to)
        } else {
            format!("{} -j {}", self.matches, self.to)
        }
    }
}

/// Every jump into our chains for `family`. Appended (never inserted), so Docker's own jumps,
/// which dockerd re-inserts at the head of `FORWARD` at each start, stay in front of ours.
/// Loopback destinations are kept out of `PREROUTING` (see `render_ports`); IPv6 has no
/// `route_localnet`, so `::1` cannot be forwarded from `OUTPUT` either.
pub fn jumps(family: Family) -> [Jump; 5] {
    let (prerouting, output) = match family {
        Family::V4 => (
            "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL",
            "-m addrtype --dst-type LOCAL",
        ),
        Family::V6 => (
            "! -d ::1/128 -m addrtype --dst-type LOCAL",
            "! -d ::1/128 -m addrtype --dst-type LOCAL",
        ),
    };
    let jump = |table, from, matches, to| Jump {
        table,
        from,
        matches,
        to,
    };
    [
        jump("filter", "FORWARD", "", FORWARD_CHAIN),
        jump("filter", "INPUT", "", INPUT_CHAIN),
        jump("nat", "POSTROUTING", "", POSTROUTING_CHAIN),
        jump("nat", "PREROUTING", prerouting, HOSTPORTS_CHAIN),
        jump("nat", "OUTPUT", output, HOSTPORTS_CHAIN),
    ]
}

/// An address family, i.e. which of iptables / ip6tables a script is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// Multicast destinations, which are never masqueraded (as in CNI's bridge plugin).
    pub fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }

    /// Whether `net` is of this family.
    pub(crate) fn has(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// Whether the network masquerades this family.
    pub(crate) fn masquerades(self, rules: &NetworkRules) -> bool {
        !rules.internal
            && match self {
                Family::V4 => rules.masquerade,
                Family::V6 => rules.masquerade_ipv6,
            }
    }
}

/// The comment on a network's rules: `cnibridge net <first 12 characters of the id>`.
pub fn rule_comment(network_id: &str) -> String {
    let short: String = network_id.chars().take(12).collect();
    format!("{COMMENT_PREFIX} {short}")
}

/// One rule of ours: `-A <chain> <matches> -m comment --comment "<net>" -j <target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    chain: &'static str,
    matches: String,
    target: &'static str,
}

/// The filter rules of one network, by chain. `icc` and `internal` decide the per-network
/// block of `CNIBRIDGE-FORWARD`; the isolation pair is the same for every network.
fn filter_rules(family: Family, net: &NetworkRules) -> Vec<Rule> {
    let br = &net.bridge;
    let rule = |chain, matches: String, target| Rule {
        chain,
        matches,
        target,
    };
    let mut rules = Vec::new();
    // `ingressPolicy: open` takes no part in isolation, as with the CNI firewall plugin.
    if net.isolate {
        rules.push(rule(ISOLATION_1, format!("-i {br} ! -o {br}"), ISOLATION_2));
        rules.push(rule(ISOLATION_2, format!("-o {br}"), "DROP"));
    }
    rules.push(rule(
        FORWARD_CHAIN,
        format!("-i {br} -o {br}"),
        if net.icc { "ACCEPT" } else { "DROP" },
    ));
    if net.internal {
        rules.push(rule(FORWARD_CHAIN, format!("-i {br} ! -o {br}"), "DROP"));
        rules.push(rule(FORWARD_CHAIN, format!("! -i {br} -o {br}"), "DROP"));
    } else {
        rules.push(rule(
            FORWARD_CHAIN,
            format!("-o {br} -m conntrack --ctstate RELATED,ESTABLISHED"),
            "ACCEPT",
        ));
        // Connections some rule deliberately DNATed into this bridge, ours or anyone's: a CNI
        // runtime sharing the network through the exported conflist runs the real `portmap`,
        // whose DNAT'd connections would otherwise die in Docker's FORWARD DROP (the firewall
        // plugin only accepts RELATED,ESTABLISHED to its container). Nothing unpublished
        // opens: only a DNAT rule can put a connection in this state.
        rules.push(rule(
            FORWARD_CHAIN,
            format!("-o {br} -m conntrack --ctstate DNAT"),
            "ACCEPT",
        ));
        rules.push(rule(FORWARD_CHAIN, format!("-i {br} ! -o {br}"), "ACCEPT"));
    }
    if net.internal {
        // No traffic out means none to the host's other addresses either (Docker's bridge
        // leaves INPUT open): only the network's own gateway and replies to the host.
        for subnet in net.subnets.iter().filter(|s| family.has(s)) {
            rules.push(rule(
                INPUT_CHAIN,
                format!("-i {br} -d {}", subnet.trunc()),
                "RETURN",
            ));
        }
        rules.push(rule(
            INPUT_CHAIN,
            format!(
                "-i {br} -m addrtype --dst-type LOCAL -m conntrack ! --ctstate RELATED,ESTABLISHED"
            ),
            "DROP",
        ));
    }
    // Internal networks publish nothing, so their bridge never gets route_localnet.
    if family == Family::V4 && !net.internal {
        rules.push(rule(
            INPUT_CHAIN,
            format!("-i {br} -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED"),
            "DROP",
        ));
    }
    rules
}

/// The jumps of one network into its `iptablesAdminChainName` (after `-A CNIBRIDGE-FORWARD `),
/// both directions through its bridge. They sit between the isolation jump and every accept of
/// ours, where the firewall plugin puts its admin jump: the operator's rules decide first
/// (isolation between networks excepted, which the plugin also runs before).
pub fn admin_jumps(net: &NetworkRules) -> Vec<String> {
    let Some(admin) = &net.admin_chain else {
        return Vec::new();
    };
    let br = &net.bridge;
    let comment = rule_comment(&net.network_id);
    [format!("-i {br}"), format!("-o {br}")]
        .into_iter()
        .map(|m| format!("{m} -m comment --comment \"{comment}\" -j {admin}"))
        .collect()
}

/// The nat rules of one network for `family`: none unless it masquerades that family.
fn nat_rules(family: Family, net: &NetworkRules) -> Vec<Rule> {
    let mut rules = Vec::new();
    let o = &net.port_options;
    // A markMasqBit of its own needs its own masquerade; an externalSetMarkChain's owner
    // masquerades what it marks (portmap creates neither then).
    if o.snat && o.external_set_mark_chain.is_none() && o.mark_masq_bit != DEFAULT_MASQ_BIT {
        rules.push(Rule {
            chain: MASQ_CHAIN,
            matches: format!("-m mark --mark {}", masq_mark(o.mark_masq_bit)),
            target: "MASQUERADE",
        });
    }
    if !family.masquerades(net) {
        return rules;
    }
    for subnet in net.subnets.iter().filter(|s| family.has(s)) {
        let subnet = subnet.trunc();
        rules.push(Rule {
            chain: POSTROUTING_CHAIN,
            matches: format!("-s {subnet} -d {}", family.multicast()),
            target: "RETURN",
        });
        rules.push(Rule {
            chain: POSTROUTING_CHAIN,
            matches: format!("-s {subnet} ! -d {subnet} ! -o {}", net.bridge),
            target: "MASQUERADE",
        });
    }
    rules
}

/// The restore script for one family: declares and flushes every chain of ours (the fixed ones
/// and those of each endpoint in `ports`), fills them from `networks` and `ports` (in the given
/// order), deletes the endpoint chains named in `stale` (no longer referenced once the jumps
/// are rewritten) and appends each jump of `missing_jumps`. Built-in chains are never flushed;
/// the caller checks the jumps first (`iptables -C`) and passes the missing ones, so the whole
/// change is one `iptables-restore -w --noflush`.
pub fn render_restore(
    family: Family,
    networks: &[NetworkRules],
    ports: &[EndpointPorts],
    missing_jumps: &[Jump],
    stale: &[String],
) -> String {
    let endpoints: Vec<_> = ports
        .iter()
        .filter_map(|p| endpoint_rules(family, p))
        .collect();
    let mut out = String::new();
    for (table, fixed) in TABLES {
        let rules: Vec<(String, Rule)> = networks
            .iter()
            .flat_map(|net| {
                let comment = rule_comment(&net.network_id);
                let rules = match table {
                    "filter" => filter_rules(family, net),
                    _ => nat_rules(family, net),
                };
                rules.into_iter().map(move |r| (comment.clone(), r))
            })
            .collect();
        let own: Vec<&str> = endpoints
            .iter()
            .flat_map(|e| e.chains())
            .filter(|(t, _)| *t == table)
            .map(|(_, c)| c)
            .collect();
        let gone: Vec<&str> = stale
            .iter()
            .map(String::as_str)
            .filter(|c| table_of_endpoint_chain(c) == Some(table) && !own.contains(c))
            .collect();
        out.push_str(&format!("*{table}\n"));
        // Declaring a chain creates it if missing. With --noflush, iptables-nft 1.8.9 also
        // flushes an existing declared chain (verified); the explicit -F does not depend on it.
        // Stale chains are declared too, so their -X cannot fail on one that is already gone.
        let declared: Vec<&str> = fixed
            .iter()
            .copied()
            .chain(own.iter().copied())
            .chain(gone.iter().copied())
            .collect();
        for chain in &declared {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for chain in &declared {
            out.push_str(&format!("-F {chain}\n"));
        }
        for (_, chain, rule) in static_rules().iter().filter(|(t, _, _)| *t == table) {
            out.push_str(&format!("-A {chain} {rule}\n"));
            if *rule == format!("-j {ISOLATION_1}") {
                for j in networks.iter().flat_map(admin_jumps) {
                    out.push_str(&format!("-A {FORWARD_CHAIN} {j}\n"));
                }
            }
        }
        // Grouped by chain, in the order the kernel dump shows them.
        for chain in fixed {
            for (comment, r) in rules.iter().filter(|(_, r)| r.chain == *chain) {
                out.push_str(&format!(
                    "-A {chain} {} -m comment --comment \"{comment}\" -j {}\n",
                    r.matches, r.target
                ));
            }
            for e in &endpoints {
                let jumps = match *chain {
                    HOSTPORTS_CHAIN => &e.dnat_jumps,
                    PUBLISHED_CHAIN => &e.accept_jumps,
                    _ => continue,
                };
                for j in jumps {
                    out.push_str(&format!("-A {chain} {j}\n"));
                }
            }
        }
        for e in &endpoints {
            let (chain, rules) = match table {
                "nat" => (&e.dnat_chain, &e.dnat_rules),
                _ => (&e.accept_chain, &e.accept_rules),
            };
            for r in rules {
                out.push_str(&format!("-A {chain} {r}\n"));
            }
        }
        for chain in &gone {
            out.push_str(&format!("-X {chain}\n"));
        }
        for jump in missing_jumps.iter().filter(|j| j.table == table) {
            out.push_str(&format!("-A {} {}\n", jump.from, jump.spec()));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The script that turns one network's rules from `old` (installed, if anything) into `new`
/// (`None` = removed) in one family: `-D` of each old rule, then `-A` of each new one, at the
/// end of the shared chains (after the fixed jumps of a full script, so isolation and published
/// ports still come first), in their order. Nothing else is read or touched, so its cost does
/// not grow with the other networks. A `-D` of a rule someone removed fails the restore as a
/// whole; the caller then rewrites everything. `None` when the family holds nothing of the
/// network before or after.
pub fn render_network_update(
    family: Family,
    old: Option<&NetworkRules>,
    new: Option<&NetworkRules>,
) -> Option<String> {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let rules = |net: &NetworkRules| {
            let rules = match table {
                "filter" => filter_rules(family, net),
                _ => nat_rules(family, net),
            };
            let comment = rule_comment(&net.network_id);
            rules
                .into_iter()
                .map(|r| {
                    format!(
                        "{} {} -m comment --comment \"{comment}\" -j {}",
                        r.chain, r.matches, r.target
                    )
                })
                .collect::<Vec<_>>()
        };
        let admin = |net: &NetworkRules| match table {
            "filter" => admin_jumps(net),
            _ => Vec::new(),
        };
        let gone = old.map(rules).unwrap_or_default();
        let added = new.map(rules).unwrap_or_default();
        let admin_gone = old.map(admin).unwrap_or_default();
        let admin_added = new.map(admin).unwrap_or_default();
        if gone.is_empty() && added.is_empty() && admin_gone.is_empty() && admin_added.is_empty() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for r in admin_gone {
            out.push_str(&format!("-D {FORWARD_CHAIN} {r}\n"));
        }
        for r in gone {
            out.push_str(&format!("-D {r}\n"));
        }
        // Right behind the isolation jump, the first rule of the chain.
        for r in admin_added.iter().rev() {
            out.push_str(&format!("-I {FORWARD_CHAIN} 2 {r}\n"));
        }
        for r in added {
            out.push_str(&format!("-A {r}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
