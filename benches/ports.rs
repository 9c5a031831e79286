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

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use support::dockerd::DOCKER_TIMEOUT;
use support::host::FirewallSnapshot;
use support::host::{check_subnets_unused, delete_link, iptables_mentions, links, remove_tree};
use support::plugin::PLUGIN_DIR;
use support::process::{kill_referencing, pid_alive, pids_referencing, stderr_text, stdout_text};
use support::{import_busybox, DockerCli, Dockerd, Plugin};

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

struct Variant {
    label: &'static str,
    driver: Driver,
    ports: bool,
    times: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Median of signed differences, in ms.
fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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

/// `docker <args>` that must succeed; returns stdout.
fn docker_ok(cli: &DockerCli, args: &[&str]) -> String {
    let out = cli
        .run(args)
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        stderr_text(&out)
    );
    stdout_text(&out)
}

/// What the bench made, torn down whatever happened.
struct Rig {
    base: PathBuf,
    /// The host's chains and FORWARD policy before our dockerd and cnibridge changed them.
    firewall: FirewallSnapshot,
    /// `/run/docker/plugins` and `/run/docker` if they did not exist before.
    run_dirs_made: Vec<PathBuf>,
    links_before: HashSet<String>,
    proxies_before: HashSet<i32>,
    ip_forward_before: Option<String>,
    dockerd: Option<Dockerd>,
    plugin: Option<Plugin>,
    image: String,
    networks: BTreeMap<&'static str, String>,
}

impl Rig {
    fn cli(&self) -> DockerCli {
        self.dockerd.as_ref().expect("dockerd started").cli()
    }

    fn network(&self, driver: Driver) -> &str {
        match driver {
            Driver::Cnibridge => &self.networks["cnibridge"],
            Driver::DockerBridge => &self.networks["bridge"],
        }
    }

