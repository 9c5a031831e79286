//! A private dockerd for the docker e2e tier (design.md): own data root, exec root, pidfile, socket and config,
//! `--bridge=none`, iptables left on so Docker's `FORWARD DROP` policy is in place as on a real host.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::host::{mounts_under, remove_tree, unmount_under};
use super::process::{
    kill_referencing, pid_alive, run_timeout, stderr_text, stdout_text, tail, terminate, Ended,
    POLL,
};

const DOCKERD: &str = "/usr/sbin/dockerd";
/// dockerd itself allows containers 15 s to stop at shutdown; leave room for that plus its own teardown.
const STOP_GRACE: Duration = Duration::from_secs(40);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous: a hung plugin handler hangs the docker command, and we want a failure, not a hung suite.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach one dockerd with the `docker` CLI. Cheap to clone, so guards can own one.
#[derive(Debug, Clone)]
pub struct DockerCli {
    host: String,
    config_dir: PathBuf,
}

impl DockerCli {
    /// The `DOCKER_HOST` value, for tools that call `docker` themselves.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Runs `docker <args>` against this daemon; the Err case is only "could not run / timed out".
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        self.run_timeout(args, DOCKER_TIMEOUT)
    }

    /// `docker <args>` that must succeed; returns trimmed stdout, else panics with stderr.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self
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

    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        run_timeout(&mut self.command(args), timeout)
    }

    /// `docker <args>` set up for this daemon, not started (for callers that wait on it themselves).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", &self.host)
            // A private CLI config: the user's contexts, credential helpers or proxies must not apply.
            .env("DOCKER_CONFIG", &self.config_dir)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        cmd
    }
}

pub struct Dockerd {
    dir: PathBuf,
    storage_driver: String,
    /// Flags beyond the harness's own, for every (re)start.
    extra: Vec<String>,
    child: Option<Child>,
    cli: DockerCli,
}

impl Dockerd {
    /// Starts a dockerd under `dir` (created; removed again on drop) and waits until it answers.
    pub fn start(dir: &Path) -> Result<Dockerd, String> {
        Self::start_with(dir, &[])
    }

