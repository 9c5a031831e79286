//! iptables implementation of `Firewall`: the apply half.
//!
//! Why it exists: Docker sets the filter `FORWARD` policy to `DROP`, and br_netfilter sends
//! bridged frames through iptables, so even two ports of one bridge cannot talk until a rule
//! accepts it; containers also need isolation and masquerade as Docker's bridge gives them.
//!
//! How: the content of our own chains (see `render` for the layout) is rendered from the whole
//! set of known networks and applied with one `iptables-restore -w --noflush` per family per
//! change, covering the filter and nat tables in one transaction. Before it, the jumps from
//! `FORWARD` and `POSTROUTING` are checked (`-C`, concurrently) and the missing ones are added
//! by the same script. Nothing outside our chains is touched except those jumps.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;

use super::{validate_rules, Firewall, FirewallError, NetworkRules};

pub mod render;

pub use render::{
    render_restore, rule_comment, Family, Jump, FORWARD_CHAIN, ISOLATION_1, ISOLATION_2, JUMPS,
    POSTROUTING_CHAIN,
};

/// `-w` makes legacy iptables wait for the xtables lock without bound; this bounds the whole
/// process instead, so a wedged tool cannot hang a Docker request forever.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The two programs used for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTools {
    /// Checks for the jumps into our chains (`iptables` / `ip6tables`).
    pub iptables: String,
    /// Applies the rendered script (`iptables-restore` / `ip6tables-restore`).
    pub restore: String,
}

impl IptablesTools {
    /// `iptables` and `iptables-restore` from `PATH`.
    pub fn ipv4() -> Self {
        IptablesTools {
            iptables: "iptables".into(),
            restore: "iptables-restore".into(),
        }
    }

    /// `ip6tables` and `ip6tables-restore` from `PATH`.
    pub fn ipv6() -> Self {
        IptablesTools {
            iptables: "ip6tables".into(),
            restore: "ip6tables-restore".into(),
        }
    }
}

/// Whether IPv6 rules are written; decided by the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V6 {
    Unknown,
    Usable,
    Disabled,
}

struct State {
    networks: BTreeMap<String, NetworkRules>,
    v6: V6,
}

/// `Firewall` over iptables/ip6tables (either the nft or the legacy variant).
pub struct IptablesFirewall {
    v4: IptablesTools,
    v6: IptablesTools,
    // An async mutex, held across the apply, so concurrent changes reach the kernel in the
    // order they change the set.
    state: Mutex<State>,
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        Self::new(IptablesTools::ipv4(), IptablesTools::ipv6())
    }
}

impl IptablesFirewall {
    /// A firewall using these programs. If the IPv6 ones turn out unusable at the first change
    /// (missing binary, no IPv6 in the kernel), a warning is logged and only IPv4 is managed.
    pub fn new(v4: IptablesTools, v6: IptablesTools) -> Self {
        IptablesFirewall {
            v4,
            v6,
            state: Mutex::new(State {
                networks: BTreeMap::new(),
                v6: V6::Unknown,
            }),
        }
    }

    /// The networks whose rules are installed, as this process knows them.
    pub async fn networks(&self) -> Vec<NetworkRules> {
        self.state.lock().await.networks.values().cloned().collect()
    }

    /// Write our chains for `networks` in both families, then remember `networks` as the set.
    async fn apply(
        &self,
        state: &mut State,
        networks: BTreeMap<String, NetworkRules>,
    ) -> Result<(), FirewallError> {
        let list: Vec<NetworkRules> = networks.values().cloned().collect();
        apply_family(&self.v4, Family::V4, &list).await?;
        match state.v6 {
            V6::Disabled => {}
            V6::Usable => apply_family(&self.v6, Family::V6, &list).await?,
            V6::Unknown => match apply_family(&self.v6, Family::V6, &list).await {
                Ok(()) => state.v6 = V6::Usable,
                Err(e) => {
                    tracing::warn!(error = %e, "ip6tables is not usable; managing IPv4 rules only");
                    state.v6 = V6::Disabled;
                }
            },
        }
        state.networks = networks;
        Ok(())
    }
}

