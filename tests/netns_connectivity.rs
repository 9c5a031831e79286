//! Netns tier: what the firewall's rules do to real traffic, each test once per backend
//! (`<name>` iptables, `<name>_nftables`). For iptables the test thread's namespace plays a
//! Docker host (`FORWARD` policy `DROP`, forwarding on, Docker's jumps re-inserted at the head
//! of `FORWARD` after ours as a dockerd restart does); for nftables a host with dockerd
//! `--iptables=false` (`FORWARD` policy `ACCEPT`: only our table keeps anything out). Named
//! namespaces play containers (one veth each on a bridge made by `NetlinkDataplane`) and an
//! "outside" peer reached through a veth with its own /30 (and /64). TCP probes run in threads
//! inside the right namespaces (`tcp_peer`), so the server reports the source address it sees.
//! Root required.

mod support;
use support::netns;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeSpec, Dataplane, VethSpec};
use cnibridge::firewall::{Firewall, NetworkRules};
use netns::backend::Backend;
use netns::{in_netns_for, run, tcp_peer, udp_peer, NamedNetns};

const NET_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const NET_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";

/// How long a probe that must succeed may take.
const YES: Duration = Duration::from_secs(3);
/// How long a probe that must fail is given (a dropped SYN only ends by this timeout).
const NO: Duration = Duration::from_millis(800);

/// The host's address on the outside link, and the outside server.
const HOST_OUT: &str = "10.99.0.1";
const OUT: &str = "10.99.0.2";
const HOST_OUT6: &str = "fd99::1";
const OUT6: &str = "fd99::2";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// A network as Docker flags make it (masquerade on) on `bridge` with `subnets`.
fn network(id: &str, bridge: &str, subnets: &[&str]) -> NetworkRules {
    NetworkRules {
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        masquerade: true,
        ..NetworkRules::new(id, bridge)
    }
}

/// The fake Docker host: the test thread's netns plus the outside namespace.
struct Host {
    dp: NetlinkDataplane,
    outside: NamedNetns,
}

impl Host {
    async fn new(b: Backend) -> Host {
        b.host_policy();
        run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let outside = NamedNetns::new("out");
        run(&[
            "ip", "link", "add", "vout", "type", "veth", "peer", "name", "vout-o",
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_OUT}/30"),
            "dev",
            "vout",
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_OUT6}/64"),
            "dev",
            "vout",
            "nodad",
        ]);
        run(&["ip", "link", "set", "vout", "up"]);
        outside.adopt("vout-o", &format!("{OUT}/30"));
        outside.ip(&[
            "addr",
            "add",
            &format!("{OUT6}/64"),
            "dev",
            "vout-o",
            "nodad",
        ]);
        Host {
            dp: NetlinkDataplane::new().unwrap(),
            outside,
        }
    }

    /// A bridge with its IPv4 gateway (and an IPv6 one, without DAD, if given).
    async fn bridge(&self, name: &str, gw: &str, gw6: Option<&str>) {
        self.dp
            .ensure_bridge(&BridgeSpec {
                name: name.into(),
                mtu: None,
                addresses: vec![gw.parse().unwrap()],
                promisc: false,
                force_address: false,
            })
            .await
            .unwrap();
        if let Some(gw6) = gw6 {
            run(&["ip", "addr", "add", gw6, "dev", name, "nodad"]);
        }
    }

    /// A container on `bridge` with `addr`, and a default route via `gw` unless None (what Join
    /// gives an `--internal` network).
    async fn container(&self, tag: &str, bridge: &str, addr: &str, gw: Option<&str>) -> NamedNetns {
        let (host, peer) = (format!("vh-{tag}"), format!("vp-{tag}"));
        self.dp
            .create_veth(&VethSpec {
                host_name: host,
                peer_name: peer.clone(),
                bridge: bridge.into(),
                mtu: None,
                peer_mac: None,
                hairpin: false,
                peer_tuning: Default::default(),
            })
            .await
            .unwrap();
        let ns = NamedNetns::new(tag);
        ns.adopt(&peer, addr);
        if let Some(gw) = gw {
            ns.ip(&["route", "add", "default", "via", gw]);
        }
        ns
    }
}

