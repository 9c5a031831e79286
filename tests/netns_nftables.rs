//! Netns tier for the nftables backend's rules: goldens of the scripts it writes and of what
//! the kernel holds (`nft list table inet cnibridge`, which prints no handles), and exact
//! removal. Traffic through these rules is tested with the other backend's in
//! `netns_connectivity`, `netns_ports` and `netns_reload` (their `*_nftables` tests).
//!
//! Goldens (`tests/golden/nftables/`): `<case>.nft.golden` the `nft -f -` scripts (no root
//! needed): the full table for each network case, and for each port case the add and remove
//! transactions of one endpoint; `<case>.golden` the kernel's table after the change.
//! `UPDATE_GOLDEN=1` regenerates them.

mod support;
use support::netns;

use cnibridge::firewall::nftables::{render_port_update, render_table, NftablesFirewall};
use cnibridge::firewall::{EndpointPorts, Firewall, Proto};
use netns::backend::{nft_table, Backend};
use netns::cases::{
    endpoint, net_a, net_b, network_cases, port_cases, run_of, tcp, EP_1, EP_2, NET_A,
};
use netns::{assert_golden, in_netns_for, run};

const GONE: &str = "(no table)\n";

#[test]
fn rendered_table_scripts_match_the_goldens() {
    for (name, nets) in network_cases() {
        assert_golden(&format!("nftables/{name}.nft"), &render_table(&nets, &[]));
    }
    assert_golden("nftables/cleaned.nft", &render_table(&[], &[]));
}

#[test]
fn rendered_port_scripts_match_the_goldens() {
    for (name, p) in port_cases() {
        let one = std::slice::from_ref(&p);
        let text = format!(
            "# add_ports\n{}# del_ports\n{}# reconcile\n{}",
            render_port_update(one, None, Some(&p)),
            render_port_update(&[], Some(&p), None),
            render_table(&[net_a()], one),
        );
        assert_golden(&format!("nftables/{name}.nft"), &text);
    }
}

#[test]
fn kernel_table_matches_the_goldens_and_teardown_is_exact() {
    for (name, nets) in network_cases() {
        in_netns_for(
            Backend::Nftables,
            &format!("kernel golden {name}"),
            move || async move {
                let fw = NftablesFirewall::default();
                for n in &nets {
                    fw.add_network(n).await.unwrap();
                }
                assert_golden(&format!("nftables/{name}"), &nft_table());
                // Idempotent, and a restarted process writes the same table.
                fw.add_network(&nets[0]).await.unwrap();
                assert_golden(&format!("nftables/{name}"), &nft_table());
                NftablesFirewall::default()
                    .reconcile(&nets, &[])
                    .await
                    .unwrap();
                assert_golden(&format!("nftables/{name}"), &nft_table());
                for n in &nets {
                    fw.del_network(n).await.unwrap();
                }
                assert_eq!(nft_table(), GONE);
                // Unknown is Ok.
                fw.del_network(&nets[0]).await.unwrap();
            },
        );
    }
}

#[test]
fn kernel_port_rules_match_the_goldens_and_removal_is_exact() {
    for (name, p) in port_cases() {
        in_netns_for(
            Backend::Nftables,
            &format!("kernel golden {name}"),
            move || async move {
                let fw = NftablesFirewall::default();
                fw.add_network(&net_a()).await.unwrap();
                fw.add_ports(&p).await.unwrap();
                assert_golden(&format!("nftables/{name}"), &nft_table());
                fw.add_ports(&p).await.unwrap();
                assert_golden(&format!("nftables/{name}"), &nft_table());
                // A restarted process rewriting everything writes the same table.
                NftablesFirewall::default()
                    .reconcile(&[net_a()], std::slice::from_ref(&p))
                    .await
                    .unwrap();
                assert_golden(&format!("nftables/{name}"), &nft_table());
                fw.del_ports(NET_A, EP_1).await.unwrap();
                assert_golden("nftables/masq_on", &nft_table());
                fw.del_ports(NET_A, EP_1).await.unwrap();
                fw.del_network(&net_a()).await.unwrap();
                assert_eq!(nft_table(), GONE);
            },
        );
    }
}

