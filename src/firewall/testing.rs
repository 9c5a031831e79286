//! Recording fake of `Firewall`.
//!
//! Holds the set of networks the way `IptablesFirewall` does, validates input with the same
//! rules, records every call in order and fails on demand (per fake, no globals).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{validate_rules, Firewall, FirewallError, NetworkRules};

/// One call made to the fake, in the order it arrived (failed calls included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    /// `add_network(rules)`.
    AddNetwork(NetworkRules),
    /// `del_network(rules)`.
    DelNetwork(NetworkRules),
    /// `reconcile(all)`.
    Reconcile(Vec<NetworkRules>),
}

type Predicate = Box<dyn Fn(&FirewallCall) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Vec<FirewallCall>,
    networks: BTreeMap<String, NetworkRules>,
    fail_calls: Vec<usize>,
    fail_when: Vec<Predicate>,
}

impl State {
    fn record(&mut self, call: FirewallCall) -> Result<(), FirewallError> {
        let number = self.calls.len() + 1;
        let fail = self.fail_calls.contains(&number) || self.fail_when.iter().any(|p| p(&call));
        self.calls.push(call);
        if fail {
            return Err(FirewallError::Backend {
                tool: "RecordingFirewall".into(),
                reason: format!("fault injected into call {number}"),
            });
        }
        Ok(())
    }
}

/// Strict in-memory `Firewall`. Clones share one state, so a test keeps one handle and gives
/// another to the code under test.
#[derive(Clone, Default)]
pub struct RecordingFirewall {
    state: Arc<Mutex<State>>,
}

impl RecordingFirewall {
    /// An empty fake: no networks, no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep the state readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FirewallCall> {
        self.lock().calls.clone()
    }

    /// Return the calls so far and start a new record.
    pub fn take_calls(&self) -> Vec<FirewallCall> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The networks whose rules are installed, ordered by network id.
    pub fn networks(&self) -> Vec<NetworkRules> {
        self.lock().networks.values().cloned().collect()
    }

    /// Whether rules for that network id are installed.
    pub fn has_network(&self, network_id: &str) -> bool {
        self.lock().networks.contains_key(network_id)
    }

    /// Fail the `n`-th call (1-based over the fake's whole life, so the call that becomes
    /// `calls()[n - 1]`). The failed call changes nothing.
    pub fn fail_nth_call(&self, n: usize) {
        self.lock().fail_calls.push(n);
    }

    /// Fail every call for which `pred` is true, until `clear_faults`.
    pub fn fail_when(&self, pred: impl Fn(&FirewallCall) -> bool + Send + Sync + 'static) {
        self.lock().fail_when.push(Box::new(pred));
    }

    /// Remove every injected fault.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.fail_calls.clear();
        s.fail_when.clear();
    }
}

impl Firewall for RecordingFirewall {
    async fn add_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::AddNetwork(rules.clone()))?;
        validate_rules(rules)?;
        s.networks.insert(rules.network_id.clone(), rules.clone());
        Ok(())
    }

    async fn del_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::DelNetwork(rules.clone()))?;
        s.networks.remove(&rules.network_id);
        Ok(())
    }

    async fn reconcile(&self, all: &[NetworkRules]) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::Reconcile(all.to_vec()))?;
        for rules in all {
            validate_rules(rules)?;
        }
        s.networks = all
            .iter()
            .map(|r| (r.network_id.clone(), r.clone()))
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str) -> NetworkRules {
        NetworkRules::new(id, format!("br-{id}"))
    }

    #[test]
    fn holds_the_set_and_fails_on_demand() {
        let fw = RecordingFirewall::new();
        let seen = fw.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            fw.add_network(&net("a")).await.unwrap();
            fw.add_network(&net("b")).await.unwrap();
            fw.del_network(&net("zzz")).await.unwrap();
            fw.fail_when(|c| matches!(c, FirewallCall::DelNetwork(r) if r.network_id == "a"));
            assert!(fw.del_network(&net("a")).await.is_err());
            fw.clear_faults();
            fw.fail_nth_call(6);
            assert!(fw.reconcile(&[net("c")]).await.is_ok());
            assert!(fw.add_network(&net("d")).await.is_err());
            assert!(fw.add_network(&net("")).await.is_err());
            // Same validation as the real backend: an internal network cannot masquerade.
            let masq_internal = NetworkRules {
                internal: true,
                masquerade: true,
                ..net("e")
            };
            assert!(fw.add_network(&masq_internal).await.is_err());
        });
        assert_eq!(seen.networks(), vec![net("c")]);
        assert_eq!(seen.calls().len(), 8);
    }
}
