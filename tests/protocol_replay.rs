//! Protocol tier: every request dockerd 20.10 sent in the recorded scenarios
//! (`../shared/fixtures/dockerd-20.10/*.jsonl`) is replayed in order against the real router over
//! a real unix socket, with recording fakes in place of the kernel. Each answer must have the
//! shape Docker expects, and after each scenario nothing may be left: no veth, no bridge, no
//! address file. At the restart markers the plugin itself is restarted from its state dir.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cnibridge::dataplane::testing::RecordingDataplane;
use cnibridge::dataplane::Dataplane;
use cnibridge::firewall::testing::{FirewallCall, RecordingFirewall};
use ipnet::IpNet;
use serde_json::Value;
use support::in_process::{call, client, InProcess, Served};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/dockerd-20.10")
}

/// One in-process plugin over a unix socket, restartable from the same dirs.
struct Plugin {
    dir: tempfile::TempDir,
    dp: RecordingDataplane,
    fw: RecordingFirewall,
    pools: String,
    served: Option<Served>,
}

impl Plugin {
    async fn start(pools: &str) -> Plugin {
        let mut p = Plugin {
            dir: tempfile::tempdir().unwrap(),
            dp: RecordingDataplane::new(),
            fw: RecordingFirewall::new(),
            pools: pools.to_string(),
            served: None,
        };
        p.spawn().await;
        p
    }

    fn setup(&self) -> InProcess {
        InProcess {
            default_pools: self.pools.split(',').map(str::to_string).collect(),
            cni_conf_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs"),
            ..InProcess::new(self.dir.path())
        }
    }

    fn socket(&self) -> PathBuf {
        self.setup().socket()
    }

    fn data_dir(&self) -> PathBuf {
        self.setup().data_dir()
    }

    async fn spawn(&mut self) {
        let served = self.setup().serve(self.dp.clone(), self.fw.clone()).await;
        self.served = Some(served);
    }

    /// Stop serving and start again from the state dir, as after a crash of the plugin.
    async fn restart(&mut self) {
        if let Some(mut served) = self.served.take() {
            served.stop().await;
        }
        self.spawn().await;
    }

    async fn call(&self, path: &str, body: &str) -> (u16, Value) {
        call(&client(), &self.socket(), path, body.to_string()).await
    }
}

/// Every IP found in a JSON value (plain or with a prefix length), in order.
fn ips_in(v: &Value, out: &mut Vec<IpAddr>) {
    match v {
        Value::String(s) => {
            if let Ok(ip) = s.parse::<IpAddr>() {
                out.push(ip);
            } else if let Ok(n) = s.parse::<IpNet>() {
                out.push(n.addr());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| ips_in(x, out)),
        Value::Object(m) => m.values().for_each(|x| ips_in(x, out)),
        _ => {}
    }
}

/// Replace recorded addresses by the ones this plugin handed out.
fn substitute(v: &mut Value, map: &BTreeMap<IpAddr, IpAddr>) {
    match v {
        Value::String(s) => {
            if let Ok(ip) = s.parse::<IpAddr>() {
                if let Some(n) = map.get(&ip) {
                    *s = n.to_string();
                }
            } else if let Ok(net) = s.parse::<IpNet>() {
                if let Some(n) = map.get(&net.addr()) {
                    *s = format!("{n}/{}", net.prefix_len());
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, map)),
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, map)),
        _ => {}
    }
}

struct Line {
    path: String,
    body: String,
}

fn load(file: &Path) -> Vec<Line> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Line {
                path: v["path"].as_str().unwrap().to_string(),
                body: v
                    .get("body")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }
        })
        .collect()
}

fn body_json(body: &str) -> Value {
    if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    }
}

