//! Published ports against the strict recording firewall: which calls reach it, what a
//! conflict says, what survives a restart.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::*;
use crate::driver::ports::{HostPorts, PORTMAP};
use crate::firewall::{PortMapping, Proto};

/// Fixture 01's bindings: `-p 8080:80 -p 127.0.0.1:5353:53/udp`.
fn fixture_portmap() -> Map<String, Value> {
    portmap(json!([
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 5353}
    ]))
}

fn portmap(v: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(PORTMAP.into(), v);
    m.insert(
        "com.docker.network.driver.private.no_proxy_6to4".into(),
        json!(false),
    );
    m
}

/// A host with a tiny ephemeral range and nothing bound.
struct Ephemeral(u16, u16);

impl HostPorts for Ephemeral {
    fn ephemeral_range(&self) -> (u16, u16) {
        (self.0, self.1)
    }
    fn is_free(&self, _: Proto, _: Option<IpAddr>, _: u16) -> bool {
        true
    }
}

async fn with_endpoints(r: &Rig, net: &str, bridge: &str, eps: &[(&str, &str)]) {
    r.driver
        .create_network(&net_req(net, json!({ "bridge": bridge }), false))
        .await
        .unwrap();
    for (ep, addr) in eps {
        r.driver
            .create_endpoint(&ep_req(net, ep, addr))
            .await
            .unwrap();
        r.driver
            .join_with_options(net, ep, &fixture_portmap())
            .await
            .unwrap();
    }
}

const EP3: &str = "3333333333334444444444444444444444444444444444444444444444444444";

#[tokio::test]
async fn program_publishes_with_one_add_ports_and_join_touches_no_firewall() {
    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    r.fw.take_calls();
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    let calls = r.fw.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let FirewallCall::AddPorts(p) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(p.bridge, "cnbt0");
    assert_eq!(p.container_ipv4, Some("10.15.40.2/24".parse().unwrap()));
    assert_eq!(p.container_ipv6, None);
    assert_eq!(
        p.mappings,
        vec![
            PortMapping::single(Proto::Tcp, None, 8080, 80),
            PortMapping::single(Proto::Udp, Some("127.0.0.1".parse().unwrap()), 5353, 53),
        ]
    );
    // Hairpin on the container's bridge port, so it reaches itself through the host address.
    assert!(r.dp.veth(&names::host_veth(EP)).unwrap().hairpin);
    // A re-sent Program reinstalls the same thing.
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    assert_eq!(r.fw.take_calls(), vec![FirewallCall::AddPorts(p.clone())]);
    // Program without the key uses what Join carried; with an empty list publishes nothing.
    r.driver
        .create_endpoint(&ep_req(NET, EP2, "10.15.40.3/24"))
        .await
        .unwrap();
    r.driver
        .join_with_options(
            NET,
            EP2,
            &portmap(json!([{"Proto": 6, "Port": 80, "HostPort": 9090}])),
        )
        .await
        .unwrap();
    r.driver
        .program_external_connectivity(NET, EP2, &Map::new())
        .await
        .unwrap();
    let ep2 = r.fw.ports_of(NET, EP2).unwrap();
    assert_eq!(
        ep2.mappings,
        vec![PortMapping::single(Proto::Tcp, None, 9090, 80)]
    );
    r.joined(NET, EP3, "10.15.40.4/24").await;
    r.fw.take_calls();
    r.driver
        .program_external_connectivity(NET, EP3, &portmap(json!([])))
        .await
        .unwrap();
    assert!(
        r.fw.calls().is_empty(),
        "nothing to publish, no firewall work"
    );
}

