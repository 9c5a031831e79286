//! Issue 11: CNI `bandwidth` from Docker: a network's `-o cni.bandwidth.*` shapes every container on it, a
//! container's own `--network name=N,driver-opt=cni.bandwidth.*` overrides the keys it gives (no Docker
//! driver offers a per-container limit), and `docker rm` takes the qdiscs and the ifb device away.
//!
//! Read back as an operator would, with `tc -j qdisc show`: ingress (into the container) is a TBF root
//! qdisc on the host end of the veth; egress is the host end's ingress qdisc redirecting to an ifb device
//! (`bcb` + 12 characters of the EndpointID) whose root qdisc is a TBF. The delivered rate itself is
//! measured in the netns tier (tests/netns_shaping.rs).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ctx::{Ctx, SETTLE};
use crate::support::host::link;
use crate::support::process::run_ok;
use crate::support::wait_for;

pub const BANDWIDTH_SUBNET: &str = "10.229.1.0/24";
pub const BANDWIDTH_BRIDGE: &str = "cnbtbw";

/// The qdiscs of `dev`: (kind, handle, rate in bytes per second if a TBF).
fn qdiscs(dev: &str) -> Vec<(String, String, Option<u64>)> {
    let text = run_ok("tc", &["-j", "qdisc", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc -j: {e}: {text}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            (
                q["kind"].as_str().unwrap_or("?").to_string(),
                q["handle"].as_str().unwrap_or("?").to_string(),
                q["options"]["rate"].as_u64(),
            )
        })
        .collect()
}

fn tbf_rate(dev: &str) -> Option<u64> {
    qdiscs(dev)
        .into_iter()
        .find(|(kind, _, _)| kind == "tbf")
        .and_then(|(_, _, rate)| rate)
}

