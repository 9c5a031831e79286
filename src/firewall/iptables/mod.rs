//! iptables implementation of `Firewall`: the apply half.
//!
//! Why it exists: Docker sets the filter `FORWARD` policy to `DROP`, and br_netfilter sends
//! bridged frames through iptables, so even two ports of one bridge cannot talk until a rule
//! accepts it; containers also need isolation, masquerade and published ports as Docker's
//! bridge gives them.
//!
//! How: a network change rewrites the content of all our chains (see `render` for the layout),
//! rendered from the whole set of known networks and published ports, with one
//! `iptables-restore -w --noflush` per family, covering the filter and nat tables in one
//! transaction. Before it, the jumps from the built-in chains are checked (`-C`, concurrently)
//! and the missing ones are added by the same script. Publishing or removing one endpoint's
//! ports is one restore per family that touches only that endpoint's chains and jumps
//! (`render_ports`), with no checks before it. Nothing outside our chains is touched except
//! those jumps.

use tokio::sync::Mutex;

use super::exec::{run_tool as run, set_route_localnet};
use super::intent::{key, EndpointKey, Intent};
use super::{conntrack, EndpointPorts, Firewall, FirewallError, NetworkRules};

pub mod remove;
pub mod render;
pub mod render_ports;

pub use render::{
    jumps, render_restore, rule_comment, Family, Jump, FORWARD_CHAIN, INPUT_CHAIN, ISOLATION_1,
    ISOLATION_2, POSTROUTING_CHAIN,
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

/// Whether IPv6 rules are written; decided by the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V6 {
    Unknown,
    Usable,
    Disabled,
}

struct State {
    /// What our chains hold, as far as this process knows.
    set: Intent,
    v6: V6,
}

/// Which endpoint chains a full rewrite deletes.
enum Stale {
    /// These (chains of endpoints just dropped from the set).
    Known(Vec<String>),
    /// Every endpoint chain the kernel holds that the new set does not claim (reconcile: this
    /// process may not know what an earlier one installed).
    FromKernel,
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

/// Both chain names of an endpoint (whether or not it has rules in either table).
fn chains_of(p: &EndpointPorts) -> [String; 2] {
    [
        dnat_chain(&p.network_id, &p.endpoint_id),
        accept_chain(&p.network_id, &p.endpoint_id),
    ]
}

impl IptablesFirewall {
    /// A firewall using these programs. If the IPv6 ones turn out unusable at the first change
    /// (missing binary, no IPv6 in the kernel), a warning is logged and only IPv4 is managed.
    pub fn new(v4: IptablesTools, v6: IptablesTools) -> Self {
        IptablesFirewall {
            v4,
            v6,
            state: Mutex::new(State {
                set: Intent::default(),
                v6: V6::Unknown,
            }),
        }
    }

    /// The networks whose rules are installed, as this process knows them.
    pub async fn networks(&self) -> Vec<NetworkRules> {
        self.state.lock().await.set.network_list()
    }

    /// The endpoints whose ports are published, as this process knows them.
    pub async fn ports(&self) -> Vec<EndpointPorts> {
        self.state.lock().await.set.port_list()
    }

    /// Rewrite all our chains for `next` in both families, then remember it as the set.
    async fn apply(
        &self,
        state: &mut State,
        next: Intent,
        stale: Stale,
    ) -> Result<(), FirewallError> {
        let nets = next.network_list();
        let eps = next.port_list();
        for p in eps.iter().filter(|p| p.needs_route_localnet()) {
            set_route_localnet(&p.bridge);
        }
        apply_family(&self.v4, Family::V4, &nets, &eps, &stale).await?;
        match state.v6 {
            V6::Disabled => {}
            V6::Usable => apply_family(&self.v6, Family::V6, &nets, &eps, &stale).await?,
            V6::Unknown => match apply_family(&self.v6, Family::V6, &nets, &eps, &stale).await {
                Ok(()) => state.v6 = V6::Usable,
                Err(e) => {
                    tracing::warn!(error = %e, "ip6tables is not usable; managing IPv4 rules only");
                    state.v6 = V6::Disabled;
                }
            },
        }
        state.set = next;
        Ok(())
    }

    /// Replace one endpoint's ports (`None` = remove them): one restore per family touching
    /// only that endpoint's chains and jumps. If that fails (someone removed our jumps, or the
    /// kernel no longer holds what this process installed), everything ours is rewritten
    /// instead, which repairs whatever was changed under us.
    async fn update_ports(
        &self,
        state: &mut State,
        key: EndpointKey,
        new: Option<&EndpointPorts>,
    ) -> Result<(), FirewallError> {
        let old = state.set.ports.get(&key).cloned();
        if let Some(p) = new.filter(|p| p.needs_route_localnet()) {
            set_route_localnet(&p.bridge);
        }
        let mut families = vec![(&self.v4, Family::V4)];
        if state.v6 == V6::Usable {
            families.push((&self.v6, Family::V6));
        }
        let mut outcome = Ok(());
        for (tools, family) in families {
            if let Some(script) = render_port_update(family, old.as_ref(), new) {
                outcome = restore(tools, &script).await;
                if outcome.is_err() {
                    break;
                }
            }
        }
        match outcome {
            Ok(()) => {
                state.set = state.set.with_ports(&key, new);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(endpoint = %key.1, error = %e, "updating the endpoint's chains failed; rewriting all cnibridge chains");
                let next = state.set.with_ports(&key, new);
                let stale = match (new, &old) {
                    (None, Some(p)) => chains_of(p).to_vec(),
                    _ => Vec::new(),
                };
                self.apply(state, next, Stale::Known(stale)).await
            }
        }
    }
}

impl Firewall for IptablesFirewall {
    async fn add_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        let next = state.set.with_network(rules)?;
        // Applied even when nothing changed: a re-sent CreateNetwork then repairs a chain
        // someone flushed.
        self.apply(&mut state, next, Stale::Known(Vec::new())).await
    }

    async fn del_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        // Unknown is success by contract; rules of networks this process never knew are
        // removed by `reconcile`, which sees the whole set. Ports left behind by a lost
        // DeleteEndpoint go with their network.
        let Some((next, gone)) = state.set.without_network(&rules.network_id) else {
            return Ok(());
        };
        let stale = gone.iter().flat_map(chains_of).collect();
        self.apply(&mut state, next, Stale::Known(stale)).await
    }

    async fn add_ports(&self, ports: &EndpointPorts) -> Result<(), FirewallError> {
        {
            let mut state = self.state.lock().await;
            let key = state.set.ports_key(ports)?;
            self.update_ports(&mut state, key, Some(ports)).await?;
        }
        conntrack::after_publish(ports).await;
        Ok(())
    }

    async fn del_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        let key = key(network_id, endpoint_id);
        if !state.set.ports.contains_key(&key) {
            return Ok(());
        }
        self.update_ports(&mut state, key, None).await
    }

    async fn reconcile(
        &self,
        networks: &[NetworkRules],
        ports: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        let next = Intent::from_set(networks, ports)?;
        let mut state = self.state.lock().await;
        self.apply(&mut state, next, Stale::FromKernel).await
    }
}

/// Check for the jumps, then write our chains of both tables (plus the missing jumps) in one
/// restore.
async fn apply_family(
    tools: &IptablesTools,
    family: Family,
    networks: &[NetworkRules],
    ports: &[EndpointPorts],
    stale: &Stale,
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
        Stale::Known(chains) => chains.clone(),
        Stale::FromKernel => endpoint_chains_in_kernel(tools).await?,
    };
    let script = render_restore(family, networks, ports, &missing, &stale);
    restore(tools, &script).await
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
