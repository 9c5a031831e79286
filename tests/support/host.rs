//! Looking at (and tidying) the host: links, address files, namespaces, mounts, iptables, routes, HTTP.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use nix::mount::{umount2, MntFlags};
use serde_json::Value;

use super::process::{run_timeout, stdout_text};

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// One network interface of the host namespace, as `ip -j -d link` reports it.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    /// `bridge`, `veth`, … (absent for plain devices like `lo`).
    pub kind: Option<String>,
    /// The bridge this link is attached to.
    pub master: Option<String>,
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = run_timeout(Command::new("ip").args(args), CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `ip -j` prints nothing at all (not `[]`) for an empty netns list.
    let text = stdout_text(&out);
    if text.is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ip {args:?} printed invalid JSON ({e}): {text}"))
}

/// All links of the host namespace.
pub fn links() -> Vec<Link> {
    ip_json(&["-j", "-d", "link", "show"])
        .iter()
        .map(|l| Link {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            kind: l["linkinfo"]["info_kind"].as_str().map(str::to_string),
            master: l["master"].as_str().map(str::to_string),
        })
        .collect()
}

/// Links whose name starts with `prefix`.
pub fn ip_links_matching(prefix: &str) -> Vec<Link> {
    links()
        .into_iter()
        .filter(|l| l.name.starts_with(prefix))
        .collect()
}

/// The link called `name`, if it exists.
pub fn link(name: &str) -> Option<Link> {
    links().into_iter().find(|l| l.name == name)
}

