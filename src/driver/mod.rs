//! The orchestration: one function per CNM operation, calling ipam, dataplane, firewall and
//! state. Every handler is idempotent (Docker re-sends on timeouts) and validates before it
//! touches anything; CreateNetwork, CreateEndpoint, Join and publishing then run their changes
//! as a `plan`, which undoes the done steps when one fails. State and file work runs on the
//! blocking pool (`write_async`, `blocking_io`), never on an async worker.
//!
//! Locking: each network has its own async mutex, so Join/Leave/DeleteEndpoint on different
//! networks never wait for each other; the map of networks is held only to look an entry up.
//! Host ports are shared by all networks, so the table of published ports has its own (sync)
//! lock, taken under a network's lock and never across an await.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ipnet::IpNet;

use crate::cni::chain::{IngressPolicy, Portmap};
use crate::dataplane::{BridgeSpec, Dataplane, DataplaneError};
use crate::firewall::{EndpointPorts, Firewall, FirewallError, NetworkRules, PortOptions};
use crate::ipam::{Ipam, IpamError};
use crate::state::records::{EndpointRecord, FamilyData, NetworkRecord, ENDPOINTS, NETWORKS};
use crate::state::{Durability, StateDir, StateError};

mod abandoned;
pub mod bandwidth;
pub use abandoned::ABANDON_GRACE;
mod cni;
mod create_network;
mod creating;
mod endpoint;
mod export;
mod forget;
mod join;
pub use crate::names;
pub use forget::{Forgotten, Known};
mod network;
pub mod options;
pub(crate) mod plan;
mod pools;
mod spec;
mod unused_pools;
mod veth_names;
pub use spec::{
    EndpointAnswer, EndpointSpec, GenericOptions, IpamFamily, JoinAnswer, NetworkSpec, StaticRoute,
};

/// The export dir's place under the state dir when `--cni-export-dir` is not given.
pub const DEFAULT_EXPORT_SUBDIR: &str = "cni-export";

/// Driver settings beyond its collaborators.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// `--cni-export-dir`: every network's effective config as `<name>.conflist`.
    pub export_dir: PathBuf,
}
pub mod ports;
mod publish;

use ports::{HostPorts, PortRequest, PortTable, SystemHostPorts};

/// Driver failures; the CNM layer sends `to_string()` as `{"Err": …}`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request is invalid; the text names the field and the value.
    #[error("{0}")]
    Invalid(String),
    /// CreateEndpoint/Join on a network this plugin does not know.
    #[error("network {0} is not known to cnibridge (was it created while cnibridge used another --state-dir?); remove and re-create the network")]
    UnknownNetwork(String),
    /// Join on an endpoint that was never created.
    #[error("endpoint {endpoint} of network {network} is not known to cnibridge")]
    UnknownEndpoint { network: String, endpoint: String },
    #[error("{context}: {source}")]
    Dataplane {
        context: String,
        #[source]
        source: DataplaneError,
    },
    #[error("{context}: {source}")]
    Firewall {
        context: String,
        #[source]
        source: FirewallError,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Cni(#[from] crate::cni::CniError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Several teardown steps failed; all were attempted.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<DriverError>),
    /// A blocking task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<plan::InjectedFailure> for DriverError {
    fn from(e: plan::InjectedFailure) -> Self {
        DriverError::Internal(e.to_string())
    }
}

fn dp_err(context: impl Into<String>) -> impl FnOnce(DataplaneError) -> DriverError {
    let context = context.into();
    move |source| DriverError::Dataplane { context, source }
}

fn fw_err(context: impl Into<String>) -> impl FnOnce(FirewallError) -> DriverError {
    let context = context.into();
    move |source| DriverError::Firewall { context, source }
}

/// One network and its endpoints, guarded by the network's own lock.
#[derive(Debug)]
pub(crate) struct NetState {
    pub(crate) net: NetworkRecord,
    pub(crate) endpoints: BTreeMap<String, EndpointRecord>,
    /// Veth deletions still running in the background (see `delete_endpoint`).
    pub(crate) teardowns: Vec<tokio::task::JoinHandle<()>>,
    /// The port bindings Join carried, per endpoint, for a ProgramExternalConnectivity whose
    /// options carry none. In memory only: Program follows Join within the same request flow.
    pub(crate) requested: BTreeMap<String, Vec<PortRequest>>,
}

impl NetState {
    fn new(net: NetworkRecord) -> Self {
        NetState {
            net,
            endpoints: BTreeMap::new(),
            teardowns: Vec::new(),
            requested: BTreeMap::new(),
        }
    }
}

/// A network's lock, and what never changes about it (readable without the lock, so no lookup
/// across networks waits for a busy one).
pub(crate) struct NetSlot {
    bridge: String,
    /// The CNI network name (export file, host-local directory), if the record has one.
    cni_name: Option<String>,
    state: tokio::sync::Mutex<NetState>,
}

impl NetSlot {
    fn new(ns: NetState) -> Arc<Self> {
        Arc::new(NetSlot {
            bridge: ns.net.bridge.clone(),
            cni_name: ns.net.cni.as_ref().map(|c| c.name.clone()),
            state: tokio::sync::Mutex::new(ns),
        })
    }

    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, NetState> {
        self.state.lock().await
    }
}

type NetEntry = Arc<NetSlot>;

/// The network driver.
pub struct Driver<D, F> {
    dp: Arc<D>,
    fw: F,
    ipam: Arc<Ipam>,
    state: StateDir,
    nets: RwLock<HashMap<String, NetEntry>>,
    export_dir: PathBuf,
    /// Every published mapping, for conflict checks across networks.
    ports: Mutex<PortTable>,
    host_ports: Box<dyn HostPorts>,
    activations: forget::Activations,
    /// CreateNetworks in flight: one per NetworkID, bridge names reserved.
    creations: creating::Creations,
    /// The host veth name each live endpoint holds.
    veth_names: veth_names::VethNames,
}

/// Short ids for logs and names.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn parse_net(what: &str, s: &str) -> Result<IpNet, DriverError> {
    s.parse().map_err(|_| {
        DriverError::Invalid(format!(
            "{what} {s:?} is not an address with prefix length (CIDR)"
        ))
    })
}