impl Firewall for IptablesFirewall {
    async fn add_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        validate_rules(rules)?;
        let mut state = self.state.lock().await;
        let mut next = state.networks.clone();
        next.insert(rules.network_id.clone(), rules.clone());
        // Applied even when nothing changed: a re-sent CreateNetwork then repairs a chain
        // someone flushed.
        self.apply(&mut state, next).await
    }

    async fn del_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        if !state.networks.contains_key(&rules.network_id) {
            // Unknown is success by contract; rules of networks this process never knew are
            // removed by `reconcile`, which sees the whole set.
            return Ok(());
        }
        let mut next = state.networks.clone();
        next.remove(&rules.network_id);
        self.apply(&mut state, next).await
    }

    async fn reconcile(&self, all: &[NetworkRules]) -> Result<(), FirewallError> {
        for rules in all {
            validate_rules(rules)?;
        }
        let next = all
            .iter()
            .map(|r| (r.network_id.clone(), r.clone()))
            .collect();
        let mut state = self.state.lock().await;
        self.apply(&mut state, next).await
    }
}

/// Check for the jumps, then write our chains of both tables (plus the missing jumps) in one
/// restore.
async fn apply_family(
    tools: &IptablesTools,
    family: Family,
    networks: &[NetworkRules],
) -> Result<(), FirewallError> {
    let checks = futures::future::join_all(JUMPS.iter().map(|j| jump_present(tools, j))).await;
    let mut missing = Vec::new();
    for (jump, present) in JUMPS.iter().zip(checks) {
        if !present? {
            missing.push(*jump);
        }
    }
    let script = render_restore(family, networks, &missing);
    let out = run(&tools.restore, &["-w", "--noflush"], Some(&script)).await?;
    if out.status.success() {
        return Ok(());
    }
    Err(FirewallError::Backend {
        tool: tools.restore.clone(),
        reason: format!(
            "{} rejected the update of the cnibridge chains ({}): {}",
            tools.restore,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// `iptables -t <table> -C <from> -j <to>`: exit 0 = present, 1 = no such rule, 2 with "does
/// not exist" = our chain is not there yet (so neither is the jump).
async fn jump_present(tools: &IptablesTools, jump: &Jump) -> Result<bool, FirewallError> {
    let args = ["-w", "-t", jump.table, "-C", jump.from, "-j", jump.to];
    let out = run(&tools.iptables, &args, None).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        Some(2) if stderr.contains("does not exist") => Ok(false),
        _ => Err(FirewallError::Backend {
            tool: tools.iptables.clone(),
            reason: format!(
                "checking the {} jump to {} ({} table) failed ({}): {}",
                jump.from,
                jump.to,
                jump.table,
                out.status,
                stderr.trim()
            ),
        }),
    }
}

/// Run a tool with an optional stdin, bounded by `TOOL_TIMEOUT`. The child inherits the
/// calling thread's network namespace.
async fn run(
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
        .map_err(|e| backend(format!("cannot run {tool}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| backend(format!("cannot write the script to {tool}: {e}")))?;
        // Dropping the pipe sends EOF, which is what makes restore commit.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, bridge: &str) -> NetworkRules {
        NetworkRules::new(id, bridge)
    }

    #[test]
    fn unsafe_names_are_refused_before_any_process() {
        let fw = IptablesFirewall::new(
            IptablesTools {
                iptables: "/nonexistent/iptables".into(),
                restore: "/nonexistent/iptables-restore".into(),
            },
            IptablesTools::ipv6(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (id, br) in [
            ("id", "br+"),
            ("id", "-br"),
            ("id", "br 0"),
            ("", "br0"),
            ("a\"b", "br0"),
            ("id", "bridgenametoolong"),
        ] {
            let err = rt.block_on(fw.add_network(&net(id, br))).unwrap_err();
            assert!(
                matches!(err, FirewallError::Invalid { .. }),
                "{id:?} {br:?}: {err}"
            );
        }
    }

    #[test]
    fn missing_tool_is_a_backend_error_naming_it() {
        let fw = IptablesFirewall::new(
            IptablesTools {
                iptables: "/nonexistent/iptables".into(),
                restore: "/nonexistent/iptables-restore".into(),
            },
            IptablesTools::ipv6(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(fw.add_network(&net("id", "br0"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/iptables failed: cannot run /nonexistent/iptables:"),
            "{err}"
        );
        assert!(rt.block_on(fw.networks()).is_empty());
    }
}