    fn setup(&mut self) {
        fs::create_dir_all(&self.base)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.base.display()));
        let dockerd = Dockerd::start_with(&self.base.join("d"), &["--log-level", "info"])
            .unwrap_or_else(|e| {
                panic!("{e}");
            });
        println!(
            "note: dockerd {} up (storage driver {}), log {}",
            docker_ok(
                &dockerd.cli(),
                &["version", "--format", "{{.Server.Version}}"]
            ),
            dockerd.storage_driver(),
            dockerd.log_path().display()
        );
        self.dockerd = Some(dockerd);
        self.image = import_busybox(self.dockerd.as_ref().expect("dockerd"));
        let name = format!("{PLUGIN_PREFIX}{}", std::process::id());
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_cnibridge"));
        let mut plugin = Plugin::new(
            &bin,
            &self.base.join("p"),
            &name,
            &format!("{DEFAULT_POOL}:24"),
        )
        .with_log_level("info");
        let started = plugin.start();
        self.plugin = Some(plugin);
        started.unwrap_or_else(|e| panic!("{e}"));
        println!("note: cnibridge {} serving {name}", bin.display());
        let cli = self.cli();
        let cnb = format!("{NAME_PREFIX}cnb");
        docker_ok(
            &cli,
            &[
                "network",
                "create",
                "-d",
                &name,
                "--ipam-driver",
                &name,
                "--subnet",
                CNB_SUBNET,
                "-o",
                &format!("bridge={CNB_BRIDGE}"),
                &cnb,
            ],
        );
        self.networks.insert("cnibridge", cnb);
        let br = format!("{NAME_PREFIX}bridge");
        docker_ok(
            &cli,
            &[
                "network",
                "create",
                "-d",
                "bridge",
                "--subnet",
                BRIDGE_SUBNET,
                "-o",
                &format!("com.docker.network.bridge.name={DOCKER_BRIDGE}"),
                &br,
            ],
        );
        self.networks.insert("bridge", br);
    }

    /// One `docker run -d`, timed; the container is removed afterwards (untimed).
    fn run_once(&self, name: &str, driver: Driver, ports: bool) -> Duration {
        let cli = self.cli();
        let port_args = port_args();
        let mut args: Vec<&str> = vec!["run", "-d", "--name", name, "--network"];
        args.push(self.network(driver));
        if ports {
            args.extend(port_args.iter().map(String::as_str));
        }
        args.extend([self.image.as_str(), "sleep", "1000"]);
        let (took, out) = run_timed(cli.command(&args), DOCKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")));
        if !out.status.success() {
            let _ = cli.run(&["rm", "-f", name]);
            panic!(
                "docker {} failed: {}\ndockerd log tail:\n{}\ncnibridge log tail:\n{}",
                args.join(" "),
                stderr_text(&out),
                self.dockerd.as_ref().expect("dockerd").log_tail(10),
                self.plugin.as_ref().expect("plugin").log_tail(10)
            );
        }
        took
    }

    fn remove(&self, name: &str) {
        docker_ok(&self.cli(), &["rm", "-f", name]);
        thread::sleep(PAUSE);
    }

    fn measure(&self, variants: &mut [Variant], rounds: usize) {
        // One untimed round first: the first start of each kind pays for caches and lazy set-up.
        for (k, v) in variants.iter().enumerate() {
            let name = format!("{NAME_PREFIX}warm-{k}");
            self.run_once(&name, v.driver, v.ports);
            self.remove(&name);
        }
        for round in 0..rounds {
            // A balanced Latin square: over four rounds each variant runs once in every position
            // and follows every other variant once. (A plain rotation put "no ports" always right
            // after the previous variant's teardown, e.g. 40 docker-proxy processes ending.)
            for &k in &ORDER[round % ORDER.len()] {
                if STOP.load(Ordering::SeqCst) {
                    println!("note: interrupted after {round} rounds");
                    return;
                }
                let name = format!("{NAME_PREFIX}{round}-{k}");
                let took = self.run_once(&name, variants[k].driver, variants[k].ports);
                variants[k].times.push(took);
                self.remove(&name);
            }
        }
    }

    /// Untimed: what one 20-port container costs besides time — docker-proxy processes and firewall
    /// rules — and, with `CNB_BENCH_TRACE=1`, which programs dockerd and cnibridge exec for it.
    fn observe(&self) {
        for (label, driver) in [
            ("cnibridge", Driver::Cnibridge),
            ("docker bridge", Driver::DockerBridge),
        ] {
            let name = format!("{NAME_PREFIX}observe");
            self.run_once(&name, driver, true);
            let ip = docker_ok(
                &self.cli(),
                &[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    &name,
                ],
            );
            let proxies = docker_proxies(&self.base);
            let rules = rules_naming(&ip);
            println!(
                "{label}, {PORTS} ports: container {ip}, {} docker-proxy processes, {} iptables rules naming it \
                 ({} DNAT)",
                proxies.len(),
                rules.len(),
                rules.iter().filter(|r| r.contains("DNAT")).count()
            );
            let mut by_host_ip: BTreeMap<String, usize> = BTreeMap::new();
            for p in &proxies {
                let host_ip = p
                    .split_whitespace()
                    .skip_while(|w| *w != "-host-ip")
                    .nth(1)
                    .unwrap_or("?");
                *by_host_ip.entry(host_ip.to_string()).or_insert(0) += 1;
            }
            if !by_host_ip.is_empty() {
                println!("  docker-proxy per -host-ip: {by_host_ip:?}");
            }
            if let Some(p) = proxies.first() {
                println!("  e.g. {p}");
            }
            self.remove(&name);
        }
        if std::env::var_os("CNB_BENCH_TRACE").is_none() {
            return;
        }
        if support::which("strace").is_none() {
            println!("note: CNB_BENCH_TRACE needs strace; skipped");
            return;
        }
        let dockerd = self.dockerd.as_ref().expect("dockerd").pid();
        let plugin = self.plugin.as_ref().expect("plugin").pid();
        let (Some(dockerd), Some(plugin)) = (dockerd, plugin) else {
            return;
        };
        println!("programs exec'd during one docker run -d (strace -f of dockerd and cnibridge):");
        for (label, driver, ports) in [
            ("cnibridge, no ports", Driver::Cnibridge, false),
            ("cnibridge, 20 ports", Driver::Cnibridge, true),
            ("docker bridge, no ports", Driver::DockerBridge, false),
            ("docker bridge, 20 ports", Driver::DockerBridge, true),
        ] {
            // Under CNB_BENCH_KEEP_LOGS the strace files (one per process, with timestamps) are kept.
            let root = std::env::var_os("CNB_BENCH_KEEP_LOGS")
                .map(PathBuf::from)
                .unwrap_or_else(|| self.base.clone());
            let dir = root.join("trace").join(label.replace([',', ' '], "_"));
            fs::create_dir_all(&dir).expect("trace dir");
            let mut strace = Command::new("strace")
                .args([
                    "-f",
                    "-ff",
                    "-qq",
                    "-tt",
                    "-s",
                    "256",
                    "-e",
                    "trace=execve",
                    "-o",
                ])
                .arg(dir.join("t"))
                .args(["-p", &dockerd.to_string(), "-p", &plugin.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start strace");
            thread::sleep(Duration::from_secs(1));
            let name = format!("{NAME_PREFIX}trace");
            self.run_once(&name, driver, ports);
            thread::sleep(Duration::from_millis(300));
            let _ = kill(Pid::from_raw(strace.id() as i32), Signal::SIGINT);
            let _ = strace.wait();
            self.remove(&name);
            let counts = exec_counts(&dir);
            let shown: Vec<String> = counts.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
            println!("  {label:<24} {}", shown.join(", "));
        }
    }

    /// `CNB_BENCH_KEEP_LOGS=<dir>` keeps the dockerd and cnibridge logs (the base dir is always removed).
    fn keep_logs(&self) {
        let Some(dir) = std::env::var_os("CNB_BENCH_KEEP_LOGS").map(PathBuf::from) else {
            return;
        };
        let _ = fs::create_dir_all(&dir);
        let logs = [
            self.dockerd.as_ref().map(|d| (d.log_path(), "dockerd.log")),
            self.plugin.as_ref().map(|p| (p.log(), "cnibridge.log")),
        ];
        for (from, name) in logs.into_iter().flatten() {
            if let Err(e) = fs::copy(&from, dir.join(name)) {
                println!("note: keeping {}: {e}", from.display());
            }
        }
    }

    /// Removes everything; returns what was left behind (the bench's failure) and prints notes.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(d) = &self.dockerd {
            let cli = d.cli();
            for line in sweep_docker(&cli) {
                println!("note: teardown: {line}");
            }
        }
        self.keep_logs();
        if let Some(mut p) = self.plugin.take() {
            if let Err(e) = p.stop() {
                println!("note: cnibridge stop: {e}");
            }
            let socket = p.socket().to_path_buf();
            drop(p);
            if socket.exists() {
                left.push(format!("plugin socket {}", socket.display()));
            }
        }
        if let Some(mut d) = self.dockerd.take() {
            if let Err(e) = d.stop() {
                left.push(format!("dockerd stop: {e}"));
            }
            left.extend(
                d.mounts()
                    .into_iter()
                    .map(|m| format!("mount {} after dockerd stopped", m.display())),
            );
            drop(d);
        }
        // With both daemons gone, a link of ours that remains is a leak. Only ours by name: other
        // sessions' tests may create links meanwhile, and they are not ours to judge or delete.
        let mine = [CNB_BRIDGE, DOCKER_BRIDGE];
        let ours = |l: &support::host::Link| {
            mine.contains(&l.name.as_str())
                || l.master.as_deref().is_some_and(|m| mine.contains(&m))
        };
        for link in links()
            .into_iter()
            .filter(|l| !self.links_before.contains(&l.name))
        {
            if !ours(&link) {
                // A veth whose bridge is gone may be ours, or another session's: reported only.
                if link.name.starts_with("vcb") || link.name.starts_with("veth") {
                    println!(
                        "note: teardown: new link {} (not attached to our bridges)",
                        link.name
                    );
                }
                continue;
            }
            // Deleting one end of a veth deletes the other.
            match delete_link(&link.name) {
                Ok(()) => left.push(format!("link {} (deleted)", link.name)),
                Err(e) if e.contains("Cannot find") => {}
                Err(e) => left.push(format!("link {} (could not delete: {e})", link.name)),
            }
        }
        // Chains and the FORWARD policy belong to whatever dockerd or cnibridge runs; only with none
        // left are the ones ours added taken away (as the e2e tier does).
        let others = ["dockerd", "cnibridge"].iter().any(|p| {
            Command::new("pgrep")
                .args(["-x", p])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(true)
        });
        if others {
            println!(
                "note: teardown: another dockerd or cnibridge runs; iptables chains left to it"
            );
        } else {
            for line in self.firewall.restore() {
                println!("note: teardown: {line}");
            }
        }
        for dir in &self.run_dirs_made {
            if fs::remove_dir(dir).is_ok() {
                println!("note: teardown: removed {}", dir.display());
            }
        }
        if let Some(before) = &self.ip_forward_before {
            let now = fs::read_to_string(IP_FORWARD).unwrap_or_default();
            if now.trim() != before.trim() && fs::write(IP_FORWARD, before).is_ok() {
                println!(
                    "note: teardown: ip_forward back to {} (dockerd had set it)",
                    before.trim()
                );
            }
        }
        // Docker keeps its sandboxes under its exec root (the mounts above); named ones would be ours
        // only with our prefix.
        left.extend(
            support::host::netns_matching(PLUGIN_PREFIX)
                .into_iter()
                .map(|n| format!("netns {n}")),
        );
        // Rules in the built-in chains that name our bridges or subnets: the daemons remove theirs with
        // the networks, but not when they died first (a Ctrl-C reaches dockerd and cnibridge too, as
        // they share our process group). Deleted here and reported.
        for (rule, deleted) in delete_rules_mentioning(&OUR_WORDS) {
            left.push(format!(
                "iptables: {rule}{}",
                if deleted { " (deleted)" } else { "" }
            ));
        }
        left.extend(
            pids_referencing(&self.base)
                .into_iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        left.extend(
            all_docker_proxies()
                .into_iter()
                .filter(|(pid, _)| !self.proxies_before.contains(pid))
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        if let Err(e) = remove_tree(&self.base) {
            left.push(e);
        }
        left
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What names our networks in an iptables rule.
const OUR_WORDS: [&str; 4] = [CNB_BRIDGE, DOCKER_BRIDGE, "10.241.0.", "10.242.0."];

/// Splits an `iptables -S` rule into arguments, keeping double-quoted words (comments) whole.
fn rule_args(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    args.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        args.push(word);
    }
    args
}

/// Deletes every `-A` rule (iptables and ip6tables, filter and nat) whose text contains one of
/// `words`; returns each such rule and whether its deletion worked.
fn delete_rules_mentioning(words: &[&str]) -> Vec<(String, bool)> {
    let mut done = Vec::new();
    for rule in iptables_mentions(words) {
        // "<tool> -t <table>: -A CHAIN …", as iptables_mentions reports it.
        let Some((head, spec)) = rule.split_once(": -A ") else {
            continue;
        };
        let mut head = head.split_whitespace();
        let (Some(tool), Some(table)) = (head.next(), head.nth(1)) else {
            continue;
        };
        let deleted = Command::new(tool)
            .args(["-w", "5", "-t", table, "-D"])
            .args(rule_args(spec))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        done.push((rule, deleted));
    }
    done
}

/// Runs `cmd` to completion, timing it with a blocking wait (the support helpers poll every 50 ms,
/// far too coarse for this), and kills it after `timeout`.
fn run_timed(mut cmd: Command, timeout: Duration) -> Result<(Duration, Output), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (done, wait_done) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = wait_done.recv_timeout(timeout) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output();
    let took = started.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out.map_err(|e| format!("wait: {e}"))?;
    if took >= timeout {
        return Err(format!("did not finish within {timeout:?}"));
    }
    Ok((took, out))
}

/// Removes containers, then networks, named with the bench prefix.
fn sweep_docker(cli: &DockerCli) -> Vec<String> {
    let mut report = Vec::new();
    let filter = format!("name={NAME_PREFIX}");
    for (list, rm) in [
        (
            vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
            vec!["rm", "-f"],
        ),
        (
            vec![
                "network",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Name}}",
            ],
            vec!["network", "rm"],
        ),
    ] {
        let names = match cli.run(&list) {
            Ok(out) if out.status.success() => stdout_text(&out),
            Ok(out) => {
                report.push(format!("cannot list: {}", stderr_text(&out)));
                continue;
            }
            Err(e) => {
                report.push(format!("cannot list: {e}"));
                continue;
            }
        };
        for name in names.lines().filter(|n| n.starts_with(NAME_PREFIX)) {
            let mut args = rm.clone();
            args.push(name);
            match cli.run(&args) {
                Ok(out) if out.status.success() => report.push(format!("removed {name}")),
                Ok(out) => report.push(format!("could not remove {name}: {}", stderr_text(&out))),
                Err(e) => report.push(format!("could not remove {name}: {e}")),
            }
        }
    }
    report
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every docker-proxy process on the host.
fn all_docker_proxies() -> Vec<(i32, String)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pid_alive(*pid) && comm(*pid) == "docker-proxy")
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

