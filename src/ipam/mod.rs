//! Address allocation, host-local compatible.
//!
//! `Ipam` is what the CNM layer and the driver call. Under it: pure range-set maths and the
//! host-local cursor (`range`, `allocator`), the on-disk store in host-local's exact format
//! (`disk`), the pool table with default pools and overlap checks (`pools`), and the
//! self-certifying file contents that tell cnibridge's allocation files from anyone else's
//! (`owner`), so that it only ever deletes or relabels its own. `address` holds the address
//! half of the facade.
//! All methods block (file I/O, `flock`); async callers use `spawn_blocking`.
//!
//! The allocation files are the only record of addresses: nothing else is written per
//! address, and nothing on the address path fsyncs (host-local does not either). Only pool
//! records are kept in the state dir, durably.
//!
//! Crash safety: a SIGKILL between the O_EXCL create of an address file and its write leaves
//! an empty file, which holds the address for nobody; host-local has the same window. Such
//! files are not recognisably anyone's and are left for a garbage collector (an empty file is
//! never ours, so we never delete a file a host-local writer is about to fill). `pending`
//! files whose endpoint never came are ours and are collected (`abandoned`).
//!
//! Locking: the pool table's mutex is held only briefly, never across an fsync (RequestPool
//! reserves the pool under it, writes the record without it, then publishes the pool); each
//! pool has its own mutex, held across its record writes and the flock of its host-local
//! directory, so a slow disk or a CNI runtime holding that flock stalls that pool only. The flock is taken and released per operation so host-local can
//! interleave; the directory and the lock file are opened once per pool and kept.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state::{Durability, StateDir, StateError};

mod abandoned;
mod address;
pub mod allocator;
mod conf;
pub mod disk;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
mod merge;
mod owner;
pub mod pools;
pub use crate::range;
mod request;

use crate::range::{next_ip, Range, RangeSet};
pub use abandoned::PendingAddress;
use allocator::{locked, release, Outcome, Store};
use disk::DiskStore;
pub use owner::is_ours;

/// The RequestPool `Data` key that hands Docker the gateway.
pub const GATEWAY_DATA: &str = "com.docker.network.gateway";

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
        let (base, size) = s.rsplit_once(':').ok_or_else(|| {
            format!("default pool {s:?}: expected BASE/LEN:SIZE, e.g. 10.210.0.0/16:24")
        })?;
        let base: IpNet = base
            .parse()
            .map_err(|_| format!("default pool {s:?}: {base:?} is not a CIDR"))?;
        let size: u8 = size
            .parse()
            .map_err(|_| format!("default pool {s:?}: size {size:?} is not a prefix length"))?;
        if base.trunc() != base {
            return Err(format!(
                "default pool {s:?}: {base} has host bits set; did you mean {}?",
                base.trunc()
            ));
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
    /// Claimed at CreateEndpoint: the EndpointID and the host veth name derived from it
    /// (build it with [`Owner::endpoint`]; any other ifname is refused, since the pair is
    /// what marks the file as ours).
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

/// One `rangeStart..=rangeEnd` window of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: IpAddr,
    pub end: IpAddr,
}

/// The CNI config a pool was requested with (`--ipam-opt cni.conf=NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConf {
    /// `NAME` as the user gave it.
    pub selector: String,
    /// The file it selected.
    pub file: PathBuf,
}

impl PoolConf {
    /// The file name messages use (`mybridge.conf`).
    pub fn file_name(&self) -> String {
        crate::cni::config::display_name(&self.file)
    }
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
    /// Every window of the range set, in host-local's walk order, when the pool comes from a
    /// CNI config; empty = the one window `range_start..=range_end` (pools from Docker's
    /// flags, and records written before configs were supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Window>,
    /// The CNI config the pool came from; its gateway is then fixed (`gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<PoolConf>,
}

impl PoolRecord {
    /// The windows host-local walks, in order.
    pub fn windows(&self) -> Vec<Window> {
        if self.ranges.is_empty() {
            vec![Window {
                start: self.range_start,
                end: self.range_end,
            }]
        } else {
            self.ranges.clone()
        }
    }
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
    /// `--cni-conf-dir`: where `--ipam-opt cni.conf=NAME` looks configs up.
    pub cni_conf_dir: PathBuf,
}

