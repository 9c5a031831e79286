//! One endpoint's rules and the transaction that changes them, as text. The main cases are
//! pinned as golden files by `tests/netns_nftables.rs`.

use super::*;
use crate::firewall::ports::Proto;

fn ep(id: &str, mappings: Vec<PortMapping>) -> EndpointPorts {
    EndpointPorts {
        network_id: "n1".into(),
        endpoint_id: id.into(),
        bridge: "br0".into(),
        container_ipv4: Some("10.1.0.2/24".parse().unwrap()),
        container_ipv6: None,
        mappings,
        options: Default::default(),
    }
}

fn tcp(host_ip: Option<&str>, host: u16, container: u16) -> PortMapping {
    PortMapping::single(
        Proto::Tcp,
        host_ip.map(|s| s.parse().unwrap()),
        host,
        container,
    )
}

fn texts(rules: &[Rule]) -> Vec<&str> {
    rules.iter().map(|r| r.text.as_str()).collect()
}

const C: &str = "comment \"cnibridge ep e1\"";

#[test]
fn a_port_on_every_address_dnats_marks_hairpin_and_localhost_and_is_accepted() {
    let r = endpoint_rules(&ep("e1", vec![tcp(None, 8080, 80)]));
    let chain = dnat_chain("n1", "e1");
    assert_eq!(r.dnat_chain, chain);
    assert_eq!(
        texts(&r.dispatch),
        vec![format!("meta nfproto ipv4 tcp dport 8080 jump {chain} {C}")]
    );
    assert_eq!(
        texts(&r.dnat_rules),
        vec![
            format!("ip saddr 10.1.0.0/24 tcp dport 8080 meta mark set meta mark | 0x2000 {C}"),
            format!("ip saddr 127.0.0.0/8 tcp dport 8080 meta mark set meta mark | 0x2000 {C}"),
            format!("meta nfproto ipv4 tcp dport 8080 dnat ip to 10.1.0.2:80 {C}"),
        ]
    );
    assert_eq!(
        texts(&r.published),
        vec![format!(
            "ip daddr 10.1.0.2 oifname \"br0\" tcp dport 80 ct status dnat accept {C}"
        )]
    );
}

#[test]
fn a_port_on_127_0_0_1_is_the_hosts_only_and_never_forwarded_from_outside() {
    let r = endpoint_rules(&ep("e1", vec![tcp(Some("127.0.0.1"), 8081, 80)]));
    assert_eq!(
        texts(&r.dnat_rules),
        vec![
            format!("ip saddr 127.0.0.0/8 ip daddr 127.0.0.1 tcp dport 8081 meta mark set meta mark | 0x2000 {C}"),
            format!("ip saddr 127.0.0.0/8 ip daddr 127.0.0.1 tcp dport 8081 dnat ip to 10.1.0.2:80 {C}"),
        ]
    );
    assert!(r.published.is_empty());
}

#[test]
fn ranges_map_one_to_one_and_keep_equal_ports() {
    let shifted = PortMapping {
        host_port_end: 5001,
        ..PortMapping::single(Proto::Udp, None, 5000, 6000)
    };
    let same = PortMapping {
        host_port_end: 7001,
        ..PortMapping::single(Proto::Sctp, None, 7000, 7000)
    };
    let r = endpoint_rules(&ep("e1", vec![shifted, same]));
    let dnats: Vec<&str> = texts(&r.dnat_rules)
        .into_iter()
        .filter(|t| t.contains(" dnat "))
        .collect();
    assert_eq!(
        dnats,
        vec![
            format!("meta nfproto ipv4 udp dport 5000-5001 dnat ip to 10.1.0.2 : udp dport map {{ 5000 : 6000, 5001 : 6001 }} {C}"),
            format!("meta nfproto ipv4 sctp dport 7000-7001 dnat ip to 10.1.0.2 {C}"),
        ]
    );
    assert!(r.published[0]
        .text
        .contains("udp dport 6000-6001 ct status dnat accept"));
}

#[test]
fn mappings_go_to_the_families_they_are_bound_to() {
    let p = EndpointPorts {
        container_ipv6: Some("fd01::2/64".parse().unwrap()),
        ..ep(
            "e1",
            vec![
                tcp(None, 80, 80),
                tcp(Some("0.0.0.0"), 81, 81),
                tcp(Some("fd99::1"), 82, 82),
            ],
        )
    };
    let r = endpoint_rules(&p);
    let dispatch: Vec<String> = texts(&r.dispatch)
        .iter()
        .map(|t| t.split(" jump ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        dispatch,
        vec![
            "meta nfproto ipv4 tcp dport 80",
            "meta nfproto ipv4 tcp dport 81",
            "meta nfproto ipv6 tcp dport 80",
            "ip6 daddr fd99::1 tcp dport 82",
        ]
    );
    assert!(texts(&r.dnat_rules)
        .iter()
        .any(|t| t.contains("dnat ip6 to [fd01::2]:82")));
}

#[test]
fn an_update_touches_the_endpoint_chain_and_rewrites_both_dispatch_chains() {
    let one = ep("e1", vec![tcp(None, 8080, 80)]);
    let two = ep("e2", vec![tcp(None, 8090, 80)]);
    let all = [one.clone(), two.clone()];
    let script = render_port_update(&all, None, Some(&two));
    let c2 = dnat_chain("n1", "e2");
    let c1 = dnat_chain("n1", "e1");
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[0], format!("add chain inet cnibridge {c2}"));
    assert_eq!(lines[1], format!("flush chain inet cnibridge {c2}"));
    // The other endpoint's chain is only jumped to, never touched.
    assert!(!script.contains(&format!("chain inet cnibridge {c1}")));
    assert!(script.contains(&format!(
        "add rule inet cnibridge hostports meta nfproto ipv4 tcp dport 8080 jump {c1}"
    )));
    assert!(script.contains("flush chain inet cnibridge hostports\n"));
    assert!(script.contains("flush chain inet cnibridge published\n"));
    assert!(!script.contains("table"), "never the whole table: {script}");

    let removed = render_port_update(&[one], Some(&two), None);
    assert!(removed.ends_with(&format!(
        "add chain inet cnibridge {c2}\ndelete chain inet cnibridge {c2}\n"
    )));
    assert!(!removed.contains("8090"));
    // Replacing keeps the chain.
    let replaced = render_port_update(&all, Some(&two), Some(&two));
    assert!(!replaced.contains("delete chain"));
}
