//! nftables backend of the firewall engine (`--firewall nftables`): the apply half.
//!
//! Everything lives in one table of ours, `inet cnibridge` (see `render` for its layout and for
//! why each hook and priority was chosen); nothing else on the host is touched. It is meant for
//! hosts where dockerd runs with `--iptables=false`: a `drop` in any base chain is final in
//! nftables, so where Docker's iptables `FORWARD DROP` is active this table cannot let our
//! containers' traffic through, and without it the table itself keeps the outside out.
//!
//! How: every change is one `nft -f -` process, i.e. one atomic transaction. A full rewrite
//! (first change, reconcile, fallback, last network gone) replaces the whole table
//! (`render_table`); adding or removing one network touches only its own chains and its
//! elements of the shared sets and maps (`render_network_update`); publishing or removing one
//! endpoint's ports touches only its chain and the two dispatch chains (`render_port_update`).
//! A failed incremental change falls back to the whole rewrite (someone deleted our table or a
//! chain of it).

use super::engine::{Backend, Engine, Stale};
use super::exec::run_tool;
use super::intent::Intent;
use super::ports::DEFAULT_MASQ_BIT;
use super::{EndpointPorts, FirewallError, NetworkRules};

pub mod render;
pub mod render_ports;

pub use render::{render_network_update, render_table, table_chains, Family, Rule, TABLE};
pub use render_ports::{dnat_chain, endpoint_rules, render_port_update, EndpointRules};

/// The `nft` backend.
pub struct NftablesBackend {
    nft: String,
}

/// `Firewall` over `nft`.
pub type NftablesFirewall = Engine<NftablesBackend>;

impl Default for NftablesBackend {
    fn default() -> Self {
        NftablesBackend { nft: "nft".into() }
    }
}

impl NftablesFirewall {
    /// A firewall running this `nft` program.
    pub fn new(nft: impl Into<String>) -> Self {
        Engine::with_backend(NftablesBackend { nft: nft.into() })
    }
}

