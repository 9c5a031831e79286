//! Host inspection and clean-up beside the daemons' own: leftover iptables rules, docker-proxy processes,
//! exec counts from strace, earlier runs that died, and the host ports the bench needs.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::host::{delete_link, iptables_mentions, links, remove_tree};
use crate::support::plugin::PLUGIN_DIR;
use crate::support::process::cmdline_of;
use crate::support::process::{kill_referencing, pid_alive, pids_referencing};
use crate::{host_port, BASE_PREFIX, CNB_BRIDGE, DOCKER_BRIDGE, PLUGIN_PREFIX, PORTS};

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
pub(crate) fn delete_rules_mentioning(words: &[&str]) -> Vec<(String, bool)> {
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

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every docker-proxy process on the host.
pub(crate) fn all_docker_proxies() -> Vec<(i32, String)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pid_alive(*pid) && comm(*pid) == "docker-proxy")
        .map(|pid| (pid, cmdline_of(pid)))
        .collect()
}

/// docker-proxy processes of our dockerd (its descendants).
pub(crate) fn docker_proxies(base: &Path) -> Vec<String> {
    pids_referencing(base)
        .into_iter()
        .filter(|(pid, _)| comm(*pid) == "docker-proxy")
        .map(|(pid, _)| cmdline_of(pid))
        .collect()
}

/// iptables and ip6tables rules (filter and nat) naming `ip` as an address (`ip/32` or `ip:port`).
pub(crate) fn rules_naming(ip: &str) -> Vec<String> {
    let words = [format!("{ip}/"), format!("{ip}:")];
    iptables_mentions(&[&words[0], &words[1]])
}

/// Successful execve calls in an `strace -ff -o DIR/t` output, counted by program name.
pub(crate) fn exec_counts(dir: &Path) -> BTreeMap<String, usize> {
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

/// Directories, plugin sockets and bridges of earlier bench runs that died without tearing down.
pub(crate) fn sweep_stale_runs() -> Vec<String> {
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
pub(crate) fn check_ports_free() -> Result<(), String> {
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
