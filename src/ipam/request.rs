//! RequestPool: a pool from a CNI config (`conf`), from `--subnet`/`--ip-range`, or the next
//! free default pool, checked against every pool held (the store is host-wide).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use ipnet::IpNet;

use super::{
    conf, lock, pools, read, with_prefix, Ipam, IpamError, PoolGrant, PoolRecord, PoolRequest,
    Slot, Work, GATEWAY_DATA, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, POOLS_KIND,
};
use crate::state::Durability;

/// Pools between their overlap check and their durable record: they count against overlaps
/// but are not yet in the table. Taken only after the table lock (or alone, to drop one).
#[derive(Debug, Default)]
pub(super) struct Reservations(Mutex<BTreeMap<String, PoolRecord>>);

/// Drops its reservation however RequestPool ends (published, failed, or unwound).
struct Reservation<'a> {
    ipam: &'a Ipam,
    id: &'a str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.ipam.reserved.0).remove(self.id);
    }
}

/// RequestPool's answer for a pool.
fn grant(rec: &PoolRecord) -> Result<PoolGrant, IpamError> {
    let mut data = BTreeMap::new();
    if let (Some(_), Some(gw)) = (&rec.conf, rec.gateway) {
        // Docker then uses the config's gateway instead of asking for one.
        data.insert(
            GATEWAY_DATA.to_string(),
            with_prefix(gw, &rec.subnet)?.to_string(),
        );
    }
    Ok(PoolGrant {
        pool_id: rec.id.clone(),
        pool: rec.subnet,
        data,
    })
}

impl Ipam {
    /// Reserve a pool (RequestPool): from a CNI config (`--ipam-opt cni.conf=NAME`), from
    /// `--subnet`/`--ip-range`, or the next free default pool.
    pub fn request_pool(&self, req: &PoolRequest) -> Result<PoolGrant, IpamError> {
        if req.address_space.is_empty() {
            return Err(IpamError::Invalid(format!(
                "AddressSpace is empty; use {LOCAL_ADDRESS_SPACE} or {GLOBAL_ADDRESS_SPACE}"
            )));
        }
        conf::check_options(&req.options)?;
        if let (Some(sub), None) = (req.sub_pool, req.pool) {
            return Err(IpamError::Invalid(format!(
                "--ip-range {sub} needs --subnet; give the subnet the range belongs to"
            )));
        }
        // Read before the table lock: loading a config is file I/O.
        let from_conf = match req.options.get(conf::CONF_OPT) {
            Some(sel) => Some(conf::plan(
                &self.cfg.cni_conf_dir,
                &self.cfg.data_dir,
                sel,
                req,
            )?),
            None => None,
        };
        // Check and reserve under the table lock, write the record (an fsync) without it, then
        // publish: look-ups and other pools' requests never wait for the disk, and a reserved
        // pool counts against overlaps but is not visible until its record is durable.
        let (rec, grant) = {
            let table = lock(&self.table);
            let mut reserved = lock(&self.reserved.0);
            // The store is host-wide: pools of every address space count.
            let held: Vec<PoolRecord> = table
                .values()
                .map(|s| read(&s.record).clone())
                .chain(reserved.values().cloned())
                .collect();
            let rec = match from_conf {
                Some(planned) => planned.record(&req.address_space),
                None => self.plan_from_flags(req, &held)?,
            };
            if let Some(existing) = pools::find_overlap(&held, &rec.subnet) {
                return Err(IpamError::Overlap {
                    wanted: rec.subnet,
                    existing: existing.subnet,
                    holder: pools::holder(existing),
                });
            }
            let grant = grant(&rec)?;
            reserved.insert(rec.id.clone(), rec.clone());
            (rec, grant)
        };
        let reservation = Reservation {
            ipam: self,
            id: &rec.id,
        };
        if let Err(e) = self
            .cfg
            .state
            .write(POOLS_KIND, &rec.id, &rec, Durability::PowerLoss)
        {
            // The rename may have happened before the failure (the directory's fsync). The
            // reservation still keeps everyone else off this id, so the file is ours to remove.
            if let Err(re) = self.cfg.state.remove(POOLS_KIND, &rec.id) {
                tracing::warn!(pool = %rec.id, error = %re, "cannot remove the record of a pool that failed to be written");
            }
            return Err(e.into());
        }
        let slot = Slot {
            record: RwLock::new(rec.clone()),
            work: Mutex::new(Work::default()),
        };
        let mut table = lock(&self.table);
        table.insert(rec.id.clone(), Arc::new(slot));
        // Under the table lock: a requester sees the reservation or the pool, never neither.
        drop(reservation);
        Ok(grant)
    }

    /// The pool a RequestPool without a config asks for.
    fn plan_from_flags(
        &self,
        req: &PoolRequest,
        held: &[PoolRecord],
    ) -> Result<PoolRecord, IpamError> {
        let subnet = match req.pool {
            Some(p) => p,
            None => {
                let nets: Vec<IpNet> = held.iter().map(|p| p.subnet).collect();
                pools::pick_default(&self.cfg.default_pools, req.v6, &nets).ok_or_else(|| {
                    IpamError::NoFreePool {
                        pools: pools::describe(&self.cfg.default_pools, req.v6),
                    }
                })?
            }
        };
        let (range_start, range_end) = pools::plan_range(&subnet, req.sub_pool.as_ref(), req.v6)?;
        Ok(PoolRecord {
            id: subnet.to_string(),
            address_space: req.address_space.clone(),
            subnet,
            sub_pool: req.sub_pool,
            range_start,
            range_end,
            gateway: None,
            cni_name: crate::names::derived_network_name(&subnet),
            data_dir: self.cfg.data_dir.clone(),
            range_index: 0,
            network_id: None,
            ranges: Vec::new(),
            conf: None,
        })
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
