//! Rendering as text: the exact script for the simplest sets, and the rules each option adds
//! or removes. The main option combinations are pinned as golden files by the netns tier
//! (`tests/netns_firewall.rs`), next to what the kernel holds after applying them.

use super::*;

const ID_A: &str = "4f1d9b2c7a3e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";
const ID_B: &str = "bbbbbbbbbbbb2222";

fn net(id: &str, bridge: &str, subnets: &[&str]) -> NetworkRules {
    NetworkRules {
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        ..NetworkRules::new(id, bridge)
    }
}

fn lines(script: &str) -> Vec<&str> {
    script.lines().collect()
}

/// The part of every script that does not depend on the networks, for `family`'s nat rules.
const FILTER_HEAD: &str = "*filter\n\
     :CNIBRIDGE-FORWARD - [0:0]\n\
     :CNIBRIDGE-ISOLATION-1 - [0:0]\n\
     :CNIBRIDGE-ISOLATION-2 - [0:0]\n\
     :CNIBRIDGE-PUBLISHED - [0:0]\n\
     :CNIBRIDGE-INPUT - [0:0]\n\
     -F CNIBRIDGE-FORWARD\n\
     -F CNIBRIDGE-ISOLATION-1\n\
     -F CNIBRIDGE-ISOLATION-2\n\
     -F CNIBRIDGE-PUBLISHED\n\
     -F CNIBRIDGE-INPUT\n\
     -A CNIBRIDGE-FORWARD -j CNIBRIDGE-ISOLATION-1\n\
     -A CNIBRIDGE-FORWARD -j CNIBRIDGE-PUBLISHED\n";

const NAT_HEAD: &str = "*nat\n\
     :CNIBRIDGE-POSTROUTING - [0:0]\n\
     :CNIBRIDGE-HOSTPORTS - [0:0]\n\
     :CNIBRIDGE-HOSTPORT-SETMARK - [0:0]\n\
     :CNIBRIDGE-HOSTPORT-MASQ - [0:0]\n\
     -F CNIBRIDGE-POSTROUTING\n\
     -F CNIBRIDGE-HOSTPORTS\n\
     -F CNIBRIDGE-HOSTPORT-SETMARK\n\
     -F CNIBRIDGE-HOSTPORT-MASQ\n\
     -A CNIBRIDGE-POSTROUTING -j CNIBRIDGE-HOSTPORT-MASQ\n\
     -A CNIBRIDGE-HOSTPORT-SETMARK -j MARK --set-xmark 0x2000/0x2000\n\
     -A CNIBRIDGE-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\n";

#[test]
fn no_networks_declares_and_flushes_only_our_chains() {
    assert_eq!(
        render_restore(Family::V4, &[], &[], &[], &[]),
        format!("{FILTER_HEAD}COMMIT\n{NAT_HEAD}COMMIT\n")
    );
}

#[test]
fn missing_jumps_are_appended_in_their_own_table() {
    let script = render_restore(Family::V6, &[], &[], &jumps(Family::V6), &[]);
    let l = lines(&script);
    let filter_commit = l.iter().position(|x| *x == "COMMIT").unwrap();
    let at = |rule: &str| {
        l.iter()
            .position(|x| *x == rule)
            .unwrap_or_else(|| panic!("{rule} missing from\n{script}"))
    };
    assert!(at("-A FORWARD -j CNIBRIDGE-FORWARD") < filter_commit);
    assert!(at("-A INPUT -j CNIBRIDGE-INPUT") < filter_commit);
    assert!(at("-A POSTROUTING -j CNIBRIDGE-POSTROUTING") > filter_commit);
    assert!(
        at("-A PREROUTING ! -d ::1/128 -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS")
            > filter_commit
    );
    assert!(
        at("-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS")
            > filter_commit
    );
    // IPv4: 127.0.0.0/8 is kept out of PREROUTING only; the host's own 127.0.0.1 is DNATed.
    let v4 = render_restore(Family::V4, &[], &[], &jumps(Family::V4), &[]);
    assert!(v4.contains(
        "-A PREROUTING ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS\n"
    ));
    assert!(v4.contains("-A OUTPUT -m addrtype --dst-type LOCAL -j CNIBRIDGE-HOSTPORTS\n"));
    // Only the missing one.
    let only_nat = render_restore(Family::V4, &[], &[], &jumps(Family::V4)[2..3], &[]);
    assert!(!only_nat.contains("-A FORWARD "), "{only_nat}");
    assert!(only_nat.contains("-A POSTROUTING -j CNIBRIDGE-POSTROUTING\n"));
    // Built-in chains are never declared (which would flush them).
    for s in [&script, &only_nat] {
        for builtin in [
            ":FORWARD",
            ":INPUT",
            ":POSTROUTING",
            ":PREROUTING",
            ":OUTPUT",
        ] {
            assert!(!s.contains(builtin), "{s}");
        }
    }
}

