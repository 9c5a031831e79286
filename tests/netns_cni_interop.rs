//! Netns tier: a network made by cnibridge from a CNI config, and a namespace attached to it
//! by the real CNI `bridge` + `host-local` plugins (/usr/lib/cni) from cnibridge's exported
//! conflist, as a CNI runtime pointed at the export dir would. The test thread's namespace
//! plays the host; named namespaces created here play a Docker container (configured from
//! cnibridge's Join answer, as dockerd would) and a CNI runtime's container. Both must get
//! distinct addresses from one host-local directory and the same routes, reach each other, and CNI DEL must free
//! only the CNI container's file. Root required; skipped without the plugins unless CI=true.

mod support;
use support::netns;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::driver::{Driver, DriverConfig, EndpointSpec, IpamFamily, NetworkSpec};
use cnibridge::firewall::NoFirewall;
use cnibridge::ipam::{Ipam, IpamConfig, PoolRequest, GATEWAY_DATA, LOCAL_ADDRESS_SPACE};
use cnibridge::state::StateDir;
use netns::{addresses, in_netns, run, tcp_reaches, NamedNetns};
use serde_json::Value;

const CNI_BIN: &str = "/usr/lib/cni";
const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";
const EP: &str = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";

/// The config under test: a gateway on the bridge, a default route and one extra route, no
/// masquerade (the test namespace's firewall is not the subject here).
const CONF: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "interop",
  "type": "bridge",
  "bridge": "cnbt-interop",
  "isGateway": true,
  "ipam": {
    "type": "host-local",
    "subnet": "10.91.0.0/24",
    "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "10.250.0.0/16" }]
  }
}"#;

fn plugins_present() -> bool {
    let present = ["bridge", "host-local"]
        .iter()
        .all(|p| Path::new(CNI_BIN).join(p).exists());
    support::require(
        &format!("{CNI_BIN}/bridge and host-local (install containernetworking-plugins)"),
        present,
    )
}

