//! The netns tier's harness: every test runs on its own thread inside a network
//! namespace it creates (`unshare(CLONE_NEWNET)`), which stands in for the host and dies with
//! the thread. Named namespaces ("containers") are removed by a Drop guard, also on failure.
//!
//! A namespace belongs to a thread, not a process: processes forked from the test thread and
//! threads it spawns start in the test namespace, `/proc/sys/net` shows it, but
//! `/proc/self/ns/net` shows the main thread's. `forked_processes_and_threads_inherit_the_test_netns`
//! pins these facts, which the tests rely on.
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{setns, unshare, CloneFlags};

use super::{is_root, require};

pub mod backend;
pub mod cases;

/// True when the test may run: root, which network namespaces need (see [`require`]).
pub fn root_or_skip(test: &str) -> bool {
    require(
        &format!("{test} needs root (network namespaces)"),
        is_root(),
    )
}

/// The network namespace of the calling thread, e.g. `net:[4026532177]`.
pub fn thread_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .expect("read /proc/thread-self/ns/net")
        .display()
        .to_string()
}

/// Run `test` in a fresh network namespace (with `lo` up) on a current-thread runtime.
pub fn in_netns<F, Fut>(name: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !root_or_skip(name) {
        return;
    }
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let host = thread_netns();
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            let own = thread_netns();
            // Every later command would act on the real host otherwise.
            assert_ne!(
                host, own,
                "unshare did not move the test thread to a new netns"
            );
            assert_eq!(
                child_netns(),
                own,
                "a forked process is not in the test netns"
            );
            run(&["ip", "link", "set", "lo", "up"]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(test());
        })
        .expect("spawn test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `in_netns` for a test run against `backend`: needs its tool too (a failure under `CI=true`),
/// and the name says which backend ran.
pub fn in_netns_for<F, Fut>(backend: backend::Backend, name: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if backend.available(name) {
        in_netns(&format!("{name} ({backend:?})"), test);
    }
}

/// The network namespace a process forked from this thread sees.
pub fn child_netns() -> String {
    run(&["readlink", "/proc/self/ns/net"]).trim().to_string()
}

/// Run a command (in the calling thread's netns), require success, return stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j -d link show dev <name>` as JSON, or None if the link is missing.
pub fn link_json(name: &str) -> Option<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", name])
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    Some(v[0].take())
}

/// Whether the link carries the flag (e.g. "UP").
pub fn has_flag(link: &serde_json::Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// `ip -j addr show dev <name>` as "addr/prefix" strings, without the IPv6 link-local address
/// the kernel adds by itself.
pub fn addresses(name: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&run(&["ip", "-j", "addr", "show", "dev", name])).expect("ip -j");
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                .filter(|a| !a.starts_with("fe80:"))
                .collect()
        })
        .unwrap_or_default()
}

/// The filter table as `<tool>-save` prints it, without comment lines and counters, so it can
/// be compared with expected text.
pub fn filter_table(save: &str) -> String {
    run(&[save, "-t", "filter"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// What `<tool>-save` shows of ours: for each table holding any of it, the table line, our
/// chains (`CNIBRIDGE-*` and the per-endpoint `CNIB-*`, counters zeroed), their rules, the
/// jumps into them from built-in chains and `COMMIT`. Nothing of the host's own rules, so
/// goldens stay small and stable.
pub fn our_rules(save: &str) -> String {
    let dump = run(&[save]);
    let mut out = String::new();
    let mut table = String::new();
    let mut ours = String::new();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
            ours.clear();
        } else if line == "COMMIT" {
            if !ours.is_empty() {
                out.push_str(&format!("*{table}\n{ours}COMMIT\n"));
            }
        } else if let Some(rest) = line.strip_prefix(":CNIB") {
            let decl = rest.rsplit_once(" [").map_or(rest, |(d, _)| d);
            ours.push_str(&format!(":CNIB{decl} [0:0]\n"));
        } else if line.starts_with("-A CNIB") || line.contains(" -j CNIB") {
            ours.push_str(line);
            ours.push('\n');
        }
    }
    out
}

/// Compare `actual` with `tests/golden/<name>.golden`; with `UPDATE_GOLDEN=1`, write it instead.
pub fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.golden"));
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == actual,
        "{} differs (UPDATE_GOLDEN=1 regenerates it)\n--- golden\n{want}--- actual\n{actual}",
        path.display()
    );
}

