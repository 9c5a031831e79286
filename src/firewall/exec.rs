//! What both backends do outside their rules: run the firewall tool (bounded in time) and set
//! `route_localnet` on a bridge whose ports answer on 127.0.0.1.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::FirewallError;

/// `iptables -w` waits for the xtables lock without bound and `nft` could hang on a wedged
/// netlink socket; this bounds the whole process instead, so a stuck tool cannot hang a Docker
/// request forever.
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// How `run_tool` says the tool could not be started (not installed, not executable).
const CANNOT_RUN: &str = "cannot run ";

/// Whether `e` is `run_tool` failing to start the tool at all.
pub(crate) fn could_not_start(e: &FirewallError) -> bool {
    matches!(e, FirewallError::Backend { reason, .. } if reason.starts_with(CANNOT_RUN))
}

/// Run a tool with an optional stdin, bounded by `TOOL_TIMEOUT`. The child inherits the
/// calling thread's network namespace.
pub(crate) async fn run_tool(
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, FirewallError> {
    let backend = |reason: String| FirewallError::Backend {
        tool: tool.to_string(),
        reason,
    };
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| backend(format!("{CANNOT_RUN}{tool}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| backend(format!("cannot write the script to {tool}: {e}")))?;
        // Dropping the pipe sends EOF, which is what makes restore (and `nft -f -`) commit.
        drop(pipe);
    }
    match tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(backend(format!("waiting for {tool}: {e}"))),
        Err(_) => Err(backend(format!(
            "{tool} did not finish within {}s",
            TOOL_TIMEOUT.as_secs()
        ))),
    }
}

/// Let the bridge route packets with a 127.0.0.0/8 source, which the host's connections to
/// `127.0.0.1:<port>` carry once DNATed to the container (until masquerade rewrites them in
/// postrouting). Never reset: other endpoints on the bridge may rely on it (as CNI's portmap).
/// A failure only loses the localhost path, so it is a warning.
pub(crate) fn set_route_localnet(bridge: &str) {
    // The name is validated ([A-Za-z0-9_.-], no leading '-'), so it is one path component.
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::warn!(%bridge, error = %e, "cannot set route_localnet; published ports will not answer on 127.0.0.1");
    }
}
