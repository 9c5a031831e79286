//! iptables backend of the firewall engine: the apply half.
//!
//! Why it exists: Docker sets the filter `FORWARD` policy to `DROP`, and br_netfilter sends
//! bridged frames through iptables, so even two ports of one bridge cannot talk until a rule
//! accepts it; containers also need isolation, masquerade and published ports as Docker's
//! bridge gives them.
//!
//! How (see `render` for the layout): a full rewrite (the shared base, at the first change,
//! after a failure, at reconcile) checks the jumps from the built-in chains (`-C`,
//! concurrently) and rewrites the content of all our chains, rendered from the whole set, with
//! one `iptables-restore -w --noflush` per family covering the filter and nat tables in one
//! transaction. Adding or removing one network is one restore per family that appends (`-A`)
//! or deletes (`-D`) that network's rules in the shared chains, with no check before it;
//! publishing or removing one endpoint's ports is one restore per family that touches only
//! that endpoint's chains and jumps (`render_ports`). Nothing outside our chains is touched
//! except those jumps.

use std::sync::Mutex;

use super::engine::{Backend, Engine, Stale};
use super::exec::run_tool as run;
use super::intent::Intent;
use super::{EndpointPorts, FirewallError, NetworkRules};

pub mod remove;
pub mod render;
pub mod render_ports;

pub use render::{
    jumps, render_network_update, render_restore, rule_comment, Family, Jump, FORWARD_CHAIN,
    INPUT_CHAIN, ISOLATION_1, ISOLATION_2, POSTROUTING_CHAIN,
};
pub use render_ports::{
    accept_chain, dnat_chain, endpoint_comment, endpoint_rules, render_port_update,
    HOSTPORTS_CHAIN, MASQ_CHAIN, PUBLISHED_CHAIN, SETMARK_CHAIN,
};

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

/// Whether IPv6 rules are written; decided by the first full rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V6 {
    Unknown,
    Usable,
    Disabled,
}

/// The iptables/ip6tables backend (either the nft or the legacy variant).
pub struct IptablesBackend {
    v4: IptablesTools,
    v6: IptablesTools,
    v6_state: Mutex<V6>,
}

/// `Firewall` over iptables/ip6tables.
pub type IptablesFirewall = Engine<IptablesBackend>;

impl Default for IptablesBackend {
    fn default() -> Self {
        Self::new(IptablesTools::ipv4(), IptablesTools::ipv6())
    }
}

impl IptablesBackend {
    /// A backend using these programs. If the IPv6 ones turn out unusable at the first change
    /// (missing binary, no IPv6 in the kernel), a warning is logged and only IPv4 is managed.
    pub fn new(v4: IptablesTools, v6: IptablesTools) -> Self {
        IptablesBackend {
            v4,
            v6,
            v6_state: Mutex::new(V6::Unknown),
        }
    }

    fn v6_state(&self) -> V6 {
        *self.v6_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_v6(&self, v6: V6) {
        *self.v6_state.lock().unwrap_or_else(|p| p.into_inner()) = v6;
    }

    /// The families written by an incremental change: IPv6 only once known usable.
    fn families(&self) -> Vec<(&IptablesTools, Family)> {
        let mut out = vec![(&self.v4, Family::V4)];
        if self.v6_state() == V6::Usable {
            out.push((&self.v6, Family::V6));
        }
        out
    }

    /// One restore per family of what `render` gives for it (nothing where it gives none).
    /// The families are separate tables, so their restores run at once: a change costs one
    /// tool run, not two in a row.
    async fn each_family(
        &self,
        render: impl Fn(Family) -> Option<String>,
    ) -> Result<(), FirewallError> {
        let runs = self
            .families()
            .into_iter()
            .filter_map(|(tools, family)| render(family).map(|script| (tools, script)))
            .map(|(tools, script)| async move { restore(tools, &script).await });
        futures::future::join_all(runs).await.into_iter().collect()
    }
}

impl IptablesFirewall {
    /// A firewall using these programs (see `IptablesBackend::new`).
    pub fn new(v4: IptablesTools, v6: IptablesTools) -> Self {
        Engine::with_backend(IptablesBackend::new(v4, v6))
    }
}

/// Both chain names of an endpoint (whether or not it has rules in either table).
fn chains_of(p: &EndpointPorts) -> [String; 2] {
    [
        dnat_chain(&p.network_id, &p.endpoint_id),
        accept_chain(&p.network_id, &p.endpoint_id),
    ]
}

/// Which endpoint chains a full rewrite deletes.
enum StaleChains {
    Known(Vec<String>),
    FromKernel,
}

impl Backend for IptablesBackend {
    const SHARED_PORT_CHAINS: bool = false;