#[tokio::test]
async fn revoke_leave_and_delete_endpoint_each_remove_the_ports() {
    let r = rig().await;
    with_endpoints(
        &r,
        NET,
        "cnbt0",
        &[
            (EP, "10.15.40.2/24"),
            (EP2, "10.15.40.3/24"),
            (EP3, "10.15.40.4/24"),
        ],
    )
    .await;
    let del = |ep: &str| FirewallCall::DelPorts {
        network_id: NET.into(),
        endpoint_id: ep.into(),
    };
    // Each endpoint publishes in turn (a host port has one holder), and goes another way.
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    r.driver
        .revoke_external_connectivity(NET, EP)
        .await
        .unwrap();
    r.driver.leave(NET, EP).await.unwrap();
    r.driver.delete_endpoint(NET, EP).await.unwrap();
    assert_eq!(
        r.fw.take_calls(),
        vec![del(EP)],
        "Leave after Revoke has nothing to do"
    );

    r.driver
        .program_external_connectivity(NET, EP2, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    r.driver.leave(NET, EP2).await.unwrap();
    r.driver.delete_endpoint(NET, EP2).await.unwrap();
    assert_eq!(r.fw.take_calls(), vec![del(EP2)]);

    // Docker ≥ 29 after a restart: neither Revoke nor Leave, only DeleteEndpoint.
    r.driver
        .program_external_connectivity(NET, EP3, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    r.driver.delete_endpoint(NET, EP3).await.unwrap();
    assert_eq!(r.fw.take_calls(), vec![del(EP3)]);
    assert!(r.fw.ports().is_empty());
    // Unknown ids are fine and cost nothing, unless there is something to publish for them.
    r.driver
        .revoke_external_connectivity(NET, EP)
        .await
        .unwrap();
    r.driver
        .revoke_external_connectivity("gone", EP)
        .await
        .unwrap();
    r.driver
        .program_external_connectivity("gone", EP, &Map::new())
        .await
        .unwrap();
    r.driver
        .program_external_connectivity(NET, EP, &portmap(json!([])))
        .await
        .unwrap();
    let err = r
        .driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("endpoint 9dbfb9b7a99c"), "{err}");
    assert!(r.fw.calls().is_empty());
    r.driver.settle().await;
    r.driver.delete_network(NET).await.unwrap();
}

#[tokio::test]
async fn a_host_port_held_by_another_endpoint_is_refused_naming_the_holder() {
    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    with_endpoints(&r, NET2, "cnbt1", &[(EP2, "10.15.40.3/24")]).await;
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    let err = r
        .driver
        .program_external_connectivity(NET2, EP2, &fixture_portmap())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "host port 8080/tcp is already published by endpoint 9dbfb9b7a99c (network 791e17b650f7)"
    );
    assert!(r.fw.calls().is_empty(), "refused before the firewall");
    // Once the holder is gone, the port is free again.
    r.driver.leave(NET, EP).await.unwrap();
    r.driver
        .program_external_connectivity(NET2, EP2, &fixture_portmap())
        .await
        .unwrap();
    assert!(r.fw.ports_of(NET2, EP2).is_some());
}

#[tokio::test]
async fn a_failed_publish_keeps_no_reservation() {
    let r = rig().await;
    with_endpoints(
        &r,
        NET,
        "cnbt0",
        &[(EP, "10.15.40.2/24"), (EP2, "10.15.40.3/24")],
    )
    .await;
    r.fw.fail_when(|c| matches!(c, FirewallCall::AddPorts(p) if p.endpoint_id == EP));
    let err = r
        .driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("publishing ports of endpoint 9dbfb9b7a99c: "),
        "{err}"
    );
    r.driver
        .program_external_connectivity(NET, EP2, &fixture_portmap())
        .await
        .unwrap();
}

