//! Driver logic against the strict recording fakes: what reaches the kernel and the firewall,
//! in which order, and what is undone when a step fails.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::dataplane::testing::{DataplaneCall, FakeBridge, RecordingDataplane};
use crate::dataplane::DataplaneError;
use crate::firewall::testing::{FirewallCall, RecordingFirewall};
use crate::ipam::{IpamConfig, PoolRequest};

#[path = "abandoned_tests.rs"]
mod abandoned_tests;
#[path = "blocking_tests.rs"]
mod blocking_tests;
#[path = "bridge_restart_tests.rs"]
mod bridge_restart_tests;
#[path = "create_tests.rs"]
mod create_tests;
#[path = "forget_tests.rs"]
mod forget_tests;
#[path = "plan_ops_tests.rs"]
mod plan_ops_tests;
#[path = "unused_pools_tests.rs"]
mod unused_pools_tests;
#[path = "veth_name_tests.rs"]
mod veth_name_tests;

const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";
const NET2: &str = "43d84917b6f05e49005b00f0f3fec8d7e0d748efa3afc36318a422d774edf169";
const EP: &str = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
const EP2: &str = "82772f1927ddc2f6e682bae163a72db920187833a719f81f9c4b5918a40ab2a0";

/// Every host port is free and the ephemeral range is small.
pub(super) struct FreeHost;

impl ports::HostPorts for FreeHost {
    fn ephemeral_range(&self) -> (u16, u16) {
        (40000, 40010)
    }
    fn is_free(&self, _: crate::firewall::Proto, _: Option<std::net::IpAddr>, _: u16) -> bool {
        true
    }
}

struct Rig {
    dir: tempfile::TempDir,
    dp: RecordingDataplane,
    fw: RecordingFirewall,
    driver: Driver<RecordingDataplane, RecordingFirewall>,
}

async fn rig_in(dir: tempfile::TempDir, dp: RecordingDataplane, fw: RecordingFirewall) -> Rig {
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
        cni_conf_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs"),
    })
    .unwrap();
    // Not the real host's sockets: tests publishing the same port would see each other's trial
    // binds, and whatever the host runs would fail them.
    let driver = Driver::open(dp.clone(), fw.clone(), ipam, state)
        .await
        .unwrap()
        .with_host_ports(FreeHost);
    Rig {
        dir,
        dp,
        fw,
        driver,
    }
}

impl Rig {
    /// The same state dir, kernel and firewall, served by a new driver: a restart.
    async fn restarted(self) -> Rig {
        let Rig {
            dir,
            dp,
            fw,
            driver,
        } = self;
        drop(driver);
        rig_in(dir, dp, fw).await
    }

    /// CreateEndpoint then Join, as `docker run` does.
    async fn joined(&self, net: &str, ep: &str, addr: &str) {
        self.driver
            .create_endpoint(&ep_req(net, ep, addr))
            .await
            .unwrap();
        self.driver.join(net, ep).await.unwrap();
    }
}

async fn rig() -> Rig {
    rig_in(
        tempfile::tempdir().unwrap(),
        RecordingDataplane::new(),
        RecordingFirewall::new(),
    )
    .await
}

fn net_req(id: &str, generic: serde_json::Value, internal: bool) -> NetworkSpec {
    let mut options = serde_json::Map::new();
    options.insert("com.docker.network.generic".into(), generic);
    if internal {
        options.insert("com.docker.network.internal".into(), json!(true));
    }
    NetworkSpec {
        network_id: id.into(),
        options,
        ipv4: vec![IpamFamily {
            address_space: "LocalDefault".into(),
            pool: "10.15.40.0/24".into(),
            gateway: "10.15.40.1/24".into(),
            aux_addresses: Default::default(),
        }],
        ipv6: vec![],
    }
}

