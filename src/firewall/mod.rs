//! Packet filter rules a network needs, behind the `Firewall` trait.
//!
//! Today: the rule that lets ports of one bridge talk to each other although Docker's `FORWARD`
//! policy is `DROP` and br_netfilter sends bridged frames through iptables. The firewall issue
//! extends this trait (masquerade, isolation, published ports, nftables).

use std::future::Future;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod iptables;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The network-wide firewall intent of one network; stored and replayable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    /// Docker NetworkID.
    pub network_id: String,
    /// The Linux bridge of the network.
    pub bridge: String,
    /// The network's subnets (IPv4 and IPv6).
    pub subnets: Vec<IpNet>,
    /// `--internal`: no traffic leaves the network.
    pub internal: bool,
}

/// Firewall failures.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The backend tool could not be run or refused the transaction.
    #[error("{tool} failed: {reason}")]
    Backend { tool: String, reason: String },
    /// A network's rules carry a value that cannot be put into a rule safely.
    #[error("invalid firewall input {field} {value:?}: {reason}")]
    Invalid {
        /// Which field of `NetworkRules`.
        field: &'static str,
        /// The value refused.
        value: String,
        /// What the value must look like.
        reason: &'static str,
    },
}

/// Network-level rules; installed once per network, never per endpoint.
pub trait Firewall: Send + Sync + 'static {
    /// Install (or re-install) the network's rules. Idempotent.
    fn add_network(
        &self,
        rules: &NetworkRules,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Remove the network's rules. Unknown networks are `Ok`.
    fn del_network(
        &self,
        rules: &NetworkRules,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Make the installed rules exactly those of `all` (used at daemon start): missing rules are
    /// added, rules of networks not in `all` are removed.
    fn reconcile(
        &self,
        all: &[NetworkRules],
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
}

/// Check that a network's names can go into a rule verbatim. Interface names are limited to
/// `[A-Za-z0-9_.-]` (no `+`, which iptables reads as a wildcard, no leading `-`), network ids
/// to the same set (Docker's are hex).
pub fn validate_rules(rules: &NetworkRules) -> Result<(), FirewallError> {
    fn safe(s: &str) -> bool {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    }
    if !safe(&rules.network_id) {
        return Err(FirewallError::Invalid {
            field: "network_id",
            value: rules.network_id.clone(),
            reason: "must be non-empty, not start with '-' and only contain letters, digits, '_', '.', '-'",
        });
    }
    if !safe(&rules.bridge) || rules.bridge.len() > 15 {
        return Err(FirewallError::Invalid {
            field: "bridge",
            value: rules.bridge.clone(),
            reason: "must be an interface name of 1-15 letters, digits, '_', '.', '-', not starting with '-'",
        });
    }
    Ok(())
}

/// The firewall of `--firewall none`: installs nothing, so same-bridge traffic depends on the
/// host's own `FORWARD` policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    async fn add_network(&self, _rules: &NetworkRules) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn del_network(&self, _rules: &NetworkRules) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn reconcile(&self, _all: &[NetworkRules]) -> Result<(), FirewallError> {
        Ok(())
    }
}