#[test]
fn one_masquerading_network() {
    let n = NetworkRules {
        masquerade: true,
        ..net(ID_A, "cni0", &["10.88.0.0/16", "fd88::/64"])
    };
    let c = "-m comment --comment \"cnibridge net 4f1d9b2c7a3e\"";
    assert_eq!(
        render_restore(Family::V4, std::slice::from_ref(&n), &[], &[], &[]),
        format!(
            "{FILTER_HEAD}\
             -A CNIBRIDGE-FORWARD -i cni0 -o cni0 {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -o cni0 -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -o cni0 -m conntrack --ctstate DNAT {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -i cni0 ! -o cni0 {c} -j ACCEPT\n\
             -A CNIBRIDGE-ISOLATION-1 -i cni0 ! -o cni0 {c} -j CNIBRIDGE-ISOLATION-2\n\
             -A CNIBRIDGE-ISOLATION-2 -o cni0 {c} -j DROP\n\
             -A CNIBRIDGE-INPUT -i cni0 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED {c} -j DROP\n\
             COMMIT\n\
             {NAT_HEAD}\
             -A CNIBRIDGE-POSTROUTING -s 10.88.0.0/16 -d 224.0.0.0/4 {c} -j RETURN\n\
             -A CNIBRIDGE-POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 ! -o cni0 {c} -j MASQUERADE\n\
             COMMIT\n"
        )
    );
    // IPv6 masquerade is its own switch: the filter part is the same but for the localhost
    // guard (IPv6 has no route_localnet), the nat chain empty.
    let v6 = render_restore(Family::V6, std::slice::from_ref(&n), &[], &[], &[]);
    assert!(v6.ends_with(&format!("{NAT_HEAD}COMMIT\n")), "{v6}");
    assert!(v6.contains("-A CNIBRIDGE-FORWARD -i cni0 ! -o cni0 "));
    assert!(!v6.contains("-A CNIBRIDGE-INPUT"), "{v6}");
}

#[test]
fn ipv6_masquerade_uses_the_ipv6_subnets_and_multicast() {
    let n = NetworkRules {
        masquerade_ipv6: true,
        ..net(ID_A, "cni0", &["10.88.0.0/16", "fd88::/64"])
    };
    let v6 = render_restore(Family::V6, std::slice::from_ref(&n), &[], &[], &[]);
    assert!(v6.contains("-A CNIBRIDGE-POSTROUTING -s fd88::/64 -d ff00::/8 "));
    assert!(v6.contains("-A CNIBRIDGE-POSTROUTING -s fd88::/64 ! -d fd88::/64 ! -o cni0 "));
    assert!(!v6.contains("10.88."));
    let v4 = render_restore(Family::V4, std::slice::from_ref(&n), &[], &[], &[]);
    assert!(!v4.contains("-A CNIBRIDGE-POSTROUTING -s"), "{v4}");
}

#[test]
fn subnets_are_written_as_network_addresses() {
    let n = NetworkRules {
        masquerade: true,
        ..net(ID_A, "cni0", &["10.88.7.1/16"])
    };
    let v4 = render_restore(Family::V4, &[n], &[], &[], &[]);
    assert!(v4.contains("-s 10.88.0.0/16 ! -d 10.88.0.0/16 "), "{v4}");
}

#[test]
fn icc_off_drops_same_bridge_traffic_and_keeps_the_way_out() {
    let n = NetworkRules {
        icc: false,
        ..net(ID_A, "cni0", &[])
    };
    let s = render_restore(Family::V4, &[n], &[], &[], &[]);
    assert!(s.contains("-A CNIBRIDGE-FORWARD -i cni0 -o cni0 -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j DROP\n"));
    assert!(!s
        .contains("-i cni0 -o cni0 -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j ACCEPT"));
    assert!(s.contains("-A CNIBRIDGE-FORWARD -i cni0 ! -o cni0 "));
}

