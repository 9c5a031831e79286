//! Netns tier for `cnibridge firewall-reload` (and SIGHUP): a network created from Docker's
//! flags with an endpoint publishing a port, through the driver API with a real firewall (each
//! test once per backend) and the netlink dataplane; then the firewall is flushed by hand, as an
//! admin's `iptables -F; iptables -t nat -F` or `nft flush table inet cnibridge` does (and a
//! variant that also deletes the chains, or the table), and
//! `Driver::reload_firewall` must bring back exactly what was there. Root required; everything
//! happens inside the test's own network namespace.

mod support;
use support::daemon::{self, Daemon, Serve};
use support::netns;

use std::process::Command;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::driver::ports::PORTMAP;
use cnibridge::driver::{Driver, DriverConfig, EndpointSpec, IpamFamily, NetworkSpec};
use cnibridge::ipam::{Ipam, IpamConfig};
use cnibridge::state::StateDir;
use netns::backend::{nft_table, Backend};
use netns::{in_netns_for, run};
use serde_json::{json, Map};

const NET: &str = "7e1aad7e1aad1111111111111111111111111111111111111111111111111111";
const EP: &str = "7e1aade0e0e01111111111111111111111111111111111111111111111111111";

fn portmap() -> Map<String, serde_json::Value> {
    let mut m = Map::new();
    m.insert(
        PORTMAP.into(),
        json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]),
    );
    m
}

#[test]
fn reload_after_a_manual_flush_restores_every_rule() {
    reload_after_a_manual_flush_restores_every_rule_with(Backend::Iptables);
}

#[test]
fn reload_after_a_manual_flush_restores_every_rule_nftables() {
    reload_after_a_manual_flush_restores_every_rule_with(Backend::Nftables);
}

fn reload_after_a_manual_flush_restores_every_rule_with(backend: Backend) {
    in_netns_for(
        backend,
        "reload_after_a_manual_flush_restores_every_rule",
        move || async move {
            let tmp = tempfile::tempdir().unwrap();
            let confs = tmp.path().join("conf");
            std::fs::create_dir_all(&confs).unwrap();
            let state = StateDir::open(tmp.path().join("state")).unwrap();
            let ipam = Ipam::open(IpamConfig {
                state: state.clone(),
                data_dir: tmp.path().join("data"),
                default_pools: vec![],
                cni_conf_dir: confs,
            })
            .unwrap();
            let driver = Driver::open_with(
                NetlinkDataplane::new().unwrap(),
                backend.firewall(),
                ipam,
                state,
                DriverConfig {
                    export_dir: tmp.path().join("export"),
                },
            )
            .await
            .unwrap();
            let before_network = backend.dump();

            // docker network create -d cnibridge --subnet 10.78.0.0/24 -o bridge=cnb-rl
            let mut options = Map::new();
            options.insert(
                "com.docker.network.generic".into(),
                json!({"com.docker.network.bridge.name": "cnb-rl"}),
            );
            driver
                .create_network(&NetworkSpec {
                    network_id: NET.into(),
                    options,
                    ipv4: vec![IpamFamily {
                        address_space: "LocalDefault".into(),
                        pool: "10.78.0.0/24".into(),
                        gateway: "10.78.0.1/24".into(),
                        aux_addresses: Default::default(),
                    }],
                    ipv6: vec![],
                })
                .await
                .unwrap();
            // docker run -p 18080:80
            driver
                .create_endpoint(&EndpointSpec {
                    network_id: NET.into(),
                    endpoint_id: EP.into(),
                    address: "10.78.0.2/24".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            driver.join_with_options(NET, EP, &portmap()).await.unwrap();
            driver
                .program_external_connectivity(NET, EP, &portmap())
                .await
                .unwrap();
            assert!(
                netns::link_json("cnb-rl").is_some(),
                "bridge cnb-rl missing"
            );
            let saved = backend.dump();
            assert_ne!(saved, before_network, "no rules were installed");
            assert!(saved.contains("18080"), "published port missing:\n{saved}");

            // Nothing flushed: a reload changes nothing.
            driver.reload_firewall().await.unwrap();
            assert_eq!(
                backend.dump(),
                saved,
                "a reload of intact rules changed them"
            );

            for delete_chains in [false, true] {
                backend.flush_by_hand(delete_chains);
                let flushed = backend.dump();
                assert!(!flushed.contains("18080"), "flush left rules:\n{flushed}");
                driver.reload_firewall().await.unwrap();
                assert_eq!(
                    backend.dump(),
                    saved,
                    "reload after a flush (chains deleted: {delete_chains}) differs"
                );
            }

            // Cleanup through the driver leaves what the namespace had before the network.
            driver.revoke_external_connectivity(NET, EP).await.unwrap();
            driver.leave(NET, EP).await.unwrap();
            driver.delete_endpoint(NET, EP).await.unwrap();
            driver.delete_network(NET).await.unwrap();
            driver.settle().await;
            let after = Command::new("ip")
                .args(["link", "show", "cnb-rl"])
                .output()
                .unwrap();
            assert!(!after.status.success(), "bridge left behind");
        },
    );
}

/// The daemon as run with `--firewall nftables`: a network created over the socket gets its
/// table, SIGHUP brings it back after an admin deleted it, and deleting the network removes it.
/// The daemon is forked from the test thread, so it runs in the test's namespace.
#[test]
fn the_daemon_with_firewall_nftables_installs_and_reloads_its_table() {
    in_netns_for(Backend::Nftables, "daemon_firewall_nftables", || async {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("cnibridge.sock");
        let serve = Serve {
            firewall: "nftables".into(),
            ..Serve::under(tmp.path(), &socket)
        };
        let running = Daemon {
            child: serve.command(&daemon::bin()).spawn().unwrap(),
        };
        let pid = running.child.id().to_string();
        let post = |path: &str, body: serde_json::Value| -> String {
            let answer = daemon::post(&socket, path, &body.to_string()).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
            answer
        };
        let until = |what: &str, ok: &dyn Fn(&str) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !ok(&nft_table()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {}",
                    nft_table()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        daemon::wait_answering(None, &socket, std::time::Duration::from_secs(10)).unwrap();

        post(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {"com.docker.network.generic":
                   {"com.docker.network.bridge.name": "cnb-dm"}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.79.0.0/24",
                                 "Gateway": "10.79.0.1/24", "AuxAddresses": {}}],
                   "IPv6Data": []}),
        );
        let installed = nft_table();
        assert!(installed.contains("\"cnb-dm\""), "{installed}");
        run(&["nft", "delete", "table", "inet", "cnibridge"]);
        run(&["kill", "-HUP", &pid]);
        until("SIGHUP restores the table", &|t| t == installed);
        post("/NetworkDriver.DeleteNetwork", json!({ "NetworkID": NET }));
        until("the table goes with the network", &|t| t == "(no table)\n");
    });
}
