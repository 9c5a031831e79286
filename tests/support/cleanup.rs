//! Sweeping up after the suite: what the tests made, found by name prefix, and what earlier runs that died
//! (SIGKILL, Ctrl-C, a crash) left behind.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::dockerd::DockerCli;
use super::host::{delete_link, links, netns_matching, remove_tree, FirewallSnapshot};
use super::outside;
use super::plugin::PLUGIN_DIR;
use super::process::{kill_referencing, other_daemons_running, pid_alive, stdout_text};
use super::{BASE_PREFIX, DOCKER_PREFIX, TEST_PREFIX};

/// Link name prefixes of what the tests and the daemon make: test bridges (`cnbt…`), the daemon's host veths
/// (`vcb…`) and its default bridge names (`cnb-…`).
pub const LINK_PREFIXES: &[&str] = &[TEST_PREFIX, "vcb", "cnb-"];

pub struct Cleanup {
    /// Links that existed before the suite: a real cnibridge may serve this host, and other test tiers use
    /// the `cnbt` prefix too; their links are not ours to delete. (A dead earlier run's bridges are dealt
    /// with by [`sweep_stale_runs`].)
    links_before: HashSet<String>,
    /// `cnbt…` named netns that existed before: other test tiers use the prefix too, and may be running.
    netns_before: HashSet<String>,
    /// `/run/docker/plugins` and `/run/docker` if they did not exist before: our dockerd creates them.
    run_dirs_made: Vec<PathBuf>,
    /// The host's chains and FORWARD policy before our dockerd and cnibridge changed them.
    firewall: FirewallSnapshot,
}

impl Cleanup {
    /// Takes the snapshot; call before anything is created.
    pub fn new() -> Cleanup {
        Cleanup {
            links_before: links().into_iter().map(|l| l.name).collect(),
            netns_before: netns_matching(TEST_PREFIX).into_iter().collect(),
            run_dirs_made: [PLUGIN_DIR, "/run/docker"]
                .iter()
                .map(PathBuf::from)
                .filter(|d| !d.exists())
                .collect(),
            firewall: FirewallSnapshot::take(),
        }
    }

