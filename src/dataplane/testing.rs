//! Recording fake of `Dataplane`.
//!
//! Strict on purpose: it holds bridges and veth pairs like the kernel would and refuses what the
//! kernel refuses (a veth on a bridge it does not hold, a second address of one family on a
//! bridge, a same-named link of another kind), so a driver test cannot pass on an order of
//! calls that fails for real. Faults are injected per fake, not through globals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use super::plan::plan_addresses;
use super::{BridgeOutcome, BridgeSpec, Dataplane, DataplaneError, PeerTuning, Shaping, VethSpec};

/// One call made to the fake, in the order it arrived (failed calls included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneCall {
    /// `ensure_bridge(spec)`.
    EnsureBridge(BridgeSpec),
    /// `delete_bridge_if_unused(name)`.
    DeleteBridgeIfUnused(String),
    /// `create_veth(spec)`.
    CreateVeth(VethSpec),
    /// `delete_link(name)`.
    DeleteLink(String),
    /// `link_exists(name)`.
    LinkExists(String),
    /// `bridge_ports(bridge)`.
    BridgePorts(String),
    /// `set_hairpin(port, on)`.
    SetHairpin(String, bool),
    /// `set_shaping(host_veth, ifb, shaping)`.
    SetShaping(String, String, Shaping),
    /// `set_sysctls(netns, sysctls)`.
    SetSysctls(PathBuf, Vec<(String, String)>),
    /// `restore_bridge_addresses(name, remove, add)`.
    RestoreBridgeAddresses(String, Vec<IpNet>, Vec<IpNet>),
}

/// A bridge the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeBridge {
    /// MTU it was created with.
    pub mtu: Option<u32>,
    /// Addresses on it, in the order they were added.
    pub addresses: Vec<IpNet>,
}

/// A veth pair the fake holds, keyed by its host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeVeth {
    /// Name of the container end.
    pub peer_name: String,
    /// Bridge the host end is enslaved to; `None` once that bridge was deleted under it.
    pub bridge: Option<String>,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// MAC of the container end.
    pub peer_mac: Option<[u8; 6]>,
    /// Hairpin mode of the host end (off when created).
    pub hairpin: bool,
    /// CNI tuning of the container end.
    pub peer_tuning: PeerTuning,
    /// Shaping of the host end (gone with the veth, as qdiscs go with their link).
    pub shaping: Shaping,
}

type Predicate = Box<dyn Fn(&DataplaneCall) -> bool + Send + Sync>;

/// A pause at the start of the next `ensure_bridge`, so a test can run another request while
/// one is inside it: the fake signals `entered` and waits for `release`.
#[derive(Default)]
pub struct Gate {
    entered: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl Gate {
    /// Wait until a call is paused at the gate.
    pub async fn entered(&self) {
        self.entered.notified().await
    }

    /// Let the paused call go on (or the next one through, if none is paused yet).
    pub fn release(&self) {
        self.released.notify_one()
    }
}

#[derive(Default)]
struct State {
    calls: Vec<DataplaneCall>,
    bridges: BTreeMap<String, FakeBridge>,
    veths: BTreeMap<String, FakeVeth>,
    /// Links of any other kind (e.g. a NIC or dummy that happens to carry a wanted name).
    foreign: Vec<String>,
    /// ifb devices made for egress shaping.
    ifbs: BTreeSet<String>,
    /// Sysctls written, by namespace path, in the order written.
    sysctls: BTreeMap<PathBuf, Vec<(String, String)>>,
    fail_calls: Vec<usize>,
    fail_when: Vec<Predicate>,
    bridge_gate: Option<Arc<Gate>>,
}

impl State {
    fn holds(&self, name: &str) -> bool {
        self.bridges.contains_key(name)
            || self.veths.contains_key(name)
            || self.veths.values().any(|v| v.peer_name == name)
            || self.foreign.iter().any(|f| f == name)
            || self.ifbs.contains(name)
    }

    fn ports_of(&self, bridge: &str) -> usize {
        self.veths
            .values()
            .filter(|v| v.bridge.as_deref() == Some(bridge))
            .count()
    }