/// Bytes per second of `len` bytes sent from the host to a listener in the container, measured until
/// the container's `nc` has read them all and closed.
fn bytes_per_second_into(ctx: &Ctx, container: &str, ip: Ipv4Addr, len: usize) -> f64 {
    let _listener = ctx.docker(&[
        "exec",
        "-d",
        container,
        "sh",
        "-c",
        "nc -l -p 5001 > /dev/null",
    ]);
    let addr = SocketAddr::from((ip, 5001));
    let mut stream = wait_for("the container's listener", SETTLE, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    stream.write_all(&vec![0u8; len]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = stream.read_to_end(&mut Vec::new());
    len as f64 / started.elapsed().as_secs_f64()
}

/// Bytes per second of `len` bytes the container sends to a listener of the host at `host_ip`, from
/// the first byte to the end.
fn bytes_per_second_out_of(ctx: &Ctx, container: &str, host_ip: Ipv4Addr, len: usize) -> f64 {
    let listener = TcpListener::bind((host_ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let blocks = len / 65536;
    let script =
        format!("dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {host_ip} {port}");
    let cli = ctx.cli();
    let container = container.to_string();
    let sender = std::thread::spawn(move || cli.run(&["exec", &container, "sh", "-c", &script]));
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let first = conn.read(&mut buf).unwrap();
    let started = Instant::now();
    let mut total = first;
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(conn);
    let _ = sender.join();
    assert!(
        total >= blocks * 65536,
        "only {total} of {len} bytes arrived"
    );
    (total - first) as f64 / secs
}

fn ifb_of(endpoint_id: &str) -> String {
    format!("bcb{}", &endpoint_id[..12])
}

pub fn i_bandwidth(ctx: &mut Ctx) {
    ctx.require_plugin();
    let net = "cnbt-bw";
    let mut s = ctx.scope();
    s.network(
        net,
        &[
            "--subnet",
            BANDWIDTH_SUBNET,
            "-o",
            &format!("bridge={BANDWIDTH_BRIDGE}"),
            "-o",
            "cni.bandwidth.ingressRate=8000000",
            "-o",
            "cni.bandwidth.ingressBurst=80000",
        ],
    );
    // The network's limit only.
    let plain = s.run_sleep("cnbt-bw1", net, &[]);
    assert_eq!(
        tbf_rate(&plain.veth()),
        Some(1_000_000),
        "8 Mbit/s into cnbt-bw1 (TBF on {}): {:?}",
        plain.veth(),
        qdiscs(&plain.veth())
    );
    assert!(
        link(&ifb_of(&plain.endpoint_id)).is_none(),
        "an ifb for a container without egress shaping"
    );

    // Its own: a lower ingress rate and an egress limit.
    let own = format!(
        "name={net},driver-opt=cni.bandwidth.ingressRate=4000000,\
         driver-opt=cni.bandwidth.egressRate=2000000,driver-opt=cni.bandwidth.egressBurst=40000"
    );
    let out = s.run("cnbt-bw2", &own, &[], &["sleep", "600"]);
    assert!(
        out.status.success(),
        "docker run --network {own}: {}",
        crate::support::process::stderr_text(&out)
    );
    let shaped = ctx.endpoint("cnbt-bw2", net);
    let veth = shaped.veth();
    let ifb = ifb_of(&shaped.endpoint_id);
    assert_eq!(
        tbf_rate(&veth),
        Some(500_000),
        "driver-opt ingressRate overrides the network's: {:?}",
        qdiscs(&veth)
    );
    assert!(
        qdiscs(&veth).iter().any(|(kind, _, _)| kind == "ingress"),
        "egress shaping needs the ingress qdisc on {veth}: {:?}",
        qdiscs(&veth)
    );
    let filters = run_ok("tc", &["filter", "show", "dev", &veth, "parent", "ffff:"]);
    assert!(
        filters.contains("mirred") && filters.contains(&ifb),
        "no mirred redirect from {veth} to {ifb}: {filters}"
    );
    let ifb_link = link(&ifb).unwrap_or_else(|| panic!("ifb {ifb} does not exist"));
    assert_eq!(ifb_link.kind.as_deref(), Some("ifb"), "kind of {ifb}");
    assert_eq!(
        tbf_rate(&ifb),
        Some(250_000),
        "2 Mbit/s out: {:?}",
        qdiscs(&ifb)
    );

    // Traffic still flows through both shapers, at no more than 1.5 times their rates.
    ctx.ping("cnbt-bw2", plain.ip.unwrap());
    let ip = shaped.ipv4();
    let into = bytes_per_second_into(ctx, "cnbt-bw2", ip, 2_000_000);
    assert!(
        into <= 1.5 * 500_000.0,
        "into cnbt-bw2 at {into:.0} B/s, over 1.5 x its 4 Mbit/s"
    );
    println!("note: i_bandwidth: into cnbt-bw2 {into:.0} B/s (TBF 500000 B/s)");
    let gateway = shaped.gateway.unwrap();
    let out = bytes_per_second_out_of(ctx, "cnbt-bw2", gateway, 1_000_000);
    assert!(
        out <= 1.5 * 250_000.0,
        "out of cnbt-bw2 at {out:.0} B/s, over 1.5 x its 2 Mbit/s"
    );

    println!("note: i_bandwidth: out of cnbt-bw2 {out:.0} B/s (TBF 250000 B/s)");

    // A bad value is refused before the container starts.
    let bad = format!("name={net},driver-opt=cni.bandwidth.egressRate=fast");
    let out = s.run("cnbt-bw3", &bad, &[], &["sleep", "600"]);
    let err = crate::support::process::stderr_text(&out);
    assert!(!out.status.success(), "egressRate=fast started");
    assert!(
        err.contains("is not a whole number"),
        "docker run output: {err}"
    );
    s.rm("cnbt-bw3");

    s.rm("cnbt-bw2");
    ctx.wait_link_gone(&veth);
    ctx.wait_link_gone(&ifb);
    s.rm("cnbt-bw1");
    s.network_rm(net);
    ctx.wait_link_gone(BANDWIDTH_BRIDGE);
}
