//! Child processes with deadlines, and finding processes by what they touch.
//!
//! Every external command gets a deadline because a hung plugin handler hangs dockerd (legacy plugins have no
//! per-request timeout), which would otherwise hang the whole suite instead of failing one scenario.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often bounded waits look again.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a host tool (`ip`, `iptables`, `nft`, …) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// `cmd args` that must succeed within [`TOOL_TIMEOUT`]; returns stdout, else panics with stderr.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run_timeout(Command::new(cmd).args(args), TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{cmd} {}: {e}", args.join(" ")));
    if !out.status.success() {
        panic!("{cmd} {} failed: {}", args.join(" "), stderr_text(&out));
    }
    stdout_text(&out)
}

/// Whether any dockerd or cnibridge runs on the host (ours stopped already): the firewall chains
/// and `FORWARD` policy are then theirs too, and must be left alone. Unknown counts as yes.
pub fn other_daemons_running() -> bool {
    ["dockerd", "cnibridge"].iter().any(|p| {
        Command::new("pgrep")
            .args(["-x", p])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(true)
    })
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    // Readers on their own threads: a full pipe would otherwise block the child and look like a hang.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} did not finish within {timeout:?}"));
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            Ok(None) => return None,
            // ECHILD: somebody reaped it already; treat as gone rather than hang.
            Err(_) => return child.wait().ok(),
        }
    }
}

/// How a child ended after [`terminate`].
#[derive(Debug)]
pub enum Ended {
    /// It exited (by itself or after SIGTERM) with this status.
    Exited(ExitStatus),
    /// It ignored SIGTERM for the whole grace period and was SIGKILLed.
    Killed,
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Always reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) -> Ended {
    if let Ok(Some(status)) = child.try_wait() {
        return Ended::Exited(status);
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    if let Some(status) = wait_timeout(child, grace) {
        return Ended::Exited(status);
    }
    let _ = child.kill();
    let _ = child.wait();
    Ended::Killed
}

/// True if `pid` exists and is not a zombie. Zombies count as dead: an orphaned shim whose new parent does not
/// reap (PID 1 of some sandboxes) stays a zombie forever, holding nothing.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command, which may itself contain spaces or ')'.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => true,
        },
        Err(_) => false,
    }
}

/// Parent pid of a live process.
fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Processes whose command line mentions `path` (dockerd, its containerd and shims, the plugin, all started
/// with our directories as arguments), plus all their descendants: container processes name nothing of
/// ours, and their root reads as "/" from outside their mount namespace, but they are children of a shim.
pub fn pids_referencing(path: &Path) -> Vec<(i32, String)> {
    let direct = pids_naming(path);
    let mut tree: Vec<i32> = direct.iter().map(|(p, _)| *p).collect();
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    // Grow the set until no process has a parent in it (bounded by the number of processes).
    loop {
        let more: Vec<i32> = parents
            .iter()
            .filter(|(p, pp)| tree.contains(pp) && !tree.contains(p) && pid_alive(*p))
            .map(|(p, _)| *p)
            .collect();
        if more.is_empty() {
            break;
        }
        tree.extend(more);
    }
    let mut found = direct;
    for pid in tree.into_iter().skip(found.len()) {
        let cmd = cmdline_of(pid);
        found.push((pid, format!("{cmd} (descendant)")));
    }
    found
}

/// A process's command line, its arguments joined by spaces ("" once it is gone).
pub fn cmdline_of(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn pids_naming(path: &Path) -> Vec<(i32, String)> {
    // With the trailing slash /tmp/cnbt-12 does not match /tmp/cnbt-123.
    let needle = format!("{}/", path.display());
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        let cmdline = cmdline_of(pid);
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// SIGKILLs every process referencing `path` and waits (bounded) until they are gone. Returns what it killed.
pub fn kill_referencing(path: &Path, timeout: Duration) -> Vec<String> {
    let victims = pids_referencing(path);
    for (pid, _) in &victims {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    while victims.iter().any(|(pid, _)| pid_alive(*pid)) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    victims
        .into_iter()
        .map(|(pid, cmd)| format!("pid {pid}: {cmd}"))
        .collect()
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Shorthand for a command's stdout as trimmed text.
pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Shorthand for a command's stderr as trimmed text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}
