//! A `flannel` plugin config turned into the `bridge` config the flannel CNI plugin
//! (flannel-io/cni-plugin) would hand to its delegate: flanneld's `subnet.env` gives the
//! node's subnet, the overlay's networks, the MTU and whether flanneld masquerades, and the
//! `delegate` object's keys win over what flannel derives. The result is then parsed as any
//! bridge config. Unlike the rest of the model this reads a file (the subnet file), because
//! that is where flannel's config lives.

use std::fs;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::json::Obj;
use super::CniError;

/// flannel's defaults (`defaultSubnetFile`, `defaultDataDir`).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// Where a network's config came from flannel: recorded, not needed to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelSource {
    pub subnet_file: PathBuf,
    /// Where the flannel binary keeps each container's delegate config; cnibridge keeps its
    /// own state and never writes there.
    pub data_dir: PathBuf,
}

/// What flanneld wrote to its subnet file.
#[derive(Debug, Default)]
struct SubnetEnv {
    networks: Vec<IpNet>,
    subnet: Option<IpNet>,
    ip6_networks: Vec<IpNet>,
    ip6_subnet: Option<IpNet>,
    mtu: Option<u32>,
    ipmasq: Option<bool>,
}

/// The bridge plugin object the flannel plugin object `o` stands for, and where it came from.
pub(super) fn delegate(o: Obj<'_>) -> Result<(Map<String, Value>, FlannelSource), CniError> {
    let nonempty = |key| -> Result<Option<&str>, CniError> {
        Ok(o.string(key)?.filter(|s: &&str| !s.is_empty()))
    };
    let source = FlannelSource {
        subnet_file: PathBuf::from(nonempty("subnetFile")?.unwrap_or(DEFAULT_SUBNET_FILE)),
        data_dir: PathBuf::from(nonempty("dataDir")?.unwrap_or(DEFAULT_DATA_DIR)),
    };
    let mut d = o.object("delegate")?.cloned().unwrap_or_default();
    let dkey = |k: &str| o.key(&format!("delegate.{k}"));
    match d.get("type") {
        None | Some(Value::Null) => {
            d.insert("type".into(), Value::from("bridge"));
        }
        Some(Value::String(t)) if t == "bridge" => {}
        Some(Value::String(t)) => {
            return Err(CniError::UnsupportedPlugin {
                file: o.file.to_string(),
                key: dkey("type"),
                value: t.clone(),
            })
        }
        Some(v) => return Err(super::json::wrong_type(o.file, dkey("type"), "a string", v)),
    }
    // flannel refuses both: it sets them itself.
    for k in ["name", "ipam"] {
        if let Some(v) = d.get(k) {
            return Err(CniError::Invalid {
                file: o.file.to_string(),
                key: dkey(k),
                value: super::json::render(v),
                reason: format!("cannot be set: flannel sets the delegate's {k} itself; remove it (put ipam keys in the flannel plugin's own ipam)"),
            });
        }
    }
    let env = read_env(o, &source)?;
    if !d.contains_key("ipMasq") {
        // flannel masquerades itself when FLANNEL_IPMASQ is true; then the bridge must not.
        d.insert("ipMasq".into(), Value::Bool(!env.ipmasq.unwrap_or(false)));
    }
    if !d.contains_key("mtu") {
        d.insert("mtu".into(), Value::from(env.mtu.unwrap_or(0)));
    }
    if !d.contains_key("isGateway") {
        d.insert("isGateway".into(), Value::Bool(true));
    }
    let mut ipam = o.object("ipam")?.cloned().unwrap_or_default();
    ipam.entry("type")
        .or_insert_with(|| Value::from("host-local"));
    let ranges: Vec<Value> = [env.subnet, env.ip6_subnet]
        .into_iter()
        .flatten()
        .map(|s| json!([{ "subnet": s.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.remove("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(super::json::wrong_type(
                o.file,
                o.key("ipam.routes"),
                "an array",
                &v,
            ))
        }
    };
    routes.extend(
        env.networks
            .iter()
            .chain(&env.ip6_networks)
            .map(|n| json!({ "dst": n.to_string() })),
    );
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Ok((d, source))
}

/// flannel's `loadFlannelSubnetEnv`: `KEY=VALUE` lines, CIDRs taken as their network (Go's
/// `net.ParseCIDR`), every item required except that one family may be absent.
fn read_env(o: Obj<'_>, source: &FlannelSource) -> Result<SubnetEnv, CniError> {
    let path = &source.subnet_file;
    let text = fs::read_to_string(path).map_err(|e| CniError::FlannelSubnetFile {
        file: o.file.to_string(),
        key: o.key("subnetFile"),
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let bad = |reason: String| CniError::FlannelSubnetEnv {
        file: o.file.to_string(),
        path: path.clone(),
        reason,
    };
    let cidr = |key: &str, v: &str| -> Result<IpNet, CniError> {
        v.trim().parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
            bad(format!(
                "has {key}={v}, which is not a CIDR; restart flanneld to rewrite it"
            ))
        })
    };
    let mut env = SubnetEnv::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            // flanneld writes several networks comma-separated.
            "FLANNEL_NETWORK" => {
                env.networks = v.split(',').map(|n| cidr(k, n)).collect::<Result<_, _>>()?
            }
            "FLANNEL_IPV6_NETWORK" => {
                env.ip6_networks = v.split(',').map(|n| cidr(k, n)).collect::<Result<_, _>>()?
            }
            "FLANNEL_SUBNET" => env.subnet = Some(cidr(k, v)?),
            "FLANNEL_IPV6_SUBNET" => env.ip6_subnet = Some(cidr(k, v)?),
            "FLANNEL_MTU" => {
                env.mtu = Some(v.trim().parse().map_err(|_| {
                    bad(format!(
                    "has FLANNEL_MTU={v}, which is not a number; restart flanneld to rewrite it"
                ))
                })?)
            }
            "FLANNEL_IPMASQ" => env.ipmasq = Some(v == "true"),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if env.networks.is_empty() && env.ip6_networks.is_empty() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if env.subnet.is_none() && env.ip6_subnet.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if env.mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if env.ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(bad(format!(
            "lacks {}; is flanneld running and done writing it?",
            missing.join(", ")
        )));
    }
    Ok(env)
}
