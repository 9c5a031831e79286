//! Pools no network took. RequestPool writes its pool before dockerd stores anything; when its
//! answer is lost (cnibridge killed before it replied, or dockerd timed out), dockerd's retry
//! is refused as overlapping and no network ever takes the first pool, which would stay held
//! for good.
//!
//! A pool is unused when, at a trigger (start, `Plugin.Activate`), no cnibridge network is bound
//! to it, and a grace period later it still is not and dockerd lists no network on its subnet:
//! a network of another driver with `--ipam-driver cnibridge` never binds a pool, but dockerd
//! lists it. A live create binds its pool (or fails and releases it) well within the grace.
//! When dockerd cannot be asked (`--docker-host none`, or it does not answer), nothing is
//! released.

use std::time::Duration;

use super::{blocking, Driver};
use crate::dataplane::Dataplane;
use crate::dockerd::DockerNetworks;
use crate::firewall::Firewall;
use crate::ipam::PoolRecord;

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Runs until aborted: at start and after each activation, the pools bound to no network
    /// then that are still unbound `grace` later, and on no subnet dockerd has, are released.
    pub async fn collect_unused_pools(&self, docker: &impl DockerNetworks, grace: Duration) {
        let mut activations = self.activations.generation.subscribe();
        loop {
            let seen = self.unbound_pools();
            if !seen.is_empty() {
                tracing::debug!(
                    count = seen.len(),
                    "pools no network took; released after the grace period unless one does"
                );
                tokio::time::sleep(grace).await;
                self.release_unused_pools(docker, &seen).await;
            }
            if activations.changed().await.is_err() {
                return;
            }
        }
    }

    /// The pools no cnibridge network is bound to now.
    pub(crate) fn unbound_pools(&self) -> Vec<PoolRecord> {
        self.ipam
            .pools()
            .into_iter()
            .filter(|p| p.network_id.is_none())
            .collect()
    }

    /// Releases each of `seen` that is unchanged (still unbound, not released and requested
    /// again) and on no subnet dockerd has; returns the ids released.
    pub(crate) async fn release_unused_pools(
        &self,
        docker: &impl DockerNetworks,
        seen: &[PoolRecord],
    ) -> Vec<String> {
        let in_use = match docker.subnets().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "cannot ask dockerd which pools its networks use; none released");
                return Vec::new();
            }
        };
        let mut released = Vec::new();
        for p in seen {
            if self.ipam.pool(&p.id).as_ref() != Some(p) || in_use.contains(&p.subnet.trunc()) {
                continue;
            }
            let ipam = self.ipam.clone();
            let id = p.id.clone();
            match blocking(move || ipam.release_pool(&id)).await {
                Ok(()) => {
                    tracing::info!(pool = %p.id, "released a pool that no network took (a RequestPool whose answer was lost)");
                    released.push(p.id.clone());
                }
                Err(e) => tracing::warn!(pool = %p.id, error = %e, "cannot release an unused pool"),
            }
        }
        released
    }
}
