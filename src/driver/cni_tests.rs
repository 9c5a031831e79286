//! Networks from CNI configs, against the recording fakes: selection through `--ipam-opt`
//! alone or `-o` alone (Docker's IPAM), the errors when the pieces disagree, what Join answers
//! for the config's routes, what reaches the dataplane, and the export.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::cni::NetConf;
use crate::dataplane::testing::{DataplaneCall, RecordingDataplane};
use crate::dataplane::BridgeSpec;
use crate::firewall::testing::RecordingFirewall;
use crate::ipam::{IpamConfig, PoolRequest, GATEWAY_DATA, LOCAL_ADDRESS_SPACE};

mod chain;
mod join;

const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";
const NET2: &str = "43d84917b6f05e49005b00f0f3fec8d7e0d748efa3afc36318a422d774edf169";
const EP: &str = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";

struct Rig {
    dir: tempfile::TempDir,
    dp: RecordingDataplane,
    fw: RecordingFirewall,
    driver: Driver<RecordingDataplane, RecordingFirewall>,
}

impl Rig {
    /// A driver whose conf dir holds the repo's cni-confs/ plus `extra` (name, content).
    async fn new(extra: &[(&str, &str)]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let confs = dir.path().join("conf");
        fs::create_dir_all(&confs).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs");
        for e in fs::read_dir(repo).unwrap() {
            let e = e.unwrap();
            // cni-confs/runtimes/ holds the runtimes' defaults, which their own tests load.
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), confs.join(e.file_name())).unwrap();
            }
        }
        for (name, text) in extra {
            fs::write(confs.join(name), text).unwrap();
        }
        let (dp, fw) = (RecordingDataplane::new(), RecordingFirewall::new());
        let driver = Self::open(dir.path(), &dp, &fw).await;
        Rig {
            dir,
            dp,
            fw,
            driver,
        }
    }

    async fn open(
        root: &Path,
        dp: &RecordingDataplane,
        fw: &RecordingFirewall,
    ) -> Driver<RecordingDataplane, RecordingFirewall> {
        let state = StateDir::open(root.join("state")).unwrap();
        let ipam = Ipam::open(IpamConfig {
            state: state.clone(),
            data_dir: root.join("data"),
            default_pools: vec!["10.210.0.0/16:24".parse().unwrap()],
            cni_conf_dir: root.join("conf"),
        })
        .unwrap();
        let cfg = DriverConfig {
            export_dir: root.join("export"),
        };
        Driver::open_with(dp.clone(), fw.clone(), ipam, state, cfg)
            .await
            .unwrap()
    }

    fn export_path(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("export")
            .join(format!("{name}.conflist"))
    }

    /// The export of `name`, parsed back with the CNI model.
    fn export(&self, name: &str) -> NetConf {
        let path = self.export_path(name);
        let text = fs::read_to_string(&path).unwrap();
        NetConf::load(&path, text.as_bytes()).unwrap()
    }

    /// RequestPool as Docker sends it for `--ipam-opt cni.conf=<sel>`; the IpamFamily Docker
    /// then gives CreateNetwork (gateway from the answer's Data).
    fn pool(&self, sel: Option<&str>, subnet: Option<&str>, v6: bool) -> IpamFamily {
        let options = sel
            .map(|s| [("cni.conf".to_string(), s.to_string())].into())
            .unwrap_or_default();
        let g = self
            .driver
            .ipam()
            .request_pool(&PoolRequest {
                address_space: LOCAL_ADDRESS_SPACE.into(),
                pool: subnet.map(|s| s.parse().unwrap()),
                options,
                v6,
                ..Default::default()
            })
            .unwrap();
        let gateway = match g.data.get(GATEWAY_DATA) {
            Some(gw) => gw.clone(),
            None => self
                .driver
                .ipam()
                .request_address(&g.pool_id, None, true)
                .unwrap()
                .to_string(),
        };
        IpamFamily {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: g.pool.to_string(),
            gateway,
            aux_addresses: Default::default(),
        }
    }

    /// CreateEndpoint with an address from the network's IPv4 pool, then Join.
    async fn join(&self, net: &str, pool: &str) -> JoinAnswer {
        let addr = self
            .driver
            .ipam()
            .request_address(pool, None, false)
            .unwrap();
        self.driver
            .create_endpoint(&EndpointSpec {
                network_id: net.into(),
                endpoint_id: EP.into(),
                address: addr.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        self.driver.join(net, EP).await.unwrap()
    }

    fn bridge_specs(&self) -> Vec<BridgeSpec> {
        self.dp
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                DataplaneCall::EnsureBridge(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn docker_ipam(pool: &str, gateway: &str) -> IpamFamily {
    IpamFamily {
        address_space: "LocalDefault".into(),
        pool: pool.into(),
        gateway: gateway.into(),
        aux_addresses: Default::default(),
    }
}

fn req(
    id: &str,
    generic: serde_json::Value,
    v4: Vec<IpamFamily>,
    v6: Vec<IpamFamily>,
) -> NetworkSpec {
    let mut options = serde_json::Map::new();
    options.insert("com.docker.network.generic".into(), generic);
    NetworkSpec {
        network_id: id.into(),
        options,
        ipv4: v4,
        ipv6: v6,
    }
}

/// A single-plugin config named `name` with bridge keys `keys` and host-local members `ipam`.
fn conf(name: &str, keys: &str, ipam: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","type":"bridge",{keys}"ipam":{{"type":"host-local",{ipam}}}}}"#
    )
}

async fn create_err(r: &Rig, request: NetworkSpec) -> String {
    r.driver
        .create_network(&request)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn ipam_opt_alone_creates_the_configs_network_and_exports_it() {
    let r = Rig::new(&[]).await;
    let v4 = r.pool(Some("mybridge"), None, false);
    assert_eq!(
        (v4.pool.as_str(), v4.gateway.as_str()),
        ("10.15.20.0/24", "10.15.20.1/24")
    );
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    let spec = &r.bridge_specs()[0];
    assert_eq!(spec.name, "cni_bridge0");
    assert_eq!(spec.addresses, vec!["10.15.20.1/24".parse().unwrap()]);
    assert_eq!(spec.mtu, None);
    assert!(!spec.promisc && !spec.force_address);

    let join = r.join(NET, "10.15.20.0/24").await;
    assert_eq!(join.gateway, Some(ip("10.15.20.1")));
    assert_eq!(join.gateway_ipv6, None);
    let routes: Vec<_> = join
        .static_routes
        .iter()
        .map(|s| (s.destination.to_string(), s.next_hop.to_string()))
        .collect();
    assert_eq!(
        routes,
        [("10.250.0.0/16".to_string(), "10.15.20.1".to_string())]
    );
    let veth = r.dp.veth(&names::host_veth(EP)).unwrap();
    assert_eq!(veth.bridge.as_deref(), Some("cni_bridge0"));
    // The address file is in the config's directory, named after the endpoint.
    let data = r.dir.path().join("data/mybridge");
    assert!(data.join("10.15.20.2").exists());
    assert!(data.join("last_reserved_ip.0").exists());

    // The export is the config, made explicit, in CNI 1.0.0 with the data dir spelled out.
    let e = r.export("mybridge");
    assert_eq!(e.bridge, "cni_bridge0");
    assert!(e.is_gateway && e.ip_masq && !e.is_default_gateway);
    assert_eq!(
        e.ipam.data_dir.as_deref(),
        Some(r.dir.path().join("data").as_path())
    );
    let src = crate::cni::dir::find(&r.dir.path().join("conf"), "mybridge")
        .unwrap()
        .1;
    assert_eq!(e.ipam.range_sets, src.ipam.range_sets);
    assert_eq!(e.ipam.routes, src.ipam.routes);

    r.driver.delete_endpoint(NET, EP).await.unwrap();
    r.driver.delete_network(NET).await.unwrap();
    assert!(
        !r.export_path("mybridge").exists(),
        "export removed with the network"
    );
}

#[tokio::test]
async fn o_cni_conf_alone_works_on_dockers_ipam_when_the_pools_match() {
    let r = Rig::new(&[]).await;
    let generic = json!({"cni.conf": "mybridge"});
    let mismatch = [
        (
            docker_ipam("172.18.0.0/16", "172.18.0.1/16"),
            "subnet 172.18.0.0/16 does not match mybridge.conf's subnet 10.15.20.0/24 (network mybridge); pass --subnet 10.15.20.0/24 --gateway 10.15.20.1, or use --ipam-driver cnibridge --ipam-opt cni.conf=mybridge",
        ),
        (
            docker_ipam("10.15.20.0/24", "10.15.20.254/24"),
            "gateway 10.15.20.254 does not match mybridge.conf's gateway 10.15.20.1 (network mybridge); drop --gateway or change the config",
        ),
    ];
    for (data, want) in mismatch {
        let err = create_err(&r, req(NET, generic.clone(), vec![data], vec![])).await;
        assert_eq!(err, want);
    }
    assert!(
        r.dp.calls().is_empty(),
        "nothing touched before validation passed"
    );
    r.driver
        .create_network(&req(
            NET,
            generic,
            vec![docker_ipam("10.15.20.0/24", "10.15.20.1/24")],
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(r.bridge_specs()[0].name, "cni_bridge0");
    assert_eq!(r.export("mybridge").ipam.routes.len(), 2);
}

#[tokio::test]
async fn the_ipam_side_and_the_driver_side_must_name_the_same_config() {
    let r = Rig::new(&[]).await;
    // Pool from flags, config only on the driver side.
    let plain = r.pool(None, Some("10.15.20.0/24"), false);
    let err = create_err(
        &r,
        req(NET, json!({"cni.conf": "mybridge"}), vec![plain], vec![]),
    )
    .await;
    assert_eq!(
        err,
        "-o cni.conf=mybridge selects mybridge.conf, but pool 10.15.20.0/24 was requested from cnibridge's IPAM without it; add --ipam-opt cni.conf=mybridge so the addresses come from the config's ranges"
    );
    r.driver.ipam().release_pool("10.15.20.0/24").unwrap();
    // Different configs on the two sides.
    let v4 = r.pool(Some("mybridge"), None, false);
    let err = create_err(
        &r,
        req(
            NET,
            json!({"cni.conf": "ipv4-routes"}),
            vec![v4.clone()],
            vec![],
        ),
    )
    .await;
    assert_eq!(
        err,
        "-o cni.conf=ipv4-routes selects ipv4-routes.conflist, but pool 10.15.20.0/24 was requested with --ipam-opt cni.conf=mybridge (mybridge.conf); give the same config to both, or drop -o cni.conf"
    );
    // The same config on both sides (by network name and by file base name alike).
    r.driver
        .create_network(&req(NET, json!({"cni.conf": "mybridge"}), vec![v4], vec![]))
        .await
        .unwrap();
}

#[tokio::test]
async fn options_that_contradict_the_config_are_refused() {
    let r = Rig::new(&[]).await;
    let v4 = r.pool(Some("mybridge"), None, false);
    let cases = [
        (json!({"bridge": "other0"}), "-o bridge=other0 contradicts mybridge.conf's bridge \"cni_bridge0\" (network mybridge); drop the option or change the config"),
        (json!({"com.docker.network.bridge.name": "other0"}), "-o com.docker.network.bridge.name=other0 contradicts mybridge.conf's bridge \"cni_bridge0\""),
        (json!({"com.docker.network.driver.mtu": "1400"}), "-o com.docker.network.driver.mtu=1400 contradicts mybridge.conf's mtu 0"),
        (json!({"ipMasq": "false"}), "-o ipMasq=false contradicts mybridge.conf's ipMasq true"),
        (json!({"hairpinMode": "1"}), "-o hairpinMode=1 contradicts mybridge.conf's hairpinMode false"),
        (json!({"isGateway": "false"}), "-o isGateway=false contradicts mybridge.conf's isGateway true"),
    ];
    for (generic, want) in cases {
        let err = create_err(&r, req(NET, generic.clone(), vec![v4.clone()], vec![])).await;
        assert!(err.starts_with(want), "{generic}: {err}");
    }
    // Repeating the config is fine, and Docker-only keys pass.
    r.driver
        .create_network(&req(
            NET,
            json!({"bridge": "cni_bridge0", "ipMasq": "true", "com.docker.network.bridge.enable_icc": "false"}),
            vec![v4],
            vec![],
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_cnibridge_does_not_implement_are_refused_with_file_key_and_value() {
    let vlan = conf("vl", r#""vlan":100,"#, r#""subnet":"10.70.0.0/24""#);
    let spoof = r#"{"cniVersion":"1.0.0","name":"sp","plugins":[{"type":"bridge","macspoofchk":true,"ipam":{"type":"host-local","subnet":"10.71.0.0/24"}}]}"#;
    let r = Rig::new(&[("vl.conf", &vlan), ("sp.conflist", spoof)]).await;
    for (sel, want) in [
        ("vl", "vl.conf: vlan 100 is not implemented by cnibridge; remove it from the config"),
        ("sp", "sp.conflist: plugins[0].macspoofchk true is not implemented by cnibridge; remove it from the config"),
    ] {
        let v4 = r.pool(Some(sel), None, false);
        let err = create_err(&r, req(NET, json!({}), vec![v4], vec![])).await;
        assert_eq!(err, want);
    }
}

#[tokio::test]
async fn an_ipv6_range_without_ipv6_is_refused() {
    let r = Rig::new(&[]).await;
    let want = "dual-stack.conflist: plugins[0].ipam.ranges[1][0].subnet \"fd00:244::/64\" is IPv6, but the network was created without --ipv6; add --ipv6 or remove the IPv6 range set";
    let v4 = r.pool(Some("dual-stack"), None, false);
    assert_eq!(
        create_err(&r, req(NET, json!({}), vec![v4], vec![])).await,
        want
    );
    let err = create_err(
        &r,
        req(
            NET2,
            json!({"cni.conf": "dual-stack"}),
            vec![docker_ipam("10.244.0.0/16", "10.244.0.1/16")],
            vec![],
        ),
    )
    .await;
    assert_eq!(err, want);
}

#[tokio::test]
async fn networks_from_flags_are_exported_with_dockers_defaults() {
    let r = Rig::new(&[]).await;
    let v4 = r.pool(None, Some("10.60.0.0/24"), false);
    let v6 = r.pool(None, Some("fd60::/64"), true);
    r.driver
        .create_network(&req(
            NET,
            json!({"bridge": "cnbt-flags", "hairpinMode": "true"}),
            vec![v4],
            vec![v6],
        ))
        .await
        .unwrap();
    // Both families in the IPv4 pool's directory, IPv6 as range set 1.
    let moved = r.driver.ipam().pool("fd60::/64").unwrap();
    assert_eq!(
        (moved.cni_name.as_str(), moved.range_index),
        ("cnibridge-10.60.0.0-24", 1)
    );
    let e = r.export("cnibridge-10.60.0.0-24");
    assert_eq!(e.bridge, "cnbt-flags");
    assert!(e.is_gateway && e.ip_masq && e.hairpin_mode && !e.is_default_gateway);
    let subnets: Vec<String> = e
        .ipam
        .range_sets
        .iter()
        .map(|s| s[0].subnet.to_string())
        .collect();
    assert_eq!(subnets, ["10.60.0.0/24", "fd60::/64"]);
    let dsts: Vec<String> = e.ipam.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"]);
    // Docker publishes ports: the export chains portmap after the bridge.
    assert_eq!(e.chain, crate::cni::chain::Chain::docker_default());
    let join = r.join(NET, "10.60.0.0/24").await;
    assert_eq!(join.gateway, Some(ip("10.60.0.1")));
    assert!(join.static_routes.is_empty());

    // Docker's IPAM, internal: exported under the derived name, without default routes.
    let mut request = req(
        NET2,
        json!({}),
        vec![docker_ipam("172.30.0.0/16", "172.30.0.1/16")],
        vec![],
    );
    request
        .options
        .insert("com.docker.network.internal".into(), json!(true));
    r.driver.create_network(&request).await.unwrap();
    let e = r.export("cnibridge-172.30.0.0-16");
    assert!(e.ipam.routes.is_empty() && !e.ip_masq);
    assert_eq!(
        e.ipam.range_sets[0][0].range_end.to_string(),
        "172.30.255.254"
    );
}

#[tokio::test]
async fn an_export_goes_to_the_other_network_of_the_same_name_and_comes_back_at_start() {
    // Issue point c: two configs with one name (and so one directory and one export).
    let same = |bridge: &str, subnet: &str| {
        conf(
            "same",
            &format!(r#""bridge":"{bridge}","#),
            &format!(r#""subnet":"{subnet}""#),
        )
    };
    let (a, b) = (
        same("cnbt-a", "10.35.0.0/24"),
        same("cnbt-b", "10.36.0.0/24"),
    );
    let r = Rig::new(&[("a.conf", &a), ("b.conf", &b)]).await;
    let subnet = |r: &Rig| r.export("same").ipam.range_sets[0][0].subnet.to_string();
    let va = r.pool(Some("same"), None, false);
    let vb = r.pool(Some("b"), None, false);
    r.driver
        .create_network(&req(NET, json!({}), vec![va], vec![]))
        .await
        .unwrap();
    assert_eq!(subnet(&r), "10.35.0.0/24");
    r.driver
        .create_network(&req(NET2, json!({}), vec![vb], vec![]))
        .await
        .unwrap();
    assert_eq!(subnet(&r), "10.36.0.0/24", "the newest network's export");
    r.driver.delete_network(NET2).await.unwrap();
    assert_eq!(subnet(&r), "10.35.0.0/24", "handed back, not removed");
    // A wiped export is written again when the driver starts.
    fs::remove_file(r.export_path("same")).unwrap();
    let again = Rig::open(r.dir.path(), &r.dp, &r.fw).await;
    assert_eq!(subnet(&r), "10.35.0.0/24");
    again.delete_network(NET).await.unwrap();
    assert!(!r.export_path("same").exists());
}

#[tokio::test]
async fn a_configs_chain_is_recorded_exported_and_kept_across_a_restart() {
    let nerdctl = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs/runtimes/nerdctl-bridge.conflist"),
    )
    .unwrap();
    let r = Rig::new(&[("nerdctl-bridge.conflist", &nerdctl)]).await;
    let want = NetConf::load(Path::new("nerdctl-bridge.conflist"), nerdctl.as_bytes())
        .unwrap()
        .chain;
    assert!(want.firewall.is_some() && want.tuning.is_some() && want.portmap.is_some());
    let v4 = r.pool(Some("nerdctl-bridge"), None, false);
    r.driver
        .create_network(&req(NET, json!({}), vec![v4], vec![]))
        .await
        .unwrap();
    assert_eq!(r.export("bridge").chain, want);
    fs::remove_file(r.export_path("bridge")).unwrap();
    let again = Rig::open(r.dir.path(), &r.dp, &r.fw).await;
    assert_eq!(r.export("bridge").chain, want, "rewritten from the record");
    again.delete_network(NET).await.unwrap();
}

#[tokio::test]
async fn a_chained_plugin_cnibridge_does_not_run_is_refused_at_create() {
    let dn = r#"{"cniVersion":"0.4.0","name":"dn","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.72.0.0/24"}},{"type":"portmap"},{"type":"dnsname","domainName":"dns.podman"}]}"#;
    let fw = r#"{"cniVersion":"0.4.0","name":"fwd","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.73.0.0/24"}},{"type":"firewall","backend":"firewalld"}]}"#;
    let r = Rig::new(&[("dn.conflist", dn), ("fwd.conflist", fw)]).await;
    for (sel, pool, want) in [
        (
            "dn",
            "10.72.0.0/24",
            r#"dn.conflist: plugins[2].type "dnsname" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"#,
        ),
        (
            "fwd",
            "10.73.0.0/24",
            r#"fwd.conflist: plugins[1].backend "firewalld" is not implemented: cnibridge implements the firewall plugin's iptables backend; remove the key or set "iptables""#,
        ),
    ] {
        let gw = pool.replace("0/24", "1/24");
        let err = create_err(
            &r,
            req(
                NET,
                json!({"cni.conf": sel}),
                vec![docker_ipam(pool, &gw)],
                vec![],
            ),
        )
        .await;
        assert_eq!(err, want);
    }
}
