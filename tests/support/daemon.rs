//! The cnibridge binary spawned as `cnibridge serve` with a private socket and private directories,
//! and the wait until it answers: what the plugin of the docker tiers ([`super::plugin`]), the
//! daemon CLI tests and the netns daemon tests start. The in-process counterpart is
//! [`super::in_process`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use super::process::POLL;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnibridge"))
}

/// What one daemon is started with. Everything but the socket lives in directories of its own.
pub struct Serve {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `--cni-data-dir`, the host-local store.
    pub data_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// `--default-pools`; None: the daemon's own.
    pub default_pools: Option<String>,
    /// `--firewall`.
    pub firewall: String,
    /// `--docker-host`: `none` unless a test names its own dockerd, so a test daemon never asks
    /// (and never forgets networks because of) some other dockerd on the host.
    pub docker_host: String,
    pub log_level: String,
}

impl Serve {
    /// `state/`, `data/` and `conf/` under `dir`, no firewall, no dockerd, `warn` logging.
    pub fn under(dir: &Path, socket: &Path) -> Serve {
        Serve {
            socket: socket.to_path_buf(),
            state_dir: dir.join("state"),
            data_dir: dir.join("data"),
            conf_dir: dir.join("conf"),
            default_pools: None,
            firewall: "none".into(),
            docker_host: "none".into(),
            log_level: "warn".into(),
        }
    }

    /// `cnibridge serve …`, to be spawned (the caller decides where its output goes).
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cni-data-dir")
            .arg(&self.data_dir)
            .arg("--cni-conf-dir")
            .arg(&self.conf_dir)
            .args(
                self.default_pools
                    .iter()
                    .flat_map(|p| ["--default-pools", p]),
            )
            .args(["--docker-host", &self.docker_host])
            .args(["--firewall", &self.firewall])
            .args(["--log-level", &self.log_level])
            .env("RUST_BACKTRACE", "1");
        cmd
    }
}

/// A spawned daemon, killed on drop (also when the test fails).
pub struct Daemon {
    pub child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the daemon on `socket` answers a request. A socket file alone is not enough: after
/// a SIGKILL the old file is still there, answering nothing, and a starting daemon accepts as soon
/// as it is bound but reads requests only once the earlier state is reconciled. With `child`, its
/// exit ends the wait early. The Err says why it is not serving.
pub fn wait_answering(
    mut child: Option<&mut Child>,
    socket: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            return Err(format!(
                "cnibridge exited ({status}) before serving {}",
                socket.display()
            ));
        }
        let answer = post_within(socket, "/NetworkDriver.GetCapabilities", "", timeout);
        if answer.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cnibridge not serving {} after {timeout:?}",
                socket.display()
            ));
        }
        thread::sleep(POLL);
    }
}

/// One `POST` over a fresh connection, as plain HTTP/1.1 text: the whole answer, status line first.
pub fn post(socket: &Path, path: &str, body: &str) -> std::io::Result<String> {
    post_within(socket, path, body, Duration::from_secs(30))
}

fn post_within(
    socket: &Path,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
