//! Pools no network took (a RequestPool whose answer was lost) are released after the grace
//! period; pools of networks, cnibridge's or another driver's, are not.

use std::collections::BTreeSet;
use std::time::Duration;

use ipnet::IpNet;

use super::forget_tests::network;
use super::*;
use crate::dockerd::{DockerNetworks, Presence};

/// A dockerd whose networks have `subnets`, or that does not answer (`None`).
struct Subnets(Option<Vec<&'static str>>);

impl DockerNetworks for Subnets {
    async fn presence(&self, _: &str) -> Result<Presence, String> {
        Err("not asked in these tests".to_string())
    }

    async fn subnets(&self) -> Result<BTreeSet<IpNet>, String> {
        match &self.0 {
            Some(s) => Ok(s.iter().map(|s| s.parse().unwrap()).collect()),
            None => Err("dockerd is not reachable".to_string()),
        }
    }
}

fn pool(r: &Rig, subnet: &str) -> String {
    r.driver
        .ipam()
        .request_pool(&PoolRequest {
            address_space: "CniLocal".into(),
            pool: Some(subnet.parse().unwrap()),
            ..Default::default()
        })
        .unwrap()
        .pool_id
}

fn pool_ids(r: &Rig) -> Vec<String> {
    let mut ids: Vec<String> = r.driver.ipam().pools().into_iter().map(|p| p.id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_pool_no_network_took_is_released_and_the_retry_then_succeeds() {
    let r = rig().await;
    let taken = network(&r, NET, "10.15.40.0/24", "cnbt0").await;
    let lost = pool(&r, "10.15.41.0/24");
    // A network of another driver on cnibridge's IPAM: dockerd has it, no CreateNetwork came.
    let foreign = pool(&r, "10.15.42.0/24");
    let dockerd = Subnets(Some(vec!["10.15.40.0/24", "10.15.42.0/24"]));

    let seen = r.driver.unbound_pools();
    let mut unbound: Vec<String> = seen.iter().map(|p| p.id.clone()).collect();
    unbound.sort();
    assert_eq!(unbound, vec![lost.clone(), foreign.clone()]);

    // dockerd unreachable: nothing goes.
    let none = r.driver.release_unused_pools(&Subnets(None), &seen).await;
    assert!(none.is_empty());
    assert_eq!(pool_ids(&r).len(), 3);

    assert_eq!(
        r.driver.release_unused_pools(&dockerd, &seen).await,
        vec![lost.clone()]
    );
    let mut want = vec![taken.clone(), foreign.clone()];
    want.sort();
    assert_eq!(pool_ids(&r), want);
    // dockerd's retry of the lost RequestPool now gets the subnet.
    assert_eq!(pool(&r, "10.15.41.0/24"), lost);
}

#[tokio::test]
async fn a_pool_taken_or_requested_anew_during_the_grace_is_kept() {
    let r = rig().await;
    let first = pool(&r, "10.15.40.0/24");
    let seen = r.driver.unbound_pools();
    // The network arrives during the grace period.
    r.driver.ipam().bind_network(&first, Some(NET)).unwrap();
    let dockerd = Subnets(Some(vec![]));
    assert!(r
        .driver
        .release_unused_pools(&dockerd, &seen)
        .await
        .is_empty());
    assert_eq!(pool_ids(&r), vec![first]);
}

#[tokio::test(start_paused = true)]
async fn the_loop_releases_a_grace_period_after_start() {
    let r = Arc::new(rig().await);
    let lost = pool(&r, "10.15.41.0/24");
    let task = {
        let r = r.clone();
        tokio::spawn(async move {
            r.driver
                .collect_unused_pools(&Subnets(Some(vec![])), Duration::from_secs(120))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pool_ids(&r), vec![lost]);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(pool_ids(&r).is_empty());
    task.abort();
}
