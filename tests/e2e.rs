//! Docker e2e tier (design.md): the real `docker` CLI against a private dockerd, with cnibridge serving as
//! a legacy network + IPAM plugin. One suite per firewall backend: iptables (every scenario, dockerd with
//! its own iptables rules) and then nftables (the firewall scenarios, dockerd with `--iptables=false`).
//! Within a suite one dockerd, one image and one plugin serve all scenarios (starting dockerd costs
//! seconds), scenarios run in order, and teardown runs whatever happened.
//!
//! `harness = false`: we need one shared setup, an ordered run, and a teardown that is itself checked
//! (scenario g), which libtest cannot express. Extra arguments select scenarios by substring of their
//! reported names (`nftables/…` for the second suite); a suite none of whose scenarios is selected does
//! not start, and `g_nothing_left` always runs in a suite that did. `CNBT_PLUGIN_BIN` replaces the daemon binary
//! under test; `CNBT_KEEP_LOGS=<dir>` keeps the logs.

mod support;

#[path = "e2e/bandwidth.rs"]
mod bandwidth;
#[path = "e2e/basic.rs"]
mod basic;
#[path = "e2e/chain_errors.rs"]
mod chain_errors;
#[path = "e2e/chain_interop.rs"]
mod chain_interop;
#[path = "e2e/cniconf.rs"]
mod cniconf;
#[path = "e2e/ctx.rs"]
mod ctx;
#[path = "e2e/firewall.rs"]
mod firewall;
#[path = "e2e/flannel.rs"]
mod flannel;
#[path = "e2e/fw.rs"]
mod fw;
#[path = "e2e/ipam.rs"]
mod ipam;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/managed.rs"]
mod managed;
#[path = "e2e/ports.rs"]
mod ports;
#[path = "e2e/reload.rs"]
mod reload;
#[path = "e2e/runtimes.rs"]
mod runtimes;
#[path = "e2e/share.rs"]
mod share;
#[path = "e2e/tuning.rs"]
mod tuning;

use std::any::Any;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use ctx::Ctx;
use fw::Backend;
use support::host::{all_ip_files, check_subnets_unused, ensure_forward_policy, iptables_mentions};
use support::process::pids_referencing;
use support::{
    base_dir, import_busybox, sweep_stale_runs, Cleanup, Dockerd, Plugin, DOCKER_PREFIX,
    TEST_PREFIX,
};

/// The daemon's pools for networks created without `--subnet`.
pub const DEFAULT_POOL_V4: &str = "10.235.0.0/16";
const DEFAULT_POOL_V6: &str = "fd00:cb35::/48";
/// Every subnet the scenarios use; checked against the host's routes before anything starts.
const SUBNETS: &[&str] = &[
    "10.231.0.0/16",
    "10.232.0.0/16",
    "10.233.0.0/16",
    "10.234.0.0/16",
    DEFAULT_POOL_V4,
    "10.236.0.0/16",
    "10.237.0.0/16",
    "10.238.0.0/16",
    "10.239.0.0/16",
    support::outside::OUTSIDE_NET,
    cniconf::CONF_SUBNETS[0],
    cniconf::CONF_SUBNETS[1],
    cniconf::CONF_SUBNETS[2],
    cniconf::CONF_SUBNETS[3],
    cniconf::CONF_SUBNETS[4],
    cniconf::CONF_SUBNETS[5],
    cniconf::CONF_SUBNETS[6],
    ports::PORTS_SUBNET,
    reload::RELOAD_SUBNETS[0],
    reload::RELOAD_SUBNETS[1],
    reload::RELOAD_SUBNETS[2],
    share::SHARE_SUBNETS[0],
    share::SHARE_SUBNETS[1],
    share::SHARE_SUBNETS[2],
    "fd00:cb34::/64",
    DEFAULT_POOL_V6,
    runtimes::RUNTIME_SUBNETS[0],
    runtimes::RUNTIME_SUBNETS[1],
    runtimes::RUNTIME_SUBNETS[2],
    runtimes::RUNTIME_SUBNETS[3],
    runtimes::RUNTIME_SUBNETS[4],
    flannel::UNDERLAY_NET,
    bandwidth::BANDWIDTH_SUBNET,
    chain_interop::CHAIN_SUBNET,
    tuning::TUNING_SUBNET,
];