/// Deletes a link (for a veth this removes both ends).
pub fn delete_link(name: &str) -> Result<(), String> {
    let out = run_timeout(Command::new("ip").args(["link", "del", name]), CMD_TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Names of the entries of `dir`, sorted; empty if it does not exist.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// host-local allocation files (named after an IP address) in one network directory.
pub fn ip_files_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

/// Every allocation file under a CNI data dir (all its network directories).
pub fn all_ip_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for net in files_in(data_dir) {
        let dir = data_dir.join(&net);
        if dir.is_dir() {
            found.extend(ip_files_in(&dir).into_iter().map(|f| dir.join(f)));
        }
    }
    found
}

/// Named network namespaces (`ip netns`) whose name starts with `prefix`.
pub fn netns_matching(prefix: &str) -> Vec<String> {
    ip_json(&["-j", "netns", "list"])
        .iter()
        .filter_map(|n| n["name"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Mount points at or under `path` (from our mount namespace), deepest first so they can be unmounted in order.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\134", "\\"),
            )
        })
        .filter(|p| p.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts everything at or under `path` (netns bind mounts, overlays, dockerd's private data-root
/// mount), so the directory can be removed. Returns what was mounted.
pub fn unmount_under(path: &Path) -> Vec<PathBuf> {
    let mounted = mounts_under(path);
    // A mount point can be stacked several times; repeat until nothing under `path` is left (bounded).
    for _ in 0..8 {
        let now = mounts_under(path);
        if now.is_empty() {
            break;
        }
        for m in now {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    mounted
}

/// Removes a directory tree after unmounting whatever is mounted inside it.
pub fn remove_tree(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    unmount_under(path);
    fs::remove_dir_all(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

/// iptables/ip6tables rules (filter and nat) whose text contains any of `words`, e.g. test bridge names.
pub fn iptables_mentions(words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        for table in ["filter", "nat"] {
            let Ok(out) = run_timeout(
                Command::new(tool).args(["-w", "5", "-t", table, "-S"]),
                CMD_TIMEOUT,
            ) else {
                continue;
            };
            for rule in stdout_text(&out).lines() {
                if words.iter().any(|w| rule.contains(w)) {
                    found.push(format!("{tool} -t {table}: {rule}"));
                }
            }
        }
    }
    found
}

/// Refuses subnets that overlap a route of the host: the suite must only ever send packets to addresses it
/// created, and a collision would route test traffic to a real network (or break the host's own).
pub fn check_subnets_unused(subnets: &[&str]) -> Result<(), String> {
    let ours: Vec<IpNet> = subnets
        .iter()
        .map(|s| s.parse().map_err(|e| format!("bad test subnet {s}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut routes = ip_json(&["-j", "-4", "route", "show", "table", "all"]);
    routes.extend(ip_json(&["-j", "-6", "route", "show", "table", "all"]));
    for route in &routes {
        let Some(dst) = route["dst"].as_str() else {
            continue;
        };
        let dst = match (dst.parse::<IpNet>(), dst.parse::<IpAddr>()) {
            (Ok(net), _) => net,
            (_, Ok(addr)) => IpNet::from(addr),
            _ => continue, // "default", "multicast …", "local …" entries
        };
        if dst.prefix_len() == 0 || dst.network().is_loopback() || dst.network().is_multicast() {
            continue;
        }
        for net in &ours {
            if net.contains(&dst.network()) || dst.contains(&net.network()) {
                return Err(format!(
                    "test subnet {net} overlaps host route {dst} ({route}); pick another"
                ));
            }
        }
    }
    Ok(())
}

/// A plain HTTP/1.0 GET of `/` (no curl needed on the CI host); returns the response body on status 200.
pub fn http_get(ip: IpAddr, port: u16, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddr::new(ip, port);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    write!(
        stream,
        "GET / HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response from {addr}: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET http://{addr}/ answered {status:?}"));
    }
    Ok(body.to_string())
}

/// The user chains of each iptables tool and table, and the policy of `FORWARD`: taken before the suite
/// so the chains our dockerd and cnibridge add (DOCKER*, CNIBRIDGE-*) and Docker's `FORWARD DROP`
/// can be taken away again afterwards.
pub struct FirewallSnapshot {
    chains: HashSet<(String, String, String)>,
    policies: Vec<(String, String)>,
    /// cnibridge's nftables tables (`family name`) that existed before.
    nft_tables: HashSet<String>,
}

/// cnibridge's nftables tables, as `family name`.
fn cnibridge_nft_tables() -> HashSet<String> {
    match run_timeout(Command::new("nft").args(["list", "tables"]), CMD_TIMEOUT) {
        Ok(out) if out.status.success() => stdout_text(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("table "))
            .filter(|t| t.contains("cnibridge"))
            .map(str::to_string)
            .collect(),
        _ => HashSet::new(),
    }
}

const FIREWALL_TOOLS: [&str; 2] = ["iptables", "ip6tables"];
const FIREWALL_TABLES: [&str; 2] = ["filter", "nat"];

fn rules_of(tool: &str, table: &str) -> Vec<String> {
    match run_timeout(
        Command::new(tool).args(["-w", "5", "-t", table, "-S"]),
        CMD_TIMEOUT,
    ) {
        Ok(out) => stdout_text(&out).lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

impl FirewallSnapshot {
    pub fn take() -> FirewallSnapshot {
        let mut chains = HashSet::new();
        let mut policies = Vec::new();
        for tool in FIREWALL_TOOLS {
            for table in FIREWALL_TABLES {
                for rule in rules_of(tool, table) {
                    if let Some(chain) = rule.strip_prefix("-N ") {
                        chains.insert((tool.to_string(), table.to_string(), chain.to_string()));
                    }
                    if table == "filter" {
                        if let Some(p) = rule.strip_prefix("-P FORWARD ") {
                            policies.push((tool.to_string(), p.to_string()));
                        }
                    }
                }
            }
        }
        FirewallSnapshot {
            chains,
            policies,
            nft_tables: cnibridge_nft_tables(),
        }
    }

    /// Deletes the chains that appeared since the snapshot, with every rule that jumps to them, and puts
    /// `FORWARD`'s policy back. Call only when no other dockerd or cnibridge runs: it is their state too.
    pub fn restore(&self) -> Vec<String> {
        let mut report = Vec::new();
        let run = |tool: &str, args: &[&str]| {
            run_timeout(Command::new(tool).args(["-w", "5"]).args(args), CMD_TIMEOUT)
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        for tool in FIREWALL_TOOLS {
            for table in FIREWALL_TABLES {
                let rules = rules_of(tool, table);
                let new: Vec<String> = rules
                    .iter()
                    .filter_map(|r| r.strip_prefix("-N "))
                    .filter(|c| {
                        !self
                            .chains
                            .contains(&(tool.to_string(), table.to_string(), c.to_string()))
                    })
                    .map(str::to_string)
                    .collect();
                if new.is_empty() {
                    continue;
                }
                for rule in &rules {
                    let jumps_to_new = new.iter().any(|c| rule.ends_with(&format!("-j {c}")));
                    if let (true, Some(spec)) = (jumps_to_new, rule.strip_prefix("-A ")) {
                        let mut args = vec!["-t", table, "-D"];
                        args.extend(spec.split_whitespace());
                        if run(tool, &args) {
                            report.push(format!("{tool} -t {table}: removed {rule}"));
                        }
                    }
                }
                for chain in &new {
                    if run(tool, &["-t", table, "-F", chain])
                        && run(tool, &["-t", table, "-X", chain])
                    {
                        report.push(format!("{tool} -t {table}: removed chain {chain}"));
                    }
                }
            }
        }
        for table in cnibridge_nft_tables().difference(&self.nft_tables) {
            let mut args = vec!["delete", "table"];
            args.extend(table.split_whitespace());
            let deleted = run_timeout(Command::new("nft").args(&args), CMD_TIMEOUT)
                .map(|o| o.status.success())
                .unwrap_or(false);
            if deleted {
                report.push(format!("nft: removed table {table}"));
            }
        }
        for (tool, policy) in &self.policies {
            let now = rules_of(tool, "filter");
            if !now.iter().any(|r| r == &format!("-P FORWARD {policy}"))
                && run(tool, &["-P", "FORWARD", policy])
            {
                report.push(format!("{tool}: FORWARD policy back to {policy}"));
            }
        }
        report
    }
}

/// The `FORWARD` policy of iptables (`ACCEPT`, `DROP`), from `iptables -S FORWARD`.
pub fn forward_policy() -> Result<String, String> {
    let out = run_timeout(
        Command::new("iptables").args(["-w", "5", "-S", "FORWARD"]),
        CMD_TIMEOUT,
    )?;
    stdout_text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("-P FORWARD "))
        .map(str::to_string)
        .ok_or_else(|| format!("no policy in iptables -S FORWARD: {}", stdout_text(&out)))
}

/// Makes `FORWARD`'s policy `want`: `DROP` as on a host where Docker turned forwarding on (dockerd sets
/// the policy only when it finds `ip_forward` off, so on a host where an earlier run or anything else left
/// it on the policy stays what it was), `ACCEPT` as on a host whose dockerd runs with
/// `--iptables=false`. Returns the policy it replaced, if any; the suite's [`FirewallSnapshot`] puts it
/// back at the end.
pub fn ensure_forward_policy(want: &str) -> Result<Option<String>, String> {
    let policy = forward_policy()?;
    if policy == want {
        return Ok(None);
    }
    let out = run_timeout(
        Command::new("iptables").args(["-w", "5", "-P", "FORWARD", want]),
        CMD_TIMEOUT,
    )?;
    if !out.status.success() {
        return Err(format!(
            "iptables -P FORWARD {want}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Some(policy))
}
