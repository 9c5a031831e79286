//! Network creation at scale, at the socket, with the real netlink dataplane and the real
//! firewall: N × (RequestPool, RequestAddress of the gateway, CreateNetwork) as dockerd sends
//! them, each CreateNetwork timed, then every network deleted and the namespace checked empty
//! (no bridge, no rule of a network).
//!
//! Run as root: `cargo bench --bench scale` (N=200 by default; `CNB_BENCH_N=50` to change;
//! `CNB_BENCH_FIREWALL=nftables` for the nftables backend, `none` for no firewall work at all;
//! `iptables` is the default).
//! Everything happens inside a network namespace the bench creates, so the host's own links and
//! rules are never touched. The speed targets (the last CreateNetwork at most 1.2× the first,
//! one at most 25 ms with iptables) are reported, not asserted: the bench fails only on errors.
//! DeleteNetwork is timed too (first/last 10), as the bench deletes every network.
//!
//! The state and data directories live in a temporary directory under `TMPDIR`. Its filesystem
//! matters: ext4 without a journal skips, linearly, every inode freed in the last 30 seconds
//! when it allocates one (`recently_deleted`), and each atomic record write frees one, so there
//! creates slow down with the number of files written recently (by this bench or anything else
//! on that filesystem), not with the number of networks. `TMPDIR=/dev/shm` measures the daemon
//! alone, without that and without the disk's fsync latency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cnibridge::cnm::{router, server};
use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::driver::Driver;
use cnibridge::firewall::iptables::IptablesFirewall;
use cnibridge::firewall::nftables::NftablesFirewall;
use cnibridge::firewall::{Firewall, NoFirewall};
use cnibridge::ipam::{Ipam, IpamConfig};
use cnibridge::state::StateDir;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::{json, Value};

type Http = Client<UnixConnector, Full<Bytes>>;

async fn call(client: &Http, sock: &Path, path: &str, body: Value) -> Result<Value, String> {
    let uri: hyper::Uri = hyperlocal::Uri::new(sock, path).into();
    let req = hyper::Request::post(uri)
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .map_err(|e| format!("{path}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: {e}"))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
    if !status.is_success() || v.get("Err").is_some_and(|e| e != "") {
        return Err(format!("{path}: {status} {v}"));
    }
    Ok(v)
}

/// The i-th network: id, bridge, pool, gateway.
fn network(i: usize) -> (String, String, String, String) {
    let id = format!("{:012x}{}", i + 1, "c".repeat(52));
    let (a, b) = (100 + i / 256, i % 256);
    (
        id,
        format!("cnbs{i}"),
        format!("10.{a}.{b}.0/24"),
        format!("10.{a}.{b}.1"),
    )
}

async fn scale<F: Firewall>(
    fw: F,
    dir: &Path,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let state = StateDir::open(dir.join("state")).map_err(|e| e.to_string())?;
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: dir.join("data"),
        default_pools: vec![],
        cni_conf_dir: "/nonexistent/cni-conf".into(),
    })
    .map_err(|e| e.to_string())?;
    let dp = NetlinkDataplane::new().map_err(|e| e.to_string())?;
    let driver = Driver::open(dp, fw, ipam, state)
        .await
        .map_err(|e| e.to_string())?;
    let sock = dir.join("cnb.sock");
    let listener = server::bind(&sock).await.map_err(|e| e.to_string())?;
    let s2 = sock.clone();
    tokio::spawn(async move {
        let _ = server::serve(
            listener,
            &s2,
            router(Arc::new(driver)),
            std::future::pending(),
        )
        .await;
    });
    let client: Http = Client::unix();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let (id, bridge, pool, gw) = network(i);
        call(
            &client,
            &sock,
            "/IpamDriver.RequestPool",
            json!({"AddressSpace":"CniLocal","Pool":pool,"SubPool":"","Options":{},"V6":false}),
        )
        .await?;
        call(&client, &sock, "/IpamDriver.RequestAddress", json!({"PoolID":pool,"Address":gw,"Options":{"RequestAddressType":"com.docker.network.gateway"}})).await?;
        let body = json!({"NetworkID":id,"Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"bridge":bridge,"ipMasq":"true"}},
            "IPv4Data":[{"AddressSpace":"CniLocal","Gateway":format!("{gw}/24"),"Pool":pool}],"IPv6Data":[]});
        let t = Instant::now();
        call(&client, &sock, "/NetworkDriver.CreateNetwork", body).await?;
        times.push(t.elapsed());
    }
    let mut deletes = Vec::with_capacity(n);
    for i in 0..n {
        let (id, _, pool, gw) = network(i);
        let t = Instant::now();
        call(
            &client,
            &sock,
            "/NetworkDriver.DeleteNetwork",
            json!({"NetworkID":id}),
        )
        .await?;
        deletes.push(t.elapsed());
        call(
            &client,
            &sock,
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID":pool,"Address":gw}),
        )
        .await?;
        call(
            &client,
            &sock,
            "/IpamDriver.ReleasePool",
            json!({"PoolID":pool}),
        )
        .await?;
    }
    Ok((times, deletes))
}

