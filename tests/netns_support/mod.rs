//! Shared harness of the netns tier: every test runs on its own thread inside a network
//! namespace it creates (`unshare(CLONE_NEWNET)`), which stands in for the host and dies with
//! the thread. Named namespaces ("containers") are removed by a Drop guard, also on failure.
//!
//! A namespace belongs to a thread, not a process: processes forked from the test thread and
//! threads it spawns start in the test namespace, `/proc/sys/net` shows it, but
//! `/proc/self/ns/net` shows the main thread's. `forked_processes_and_threads_inherit_the_test_netns`
//! pins these facts, which the tests rely on.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{setns, unshare, CloneFlags};

/// True when the test may run. Without root: under `CI=true` a failure, otherwise a visible
/// skip note (never a silent pass).
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (network namespaces); CI=true, so this is a failure, not a skip");
    }
    // Straight to the stderr handle: the test harness captures eprintln! of passing tests,
    // and a skip must be visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces)"
    );
    false
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
    let from_path = from.path();
    let listen_path = listen_in.map(NamedNetns::path);
    std::thread::spawn(move || {
        if let Some(p) = listen_path {
            enter(&p);
        }
        let _listener = TcpListener::bind(addr).expect("bind listener");
        enter(&from_path);
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
    .join()
    .expect("probe thread")
}

/// Move the calling thread (a throwaway one) into the named namespace.
fn enter(path: &PathBuf) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}
