//! CNI's rules for a bridge's addresses (`ensureAddr`), pure so the fake applies them too.

use ipnet::IpNet;

use super::DataplaneError;

/// What `ensure_addresses` changes on a bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddressPlan {
    /// Conflicting addresses to remove first (only with `forceAddress`).
    pub(crate) remove: Vec<IpNet>,
    pub(crate) add: Vec<IpNet>,
}

/// CNI's `ensureAddr` rule, checked for every wanted address before any is added: an address
/// already present is kept; another IPv4 address, or an overlapping IPv6 one, is a conflict
/// (addresses that are themselves wanted never conflict, so a network may carry several
/// gateways of one family). A conflict is an error, or with `force` (CNI's `forceAddress`) an
/// address to remove.
pub(crate) fn plan_addresses(
    bridge: &str,
    existing: &[IpNet],
    wanted: &[IpNet],
    force: bool,
) -> Result<AddressPlan, DataplaneError> {
    let mut plan = AddressPlan::default();
    for want in wanted {
        if existing.contains(want) {
            continue;
        }
        let conflicts = existing
            .iter()
            .filter(|have| !wanted.contains(have))
            .filter(|have| match (have, want) {
                (IpNet::V4(_), IpNet::V4(_)) => true,
                (IpNet::V6(h), IpNet::V6(w)) => h.contains(&w.addr()) || w.contains(&h.addr()),
                _ => false,
            });
        for existing in conflicts {
            if !force {
                return Err(DataplaneError::AddressConflict {
                    bridge: bridge.to_string(),
                    existing: *existing,
                    wanted: *want,
                });
            }
            if !plan.remove.contains(existing) {
                plan.remove.push(*existing);
            }
        }
        if !plan.add.contains(want) {
            plan.add.push(*want);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn present_address_is_kept() {
        let plan =
            plan_addresses("br0", &[net("10.1.0.1/24")], &[net("10.1.0.1/24")], false).unwrap();
        assert_eq!(plan, AddressPlan::default());
    }

    #[test]
    fn other_ipv4_conflicts() {
        let err =
            plan_addresses("br0", &[net("10.9.0.1/24")], &[net("10.1.0.1/24")], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bridge br0 already has an IP address different from 10.1.0.1/24 (10.9.0.1/24); remove it, choose another bridge name, or set forceAddress to replace it"
        );
    }

    #[test]
    fn same_ipv4_other_prefix_conflicts() {
        assert!(
            plan_addresses("br0", &[net("10.1.0.1/16")], &[net("10.1.0.1/24")], false).is_err()
        );
    }

    #[test]
    fn ipv6_only_conflicts_when_overlapping() {
        let existing = [net("fe80::1/64"), net("fd00:1::1/64")];
        let plan = plan_addresses("br0", &existing, &[net("fd00:2::1/64")], false).unwrap();
        assert_eq!(plan.add, vec![net("fd00:2::1/64")]);
        assert!(plan_addresses("br0", &existing, &[net("fd00:1::2/64")], false).is_err());
        assert!(plan_addresses("br0", &existing, &[net("fd00::1/16")], false).is_err());
    }

    #[test]
    fn ipv6_does_not_conflict_with_ipv4() {
        let plan =
            plan_addresses("br0", &[net("10.1.0.1/24")], &[net("fd00::1/64")], false).unwrap();
        assert_eq!(plan.add, vec![net("fd00::1/64")]);
    }

    #[test]
    fn wanted_addresses_do_not_conflict_with_each_other() {
        let wanted = [net("10.1.0.1/24"), net("10.2.0.1/24")];
        let plan = plan_addresses("br0", &[net("10.1.0.1/24")], &wanted, false).unwrap();
        assert_eq!(plan.add, vec![net("10.2.0.1/24")]);
    }

    #[test]
    fn force_address_replaces_conflicts_like_cni() {
        let existing = [net("10.9.0.1/24"), net("fe80::1/64"), net("fd00:1::1/64")];
        let wanted = [net("10.1.0.1/24"), net("fd00:1::2/64")];
        let plan = plan_addresses("br0", &existing, &wanted, true).unwrap();
        assert_eq!(plan.remove, vec![net("10.9.0.1/24"), net("fd00:1::1/64")]);
        assert_eq!(plan.add, wanted.to_vec());
        // Nothing to replace: nothing removed.
        let plan = plan_addresses("br0", &[net("10.1.0.1/24")], &wanted[..1], true).unwrap();
        assert_eq!(plan, AddressPlan::default());
    }
}
