//! Packet filter rules a network needs, behind the `Firewall` trait.
//!
//! What a network gets: forwarding that works under Docker's `FORWARD DROP` policy (replies to
//! containers, containers out, container to container), isolation from the other cnibridge
//! networks, `enable_icc=false` and `--internal` like Docker's bridge driver, and masquerade
//! for `ipMasq` networks (CNI's semantics), all network-wide and installed once per network; and
//! published ports (`docker run -p`), per endpoint, added and removed with paired verbs
//! (`add_ports`/`del_ports`) that touch only that endpoint's rules.
//!
//! Two backends give the same semantics: `iptables` (chains of ours beside Docker's, for hosts
//! where dockerd manages iptables and its `FORWARD DROP` is the default) and `nftables` (one
//! table, `inet cnibridge`, for hosts where dockerd runs with `--iptables=false`; a drop in any
//! nftables base chain is final, so it cannot open what Docker's iptables rules close).
//! Both are one `engine::Engine` over a `engine::Backend`: the engine keeps the intent, checks
//! it, locks per network and falls back to a full rewrite when a change fails; a backend only
//! renders and applies (the shared base with the full set, one network's rules, one endpoint's
//! ports). `NoFirewall` installs nothing.

use std::future::Future;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod conntrack;
pub mod engine;
mod exec;
pub mod intent;
pub mod iptables;
pub mod leftovers;
pub mod nftables;
pub mod ports;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use ports::{EndpointPorts, PortMapping, PortOptions, Proto};

/// The network-wide firewall intent of one network; stored and replayable.
///
/// Fields added after the first release carry serde defaults that describe what older versions
/// installed, so stored intent written by them still loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    /// Docker NetworkID.
    pub network_id: String,
    /// The Linux bridge of the network.
    pub bridge: String,
    /// The network's subnets (IPv4 and IPv6).
    pub subnets: Vec<IpNet>,
    /// `--internal`: no traffic leaves the network or enters it from outside; containers on it
    /// still talk to each other (unless `icc` is off). Excludes masquerade.
    pub internal: bool,
    /// Masquerade IPv4 traffic from the network's IPv4 subnet to anywhere outside it (except
    /// multicast) that leaves through another interface.
    #[serde(default)]
    pub masquerade: bool,
    /// The same for IPv6 (off unless asked for).
    #[serde(default)]
    pub masquerade_ipv6: bool,
    /// Inter-container communication: containers of this bridge may talk to each other.
    #[serde(default = "default_icc")]
    pub icc: bool,
    /// How published ports behave: CNI portmap's keys.
    #[serde(default)]
    pub port_options: PortOptions,
    /// Keep containers of other cnibridge networks from opening connections into this one
    /// (Docker's isolation, the firewall plugin's `ingressPolicy: same-bridge`); false =
    /// `ingressPolicy: open`: this network takes no part in the isolation chains.
    #[serde(default = "default_icc")]
    pub isolate: bool,
    /// The firewall plugin's `iptablesAdminChainName`: a chain of the operator's, jumped to
    /// before any rule of ours for this network's traffic, created when missing, never flushed
    /// or deleted by cnibridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_chain: Option<String>,
}

fn default_icc() -> bool {
    true
}

impl NetworkRules {
    /// A network with Docker's defaults apart from masquerade: not internal, no masquerade,
    /// icc on. Tests and callers set the rest with struct update syntax.
    pub fn new(network_id: impl Into<String>, bridge: impl Into<String>) -> Self {
        NetworkRules {
            network_id: network_id.into(),
            bridge: bridge.into(),
            subnets: Vec::new(),
            internal: false,
            masquerade: false,
            masquerade_ipv6: false,
            icc: true,
            port_options: PortOptions::default(),
            isolate: true,
            admin_chain: None,
        }
    }
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
    /// A portmap or firewall key the running backend cannot express; the text says what to do.
    #[error("{0}")]
    Unsupported(String),
    /// Ports of an endpoint whose network has no rules installed (the order is network first,
    /// then its endpoints' ports).
    #[error("network {0} has no firewall rules installed; its ports cannot be published")]
    UnknownNetwork(String),
}

