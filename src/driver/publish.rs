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

use super::plan::Plan;
use super::ports::{self, Families, PortRequest};
use super::{
    firewall_rules, fw_err, options, short, Driver, DriverError, GenericOptions, NetState,
};
use crate::dataplane::Dataplane;
use crate::firewall::{EndpointPorts, Firewall};
use crate::state::records::{EndpointRecord, NetworkRecord, ENDPOINTS};
use crate::state::Durability;

/// What publishing's steps share: the bindings asked for, the mappings picked for them (by the
/// first step) and the endpoint's record as it was.
struct Publishing<'d, D, F> {
    driver: &'d Driver<D, F>,
    requests: Vec<PortRequest>,
    families: Families,
    published: EndpointPorts,
    record: EndpointRecord,
}

impl<D, F> Publishing<'_, D, F> {
    fn key(&self) -> (String, String) {
        (
            self.published.network_id.clone(),
            self.published.endpoint_id.clone(),
        )
    }

    fn context(&self) -> String {
        format!(
            "publishing ports of endpoint {}",
            short(&self.published.endpoint_id)
        )
    }
}

fn publish_plan<'d, D: Dataplane, F: Firewall>() -> Plan<Publishing<'d, D, F>, DriverError> {
    Plan::<Publishing<'d, D, F>, DriverError>::new("Publish")
        .step(
            "reserve host ports",
            |c| {
                Box::pin(async move {
                    // Resolve and reserve under one lock, so two endpoints cannot pick the
                    // same port.
                    let key = c.key();
                    let mut table = c.driver.port_table();
                    let others: ports::PortTable = table
                        .iter()
                        .filter(|(k, _)| **k != key)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let mappings = ports::resolve(
                        &c.requests,
                        c.families,
                        &others,
                        c.driver.host_ports.as_ref(),
                    )?;
                    table.insert(key, mappings.clone());
                    c.published.mappings = mappings;
                    Ok(())
                })
            },
            |c| {
                Box::pin(async move {
                    c.driver.port_table().remove(&c.key());
                    Ok(())
                })
            },
        )
        .step(
            "add firewall ports",
            |c| {
                Box::pin(async move {
                    let context = c.context();
                    c.driver
                        .fw
                        .add_ports(&c.published)
                        .await
                        .map_err(fw_err(context))
                })
            },
            |c| {
                Box::pin(async move {
                    let p = &c.published;
                    c.driver
                        .fw
                        .del_ports(&p.network_id, &p.endpoint_id)
                        .await
                        .map_err(fw_err(format!(
                            "removing published ports of endpoint {}",
                            short(&p.endpoint_id)
                        )))
                })
            },
        )
        // Without it a container cannot reach its own published port through the host
        // address (br_netfilter bridges the DNATed frame back out of its port); everything
        // else works, so a failure is a warning. No undo: left on at unpublish too, the veth
        // goes soon, and a config's hairpinMode may have turned it on before.
        .step_without_undo("set hairpin", |c| {
            Box::pin(async move {
                if c.published.mappings.iter().any(|m| !m.on_loopback()) {
                    let veth = &c.record.host_veth;
                    if let Err(e) = c.driver.dp.set_hairpin(veth, true).await {
                        tracing::warn!(veth = %veth, error = %e, "cannot set hairpin mode; the container cannot reach its own published ports via the host address");
                    }
                }
                Ok(())
            })
        })
        .step(
            "write record",
            |c| {
                Box::pin(async move {
                    let mut record = c.record.clone();
                    record.ports = Some(c.published.clone());
                    let st = &c.driver.state;
                    Ok(st
                        .write_async(ENDPOINTS, &record.id, &record, Durability::Process)
                        .await?)
                })
            },
            |c| {
                Box::pin(async move {
                    let (st, r) = (&c.driver.state, &c.record);
                    Ok(st
                        .write_async(ENDPOINTS, &r.id, r, Durability::Process)
                        .await?)
                })
            },
        )
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
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
        if !requests.is_empty() {
            check_portmap(&ns.net)?;
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
        let families = Families {
            v4: ep.address.is_some_and(|a| a.addr().is_ipv4()),
            v6: ep.address_ipv6.is_some(),
        };
        let mut ctx = Publishing {
            driver: self,
            requests,
            families,
            published: EndpointPorts {
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
                mappings: Vec::new(),
                options: firewall_rules(&ns.net).port_options,
            },
            record: ep,
        };
        publish_plan().run(&mut ctx).await?;
        let mut record = ctx.record;
        record.ports = Some(ctx.published.clone());
        ns.endpoints.insert(endpoint_id.to_string(), record);
        tracing::info!(endpoint = short(endpoint_id), ports = %ports::describe(&ctx.published.mappings), "ports published");
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
            .write_async(ENDPOINTS, endpoint_id, &record, Durability::Process)
            .await?;
        ns.endpoints.insert(endpoint_id.to_string(), record);
        tracing::info!(endpoint = short(endpoint_id), "published ports removed");
        Ok(())
    }
}

/// A network whose config chains no `portmap` publishes no ports: a CNI runtime on it would
/// silently not publish them, so `docker run -p` is refused instead of half-working.
pub(super) fn check_portmap(net: &NetworkRecord) -> Result<(), DriverError> {
    let Some(cni) = &net.cni else {
        return Ok(());
    };
    if cni.chain.portmap.is_some() {
        return Ok(());
    }
    let file = cni
        .file
        .as_deref()
        .map(crate::cni::config::display_name)
        .unwrap_or_else(|| cni.name.clone());
    Err(DriverError::Invalid(format!(
        "network {} ({file}) chains no portmap plugin, so it cannot publish ports; add {{\"type\": \"portmap\", \"capabilities\": {{\"portMappings\": true}}}} to the plugins of {file} and re-create the network, or run the container without -p",
        cni.name
    )))
}
