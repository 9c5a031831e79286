//! The pure half of the iptables backend: the `iptables-restore --noflush` script that makes
//! our chains hold exactly the rules of a set of networks, for one address family. Tested as
//! text, without root.
//!
//! Layout (the same in iptables and ip6tables; only the nat rules differ by family):
//!
//! ```text
//! filter FORWARD ──(appended)──▶ CNIBRIDGE-FORWARD
//!   1. -j CNIBRIDGE-ISOLATION-1               isolation between cnibridge networks, first
//!   2. per network, in order:
//!        -i br -o br            ACCEPT | DROP (icc off)
//!        internal:   -i br ! -o br DROP;  -o br ! -i br DROP
//!        otherwise:  -o br ctstate RELATED,ESTABLISHED ACCEPT;  -i br ! -o br ACCEPT
//! CNIBRIDGE-ISOLATION-1: per network  -i br ! -o br -j CNIBRIDGE-ISOLATION-2
//! CNIBRIDGE-ISOLATION-2: per network  -o br -j DROP
//! nat POSTROUTING ──(appended)──▶ CNIBRIDGE-POSTROUTING
//!   per masquerading network and subnet of the family:
//!        -s net -d <multicast> RETURN;  -s net ! -d net ! -o br MASQUERADE
//! ```
//!
//! The two isolation chains are Docker's two-stage scheme: two rules per network, not one per
//! pair of networks, and a packet leaving one of our bridges for another one is dropped before
//! any ACCEPT of ours sees it. Whatever no rule decides falls back to `FORWARD` (Docker's
//! policy is `DROP`), which is what "nothing in from outside" rests on until published ports
//! add their own chains.
//!
//! Every per-network rule carries the comment `cnibridge net <id12>`; the jumps carry none, so
//! `iptables -C <builtin> -j <chain>` finds them.
//!
//! Extending (published ports): per-endpoint rules go into chains of their own, named from a
//! hash of (network, endpoint) and declared/flushed like the chains in `TABLES` (a stale one is
//! deleted with `-X` in the same script, which needs the previous set as well as the next), a
//! DNAT chain gets entries in `JUMPS` (nat `PREROUTING`/`OUTPUT`), and the per-network block of
//! `CNIBRIDGE-FORWARD` gets an accept for the published container ports ahead of whatever falls
//! through to `FORWARD`. An nftables backend renders the same intent into one `inet` table.

use ipnet::IpNet;

use crate::firewall::NetworkRules;

/// Our chain in the filter table, jumped to from `FORWARD`.
pub const FORWARD_CHAIN: &str = "CNIBRIDGE-FORWARD";
/// First isolation stage: traffic leaving one of our bridges for another interface.
pub const ISOLATION_1: &str = "CNIBRIDGE-ISOLATION-1";
/// Second isolation stage: ... that enters one of our bridges.
pub const ISOLATION_2: &str = "CNIBRIDGE-ISOLATION-2";
/// Our chain in the nat table, jumped to from `POSTROUTING`.
pub const POSTROUTING_CHAIN: &str = "CNIBRIDGE-POSTROUTING";

/// The rule comment carries this prefix and the first 12 characters of the network id, so an
/// operator (or a later GC) can tell which network a rule belongs to.
const COMMENT_PREFIX: &str = "cnibridge net";

/// Our chains, per table, in the order they are declared. Every chain listed here is declared
/// and flushed by each script, so its content is always exactly what was rendered.
pub const TABLES: [(&str, &[&str]); 2] = [
    ("filter", &[FORWARD_CHAIN, ISOLATION_1, ISOLATION_2]),
    ("nat", &[POSTROUTING_CHAIN]),
];

/// A jump from a built-in chain into one of ours: the only rules we own outside our chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// Table of both chains.
    pub table: &'static str,
    /// The built-in chain the jump is appended to.
    pub from: &'static str,
    /// Our chain.
    pub to: &'static str,
}

/// Every jump into our chains. Appended (never inserted), so Docker's own jumps, which dockerd
/// re-inserts at the head of `FORWARD` at each start, stay in front of ours.
pub const JUMPS: [Jump; 2] = [
    Jump {
        table: "filter",
        from: "FORWARD",
        to: FORWARD_CHAIN,
    },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        to: POSTROUTING_CHAIN,
    },
];

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

    fn has(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    fn masquerades(self, rules: &NetworkRules) -> bool {
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
fn filter_rules(net: &NetworkRules) -> Vec<Rule> {
    let br = &net.bridge;
    let rule = |chain, matches: String, target| Rule {
        chain,
        matches,
        target,
    };
    let mut rules = vec![
        rule(ISOLATION_1, format!("-i {br} ! -o {br}"), ISOLATION_2),
        rule(ISOLATION_2, format!("-o {br}"), "DROP"),
        rule(
            FORWARD_CHAIN,
            format!("-i {br} -o {br}"),
            if net.icc { "ACCEPT" } else { "DROP" },
        ),
    ];
    if net.internal {
        rules.push(rule(FORWARD_CHAIN, format!("-i {br} ! -o {br}"), "DROP"));
        rules.push(rule(FORWARD_CHAIN, format!("! -i {br} -o {br}"), "DROP"));
    } else {
        rules.push(rule(
            FORWARD_CHAIN,
            format!("-o {br} -m conntrack --ctstate RELATED,ESTABLISHED"),
            "ACCEPT",
        ));
        rules.push(rule(FORWARD_CHAIN, format!("-i {br} ! -o {br}"), "ACCEPT"));
    }
    rules
}

/// The nat rules of one network for `family`: none unless it masquerades that family.
fn nat_rules(family: Family, net: &NetworkRules) -> Vec<Rule> {
    if !family.masquerades(net) {
        return Vec::new();
    }
    let mut rules = Vec::new();
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

/// The restore script for one family: declares and flushes every chain of ours, fills them
/// from `networks` (in the given order) and appends each jump of `missing_jumps`. Built-in
/// chains are never flushed; the caller checks the jumps first (`iptables -C`) and passes the
/// missing ones, so the whole change is one `iptables-restore -w --noflush`.
pub fn render_restore(family: Family, networks: &[NetworkRules], missing_jumps: &[Jump]) -> String {
    let mut out = String::new();
    for (table, chains) in TABLES {
        let rules: Vec<(String, Rule)> = networks
            .iter()
            .flat_map(|net| {
                let comment = rule_comment(&net.network_id);
                let rules = match table {
                    "filter" => filter_rules(net),
                    _ => nat_rules(family, net),
                };
                rules.into_iter().map(move |r| (comment.clone(), r))
            })
            .collect();
        out.push_str(&format!("*{table}\n"));
        // Declaring a chain creates it if missing. With --noflush, iptables-nft 1.8.9 also
        // flushes an existing declared chain (verified); the explicit -F does not depend on it.
        for chain in chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for chain in chains {
            out.push_str(&format!("-F {chain}\n"));
        }
        if table == "filter" {
            out.push_str(&format!("-A {FORWARD_CHAIN} -j {ISOLATION_1}\n"));
        }
        // Grouped by chain, in the order the kernel dump shows them.
        for chain in chains {
            for (comment, r) in rules.iter().filter(|(_, r)| r.chain == *chain) {
                out.push_str(&format!(
                    "-A {chain} {} -m comment --comment \"{comment}\" -j {}\n",
                    r.matches, r.target
                ));
            }
        }
        for jump in missing_jumps.iter().filter(|j| j.table == table) {
            out.push_str(&format!("-A {} -j {}\n", jump.from, jump.to));
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
