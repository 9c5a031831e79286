//! How a loaded config becomes a Docker network: Docker holds one subnet (pool) and one
//! gateway per address family, and asks for IPv6 only with `--ipv6`; host-local hands every
//! container one address per range set. A config is used only where both views agree: at most
//! one range set per family, all ranges of a set in one subnet with one gateway.

use std::net::IpAddr;

use ipnet::IpNet;

use super::config::NetConf;
use super::ipam::family;
use super::CniError;
use crate::range::{Range, RangeSet};

/// The Docker pool of one family: what RequestPool answers and the IPAM allocates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPool {
    /// Index of the range set (host-local's `last_reserved_ip.<index>`).
    pub set_index: usize,
    /// The pool CIDR every range of the set lies in.
    pub subnet: IpNet,
    /// The gateway every range of the set shares.
    pub gateway: IpAddr,
    /// The set's ranges for the allocator (several ranges = a window with holes).
    pub ranges: RangeSet,
}

/// The pools of a network; a family is `None` when the config has no range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPools {
    pub v4: Option<FamilyPool>,
    pub v6: Option<FamilyPool>,
}

impl NetConf {
    fn not_for_docker(&self, reason: String) -> CniError {
        CniError::NotForDocker {
            file: self.origin.file.clone(),
            reason,
        }
    }

    /// The range set of one family as a Docker pool, refusing what a Docker network cannot
    /// hold: a second set of the family, ranges of one set in different subnets, or ranges of
    /// one set with different gateways.
    pub fn family_pool(&self, v6: bool) -> Result<Option<FamilyPool>, CniError> {
        let o = &self.origin;
        let mut sets = self.ipam.range_sets.iter().enumerate().filter(|(_, s)| {
            s.first()
                .is_some_and(|r| r.subnet.network().is_ipv6() == v6)
        });
        let Some((index, set)) = sets.next() else {
            return Ok(None);
        };
        let Some(first) = set.first() else {
            return Ok(None);
        };
        if let Some((second, s2)) = sets.next() {
            let subnet = s2.first().map(|r| r.subnet.to_string()).unwrap_or_default();
            return Err(self.not_for_docker(format!(
                "{} \"{subnet}\" is a second {} range set (after {} \"{}\"); a Docker network has one subnet per family, and host-local would give every container an address from each set",
                o.range_key(second, 0, "subnet"),
                family(v6),
                o.range_key(index, 0, "subnet"),
                first.subnet
            )));
        }
        for (j, r) in set.iter().enumerate().skip(1) {
            if r.subnet != first.subnet {
                return Err(self.not_for_docker(format!(
                    "{} \"{}\" differs from {} \"{}\" in the same range set; a Docker network has one subnet per family",
                    o.range_key(index, j, "subnet"),
                    r.subnet,
                    o.range_key(index, 0, "subnet"),
                    first.subnet
                )));
            }
            if r.gateway != first.gateway {
                return Err(self.not_for_docker(format!(
                    "{} has gateway {}, but {} has gateway {}; a Docker network has one gateway per subnet",
                    o.range_label(index, j),
                    r.gateway,
                    o.range_label(index, 0),
                    first.gateway
                )));
            }
        }
        let ranges = RangeSet(
            set.iter()
                .map(|r| Range {
                    subnet: r.subnet,
                    range_start: r.range_start,
                    range_end: r.range_end,
                    gateway: Some(r.gateway),
                })
                .collect(),
        );
        Ok(Some(FamilyPool {
            set_index: index,
            subnet: first.subnet,
            gateway: first.gateway,
            ranges,
        }))
    }

    /// Both pools, checked against the families the network was created with: the config
    /// names the network's subnets, so each enabled family needs a range set and each range
    /// set needs its family enabled (`--ipv6`; `--ipv4=false` from Docker 28 on).
    pub fn docker_pools(
        &self,
        enable_ipv4: bool,
        enable_ipv6: bool,
    ) -> Result<DockerPools, CniError> {
        let v4 = self.family_pool(false)?;
        let v6 = self.family_pool(true)?;
        let o = &self.origin;
        match (&v4, enable_ipv4) {
            (Some(p), false) => {
                return Err(self.not_for_docker(format!(
                    "{} \"{}\" is IPv4, but the network was created with --ipv4=false; drop --ipv4=false or remove the IPv4 range set",
                    o.range_key(p.set_index, 0, "subnet"),
                    p.subnet
                )))
            }
            (None, true) => {
                return Err(self.not_for_docker(
                    "the config has no IPv4 range; add an IPv4 range set, or create the network with --ipv4=false (Docker 28 or later)".into(),
                ))
            }
            _ => {}
        }
        match (&v6, enable_ipv6) {
            (Some(p), false) => {
                return Err(self.not_for_docker(format!(
                    "{} \"{}\" is IPv6, but the network was created without --ipv6; add --ipv6 or remove the IPv6 range set",
                    o.range_key(p.set_index, 0, "subnet"),
                    p.subnet
                )))
            }
            (None, true) => {
                return Err(self.not_for_docker(
                    "the network was created with --ipv6, but the config has no IPv6 range; add an IPv6 range set or drop --ipv6".into(),
                ))
            }
            _ => {}
        }
        Ok(DockerPools { v4, v6 })
    }
}
