//! Netns tier for a clean stop of `cnibridge serve`: SIGTERM right after a burst of
//! DeleteEndpoint calls must not leave their veths behind. The kernel takes 15–20 ms per veth
//! and the driver deletes them in the background, so most are still queued when the signal
//! comes; shutdown settles them before the process exits. And a SIGKILL that left veths of
//! forgotten endpoints: the restart collects them once it serves. Root required; the daemon runs in the test's own network
//! namespace, without a firewall and without asking any dockerd.

mod support;

use std::time::{Duration, Instant};

use cnibridge::driver::names::host_veth;
use serde_json::json;
use support::daemon::{bin, wait_answering, Daemon, Serve};
use support::netns::{in_netns, link_json, run};

const NET: &str = "5e77e1e5e77e1111111111111111111111111111111111111111111111111111";
/// Enough that the deletions outlast the DeleteEndpoint answers by far.
const ENDPOINTS: usize = 12;

fn endpoint_id(i: usize) -> String {
    format!("5e77e1e0e0{i:02x}{}", "1".repeat(52))
}

#[test]
fn sigterm_after_delete_endpoint_leaves_no_veths() {
    in_netns("sigterm_after_delete_endpoint_leaves_no_veths", || async {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("cnibridge.sock");
        // `under` gives no firewall, no dockerd and `warn` logging: the daemon works alone.
        let child = Serve::under(tmp.path(), &socket)
            .command(&bin())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let mut daemon = Daemon { child };
        let post = |path: &'static str, body: serde_json::Value| {
            let socket = socket.clone();
            async move {
                let body = body.to_string();
                let a = cnibridge::unix_client::request(
                    &socket,
                    "POST",
                    path,
                    Some(&body),
                    Duration::from_secs(10),
                )
                .await;
                match a {
                    Ok(a) if a.status == 200 => a.body,
                    other => panic!("{path}: {other:?}"),
                }
            }
        };
        wait_answering(Some(&mut daemon.child), &socket, Duration::from_secs(10)).unwrap();

        post(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {"com.docker.network.generic":
                   {"com.docker.network.bridge.name": "cnb-stop"}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.78.0.0/24",
                                 "Gateway": "10.78.0.1/24", "AuxAddresses": {}}],
                   "IPv6Data": []}),
        )
        .await;
        let eps: Vec<String> = (0..ENDPOINTS).map(endpoint_id).collect();
        for (i, ep) in eps.iter().enumerate() {
            post(
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": NET, "EndpointID": ep, "Options": {},
                       "Interface": {"Address": format!("10.78.0.{}/24", i + 2),
                                     "AddressIPv6": "", "MacAddress": ""}}),
            )
            .await;
            post(
                "/NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": ep,
                       "SandboxKey": "/var/run/docker/netns/x", "Options": {}}),
            )
            .await;
            assert!(
                link_json(&host_veth(ep)).is_some(),
                "Join made no veth for {ep}"
            );
        }
        for ep in &eps {
            post(
                "/NetworkDriver.Leave",
                json!({"NetworkID": NET, "EndpointID": ep}),
            )
            .await;
            post(
                "/NetworkDriver.DeleteEndpoint",
                json!({"NetworkID": NET, "EndpointID": ep}),
            )
            .await;
        }
        run(&["kill", "-TERM", &pid]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(status.success(), "SIGTERM must be a clean exit: {status}");
        let left: Vec<String> = eps
            .iter()
            .map(|ep| host_veth(ep))
            .filter(|veth| link_json(veth).is_some())
            .collect();
        assert!(left.is_empty(), "veths left after a clean stop: {left:?}");
        assert!(!socket.exists(), "socket left after a clean stop");
    });
}

/// A SIGKILL after the records of some endpoints were removed but before their veths were
/// deleted: the next start serves at once and collects those veths (concurrently, in the
/// background), keeping the veth of the endpoint still recorded.
#[test]
fn orphans_of_a_sigkill_are_collected_once_the_restart_serves() {
    in_netns(
        "orphans_of_a_sigkill_are_collected_once_the_restart_serves",
        || async {
            let tmp = tempfile::tempdir().unwrap();
            let socket = tmp.path().join("cnibridge.sock");
            let serve = Serve::under(tmp.path(), &socket);
            let start = || {
                let mut d = Daemon {
                    child: serve.command(&bin()).spawn().unwrap(),
                };
                wait_answering(Some(&mut d.child), &socket, Duration::from_secs(30)).unwrap();
                d
            };
            let ok = |path: &str, body: serde_json::Value| {
                let a = support::daemon::post(&socket, path, &body.to_string()).unwrap();
                assert!(a.starts_with("HTTP/1.1 200"), "{path}: {a}");
            };
            let mut daemon = start();
            ok(
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID": NET, "Options": {"com.docker.network.generic":
                   {"com.docker.network.bridge.name": "cnb-orph"}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.79.0.0/24",
                                 "Gateway": "10.79.0.1/24", "AuxAddresses": {}}],
                   "IPv6Data": []}),
            );
            let eps: Vec<String> = (0..ENDPOINTS).map(endpoint_id).collect();
            for (i, ep) in eps.iter().enumerate() {
                ok(
                    "/NetworkDriver.CreateEndpoint",
                    json!({"NetworkID": NET, "EndpointID": ep, "Options": {},
                       "Interface": {"Address": format!("10.79.0.{}/24", i + 2),
                                     "AddressIPv6": "", "MacAddress": ""}}),
                );
                ok(
                    "/NetworkDriver.Join",
                    json!({"NetworkID": NET, "EndpointID": ep,
                       "SandboxKey": "/var/run/docker/netns/x", "Options": {}}),
                );
            }
            daemon.child.kill().unwrap();
            daemon.child.wait().unwrap();
            // The crash came after the records of all but the first endpoint were removed.
            for ep in &eps[1..] {
                std::fs::remove_file(tmp.path().join(format!("state/endpoints/{ep}.json")))
                    .unwrap();
            }
            let _daemon = start();
            let deadline = Instant::now() + Duration::from_secs(30);
            let left = loop {
                let left: Vec<String> = eps[1..]
                    .iter()
                    .map(|ep| host_veth(ep))
                    .filter(|veth| link_json(veth).is_some())
                    .collect();
                if left.is_empty() || Instant::now() > deadline {
                    break left;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(left.is_empty(), "orphan veths not collected: {left:?}");
            assert!(
                link_json(&host_veth(&eps[0])).is_some(),
                "the recorded endpoint's veth went too"
            );
        },
    );
}
