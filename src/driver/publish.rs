//! Published ports: ProgramExternalConnectivity, RevokeExternalConnectivity, and the removal
//! Leave and DeleteEndpoint do too.
//!
//! When: Docker ≤ 28 sends Program after Join only for the container's gateway endpoint of a
//! non-internal network (so ports are published on one network, as Docker's bridge does), and
//! Revoke before Leave. ≥ 29 keeps that state in memory and may never send Revoke after a
//! restart of either side, so Leave and DeleteEndpoint remove the mappings as well. Join only
//! validates and remembers the bindings; Program is what publishes (and turns hairpin mode on
//! for the endpoint's bridge port). Internal networks never publish (Docker sends no Program
//! for them; one that comes anyway is ignored).

use super::ports::{self, Families};
use super::{fw_err, options, short, Driver, DriverError, GenericOptions, NetState};
use crate::dataplane::Dataplane;
use crate::firewall::{EndpointPorts, Firewall};
use crate::state::records::ENDPOINTS;
use crate::state::Durability;

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Join's port bindings: checked now (a malformed option fails Join, before any veth), and
    /// kept for a Program that carries none. No firewall work.
    pub(super) fn remember_requested_ports(
        &self,
        ns: &mut NetState,
        endpoint_id: &str,
        options: &GenericOptions,
    ) -> Result<(), DriverError> {
        match ports::parse_portmap(options)? {
            Some(requests) if !requests.is_empty() => {
                ns.requested.insert(endpoint_id.to_string(), requests);
            }
            _ => {
                ns.requested.remove(endpoint_id);
            }
        }
        Ok(())
    }

    /// ProgramExternalConnectivity: publish the endpoint's ports (one `add_ports`), record them
    /// in the endpoint's state, log what was picked for host port 0. A re-sent Program
    /// reinstalls what is published and never picks again.
    pub async fn program_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
        options: &GenericOptions,
    ) -> Result<(), DriverError> {
        let sent = ports::parse_portmap(options)?;
        // An unknown endpoint is an error only if there is something to publish for it.
        let nothing_sent = sent.as_ref().is_none_or(Vec::is_empty);
        let Some(entry) = self.entry(network_id) else {
            if nothing_sent {
                return Ok(());
            }
            return Err(DriverError::UnknownNetwork(short(network_id).to_string()));
        };
        let mut ns = entry.lock().await;
        let Some(ep) = ns.endpoints.get(endpoint_id).cloned() else {
            if nothing_sent {
                return Ok(());
            }
            return Err(DriverError::UnknownEndpoint {
                network: short(network_id).to_string(),
                endpoint: short(endpoint_id).to_string(),
            });
        };
        let mut requests = match sent {
            Some(r) => r,
            None => ns.requested.get(endpoint_id).cloned().unwrap_or_default(),
        };
        // Checked at CreateNetwork; only a record of a version that accepted anything gets here.
        let binding = options::host_binding(&ns.net.options).unwrap_or_else(|e| {
            tracing::warn!(network = short(network_id), error = %e, "ignoring the stored host binding");
            None
        });
        for r in requests.iter_mut().filter(|r| r.host_ip.is_none()) {
            r.host_ip = binding;
        }
        if ns.net.internal {
            if !requests.is_empty() {
                tracing::warn!(
                    endpoint = short(endpoint_id),
                    "internal network: published ports ignored"
                );
            }
            return Ok(());
        }
        if let Some(installed) = &ep.ports {
            return self.fw.add_ports(installed).await.map_err(fw_err(format!(
                "publishing ports of endpoint {}",
                short(endpoint_id)
            )));
        }
        if requests.is_empty() {
            return Ok(());
        }
        let key = (network_id.to_string(), endpoint_id.to_string());
        let families = Families {
            v4: ep.address.is_some_and(|a| a.addr().is_ipv4()),
            v6: ep.address_ipv6.is_some(),
        };
        // Resolve and reserve under one lock, so two endpoints cannot pick the same port.
        let mappings = {
            let mut table = self.port_table();
            let others: ports::PortTable = table
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mappings = ports::resolve(&requests, families, &others, self.host_ports.as_ref())?;
            table.insert(key.clone(), mappings.clone());
            mappings
        };
        let published = EndpointPorts {
            network_id: network_id.to_string(),
            endpoint_id: endpoint_id.to_string(),
            bridge: ns.net.bridge.clone(),
            container_ipv4: ep.address.and_then(|a| match a {
                ipnet::IpNet::V4(n) => Some(n),
                ipnet::IpNet::V6(_) => None,
            }),
            container_ipv6: ep.address_ipv6.and_then(|a| match a {
                ipnet::IpNet::V6(n) => Some(n),
                ipnet::IpNet::V4(_) => None,
            }),
            mappings,
        };
        if let Err(e) = self.fw.add_ports(&published).await {
            self.port_table().remove(&key);
            return Err(fw_err(format!(
                "publishing ports of endpoint {}",
                short(endpoint_id)
            ))(e));
        }
        // Without it a container cannot reach its own published port through the host
        // address (br_netfilter bridges the DNATed frame back out of its port); everything
        // else works, so a failure is a warning. Left on at unpublish: the veth goes soon.
        if published.mappings.iter().any(|m| !m.on_loopback()) {
            if let Err(e) = self.dp.set_hairpin(&ep.host_veth, true).await {
                tracing::warn!(veth = %ep.host_veth, error = %e, "cannot set hairpin mode; the container cannot reach its own published ports via the host address");
            }
        }
        let mut record = ep;
        record.ports = Some(published.clone());
        if let Err(e) = self
            .state
            .write(ENDPOINTS, endpoint_id, &record, Durability::Process)
        {
            let _ = self.fw.del_ports(network_id, endpoint_id).await;
            self.port_table().remove(&key);
            return Err(e.into());
        }
        ns.endpoints.insert(endpoint_id.to_string(), record);
        tracing::info!(endpoint = short(endpoint_id), ports = %ports::describe(&published.mappings), "ports published");
        Ok(())
    }

    /// RevokeExternalConnectivity: remove the endpoint's published ports. Unknown is fine.
    pub async fn revoke_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(());
        };
        let mut ns = entry.lock().await;
        self.unpublish(&mut ns, endpoint_id).await
    }

    /// Remove an endpoint's published ports, if it has any (no firewall work otherwise), and
    /// forget them in its record. On a firewall failure the record keeps them, so Leave or
    /// DeleteEndpoint try again.
    pub(super) async fn unpublish(
        &self,
        ns: &mut NetState,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let Some(mut record) = ns.endpoints.get(endpoint_id).cloned() else {
            return Ok(());
        };
        if record.ports.is_none() {
            return Ok(());
        }
        self.fw
            .del_ports(&ns.net.id, endpoint_id)
            .await
            .map_err(fw_err(format!(
                "removing published ports of endpoint {}",
                short(endpoint_id)
            )))?;
        self.port_table()
            .remove(&(ns.net.id.clone(), endpoint_id.to_string()));
        record.ports = None;
        self.state
            .write(ENDPOINTS, endpoint_id, &record, Durability::Process)?;
        ns.endpoints.insert(endpoint_id.to_string(), record);
        tracing::info!(endpoint = short(endpoint_id), "published ports removed");
        Ok(())
    }
}
