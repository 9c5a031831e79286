//! The set of rules installed, as the engine keeps it in memory, and what each `Firewall` verb
//! makes of it. Kept once, by the engine, so the backends differ only in how they write the set,
//! one network or one endpoint's change into the kernel.

use std::collections::BTreeMap;

use super::ports::validate_ports;
use super::{validate_rules, EndpointPorts, FirewallError, NetworkRules};

/// (network id, endpoint id): how published ports are keyed.
pub type EndpointKey = (String, String);

/// Networks by id and published ports by endpoint; both in a stable order, so a rendered set
/// does not depend on the order of the calls that built it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// Networks by id.
    pub networks: BTreeMap<String, NetworkRules>,
    /// Published ports by endpoint.
    pub ports: BTreeMap<EndpointKey, EndpointPorts>,
}

/// The key of an endpoint.
pub fn key(network_id: &str, endpoint_id: &str) -> EndpointKey {
    (network_id.to_string(), endpoint_id.to_string())
}

impl Intent {
    /// A set as `reconcile` receives it, checked before anything is run: every network's
    /// rules, every endpoint's ports, and that each endpoint's network is in the set.
    pub fn from_set(
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> Result<Intent, FirewallError> {
        for rules in networks {
            validate_rules(rules)?;
        }
        for p in ports {
            validate_ports(p)?;
            if !networks.iter().any(|n| n.network_id == p.network_id) {
                return Err(FirewallError::UnknownNetwork(p.network_id.clone()));
            }
        }
        Ok(Intent {
            networks: networks
                .iter()
                .map(|r| (r.network_id.clone(), r.clone()))
                .collect(),
            ports: ports
                .iter()
                .map(|p| (key(&p.network_id, &p.endpoint_id), p.clone()))
                .collect(),
        })
    }

    /// With `rules` added (or replacing the network's earlier rules), once they are valid.
    pub fn with_network(&self, rules: &NetworkRules) -> Result<Intent, FirewallError> {
        validate_rules(rules)?;
        let mut next = self.clone();
        next.networks
            .insert(rules.network_id.clone(), rules.clone());
        Ok(next)
    }

    /// Without the network and the ports still published on it (a lost DeleteEndpoint), which
    /// are returned too; `None` if the network is not in the set.
    pub fn without_network(&self, network_id: &str) -> Option<(Intent, Vec<EndpointPorts>)> {
        if !self.networks.contains_key(network_id) {
            return None;
        }
        let mut networks = self.networks.clone();
        networks.remove(network_id);
        let (gone, ports): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .ports
            .clone()
            .into_iter()
            .partition(|((net, _), _)| net == network_id);
        Some((Intent { networks, ports }, gone.into_values().collect()))
    }

    /// The key of `p`'s endpoint, once its ports are valid and its network is in the set.
    pub fn ports_key(&self, p: &EndpointPorts) -> Result<EndpointKey, FirewallError> {
        validate_ports(p)?;
        if !self.networks.contains_key(&p.network_id) {
            return Err(FirewallError::UnknownNetwork(p.network_id.clone()));
        }
        Ok(key(&p.network_id, &p.endpoint_id))
    }

    /// With the endpoint's ports replaced by `new` (`None` = removed).
    pub fn with_ports(&self, key: &EndpointKey, new: Option<&EndpointPorts>) -> Intent {
        let mut next = self.clone();
        match new {
            Some(p) => next.ports.insert(key.clone(), p.clone()),
            None => next.ports.remove(key),
        };
        next
    }

    /// The networks, in id order.
    pub fn network_list(&self) -> Vec<NetworkRules> {
        self.networks.values().cloned().collect()
    }

    /// The published ports, in (network, endpoint) order.
    pub fn port_list(&self) -> Vec<EndpointPorts> {
        self.ports.values().cloned().collect()
    }
}
