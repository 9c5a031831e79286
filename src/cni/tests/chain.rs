//! The chain after the bridge: the runtimes' default conflists (cni-confs/runtimes/) load with
//! the chain they declare, every chained key reads as the reference plugin reads it, and what
//! cnibridge does not implement is refused with the exact text `docker network create` gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::export::round_trip;
use super::{list, load, V4};
use crate::cni::chain::{
    Bandwidth, Chain, FirewallPlugin, IngressPolicy, MasqBackend, Portmap, Tuning,
};
use crate::cni::NetConf;

fn runtimes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs/runtimes")
}

fn runtime(file: &str) -> NetConf {
    crate::cni::dir::load_file(&runtimes().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A conflist `t` on 10.1.0.0/24 with `chained` (JSON plugin objects) after the bridge.
fn chained(chained: &str) -> String {
    list("", V4).replace("}]}", &format!("}},{chained}]}}"))
}

fn chain_of(chained_json: &str) -> Chain {
    load("t.conflist", &chained(chained_json))
        .unwrap_or_else(|e| panic!("{chained_json}: {e}"))
        .chain
}

#[test]
fn containerd_default_chains_portmap() {
    let c = runtime("10-containerd-net.conflist");
    assert_eq!(
        (c.name.as_str(), c.bridge.as_str()),
        ("containerd-net", "cni0")
    );
    assert!(c.is_gateway && c.ip_masq && c.promisc_mode);
    assert_eq!(c.chain.portmap, Some(Portmap::default()));
    assert_eq!(
        (c.chain.firewall.is_none(), c.chain.tuning.is_none()),
        (true, true)
    );
    assert!(c.chain.bandwidth.is_none() && !c.chain.loopback);
    assert_eq!(
        c.chain.raw,
        [serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})]
    );
    round_trip(&c);
}

#[test]
fn nerdctl_default_chains_portmap_firewall_same_bridge_and_tuning() {
    // nerdctlID and nerdctlLabels are nerdctl's list-level keys: not looked at, but kept for
    // the export (the round trip below reads them back), where nerdctl finds them again.
    let c = runtime("nerdctl-bridge.conflist");
    assert_eq!((c.name.as_str(), c.bridge.as_str()), ("bridge", "nerdctl0"));
    assert!(c.hairpin_mode && c.ip_masq && c.is_gateway);
    let want = Chain {
        portmap: Some(Portmap::default()),
        firewall: Some(FirewallPlugin {
            admin_chain: "CNI-ADMIN".into(),
            ingress_policy: IngressPolicy::SameBridge,
        }),
        tuning: Some(Tuning::default()),
        bandwidth: None,
        loopback: false,
        raw: c.chain.raw.clone(),
        list_keys: serde_json::json!({
            "nerdctlID": "17f29b073143d8cd97b5bbe492bdeffec1c5fee55cc1fe2112c8b9335f8b6121",
            "nerdctlLabels": {"nerdctl/default-network": "true"}
        })
        .as_object()
        .cloned()
        .unwrap(),
    };
    assert_eq!(c.chain, want);
    let types: Vec<&str> = c
        .chain
        .raw
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["portmap", "firewall", "tuning"]);
    round_trip(&c);
}

#[test]
fn podman_default_chains_portmap_firewall_iptables_and_tuning() {
    let c = runtime("87-podman-bridge.conflist");
    assert_eq!(
        (c.name.as_str(), c.bridge.as_str()),
        ("podman", "cni-podman0")
    );
    assert_eq!(c.chain.portmap, Some(Portmap::default()));
    assert_eq!(c.chain.firewall, Some(FirewallPlugin::default()));
    assert_eq!(c.chain.tuning, Some(Tuning::default()));
    assert_eq!(
        c.chain.raw[1],
        serde_json::json!({"type": "firewall", "backend": "iptables"})
    );
    round_trip(&c);
}

#[test]
fn crio_default_has_no_chain() {
    let c = runtime("11-crio-ipv4-bridge.conflist");
    assert_eq!((c.name.as_str(), c.bridge.as_str()), ("crio", "cni0"));
    assert!(c.hairpin_mode);
    // No portmap: `docker run -p` is refused on such a network.
    assert_eq!(c.chain, Chain::default());
    round_trip(&c);
}

