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

/// The rules of one of a network's chains: 0 forward, 1 input, 2 nat.
fn own(n: &NetworkRules, which: usize) -> Vec<String> {
    chain(
        std::slice::from_ref(n),
        &network_chains(&n.network_id)[which],
    )
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
    let [fwd, input, nat] = network_chains(ID_A);
    assert!(script.contains(&format!(
        "\tmap forward_nets {{\n\t\ttype ifname : verdict\n\t\telements = {{ \"br0\" : jump {fwd} }}\n"
    )));
    assert!(script.contains(&format!("elements = {{ \"br0\" : jump {input} }}")));
    // Without masquerade, the network's nat chain is there but nothing jumps to it.
    assert!(
        script.contains("\tmap masq_v4 {\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n\t}\n")
    );
    assert!(!script.contains(&format!("jump {nat}")));
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
    assert!(at(&format!("chain {fwd}")) < at("chain forward"));
}

#[test]
fn forward_isolates_first_then_published_then_each_network() {
    let nets = [
        net(ID_A, "br0", &["10.1.0.0/24"]),
        net(ID_B, "br1", &["10.2.0.0/24"]),
    ];
    assert_eq!(
        chain(&nets, "forward"),
        vec![
            "iifname @bridges oifname @bridges iifname . oifname != @same_bridge drop",
            "jump published",
            "iifname vmap @forward_nets",
            "oifname vmap @forward_nets",
        ]
    );
    let c0 = "comment \"cnibridge net 4f1d9b2c7a3e\"";
    let c1 = "comment \"cnibridge net bbbbbbbbbbbb\"";
    assert_eq!(
        own(&nets[0], 0),
        vec![
            format!("iifname \"br0\" oifname \"br0\" accept {c0}"),
            format!("oifname \"br0\" ct state established,related accept {c0}"),
            format!("iifname \"br0\" accept {c0}"),
            format!("oifname \"br0\" ct status dnat accept {c0}"),
            format!("oifname \"br0\" drop {c0}"),
        ]
    );
    assert_eq!(
        own(&nets[1], 0)[0],
        format!("iifname \"br1\" oifname \"br1\" accept {c1}")
    );
    let script = render_table(&nets, &[]);
    assert!(
        script.contains("elements = { \"br0\", \"br1\" }"),
        "{script}"
    );
    assert!(
        script.contains("elements = { \"br0\" . \"br0\", \"br1\" . \"br1\" }"),
        "{script}"
    );
}

