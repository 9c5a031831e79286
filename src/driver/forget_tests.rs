//! Networks and endpoints dockerd removed while cnibridge was down: forgotten completely, and
//! only on a clear answer from dockerd about what was known before the check began.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::*;
use crate::dockerd::{DockerNetworks, Presence};

const NET3: &str = "5c3f0e1a9d7b4c2e8f6a1b3d5e7f9a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e0f";

/// dockerd as the test describes it; networks it was not told about are "unreachable", and
/// so is everything for its first `down_for` questions (it is starting).
#[derive(Default)]
struct FakeDockerd {
    answers: HashMap<&'static str, Presence>,
    asked: Mutex<Vec<String>>,
    down_for: Mutex<usize>,
}

impl DockerNetworks for FakeDockerd {
    async fn presence(&self, network_id: &str) -> Result<Presence, String> {
        self.asked.lock().unwrap().push(network_id.to_string());
        let mut down = self.down_for.lock().unwrap();
        if *down > 0 {
            *down -= 1;
            return Err("dockerd is starting".to_string());
        }
        self.answers
            .get(network_id)
            .cloned()
            .ok_or_else(|| "dockerd is not reachable".to_string())
    }

    async fn subnets(&self) -> Result<BTreeSet<ipnet::IpNet>, String> {
        Err("not asked in these tests".to_string())
    }
}

fn present(endpoints: &[&str]) -> Presence {
    Presence::Present {
        endpoints: endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<BTreeSet<_>>(),
    }
}

/// Candidates as `Driver::known` gives them.
fn known(nets: &[(&str, &[&str])]) -> Known {
    nets.iter()
        .map(|(n, eps)| (n.to_string(), eps.iter().map(|e| e.to_string()).collect()))
        .collect()
}