/// The firewall intent of a network, derived from its record each time (the record keeps the
/// `-o` map as sent, so records written before these options were honoured get them too).
fn firewall_rules(net: &NetworkRecord) -> NetworkRules {
    let fw = options::firewall_options(&net.options, net.internal).unwrap_or_else(|e| {
        // Only records written by a version that accepted these keys without checking them.
        tracing::warn!(network = short(&net.id), error = %e, "stored options are invalid; using Docker's firewall defaults");
        options::FirewallOptions::defaults(net.internal)
    });
    // A config's ipMasq covers every family of an attachment, as the bridge plugin's rules do.
    let (masquerade, masquerade_ipv6) = match net.cni.as_ref().filter(|c| c.file.is_some()) {
        Some(c) => (c.ip_masq && !net.internal, c.ip_masq && !net.internal),
        None => (fw.masquerade, fw.masquerade_ipv6),
    };
    let chain = net.cni.as_ref().map(|c| &c.chain);
    let firewall = chain.and_then(|c| c.firewall.as_ref());
    let policy = firewall.map_or(IngressPolicy::SameBridge, |f| f.ingress_policy);
    NetworkRules {
        network_id: net.id.clone(),
        bridge: net.bridge.clone(),
        subnets: net.families().map(|f| f.pool).collect(),
        internal: net.internal,
        masquerade,
        masquerade_ipv6,
        // The firewall plugin's `isolated`: not even from the same bridge.
        icc: fw.icc && policy != IngressPolicy::Isolated,
        port_options: chain
            .and_then(|c| c.portmap.as_ref())
            .map(port_options)
            .unwrap_or_default(),
        // Docker's networks and `same-bridge` are isolated from each other; `open` is not.
        isolate: policy != IngressPolicy::Open,
        admin_chain: firewall.map(|f| f.admin_chain.clone()),
    }
}

/// CNI portmap's keys as the firewall takes them.
fn port_options(p: &Portmap) -> PortOptions {
    PortOptions {
        snat: p.snat,
        masq_all: p.masq_all,
        mark_masq_bit: p.mark_masq_bit,
        external_set_mark_chain: p.external_set_mark_chain.clone(),
        conditions_v4: p.conditions_v4.clone(),
        conditions_v6: p.conditions_v6.clone(),
    }
}

fn bridge_spec(net: &NetworkRecord) -> BridgeSpec {
    let cni = net.cni.as_ref();
    // isGateway false: the gateway lives elsewhere on the L2, never on this bridge.
    let addresses = match cni {
        Some(c) if !c.is_gateway => Vec::new(),
        _ => net.families().filter_map(|f| f.gateway).collect(),
    };
    BridgeSpec {
        name: net.bridge.clone(),
        mtu: net.mtu,
        addresses,
        promisc: cni.is_some_and(|c| c.promisc_mode),
        force_address: cni.is_some_and(|c| c.force_address),
    }
}

