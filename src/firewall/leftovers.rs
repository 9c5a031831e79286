//! Rules an earlier cnibridge left with the other backend: after a switch of `--firewall`
//! nothing else would ever remove them, and they would keep accepting, masquerading and
//! forwarding published ports for networks the new backend manages on its own. Run once at
//! start. A host without the other backend's tool has none of its rules: nothing to do.
//! (`--firewall none` leaves the firewall alone, this included.)

use super::exec::could_not_start;
use super::iptables::{remove::remove_all, IptablesTools};
use super::nftables::remove_table;
use super::FirewallError;

/// Remove every chain and jump of ours from iptables and ip6tables.
pub async fn remove_iptables_rules() {
    for tools in [IptablesTools::ipv4(), IptablesTools::ipv6()] {
        match remove_all(&tools).await {
            Ok(true) => tracing::info!(
                tool = %tools.iptables,
                "removed the rules an earlier cnibridge left with --firewall iptables"
            ),
            Ok(false) => {}
            Err(e) => report(&e),
        }
    }
}

/// Remove our nftables table.
pub async fn remove_nftables_table() {
    match remove_table("nft").await {
        Ok(true) => tracing::info!(
            "removed the nftables table an earlier cnibridge left with --firewall nftables"
        ),
        Ok(false) => {}
        Err(e) => report(&e),
    }
}

fn report(e: &FirewallError) {
    // The tool is not installed: nobody can have left rules with it.
    if could_not_start(e) {
        tracing::debug!(error = %e, "not looking for another backend's rules");
    } else {
        tracing::warn!(error = %e, "cannot remove the rules another firewall backend of cnibridge left; remove them by hand (see the README)");
    }
}
