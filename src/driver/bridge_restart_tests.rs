//! What a network gives back and what a restart collects: borrowed bridges as they were,
//! veths and ifbs of forgotten endpoints, endpoints whose record a power loss emptied.

use super::*;

#[tokio::test]
async fn an_adopted_bridge_is_never_deleted() {
    let dp = RecordingDataplane::new();
    dp.insert_bridge(
        "cnbt0",
        FakeBridge {
            mtu: None,
            addresses: vec![],
        },
    );
    let r = rig_in(tempfile::tempdir().unwrap(), dp, RecordingFirewall::new()).await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    r.driver.delete_network(NET).await.unwrap();
    assert_eq!(r.dp.bridges(), vec!["cnbt0".to_string()]);
    // Issue 12 (3): and it is given back without the network's gateway.
    assert_eq!(r.dp.bridge("cnbt0").unwrap().addresses, vec![]);
}

/// Issue 12 (3): the address `forceAddress` took off a borrowed bridge is back after
/// DeleteNetwork (also after a restart in between), and the gateway is gone.
#[tokio::test]
async fn a_borrowed_bridge_gets_back_what_force_address_removed() {
    let dp = RecordingDataplane::new();
    let own: ipnet::IpNet = "10.9.9.1/24".parse().unwrap();
    dp.insert_bridge(
        "cnbt0",
        FakeBridge {
            mtu: None,
            addresses: vec![own],
        },
    );
    let r = rig_in(tempfile::tempdir().unwrap(), dp, RecordingFirewall::new()).await;
    let opts = json!({"bridge": "cnbt0", "forceAddress": "true"});
    r.driver
        .create_network(&net_req(NET, opts, false))
        .await
        .unwrap();
    let gw: ipnet::IpNet = "10.15.40.1/24".parse().unwrap();
    assert_eq!(r.dp.bridge("cnbt0").unwrap().addresses, vec![gw]);
    let r = r.restarted().await;
    r.driver.delete_network(NET).await.unwrap();
    assert_eq!(r.dp.bridge("cnbt0").unwrap().addresses, vec![own]);
}

#[tokio::test]
async fn a_veth_whose_endpoint_was_forgotten_is_collected_at_start() {
    let r = rig().await;
    // Shaped, so each endpoint also has an ifb, which is no bridge port.
    let shaped = json!({"bridge": "cnbt0", "cni.bandwidth.egressRate": "8000000",
        "cni.bandwidth.egressBurst": "80000"});
    r.driver
        .create_network(&net_req(NET, shaped, false))
        .await
        .unwrap();
    for ep in [EP, EP2] {
        r.joined(NET, ep, "").await;
    }
    // A crash right after the record of EP2 was removed, before its veth was deleted.
    std::fs::remove_file(r.dir.path().join(format!("state/endpoints/{EP2}.json"))).unwrap();
    assert_eq!(r.dp.ifbs().len(), 2);
    let r = r.restarted().await;
    // Collected once serving has started, not before.
    assert_eq!(r.dp.veths().len(), 2);
    r.driver.collect_orphans().await;
    assert_eq!(r.dp.veths(), vec![names::host_veth(EP)]);
    assert_eq!(r.dp.ifbs(), vec![names::ifb(EP)]);
}

/// A power loss left an endpoint's record empty: the daemon starts, keeps the file aside, and
/// collects the veth the record described, as for a forgotten endpoint.
#[tokio::test]
async fn an_empty_endpoint_record_is_set_aside_and_its_veth_collected() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    for ep in [EP, EP2] {
        r.joined(NET, ep, "").await;
    }
    let record = r.dir.path().join(format!("state/endpoints/{EP2}.json"));
    std::fs::write(&record, b"").unwrap();
    let r = r.restarted().await;
    r.driver.collect_orphans().await;
    assert_eq!(r.dp.veths(), vec![names::host_veth(EP)]);
    assert!(!record.exists());
    assert!(r
        .dir
        .path()
        .join(format!("state/corrupt/endpoints/{EP2}.json"))
        .is_file());
    // The network serves on: EP leaves and goes as usual.
    r.driver.leave(NET, EP).await.unwrap();
    r.driver.delete_endpoint(NET, EP).await.unwrap();
}
