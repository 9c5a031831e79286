//! The plugins a conflist chains after `bridge` (or `flannel`), as cnibridge honours them
//! natively: `portmap`, `firewall`, `tuning`, `bandwidth` and `loopback`, with the keys and
//! defaults of the reference plugins (containernetworking/plugins `plugins/meta/*`). Parsed
//! once at network creation and kept in the network record, so the driver applies the same
//! chain after a restart and the export gives CNI runtimes the same plugins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::config::MasqBackend;

/// The chain after the main plugin. At most one plugin of each type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `None` = the chain has no `portmap`: `docker run -p` is refused on the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap: Option<Portmap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallPlugin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub loopback: bool,
    /// The chained plugin objects as the file has them, in order, so the export keeps keys
    /// cnibridge only accepts (`capabilities`, a plugin's `name`, …) and the file's order.
    #[serde(default)]
    pub raw: Vec<Value>,
}

impl Chain {
    /// What a network made from Docker's flags (or recorded before chains were read) does:
    /// publish ports as `portmap` with its defaults would, nothing else.
    pub fn docker_default() -> Chain {
        Chain {
            portmap: Some(Portmap::default()),
            raw: vec![serde_json::json!({
                "type": "portmap",
                "capabilities": {"portMappings": true}
            })],
            ..Chain::default()
        }
    }
}

/// `portmap` (`plugins/meta/portmap`): Docker's `-p` feeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portmap {
    /// `snat` (default true): masquerade hairpin and localhost connections to published ports.
    pub snat: bool,
    /// `masqAll`: masquerade connections to published ports from any source, not only the
    /// container's own subnet and localhost.
    pub masq_all: bool,
    /// `markMasqBit` (default 13): the fwmark bit that asks for masquerade.
    pub mark_masq_bit: u8,
    /// `externalSetMarkChain`: an existing chain that marks for masquerade instead of
    /// cnibridge's own (exclusive with `markMasqBit`).
    pub external_set_mark_chain: Option<String>,
    /// `conditionsV4` / `conditionsV6`: iptables match arguments added to the rules that send
    /// traffic to a container's published ports, one argument per element.
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    /// `backend`: `None` = the daemon's.
    pub backend: Option<MasqBackend>,
}

impl Default for Portmap {
    fn default() -> Self {
        Portmap {
            snat: true,
            masq_all: false,
            mark_masq_bit: 13,
            external_set_mark_chain: None,
            conditions_v4: Vec::new(),
            conditions_v6: Vec::new(),
            backend: None,
        }
    }
}

/// `firewall` (`plugins/meta/firewall`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallPlugin {
    /// `iptablesAdminChainName` (default `CNI-ADMIN`): a chain jumped to before cnibridge's own
    /// rules and never flushed by cnibridge, for the operator's rules.
    pub admin_chain: String,
    /// `ingressPolicy` (default `open`).
    pub ingress_policy: IngressPolicy,
}

impl Default for FirewallPlugin {
    fn default() -> Self {
        FirewallPlugin {
            admin_chain: "CNI-ADMIN".into(),
            ingress_policy: IngressPolicy::Open,
        }
    }
}

/// The firewall plugin's `ingressPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressPolicy {
    /// `open` (or empty): no isolation.
    Open,
    /// `same-bridge`: containers accept connections only from their own bridge (and the host).
    SameBridge,
    /// `isolated`: not even from their own bridge.
    Isolated,
}

impl IngressPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressPolicy::Open => "open",
            IngressPolicy::SameBridge => "same-bridge",
            IngressPolicy::Isolated => "isolated",
        }
    }
}

/// `tuning` (`plugins/meta/tuning`): applied to the container's interface before Docker
/// moves it, and (sysctls) in the sandbox at Join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub promisc: Option<bool>,
    pub allmulti: Option<bool>,
    /// `txQLen`.
    pub tx_qlen: Option<u32>,
    /// `sysctl`: namespace-wide `net.*` keys only (dotted form), written in the sandbox.
    pub sysctl: BTreeMap<String, String>,
}

/// `bandwidth` (`plugins/meta/bandwidth`): rates in bits per second, bursts in bits, as the
/// plugin reads them. A direction is shaped only when both its rate and burst are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Traffic into the container: a TBF qdisc on the host end of the veth.
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    /// Traffic out of the container: redirected from the host end's ingress to an ifb device
    /// carrying a TBF qdisc.
    pub egress_rate: u64,
    pub egress_burst: u64,
}

impl Bandwidth {
    /// Whether any direction is shaped.
    pub fn shapes(&self) -> bool {
        self.ingress_rate > 0 || self.egress_rate > 0
    }
}
