//! The records the driver keeps: one per network (durable) and one per endpoint.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cni::chain::{Bandwidth, Chain};
use crate::firewall::EndpointPorts;

/// State kind of network records.
pub const NETWORKS: &str = "networks";
/// State kind of endpoint records.
pub const ENDPOINTS: &str = "endpoints";

/// Pool data of one family as CreateNetwork gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyData {
    /// Docker's address space; ours (`CniLocal`/`CniGlobal`) or Docker's own IPAM.
    pub address_space: String,
    pub pool: IpNet,
    /// Gateway with the pool's prefix length; `None` if Docker reserved none.
    pub gateway: Option<IpNet>,
    pub aux_addresses: BTreeMap<String, IpNet>,
    /// Our PoolID when cnibridge's IPAM holds this pool.
    pub pool_id: Option<String>,
}

/// One host-local range of a network's effective CNI config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRange {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: IpAddr,
}

/// One `ipam.routes` entry; no `gw` = via the family's gateway, as the bridge plugin does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The effective CNI config of a network: what cnibridge applies and exports. The bridge name
/// and MTU live in [`NetworkRecord`]; keys cnibridge does not implement are refused at
/// CreateNetwork, so everything else has its CNI default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRecord {
    /// CNI network name: host-local's directory under `data_dir` and the export's file name.
    pub name: String,
    /// The config file the network was created from; `None` = built from Docker's flags.
    pub file: Option<PathBuf>,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// host-local's range sets, in the config's order (the index is the cursor's).
    pub range_sets: Vec<Vec<CniRange>>,
    pub routes: Vec<CniRoute>,
    /// host-local `dataDir`, always written out.
    pub data_dir: PathBuf,
    /// The plugins chained after the bridge. Records written before chains were read come
    /// from Docker's flags or a bridge-only config, which published ports as portmap does.
    #[serde(default = "Chain::docker_default")]
    pub chain: Chain,
}

/// A Docker network as cnibridge remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Docker NetworkID.
    pub id: String,
    /// Linux bridge name.
    pub bridge: String,
    /// cnibridge created the bridge, so it removes it with the network.
    pub bridge_created: bool,
    pub mtu: Option<u32>,
    /// Container interface prefix (`eth`).
    pub iface_prefix: String,
    /// `--internal`: the gateway stays on the bridge but containers get no default route.
    pub internal: bool,
    pub ipv4: Option<FamilyData>,
    pub ipv6: Option<FamilyData>,
    /// The `-o` options as Docker sent them.
    pub options: BTreeMap<String, String>,
    /// The effective CNI config; absent in records written before configs were supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniRecord>,
    /// What the network changed on a bridge it borrowed (one that existed before), to undo
    /// when it goes: the bridge is the operator's again as it was.
    #[serde(default, skip_serializing_if = "BridgeChanges::is_empty")]
    pub bridge_changes: BridgeChanges,
}

/// Addresses a network put on (`added`) or, with `forceAddress`, took off (`removed`) a bridge
/// it did not create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeChanges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<IpNet>,
}

impl BridgeChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl NetworkRecord {
    /// Both families' data, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &FamilyData> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }
}

/// A Docker endpoint as cnibridge remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Docker EndpointID.
    pub id: String,
    pub network_id: String,
    pub address: Option<IpNet>,
    pub address_ipv6: Option<IpNet>,
    /// MAC of the container interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Host end of the veth pair (on the bridge).
    pub host_veth: String,
    /// Container end before Docker moves and renames it.
    pub peer_veth: String,
    /// Published ports as installed by ProgramExternalConnectivity (host port 0 resolved), so
    /// a restart reinstalls exactly these. Absent in records written before ports existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<EndpointPorts>,
    /// The endpoint's shaping (the network's bandwidth plugin and `-o cni.bandwidth.*`, then
    /// its own `driver-opt=cni.bandwidth.*`); `None` = not shaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}
