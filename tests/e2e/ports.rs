//! Issue 5 d, published ports (`docker run -p`) as Docker users see them: from the outside namespace at the
//! host's address, from the host itself (its address and 127.0.0.1), from the container through the host
//! (hairpin), a host-only (`127.0.0.1:`) mapping, a UDP range, host port 0, a conflicting second container,
//! and nothing left after `docker rm -f`.
//!
//! busybox `nc` (Debian's build) has no UDP mode, so the UDP server runs in the container's network namespace
//! as a thread of this test (entered with setns), and the UDP client in the outside namespace likewise.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::ctx::{Ctx, SETTLE};
use crate::fw;
use crate::support::host::http_get;
use crate::support::image::INDEX_HTML;
use crate::support::outside::{Outside, HOST_IP};
use crate::support::process::{run_timeout, stderr_text, stdout_text};
use crate::support::wait_for;

pub const PORTS_SUBNET: &str = "10.230.1.0/24";
pub const PORTS_BRIDGE: &str = "cnbtpt";
const TIMEOUT: Duration = Duration::from_secs(3);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `f` on a thread that first enters the network namespace at `ns_path`; returns its result.
fn in_netns<T: Send + 'static>(
    ns_path: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = File::open(ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
    let path = ns_path.to_string();
    thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
        f()
    })
    .join()
    .map_err(|_| "thread in netns panicked".to_string())?
}

fn outside_path(out: &Outside) -> String {
    format!("/run/netns/{}", out.ns())
}

/// HTTP GET of the published page from the outside namespace.
pub(crate) fn get_from_outside(out: &Outside, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    in_netns(&outside_path(out), move || {
        http_get(IpAddr::V4(ip), port, TIMEOUT)
    })
}

pub(crate) fn expect_page(what: &str, get: impl FnMut() -> Result<String, String>) {
    let page = wait_for(what, SETTLE, get).unwrap_or_else(|e| panic!("{e}\n{}", nat_dump()));
    assert_eq!(page, INDEX_HTML, "{what}: page");
}

pub(crate) fn expect_no_answer(what: &str, r: Result<String, String>) {
    if let Ok(page) = r {
        panic!("{what} answered ({page:?}), but must not\n{}", nat_dump());
    }
}

/// The firewall with counters, and the bridge ports' hairpin flags, for failure messages.
fn nat_dump() -> String {
    let bridge = match run_timeout(
        Command::new("bridge").args(["-d", "link", "show"]),
        Duration::from_secs(30),
    ) {
        Ok(o) => stdout_text(&o) + &stderr_text(&o),
        Err(e) => e,
    };
    format!(
        "--- firewall:{}\n--- bridge -d link show:\n{bridge}",
        fw::current().dump()
    )
}

