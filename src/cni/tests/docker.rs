//! A config onto Docker's one pool per family.

use super::{conf, list, load};

fn ipam(s: &str) -> String {
    conf("", s)
}

#[test]
fn pools_follow_the_range_sets() {
    let c = load(
        "d.conflist",
        &list(
            "",
            r#""ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.19"},
                {"subnet":"10.1.0.0/24","rangeStart":"10.1.0.30","rangeEnd":"10.1.0.31"}],
                [{"subnet":"fd00:1::/64","gateway":"fd00:1::fe"}]]"#,
        ),
    )
    .unwrap();
    let pools = c.docker_pools(true, true).unwrap();
    let v4 = pools.v4.unwrap();
    assert_eq!(
        (v4.set_index, v4.subnet.to_string(), v4.gateway.to_string()),
        (0, "10.1.0.0/24".into(), "10.1.0.1".into())
    );
    // The allocator walks both windows of the set, as host-local would.
    let walk: Vec<String> = v4
        .ranges
        .iter_from(Some("10.1.0.19".parse().unwrap()))
        .take(3)
        .map(|a| a.to_string())
        .collect();
    assert_eq!(walk, ["10.1.0.30", "10.1.0.31", "10.1.0.10"]);
    let v6 = pools.v6.unwrap();
    assert_eq!(
        (v6.set_index, v6.subnet.to_string(), v6.gateway.to_string()),
        (1, "fd00:1::/64".into(), "fd00:1::fe".into())
    );
    // IPv4 only, as most networks are.
    let c = load("d.conf", &ipam(r#""subnet":"10.1.0.0/24""#)).unwrap();
    let p = c.docker_pools(true, false).unwrap();
    assert!(p.v4.is_some() && p.v6.is_none());
    // IPv6 only needs --ipv4=false.
    let c = load("d.conf", &ipam(r#""ranges":[[{"subnet":"fd00:1::/64"}]]"#)).unwrap();
    let p = c.docker_pools(false, true).unwrap();
    assert!(p.v4.is_none() && p.v6.is_some());
    assert_eq!(c.family_pool(false).unwrap(), None);
}

#[test]
fn what_docker_cannot_hold_is_refused_with_the_key() {
    let dual = r#""subnet":"10.1.0.0/24","ranges":[[{"subnet":"fd00:1::/64"}]]"#;
    // (ipam members, enable_ipv4, enable_ipv6, exact error)
    let cases: &[(&str, bool, bool, &str)] = &[
        (dual, true, false, r#"d.conf: ipam.ranges[0][0].subnet "fd00:1::/64" is IPv6, but the network was created without --ipv6; add --ipv6 or remove the IPv6 range set"#),
        (dual, false, true, r#"d.conf: ipam.subnet "10.1.0.0/24" is IPv4, but the network was created with --ipv4=false; drop --ipv4=false or remove the IPv4 range set"#),
        (r#""subnet":"10.1.0.0/24""#, true, true, "d.conf: the network was created with --ipv6, but the config has no IPv6 range; add an IPv6 range set or drop --ipv6"),
        (r#""ranges":[[{"subnet":"fd00:1::/64"}]]"#, true, true, "d.conf: the config has no IPv4 range; add an IPv4 range set, or create the network with --ipv4=false (Docker 28 or later)"),
        (r#""subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24"}]]"#, true, false, r#"d.conf: ipam.ranges[0][0].subnet "10.2.0.0/24" is a second IPv4 range set (after ipam.subnet "10.1.0.0/24"); a Docker network has one subnet per family, and host-local would give every container an address from each set"#),
        (r#""ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}]]"#, true, false, r#"d.conf: ipam.ranges[0][1].subnet "10.2.0.0/24" differs from ipam.ranges[0][0].subnet "10.1.0.0/24" in the same range set; a Docker network has one subnet per family"#),
        (r#""ranges":[[{"subnet":"10.1.0.0/24","rangeEnd":"10.1.0.9"},{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","gateway":"10.1.0.254"}]]"#, true, false, "d.conf: ipam.ranges[0][1] has gateway 10.1.0.254, but ipam.ranges[0][0] has gateway 10.1.0.1; a Docker network has one gateway per subnet"),
    ];
    for (ipam_members, v4, v6, want) in cases {
        let c = load("d.conf", &ipam(ipam_members)).unwrap();
        let got = c.docker_pools(*v4, *v6).unwrap_err().to_string();
        assert_eq!(&got, want);
    }
}