/// Kind of the pool records in the state dir (fsynced).
const POOLS_KIND: &str = "pools";

/// Per-pool work state; its mutex serialises this pool's store operations (and so waits for
/// the flock) without blocking other pools or readers of the record.
#[derive(Debug, Default)]
struct Work {
    /// The pool's host-local directory, opened at its first operation and kept.
    store: Option<DiskStore>,
    /// Set by release_pool, so a caller that looked the slot up before sees it gone.
    released: bool,
}

impl Work {
    fn store(&mut self, rec: &PoolRecord) -> Result<&mut DiskStore, IpamError> {
        let st = match self.store.take() {
            Some(st) => st,
            None => DiskStore::open(&rec.data_dir, &rec.cni_name)?,
        };
        Ok(self.store.insert(st))
    }
}

#[derive(Debug)]
struct Slot {
    /// Read without waiting for store work; written only while `work` is held.
    record: RwLock<PoolRecord>,
    work: Mutex<Work>,
}

impl Slot {
    fn work(&self) -> WorkGuard<'_> {
        WorkGuard(lock(&self.work))
    }
}

/// A pool's locked work state. If its holder panics mid-operation, the store is dropped while
/// unwinding: closing the lock file releases a flock that nobody would otherwise give back,
/// so neither host-local nor our next caller waits forever; the next operation reopens it.
struct WorkGuard<'a>(MutexGuard<'a, Work>);

impl Drop for WorkGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store = None;
        }
    }
}

impl std::ops::Deref for WorkGuard<'_> {
    type Target = Work;
    fn deref(&self) -> &Work {
        &self.0
    }
}

impl std::ops::DerefMut for WorkGuard<'_> {
    fn deref_mut(&mut self) -> &mut Work {
        &mut self.0
    }
}

/// The IPAM half of the plugin.
pub struct Ipam {
    cfg: IpamConfig,
    /// Held only for look-ups and for RequestPool's check-and-reserve and publish, never across
    /// a flock or an fsync.
    table: Mutex<BTreeMap<String, Arc<Slot>>>,
    /// RequestPools whose record is being written (see `request`).
    reserved: request::Reservations,
}

// Handlers call the IPAM from many threads at once.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Ipam>();
};

// A panicking thread must not take the IPAM down with it: the data behind these locks is
// only replaced whole, so it is consistent even after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The range set host-local would build for this pool; `gateway` is what the walk skips.
fn range_set(rec: &PoolRecord, gateway: Option<IpAddr>) -> RangeSet {
    RangeSet(
        rec.windows()
            .into_iter()
            .map(|w| Range {
                subnet: rec.subnet,
                range_start: w.start,
                range_end: w.end,
                gateway,
            })
            .collect(),
    )
}

/// The gateway host-local assumes when none is configured: network + 1. Until Docker asks for
/// the gateway we keep that address out of dynamic allocation, as host-local would.
fn effective_gateway(rec: &PoolRecord) -> IpAddr {
    rec.gateway.unwrap_or_else(|| next_ip(rec.subnet.network()))
}

fn with_prefix(ip: IpAddr, subnet: &IpNet) -> Result<IpNet, IpamError> {
    IpNet::new(ip, subnet.prefix_len())
        .map_err(|e| IpamError::Invalid(format!("address {ip} with /{}: {e}", subnet.prefix_len())))
}

impl Ipam {
    /// Load the pools from the state dir. Nothing to recover: the allocation files say by
    /// themselves which are ours.
    pub fn open(cfg: IpamConfig) -> Result<Arc<Self>, IpamError> {
        pools::check_default_pools(&cfg.default_pools)?;
        let records: Vec<PoolRecord> = cfg.state.load_all(POOLS_KIND)?;
        let table = records
            .into_iter()
            .map(|rec| {
                let slot = Slot {
                    record: RwLock::new(rec.clone()),
                    work: Mutex::new(Work::default()),
                };
                (rec.id, Arc::new(slot))
            })
            .collect();
        Ok(Arc::new(Self {
            cfg,
            table: Mutex::new(table),
            reserved: Default::default(),
        }))
    }

