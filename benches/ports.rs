//! `docker run -d` with 20 published ports, on a cnibridge network and on a Docker bridge network
//! (`-d bridge`), each against the same container without ports, side by side in one run.
//!
//! Run as root: `cargo bench --bench ports` (`CNB_BENCH_N=40` for more rounds, default 20;
//! `CNB_BENCH_TRACE=1` also straces dockerd and cnibridge during one more `docker run` of each variant
//! and counts the programs they exec; `CNB_BENCH_PORT_LAYOUT=range` publishes one run of consecutive
//! ports instead of separate ones; `CNB_BENCH_KEEP_LOGS=<dir>` keeps both daemons' logs). It starts its own dockerd (own data root, exec root, pidfile and
//! socket under `/tmp/cnbb-<pid>`, `--bridge=none`, iptables on and the userland proxy at its default, as a
//! user has it), imports a static busybox as the image, and starts this build's cnibridge as a legacy
//! plugin. Each round times the four variants, in an order that varies over four rounds; a sample is the wall time of the
//! `docker run -d` CLI until it returns (the container runs); `docker rm -f` happens outside the timed
//! region. Timings are printed, never asserted. Everything it made is removed on every path, and what
//! was left behind is reported (exit status 1).
//!
//! Run it while no other dockerd with iptables runs (e.g. the e2e tier): both would rewrite the same
//! chains.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "ports/host.rs"]
mod host;
#[path = "ports/rig.rs"]
mod rig;
#[path = "ports/stats.rs"]
mod stats;

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use host::{check_ports_free, sweep_stale_runs};
use rig::Rig;
use stats::{plugin_side, report, Variant};
use support::host::check_subnets_unused;

/// Published ports per container, tcp: host port 20000 + 2i → container port 8000 + i. The host
/// ports have gaps so cnibridge cannot merge the mappings into one range rule (it merges runs that
/// are consecutive on both sides); `CNB_BENCH_PORT_LAYOUT=range` publishes 20000-20019 → 8000-8019.
const PORTS: u16 = 20;
const HOST_PORT0: u16 = 20000;
const CONTAINER_PORT0: u16 = 8000;

/// Host port of the i-th mapping.
fn host_port(i: u16) -> u16 {
    if range_layout() {
        HOST_PORT0 + i
    } else {
        HOST_PORT0 + 2 * i
    }
}

fn range_layout() -> bool {
    std::env::var("CNB_BENCH_PORT_LAYOUT").is_ok_and(|v| v == "range")
}

fn layout_text() -> String {
    format!(
        "tcp {}, {}, … {} -> {}-{}{}",
        host_port(0),
        host_port(1),
        host_port(PORTS - 1),
        CONTAINER_PORT0,
        CONTAINER_PORT0 + PORTS - 1,
        if range_layout() {
            " (one run)"
        } else {
            " (separate mappings)"
        }
    )
}
const CNB_SUBNET: &str = "10.241.0.0/24";
const BRIDGE_SUBNET: &str = "10.242.0.0/24";
/// The daemon's pools for networks without `--subnet` (the bench always gives one).
const DEFAULT_POOL: &str = "10.243.0.0/16";
const CNB_BRIDGE: &str = "cnbtbench0";
const DOCKER_BRIDGE: &str = "cnbtbench1";
/// Base directories `/tmp/cnbb-<pid>`, the plugin `cnbb<pid>`, containers and networks `cnbb-…`.
const BASE_PREFIX: &str = "cnbb-";
const PLUGIN_PREFIX: &str = "cnbb";
const NAME_PREFIX: &str = "cnbb-";
/// After each `docker rm -f`, so what finishes in the background (veth deletion in the kernel,
/// exiting docker-proxy processes) does not land in the next sample.
const PAUSE: Duration = Duration::from_millis(500);

/// The order of the four variants in each round (Williams design for four treatments).
const ORDER: [[usize; 4]; 4] = [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0], [3, 0, 2, 1]];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM end the rounds early and go to the teardown instead of killing the process.
fn install_signal_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Cnibridge,
    DockerBridge,
}

fn port_args() -> Vec<String> {
    (0..PORTS)
        .flat_map(|i| {
            [
                "-p".to_string(),
                format!("{}:{}/tcp", host_port(i), CONTAINER_PORT0 + i),
            ]
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ports bench: run it with `cargo bench --bench ports` (as root)");
        return;
    }
    if !support::require(
        "root, which the ports bench needs (dockerd, bridges, iptables)",
        support::is_root(),
    ) || !support::require_tools(support::DOCKER_TIER_TOOLS)
    {
        eprintln!("ports bench: environment incomplete; skipped");
        return;
    }
    let rounds: usize = std::env::var("CNB_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20);
    install_signal_handlers();
    for line in sweep_stale_runs() {
        println!("note: stale: {line}");
    }
    if let Err(e) = check_subnets_unused(&[CNB_SUBNET, BRIDGE_SUBNET, DEFAULT_POOL])
        .and_then(|()| check_ports_free())
    {
        eprintln!("ports bench: {e}");
        std::process::exit(1);
    }
    let mut rig = Rig::new();
    let mut variants = vec![
        Variant {
            label: "cnibridge, no ports",
            driver: Driver::Cnibridge,
            ports: false,
            times: Vec::new(),
        },
        Variant {
            label: "cnibridge, 20 ports",
            driver: Driver::Cnibridge,
            ports: true,
            times: Vec::new(),
        },
        Variant {
            label: "docker bridge, no ports",
            driver: Driver::DockerBridge,
            ports: false,
            times: Vec::new(),
        },
        Variant {
            label: "docker bridge, 20 ports",
            driver: Driver::DockerBridge,
            ports: true,
            times: Vec::new(),
        },
    ];
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        rig.setup();
        rig.measure(&mut variants, rounds);
        if !STOP.load(Ordering::SeqCst) {
            rig.observe();
        }
    }));
    report(&variants);
    if let Some(log) = rig.plugin_log() {
        plugin_side(&log);
    }
    let left = rig.teardown();
    let mut failed = outcome.is_err();
    if !left.is_empty() {
        println!(
            "left behind (by the run or a daemon that died):\n  {}",
            left.join("\n  ")
        );
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    if STOP.load(Ordering::SeqCst) {
        std::process::exit(130);
    }
}