#[test]
fn internal_drops_both_directions_and_never_masquerades() {
    // `validate_rules` refuses internal + masquerade; the renderer does not rely on it.
    let n = NetworkRules {
        internal: true,
        masquerade: true,
        masquerade_ipv6: true,
        ..net(ID_A, "cni0", &["10.88.0.0/16", "fd88::/64"])
    };
    for family in [Family::V4, Family::V6] {
        let s = render_restore(family, std::slice::from_ref(&n), &[], &[], &[]);
        let fwd: Vec<&str> = lines(&s)
            .into_iter()
            .filter(|l| {
                l.starts_with("-A CNIBRIDGE-FORWARD -i") || l.starts_with("-A CNIBRIDGE-FORWARD !")
            })
            .map(|l| l.split(" -m comment").next().unwrap())
            .collect();
        assert_eq!(
            fwd,
            [
                "-A CNIBRIDGE-FORWARD -i cni0 -o cni0",
                "-A CNIBRIDGE-FORWARD -i cni0 ! -o cni0",
                "-A CNIBRIDGE-FORWARD ! -i cni0 -o cni0",
            ]
        );
        assert!(s.contains(
            "! -i cni0 -o cni0 -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j DROP\n"
        ));
        // No masquerade of the network (the static published-ports chain is not its), no
        // replies let in.
        assert!(
            !s.contains("-o cni0 -m conntrack") && !s.contains("-A CNIBRIDGE-POSTROUTING -s"),
            "{s}"
        );
        // The host: only the gateway's subnet, and replies to the host's own connections.
        let input: Vec<&str> = lines(&s)
            .into_iter()
            .filter(|l| l.starts_with("-A CNIBRIDGE-INPUT"))
            .map(|l| l.split(" -m comment").next().unwrap())
            .collect();
        let subnet = if family == Family::V4 {
            "10.88.0.0/16"
        } else {
            "fd88::/64"
        };
        assert_eq!(
            input,
            [
                format!("-A CNIBRIDGE-INPUT -i cni0 -d {subnet}"),
                "-A CNIBRIDGE-INPUT -i cni0 -m addrtype --dst-type LOCAL -m conntrack ! --ctstate RELATED,ESTABLISHED".to_string(),
            ]
        );
    }
}

#[test]
fn two_networks_isolate_each_other_with_two_rules_each() {
    let nets = [net(ID_A, "br-a", &[]), net(ID_B, "br-b", &[])];
    let s = render_restore(Family::V4, &nets, &[], &[], &[]);
    let iso: Vec<&str> = lines(&s)
        .into_iter()
        .filter(|l| l.starts_with("-A CNIBRIDGE-ISOLATION"))
        .collect();
    assert_eq!(
        iso,
        [
            "-A CNIBRIDGE-ISOLATION-1 -i br-a ! -o br-a -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j CNIBRIDGE-ISOLATION-2",
            "-A CNIBRIDGE-ISOLATION-1 -i br-b ! -o br-b -m comment --comment \"cnibridge net bbbbbbbbbbbb\" -j CNIBRIDGE-ISOLATION-2",
            "-A CNIBRIDGE-ISOLATION-2 -o br-a -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j DROP",
            "-A CNIBRIDGE-ISOLATION-2 -o br-b -m comment --comment \"cnibridge net bbbbbbbbbbbb\" -j DROP",
        ]
    );
    // Isolation is the first rule of our chain, before any ACCEPT (published ports included).
    let first: Vec<&str> = lines(&s)
        .into_iter()
        .filter(|l| l.starts_with("-A CNIBRIDGE-FORWARD"))
        .take(2)
        .collect();
    assert_eq!(
        first,
        [
            "-A CNIBRIDGE-FORWARD -j CNIBRIDGE-ISOLATION-1",
            "-A CNIBRIDGE-FORWARD -j CNIBRIDGE-PUBLISHED"
        ]
    );
}

#[test]
fn comments_carry_the_short_network_id() {
    assert_eq!(rule_comment(ID_A), "cnibridge net 4f1d9b2c7a3e");
    assert_eq!(rule_comment("abc"), "cnibridge net abc");
}

