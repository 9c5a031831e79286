//! Netns tier for the iptables rules of published ports: goldens of the scripts `add_ports` and
//! `del_ports` write and of what the kernel holds, removal exactness, repair, and the host port
//! probe. Traffic is `netns_ports`; nftables' goldens are `netns_nftables`. Root required.
//!
//! Goldens (`tests/golden/iptables/ports_*`): `<case>.restore.golden` pins the add and remove
//! scripts of one endpoint (no root needed); `<case>.golden` what the kernel holds after
//! `add_network` + `add_ports`. A full rewrite (`reconcile` by a fresh process) must give the
//! same dump, `del_ports` must bring back exactly the network's golden (`masq_on`), and
//! `del_network` then `cleaned`. `UPDATE_GOLDEN=1` regenerates them.

mod support;
use support::netns;

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use cnibridge::driver::ports::{HostPorts, SystemHostPorts};
use cnibridge::firewall::iptables::{render_port_update, Family, IptablesFirewall};
use cnibridge::firewall::{EndpointPorts, Firewall, Proto};
use netns::cases::{endpoint, ip, net_a, port_cases, tcp, EP_1, EP_2, NET_A};
use netns::{assert_golden, in_netns, our_rules, run};

fn cases() -> Vec<(&'static str, EndpointPorts)> {
    port_cases()
}

fn kernel_rules() -> String {
    format!(
        "# iptables-save\n{}# ip6tables-save\n{}",
        our_rules("iptables-save"),
        our_rules("ip6tables-save")
    )
}

#[test]
fn rendered_port_scripts_match_the_goldens() {
    for (name, p) in cases() {
        let script = |family, old: Option<&EndpointPorts>, new: Option<&EndpointPorts>| {
            render_port_update(family, old, new).unwrap_or_else(|| "(nothing)\n".into())
        };
        let text = format!(
            "# add_ports: iptables-restore -w --noflush\n{}\
             # add_ports: ip6tables-restore -w --noflush\n{}\
             # del_ports: iptables-restore -w --noflush\n{}\
             # del_ports: ip6tables-restore -w --noflush\n{}",
            script(Family::V4, None, Some(&p)),
            script(Family::V6, None, Some(&p)),
            script(Family::V4, Some(&p), None),
            script(Family::V6, Some(&p), None),
        );
        assert_golden(&format!("iptables/{name}.restore"), &text);
    }
}

#[test]
fn kernel_port_rules_match_the_goldens_and_removal_is_exact() {
    for (name, p) in cases() {
        in_netns(&format!("kernel golden {name}"), move || async move {
            let fw = IptablesFirewall::default();
            fw.add_network(&net_a()).await.unwrap();
            fw.add_ports(&p).await.unwrap();
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            // Idempotent.
            fw.add_ports(&p).await.unwrap();
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            // A restarted process rewriting everything writes the same rules.
            let restarted = IptablesFirewall::default();
            restarted
                .reconcile(&[net_a()], std::slice::from_ref(&p))
                .await
                .unwrap();
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            fw.del_ports(NET_A, EP_1).await.unwrap();
            assert_golden("iptables/masq_on", &kernel_rules());
            fw.del_ports(NET_A, EP_1).await.unwrap();
            fw.del_network(&net_a()).await.unwrap();
            assert_golden("iptables/cleaned", &kernel_rules());
        });
    }
}

#[test]
fn reconcile_removes_ports_nobody_claims_and_one_endpoint_goes_alone() {
    in_netns("reconcile_removes_ports_nobody_claims", || async {
        let (_, one) = cases().remove(0);
        let two = endpoint(EP_2, "10.77.0.3/24", None, vec![tcp(None, 8090, 80)]);
        let fw = IptablesFirewall::default();
        fw.add_network(&net_a()).await.unwrap();
        fw.add_ports(&one).await.unwrap();
        let only_one = kernel_rules();
        fw.add_ports(&two).await.unwrap();
        assert!(kernel_rules().contains("cnibridge ep eeeeeeeeeeee"));
        // Removing the second touches nothing of the first.
        fw.del_ports(NET_A, EP_2).await.unwrap();
        assert_eq!(kernel_rules(), only_one);
        fw.add_ports(&two).await.unwrap();
        // A new process that only knows the first: the second's chains go.
        let restarted = IptablesFirewall::default();
        restarted
            .reconcile(&[net_a()], std::slice::from_ref(&one))
            .await
            .unwrap();
        assert_golden("iptables/ports_tcp", &kernel_rules());
        // A network change keeps the ports.
        restarted.add_network(&net_a()).await.unwrap();
        assert_golden("iptables/ports_tcp", &kernel_rules());
        // Deleting the network takes its leftover ports with it.
        restarted.del_network(&net_a()).await.unwrap();
        assert_golden("iptables/cleaned", &kernel_rules());
    });
}

