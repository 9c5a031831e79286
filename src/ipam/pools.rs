//! The pool table's rules: what a RequestPool may ask for, which default pool comes next, and
//! overlap. Pure: the facade in `mod.rs` feeds it the pools currently held.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{DefaultPool, IpamError, PoolRecord};
pub use crate::range::too_small;
use crate::range::{from_u128, to_u128, usable_range};

/// Whether two subnets share any address (different families never do).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn no_host_bits(flag: &str, net: &IpNet) -> Result<(), IpamError> {
    if net.trunc() != *net {
        return Err(IpamError::Invalid(format!(
            "{flag} {net} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(())
}

/// Check `--subnet` and `--ip-range` and derive host-local's `rangeStart`/`rangeEnd`.
pub fn plan_range(
    pool: &IpNet,
    sub_pool: Option<&IpNet>,
    v6: bool,
) -> Result<(IpAddr, IpAddr), IpamError> {
    no_host_bits("--subnet", pool)?;
    if pool.network().is_ipv6() != v6 {
        return Err(IpamError::Invalid(format!(
            "--subnet {pool} is not an {} subnet, but Docker asked for an {} pool; \
             pass IPv6 subnets only together with --ipv6",
            family(v6),
            family(v6)
        )));
    }
    if too_small(pool) {
        return Err(IpamError::Invalid(format!(
            "--subnet {pool} is too small to allocate from; use at least /{} for {}",
            pool.max_prefix_len() - 2,
            family(v6)
        )));
    }
    if let Some(sub) = sub_pool {
        no_host_bits("--ip-range", sub)?;
        if sub.network().is_ipv6() != v6 || !pool.contains(sub) {
            return Err(IpamError::Invalid(format!(
                "--ip-range {sub} is not inside --subnet {pool}; choose a range within the subnet"
            )));
        }
    }
    usable_range(pool, sub_pool).ok_or_else(|| {
        IpamError::Invalid(format!(
            "--ip-range {} holds no usable host address of {pool} (only the network or \
             broadcast address); choose a larger --ip-range",
            sub_pool.unwrap_or(pool)
        ))
    })
}

/// Who holds a pool, for error messages.
pub fn holder(rec: &PoolRecord) -> String {
    match &rec.network_id {
        Some(id) => format!("network {}", id.chars().take(12).collect::<String>()),
        // A network being created, or a RequestPool whose answer was lost: cnibridge releases
        // the latter (`driver::unused_pools`).
        None => "a pool no network has taken yet: a network being created, or a lost answer \
                 that cnibridge releases a few minutes after its next start"
            .to_string(),
    }
}

/// The first pool in `held` that overlaps `wanted`.
pub fn find_overlap<'a>(
    held: impl IntoIterator<Item = &'a PoolRecord>,
    wanted: &IpNet,
) -> Option<&'a PoolRecord> {
    held.into_iter().find(|p| overlaps(&p.subnet, wanted))
}

/// Default pools must leave something to allocate, like any `--subnet`.
pub fn check_default_pools(defaults: &[DefaultPool]) -> Result<(), IpamError> {
    for d in defaults {
        if d.base.trunc() != d.base
            || d.size < d.base.prefix_len()
            || d.size > d.base.max_prefix_len()
        {
            return Err(IpamError::Invalid(format!(
                "default pool {}:{} is malformed; write BASE/LEN:SIZE, e.g. 10.210.0.0/16:24",
                d.base, d.size
            )));
        }
        if d.size + 2 > d.base.max_prefix_len() {
            return Err(IpamError::Invalid(format!(
                "default pool {}:{}: /{} subnets are too small to allocate from; use a smaller size",
                d.base, d.size, d.size
            )));
        }
    }
    Ok(())
}

/// The default pools of one family, as `--default-pools` writes them.
pub fn describe(defaults: &[DefaultPool], v6: bool) -> String {
    let v: Vec<String> = defaults
        .iter()
        .filter(|d| d.base.network().is_ipv6() == v6)
        .map(|d| format!("{}:{}", d.base, d.size))
        .collect();
    if v.is_empty() {
        format!("none for {}", family(v6))
    } else {
        v.join(", ")
    }
}

/// The first `size`-long subnet of the default pools (in order, of the wanted family) that
/// overlaps nothing in `held`. Overlapped stretches are skipped whole, so a large held pool
/// costs one step, not one per subnet inside it.
pub fn pick_default(defaults: &[DefaultPool], v6: bool, held: &[IpNet]) -> Option<IpNet> {
    defaults
        .iter()
        .filter(|d| d.base.network().is_ipv6() == v6)
        .find_map(|d| first_free(d, held))
}

fn first_free(d: &DefaultPool, held: &[IpNet]) -> Option<IpNet> {
    let like = d.base.network();
    let base_last = to_u128(d.base.broadcast());
    // Host bits of one candidate; `None` = the candidate is the whole (IPv6) address space.
    let step = 1u128.checked_shl(u32::from(d.base.max_prefix_len().checked_sub(d.size)?));
    let mut c = to_u128(d.base.network());
    loop {
        let cand = IpNet::new(from_u128(c, like)?, d.size).ok()?;
        let cand_last = to_u128(cand.broadcast());
        let busy_until = held
            .iter()
            .filter(|h| overlaps(h, &cand))
            .map(|h| to_u128(h.broadcast()))
            .max();
        let Some(busy_until) = busy_until else {
            return Some(cand);
        };
        let step = step?;
        let next = busy_until.max(cand_last).checked_add(1)?;
        // Candidates are aligned to `step` because the base is.
        c = next.checked_add(step - 1)? / step * step;
        if c > base_last {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn plan_range_table() {
        // (--subnet, --ip-range, V6, range or error)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            bool,
            Result<(&'a str, &'a str), &'a str>,
        );
        let cases: &[Case] = &[
            (
                "10.15.20.0/24",
                None,
                false,
                Ok(("10.15.20.1", "10.15.20.254")),
            ),
            (
                "10.15.20.0/24",
                Some("10.15.20.128/25"),
                false,
                Ok(("10.15.20.128", "10.15.20.254")),
            ),
            (
                "10.15.20.0/24",
                Some("10.15.20.0/26"),
                false,
                Ok(("10.15.20.1", "10.15.20.63")),
            ),
            (
                "fd15:30::/64",
                None,
                true,
                Ok(("fd15:30::1", "fd15:30::ffff:ffff:ffff:ffff")),
            ),
            (
                "10.15.20.5/24",
                None,
                false,
                Err("--subnet 10.15.20.5/24 has host bits set; did you mean 10.15.20.0/24?"),
            ),
            (
                "10.15.20.0/31",
                None,
                false,
                Err("--subnet 10.15.20.0/31 is too small"),
            ),
            ("10.15.20.0/32", None, false, Err("too small")),
            ("fd15:30::/127", None, true, Err("too small")),
            ("fd15:30::/128", None, true, Err("too small")),
            (
                "10.15.20.0/30",
                None,
                false,
                Ok(("10.15.20.1", "10.15.20.2")),
            ),
            (
                "fd15:30::/126",
                None,
                true,
                Ok(("fd15:30::1", "fd15:30::3")),
            ),
            ("fd15:30::/64", None, false, Err("is not an IPv4 subnet")),
            ("10.15.20.0/24", None, true, Err("is not an IPv6 subnet")),
            (
                "10.15.20.0/24",
                Some("10.15.21.0/25"),
                false,
                Err("is not inside --subnet"),
            ),
            (
                "10.15.20.0/24",
                Some("10.15.0.0/16"),
                false,
                Err("is not inside --subnet"),
            ),
            (
                "10.15.20.0/24",
                Some("10.15.20.9/25"),
                false,
                Err("did you mean 10.15.20.0/25?"),
            ),
            (
                "10.15.20.0/24",
                Some("10.15.20.255/32"),
                false,
                Err("holds no usable host address"),
            ),
        ];
        for (pool, sub, v6, want) in cases {
            let sub = sub.map(net);
            let got = plan_range(&net(pool), sub.as_ref(), *v6);
            match (got, want) {
                (Ok((a, b)), Ok((wa, wb))) => {
                    assert_eq!(
                        (a.to_string(), b.to_string()),
                        (wa.to_string(), wb.to_string())
                    )
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{pool}: {e}"),
                (got, want) => panic!("{pool} {sub:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn default_pools_skip_held_subnets() {
        let d: Vec<DefaultPool> = [
            "10.210.0.0/16:24",
            "192.168.0.0/23:24",
            "fd7b:c4e2:d1a0::/48:64",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let cases: &[(bool, &[&str], Option<&str>)] = &[
            (false, &[], Some("10.210.0.0/24")),
            (false, &["10.210.0.0/24"], Some("10.210.1.0/24")),
            (
                false,
                &["10.210.0.0/24", "10.210.2.0/24"],
                Some("10.210.1.0/24"),
            ),
            // One held /17 is skipped in one step.
            (false, &["10.210.0.0/17"], Some("10.210.128.0/24")),
            (false, &["10.210.0.128/25"], Some("10.210.1.0/24")),
            (false, &["10.0.0.0/8"], Some("192.168.0.0/24")),
            (
                false,
                &["10.0.0.0/8", "192.168.1.0/24"],
                Some("192.168.0.0/24"),
            ),
            (false, &["10.0.0.0/8", "192.168.0.0/16"], None),
            (false, &["0.0.0.0/0"], None),
            // IPv6 requests never get IPv4 pools and are not blocked by them.
            (true, &["0.0.0.0/0"], Some("fd7b:c4e2:d1a0::/64")),
            (
                true,
                &["fd7b:c4e2:d1a0::/64"],
                Some("fd7b:c4e2:d1a0:1::/64"),
            ),
            (
                true,
                &["fd7b:c4e2:d1a0::/49"],
                Some("fd7b:c4e2:d1a0:8000::/64"),
            ),
            (true, &["fd00::/8"], None),
        ];
        for (v6, held, want) in cases {
            let held: Vec<IpNet> = held.iter().map(|s| net(s)).collect();
            assert_eq!(pick_default(&d, *v6, &held), want.map(net), "{held:?}");
        }
        let whole: DefaultPool = "::/0:0".parse().unwrap();
        assert!(check_default_pools(&[whole]).is_ok());
        assert_eq!(pick_default(&[whole], true, &[]), Some(net("::/0")));
        assert_eq!(pick_default(&[whole], true, &[net("fd00::/64")]), None);
        assert_eq!(describe(&d, false), "10.210.0.0/16:24, 192.168.0.0/23:24");
        assert_eq!(describe(&d[..1], true), "none for IPv6");
    }

    #[test]
    fn default_pools_too_small_are_refused() {
        for s in ["10.0.0.0/16:31", "10.0.0.0/16:32", "fd00::/48:127"] {
            let d: DefaultPool = s.parse().unwrap();
            let err = check_default_pools(&[d]).unwrap_err().to_string();
            assert!(err.contains("too small"), "{err}");
        }
    }

    #[test]
    fn overlap_and_holder() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
        assert!(!overlaps(&net("0.0.0.0/0"), &net("::/0")));
        let mut rec = PoolRecord {
            id: "10.1.0.0/16".into(),
            address_space: "CniLocal".into(),
            subnet: net("10.1.0.0/16"),
            sub_pool: None,
            range_start: "10.1.0.1".parse().unwrap(),
            range_end: "10.1.255.254".parse().unwrap(),
            gateway: None,
            cni_name: "x".into(),
            data_dir: "/tmp".into(),
            range_index: 0,
            network_id: None,
            ranges: Vec::new(),
            conf: None,
        };
        assert!(holder(&rec).starts_with("a pool no network has taken yet"));
        rec.network_id = Some("0123456789abcdef0123".into());
        assert_eq!(holder(&rec), "network 0123456789ab");
        assert!(find_overlap([&rec], &net("10.1.2.0/24")).is_some());
        assert!(find_overlap([&rec], &net("10.2.0.0/24")).is_none());
    }
}