#[test]
fn one_network_is_appended_and_deleted_alone_with_the_same_rules_as_the_full_script() {
    let a = NetworkRules {
        masquerade: true,
        ..net(ID_A, "br0", &["10.1.0.0/24"])
    };
    let c = "-m comment --comment \"cnibridge net 4f1d9b2c7a3e\"";
    let add = render_network_update(Family::V4, None, Some(&a)).unwrap();
    assert_eq!(
        add,
        format!(
            "*filter\n\
             -A CNIBRIDGE-ISOLATION-1 -i br0 ! -o br0 {c} -j CNIBRIDGE-ISOLATION-2\n\
             -A CNIBRIDGE-ISOLATION-2 -o br0 {c} -j DROP\n\
             -A CNIBRIDGE-FORWARD -i br0 -o br0 {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -o br0 -m conntrack --ctstate DNAT {c} -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -i br0 ! -o br0 {c} -j ACCEPT\n\
             -A CNIBRIDGE-INPUT -i br0 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED {c} -j DROP\n\
             COMMIT\n\
             *nat\n\
             -A CNIBRIDGE-POSTROUTING -s 10.1.0.0/24 -d 224.0.0.0/4 {c} -j RETURN\n\
             -A CNIBRIDGE-POSTROUTING -s 10.1.0.0/24 ! -d 10.1.0.0/24 ! -o br0 {c} -j MASQUERADE\n\
             COMMIT\n"
        )
    );
    // Every appended rule is one the full script writes for the network, nothing else.
    let full = render_restore(Family::V4, std::slice::from_ref(&a), &[], &[], &[]);
    for rule in add.lines().filter(|l| l.starts_with("-A ")) {
        assert!(full.contains(rule), "{rule}");
    }
    // Nothing declared or flushed: the other networks' rules stay.
    assert!(!add.contains(":CNIBRIDGE") && !add.contains("-F "));
    let del = render_network_update(Family::V4, Some(&a), None).unwrap();
    assert_eq!(del, add.replace("-A ", "-D "));
    // Re-sent: deleted (which fails if someone removed a rule, so the caller repairs) and
    // appended again.
    let again = render_network_update(Family::V4, Some(&a), Some(&a)).unwrap();
    assert!(
        again.starts_with("*filter\n-D CNIBRIDGE-ISOLATION-1 "),
        "{again}"
    );
    assert_eq!(again.matches("-A ").count(), 9);
    assert_eq!(again.matches("-D ").count(), 9);
    // IPv6 without IPv6 masquerade: only the filter rules that hold for every family.
    let v6 = render_network_update(Family::V6, None, Some(&a)).unwrap();
    assert!(!v6.contains("*nat") && !v6.contains("127.0.0.0/8"), "{v6}");
    assert_eq!(render_network_update(Family::V4, None, None), None);
}

#[test]
fn a_markmasqbit_of_its_own_is_masqueraded_by_the_network() {
    use crate::firewall::PortOptions;
    let net = |port_options| NetworkRules {
        port_options,
        ..NetworkRules::new("net1", "br0")
    };
    let own = net(PortOptions {
        mark_masq_bit: 14,
        ..PortOptions::default()
    });
    let s = render_restore(Family::V4, &[own], &[], &[], &[]);
    assert!(
        s.contains("-A CNIBRIDGE-HOSTPORT-MASQ -m mark --mark 0x4000/0x4000 -m comment --comment \"cnibridge net net1\" -j MASQUERADE"),
        "{s}"
    );
    // The default bit shares the static rule; an external mark chain's owner masquerades.
    for o in [
        PortOptions::default(),
        PortOptions {
            mark_masq_bit: 14,
            external_set_mark_chain: Some("KUBE-MARK-MASQ".into()),
            ..PortOptions::default()
        },
    ] {
        let s = render_restore(Family::V4, &[net(o)], &[], &[], &[]);
        assert_eq!(s.matches("MASQUERADE").count(), 1, "{s}");
    }
}

#[test]
fn the_admin_chain_is_jumped_to_behind_the_isolation_jump_and_only_its_jumps_removed() {
    let net = NetworkRules {
        admin_chain: Some("CNI-ADMIN".into()),
        ..NetworkRules::new("net1", "br0")
    };
    let c = "-m comment --comment \"cnibridge net net1\"";
    let add = render_network_update(Family::V4, None, Some(&net)).unwrap();
    assert!(
        add.contains(&format!(
            "-I CNIBRIDGE-FORWARD 2 -o br0 {c} -j CNI-ADMIN\n-I CNIBRIDGE-FORWARD 2 -i br0 {c} -j CNI-ADMIN\n"
        )),
        "{add}"
    );
    let del = render_network_update(Family::V4, Some(&net), None).unwrap();
    assert!(
        del.contains(&format!("-D CNIBRIDGE-FORWARD -i br0 {c} -j CNI-ADMIN\n")),
        "{del}"
    );
    // Never declared, flushed or deleted: it is the operator's.
    for s in [
        &add,
        &del,
        &render_restore(Family::V4, std::slice::from_ref(&net), &[], &[], &[]),
    ] {
        assert!(
            !s.contains(":CNI-ADMIN") && !s.contains("-F CNI-ADMIN") && !s.contains("-X CNI-ADMIN"),
            "{s}"
        );
    }
    let full = render_restore(Family::V4, &[net], &[], &[], &[]);
    let isolation = full
        .find("-A CNIBRIDGE-FORWARD -j CNIBRIDGE-ISOLATION-1\n")
        .unwrap();
    let admin = full.find("-j CNI-ADMIN").unwrap();
    let published = full
        .find("-A CNIBRIDGE-FORWARD -j CNIBRIDGE-PUBLISHED\n")
        .unwrap();
    assert!(isolation < admin && admin < published, "{full}");
}