/// Every bridge name the scenarios give with `-o bridge=`; a dead earlier run's copies are swept at start.
const BRIDGES: &[&str] = &[
    "cnbtb",
    "cnbtip",
    "cnbtrng",
    "cnbtv6",
    "cnbtex",
    "cnbtd1",
    "cnbtd2",
    "cnbtd3",
    "cnbte",
    "cnbthm",
    "cnbthn",
    "cnbthn2",
    "cnbthr",
    "cnbthi1",
    "cnbthi2",
    "cnbthc",
    "cnbthx",
    ports::PORTS_BRIDGE,
    bandwidth::BANDWIDTH_BRIDGE,
    chain_interop::CHAIN_BRIDGE,
    tuning::TUNING_BRIDGE,
    cniconf::CONF_BRIDGES[0],
    cniconf::CONF_BRIDGES[1],
    cniconf::CONF_BRIDGES[2],
    cniconf::CONF_BRIDGES[3],
    cniconf::CONF_BRIDGES[4],
    cniconf::CONF_BRIDGES[5],
    cniconf::CONF_BRIDGES[6],
    cniconf::CONF_BRIDGES[7],
    cniconf::CONF_BRIDGES[8],
    cniconf::CONF_BRIDGES[9],
    lifecycle::REBOOT_BRIDGE,
    reload::RELOAD_BRIDGES[0],
    reload::RELOAD_BRIDGES[1],
    reload::RELOAD_BRIDGES[2],
    share::SHARE_BRIDGES[0],
    share::SHARE_BRIDGES[1],
    share::SHARE_BRIDGES[2],
];

type Scenario = fn(&mut Ctx);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("harness_smoke", basic::harness_smoke),
    ("b_basic", basic::b_basic),
    ("c_static_ip", ipam::c_static_ip),
    ("c_ip_range_aux", ipam::c_ip_range_aux),
    ("c_ipv6", ipam::c_ipv6),
    ("c_default_pools", ipam::c_default_pools),
    ("c_exhaustion", ipam::c_exhaustion),
    ("d_connect_disconnect", lifecycle::d_connect_disconnect),
    ("d_stop_start_rm", lifecycle::d_stop_start_rm),
    ("e_plugin_sigkill", lifecycle::e_plugin_sigkill),
    ("e_dockerd_restart", lifecycle::e_dockerd_restart),
    ("e_host_reboot", lifecycle::e_host_reboot),
    ("f_managed_plugin", managed::f_managed_plugin),
    ("h_masquerade_egress", firewall::h_masquerade_egress),
    ("h_no_masquerade", firewall::h_no_masquerade),
    (
        "h_dockerd_restart_keeps_forwarding",
        firewall::h_dockerd_restart_keeps_forwarding,
    ),
    (
        "h_isolation_between_networks",
        firewall::h_isolation_between_networks,
    ),
    ("h_icc_off", firewall::h_icc_off),
    ("h_internal", firewall::h_internal),
    ("d_published_ports", ports::d_published_ports),
    (
        "f_firewall_reload_restores_traffic",
        reload::f_firewall_reload_restores_traffic,
    ),
    (
        "f_restart_forgets_deleted_network",
        reload::f_restart_forgets_deleted_network,
    ),
    ("b_conf_mybridge", cniconf::b_conf_mybridge),
    ("b_conf_ipv4_routes", cniconf::b_conf_ipv4_routes),
    (
        "b_conf_range_gateway_outside",
        cniconf::b_conf_range_gateway_outside,
    ),
    ("b_conf_ipv6_default_gw", cniconf::b_conf_ipv6_default_gw),
    ("b_conf_dual_stack", cniconf::b_conf_dual_stack),
    ("e_conf_errors", cniconf::e_conf_errors),
    ("c_conf_same_name", share::c_conf_same_name),
    (
        "d_cni_runtime_shares_network",
        share::d_cni_runtime_shares_network,
    ),
    ("i_runtime_containerd", runtimes::i_runtime_containerd),
    ("i_runtime_nerdctl", runtimes::i_runtime_nerdctl),
    ("i_runtime_podman", runtimes::i_runtime_podman),
    ("i_runtime_crio", runtimes::i_runtime_crio),
    ("i_runtime_k3s_flannel", runtimes::i_runtime_k3s_flannel),
    ("i_flannel_two_hosts", flannel::i_flannel_two_hosts),
    ("i_bandwidth", bandwidth::i_bandwidth),
    ("i_cni_chain_interop", chain_interop::i_cni_chain_interop),
    ("e_chain_refusals", chain_errors::e_chain_refusals),
    ("i_tuning", tuning::i_tuning),
];