/// docker-proxy processes of our dockerd (its descendants).
fn docker_proxies(base: &Path) -> Vec<String> {
    pids_referencing(base)
        .into_iter()
        .filter(|(pid, _)| comm(*pid) == "docker-proxy")
        .map(|(pid, _)| cmdline(pid))
        .collect()
}

/// iptables and ip6tables rules (filter and nat) naming `ip` as an address (`ip/32` or `ip:port`).
fn rules_naming(ip: &str) -> Vec<String> {
    let words = [format!("{ip}/"), format!("{ip}:")];
    iptables_mentions(&[&words[0], &words[1]])
}

/// Successful execve calls in an `strace -ff -o DIR/t` output, counted by program name.
fn exec_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            // `HH:MM:SS.ffffff execve("/path", [args…], …) = 0`
            let call = line.split_once(' ').map_or(line, |(_, rest)| rest);
            let Some(rest) = call.strip_prefix("execve(\"") else {
                continue;
            };
            if !line.trim_end().ends_with("= 0") {
                continue;
            }
            let path = rest.split('"').next().unwrap_or_default();
            let prog = path.rsplit('/').next().unwrap_or(path).to_string();
            *counts.entry(prog).or_insert(0) += 1;
        }
    }
    counts
}

/// cnibridge's own share, from its log: how long ProgramExternalConnectivity took when it
/// published the ports (one line per request: `… endpoint=<id> …: ok elapsed_us=N`).
fn plugin_side(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let endpoint = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("endpoint="))
            .map(|e| {
                e.trim_matches(|c| c == '"' || c == ':' || c == '}')
                    .to_string()
            })
    };
    let published: HashSet<String> = text
        .lines()
        .filter(|l| l.contains("ports published"))
        .filter_map(endpoint)
        .collect();
    let times: Vec<Duration> = text
        .lines()
        .filter(|l| l.contains("ProgramExternalConnectivity") && l.contains("elapsed_us="))
        .filter(|l| endpoint(l).is_some_and(|e| published.contains(&e)))
        .filter_map(|l| l.rsplit("elapsed_us=").next()?.trim().parse().ok())
        .map(Duration::from_micros)
        .collect();
    if !times.is_empty() {
        println!(
            "cnibridge's ProgramExternalConnectivity publishing {PORTS} ports (its log, n={}): median {:.1} ms, p90 {:.1} ms",
            times.len(),
            ms(median(&times)),
            ms(p90(&times))
        );
    }
}

