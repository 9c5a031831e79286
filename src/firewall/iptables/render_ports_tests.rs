//! One endpoint's rules as text. The main cases are pinned as golden files, with what the
//! kernel holds after applying them, by `tests/netns_port_rules.rs`.

use super::*;
use crate::firewall::{PortMapping, Proto};

const NET: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const EP: &str = "eeeeeeeeeeee2222222222222222222222222222222222222222222222222222";

fn ports(mappings: Vec<PortMapping>) -> EndpointPorts {
    EndpointPorts {
        network_id: NET.into(),
        endpoint_id: EP.into(),
        bridge: "cnb-a".into(),
        container_ipv4: Some("10.77.0.2/24".parse().unwrap()),
        container_ipv6: Some("fd77::2/64".parse().unwrap()),
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

#[test]
fn chain_names_fit_iptables_and_are_per_endpoint() {
    let dn = dnat_chain(NET, EP);
    assert!(dn.starts_with("CNIB-DN-") && dn.len() == 28, "{dn}");
    assert_eq!(accept_chain(NET, EP)[8..], dn[8..]);
    assert_ne!(dnat_chain(NET, "other"), dn);
    assert_eq!(table_of_endpoint_chain(&dn), Some("nat"));
    assert_eq!(
        table_of_endpoint_chain(&accept_chain(NET, EP)),
        Some("filter")
    );
    assert_eq!(table_of_endpoint_chain("CNIBRIDGE-FORWARD"), None);
}

#[test]
fn one_tcp_port_on_every_address() {
    let p = ports(vec![tcp(None, 8080, 80)]);
    let dn = dnat_chain(NET, EP);
    let fw = accept_chain(NET, EP);
    let c = "-m comment --comment \"cnibridge ep eeeeeeeeeeee\"";
    assert_eq!(
        render_port_update(Family::V4, None, Some(&p)).unwrap(),
        format!(
            "*nat\n\
             :{dn} - [0:0]\n\
             -F {dn}\n\
             -A {dn} -s 10.77.0.0/24 -p tcp -m tcp --dport 8080 {c} -j CNIBRIDGE-HOSTPORT-SETMARK\n\
             -A {dn} -s 127.0.0.0/8 -p tcp -m tcp --dport 8080 {c} -j CNIBRIDGE-HOSTPORT-SETMARK\n\
             -A {dn} -p tcp -m tcp --dport 8080 {c} -j DNAT --to-destination 10.77.0.2:80\n\
             -A CNIBRIDGE-HOSTPORTS -p tcp -m tcp --dport 8080 {c} -j {dn}\n\
             COMMIT\n\
             *filter\n\
             :{fw} - [0:0]\n\
             -F {fw}\n\
             -A {fw} -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT {c} -j ACCEPT\n\
             -A CNIBRIDGE-PUBLISHED -d 10.77.0.2/32 -o cnb-a {c} -j {fw}\n\
             COMMIT\n"
        )
    );
    // IPv6: the same without the localhost mark, to the IPv6 address.
    let v6 = render_port_update(Family::V6, None, Some(&p)).unwrap();
    assert!(
        v6.contains("-s fd77::/64 -p tcp -m tcp --dport 8080 "),
        "{v6}"
    );
    assert!(
        v6.contains("-j DNAT --to-destination [fd77::2]:80\n"),
        "{v6}"
    );
    assert!(
        v6.contains("-A CNIBRIDGE-PUBLISHED -d fd77::2/128 -o cnb-a "),
        "{v6}"
    );
    assert!(!v6.contains("127.0.0.0/8"), "{v6}");
}

#[test]
fn removal_deletes_the_jumps_then_the_chains() {
    let p = ports(vec![tcp(None, 8080, 80)]);
    let dn = dnat_chain(NET, EP);
    let fw = accept_chain(NET, EP);
    let del = render_port_update(Family::V4, Some(&p), None).unwrap();
    let c = "-m comment --comment \"cnibridge ep eeeeeeeeeeee\"";
    assert_eq!(
        del,
        format!(
            "*nat\n\
             -D CNIBRIDGE-HOSTPORTS -p tcp -m tcp --dport 8080 {c} -j {dn}\n\
             -F {dn}\n-X {dn}\n\
             COMMIT\n\
             *filter\n\
             -D CNIBRIDGE-PUBLISHED -d 10.77.0.2/32 -o cnb-a {c} -j {fw}\n\
             -F {fw}\n-X {fw}\n\
             COMMIT\n"
        )
    );
    // Re-adding replaces: the old jumps go before the new ones are appended, chains refilled.
    let again = render_port_update(Family::V4, Some(&p), Some(&p)).unwrap();
    let jump = format!("CNIBRIDGE-HOSTPORTS -p tcp -m tcp --dport 8080 {c} -j {dn}");
    let d = again.find(&format!("-D {jump}")).unwrap();
    let a = again.find(&format!("-A {jump}")).unwrap();
    assert!(d < a && !again.contains("-X "), "{again}");
    // Nothing before or after in a family: no script.
    assert_eq!(render_port_update(Family::V4, None, None), None);
    let v4_only = EndpointPorts {
        container_ipv6: None,
        ..p
    };
    assert_eq!(render_port_update(Family::V6, None, Some(&v4_only)), None);
}

#[test]
fn a_loopback_port_is_dnated_only_for_the_host_and_never_forwarded() {
    let p = ports(vec![tcp(Some("127.0.0.1"), 8081, 80)]);
    let r = endpoint_rules(Family::V4, &p).unwrap();
    let rules: Vec<&str> = r
        .dnat_rules
        .iter()
        .map(|s| s.split(" -m comment").next().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "-s 127.0.0.0/8 -d 127.0.0.1/32 -p tcp -m tcp --dport 8081",
            "-s 127.0.0.0/8 -d 127.0.0.1/32 -p tcp -m tcp --dport 8081",
        ]
    );
    assert!(r.dnat_rules[1].ends_with("-j DNAT --to-destination 10.77.0.2:80"));
    // No FORWARD accept: the host's own connections do not cross FORWARD, and nobody else
    // may reach this one.
    assert!(r.accept_jumps.is_empty() && r.accept_rules.is_empty());
    assert_eq!(r.chains(), vec![("nat", r.dnat_chain.as_str())]);
    assert!(p.needs_route_localnet());
    // Not served in IPv6 at all.
    assert!(endpoint_rules(Family::V6, &p).is_none());
    let filterless = render_port_update(Family::V4, None, Some(&p)).unwrap();
    assert!(!filterless.contains("*filter"), "{filterless}");
}

#[test]
fn a_range_maps_one_to_one_with_an_offset() {
    let p = ports(vec![PortMapping {
        proto: Proto::Udp,
        container_port: 6000,
        host_ip: Some("10.99.0.1".parse().unwrap()),
        host_port: 5000,
        host_port_end: 5002,
    }]);
    let r = endpoint_rules(Family::V4, &p).unwrap();
    let dnat = r.dnat_rules.last().unwrap();
    assert!(
        dnat.starts_with("-d 10.99.0.1/32 -p udp -m udp --dport 5000:5002 "),
        "{dnat}"
    );
    assert!(
        dnat.ends_with("-j DNAT --to-destination 10.77.0.2:6000-6002/5000"),
        "{dnat}"
    );
    assert!(r.accept_rules[0].starts_with("-p udp -m udp --dport 6000:6002 "));
    // A specific non-loopback address: no localhost mark, and no route_localnet needed.
    assert!(!r.dnat_rules.iter().any(|x| x.contains("127.0.0.0/8")));
    assert!(!p.needs_route_localnet());
}

#[test]
fn two_host_ports_of_one_container_port_share_the_accept() {
    let p = ports(vec![tcp(None, 8080, 80), tcp(Some("10.99.0.1"), 8081, 80)]);
    let r = endpoint_rules(Family::V4, &p).unwrap();
    assert_eq!(r.dnat_jumps.len(), 2);
    assert_eq!(r.accept_rules.len(), 1);
    // Mapping bound to an IPv4 address is not in the IPv6 rules.
    let v6 = endpoint_rules(Family::V6, &p).unwrap();
    assert_eq!(v6.dnat_jumps.len(), 1);
}

#[test]
fn the_full_script_holds_endpoint_chains_and_deletes_stale_ones() {
    let p = ports(vec![tcp(None, 8080, 80)]);
    let stale = vec![
        "CNIB-DN-00000000000000000000".to_string(),
        "CNIB-FW-00000000000000000000".to_string(),
        dnat_chain(NET, EP),
    ];
    let s = super::super::render::render_restore(
        Family::V4,
        &[],
        std::slice::from_ref(&p),
        &[],
        &stale,
    );
    let dn = dnat_chain(NET, EP);
    assert!(s.contains(&format!(":{dn} - [0:0]\n")));
    assert!(s.contains(&format!("-A CNIBRIDGE-HOSTPORTS -p tcp -m tcp --dport 8080 -m comment --comment \"cnibridge ep eeeeeeeeeeee\" -j {dn}\n")));
    assert!(s.contains("-X CNIB-DN-00000000000000000000\n"));
    assert!(s.contains("-X CNIB-FW-00000000000000000000\n"));
    // A chain still claimed is never deleted, whatever the caller says.
    assert!(!s.contains(&format!("-X {dn}")), "{s}");
    // Each -X in its own table, after the declaration that makes it safe.
    let nat = &s[s.find("*nat").unwrap()..];
    assert!(nat.contains("-X CNIB-DN-0") && !nat.contains("-X CNIB-FW-0"));
    assert!(nat.find(":CNIB-DN-0").unwrap() < nat.find("-X CNIB-DN-0").unwrap());
}

#[test]
fn portmap_keys_shape_the_endpoint_rules() {
    use crate::firewall::PortOptions;
    let with = |options| EndpointPorts {
        options,
        ..ports(vec![tcp(None, 8080, 80)])
    };
    let d = PortOptions::default;
    // markMasqBit: the endpoint marks with its own bit (the network masquerades it).
    let r = endpoint_rules(
        Family::V4,
        &with(PortOptions {
            mark_masq_bit: 14,
            ..d()
        }),
    )
    .unwrap();
    assert!(
        r.dnat_rules[0].ends_with("-j MARK --set-xmark 0x4000/0x4000"),
        "{:?}",
        r.dnat_rules
    );
    // externalSetMarkChain: the operator's chain marks.
    let ext = PortOptions {
        external_set_mark_chain: Some("KUBE-MARK-MASQ".into()),
        ..d()
    };
    let r = endpoint_rules(Family::V4, &with(ext)).unwrap();
    assert!(
        r.dnat_rules
            .iter()
            .take(2)
            .all(|x| x.ends_with("-j KUBE-MARK-MASQ")),
        "{:?}",
        r.dnat_rules
    );
    // conditionsV4/V6 narrow the jumps into the endpoint's chain, per family.
    let cond = PortOptions {
        conditions_v4: vec!["-s 10.0.0.0/8".into(), "! -i eth9".into()],
        conditions_v6: vec!["-s fd00::/8".into()],
        ..d()
    };
    let r = endpoint_rules(Family::V4, &with(cond.clone())).unwrap();
    assert!(
        r.dnat_jumps[0]
            .starts_with("-p tcp -m tcp --dport 8080 -s 10.0.0.0/8 ! -i eth9 -m comment"),
        "{:?}",
        r.dnat_jumps
    );
    let r = endpoint_rules(Family::V6, &with(cond)).unwrap();
    assert!(
        r.dnat_jumps[0].starts_with("-p tcp -m tcp --dport 8080 -s fd00::/8 -m comment"),
        "{:?}",
        r.dnat_jumps
    );
    // Conditions that could end the rule or the script are refused.
    for bad in [
        "-s 10.0.0.0/8\n-A INPUT",
        "-j ACCEPT",
        "-m comment --comment \"x\"",
        " ",
    ] {
        let o = PortOptions {
            conditions_v4: vec![bad.into()],
            ..d()
        };
        assert!(
            crate::firewall::ports::validate_ports(&with(o)).is_err(),
            "{bad:?}"
        );
    }
}