#[test]
fn icc_off_drops_same_bridge_traffic_only() {
    let n = NetworkRules {
        icc: false,
        ..net(ID_A, "br0", &["10.1.0.0/24"])
    };
    let fwd = own(&n, 0);
    assert!(
        fwd[0].starts_with("iifname \"br0\" oifname \"br0\" drop "),
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
    let fwd = own(&n, 0);
    assert!(fwd[0].starts_with("iifname \"br0\" oifname \"br0\" accept "));
    assert!(fwd[1].starts_with("iifname \"br0\" drop "));
    assert!(fwd[2].starts_with("oifname \"br0\" drop "));
    assert!(!fwd.iter().any(|r| r.contains("established")));
    // No ports on an internal network, so no route_localnet and no loopback guard; the host is
    // closed to it but for its gateway's subnet and replies.
    assert_eq!(
        own(&n, 1),
        vec![
            "iifname \"br0\" ip daddr 10.1.0.0/24 return comment \"cnibridge net 4f1d9b2c7a3e\"",
            "iifname \"br0\" fib daddr type local ct state != { established, related } drop comment \"cnibridge net 4f1d9b2c7a3e\"",
        ]
    );
    assert!(own(&n, 2).is_empty());
    assert!(!network_elements(&n)
        .iter()
        .any(|(set, _)| set.starts_with("masq")));
}

#[test]
fn the_loopback_guard_covers_every_published_network() {
    let n = net(ID_A, "br0", &["10.1.0.0/24"]);
    assert_eq!(
        own(&n, 1),
        vec!["iifname \"br0\" ip daddr 127.0.0.0/8 ct state != { established, related } drop comment \"cnibridge net 4f1d9b2c7a3e\""]
    );
    assert_eq!(chain(&[n], "input"), vec!["iifname vmap @input_nets"]);
}

#[test]
fn masquerade_is_per_family_and_per_subnet() {
    let base = net(ID_A, "br0", &["10.1.0.0/24", "10.3.0.7/16", "fd01::/64"]);
    let masq = |v4, v6| {
        own(
            &NetworkRules {
                masquerade: v4,
                masquerade_ipv6: v6,
                ..base.clone()
            },
            2,
        )
    };
    assert_eq!(
        chain(std::slice::from_ref(&base), "postrouting"),
        vec![
            "meta mark & 0x2000 == 0x2000 masquerade",
            "ip saddr vmap @masq_v4",
            "ip6 saddr vmap @masq_v6",
        ],
        "the hairpin mark rule first"
    );
    assert!(masq(false, false).is_empty());
    let v4 = masq(true, false);
    assert_eq!(v4.len(), 2);
    assert!(v4[0].starts_with(
        "ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 oifname != \"br0\" masquerade "
    ));
    // Host bits are dropped.
    assert!(v4[1].starts_with("ip saddr 10.3.0.0/16 ip daddr != 10.3.0.0/16 "));
    let v6 = masq(false, true);
    assert_eq!(v6.len(), 1);
    assert!(v6[0].starts_with(
        "ip6 saddr fd01::/64 ip6 daddr != fd01::/64 ip6 daddr != ff00::/8 oifname != \"br0\" masquerade "
    ));
    assert_eq!(masq(true, true).len(), 3);
    let both = NetworkRules {
        masquerade: true,
        masquerade_ipv6: true,
        ..base.clone()
    };
    let [_, _, nat] = network_chains(ID_A);
    let masq_elements: Vec<_> = network_elements(&both)
        .into_iter()
        .filter(|(set, _)| set.starts_with("masq"))
        .collect();
    assert_eq!(
        masq_elements,
        vec![
            ("masq_v4", format!("10.1.0.0/24 : jump {nat}")),
            ("masq_v4", format!("10.3.0.0/16 : jump {nat}")),
            ("masq_v6", format!("fd01::/64 : jump {nat}")),
        ]
    );
}

#[test]
fn one_network_changes_only_its_chains_and_elements() {
    let a = NetworkRules {
        masquerade: true,
        ..net(ID_A, "br0", &["10.1.0.0/24"])
    };
    let [fwd, input, nat] = network_chains(ID_A);
    let add = render_network_update(None, Some(&a));
    assert!(
        !add.contains("delete") && !add.contains("table inet cnibridge {"),
        "{add}"
    );
    assert!(!add.contains("br1") && !add.contains(ID_B));
    for c in [&fwd, &input, &nat] {
        assert!(add.contains(&format!(
            "add chain inet cnibridge {c}\nflush chain inet cnibridge {c}\n"
        )));
    }
    assert!(add.contains(&format!(
        "add element inet cnibridge forward_nets {{ \"br0\" : jump {fwd} }}\n"
    )));
    assert!(add.contains("add element inet cnibridge same_bridge { \"br0\" . \"br0\" }\n"));
    // Re-sent: the same, no delete (adding an element that is there is no error).
    assert_eq!(render_network_update(Some(&a), Some(&a)), add);
    // Masquerade turned off: its element goes.
    let off = NetworkRules {
        masquerade: false,
        ..a.clone()
    };
    let change = render_network_update(Some(&a), Some(&off));
    assert!(
        change.starts_with("delete element inet cnibridge masq_v4 { 10.1.0.0/24 }\n"),
        "{change}"
    );
    let del = render_network_update(Some(&a), None);
    assert!(
        del.starts_with("delete element inet cnibridge bridges { \"br0\" }\n"),
        "{del}"
    );
    assert!(del.ends_with(&format!(
        "flush chain inet cnibridge {nat}\ndelete chain inet cnibridge {nat}\n"
    )));
    assert!(!del.contains("add "));
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