/// Run the CNI plugin named by the conflist's first plugin, as a runtime does: the list's
/// name and cniVersion injected into the plugin object. Returns the parsed result (ADD).
fn cni(command: &str, conflist: &Path, netns: &Path, id: &str) -> Value {
    let list: Value = serde_json::from_str(&fs::read_to_string(conflist).unwrap()).unwrap();
    let mut plugin = list["plugins"][0].clone();
    plugin["name"] = list["name"].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    let kind = plugin["type"].as_str().unwrap().to_string();
    let mut child = Command::new(Path::new(CNI_BIN).join(kind))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_BIN)
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plugin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Whether a TCP connection from `from` to a listener at `to` in `listen_in` completes (no
/// ping binary on the test hosts; a handshake proves both directions of the path).
fn reaches(from: &NamedNetns, listen_in: &NamedNetns, to: &str) -> bool {
    let addr = std::net::SocketAddr::new(to.parse().unwrap(), 7777);
    tcp_reaches(
        from,
        Some(listen_in),
        addr,
        std::time::Duration::from_secs(3),
    )
}

fn routes(ns: &NamedNetns) -> Vec<String> {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "route", "show"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[test]
fn a_cni_runtime_attaches_to_the_same_network_through_the_export() {
    if !plugins_present() {
        return;
    }
    in_netns(
        "a_cni_runtime_attaches_to_the_same_network_through_the_export",
        || async {
            let tmp = tempfile::tempdir().unwrap();
            let confs = tmp.path().join("conf");
            fs::create_dir_all(&confs).unwrap();
            fs::write(confs.join("interop.conf"), CONF).unwrap();
            let data = tmp.path().join("data");
            let export: PathBuf = tmp.path().join("export");
            let state = StateDir::open(tmp.path().join("state")).unwrap();
            let ipam = Ipam::open(IpamConfig {
                state: state.clone(),
                data_dir: data.clone(),
                default_pools: vec![],
                cni_conf_dir: confs,
            })
            .unwrap();
            let driver = Driver::open_with(
                NetlinkDataplane::new().unwrap(),
                NoFirewall,
                ipam.clone(),
                state,
                DriverConfig {
                    export_dir: export.clone(),
                },
            )
            .await
            .unwrap();

            // docker network create --ipam-driver cnibridge --ipam-opt cni.conf=interop
            let grant = ipam
                .request_pool(&PoolRequest {
                    address_space: LOCAL_ADDRESS_SPACE.into(),
                    options: [("cni.conf".to_string(), "interop".to_string())].into(),
                    ..Default::default()
                })
                .unwrap();
            driver
                .create_network(&NetworkSpec {
                    network_id: NET.into(),
                    options: Default::default(),
                    ipv4: vec![IpamFamily {
                        address_space: LOCAL_ADDRESS_SPACE.into(),
                        pool: grant.pool.to_string(),
                        gateway: grant.data[GATEWAY_DATA].clone(),
                        aux_addresses: Default::default(),
                    }],
                    ipv6: vec![],
                })
                .await
                .unwrap();
            // docker run: address, endpoint, Join; then what dockerd does with the answer.
            let addr = ipam.request_address(&grant.pool_id, None, false).unwrap();
            driver
                .create_endpoint(&EndpointSpec {
                    network_id: NET.into(),
                    endpoint_id: EP.into(),
                    address: addr.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let join = driver.join(NET, EP).await.unwrap();
            let docker_ctr = NamedNetns::new("dock");
            let src = &join.src_name;
            docker_ctr.adopt(src, &addr.to_string());
            let gateway = join.gateway.unwrap().to_string();
            docker_ctr.ip(&["route", "add", "default", "via", &gateway]);
            for r in &join.static_routes {
                let (dst, via) = (r.destination.to_string(), r.next_hop.to_string());
                docker_ctr.ip(&["route", "add", &dst, "via", &via]);
            }

            // A CNI runtime pointed at the export dir.
            let conflist = export.join("interop.conflist");
            let cni_ctr = NamedNetns::new("cni");
            let result = cni("ADD", &conflist, &cni_ctr.path(), "ctrB");
            let cni_addr = result["ips"][0]["address"].as_str().unwrap().to_string();
            let cni_ip = cni_addr.split('/').next().unwrap().to_string();
            assert_ne!(cni_addr, addr.to_string(), "distinct addresses");
            assert_eq!(result["ips"][0]["gateway"], "10.91.0.1");

            // Same directory, host-local's layout, each file its owner's.
            let dir = data.join("interop");
            let ours = dir.join(addr.addr().to_string());
            let theirs = dir.join(&cni_ip);
            assert!(fs::read_to_string(&ours).unwrap().starts_with(&EP[..12]));
            assert_eq!(fs::read_to_string(&theirs).unwrap(), "ctrB\r\neth0");

            // The container configured by Docker from Join, and the one configured by the
            // plugin, see the same addresses and routes.
            let cni_routes = routes(&cni_ctr);
            let mut dock_routes = routes(&docker_ctr);
            dock_routes.sort();
            let mut want = cni_routes.clone();
            want.sort();
            assert_eq!(dock_routes, want);
            assert!(
                cni_routes.contains(&"10.250.0.0/16 via 10.91.0.1".to_string()),
                "{cni_routes:?}"
            );
            // The bridge carries the gateway once; the plugin adopted it as it was.
            assert_eq!(addresses("cnbt-interop"), vec!["10.91.0.1/24".to_string()]);

            assert!(
                reaches(&cni_ctr, &docker_ctr, &addr.addr().to_string()),
                "CNI → Docker"
            );
            assert!(reaches(&docker_ctr, &cni_ctr, &cni_ip), "Docker → CNI");

            // CNI DEL frees only its own file.
            cni("DEL", &conflist, &cni_ctr.path(), "ctrB");
            assert!(!theirs.exists());
            assert!(ours.exists());
            assert!(dir.join("lock").exists());
            run(&["ip", "link", "show", "cnbt-interop"]);
        },
    );
}