    /// [`Dockerd::start`] with extra flags (e.g. `--iptables=false`), kept for restarts. A `--log-level` among
    /// them replaces the harness's `debug`.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Result<Dockerd, String> {
        fs::create_dir_all(dir.join("cli"))
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
        // An empty config file of our own: a host daemon.json repeating one of our flags would make dockerd
        // refuse to start ("specified both as a flag and in the configuration file").
        fs::write(dir.join("daemon.json"), "{}\n").map_err(|e| e.to_string())?;
        let mut d = Dockerd {
            dir: dir.to_path_buf(),
            storage_driver: String::new(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
            cli: DockerCli {
                host: format!("unix://{}", dir.join("docker.sock").display()),
                config_dir: dir.join("cli"),
            },
        };
        // overlay2 is fast, but fails where /tmp itself is an overlay (CI inside a container); vfs always works.
        // CNBT_STORAGE_DRIVERS (comma-separated) overrides the order, e.g. to test on vfs.
        let drivers =
            std::env::var("CNBT_STORAGE_DRIVERS").unwrap_or_else(|_| "overlay2,vfs".to_string());
        let mut errors = Vec::new();
        for driver in drivers.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            d.storage_driver = driver.to_string();
            match d.spawn() {
                Ok(()) => return Ok(d),
                Err(e) => {
                    errors.push(format!("with --storage-driver {driver}: {e}"));
                    d.stop_quietly();
                    unmount_under(&d.dir.join("data"));
                    let _ = fs::remove_dir_all(d.dir.join("data"));
                }
            }
        }
        Err(format!("dockerd did not start:\n{}", errors.join("\n")))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "=== cnbt: starting dockerd --storage-driver {}",
            self.storage_driver
        );
        let ns = format!("cnbt{}", std::process::id());
        let dir = |sub: &str| self.dir.join(sub).display().to_string();
        let child = Command::new(DOCKERD)
            .args(["--data-root", &dir("data")])
            .args(["--exec-root", &dir("exec")])
            .args(["--pidfile", &dir("docker.pid")])
            .args(["--config-file", &dir("daemon.json")])
            .args(["-H", &self.cli.host])
            .arg("--bridge=none")
            .args(["--storage-driver", &self.storage_driver])
            // If a system containerd runs at the default socket dockerd uses it instead of starting its own;
            // own namespaces keep our containers apart from the system dockerd's.
            .args(["--containerd-namespace", &ns])
            .args(["--containerd-plugins-namespace", &format!("{ns}p")])
            // Debug logs every plugin call, which is what one needs when a scenario fails (a benchmark
            // wants dockerd's default instead).
            .args(if self.extra.iter().any(|a| a.starts_with("--log-level")) {
                &[][..]
            } else {
                &["--log-level", "debug"][..]
            })
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {DOCKERD}: {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "dockerd exited ({status}); log tail:\n{}",
                    tail(&self.log_path(), 15)
                ));
            }
            match self.cli.run_timeout(
                &["version", "--format", "{{.Server.Version}}"],
                Duration::from_secs(5),
            ) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = e,
            }
            thread::sleep(POLL * 2);
        }
        Err(format!(
            "dockerd not answering after {START_TIMEOUT:?} (last: {last}); log tail:\n{}",
            tail(&self.log_path(), 15)
        ))
    }

    /// Runs `docker <args>`; panics only if the CLI could not run or timed out (the exit status is the
    /// caller's business).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.cli
            .run(args)
            .unwrap_or_else(|e| panic!("{e}; dockerd log tail:\n{}", self.log_tail(20)))
    }

    pub fn cli(&self) -> DockerCli {
        self.cli.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    pub fn storage_driver(&self) -> &str {
        &self.storage_driver
    }

    /// The pid dockerd wrote to its pidfile (it removes the file on a clean exit).
    pub fn pidfile_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("docker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The pid of the dockerd process we started, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, bounded wait, SIGKILL. Err describes anything unclean: a SIGKILL was needed, or processes of
    /// this dockerd (its containerd, shims, container processes) outlived it and had to be killed.
    pub fn stop(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            match terminate(&mut child, STOP_GRACE) {
                Ended::Exited(_) => {}
                Ended::Killed => {
                    problems.push(format!("dockerd ignored SIGTERM for {STOP_GRACE:?}"))
                }
            }
        }
        // Whatever still names our directories belongs to this dockerd (managed containerd, shims, container
        // processes chrooted into our overlays).
        let survivors = kill_referencing(&self.dir, Duration::from_secs(10));
        if !survivors.is_empty() {
            problems.push(format!(
                "outlived dockerd, killed: {}",
                survivors.join("; ")
            ));
        }
        if let Some(pid) = self.pidfile_pid().filter(|p| pid_alive(*p)) {
            problems.push(format!("pid {pid} from the pidfile still alive"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn stop_quietly(&mut self) {
        let _ = self.stop();
    }

    /// Stops and starts again with the same directories and storage driver.
    pub fn restart(&mut self) -> Result<(), String> {
        self.restart_after(|| {})
    }

    /// Stops, runs `between` (what happens to the host while dockerd is down), starts again.
    pub fn restart_after(&mut self, between: impl FnOnce()) -> Result<(), String> {
        let stopped = self.stop();
        // Leftover netns bind mounts of containers killed with dockerd would confuse its restore.
        unmount_under(&self.exec_root().join("netns"));
        between();
        self.spawn()?;
        stopped.map_err(|e| format!("restarted, but the stop was unclean: {e}"))
    }

    /// Mounts still present under our directories (netns bind mounts, overlays, the data-root mount).
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.dir)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop_quietly();
        if let Err(e) = remove_tree(&self.dir) {
            eprintln!("warning: {e}");
        }
    }
}
