//! State writes run on the blocking pool: a held write of one request leaves the async
//! worker (a test runtime has just one) free for the others.

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::state::testing::StateOp;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_held_network_record_write_does_not_stall_other_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    // Hold the write of NET's record (on the thread doing it) until the test says go.
    let state = StateDir::open(dir.path().join("state"))
        .unwrap()
        .with_hook(move |op, kind, id| {
            if op == StateOp::Write && kind == NETWORKS && id == NET {
                let _ = entered_tx.send(());
                go_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(WAIT)
                    .map_err(std::io::Error::other)?;
            }
            Ok(())
        });
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
        cni_conf_dir: dir.path().join("confs"),
    })
    .unwrap();
    let (dp, fw) = (RecordingDataplane::new(), RecordingFirewall::new());
    let driver = Driver::open(dp.clone(), fw.clone(), ipam, state)
        .await
        .unwrap();
    let held = net_req(NET, json!({"bridge": "cnbt0"}), false);
    let mut other = net_req(NET2, json!({"bridge": "cnbt1"}), false);
    other.ipv4[0].pool = "10.15.41.0/24".into();
    other.ipv4[0].gateway = "10.15.41.1/24".into();
    let (a, b) = tokio::join!(driver.create_network(&held), async {
        entered_rx.recv().await.unwrap();
        let b = tokio::time::timeout(WAIT, async {
            driver.create_network(&other).await?;
            driver
                .create_endpoint(&ep_req(NET2, EP, "10.15.41.2/24"))
                .await?;
            driver.join(NET2, EP).await
        })
        .await;
        go_tx.send(()).unwrap();
        b
    });
    b.expect("requests waited for another network's record write")
        .unwrap();
    a.unwrap();
    let mut ids = driver.network_ids();
    ids.sort();
    let mut want = vec![NET.to_string(), NET2.to_string()];
    want.sort();
    assert_eq!(ids, want);
}
