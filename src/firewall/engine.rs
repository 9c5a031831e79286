//! The one implementation of `Firewall`: the intent (which networks and published ports are
//! installed), its validation, its locks and its fallbacks, generic over a `Backend` that only
//! renders and applies (iptables or nftables).
//!
//! Work is per network. Adding a network applies that network's rules alone; removing one
//! removes its rules alone (and the ports still published on it); publishing ports touches one
//! endpoint. The shared base (our chains or table, the jumps from the built-in chains) is
//! written by a full rewrite of the known set: at the first change of the process, after a
//! change failed, at `reconcile` and when the last network goes (then nothing of ours stays).
//! An incremental change that fails (someone deleted our chains, or a rule of the network) is
//! retried as a full rewrite, which repairs whatever was changed under us; so a re-sent
//! CreateNetwork still repairs its network's rules.
//!
//! Locks: one per network, held across that network's tool run, so changes of one network
//! reach the kernel in the order they change the set; a gate that every change holds shared
//! and a full rewrite exclusively (it renders the whole set, so nothing may change it under
//! it); a short, never awaited mutex around the set itself. A backend whose port updates
//! rewrite chains shared by every endpoint (nftables' dispatch chains) also serialises them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, RwLock};

use super::exec::set_route_localnet;
use super::intent::{key, EndpointKey, Intent};
use super::{conntrack, validate_rules, EndpointPorts, Firewall, FirewallError, NetworkRules};

/// What a full rewrite is asked to remove besides what the new set no longer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The ports of these endpoints were installed and are gone from the set.
    Known(Vec<EndpointPorts>),
    /// Whatever the kernel holds of ours that the set does not claim (`reconcile`: an earlier
    /// process may have installed what this one never knew).
    FromKernel,
}

