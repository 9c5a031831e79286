//! Address allocation, host-local compatible.
//!
//! `Ipam` is what the CNM layer and the driver call. Under it: pure range-set maths and the
//! host-local cursor (`range`, `allocator`), the on-disk store in host-local's exact format
//! (`disk`), and the pool table with default pools and overlap checks (`pools`).
//! All methods block (file I/O, `flock`); async callers use `spawn_blocking`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state::{StateDir, StateError};

/// Address space names we answer with, so CreateNetwork can tell our pools from Docker's IPAM.
pub const LOCAL_ADDRESS_SPACE: &str = "CniLocal";
/// See [`LOCAL_ADDRESS_SPACE`].
pub const GLOBAL_ADDRESS_SPACE: &str = "CniGlobal";

/// One `--default-pools` entry: split `base` into subnets of prefix length `size`
/// (written `10.210.0.0/16:24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    pub base: IpNet,
    pub size: u8,
}

impl FromStr for DefaultPool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (base, size) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("default pool {s:?}: expected BASE/LEN:SIZE, e.g. 10.210.0.0/16:24"))?;
        let base: IpNet = base
            .parse()
            .map_err(|_| format!("default pool {s:?}: {base:?} is not a CIDR"))?;
        let size: u8 = size
            .parse()
            .map_err(|_| format!("default pool {s:?}: size {size:?} is not a prefix length"))?;
        if base.trunc() != base {
            return Err(format!("default pool {s:?}: {base} has host bits set; did you mean {}?", base.trunc()));
        }
        if size < base.prefix_len() || size > base.max_prefix_len() {
            return Err(format!(
                "default pool {s:?}: size /{size} must lie between /{} and /{}",
                base.prefix_len(),
                base.max_prefix_len()
            ));
        }
        Ok(Self { base, size })
    }
}

/// The default `--default-pools`.
pub const DEFAULT_POOLS: &str = "10.210.0.0/16:24,fd7b:c4e2:d1a0::/48:64";

/// Who an allocation file belongs to; rendered as host-local's `<id>\r\n<ifname>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// The network's gateway (`cnibridge-gateway\r\ngateway`).
    Gateway,
    /// An `--aux-address` (`cnibridge-aux\r\naux`).
    Aux,
    /// Handed out by RequestAddress, not yet claimed by an endpoint
    /// (`cnibridge-pending-<token>\r\npending`).
    Pending(String),
    /// Claimed at CreateEndpoint: the EndpointID and the host veth name.
    Endpoint { endpoint_id: String, ifname: String },
}

/// A RequestPool as the IPAM sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRequest {
    pub address_space: String,
    /// `--subnet`; `None` = pick one from the default pools.
    pub pool: Option<IpNet>,
    /// `--ip-range`.
    pub sub_pool: Option<IpNet>,
    /// `--ipam-opt`.
    pub options: BTreeMap<String, String>,
    pub v6: bool,
}

/// The answer to a RequestPool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGrant {
    pub pool_id: String,
    pub pool: IpNet,
    pub data: BTreeMap<String, String>,
}

/// A pool as remembered (durably) under `<state>/pools/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Opaque to Docker; we use the pool's CIDR, which is unique because pools may not overlap.
    pub id: String,
    pub address_space: String,
    pub subnet: IpNet,
    /// `--ip-range` as given.
    pub sub_pool: Option<IpNet>,
    /// First and last address handed out dynamically (host-local rangeStart/rangeEnd).
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Set once the gateway is requested.
    pub gateway: Option<IpAddr>,
    /// CNI network name = directory name under `data_dir`.
    pub cni_name: String,
    /// host-local `dataDir`.
    pub data_dir: PathBuf,
    /// Index of this range set (`last_reserved_ip.<index>`).
    pub range_index: usize,
    /// Docker NetworkID once CreateNetwork used this pool.
    pub network_id: Option<String>,
}

/// IPAM failures; messages say what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The request is invalid (names the field and value).
    #[error("{0}")]
    Invalid(String),
    /// The subnet overlaps a pool in use.
    #[error("subnet {wanted} overlaps {existing} ({holder}); choose another --subnet or remove that network")]
    Overlap {
        wanted: IpNet,
        existing: IpNet,
        holder: String,
    },
    /// No default pool is free.
    #[error("no free pool left in the default pools ({pools}); pass --subnet or add pools with --default-pools")]
    NoFreePool { pools: String },
    /// Unknown PoolID.
    #[error("unknown pool {0}; it was released or never requested from cnibridge")]
    UnknownPool(String),
    /// The address is taken (by us or another host-local user).
    #[error("requested IP address {address} is not available in pool {pool} (held by {holder})")]
    AddressInUse {
        address: IpAddr,
        pool: IpNet,
        holder: String,
    },
    /// Requested address outside the pool.
    #[error("requested IP address {address} is not in pool {pool}")]
    OutOfPool { address: IpAddr, pool: IpNet },
    /// No address left (host-local's wording plus advice).
    #[error("no IP addresses available in range set: {start}-{end} (pool {pool}); release addresses or use a larger --subnet/--ip-range")]
    Exhausted {
        pool: IpNet,
        start: IpAddr,
        end: IpAddr,
    },
    /// Disk store failure.
    #[error("address store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    /// State failure.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Configuration of the IPAM.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub state: StateDir,
    /// `--cni-data-dir` (host-local `dataDir` default).
    pub data_dir: PathBuf,
    pub default_pools: Vec<DefaultPool>,
}

/// The IPAM half of the plugin.
pub struct Ipam {
    _cfg: IpamConfig,
}

impl Ipam {
    /// Load pools from the state dir.
    pub fn open(cfg: IpamConfig) -> Result<Arc<Self>, IpamError> {
        let _ = cfg;
        unimplemented!()
    }
    pub fn request_pool(&self, req: &PoolRequest) -> Result<PoolGrant, IpamError> {
        let _ = req;
        unimplemented!()
    }
    pub fn release_pool(&self, pool_id: &str) -> Result<(), IpamError> {
        let _ = pool_id;
        unimplemented!()
    }
    pub fn request_address(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        gateway: bool,
    ) -> Result<IpNet, IpamError> {
        let _ = (pool_id, address, gateway);
        unimplemented!()
    }
    pub fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<(), IpamError> {
        let _ = (pool_id, address);
        unimplemented!()
    }
    pub fn set_owner(&self, pool_id: &str, address: IpAddr, owner: &Owner) -> Result<(), IpamError> {
        let _ = (pool_id, address, owner);
        unimplemented!()
    }
    pub fn bind_network(&self, pool_id: &str, network_id: Option<&str>) -> Result<(), IpamError> {
        let _ = (pool_id, network_id);
        unimplemented!()
    }
    pub fn pool(&self, pool_id: &str) -> Option<PoolRecord> {
        let _ = pool_id;
        unimplemented!()
    }
    pub fn find_pool(&self, address_space: &str, subnet: &IpNet) -> Option<PoolRecord> {
        let _ = (address_space, subnet);
        unimplemented!()
    }
    pub fn pools(&self) -> Vec<PoolRecord> {
        unimplemented!()
    }
}