fn check_shape(path: &str, req: &Value, resp: &Value, internal_nets: &BTreeSet<String>) {
    let obj = resp
        .as_object()
        .unwrap_or_else(|| panic!("{path}: answer is not an object: {resp}"));
    assert!(!obj.contains_key("Err"), "{path}: error {resp}");
    match path {
        "/Plugin.Activate" => {
            let imp: Vec<&str> = resp["Implements"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(imp, ["NetworkDriver", "IpamDriver"]);
        }
        "/NetworkDriver.GetCapabilities" => assert_eq!(resp["Scope"], "local"),
        "/IpamDriver.GetCapabilities" => {
            assert!(
                resp["RequiresMACAddress"].is_boolean()
                    && resp["RequiresRequestReplay"].is_boolean()
            )
        }
        "/IpamDriver.GetDefaultAddressSpaces" => {
            assert!(
                resp["LocalDefaultAddressSpace"].is_string()
                    && resp["GlobalDefaultAddressSpace"].is_string()
            )
        }
        "/IpamDriver.RequestPool" => {
            assert!(!resp["PoolID"].as_str().unwrap().is_empty());
            let pool: IpNet = resp["Pool"].as_str().unwrap().parse().unwrap();
            if let Some(want) = req["Pool"].as_str().filter(|s| !s.is_empty()) {
                assert_eq!(pool.to_string(), want);
            }
            assert!(resp["Data"].is_object() || resp["Data"].is_null());
        }
        "/IpamDriver.RequestAddress" => {
            let got: IpNet = resp["Address"].as_str().unwrap().parse().unwrap();
            if let Some(want) = req["Address"].as_str().filter(|s| !s.is_empty()) {
                assert_eq!(
                    got.addr().to_string(),
                    want,
                    "a requested address must be given exactly"
                );
            }
        }
        "/NetworkDriver.CreateEndpoint" => {
            let iface = &resp["Interface"];
            assert!(
                iface.get("Address").is_none() && iface.get("AddressIPv6").is_none(),
                "addresses echoed: {resp}"
            );
            if req["Interface"]["MacAddress"]
                .as_str()
                .unwrap_or("")
                .is_empty()
            {
                let mac = iface["MacAddress"].as_str().unwrap();
                assert_eq!(mac.len(), 17, "{mac}");
            } else {
                assert!(iface.get("MacAddress").is_none());
            }
        }
        "/NetworkDriver.Join" => {
            let src = resp["InterfaceName"]["SrcName"].as_str().unwrap();
            assert!(!src.is_empty() && src.len() <= 15);
            assert_eq!(resp["InterfaceName"]["DstPrefix"], "eth");
            let net = req["NetworkID"].as_str().unwrap();
            if internal_nets.contains(net) {
                assert!(
                    resp.get("Gateway").is_none(),
                    "internal network got a gateway: {resp}"
                );
            } else {
                resp["Gateway"].as_str().unwrap().parse::<IpAddr>().unwrap();
            }
            assert!(resp["StaticRoutes"].is_array());
        }
        "/NetworkDriver.EndpointOperInfo" => assert!(resp["Value"].is_object()),
        _ => assert!(obj.is_empty(), "{path}: expected {{}}, got {resp}"),
    }
}

async fn replay(name: &str, pools: &str) -> RecordingFirewall {
    replay_as(name, pools, false).await
}

/// A call that must answer 200 `{}`.
async fn expect_empty(p: &Plugin, path: &str, body: &Value) {
    let (status, v) = p.call(path, &body.to_string()).await;
    assert_eq!((status, v.to_string()), (200, "{}".into()), "{path} {body}");
}

/// `gateway_calls`: also send what dockerd sends a driver whose Join gives a gateway (the
/// recorder gave none): ProgramExternalConnectivity with the Join options after each Join,
/// RevokeExternalConnectivity before each Leave.
async fn replay_as(name: &str, pools: &str, gateway_calls: bool) -> RecordingFirewall {
    let lines = load(&fixtures_dir().join(name));
    let mut plugin = Plugin::start(pools).await;
    // Addresses this recording asked for by value: they map to themselves.
    let explicit: BTreeSet<IpAddr> = lines
        .iter()
        .filter(|l| l.path == "/IpamDriver.RequestAddress")
        .filter_map(|l| {
            body_json(&l.body)["Address"]
                .as_str()
                .and_then(|s| s.parse().ok())
        })
        .collect();
    let mut map: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    let mut internal = BTreeSet::new();
    let mut links = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if line.path.starts_with('#') {
            if line.path.contains("started again") {
                plugin.restart().await;
            }
            continue;
        }
        let mut req = body_json(&line.body);
        substitute(&mut req, &map);
        if line.path == "/NetworkDriver.CreateNetwork"
            && req["Options"]["com.docker.network.internal"] == true
        {
            internal.insert(req["NetworkID"].as_str().unwrap().to_string());
        }
        // Keep Docker's framing: a body ending in a newline, or no body at all.
        let body = if req.is_null() {
            String::new()
        } else {
            format!("{req}\n")
        };
        let mut ids =
            serde_json::json!({"NetworkID": req["NetworkID"], "EndpointID": req["EndpointID"]});
        if gateway_calls && line.path == "/NetworkDriver.Leave" {
            expect_empty(&plugin, "/NetworkDriver.RevokeExternalConnectivity", &ids).await;
        }
        let (status, resp) = plugin.call(&line.path, &body).await;
        assert_eq!(
            status,
            200,
            "{name} line {}: {} {body} -> {resp}",
            i + 1,
            line.path
        );
        check_shape(&line.path, &req, &resp, &internal);
        if gateway_calls && line.path == "/NetworkDriver.Join" {
            ids["Options"] = req["Options"].clone();
            expect_empty(&plugin, "/NetworkDriver.ProgramExternalConnectivity", &ids).await;
        }
        if line.path == "/NetworkDriver.Join" {
            links.insert(
                resp["InterfaceName"]["SrcName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        if line.path == "/IpamDriver.RequestAddress" && req["Address"].as_str() == Some("") {
            // What the recorder handed out is the first address of this pool that later
            // requests use and that no other request explains.
            let pool: IpNet = req["PoolID"].as_str().unwrap().parse().unwrap();
            let ours: IpNet = resp["Address"].as_str().unwrap().parse().unwrap();
            let mut later = Vec::new();
            for l in &lines[i + 1..] {
                ips_in(&body_json(&l.body), &mut later);
            }
            let recorded = later.into_iter().find(|ip| {
                pool.contains(ip)
                    && !explicit.contains(ip)
                    && !map.contains_key(ip)
                    && *ip != pool.network()
            });
            if let Some(r) = recorded {
                map.insert(r, ours.addr());
            }
        }
    }
    // Nothing left behind: every veth gone, every bridge cnibridge made gone, no address file.
    for l in &links {
        assert!(
            !plugin.dp.link_exists(l).await.unwrap(),
            "{name}: {l} left behind"
        );
        let host = l.replacen("ccb", "vcb", 1);
        assert!(
            !plugin.dp.link_exists(&host).await.unwrap(),
            "{name}: {host} left behind"
        );
    }
    assert!(
        plugin.dp.bridges().is_empty(),
        "{name}: bridges left: {:?}",
        plugin.dp.bridges()
    );
    let mut files = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(plugin.data_dir()) {
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                if n != "lock" && !n.starts_with("last_reserved_ip") {
                    files.push(format!("{}/{n}", d.file_name().to_string_lossy()));
                }
            }
        }
    }
    assert!(files.is_empty(), "{name}: address files left: {files:?}");
    assert!(
        plugin.fw.networks().is_empty() && plugin.fw.ports().is_empty(),
        "{name}: firewall rules left"
    );
    plugin.fw.clone()
}

