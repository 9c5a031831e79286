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
        let mut table = lock(&self.table);
        // The store is host-wide: pools of every address space count.
        let held: Vec<PoolRecord> = table.values().map(|s| read(&s.record).clone()).collect();
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
        self.cfg
            .state
            .write(POOLS_KIND, &rec.id, &rec, Durability::PowerLoss)?;
        let mut data = BTreeMap::new();
        if let (Some(_), Some(gw)) = (&rec.conf, rec.gateway) {
            // Docker then uses the config's gateway instead of asking for one.
            data.insert(
                GATEWAY_DATA.to_string(),
                with_prefix(gw, &rec.subnet)?.to_string(),
            );
        }
        let grant = PoolGrant {
            pool_id: rec.id.clone(),
            pool: rec.subnet,
            data,
        };
        let slot = Slot {
            record: RwLock::new(rec.clone()),
            work: Mutex::new(Work::default()),
        };
        table.insert(rec.id, Arc::new(slot));
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
