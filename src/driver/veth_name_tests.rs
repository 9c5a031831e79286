//! Endpoints whose ids share their first 12 characters (the part the host veth name carries):
//! each gets a veth of its own, across restarts and background deletions.

use super::*;

/// EP with the characters after the 12th changed.
const TWIN: &str = "9dbfb9b7a99cffffc089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
const TRIPLET: &str = "9dbfb9b7a99c0000c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";

fn host_veth_of(r: &Rig, ep: &str) -> String {
    let recs: Vec<EndpointRecord> = r.driver.state.load_all(ENDPOINTS).unwrap();
    recs.into_iter().find(|e| e.id == ep).unwrap().host_veth
}

#[tokio::test]
async fn endpoints_sharing_12_characters_get_veths_of_their_own() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    r.joined(NET, EP, "10.15.40.2/24").await;
    r.joined(NET, TWIN, "10.15.40.3/24").await;
    let (first, twin) = (host_veth_of(&r, EP), host_veth_of(&r, TWIN));
    assert_eq!(first, names::host_veth(EP));
    assert_ne!(twin, first);
    assert_eq!(r.dp.veths().len(), 2, "{:?}", r.dp.veths());
    let join = r.driver.join(NET, TWIN).await.unwrap();
    assert_eq!(Some(join.src_name), names::peer_of_host_veth(&twin));

    // A restart keeps each name with its endpoint.
    let r = r.restarted().await;
    // A third twin never takes the name another endpoint holds.
    r.driver.delete_endpoint(NET, EP).await.unwrap();
    r.joined(NET, TRIPLET, "10.15.40.4/24").await;
    let third = host_veth_of(&r, TRIPLET);
    assert!(third != twin, "{third}");
    r.driver.settle().await;
    let mut left = r.dp.veths();
    left.sort();
    let mut want = vec![twin.clone(), third.clone()];
    want.sort();
    assert_eq!(left, want, "the first endpoint's veth alone is gone");

    for ep in [TWIN, TRIPLET] {
        r.driver.delete_endpoint(NET, ep).await.unwrap();
    }
    r.driver.delete_network(NET).await.unwrap();
    assert!(r.dp.veths().is_empty() && r.dp.bridges().is_empty());
}