    fn slot(&self, pool_id: &str) -> Option<Arc<Slot>> {
        lock(&self.table).get(pool_id).cloned()
    }

    /// Persist a changed record, then publish it; on failure nothing changes. The caller holds
    /// the slot's `work`, which serialises writers.
    fn update_record(&self, slot: &Slot, f: impl FnOnce(&mut PoolRecord)) -> Result<(), IpamError> {
        let mut rec = read(&slot.record).clone();
        f(&mut rec);
        self.cfg
            .state
            .write(POOLS_KIND, &rec.id, &rec, Durability::PowerLoss)?;
        *write(&slot.record) = rec;
        Ok(())
    }

    /// Give a pool back (ReleasePool): removes every address file of the pool's subnet whose
    /// content is ours (never `lock`, the cursors, or anyone else's files), then the record.
    /// Unknown pools are fine. Files we could not remove are reported after the pool is gone,
    /// since Docker does not retry.
    pub fn release_pool(&self, pool_id: &str) -> Result<(), IpamError> {
        let Some(slot) = self.slot(pool_id) else {
            return Ok(());
        };
        let mut work = slot.work();
        if work.released {
            return Ok(());
        }
        let rec = read(&slot.record).clone();
        let mut failures = Vec::new();
        let res = work.store(&rec).and_then(|st| {
            locked(st, |s| {
                for ip in s.addresses()? {
                    if !rec.subnet.contains(&ip) {
                        continue;
                    }
                    match release(s, ip) {
                        Ok(Outcome::Done | Outcome::Missing) => {}
                        Ok(Outcome::Foreign(_)) => {
                            tracing::debug!(pool = %rec.id, address = %ip, "leaving a file that is not ours");
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                Ok(())
            })
        });
        if let Err(e) = res {
            failures.push(e.to_string());
        }
        self.cfg.state.remove(POOLS_KIND, &rec.id)?;
        work.released = true;
        // Closes the lock file: the directory is host-local's again.
        work.store = None;
        drop(work);
        {
            let mut table = lock(&self.table);
            if table.get(pool_id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                table.remove(pool_id);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(IpamError::Store {
                path: rec.data_dir.join(&rec.cni_name),
                reason: format!(
                    "pool {} was released, but these addresses stay reserved until their files \
                     are removed by hand: {}",
                    rec.id,
                    failures.join("; ")
                ),
            })
        }
    }

    /// Record (or clear) the Docker network using a pool.
    pub fn bind_network(&self, pool_id: &str, network_id: Option<&str>) -> Result<(), IpamError> {
        let unknown = || IpamError::UnknownPool(pool_id.to_string());
        let slot = self.slot(pool_id).ok_or_else(unknown)?;
        let work = slot.work();
        if work.released {
            return Err(unknown());
        }
        self.update_record(&slot, |r| r.network_id = network_id.map(str::to_string))
    }

    /// A pool by PoolID.
    pub fn pool(&self, pool_id: &str) -> Option<PoolRecord> {
        self.slot(pool_id).map(|s| read(&s.record).clone())
    }

    /// The pool of a subnet (CreateNetwork's IPv4Data/IPv6Data), preferring `address_space`;
    /// pools never overlap, so the subnet alone decides.
    pub fn find_pool(&self, address_space: &str, subnet: &IpNet) -> Option<PoolRecord> {
        let subnet = subnet.trunc();
        let matching: Vec<PoolRecord> = self
            .pools()
            .into_iter()
            .filter(|p| p.subnet == subnet)
            .collect();
        matching
            .iter()
            .find(|p| p.address_space == address_space)
            .or(if matching.len() == 1 {
                matching.first()
            } else {
                None
            })
            .cloned()
    }

    /// `--cni-conf-dir`.
    pub fn cni_conf_dir(&self) -> &std::path::Path {
        &self.cfg.cni_conf_dir
    }

    /// `--cni-data-dir`: the host-local data dir of pools whose config names none.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.cfg.data_dir
    }

    /// Every pool held, ordered by PoolID.
    pub fn pools(&self) -> Vec<PoolRecord> {
        let slots: Vec<Arc<Slot>> = lock(&self.table).values().cloned().collect();
        slots.iter().map(|s| read(&s.record).clone()).collect()
    }
}

#[cfg(test)]
mod tests;
