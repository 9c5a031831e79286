//! Issue 11 f: flannel spans hosts, cnibridge puts Docker containers on it. Two "hosts": this one, running
//! dockerd and cnibridge with k3s' flannel conflist, and a second network namespace standing for another
//! flannel node, with its own bridge and a workload namespace behind it, joined to this host by VXLAN as
//! flanneld's vxlan backend joins nodes (one device per node; per remote node a static neighbour and FDB
//! entry and a route to its subnet).
//!
//! What flanneld would do here the test does itself, and undoes: write `subnet.env` (this node holds
//! 10.42.1.0/24 of 10.42.0.0/16, MTU 1450, `--ip-masq`), make the VXLAN device and the route to the other
//! node's subnet, and accept forwarding of the flannel network (flanneld's `FLANNEL-FWD` rules, needed
//! on a host whose FORWARD policy is Docker's DROP).
//!
//! Asserted: the container gets an address of this node's subnet with the MTU and routes flannel's
//! delegate gives (default route and the flannel network via the bridge), reaches the workload on the
//! other node and is reached by it, and the workload sees the container's own address (flannel's
//! `ipMasq` = not `FLANNEL_IPMASQ`: flanneld masquerades, the bridge does not, and only for traffic
//! leaving the flannel network).

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::ctx::{Ctx, SETTLE};
use crate::runtimes::{flannel_install, FLANNEL_SUBNET_ENV};
use crate::support::netns::{accept_within, NamedNetns};
use crate::support::process::{run_ok, stderr_text};
use crate::support::wait_for;

/// The underlay between the two "hosts".
pub const UNDERLAY_NET: &str = "10.250.78.0/30";
const UNDERLAY_HOST: &str = "10.250.78.1";
const UNDERLAY_PEER: &str = "10.250.78.2";
/// The other node's flannel subnet, bridge address and workload.
const PEER_SUBNET: &str = "10.42.2.0/24";
const PEER_WORKLOAD: Ipv4Addr = Ipv4Addr::new(10, 42, 2, 2);
const THIS_SUBNET: &str = "10.42.1.0/24";
/// The VTEP MACs (flanneld publishes each node's in its lease; here fixed).
const VTEP_MAC_HOST: &str = "0a:58:0a:2a:01:00";
const VTEP_MAC_PEER: &str = "0a:58:0a:2a:02:00";
/// The links the test makes in this namespace (the rest live in the namespaces it deletes).
pub const FLANNEL_LINKS: &[&str] = &["cnbtfu0", "cnbtfv0"];
const FWD_CHAIN: &str = "cnbt-flannel-fwd";

