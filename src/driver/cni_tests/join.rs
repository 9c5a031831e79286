//! Networks from CNI configs, continued: what Join answers for a config's routes and what
//! reaches the dataplane and the firewall.

use serde_json::json;

use super::{conf, ip, req, Rig, NET, NET2};
use crate::dataplane::testing::DataplaneCall;
use crate::driver::EndpointSpec;

#[tokio::test]
async fn dual_stack_config_gives_both_gateways_and_one_directory() {
    let r = Rig::new(&[]).await;
    let v4 = r.pool(Some("dual-stack"), None, false);
    let v6 = r.pool(Some("dual-stack"), None, true);
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![v6]))
        .await
        .unwrap();
    let spec = &r.bridge_specs()[0];
    assert_eq!(spec.name, "cni-dual");
    assert_eq!(spec.mtu, Some(1500));
    assert_eq!(spec.addresses.len(), 2);
    let v6addr = r
        .driver
        .ipam()
        .request_address("fd00:244::/64", None, false)
        .unwrap();
    let join = r.join(NET, "10.244.0.0/16").await;
    assert_eq!(
        (join.gateway, join.gateway_ipv6),
        (Some(ip("10.244.0.1")), None)
    );
    assert!(v6addr.to_string().starts_with("fd00:244::2"));
    let dir = r.dir.path().join("data/dual-stack");
    for f in [
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "fd00:244::2",
        "10.244.0.2",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // hairpinMode reaches the veth.
    let veth_spec = r.dp.calls().into_iter().find_map(|c| match c {
        DataplaneCall::CreateVeth(s) => Some(s),
        _ => None,
    });
    assert!(veth_spec.unwrap().hairpin);
    // A config's ipMasq covers both families.
    let rules = r.fw.networks();
    assert!(rules[0].masquerade && rules[0].masquerade_ipv6);
}

#[tokio::test]
async fn routes_decide_the_gateway_join_gives() {
    let no_default = conf(
        "nodef",
        r#""isGateway":true,"#,
        r#""subnet":"10.72.0.0/24","routes":[{"dst":"10.250.0.0/16"},{"dst":"192.168.9.0/24","gw":"10.72.0.254"}]"#,
    );
    let default_gw = conf(
        "defgw",
        r#""isDefaultGateway":true,"promiscMode":true,"#,
        r#""subnet":"10.73.0.0/24""#,
    );
    let not_gateway = conf(
        "nogw",
        r#""bridge":"cnbt-nogw","isGateway":false,"forceAddress":true,"#,
        r#""subnet":"10.74.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"10.74.0.254"}]"#,
    );
    let r = Rig::new(&[
        ("nodef.conf", &no_default),
        ("defgw.conf", &default_gw),
        ("nogw.conf", &not_gateway),
    ])
    .await;

    // No default route and no isDefaultGateway: no Gateway (Docker would add a default route
    // CNI does not), the other routes via their gw or the range's gateway.
    let v4 = r.pool(Some("nodef"), None, false);
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    let join = r.join(NET, "10.72.0.0/24").await;
    assert_eq!(join.gateway, None);
    let routes: Vec<_> = join
        .static_routes
        .iter()
        .map(|s| (s.destination.to_string(), s.next_hop.to_string()))
        .collect();
    assert_eq!(
        routes,
        [
            ("10.250.0.0/16".to_string(), "10.72.0.1".to_string()),
            ("192.168.9.0/24".to_string(), "10.72.0.254".to_string())
        ]
    );

    // isDefaultGateway: the gateway on the bridge and as the default route; promiscMode on.
    let r = Rig::new(&[("defgw.conf", &default_gw), ("nogw.conf", &not_gateway)]).await;
    let v4 = r.pool(Some("defgw"), None, false);
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    let spec = &r.bridge_specs()[0];
    assert_eq!(spec.addresses, vec!["10.73.0.1/24".parse().unwrap()]);
    assert!(spec.promisc);
    assert_eq!(
        r.join(NET, "10.73.0.0/24").await.gateway,
        Some(ip("10.73.0.1"))
    );
    assert!(r.export("defgw").is_default_gateway);

    // isGateway false: nothing on the bridge; the default route's gw is the Gateway.
    let v4 = r.pool(Some("nogw"), None, false);
    r.driver
        .create_network(&req(NET2, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    let spec = r.bridge_specs().pop().unwrap();
    assert!(spec.addresses.is_empty());
    assert!(spec.force_address);
    let addr = r
        .driver
        .ipam()
        .request_address("10.74.0.0/24", None, false)
        .unwrap();
    let ep2 = "82772f1927ddc2f6e682bae163a72db920187833a719f81f9c4b5918a40ab2a0";
    r.driver
        .create_endpoint(&EndpointSpec {
            network_id: NET2.into(),
            endpoint_id: ep2.into(),
            address: addr.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.driver.join(NET2, ep2).await.unwrap().gateway,
        Some(ip("10.74.0.254"))
    );
}

#[tokio::test]
async fn internal_keeps_the_config_but_drops_its_default_route_and_masquerade() {
    let r = Rig::new(&[]).await;
    let v4 = r.pool(Some("mybridge"), None, false);
    let mut request = req(NET, json!({}), vec![v4], vec![]);
    request
        .options
        .insert("com.docker.network.internal".into(), json!(true));
    r.driver.create_network(&request).await.unwrap();
    let join = r.join(NET, "10.15.20.0/24").await;
    assert_eq!(join.gateway, None);
    assert_eq!(join.static_routes.len(), 1);
    let e = r.export("mybridge");
    assert!(!e.ip_masq);
    assert_eq!(e.ipam.routes.len(), 1);
    assert!(!r.fw.networks()[0].masquerade);
}