/// Issue 5 e: the firewall scenarios (of [`SCENARIOS`]) again, with `--firewall nftables` beside a dockerd
/// started with `--iptables=false` (no Docker rules, `FORWARD` policy `ACCEPT`, as on such a host).
const NFT_SCENARIOS: &[&str] = &[
    "h_masquerade_egress",
    "h_no_masquerade",
    "h_dockerd_restart_keeps_forwarding",
    "h_isolation_between_networks",
    "h_icc_off",
    "h_internal",
    "d_published_ports",
    "f_firewall_reload_restores_traffic",
    "f_restart_forgets_deleted_network",
    "e_host_reboot",
    "i_runtime_nerdctl",
];

/// One suite per backend, each with its own dockerd and cnibridge, one after the other.
const PHASES: &[Backend] = &[Backend::Iptables, Backend::Nftables];

/// The scenarios a backend's suite runs.
fn scenarios_of(backend: Backend) -> Vec<&'static (&'static str, Scenario)> {
    SCENARIOS
        .iter()
        .filter(|(name, _)| backend == Backend::Iptables || NFT_SCENARIOS.contains(name))
        .collect()
}

/// A scenario's name in the report: the iptables suite keeps the plain names.
fn display_name(backend: Backend, name: &str) -> String {
    match backend {
        Backend::Iptables => name.to_string(),
        other => format!("{}/{name}", other.flag()),
    }
}

/// The message of the last panic, recorded by our hook (the default hook would print it mid-report).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into()),
        };
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
}

/// The recorded message with its location, else whatever the payload says.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let recorded = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
    recorded.unwrap_or_else(|| match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().map_or("panic", |s| s).to_string(),
    })
}

/// Runs one named step, prints its `test … ok|FAILED` line, returns whether it passed.
fn run_one(name: &str, f: impl FnOnce()) -> bool {
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let secs = started.elapsed().as_secs_f32();
    let passed = match result {
        Ok(()) => {
            println!("test {name} ... ok");
            true
        }
        Err(payload) => {
            let msg = panic_message(payload);
            let mut lines = msg.lines();
            println!(
                "test {name} ... FAILED: {}",
                lines.next().unwrap_or_default()
            );
            for line in lines {
                println!("    {line}");
            }
            false
        }
    };
    // Timing on stderr keeps the stdout report in the plain libtest-like shape.
    eprintln!("    ({name}: {secs:.1}s)");
    let _ = std::io::stdout().flush();
    passed
}

/// What teardown found: `items` fail scenario g, `notes` are printed only.
#[derive(Default)]
struct Leftovers {
    items: Vec<String>,
    notes: Vec<String>,
}

struct Suite {
    base: PathBuf,
    cleanup: Cleanup,
    ctx: Option<Ctx>,
    backend: Backend,
}

