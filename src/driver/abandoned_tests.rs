//! Abandoned `pending` addresses are released a grace period after start or an activation,
//! never earlier, and never one that was claimed or requested anew meanwhile.

use std::time::Duration;

use super::forget_tests::network;
use super::*;

fn file(r: &Rig, subnet: &str, addr: &str) -> Option<String> {
    let dir = r
        .dir
        .path()
        .join("data")
        .join(format!("cnibridge-{}", subnet.replace('/', "-")));
    std::fs::read_to_string(dir.join(addr)).ok()
}

#[tokio::test(start_paused = true)]
async fn pending_addresses_are_released_a_grace_period_after_start_and_activation() {
    let r = Arc::new(rig().await);
    let subnet = "10.15.60.0/24";
    let pool = network(&r, NET, subnet, "cnbta1").await;
    let ipam = r.driver.ipam().clone();
    // Left by an earlier life: RequestAddress without CreateEndpoint.
    let lost = ipam.request_address(&pool, None, false).unwrap();
    let claimed = ipam.request_address(&pool, None, false).unwrap();
    let grace = Duration::from_secs(120);
    let collector = {
        let r = r.clone();
        tokio::spawn(async move { r.driver.collect_abandoned_addresses(grace).await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    // A late CreateEndpoint still finds its file.
    r.joined(NET, EP, &claimed.to_string()).await;
    assert!(file(&r, subnet, &lost.addr().to_string()).is_some());
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(file(&r, subnet, &lost.addr().to_string()), None);
    assert!(file(&r, subnet, &claimed.addr().to_string())
        .unwrap()
        .starts_with(EP));
    assert!(file(&r, subnet, "10.15.60.1").is_some(), "gateway kept");

    // A request after start, never claimed: released only a grace period after the next
    // activation (dockerd restarted).
    let later = ipam.request_address(&pool, None, false).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(file(&r, subnet, &later.addr().to_string()).is_some());
    r.driver.note_activation().await;
    tokio::time::sleep(Duration::from_secs(119)).await;
    assert!(file(&r, subnet, &later.addr().to_string()).is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(file(&r, subnet, &later.addr().to_string()), None);
    collector.abort();
}
