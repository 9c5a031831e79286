//! Networks from CNI configs that chain plugins: what each plugin's keys do to the firewall
//! rules, the veth and the shaping the driver asks for.

use super::{req, Rig, NET};
use crate::dataplane::testing::DataplaneCall;
use crate::dataplane::{PeerTuning, TokenBucket};
use serde_json::json;

/// A conflist named `name` on bridge `cnbtc0` / 10.73.0.0/24 chaining `plugins`.
fn chained(name: &str, plugins: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge","bridge":"cnbtc0","isGateway":true,"ipam":{{"type":"host-local","subnet":"10.73.0.0/24"}}}},{plugins}]}}"#
    )
}

async fn network_of(plugins: &str) -> Rig {
    let r = Rig::new(&[("chain.conflist", &chained("chain", plugins))]).await;
    let v4 = r.pool(Some("chain"), None, false);
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    r
}

#[tokio::test]
async fn firewall_ingress_policies_map_to_isolation_and_icc() {
    for (policy, isolate, icc) in [
        ("open", false, true),
        ("same-bridge", true, true),
        ("isolated", true, false),
    ] {
        let r = network_of(&format!(
            r#"{{"type":"firewall","ingressPolicy":"{policy}","iptablesAdminChainName":"OPS"}}"#
        ))
        .await;
        let rules = &r.fw.networks()[0];
        assert_eq!((rules.isolate, rules.icc), (isolate, icc), "{policy}");
        assert_eq!(rules.admin_chain.as_deref(), Some("OPS"), "{policy}");
    }
    // No firewall plugin: Docker's isolation, no admin chain.
    let r = network_of(r#"{"type":"loopback"}"#).await;
    let rules = &r.fw.networks()[0];
    assert!(rules.isolate && rules.icc && rules.admin_chain.is_none());
}

#[tokio::test]
async fn portmap_keys_reach_the_port_rules() {
    let r = network_of(
        r#"{"type":"portmap","capabilities":{"portMappings":true},"snat":false,"masqAll":true,
            "markMasqBit":5,"conditionsV4":["-s","10.0.0.0/8"]}"#,
    )
    .await;
    let p = &r.fw.networks()[0].port_options;
    assert!(!p.snat && p.masq_all);
    assert_eq!(p.mark_masq_bit, 5);
    assert_eq!(p.conditions_v4, ["-s", "10.0.0.0/8"]);
}

#[tokio::test]
async fn tuning_and_bandwidth_reach_the_veth_and_the_shaping() {
    let r = network_of(
        r#"{"type":"tuning","mac":"02:42:0a:49:00:09","mtu":1400,"promisc":true,"allmulti":true,"txQLen":500},
           {"type":"bandwidth","ingressRate":8000000,"ingressBurst":80000,"egressRate":4000000,"egressBurst":40000}"#,
    )
    .await;
    r.join(NET, "10.73.0.0/24").await;
    let calls = r.dp.calls();
    let veth = calls
        .iter()
        .find_map(|c| match c {
            DataplaneCall::CreateVeth(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(veth.peer_mac, Some([0x02, 0x42, 0x0a, 0x49, 0x00, 0x09]));
    assert_eq!(
        veth.peer_tuning,
        PeerTuning {
            mtu: Some(1400),
            promisc: Some(true),
            allmulti: Some(true),
            tx_qlen: Some(500),
        }
    );
    let shaping = calls
        .iter()
        .find_map(|c| match c {
            DataplaneCall::SetShaping(host, ifb, s) => Some((host.clone(), ifb.clone(), *s)),
            _ => None,
        })
        .unwrap();
    assert_eq!(shaping.0, veth.host_name);
    assert!(shaping.1.starts_with("bcb"));
    assert_eq!(
        (shaping.2.ingress, shaping.2.egress),
        (
            Some(TokenBucket {
                rate: 8_000_000,
                burst: 80_000
            }),
            Some(TokenBucket {
                rate: 4_000_000,
                burst: 40_000
            })
        )
    );
}
