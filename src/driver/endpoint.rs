//! Endpoint operations: CreateEndpoint, Join, Leave, DeleteEndpoint, EndpointOperInfo.

use ipnet::IpNet;

use super::{
    blocking, cni, dp_err, fw_err, names, parse_net, short, Driver, DriverError, EndpointAnswer,
    EndpointSpec, GenericOptions, JoinAnswer, NetState,
};
use crate::dataplane::{Dataplane, DataplaneError, VethSpec};
use crate::firewall::Firewall;
use crate::ipam::Owner;
use crate::state::records::{EndpointRecord, FamilyData, ENDPOINTS};
use crate::state::Durability;

fn optional_net(what: &str, s: &str) -> Result<Option<IpNet>, DriverError> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_net(what, s).map(Some)
    }
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// CreateEndpoint: record the endpoint, name its address files after it, and answer a MAC
    /// only when Docker gave none (echoing addresses makes Docker roll the endpoint back).
    pub async fn create_endpoint(&self, req: &EndpointSpec) -> Result<EndpointAnswer, DriverError> {
        if req.endpoint_id.is_empty() {
            return Err(DriverError::Invalid("EndpointID is missing".into()));
        }
        let entry = self
            .entry(&req.network_id)
            .ok_or_else(|| DriverError::UnknownNetwork(short(&req.network_id).to_string()))?;
        let address = optional_net("Interface.Address", &req.address)?;
        let address_ipv6 = optional_net("Interface.AddressIPv6", &req.address_ipv6)?;
        let given_mac = if req.mac_address.is_empty() {
            None
        } else {
            Some(names::parse_mac(&req.mac_address).ok_or_else(|| {
                DriverError::Invalid(format!(
                    "Interface.MacAddress {:?} is not a MAC address",
                    req.mac_address
                ))
            })?)
        };
        let mac = given_mac.unwrap_or_else(|| names::endpoint_mac(&req.endpoint_id));
        let answer = |mac: &str| EndpointAnswer {
            mac_address: given_mac.is_none().then(|| mac.to_string()),
        };

        let mut ns = entry.lock().await;
        if let Some(ep) = ns.endpoints.get(&req.endpoint_id) {
            return Ok(answer(&ep.mac));
        }
        let ep = EndpointRecord {
            id: req.endpoint_id.clone(),
            network_id: req.network_id.clone(),
            address,
            address_ipv6,
            mac: names::format_mac(&mac),
            host_veth: names::host_veth(&req.endpoint_id),
            peer_veth: names::peer_veth(&req.endpoint_id),
            ports: None,
        };
        self.claim_addresses(&ns, &ep).await;
        self.state
            .write(ENDPOINTS, &ep.id, &ep, Durability::Process)?;
        let resp = answer(&ep.mac);
        ns.endpoints.insert(ep.id.clone(), ep);
        Ok(resp)
    }

    /// Rename the endpoint's allocation files after it (`<EndpointID>\r\n<host veth>`), so an
    /// operator or the garbage collector can map each file to an endpoint.
    async fn claim_addresses(&self, ns: &NetState, ep: &EndpointRecord) {
        let pairs: [(Option<&FamilyData>, Option<IpNet>); 2] = [
            (ns.net.ipv4.as_ref(), ep.address),
            (ns.net.ipv6.as_ref(), ep.address_ipv6),
        ];
        for (fam, addr) in pairs {
            let (Some(fam), Some(addr)) = (fam, addr) else {
                continue;
            };
            let Some(pool_id) = fam.pool_id.clone() else {
                continue;
            };
            let ipam = self.ipam.clone();
            let owner = Owner::endpoint(&ep.id);
            if let Err(e) = blocking(move || ipam.set_owner(&pool_id, addr.addr(), &owner)).await {
                tracing::warn!(endpoint = short(&ep.id), address = %addr, error = %e, "cannot name allocation file after endpoint");
            }
        }
    }

    /// Join without options (no port bindings).
    pub async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<JoinAnswer, DriverError> {
        self.join_with_options(network_id, endpoint_id, &GenericOptions::new())
            .await
    }

    /// Join: the veth pair in the host namespace, host end on the bridge; Docker moves the
    /// other end into the sandbox and configures it from this answer. Port bindings in
    /// `options` are checked and remembered; ProgramExternalConnectivity publishes them.
    pub async fn join_with_options(
        &self,
        network_id: &str,
        endpoint_id: &str,
        options: &GenericOptions,
    ) -> Result<JoinAnswer, DriverError> {
        let entry = self
            .entry(network_id)
            .ok_or_else(|| DriverError::UnknownNetwork(short(network_id).to_string()))?;
        let mut ns = entry.lock().await;
        let ep =
            ns.endpoints
                .get(endpoint_id)
                .cloned()
                .ok_or_else(|| DriverError::UnknownEndpoint {
                    network: short(network_id).to_string(),
                    endpoint: short(endpoint_id).to_string(),
                })?;
        self.remember_requested_ports(&mut ns, endpoint_id, options)?;
        let spec = VethSpec {
            host_name: ep.host_veth.clone(),
            peer_name: ep.peer_veth.clone(),
            bridge: ns.net.bridge.clone(),
            mtu: ns.net.mtu,
            peer_mac: names::parse_mac(&ep.mac),
            hairpin: ns.net.cni.as_ref().is_some_and(|c| c.hairpin_mode),
        };
        match self.dp.create_veth(&spec).await {
            Ok(()) => {}
            // The bridge vanished (host reboot, someone deleted it): make it again, once.
            Err(DataplaneError::NotFound(_)) => {
                let outcome = self
                    .dp
                    .ensure_bridge(&super::bridge_spec(&ns.net))
                    .await
                    .map_err(dp_err(format!("re-creating bridge {}", ns.net.bridge)))?;
                if outcome == crate::dataplane::BridgeOutcome::Created && !ns.net.bridge_created {
                    ns.net.bridge_created = true;
                    self.state.write(
                        crate::state::records::NETWORKS,
                        &ns.net.id,
                        &ns.net,
                        Durability::PowerLoss,
                    )?;
                }
                self.dp
                    .create_veth(&spec)
                    .await
                    .map_err(dp_err(format!("creating veth {}", spec.host_name)))?;
            }
            Err(e) => return Err(dp_err(format!("creating veth {}", spec.host_name))(e)),
        }
        let mut static_routes = Vec::new();
        let mut routes = |fam: &Option<FamilyData>, has_addr: bool| match fam {
            Some(f) if has_addr => match &ns.net.cni {
                // The config's routes, as the bridge plugin would set them.
                Some(c) => {
                    let (gateway, statics) = cni::join_routes(c, f, ns.net.internal);
                    static_routes.extend(statics);
                    gateway
                }
                // Records from before configs: Docker's default route unless internal.
                None if !ns.net.internal => f.gateway.map(|g| g.addr()),
                None => None,
            },
            _ => None,
        };
        let gateway = routes(&ns.net.ipv4, ep.address.is_some());
        let gateway_ipv6 = routes(&ns.net.ipv6, ep.address_ipv6.is_some());
        Ok(JoinAnswer {
            src_name: ep.peer_veth.clone(),
            dst_prefix: ns.net.iface_prefix.clone(),
            gateway,
            gateway_ipv6,
            static_routes,
            // Our networks bring their own way out (or are internal): never docker_gwbridge.
            disable_gateway_service: true,
        })
    }

    /// Leave: the interface is still inside the container; the veth goes at DeleteEndpoint.
    /// Published ports go now (Docker ≥ 29 may not have sent Revoke); an endpoint without
    /// ports costs no firewall work.
    pub async fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<(), DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(());
        };
        let mut ns = entry.lock().await;
        ns.requested.remove(endpoint_id);
        self.unpublish(&mut ns, endpoint_id).await
    }

    /// DeleteEndpoint: forget the endpoint and delete its veth. Unknown is fine.
    ///
    /// The kernel needs 15–20 ms to unregister a veth (RCU grace periods), ten times the rest
    /// of an endpoint's life, so the deletion runs in the background: the name is never reused
    /// (it derives from the EndpointID), DeleteNetwork and shutdown wait for it, and a crash
    /// before it finishes leaves a port that the next start collects.
    pub async fn delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(());
        };
        let mut ns = entry.lock().await;
        ns.requested.remove(endpoint_id);
        let Some(ep) = ns.endpoints.get(endpoint_id).cloned() else {
            return Ok(());
        };
        // Ports first: once the record is gone nothing would remove them until a restart.
        // A failure is reported but does not keep the endpoint (Docker never re-sends
        // DeleteEndpoint); the next start's reconcile removes chains no endpoint claims.
        let mut unpublished = Ok(());
        if ep.ports.is_some() {
            unpublished = self
                .fw
                .del_ports(network_id, endpoint_id)
                .await
                .map_err(fw_err(format!(
                    "removing published ports of endpoint {}",
                    short(endpoint_id)
                )));
            self.port_table()
                .remove(&(network_id.to_string(), endpoint_id.to_string()));
        }
        self.state.remove(ENDPOINTS, endpoint_id)?;
        ns.endpoints.remove(endpoint_id);
        ns.teardowns.retain(|t| !t.is_finished());
        let dp = self.dp.clone();
        ns.teardowns.push(tokio::spawn(async move {
            if let Err(e) = dp.delete_link(&ep.host_veth).await {
                tracing::warn!(veth = %ep.host_veth, error = %e, "cannot delete veth");
            }
        }));
        unpublished
    }
}
