//! The cnibridge daemon under test, as a legacy plugin with a unique socket name in /run/docker/plugins.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::daemon::{wait_answering, Serve};
use super::host::remove_tree;
use super::process::{tail, terminate, Ended};

/// dockerd only looks here for legacy plugins (cnm-protocol.md §1), so the socket must be here too.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Plugin {
    bin: PathBuf,
    name: String,
    socket: PathBuf,
    dir: PathBuf,
    default_pools: String,
    /// `--docker-host` (see [`Serve::docker_host`]).
    docker_host: String,
    /// `--firewall`.
    firewall: String,
    log_level: String,
    child: Option<Child>,
    starts: u32,
    made_plugin_dir: bool,
}

impl Plugin {
    /// Prepares (does not start) a plugin called `name` whose state, data dir and log live under `dir`.
    pub fn new(bin: &Path, dir: &Path, name: &str, default_pools: &str) -> Plugin {
        let made_plugin_dir = !Path::new(PLUGIN_DIR).exists();
        fs::create_dir_all(PLUGIN_DIR).unwrap_or_else(|e| panic!("create {PLUGIN_DIR}: {e}"));
        let p = Plugin {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            socket: Path::new(PLUGIN_DIR).join(format!("{name}.sock")),
            dir: dir.to_path_buf(),
            default_pools: default_pools.to_string(),
            docker_host: "none".to_string(),
            firewall: "iptables".to_string(),
            log_level: "debug".to_string(),
            child: None,
            starts: 0,
            made_plugin_dir,
        };
        for d in [p.state_dir(), p.data_dir(), p.conf_dir()] {
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        // The repository's example configs, copied so scenarios can add their own next to them.
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs");
        let entries =
            fs::read_dir(&examples).unwrap_or_else(|e| panic!("read {}: {e}", examples.display()));
        for entry in entries.flatten() {
            // Subdirectories (the runtimes' defaults) are read by their own scenarios.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let to = p.conf_dir().join(entry.file_name());
            fs::copy(entry.path(), &to).unwrap_or_else(|e| {
                panic!("copy {} to {}: {e}", entry.path().display(), to.display())
            });
        }
        p
    }

    /// The dockerd this daemon serves (a `DOCKER_HOST` value, `unix://…`), which it asks about
    /// networks removed while it was down. Passed as a link in the plugin's own directory: the
    /// harness finds a dockerd's leftover processes by its directory in their command lines, and
    /// the plugin, which outlives dockerd restarts, is not one of them.
    pub fn with_docker_host(mut self, host: &str) -> Plugin {
        let target = host.strip_prefix("unix://").unwrap_or(host);
        let link = self.dir.join("dockerd.sock");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .unwrap_or_else(|e| panic!("link {} to {target}: {e}", link.display()));
        self.docker_host = format!("unix://{}", link.display());
        self
    }

    /// The firewall backend (`--firewall`).
    pub fn with_firewall(mut self, backend: &str) -> Plugin {
        self.firewall = backend.to_string();
        self
    }

    /// `--log-level` (default `debug`; a benchmark wants the daemon's default, `info`).
    pub fn with_log_level(mut self, level: &str) -> Plugin {
        self.log_level = level.to_string();
        self
    }

    /// The driver and IPAM name for `docker network create -d … --ipam-driver …`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon binary, also the `cnibridge firewall-reload` client.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The host-local store (`--cni-data-dir`): one directory per CNI network name.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// `--cni-conf-dir`: copies of the repository's `cni-confs/*`, for `cni.conf=NAME`.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    /// `--cni-export-dir` as the daemon defaults it.
    pub fn export_dir(&self) -> PathBuf {
        self.state_dir().join("cni-export")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("cnibridge.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon (again, with the same directories) and waits until it answers a request.
    /// A socket file alone is not enough: after a SIGKILL the old file is still there, answering nothing.
    pub fn start(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err(format!("plugin {} is already running", self.name));
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("open {}: {e}", self.log().display()))?;
        let _ = writeln!(
            log,
            "=== cnbt: start #{} of {}",
            self.starts,
            self.bin.display()
        );
        let serve = Serve {
            socket: self.socket.clone(),
            state_dir: self.state_dir(),
            data_dir: self.data_dir(),
            conf_dir: self.conf_dir(),
            default_pools: Some(self.default_pools.clone()),
            firewall: self.firewall.clone(),
            docker_host: self.docker_host.clone(),
            log_level: self.log_level.clone(),
        };
        let child = serve
            .command(&self.bin)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        if let Err(e) = wait_answering(self.child.as_mut(), &self.socket, START_TIMEOUT) {
            let _ = self.stop();
            return Err(format!("{e}; log tail:\n{}", self.log_tail(15)));
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, the way a crash or the OOM killer ends it: no cleanup, the socket file stays behind.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM and a bounded wait (then SIGKILL). Ok(true): it exited with status 0, the contract for SIGTERM;
    /// Ok(false): it was not running; Err: it exited badly or had to be killed.
    pub fn stop(&mut self) -> Result<bool, String> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        match terminate(&mut child, STOP_GRACE) {
            Ended::Exited(status) if status.success() => Ok(true),
            Ended::Exited(status) => Err(format!("cnibridge ended with {status} after SIGTERM")),
            Ended::Killed => Err(format!(
                "cnibridge ignored SIGTERM for {STOP_GRACE:?} and was killed"
            )),
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
        let _ = fs::remove_file(&self.socket);
        if let Err(e) = remove_tree(&self.dir) {
            eprintln!("warning: {e}");
        }
        if self.made_plugin_dir {
            // Only if empty: a system plugin may have appeared meanwhile.
            let _ = fs::remove_dir(PLUGIN_DIR);
        }
    }
}
