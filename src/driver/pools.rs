//! CreateNetwork's pool data: Docker's IPvXData checked and matched with cnibridge's pools,
//! and the pools bound to the network.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{blocking, parse_net, Driver, DriverError, IpamFamily};
use crate::dataplane::Dataplane;
use crate::firewall::Firewall;
use crate::ipam::Owner;
use crate::state::records::{FamilyData, NetworkRecord};

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Validate one family's IPAM data; at most one subnet per family, as Docker's bridge.
    pub(super) fn family(
        &self,
        fam: &str,
        data: &[IpamFamily],
        v6: bool,
    ) -> Result<Option<FamilyData>, DriverError> {
        let Some(d) = data.first() else {
            return Ok(None);
        };
        if data.len() > 1 {
            return Err(DriverError::Invalid(format!(
                "cnibridge supports one {fam} subnet per network, got {}; pass one --subnet per address family",
                data.len()
            )));
        }
        let pool = parse_net(&format!("{fam} pool"), &d.pool)?;
        if matches!(pool, IpNet::V6(_)) != v6 {
            return Err(DriverError::Invalid(format!(
                "{fam} pool {pool} is of the other address family"
            )));
        }
        let gateway = if d.gateway.is_empty() {
            None
        } else {
            let g = parse_net(&format!("{fam} gateway"), &d.gateway)?;
            if !pool.contains(&g.addr()) {
                return Err(DriverError::Invalid(format!(
                    "gateway {} is not in subnet {pool}",
                    g.addr()
                )));
            }
            Some(g)
        };
        let mut aux = BTreeMap::new();
        for (name, a) in &d.aux_addresses {
            aux.insert(name.clone(), parse_net(&format!("aux address {name}"), a)?);
        }
        let pool_id = self.ipam.find_pool(&d.address_space, &pool).map(|p| p.id);
        Ok(Some(FamilyData {
            address_space: d.address_space.clone(),
            pool,
            gateway,
            aux_addresses: aux,
            pool_id,
        }))
    }

    /// Tie the network's pool of one family to it, if the pool is ours, and label the gateway
    /// and aux files as such.
    pub(super) async fn bind_pool(&self, net: &NetworkRecord, v6: bool) -> Result<(), DriverError> {
        let fam = if v6 { &net.ipv6 } else { &net.ipv4 };
        let Some(fam) = fam else {
            return Ok(());
        };
        let Some(pool_id) = fam.pool_id.clone() else {
            return Ok(());
        };
        let ipam = self.ipam.clone();
        let net_id = net.id.clone();
        let aux: Vec<IpAddr> = fam.aux_addresses.values().map(|a| a.addr()).collect();
        blocking(move || {
            ipam.bind_network(&pool_id, Some(&net_id))?;
            for a in aux {
                if let Err(e) = ipam.set_owner(&pool_id, a, &Owner::Aux) {
                    tracing::warn!(address = %a, error = %e, "cannot label aux address file");
                }
            }
            Ok(())
        })
        .await
    }

    /// Untie a pool from its network; a pool released meanwhile needs nothing.
    pub(super) async fn unbind_pool(&self, pool_id: Option<String>) -> Result<(), DriverError> {
        let Some(pool_id) = pool_id else {
            return Ok(());
        };
        let ipam = self.ipam.clone();
        blocking(move || match ipam.pool(&pool_id) {
            Some(_) => ipam.bind_network(&pool_id, None),
            None => Ok(()),
        })
        .await
    }
}
