//! The table script as text: its frame, and the rules each option adds or removes. The main
//! option combinations are pinned as golden files by the netns tier
//! (`tests/netns_nftables.rs`), next to what the kernel holds after applying them.

use super::*;

const ID_A: &str = "4f1d9b2c7a3e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";
const ID_B: &str = "bbbbbbbbbbbb2222";

fn net(id: &str, bridge: &str, subnets: &[&str]) -> NetworkRules {
    NetworkRules {
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        ..NetworkRules::new(id, bridge)
    }
}

/// The rules of `chain` in a rendered table, as their text.
fn chain(networks: &[NetworkRules], name: &str) -> Vec<String> {
    table_chains(networks, &[])
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, rules)| rules.into_iter().map(|r| r.text).collect())
        .unwrap_or_default()
}

#[test]
fn no_networks_deletes_the_table() {
    assert_eq!(
        render_table(&[], &[]),
        "add table inet cnibridge\ndelete table inet cnibridge\n"
    );
}

#[test]
fn a_table_is_replaced_whole_in_one_script() {
    let script = render_table(&[net(ID_A, "br0", &["10.1.0.0/24"])], &[]);
    assert!(script.starts_with(
        "add table inet cnibridge\ndelete table inet cnibridge\ntable inet cnibridge {\n"
    ));
    assert!(script.ends_with("\t}\n}\n"));
    assert!(script.contains("\tset bridges {\n\t\ttype ifname\n\t\telements = { \"br0\" }\n"));
    for (name, hook) in [
        ("forward", "type filter hook forward priority filter;"),
        ("input", "type filter hook input priority filter;"),
        ("prerouting", "type nat hook prerouting priority dstnat;"),
        ("output", "type nat hook output priority -100;"),
        ("postrouting", "type nat hook postrouting priority srcnat;"),
    ] {
        assert!(
            script.contains(&format!("\tchain {name} {{\n\t\t{hook} policy accept;\n")),
            "{name}: {script}"
        );
    }
    // Every jump target is declared before the chain that names it.
    let at = |s: &str| script.find(s).unwrap();
    assert!(at("chain hostports") < at("chain prerouting"));
    assert!(at("chain published") < at("chain forward"));
}

#[test]
fn forward_isolates_first_then_published_then_each_network() {
    let nets = [
        net(ID_A, "br0", &["10.1.0.0/24"]),
        net(ID_B, "br1", &["10.2.0.0/24"]),
    ];
    let c0 = "comment \"cnibridge net 4f1d9b2c7a3e\"";
    let c1 = "comment \"cnibridge net bbbbbbbbbbbb\"";
    assert_eq!(
        chain(&nets, "forward"),
        vec![
            format!("oifname \"br0\" iifname != \"br0\" iifname @bridges drop {c0}"),
            format!("oifname \"br1\" iifname != \"br1\" iifname @bridges drop {c1}"),
            "jump published".to_string(),
            format!("iifname \"br0\" oifname \"br0\" accept {c0}"),
            format!("oifname \"br0\" ct state established,related accept {c0}"),
            format!("iifname \"br0\" accept {c0}"),
            format!("oifname \"br0\" drop {c0}"),
            format!("iifname \"br1\" oifname \"br1\" accept {c1}"),
            format!("oifname \"br1\" ct state established,related accept {c1}"),
            format!("iifname \"br1\" accept {c1}"),
            format!("oifname \"br1\" drop {c1}"),
        ]
    );
    assert!(render_table(&nets, &[]).contains("elements = { \"br0\", \"br1\" }"));
}

#[test]
fn icc_off_drops_same_bridge_traffic_only() {
    let n = NetworkRules {
        icc: false,
        ..net(ID_A, "br0", &["10.1.0.0/24"])
    };
    let fwd = chain(&[n], "forward");
    assert!(
        fwd[2].starts_with("iifname \"br0\" oifname \"br0\" drop "),
        "{fwd:?}"
    );
    assert!(fwd.iter().any(|r| r.starts_with("iifname \"br0\" accept ")));
}

#[test]
fn internal_drops_both_directions_and_masquerades_nothing() {
    let n = NetworkRules {
        internal: true,
        ..net(ID_A, "br0", &["10.1.0.0/24"])
    };
    let fwd = chain(std::slice::from_ref(&n), "forward");
    assert!(fwd[2].starts_with("iifname \"br0\" oifname \"br0\" accept "));
    assert!(fwd[3].starts_with("iifname \"br0\" drop "));
    assert!(fwd[4].starts_with("oifname \"br0\" drop "));
    assert!(!fwd.iter().any(|r| r.contains("established")));
    // No ports on an internal network, so no route_localnet and no loopback guard; the host is
    // closed to it but for its gateway's subnet and replies.
    assert_eq!(
        chain(std::slice::from_ref(&n), "input"),
        vec![
            "iifname \"br0\" ip daddr 10.1.0.0/24 return comment \"cnibridge net 4f1d9b2c7a3e\"",
            "iifname \"br0\" fib daddr type local ct state != { established, related } drop comment \"cnibridge net 4f1d9b2c7a3e\"",
        ]
    );
    assert_eq!(
        chain(std::slice::from_ref(&n), "postrouting"),
        vec!["meta mark & 0x2000 == 0x2000 masquerade"]
    );
}

#[test]
fn the_loopback_guard_covers_every_published_network() {
    let n = net(ID_A, "br0", &["10.1.0.0/24"]);
    assert_eq!(
        chain(&[n], "input"),
        vec!["iifname \"br0\" ip daddr 127.0.0.0/8 ct state != { established, related } drop comment \"cnibridge net 4f1d9b2c7a3e\""]
    );
}

#[test]
fn masquerade_is_per_family_and_per_subnet() {
    let base = net(ID_A, "br0", &["10.1.0.0/24", "10.3.0.7/16", "fd01::/64"]);
    let masq = |v4, v6| {
        chain(
            &[NetworkRules {
                masquerade: v4,
                masquerade_ipv6: v6,
                ..base.clone()
            }],
            "postrouting",
        )
    };
    assert_eq!(masq(false, false).len(), 1, "only the hairpin mark rule");
    let v4 = masq(true, false);
    assert_eq!(v4.len(), 3);
    assert!(v4[1].starts_with(
        "ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 oifname != \"br0\" masquerade "
    ));
    // Host bits are dropped.
    assert!(v4[2].starts_with("ip saddr 10.3.0.0/16 ip daddr != 10.3.0.0/16 "));
    let v6 = masq(false, true);
    assert_eq!(v6.len(), 2);
    assert!(v6[1].starts_with(
        "ip6 saddr fd01::/64 ip6 daddr != fd01::/64 ip6 daddr != ff00::/8 oifname != \"br0\" masquerade "
    ));
    assert_eq!(masq(true, true).len(), 4);
}

#[test]
fn prerouting_keeps_loopback_destinations_out_and_output_ipv6_loopback() {
    let n = [net(ID_A, "br0", &["10.1.0.0/24"])];
    assert_eq!(
        chain(&n, "prerouting"),
        vec![
            "ip daddr != 127.0.0.0/8 fib daddr type local jump hostports",
            "ip6 daddr != ::1 fib daddr type local jump hostports",
        ]
    );
    assert_eq!(
        chain(&n, "output"),
        vec![
            "meta nfproto ipv4 fib daddr type local jump hostports",
            "ip6 daddr != ::1 fib daddr type local jump hostports",
        ]
    );
}