impl NftablesBackend {
    /// Run one `nft -f -` with `script`: one transaction, all or nothing.
    async fn nft(&self, script: &str) -> Result<(), FirewallError> {
        let out = run_tool(&self.nft, &["-f", "-"], Some(script)).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(FirewallError::Backend {
            tool: self.nft.clone(),
            reason: format!(
                "{} rejected the update of table {TABLE} ({}): {}",
                self.nft,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

impl Backend for NftablesBackend {
    fn check_network(&self, rules: &NetworkRules) -> Result<(), FirewallError> {
        let o = &rules.port_options;
        let refused = if !o.conditions_v4.is_empty() {
            Some(("conditionsV4", "is an iptables match"))
        } else if !o.conditions_v6.is_empty() {
            Some(("conditionsV6", "is an ip6tables match"))
        } else if o.external_set_mark_chain.is_some() {
            Some(("externalSetMarkChain", "names an iptables chain"))
        } else if o.mark_masq_bit != DEFAULT_MASQ_BIT {
            Some(("markMasqBit", "marks for iptables' masquerade"))
        } else {
            None
        };
        match refused {
            Some((key, what)) => Err(FirewallError::Unsupported(format!(
                "{key} {what} and cnibridge runs the nftables backend: remove {key} from the portmap plugin or run cnibridge with --firewall iptables"
            ))),
            None => Ok(()),
        }
    }

    // `hostports` and `published` hold every endpoint's dispatch rules.
    const SHARED_PORT_CHAINS: bool = true;

    async fn write_all(&self, set: &Intent, _stale: &Stale) -> Result<(), FirewallError> {
        // The table is deleted and written anew, so whatever an earlier process left goes.
        self.nft(&render_table(&set.network_list(), &set.port_list()))
            .await
    }

    async fn add_network(
        &self,
        old: Option<&NetworkRules>,
        new: &NetworkRules,
    ) -> Result<(), FirewallError> {
        self.nft(&render_network_update(old, Some(new))).await
    }

    async fn del_network(
        &self,
        rules: &NetworkRules,
        ports: &[EndpointPorts],
        remaining: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        let mut script = String::new();
        if !ports.is_empty() {
            script.push_str(&render_ports::render_dispatch(remaining));
            for p in ports.iter().map(endpoint_rules) {
                if !p.dnat_rules.is_empty() {
                    script.push_str(&render_ports::render_chain_removal(&p.dnat_chain));
                }
            }
        }
        script.push_str(&render_network_update(Some(rules), None));
        self.nft(&script).await
    }

    async fn update_ports(
        &self,
        all: &[EndpointPorts],
        old: Option<&EndpointPorts>,
        new: Option<&EndpointPorts>,
    ) -> Result<(), FirewallError> {
        self.nft(&render_port_update(all, old, new)).await
    }
}

/// Delete our table, for a host that switched to `--firewall iptables` (an earlier cnibridge
/// ran with nftables). `Ok(false)`: there was none.
pub async fn remove_table(nft: &str) -> Result<bool, FirewallError> {
    let failed = |what: &str, out: &std::process::Output| FirewallError::Backend {
        tool: nft.to_string(),
        reason: format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    };
    let out = run_tool(nft, &["list", "tables"], None).await?;
    if !out.status.success() {
        return Err(failed("listing the tables", &out));
    }
    let ours = format!("table {TABLE}");
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == ours)
    {
        return Ok(false);
    }
    let mut delete = vec!["delete", "table"];
    delete.extend(TABLE.split_whitespace());
    let out = run_tool(nft, &delete, None).await?;
    if !out.status.success() {
        return Err(failed(&format!("deleting table {TABLE}"), &out));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::Firewall;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn unsafe_names_are_refused_before_any_process() {
        let fw = NftablesFirewall::new("/nonexistent/nft");
        let rt = rt();
        for (id, br) in [
            ("id", "br+"),
            ("id", "-br"),
            ("id", "br 0"),
            ("", "br0"),
            ("a\"b", "br0"),
            ("id", "bridgenametoolong"),
            ("id", "br\"}"),
        ] {
            let rules = NetworkRules::new(id, br);
            let err = rt.block_on(fw.add_network(&rules)).unwrap_err();
            assert!(
                matches!(err, FirewallError::Invalid { .. }),
                "{id:?} {br:?}: {err}"
            );
            let err = rt.block_on(fw.reconcile(&[rules], &[])).unwrap_err();
            assert!(matches!(err, FirewallError::Invalid { .. }), "{err}");
        }
    }

    #[test]
    fn iptables_only_portmap_keys_are_refused_with_what_to_do_before_any_process() {
        use crate::firewall::PortOptions;
        let fw = NftablesFirewall::new("/nonexistent/nft");
        let rt = rt();
        let with = |port_options| NetworkRules {
            port_options,
            ..NetworkRules::new("net1", "br0")
        };
        let d = PortOptions::default;
        for (key, o) in [
            (
                "conditionsV4",
                PortOptions {
                    conditions_v4: vec!["-s 10.0.0.0/8".into()],
                    ..d()
                },
            ),
            (
                "conditionsV6",
                PortOptions {
                    conditions_v6: vec!["-s fd00::/8".into()],
                    ..d()
                },
            ),
            (
                "externalSetMarkChain",
                PortOptions {
                    external_set_mark_chain: Some("KUBE-MARK-MASQ".into()),
                    ..d()
                },
            ),
            (
                "markMasqBit",
                PortOptions {
                    mark_masq_bit: 14,
                    ..d()
                },
            ),
        ] {
            let err = rt
                .block_on(fw.add_network(&with(o)))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("{key} {} and cnibridge runs the nftables backend: remove {key} from the portmap plugin or run cnibridge with --firewall iptables",
                    match key {
                        "conditionsV4" => "is an iptables match",
                        "conditionsV6" => "is an ip6tables match",
                        "externalSetMarkChain" => "names an iptables chain",
                        _ => "marks for iptables' masquerade",
                    })
            );
        }
    }

    #[test]
    fn missing_tool_is_a_backend_error_naming_it() {
        let fw = NftablesFirewall::new("/nonexistent/nft");
        let rt = rt();
        let err = rt
            .block_on(fw.add_network(&NetworkRules::new("id", "br0")))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/nft failed: cannot run /nonexistent/nft:"),
            "{err}"
        );
        assert!(rt.block_on(fw.networks()).is_empty());
    }

    /// An `nft` that records each call (its arguments, then its stdin) as `call-<n>` in `dir`,
    /// and fails once, with an nft-like message, whenever `dir/fail` exists (twice if it holds
    /// `2`).
    fn fake_nft(dir: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("nft");
        let d = dir.display();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nn=$(ls {d} | grep -c call-)\n\
                 {{ echo \"$*\"; cat; }} > {d}/call-$n\n\
                 if [ -e {d}/fail ]; then \
                 if [ \"$(cat {d}/fail)\" = 2 ]; then echo 1 > {d}/fail; else rm {d}/fail; fi; \
                 echo 'Error: No such file or directory; did you mean table inet cnibridge?' >&2; exit 1; fi\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    fn calls(dir: &std::path::Path) -> Vec<String> {
        (0..)
            .map(|n| dir.join(format!("call-{n}")))
            .take_while(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    fn ports(endpoint: &str, port: u16) -> EndpointPorts {
        EndpointPorts {
            network_id: "n1".into(),
            endpoint_id: endpoint.into(),
            bridge: "br0".into(),
            container_ipv4: Some("10.1.0.2/24".parse().unwrap()),
            container_ipv6: None,
            mappings: vec![crate::firewall::PortMapping::single(
                crate::firewall::Proto::Tcp,
                None,
                port,
                80,
            )],
            options: Default::default(),
        }
    }

    #[test]
    fn each_change_is_one_nft_transaction_and_a_failed_port_update_rewrites_the_table() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let fw = NftablesFirewall::new(fake_nft(dir));
        let rt = rt();
        let net = NetworkRules {
            subnets: vec!["10.1.0.0/24".parse().unwrap()],
            ..NetworkRules::new("n1", "br0")
        };
        rt.block_on(fw.add_network(&net)).unwrap();
        rt.block_on(fw.add_ports(&ports("e1", 8080))).unwrap();
        let c = calls(dir);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].starts_with(
            "-f -\nadd table inet cnibridge\ndelete table inet cnibridge\ntable inet cnibridge {\n"
        ));
        assert!(
            c[1].starts_with("-f -\nadd chain inet cnibridge dnat-"),
            "{}",
            c[1]
        );
        assert!(!c[1].contains("table inet cnibridge"), "{}", c[1]);

        // The endpoint's transaction fails (say our table was deleted): one full rewrite
        // follows, with both endpoints.
        std::fs::write(dir.join("fail"), "").unwrap();
        rt.block_on(fw.add_ports(&ports("e2", 8090))).unwrap();
        let c = calls(dir);
        assert_eq!(c.len(), 4, "{c:?}");
        assert!(c[3].contains("delete table inet cnibridge\ntable inet cnibridge {"));
        assert!(c[3].contains("tcp dport 8080 ") && c[3].contains("tcp dport 8090 "));
        assert_eq!(rt.block_on(fw.ports()).len(), 2);

        // A refused network change (its own transaction, then the full rewrite it falls back
        // to) names nft and its message, and changes nothing known.
        std::fs::write(dir.join("fail"), "2").unwrap();
        let other = NetworkRules::new("n2", "br1");
        let err = rt.block_on(fw.add_network(&other)).unwrap_err();
        let FirewallError::Backend { tool, reason } = &err else {
            panic!("{err}");
        };
        assert!(tool.ends_with("/nft"), "{tool}");
        assert!(
            reason.contains("rejected the update of table inet cnibridge"),
            "{reason}"
        );
        assert!(
            reason.contains("did you mean table inet cnibridge?"),
            "{reason}"
        );
        assert_eq!(rt.block_on(fw.networks()), vec![net.clone()]);
        let c = calls(dir);
        assert_eq!(c.len(), 6, "{c:?}");
        assert!(
            c[4].starts_with("-f -\nadd chain inet cnibridge fwd-"),
            "{}",
            c[4]
        );
        assert!(c[5].contains("delete table inet cnibridge\ntable inet cnibridge {"));

        // Removing the last network is one transaction that takes its ports too.
        rt.block_on(fw.del_network(&net)).unwrap();
        let c = calls(dir);
        assert_eq!(c.len(), 7);
        assert_eq!(
            c[6],
            "-f -\nadd table inet cnibridge\ndelete table inet cnibridge\n"
        );
        assert!(rt.block_on(fw.ports()).is_empty());
    }

    #[test]
    fn ports_need_their_network_and_valid_input() {
        let fw = NftablesFirewall::new("/nonexistent/nft");
        let rt = rt();
        let p = EndpointPorts {
            network_id: "n1".into(),
            endpoint_id: "e1".into(),
            bridge: "br0".into(),
            container_ipv4: Some("10.1.0.2/24".parse().unwrap()),
            container_ipv6: None,
            mappings: vec![],
            options: Default::default(),
        };
        let err = rt.block_on(fw.add_ports(&p)).unwrap_err();
        assert!(matches!(err, FirewallError::UnknownNetwork(_)), "{err}");
        let bad = EndpointPorts {
            endpoint_id: "e;1".into(),
            ..p.clone()
        };
        let err = rt.block_on(fw.add_ports(&bad)).unwrap_err();
        assert!(matches!(err, FirewallError::Invalid { .. }), "{err}");
        let err = rt
            .block_on(fw.reconcile(&[], std::slice::from_ref(&p)))
            .unwrap_err();
        assert!(matches!(err, FirewallError::UnknownNetwork(_)), "{err}");
        // Unknown endpoints and networks are fine to remove, without running anything.
        rt.block_on(fw.del_ports("n1", "e1")).unwrap();
        rt.block_on(fw.del_network(&NetworkRules::new("n1", "br0")))
            .unwrap();
    }
}
