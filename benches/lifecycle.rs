//! One endpoint's whole life, at the socket, with the real netlink dataplane — against the same
//! attach/detach done by exec'ing the real CNI `bridge` plugin (ADD then DEL).
//!
//! Run as root: `cargo bench --bench lifecycle` (N=200 by default; `CNB_BENCH_N=50` to change).
//! Everything happens inside a network namespace the bench creates (the "host"), so the real
//! host's links are never touched; the CNI side's container namespaces are created and deleted
//! outside the timed region.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::firewall::NoFirewall;
use serde_json::{json, Value};
use support::in_process::{self, InProcess, UnixClient};

const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";

fn stats(name: &str, mut v: Vec<Duration>) -> f64 {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = ms(v[v.len() / 2]);
    println!(
        "{name:<28} n={:<4} median {:>8.3} ms   p90 {:>8.3} ms   min {:>8.3} ms   max {:>8.3} ms",
        v.len(),
        median,
        ms(v[v.len() * 9 / 10]),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
    median
}

async fn call(client: &UnixClient, sock: &Path, path: &str, body: Value) -> Value {
    let (status, v) = in_process::call(client, sock, path, format!("{body}\n")).await;
    assert!((200..300).contains(&status), "{path}: {v}");
    v
}

async fn cnibridge_lifecycles(dir: &Path, n: usize) -> Vec<Duration> {
    let dp = NetlinkDataplane::new().expect("netlink");
    let setup = InProcess {
        socket_name: "cnb.sock",
        ..InProcess::new(dir)
    };
    // Served until the process ends.
    let _served = setup.serve(dp, NoFirewall).await;
    let sock = setup.socket();
    let client = in_process::client();
    let net = "b".repeat(64);
    call(&client, &sock, "/IpamDriver.RequestPool", json!({"AddressSpace":"CniLocal","Pool":"10.199.0.0/16","SubPool":"","Options":{},"V6":false})).await;
    call(&client, &sock, "/IpamDriver.RequestAddress", json!({"PoolID":"10.199.0.0/16","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}})).await;
    call(&client, &sock, "/NetworkDriver.CreateNetwork", json!({"NetworkID":net,"Options":{"com.docker.network.generic":{"bridge":"cnbbench0"}},"IPv4Data":[{"AddressSpace":"CniLocal","Pool":"10.199.0.0/16","Gateway":"10.199.0.1/16"}],"IPv6Data":[]})).await;
    let mut out = Vec::with_capacity(n);
    let names = [
        "RequestAddress",
        "CreateEndpoint",
        "Join",
        "Leave",
        "DeleteEndpoint",
        "ReleaseAddress",
    ];
    let mut steps: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for i in 0..n {
        let ep = format!("{i:012x}{}", "e".repeat(52));
        let t = Instant::now();
        let mut addr = String::new();
        for (k, step) in names.iter().enumerate() {
            let lap = Instant::now();
            let ip = addr.split('/').next().unwrap_or("").to_string();
            let (path, body) = match *step {
                "RequestAddress" => (
                    "/IpamDriver.RequestAddress",
                    json!({"PoolID":"10.199.0.0/16","Address":"","Options":null}),
                ),
                "CreateEndpoint" => (
                    "/NetworkDriver.CreateEndpoint",
                    json!({"NetworkID":net,"EndpointID":ep,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},"Options":{}}),
                ),
                "Join" => (
                    "/NetworkDriver.Join",
                    json!({"NetworkID":net,"EndpointID":ep,"SandboxKey":"/var/run/docker/netns/bench","Options":{}}),
                ),
                "Leave" => (
                    "/NetworkDriver.Leave",
                    json!({"NetworkID":net,"EndpointID":ep}),
                ),
                "DeleteEndpoint" => (
                    "/NetworkDriver.DeleteEndpoint",
                    json!({"NetworkID":net,"EndpointID":ep}),
                ),
                _ => (
                    "/IpamDriver.ReleaseAddress",
                    json!({"PoolID":"10.199.0.0/16","Address":ip}),
                ),
            };
            let v = call(&client, &sock, path, body).await;
            if k == 0 {
                addr = v["Address"].as_str().expect("address").to_string();
            }
            steps[k].push(lap.elapsed());
        }
        out.push(t.elapsed());
    }
    if std::env::var_os("CNB_BENCH_STEPS").is_some() {
        for (name, v) in names.iter().zip(steps) {
            stats(&format!("  {name}"), v);
        }
    }
    call(
        &client,
        &sock,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":"10.199.0.0/16","Address":"10.199.0.1"}),
    )
    .await;
    call(
        &client,
        &sock,
        "/IpamDriver.ReleasePool",
        json!({"PoolID":"10.199.0.0/16"}),
    )
    .await;
    call(
        &client,
        &sock,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID":net}),
    )
    .await;
    out
}

fn cni(cmd: &str, conf: &str, netns: &str, id: &str) {
    let mut child = Command::new(CNI_BRIDGE)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CNI bridge plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write conf");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "bridge {cmd}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn cni_lifecycles(dir: &Path, n: usize) -> Vec<Duration> {
    let conf = json!({"cniVersion":"1.0.0","name":"cnbbench","type":"bridge","bridge":"cnbbench1","isGateway":true,
        "ipam":{"type":"host-local","dataDir":dir.join("cni-data"),"subnet":"10.198.0.0/16"}})
    .to_string();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ns = format!("cnbbench{}-{i}", std::process::id());
        run("ip", &["netns", "add", &ns]);
        let path = format!("/run/netns/{ns}");
        let id = format!("bench{i}");
        let t = Instant::now();
        cni("ADD", &conf, &path, &id);
        cni("DEL", &conf, &path, &id);
        out.push(t.elapsed());
        run("ip", &["netns", "del", &ns]);
    }
    out
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect("run");
    assert!(st.success(), "{cmd} {args:?}");
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("lifecycle bench: run it with `cargo bench --bench lifecycle`");
        return;
    }
    if !support::require(
        "root, which the lifecycle bench needs (bridges and veths)",
        support::is_root(),
    ) || !support::require(
        &format!("{CNI_BRIDGE} (apt-get install containernetworking-plugins)"),
        Path::new(CNI_BRIDGE).exists(),
    ) {
        return;
    }
    if std::env::var_os("CNB_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    let n: usize = std::env::var("CNB_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // A private "host" namespace for this process: the runtime's threads start after this and
    // inherit it; so do the CNI plugin processes.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
    run("ip", &["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ours = rt.block_on(cnibridge_lifecycles(&path, n));
    let theirs = cni_lifecycles(&path, n.min(100));
    println!("endpoint lifecycle (RequestAddress, CreateEndpoint, Join, Leave, DeleteEndpoint, ReleaseAddress):");
    let a = stats("cnibridge over its socket", ours);
    let b = stats("CNI bridge exec ADD+DEL", theirs);
    println!("speed-up: {:.1}x", b / a);
}