#[test]
fn every_chained_key_reads_as_the_reference_plugin_reads_it() {
    let c = chain_of(
        r#"{"type":"portmap","snat":false,"masqAll":true,"markMasqBit":5,
            "conditionsV4":["-s","10.0.0.0/8"],"conditionsV6":["!","-d","fd00::/8"],"backend":"nftables"}"#,
    );
    assert_eq!(
        c.portmap,
        Some(Portmap {
            snat: false,
            masq_all: true,
            mark_masq_bit: 5,
            external_set_mark_chain: None,
            conditions_v4: vec!["-s".into(), "10.0.0.0/8".into()],
            conditions_v6: vec!["!".into(), "-d".into(), "fd00::/8".into()],
            backend: Some(MasqBackend::Nftables),
        })
    );
    let c = chain_of(r#"{"type":"portmap","externalSetMarkChain":"KUBE-MARK-MASQ"}"#);
    let p = c.portmap.unwrap();
    assert_eq!(p.external_set_mark_chain.as_deref(), Some("KUBE-MARK-MASQ"));
    assert_eq!((p.snat, p.mark_masq_bit), (true, 13));
    let c = chain_of(
        r#"{"type":"firewall","iptablesAdminChainName":"MY-ADMIN","ingressPolicy":"isolated","firewalldZone":"trusted"}"#,
    );
    assert_eq!(
        c.firewall,
        Some(FirewallPlugin {
            admin_chain: "MY-ADMIN".into(),
            ingress_policy: IngressPolicy::Isolated,
        })
    );
    assert_eq!(
        chain_of(r#"{"type":"firewall","ingressPolicy":""}"#).firewall,
        Some(FirewallPlugin::default())
    );
    let c = chain_of(
        r#"{"type":"tuning","mac":"02:42:AC:11:00:02","mtu":1400,"promisc":true,"allmulti":false,"txQLen":2000,
            "dataDir":"/run/cni/tuning","sysctl":{"net.core.somaxconn":"500","net/ipv4/ip_forward":"1",
            "net.ipv4.conf.all.arp_filter":"1","net.ipv6.conf.default.accept_ra":"0"}}"#,
    );
    let sysctl: BTreeMap<String, String> = [
        ("net.core.somaxconn", "500"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.arp_filter", "1"),
        ("net.ipv6.conf.default.accept_ra", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        c.tuning,
        Some(Tuning {
            mac: Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            mtu: Some(1400),
            promisc: Some(true),
            allmulti: Some(false),
            tx_qlen: Some(2000),
            sysctl,
        })
    );
    // The plugin's zero values mean "leave it".
    let t = chain_of(r#"{"type":"tuning","mtu":0,"promisc":false,"mac":""}"#)
        .tuning
        .unwrap();
    assert_eq!(t, Tuning::default());
    let c = chain_of(
        r#"{"type":"bandwidth","ingressRate":1000000,"ingressBurst":8000,"egressRate":2000000,"egressBurst":16000,"unshapedSubnets":[]}"#,
    );
    assert_eq!(
        c.bandwidth,
        Some(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 8000,
            egress_rate: 2_000_000,
            egress_burst: 16000,
        })
    );
    // k3s' bandwidth has only capabilities: runtimeConfig carries the rates per container.
    assert_eq!(
        chain_of(r#"{"type":"bandwidth","capabilities":{"bandwidth":true}}"#).bandwidth,
        Some(Bandwidth::default())
    );
    let c = chain_of(
        r#"{"type":"loopback","name":"lo","cniVersion":"1.0.0","args":{},"runtimeConfig":{}}"#,
    );
    assert!(c.loopback);
    // Every common key of a plugin object is accepted on each type.
    for t in ["portmap", "firewall", "tuning", "bandwidth", "loopback"] {
        chain_of(&format!(
            r#"{{"type":"{t}","name":"x","cniVersion":"1.0.0","capabilities":{{}},"runtimeConfig":{{}},"args":{{}}}}"#
        ));
    }
}

#[test]
fn chained_configs_survive_export() {
    let c = load(
        "t.conflist",
        &chained(
            r#"{"type":"portmap","capabilities":{"portMappings":true},"snat":false},
               {"type":"firewall","ingressPolicy":"same-bridge"},
               {"type":"tuning","sysctl":{"net.core.somaxconn":"500"}},
               {"type":"bandwidth","ingressRate":1000,"ingressBurst":800},{"type":"loopback"}"#,
        ),
    )
    .unwrap();
    assert_eq!(c.chain.raw.len(), 5);
    round_trip(&c);
    let text = crate::cni::export::render(&c, Path::new("/d")).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["plugins"][1]["snat"], serde_json::json!(false));
    assert_eq!(back["plugins"][5]["type"], "loopback");
    // A network from Docker's flags exports portmap after the bridge.
    let mut c = c;
    c.chain = Chain::docker_default();
    let text = crate::cni::export::render(&c, Path::new("/d")).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        back["plugins"][1],
        serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})
    );
}