/// How one backend writes rules. Every method is one transaction per address family (or one
/// for both); none keeps any intent of its own.
pub trait Backend: Send + Sync + 'static {
    /// Whether `update_ports` rewrites chains shared by every endpoint, so that two updates
    /// must not run at once.
    const SHARED_PORT_CHAINS: bool;

    /// Make everything ours exactly `set`: the shared base, every network and every
    /// endpoint's ports.
    fn write_all(
        &self,
        set: &Intent,
        stale: &Stale,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Refuse what this backend cannot express, before anything is installed.
    fn check_network(&self, _rules: &NetworkRules) -> Result<(), FirewallError> {
        Ok(())
    }

    /// Install `new`'s rules, replacing `old` (what this process installed for the same
    /// network, if anything). The base is in place. Fails if `old` is not installed as
    /// described.
    fn add_network(
        &self,
        old: Option<&NetworkRules>,
        new: &NetworkRules,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Remove `rules` (as installed) and `ports`, the endpoints still published on it;
    /// `remaining` is every other endpoint's ports.
    fn del_network(
        &self,
        rules: &NetworkRules,
        ports: &[EndpointPorts],
        remaining: &[EndpointPorts],
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Turn one endpoint's ports from `old` into `new` (`None` = none); `all` is every
    /// endpoint's ports once the change is made.
    fn update_ports(
        &self,
        all: &[EndpointPorts],
        old: Option<&EndpointPorts>,
        new: Option<&EndpointPorts>,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;
}

/// The set as installed, and whether the shared base is known to be in place.
#[derive(Default)]
struct Book {
    set: Intent,
    base: bool,
}

/// `Firewall` over a backend; see the module comment.
pub struct Engine<B> {
    backend: B,
    book: Mutex<Book>,
    gate: RwLock<()>,
    networks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    ports: AsyncMutex<()>,
}

impl<B: Backend> Engine<B> {
    /// An engine writing through `backend`, knowing nothing installed yet.
    pub fn with_backend(backend: B) -> Self {
        Engine {
            backend,
            book: Mutex::new(Book::default()),
            gate: RwLock::new(()),
            networks: Mutex::new(HashMap::new()),
            ports: AsyncMutex::new(()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The networks whose rules are installed, as this process knows them.
    pub async fn networks(&self) -> Vec<NetworkRules> {
        self.book().set.network_list()
    }

    /// The endpoints whose ports are published, as this process knows them.
    pub async fn ports(&self) -> Vec<EndpointPorts> {
        self.book().set.port_list()
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Nothing panics while holding it; should it, the set is still the last one written.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock of one network, taken for the whole of one change of it.
    async fn lock_network(&self, network_id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.networks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(network_id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Forget the lock of a network that is gone (the caller has released it), unless someone
    /// else holds or waits for it: then the map's is not the only reference, and a new holder
    /// can only get one through the map's lock.
    fn forget_network(&self, network_id: &str) {
        let mut map = self.networks.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(network_id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(network_id);
        }
    }

    /// The serialisation of port updates, for a backend that needs it.
    async fn ports_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if B::SHARED_PORT_CHAINS {
            Some(self.ports.lock().await)
        } else {
            None
        }
    }

    /// Rewrite everything ours as `change` makes the set, exclusively. The base is in place
    /// afterwards if the set holds any network (without one, nothing of ours is left).
    async fn rewrite(
        &self,
        change: impl FnOnce(&Intent) -> Result<Intent, FirewallError>,
        stale: Stale,
    ) -> Result<(), FirewallError> {
        let _all = self.gate.write().await;
        let next = change(&self.book().set)?;
        for p in next.ports.values().filter(|p| p.needs_route_localnet()) {
            set_route_localnet(&p.bridge);
        }
        match self.backend.write_all(&next, &stale).await {
            Ok(()) => {
                let mut book = self.book();
                book.base = !next.networks.is_empty();
                book.set = next;
                Ok(())
            }
            Err(e) => {
                self.book().base = false;
                Err(e)
            }
        }
    }

    /// Replace one endpoint's ports (`None` = remove them); the endpoint's network is locked.
    async fn update_ports(
        &self,
        key: EndpointKey,
        new: Option<&EndpointPorts>,
    ) -> Result<(), FirewallError> {
        if let Some(p) = new.filter(|p| p.needs_route_localnet()) {
            set_route_localnet(&p.bridge);
        }
        let change = |set: &Intent| Ok(set.with_ports(&key, new));
        let outcome = {
            let _shared = self.gate.read().await;
            let _ports = self.ports_lock().await;
            let (base, old, all) = {
                let book = self.book();
                let old = book.set.ports.get(&key).cloned();
                (book.base, old, book.set.with_ports(&key, new).port_list())
            };
            if !base {
                None
            } else {
                Some(
                    match self.backend.update_ports(&all, old.as_ref(), new).await {
                        Ok(()) => {
                            let mut book = self.book();
                            book.set = book.set.with_ports(&key, new);
                            Ok(())
                        }
                        Err(e) => Err((e, old)),
                    },
                )
            }
        };
        match outcome {
            Some(Ok(())) => Ok(()),
            None => self.rewrite(change, Stale::Known(Vec::new())).await,
            Some(Err((e, old))) => {
                tracing::warn!(endpoint = %key.1, error = %e, "updating the endpoint's rules failed; rewriting all cnibridge rules");
                let stale = match (new, old) {
                    (None, Some(p)) => vec![p],
                    _ => Vec::new(),
                };
                self.rewrite(change, Stale::Known(stale)).await
            }
        }
    }
}

impl<B: Backend + Default> Default for Engine<B> {
    fn default() -> Self {
        Self::with_backend(B::default())
    }
}

impl<B: Backend> Firewall for Engine<B> {
    async fn add_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        validate_rules(rules)?;
        self.backend.check_network(rules)?;
        let _network = self.lock_network(&rules.network_id).await;
        let change = |set: &Intent| set.with_network(rules);
        let failed = {
            let _shared = self.gate.read().await;
            let (base, old) = {
                let book = self.book();
                (book.base, book.set.networks.get(&rules.network_id).cloned())
            };
            if !base {
                None
            } else {
                // Applied even when nothing changed: a re-sent CreateNetwork then repairs
                // the network's rules if someone removed or changed them.
                match self.backend.add_network(old.as_ref(), rules).await {
                    Ok(()) => {
                        let mut book = self.book();
                        book.set
                            .networks
                            .insert(rules.network_id.clone(), rules.clone());
                        return Ok(());
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(e) = failed {
            tracing::warn!(network = %rules.network_id, error = %e, "installing the network's rules failed; rewriting all cnibridge rules");
        }
        self.rewrite(change, Stale::Known(Vec::new())).await
    }

    async fn del_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let id = &rules.network_id;
        let network = self.lock_network(id).await;
        let outcome = {
            let _shared = self.gate.read().await;
            // Unknown is success by contract; rules of networks this process never knew are
            // removed by `reconcile`, which sees the whole set. Ports left behind by a lost
            // DeleteEndpoint go with their network.
            let (base, known, gone) = {
                let book = self.book();
                match book.set.without_network(id) {
                    None => return Ok(()),
                    Some((next, gone)) => (
                        // The last network goes with a full rewrite, which leaves nothing.
                        book.base && !next.networks.is_empty(),
                        book.set.networks.get(id).cloned(),
                        gone,
                    ),
                }
            };
            match known.filter(|_| base) {
                None => None,
                Some(known) => {
                    let _ports = if gone.is_empty() {
                        None
                    } else {
                        self.ports_lock().await
                    };
                    let remaining: Vec<EndpointPorts> = {
                        let book = self.book();
                        book.set
                            .ports
                            .iter()
                            .filter(|((net, _), _)| net != id)
                            .map(|(_, p)| p.clone())
                            .collect()
                    };
                    Some(
                        match self.backend.del_network(&known, &gone, &remaining).await {
                            Ok(()) => {
                                let mut book = self.book();
                                if let Some((next, _)) = book.set.without_network(id) {
                                    book.set = next;
                                }
                                Ok(())
                            }
                            Err(e) => Err((e, gone)),
                        },
                    )
                }
            }
        };
        let result = match outcome {
            Some(Ok(())) => Ok(()),
            other => {
                let stale = match other {
                    Some(Err((e, gone))) => {
                        tracing::warn!(network = %id, error = %e, "removing the network's rules failed; rewriting all cnibridge rules");
                        gone
                    }
                    _ => self
                        .book()
                        .set
                        .ports
                        .iter()
                        .filter(|((net, _), _)| net == id)
                        .map(|(_, p)| p.clone())
                        .collect(),
                };
                self.rewrite(
                    |set| {
                        Ok(set
                            .without_network(id)
                            .map_or_else(|| set.clone(), |(n, _)| n))
                    },
                    Stale::Known(stale),
                )
                .await
            }
        };
        if result.is_ok() {
            drop(network);
            self.forget_network(id);
        }
        result
    }

    async fn add_ports(&self, ports: &EndpointPorts) -> Result<(), FirewallError> {
        {
            let _network = self.lock_network(&ports.network_id).await;
            let key = self.book().set.ports_key(ports)?;
            self.update_ports(key, Some(ports)).await?;
        }
        conntrack::after_publish(ports).await;
        Ok(())
    }

    async fn del_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        let _network = self.lock_network(network_id).await;
        let key = key(network_id, endpoint_id);
        if !self.book().set.ports.contains_key(&key) {
            return Ok(());
        }
        self.update_ports(key, None).await
    }

    async fn reconcile(
        &self,
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        let next = Intent::from_set(networks, ports)?;
        self.rewrite(|_| Ok(next), Stale::FromKernel).await
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
