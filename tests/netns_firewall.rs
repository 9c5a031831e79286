//! Netns tier: `IptablesFirewall` against real iptables/ip6tables, each test inside a network
//! namespace it creates (root required), so the host's own rules are never read or written.
//! Assertions compare `iptables-save` (comments and counters stripped) with expected text.

mod netns_support;
use netns_support as support;

use std::net::SocketAddr;
use std::time::Duration;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeSpec, Dataplane, VethSpec};
use cnibridge::firewall::iptables::{IptablesFirewall, IptablesTools};
use cnibridge::firewall::{Firewall, NetworkRules};
use support::{filter_table, in_netns, run, tcp_reaches, NamedNetns};

fn net(id: &str, bridge: &str) -> NetworkRules {
    NetworkRules {
        network_id: id.into(),
        bridge: bridge.into(),
        subnets: vec![],
        internal: false,
    }
}

const NET_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const NET_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";

fn rule(bridge: &str, id: &str) -> String {
    format!("-A CNIBRIDGE-FORWARD -i {bridge} -o {bridge} -m comment --comment \"cnibridge net {}\" -j ACCEPT\n", &id[..12])
}

/// The filter table a fresh namespace holds once our chain exists, with these chain rules.
fn expected(forward_policy: &str, rules: &[String]) -> String {
    format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {forward_policy} [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :CNIBRIDGE-FORWARD - [0:0]\n-A FORWARD -j CNIBRIDGE-FORWARD\n{}COMMIT\n",
        rules.concat()
    )
}

#[test]
fn add_network_installs_the_jump_and_the_rule_in_both_families() {
    in_netns(
        "add_network_installs_the_jump_and_the_rule_in_both_families",
        || async {
            let fw = IptablesFirewall::default();
            fw.add_network(&net(NET_A, "br-a")).await.unwrap();
            let want = expected("ACCEPT", &[rule("br-a", NET_A)]);
            assert_eq!(filter_table("iptables-save"), want);
            assert_eq!(filter_table("ip6tables-save"), want);
            // Idempotent: a second add changes nothing, in particular no second jump.
            fw.add_network(&net(NET_A, "br-a")).await.unwrap();
            assert_eq!(filter_table("iptables-save"), want);
            assert_eq!(filter_table("ip6tables-save"), want);
        },
    );
}

#[test]
fn del_network_removes_exactly_its_rule() {
    in_netns("del_network_removes_exactly_its_rule", || async {
        let fw = IptablesFirewall::default();
        fw.add_network(&net(NET_A, "br-a")).await.unwrap();
        fw.add_network(&net(NET_B, "br-b")).await.unwrap();
        let both = expected("ACCEPT", &[rule("br-a", NET_A), rule("br-b", NET_B)]);
        assert_eq!(filter_table("iptables-save"), both);
        assert_eq!(filter_table("ip6tables-save"), both);

        fw.del_network(&net(NET_A, "br-a")).await.unwrap();
        let only_b = expected("ACCEPT", &[rule("br-b", NET_B)]);
        assert_eq!(filter_table("iptables-save"), only_b);
        assert_eq!(filter_table("ip6tables-save"), only_b);
        // Unknown (or already deleted) is Ok and changes nothing.
        fw.del_network(&net(NET_A, "br-a")).await.unwrap();
        assert_eq!(filter_table("iptables-save"), only_b);
    });
}

#[test]
fn reconcile_replaces_the_whole_set() {
    in_netns("reconcile_replaces_the_whole_set", || async {
        let fw = IptablesFirewall::default();
        fw.add_network(&net(NET_A, "br-a")).await.unwrap();
        // Someone flushed our chain and removed the jump: reconcile repairs both.
        run(&["iptables", "-F", "CNIBRIDGE-FORWARD"]);
        run(&["iptables", "-D", "FORWARD", "-j", "CNIBRIDGE-FORWARD"]);
        fw.reconcile(&[net(NET_A, "br-a"), net(NET_B, "br-b")])
            .await
            .unwrap();
        let both = expected("ACCEPT", &[rule("br-a", NET_A), rule("br-b", NET_B)]);
        assert_eq!(filter_table("iptables-save"), both);
        assert_eq!(filter_table("ip6tables-save"), both);

        // A fresh process knows nothing; reconcile([]) still empties the chain.
        let restarted = IptablesFirewall::default();
        restarted.reconcile(&[]).await.unwrap();
        let empty = expected("ACCEPT", &[]);
        assert_eq!(filter_table("iptables-save"), empty);
        assert_eq!(filter_table("ip6tables-save"), empty);
    });
}

#[test]
fn jump_is_appended_after_docker_user() {
    in_netns("jump_is_appended_after_docker_user", || async {
        run(&["iptables", "-N", "DOCKER-USER"]);
        run(&["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"]);
        IptablesFirewall::default()
            .add_network(&net(NET_A, "br-a"))
            .await
            .unwrap();
        let forward = run(&["iptables", "-S", "FORWARD"]);
        assert_eq!(
            forward,
            "-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j CNIBRIDGE-FORWARD\n"
        );
    });
}

#[test]
fn unusable_ip6tables_falls_back_to_ipv4() {
    in_netns("unusable_ip6tables_falls_back_to_ipv4", || async {
        let broken_v6 = IptablesTools {
            iptables: "/nonexistent/ip6tables".into(),
            restore: "/nonexistent/ip6tables-restore".into(),
        };
        let fw = IptablesFirewall::new(IptablesTools::ipv4(), broken_v6);
        fw.add_network(&net(NET_A, "br-a")).await.unwrap();
        fw.add_network(&net(NET_B, "br-b")).await.unwrap();
        let both = expected("ACCEPT", &[rule("br-a", NET_A), rule("br-b", NET_B)]);
        assert_eq!(filter_table("iptables-save"), both);
    });
}

/// Why the rule exists: with Docker's `FORWARD DROP` policy and br_netfilter, two ports of one
/// bridge cannot talk until `add_network`. The test namespace plays the host; two named
/// namespaces play containers, one veth peer each.
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
            let bridged_through_iptables =
                std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                    .map(|v| v.trim() == "1")
                    .unwrap_or(false);
            eprintln!("bridge-nf-call-iptables in the test netns: {bridged_through_iptables}");
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
