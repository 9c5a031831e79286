//! Protocol tier for CNI configs: the requests Docker sends for
//! `docker network create -d cnibridge --ipam-driver cnibridge --ipam-opt cni.conf=NAME NAME`
//! and `docker run`, against the real router over a unix socket, with recording fakes in place
//! of the kernel and a temp conf dir holding the repo's cni-confs/. Checks the answers, the
//! host-local files in `<dataDir>/<name>/`, the export, and the errors `docker network create`
//! prints.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use cnibridge::dataplane::testing::{DataplaneCall, RecordingDataplane};
use cnibridge::firewall::testing::RecordingFirewall;
use serde_json::{json, Value};
use support::in_process::{call, client, InProcess, Served};

const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";
const EP: &str = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";

struct Plugin {
    dir: tempfile::TempDir,
    dp: RecordingDataplane,
    served: Served,
}

impl Plugin {
    async fn start() -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let confs = dir.path().join("conf");
        fs::create_dir_all(&confs).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs");
        for e in fs::read_dir(repo).unwrap() {
            let e = e.unwrap();
            if !e.file_type().unwrap().is_file() {
                continue;
            }
            fs::copy(e.path(), confs.join(e.file_name())).unwrap();
        }
        let dp = RecordingDataplane::new();
        let served = InProcess {
            default_pools: vec!["10.210.0.0/16:24".into()],
            cni_conf_dir: confs,
            export_dir: Some(dir.path().join("export")),
            ..InProcess::new(dir.path())
        }
        .serve(dp.clone(), RecordingFirewall::new())
        .await;
        Plugin { dir, dp, served }
    }

    async fn stop(mut self) {
        self.served.stop().await;
    }

    fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join("data").join(name)
    }

    fn export(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("export")
            .join(format!("{name}.conflist"))
    }

    /// Every file name in `<data>/<name>/`, sorted.
    fn tree(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.data(name))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn call(&self, method: &str, body: Value) -> (u16, Value) {
        let (socket, path) = (self.served.socket(), format!("/{method}"));
        call(&client(), socket, &path, format!("{body}\n")).await
    }

    /// A call that must succeed.
    async fn ok(&self, method: &str, body: Value) -> Value {
        let (status, v) = self.call(method, body.clone()).await;
        assert_eq!(status, 200, "{method} {body} -> {v}");
        v
    }

    /// A call that must fail; its `Err` text.
    async fn err(&self, method: &str, body: Value) -> String {
        let (status, v) = self.call(method, body.clone()).await;
        assert_eq!(status, 500, "{method} {body} -> {v}");
        v["Err"].as_str().unwrap().to_string()
    }
}

fn pool_req(conf: &str, pool: &str, v6: bool) -> Value {
    json!({"AddressSpace": "CniLocal", "Pool": pool, "SubPool": "", "Options": {"cni.conf": conf}, "V6": v6})
}

fn ipam_data(pool: &Value) -> Value {
    json!([{"AddressSpace": "CniLocal", "Pool": pool["Pool"], "Gateway": pool["Data"]["com.docker.network.gateway"], "AuxAddresses": {}}])
}

#[tokio::test]
async fn ipam_opt_cni_conf_alone_gives_the_configs_network() {
    let p = Plugin::start().await;
    // docker network create -d cnibridge --ipam-driver cnibridge --ipam-opt cni.conf=mybridge mybridge
    let pool = p
        .ok("IpamDriver.RequestPool", pool_req("mybridge", "", false))
        .await;
    assert_eq!(
        pool,
        json!({"PoolID": "10.15.20.0/24", "Pool": "10.15.20.0/24",
               "Data": {"com.docker.network.gateway": "10.15.20.1/24"}})
    );
    // Docker uses the Data gateway and asks for none.
    p.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": false,
               "com.docker.network.generic": {}}, "IPv4Data": ipam_data(&pool), "IPv6Data": []}),
    )
    .await;
    assert!(p.export("mybridge").exists());
    // docker run --network mybridge
    let addr = p
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "10.15.20.0/24", "Address": "", "Options": null}),
        )
        .await;
    assert_eq!(addr["Address"], "10.15.20.2/24");
    p.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP,
               "Interface": {"Address": "10.15.20.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
    )
    .await;
    let join = p
        .ok(
            "NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}),
        )
        .await;
    assert_eq!(join["Gateway"], "10.15.20.1");
    assert_eq!(
        join["StaticRoutes"],
        json!([{"Destination": "10.250.0.0/16", "RouteType": 0, "NextHop": "10.15.20.1"}])
    );
    assert!(join.get("GatewayIPv6").is_none(), "{join}");
    let bridge = p.dp.calls().into_iter().find_map(|c| match c {
        DataplaneCall::EnsureBridge(s) => Some(s),
        _ => None,
    });
    assert_eq!(bridge.unwrap().name, "cni_bridge0");
    // host-local's layout, in the config's directory, the file named after the endpoint.
    assert_eq!(
        p.tree("mybridge"),
        ["10.15.20.2", "last_reserved_ip.0", "lock"]
    );
    let owner = fs::read_to_string(p.data("mybridge").join("10.15.20.2")).unwrap();
    assert!(owner.starts_with(&EP[..12]), "{owner:?}");
    assert_eq!(
        fs::read_to_string(p.data("mybridge").join("last_reserved_ip.0")).unwrap(),
        "10.15.20.2"
    );

    // docker rm -f; docker network rm
    for (m, b) in [
        (
            "NetworkDriver.Leave",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
        (
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": "10.15.20.0/24", "Address": "10.15.20.2"}),
        ),
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": "10.15.20.0/24", "Address": "10.15.20.1"}),
        ),
        ("IpamDriver.ReleasePool", json!({"PoolID": "10.15.20.0/24"})),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})),
    ] {
        p.ok(m, b).await;
    }
    assert_eq!(p.tree("mybridge"), ["last_reserved_ip.0", "lock"]);
    assert!(!p.export("mybridge").exists());
    p.stop().await;
}