/// Ports of our veth naming on a network's bridge that belong to no known endpoint, left by a
/// crash between forgetting an endpoint and deleting its veth.
async fn orphan_veths<D: Dataplane>(dp: &D, ns: &NetState) -> Vec<String> {
    let ports = match dp.bridge_ports(&ns.net.bridge).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(bridge = %ns.net.bridge, error = %e, "cannot list bridge ports");
            return Vec::new();
        }
    };
    ports
        .into_iter()
        .filter(|port| {
            port.starts_with(names::HOST_VETH_PREFIX)
                && !ns.endpoints.values().any(|ep| &ep.host_veth == port)
        })
        .collect()
}

/// Deletes an orphan veth and, if the endpoint was shaped, its ifb (not a bridge port itself).
async fn delete_orphan<D: Dataplane>(dp: &D, port: &str) {
    match dp.delete_link(port).await {
        Ok(()) => tracing::info!(veth = %port, "deleted veth of a forgotten endpoint"),
        Err(e) => tracing::warn!(veth = %port, error = %e, "cannot delete orphan veth"),
    }
    if let Some(ifb) = names::ifb_of_host_veth(port) {
        if let Ok(true) = dp.link_exists(&ifb).await {
            match dp.delete_link(&ifb).await {
                Ok(()) => tracing::info!(ifb = %ifb, "deleted ifb of a forgotten endpoint"),
                Err(e) => tracing::warn!(ifb = %ifb, error = %e, "cannot delete orphan ifb"),
            }
        }
    }
}

/// The holder of an orphan veth's name while it is deleted: no EndpointID is empty.
const ORPHAN: &str = "";

/// Run blocking file work (configs, exports) off the async workers.
async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Internal(e.to_string()))?
}

