//! Networks and endpoints dockerd removed while cnibridge could not hear it. dockerd removes a
//! network, or a container's endpoint, even when the driver's DeleteNetwork/DeleteEndpoint fails
//! (the plugin was down), and a remote driver is never told again; without this, their bridges,
//! veths, rules and addresses would stay, and come back at every start.
//!
//! When: at start (for what the earlier life knew) and after each `Plugin.Activate` (dockerd
//! (re)started and reconnects), never on a timer. Only networks and endpoints known *before* the
//! trigger are asked about: one created right after it may not be in dockerd's store yet
//! (libnetwork calls the driver before it stores the object) and would look removed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};

use super::{blocking, short, Driver, DriverError};
use crate::dataplane::Dataplane;
use crate::dockerd::{DockerNetworks, Presence};
use crate::firewall::Firewall;
use crate::ipam::Owner;

/// Networks (by id) and their endpoints known at one moment.
pub type Known = BTreeMap<String, Vec<String>>;

/// What was known at the last `Plugin.Activate`, for the task that asks dockerd about it;
/// and a count of activations for anyone else who acts on them.
pub(crate) struct Activations {
    pending: Mutex<Option<Known>>,
    notify: Notify,
    pub(crate) generation: watch::Sender<u64>,
}

impl Default for Activations {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            notify: Notify::new(),
            generation: watch::channel(0).0,
        }
    }
}

/// The slot holds a plain value replaced whole, so a panic elsewhere cannot leave it torn.
fn pending(a: &Activations) -> std::sync::MutexGuard<'_, Option<Known>> {
    a.pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one check forgot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub networks: Vec<String>,
    /// (network id, endpoint id).
    pub endpoints: Vec<(String, String)>,
    /// dockerd could not be asked (down, or starting: its API serves only after it restored
    /// its networks, which calls us), so the check stopped there.
    pub unanswered: bool,
}

/// Seconds between the asks of a check dockerd does not answer: about two minutes in all,
/// enough for a dockerd that is starting; after that the next activation asks again.
const RETRY_DELAYS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// The networks and endpoints known now.
    pub async fn known(&self) -> Known {
        let entries: Vec<(String, super::NetEntry)> = match self.nets.read() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return Known::new(),
        };
        let mut known = Known::new();
        for (id, entry) in entries {
            let eps = entry.lock().await.endpoints.keys().cloned().collect();
            known.insert(id, eps);
        }
        known
    }

    /// `Plugin.Activate` arrived: dockerd (re)connected. Records what is known now, before the
    /// answer lets dockerd send anything else.
    pub async fn note_activation(&self) {
        let known = self.known().await;
        *pending(&self.activations) = Some(known);
        // A stored permit if the task is busy: the activation is not lost.
        self.activations.notify.notify_one();
        self.activations.generation.send_modify(|g| *g += 1);
    }

    /// Waits for the next `Plugin.Activate`; returns what was known when it arrived.
    pub async fn next_activation(&self) -> Known {
        loop {
            self.activations.notify.notified().await;
            if let Some(known) = pending(&self.activations).take() {
                return known;
            }
        }
    }

    /// Asks dockerd about each network of `candidates` still known: one it no longer has is
    /// forgotten whole (endpoints, rules, bridge if cnibridge made it, export, address files,
    /// pools); of one it has, the candidate endpoints it does not list are forgotten (ports,
    /// veth, address files). Stops at the first network dockerd cannot answer for (it is down
    /// or starting: the next activation asks again).
    pub async fn forget_removed(
        &self,
        docker: &impl DockerNetworks,
        candidates: &Known,
    ) -> Forgotten {
        let mut forgotten = Forgotten::default();
        for (id, endpoints) in candidates {
            if self.entry(id).is_none() {
                continue;
            }
            match docker.presence(id).await {
                Ok(Presence::Present { endpoints: theirs }) => {
                    for ep in endpoints.iter().filter(|ep| !theirs.contains(*ep)) {
                        match self.forget_endpoint(id, ep).await {
                            Ok(true) => {
                                tracing::info!(network = short(id), endpoint = short(ep), "dockerd removed this endpoint while cnibridge was away; forgotten");
                                forgotten.endpoints.push((id.clone(), ep.clone()));
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(network = short(id), endpoint = short(ep), error = %e, "cannot forget an endpoint dockerd removed")
                            }
                        }
                    }
                }
                Ok(Presence::Removed) => match self.forget_network(id).await {
                    Ok(()) => {
                        tracing::info!(
                            network = short(id),
                            "dockerd removed this network while cnibridge was away; forgotten"
                        );
                        forgotten.networks.push(id.clone());
                    }
                    Err(e) => {
                        tracing::warn!(network = short(id), error = %e, "cannot forget a network dockerd removed")
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot ask dockerd what it still has");
                    forgotten.unanswered = true;
                    break;
                }
            }
        }
        forgotten
    }

    /// Runs until aborted: checks `candidates` (what the earlier life knew), then, after each
    /// `Plugin.Activate`, what was known when it arrived. A check dockerd does not answer is
    /// repeated after 1, 2, 4 … 64 s, or at once with the newer candidates of an activation
    /// that comes meanwhile; never on a timer otherwise.
    pub async fn forget_loop(&self, docker: &impl DockerNetworks, mut candidates: Known) {
        loop {
            let mut delays = RETRY_DELAYS.iter();
            while !candidates.is_empty()
                && self.forget_removed(docker, &candidates).await.unanswered
            {
                let Some(&secs) = delays.next() else {
                    tracing::info!(
                        "dockerd does not answer; asking again when it activates the plugin"
                    );
                    break;
                };
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
                    known = self.next_activation() => {
                        candidates = known;
                        delays = RETRY_DELAYS.iter();
                    }
                }
            }
            candidates = self.next_activation().await;
        }
    }

    /// DeleteNetwork, then the ReleasePool calls dockerd never sent.
    async fn forget_network(&self, network_id: &str) -> Result<(), DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(());
        };
        let pools: Vec<String> = {
            let ns = entry.lock().await;
            ns.net
                .families()
                .filter_map(|f| f.pool_id.clone())
                .collect()
        };
        self.delete_network(network_id).await?;
        for pool in pools {
            let ipam = self.ipam.clone();
            blocking(move || ipam.release_pool(&pool)).await?;
        }
        Ok(())
    }

    /// Leave and DeleteEndpoint, then the ReleaseAddress calls dockerd never sent, for files
    /// the endpoint still holds. `Ok(false)`: it was gone already.
    async fn forget_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<bool, DriverError> {
        let Some(entry) = self.entry(network_id) else {
            return Ok(false);
        };
        let (held, host_veth): (Vec<(String, std::net::IpAddr)>, String) = {
            let ns = entry.lock().await;
            let Some(ep) = ns.endpoints.get(endpoint_id) else {
                return Ok(false);
            };
            let held = [
                (ns.net.ipv4.as_ref(), ep.address),
                (ns.net.ipv6.as_ref(), ep.address_ipv6),
            ]
            .into_iter()
            .filter_map(|(fam, addr)| Some((fam?.pool_id.clone()?, addr?.addr())))
            .collect();
            (held, ep.host_veth.clone())
        };
        self.leave(network_id, endpoint_id).await?;
        self.delete_endpoint(network_id, endpoint_id).await?;
        for (pool, addr) in held {
            let ipam = self.ipam.clone();
            let owner = Owner::endpoint(endpoint_id, &host_veth);
            blocking(move || ipam.release_owned(&pool, addr, &owner)).await?;
        }
        Ok(true)
    }
}