#[tokio::test]
async fn picked_ports_are_recorded_and_replayed_after_a_restart() {
    let r = rig().await;
    let Rig {
        dir,
        dp,
        fw,
        driver,
    } = r;
    let r = Rig {
        driver: driver.with_host_ports(Ephemeral(41000, 41009)),
        dir,
        dp,
        fw,
    };
    with_endpoints(
        &r,
        NET,
        "cnbt0",
        &[(EP, "10.15.40.2/24"), (EP2, "10.15.40.3/24")],
    )
    .await;
    let any =
        portmap(json!([{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]));
    r.driver
        .program_external_connectivity(NET, EP, &any)
        .await
        .unwrap();
    r.driver
        .program_external_connectivity(NET, EP2, &any)
        .await
        .unwrap();
    let picked = |ep| r.fw.ports_of(NET, ep).unwrap().mappings[0].host_port;
    assert_eq!((picked(EP), picked(EP2)), (41000, 41001));
    let before = r.fw.ports();

    let Rig {
        dir, dp, driver, ..
    } = r;
    drop(driver);
    let fw = RecordingFirewall::new();
    let r = rig_in(dir, dp, fw).await;
    let r = Rig {
        driver: r.driver.with_host_ports(Ephemeral(41000, 41009)),
        ..r
    };
    // One reconcile holding the network and both endpoints' ports, as installed.
    let calls = r.fw.take_calls();
    assert!(
        matches!(&calls[..], [FirewallCall::Reconcile(n, p)] if n.len() == 1 && *p == before),
        "{calls:?}"
    );
    // The restored ledger still knows who holds 41000.
    let err = r
        .driver
        .program_external_connectivity(
            NET,
            EP,
            &portmap(json!([{"Proto": 6, "Port": 81, "HostPort": 41001}])),
        )
        .await;
    // EP re-sends: it keeps its own port and never picks again.
    assert!(err.is_ok());
    assert_eq!(r.fw.ports_of(NET, EP).unwrap().mappings[0].host_port, 41000);
    r.driver
        .create_endpoint(&ep_req(NET, EP3, "10.15.40.4/24"))
        .await
        .unwrap();
    let err = r
        .driver
        .program_external_connectivity(
            NET,
            EP3,
            &portmap(json!([{"Proto": 6, "Port": 81, "HostPort": 41001}])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("endpoint 82772f1927dd"), "{err}");
    r.driver
        .program_external_connectivity(NET, EP3, &any)
        .await
        .unwrap();
    assert_eq!(
        r.fw.ports_of(NET, EP3).unwrap().mappings[0].host_port,
        41002
    );
}

#[tokio::test]
async fn internal_networks_publish_nothing_and_bad_bindings_fail_before_any_change() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({}), true))
        .await
        .unwrap();
    r.driver
        .create_endpoint(&ep_req(NET, EP, "10.15.40.2/24"))
        .await
        .unwrap();
    r.driver
        .join_with_options(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    assert!(r.fw.calls().is_empty());

    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    let dp_calls = r.dp.calls().len();
    r.fw.take_calls();
    let bad = portmap(json!([{"Proto": 1, "Port": 80}]));
    let err = r
        .driver
        .program_external_connectivity(NET, EP, &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("portmap[0].Proto 1"), "{err}");
    r.driver
        .create_endpoint(&ep_req(NET, EP2, "10.15.40.3/24"))
        .await
        .unwrap();
    let err = r
        .driver
        .join_with_options(NET, EP2, &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Proto 1"), "{err}");
    assert_eq!(r.dp.calls().len(), dp_calls, "a bad Join creates no veth");
    assert!(r.fw.calls().is_empty());
}

#[tokio::test]
async fn delete_network_removes_leftover_ports_before_the_network() {
    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    r.fw.take_calls();
    // DeleteEndpoint was lost; the strict fake refuses del_network while ports remain.
    r.driver.delete_network(NET).await.unwrap();
    let calls = r.fw.take_calls();
    assert!(
        matches!(calls[0], FirewallCall::DelPorts { .. }),
        "{calls:?}"
    );
    assert!(matches!(calls[1], FirewallCall::DelNetwork(_)), "{calls:?}");
    assert!(r.fw.networks().is_empty() && r.fw.ports().is_empty());
}

#[tokio::test]
async fn reload_firewall_reapplies_every_network_and_published_port_in_one_reconcile() {
    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    r.driver
        .program_external_connectivity(NET, EP, &fixture_portmap())
        .await
        .unwrap();
    r.driver
        .create_network(&net_req(NET2, json!({ "bridge": "cnbt1" }), false))
        .await
        .unwrap();
    r.joined(NET2, EP2, "10.15.41.2/24").await;
    r.driver
        .program_external_connectivity(
            NET2,
            EP2,
            &portmap(json!([{"Proto": 6, "Port": 80, "HostPort": 9191}])),
        )
        .await
        .unwrap();
    let networks = {
        let mut n = r.fw.networks();
        n.sort_by(|a, b| a.network_id.cmp(&b.network_id));
        n
    };
    let ports = {
        let mut p = r.fw.ports();
        p.sort_by(|a, b| (&a.network_id, &a.endpoint_id).cmp(&(&b.network_id, &b.endpoint_id)));
        p
    };
    assert_eq!(networks.len(), 2);
    assert_eq!(ports.len(), 2);
    r.fw.take_calls();

    r.driver.reload_firewall().await.unwrap();
    assert_eq!(
        r.fw.take_calls(),
        vec![FirewallCall::Reconcile(networks.clone(), ports.clone())]
    );
    // Reloading again asks for the same thing: nothing accumulates.
    r.driver.reload_firewall().await.unwrap();
    assert_eq!(
        r.fw.take_calls(),
        vec![FirewallCall::Reconcile(networks, ports)]
    );
}

#[tokio::test]
async fn a_failed_reload_is_reported_and_the_next_one_works() {
    let r = rig().await;
    with_endpoints(&r, NET, "cnbt0", &[(EP, "10.15.40.2/24")]).await;
    r.fw.take_calls();
    r.fw.fail_when(|c| matches!(c, FirewallCall::Reconcile(..)));
    let e = r.driver.reload_firewall().await.unwrap_err();
    assert!(e.to_string().contains("re-applying firewall rules"), "{e}");
    r.fw.clear_faults();
    r.driver.reload_firewall().await.unwrap();
    assert!(r.fw.has_network(NET));
}

#[tokio::test]
async fn host_binding_gives_ports_without_a_host_address_their_address() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(
            NET,
            json!({ "bridge": "cnbt0", "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1" }),
            false,
        ))
        .await
        .unwrap();
    r.joined(NET, EP, "10.15.40.2/24").await;
    let map = portmap(json!([
        {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 6, "Port": 81, "HostIP": "10.9.9.9", "HostPort": 8081, "HostPortEnd": 8081}
    ]));
    r.driver
        .program_external_connectivity(NET, EP, &map)
        .await
        .unwrap();
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        r.fw.ports_of(NET, EP).unwrap().mappings,
        vec![
            PortMapping::single(Proto::Tcp, Some("10.9.9.9".parse().unwrap()), 8081, 81),
            PortMapping::single(Proto::Tcp, Some(localhost), 8080, 80),
        ]
    );

    let err = r
        .driver
        .create_network(&net_req(
            NET2,
            json!({ "com.docker.network.bridge.host_binding_ipv4": "localhost" }),
            false,
        ))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "-o com.docker.network.bridge.host_binding_ipv4=\"localhost\" is not an IP address; give the host address published ports listen on"
    );
}