#[tokio::test]
async fn replay_01_with_gateway_calls_publishes_and_removes_the_ports() {
    let fw = replay_as("01-create-run-publish-rm.jsonl", "10.210.0.0/16:24", true).await;
    let published: Vec<String> = fw
        .calls()
        .iter()
        .filter_map(|c| match c {
            FirewallCall::AddPorts(p) => Some(cnibridge::driver::ports::describe(&p.mappings)),
            _ => None,
        })
        .collect();
    // `-p 8080:80 -p 127.0.0.1:5353:53/udp`; the second container publishes nothing.
    assert_eq!(published, ["8080/tcp->80, 127.0.0.1:5353/udp->53"]);
}

#[tokio::test]
async fn replay_01_create_run_publish_rm() {
    replay("01-create-run-publish-rm.jsonl", "10.210.0.0/16:24").await;
}

#[tokio::test]
async fn replay_02_ipv6_iprange_internal_auto_pool() {
    // The recorder picked 10.77.2.0/24 for the network made without --subnet.
    replay(
        "02-ipv6-iprange-internal-auto-pool.jsonl",
        "10.77.2.0/24:24,fd7b::/48:64",
    )
    .await;
}

#[tokio::test]
async fn replay_03_default_ipam_driver_only() {
    replay("03-default-ipam-driver-only.jsonl", "10.210.0.0/16:24").await;
}

