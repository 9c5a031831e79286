//! Shared harness of the integration tests (`mod support;`): environment checks, a private dockerd, the
//! busybox image, the cnibridge daemon as a plugin, host inspection and clean-up, and the netns tier's
//! namespaces and firewall backends ([`netns`]).
//!
//! Each test crate uses a different subset of this module (and of its re-exports), and unused items would
//! fail `clippy -D warnings` in the crates that do not need them.
#![allow(dead_code, unused_imports)]

pub mod cleanup;
pub mod cni;
pub mod cni_chain;
pub mod daemon;
pub mod dockerd;
pub mod host;
pub mod image;
pub mod in_process;
pub mod netns;
pub mod outside;
pub mod plugin;
pub mod process;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

pub use cleanup::{sweep_stale_runs, Cleanup};
pub use dockerd::{DockerCli, Dockerd};
pub use host::{files_in, ip_links_matching};
pub use image::import_busybox;
pub use plugin::Plugin;

/// Prefix of everything on the host the tests name themselves: bridges, namespaces, the plugin name.
pub const TEST_PREFIX: &str = "cnbt";
/// Prefix of Docker containers and networks the tests create.
pub const DOCKER_PREFIX: &str = "cnbt-";
/// Base directories are `/tmp/cnbt-<pid>`: short, because unix socket paths must stay under 108 bytes.
pub const BASE_PREFIX: &str = "cnbt-";

/// This run's base directory (not created here).
pub fn base_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/{BASE_PREFIX}{}", std::process::id()))
}

/// The one rule for a test whose environment may be missing (root, a tool, dockerd, busybox, the CNI
/// plugins, a firewall backend's program), and the only place that reads `CI`: true if `available`;
/// otherwise, under CI (`CI=true` or `CI=1`), a panic naming `what` is missing, since a skipped test
/// there would pass unseen; elsewhere a visible skip note and false.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("test environment incomplete under CI: {what}; a failure, not a skip");
    }
    // Straight to the stderr handle: the test harness captures eprintln! of passing tests, and a
    // skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True if we are root; otherwise see [`require`].
pub fn require_root() -> bool {
    require(
        "root, which these tests need (netlink, iptables, dockerd)",
        is_root(),
    )
}

/// What the docker tiers (e2e, ports bench) run: a private dockerd, the CLI, a static busybox for the
/// test image, and the host tools of their checks.
pub const DOCKER_TIER_TOOLS: &[&str] = &[
    "/usr/sbin/dockerd",
    "docker",
    "busybox",
    "ip",
    "iptables",
    "tar",
];

/// True if every tool is available: a name containing '/' must exist as a file, any other name must be
/// found in PATH (or in the sbin directories, which a non-login root PATH may lack). `busybox` means a
/// *static* busybox. Otherwise see [`require`].
pub fn require_tools(tools: &[&str]) -> bool {
    let absent: Vec<String> = tools
        .iter()
        .filter_map(|tool| match *tool {
            "busybox" => image::static_busybox().err(),
            t if t.contains('/') => (!Path::new(t).is_file()).then(|| format!("{t} not found")),
            t => which(t).is_none().then(|| format!("{t} not in PATH")),
        })
        .collect();
    require(&absent.join(", "), absent.is_empty())
}

/// Locates an executable like `command -v`, also looking in the sbin directories.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file());
    found
}

/// Calls `check` until it returns Ok or `timeout` passes; the Err carries the last failure. For things that
/// settle asynchronously (a veth removed after `docker stop` returns, IPv6 DAD, a server starting).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{what}: still not true after {timeout:?}: {e}"))
            }
            Err(_) => thread::sleep(process::POLL * 2),
        }
    }
}
