//! Endpoint operations: CreateEndpoint, Leave, DeleteEndpoint. Join is in `join`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::bandwidth;
use super::plan::Plan;
use super::{
    blocking, fw_err, names, parse_net, short, Driver, DriverError, EndpointAnswer, EndpointSpec,
    NetState,
};
use crate::dataplane::Dataplane;
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

/// What CreateEndpoint's steps share: the record to write and the addresses of our pools it
/// holds.
struct NewEndpoint<'d, D, F> {
    driver: &'d Driver<D, F>,
    ep: EndpointRecord,
    claims: Vec<(String, IpAddr)>,
}

/// The endpoint's addresses that come from our pools, with their pool.
fn claims(ns: &NetState, ep: &EndpointRecord) -> Vec<(String, IpAddr)> {
    let pairs: [(Option<&FamilyData>, Option<IpNet>); 2] = [
        (ns.net.ipv4.as_ref(), ep.address),
        (ns.net.ipv6.as_ref(), ep.address_ipv6),
    ];
    pairs
        .into_iter()
        .filter_map(|(fam, addr)| Some((fam?.pool_id.clone()?, addr?.addr())))
        .collect()
}

fn create_endpoint_plan<'d, D: Dataplane, F: Firewall>() -> Plan<NewEndpoint<'d, D, F>, DriverError>
{
    Plan::<NewEndpoint<'d, D, F>, DriverError>::new("CreateEndpoint")
        // Named before the record is written: a crash between the two leaves files named after
        // an endpoint nobody knows (held until ReleaseAddress), never a record whose files are
        // still `pending` (which the abandoned-address collector would free under it). No
        // undo: the `pending` label it replaced is not known here, and the ReleaseAddress
        // dockerd sends after a failed CreateEndpoint frees the file whatever its label.
        .step_without_undo("name address files", |c| {
            Box::pin(async move {
                c.driver.claim_addresses(&c.ep, &c.claims).await;
                Ok(())
            })
        })
        .step(
            "write record",
            |c| {
                Box::pin(async move {
                    let st = &c.driver.state;
                    Ok(st
                        .write_async(ENDPOINTS, &c.ep.id, &c.ep, Durability::Process)
                        .await?)
                })
            },
            |c| {
                Box::pin(async move { Ok(c.driver.state.remove_async(ENDPOINTS, &c.ep.id).await?) })
            },
        )
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// CreateEndpoint: name the endpoint's address files after it, record it, and answer a MAC
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
        let answer = |mac: &str| EndpointAnswer {
            mac_address: given_mac.is_none().then(|| mac.to_string()),
        };

        let mut ns = entry.lock().await;
        if let Some(ep) = ns.endpoints.get(&req.endpoint_id) {
            return Ok(answer(&ep.mac));
        }
        let chain = ns.net.cni.as_ref().map(|c| &c.chain);
        // CNI tuning's `mac`, unless Docker was given one (`--mac-address` is the user's own).
        let tuned_mac = chain.and_then(|c| c.tuning.as_ref()).and_then(|t| t.mac);
        let mac = given_mac
            .or(tuned_mac)
            .unwrap_or_else(|| names::endpoint_mac(&req.endpoint_id));
        let driver_opts = bandwidth::string_options(&req.options);
        let shaped = bandwidth::overlay(
            chain.and_then(|c| c.bandwidth),
            driver_opts.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "driver-opt",
        )?
        .filter(|b| b.shapes());
        let host_veth = self.veth_names.claim(&req.endpoint_id)?;
        let peer_veth = names::peer_of_host_veth(&host_veth)
            .unwrap_or_else(|| names::peer_veth(&req.endpoint_id));
        let ep = EndpointRecord {
            id: req.endpoint_id.clone(),
            network_id: req.network_id.clone(),
            address,
            address_ipv6,
            mac: names::format_mac(&mac),
            host_veth,
            peer_veth,
            ports: None,
            bandwidth: shaped,
        };
        let claims = claims(&ns, &ep);
        let mut ctx = NewEndpoint {
            driver: self,
            ep,
            claims,
        };
        if let Err(e) = create_endpoint_plan().run(&mut ctx).await {
            self.veth_names.release(&ctx.ep.host_veth, &ctx.ep.id);
            return Err(e);
        }
        let ep = ctx.ep;
        let resp = answer(&ep.mac);
        ns.endpoints.insert(ep.id.clone(), ep);
        Ok(resp)
    }

    /// Rename the endpoint's allocation files after it (`<EndpointID>\r\n<host veth>`), so an
    /// operator or the garbage collector can map each file to an endpoint. A failure is a
    /// warning: the address stays held either way.
    async fn claim_addresses(&self, ep: &EndpointRecord, claims: &[(String, IpAddr)]) {
        for (pool_id, addr) in claims.iter().cloned() {
            let ipam = self.ipam.clone();
            let owner = Owner::endpoint(&ep.id, &ep.host_veth);
            if let Err(e) = blocking(move || ipam.set_owner(&pool_id, addr, &owner)).await {
                tracing::warn!(endpoint = short(&ep.id), address = %addr, error = %e, "cannot name allocation file after endpoint");
            }
        }
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
    /// of an endpoint's life, so the deletion runs in the background: the name stays held
    /// until it is done (no new endpoint takes it), DeleteNetwork and shutdown wait for it, and a crash
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
        self.state.remove_async(ENDPOINTS, endpoint_id).await?;
        ns.endpoints.remove(endpoint_id);
        ns.teardowns.retain(|t| !t.is_finished());
        let dp = self.dp.clone();
        let veth_names = self.veth_names.clone();
        ns.teardowns.push(tokio::spawn(async move {
            delete_endpoint_links(dp.as_ref(), &ep).await;
            veth_names.release(&ep.host_veth, &ep.id);
        }));
        unpublished
    }
}

/// The endpoint's veth pair and, when its egress was shaped, its ifb device; failures warn,
/// the endpoint is gone either way.
pub(super) async fn delete_endpoint_links<D: Dataplane>(dp: &D, ep: &EndpointRecord) {
    if let Err(e) = dp.delete_link(&ep.host_veth).await {
        tracing::warn!(veth = %ep.host_veth, error = %e, "cannot delete veth");
    }
    if ep.bandwidth.is_some_and(|b| b.egress_rate > 0) {
        let ifb = names::ifb_of_host_veth(&ep.host_veth).unwrap_or_else(|| names::ifb(&ep.id));
        if let Err(e) = dp.delete_link(&ifb).await {
            tracing::warn!(ifb = %ifb, error = %e, "cannot delete ifb device");
        }
    }
}