    /// Record the call and decide whether an injected fault fires for it.
    fn record(&mut self, call: DataplaneCall) -> Result<(), DataplaneError> {
        let number = self.calls.len() + 1;
        let fail = self.fail_calls.contains(&number) || self.fail_when.iter().any(|p| p(&call));
        let op = format!("{call:?}");
        self.calls.push(call);
        if fail {
            return Err(DataplaneError::Netlink {
                op,
                reason: format!("fault injected into call {number} by RecordingDataplane"),
            });
        }
        Ok(())
    }
}

/// Strict in-memory `Dataplane`. Clones share one state, so a test keeps one handle and gives
/// another to the code under test.
#[derive(Clone, Default)]
pub struct RecordingDataplane {
    state: Arc<Mutex<State>>,
}

impl RecordingDataplane {
    /// An empty fake: no links, no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep the state readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DataplaneCall> {
        self.lock().calls.clone()
    }

    /// Return the calls so far and start a new record.
    pub fn take_calls(&self) -> Vec<DataplaneCall> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Fail the `n`-th call (1-based over the fake's whole life, so the call that becomes
    /// `calls()[n - 1]`). The failed call changes nothing.
    pub fn fail_nth_call(&self, n: usize) {
        self.lock().fail_calls.push(n);
    }

    /// Fail every call for which `pred` is true, until `clear_faults`.
    pub fn fail_when(&self, pred: impl Fn(&DataplaneCall) -> bool + Send + Sync + 'static) {
        self.lock().fail_when.push(Box::new(pred));
    }

    /// Remove every injected fault.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.fail_calls.clear();
        s.fail_when.clear();
    }

    /// Pause the next `ensure_bridge` at a gate, before it records or changes anything.
    pub fn gate_next_bridge(&self) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.lock().bridge_gate = Some(gate.clone());
        gate
    }

    /// Pretend a bridge already exists (made by someone else), for adoption tests.
    pub fn insert_bridge(&self, name: &str, bridge: FakeBridge) {
        self.lock().bridges.insert(name.to_string(), bridge);
    }

    /// Pretend a link of another kind holds `name` (for `WrongKind` tests).
    pub fn insert_foreign_link(&self, name: &str) {
        self.lock().foreign.push(name.to_string());
    }

    /// The bridge of that name, if held.
    pub fn bridge(&self, name: &str) -> Option<FakeBridge> {
        self.lock().bridges.get(name).cloned()
    }

    /// Names of all bridges held.
    pub fn bridges(&self) -> Vec<String> {
        self.lock().bridges.keys().cloned().collect()
    }

    /// The veth pair whose host end has that name, if held.
    pub fn veth(&self, host_name: &str) -> Option<FakeVeth> {
        self.lock().veths.get(host_name).cloned()
    }

    /// Host-end names of all veth pairs held.
    pub fn veths(&self) -> Vec<String> {
        self.lock().veths.keys().cloned().collect()
    }

    /// The ifb devices held.
    pub fn ifbs(&self) -> Vec<String> {
        self.lock().ifbs.iter().cloned().collect()
    }

    /// The sysctls written into the namespace at `netns`, in order.
    pub fn sysctls(&self, netns: &Path) -> Vec<(String, String)> {
        self.lock().sysctls.get(netns).cloned().unwrap_or_default()
    }

    /// Whether any link (bridge, either veth end, foreign) has that name.
    pub fn has_link(&self, name: &str) -> bool {
        self.lock().holds(name)
    }
}

impl Dataplane for RecordingDataplane {
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<BridgeOutcome, DataplaneError> {
        let gate = self.lock().bridge_gate.take();
        if let Some(gate) = gate {
            gate.entered.notify_one();
            gate.released.notified().await;
        }
        let mut s = self.lock();
        s.record(DataplaneCall::EnsureBridge(spec.clone()))?;
        let outcome = match s.bridges.get(&spec.name) {
            Some(_) => BridgeOutcome::Existed,
            None if s.holds(&spec.name) => {
                return Err(DataplaneError::WrongKind {
                    name: spec.name.clone(),
                    wanted: "bridge",
                })
            }
            None => BridgeOutcome::Created,
        };
        let existing = s
            .bridges
            .get(&spec.name)
            .map(|b| b.addresses.clone())
            .unwrap_or_default();
        // Same rule as the real one, checked before anything changes.
        let plan = plan_addresses(&spec.name, &existing, &spec.addresses, spec.force_address)?;
        let bridge = s
            .bridges
            .entry(spec.name.clone())
            .or_insert_with(|| FakeBridge {
                mtu: spec.mtu,
                addresses: Vec::new(),
            });
        bridge.addresses.retain(|a| !plan.remove.contains(a));
        bridge.addresses.extend(plan.add);
        Ok(outcome)
    }

