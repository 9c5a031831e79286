//! Network operations: CreateNetwork (validate, bridge, firewall, pools, record, export; undone
//! on failure) and DeleteNetwork (leftover endpoints and ports, rules, bridge last).

use super::*;

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// CreateNetwork: validate everything, then bridge, firewall, record; undo on failure.
    pub async fn create_network(&self, req: &NetworkSpec) -> Result<(), DriverError> {
        if req.network_id.is_empty() {
            return Err(DriverError::Invalid("NetworkID is missing".into()));
        }
        // A re-sent CreateNetwork waits here for the original, then finds the network.
        let _turn = self.creations.turn(&req.network_id).await;
        if self.entry(&req.network_id).is_some() {
            return Ok(());
        }
        let opts = options::parse(&req.options)?;
        let ipv4 = self.family("IPv4", &req.ipv4, false)?;
        let ipv6 = self.family("IPv6", &req.ipv6, true)?;
        let pool_of = |f: &Option<FamilyData>| {
            f.as_ref()
                .and_then(|f| f.pool_id.as_deref())
                .and_then(|id| self.ipam.pool(id))
        };
        let (pool4, pool6) = (pool_of(&ipv4), pool_of(&ipv6));
        let ours: Vec<_> = pool4.iter().chain(pool6.iter()).cloned().collect();
        let selected = {
            let (dir, o, p) = (
                self.ipam.cni_conf_dir().to_path_buf(),
                opts.clone(),
                ours.clone(),
            );
            blocking_io(move || cni::select(&dir, &o, &p)).await?
        };
        if let Some(sel) = &selected {
            cni::check(sel, ipv4.as_ref(), ipv6.as_ref(), !ours.is_empty(), &opts)?;
        }
        let (bridge, mtu) = match &selected {
            Some(sel) => (
                sel.conf.bridge.clone(),
                (sel.conf.mtu != 0).then_some(sel.conf.mtu),
            ),
            None => (
                opts.bridge
                    .clone()
                    .unwrap_or_else(|| names::default_bridge(&req.network_id)),
                opts.mtu,
            ),
        };
        // Held until the network is in the table, so no other create passes this check.
        let reserved = match self
            .creations
            .reserve(&bridge, &req.network_id, |b| self.network_on_bridge(b))
        {
            Ok(r) => r,
            Err(other) => {
                let how = if selected.is_some() {
                    "set another \"bridge\" in the config"
                } else {
                    "choose another -o bridge=NAME"
                };
                return Err(DriverError::Invalid(format!(
                    "bridge {bridge} is already used by network {}; {how}",
                    short(&other)
                )));
            }
        };
        let data_dir = self.ipam.data_dir().to_path_buf();
        let cni_rec = match &selected {
            Some(sel) => {
                cni::log_unapplied(sel);
                Some(cni::from_conf(sel, &data_dir, opts.internal))
            }
            None => {
                self.share_directories(pool4.as_ref(), pool6.as_ref())
                    .await?;
                cni::from_flags(
                    [
                        (ipv4.as_ref(), pool4.as_ref()),
                        (ipv6.as_ref(), pool6.as_ref()),
                    ],
                    &opts,
                    &data_dir,
                )
            }
        };
        if ours.is_empty() {
            tracing::info!(
                network = short(&req.network_id),
                "addresses come from Docker's IPAM, which keeps no host-local files: a CNI runtime using this network's export would not see them"
            );
        }
        let mut net = NetworkRecord {
            id: req.network_id.clone(),
            bridge,
            bridge_created: false,
            mtu,
            iface_prefix: opts.iface_prefix,
            internal: opts.internal,
            ipv4,
            ipv6,
            options: opts.generic,
            cni: cni_rec,
        };
        let outcome = self
            .dp
            .ensure_bridge(&bridge_spec(&net))
            .await
            .map_err(dp_err(format!("setting up bridge {}", net.bridge)))?;
        net.bridge_created = outcome == crate::dataplane::BridgeOutcome::Created;
        let rules = firewall_rules(&net);
        if let Err(e) = self.fw.add_network(&rules).await {
            self.undo_bridge(&net).await;
            return Err(fw_err(format!(
                "installing firewall rules for bridge {}",
                net.bridge
            ))(e));
        }
        if let Err(e) = self.bind_pools(&net).await {
            let _ = self.fw.del_network(&rules).await;
            self.undo_bridge(&net).await;
            return Err(e);
        }
        if let Err(e) = self.export(&net).await {
            let _ = self.fw.del_network(&rules).await;
            self.undo_bridge(&net).await;
            return Err(e);
        }
        if let Err(e) = self
            .state
            .write(NETWORKS, &net.id, &net, Durability::PowerLoss)
        {
            self.unexport(&net).await;
            let _ = self.fw.del_network(&rules).await;
            self.undo_bridge(&net).await;
            return Err(e.into());
        }
        tracing::info!(network = short(&net.id), bridge = %net.bridge, created = net.bridge_created, "network created");
        if let Ok(mut map) = self.nets.write() {
            map.insert(net.id.clone(), NetSlot::new(NetState::new(net)));
        }
        drop(reserved);
        Ok(())
    }

    async fn undo_bridge(&self, net: &NetworkRecord) {
        if net.bridge_created {
            if let Err(e) = self.dp.delete_bridge_if_unused(&net.bridge).await {
                tracing::warn!(bridge = %net.bridge, error = %e, "rollback: cannot delete bridge");
            }
        }
    }

    fn network_on_bridge(&self, bridge: &str) -> Option<String> {
        let map = self.nets.read().ok()?;
        map.iter()
            .find(|(_, slot)| slot.bridge == bridge)
            .map(|(id, _)| id.clone())
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
                    ns.endpoints.remove(&ep.id);
                    if let Err(e) = self.state.remove(ENDPOINTS, &ep.id) {
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
        }
        for fam in ns.net.families() {
            if let Some(pool_id) = fam.pool_id.clone() {
                let ipam = self.ipam.clone();
                // The pool is normally released already; only unbind if it still exists.
                if let Err(e) = blocking(move || match ipam.pool(&pool_id) {
                    Some(_) => ipam.bind_network(&pool_id, None),
                    None => Ok(()),
                })
                .await
                {
                    errors.push(e);
                }
            }
        }
        if !errors.is_empty() {
            return Err(DriverError::Many(errors));
        }
        self.state.remove(NETWORKS, network_id)?;
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
