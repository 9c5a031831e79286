//! Netns tier: `IptablesFirewall` against real iptables/ip6tables, each test inside a network
//! namespace it creates (root required), so the host's own rules are never read or written.
//!
//! Goldens (`tests/golden/iptables/`): for each main option combination, `<case>.restore.golden`
//! pins the scripts `render_restore` writes (no root needed) and `<case>.golden` what the
//! kernel holds after `add_network` (`iptables-save`/`ip6tables-save`, only our chains and the
//! jumps, counters zeroed); after `del_network` of every network the kernel must hold exactly
//! `cleaned.golden`. `UPDATE_GOLDEN=1` regenerates them.

mod support;
use support::netns;

use std::net::SocketAddr;
use std::time::Duration;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeSpec, Dataplane, VethSpec};
use cnibridge::firewall::iptables::{
    jumps, render_restore, Family, IptablesFirewall, IptablesTools,
};
use cnibridge::firewall::{Firewall, NetworkRules};
use netns::cases::{net_a, net_b, network_cases, NET_A, NET_B};
use netns::{assert_golden, in_netns, our_rules, run, tcp_reaches, NamedNetns};

fn net(id: &str, bridge: &str) -> NetworkRules {
    NetworkRules::new(id, bridge)
}

fn cases() -> Vec<(&'static str, Vec<NetworkRules>)> {
    network_cases()
}

/// Both families' dumps of our rules, as one text.
fn kernel_rules() -> String {
    format!(
        "# iptables-save\n{}# ip6tables-save\n{}",
        our_rules("iptables-save"),
        our_rules("ip6tables-save")
    )
}

fn ours_v4() -> String {
    our_rules("iptables-save")
}

#[test]
fn rendered_scripts_match_the_goldens() {
    let mut all = cases();
    all.push(("cleaned", vec![]));
    for (name, nets) in all {
        // As the first change writes them: every jump missing.
        let text = format!(
            "# iptables-restore -w --noflush\n{}# ip6tables-restore -w --noflush\n{}",
            render_restore(Family::V4, &nets, &[], &jumps(Family::V4), &[]),
            render_restore(Family::V6, &nets, &[], &jumps(Family::V6), &[])
        );
        assert_golden(&format!("iptables/{name}.restore"), &text);
    }
}

#[test]
fn kernel_rules_match_the_goldens_and_teardown_is_exact() {
    for (name, nets) in cases() {
        in_netns(&format!("kernel golden {name}"), move || async move {
            let fw = IptablesFirewall::default();
            for n in &nets {
                fw.add_network(n).await.unwrap();
            }
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            for n in &nets {
                fw.del_network(n).await.unwrap();
            }
            assert_golden("iptables/cleaned", &kernel_rules());
        });
    }
}

#[test]
fn add_network_is_idempotent_and_adds_each_jump_once() {
    in_netns(
        "add_network_is_idempotent_and_adds_each_jump_once",
        || async {
            let fw = IptablesFirewall::default();
            fw.add_network(&net_a()).await.unwrap();
            let once = kernel_rules();
            fw.add_network(&net_a()).await.unwrap();
            assert_eq!(kernel_rules(), once);
            for (save, table, jump) in [
                ("iptables", "filter", "-A FORWARD -j CNIBRIDGE-FORWARD"),
                ("iptables", "nat", "-A POSTROUTING -j CNIBRIDGE-POSTROUTING"),
                ("ip6tables", "filter", "-A FORWARD -j CNIBRIDGE-FORWARD"),
                (
                    "ip6tables",
                    "nat",
                    "-A POSTROUTING -j CNIBRIDGE-POSTROUTING",
                ),
            ] {
                let rules = run(&[save, "-t", table, "-S"]);
                assert_eq!(rules.matches(jump).count(), 1, "{save} {table}: {rules}");
            }
        },
    );
}

#[test]
fn del_network_removes_exactly_its_rules() {
    in_netns("del_network_removes_exactly_its_rules", || async {
        let fw = IptablesFirewall::default();
        let b = NetworkRules {
            subnets: vec!["10.78.0.0/24".parse().unwrap()],
            masquerade: true,
            ..net(NET_B, "cnb-b")
        };
        fw.add_network(&net_a()).await.unwrap();
        fw.add_network(&b).await.unwrap();
        let of = |dump: &str, id: &str| -> Vec<String> {
            let tag = format!("cnibridge net {}", &id[..12]);
            dump.lines()
                .filter(|l| l.contains(&tag))
                .map(String::from)
                .collect()
        };
        let both = kernel_rules();
        assert!(!of(&both, NET_A).is_empty());

        fw.del_network(&net_a()).await.unwrap();
        let only_b = kernel_rules();
        assert!(of(&only_b, NET_A).is_empty(), "{only_b}");
        assert_eq!(of(&only_b, NET_B), of(&both, NET_B));
        // Unknown (or already deleted) is Ok and changes nothing.
        fw.del_network(&net_a()).await.unwrap();
        assert_eq!(kernel_rules(), only_b);
    });
}