#[tokio::test]
async fn replay_04_dockerd_restart() {
    replay(
        "04-dockerd-restart-with-restart-policy-container.jsonl",
        "10.210.0.0/16:24",
    )
    .await;
}

#[tokio::test]
async fn replay_05_dockerd_sigkill() {
    replay(
        "05-dockerd-sigkill-with-restart-policy-container.jsonl",
        "10.210.0.0/16:24",
    )
    .await;
}

async fn expect_err(p: &Plugin, path: &str, body: &str, status: u16, needle: &str) {
    let (s, v) = p.call(path, body).await;
    assert_eq!(s, status, "{path} {body:?} -> {v}");
    let e = v["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no Err in {v}"));
    assert!(
        e.contains(needle),
        "{path} {body:?}: {e:?} does not mention {needle:?}"
    );
}

#[tokio::test]
async fn malformed_requests_get_readable_errors() {
    let p = Plugin::start("10.210.0.0/16:24").await;
    expect_err(
        &p,
        "/NetworkDriver.CreateNetwork",
        "{not json",
        500,
        "invalid NetworkDriver.CreateNetwork request",
    )
    .await;
    expect_err(
        &p,
        "/NetworkDriver.CreateNetwork",
        r#"{"NetworkID": 5}"#,
        500,
        "invalid type",
    )
    .await;
    expect_err(
        &p,
        "/NetworkDriver.CreateNetwork",
        "",
        500,
        "NetworkID is missing",
    )
    .await;
    expect_err(
        &p,
        "/IpamDriver.RequestPool",
        r#"{"Pool": ["x"]}"#,
        500,
        "invalid IpamDriver.RequestPool request",
    )
    .await;
    expect_err(
        &p,
        "/IpamDriver.RequestPool",
        r#"{"AddressSpace":"CniLocal","Pool":"10.1.0.5/33"}"#,
        500,
        "not a subnet",
    )
    .await;
    expect_err(
        &p,
        "/IpamDriver.RequestAddress",
        r#"{"PoolID":"nope","Address":""}"#,
        500,
        "unknown pool",
    )
    .await;
    expect_err(
        &p,
        "/NetworkDriver.Join",
        r#"{"NetworkID":"abc","EndpointID":"def"}"#,
        500,
        "not known to cnibridge",
    )
    .await;
    expect_err(
        &p,
        "/NetworkDriver.NoSuchMethod",
        "{}",
        404,
        "does not implement",
    )
    .await;
    expect_err(&p, "/Plugin.Nope", "", 404, "does not implement").await;
    let big = format!(r#"{{"NetworkID":"{}"}}"#, "a".repeat(2 << 20));
    expect_err(&p, "/NetworkDriver.CreateNetwork", &big, 500, "larger than").await;

    // Lenient where Docker is: null collections, unknown fields, trailing newline, deletes of
    // unknown ids.
    let (s, v) = p
        .call(
            "/NetworkDriver.CreateEndpoint",
            "{\"NetworkID\":\"x\",\"EndpointID\":\"y\",\"Interface\":null,\"Options\":null,\"Future\":1}\n",
        )
        .await;
    assert_eq!(s, 500, "{v}");
    for path in [
        "/NetworkDriver.DeleteNetwork",
        "/NetworkDriver.DeleteEndpoint",
        "/NetworkDriver.Leave",
    ] {
        let (s, v) = p
            .call(
                path,
                "{\"NetworkID\":\"gone\",\"EndpointID\":\"gone\",\"Extra\":null}\n",
            )
            .await;
        assert_eq!((s, v.to_string()), (200, "{}".to_string()), "{path}");
    }
    let (s, v) = p
        .call(
            "/IpamDriver.ReleaseAddress",
            r#"{"PoolID":"10.9.9.0/24","Address":"10.9.9.9"}"#,
        )
        .await;
    assert_eq!((s, v.to_string()), (200, "{}".to_string()));
    let (s, v) = p
        .call("/IpamDriver.ReleasePool", r#"{"PoolID":"10.9.9.0/24"}"#)
        .await;
    assert_eq!((s, v.to_string()), (200, "{}".to_string()));
    for path in [
        "/NetworkDriver.ProgramExternalConnectivity",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/NetworkDriver.FreeNetwork",
        "/NetworkDriver.DiscoverNew",
        "/NetworkDriver.DiscoverDelete",
    ] {
        let (s, v) = p.call(path, "{}\n").await;
        assert_eq!((s, v.to_string()), (200, "{}".to_string()), "{path}");
    }
    let (s, v) = p
        .call("/NetworkDriver.AllocateNetwork", "{\"NetworkID\":\"n\"}")
        .await;
    assert_eq!(s, 200);
    assert!(v["Options"].is_object());
    let (s, v) = p
        .call("/NetworkDriver.GwAllocCheck", "{\"Options\":{}}")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["SkipIPv4"], false);
}

/// What a client sends, byte for byte, and the status line and body it gets back.
async fn raw_exchange(socket: &Path, request: &[u8]) -> (String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    // The server may answer and hang up before it has read all of a request it refuses.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // A chunked answer: the JSON sits between the chunk sizes.
    let json = body
        .find('{')
        .and_then(|a| body.rfind('}').map(|b| &body[a..=b]))
        .unwrap_or("null");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// A chunked body that breaks off is answered as what it is, not as "too large"; a GET is 405.
#[tokio::test]
async fn broken_bodies_and_other_verbs_get_readable_errors() {
    let p = Plugin::start("10.210.0.0/16:24").await;
    let (status, v) = raw_exchange(
        &p.socket(),
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let e = v["Err"].as_str().unwrap_or_default();
    assert!(status.contains(" 500 "), "status {status}");
    assert!(e.contains("could not be read"), "{v}");
    assert!(p.dp.bridges().is_empty());
    let body = r#"{"NetworkID":"abc"}"#;
    let get = format!(
        "GET /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, v) = raw_exchange(&p.socket(), get.as_bytes()).await;
    assert!(status.contains(" 405 "), "status {status}");
    assert!(
        v["Err"].as_str().unwrap_or_default().contains("POST only"),
        "{v}"
    );
}

/// Requests hyper refuses before cnibridge sees them (an unparsable head, headers beyond its
/// buffer) are answered with an `{"Err"}` body too, saying what was wrong.
#[tokio::test]
async fn requests_hyper_refuses_still_get_an_err_body() {
    let p = Plugin::start("10.210.0.0/16:24").await;
    let (status, v) = raw_exchange(&p.socket(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(status.contains(" 400 "), "status {status}");
    let e = v["Err"].as_str().unwrap_or_default();
    assert!(e.contains("could not be parsed"), "{v}");
    let huge = format!(
        "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, v) = raw_exchange(&p.socket(), huge.as_bytes()).await;
    assert!(status.contains(" 431 "), "status {status}");
    let e = v["Err"].as_str().unwrap_or_default();
    assert!(e.contains("headers are too large"), "{v}");
    assert!(p.dp.bridges().is_empty());
}
