//! When the IPAM looks for `pending` addresses whose endpoint never came (see
//! `ipam::abandoned`): at start and after each `Plugin.Activate`, the moments a request of an
//! earlier life of cnibridge or dockerd may have been cut off; never on a timer.

use std::time::Duration;

use super::{blocking, Driver};
use crate::dataplane::Dataplane;
use crate::firewall::Firewall;

/// How long a `pending` file may stay so after a trigger before it counts as abandoned.
/// CreateEndpoint follows RequestAddress at once, and dockerd retries a plugin call for at most
/// 30 s (moby `pkg/plugins`, `defaultTimeOut`), so a live request is never this old.
pub const ABANDON_GRACE: Duration = Duration::from_secs(120);

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Runs until aborted: at start and after each activation, the `pending` files seen then
    /// that are still pending with the same token `grace` later are released.
    pub async fn collect_abandoned_addresses(&self, grace: Duration) {
        let mut activations = self.activations.generation.subscribe();
        loop {
            let ipam = self.ipam.clone();
            let seen = blocking(move || Ok(ipam.pending_addresses()))
                .await
                .unwrap_or_default();
            if !seen.is_empty() {
                tracing::debug!(
                    count = seen.len(),
                    "pending addresses; released if still pending after the grace period"
                );
                tokio::time::sleep(grace).await;
                let ipam = self.ipam.clone();
                let _ = blocking(move || Ok(ipam.collect_abandoned(&seen))).await;
            }
            if activations.changed().await.is_err() {
                return;
            }
        }
    }
}
