//! Acceptance c: the IPAM flags of `docker network create` / `docker run` through the remote IPAM.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::ctx::{owner_content, Ctx, AUX_CONTENT};
use crate::support::host::link;
use crate::support::process::stderr_text;
use crate::DEFAULT_POOL_V4;

pub fn c_static_ip(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUBNET: &str = "10.232.0.0/24";
    let fixed: Ipv4Addr = "10.232.0.77".parse().unwrap();
    let net = "cnbt-ip";
    let mut s = ctx.scope();
    s.network(net, &["--subnet", SUBNET, "-o", "bridge=cnbtip"]);
    let a = s.run_sleep("cnbt-ip1", net, &["--ip", "10.232.0.77"]);
    assert_eq!(a.ip, Some(fixed), "--ip was not honoured");
    ctx.assert_alloc(SUBNET, fixed, &owner_content(&a));

    // The same fixed address twice must fail, not hand out a duplicate.
    let dup = s.run("cnbt-ip2", net, &["--ip", "10.232.0.77"], &["sleep", "600"]);
    assert!(
        !dup.status.success(),
        "a second container got the taken address {fixed}"
    );

    let b = s.run_sleep("cnbt-ip3", net, &[]);
    assert_ne!(
        b.ipv4(),
        fixed,
        "a dynamic address collided with a --ip one"
    );
    ctx.ping("cnbt-ip3", fixed);
}

pub fn c_ip_range_aux(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUBNET: &str = "10.233.0.0/24";
    let range: Ipv4Net = "10.233.0.128/28".parse().unwrap();
    // One aux address inside the range (must be skipped by dynamic allocation), one outside (Docker allows it
    // anywhere in the pool; the IPAM must accept and reserve it).
    let aux_in: Ipv4Addr = "10.233.0.130".parse().unwrap();
    let aux_out: Ipv4Addr = "10.233.0.200".parse().unwrap();
    let net = "cnbt-rng";
    let mut s = ctx.scope();
    s.network(
        net,
        &[
            "--subnet",
            SUBNET,
            "--ip-range",
            "10.233.0.128/28",
            "--aux-address",
            "in=10.233.0.130",
            "--aux-address",
            "out=10.233.0.200",
            "-o",
            "bridge=cnbtrng",
        ],
    );
    ctx.assert_alloc(SUBNET, aux_in, AUX_CONTENT);
    ctx.assert_alloc(SUBNET, aux_out, AUX_CONTENT);

    let mut seen = HashSet::new();
    for i in 0..6 {
        let ep = s.run_sleep(&format!("cnbt-rng{i}"), net, &[]);
        let ip = ep.ipv4();
        assert!(
            range.contains(&ip),
            "dynamic address {ip} outside --ip-range {range}"
        );
        assert!(
            ip != aux_in && ip != aux_out,
            "aux address {ip} was handed out"
        );
        assert!(seen.insert(ip), "{ip} handed out twice");
        ctx.assert_alloc(SUBNET, ip, &owner_content(&ep));
    }
}

pub fn c_ipv6(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUBNET4: &str = "10.234.0.0/24";
    const SUBNET6: &str = "fd00:cb34::/64";
    let subnet6: Ipv6Net = SUBNET6.parse().unwrap();
    let net = "cnbt-v6";
    let mut s = ctx.scope();
    s.network(
        net,
        &[
            "--ipv6",
            "--subnet",
            SUBNET4,
            "--subnet",
            SUBNET6,
            "-o",
            "bridge=cnbtv6",
        ],
    );
    let a = s.run_sleep("cnbt-v61", net, &[]);
    let b = s.run_sleep("cnbt-v62", net, &[]);
    let (a6, b6): (Ipv6Addr, Ipv6Addr) = (a.ipv6(), b.ipv6());
    for (ep, ip) in [(&a, a6), (&b, b6)] {
        assert!(subnet6.contains(&ip), "{ip} outside {SUBNET6}");
        // Both families of a dual-stack network share one host-local directory (range sets 0 and 1).
        ctx.assert_alloc(SUBNET4, ip, &owner_content(ep));
        ctx.assert_alloc(SUBNET4, ep.ipv4(), &owner_content(ep));
    }
    assert_ne!(a6, b6, "two containers got the same IPv6 address");
    ctx.ping("cnbt-v61", b6);
    ctx.ping("cnbt-v62", a6);
    let gw6 = a
        .gateway6
        .unwrap_or_else(|| panic!("Docker reports no IPv6 gateway for {net}"));
    assert!(
        subnet6.contains(&gw6),
        "IPv6 gateway {gw6} outside {SUBNET6}"
    );
    ctx.ping("cnbt-v61", gw6);
}

/// Two networks without `--subnet`: pools come from the daemon's `--default-pools` and differ. Also covers
/// the default bridge name (`cnb-` + 11 chars of the NetworkID).
pub fn c_default_pools(ctx: &mut Ctx) {
    ctx.require_plugin();
    let pool: Ipv4Net = DEFAULT_POOL_V4.parse().unwrap();
    let mut s = ctx.scope();
    let id1 = s.network("cnbt-dp1", &[]);
    s.network("cnbt-dp2", &[]);
    let subnet_of = |net: &str| -> Ipv4Net {
        let v4: Vec<Ipv4Net> = ctx
            .network_subnets(net)
            .into_iter()
            .filter_map(|n| match n {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect();
        assert_eq!(v4.len(), 1, "IPv4 subnets of {net}: {v4:?}");
        v4[0]
    };
    let (sub1, sub2) = (subnet_of("cnbt-dp1"), subnet_of("cnbt-dp2"));
    for sub in [sub1, sub2] {
        assert!(
            pool.contains(&sub) && sub.prefix_len() == 24,
            "{sub} is not a /24 of the default pool {pool}"
        );
    }
    assert_ne!(
        sub1, sub2,
        "two networks without --subnet got the same pool"
    );

    let ep = s.run_sleep("cnbt-dp1c", "cnbt-dp1", &[]);
    assert!(sub1.contains(&ep.ipv4()), "{} outside {sub1}", ep.ipv4());
    assert_eq!(
        ep.network_id, id1,
        "NetworkID Docker reports for the endpoint"
    );
    let bridge = format!("cnb-{}", &id1[..11]);
    ctx.assert_veth_on(&ep, &bridge);
    ctx.assert_alloc(&sub1.to_string(), ep.ipv4(), &owner_content(&ep));

    s.rm("cnbt-dp1c");
    s.network_rm("cnbt-dp1");
    ctx.wait_link_gone(&bridge);
    ctx.wait_no_allocs(&sub1.to_string());
    assert!(link(&bridge).is_none());
}

/// A /29 has six host addresses; the gateway takes one, so the sixth container must fail, readably.
pub fn c_exhaustion(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUBNET: &str = "10.236.0.0/29";
    let net = "cnbt-ex";
    let mut s = ctx.scope();
    s.network(net, &["--subnet", SUBNET, "-o", "bridge=cnbtex"]);
    let mut started = 0;
    let mut failure = None;
    for i in 0..8 {
        let out = s.run(&format!("cnbt-ex{i}"), net, &[], &["sleep", "600"]);
        if out.status.success() {
            started += 1;
        } else {
            failure = Some(stderr_text(&out));
            break;
        }
    }
    let failure =
        failure.unwrap_or_else(|| panic!("{started} containers started on a /29; no exhaustion"));
    assert!(
        failure.to_lowercase().contains("no ip addresses available"),
        "exhaustion error does not say \"no IP addresses available\": {failure}"
    );
    assert_eq!(
        started, 5,
        "containers started before exhaustion (then: {failure})"
    );
}
