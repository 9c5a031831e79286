//! Valid configs: every key, each cniVersion, both ipam styles, conflists.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::{conf, list, load, V4};
use crate::cni::config::{CniVersion, Dns, MasqBackend, VlanTrunk, SUPPORTED_VERSIONS};
use crate::cni::{NetConf, RangeConf, RouteConf};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn range(subnet: &str, start: &str, end: &str, gw: &str) -> RangeConf {
    RangeConf {
        subnet: net(subnet),
        range_start: ip(start),
        range_end: ip(end),
        gateway: ip(gw),
    }
}

fn v4_default() -> RangeConf {
    range("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")
}

type Check = fn(&NetConf);

/// The valid table: (file name, JSON, what the effective config must hold).
pub(super) fn cases() -> Vec<(&'static str, String, Check)> {
    vec![
        // CNI defaults for every bridge key.
        ("t.conf", conf("", V4), |c| {
            assert_eq!(c.name, "t");
            assert_eq!(c.cni_version, CniVersion::V1_0_0);
            assert_eq!(c.bridge, "cni0");
            assert!(!c.is_gateway && !c.is_default_gateway && !c.ip_masq && !c.force_address);
            assert!(!c.hairpin_mode && !c.promisc_mode && !c.enable_dad && !c.macspoofchk);
            assert!(!c.port_isolation && !c.disable_container_interface);
            assert_eq!((c.mtu, c.vlan), (0, 0));
            assert_eq!(c.ip_masq_backend, None);
            assert_eq!(c.preserve_default_vlan, None);
            assert!(c.vlan_trunk.is_empty() && c.capabilities.is_empty() && c.dns.is_none());
            assert!(c.non_default_keys().is_empty());
            assert_eq!(c.ipam.range_sets, vec![vec![v4_default()]]);
            assert!(c.ipam.routes.is_empty());
            assert_eq!(c.ipam.data_dir, None);
            assert!(c.origin.legacy_range && !c.origin.conflist);
            // A single .conf publishes as a network from Docker's flags does.
            assert_eq!(c.chain, crate::cni::chain::Chain::docker_default());
        }),
        // Every bridge key set.
        (
            "t.conf",
            conf(
                r#""bridge":"br-test","isGateway":true,"forceAddress":true,"ipMasq":true,
                "ipMasqBackend":"nftables","mtu":1400,"hairpinMode":true,"vlan":100,
                "vlanTrunk":[{"id":5},{"minID":10,"maxID":20}],"preserveDefaultVlan":false,
                "enabledad":true,"macspoofchk":true,"portIsolation":true,
                "dns":{"nameservers":["10.1.0.53"],"domain":"example.test","search":["a.test"],"options":["ndots:2"]},
                "capabilities":{"portMappings":true,"ips":false}"#,
                V4,
            ),
            |c| {
                assert_eq!(c.bridge, "br-test");
                assert!(c.is_gateway && !c.is_default_gateway && c.force_address && c.ip_masq);
                assert_eq!(c.ip_masq_backend, Some(MasqBackend::Nftables));
                assert_eq!((c.mtu, c.vlan), (1400, 100));
                assert!(c.hairpin_mode && c.enable_dad && c.macspoofchk && c.port_isolation);
                assert_eq!(
                    c.vlan_trunk,
                    [VlanTrunk { min: 5, max: 5 }, VlanTrunk { min: 10, max: 20 }]
                );
                assert_eq!(c.preserve_default_vlan, Some(false));
                assert_eq!(
                    c.dns,
                    Some(Dns {
                        nameservers: vec!["10.1.0.53".into()],
                        domain: Some("example.test".into()),
                        search: vec!["a.test".into()],
                        options: vec!["ndots:2".into()],
                    })
                );
                assert_eq!(c.capabilities.get("portMappings"), Some(&true));
                assert_eq!(c.capabilities.get("ips"), Some(&false));
                assert_eq!(
                    c.non_default_keys(),
                    [
                        "bridge",
                        "isGateway",
                        "forceAddress",
                        "ipMasq",
                        "ipMasqBackend",
                        "mtu",
                        "hairpinMode",
                        "vlan",
                        "vlanTrunk",
                        "preserveDefaultVlan",
                        "enabledad",
                        "macspoofchk",
                        "portIsolation",
                        "dns",
                        "capabilities"
                    ]
                );
            },
        ),
        // isDefaultGateway forces isGateway; promiscMode alone is fine; iptables backend.
        (
            "t.conf",
            conf(
                r#""isDefaultGateway":true,"isGateway":false,"promiscMode":true,"ipMasqBackend":"iptables""#,
                V4,
            ),
            |c| {
                assert!(c.is_gateway && c.is_default_gateway && c.promisc_mode);
                assert_eq!(c.ip_masq_backend, Some(MasqBackend::Iptables));
            },
        ),
        // Legacy single range with every key, routes, dataDir, resolvConf.
        (
            "t.conf",
            conf(
                "",
                r#""subnet":"10.1.0.0/16","rangeStart":"10.1.1.10","rangeEnd":"10.1.1.200",
                "gateway":"10.1.0.1","dataDir":"/run/hl","resolvConf":"/etc/resolv.conf",
                "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.250.0.0/16","gw":"10.1.0.254"}]"#,
            ),
            |c| {
                assert_eq!(
                    c.ipam.range_sets,
                    vec![vec![range(
                        "10.1.0.0/16",
                        "10.1.1.10",
                        "10.1.1.200",
                        "10.1.0.1"
                    )]]
                );
                assert_eq!(
                    c.ipam.routes,
                    [
                        RouteConf {
                            dst: net("0.0.0.0/0"),
                            gw: None
                        },
                        RouteConf {
                            dst: net("10.250.0.0/16"),
                            gw: Some(ip("10.1.0.254"))
                        },
                    ]
                );
                assert_eq!(c.ipam.data_dir, Some(PathBuf::from("/run/hl")));
                assert_eq!(c.ipam.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
            },
        ),
        // Legacy range prepended before `ranges`, as host-local does.
        (
            "t.conf",
            conf(
                "",
                r#""subnet":"10.1.0.0/24","ranges":[[{"subnet":"fd00:1::/64"}]]"#,
            ),
            |c| {
                assert_eq!(c.ipam.range_sets.len(), 2);
                assert_eq!(c.ipam.range_sets[0], vec![v4_default()]);
                assert_eq!(c.ipam.range_sets[1][0].subnet, net("fd00:1::/64"));
                assert!(c.origin.legacy_range);
                assert_eq!(
                    c.origin.range_key(1, 0, "subnet"),
                    "ipam.ranges[0][0].subnet"
                );
                assert_eq!(c.origin.range_key(0, 0, "subnet"), "ipam.subnet");
            },
        ),
        // `ranges`: several sets, both families, several ranges in a set, IPv6 defaults
        // (rangeEnd = the all-ones address), gateway outside the range.
        (
            "t.conf",
            conf(
                "",
                r#""ranges":[
                  [{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.19"},
                   {"subnet":"10.1.0.0/24","rangeStart":"10.1.0.30","rangeEnd":"10.1.0.39"},
                   {"subnet":"10.1.9.0/24"}],
                  [{"subnet":"fd00:1::/64"}],
                  [{"subnet":"10.2.0.0/30"}],
                  [{"subnet":"fd00:2::/126","gateway":"fd00:2::3"}]]"#,
            ),
            |c| {
                let s = &c.ipam.range_sets;
                assert_eq!(s.len(), 4);
                assert_eq!(
                    s[0],
                    vec![
                        range("10.1.0.0/24", "10.1.0.10", "10.1.0.19", "10.1.0.1"),
                        range("10.1.0.0/24", "10.1.0.30", "10.1.0.39", "10.1.0.1"),
                        range("10.1.9.0/24", "10.1.9.1", "10.1.9.254", "10.1.9.1"),
                    ]
                );
                assert_eq!(
                    s[1],
                    vec![range(
                        "fd00:1::/64",
                        "fd00:1::1",
                        "fd00:1::ffff:ffff:ffff:ffff",
                        "fd00:1::1"
                    )]
                );
                assert_eq!(
                    s[2],
                    vec![range("10.2.0.0/30", "10.2.0.1", "10.2.0.2", "10.2.0.1")]
                );
                assert_eq!(
                    s[3],
                    vec![range("fd00:2::/126", "fd00:2::1", "fd00:2::3", "fd00:2::3")]
                );
                assert!(!c.origin.legacy_range);
            },
        ),
        // Unknown keys anywhere are ignored (nerdctl's, typos, runtime keys); null = absent.
        (
            "t.conf",
            conf(
                r#""nerdctlID":"abc","nerdctlLabels":{"x":"y"},"args":{"cni":{}},"mtu":null,"bridge":null"#,
                r#""subnet":"10.1.0.0/24","resolveConf":"/x","gateway":null,
                "ranges":[[{"subnet":"fd00:1::/64","ipRange":"fd00:1::/80"}]],
                "routes":[{"dst":"0.0.0.0/0","gw":null,"comment":"x"}]"#,
            ),
            |c| {
                assert_eq!((c.bridge.as_str(), c.mtu), ("cni0", 0));
                assert_eq!(c.ipam.range_sets.len(), 2);
                assert_eq!(c.ipam.resolv_conf, None);
                assert_eq!(c.ipam.routes[0].gw, None);
            },
        ),
        // IPv4-mapped IPv6 is IPv4 to host-local (Go's To4); "" dataDir is the default.
        (
            "t.conf",
            conf(
                "",
                r#""subnet":"10.1.0.0/24","rangeStart":"::ffff:10.1.0.10","dataDir":"""#,
            ),
            |c| {
                assert_eq!(c.ipam.range_sets[0][0].range_start, ip("10.1.0.10"));
                assert_eq!(c.ipam.data_dir, None);
            },
        ),
        // Missing cniVersion is 0.1.0; one set per family is fine there.
        (
            "t.conf",
            r#"{"name":"old","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24",
               "ranges":[[{"subnet":"fd00:1::/64"}]]}}"#
                .to_string(),
            |c| {
                assert_eq!(c.cni_version, CniVersion::V0_1_0);
                assert_eq!(c.ipam.range_sets.len(), 2);
            },
        ),
        // A .json file is a single plugin too.
        ("t.json", conf("", V4), |c| assert!(!c.origin.conflist)),
        // A conflist: list name and version win over the plugin's own.
        (
            "t.conflist",
            r#"{"cniVersion":"0.4.0","name":"listname","disableCheck":"TRUE","disableGC":false,
               "plugins":[{"type":"bridge","name":"plugname","cniVersion":"0.1.0","bridge":"br1",
               "ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}]}"#
                .to_string(),
            |c| {
                assert_eq!(c.name, "listname");
                assert_eq!(c.cni_version, CniVersion::V0_4_0);
                assert_eq!(c.bridge, "br1");
                assert!(c.origin.conflist && !c.origin.legacy_range);
                assert_eq!(
                    c.origin.range_key(0, 0, "gateway"),
                    "plugins[0].ipam.ranges[0][0].gateway"
                );
            },
        ),
        // CNI 1.1 cniVersions: the highest known one; newer ones are skipped.
        (
            "t.conflist",
            r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","2.0.0","0.3.1"],"name":"t",
               "plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}]}"#
                .to_string(),
            |c| assert_eq!(c.cni_version, CniVersion::V1_0_0),
        ),
        // Names may hold '.', '_' and '-' after the first character.
        (
            "t.conf",
            conf("", V4).replace(r#""name":"t""#, r#""name":"a..b_c-d""#),
            |c| assert_eq!(c.name, "a..b_c-d"),
        ),
    ]
}

#[test]
fn valid_configs_parse_to_their_effective_config() {
    for (i, (file, json, check)) in cases().into_iter().enumerate() {
        match load(file, &json) {
            Ok(c) => check(&c),
            Err(e) => panic!("valid case {i} ({file}) refused: {e}\n{json}"),
        }
    }
}

#[test]
fn every_cni_version_is_accepted_in_both_formats() {
    for v in SUPPORTED_VERSIONS {
        let one = conf("", V4).replace(r#""1.0.0""#, &format!("{v:?}"));
        let many = list("", V4).replace(r#""1.0.0""#, &format!("{v:?}"));
        for (file, json) in [("t.conf", one), ("t.conflist", many)] {
            let c = load(file, &json).unwrap_or_else(|e| panic!("{v} {file}: {e}"));
            assert_eq!(c.cni_version.as_str(), v);
            assert_eq!(CniVersion::parse(v), Some(c.cni_version));
            assert_eq!(c.ipam.range_sets, vec![vec![v4_default()]]);
        }
    }
}

#[test]
fn several_sets_per_family_need_0_3_0() {
    let two = r#""ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]"#;
    for v in SUPPORTED_VERSIONS {
        let json = conf("", two).replace(r#""1.0.0""#, &format!("{v:?}"));
        let old = matches!(v, "0.1.0" | "0.2.0");
        assert_eq!(load("t.conf", &json).is_err(), old, "{v}");
    }
}

#[test]
fn chained_plugins_load_and_unknown_types_are_refused() {
    let json = r#"{"cniVersion":"1.0.0","name":"t","plugins":[
        {"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}},
        {"type":"portmap","capabilities":{"portMappings":true}},{"type":"tuning"}]}"#;
    let c = load("t.conflist", json).unwrap();
    assert_eq!(c.chain.portmap, Some(crate::cni::chain::Portmap::default()));
    assert_eq!(c.chain.tuning, Some(crate::cni::chain::Tuning::default()));
    assert_eq!(c.chain.raw.len(), 2);
    let dnsname = json.replace(r#"{"type":"tuning"}"#, r#"{"type":"dnsname"}"#);
    assert_eq!(
        load("t.conflist", &dnsname).unwrap_err().to_string(),
        "t.conflist: plugins[2].type \"dnsname\" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"
    );
}