#[test]
fn what_cnibridge_does_not_implement_is_refused_naming_the_key() {
    let err = |p: &str| {
        load("t.conflist", &chained(p))
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|e| e.to_string())
    };
    let cases = [
        (r#"{"type":"dnsname","domainName":"dns.podman"}"#, r#"t.conflist: plugins[1].type "dnsname" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"#),
        (r#"{"type":"cilium-cni"}"#, r#"t.conflist: plugins[1].type "cilium-cni" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"#),
        (r#"{"type":"portmap"},{"type":"tuning"},{"type":"portmap","snat":false}"#, r#"t.conflist: plugins[3].type "portmap" is listed twice (also plugins[1]); cnibridge runs each chained plugin once: merge their keys into one"#),
        (r#"{"type":"portmap","snatt":false}"#, "t.conflist: plugins[1].snatt false is not a portmap key cnibridge knows (known: snat, masqAll, markMasqBit, externalSetMarkChain, conditionsV4, conditionsV6, backend); remove it"),
        (r#"{"type":"tuning","sysctls":{}}"#, "t.conflist: plugins[1].sysctls {} is not a tuning key cnibridge knows (known: mac, mtu, promisc, allmulti, txQLen, sysctl, dataDir); remove it"),
        (r#"{"type":"loopback","x":1}"#, "t.conflist: plugins[1].x 1 is not a loopback key cnibridge knows (loopback takes only type, name, capabilities, cniVersion, runtimeConfig and args); remove it"),
        (r#"{"type":"firewall","backend":"firewalld"}"#, r#"t.conflist: plugins[1].backend "firewalld" is not implemented: cnibridge implements the firewall plugin's iptables backend; remove the key or set "iptables""#),
        (r#"{"type":"firewall","backend":"pf"}"#, r#"t.conflist: plugins[1].backend "pf" is not a firewall backend; use iptables"#),
        (r#"{"type":"firewall","ingressPolicy":"closed"}"#, r#"t.conflist: plugins[1].ingressPolicy "closed" is not an ingress policy; use open, same-bridge or isolated"#),
        (r#"{"type":"firewall","iptablesAdminChainName":"A CHAIN"}"#, r#"t.conflist: plugins[1].iptablesAdminChainName "A CHAIN" is not an iptables chain name: 1 to 28 characters, no spaces"#),
        (r#"{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.arp_filter":"1"}}"#, r#"t.conflist: plugins[1].sysctl.net.ipv4.conf.eth0.arp_filter "net.ipv4.conf.eth0.arp_filter" is scoped to interface "eth0", and cnibridge applies tuning sysctls to the whole container namespace without knowing the interface name Docker gives the container; set it per container with `docker run --sysctl net.ipv4.conf.eth0.arp_filter=1` or, with Docker 27+, per endpoint with `--network name=NETWORK,driver-opt=com.docker.network.endpoint.sysctls=net.ipv4.conf.IFNAME.arp_filter=1`, and remove it from the config"#),
        (r#"{"type":"tuning","sysctl":{"net/ipv6/conf/IFNAME/accept_ra":"0"}}"#, r#"t.conflist: plugins[1].sysctl.net/ipv6/conf/IFNAME/accept_ra "net.ipv6.conf.IFNAME.accept_ra" is scoped to interface "IFNAME", and cnibridge applies tuning sysctls to the whole container namespace without knowing the interface name Docker gives the container; set it per container with `docker run --sysctl net.ipv6.conf.eth0.accept_ra=0` or, with Docker 27+, per endpoint with `--network name=NETWORK,driver-opt=com.docker.network.endpoint.sysctls=net.ipv6.conf.IFNAME.accept_ra=0`, and remove it from the config"#),
        (r#"{"type":"tuning","sysctl":{"net.ipv4.neigh.eth0.gc_stale_time":"60"}}"#, r#"t.conflist: plugins[1].sysctl.net.ipv4.neigh.eth0.gc_stale_time "net.ipv4.neigh.eth0.gc_stale_time" is scoped to interface "eth0", and cnibridge applies tuning sysctls to the whole container namespace without knowing the interface name Docker gives the container; set it per container with `docker run --sysctl net.ipv4.neigh.eth0.gc_stale_time=60` or, with Docker 27+, per endpoint with `--network name=NETWORK,driver-opt=com.docker.network.endpoint.sysctls=net.ipv4.neigh.IFNAME.gc_stale_time=60`, and remove it from the config"#),
        (r#"{"type":"tuning","sysctl":{"kernel.shmmax":"1"}}"#, r#"t.conflist: plugins[1].sysctl.kernel.shmmax "1" is not a network sysctl; the tuning plugin writes only net.* keys (like net.core.somaxconn)"#),
        (r#"{"type":"tuning","sysctl":{"net.core.somaxconn":500}}"#, "t.conflist: plugins[1].sysctl.net.core.somaxconn must be a string, got 500"),
        (r#"{"type":"tuning","sysctl":{"net.core.somaxconn":"5","net/core/somaxconn":"6"}}"#, "t.conflist: plugins[1].sysctl names sysctl net.core.somaxconn twice (dotted and slash form); keep one"),
        (r#"{"type":"tuning","mac":"02:42:ac:11:00"}"#, r#"t.conflist: plugins[1].mac "02:42:ac:11:00" is not a MAC address; use six hex octets like 02:42:ac:11:00:02"#),
        (r#"{"type":"tuning","mac":"02:42:ac:11:00:zz"}"#, r#"t.conflist: plugins[1].mac "02:42:ac:11:00:zz" is not a MAC address; use six hex octets like 02:42:ac:11:00:02"#),
        (r#"{"type":"tuning","mac":"01:00:5e:00:00:01"}"#, r#"t.conflist: plugins[1].mac "01:00:5e:00:00:01" is a multicast address, which an Ethernet interface cannot take; clear the lowest bit of the first octet"#),
        (r#"{"type":"tuning","mtu":20}"#, "t.conflist: plugins[1].mtu 20 is out of range: use 68 to 65535, or leave it out"),
        (r#"{"type":"tuning","txQLen":-1}"#, "t.conflist: plugins[1].txQLen -1 is out of range: use 0 to 4294967295"),
        (r#"{"type":"portmap","markMasqBit":32}"#, "t.conflist: plugins[1].markMasqBit 32 is out of range: use a bit from 0 to 31"),
        (r#"{"type":"portmap","markMasqBit":13,"externalSetMarkChain":"X"}"#, "t.conflist: plugins[1].markMasqBit and plugins[1].externalSetMarkChain cannot both be set (portmap refuses it); keep one"),
        (r#"{"type":"portmap","backend":"pf"}"#, r#"t.conflist: plugins[1].backend "pf" is not a portmap backend; use iptables or nftables"#),
        (r#"{"type":"portmap","conditionsV4":"-s 10.0.0.0/8"}"#, r#"t.conflist: plugins[1].conditionsV4 must be an array, got "-s 10.0.0.0/8""#),
        (r#"{"type":"bandwidth","ingressRate":1000}"#, "t.conflist: plugins[1].ingressRate 1000 is set without plugins[1].ingressBurst; the bandwidth plugin needs both (rates in bits per second, bursts in bits)"),
        (r#"{"type":"bandwidth","egressBurst":1000}"#, "t.conflist: plugins[1].egressBurst 1000 is set without plugins[1].egressRate; the bandwidth plugin needs both (rates in bits per second, bursts in bits)"),
        (r#"{"type":"bandwidth","egressRate":1,"egressBurst":34359738360}"#, "t.conflist: plugins[1].egressBurst 34359738360 is too large: the bandwidth plugin takes bursts below 4 GB (34359738360 bits)"),
        (r#"{"type":"bandwidth","ingressRate":-5}"#, "t.conflist: plugins[1].ingressRate must be a non-negative integer, got -5"),
        (r#"{"type":"bandwidth","shapedSubnets":["10.0.0.0/8"]}"#, r#"t.conflist: plugins[1].shapedSubnets ["10.0.0.0/8"] is not implemented by cnibridge, which shapes all of a container's traffic; remove it"#),
        (r#"{"capabilities":{}}"#, "t.conflist: plugins[1].type is missing; use one of portmap, firewall, tuning, bandwidth, loopback"),
    ];
    for (plugins, want) in cases {
        assert_eq!(err(plugins), want, "{plugins}");
    }
}