fn output(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the namespace still holds of the networks: bridges, and rules naming a network.
fn leftovers(backend: &str) -> Result<Vec<String>, String> {
    let mut left: Vec<String> = output("ip", &["-o", "link", "show", "type", "bridge"])?
        .lines()
        .map(str::to_string)
        .collect();
    let rules = match backend {
        "nftables" => output("nft", &["list", "ruleset"])?,
        "none" => String::new(),
        _ => output("iptables-save", &[])? + &output("ip6tables-save", &[])?,
    };
    left.extend(
        rules
            .lines()
            .filter(|l| l.contains("cnibridge net") || l.contains("cnbs"))
            .map(str::to_string),
    );
    Ok(left)
}

fn median(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn report(what: &str, backend: &str, times: &[Duration], target: bool) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let k = times.len().min(10);
    let first10 = median(&times[..k]);
    let last10 = median(&times[times.len() - k..]);
    println!("{what} at the socket, {backend} backend, n={}", times.len());
    println!("  1st                 {:>8.3} ms", ms(times[0]));
    println!("  median of first {k:<3} {first10:>8.3} ms");
    println!("  median of last {k:<3}  {last10:>8.3} ms");
    println!(
        "  {:<4}                {:>8.3} ms",
        times.len(),
        ms(times[times.len() - 1])
    );
    let (ratio_target, ms_target) = if target {
        ("   (target <= 1.20)", "   (target <= 25 ms with iptables)")
    } else {
        ("", "")
    };
    println!(
        "  ratio last/first    {:>8.2}{ratio_target}",
        last10 / first10
    );
    println!("  median of all       {:>8.3} ms{ms_target}", median(times));
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    output(cmd, args).map(|_| ())
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: run it with `cargo bench --bench scale`");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("scale bench: needs root (bridges and rules); skipped");
        return;
    }
    if let Err(e) = bench() {
        eprintln!("scale bench failed: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    if std::env::var_os("CNB_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    let n: usize = std::env::var("CNB_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
        .clamp(1, 50_000);
    let backend = std::env::var("CNB_BENCH_FIREWALL").unwrap_or_else(|_| "iptables".into());
    // A private "host" namespace for this process: the runtime's threads start after this and
    // inherit it; so do the firewall tools.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare a network namespace: {e}"))?;
    run("ip", &["link", "set", "lo", "up"])?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path: PathBuf = dir.path().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (times, deletes) = match backend.as_str() {
        "iptables" => rt.block_on(scale(IptablesFirewall::default(), &path, n))?,
        "nftables" => rt.block_on(scale(NftablesFirewall::default(), &path, n))?,
        // What a CreateNetwork costs without any firewall work (dataplane, IPAM, state).
        "none" => rt.block_on(scale(NoFirewall, &path, n))?,
        other => {
            return Err(format!(
                "CNB_BENCH_FIREWALL={other}: iptables, nftables or none"
            ))
        }
    };
    report("CreateNetwork", &backend, &times, true);
    report("DeleteNetwork", &backend, &deletes, false);
    let left = leftovers(&backend)?;
    if !left.is_empty() {
        return Err(format!(
            "left behind after deleting every network:\n{}",
            left.join("\n")
        ));
    }
    println!("  after deleting all: no bridge, no network rule left");
    Ok(())
}