#[test]
fn one_endpoint_goes_alone_and_its_network_takes_leftover_ports() {
    in_netns_for(Backend::Nftables, "one_endpoint_goes_alone", || async {
        let (_, one) = port_cases().remove(0);
        // SCTP, and a run that keeps its ports (DNAT without a port map), as the kernel takes them.
        let two = endpoint(
            EP_2,
            "10.77.0.3/24",
            None,
            vec![tcp(None, 8090, 80), run_of(Proto::Sctp, 9100, 9101, 9100)],
        );
        let fw = NftablesFirewall::default();
        fw.add_network(&net_a()).await.unwrap();
        fw.add_ports(&one).await.unwrap();
        let only_one = nft_table();
        fw.add_ports(&two).await.unwrap();
        let both = nft_table();
        assert!(both.contains("8090"), "{both}");
        assert!(
            both.contains("sctp dport 9100-9101 dnat ip to 10.77.0.3 comment"),
            "{both}"
        );
        fw.del_ports(NET_A, EP_2).await.unwrap();
        assert_eq!(nft_table(), only_one);
        fw.add_ports(&two).await.unwrap();
        // A network change keeps the ports; deleting the network takes them with it.
        fw.add_network(&net_b()).await.unwrap();
        assert!(nft_table().contains("8090"));
        fw.del_network(&net_a()).await.unwrap();
        let left = nft_table();
        assert!(!left.contains("cnb-a") && !left.contains("dnat-"), "{left}");
        assert!(fw.ports().await.is_empty());
    });
}

#[test]
fn reconcile_without_a_network_removes_all_of_its_rules() {
    in_netns_for(Backend::Nftables, "reconcile_without_a_network", || async {
        let (_, p) = port_cases().remove(0);
        let fw = NftablesFirewall::default();
        fw.reconcile(&[net_a(), net_b()], std::slice::from_ref(&p))
            .await
            .unwrap();
        let before = nft_table();
        assert!(before.contains("cnb-a") && before.contains("dnat-"));
        // A new process that only knows network B.
        NftablesFirewall::default()
            .reconcile(&[net_b()], &[])
            .await
            .unwrap();
        let after = nft_table();
        for gone in ["cnb-a", "aaaaaaaaaaaa", "dnat-", "eeeeeeeeeeee", "10.77.0"] {
            assert!(!after.contains(gone), "{gone} left:\n{after}");
        }
        assert!(after.contains("cnb-b"));
        NftablesFirewall::default()
            .reconcile(&[], &[])
            .await
            .unwrap();
        assert_eq!(nft_table(), GONE);
    });
}

#[test]
fn a_port_update_repairs_a_table_changed_under_it() {
    in_netns_for(
        Backend::Nftables,
        "a_port_update_repairs_the_table",
        || async {
            let (_, p) = port_cases().remove(0);
            let fw = NftablesFirewall::default();
            fw.add_network(&net_a()).await.unwrap();
            // Someone deleted our table: the endpoint's transaction fails, the whole table is
            // written instead.
            run(&["nft", "delete", "table", "inet", "cnibridge"]);
            fw.add_ports(&p).await.unwrap();
            assert_golden("nftables/ports_tcp", &nft_table());
            // And now a dispatch chain (after the jump to it).
            run(&["nft", "flush", "chain", "inet", "cnibridge", "forward"]);
            run(&["nft", "delete", "chain", "inet", "cnibridge", "published"]);
            fw.del_ports(NET_A, EP_1).await.unwrap();
            assert_golden("nftables/masq_on", &nft_table());
        },
    );
}

/// Our table is ours alone: the iptables-nft tables of the namespace are not touched.
#[test]
fn nothing_outside_our_table_is_touched() {
    in_netns_for(Backend::Nftables, "nothing_outside_our_table", || async {
        run(&["iptables", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "DROP"]);
        let others = || {
            run(&["nft", "list", "ruleset"])
                .split("\ntable ")
                .filter(|t| !t.contains("inet cnibridge"))
                .collect::<Vec<_>>()
                .join("\ntable ")
        };
        let before = others();
        let fw = NftablesFirewall::default();
        let (_, p): (_, EndpointPorts) = port_cases().remove(0);
        fw.add_network(&net_a()).await.unwrap();
        fw.add_ports(&p).await.unwrap();
        fw.del_ports(NET_A, EP_1).await.unwrap();
        fw.del_network(&net_a()).await.unwrap();
        assert_eq!(others(), before);
    });
}