    async fn write_all(&self, set: &Intent, stale: &Stale) -> Result<(), FirewallError> {
        let nets = set.network_list();
        let eps = set.port_list();
        let stale = match stale {
            Stale::Known(gone) => StaleChains::Known(gone.iter().flat_map(chains_of).collect()),
            Stale::FromKernel => StaleChains::FromKernel,
        };
        apply_family(&self.v4, Family::V4, &nets, &eps, &stale).await?;
        match self.v6_state() {
            V6::Disabled => {}
            V6::Usable => apply_family(&self.v6, Family::V6, &nets, &eps, &stale).await?,
            V6::Unknown => match apply_family(&self.v6, Family::V6, &nets, &eps, &stale).await {
                Ok(()) => self.set_v6(V6::Usable),
                Err(e) => {
                    tracing::warn!(error = %e, "ip6tables is not usable; managing IPv4 rules only");
                    self.set_v6(V6::Disabled);
                }
            },
        }
        Ok(())
    }

    async fn add_network(
        &self,
        old: Option<&NetworkRules>,
        new: &NetworkRules,
    ) -> Result<(), FirewallError> {
        for (tools, _) in self.families() {
            ensure_admin_chains(tools, std::slice::from_ref(new)).await?;
        }
        self.each_family(|family| render_network_update(family, old, Some(new)))
            .await
    }

    async fn del_network(
        &self,
        rules: &NetworkRules,
        ports: &[EndpointPorts],
        _remaining: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        self.each_family(|family| {
            let mut script: String = ports
                .iter()
                .filter_map(|p| render_port_update(family, Some(p), None))
                .collect();
            script.push_str(&render_network_update(family, Some(rules), None).unwrap_or_default());
            (!script.is_empty()).then_some(script)
        })
        .await
    }