fn ip(args: &[&str]) {
    run_ok("ip", args);
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(["-w"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// The second node and this node's flannel plumbing; all of it goes on drop.
struct Fabric {
    node: NamedNetns,
    workload: NamedNetns,
}

impl Fabric {
    fn build() -> Fabric {
        let node = NamedNetns::new("fnode");
        let workload = NamedNetns::new("fwl");
        let f = Fabric { node, workload };
        // Underlay: a veth between the hosts.
        ip(&[
            "link", "add", "cnbtfu0", "type", "veth", "peer", "name", "cnbtfu1",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_HOST}/30"),
            "dev",
            "cnbtfu0",
        ]);
        ip(&["link", "set", "cnbtfu0", "up"]);
        f.node.adopt("cnbtfu1", &format!("{UNDERLAY_PEER}/30"));
        // flannel.1 on each node as flanneld's vxlan backend makes it: VNI 1, port 8472, no learning, the
        // node's subnet's network address on it; then, per remote node, a permanent neighbour entry for
        // the remote VTEP's address, an FDB entry sending its MAC to the remote underlay address, and the
        // route to the remote subnet through it.
        ip(&[
            "link",
            "add",
            "cnbtfv0",
            "address",
            VTEP_MAC_HOST,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            UNDERLAY_HOST,
            "dstport",
            "8472",
            "dev",
            "cnbtfu0",
            "nolearning",
        ]);
        ip(&["link", "set", "cnbtfv0", "mtu", "1450"]);
        ip(&["addr", "add", "10.42.1.0/32", "dev", "cnbtfv0"]);
        ip(&["link", "set", "cnbtfv0", "up"]);
        ip(&[
            "neigh",
            "add",
            "10.42.2.0",
            "lladdr",
            VTEP_MAC_PEER,
            "dev",
            "cnbtfv0",
            "nud",
            "permanent",
        ]);
        run_ok(
            "bridge",
            &[
                "fdb",
                "append",
                VTEP_MAC_PEER,
                "dev",
                "cnbtfv0",
                "dst",
                UNDERLAY_PEER,
                "self",
                "permanent",
            ],
        );
        ip(&[
            "route",
            "add",
            PEER_SUBNET,
            "via",
            "10.42.2.0",
            "dev",
            "cnbtfv0",
            "onlink",
        ]);
        f.node.ip(&[
            "link",
            "add",
            "cnbtfv1",
            "address",
            VTEP_MAC_PEER,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            UNDERLAY_PEER,
            "dstport",
            "8472",
            "dev",
            "cnbtfu1",
            "nolearning",
        ]);
        f.node.ip(&["link", "set", "cnbtfv1", "mtu", "1450"]);
        f.node
            .ip(&["addr", "add", "10.42.2.0/32", "dev", "cnbtfv1"]);
        f.node.ip(&["link", "set", "cnbtfv1", "up"]);
        f.node.ip(&[
            "neigh",
            "add",
            "10.42.1.0",
            "lladdr",
            VTEP_MAC_HOST,
            "dev",
            "cnbtfv1",
            "nud",
            "permanent",
        ]);
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &f.node.name,
                "bridge",
                "fdb",
                "append",
                VTEP_MAC_HOST,
                "dev",
                "cnbtfv1",
                "dst",
                UNDERLAY_HOST,
                "self",
                "permanent",
            ],
        );
        f.node.ip(&[
            "route",
            "add",
            THIS_SUBNET,
            "via",
            "10.42.1.0",
            "dev",
            "cnbtfv1",
            "onlink",
        ]);
        // The other node's bridge and workload, as the CNI bridge plugin would have made them there.
        f.node.ip(&["link", "add", "cnbtfb", "type", "bridge"]);
        f.node.ip(&["addr", "add", "10.42.2.1/24", "dev", "cnbtfb"]);
        f.node.ip(&["link", "set", "cnbtfb", "mtu", "1450"]);
        f.node.ip(&["link", "set", "cnbtfb", "up"]);
        f.node.ip(&[
            "link", "add", "cnbtfw0", "mtu", "1450", "type", "veth", "peer", "name", "cnbtfw1",
            "mtu", "1450",
        ]);
        f.node
            .ip(&["link", "set", "cnbtfw0", "master", "cnbtfb", "up"]);
        f.node
            .ip(&["link", "set", "cnbtfw1", "netns", &f.workload.name]);
        f.workload.ip(&[
            "addr",
            "add",
            &format!("{PEER_WORKLOAD}/24"),
            "dev",
            "cnbtfw1",
        ]);
        f.workload.ip(&["link", "set", "cnbtfw1", "up"]);
        f.workload
            .ip(&["route", "add", "default", "via", "10.42.2.1"]);
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &f.node.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        // flanneld's FLANNEL-FWD: forward the flannel network whatever the FORWARD policy.
        assert!(iptables(&["-N", FWD_CHAIN]), "iptables -N {FWD_CHAIN}");
        for dir in ["-s", "-d"] {
            assert!(iptables(&[
                "-A",
                FWD_CHAIN,
                dir,
                "10.42.0.0/16",
                "-j",
                "ACCEPT"
            ]));
        }
        assert!(iptables(&["-A", "FORWARD", "-j", FWD_CHAIN]));
        f
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "FORWARD", "-j", FWD_CHAIN]);
        let _ = iptables(&["-F", FWD_CHAIN]);
        let _ = iptables(&["-X", FWD_CHAIN]);
        for l in FLANNEL_LINKS {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
        // The namespaces (and the links in them) go when their fields drop.
    }
}