/// Network-level rules, installed once per network, and per-endpoint published ports.
pub trait Firewall: Send + Sync + 'static {
    /// Install (or re-install) the network's rules. Idempotent.
    fn add_network(
        &self,
        rules: &NetworkRules,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Remove the network's rules. Unknown networks are `Ok`. Callers remove the network's
    /// ports first (the recording fake insists); a backend that still holds some drops them too.
    fn del_network(
        &self,
        rules: &NetworkRules,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Publish an endpoint's ports (replacing what it published before). Its network must be
    /// installed. Idempotent.
    fn add_ports(
        &self,
        ports: &EndpointPorts,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Remove an endpoint's published ports. Unknown endpoints are `Ok`.
    fn del_ports(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// Make the installed rules exactly those of `networks` and `ports` (used at daemon start):
    /// missing rules are added, rules of networks and endpoints not listed are removed. Every
    /// entry of `ports` belongs to a network of `networks`.
    fn reconcile(
        &self,
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
}

/// Whether a name can go into a rule verbatim: `[A-Za-z0-9_.-]`, non-empty, no leading `-`
/// (no `+`, which iptables reads as an interface wildcard, no quotes or spaces).
pub(crate) fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Check that a network's names can go into a rule verbatim. Interface names are limited to
/// `[A-Za-z0-9_.-]` (no `+`, which iptables reads as a wildcard, no leading `-`), network ids
/// to the same set (Docker's are hex).
pub fn validate_rules(rules: &NetworkRules) -> Result<(), FirewallError> {
    let safe = safe_name;
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
    ports::validate_port_options(&rules.port_options)?;
    if let Some(chain) = &rules.admin_chain {
        if !safe(chain) || chain.len() > 28 {
            return Err(FirewallError::Invalid {
                field: "iptablesAdminChainName",
                value: chain.clone(),
                reason: "must be an iptables chain name of 1-28 letters, digits, '_', '.', '-'",
            });
        }
    }
    if rules.internal && (rules.masquerade || rules.masquerade_ipv6) {
        return Err(FirewallError::Invalid {
            field: "masquerade",
            value: format!(
                "ipv4={} ipv6={} on an internal network",
                rules.masquerade, rules.masquerade_ipv6
            ),
            reason: "an internal network has no traffic to masquerade; the caller turns it off",
        });
    }
    Ok(())
}

/// The firewall of `--firewall none`: installs nothing, so same-bridge traffic depends on the
/// host's own `FORWARD` policy and published ports are not reachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    async fn add_network(&self, _rules: &NetworkRules) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn del_network(&self, _rules: &NetworkRules) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn add_ports(&self, _ports: &EndpointPorts) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn del_ports(&self, _network_id: &str, _endpoint_id: &str) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn reconcile(
        &self,
        _networks: &[NetworkRules],
        _ports: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_written_before_masquerade_and_icc_loads_as_what_was_installed() {
        let old =
            r#"{"network_id":"n1","bridge":"br0","subnets":["10.1.0.0/24"],"internal":false}"#;
        let rules: NetworkRules = serde_json::from_str(old).unwrap();
        assert_eq!(
            rules,
            NetworkRules {
                subnets: vec!["10.1.0.0/24".parse().unwrap()],
                ..NetworkRules::new("n1", "br0")
            }
        );
        assert!(rules.icc && !rules.masquerade && !rules.masquerade_ipv6);
        let round: NetworkRules =
            serde_json::from_str(&serde_json::to_string(&rules).unwrap()).unwrap();
        assert_eq!(round, rules);
    }

    #[test]
    fn internal_networks_cannot_masquerade() {
        let base = NetworkRules {
            internal: true,
            ..NetworkRules::new("n1", "br0")
        };
        assert!(validate_rules(&base).is_ok());
        for (v4, v6) in [(true, false), (false, true)] {
            let bad = NetworkRules {
                masquerade: v4,
                masquerade_ipv6: v6,
                ..base.clone()
            };
            let err = validate_rules(&bad).unwrap_err().to_string();
            assert!(err.contains("internal network"), "{err}");
        }
    }
}
