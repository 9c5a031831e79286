//! The firewall backend a suite runs against, seen from outside the daemon: which of its rules mention
//! something, a dump for failure messages, and a careless flush. The scenarios assert traffic; these
//! only find leftovers and explain failures, so they know each backend's listing, nothing more.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::support::host::iptables_mentions;
use crate::support::process::{run_ok, run_timeout, stderr_text, stdout_text};

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// The backend of the suite running now, for failure messages deep in helpers.
static CURRENT: Mutex<Backend> = Mutex::new(Backend::Iptables);

pub fn set_current(b: Backend) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = b;
}

pub fn current() -> Backend {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// cnibridge's default, beside a dockerd with its iptables rules (`FORWARD DROP`).
    Iptables,
    /// `--firewall nftables`, beside a dockerd started with `--iptables=false`.
    Nftables,
}

/// `(family, name)` of cnibridge's nftables tables.
pub fn nft_tables() -> Vec<(String, String)> {
    let out = match run_timeout(Command::new("nft").args(["list", "tables"]), CMD_TIMEOUT) {
        Ok(o) if o.status.success() => stdout_text(&o),
        _ => return Vec::new(),
    };
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(family), Some(name)) if name.contains("cnibridge") => {
                    Some((family.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// cnibridge's nftables rules, one per line, prefixed with their table and chain, with counters
/// stripped (they change with traffic) so two listings compare.
fn nft_rules() -> Vec<String> {
    let mut rules = Vec::new();
    for (family, name) in nft_tables() {
        let text = run_ok("nft", &["list", "table", &family, &name]);
        let mut chain = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("chain ") {
                chain = c.trim_end_matches(" {").to_string();
            } else if !line.is_empty() && line != "}" && !line.starts_with("table ") {
                rules.push(format!("{family} {name} {chain}: {}", strip_counters(line)));
            }
        }
    }
    rules
}

fn strip_counters(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            i += 5; // counter packets N bytes M
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

impl Backend {
    /// The daemon's `--firewall` value.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }

    /// Rules of cnibridge (and for iptables, any rule at all) mentioning one of `words`.
    pub fn mentions(self, words: &[&str]) -> Vec<String> {
        match self {
            Backend::Iptables => iptables_mentions(words),
            Backend::Nftables => nft_rules()
                .into_iter()
                .filter(|r| words.iter().any(|w| r.contains(w)))
                .collect(),
        }
    }

    /// Whether traffic from `subnet` leaving through another interface than `bridge` is masqueraded.
    pub fn masquerades(self, subnet: &str, bridge: &str) -> bool {
        match self {
            Backend::Iptables => {
                let want =
                    format!("-A CNIBRIDGE-POSTROUTING -s {subnet} ! -d {subnet} ! -o {bridge}");
                run_ok(
                    "iptables",
                    &["-w", "5", "-t", "nat", "-S", "CNIBRIDGE-POSTROUTING"],
                )
                .lines()
                .any(|l| l.starts_with(&want) && l.ends_with("-j MASQUERADE"))
            }
            Backend::Nftables => nft_rules()
                .iter()
                .any(|r| r.contains(subnet) && r.contains("masquerade")),
        }
    }

    /// Every rule of cnibridge's, without counters: equal listings mean nothing changed.
    pub fn listing(self) -> Vec<String> {
        match self {
            Backend::Iptables => {
                let mut all = Vec::new();
                for tool in ["iptables", "ip6tables"] {
                    for table in ["filter", "nat"] {
                        all.extend(
                            run_ok(tool, &["-w", "5", "-t", table, "-S"])
                                .lines()
                                .filter(|l| l.contains("CNIB"))
                                .map(|l| format!("{tool} -t {table} {l}")),
                        );
                    }
                }
                all
            }
            Backend::Nftables => nft_rules(),
        }
    }

    /// What a failure message shows: the rules with packet counters, which usually say which rule
    /// a packet hit, or that none did.
    pub fn dump(self) -> String {
        let mut s = String::new();
        match self {
            Backend::Iptables => {
                for (table, chain) in [
                    ("filter", "FORWARD"),
                    ("filter", "CNIBRIDGE-FORWARD"),
                    ("filter", "CNIBRIDGE-ISOLATION-1"),
                    ("filter", "CNIBRIDGE-ISOLATION-2"),
                    ("filter", "CNIBRIDGE-PUBLISHED"),
                    ("nat", "PREROUTING"),
                    ("nat", "OUTPUT"),
                    ("nat", "POSTROUTING"),
                    ("nat", "CNIBRIDGE-POSTROUTING"),
                    ("nat", "CNIBRIDGE-HOSTPORTS"),
                ] {
                    let listed = run_timeout(
                        Command::new("iptables").args(["-w", "5", "-t", table, "-v", "-S", chain]),
                        CMD_TIMEOUT,
                    )
                    .map(|o| stdout_text(&o) + &stderr_text(&o))
                    .unwrap_or_else(|e| e);
                    s.push_str(&format!("\n# iptables -t {table} -v -S {chain}\n{listed}"));
                }
            }
            Backend::Nftables => {
                for (family, name) in nft_tables() {
                    let listed = run_timeout(
                        Command::new("nft").args(["list", "table", &family, &name]),
                        CMD_TIMEOUT,
                    )
                    .map(|o| stdout_text(&o) + &stderr_text(&o))
                    .unwrap_or_else(|e| e);
                    s.push_str(&format!("\n# nft list table {family} {name}\n{listed}"));
                }
                let policy = crate::support::host::forward_policy().unwrap_or_else(|e| e);
                s.push_str(&format!("\n# iptables FORWARD policy: {policy}"));
            }
        }
        for path in ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"] {
            let v = std::fs::read_to_string(format!("/proc/sys/{path}"))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|e| e.to_string());
            s.push_str(&format!("\n# {path} = {v}"));
        }
        s
    }

    /// What a careless flush does to cnibridge: all its rules gone. For iptables every rule jumping into
    /// its chains and the chains themselves; for nftables its tables. Nothing else on the host is touched.
    pub fn remove_ours(self) {
        match self {
            Backend::Iptables => remove_iptables_chains(),
            Backend::Nftables => {
                for (family, name) in nft_tables() {
                    run_ok("nft", &["delete", "table", &family, &name]);
                }
            }
        }
    }
}

fn remove_iptables_chains() {
    let ours = |chain: &str| chain.starts_with("CNIBRIDGE") || chain.starts_with("CNIB-");
    for tool in ["iptables", "ip6tables"] {
        for table in ["filter", "nat"] {
            let listing = run_ok(tool, &["-w", "5", "-t", table, "-S"]);
            let mut chains = Vec::new();
            for line in listing.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["-N", chain] if ours(chain) => chains.push(chain.to_string()),
                    ["-A", chain, rest @ ..]
                        if !ours(chain) && rest.windows(2).any(|w| w[0] == "-j" && ours(w[1])) =>
                    {
                        let mut args = vec!["-w", "5", "-t", table, "-D", chain];
                        args.extend_from_slice(rest);
                        run_ok(tool, &args);
                    }
                    _ => {}
                }
            }
            for chain in &chains {
                run_ok(tool, &["-w", "5", "-t", table, "-F", chain]);
            }
            for chain in &chains {
                run_ok(tool, &["-w", "5", "-t", table, "-X", chain]);
            }
        }
    }
}
