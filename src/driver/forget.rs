//! Networks dockerd removed while cnibridge could not hear it. dockerd removes a network even
//! when the driver's DeleteNetwork fails (the plugin was down), and a remote driver is never told
//! again; without this, the network's bridge, rules and addresses would come back at every start.
//!
//! When: at start (for the networks of the earlier life) and after each `Plugin.Activate` (dockerd
//! (re)started and reconnects), never on a timer. Only networks known *before* the trigger are
//! asked about: a network created right after it may not be in dockerd's store yet (libnetwork
//! calls CreateNetwork before it stores the network) and would look removed.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::{blocking, short, Driver, DriverError};
use crate::dataplane::Dataplane;
use crate::dockerd::{DockerNetworks, Presence};
use crate::firewall::Firewall;

/// The networks known at the last `Plugin.Activate`, for the task that asks dockerd about them.
#[derive(Default)]
pub(crate) struct Activations {
    pending: Mutex<Option<Vec<String>>>,
    notify: Notify,
}

/// The slot holds a plain value replaced whole, so a panic elsewhere cannot leave it torn.
fn pending(a: &Activations) -> std::sync::MutexGuard<'_, Option<Vec<String>>> {
    a.pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// `Plugin.Activate` arrived: dockerd (re)connected. Records which networks exist now, before
    /// the answer lets dockerd send anything else.
    pub fn note_activation(&self) {
        *pending(&self.activations) = Some(self.network_ids());
        // A stored permit if the task is busy: the activation is not lost.
        self.activations.notify.notify_one();
    }

    /// Waits for the next `Plugin.Activate`; returns the networks known when it arrived.
    pub async fn next_activation(&self) -> Vec<String> {
        loop {
            self.activations.notify.notified().await;
            if let Some(ids) = pending(&self.activations).take() {
                return ids;
            }
        }
    }

    /// Asks dockerd about each of `candidates` still known and forgets those it no longer has:
    /// their endpoints, rules, bridge (if cnibridge made it), export, address files and pools.
    /// Stops at the first network dockerd cannot answer for (it is down or starting: the next
    /// activation asks again). Returns the ids forgotten.
    pub async fn forget_removed_networks(
        &self,
        docker: &impl DockerNetworks,
        candidates: &[String],
    ) -> Vec<String> {
        let mut forgotten = Vec::new();
        for id in candidates {
            if self.entry(id).is_none() {
                continue;
            }
            match docker.presence(id).await {
                Ok(Presence::Present) => {}
                Ok(Presence::Removed) => match self.forget_network(id).await {
                    Ok(()) => {
                        tracing::info!(
                            network = short(id),
                            "dockerd removed this network while cnibridge was away; forgotten"
                        );
                        forgotten.push(id.clone());
                    }
                    Err(e) => {
                        tracing::warn!(network = short(id), error = %e, "cannot forget a network dockerd removed")
                    }
                },
                Err(e) => {
                    tracing::info!(error = %e, "cannot ask dockerd which networks still exist; asking again when it activates the plugin");
                    break;
                }
            }
        }
        forgotten
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
}
