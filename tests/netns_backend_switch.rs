//! Netns tier for switching `--firewall`: what an earlier cnibridge left with the other
//! backend is removed at start, and nothing else (Docker's chains, another table). Each test
//! installs a network and a published port with one backend, in its own namespace, then runs
//! what the daemon runs when it starts with the other backend.

mod support;
use support::netns;

use cnibridge::firewall::iptables::remove::remove_all;
use cnibridge::firewall::leftovers;
use cnibridge::firewall::Firewall;
use netns::backend::{nft_table, Backend};
use netns::cases::{endpoint, net_a, tcp, EP_1};
use netns::{in_netns_for, run};

/// What Docker keeps in iptables, which must survive.
fn docker_like_rules(tools: [&str; 2]) {
    for tool in tools {
        run(&[tool, "-N", "DOCKER-USER"]);
        run(&[tool, "-A", "FORWARD", "-j", "DOCKER-USER"]);
        run(&[tool, "-t", "nat", "-N", "DOCKER"]);
        run(&[
            tool,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ]);
    }
}

async fn install(fw: &impl Firewall) {
    fw.add_network(&net_a()).await.unwrap();
    fw.add_ports(&endpoint(
        EP_1,
        "10.77.0.2/24",
        Some("fd77::2/64"),
        vec![tcp(None, 8080, 80)],
    ))
    .await
    .unwrap();
}

#[test]
fn starting_with_nftables_removes_what_iptables_left() {
    for backend in [Backend::Iptables, Backend::IptablesLegacy] {
        in_netns_for(
            backend,
            "starting_with_nftables_removes_what_iptables_left",
            move || async move {
                docker_like_rules(backend.iptables_tools());
                let before = backend.dump();
                install(&backend.firewall()).await;
                let installed = backend.dump();
                assert!(installed.contains("CNIB-DN-"), "{installed}");
                assert!(installed.contains("-j CNIBRIDGE-FORWARD"), "{installed}");
                if backend == Backend::Iptables {
                    // Exactly what the daemon runs.
                    leftovers::remove_iptables_rules().await;
                } else {
                    for tools in backend.tools() {
                        let removed = remove_all(&tools).await.unwrap();
                        assert!(removed, "{}: nothing removed", tools.iptables);
                    }
                }
                assert_eq!(backend.dump(), before, "not exactly our rules were removed");
                // Nothing left: a second start only reads.
                for tools in backend.tools() {
                    assert!(!remove_all(&tools).await.unwrap(), "{}", tools.iptables);
                }
            },
        );
    }
}

#[test]
fn starting_with_iptables_removes_what_nftables_left() {
    in_netns_for(
        Backend::Nftables,
        "starting_with_iptables_removes_what_nftables_left",
        || async {
            run(&["nft", "add", "table", "inet", "someone-else"]);
            run(&["nft", "add", "chain", "inet", "someone-else", "c"]);
            install(&Backend::Nftables.firewall()).await;
            assert_ne!(nft_table(), "(no table)\n");
            leftovers::remove_nftables_table().await;
            assert_eq!(nft_table(), "(no table)\n");
            let tables = run(&["nft", "list", "tables"]);
            assert_eq!(tables.trim(), "table inet someone-else");
            assert!(!cnibridge::firewall::nftables::remove_table("nft")
                .await
                .unwrap());
        },
    );
}
