//! CreateNetwork's table of creations in flight. One creation per NetworkID runs at a time, so
//! a re-sent CreateNetwork waits for the original and then finds the network; and a bridge
//! name is reserved from the "is it free" check until the network is in the driver's table, so
//! two creates of different networks cannot both take one bridge. The table's lock is never
//! held across an await; a creation's turn is an async lock of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
struct Table {
    /// One lock per NetworkID being created; removed when nobody holds or waits for it.
    turns: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bridge name → the NetworkID whose creation reserved it.
    bridges: HashMap<String, String>,
}

/// The creations in flight.
#[derive(Default)]
pub(super) struct Creations {
    table: Mutex<Table>,
}

/// The right to create one NetworkID; dropping it lets the next creation of that id run.
pub(super) struct Turn<'a> {
    creations: &'a Creations,
    network_id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

/// A bridge name held for a creation until it is dropped.
pub(super) struct Reservation<'a> {
    creations: &'a Creations,
    bridge: String,
}

impl Creations {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Every change is a single insert or remove: a panic elsewhere leaves it whole.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no other creation of `network_id` runs, and take the turn.
    pub(super) async fn turn(&self, network_id: &str) -> Turn<'_> {
        let lock = self
            .table()
            .turns
            .entry(network_id.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        Turn {
            creations: self,
            network_id: network_id.to_string(),
            guard: Some(guard),
        }
    }

    /// Reserve `bridge` for `network_id`, unless another creation holds it or `known` (the
    /// driver's table, read under this table's lock) names a network using it; the `Err` is
    /// that network's id.
    pub(super) fn reserve(
        &self,
        bridge: &str,
        network_id: &str,
        known: impl FnOnce(&str) -> Option<String>,
    ) -> Result<Reservation<'_>, String> {
        let mut t = self.table();
        if let Some(other) = t.bridges.get(bridge).filter(|o| *o != network_id) {
            return Err(other.clone());
        }
        if let Some(other) = known(bridge) {
            return Err(other);
        }
        t.bridges.insert(bridge.to_string(), network_id.to_string());
        Ok(Reservation {
            creations: self,
            bridge: bridge.to_string(),
        })
    }

    /// How many hold or wait for the turn of `network_id` (tests).
    #[cfg(test)]
    pub(super) fn contenders(&self, network_id: &str) -> usize {
        self.table()
            .turns
            .get(network_id)
            .map_or(0, |l| Arc::strong_count(l) - 1)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut t = self.creations.table();
        // Only the table's own handle left: nobody waits, forget the id.
        if t.turns
            .get(&self.network_id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            t.turns.remove(&self.network_id);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.creations.table().bridges.remove(&self.bridge);
    }
}
