//! The firewall backends the netns tests run against, and what each expects of the host: the
//! iptables backend a Docker host (`FORWARD` policy `DROP`), with the nft-based tools or the
//! legacy ones (hosts that still run `iptables-legacy`), the nftables backend a host where
//! dockerd runs with `--iptables=false` (`FORWARD` policy `ACCEPT`, nothing to rely on but our
//! own table). Only ever applied to the test thread's namespace.

use std::process::Command;

use cnibridge::firewall::iptables::{IptablesFirewall, IptablesTools};
use cnibridge::firewall::nftables::NftablesFirewall;
use cnibridge::firewall::{EndpointPorts, Firewall, FirewallError, NetworkRules};

use super::run;
use crate::support::require;

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    /// The iptables backend driving `iptables-legacy` (x_tables, not nf_tables).
    IptablesLegacy,
    Nftables,
}

impl Backend {
    /// A fresh firewall of this backend (a fresh process, as far as the firewall knows).
    pub fn firewall(self) -> AnyFirewall {
        match self {
            Backend::Iptables => AnyFirewall::Iptables(IptablesFirewall::default()),
            Backend::IptablesLegacy => {
                let [v4, v6] = self.tools();
                AnyFirewall::Iptables(IptablesFirewall::new(v4, v6))
            }
            Backend::Nftables => AnyFirewall::Nftables(NftablesFirewall::default()),
        }
    }

    /// True when the backend's tool can run; otherwise see [`require`].
    pub fn available(self, test: &str) -> bool {
        let tool = match self {
            Backend::Iptables => "iptables",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nftables => "nft",
        };
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        require(&format!("{test} needs {tool}"), ok)
    }

    /// The `FORWARD` policy of the host this backend is meant for, set in the test netns:
    /// Docker's `DROP` for iptables, `ACCEPT` (dockerd `--iptables=false`) for nftables.
    pub fn host_policy(self) {
        let policy = match self {
            Backend::Iptables | Backend::IptablesLegacy => "DROP",
            Backend::Nftables => "ACCEPT",
        };
        for tool in self.iptables_tools() {
            run(&[tool, "-P", "FORWARD", policy]);
        }
    }

    /// The iptables backend's programs for IPv4 and IPv6 (`iptables` + `iptables-restore`, or the
    /// `-legacy` ones).
    pub fn tools(self) -> [IptablesTools; 2] {
        self.iptables_tools().map(|t| IptablesTools {
            iptables: t.into(),
            restore: format!("{t}-restore"),
        })
    }

    /// The iptables and ip6tables programs of the host this backend is meant for.
    pub fn iptables_tools(self) -> [&'static str; 2] {
        match self {
            Backend::IptablesLegacy => ["iptables-legacy", "ip6tables-legacy"],
            _ => ["iptables", "ip6tables"],
        }
    }

    /// Everything of ours gone, as an admin's flush does: every rule of filter and nat (and,
    /// with `delete`, the chains too) for iptables; the table's rules (or, with `delete`, the
    /// table) for nftables.
    pub fn flush_by_hand(self, delete: bool) {
        match self {
            Backend::Iptables | Backend::IptablesLegacy => {
                for tool in self.iptables_tools() {
                    for table in ["filter", "nat"] {
                        run(&[tool, "-t", table, "-F"]);
                        if delete {
                            run(&[tool, "-t", table, "-X"]);
                        }
                    }
                }
            }
            Backend::Nftables => {
                let verb = if delete { "delete" } else { "flush" };
                run(&["nft", verb, "table", "inet", "cnibridge"]);
            }
        }
    }

    /// Both families' full dumps, without comments and counters (iptables, with this
    /// backend's tools), or our table (nftables). The namespace starts empty, so everything in
    /// it is the test's (plus the built-in chains' policies).
    pub fn dump(self) -> String {
        if self == Backend::Nftables {
            return nft_table();
        }
        let mut out = String::new();
        for tool in self.iptables_tools() {
            let save = format!("{tool}-save");
            out.push_str(&format!("## {save}\n"));
            for l in run(&[&save]).lines() {
                if l.starts_with('#') {
                    continue;
                }
                match (l.starts_with(':'), l.rfind(" [")) {
                    (true, Some(i)) => out.push_str(&format!("{} [0:0]\n", &l[..i])),
                    _ => {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// Drop the guard that keeps containers from the host's 127.0.0.1 services.
    pub fn remove_loopback_guard(self) {
        match self {
            Backend::Iptables | Backend::IptablesLegacy => {
                run(&[self.iptables_tools()[0], "-F", "CNIBRIDGE-INPUT"]);
            }
            Backend::Nftables => {
                run(&["nft", "flush", "chain", "inet", "cnibridge", "input"]);
            }
        }
    }
}

/// `nft list table inet cnibridge`, normalised: no handles (`nft` prints none unless asked)
/// and the set and chain blocks sorted, since their order is only the order they were created
/// in (an endpoint's chain created by `add_ports` comes after the base chains, in a full
/// rewrite before them). `(no table)` when there is none.
pub fn nft_table() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "cnibridge"])
        .output()
        .expect("run nft");
    if !out.status.success() {
        return "(no table)\n".into();
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (Some(open), Some(close)) = (text.find("{\n"), text.rfind("\n}")) else {
        return text;
    };
    // An empty table lists as `{\n}`: the two markers share its newline, nothing to sort.
    if close < open + 2 {
        return text;
    }
    let mut blocks: Vec<&str> = text[open + 2..close].split("\n\n").collect();
    // Sets sort before chains ("\tchain" < "\tset" would not), then by name.
    blocks.sort_by_key(|b| (!b.starts_with("\tset"), b.lines().next().unwrap_or("")));
    format!(
        "{}{}{}",
        &text[..open + 2],
        blocks.join("\n\n"),
        &text[close..]
    )
}

/// Either backend behind one type, so one test body serves both.
pub enum AnyFirewall {
    Iptables(IptablesFirewall),
    Nftables(NftablesFirewall),
}

impl Firewall for AnyFirewall {
    async fn add_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Iptables(f) => f.add_network(rules).await,
            AnyFirewall::Nftables(f) => f.add_network(rules).await,
        }
    }

    async fn del_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Iptables(f) => f.del_network(rules).await,
            AnyFirewall::Nftables(f) => f.del_network(rules).await,
        }
    }

    async fn add_ports(&self, ports: &EndpointPorts) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Iptables(f) => f.add_ports(ports).await,
            AnyFirewall::Nftables(f) => f.add_ports(ports).await,
        }
    }

    async fn del_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Iptables(f) => f.del_ports(network_id, endpoint_id).await,
            AnyFirewall::Nftables(f) => f.del_ports(network_id, endpoint_id).await,
        }
    }

    async fn reconcile(
        &self,
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Iptables(f) => f.reconcile(networks, ports).await,
            AnyFirewall::Nftables(f) => f.reconcile(networks, ports).await,
        }
    }
}
