//! The rig: our dockerd, cnibridge and the two networks, the timed rounds and the untimed observations
//! on them, and the teardown that removes all of it and says what was left.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::host::{
    all_docker_proxies, delete_rules_mentioning, docker_proxies, exec_counts, rules_naming,
};
use crate::stats::{run_timed, Variant};
use crate::support::dockerd::DOCKER_TIMEOUT;
use crate::support::host::{delete_link, links, remove_tree, FirewallSnapshot};
use crate::support::plugin::PLUGIN_DIR;
use crate::support::process::{other_daemons_running, pids_referencing, stderr_text};
use crate::support::{self, import_busybox, Cleanup, DockerCli, Dockerd, Plugin};
use crate::{
    port_args, Driver, BASE_PREFIX, BRIDGE_SUBNET, CNB_BRIDGE, CNB_SUBNET, DEFAULT_POOL,
    DOCKER_BRIDGE, NAME_PREFIX, ORDER, PAUSE, PLUGIN_PREFIX, PORTS, STOP,
};

/// What the bench made, torn down whatever happened.
pub(crate) struct Rig {
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
    /// Takes the snapshot of the host; call before anything is created.
    pub(crate) fn new() -> Rig {
        Rig {
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
        }
    }

    /// cnibridge's log, once it was started.
    pub(crate) fn plugin_log(&self) -> Option<PathBuf> {
        self.plugin.as_ref().map(Plugin::log)
    }

    fn cli(&self) -> DockerCli {
        self.dockerd.as_ref().expect("dockerd started").cli()
    }

    fn network(&self, driver: Driver) -> &str {
        match driver {
            Driver::Cnibridge => &self.networks["cnibridge"],
            Driver::DockerBridge => &self.networks["bridge"],
        }
    }

    pub(crate) fn setup(&mut self) {
        fs::create_dir_all(&self.base)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.base.display()));
        let dockerd = Dockerd::start_with(&self.base.join("d"), &["--log-level", "info"])
            .unwrap_or_else(|e| {
                panic!("{e}");
            });
        println!(
            "note: dockerd {} up (storage driver {}), log {}",
            dockerd
                .cli()
                .run_ok(&["version", "--format", "{{.Server.Version}}"]),
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
        cli.run_ok(&[
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
        ]);
        self.networks.insert("cnibridge", cnb);
        let br = format!("{NAME_PREFIX}bridge");
        cli.run_ok(&[
            "network",
            "create",
            "-d",
            "bridge",
            "--subnet",
            BRIDGE_SUBNET,
            "-o",
            &format!("com.docker.network.bridge.name={DOCKER_BRIDGE}"),
            &br,
        ]);
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
        self.cli().run_ok(&["rm", "-f", name]);
        thread::sleep(PAUSE);
    }

    pub(crate) fn measure(&self, variants: &mut [Variant], rounds: usize) {
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
    pub(crate) fn observe(&self) {
        for (label, driver) in [
            ("cnibridge", Driver::Cnibridge),
            ("docker bridge", Driver::DockerBridge),
        ] {
            let name = format!("{NAME_PREFIX}observe");
            self.run_once(&name, driver, true);
            let ip = self.cli().run_ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &name,
            ]);
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
    pub(crate) fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(d) = &self.dockerd {
            let cli = d.cli();
            for line in Cleanup::sweep_docker(&cli, NAME_PREFIX) {
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
        let others = other_daemons_running();
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