    async fn bridge_addresses(&self, name: &str) -> Result<Option<Vec<IpNet>>, DataplaneError> {
        Ok(self.lock().bridges.get(name).map(|b| b.addresses.clone()))
    }

    async fn restore_bridge_addresses(
        &self,
        name: &str,
        remove: &[IpNet],
        add: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::RestoreBridgeAddresses(
            name.to_string(),
            remove.to_vec(),
            add.to_vec(),
        ))?;
        if let Some(b) = s.bridges.get_mut(name) {
            b.addresses.retain(|a| !remove.contains(a));
            for a in add {
                if !b.addresses.contains(a) {
                    b.addresses.push(*a);
                }
            }
        }
        Ok(())
    }

    async fn delete_bridge_if_unused(&self, name: &str) -> Result<bool, DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::DeleteBridgeIfUnused(name.to_string()))?;
        if !s.bridges.contains_key(name) {
            if s.holds(name) {
                return Err(DataplaneError::WrongKind {
                    name: name.to_string(),
                    wanted: "bridge",
                });
            }
            return Ok(false);
        }
        if s.ports_of(name) > 0 {
            return Ok(false);
        }
        s.bridges.remove(name);
        Ok(true)
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::CreateVeth(spec.clone()))?;
        if !s.bridges.contains_key(&spec.bridge) {
            if s.holds(&spec.bridge) {
                return Err(DataplaneError::WrongKind {
                    name: spec.bridge.clone(),
                    wanted: "bridge",
                });
            }
            return Err(DataplaneError::NotFound(spec.bridge.clone()));
        }
        let wanted = FakeVeth {
            peer_name: spec.peer_name.clone(),
            bridge: Some(spec.bridge.clone()),
            mtu: spec.mtu,
            peer_mac: spec.peer_mac,
            hairpin: false,
            peer_tuning: spec.peer_tuning,
            shaping: Shaping::default(),
        };
        if let Some(v) = s.veths.get(&spec.host_name) {
            if v.peer_name == spec.peer_name && v.bridge.as_deref() == Some(spec.bridge.as_str()) {
                return Ok(());
            }
        }
        for name in [&spec.host_name, &spec.peer_name] {
            let foreign =
                s.bridges.contains_key(name.as_str()) || s.foreign.iter().any(|f| f == name);
            if foreign {
                return Err(DataplaneError::WrongKind {
                    name: name.to_string(),
                    wanted: "veth",
                });
            }
        }
        // Stale halves go, as with the real dataplane: deleting either end removes the pair.
        s.veths.retain(|host, v| {
            host != &spec.host_name
                && host != &spec.peer_name
                && v.peer_name != spec.host_name
                && v.peer_name != spec.peer_name
        });
        s.veths.insert(spec.host_name.clone(), wanted);
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::DeleteLink(name.to_string()))?;
        if s.bridges.remove(name).is_some() {
            // The kernel detaches the ports of a deleted bridge; they stay as unattached links.
            for v in s.veths.values_mut() {
                if v.bridge.as_deref() == Some(name) {
                    v.bridge = None;
                }
            }
        }
        s.veths
            .retain(|host, v| host != name && v.peer_name != name);
        s.foreign.retain(|f| f != name);
        s.ifbs.remove(name);
        Ok(())
    }

    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::BridgePorts(bridge.to_string()))?;
        Ok(s.veths
            .iter()
            .filter(|(_, v)| v.bridge.as_deref() == Some(bridge))
            .map(|(host, _)| host.clone())
            .collect())
    }

    async fn link_exists(&self, name: &str) -> Result<bool, DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::LinkExists(name.to_string()))?;
        Ok(s.holds(name))
    }

    async fn set_hairpin(&self, port: &str, on: bool) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::SetHairpin(port.to_string(), on))?;
        // Only a host end on a bridge is a bridge port.
        match s.veths.get_mut(port) {
            Some(v) if v.bridge.is_some() => {
                v.hairpin = on;
                Ok(())
            }
            Some(_) => Err(DataplaneError::Netlink {
                op: format!("set hairpin on {port}"),
                reason: "not a bridge port".into(),
            }),
            None => Err(DataplaneError::NotFound(port.to_string())),
        }
    }

    async fn set_shaping(
        &self,
        host_veth: &str,
        ifb: &str,
        shaping: &Shaping,
    ) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::SetShaping(
            host_veth.to_string(),
            ifb.to_string(),
            *shaping,
        ))?;
        let Some(v) = s.veths.get_mut(host_veth) else {
            return Err(DataplaneError::NotFound(host_veth.to_string()));
        };
        v.shaping = *shaping;
        if shaping.egress.is_some() {
            s.ifbs.insert(ifb.to_string());
        } else {
            s.ifbs.remove(ifb);
        }
        Ok(())
    }

    async fn set_sysctls(
        &self,
        netns: &Path,
        sysctls: &[(String, String)],
    ) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        s.record(DataplaneCall::SetSysctls(
            netns.to_path_buf(),
            sysctls.to_vec(),
        ))?;
        s.sysctls
            .entry(netns.to_path_buf())
            .or_default()
            .extend(sysctls.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge_spec(addrs: &[&str]) -> BridgeSpec {
        BridgeSpec {
            name: "br0".into(),
            mtu: Some(1400),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            promisc: false,
            force_address: false,
        }
    }

    fn veth_spec(host: &str, peer: &str) -> VethSpec {
        VethSpec {
            host_name: host.into(),
            peer_name: peer.into(),
            bridge: "br0".into(),
            mtu: Some(1400),
            peer_mac: Some([2, 0, 0, 0, 0, 1]),
            hairpin: false,
            peer_tuning: Default::default(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn veth_needs_the_bridge() {
        let dp = RecordingDataplane::new();
        block_on(async {
            let err = dp.create_veth(&veth_spec("vh0", "vp0")).await.unwrap_err();
            assert!(matches!(err, DataplaneError::NotFound(ref n) if n == "br0"));
            dp.ensure_bridge(&bridge_spec(&["10.1.0.1/24"]))
                .await
                .unwrap();
            dp.create_veth(&veth_spec("vh0", "vp0")).await.unwrap();
            dp.create_veth(&veth_spec("vh0", "vp0")).await.unwrap();
        });
        assert_eq!(dp.veths(), vec!["vh0".to_string()]);
        assert_eq!(dp.calls().len(), 4);
    }

    #[test]
    fn bridge_with_ports_is_kept_and_conflicts_are_refused() {
        let dp = RecordingDataplane::new();
        let handle = dp.clone();
        block_on(async {
            assert_eq!(
                dp.ensure_bridge(&bridge_spec(&["10.1.0.1/24"]))
                    .await
                    .unwrap(),
                BridgeOutcome::Created
            );
            assert_eq!(
                dp.ensure_bridge(&bridge_spec(&["10.1.0.1/24"]))
                    .await
                    .unwrap(),
                BridgeOutcome::Existed
            );
            let err = dp
                .ensure_bridge(&bridge_spec(&["10.2.0.1/24"]))
                .await
                .unwrap_err();
            assert!(matches!(err, DataplaneError::AddressConflict { .. }));
            dp.create_veth(&veth_spec("vh0", "vp0")).await.unwrap();
            assert!(!dp.delete_bridge_if_unused("br0").await.unwrap());
            dp.delete_link("vh0").await.unwrap();
            dp.delete_link("vh0").await.unwrap();
            assert!(dp.delete_bridge_if_unused("br0").await.unwrap());
            assert!(!dp.delete_bridge_if_unused("br0").await.unwrap());
        });
        assert!(handle.bridges().is_empty());
        assert!(!handle.has_link("vp0"));
    }

    #[test]
    fn faults_fire_on_the_chosen_calls_and_change_nothing() {
        let dp = RecordingDataplane::new();
        dp.fail_nth_call(1);
        dp.fail_when(|c| matches!(c, DataplaneCall::DeleteLink(n) if n == "vh0"));
        block_on(async {
            assert!(dp.ensure_bridge(&bridge_spec(&[])).await.is_err());
            assert!(dp.bridge("br0").is_none());
            dp.ensure_bridge(&bridge_spec(&[])).await.unwrap();
            dp.create_veth(&veth_spec("vh0", "vp0")).await.unwrap();
            assert!(dp.delete_link("vh0").await.is_err());
            assert!(dp.has_link("vh0"));
            dp.clear_faults();
            dp.delete_link("vh0").await.unwrap();
        });
        assert_eq!(dp.take_calls().len(), 5);
        assert!(dp.calls().is_empty());
    }

    #[test]
    fn foreign_link_is_wrong_kind() {
        let dp = RecordingDataplane::new();
        dp.insert_foreign_link("br0");
        let err = block_on(dp.ensure_bridge(&bridge_spec(&[]))).unwrap_err();
        assert_eq!(err.to_string(), "br0 already exists but is not a bridge");
    }
}
