//! Each operation's plan failed at every step in turn, on a fresh driver each time: nothing
//! the operation made may stay, and the same request succeeds afterwards. The step lists are
//! pinned, so a step added later is seen here (and gets its undo checked).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::*;
use crate::driver::plan::testing::{fail_at, record, StepRef};
use crate::driver::ports::PORTMAP;

/// `-p 8080:80 -p 53/udp` (the second picks a host port).
fn bindings() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        PORTMAP.into(),
        json!([
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}
        ]),
    );
    m
}

/// A rig with a dual-stack pair of cnibridge pools (gateways requested, as dockerd does) and
/// the CreateNetwork request using them.
async fn pooled() -> (Rig, NetworkSpec, Vec<String>) {
    let r = rig().await;
    let ipam = r.driver.ipam().clone();
    let mut req = net_req(NET, json!({"bridge": "cnbt0"}), false);
    let mut pools = Vec::new();
    for (subnet, v6) in [("10.15.50.0/24", false), ("fd00:15:50::/64", true)] {
        let grant = ipam
            .request_pool(&PoolRequest {
                address_space: "CniLocal".into(),
                pool: Some(subnet.parse().unwrap()),
                v6,
                ..Default::default()
            })
            .unwrap();
        let gw = ipam.request_address(&grant.pool_id, None, true).unwrap();
        let fam = IpamFamily {
            address_space: "CniLocal".into(),
            pool: subnet.into(),
            gateway: gw.to_string(),
            aux_addresses: Default::default(),
        };
        if v6 {
            req.ipv6 = vec![fam];
        } else {
            req.ipv4 = vec![fam];
        }
        pools.push(grant.pool_id);
    }
    (r, req, pools)
}

/// [`pooled`] with the network created and an address requested for [`EP`].
async fn with_network() -> (Rig, EndpointSpec) {
    let (r, req, pools) = pooled().await;
    r.driver.create_network(&req).await.unwrap();
    let addr = r
        .driver
        .ipam()
        .request_address(&pools[0], None, false)
        .unwrap();
    (r, ep_req(NET, EP, &addr.to_string()))
}

/// [`with_network`] with [`EP`] created.
async fn with_endpoint() -> Rig {
    let (r, ep) = with_network().await;
    r.driver.create_endpoint(&ep).await.unwrap();
    r
}

/// [`with_endpoint`] joined with [`bindings`].
async fn joined_with_bindings() -> Rig {
    let r = with_endpoint().await;
    r.driver
        .join_with_options(NET, EP, &bindings())
        .await
        .unwrap();
    r
}

fn steps_of(plan: &str, steps: &[StepRef]) -> Vec<&'static str> {
    steps
        .iter()
        .filter(|s| s.plan == plan)
        .map(|s| s.step)
        .collect()
}

/// The ids of the records of a kind on disk.
fn records(r: &Rig, kind: &str) -> Vec<String> {
    files(&r.dir.path().join("state").join(kind))
        .into_keys()
        .filter(|n| n.ends_with(".json"))
        .collect()
}

/// Every file under `dir` (relative path → content).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn export_files(r: &Rig) -> Vec<String> {
    files(&r.dir.path().join("state").join(DEFAULT_EXPORT_SUBDIR))
        .into_keys()
        .collect()
}

fn injected(res: Result<impl std::fmt::Debug, DriverError>, step: StepRef) {
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains(&format!("injected failure at step {:?}", step.step)),
        "{step:?}: {e}"
    );
}

#[tokio::test]
async fn create_network_fails_at_each_step_and_leaves_nothing() {
    let (r, req, _) = pooled().await;
    let (res, steps) = record(r.driver.create_network(&req)).await;
    res.unwrap();
    assert_eq!(
        steps_of("CreateNetwork", &steps),
        [
            "ensure bridge",
            "add firewall network",
            "bind IPv4 pool",
            "bind IPv6 pool",
            "export",
            "write record"
        ]
    );
    // What a success leaves, so the checks below can see it go.
    assert_eq!(r.dp.bridges(), ["cnbt0"]);
    assert!(r.fw.has_network(NET));
    assert_eq!(records(&r, NETWORKS).len(), 1);
    assert_eq!(export_files(&r).len(), 1);

    for step in steps {
        let (r, req, pools) = pooled().await;
        let (res, _) = fail_at(step, r.driver.create_network(&req)).await;
        injected(res, step);
        assert!(r.dp.bridges().is_empty(), "{step:?}: bridge left");
        assert!(r.fw.networks().is_empty(), "{step:?}: firewall rules left");
        assert!(records(&r, NETWORKS).is_empty(), "{step:?}: record left");
        assert!(export_files(&r).is_empty(), "{step:?}: export left");
        for p in &pools {
            let pool = r.driver.ipam().pool(p).unwrap();
            assert_eq!(pool.network_id, None, "{step:?}: pool {p} left bound");
        }
        assert!(r.driver.network_ids().is_empty(), "{step:?}");
        // The creation lock and the bridge name were given back.
        r.driver.create_network(&req).await.unwrap();
        assert_eq!(r.dp.bridges(), ["cnbt0"]);
    }
}

