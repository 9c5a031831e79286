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
}

/// Network-level rules; installed once per network, never per endpoint.
pub trait Firewall: Send + Sync + 'static {
    /// Install (or re-install) the network's rules. Idempotent.
    fn add_network(&self, rules: &NetworkRules) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Remove the network's rules. Unknown networks are `Ok`.
    fn del_network(&self, rules: &NetworkRules) -> impl Future<Output = Result<(), FirewallError>> + Send;
}