/// Directories, plugin sockets and bridges of earlier bench runs that died without tearing down.
fn sweep_stale_runs() -> Vec<String> {
    let mut report = Vec::new();
    let me = std::process::id() as i32;
    let mut live_others = false;
    for entry in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(BASE_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if pid_alive(pid) {
            live_others = true;
            continue;
        }
        for killed in kill_referencing(&entry.path(), Duration::from_secs(10)) {
            report.push(format!("killed leftover of run {pid}: {killed}"));
        }
        match remove_tree(&entry.path()) {
            Ok(()) => report.push(format!("removed {}", entry.path().display())),
            Err(e) => report.push(e),
        }
        let socket = Path::new(PLUGIN_DIR).join(format!("{PLUGIN_PREFIX}{pid}.sock"));
        if fs::remove_file(&socket).is_ok() {
            report.push(format!("removed {}", socket.display()));
        }
    }
    if !live_others {
        for link in links() {
            let ours = [CNB_BRIDGE, DOCKER_BRIDGE];
            if (ours.contains(&link.name.as_str())
                || link.master.as_deref().is_some_and(|m| ours.contains(&m)))
                && delete_link(&link.name).is_ok()
            {
                report.push(format!("deleted stale link {}", link.name));
            }
        }
    }
    report
}

/// Refuses host ports something already listens on.
fn check_ports_free() -> Result<(), String> {
    let busy: Vec<u16> = (0..PORTS)
        .map(host_port)
        .filter(|p| TcpListener::bind(("0.0.0.0", *p)).is_err())
        .collect();
    if busy.is_empty() {
        Ok(())
    } else {
        Err(format!("host ports in use: {busy:?}"))
    }
}

