//! Removing every rule and chain of ours, for a host that switched to `--firewall nftables`
//! (an earlier cnibridge ran with iptables): the jumps into our chains from anyone else's, then
//! our chains. Read with `iptables -S` per table, removed with one
//! `iptables-restore -w --noflush` per family. Listing creates nothing, so a host without any
//! of our rules is only read.

use super::render::TABLES;
use super::render_ports::{ACCEPT_PREFIX, DNAT_PREFIX};
use super::{list_table, restore, IptablesTools};
use crate::firewall::FirewallError;

/// Whether a chain is one cnibridge makes.
fn ours(chain: &str) -> bool {
    chain.starts_with("CNIBRIDGE-")
        || chain.starts_with(DNAT_PREFIX)
        || chain.starts_with(ACCEPT_PREFIX)
}

/// Whether a rule (`-A CHAIN …` as `iptables -S` prints it) jumps or goes to one of our chains.
fn targets_ours(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && ours(w[1]))
}

/// The restore script that removes what the listings (table, `iptables -S -t table` output)
/// show of ours, or `None` when there is nothing. Declaring our chains flushes them, so the
/// jumps between them go first; then the jumps from other chains, then the chains.
pub fn render_removal(listings: &[(&str, String)]) -> Option<String> {
    let mut script = String::new();
    for (table, listing) in listings {
        let chains: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .map(str::trim)
            .filter(|c| ours(c))
            .collect();
        let jumps: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("-A "))
            .filter(|r| r.split_whitespace().next().is_some_and(|c| !ours(c)))
            .filter(|r| targets_ours(r))
            .collect();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        script.push_str(&format!("*{table}\n"));
        for c in &chains {
            script.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in &jumps {
            script.push_str(&format!("-D {j}\n"));
        }
        for c in &chains {
            script.push_str(&format!("-X {c}\n"));
        }
        script.push_str("COMMIT\n");
    }
    (!script.is_empty()).then_some(script)
}

/// Remove every rule and chain of ours that these tools show. `Ok(false)`: there was none.
pub async fn remove_all(tools: &IptablesTools) -> Result<bool, FirewallError> {
    let mut listings = Vec::new();
    for (table, _) in TABLES {
        listings.push((table, list_table(tools, table).await?));
    }
    match render_removal(&listings) {
        None => Ok(false),
        Some(script) => restore(tools, &script).await.map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_takes_our_chains_and_jumps_and_nothing_else() {
        let filter = "\
-P INPUT ACCEPT
-P FORWARD DROP
-N CNIBRIDGE-FORWARD
-N CNIBRIDGE-ISOLATION-1
-N CNIB-FW-0123456789ab-cdef01234567
-N DOCKER
-N DOCKER-USER
-A INPUT -j CNIBRIDGE-INPUT
-A FORWARD -j DOCKER-USER
-A FORWARD -j CNIBRIDGE-FORWARD
-A CNIBRIDGE-FORWARD -j CNIBRIDGE-ISOLATION-1
-A CNIBRIDGE-FORWARD -o cnb0 -m comment --comment \"cnibridge net 0123456789ab\" -j ACCEPT
-A DOCKER-USER -j RETURN
";
        let nat = "\
-P PREROUTING ACCEPT
-N CNIBRIDGE-HOSTPORTS
-N DOCKER
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -g CNIBRIDGE-HOSTPORTS
";
        let script =
            render_removal(&[("filter", filter.to_string()), ("nat", nat.to_string())]).unwrap();
        assert_eq!(
            script,
            "\
*filter
:CNIBRIDGE-FORWARD - [0:0]
:CNIBRIDGE-ISOLATION-1 - [0:0]
:CNIB-FW-0123456789ab-cdef01234567 - [0:0]
-D INPUT -j CNIBRIDGE-INPUT
-D FORWARD -j CNIBRIDGE-FORWARD
-X CNIBRIDGE-FORWARD
-X CNIBRIDGE-ISOLATION-1
-X CNIB-FW-0123456789ab-cdef01234567
COMMIT
*nat
:CNIBRIDGE-HOSTPORTS - [0:0]
-D PREROUTING -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS
-D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -g CNIBRIDGE-HOSTPORTS
-X CNIBRIDGE-HOSTPORTS
COMMIT
"
        );
        let docker_only = "-P FORWARD DROP\n-N DOCKER\n-A FORWARD -j DOCKER\n";
        assert_eq!(render_removal(&[("filter", docker_only.to_string())]), None);
    }
}
