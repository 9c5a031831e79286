//! The "outside" of the firewall scenarios: a network namespace of our own, wired to the host by a veth
//! pair on a private /30, with a TCP server that records the source address of every connection. It
//! stands in for the internet, so test packets only ever go to addresses the suite created.
//!
//! The outside namespace has no default route: with masquerade the replies go to the host's address on
//! the /30, which it knows. Without masquerade a scenario adds a route back to its container subnet
//! ([`Outside::route_back`]). The namespace, the veth and the host's `ip_forward` (turned on if it was
//! off) are put back on drop; [`sweep`] removes what a run that died left behind.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use super::host::{check_subnets_unused, delete_link, links, netns_matching};
use super::process::{pid_alive, run_timeout, stderr_text, POLL};

/// The /30 between the host and the outside namespace.
pub const OUTSIDE_NET: &str = "10.250.77.0/30";
/// The host's end: what a masqueraded container connection comes from.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 77, 1);
/// The outside end, where the server listens.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 77, 2);
/// Namespaces are `cnbt-out-<pid>`, the host end of the veth `cnbtho<pid>`, the outside end `cnbtoo<pid>`.
const NS_PREFIX: &str = "cnbt-out-";
const VETH_PREFIX: &str = "cnbtho";
const PEER_PREFIX: &str = "cnbtoo";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub fn netns_name(pid: u32) -> String {
    format!("{NS_PREFIX}{pid}")
}

pub fn veth_name(pid: u32) -> String {
    format!("{VETH_PREFIX}{pid}")
}

/// `ip <args>` that must succeed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = run_timeout(Command::new("ip").args(args), CMD_TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr_text(&out)))
    }
}

pub struct Outside {
    ns: String,
    veth: String,
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    /// `ip_forward` as it was, if we changed it.
    old_forward: Option<String>,
}

impl Outside {
    /// Creates the namespace, the veth pair and the server. On error, whatever was made is removed again.
    pub fn create() -> Result<Outside, String> {
        check_subnets_unused(&[OUTSIDE_NET])?;
        let pid = std::process::id();
        let peer = format!("{PEER_PREFIX}{pid}");
        // Built up in place, so that an early return drops (and removes) what exists so far.
        let mut o = Outside {
            ns: netns_name(pid),
            veth: veth_name(pid),
            port: 0,
            peers: Arc::default(),
            stop: Arc::default(),
            server: None,
            old_forward: None,
        };
        ip(&["netns", "add", &o.ns])?;
        ip(&[
            "link", "add", &o.veth, "type", "veth", "peer", "name", &peer, "netns", &o.ns,
        ])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &o.veth])?;
        ip(&["link", "set", &o.veth, "up"])?;
        let addr = format!("{OUTSIDE_IP}/30");
        ip(&["-n", &o.ns, "addr", "add", &addr, "dev", &peer])?;
        ip(&["-n", &o.ns, "link", "set", &peer, "up"])?;
        ip(&["-n", &o.ns, "link", "set", "lo", "up"])?;
        let old = fs::read_to_string(IP_FORWARD)
            .map_err(|e| format!("read {IP_FORWARD}: {e}"))?
            .trim()
            .to_string();
        if old != "1" {
            fs::write(IP_FORWARD, "1").map_err(|e| format!("write {IP_FORWARD}: {e}"))?;
            o.old_forward = Some(old);
        }
        o.start_server()?;
        Ok(o)
    }

    /// A listener thread inside the namespace: it answers each connection with `peer <addr>:<port>\n`
    /// and closes it.
    fn start_server(&mut self) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.ns);
        let ns = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let (peers, stop) = (self.peers.clone(), self.stop.clone());
        let handle = thread::Builder::new()
            .name("cnbt-outside".into())
            .spawn(move || {
                // Only this thread changes namespace; it ends with the server.
                let bound = setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns into {path}: {e}"))
                    .and_then(|()| {
                        TcpListener::bind((OUTSIDE_IP, 0))
                            .map_err(|e| format!("bind {OUTSIDE_IP}: {e}"))
                    })
                    .and_then(|l| {
                        let port = l.local_addr().map_err(|e| e.to_string())?.port();
                        l.set_nonblocking(true).map_err(|e| e.to_string())?;
                        Ok((l, port))
                    });
                match bound {
                    Ok((listener, port)) => {
                        let _ = tx.send(Ok(port));
                        serve(&listener, &peers, &stop);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| format!("spawn the outside server: {e}"))?;
        self.server = Some(handle);
        self.port = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("outside server did not start: {e}"))??;
        Ok(())
    }

    pub fn ip(&self) -> Ipv4Addr {
        OUTSIDE_IP
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Source addresses of the connections the server accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Routes `subnet` (a container subnet) back through the host, for networks without masquerade.
    pub fn route_back(&self, subnet: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns,
            "route",
            "add",
            subnet,
            "via",
            &HOST_IP.to_string(),
        ])
    }
}

fn serve(listener: &TcpListener, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                peers.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = writeln!(stream, "peer {peer}");
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Deletes one run's veth and namespace; returns what it deleted.
fn remove(ns: &str, veth: &str) -> Vec<String> {
    let mut done = Vec::new();
    if links().iter().any(|l| l.name == veth) && delete_link(veth).is_ok() {
        done.push(format!("deleted link {veth}"));
    }
    if netns_matching(ns).iter().any(|n| n == ns) && ip(&["netns", "del", ns]).is_ok() {
        done.push(format!("deleted netns {ns}"));
    }
    done
}

impl Drop for Outside {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed scenario unwinds.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        remove(&self.ns, &self.veth);
        if let Some(old) = self.old_forward.take() {
            if let Err(e) = fs::write(IP_FORWARD, &old) {
                eprintln!("warning: restoring {IP_FORWARD} to {old}: {e}");
            }
        }
    }
}

/// This run's outside namespace and veth, if they still exist (they should not once the scenarios ended).
pub fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    let (ns, veth) = (netns_name(pid), veth_name(pid));
    let mut found: Vec<String> = netns_matching(&ns)
        .into_iter()
        .filter(|n| *n == ns)
        .map(|n| format!("outside netns {n} still exists"))
        .collect();
    if links().iter().any(|l| l.name == veth) {
        found.push(format!("outside veth {veth} still exists"));
    }
    found
}

/// Removes outside namespaces and veths of runs that are gone, and this run's too if `own`.
pub fn sweep(own: bool) -> Vec<String> {
    let me = std::process::id();
    let doomed = |pid: u32| (own && pid == me) || (pid != me && !pid_alive(pid as i32));
    let mut pids: Vec<u32> = netns_matching(NS_PREFIX)
        .iter()
        .filter_map(|n| n.strip_prefix(NS_PREFIX)?.parse().ok())
        .chain(
            links()
                .iter()
                .filter_map(|l| l.name.strip_prefix(VETH_PREFIX)?.parse().ok()),
        )
        .filter(|pid| doomed(*pid))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .flat_map(|pid| remove(&netns_name(pid), &veth_name(pid)))
        .collect()
}