/// Run blocking IPAM work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IpamError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Internal(e.to_string()))?
        .map_err(DriverError::from)
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Load networks and endpoints from the state dir and reconcile them with the kernel:
    /// bridges of known networks exist again (after a reboot) and the firewall holds exactly
    /// the known networks' rules. Runs before the first request is read.
    pub async fn open(dp: D, fw: F, ipam: Arc<Ipam>, state: StateDir) -> Result<Self, DriverError> {
        let export_dir = state.root().join(DEFAULT_EXPORT_SUBDIR);
        Self::open_with(dp, fw, ipam, state, DriverConfig { export_dir }).await
    }

    /// [`Driver::open`] with explicit settings. Also writes the export of every known
    /// network again, so the export dir follows `--cni-export-dir` and survives a wipe.
    pub async fn open_with(
        dp: D,
        fw: F,
        ipam: Arc<Ipam>,
        state: StateDir,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        // Blocking state I/O on purpose here and below: this runs before the socket serves, so
        // no request waits on these workers.
        let nets: Vec<NetworkRecord> = state.load_all(NETWORKS)?;
        let eps: Vec<EndpointRecord> = state.load_all(ENDPOINTS)?;
        let mut map: HashMap<String, NetState> = nets
            .into_iter()
            .map(|n| (n.id.clone(), NetState::new(n)))
            .collect();
        for ep in eps {
            match map.get_mut(&ep.network_id) {
                Some(ns) => {
                    ns.endpoints.insert(ep.id.clone(), ep);
                }
                None => {
                    tracing::warn!(
                        endpoint = short(&ep.id),
                        "dropping endpoint of unknown network"
                    );
                    state.remove(ENDPOINTS, &ep.id)?;
                }
            }
        }
        let veth_names = veth_names::VethNames::default();
        for ep in map.values().flat_map(|ns| ns.endpoints.values()) {
            veth_names.known(&ep.host_veth, &ep.id);
        }
        let rules: Vec<NetworkRules> = map.values().map(|ns| firewall_rules(&ns.net)).collect();
        let published: Vec<EndpointPorts> = map
            .values()
            .filter(|ns| !ns.net.internal)
            .flat_map(|ns| ns.endpoints.values().filter_map(|ep| ep.ports.clone()))
            .collect();
        let table: PortTable = published
            .iter()
            .map(|p| {
                let key = (p.network_id.clone(), p.endpoint_id.clone());
                (key, p.mappings.clone())
            })
            .collect();
        fw.reconcile(&rules, &published).await.map_err(fw_err(
            "restoring firewall rules of known networks and ports",
        ))?;
        for ns in map.values_mut() {
            match dp.ensure_bridge(&bridge_spec(&ns.net)).await {
                Ok(crate::dataplane::BridgeOutcome::Created) => {
                    tracing::info!(network = short(&ns.net.id), bridge = %ns.net.bridge, "re-created missing bridge");
                    ns.net.bridge_created = true;
                    state.write(NETWORKS, &ns.net.id, &ns.net, Durability::PowerLoss)?;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(network = short(&ns.net.id), bridge = %ns.net.bridge, error = %e, "cannot restore bridge")
                }
            }
            if let Err(e) = export::write_blocking(&cfg.export_dir, &ns.net) {
                tracing::warn!(network = short(&ns.net.id), error = %e, "cannot write the network's CNI export");
            }
        }
        tracing::info!(
            networks = map.len(),
            published = table.len(),
            "state loaded"
        );
        let nets = map.into_iter().map(|(k, v)| (k, NetSlot::new(v))).collect();
        Ok(Self {
            dp: Arc::new(dp),
            fw,
            ipam,
            state,
            nets: RwLock::new(nets),
            export_dir: cfg.export_dir,
            ports: Mutex::new(table),
            host_ports: Box::new(SystemHostPorts),
            activations: forget::Activations::default(),
            creations: creating::Creations::default(),
            veth_names,
        })
    }

    /// Use `host` instead of the real host's ephemeral range and sockets when picking host
    /// ports (tests).
    pub fn with_host_ports(mut self, host: impl HostPorts) -> Self {
        self.host_ports = Box::new(host);
        self
    }

    fn port_table(&self) -> MutexGuard<'_, PortTable> {
        // Every change to the table is a single insert or remove, so a panic elsewhere cannot
        // leave it half-written; keep using it.
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the veths (and ifbs) of endpoints forgotten by a crash, every network's at once.
    /// Called once serving has started: after a SIGKILL with hundreds of them, the kernel needs
    /// seconds to unregister them, and no request should wait for that. Each network's lock is
    /// held while its orphans are found, so an endpoint created meanwhile is known; their names
    /// are held until they are gone, so no new endpoint takes one.
    pub async fn collect_orphans(&self) {
        let entries: Vec<NetEntry> = match self.nets.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        let mut deletions = tokio::task::JoinSet::new();
        for e in entries {
            let ns = e.lock().await;
            for port in orphan_veths(self.dp.as_ref(), &ns).await {
                self.veth_names.known(&port, ORPHAN);
                let (dp, names) = (self.dp.clone(), self.veth_names.clone());
                deletions.spawn(async move {
                    delete_orphan(dp.as_ref(), &port).await;
                    names.release(&port, ORPHAN);
                });
            }
        }
        let count = deletions.len();
        deletions.join_all().await;
        if count > 0 {
            tracing::info!(count, "veths of forgotten endpoints collected");
        }
    }

    /// Wait for every background veth deletion; called at shutdown so a clean stop leaves no
    /// veth behind.
    pub async fn settle(&self) {
        let entries: Vec<NetEntry> = match self.nets.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for e in entries {
            let pending: Vec<_> = e.lock().await.teardowns.drain(..).collect();
            for t in pending {
                let _ = t.await;
            }
        }
    }

    /// Re-apply every rule derived from the in-memory state (`cnibridge firewall-reload`,
    /// SIGHUP): after someone flushed the firewall, the networks' rules and the published ports
    /// are back, and rules of networks cnibridge no longer has are gone. Each network's lock is
    /// taken in turn, never two at once.
    pub async fn reload_firewall(&self) -> Result<(), DriverError> {
        let entries: Vec<NetEntry> = self
            .nets
            .read()
            .map(|m| m.values().cloned().collect())
            .map_err(|_| DriverError::Internal("the network table is poisoned".into()))?;
        let mut rules = Vec::with_capacity(entries.len());
        let mut published: Vec<EndpointPorts> = Vec::new();
        for e in entries {
            let ns = e.lock().await;
            rules.push(firewall_rules(&ns.net));
            if !ns.net.internal {
                published.extend(ns.endpoints.values().filter_map(|ep| ep.ports.clone()));
            }
        }
        // A stable order, so the result does not depend on the map's.
        rules.sort_by(|a, b| a.network_id.cmp(&b.network_id));
        published
            .sort_by(|a, b| (&a.network_id, &a.endpoint_id).cmp(&(&b.network_id, &b.endpoint_id)));
        self.fw.reconcile(&rules, &published).await.map_err(fw_err(
            "re-applying firewall rules of known networks and ports",
        ))?;
        tracing::info!(
            networks = rules.len(),
            published = published.len(),
            "firewall rules re-applied"
        );
        Ok(())
    }

    /// The IPAM this driver shares pools with.
    pub fn ipam(&self) -> &Arc<Ipam> {
        &self.ipam
    }

    fn entry(&self, network_id: &str) -> Option<NetEntry> {
        self.nets.read().ok()?.get(network_id).cloned()
    }

    /// Ids of the networks known, for diagnostics and tests.
    pub fn network_ids(&self) -> Vec<String> {
        self.nets
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}
#[cfg(test)]
mod cni_tests;
#[cfg(test)]
mod tests;