/// The source address a listener in the workload namespace sees for one connection from the container.
fn peer_seen_by_workload(
    ctx: &Ctx,
    workload: &NamedNetns,
    container: &str,
) -> Result<IpAddr, String> {
    let ns = File::open(workload.path()).map_err(|e| format!("open {}: {e}", workload.name))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = thread::spawn(move || -> Result<IpAddr, String> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let l = TcpListener::bind(SocketAddr::from((PEER_WORKLOAD, 7001)))
            .map_err(|e| format!("bind: {e}"))?;
        let _ = tx.send(());
        let (mut conn, peer) = accept_within(&l, Duration::from_secs(5)).ok_or("no connection")?;
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
        Ok(peer.ip())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| "workload listener did not start".to_string())?;
    let o = ctx.docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("echo hi | nc -w 2 {PEER_WORKLOAD} 7001"),
    ]);
    let seen = server.join().map_err(|_| "listener panicked".to_string())?;
    seen.map_err(|e| format!("{e} (nc: {} {})", o.status, stderr_text(&o)))
}

pub fn i_flannel_two_hosts(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _files = flannel_install(ctx, FLANNEL_SUBNET_ENV);
    let fabric = Fabric::build();
    let net = "cnbt-flannel";
    let container = "cnbt-flannel1";
    let mut s = ctx.scope();
    s.network(net, &["--ipam-opt", "cni.conf=cbr0"]);
    let ep = s.run_sleep(container, net, &[]);
    let ip = ep.ip.unwrap_or_else(|| panic!("no IPv4 address on {net}"));
    let this: ipnet::IpNet = THIS_SUBNET.parse().unwrap();
    assert!(this.contains(&IpAddr::V4(ip)), "{ip} not in {THIS_SUBNET}");
    ctx.assert_veth_on(&ep, "cni0");
    let link = ctx.exec_ok(container, &["ip", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "FLANNEL_MTU on eth0: {link}");
    let routes = ctx.exec_ok(container, &["ip", "-4", "route"]);
    for want in ["default via 10.42.1.1", "10.42.0.0/16 via 10.42.1.1"] {
        assert!(
            routes.contains(want),
            "route {want:?} in the container: {routes}"
        );
    }

    wait_for(
        "the container pings the other node's workload",
        SETTLE,
        || {
            let o = ctx.docker(&[
                "exec",
                container,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                &PEER_WORKLOAD.to_string(),
            ]);
            match o.status.success() {
                true => Ok(()),
                false => Err(format!("{}", String::from_utf8_lossy(&o.stdout))),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = peer_seen_by_workload(ctx, &fabric.workload, container)
        .unwrap_or_else(|e| panic!("TCP from the container to the workload: {e}"));
    assert_eq!(
        seen,
        IpAddr::V4(ip),
        "the workload must see the container's own address (no masquerade inside the flannel network)"
    );
    let back = Command::new("ip")
        .args([
            "netns",
            "exec",
            &fabric.workload.name,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
        ])
        .arg(ip.to_string())
        .output()
        .unwrap_or_else(|e| panic!("ping: {e}"));
    assert!(
        back.status.success(),
        "the workload on the other node pings the container {ip}: {}",
        String::from_utf8_lossy(&back.stdout)
    );

    let veth = ep.veth();
    s.rm(container);
    s.network_rm(net);
    ctx.wait_link_gone(&veth);
    ctx.wait_link_gone("cni0");
    drop(fabric);
}
