//! Concurrent CreateNetworks, interleaved on purpose: the first create is paused inside the
//! dataplane (after its bridge check) while the second runs.

use super::*;

fn bridge_creations(r: &Rig) -> usize {
    r.dp.calls()
        .iter()
        .filter(|c| matches!(c, DataplaneCall::EnsureBridge(_)))
        .count()
}

/// A regression that deadlocks fails instead of hanging the suite.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), f)
        .await
        .expect("concurrent creates did not finish")
}

#[tokio::test]
async fn two_networks_cannot_both_take_one_bridge() {
    let r = rig().await;
    let gate = r.dp.gate_next_bridge();
    let first = net_req(NET, json!({"bridge": "cnbt0"}), false);
    let second = net_req(NET2, json!({"bridge": "cnbt0"}), false);
    let both = async {
        tokio::join!(r.driver.create_network(&first), async {
            // The first create has passed its bridge check and is not in the table yet.
            gate.entered().await;
            let b = r.driver.create_network(&second).await;
            gate.release();
            b
        })
    };
    let (a, b) = within(both).await;
    a.unwrap();
    let e = b.unwrap_err().to_string();
    assert!(
        e.contains("bridge cnbt0 is already used by network 791e17b650f7"),
        "{e}"
    );
    assert_eq!(bridge_creations(&r), 1);
    assert_eq!(r.driver.network_ids(), vec![NET.to_string()]);
    assert!(!r.fw.has_network(NET2));

    // The reservation is gone with the winner in the table: a third create still sees it.
    let e = r.driver.create_network(&second).await.unwrap_err();
    assert!(e
        .to_string()
        .contains("already used by network 791e17b650f7"));
}

#[tokio::test]
async fn a_resent_create_waits_for_the_original_and_makes_no_second_bridge() {
    let r = rig().await;
    let gate = r.dp.gate_next_bridge();
    let req = net_req(NET, json!({"bridge": "cnbt0"}), false);
    let (a, b, ()) = within(async {
        tokio::join!(
            r.driver.create_network(&req),
            // Whenever it starts, the re-sent create waits for the original's turn.
            r.driver.create_network(&req),
            async {
                gate.entered().await;
                // Release only once the re-sent create waits for its turn (the original holds
                // it), so it cannot have run ahead.
                while r.driver.creations.contenders(NET) < 2 {
                    tokio::task::yield_now().await;
                }
                gate.release();
            }
        )
    })
    .await;
    a.unwrap();
    b.unwrap();
    assert_eq!(bridge_creations(&r), 1);
    assert_eq!(r.dp.bridges(), vec!["cnbt0".to_string()]);
    assert_eq!(r.driver.network_ids(), vec![NET.to_string()]);
    assert_eq!(r.driver.creations.contenders(NET), 0);
}

#[tokio::test]
async fn a_failed_create_frees_its_bridge_for_the_next() {
    let r = rig().await;
    r.dp.fail_nth_call(1);
    let first = net_req(NET, json!({"bridge": "cnbt0"}), false);
    assert!(r.driver.create_network(&first).await.is_err());
    let second = net_req(NET2, json!({"bridge": "cnbt0"}), false);
    r.driver.create_network(&second).await.unwrap();
    assert_eq!(r.driver.network_ids(), vec![NET2.to_string()]);
}