/// The host ports of an endpoint's tcp mappings, as the daemon recorded them in its state (where a
/// host port 0 is kept resolved).
fn published_tcp_ports(ctx: &Ctx, endpoint_id: &str) -> Vec<u16> {
    let path = ctx
        .plugin
        .state_dir()
        .join("endpoints")
        .join(format!("{endpoint_id}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("endpoint record {}: {e}", path.display()));
    let rec: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("endpoint record {}: {e}: {text}", path.display()));
    let mut ports: Vec<u16> = rec["ports"]["mappings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["proto"] == "tcp")
        .flat_map(|m| {
            let first = m["host_port"].as_u64().unwrap_or(0) as u16;
            let last = m["host_port_end"].as_u64().unwrap_or(0) as u16;
            first..=last
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A UDP echo server on `port` inside a network namespace (one thread), until dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns_path: &str, ports: &[u16]) -> UdpEcho {
        let ns = File::open(ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ports, flag) = (ports.to_vec(), stop.clone());
        let handle = thread::spawn(move || {
            let bound = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))
                .and_then(|()| {
                    ports
                        .iter()
                        .map(|p| {
                            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *p))
                                .map_err(|e| format!("bind udp {p}: {e}"))?;
                            s.set_read_timeout(Some(Duration::from_millis(100)))
                                .map_err(|e| e.to_string())?;
                            Ok(s)
                        })
                        .collect::<Result<Vec<_>, String>>()
                });
            let socks = match bound {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                for s in &socks {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                        let reply = format!("echo {port} {}", String::from_utf8_lossy(&buf[..n]));
                        let _ = s.send_to(reply.as_bytes(), peer);
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("udp echo did not start: {e}"))
            .unwrap_or_else(|e| panic!("udp echo: {e}"));
        UdpEcho {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One datagram to `ip:port`; returns the echo's answer.
fn udp_ask(ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.send_to(b"hi", SocketAddr::new(IpAddr::V4(ip), port))
        .map_err(|e| format!("send to {ip}:{port}: {e}"))?;
    let mut buf = [0u8; 512];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from {ip}:{port}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn expect_udp(what: &str, mut ask: impl FnMut() -> Result<String, String>, port: u16) {
    let got = wait_for(what, SETTLE, &mut ask).unwrap_or_else(|e| panic!("{e}\n{}", nat_dump()));
    assert_eq!(got, format!("echo {port} hi"), "{what}");
}

fn container_netns(ctx: &Ctx, name: &str) -> String {
    let pid = ctx.docker_ok(&["inspect", "-f", "{{.State.Pid}}", name]);
    format!("/proc/{pid}/ns/net")
}

fn tcp_refused(ip: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), TIMEOUT).is_err()
}

pub fn d_published_ports(ctx: &mut Ctx) {
    ctx.require_plugin();
    let out = Outside::create().unwrap_or_else(|e| panic!("outside namespace: {e}"));
    let net = "cnbt-pt";
    let mut s = ctx.scope();
    s.network(
        net,
        &[
            "--subnet",
            PORTS_SUBNET,
            "-o",
            &format!("bridge={PORTS_BRIDGE}"),
        ],
    );
    let o = s.run(
        "cnbt-pt1",
        net,
        &[
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1:8081:80",
            "-p",
            "9000-9001:9000-9001/udp",
            "-p",
            "80",
        ],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(o.status.success(), "docker run -p …: {}", stderr_text(&o));
    let ep = ctx.endpoint("cnbt-pt1", net);
    // Both backends name an endpoint's rules by its short id.
    let ep_key = ep.endpoint_id[..12].to_string();
    // Otherwise "no rule mentions it" at the end would prove nothing.
    assert!(
        !ctx.backend.mentions(&[&ep_key]).is_empty(),
        "no rule names the endpoint {ep_key}\n{}",
        nat_dump()
    );

    // Host port 0: docker ps cannot show it for a remote driver; the nat rules do.
    let tcp_ports = published_tcp_ports(ctx, &ep.endpoint_id);
    let dynamic: Vec<u16> = tcp_ports
        .iter()
        .copied()
        .filter(|p| *p != 8080 && *p != 8081)
        .collect();
    assert_eq!(
        dynamic.len(),
        1,
        "expected 8080, 8081 and one chosen port among the endpoint's tcp host ports {tcp_ports:?}\n{}",
        nat_dump()
    );
    let dynamic = dynamic[0];
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let bounds: Vec<u16> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let [lo, hi] = bounds[..] {
        assert!(
            (lo..=hi).contains(&dynamic),
            "host port {dynamic} chosen for -p 80 is outside ip_local_port_range {lo}-{hi}"
        );
    }
    let log = std::fs::read_to_string(ctx.plugin.log()).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("ports published") && l.contains(&dynamic.to_string())),
        "the cnibridge log does not mention the chosen host port {dynamic}"
    );

    for port in [8080, dynamic] {
        expect_page(&format!("outside GET {HOST_IP}:{port}"), || {
            get_from_outside(&out, HOST_IP, port)
        });
        expect_page(&format!("host GET {HOST_IP}:{port}"), || {
            http_get(IpAddr::V4(HOST_IP), port, TIMEOUT)
        });
        expect_page(&format!("host GET 127.0.0.1:{port}"), || {
            http_get(LOCALHOST, port, TIMEOUT)
        });
        // busybox wget of the static image segfaults (exit 139) in this rootfs; nc speaks HTTP/1.0 instead.
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {HOST_IP} {port}");
        expect_page(&format!("hairpin: cnbt-pt1 to {HOST_IP}:{port}"), || {
            let o = ctx.docker(&["exec", "cnbt-pt1", "sh", "-c", &script]);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            match text.split_once("\r\n\r\n") {
                Some((head, body)) if head.contains(" 200 ") => Ok(body.to_string()),
                _ => Err(format!("{}: {text:?} {}", o.status, stderr_text(&o))),
            }
        });
    }
    // 127.0.0.1:8081: the host only.
    expect_page("host GET 127.0.0.1:8081", || {
        http_get(LOCALHOST, 8081, TIMEOUT)
    });
    expect_no_answer(
        "outside GET 10.250.77.1:8081 (published on 127.0.0.1 only)",
        get_from_outside(&out, HOST_IP, 8081),
    );
    expect_no_answer(
        "host GET 10.250.77.1:8081 (published on 127.0.0.1 only)",
        http_get(IpAddr::V4(HOST_IP), 8081, TIMEOUT),
    );

    // UDP 9000-9001 one to one.
    let echo = UdpEcho::start(&container_netns(ctx, "cnbt-pt1"), &[9000, 9001]);
    for port in [9000, 9001] {
        let path = outside_path(&out);
        expect_udp(
            &format!("outside udp {HOST_IP}:{port}"),
            || in_netns(&path, move || udp_ask(HOST_IP, port)),
            port,
        );
        expect_udp(
            &format!("host udp {HOST_IP}:{port}"),
            || udp_ask(HOST_IP, port),
            port,
        );
        expect_udp(
            &format!("host udp 127.0.0.1:{port}"),
            || udp_ask(Ipv4Addr::LOCALHOST, port),
            port,
        );
    }

    // A second container asking for 8080/tcp is refused with a readable error.
    let before = ctx.backend.listing();
    let o = s.run("cnbt-pt2", net, &["-p", "8080:80"], &["sleep", "600"]);
    let err = stderr_text(&o) + &stdout_text(&o);
    assert!(!o.status.success(), "a second -p 8080:80 started: {err}");
    assert!(
        err.contains("host port 8080/tcp is already published by endpoint"),
        "docker run output for the conflicting -p 8080:80: {err}"
    );
    s.rm("cnbt-pt2");
    // Nor changed any rule: the refused endpoint left nothing behind and took nothing away.
    let after = ctx.backend.listing();
    assert_eq!(
        after, before,
        "cnibridge's rules changed with the refused -p 8080:80"
    );
    // The refused container must not have taken the first one's port away.
    expect_page("outside GET 8080 after the refused conflict", || {
        get_from_outside(&out, HOST_IP, 8080)
    });

    // A port a host process listens on is refused as by Docker's bridge (docker-proxy cannot
    // bind it), instead of the DNAT silently taking its outside traffic.
    let service = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("host listener");
    let busy = service.local_addr().expect("listener address").port();
    let o = s.run(
        "cnbt-pt3",
        net,
        &["-p", &format!("{busy}:80")],
        &["sleep", "600"],
    );
    let err = stderr_text(&o) + &stdout_text(&o);
    assert!(
        !o.status.success(),
        "-p {busy}:80 started over a host listener: {err}"
    );
    assert!(
        err.contains(&format!(
            "host port {busy}/tcp is already in use on the host"
        )),
        "docker run output for -p {busy}:80 over a host listener: {err}"
    );
    s.rm("cnbt-pt3");
    assert_eq!(
        ctx.backend.listing(),
        before,
        "cnibridge's rules changed with the refused -p {busy}:80"
    );
    drop(service);

    drop(echo);
    s.rm("cnbt-pt1");
    ctx.wait_link_gone(&ep.veth());
    wait_for(
        "no rule mentions the removed endpoint",
        SETTLE,
        || match ctx.backend.mentions(&[&ep_key]) {
            r if r.is_empty() => Ok(()),
            r => Err(r.join("\n")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for port in [8080, 8081, dynamic] {
        assert!(
            tcp_refused(IpAddr::V4(HOST_IP), port),
            "host {HOST_IP}:{port} still answers after docker rm -f"
        );
        assert!(
            tcp_refused(LOCALHOST, port),
            "127.0.0.1:{port} still answers after docker rm -f"
        );
        expect_no_answer(
            &format!("outside GET {HOST_IP}:{port} after docker rm -f"),
            get_from_outside(&out, HOST_IP, port),
        );
    }
    for port in [9000, 9001] {
        if let Ok(a) = udp_ask(HOST_IP, port) {
            panic!("udp {HOST_IP}:{port} still answers after docker rm -f: {a}");
        }
    }
    s.network_rm(net);
    ctx.wait_link_gone(PORTS_BRIDGE);
    ctx.wait_no_allocs(PORTS_SUBNET);
}
