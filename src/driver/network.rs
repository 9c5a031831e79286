//! DeleteNetwork: leftover endpoints and their ports, rules, the bridge last, pools unbound.
//! CreateNetwork is in `create_network`.

use super::*;

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// A bridge the network borrowed loses the gateways the network put on it and gets back
    /// what `forceAddress` took off, as the operator had it.
    pub(super) async fn restore_borrowed_bridge(
        &self,
        net: &NetworkRecord,
    ) -> Result<(), DriverError> {
        let changes = &net.bridge_changes;
        if net.bridge_created || changes.is_empty() {
            return Ok(());
        }
        self.dp
            .restore_bridge_addresses(&net.bridge, &changes.added, &changes.removed)
            .await
            .map_err(dp_err(format!(
                "giving bridge {} its addresses back",
                net.bridge
            )))?;
        tracing::info!(bridge = %net.bridge, removed = ?changes.added, restored = ?changes.removed, "borrowed bridge given back as it was");
        Ok(())
    }

    /// DeleteNetwork: unknown is fine. Leftover endpoints (their DeleteEndpoint was lost) are
    /// removed too; the bridge goes last and only if cnibridge made it and nothing is attached.
    pub async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(());
        };
        let mut ns = entry.lock().await;
        // The bridge can only go once the last veth deletion has finished.
        for t in ns.teardowns.drain(..) {
            let _ = t.await;
        }
        let mut errors = Vec::new();
        let eps: Vec<EndpointRecord> = ns.endpoints.values().cloned().collect();
        for ep in eps {
            if ep.ports.is_some() {
                // The firewall refuses to drop a network that still publishes ports.
                if let Err(e) = self.fw.del_ports(network_id, &ep.id).await {
                    errors.push(fw_err(format!(
                        "removing published ports of endpoint {}",
                        short(&ep.id)
                    ))(e));
                    continue;
                }
                self.port_table()
                    .remove(&(network_id.to_string(), ep.id.clone()));
            }
            match self.dp.delete_link(&ep.host_veth).await {
                Ok(()) => {
                    if ep.bandwidth.is_some_and(|b| b.egress_rate > 0) {
                        let ifb = crate::names::ifb_of_host_veth(&ep.host_veth)
                            .unwrap_or_else(|| crate::names::ifb(&ep.id));
                        if let Err(e) = self.dp.delete_link(&ifb).await {
                            errors.push(dp_err(format!("deleting ifb {ifb}"))(e));
                        }
                    }
                    ns.endpoints.remove(&ep.id);
                    self.veth_names.release(&ep.host_veth, &ep.id);
                    if let Err(e) = self.state.remove_async(ENDPOINTS, &ep.id).await {
                        errors.push(e.into());
                    }
                }
                Err(e) => errors.push(dp_err(format!("deleting veth {}", ep.host_veth))(e)),
            }
        }
        if let Err(e) = self.fw.del_network(&firewall_rules(&ns.net)).await {
            errors.push(fw_err(format!(
                "removing firewall rules of bridge {}",
                ns.net.bridge
            ))(e));
        }
        if ns.net.bridge_created {
            match self.dp.delete_bridge_if_unused(&ns.net.bridge).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(bridge = %ns.net.bridge, "bridge kept: other interfaces are still attached")
                }
                Err(e) => errors.push(dp_err(format!("deleting bridge {}", ns.net.bridge))(e)),
            }
        } else if let Err(e) = self.restore_borrowed_bridge(&ns.net).await {
            errors.push(e);
        }
        for fam in ns.net.families() {
            // The pool is normally released already; only unbind if it still exists.
            if let Err(e) = self.unbind_pool(fam.pool_id.clone()).await {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(DriverError::Many(errors));
        }
        self.state.remove_async(NETWORKS, network_id).await?;
        let net = ns.net.clone();
        drop(ns);
        if let Ok(mut map) = self.nets.write() {
            map.remove(network_id);
        }
        self.unexport(&net).await;
        tracing::info!(network = short(network_id), "network deleted");
        Ok(())
    }
}