#[test]
fn reconcile_replaces_the_whole_set() {
    in_netns("reconcile_replaces_the_whole_set", || async {
        let fw = IptablesFirewall::default();
        fw.add_network(&net_a()).await.unwrap();
        // Someone flushed our chains and removed the jumps: reconcile repairs all of it.
        run(&["iptables", "-F", "CNIBRIDGE-FORWARD"]);
        run(&["iptables", "-D", "FORWARD", "-j", "CNIBRIDGE-FORWARD"]);
        run(&["iptables", "-t", "nat", "-F", "CNIBRIDGE-POSTROUTING"]);
        run(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-j",
            "CNIBRIDGE-POSTROUTING",
        ]);
        let (_, two) = cases()
            .into_iter()
            .find(|(name, _)| *name == "two_networks")
            .unwrap();
        fw.reconcile(&two, &[]).await.unwrap();
        assert_golden("iptables/two_networks", &kernel_rules());

        // A fresh process knows nothing; reconcile([]) still empties the chains.
        let restarted = IptablesFirewall::default();
        restarted.reconcile(&[], &[]).await.unwrap();
        assert_golden("iptables/cleaned", &kernel_rules());
    });
}

/// dockerd inserts its jumps at the head of `FORWARD` at every start and adds its own
/// masquerade rules to `POSTROUTING`; ours are appended, stay behind them and are not repeated.
#[test]
fn jumps_stay_behind_dockers_across_a_dockerd_restart() {
    in_netns(
        "jumps_stay_behind_dockers_across_a_dockerd_restart",
        || async {
            let docker_start = || {
                for chain in ["DOCKER-USER", "DOCKER-FORWARD"] {
                    let _ = std::process::Command::new("iptables")
                        .args(["-N", chain])
                        .output();
                    let _ = std::process::Command::new("iptables")
                        .args(["-D", "FORWARD", "-j", chain])
                        .output();
                }
                run(&["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD"]);
                run(&["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
            };
            docker_start();
            run(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "172.17.0.0/16",
                "!",
                "-o",
                "docker0",
                "-j",
                "MASQUERADE",
            ]);
            let fw = IptablesFirewall::default();
            fw.add_network(&net_a()).await.unwrap();
            let forward =
                "-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n\
                       -A FORWARD -j CNIBRIDGE-FORWARD\n";
            assert_eq!(run(&["iptables", "-S", "FORWARD"]), forward);
            assert_eq!(
                run(&["iptables", "-t", "nat", "-S", "POSTROUTING"]),
                "-P POSTROUTING ACCEPT\n\
             -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
             -A POSTROUTING -j CNIBRIDGE-POSTROUTING\n"
            );
            // dockerd restarts: its jumps are taken out and put back at the head.
            docker_start();
            fw.reconcile(&[net_a()], &[]).await.unwrap();
            assert_eq!(run(&["iptables", "-S", "FORWARD"]), forward);
            assert_golden("iptables/masq_on", &kernel_rules());
        },
    );
}

#[test]
fn unusable_ip6tables_falls_back_to_ipv4() {
    in_netns("unusable_ip6tables_falls_back_to_ipv4", || async {
        let broken_v6 = IptablesTools {
            iptables: "/nonexistent/ip6tables".into(),
            restore: "/nonexistent/ip6tables-restore".into(),
        };
        let fw = IptablesFirewall::new(IptablesTools::ipv4(), broken_v6);
        fw.add_network(&net_a()).await.unwrap();
        let v4 = ours_v4();
        assert!(v4.contains("-j MASQUERADE"), "{v4}");
        assert_eq!(our_rules("ip6tables-save"), "");
    });
}

/// Why the forwarding rules exist: with Docker's `FORWARD DROP` policy and br_netfilter, two
/// ports of one bridge cannot talk until `add_network`. The test namespace plays the host; two
/// named namespaces play containers, one veth peer each.
#[test]
fn same_bridge_traffic_needs_the_rule_under_forward_drop() {
    in_netns(
        "same_bridge_traffic_needs_the_rule_under_forward_drop",
        || async {
            run(&["iptables", "-P", "FORWARD", "DROP"]);
            let dp = NetlinkDataplane::new().unwrap();
            dp.ensure_bridge(&BridgeSpec {
                name: "cnbr0".into(),
                mtu: None,
                addresses: vec!["10.77.0.1/24".parse().unwrap()],
                promisc: false,
                force_address: false,
            })
            .await
            .unwrap();
            let a = NamedNetns::new("a");
            let b = NamedNetns::new("b");
            for (host, peer, ns, addr) in [
                ("vha", "vpa", &a, "10.77.0.2/24"),
                ("vhb", "vpb", &b, "10.77.0.3/24"),
            ] {
                dp.create_veth(&VethSpec {
                    host_name: host.into(),
                    peer_name: peer.into(),
                    bridge: "cnbr0".into(),
                    mtu: None,
                    peer_mac: None,
                    hairpin: false,
                    peer_tuning: Default::default(),
                })
                .await
                .unwrap();
                ns.adopt(peer, addr);
            }
            let to_b: SocketAddr = "10.77.0.3:7777".parse().unwrap();
            let to_gw: SocketAddr = "10.77.0.1:7777".parse().unwrap();
            let wait = Duration::from_secs(1);

            // Traffic to the host itself goes through INPUT (ACCEPT): the wiring works.
            assert!(
                tcp_reaches(&a, None, to_gw, wait),
                "a cannot reach the gateway at all"
            );

            // br_netfilter's switch is per namespace; 1 means bridged IPv4 frames traverse the
            // iptables FORWARD chain, so the DROP policy applies between two ports of one bridge.
            let bridged_through_iptables = netns::bridged_through_iptables();
            let before = tcp_reaches(&a, Some(&b), to_b, wait);
            if bridged_through_iptables {
                assert!(
                    !before,
                    "FORWARD DROP should stop a -> b before add_network"
                );
            } else {
                // Without br_netfilter (module absent or switched off) bridged frames never see
                // iptables, so the policy cannot drop them and the rule is not what makes it work.
                assert!(before, "without br_netfilter a -> b works at L2");
            }

            let fw = IptablesFirewall::default();
            fw.add_network(&net(NET_A, "cnbr0")).await.unwrap();
            assert!(
                tcp_reaches(&a, Some(&b), to_b, wait),
                "a -> b must work after add_network"
            );

            fw.del_network(&net(NET_A, "cnbr0")).await.unwrap();
            if bridged_through_iptables {
                assert!(
                    !tcp_reaches(&a, Some(&b), to_b, wait),
                    "del_network must close it again"
                );
            }
        },
    );
}

/// `iptablesAdminChainName`: created when missing, jumped to right behind the isolation jump
/// (before every accept of ours) after an incremental add and after a full rewrite, and never
/// flushed or deleted: the operator's rule in it outlives the network.
#[test]
fn the_admin_chain_is_jumped_to_first_and_left_to_the_operator() {
    in_netns("admin chain", || async {
        let admin = NetworkRules {
            admin_chain: Some("CNBT-ADMIN".into()),
            ..net_a()
        };
        run(&["iptables", "-w", "-N", "CNBT-ADMIN"]);
        run(&[
            "iptables",
            "-w",
            "-A",
            "CNBT-ADMIN",
            "-s",
            "10.77.0.9/32",
            "-j",
            "DROP",
        ]);
        let second_and_third = || -> Vec<String> {
            run(&["iptables", "-w", "-S", "CNIBRIDGE-FORWARD"])
                .lines()
                .skip(2)
                .take(2)
                .map(str::to_string)
                .collect()
        };
        let want = |dir: &str| {
            format!("-A CNIBRIDGE-FORWARD {dir} cnb-a -m comment --comment \"cnibridge net aaaaaaaaaaaa\" -j CNBT-ADMIN")
        };
        let fw = IptablesFirewall::default();
        fw.add_network(&net_b()).await.unwrap();
        fw.add_network(&admin).await.unwrap();
        assert_eq!(second_and_third(), vec![want("-i"), want("-o")]);
        let restarted = IptablesFirewall::default();
        restarted
            .reconcile(&[net_b(), admin.clone()], &[])
            .await
            .unwrap();
        assert_eq!(second_and_third(), vec![want("-i"), want("-o")]);
        fw.del_network(&admin).await.unwrap();
        fw.del_network(&net_b()).await.unwrap();
        assert_golden("iptables/cleaned", &kernel_rules());
        assert!(
            run(&["iptables", "-w", "-S", "CNBT-ADMIN"]).contains("-s 10.77.0.9/32 -j DROP"),
            "the operator's rule is gone"
        );
        // Missing at the start: created.
        run(&["iptables", "-w", "-F", "CNBT-ADMIN"]);
        run(&["iptables", "-w", "-X", "CNBT-ADMIN"]);
        fw.add_network(&admin).await.unwrap();
        run(&["iptables", "-w", "-S", "CNBT-ADMIN"]);
        fw.del_network(&admin).await.unwrap();
    });
}