#[test]
fn a_port_update_repairs_chains_changed_under_it() {
    in_netns("a_port_update_repairs_chains_changed_under_it", || async {
        let (_, p) = cases().remove(0);
        let fw = IptablesFirewall::default();
        fw.add_network(&net_a()).await.unwrap();
        fw.add_ports(&p).await.unwrap();
        // Someone flushed the chain holding our jumps: the incremental -D fails, the whole
        // set is rewritten instead.
        for tool in ["iptables", "ip6tables"] {
            run(&[tool, "-t", "nat", "-F", "CNIBRIDGE-HOSTPORTS"]);
        }
        fw.add_ports(&p).await.unwrap();
        assert_golden("iptables/ports_tcp", &kernel_rules());
        run(&["iptables", "-t", "nat", "-F", "CNIBRIDGE-HOSTPORTS"]);
        fw.del_ports(NET_A, EP_1).await.unwrap();
        assert_golden("iptables/masq_on", &kernel_rules());
    });
}

#[test]
fn the_host_port_probe_sees_bound_ports() {
    in_netns("the_host_port_probe_sees_bound_ports", || async {
        let host = SystemHostPorts;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!host.is_free(Proto::Tcp, ip("127.0.0.1"), port));
        assert!(
            !host.is_free(Proto::Tcp, None, port),
            "any address includes 127.0.0.1"
        );
        assert!(host.is_free(Proto::Udp, None, port));
        drop(listener);
        // A child another test forks at this moment holds a copy of the listener until it
        // execs (CLOEXEC acts only then), so the port can stay busy a little after the drop.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !host.is_free(Proto::Tcp, None, port) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(host.is_free(Proto::Tcp, None, port));
        let udp = UdpSocket::bind("[::]:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(!host.is_free(Proto::Udp, None, uport));
        // An address the host does not have cannot be held by anyone.
        assert!(host.is_free(Proto::Tcp, ip("192.0.2.1"), port));
        let (a, b) = host.ephemeral_range();
        assert!(0 < a && a <= b);
    });
}

#[test]
fn a_stopped_service_leaves_its_port_free_despite_time_wait() {
    in_netns(
        "a_stopped_service_leaves_its_port_free_despite_time_wait",
        || async {
            let host = SystemHostPorts;
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (served, _) = listener.accept().unwrap();
            // The service closes first: its side of the connection lingers in TIME_WAIT on `port`.
            drop(served);
            drop(listener);
            drop(client);
            let out = run(&["ss", "-Htan", "state", "time-wait"]);
            assert!(
                out.contains(&format!("127.0.0.1:{port}")),
                "no TIME_WAIT: {out}"
            );
            // docker-proxy could bind it (SO_REUSEADDR), so the probe agrees.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !host.is_free(Proto::Tcp, None, port) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(host.is_free(Proto::Tcp, ip("127.0.0.1"), port));
        },
    );
}

/// The portmap keys only the iptables backend has: a `markMasqBit` of the network's own (its
/// own `MASQUERADE`), `conditionsV4`/`V6` on the jumps, and an operator's
/// `externalSetMarkChain` (jumped to, never created or removed by cnibridge).
#[test]
fn iptables_only_portmap_keys_in_the_kernel() {
    use cnibridge::firewall::{NetworkRules, PortOptions};
    let cases = [
        (
            "ports_mark_bit_conditions",
            PortOptions {
                mark_masq_bit: 14,
                conditions_v4: vec!["! -i eth9".into()],
                conditions_v6: vec!["! -s fd99::/64".into()],
                ..PortOptions::default()
            },
        ),
        (
            "ports_external_mark_chain",
            PortOptions {
                external_set_mark_chain: Some("CNBT-MARK-MASQ".into()),
                ..PortOptions::default()
            },
        ),
    ];
    for (name, options) in cases {
        in_netns(&format!("kernel golden {name}"), move || async move {
            for tool in ["iptables", "ip6tables"] {
                run(&[tool, "-t", "nat", "-N", "CNBT-MARK-MASQ"]);
            }
            let net = NetworkRules {
                port_options: options.clone(),
                ..net_a()
            };
            let p = EndpointPorts {
                options,
                ..endpoint(
                    EP_1,
                    "10.77.0.2/24",
                    Some("fd77::2/64"),
                    vec![tcp(None, 8080, 80)],
                )
            };
            let fw = IptablesFirewall::default();
            fw.add_network(&net).await.unwrap();
            fw.add_ports(&p).await.unwrap();
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            let restarted = IptablesFirewall::default();
            restarted
                .reconcile(std::slice::from_ref(&net), std::slice::from_ref(&p))
                .await
                .unwrap();
            assert_golden(&format!("iptables/{name}"), &kernel_rules());
            fw.del_ports(NET_A, EP_1).await.unwrap();
            fw.del_network(&net).await.unwrap();
            assert_golden("iptables/cleaned", &kernel_rules());
            // The operator's chain is theirs: still there.
            run(&["iptables", "-t", "nat", "-S", "CNBT-MARK-MASQ"]);
        });
    }
}