fn report(variants: &[Variant]) {
    let rounds = variants.iter().map(|v| v.times.len()).min().unwrap_or(0);
    if rounds == 0 {
        println!("no complete round measured");
        return;
    }
    println!(
        "docker run -d, {rounds} rounds, {PORTS} published ports ({}):",
        layout_text()
    );
    for v in variants {
        let t = &v.times[..rounds];
        let (min, max) = (t.iter().min().unwrap(), t.iter().max().unwrap());
        println!(
            "  {:<26} median {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
            v.label,
            ms(median(t)),
            ms(p90(t)),
            ms(*min),
            ms(*max)
        );
    }
    let extra = |driver: Driver| {
        let of = |ports: bool| {
            variants
                .iter()
                .find(|v| v.driver == driver && v.ports == ports)
                .map(|v| &v.times[..rounds])
                .expect("variant")
        };
        let (with, without) = (of(true), of(false));
        let plain = ms(median(with)) - ms(median(without));
        // The same round's two runs were close in time: their difference is less exposed to drift.
        let paired = median_f(
            with.iter()
                .zip(without)
                .map(|(a, b)| ms(*a) - ms(*b))
                .collect(),
        );
        (plain, paired)
    };
    let (cnb, cnb_paired) = extra(Driver::Cnibridge);
    let (dck, dck_paired) = extra(Driver::DockerBridge);
    println!("extra cost of {PORTS} ports (median with - median without; median of per-round differences):");
    println!("  cnibridge       {cnb:>7.1} ms   ({cnb_paired:.1} ms)");
    println!("  docker bridge   {dck:>7.1} ms   ({dck_paired:.1} ms)");
    if dck <= 0.0 {
        println!("ratio cnibridge/docker: undefined (Docker's extra cost is not positive); target not decidable");
        return;
    }
    let ratio = cnb / dck;
    println!(
        "ratio cnibridge/docker: {ratio:.2} (per-round: {:.2}); target <= 0.5: {}",
        cnb_paired / dck_paired,
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ports bench: run it with `cargo bench --bench ports` (as root)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("ports bench: needs root (dockerd, bridges, iptables); skipped");
        return;
    }
    if !support::require_tools(&[
        "/usr/sbin/dockerd",
        "docker",
        "busybox",
        "ip",
        "iptables",
        "tar",
    ]) {
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
    let mut rig = Rig {
        base: PathBuf::from(format!("/tmp/{BASE_PREFIX}{}", std::process::id())),
        firewall: FirewallSnapshot::take(),
        run_dirs_made: [PLUGIN_DIR, "/run/docker"]
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect(),
        links_before: links().into_iter().map(|l| l.name).collect(),
        proxies_before: all_docker_proxies().into_iter().map(|(p, _)| p).collect(),
        ip_forward_before: fs::read_to_string(IP_FORWARD).ok(),
        dockerd: None,
        plugin: None,
        image: String::new(),
        networks: BTreeMap::new(),
    };
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
    if let Some(p) = &rig.plugin {
        plugin_side(&p.log());
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
