//! The option combinations the golden tests of every backend pin: networks (`network_cases`)
//! and one endpoint's published ports on network A (`port_cases`).

use std::net::IpAddr;

use cnibridge::firewall::{EndpointPorts, NetworkRules, PortMapping, PortOptions, Proto};

pub const NET_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
pub const NET_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";
pub const EP_1: &str = "eeeeeeeeeeee1111111111111111111111111111111111111111111111111111";
pub const EP_2: &str = "eeeeeeeeeeee2222222222222222222222222222222222222222222222222222";

/// The host's address on the outside link.
pub const HOST_OUT: &str = "10.99.0.1";

pub fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// Network A as Docker flags make it: dual stack, IPv4 masquerade on.
pub fn net_a() -> NetworkRules {
    NetworkRules {
        subnets: vec![
            "10.77.0.0/24".parse().unwrap(),
            "fd77::/64".parse().unwrap(),
        ],
        masquerade: true,
        ..NetworkRules::new(NET_A, "cnb-a")
    }
}

/// Network B: IPv4 only, masquerade on.
pub fn net_b() -> NetworkRules {
    NetworkRules {
        subnets: vec!["10.78.0.0/24".parse().unwrap()],
        masquerade: true,
        ..NetworkRules::new(NET_B, "cnb-b")
    }
}

/// The main option combinations, each a set of networks.
pub fn network_cases() -> Vec<(&'static str, Vec<NetworkRules>)> {
    vec![
        ("masq_on", vec![net_a()]),
        (
            "masq_off",
            vec![NetworkRules {
                masquerade: false,
                ..net_a()
            }],
        ),
        (
            "masq_ipv6",
            vec![NetworkRules {
                masquerade_ipv6: true,
                ..net_a()
            }],
        ),
        (
            "icc_off",
            vec![NetworkRules {
                icc: false,
                ..net_a()
            }],
        ),
        (
            "internal",
            vec![NetworkRules {
                internal: true,
                masquerade: false,
                ..net_a()
            }],
        ),
        ("two_networks", vec![net_a(), net_b()]),
        // The firewall plugin's iptablesAdminChainName: jumped to first (iptables only).
        (
            "admin_chain",
            vec![NetworkRules {
                admin_chain: Some("CNBT-ADMIN".into()),
                ..net_a()
            }],
        ),
        // The firewall plugin's ingressPolicy open: A takes no part in isolation, B does.
        (
            "ingress_open",
            vec![
                NetworkRules {
                    isolate: false,
                    ..net_a()
                },
                net_b(),
            ],
        ),
    ]
}

pub fn tcp(host_ip: Option<&str>, host: u16, container: u16) -> PortMapping {
    PortMapping::single(Proto::Tcp, host_ip.and_then(ip), host, container)
}

pub fn run_of(proto: Proto, host: u16, end: u16, container: u16) -> PortMapping {
    PortMapping {
        host_port_end: end,
        ..PortMapping::single(proto, None, host, container)
    }
}

/// An endpoint of network A (bridge `cnb-a`).
pub fn endpoint(
    id: &str,
    addr: &str,
    addr6: Option<&str>,
    mappings: Vec<PortMapping>,
) -> EndpointPorts {
    EndpointPorts {
        network_id: NET_A.into(),
        endpoint_id: id.into(),
        bridge: "cnb-a".into(),
        container_ipv4: Some(addr.parse().unwrap()),
        container_ipv6: addr6.map(|a| a.parse().unwrap()),
        mappings,
        options: Default::default(),
    }
}

/// The published-port cases: one dual-stack endpoint each.
pub fn port_cases() -> Vec<(&'static str, EndpointPorts)> {
    let ep = |m| endpoint(EP_1, "10.77.0.2/24", Some("fd77::2/64"), m);
    vec![
        ("ports_tcp", ep(vec![tcp(None, 8080, 80)])),
        (
            "ports_localhost",
            ep(vec![tcp(Some("127.0.0.1"), 8081, 80)]),
        ),
        (
            "ports_udp_range",
            ep(vec![run_of(Proto::Udp, 5000, 5002, 6000)]),
        ),
        // portmap's snat off: nothing marked for masquerade.
        (
            "ports_no_snat",
            EndpointPorts {
                options: PortOptions {
                    snat: false,
                    ..PortOptions::default()
                },
                ..ep(vec![tcp(None, 8080, 80)])
            },
        ),
        // portmap's masqAll: every connection marked, whatever its source.
        (
            "ports_masq_all",
            EndpointPorts {
                options: PortOptions {
                    masq_all: true,
                    ..PortOptions::default()
                },
                ..ep(vec![tcp(None, 8080, 80)])
            },
        ),
        (
            "ports_mixed",
            ep(vec![
                tcp(None, 8080, 80),
                PortMapping::single(Proto::Udp, ip("127.0.0.1"), 5353, 53),
                tcp(Some(HOST_OUT), 8443, 443),
                tcp(Some("fd99::1"), 8443, 443),
                run_of(Proto::Tcp, 9000, 9001, 7000),
            ]),
        ),
    ]
}
