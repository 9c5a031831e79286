//! The address half of [`Ipam`]: RequestAddress, ReleaseAddress and relabelling, each one
//! locked allocation under the pool's `work` mutex and host-local's flock.

use std::net::IpAddr;

use ipnet::IpNet;

use super::allocator::{holder_of, locked, relabel, release, Allocator, Outcome, Request};
use super::disk::{self, DiskStore};
use super::ledger::{token, Intent};
use super::range::{canonical, is_network_or_broadcast, next_ip};
use super::{effective_gateway, lock, range_set, read, with_prefix, Ipam, IpamError, Owner};

impl Ipam {
    /// Reserve an address (RequestAddress): the gateway, a given address (`--ip`,
    /// `--aux-address`), or the next free one by host-local's round robin.
    pub fn request_address(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        gateway: bool,
    ) -> Result<IpNet, IpamError> {
        let unknown = || IpamError::UnknownPool(pool_id.to_string());
        let slot = self.slot(pool_id).ok_or_else(unknown)?;
        let mut work = lock(&slot.work);
        if work.released {
            return Err(unknown());
        }
        let rec = read(&slot.record).clone();
        let address = address.map(canonical);
        if let Some(a) = address {
            if !rec.subnet.contains(&a) {
                return Err(IpamError::OutOfPool {
                    address: a,
                    pool: rec.subnet,
                });
            }
        }
        let (req, owner, set) = if gateway {
            let gw = address.unwrap_or_else(|| next_ip(rec.subnet.network()));
            if is_network_or_broadcast(&rec.subnet, gw) {
                return Err(IpamError::Invalid(format!(
                    "--gateway {gw} is the network or broadcast address of {}; choose a host address",
                    rec.subnet
                )));
            }
            if let Some(cur) = rec.gateway {
                let ours = work.ledger.owned.get(&cur);
                if cur == gw && ours == Some(&Owner::Gateway) {
                    // A repeated request (e.g. a replay) gets the same answer.
                    return with_prefix(gw, &rec.subnet);
                }
                if cur != gw && ours.is_some() {
                    return Err(IpamError::Invalid(format!(
                        "pool {} already has gateway {cur}; release it before requesting {gw}",
                        rec.id
                    )));
                }
            }
            // The gateway request itself must not be refused as "the subnet's gateway".
            (Request::Static(gw), Owner::Gateway, range_set(&rec, None))
        } else {
            let req = address.map_or(Request::Dynamic, Request::Static);
            let set = range_set(&rec, Some(effective_gateway(&rec)));
            (req, Owner::Pending(token()), set)
        };
        let intent = Intent {
            address: match req {
                Request::Static(a) => Some(a),
                Request::Dynamic => None,
            },
            owner: owner.clone(),
        };
        let mut store = DiskStore::open(&rec.data_dir, &rec.cni_name)?;
        let ip = locked(&mut store, |s| {
            self.recover(s, &rec, &mut work)?;
            work.ledger.intent = Some(intent);
            self.save_ledger(&rec.id, &work.ledger)?;
            let got =
                Allocator::new(&set, s, rec.range_index).get(&owner.id(), owner.ifname(), req);
            work.ledger.intent = None;
            if let Ok(ip) = got {
                work.ledger.owned.insert(ip, owner.clone());
            }
            if let Err(e) = self.save_ledger(&rec.id, &work.ledger) {
                if let Ok(ip) = got {
                    // Nobody would know the file is ours: take it back.
                    let _ = release(s, ip, &owner.render());
                    work.ledger.owned.remove(&ip);
                }
                return Err(e);
            }
            got
        })?;
        if gateway {
            if let Err(e) = self.update_record(&slot, |r| r.gateway = Some(ip)) {
                let undo = locked(&mut store, |s| release(s, ip, &owner.render()));
                if undo.is_ok() {
                    work.ledger.owned.remove(&ip);
                    let _ = self.save_ledger(&rec.id, &work.ledger);
                }
                return Err(e);
            }
        }
        with_prefix(ip, &rec.subnet)
    }

    /// Give an address back (ReleaseAddress). Only a file we wrote and that still holds what
    /// we wrote is deleted; unknown pools and addresses are fine (Docker releases at boot what
    /// it never got from us).
    pub fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<(), IpamError> {
        let Some(slot) = self.slot(pool_id) else {
            return Ok(());
        };
        let mut work = lock(&slot.work);
        if work.released {
            return Ok(());
        }
        let rec = read(&slot.record).clone();
        let address = canonical(address);
        if let Some(owner) = work.ledger.owned.get(&address).cloned() {
            let mut store = DiskStore::open(&rec.data_dir, &rec.cni_name)?;
            let out = locked(&mut store, |s| {
                self.recover(s, &rec, &mut work)?;
                release(s, address, &owner.render())
            })?;
            if let Outcome::Foreign(c) = out {
                tracing::warn!(
                    pool = %rec.id, %address, holder = %holder_of(&c),
                    "not removing an allocation file that someone else rewrote"
                );
            }
            work.ledger.owned.remove(&address);
            self.save_ledger(&rec.id, &work.ledger)?;
        } else {
            tracing::debug!(pool = %rec.id, %address, "release of an address we do not hold");
        }
        if rec.gateway == Some(address) {
            self.update_record(&slot, |r| r.gateway = None)?;
        }
        Ok(())
    }

    /// Relabel an address we hold (CreateEndpoint, gateway/aux): the file is rewritten in
    /// place, so the address never looks free.
    pub fn set_owner(
        &self,
        pool_id: &str,
        address: IpAddr,
        owner: &Owner,
    ) -> Result<(), IpamError> {
        owner.validate()?;
        let unknown = || IpamError::UnknownPool(pool_id.to_string());
        let slot = self.slot(pool_id).ok_or_else(unknown)?;
        let mut work = lock(&slot.work);
        if work.released {
            return Err(unknown());
        }
        let rec = read(&slot.record).clone();
        let address = canonical(address);
        let Some(cur) = work.ledger.owned.get(&address).cloned() else {
            return Err(IpamError::Invalid(format!(
                "address {address} of pool {pool_id} is not held by cnibridge; request it first"
            )));
        };
        if cur == *owner {
            return Ok(());
        }
        let mut store = DiskStore::open(&rec.data_dir, &rec.cni_name)?;
        let out = locked(&mut store, |s| {
            self.recover(s, &rec, &mut work)?;
            work.ledger.intent = Some(Intent {
                address: Some(address),
                owner: owner.clone(),
            });
            self.save_ledger(&rec.id, &work.ledger)?;
            // On an error the intent stays: recovery decides from the file what it holds.
            let out = relabel(s, address, &cur.render(), &owner.render())?;
            work.ledger.intent = None;
            match out {
                Outcome::Done => work.ledger.owned.insert(address, owner.clone()),
                Outcome::Missing | Outcome::Foreign(_) => work.ledger.owned.remove(&address),
            };
            self.save_ledger(&rec.id, &work.ledger)?;
            Ok(out)
        })?;
        match out {
            Outcome::Done => Ok(()),
            Outcome::Missing => Err(IpamError::Store {
                path: store.dir().join(disk::file_name(address)),
                reason: "the allocation file was removed behind cnibridge's back, so the address \
                         is no longer reserved; release and request it again"
                    .to_string(),
            }),
            Outcome::Foreign(c) => Err(IpamError::AddressInUse {
                address,
                pool: rec.subnet,
                holder: holder_of(&c),
            }),
        }
    }
}