fn ep_req(net: &str, ep: &str, addr: &str) -> EndpointSpec {
    EndpointSpec {
        network_id: net.into(),
        endpoint_id: ep.into(),
        address: addr.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_join_delete_touches_the_firewall_once_per_network() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(
            NET,
            json!({"bridge": "cnbt0", "mtu": "1400"}),
            false,
        ))
        .await
        .unwrap();
    let br = r.dp.bridge("cnbt0").unwrap();
    assert_eq!(br.addresses, vec!["10.15.40.1/24".parse().unwrap()]);
    assert_eq!(br.mtu, Some(1400));
    assert!(r.fw.has_network(NET));
    let fw_calls = r.fw.calls().len();

    for (ep, addr) in [(EP, "10.15.40.2/24"), (EP2, "10.15.40.3/24")] {
        let resp = r
            .driver
            .create_endpoint(&ep_req(NET, ep, addr))
            .await
            .unwrap();
        let mac = resp.mac_address.unwrap();
        let join = r.driver.join(NET, ep).await.unwrap();
        assert_eq!(join.gateway, Some("10.15.40.1".parse().unwrap()));
        assert_eq!(join.dst_prefix, "eth");
        assert_eq!(join.src_name, names::peer_veth(ep));
        let veth = r.dp.veth(&names::host_veth(ep)).unwrap();
        assert_eq!(veth.bridge.as_deref(), Some("cnbt0"));
        assert_eq!(veth.mtu, Some(1400));
        assert_eq!(veth.peer_mac.map(|m| names::format_mac(&m)), Some(mac));
    }
    assert_eq!(
        r.fw.calls().len(),
        fw_calls,
        "joining containers must cost no firewall work"
    );

    for ep in [EP, EP2] {
        r.driver.leave(NET, ep).await.unwrap();
        r.driver.delete_endpoint(NET, ep).await.unwrap();
        r.driver.delete_endpoint(NET, ep).await.unwrap();
    }
    r.driver.settle().await;
    assert!(r.dp.veths().is_empty());
    r.driver.delete_network(NET).await.unwrap();
    r.driver.delete_network(NET).await.unwrap();
    assert!(r.dp.bridges().is_empty());
    assert!(r.fw.networks().is_empty());
}

#[tokio::test]
async fn internal_networks_keep_the_gateway_on_the_bridge_but_give_none() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({}), true))
        .await
        .unwrap();
    let bridge = names::default_bridge(NET);
    assert_eq!(r.dp.bridge(&bridge).unwrap().addresses.len(), 1);
    r.driver
        .create_endpoint(&ep_req(NET, EP, "10.15.40.2/24"))
        .await
        .unwrap();
    let join = r.driver.join(NET, EP).await.unwrap();
    assert!(join.gateway.is_none());
    assert!(join.disable_gateway_service);
}

#[tokio::test]
async fn a_failed_firewall_step_leaves_nothing_behind() {
    let fw = RecordingFirewall::new();
    fw.fail_when(|c| matches!(c, FirewallCall::AddNetwork(_)));
    let r = rig_in(tempfile::tempdir().unwrap(), RecordingDataplane::new(), fw).await;
    let err = r
        .driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("installing firewall rules for bridge cnbt0"),
        "{err}"
    );
    assert!(r.dp.bridges().is_empty(), "bridge must be rolled back");
    assert!(r.driver.network_ids().is_empty());
    assert!(!r
        .dir
        .path()
        .join("state/networks")
        .read_dir()
        .unwrap()
        .any(|_| true));
}