impl Suite {
    fn setup(&mut self) {
        check_subnets_unused(SUBNETS).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&self.base)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.base.display()));
        fw::set_current(self.backend);
        let (dockerd_args, policy): (&[&str], &str) = match self.backend {
            // The scenarios assert what Docker's FORWARD DROP means for containers; dockerd sets it only when
            // it turns ip_forward on itself, which it does not on a host where forwarding is on already.
            Backend::Iptables => (&[], "DROP"),
            // A host whose dockerd leaves the firewall alone: nothing in iptables stops forwarding, so
            // whatever is isolated is isolated by cnibridge's nftables rules.
            Backend::Nftables => (&["--iptables=false"], "ACCEPT"),
        };
        let dockerd = Dockerd::start_with(&self.base.join("d"), dockerd_args)
            .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "note: dockerd {} up (storage driver {}), log {}",
            dockerd_args.join(" "),
            dockerd.storage_driver(),
            dockerd.log_path().display()
        );
        if let Some(old) = ensure_forward_policy(policy).unwrap_or_else(|e| panic!("{e}")) {
            println!("note: iptables FORWARD policy was {old}; {policy} for the run");
        }
        let image = import_busybox(&dockerd);
        let name = format!("{TEST_PREFIX}{}", std::process::id());
        let pools = format!("{DEFAULT_POOL_V4}:24,{DEFAULT_POOL_V6}:64");
        let mut plugin = Plugin::new(&plugin_binary(), &self.base.join("p"), &name, &pools)
            .with_docker_host(dockerd.cli().host())
            .with_firewall(self.backend.flag());
        // Tolerated: the scenarios that need the plugin fail fast with this reason; the rest still run.
        let plugin_error = plugin.start().err();
        match &plugin_error {
            None => println!(
                "note: plugin {name} serving {}, log {}",
                plugin.socket().display(),
                plugin.log().display()
            ),
            Some(e) => println!("warning: plugin {name} did not start: {e}"),
        }
        self.ctx = Some(Ctx {
            dockerd,
            plugin,
            plugin_error,
            image,
            backend: self.backend,
        });
    }

    /// Ends everything, recording what the scenarios and the daemon left behind before sweeping it up.
    fn teardown(&mut self) -> Leftovers {
        let mut l = Leftovers::default();
        if let Some(mut ctx) = self.ctx.take() {
            let cli = ctx.cli();
            // Scenarios remove their containers and networks (through the plugin) even when they fail.
            l.items.extend(
                Cleanup::docker_objects(&cli, DOCKER_PREFIX)
                    .into_iter()
                    .map(|o| format!("left in docker: {o}")),
            );
            l.notes.extend(
                Cleanup::sweep_docker(&cli, DOCKER_PREFIX)
                    .into_iter()
                    .map(|r| format!("sweep: {r}")),
            );
            // With every container and network gone, whatever remains on the host is the daemon's leak.
            l.items.extend(
                self.cleanup
                    .new_links()
                    .into_iter()
                    .map(|n| format!("link {n} still exists")),
            );
            l.items.extend(
                all_ip_files(&ctx.plugin.data_dir())
                    .into_iter()
                    .map(|f| format!("allocation file {}", f.display())),
            );
            // Every network is gone, so no rule may mention a test bridge any more.
            let words = [TEST_PREFIX, "cnb-", "vcb"];
            l.items.extend(
                iptables_mentions(&words)
                    .into_iter()
                    .map(|r| format!("iptables: {r}")),
            );
            if self.backend != Backend::Iptables {
                l.items.extend(
                    self.backend
                        .mentions(&words)
                        .into_iter()
                        .map(|r| format!("{}: {r}", self.backend.flag())),
                );
            }
            keep_logs(&ctx);
            if let Err(e) = ctx.plugin.stop() {
                l.notes.push(format!("plugin stop: {e}"));
            }
            if let Err(e) = ctx.dockerd.stop() {
                l.items.push(format!("dockerd stop: {e}"));
            }
            l.items.extend(
                ctx.dockerd
                    .mounts()
                    .into_iter()
                    .map(|m| format!("mount {} after dockerd stopped", m.display())),
            );
            let socket = ctx.plugin.socket().to_path_buf();
            drop(ctx); // removes the plugin socket and every directory, unmounting first
            if socket.exists() {
                l.items
                    .push(format!("plugin socket {} still exists", socket.display()));
            }
        }
        // The firewall scenarios' outside namespace is theirs to remove (on drop, also when they fail).
        l.items.extend(support::outside::leftovers());
        l.notes.extend(
            self.cleanup
                .sweep_host()
                .into_iter()
                .map(|r| format!("sweep: {r}")),
        );
        l.items.extend(
            self.cleanup
                .new_netns()
                .into_iter()
                .map(|n| format!("netns {n} appeared during the run")),
        );
        l.items.extend(
            pids_referencing(&self.base)
                .into_iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        if self.base.exists() {
            if let Err(e) = support::host::remove_tree(&self.base) {
                l.items.push(e);
            }
        }
        l
    }
}

/// `CNBT_KEEP_LOGS=<dir>` keeps the dockerd and cnibridge logs (e.g. as CI artifacts); the run's own
/// directory is always removed.
fn keep_logs(ctx: &Ctx) {
    let Some(dir) = std::env::var_os("CNBT_KEEP_LOGS").map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    for (from, name) in [
        (ctx.dockerd.log_path(), "dockerd.log"),
        (ctx.plugin.log(), "cnibridge.log"),
    ] {
        if let Err(e) = std::fs::copy(&from, dir.join(name)) {
            eprintln!("warning: keeping {}: {e}", from.display());
        }
    }
}

