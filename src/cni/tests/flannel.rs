//! flannel as the first plugin: the bridge config flannel-io/cni-plugin would delegate to,
//! from a subnet file the test writes (flanneld is not running), and its refusals.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::export::round_trip;
use super::load;
use crate::cni::chain::{Bandwidth, Portmap};
use crate::cni::flannel::{FlannelSource, DEFAULT_DATA_DIR};
use crate::cni::{NetConf, RangeConf, RouteConf};

const K3S_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A temp dir holding `subnet.env` with `env`.
fn subnet_env(env: &str) -> (TempDir, PathBuf) {
    let d = TempDir::new().unwrap();
    let p = d.path().join("subnet.env");
    fs::write(&p, env).unwrap();
    (d, p)
}

/// k3s' conflist with `subnetFile` pointing at `env` (the one change the runtimes README names).
fn k3s(env: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs/runtimes/10-flannel.conflist");
    let text = fs::read_to_string(path).unwrap();
    let with = format!(
        r#""type":"flannel","subnetFile":{:?},"#,
        env.display().to_string()
    );
    assert!(text.contains(r#""type":"flannel","#));
    text.replacen(r#""type":"flannel","#, &with, 1)
}

fn flannel_list(plugin: &str) -> String {
    format!(r#"{{"cniVersion":"1.0.0","name":"fl","plugins":[{{"type":"flannel"{plugin}}}]}}"#)
}

#[test]
fn k3s_flannel_becomes_the_bridge_flannel_delegates_to() {
    let (_d, env) = subnet_env(K3S_ENV);
    let c = load("10-flannel.conflist", &k3s(&env)).unwrap();
    assert_eq!((c.name.as_str(), c.bridge.as_str()), ("cbr0", "cni0"));
    assert_eq!(c.mtu, 1450);
    // flanneld masquerades (FLANNEL_IPMASQ=true), so the bridge does not.
    assert!(!c.ip_masq);
    assert!(c.is_gateway && c.is_default_gateway && c.hairpin_mode && c.force_address);
    let r = RangeConf {
        subnet: "10.42.0.0/24".parse().unwrap(),
        range_start: "10.42.0.1".parse().unwrap(),
        range_end: "10.42.0.254".parse().unwrap(),
        gateway: "10.42.0.1".parse().unwrap(),
    };
    assert_eq!(c.ipam.range_sets, vec![vec![r]]);
    assert_eq!(
        c.ipam.routes,
        [RouteConf {
            dst: "10.42.0.0/16".parse().unwrap(),
            gw: None
        }]
    );
    assert_eq!(c.chain.portmap, Some(Portmap::default()));
    assert_eq!(c.chain.bandwidth, Some(Bandwidth::default()));
    assert!(c.chain.firewall.is_none() && c.chain.tuning.is_none());
    assert_eq!(
        c.origin.flannel,
        Some(FlannelSource {
            subnet_file: env.clone(),
            data_dir: DEFAULT_DATA_DIR.into(),
        })
    );
    // The export is the bridge flannel expanded to, with the chain after it.
    round_trip(&c);
}

#[test]
fn delegate_keys_win_and_flannel_fills_the_rest() {
    let (_d, env) = subnet_env(
        "FLANNEL_NETWORK=10.42.0.0/16,10.43.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_IPV6_NETWORK=fd42::/56\nFLANNEL_IPV6_SUBNET=fd42:0:0:7::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
    );
    let plugin = format!(
        r#","subnetFile":{:?},"dataDir":"/tmp/fl","ipam":{{"routes":[{{"dst":"192.168.0.0/16"}}]}},"delegate":{{"bridge":"fl0","mtu":1300,"ipMasq":false,"isGateway":false}}"#,
        env.display().to_string()
    );
    let c = load("fl.conflist", &flannel_list(&plugin)).unwrap();
    assert_eq!(
        (c.bridge.as_str(), c.mtu, c.ip_masq, c.is_gateway),
        ("fl0", 1300, false, false)
    );
    let subnets: Vec<String> = c
        .ipam
        .range_sets
        .iter()
        .map(|s| s[0].subnet.to_string())
        .collect();
    assert_eq!(subnets, ["10.42.7.0/24", "fd42:0:0:7::/64"]);
    let dsts: Vec<String> = c.ipam.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(
        dsts,
        [
            "192.168.0.0/16",
            "10.42.0.0/16",
            "10.43.0.0/16",
            "fd42::/56"
        ]
    );
    assert_eq!(
        c.origin.flannel.as_ref().unwrap().data_dir,
        PathBuf::from("/tmp/fl")
    );
    // Without delegate keys: FLANNEL_IPMASQ=false means the bridge masquerades.
    let plugin = format!(r#","subnetFile":{:?}"#, env.display().to_string());
    let c = load("fl.conflist", &flannel_list(&plugin)).unwrap();
    assert!(c.ip_masq && c.is_gateway);
    assert_eq!((c.bridge.as_str(), c.mtu), ("cni0", 1400));
    // A single .conf works too.
    let one = format!(r#"{{"cniVersion":"0.3.1","name":"fl","type":"flannel"{plugin}}}"#);
    let c: NetConf = load("fl.conf", &one).unwrap();
    assert_eq!(c.mtu, 1400);
    assert_eq!(c.origin.prefix(), "delegate.");
}

#[test]
fn flannel_refusals_say_what_to_do() {
    let (d, env) = subnet_env(K3S_ENV);
    let missing = d.path().join("absent.env");
    let at = |p: &Path| format!(r#","subnetFile":{:?}"#, p.display().to_string());
    let err = |plugin: String| {
        load("fl.conflist", &flannel_list(&plugin))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(at(&missing)),
        format!(
            "fl.conflist: cannot read flannel's subnet file {}: No such file or directory (os error 2); is flanneld running on this host? If it writes the file elsewhere, set plugins[0].subnetFile to that path",
            missing.display()
        )
    );
    let partial = d.path().join("partial.env");
    fs::write(&partial, "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_MTU=1450\n").unwrap();
    assert_eq!(
        err(at(&partial)),
        format!(
            "fl.conflist: flannel's subnet file {} lacks FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ; is flanneld running and done writing it?",
            partial.display()
        )
    );
    let garbled = d.path().join("garbled.env");
    fs::write(&garbled, K3S_ENV.replace("10.42.0.1/24", "10.42.0.1")).unwrap();
    assert_eq!(
        err(at(&garbled)),
        format!(
            "fl.conflist: flannel's subnet file {} has FLANNEL_SUBNET=10.42.0.1, which is not a CIDR; restart flanneld to rewrite it",
            garbled.display()
        )
    );
    let ok = at(&env);
    assert_eq!(
        err(format!(r#"{ok},"delegate":{{"type":"ipvlan"}}"#)),
        r#"fl.conflist: plugins[0].delegate.type "ipvlan" is not implemented by cnibridge (supported: bridge, flannel)"#
    );
    assert_eq!(
        err(format!(r#"{ok},"delegate":{{"ipam":{{}}}}"#)),
        "fl.conflist: plugins[0].delegate.ipam {} cannot be set: flannel sets the delegate's ipam itself; remove it (put ipam keys in the flannel plugin's own ipam)"
    );
    // Delegate keys go through the bridge's own checks, named as the file spells them.
    assert_eq!(
        err(format!(r#"{ok},"delegate":{{"mtu":"big"}}"#)),
        r#"fl.conflist: plugins[0].delegate.mtu must be an integer, got "big""#
    );
}