    async fn update_ports(
        &self,
        _all: &[EndpointPorts],
        old: Option<&EndpointPorts>,
        new: Option<&EndpointPorts>,
    ) -> Result<(), FirewallError> {
        self.each_family(|family| render_port_update(family, old, new))
            .await
    }
}

/// Check for the jumps, then write our chains of both tables (plus the missing jumps) in one
/// restore.
async fn apply_family(
    tools: &IptablesTools,
    family: Family,
    networks: &[NetworkRules],
    ports: &[EndpointPorts],
    stale: &StaleChains,
) -> Result<(), FirewallError> {
    let all = jumps(family);
    let checks = futures::future::join_all(all.iter().map(|j| jump_present(tools, j))).await;
    let mut missing = Vec::new();
    for (jump, present) in all.iter().zip(checks) {
        if !present? {
            missing.push(*jump);
        }
    }
    let stale = match stale {
        StaleChains::Known(chains) => chains.clone(),
        StaleChains::FromKernel => endpoint_chains_in_kernel(tools).await?,
    };
    ensure_admin_chains(tools, networks).await?;
    let script = render_restore(family, networks, ports, &missing, &stale);
    restore(tools, &script).await
}

/// Create the networks' `iptablesAdminChainName` chains that do not exist yet. Outside the
/// restore, because declaring a chain there flushes it (iptables-nft 1.8.9 with --noflush), and
/// the admin chain is the operator's: cnibridge never flushes or deletes it.
async fn ensure_admin_chains(
    tools: &IptablesTools,
    networks: &[NetworkRules],
) -> Result<(), FirewallError> {
    let mut done: Vec<&str> = Vec::new();
    for chain in networks.iter().filter_map(|n| n.admin_chain.as_deref()) {
        if done.contains(&chain) {
            continue;
        }
        done.push(chain);
        let out = run(&tools.iptables, &["-w", "-t", "filter", "-N", chain], None).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("exists") {
            return Err(FirewallError::Backend {
                tool: tools.iptables.clone(),
                reason: format!(
                    "creating the admin chain {chain} failed ({}): {}",
                    out.status,
                    stderr.trim()
                ),
            });
        }
    }
    Ok(())
}

/// Run one `iptables-restore -w --noflush` with `script`.
async fn restore(tools: &IptablesTools, script: &str) -> Result<(), FirewallError> {
    let out = run(&tools.restore, &["-w", "--noflush"], Some(script)).await?;
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

/// `iptables -S` of one table.
async fn list_table(tools: &IptablesTools, table: &str) -> Result<String, FirewallError> {
    let out = run(&tools.iptables, &["-w", "-t", table, "-S"], None).await?;
    if !out.status.success() {
        return Err(FirewallError::Backend {
            tool: tools.iptables.clone(),
            reason: format!(
                "listing the {table} table failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The per-endpoint chains of ours (`CNIB-DN-…` in nat, `CNIB-FW-…` in filter) the kernel
/// holds, read with `iptables -S` per table.
async fn endpoint_chains_in_kernel(tools: &IptablesTools) -> Result<Vec<String>, FirewallError> {
    let mut chains = Vec::new();
    for (table, prefix) in [
        ("nat", render_ports::DNAT_PREFIX),
        ("filter", render_ports::ACCEPT_PREFIX),
    ] {
        chains.extend(
            list_table(tools, table)
                .await?
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|c| c.starts_with(prefix))
                .map(str::to_string),
        );
    }
    Ok(chains)
}

/// `iptables -t <table> -C <from> <matches> -j <to>`: exit 0 = present, 1 = no such rule, 2 saying our
/// chain is missing = not there yet (so neither is the jump): the nft-based tools say "does not
/// exist", the legacy ones "Couldn't load target `<chain>'".
async fn jump_present(tools: &IptablesTools, jump: &Jump) -> Result<bool, FirewallError> {
    let mut args = vec!["-w", "-t", jump.table, "-C", jump.from];
    args.extend(jump.matches.split_whitespace());
    args.extend(["-j", jump.to]);
    let out = run(&tools.iptables, &args, None).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        Some(2) if chain_missing(&stderr, jump.to) => Ok(false),
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

/// Whether `iptables -C` failed because the target chain `chain` does not exist.
fn chain_missing(stderr: &str, chain: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains(&format!("Couldn't load target `{chain}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::Firewall;

    fn net(id: &str, bridge: &str) -> NetworkRules {
        NetworkRules::new(id, bridge)
    }

    #[test]
    fn a_missing_chain_reads_as_a_missing_jump_with_either_variant() {
        let nft = "iptables v1.8.9 (nf_tables): Chain 'CNIBRIDGE-FORWARD' does not exist";
        let legacy = "iptables v1.8.9 (legacy): Couldn't load target `CNIBRIDGE-FORWARD':No such file or directory";
        assert!(chain_missing(nft, "CNIBRIDGE-FORWARD"));
        assert!(chain_missing(legacy, "CNIBRIDGE-FORWARD"));
        assert!(!chain_missing(
            "iptables v1.8.9 (legacy): Couldn't load target `DOCKER':No such file",
            "CNIBRIDGE-FORWARD"
        ));
        assert!(!chain_missing(
            "Permission denied (you must be root)",
            "CNIBRIDGE-FORWARD"
        ));
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