#[tokio::test]
async fn bad_options_and_shared_bridges_are_refused_before_any_change() {
    let r = rig().await;
    let err = r
        .driver
        .create_network(&net_req(NET, json!({"bridg": "x"}), false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown option -o bridg"), "{err}");
    assert!(r.dp.calls().is_empty());
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    let err = r
        .driver
        .create_network(&net_req(NET2, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("already used by network 791e17b650f7"),
        "{err}"
    );
    // A re-sent CreateNetwork is harmless.
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_network_or_endpoint_errors_are_readable() {
    let r = rig().await;
    let err = r
        .driver
        .create_endpoint(&ep_req(NET, EP, ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("network 791e17b650f7 is not known to cnibridge"),
        "{err}"
    );
    r.driver
        .create_network(&net_req(NET, json!({}), false))
        .await
        .unwrap();
    let err = r.driver.join(NET, EP).await.unwrap_err().to_string();
    assert!(err.contains("endpoint 9dbfb9b7a99c"), "{err}");
}

#[tokio::test]
async fn a_restarted_driver_serves_networks_of_its_earlier_life() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    r.joined(NET, EP, "10.15.40.2/24").await;
    let r = r.restarted().await;
    assert_eq!(r.driver.network_ids(), vec![NET.to_string()]);
    assert!(r
        .fw
        .calls()
        .iter()
        .any(|c| matches!(c, FirewallCall::Reconcile(n, p) if n.len() == 1 && p.is_empty())));
    // Docker re-creates endpoints of restart-policy containers without a CreateNetwork.
    r.joined(NET, EP2, "10.15.40.3/24").await;
    // The endpoint of the earlier life is still known and cleaned up.
    r.driver.delete_endpoint(NET, EP).await.unwrap();
    r.driver.settle().await;
    assert!(r.dp.veth(&names::host_veth(EP)).is_none());
}

#[tokio::test]
async fn delete_network_waits_for_veth_teardown() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    r.joined(NET, EP, "").await;
    r.driver.delete_endpoint(NET, EP).await.unwrap();
    // No settle(): the bridge can only be deleted after the veth is gone.
    r.driver.delete_network(NET).await.unwrap();
    assert!(r.dp.bridges().is_empty() && r.dp.veths().is_empty());
}

#[tokio::test]
async fn join_recreates_a_vanished_bridge() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(NET, json!({"bridge": "cnbt0"}), false))
        .await
        .unwrap();
    // Someone (or a reboot) removed the bridge.
    r.dp.delete_bridge_if_unused("cnbt0").await.unwrap();
    r.joined(NET, EP, "10.15.40.2/24").await;
    assert!(r.dp.bridge("cnbt0").is_some());
    assert!(
        r.dp.calls()
            .iter()
            .filter(|c| matches!(c, DataplaneCall::EnsureBridge(_)))
            .count()
            >= 2
    );
}

#[tokio::test]
async fn endpoint_files_are_named_after_the_endpoint() {
    let r = rig().await;
    let ipam: Arc<Ipam> = r.driver.ipam().clone();
    let grant = ipam
        .request_pool(&PoolRequest {
            address_space: "CniLocal".into(),
            pool: Some("10.15.50.0/24".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    let gw = ipam.request_address(&grant.pool_id, None, true).unwrap();
    let mut req = net_req(NET, json!({}), false);
    req.ipv4[0].address_space = "CniLocal".into();
    req.ipv4[0].pool = "10.15.50.0/24".into();
    req.ipv4[0].gateway = gw.to_string();
    r.driver.create_network(&req).await.unwrap();
    let addr = ipam.request_address(&grant.pool_id, None, false).unwrap();
    r.driver
        .create_endpoint(&ep_req(NET, EP, &addr.to_string()))
        .await
        .unwrap();
    let file = r
        .dir
        .path()
        .join("data/cnibridge-10.15.50.0-24")
        .join(addr.addr().to_string());
    assert_eq!(
        std::fs::read(file).unwrap(),
        format!("{EP}\r\n{}", names::host_veth(EP)).into_bytes()
    );
}

/// A dataplane whose `create_veth` on one bridge waits until the test opens the gate.
#[derive(Clone)]
struct GatedDataplane {
    inner: RecordingDataplane,
    slow_bridge: &'static str,
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
}

impl Dataplane for GatedDataplane {
    async fn ensure_bridge(
        &self,
        spec: &crate::dataplane::BridgeSpec,
    ) -> Result<crate::dataplane::BridgeOutcome, DataplaneError> {
        self.inner.ensure_bridge(spec).await
    }
    async fn bridge_addresses(
        &self,
        name: &str,
    ) -> Result<Option<Vec<ipnet::IpNet>>, DataplaneError> {
        self.inner.bridge_addresses(name).await
    }
    async fn restore_bridge_addresses(
        &self,
        name: &str,
        remove: &[ipnet::IpNet],
        add: &[ipnet::IpNet],
    ) -> Result<(), DataplaneError> {
        self.inner.restore_bridge_addresses(name, remove, add).await
    }
    async fn delete_bridge_if_unused(&self, name: &str) -> Result<bool, DataplaneError> {
        self.inner.delete_bridge_if_unused(name).await
    }
    async fn create_veth(&self, spec: &crate::dataplane::VethSpec) -> Result<(), DataplaneError> {
        if spec.bridge == self.slow_bridge {
            self.entered.notify_one();
            let _permit = self.gate.acquire().await;
        }
        self.inner.create_veth(spec).await
    }
    async fn delete_link(&self, name: &str) -> Result<(), DataplaneError> {
        self.inner.delete_link(name).await
    }
    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, DataplaneError> {
        self.inner.bridge_ports(bridge).await
    }
    async fn link_exists(&self, name: &str) -> Result<bool, DataplaneError> {
        self.inner.link_exists(name).await
    }
    async fn set_hairpin(&self, port: &str, on: bool) -> Result<(), DataplaneError> {
        self.inner.set_hairpin(port, on).await
    }
    async fn set_shaping(
        &self,
        host_veth: &str,
        ifb: &str,
        shaping: &crate::dataplane::Shaping,
    ) -> Result<(), DataplaneError> {
        self.inner.set_shaping(host_veth, ifb, shaping).await
    }
    async fn set_sysctls(
        &self,
        netns: &std::path::Path,
        sysctls: &[(String, String)],
    ) -> Result<(), DataplaneError> {
        self.inner.set_sysctls(netns, sysctls).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_join_does_not_block_other_networks() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.path().join("data"),
        default_pools: vec![],
        cni_conf_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs"),
    })
    .unwrap();
    let dp = GatedDataplane {
        inner: RecordingDataplane::new(),
        slow_bridge: "cnbtslow",
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        entered: Arc::new(tokio::sync::Notify::new()),
    };
    let driver = Arc::new(
        Driver::open(dp.clone(), RecordingFirewall::new(), ipam, state)
            .await
            .unwrap(),
    );
    driver
        .create_network(&net_req(NET, json!({"bridge": "cnbtslow"}), false))
        .await
        .unwrap();
    let mut fast = net_req(NET2, json!({"bridge": "cnbtfast"}), false);
    fast.ipv4[0].pool = "10.15.41.0/24".into();
    fast.ipv4[0].gateway = "10.15.41.1/24".into();
    driver.create_network(&fast).await.unwrap();
    driver.create_endpoint(&ep_req(NET, EP, "")).await.unwrap();
    driver
        .create_endpoint(&ep_req(NET2, EP2, ""))
        .await
        .unwrap();

    let d = driver.clone();
    let stuck = tokio::spawn(async move { d.join(NET, EP).await });
    // The slow Join now holds its network's lock inside the kernel call.
    dp.entered.notified().await;
    let other = async {
        // Creating a third network looks at every network's bridge: it must not wait either.
        let mut third = net_req(EP, json!({"bridge": "cnbtthird"}), false);
        third.ipv4[0].pool = "10.15.42.0/24".into();
        third.ipv4[0].gateway = "10.15.42.1/24".into();
        driver.create_network(&third).await.unwrap();
        driver.join(NET2, EP2).await.unwrap();
        driver.leave(NET2, EP2).await.unwrap();
        driver.delete_endpoint(NET2, EP2).await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), other)
        .await
        .expect("Join/Leave/DeleteEndpoint on another network waited for a stuck Join");
    assert!(!stuck.is_finished());
    dp.gate.add_permits(1);
    stuck.await.unwrap().unwrap();
}

#[tokio::test]
async fn firewall_intent_follows_the_options() {
    let cases = [
        // (generic, internal, masquerade, masquerade_ipv6, icc)
        (json!({}), false, true, false, true),
        (json!({"ipMasq": "false"}), false, false, false, true),
        (
            json!({"com.docker.network.bridge.enable_ip_masquerade": "0", "ipMasqIPv6": "true"}),
            false,
            false,
            true,
            true,
        ),
        (
            json!({"com.docker.network.bridge.enable_icc": "false"}),
            false,
            true,
            false,
            false,
        ),
        (
            json!({"ipMasq": "true", "ipMasqIPv6": "1"}),
            true,
            false,
            false,
            true,
        ),
    ];
    for (generic, internal, masquerade, masquerade_ipv6, icc) in cases {
        let r = rig().await;
        r.driver
            .create_network(&net_req(NET, generic.clone(), internal))
            .await
            .unwrap();
        let want = NetworkRules {
            subnets: vec!["10.15.40.0/24".parse().unwrap()],
            internal,
            masquerade,
            masquerade_ipv6,
            icc,
            ..NetworkRules::new(NET, names::default_bridge(NET))
        };
        assert_eq!(r.fw.networks(), vec![want.clone()], "{generic}");
        r.driver.delete_network(NET).await.unwrap();
        assert_eq!(
            r.fw.calls().last(),
            Some(&FirewallCall::DelNetwork(want)),
            "{generic}"
        );
    }
}

#[tokio::test]
async fn contradicting_masquerade_options_are_refused_before_any_change() {
    let r = rig().await;
    let err = r
        .driver
        .create_network(&net_req(
            NET,
            json!({"ipMasq": "true", "com.docker.network.bridge.enable_ip_masquerade": "false"}),
            false,
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("contradict each other"), "{err}");
    assert!(r.dp.calls().is_empty());
    // Only the reconcile of Driver::open.
    assert_eq!(r.fw.calls(), vec![FirewallCall::Reconcile(vec![], vec![])]);
}

#[tokio::test]
async fn a_record_with_a_value_an_older_version_accepted_gets_the_defaults() {
    let r = rig().await;
    r.driver
        .create_network(&net_req(
            NET,
            json!({"bridge": "cnbt0", "com.docker.network.bridge.enable_icc": "false"}),
            false,
        ))
        .await
        .unwrap();
    // Before masquerade was honoured, any value of ipMasq was accepted and stored.
    let path = r.dir.path().join(format!("state/networks/{NET}.json"));
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    rec["options"]["ipMasq"] = json!("yes");
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let r = r.restarted().await;
    let restored = r.fw.networks();
    assert_eq!(restored.len(), 1);
    // Docker's defaults for the whole set, not a half-read record.
    assert!(restored[0].masquerade && restored[0].icc, "{restored:?}");
}

#[path = "publish_tests.rs"]
mod publish;
