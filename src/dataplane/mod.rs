//! Kernel effects for bridges and veth pairs, behind the `Dataplane` trait.
//!
//! The real implementation (`netlink`) talks rtnetlink only; `testing` holds a strict recording
//! fake for driver tests.

use std::future::Future;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod batch_delete;
pub mod netlink;
pub(crate) mod plan;
mod rtnl;
mod shaping;
pub mod sysctl;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The bridge a network needs, as the driver wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSpec {
    /// Linux interface name, at most 15 bytes.
    pub name: String,
    /// MTU used only when the bridge is created (an existing bridge keeps its MTU, as in CNI).
    pub mtu: Option<u32>,
    /// Gateway addresses (with the pool's prefix length) that must be on the bridge.
    pub addresses: Vec<IpNet>,
    /// Turn promiscuous mode on (CNI `promiscMode`; never turned off, as in CNI).
    #[serde(default)]
    pub promisc: bool,
    /// Replace a conflicting address of the bridge instead of refusing (CNI `forceAddress`).
    #[serde(default)]
    pub force_address: bool,
}

/// One veth pair for an endpoint: the host end goes on the bridge, the peer stays in the host
/// namespace, down, for Docker to move into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethSpec {
    /// Host-side name (on the bridge), at most 15 bytes.
    pub host_name: String,
    /// Container-side temporary name Docker will move and rename, at most 15 bytes.
    pub peer_name: String,
    /// Bridge the host end is attached to.
    pub bridge: String,
    /// MTU for both ends.
    pub mtu: Option<u32>,
    /// MAC of the container end, so the MAC Docker applies later is already in place.
    pub peer_mac: Option<[u8; 6]>,
    /// Hairpin (reflective relay) on the host end's bridge port (CNI `hairpinMode`).
    #[serde(default)]
    pub hairpin: bool,
    /// CNI `tuning` of the container end, set while it is still in the host namespace.
    #[serde(default)]
    pub peer_tuning: PeerTuning,
}

/// Link settings of the container end (CNI `tuning`'s `mtu`, `promisc`, `allmulti`,
/// `txQLen`; its `mac` is `VethSpec::peer_mac`). `None` = left as the kernel makes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTuning {
    pub mtu: Option<u32>,
    pub promisc: Option<bool>,
    pub allmulti: Option<bool>,
    pub tx_qlen: Option<u32>,
}

/// A token bucket (a TBF qdisc), as the CNI bandwidth plugin configures it: rate in bits per
/// second, burst in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub rate: u64,
    pub burst: u64,
}

/// Traffic shaping of one endpoint (CNI `bandwidth`). `ingress` = into the container (a TBF
/// root qdisc on the host end), `egress` = out of it (the host end's ingress redirected by a
/// mirred action to an ifb device with a TBF root qdisc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shaping {
    pub ingress: Option<TokenBucket>,
    pub egress: Option<TokenBucket>,
}

/// What `ensure_bridge` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeOutcome {
    /// The bridge did not exist and was created now.
    Created,
    /// A bridge of that name already existed and was adopted.
    Existed,
}

/// Errors of the kernel side, with the kind a caller needs to decide.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The link does not exist.
    #[error("link {0} not found")]
    NotFound(String),
    /// A link of that name exists and is not what we need.
    #[error("{name} already exists but is not a {wanted}")]
    WrongKind { name: String, wanted: &'static str },
    /// The bridge carries another address of the same family (CNI bridge's rule).
    #[error("bridge {bridge} already has an IP address different from {wanted} ({existing}); remove it, choose another bridge name, or set forceAddress to replace it")]
    AddressConflict {
        bridge: String,
        existing: IpNet,
        wanted: IpNet,
    },
    /// A tuning sysctl could not be written in the sandbox.
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    /// Any other netlink failure, with what was being done.
    #[error("{op}: {reason}")]
    Netlink { op: String, reason: String },
}

/// Kernel operations the driver needs. Every verb is idempotent.
pub trait Dataplane: Send + Sync + 'static {
    /// Create the bridge if missing (with MTU), bring it up and put `addresses` on it.
    fn ensure_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<BridgeOutcome, DataplaneError>> + Send;

    /// The addresses on the bridge `name`; `None` when there is no bridge of that name.
    fn bridge_addresses(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<IpNet>>, DataplaneError>> + Send;

    /// Undo what a network did to a bridge it borrowed: take `remove` (the gateways it put
    /// there) off and put `add` (what `forceAddress` removed) back. A missing bridge or
    /// address is fine.
    fn restore_bridge_addresses(
        &self,
        name: &str,
        remove: &[IpNet],
        add: &[IpNet],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Delete the bridge if no port is attached; returns whether it was deleted. Missing is `Ok(false)`.
    fn delete_bridge_if_unused(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<bool, DataplaneError>> + Send;

    /// Create the veth pair in the host namespace, attach and raise the host end, set MTU and
    /// the peer MAC. If a pair with these names already exists on that bridge it is kept.
    fn create_veth(
        &self,
        spec: &VethSpec,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Delete a link by name (the veth peer goes with it). Already gone is `Ok`.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Names of the links attached to the bridge; a missing bridge has none.
    fn bridge_ports(
        &self,
        bridge: &str,
    ) -> impl Future<Output = Result<Vec<String>, DataplaneError>> + Send;

    /// Whether a link of that name exists in the host namespace.
    fn link_exists(&self, name: &str) -> impl Future<Output = Result<bool, DataplaneError>> + Send;

    /// Set hairpin mode of a bridge port (the host end of a veth): the bridge may then send a
    /// frame back out of the port it came in on. A container reaching its own published port
    /// through the host address needs it, since br_netfilter DNATs that connection at the
    /// bridge and forwards it there (moby does the same without its userland proxy). A missing
    /// link is `NotFound`.
    fn set_hairpin(
        &self,
        port: &str,
        on: bool,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Make the shaping of the host end `host_veth` exactly `shaping`, with `ifb` as the egress
    /// device (created when egress is shaped, deleted when it is not). Replaces earlier
    /// shaping; an empty `shaping` removes it. A missing veth is `NotFound`.
    fn set_shaping(
        &self,
        host_veth: &str,
        ifb: &str,
        shaping: &Shaping,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Write namespace-wide sysctls (dotted `net.*` keys, e.g. `net.ipv4.ip_forward`) inside
    /// the network namespace at `netns` (a Docker SandboxKey), as CNI `tuning` does.
    fn set_sysctls(
        &self,
        netns: &Path,
        sysctls: &[(String, String)],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
}