/// A network made as Docker makes one: pool, gateway address, CreateNetwork.
pub(super) async fn network(r: &Rig, id: &str, subnet: &str, bridge: &str) -> String {
    let ipam = r.driver.ipam().clone();
    let grant = ipam
        .request_pool(&PoolRequest {
            address_space: "CniLocal".into(),
            pool: Some(subnet.parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    let gw = ipam.request_address(&grant.pool_id, None, true).unwrap();
    let mut req = net_req(id, json!({ "bridge": bridge }), false);
    req.ipv4[0].address_space = "CniLocal".into();
    req.ipv4[0].pool = subnet.into();
    req.ipv4[0].gateway = gw.to_string();
    r.driver.create_network(&req).await.unwrap();
    grant.pool_id
}

fn address_files(r: &Rig, subnet: &str) -> Vec<String> {
    let dir = r
        .dir
        .path()
        .join("data")
        .join(format!("cnibridge-{}", subnet.replace('/', "-")));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_network_dockerd_removed_goes_with_its_rules_bridge_pool_and_files() {
    let r = rig().await;
    let gone_pool = network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    let kept_pool = network(&r, NET2, "10.15.51.0/24", "cnbtf2").await;
    // An endpoint whose DeleteEndpoint was lost with the network.
    r.joined(NET, EP, "10.15.50.2/24").await;
    let dockerd = FakeDockerd {
        answers: HashMap::from([(NET, Presence::Removed), (NET2, present(&[]))]),
        ..Default::default()
    };

    let forgotten = r
        .driver
        .forget_removed(&dockerd, &r.driver.known().await)
        .await;

    assert_eq!(
        forgotten,
        Forgotten {
            networks: vec![NET.to_string()],
            ..Default::default()
        }
    );
    assert!(!r.fw.has_network(NET) && r.fw.has_network(NET2));
    assert!(
        r.dp.bridge("cnbtf1").is_none(),
        "the removed network's bridge"
    );
    assert!(r.dp.bridge("cnbtf2").is_some());
    assert!(
        r.dp.veth(&names::host_veth(EP)).is_none(),
        "the lost endpoint's veth"
    );
    let ipam = r.driver.ipam();
    assert!(ipam.pool(&gone_pool).is_none() && ipam.pool(&kept_pool).is_some());
    assert_eq!(address_files(&r, "10.15.50.0/24"), Vec::<String>::new());
    assert_eq!(address_files(&r, "10.15.51.0/24"), vec!["10.15.51.1"]);
    assert_eq!(r.driver.network_ids(), vec![NET2.to_string()]);

    // Forgotten for good: the next life neither re-creates nor re-installs it.
    r.driver.settle().await;
    let Rig { dir, driver, .. } = r;
    drop(driver);
    let r = rig_in(dir, RecordingDataplane::new(), RecordingFirewall::new()).await;
    assert_eq!(r.driver.network_ids(), vec![NET2.to_string()]);
    assert!(!r.fw.has_network(NET) && r.fw.has_network(NET2));
    assert!(r.dp.bridge("cnbtf1").is_none());
}

#[tokio::test]
async fn without_a_clear_answer_nothing_is_forgotten() {
    let r = rig().await;
    network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    network(&r, NET2, "10.15.51.0/24", "cnbtf2").await;
    let dockerd = FakeDockerd::default();
    let forgotten = r
        .driver
        .forget_removed(&dockerd, &known(&[(NET, &[]), (NET2, &[])]))
        .await;
    assert_eq!(
        forgotten,
        Forgotten {
            unanswered: true,
            ..Default::default()
        }
    );
    // dockerd is down: one question, not one per network.
    assert_eq!(dockerd.asked.lock().unwrap().len(), 1);
    assert!(r.fw.has_network(NET) && r.fw.has_network(NET2));
    assert_eq!(r.driver.network_ids().len(), 2);
}

#[tokio::test]
async fn only_networks_known_at_activation_are_asked_about() {
    let r = rig().await;
    network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    r.joined(NET, EP, "10.15.50.2/24").await;
    r.driver.note_activation().await;
    // Created right after Activate: dockerd may not have stored them yet.
    network(&r, NET2, "10.15.51.0/24", "cnbtf2").await;
    r.joined(NET, EP2, "10.15.50.3/24").await;
    let candidates = r.driver.next_activation().await;
    assert_eq!(candidates, known(&[(NET, &[EP])]));
    // Unknown ids (deleted through Docker meanwhile) are skipped without asking.
    let dockerd = FakeDockerd::default();
    let forgotten = r
        .driver
        .forget_removed(&dockerd, &known(&[(NET3, &[])]))
        .await;
    assert_eq!(forgotten, Forgotten::default());
    assert!(dockerd.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_endpoint_dockerd_removed_goes_with_its_ports_veth_and_address() {
    let r = rig().await;
    let pool = network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    let ipam = r.driver.ipam().clone();
    let mut eps = Vec::new();
    for ep in [EP, EP2] {
        let addr = ipam.request_address(&pool, None, false).unwrap();
        r.joined(NET, ep, &addr.to_string()).await;
        eps.push(addr);
    }
    // EP's container was removed while cnibridge was down; EP2's is still there.
    let dockerd = FakeDockerd {
        answers: HashMap::from([(NET, present(&[EP2]))]),
        ..Default::default()
    };
    let forgotten = r
        .driver
        .forget_removed(&dockerd, &r.driver.known().await)
        .await;
    assert_eq!(forgotten.endpoints, vec![(NET.to_string(), EP.to_string())]);
    assert!(forgotten.networks.is_empty());
    r.driver.settle().await;
    assert!(r.dp.veth(&names::host_veth(EP)).is_none());
    assert!(r.dp.veth(&names::host_veth(EP2)).is_some());
    assert!(!has_endpoint(&r, NET, EP).await && has_endpoint(&r, NET, EP2).await);
    let mut left = vec!["10.15.50.1".to_string(), eps[1].addr().to_string()];
    left.sort();
    assert_eq!(address_files(&r, "10.15.50.0/24"), left);
    // A second check finds nothing more to do.
    let again = r
        .driver
        .forget_removed(&dockerd, &known(&[(NET, &[EP, EP2])]))
        .await;
    assert_eq!(again, Forgotten::default());
}

#[tokio::test]
async fn an_address_handed_on_is_not_released_for_its_old_endpoint() {
    let r = rig().await;
    let pool = network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    let ipam = r.driver.ipam().clone();
    let addr = ipam.request_address(&pool, None, false).unwrap();
    r.joined(NET, EP, &addr.to_string()).await;
    // Docker released it after all, and another endpoint holds it now.
    ipam.release_address(&pool, addr.addr()).unwrap();
    let again = ipam
        .request_address(&pool, Some(addr.addr()), false)
        .unwrap();
    ipam.set_owner(
        &pool,
        again.addr(),
        &crate::ipam::Owner::endpoint(EP2, &crate::names::host_veth(EP2)),
    )
    .unwrap();
    let dockerd = FakeDockerd {
        answers: HashMap::from([(NET, present(&[EP2]))]),
        ..Default::default()
    };
    r.driver
        .forget_removed(&dockerd, &known(&[(NET, &[EP])]))
        .await;
    assert!(address_files(&r, "10.15.50.0/24").contains(&addr.addr().to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_dockerd_that_is_starting_is_asked_again_until_it_answers() {
    let r = Arc::new(rig().await);
    network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    network(&r, NET2, "10.15.51.0/24", "cnbtf2").await;
    let dockerd = Arc::new(FakeDockerd {
        answers: HashMap::from([(NET, Presence::Removed), (NET2, present(&[]))]),
        down_for: Mutex::new(3),
        ..Default::default()
    });
    let task = {
        let (r, d) = (r.clone(), dockerd.clone());
        let candidates = r.driver.known().await;
        tokio::spawn(async move { r.driver.forget_loop(&*d, candidates).await })
    };
    // Asked at 0, 1, 3 s (no answer), then at 7 s.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(r.driver.network_ids().len(), 2);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(r.driver.network_ids(), vec![NET2.to_string()]);
    assert_eq!(dockerd.asked.lock().unwrap().len(), 5);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dockerd_that_never_answers_is_asked_again_at_its_next_activation() {
    let r = Arc::new(rig().await);
    network(&r, NET, "10.15.50.0/24", "cnbtf1").await;
    let dockerd = Arc::new(FakeDockerd::default());
    let task = {
        let (r, d) = (r.clone(), dockerd.clone());
        let candidates = r.driver.known().await;
        tokio::spawn(async move { r.driver.forget_loop(&*d, candidates).await })
    };
    // 1 + 7 asks over 127 s, then silence: no timer keeps asking.
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    assert_eq!(dockerd.asked.lock().unwrap().len(), 8);
    r.driver.note_activation().await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert_eq!(dockerd.asked.lock().unwrap().len(), 9);
    assert_eq!(r.driver.network_ids(), vec![NET.to_string()]);
    task.abort();
}

/// Whether the driver still knows the endpoint.
async fn has_endpoint(r: &Rig, network_id: &str, endpoint_id: &str) -> bool {
    match r.driver.entry(network_id) {
        Some(e) => e.lock().await.endpoints.contains_key(endpoint_id),
        None => false,
    }
}