/// Whether bridged IPv4 frames traverse iptables in the calling thread's netns
/// (br_netfilter's `bridge-nf-call-iptables`, per namespace); printed, since same-bridge
/// filtering (icc) depends on it.
pub fn bridged_through_iptables() -> bool {
    let on = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    eprintln!("bridge-nf-call-iptables in the test netns: {on}");
    on
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "cnbt-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = NamedNetns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Move `link` (from the calling thread's netns) in here, address it and bring it up.
    pub fn adopt(&self, link: &str, addr: &str) {
        run(&["ip", "link", "set", link, "netns", &self.name]);
        self.ip(&["addr", "add", addr, "dev", link]);
        self.ip(&["link", "set", link, "up"]);
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether a TCP connection from `from` to `listen_in`'s `addr` completes within `timeout`.
/// The kernel finishes the handshake into the backlog, so nobody needs to accept. A socket
/// belongs to the namespace of the thread that created it, so one helper thread creates the
/// listener inside `listen_in` (None = the caller's netns) and then connects from `from`.
pub fn tcp_reaches(
    from: &NamedNetns,
    listen_in: Option<&NamedNetns>,
    addr: SocketAddr,
    timeout: Duration,
) -> bool {
    probe(
        Some(from),
        listen_in,
        move || bind_retrying(addr),
        move |_listener| TcpStream::connect_timeout(&addr, timeout).is_ok(),
    )
}

/// The source address a TCP server listening at `addr` in `listen_in` sees for a connection
/// made from `from` (None = the caller's netns for either), or None if the connection does not
/// complete within `timeout`. Shows whether masquerade rewrote the source.
pub fn tcp_peer(
    from: Option<&NamedNetns>,
    listen_in: Option<&NamedNetns>,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    probe(
        from,
        listen_in,
        move || bind_retrying(addr),
        move |listener| {
            let _conn = TcpStream::connect_timeout(&addr, timeout).ok()?;
            let (_accepted, peer) = accept_within(&listener, timeout)?;
            Some(peer)
        },
    )
}

/// The connection `listener` accepts within `timeout`, after a client's connect returned (its
/// handshake is complete, so the connection is in the backlog already, or on its way through a
/// DNAT). The caller decides which side closes first by the order it drops the two ends.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok(accepted) => return Some(accepted),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The source address a UDP receiver bound to `addr` in `listen_in` sees for one datagram sent
/// from `from` (None = the caller's netns for either), or None if nothing arrives within
/// `timeout`. One-way, so it tells apart rules that TCP's handshake needs only one of.
pub fn udp_peer(
    from: Option<&NamedNetns>,
    listen_in: Option<&NamedNetns>,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    let listen = move || {
        let receiver = UdpSocket::bind(addr).expect("bind receiver");
        receiver
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        receiver
    };
    probe(from, listen_in, listen, move |receiver| {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("v4 any")
        } else {
            "[::]:0".parse().expect("v6 any")
        };
        let sender = UdpSocket::bind(any).expect("bind sender");
        // No route is a result too (nothing arrives), not a test failure.
        if sender.send_to(b"probe", addr).is_err() {
            return None;
        }
        let mut buf = [0u8; 16];
        receiver.recv_from(&mut buf).ok().map(|(_, peer)| peer)
    })
}

/// A listener on `addr`; the server end of the previous probe's connection may still hold
/// the port for a moment while its close completes.
pub fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// Runs a probe on a throwaway thread: `listen` inside `listen_in`, then `connect` with what it
/// made from `from` (None = the caller's netns for either). A socket belongs to the namespace of
/// the thread that created it, so one thread can listen in one namespace and connect from another.
fn probe<L, T: Send + 'static>(
    from: Option<&NamedNetns>,
    listen_in: Option<&NamedNetns>,
    listen: impl FnOnce() -> L + Send + 'static,
    connect: impl FnOnce(L) -> T + Send + 'static,
) -> T {
    let from_path = from.map(NamedNetns::path);
    let listen_path = listen_in.map(NamedNetns::path);
    std::thread::spawn(move || {
        if let Some(p) = listen_path {
            enter(&p);
        }
        let listening = listen();
        if let Some(p) = from_path {
            enter(&p);
        }
        connect(listening)
    })
    .join()
    .expect("probe thread")
}

/// Move the calling thread (a throwaway one) into the named namespace.
fn enter(path: &PathBuf) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}
