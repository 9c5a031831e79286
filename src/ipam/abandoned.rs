//! `pending` allocation files whose endpoint never came.
//!
//! RequestAddress writes `cnibridge-pending-<token>\r\npending` and CreateEndpoint relabels the
//! file a moment later; dockerd sends ReleaseAddress when CreateEndpoint fails. If dockerd dies
//! between the two calls, or cnibridge is down past dockerd's retries of both, nobody ever
//! sends either, and the address would stay taken for good.
//!
//! A pending file is abandoned when it is still pending, with the same token, a grace period
//! after cnibridge started or dockerd activated it: in every live sequence it is relabeled or
//! released within dockerd's retry window (at most 30 s). Only pools backing a cnibridge network
//! are looked at: with another network driver (`--ipam-driver cnibridge` alone) no
//! CreateEndpoint ever reaches cnibridge, so its addresses stay pending while in use.

use std::net::IpAddr;

use super::allocator::{locked, Store};
use super::owner::pending_owner;
use super::{read, Ipam, IpamError, Owner};

/// A `pending` file seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAddress {
    pub pool_id: String,
    pub address: IpAddr,
    /// Its token: a later request for the same address has another one.
    pub owner: Owner,
}

impl Ipam {
    /// The `pending` files of the pools that back a cnibridge network. A pool whose directory
    /// cannot be read is skipped (logged): it is looked at again at the next trigger.
    pub fn pending_addresses(&self) -> Vec<PendingAddress> {
        let slots: Vec<_> = super::lock(&self.table).values().cloned().collect();
        let mut found = Vec::new();
        for slot in slots {
            let mut work = slot.work();
            let rec = read(&slot.record).clone();
            if work.released || rec.network_id.is_none() {
                continue;
            }
            let scan = work.store(&rec).and_then(|store| {
                locked(store, |s| {
                    let mut seen = Vec::new();
                    for ip in s.addresses()? {
                        if !rec.subnet.contains(&ip) {
                            continue;
                        }
                        if let Some(owner) = s.read(ip)?.as_deref().and_then(pending_owner) {
                            seen.push((ip, owner));
                        }
                    }
                    Ok::<_, IpamError>(seen)
                })
            });
            match scan {
                Ok(seen) => found.extend(seen.into_iter().map(|(address, owner)| PendingAddress {
                    pool_id: rec.id.clone(),
                    address,
                    owner,
                })),
                Err(e) => {
                    tracing::warn!(pool = %rec.id, error = %e, "cannot look for abandoned addresses")
                }
            }
        }
        found
    }

    /// Removes each of `seen` that is still pending with the same token; returns those
    /// removed. A pool released meanwhile took its files with it.
    pub fn collect_abandoned(&self, seen: &[PendingAddress]) -> Vec<PendingAddress> {
        let mut collected = Vec::new();
        for p in seen {
            match self.release_owned(&p.pool_id, p.address, &p.owner) {
                Ok(true) => {
                    tracing::info!(pool = %p.pool_id, address = %p.address, "released an address requested for an endpoint that never came");
                    collected.push(p.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pool = %p.pool_id, address = %p.address, error = %e, "cannot release an abandoned address")
                }
            }
        }
        collected
    }
}
