//! CNI `tuning`'s `sysctl` map, written inside a sandbox's network namespace.
//!
//! `/proc/sys/net` shows the network namespace of the task that looks a path up (procfs
//! resolves `net/` against `current`'s namespace, per thread, at open), so a thread that has
//! `setns`'d into the sandbox sees and writes the sandbox's values through the ordinary
//! `/proc/sys` mount; no mount of its own is needed. That thread is a fresh OS thread made for
//! the purpose: a runtime worker must never change namespace, since every later socket and
//! `/proc/sys` access on it would land in the container.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

/// Why a sysctl could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// Not a `net.*` key, or not a plain path under `/proc/sys/net`.
    #[error("sysctl {key} is not a network sysctl: the tuning plugin only sets net.* keys, which belong to the container's namespace; remove it from the tuning plugin")]
    NotNetwork { key: String },
    /// The key does not exist in the sandbox (a typo, a module not loaded, an interface name
    /// the container does not have).
    #[error("sysctl {key} does not exist in the container's namespace ({sandbox}): remove it from the tuning plugin")]
    Missing { key: String, sandbox: PathBuf },
    /// The kernel refused the write (a value out of range, a read-only key, a read-only
    /// `/proc/sys` in a managed-plugin sandbox).
    #[error("cannot set sysctl {key}={value} in the container's namespace ({sandbox}): {reason}; fix the value in the tuning plugin")]
    Write {
        key: String,
        value: String,
        sandbox: PathBuf,
        reason: String,
    },
    /// The sandbox's namespace could not be entered.
    #[error("cannot enter the container's network namespace {sandbox}: {reason}; the container may have stopped")]
    Netns { sandbox: PathBuf, reason: String },
}

/// The path of a `net.*` key under the `/proc/sys` root, as sysctl(8) reads keys: with a `/`
/// the key is a path (dots are then literal, e.g. an interface `eth0.100`); otherwise dots
/// separate the levels.
pub fn key_path(key: &str) -> Result<PathBuf, SysctlError> {
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    let plain = parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if !plain || parts.len() < 2 || parts[0] != "net" {
        return Err(SysctlError::NotNetwork {
            key: key.to_string(),
        });
    }
    Ok(parts.iter().collect())
}

/// How long a Join's sysctls wait for Docker to mount the sandbox's namespace.
const SANDBOX_WAIT: Duration = Duration::from_secs(120);

