//! Netns tier, issue 12 (1): twenty CreateNetworks sent at once to `cnibridge serve` (as twenty
//! parallel `docker network create`s send them) all succeed, each bridge with its gateway; and
//! twenty DeleteNetworks at once leave no bridge. Root required; the daemon runs in the test's
//! own network namespace, without a firewall and without asking any dockerd.

mod support;

use std::time::Duration;

use serde_json::json;
use support::daemon::{bin, wait_answering, Daemon, Serve};
use support::netns::{addresses, in_netns, link_json};

const NETWORKS: usize = 20;

fn network_id(i: usize) -> String {
    format!("9a7a11e1{i:02x}{}", "2".repeat(54))
}

#[test]
fn twenty_parallel_create_networks_all_succeed_and_go() {
    in_netns(
        "twenty_parallel_create_networks_all_succeed_and_go",
        || async {
            let tmp = tempfile::tempdir().unwrap();
            let socket = tmp.path().join("cnibridge.sock");
            let child = Serve::under(tmp.path(), &socket)
                .command(&bin())
                .spawn()
                .unwrap();
            let mut daemon = Daemon { child };
            wait_answering(Some(&mut daemon.child), &socket, Duration::from_secs(10)).unwrap();
            let call = |path: &'static str, body: serde_json::Value| {
                let socket = socket.clone();
                async move {
                    let body = body.to_string();
                    cnibridge::unix_client::request(
                        &socket,
                        "POST",
                        path,
                        Some(&body),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|a| (a.status, a.body))
                }
            };
            let creates = (0..NETWORKS).map(|i| {
            call(
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID": network_id(i), "Options": {"com.docker.network.generic":
                       {"com.docker.network.bridge.name": format!("cnbq{i}")}},
                       "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": format!("10.63.{i}.0/24"),
                                     "Gateway": format!("10.63.{i}.1/24"), "AuxAddresses": {}}],
                       "IPv6Data": []}),
            )
        });
            let answers = futures::future::join_all(creates).await;
            for (i, a) in answers.into_iter().enumerate() {
                match a {
                    Ok((200, _)) => {}
                    other => panic!("CreateNetwork {i}: {other:?}"),
                }
                assert_eq!(addresses(&format!("cnbq{i}")), [format!("10.63.{i}.1/24")]);
            }
            let deletes = (0..NETWORKS).map(|i| {
                call(
                    "/NetworkDriver.DeleteNetwork",
                    json!({"NetworkID": network_id(i)}),
                )
            });
            for (i, a) in futures::future::join_all(deletes)
                .await
                .into_iter()
                .enumerate()
            {
                match a {
                    Ok((200, _)) => {}
                    other => panic!("DeleteNetwork {i}: {other:?}"),
                }
                assert!(link_json(&format!("cnbq{i}")).is_none(), "cnbq{i} left");
            }
        },
    );
}
