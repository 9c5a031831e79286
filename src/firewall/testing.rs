//! Recording fake of `Firewall`.
//!
//! Holds the set of networks and published ports the way `IptablesFirewall` does, validates
//! input with the same rules, records every call in order and fails on demand (per fake, no
//! globals). Stricter than the real backend where the order of calls matters (like moby's
//! firewaller stub): ports need their network installed, and a network cannot go while it
//! still has published ports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ports::validate_ports;
use super::{validate_rules, EndpointPorts, Firewall, FirewallError, NetworkRules};

/// One call made to the fake, in the order it arrived (failed calls included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    /// `add_network(rules)`.
    AddNetwork(NetworkRules),
    /// `del_network(rules)`.
    DelNetwork(NetworkRules),
    /// `add_ports(ports)`.
    AddPorts(EndpointPorts),
    /// `del_ports(network_id, endpoint_id)`.
    DelPorts {
        /// Network of the endpoint.
        network_id: String,
        /// The endpoint.
        endpoint_id: String,
    },
    /// `reconcile(networks, ports)`.
    Reconcile(Vec<NetworkRules>, Vec<EndpointPorts>),
}

type Predicate = Box<dyn Fn(&FirewallCall) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Vec<FirewallCall>,
    networks: BTreeMap<String, NetworkRules>,
    ports: BTreeMap<(String, String), EndpointPorts>,
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

    /// The published ports installed, ordered by (network id, endpoint id).
    pub fn ports(&self) -> Vec<EndpointPorts> {
        self.lock().ports.values().cloned().collect()
    }

    /// The ports an endpoint has published, if any.
    pub fn ports_of(&self, network_id: &str, endpoint_id: &str) -> Option<EndpointPorts> {
        self.lock()
            .ports
            .get(&(network_id.to_string(), endpoint_id.to_string()))
            .cloned()
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
        if let Some((_, ep)) = s.ports.keys().find(|(net, _)| *net == rules.network_id) {
            return Err(FirewallError::Backend {
                tool: "RecordingFirewall".into(),
                reason: format!(
                    "del_network {} while endpoint {ep} still has published ports (del_ports first)",
                    rules.network_id
                ),
            });
        }
        s.networks.remove(&rules.network_id);
        Ok(())
    }

    async fn add_ports(&self, ports: &EndpointPorts) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::AddPorts(ports.clone()))?;
        validate_ports(ports)?;
        if !s.networks.contains_key(&ports.network_id) {
            return Err(FirewallError::UnknownNetwork(ports.network_id.clone()));
        }
        s.ports.insert(
            (ports.network_id.clone(), ports.endpoint_id.clone()),
            ports.clone(),
        );
        Ok(())
    }

    async fn del_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::DelPorts {
            network_id: network_id.to_string(),
            endpoint_id: endpoint_id.to_string(),
        })?;
        s.ports
            .remove(&(network_id.to_string(), endpoint_id.to_string()));
        Ok(())
    }

    async fn reconcile(
        &self,
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        let mut s = self.lock();
        s.record(FirewallCall::Reconcile(networks.to_vec(), ports.to_vec()))?;
        let set = super::intent::Intent::from_set(networks, ports)?;
        s.networks = set.networks;
        s.ports = set.ports;
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
            assert!(fw.reconcile(&[net("c")], &[]).await.is_ok());
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

    fn ports(net: &str, ep: &str) -> EndpointPorts {
        EndpointPorts {
            network_id: net.into(),
            endpoint_id: ep.into(),
            bridge: format!("br-{net}"),
            container_ipv4: Some("10.1.0.2/24".parse().unwrap()),
            container_ipv6: None,
            mappings: vec![crate::firewall::PortMapping::single(
                crate::firewall::Proto::Tcp,
                None,
                8080,
                80,
            )],
            options: Default::default(),
        }
    }

    #[test]
    fn ports_need_their_network_and_block_its_deletion() {
        let fw = RecordingFirewall::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let err = fw.add_ports(&ports("a", "e1")).await.unwrap_err();
            assert!(matches!(err, FirewallError::UnknownNetwork(_)), "{err}");
            fw.add_network(&net("a")).await.unwrap();
            fw.add_ports(&ports("a", "e1")).await.unwrap();
            fw.add_ports(&ports("a", "e1")).await.unwrap();
            let err = fw.del_network(&net("a")).await.unwrap_err().to_string();
            assert!(err.contains("still has published ports"), "{err}");
            assert!(fw.has_network("a"));
            fw.del_ports("a", "nope").await.unwrap();
            fw.del_ports("a", "e1").await.unwrap();
            fw.del_network(&net("a")).await.unwrap();
            // Reconcile holds the same rule: ports only of networks in the set.
            assert!(fw.reconcile(&[], &[ports("a", "e1")]).await.is_err());
            fw.reconcile(&[net("a")], &[ports("a", "e1")])
                .await
                .unwrap();
        });
        assert_eq!(fw.ports(), vec![ports("a", "e1")]);
        assert!(fw.ports_of("a", "e1").is_some());
    }
}