/// The daemon under test: this crate's binary, or `CNBT_PLUGIN_BIN` (e.g. a release or static build).
fn plugin_binary() -> PathBuf {
    std::env::var_os("CNBT_PLUGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cnibridge")))
}

impl Drop for Suite {
    /// Only reached with `ctx` still set if main itself panicked; the normal path tears down explicitly.
    fn drop(&mut self) {
        if self.ctx.is_some() {
            let _ = self.teardown();
        }
    }
}

/// Acceptance g: after the suite, nothing the tests made remains.
fn g_nothing_left(l: &Leftovers) {
    for note in &l.notes {
        println!("note: {note}");
    }
    assert!(l.items.is_empty(), "left behind:\n{}", l.items.join("\n"));
    assert!(
        !base_dir().exists(),
        "{} still exists",
        base_dir().display()
    );
}

fn main() {
    install_panic_hook();
    let ready = panic::catch_unwind(|| {
        support::require_root() && support::require_tools(support::DOCKER_TIER_TOOLS)
    });
    match ready {
        Ok(true) => {}
        Ok(false) => {
            println!("e2e skipped: environment incomplete (see note above)");
            println!("0 passed, 0 failed");
            return;
        }
        Err(p) => {
            println!("test environment ... FAILED: {}", panic_message(p));
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let swept = panic::catch_unwind(|| {
        for line in sweep_stale_runs(BRIDGES) {
            println!("note: stale: {line}");
        }
    });
    if let Err(p) = swept {
        println!("test setup ... FAILED: {}", panic_message(p));
        println!("0 passed, 1 failed");
        std::process::exit(1);
    }
    let (mut passed, mut failed) = (0, 0);
    for backend in PHASES {
        let chosen: Vec<&(&str, Scenario)> = scenarios_of(*backend)
            .into_iter()
            .filter(|(name, _)| {
                let shown = display_name(*backend, name);
                filters.is_empty() || filters.iter().any(|f| shown.contains(f.as_str()))
            })
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let (p, f) = run_phase(*backend, &chosen);
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// One backend's suite: setup, the chosen scenarios in order, teardown, and its check that nothing is
/// left. Returns (passed, failed).
fn run_phase(backend: Backend, chosen: &[&(&str, Scenario)]) -> (u32, u32) {
    let (mut passed, mut failed) = (0, 0);
    let mut count = |ok: bool| if ok { passed += 1 } else { failed += 1 };
    // Taken after the earlier phase's teardown, so only this phase's leftovers count.
    let cleanup = match panic::catch_unwind(Cleanup::new) {
        Ok(c) => c,
        Err(p) => {
            println!(
                "test {} ... FAILED: {}",
                display_name(backend, "setup"),
                panic_message(p)
            );
            return (0, 1);
        }
    };
    let mut suite = Suite {
        base: base_dir(),
        cleanup,
        ctx: None,
        backend,
    };
    let setup_ok = panic::catch_unwind(AssertUnwindSafe(|| suite.setup()));
    if let Err(p) = setup_ok {
        println!(
            "test {} ... FAILED: {}",
            display_name(backend, "setup"),
            panic_message(p)
        );
        count(false);
    } else {
        for (name, scenario) in chosen {
            let shown = display_name(backend, name);
            let ctx = suite.ctx.as_mut().expect("set up");
            // A daemon that crashed in one scenario would otherwise fail all later ones too.
            if ctx.plugin_error.is_none() && !ctx.plugin.is_running() {
                println!("note: cnibridge is not running; starting it again before {shown}");
                if let Err(e) = ctx.plugin.start() {
                    println!("warning: {e}");
                }
            }
            let ok = run_one(&shown, || scenario(ctx));
            if !ok && ctx.plugin_error.is_none() {
                println!("    cnibridge log tail:");
                for line in ctx.plugin.log_tail(25).lines() {
                    println!("      {line}");
                }
            }
            count(ok);
        }
    }
    let leftovers = match panic::catch_unwind(AssertUnwindSafe(|| suite.teardown())) {
        Ok(l) => l,
        Err(p) => Leftovers {
            items: vec![format!("teardown panicked: {}", panic_message(p))],
            notes: vec![],
        },
    };
    count(run_one(&display_name(backend, "g_nothing_left"), || {
        g_nothing_left(&leftovers)
    }));
    (passed, failed)
}
