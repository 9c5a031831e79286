//! The router against a driver on recording fakes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use tower::ServiceExt;

use super::router;
use crate::dataplane::testing::RecordingDataplane;
use crate::driver::Driver;
use crate::firewall::testing::RecordingFirewall;
use crate::ipam::{Ipam, IpamConfig};
use crate::state::StateDir;

const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";

/// dockerd hangs up (hyper drops the handler's future) while CreateNetwork waits inside the
/// dataplane: the operation still runs to its end, so the network is complete, not half-made.
#[tokio::test]
async fn a_dropped_request_still_completes_its_operation() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
        cni_conf_dir: dir.path().join("confs"),
    })
    .unwrap();
    let (dp, fw) = (RecordingDataplane::new(), RecordingFirewall::new());
    let driver = Arc::new(
        Driver::open(dp.clone(), fw.clone(), ipam, state)
            .await
            .unwrap(),
    );
    let gate = dp.gate_next_bridge();
    let body = json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"bridge": "cnbt0"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.15.40.0/24", "Gateway": "10.15.40.1/24"}],
        "IPv6Data": []
    });
    let request = Request::post("/NetworkDriver.CreateNetwork")
        .body(Body::from(body.to_string()))
        .unwrap();
    let call = router(driver.clone()).oneshot(request);
    tokio::select! {
        r = call => panic!("answered while the bridge step was held: {r:?}"),
        () = gate.entered() => {}
    }
    // The request future is gone; let the bridge step finish.
    gate.release();
    tokio::time::timeout(Duration::from_secs(20), async {
        while driver.network_ids().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the dropped CreateNetwork did not finish");
    assert_eq!(dp.bridges(), ["cnbt0"]);
    assert!(fw.has_network(NET));
    assert!(
        dir.path()
            .join("state/networks")
            .read_dir()
            .unwrap()
            .count()
            > 0
    );
}

/// Only POST is the protocol: a GET carrying a CreateNetwork body is refused with an `{"Err"}`
/// and creates nothing.
#[tokio::test]
async fn any_verb_but_post_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
        cni_conf_dir: dir.path().join("confs"),
    })
    .unwrap();
    let (dp, fw) = (RecordingDataplane::new(), RecordingFirewall::new());
    let driver = Arc::new(
        Driver::open(dp.clone(), fw.clone(), ipam, state)
            .await
            .unwrap(),
    );
    let body = json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"bridge": "cnbt0"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.15.40.0/24", "Gateway": "10.15.40.1/24"}],
        "IPv6Data": []
    });
    for verb in ["GET", "PUT", "DELETE"] {
        let request = Request::builder()
            .method(verb)
            .uri("/NetworkDriver.CreateNetwork")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = router(driver.clone()).oneshot(request).await.unwrap();
        assert_eq!(r.status(), 405, "{verb}");
        assert_eq!(r.headers()["allow"], "POST", "{verb}");
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let e = v["Err"].as_str().unwrap_or_else(|| panic!("{verb}: {v}"));
        assert!(e.contains("POST only"), "{verb}: {e}");
    }
    assert!(driver.network_ids().is_empty());
    assert!(dp.bridges().is_empty());
    assert!(!fw.has_network(NET));
}

/// Beyond the in-flight bound a request is refused at once with an `{"Err"}`, not queued; the
/// held one completes and the next is served again.
#[tokio::test]
async fn requests_beyond_the_in_flight_bound_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
        cni_conf_dir: dir.path().join("confs"),
    })
    .unwrap();
    let (dp, fw) = (RecordingDataplane::new(), RecordingFirewall::new());
    let driver = Arc::new(
        Driver::open(dp.clone(), fw.clone(), ipam, state)
            .await
            .unwrap(),
    );
    let app = super::router_with(driver.clone(), 1);
    let gate = dp.gate_next_bridge();
    let body = json!({
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"bridge": "cnbt0"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.15.40.0/24", "Gateway": "10.15.40.1/24"}],
        "IPv6Data": []
    });
    let create = Request::post("/NetworkDriver.CreateNetwork")
        .body(Body::from(body.to_string()))
        .unwrap();
    let held = tokio::spawn(app.clone().oneshot(create));
    gate.entered().await;
    let activate = Request::post("/Plugin.Activate")
        .body(Body::empty())
        .unwrap();
    let r = app.clone().oneshot(activate).await.unwrap();
    assert_eq!(r.status(), 503);
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        v["Err"]
            .as_str()
            .unwrap()
            .contains("already handling 1 requests"),
        "{v}"
    );
    gate.release();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let activate = Request::post("/Plugin.Activate")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(activate).await.unwrap().status(), 200);
}
