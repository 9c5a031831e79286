//! iptables implementation of `Firewall`.
//!
//! Why it exists: Docker sets the filter `FORWARD` policy to `DROP`, and br_netfilter sends
//! bridged frames through iptables, so even two ports of one bridge cannot talk until a rule
//! accepts it.
//!
//! Layout: one chain of our own, `CNIBRIDGE-FORWARD`, in the filter table of iptables and
//! ip6tables, reached by one jump appended to `FORWARD` (appended, so Docker's `DOCKER-USER`
//! jump stays first). The chain's whole content is rendered from the set of known networks by
//! `render_restore` and applied with one `iptables-restore --noflush` per family per change;
//! nothing outside the chain is touched except that jump.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;

use super::{validate_rules, Firewall, FirewallError, NetworkRules};

/// Our chain in the filter table of both families.
pub const CHAIN: &str = "CNIBRIDGE-FORWARD";

/// The rule comment carries this prefix and the first 12 characters of the network id, so an
/// operator (or a later GC) can tell which network a rule belongs to.
const COMMENT_PREFIX: &str = "cnibridge net";

/// `-w` makes legacy iptables wait for the xtables lock without bound; this bounds the whole
/// process instead, so a wedged tool cannot hang a Docker request forever.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The two programs used for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTools {
    /// Checks for the `FORWARD` jump (`iptables` / `ip6tables`).
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

    /// Write the chain for `networks` in both families, then remember `networks` as the set.
    async fn apply(
        &self,
        state: &mut State,
        networks: BTreeMap<String, NetworkRules>,
    ) -> Result<(), FirewallError> {
        let list: Vec<NetworkRules> = networks.values().cloned().collect();
        apply_family(&self.v4, &list).await?;
        match state.v6 {
            V6::Disabled => {}
            V6::Usable => apply_family(&self.v6, &list).await?,
            V6::Unknown => match apply_family(&self.v6, &list).await {
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

/// The `iptables-restore --noflush` script that makes `CNIBRIDGE-FORWARD` hold exactly one
/// ACCEPT rule per network (in the given order), and appends the `FORWARD` jump when
/// `add_jump` is set. Pure, so it is tested as text without root.
pub fn render_restore(networks: &[NetworkRules], add_jump: bool) -> String {
    let mut out = String::from("*filter\n");
    // Declaring the chain creates it if missing. With --noflush, iptables-nft 1.8.9 also
    // flushes an existing declared chain (verified); the explicit -F does not depend on that.
    out.push_str(&format!(":{CHAIN} - [0:0]\n-F {CHAIN}\n"));
    for net in networks {
        out.push_str(&format!(
            "-A {CHAIN} -i {br} -o {br} -m comment --comment \"{}\" -j ACCEPT\n",
            rule_comment(&net.network_id),
            br = net.bridge,
        ));
    }
    if add_jump {
        out.push_str(&format!("-A FORWARD -j {CHAIN}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The comment on a network's rule: `cnibridge net <first 12 characters of the id>`.
pub fn rule_comment(network_id: &str) -> String {
    let short: String = network_id.chars().take(12).collect();
    format!("{COMMENT_PREFIX} {short}")
}

/// Check for the jump, then write the chain (plus the jump if it was missing) in one restore.
async fn apply_family(
    tools: &IptablesTools,
    networks: &[NetworkRules],
) -> Result<(), FirewallError> {
    let has_jump = jump_present(tools).await?;
    let script = render_restore(networks, !has_jump);
    let out = run(&tools.restore, &["-w", "--noflush"], Some(&script)).await?;
    if out.status.success() {
        return Ok(());
    }
    Err(FirewallError::Backend {
        tool: tools.restore.clone(),
        reason: format!(
            "{} rejected the {CHAIN} update ({}): {}",
            tools.restore,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// `iptables -C FORWARD -j CNIBRIDGE-FORWARD`: exit 0 = present, 1 = no such rule,
/// 2 with "does not exist" = our chain is not there yet (so neither is the jump).
async fn jump_present(tools: &IptablesTools) -> Result<bool, FirewallError> {
    let out = run(&tools.iptables, &["-w", "-C", "FORWARD", "-j", CHAIN], None).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        Some(2) if stderr.contains("does not exist") => Ok(false),
        _ => Err(FirewallError::Backend {
            tool: tools.iptables.clone(),
            reason: format!(
                "checking the FORWARD jump to {CHAIN} failed ({}): {}",
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
        NetworkRules {
            network_id: id.into(),
            bridge: bridge.into(),
            subnets: vec![],
            internal: false,
        }
    }

    #[test]
    fn render_no_networks() {
        assert_eq!(
            render_restore(&[], false),
            "*filter\n\
             :CNIBRIDGE-FORWARD - [0:0]\n\
             -F CNIBRIDGE-FORWARD\n\
             COMMIT\n"
        );
    }

    #[test]
    fn render_no_networks_with_jump() {
        assert_eq!(
            render_restore(&[], true),
            "*filter\n\
             :CNIBRIDGE-FORWARD - [0:0]\n\
             -F CNIBRIDGE-FORWARD\n\
             -A FORWARD -j CNIBRIDGE-FORWARD\n\
             COMMIT\n"
        );
    }

    #[test]
    fn render_one_network() {
        let id = "4f1d9b2c7a3e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";
        assert_eq!(
            render_restore(&[net(id, "cni0")], false),
            "*filter\n\
             :CNIBRIDGE-FORWARD - [0:0]\n\
             -F CNIBRIDGE-FORWARD\n\
             -A CNIBRIDGE-FORWARD -i cni0 -o cni0 -m comment --comment \"cnibridge net 4f1d9b2c7a3e\" -j ACCEPT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn render_two_networks_with_jump() {
        let nets = [net("aaaaaaaaaaaaaaaa", "br-a"), net("bbbb", "br-b")];
        assert_eq!(
            render_restore(&nets, true),
            "*filter\n\
             :CNIBRIDGE-FORWARD - [0:0]\n\
             -F CNIBRIDGE-FORWARD\n\
             -A CNIBRIDGE-FORWARD -i br-a -o br-a -m comment --comment \"cnibridge net aaaaaaaaaaaa\" -j ACCEPT\n\
             -A CNIBRIDGE-FORWARD -i br-b -o br-b -m comment --comment \"cnibridge net bbbb\" -j ACCEPT\n\
             -A FORWARD -j CNIBRIDGE-FORWARD\n\
             COMMIT\n"
        );
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