    /// Links that match the prefixes and are not pre-existing, i.e. made during this suite.
    pub fn new_links(&self) -> Vec<String> {
        links()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| {
                LINK_PREFIXES.iter().any(|p| n.starts_with(p)) && !self.links_before.contains(n)
            })
            .collect()
    }

    /// Containers and networks named with `prefix` (the tests use [`DOCKER_PREFIX`], the ports bench its
    /// own). Errors are folded into the list: it is a report.
    pub fn docker_objects(cli: &DockerCli, prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let filter = format!("name={prefix}");
        for (what, args) in [
            (
                "container",
                vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
            ),
            (
                "network",
                vec![
                    "network",
                    "ls",
                    "--filter",
                    &filter,
                    "--format",
                    "{{.Name}}",
                ],
            ),
        ] {
            match cli.run(&args) {
                Ok(out) if out.status.success() => found.extend(
                    stdout_text(&out)
                        .lines()
                        // The filter matches substrings; keep only real prefix matches.
                        .filter(|n| n.starts_with(prefix))
                        .map(|n| format!("{what} {n}")),
                ),
                Ok(out) => found.push(format!(
                    "cannot list {what}s: {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => found.push(format!("cannot list {what}s: {e}")),
            }
        }
        found
    }

    /// Removes containers, then networks, named with `prefix`. Returns what it removed or failed to.
    pub fn sweep_docker(cli: &DockerCli, prefix: &str) -> Vec<String> {
        let mut report = Vec::new();
        for item in Self::docker_objects(cli, prefix) {
            let (args, name) = match item.split_once(' ') {
                Some(("container", n)) => (vec!["rm", "-f", n], n),
                Some(("network", n)) => (vec!["network", "rm", n], n),
                _ => {
                    report.push(item);
                    continue;
                }
            };
            match cli.run(&args) {
                Ok(out) if out.status.success() => report.push(format!("removed {item}")),
                Ok(out) => report.push(format!(
                    "could not remove {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => report.push(format!("could not remove {name}: {e}")),
            }
        }
        report
    }

    /// `cnbt…` network namespaces of this process (their names carry its pid) that appeared during the
    /// suite. Reported, never deleted here: the scenarios remove their own (outside, CNI-attached) on drop,
    /// dockerd keeps its sandboxes under its exec root, and the namespace tests running beside us have
    /// namespaces of their own pids.
    pub fn new_netns(&self) -> Vec<String> {
        let pid = std::process::id().to_string();
        netns_matching(TEST_PREFIX)
            .into_iter()
            .filter(|n| !self.netns_before.contains(n))
            .filter(|n| n.split(|c: char| !c.is_ascii_digit()).any(|t| t == pid))
            .collect()
    }

    /// Deletes links made during the suite, and the run directories our dockerd created if empty. Returns
    /// what it deleted.
    pub fn sweep_host(&self) -> Vec<String> {
        let mut report = outside::sweep(true);
        for name in self.new_links() {
            // Deleting one end of a veth deletes the other; ignore "cannot find" for the second.
            match delete_link(&name) {
                Ok(()) => report.push(format!("deleted link {name}")),
                Err(e) if e.contains("Cannot find") => {}
                Err(e) => report.push(format!("could not delete link {name}: {e}")),
            }
        }
        // Chains and policy belong to whatever dockerd or cnibridge runs; only with none left are
        // the ones ours added taken away.
        let others = other_daemons_running();
        if !others {
            report.extend(self.firewall.restore());
        }
        for dir in &self.run_dirs_made {
            // remove_dir only succeeds if empty: anything another user put there stays.
            if fs::remove_dir(dir).is_ok() {
                report.push(format!("removed {}", dir.display()));
            }
        }
        report
    }
}

impl Default for Cleanup {
    fn default() -> Self {
        Self::new()
    }
}

/// Base directories of earlier suite runs whose process is gone (`/tmp/cnbt-<pid>`).
fn stale_bases() -> Vec<(i32, PathBuf)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(BASE_PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // A live pid may be a concurrent run (or an unrelated process that reused the pid): leave it alone.
        if pid != std::process::id() as i32 && !pid_alive(pid) {
            found.push((pid, entry.path()));
        }
    }
    found
}

/// Other suite runs alive right now (not this one).
fn live_runs() -> usize {
    fs::read_dir("/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(BASE_PREFIX)?
                .parse::<i32>()
                .ok()
        })
        .filter(|pid| *pid != std::process::id() as i32 && pid_alive(*pid))
        .count()
}

/// Cleans up after earlier runs that died without tearing down: kills their dockerd, containerd, shims,
/// container processes and plugin (all found through their directory), unmounts and removes the directory,
/// deletes their plugin socket and outside namespace, and deletes the given (test-owned) bridges with
/// whatever is attached to them. Returns what it did.
pub fn sweep_stale_runs(bridges: &[&str]) -> Vec<String> {
    // Outside namespaces carry their run's pid, so a dead run's are found whatever else runs.
    let mut report = outside::sweep(false);
    for (pid, base) in stale_bases() {
        for killed in kill_referencing(&base, Duration::from_secs(10)) {
            report.push(format!("killed leftover of run {pid}: {killed}"));
        }
        match remove_tree(&base) {
            Ok(()) => report.push(format!("removed {}", base.display())),
            Err(e) => report.push(e),
        }
        let socket = Path::new(PLUGIN_DIR).join(format!("{TEST_PREFIX}{pid}.sock"));
        if fs::remove_file(&socket).is_ok() {
            report.push(format!("removed {}", socket.display()));
        }
    }
    // Bridges of a dead run would keep their gateway routes and make the next run's subnet check fail. With
    // another run alive they may be its bridges, so leave them.
    if live_runs() > 0 {
        return report;
    }
    let all = links();
    let doomed = all.iter().filter(|l| {
        bridges.contains(&l.name.as_str())
            || l.master.as_deref().is_some_and(|m| bridges.contains(&m))
    });
    for link in doomed {
        if delete_link(&link.name).is_ok() {
            report.push(format!("deleted stale link {}", link.name));
        }
    }
    report
}
