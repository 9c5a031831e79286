//! Join: the veth pair in the host namespace, host end on the bridge; Docker moves the other
//! end into the sandbox and configures it from the answer. Port bindings are checked and
//! remembered here; ProgramExternalConnectivity publishes them.

use std::path::PathBuf;

use super::bandwidth;
use super::plan::Plan;
use super::ports::PortRequest;
use super::{
    bridge_spec, cni, dp_err, names, short, Driver, DriverError, GenericOptions, JoinAnswer,
    NetState,
};
use crate::dataplane::{BridgeOutcome, Dataplane, DataplaneError, PeerTuning, Shaping, VethSpec};
use crate::firewall::Firewall;
use crate::state::records::{FamilyData, NETWORKS};
use crate::state::Durability;

/// What Join's steps share: the network (under its lock), the bindings to remember and the
/// ones they replace (for the undo), and the veth to make.
struct Joining<'a, D, F> {
    driver: &'a Driver<D, F>,
    ns: &'a mut NetState,
    endpoint_id: String,
    requests: Option<Vec<PortRequest>>,
    replaced: Option<Vec<PortRequest>>,
    veth: VethSpec,
    /// CNI tuning's sysctls, for the sandbox at `sandbox` (empty path: not given).
    sysctls: Vec<(String, String)>,
    sandbox: PathBuf,
    /// CNI bandwidth's limits on the host end, with the ifb for egress.
    shaping: Option<(Shaping, String)>,
}

fn join_plan<'a, D: Dataplane, F: Firewall>() -> Plan<Joining<'a, D, F>, DriverError> {
    Plan::<Joining<'a, D, F>, DriverError>::new("Join")
        .step(
            "remember port bindings",
            |c| {
                Box::pin(async move {
                    c.replaced = c.ns.requested.remove(&c.endpoint_id);
                    if let Some(r) = c.requests.clone() {
                        c.ns.requested.insert(c.endpoint_id.clone(), r);
                    }
                    Ok(())
                })
            },
            |c| {
                Box::pin(async move {
                    c.ns.requested.remove(&c.endpoint_id);
                    if let Some(r) = c.replaced.take() {
                        c.ns.requested.insert(c.endpoint_id.clone(), r);
                    }
                    Ok(())
                })
            },
        )
        // Sysctls live in the sandbox and go with it: nothing to undo.
        .step_without_undo("set sysctls", |c| {
            Box::pin(async move {
                if c.sysctls.is_empty() || c.sandbox.as_os_str().is_empty() {
                    return Ok(());
                }
                c.driver
                    .dp
                    .set_sysctls(&c.sandbox, &c.sysctls)
                    .await
                    .map_err(dp_err(format!(
                        "applying the config's tuning sysctls in sandbox {}",
                        c.sandbox.display()
                    )))
            })
        })
        // Last, so nothing after it can fail; and without an undo, since a re-sent Join keeps
        // the pair it finds and an undo could not tell whose it is.
        .step_without_undo("create veth", |c| {
            Box::pin(async move {
                c.driver.create_veth(c.ns, &c.veth).await?;
                c.driver.shape(&c.veth, c.shaping.as_ref()).await
            })
        })
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Join without options (no port bindings).
    pub async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<JoinAnswer, DriverError> {
        self.join_with_options(network_id, endpoint_id, &GenericOptions::new())
            .await
    }

    /// Join: the veth pair on the bridge, and the answer Docker configures the sandbox's end
    /// from. Port bindings in `options` are checked (a malformed option fails Join before any
    /// veth) and remembered for a ProgramExternalConnectivity that carries none.
    pub async fn join_with_options(
        &self,
        network_id: &str,
        endpoint_id: &str,
        options: &GenericOptions,
    ) -> Result<JoinAnswer, DriverError> {
        self.join_sandbox(network_id, endpoint_id, "", options)
            .await
    }

    /// Join as dockerd sends it: with the sandbox's network namespace (`SandboxKey`), where
    /// the config's tuning sysctls are written.
    pub async fn join_sandbox(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox_key: &str,
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
        let requests = super::ports::parse_portmap(options)?.filter(|r| !r.is_empty());
        if requests.is_some() && !ns.net.internal {
            super::publish::check_portmap(&ns.net)?;
        }
        let tuning = ns.net.cni.as_ref().and_then(|c| c.chain.tuning.as_ref());
        let veth = VethSpec {
            host_name: ep.host_veth.clone(),
            peer_name: ep.peer_veth.clone(),
            bridge: ns.net.bridge.clone(),
            mtu: ns.net.mtu,
            peer_mac: names::parse_mac(&ep.mac),
            hairpin: ns.net.cni.as_ref().is_some_and(|c| c.hairpin_mode),
            peer_tuning: tuning
                .map(|t| PeerTuning {
                    mtu: t.mtu,
                    promisc: t.promisc,
                    allmulti: t.allmulti,
                    tx_qlen: t.tx_qlen,
                })
                .unwrap_or_default(),
        };
        let sysctls = tuning
            .map(|t| {
                t.sysctl
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let shaping = ep.bandwidth.map(|b| {
            let ifb =
                names::ifb_of_host_veth(&ep.host_veth).unwrap_or_else(|| names::ifb(endpoint_id));
            (bandwidth::shaping(&b), ifb)
        });
        let mut ctx = Joining {
            driver: self,
            ns: &mut ns,
            endpoint_id: endpoint_id.to_string(),
            requests,
            replaced: None,
            veth,
            sysctls,
            sandbox: PathBuf::from(sandbox_key),
            shaping,
        };
        join_plan().run(&mut ctx).await?;
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

    /// The endpoint's shaping on its host end. A failure takes the new pair (and ifb) away
    /// again, so a failed Join leaves no unshaped container behind.
    async fn shape(
        &self,
        veth: &VethSpec,
        shaping: Option<&(Shaping, String)>,
    ) -> Result<(), DriverError> {
        let Some((shaping, ifb)) = shaping else {
            return Ok(());
        };
        let Err(e) = self.dp.set_shaping(&veth.host_name, ifb, shaping).await else {
            return Ok(());
        };
        for link in [&veth.host_name, ifb] {
            if let Err(e) = self.dp.delete_link(link).await {
                tracing::warn!(link = %link, error = %e, "cannot delete after failed shaping");
            }
        }
        Err(dp_err(format!(
            "applying the bandwidth limits to veth {}",
            veth.host_name
        ))(e))
    }

    /// The veth pair on the network's bridge. A bridge that vanished (host reboot, someone
    /// deleted it) is made again, once, and the record then says cnibridge made it.
    async fn create_veth(&self, ns: &mut NetState, spec: &VethSpec) -> Result<(), DriverError> {
        match self.dp.create_veth(spec).await {
            Ok(()) => Ok(()),
            Err(DataplaneError::NotFound(_)) => {
                let outcome = self
                    .dp
                    .ensure_bridge(&bridge_spec(&ns.net))
                    .await
                    .map_err(dp_err(format!("re-creating bridge {}", ns.net.bridge)))?;
                if outcome == BridgeOutcome::Created && !ns.net.bridge_created {
                    ns.net.bridge_created = true;
                    self.state
                        .write_async(NETWORKS, &ns.net.id, &ns.net, Durability::PowerLoss)
                        .await?;
                }
                self.dp
                    .create_veth(spec)
                    .await
                    .map_err(dp_err(format!("creating veth {}", spec.host_name)))
            }
            Err(e) => Err(dp_err(format!("creating veth {}", spec.host_name))(e)),
        }
    }
}