#[tokio::test]
async fn dual_stack_config_answers_both_families_from_one_directory() {
    let p = Plugin::start().await;
    let v4 = p
        .ok("IpamDriver.RequestPool", pool_req("dual-stack", "", false))
        .await;
    let v6 = p
        .ok("IpamDriver.RequestPool", pool_req("dual-stack", "", true))
        .await;
    assert_eq!(v6["Data"]["com.docker.network.gateway"], "fd00:244::1/64");
    p.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": true,
               "com.docker.network.generic": {}}, "IPv4Data": ipam_data(&v4), "IPv6Data": ipam_data(&v6)}),
    )
    .await;
    let a4 = p
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "10.244.0.0/16", "Address": ""}),
        )
        .await;
    let a6 = p
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": "fd00:244::/64", "Address": ""}),
        )
        .await;
    p.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP,
               "Interface": {"Address": a4["Address"], "AddressIPv6": a6["Address"], "MacAddress": ""}}),
    )
    .await;
    let join = p
        .ok(
            "NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": EP}),
        )
        .await;
    assert_eq!(join["Gateway"], "10.244.0.1");
    assert_eq!(join["GatewayIPv6"], "fd00:244::1");
    assert_eq!(join["StaticRoutes"], json!([]));
    assert_eq!(
        p.tree("dual-stack"),
        [
            "10.244.0.2",
            "fd00:244::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    p.stop().await;
}

#[tokio::test]
async fn errors_reach_docker_network_create_verbatim() {
    let p = Plugin::start().await;
    assert_eq!(
        p.err("IpamDriver.RequestPool", pool_req("mybridge", "10.99.0.0/24", false)).await,
        "subnet 10.99.0.0/24 does not match mybridge.conf's subnet 10.15.20.0/24 (network mybridge); drop --subnet or change the config"
    );
    assert_eq!(
        p.err(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "CniLocal", "Pool": "", "SubPool": "", "Options": {"cni.cnof": "x"}, "V6": false})
        )
        .await,
        "unknown --ipam-opt cni.cnof; known keys: cni.conf"
    );
    assert!(p
        .err("IpamDriver.RequestPool", pool_req("nosuch", "", false))
        .await
        .starts_with("no CNI config named \"nosuch\" in "));
    // A config's IPv6 range without --ipv6: RequestPool(v4) passes, CreateNetwork refuses.
    let v4 = p
        .ok("IpamDriver.RequestPool", pool_req("dual-stack", "", false))
        .await;
    let err = p
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {}},
                   "IPv4Data": ipam_data(&v4), "IPv6Data": []}),
        )
        .await;
    assert_eq!(
        err,
        "dual-stack.conflist: plugins[0].ipam.ranges[1][0].subnet \"fd00:244::/64\" is IPv6, but the network was created without --ipv6; add --ipv6 or remove the IPv6 range set"
    );
    // An invalid value in the file: the file, the key and the value.
    fs::write(
        p.dir.path().join("conf/broken.conf"),
        r#"{"cniVersion":"1.0.0","name":"broken","type":"bridge","mtu":10,"ipam":{"type":"host-local","subnet":"10.98.0.0/24"}}"#,
    )
    .unwrap();
    assert_eq!(
        p.err("IpamDriver.RequestPool", pool_req("broken", "", false))
            .await,
        "broken.conf: mtu 10 is out of range: use 0 for the kernel default, or 68 to 65535"
    );
    p.stop().await;
}