#[tokio::test]
async fn create_endpoint_fails_at_each_step_and_leaves_nothing() {
    let (r, ep) = with_network().await;
    let (res, steps) = record(r.driver.create_endpoint(&ep)).await;
    res.unwrap();
    assert_eq!(
        steps_of("CreateEndpoint", &steps),
        ["name address files", "write record"]
    );
    assert_eq!(records(&r, ENDPOINTS).len(), 1);

    for step in steps {
        let (r, ep) = with_network().await;
        let data = r.dir.path().join("data");
        let before = files(&data);
        let (res, _) = fail_at(step, r.driver.create_endpoint(&ep)).await;
        injected(res, step);
        assert!(records(&r, ENDPOINTS).is_empty(), "{step:?}: record left");
        assert_eq!(
            r.driver.known().await[NET],
            Vec::<String>::new(),
            "{step:?}"
        );
        // The address stays held (dockerd's ReleaseAddress frees it); only its label may
        // have changed, and not before the step that names it ran.
        let after = files(&data);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{step:?}"
        );
        if step.step == "name address files" {
            assert_eq!(before, after, "{step:?}");
        }
        r.driver.create_endpoint(&ep).await.unwrap();
        assert_eq!(records(&r, ENDPOINTS).len(), 1);
    }
}

#[tokio::test]
async fn join_fails_at_each_step_and_leaves_nothing() {
    let r = with_endpoint().await;
    let (res, steps) = record(r.driver.join_with_options(NET, EP, &bindings())).await;
    res.unwrap();
    assert_eq!(
        steps_of("Join", &steps),
        ["remember port bindings", "set sysctls", "create veth"]
    );
    assert_eq!(r.dp.veths().len(), 1);

    for step in steps {
        let r = with_endpoint().await;
        let (res, _) = fail_at(step, r.driver.join_with_options(NET, EP, &bindings())).await;
        injected(res, step);
        assert!(r.dp.veths().is_empty(), "{step:?}: veth left");
        let entry = r.driver.entry(NET).unwrap();
        assert!(
            entry.lock().await.requested.is_empty(),
            "{step:?}: bindings remembered"
        );
        r.driver
            .join_with_options(NET, EP, &bindings())
            .await
            .unwrap();
        assert_eq!(r.dp.veths().len(), 1);
    }
}

#[tokio::test]
async fn publish_fails_at_each_step_and_leaves_nothing() {
    let r = joined_with_bindings().await;
    let (res, steps) = record(r.driver.program_external_connectivity(NET, EP, &bindings())).await;
    res.unwrap();
    assert_eq!(
        steps_of("Publish", &steps),
        [
            "reserve host ports",
            "add firewall ports",
            "set hairpin",
            "write record"
        ]
    );
    assert!(r.fw.ports_of(NET, EP).is_some());

    for step in steps {
        let r = joined_with_bindings().await;
        let on_disk: Vec<EndpointRecord> = r.driver.state.load_all(ENDPOINTS).unwrap();
        let (res, _) = fail_at(
            step,
            r.driver.program_external_connectivity(NET, EP, &bindings()),
        )
        .await;
        injected(res, step);
        assert!(r.driver.port_table().is_empty(), "{step:?}: ports reserved");
        assert!(r.fw.ports().is_empty(), "{step:?}: firewall ports left");
        let now: Vec<EndpointRecord> = r.driver.state.load_all(ENDPOINTS).unwrap();
        assert_eq!(now, on_disk, "{step:?}: record changed");
        assert!(now.iter().all(|ep| ep.ports.is_none()), "{step:?}");
        let entry = r.driver.entry(NET).unwrap();
        assert!(entry.lock().await.endpoints[EP].ports.is_none(), "{step:?}");
        r.driver
            .program_external_connectivity(NET, EP, &bindings())
            .await
            .unwrap();
        assert!(r.fw.ports_of(NET, EP).is_some());
    }
}
