//! The records the driver keeps: one per network (durable) and one per endpoint.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

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
}