/// Whether `path` is a mounted network namespace (the bind mount Docker puts at a SandboxKey),
/// not the empty file under it or nothing.
fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Write every `(key, value)` under `proc_sys` from inside the namespace at `sandbox`, in
/// order, stopping at the first failure. The writes run on a thread of their own; the caller
/// only awaits its answer.
///
/// On a container's first start Docker sends Join before the namespace exists: runc makes it,
/// and Docker mounts it at the SandboxKey from runc's prestart hook, after every driver call of
/// that start. Then the keys are checked now and written from a thread that waits for the
/// mount (woken by mount-table changes, not polling), which lands before the hook returns and
/// so before the container's process starts; its outcome is logged.
pub async fn write_in_netns(
    sandbox: &Path,
    proc_sys: &Path,
    sysctls: &[(String, String)],
) -> Result<(), SysctlError> {
    let paths = sysctls
        .iter()
        .map(|(k, v)| key_path(k).map(|p| (k.clone(), v.clone(), proc_sys.join(p))))
        .collect::<Result<Vec<_>, _>>()?;
    if !is_netns(sandbox) {
        let owned = sandbox.to_path_buf();
        return std::thread::Builder::new()
            .name("cnibridge-sysctl-wait".into())
            .spawn(move || {
                let outcome = wait_for_netns(&owned, SANDBOX_WAIT)
                    .and_then(|()| write_on_this_thread(&owned, &paths));
                match outcome {
                    Ok(()) => tracing::info!(sandbox = %owned.display(), "tuning sysctls set once the sandbox was mounted"),
                    Err(e) => tracing::warn!(sandbox = %owned.display(), error = %e, "tuning sysctls not set"),
                }
            })
            .map(|_| ())
            .map_err(|e| SysctlError::Netns {
                sandbox: sandbox.to_path_buf(),
                reason: format!("cannot start a thread to wait for it: {e}"),
            });
    }
    let netns_err = |reason: String| SysctlError::Netns {
        sandbox: sandbox.to_path_buf(),
        reason,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = sandbox.to_path_buf();
    std::thread::Builder::new()
        .name("cnibridge-sysctl".into())
        .spawn(move || {
            // The thread ends here, and its namespace with it.
            let _ = tx.send(write_on_this_thread(&owned, &paths));
        })
        .map_err(|e| netns_err(format!("cannot start a thread for it: {e}")))?;
    rx.await.unwrap_or_else(|_| {
        Err(netns_err(
            "the sysctl thread ended without an answer".into(),
        ))
    })
}

/// Enter the namespace at `sandbox` and write: only on a thread made for it.
fn write_on_this_thread(
    sandbox: &Path,
    paths: &[(String, String, PathBuf)],
) -> Result<(), SysctlError> {
    let netns_err = |reason: String| SysctlError::Netns {
        sandbox: sandbox.to_path_buf(),
        reason,
    };
    let ns = File::open(sandbox).map_err(|e| netns_err(e.to_string()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(format!("setns: {e}")))?;
    for (key, value, path) in paths {
        write_one(sandbox, key, value, path)?;
    }
    Ok(())
}

/// Block until `sandbox` is a mounted namespace: `/proc/self/mountinfo` signals POLLPRI on
/// every change of this mount namespace's table (Docker's mount reaches a managed plugin's by
/// propagation).
fn wait_for_netns(sandbox: &Path, within: Duration) -> Result<(), SysctlError> {
    let netns_err = |reason: String| SysctlError::Netns {
        sandbox: sandbox.to_path_buf(),
        reason,
    };
    let mountinfo = File::open("/proc/self/mountinfo")
        .map_err(|e| netns_err(format!("cannot watch the mount table: {e}")))?;
    let deadline = Instant::now() + within;
    loop {
        if is_netns(sandbox) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(netns_err(format!(
                "Docker did not mount it within {within:?}"
            )));
        }
        let mut fds = [PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(netns_err(format!("watching the mount table: {e}"))),
        }
    }
}

fn write_one(sandbox: &Path, key: &str, value: &str, path: &Path) -> Result<(), SysctlError> {
    // Opened without O_CREAT: a missing key must not be mistaken for a refused write.
    let file = std::fs::OpenOptions::new().write(true).open(path);
    let result = file.and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(SysctlError::Missing {
            key: key.to_string(),
            sandbox: sandbox.to_path_buf(),
        }),
        Err(e) => Err(SysctlError::Write {
            key: key.to_string(),
            value: value.to_string(),
            sandbox: sandbox.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_and_slashed_keys_map_to_proc_sys_paths() {
        assert_eq!(
            key_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("net/ipv4/conf/eth0.100/forwarding")
        );
    }

    #[test]
    fn only_plain_net_keys_are_accepted() {
        for key in [
            "kernel.shmmax",
            "net",
            "net..ipv4",
            "net/../kernel/x",
            "net/ipv4/",
            "/net/ipv4/ip_forward",
            "",
        ] {
            let err = key_path(key).unwrap_err();
            assert!(matches!(err, SysctlError::NotNetwork { .. }), "{key}");
            assert!(err.to_string().contains("remove it"), "{err}");
        }
    }

    /// Join before Docker mounted the sandbox: the keys are checked at once, the writes wait.
    #[tokio::test]
    async fn a_sandbox_not_mounted_yet_is_waited_for_but_keys_are_checked_now() {
        let later = Path::new("/nonexistent/netns/abc");
        write_in_netns(
            later,
            Path::new("/proc/sys"),
            &[("net.ipv4.ip_forward".into(), "1".into())],
        )
        .await
        .unwrap();
        let err = write_in_netns(
            later,
            Path::new("/proc/sys"),
            &[("kernel.x".into(), "1".into())],
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SysctlError::NotNetwork { .. }), "{err}");
    }

    #[test]
    fn waiting_for_a_sandbox_that_never_comes_names_it() {
        let err = wait_for_netns(
            Path::new("/nonexistent/netns/abc"),
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns/abc"), "{err}");
        assert!(err.to_string().contains("did not mount it"), "{err}");
    }
}
