//! The address half of [`Ipam`]: RequestAddress, ReleaseAddress and relabelling, each one
//! locked operation under the pool's `work` mutex and host-local's flock. Whether a file is
//! ours is read from its content ([`super::is_ours`]); no other record is kept per address.

use std::net::IpAddr;

use ipnet::IpNet;

use super::allocator::{holder_of, locked, relabel, release, Allocator, Outcome, Request, Store};
use super::disk;
use super::owner::{is_ours, token};
use super::{conf, effective_gateway, range_set, read, with_prefix, Ipam, IpamError, Owner};
use crate::range::{canonical, is_network_or_broadcast, next_ip};

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
        let mut work = slot.work();
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
        if let (true, Some(conf)) = (gateway, &rec.conf) {
            // A config's gateway is the config's: host-local keeps no file for it (it only
            // skips it), so neither do we. Docker asks only when the user gave --gateway.
            return match (address, rec.gateway) {
                (Some(a), gw) if Some(a) != gw => Err(conf::gateway_mismatch(&rec, conf, a)),
                (_, Some(gw)) => with_prefix(gw, &rec.subnet),
                // Every config pool is planned with its gateway; a hand-edited record is not.
                (_, None) => Err(IpamError::Invalid(format!(
                    "pool {} from {} has no gateway; release the pool and request it again",
                    rec.id,
                    conf.file_name()
                ))),
            };
        }
        let (req, owner, set) = if gateway {
            let gw = address.unwrap_or_else(|| next_ip(rec.subnet.network()));
            if is_network_or_broadcast(&rec.subnet, gw) {
                return Err(IpamError::Invalid(format!(
                    "--gateway {gw} is the network or broadcast address of {}; choose a host address",
                    rec.subnet
                )));
            }
            // The gateway request itself must not be refused as "the subnet's gateway".
            (Request::Static(gw), Owner::Gateway, range_set(&rec, None))
        } else {
            let req = address.map_or(Request::Dynamic, Request::Static);
            let set = range_set(&rec, Some(effective_gateway(&rec)));
            (req, Owner::Pending(token()), set)
        };
        let store = work.store(&rec)?;
        let (ip, fresh) = locked(store, |s| {
            if let (Some(cur), Request::Static(gw)) = (rec.gateway.filter(|_| gateway), req) {
                let content = s.read(cur)?;
                let ours = content.as_deref().filter(|c| is_ours(c.as_bytes()));
                if cur == gw && ours == Some(Owner::Gateway.render().as_str()) {
                    // A repeated request (e.g. a replay) gets the same answer.
                    return Ok((gw, false));
                }
                if cur != gw && ours.is_some() {
                    return Err(IpamError::Invalid(format!(
                        "pool {} already has gateway {cur}; release it before requesting {gw}",
                        rec.id
                    )));
                }
            }
            let ip =
                Allocator::new(&set, s, rec.range_index).get(&owner.id(), owner.ifname(), req)?;
            Ok((ip, true))
        })?;
        if gateway && fresh {
            if let Err(e) = self.update_record(&slot, |r| r.gateway = Some(ip)) {
                // Without the record nobody would hand this gateway out again: take it back.
                if let Err(undo) = locked(store, |s| release(s, ip)) {
                    tracing::warn!(pool = %rec.id, address = %ip, error = %undo, "cannot take back the gateway file");
                }
                return Err(e);
            }
        }
        with_prefix(ip, &rec.subnet)
    }

    /// Give an address back (ReleaseAddress). Only a file whose content is ours is deleted;
    /// unknown pools and addresses are fine (Docker releases at boot what it never got from
    /// us, and may repeat a release).
    pub fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<(), IpamError> {
        let Some(slot) = self.slot(pool_id) else {
            return Ok(());
        };
        let mut work = slot.work();
        if work.released {
            return Ok(());
        }
        let rec = read(&slot.record).clone();
        let address = canonical(address);
        if rec.subnet.contains(&address) {
            let store = work.store(&rec)?;
            match locked(store, |s| release(s, address))? {
                Outcome::Done => {}
                Outcome::Missing => {
                    tracing::debug!(pool = %rec.id, %address, "release of an address without a file");
                }
                Outcome::Foreign(c) => tracing::warn!(
                    pool = %rec.id, %address, holder = %holder_of(&c),
                    "not removing an allocation file that is not cnibridge's"
                ),
            }
        } else {
            tracing::debug!(pool = %rec.id, %address, "release of an address outside the pool");
        }
        // A config's gateway stays: it is part of the pool, not an allocation.
        if rec.gateway == Some(address) && rec.conf.is_none() {
            self.update_record(&slot, |r| r.gateway = None)?;
        }
        Ok(())
    }

    /// Give an address back only while `owner` holds it: the ReleaseAddress dockerd never sent
    /// for an endpoint it removed behind cnibridge's back, which must not free the address if
    /// it has been handed on since. Returns whether a file was removed.
    pub fn release_owned(
        &self,
        pool_id: &str,
        address: IpAddr,
        owner: &Owner,
    ) -> Result<bool, IpamError> {
        let Some(slot) = self.slot(pool_id) else {
            return Ok(false);
        };
        let mut work = slot.work();
        if work.released {
            return Ok(false);
        }
        let rec = read(&slot.record).clone();
        let address = canonical(address);
        if !rec.subnet.contains(&address) {
            return Ok(false);
        }
        let want = owner.render();
        let store = work.store(&rec)?;
        locked(store, |s| match s.read(address)? {
            Some(c) if c == want => s.remove(address),
            _ => Ok(false),
        })
    }

    /// Relabel an address we hold (CreateEndpoint, gateway/aux): the file is rewritten in
    /// place, so the address never looks free. Only a file whose content is ours is touched;
    /// a missing file is created again if nobody took the address meanwhile.
    pub fn set_owner(
        &self,
        pool_id: &str,
        address: IpAddr,
        owner: &Owner,
    ) -> Result<(), IpamError> {
        owner.validate()?;
        let unknown = || IpamError::UnknownPool(pool_id.to_string());
        let slot = self.slot(pool_id).ok_or_else(unknown)?;
        let mut work = slot.work();
        if work.released {
            return Err(unknown());
        }
        let rec = read(&slot.record).clone();
        let address = canonical(address);
        if !rec.subnet.contains(&address) {
            return Err(IpamError::OutOfPool {
                address,
                pool: rec.subnet,
            });
        }
        let store = work.store(&rec)?;
        let content = owner.render();
        let outcome = locked(store, |s| match relabel(s, address, &content)? {
            // The file went (removed by hand, or collected as abandoned after a very late
            // CreateEndpoint): the endpoint uses the address, so take it again if still free.
            Outcome::Missing => {
                if s.reserve(&owner.id(), owner.ifname(), address, rec.range_index)? {
                    tracing::warn!(pool = %rec.id, %address, "allocation file was gone; reserved the address again");
                    Ok(Outcome::Done)
                } else {
                    Ok(s.read(address)?.map_or(Outcome::Missing, Outcome::Foreign))
                }
            }
            o => Ok(o),
        })?;
        match outcome {
            Outcome::Done => Ok(()),
            Outcome::Missing => Err(IpamError::Store {
                path: store.dir().join(disk::file_name(address)),
                reason: "the allocation file could not be created again; release and request \
                         the address again"
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