/// What dockerd does to `FORWARD` at each start: its jumps go (back) to the head, in front of
/// ours. Its chains stay empty here, so they return every packet of our bridges to `FORWARD`.
fn dockerd_restarted(b: Backend) {
    if b != Backend::Iptables {
        // dockerd --iptables=false leaves iptables alone; the legacy variant is checked for
        // traffic, the jump order is the nft-based variant's test.
        return;
    }
    for chain in ["DOCKER-USER", "DOCKER-FORWARD"] {
        let _ = std::process::Command::new("iptables")
            .args(["-N", chain])
            .output();
        let _ = std::process::Command::new("iptables")
            .args(["-D", "FORWARD", "-j", chain])
            .output();
    }
    run(&["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD"]);
    run(&["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
    let forward = run(&["iptables", "-S", "FORWARD"]);
    assert!(
        forward.starts_with("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"),
        "{forward}"
    );
}

fn peer_ip(
    from: &NamedNetns,
    listen_in: Option<&NamedNetns>,
    to: SocketAddr,
    t: Duration,
) -> Option<IpAddr> {
    tcp_peer(Some(from), listen_in, to, t).map(|p| p.ip())
}

#[test]
fn masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_legacy() {
    masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_with(
        Backend::IptablesLegacy,
    );
}

#[test]
fn masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged() {
    masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_with(
        Backend::Iptables,
    );
}

#[test]
fn masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_nftables() {
    masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_with(
        Backend::Nftables,
    );
}

fn masquerade_shows_the_host_address_outside_and_keeps_the_subnet_unchanged_with(backend: Backend) {
    in_netns_for(
        backend,
        "masquerade_shows_the_host_address_outside",
        move || async move {
            let h = Host::new(backend).await;
            h.bridge("cnb-a", "10.77.0.1/24", None).await;
            let a = h
                .container("a", "cnb-a", "10.77.0.2/24", Some("10.77.0.1"))
                .await;
            let b = h
                .container("b", "cnb-a", "10.77.0.3/24", Some("10.77.0.1"))
                .await;
            let out = Some(&h.outside);
            assert_eq!(
                // A port of its own: without Docker's FORWARD DROP (nftables) this SYN reaches
                // the listener, and its half-open connection could hold the port at the next bind.
                peer_ip(&a, out, sa(OUT, 7099), NO),
                None,
                "no rules yet: dropped (Docker's FORWARD DROP) or not routed back"
            );

            let fw = backend.firewall();
            fw.add_network(&network(NET_A, "cnb-a", &["10.77.0.0/24"]))
                .await
                .unwrap();
            dockerd_restarted(backend);
            // The outside has no route to 10.77.0.0/24: only masquerade makes the reply come back.
            assert_eq!(peer_ip(&a, out, sa(OUT, 7000), YES), ip(HOST_OUT));
            assert_eq!(peer_ip(&b, out, sa(OUT, 7000), YES), ip(HOST_OUT));
            let udp = udp_peer(Some(&a), out, sa(OUT, 7001), YES).map(|p| p.ip());
            assert_eq!(udp, ip(HOST_OUT), "datagrams are masqueraded too");
            // Inside the subnet nothing is rewritten, although br_netfilter runs bridged frames
            // through nat POSTROUTING too.
            assert_eq!(
                peer_ip(&a, Some(&b), sa("10.77.0.3", 7001), YES),
                ip("10.77.0.2")
            );
        },
    );
}

#[test]
fn without_masquerade_the_outside_sees_the_container_and_cannot_connect_in() {
    without_masquerade_the_outside_sees_the_container_and_cannot_connect_in_with(Backend::Iptables);
}

#[test]
fn without_masquerade_the_outside_sees_the_container_and_cannot_connect_in_nftables() {
    without_masquerade_the_outside_sees_the_container_and_cannot_connect_in_with(Backend::Nftables);
}

fn without_masquerade_the_outside_sees_the_container_and_cannot_connect_in_with(backend: Backend) {
    in_netns_for(
        backend,
        "without_masquerade_the_outside_sees_the_container",
        move || async move {
            let h = Host::new(backend).await;
            h.bridge("cnb-a", "10.77.0.1/24", None).await;
            let a = h
                .container("a", "cnb-a", "10.77.0.2/24", Some("10.77.0.1"))
                .await;
            h.outside
                .ip(&["route", "add", "10.77.0.0/24", "via", HOST_OUT]);
            let fw = backend.firewall();
            let rules = NetworkRules {
                masquerade: false,
                ..network(NET_A, "cnb-a", &["10.77.0.0/24"])
            };
            fw.add_network(&rules).await.unwrap();
            dockerd_restarted(backend);
            assert_eq!(
                peer_ip(&a, Some(&h.outside), sa(OUT, 7000), YES),
                ip("10.77.0.2")
            );
            // Replies come in (conntrack); new connections from outside do not (no published ports).
            assert_eq!(
                peer_ip(&h.outside, Some(&a), sa("10.77.0.2", 7002), NO),
                None
            );
        },
    );
}

#[test]
fn containers_of_two_networks_cannot_reach_each_other_legacy() {
    containers_of_two_networks_cannot_reach_each_other_with(Backend::IptablesLegacy);
}

#[test]
fn containers_of_two_networks_cannot_reach_each_other() {
    containers_of_two_networks_cannot_reach_each_other_with(Backend::Iptables);
}

#[test]
fn containers_of_two_networks_cannot_reach_each_other_nftables() {
    containers_of_two_networks_cannot_reach_each_other_with(Backend::Nftables);
}

fn containers_of_two_networks_cannot_reach_each_other_with(backend: Backend) {
    in_netns_for(
        backend,
        "containers_of_two_networks_cannot_reach_each_other",
        move || async move {
            let h = Host::new(backend).await;
            h.bridge("cnb-a", "10.77.0.1/24", None).await;
            h.bridge("cnb-b", "10.78.0.1/24", None).await;
            let a = h
                .container("a", "cnb-a", "10.77.0.2/24", Some("10.77.0.1"))
                .await;
            let b = h
                .container("b", "cnb-b", "10.78.0.2/24", Some("10.78.0.1"))
                .await;
            let fw = backend.firewall();
            fw.add_network(&network(NET_A, "cnb-a", &["10.77.0.0/24"]))
                .await
                .unwrap();
            fw.add_network(&network(NET_B, "cnb-b", &["10.78.0.0/24"]))
                .await
                .unwrap();
            dockerd_restarted(backend);
            // Both reach the outside through the very rule (`-i br ! -o br ACCEPT`) that would let
            // them reach each other without the isolation chains.
            assert_eq!(
                peer_ip(&a, Some(&h.outside), sa(OUT, 7000), YES),
                ip(HOST_OUT)
            );
            assert_eq!(
                peer_ip(&b, Some(&h.outside), sa(OUT, 7000), YES),
                ip(HOST_OUT)
            );
            assert_eq!(
                peer_ip(&a, Some(&b), sa("10.78.0.2", 7003), NO),
                None,
                "a -> b"
            );
            assert_eq!(
                peer_ip(&b, Some(&a), sa("10.77.0.2", 7003), NO),
                None,
                "b -> a"
            );
        },
    );
}

#[test]
fn icc_off_separates_containers_of_one_network_but_not_from_their_gateway_legacy() {
    icc_off_separates_containers_of_one_network_but_not_from_their_gateway_with(
        Backend::IptablesLegacy,
    );
}

#[test]
fn icc_off_separates_containers_of_one_network_but_not_from_their_gateway() {
    icc_off_separates_containers_of_one_network_but_not_from_their_gateway_with(Backend::Iptables);
}

#[test]
fn icc_off_separates_containers_of_one_network_but_not_from_their_gateway_nftables() {
    icc_off_separates_containers_of_one_network_but_not_from_their_gateway_with(Backend::Nftables);
}

fn icc_off_separates_containers_of_one_network_but_not_from_their_gateway_with(backend: Backend) {
    in_netns_for(
        backend,
        "icc_off_separates_containers_of_one_network",
        move || async move {
            // The namespace-wide switch off: cnibridge's bridges ask br_netfilter for iptables
            // themselves (per-bridge nf_call_iptables), so icc=false must hold anyway.
            let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
            let have_br_netfilter = std::path::Path::new(sysctl).exists();
            if have_br_netfilter {
                std::fs::write(sysctl, "0").unwrap();
            }
            let h = Host::new(backend).await;
            h.bridge("cnb-a", "10.77.0.1/24", None).await;
            let a = h
                .container("a", "cnb-a", "10.77.0.2/24", Some("10.77.0.1"))
                .await;
            let b = h
                .container("b", "cnb-a", "10.77.0.3/24", Some("10.77.0.1"))
                .await;
            let fw = backend.firewall();
            let rules = NetworkRules {
                icc: false,
                ..network(NET_A, "cnb-a", &["10.77.0.0/24"])
            };
            fw.add_network(&rules).await.unwrap();
            dockerd_restarted(backend);
            for (c, addr) in [(&a, "10.77.0.2"), (&b, "10.77.0.3")] {
                assert_eq!(
                    peer_ip(c, None, sa("10.77.0.1", 7005), YES),
                    ip(addr),
                    "gateway"
                );
                assert_eq!(
                    peer_ip(c, Some(&h.outside), sa(OUT, 7000), YES),
                    ip(HOST_OUT)
                );
            }
            if have_br_netfilter {
                assert!(!netns::bridged_through_iptables());
                assert_eq!(
                    peer_ip(&a, Some(&b), sa("10.77.0.3", 7006), NO),
                    None,
                    "a -> b"
                );
                assert_eq!(
                    peer_ip(&b, Some(&a), sa("10.77.0.2", 7006), NO),
                    None,
                    "b -> a"
                );
            } else {
                eprintln!(
                    "SKIPPED icc assertions: br_netfilter does not filter bridged frames here"
                );
            }
        },
    );
}

#[test]
fn internal_network_containers_talk_to_each_other_only() {
    internal_network_containers_talk_to_each_other_only_with(Backend::Iptables);
}

#[test]
fn internal_network_containers_talk_to_each_other_only_nftables() {
    internal_network_containers_talk_to_each_other_only_with(Backend::Nftables);
}

fn internal_network_containers_talk_to_each_other_only_with(backend: Backend) {
    in_netns_for(
        backend,
        "internal_network_containers_talk_to_each_other_only",
        move || async move {
            let h = Host::new(backend).await;
            h.bridge("cnb-a", "10.77.0.1/24", None).await;
            // As Join answers for --internal: no gateway, so no default route.
            let a = h.container("a", "cnb-a", "10.77.0.2/24", None).await;
            let b = h.container("b", "cnb-a", "10.77.0.3/24", None).await;
            h.outside
                .ip(&["route", "add", "10.77.0.0/24", "via", HOST_OUT]);
            let fw = backend.firewall();
            let rules = NetworkRules {
                internal: true,
                masquerade: false,
                ..network(NET_A, "cnb-a", &["10.77.0.0/24"])
            };
            fw.add_network(&rules).await.unwrap();
            dockerd_restarted(backend);
            // Internal must not rest on the policy: without Docker, FORWARD accepts by default.
            for tool in ["iptables", "ip6tables"] {
                run(&[tool, "-P", "FORWARD", "ACCEPT"]);
            }
            assert_eq!(
                peer_ip(&a, Some(&b), sa("10.77.0.3", 7007), YES),
                ip("10.77.0.2")
            );
            assert_eq!(
                peer_ip(&b, Some(&a), sa("10.77.0.2", 7007), YES),
                ip("10.77.0.3")
            );
            assert_eq!(
                peer_ip(&a, Some(&h.outside), sa(OUT, 7000), NO),
                None,
                "outside"
            );
            assert_eq!(
                peer_ip(&a, None, sa(HOST_OUT, 7008), NO),
                None,
                "host outside address"
            );
            assert_eq!(
                peer_ip(&h.outside, Some(&a), sa("10.77.0.2", 7009), NO),
                None,
                "in"
            );

            // A container that routes out by itself (it needs NET_ADMIN) is still not forwarded.
            a.ip(&["route", "add", "default", "via", "10.77.0.1"]);
            assert_eq!(
                peer_ip(&a, Some(&h.outside), sa(OUT, 7000), NO),
                None,
                "routed out"
            );
            // Each direction is dropped on its own (TCP needs both ways, so check one-way UDP).
            let udp = |from, to, addr: &str, port, t| {
                udp_peer(Some(from), Some(to), sa(addr, port), t).map(|p| p.ip())
            };
            assert_eq!(udp(&b, &a, "10.77.0.2", 7011, YES), ip("10.77.0.3"));
            assert_eq!(udp(&a, &h.outside, OUT, 7012, NO), None, "datagram out");
            assert_eq!(
                udp(&h.outside, &a, "10.77.0.2", 7013, NO),
                None,
                "datagram in"
            );
            // Nor does it reach the host's other addresses (Docker's --internal leaves INPUT
            // open), while its gateway still answers.
            assert_eq!(
                peer_ip(&a, None, sa(HOST_OUT, 7008), NO),
                None,
                "routed to the host's outside address"
            );
            assert_eq!(
                peer_ip(&a, None, sa("10.77.0.1", 7014), YES),
                ip("10.77.0.2")
            );
        },
    );
}

#[test]
fn ipv6_masquerade_is_opt_in() {
    ipv6_masquerade_is_opt_in_with(Backend::Iptables);
}

#[test]
fn ipv6_masquerade_is_opt_in_nftables() {
    ipv6_masquerade_is_opt_in_with(Backend::Nftables);
}

fn ipv6_masquerade_is_opt_in_with(backend: Backend) {
    in_netns_for(backend, "ipv6_masquerade_is_opt_in", move || async move {
        let h = Host::new(backend).await;
        h.bridge("cnb-a", "10.77.0.1/24", Some("fd77::1/64")).await;
        let a = h
            .container("a", "cnb-a", "10.77.0.2/24", Some("10.77.0.1"))
            .await;
        a.ip(&["addr", "add", "fd77::2/64", "dev", "vp-a", "nodad"]);
        a.ip(&["-6", "route", "add", "default", "via", "fd77::1"]);
        let fw = backend.firewall();
        let rules = network(NET_A, "cnb-a", &["10.77.0.0/24", "fd77::/64"]);
        fw.add_network(&rules).await.unwrap();
        dockerd_restarted(backend);
        let out6 = sa(OUT6, 7010);
        // Forwarded, but the outside has no route back to fd77::/64 without masquerade.
        assert_eq!(peer_ip(&a, Some(&h.outside), out6, NO), None);
        assert_eq!(
            peer_ip(&a, Some(&h.outside), sa(OUT, 7000), YES),
            ip(HOST_OUT)
        );

        let with_v6 = NetworkRules {
            masquerade_ipv6: true,
            ..rules
        };
        fw.add_network(&with_v6).await.unwrap();
        assert_eq!(peer_ip(&a, Some(&h.outside), out6, YES), ip(HOST_OUT6));
    });
}
