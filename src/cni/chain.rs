//! The plugins a conflist chains after `bridge` (or `flannel`), as cnibridge honours them
//! natively: `portmap`, `firewall`, `tuning`, `bandwidth` and `loopback`, with the keys and
//! defaults of the reference plugins (containernetworking/plugins `plugins/meta/*`). Parsed
//! once at network creation and kept in the network record, so the driver applies the same
//! chain after a restart and the export gives CNI runtimes the same plugins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::config::MasqBackend;
use super::json::{integer, render, Obj};
use super::CniError;

/// The plugin types cnibridge runs after the bridge, in the order messages list them.
pub const CHAINABLE: [&str; 5] = ["portmap", "firewall", "tuning", "bandwidth", "loopback"];

/// Keys every plugin object may carry: the runtime's (`name`, `cniVersion`, `runtimeConfig`,
/// `args`) and `capabilities`, which tells the runtime what to put in `runtimeConfig`.
const COMMON_KEYS: [&str; 6] = [
    "type",
    "name",
    "capabilities",
    "cniVersion",
    "runtimeConfig",
    "args",
];
const PORTMAP_KEYS: &[&str] = &[
    "snat",
    "masqAll",
    "markMasqBit",
    "externalSetMarkChain",
    "conditionsV4",
    "conditionsV6",
    "backend",
];
/// `firewalldZone` only matters to the firewalld backend, which cnibridge refuses by name;
/// with the iptables backend the plugin ignores it, and so does cnibridge.
const FIREWALL_KEYS: &[&str] = &[
    "backend",
    "iptablesAdminChainName",
    "ingressPolicy",
    "firewalldZone",
];
/// `dataDir` is where the tuning binary keeps what it must restore; cnibridge keeps that in
/// its own state and ignores the key.
const TUNING_KEYS: &[&str] = &[
    "mac", "mtu", "promisc", "allmulti", "txQLen", "sysctl", "dataDir",
];
const BANDWIDTH_KEYS: &[&str] = &[
    "ingressRate",
    "ingressBurst",
    "egressRate",
    "egressBurst",
    "unshapedSubnets",
    "shapedSubnets",
];
const LOOPBACK_KEYS: &[&str] = &[];

/// The chain after the main plugin. At most one plugin of each type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `None` = the chain has no `portmap`: `docker run -p` is refused on the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap: Option<Portmap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallPlugin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub loopback: bool,
    /// The chained plugin objects as the file has them, in order, so the export keeps keys
    /// cnibridge only accepts (`capabilities`, a plugin's `name`, …) and the file's order.
    #[serde(default)]
    pub raw: Vec<Value>,
    /// The conflist's own keys that are the runtimes' (`nerdctlID`, `nerdctlLabels`,
    /// `disableCheck`, …), not looked at but written back into the export, so a runtime that
    /// shares the network finds what it wrote.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub list_keys: Map<String, Value>,
}

impl Chain {
    /// What a network made from Docker's flags (or recorded before chains were read) does:
    /// publish ports as `portmap` with its defaults would, nothing else.
    pub fn docker_default() -> Chain {
        Chain {
            portmap: Some(Portmap::default()),
            raw: vec![serde_json::json!({
                "type": "portmap",
                "capabilities": {"portMappings": true}
            })],
            ..Chain::default()
        }
    }
}

/// `portmap` (`plugins/meta/portmap`): Docker's `-p` feeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portmap {
    /// `snat` (default true): masquerade hairpin and localhost connections to published ports.
    pub snat: bool,
    /// `masqAll`: masquerade connections to published ports from any source, not only the
    /// container's own subnet and localhost.
    pub masq_all: bool,
    /// `markMasqBit` (default 13): the fwmark bit that asks for masquerade.
    pub mark_masq_bit: u8,
    /// `externalSetMarkChain`: an existing chain that marks for masquerade instead of
    /// cnibridge's own (exclusive with `markMasqBit`).
    pub external_set_mark_chain: Option<String>,
    /// `conditionsV4` / `conditionsV6`: iptables match arguments added to the rules that send
    /// traffic to a container's published ports, one argument per element.
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    /// `backend`: `None` = the daemon's.
    pub backend: Option<MasqBackend>,
}

impl Default for Portmap {
    fn default() -> Self {
        Portmap {
            snat: true,
            masq_all: false,
            mark_masq_bit: 13,
            external_set_mark_chain: None,
            conditions_v4: Vec::new(),
            conditions_v6: Vec::new(),
            backend: None,
        }
    }
}

/// `firewall` (`plugins/meta/firewall`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallPlugin {
    /// `iptablesAdminChainName` (default `CNI-ADMIN`): a chain jumped to before cnibridge's own
    /// rules and never flushed by cnibridge, for the operator's rules.
    pub admin_chain: String,
    /// `ingressPolicy` (default `open`).
    pub ingress_policy: IngressPolicy,
}

impl Default for FirewallPlugin {
    fn default() -> Self {
        FirewallPlugin {
            admin_chain: "CNI-ADMIN".into(),
            ingress_policy: IngressPolicy::Open,
        }
    }
}

/// The firewall plugin's `ingressPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressPolicy {
    /// `open` (or empty): no isolation.
    Open,
    /// `same-bridge`: containers accept connections only from their own bridge (and the host).
    SameBridge,
    /// `isolated`: not even from their own bridge.
    Isolated,
}

impl IngressPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressPolicy::Open => "open",
            IngressPolicy::SameBridge => "same-bridge",
            IngressPolicy::Isolated => "isolated",
        }
    }
}

/// `tuning` (`plugins/meta/tuning`): applied to the container's interface before Docker
/// moves it, and (sysctls) in the sandbox at Join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub promisc: Option<bool>,
    pub allmulti: Option<bool>,
    /// `txQLen`.
    pub tx_qlen: Option<u32>,
    /// `sysctl`: namespace-wide `net.*` keys only (dotted form), written in the sandbox.
    pub sysctl: BTreeMap<String, String>,
}

/// `bandwidth` (`plugins/meta/bandwidth`): rates in bits per second, bursts in bits, as the
/// plugin reads them. A direction is shaped only when both its rate and burst are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Traffic into the container: a TBF qdisc on the host end of the veth.
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    /// Traffic out of the container: redirected from the host end's ingress to an ifb device
    /// carrying a TBF qdisc.
    pub egress_rate: u64,
    pub egress_burst: u64,
}

impl Bandwidth {
    /// Whether any direction is shaped.
    pub fn shapes(&self) -> bool {
        self.ingress_rate > 0 || self.egress_rate > 0
    }
}

/// The plugins after the first of a conflist, parsed as the reference plugins read them;
/// `plugins` are the objects from index 1 on. What cnibridge does not implement is refused
/// here, naming `plugins[i].KEY`, rather than silently not done.
pub(super) fn parse(file: &str, plugins: &[&Map<String, Value>]) -> Result<Chain, CniError> {
    let mut chain = Chain::default();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, map) in plugins.iter().enumerate() {
        let i = n + 1;
        let prefix = format!("plugins[{i}].");
        let o = Obj {
            file,
            prefix: &prefix,
            map,
        };
        let t = o
            .string("type")?
            .ok_or_else(|| o.missing("type", &format!("; use one of {}", CHAINABLE.join(", "))))?;
        let Some(kind) = CHAINABLE.iter().copied().find(|k| *k == t) else {
            return Err(CniError::UnsupportedChained {
                file: file.to_string(),
                key: o.key("type"),
                value: t.to_string(),
            });
        };
        if let Some(first) = seen.insert(kind, i) {
            return Err(CniError::DuplicatePlugin {
                file: file.to_string(),
                key: o.key("type"),
                value: t.to_string(),
                first,
            });
        }
        match kind {
            "portmap" => {
                known_keys(o, kind, PORTMAP_KEYS)?;
                chain.portmap = Some(portmap(o)?);
            }
            "firewall" => {
                known_keys(o, kind, FIREWALL_KEYS)?;
                chain.firewall = Some(firewall(o)?);
            }
            "tuning" => {
                known_keys(o, kind, TUNING_KEYS)?;
                chain.tuning = Some(tuning(o)?);
            }
            "bandwidth" => {
                known_keys(o, kind, BANDWIDTH_KEYS)?;
                chain.bandwidth = Some(bandwidth(o)?);
            }
            _ => {
                known_keys(o, kind, LOOPBACK_KEYS)?;
                chain.loopback = true;
            }
        }
        chain.raw.push(Value::Object((*map).clone()));
    }
    Ok(chain)
}

/// Refuse a key that is neither common nor one of `own`: the Go plugins would ignore it,
/// which for a misspelt key means a setting silently not applied.
fn known_keys(
    o: Obj<'_>,
    plugin: &'static str,
    own: &'static [&'static str],
) -> Result<(), CniError> {
    for (k, v) in o.map {
        if !COMMON_KEYS.contains(&k.as_str()) && !own.contains(&k.as_str()) {
            return Err(CniError::UnknownKey {
                file: o.file.to_string(),
                key: o.key(k),
                value: render(v),
                plugin,
                known: own,
            });
        }
    }
    Ok(())
}

fn portmap(o: Obj<'_>) -> Result<Portmap, CniError> {
    let mut p = Portmap::default();
    if let Some(b) = o.boolean("snat")? {
        p.snat = b;
    }
    p.masq_all = o.boolean("masqAll")?.unwrap_or(false);
    let bit = o.integer("markMasqBit")?;
    p.external_set_mark_chain = o.string("externalSetMarkChain")?.map(str::to_string);
    if bit.is_some() && p.external_set_mark_chain.is_some() {
        return Err(CniError::Conflict {
            file: o.file.to_string(),
            reason: format!(
                "{} and {} cannot both be set (portmap refuses it); keep one",
                o.key("markMasqBit"),
                o.key("externalSetMarkChain")
            ),
        });
    }
    if let Some(b) = bit {
        p.mark_masq_bit =
            u8::try_from(b)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| CniError::Invalid {
                    file: o.file.to_string(),
                    key: o.key("markMasqBit"),
                    value: b.to_string(),
                    reason: "is out of range: use a bit from 0 to 31".into(),
                })?;
    }
    p.conditions_v4 = o.strings("conditionsV4")?;
    p.conditions_v6 = o.strings("conditionsV6")?;
    p.backend = match o.string("backend")? {
        None => None,
        Some("iptables") => Some(MasqBackend::Iptables),
        Some("nftables") => Some(MasqBackend::Nftables),
        Some(s) => {
            return Err(o.invalid(
                "backend",
                &Value::from(s),
                "is not a portmap backend; use iptables or nftables",
            ))
        }
    };
    Ok(p)
}

/// iptables' limit on a chain name (XT_EXTENSION_MAXNAMELEN - 1).
const MAX_CHAIN_NAME: usize = 28;

fn firewall(o: Obj<'_>) -> Result<FirewallPlugin, CniError> {
    let mut f = FirewallPlugin::default();
    match o.string("backend")? {
        None | Some("") | Some("iptables") => {}
        Some(s @ "firewalld") => {
            return Err(o.invalid(
                "backend",
                &Value::from(s),
                "is not implemented: cnibridge implements the firewall plugin's iptables backend; remove the key or set \"iptables\"",
            ))
        }
        Some(s) => {
            return Err(o.invalid(
                "backend",
                &Value::from(s),
                "is not a firewall backend; use iptables",
            ))
        }
    }
    if let Some(name) = o
        .string("iptablesAdminChainName")?
        .filter(|n| !n.is_empty())
    {
        if name.len() > MAX_CHAIN_NAME || name.chars().any(|c| c.is_whitespace()) {
            return Err(o.invalid(
                "iptablesAdminChainName",
                &Value::from(name),
                "is not an iptables chain name: 1 to 28 characters, no spaces",
            ));
        }
        f.admin_chain = name.to_string();
    }
    f.ingress_policy = match o.string("ingressPolicy")? {
        None | Some("") | Some("open") => IngressPolicy::Open,
        Some("same-bridge") => IngressPolicy::SameBridge,
        Some("isolated") => IngressPolicy::Isolated,
        Some(s) => {
            return Err(o.invalid(
                "ingressPolicy",
                &Value::from(s),
                "is not an ingress policy; use open, same-bridge or isolated",
            ))
        }
    };
    Ok(f)
}

fn tuning(o: Obj<'_>) -> Result<Tuning, CniError> {
    let mut t = Tuning::default();
    if let Some(s) = o.string("mac")?.filter(|s| !s.is_empty()) {
        t.mac = Some(mac(o, s)?);
    }
    // The plugin's `mtu` is a Go int with omitempty: 0 means "leave it".
    if let Some(n) = o.integer("mtu")?.filter(|n| *n != 0) {
        let m = u32::try_from(n)
            .ok()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| CniError::Invalid {
                file: o.file.to_string(),
                key: o.key("mtu"),
                value: n.to_string(),
                reason: "is out of range: use 68 to 65535, or leave it out".into(),
            })?;
        t.mtu = Some(m);
    }
    // `promisc` is a plain bool in the plugin: false is "leave it", so only true is kept.
    t.promisc = o.boolean("promisc")?.filter(|b| *b);
    t.allmulti = o.boolean("allmulti")?;
    if let Some(n) = o.integer("txQLen")? {
        let q = u32::try_from(n).map_err(|_| CniError::Invalid {
            file: o.file.to_string(),
            key: o.key("txQLen"),
            value: n.to_string(),
            reason: "is out of range: use 0 to 4294967295".into(),
        })?;
        t.tx_qlen = Some(q);
    }
    if let Some(map) = o.object("sysctl")? {
        for (k, v) in map {
            let key = o.key(&format!("sysctl.{k}"));
            let Value::String(val) = v else {
                return Err(super::json::wrong_type(o.file, key, "a string", v));
            };
            let dotted = sysctl_key(o, &key, k, val)?;
            if t.sysctl.insert(dotted.clone(), val.clone()).is_some() {
                return Err(CniError::Conflict {
                    file: o.file.to_string(),
                    reason: format!(
                        "{} names sysctl {dotted} twice (dotted and slash form); keep one",
                        o.key("sysctl")
                    ),
                });
            }
        }
    }
    Ok(t)
}

/// A tuning sysctl key in dotted form, if it is one cnibridge can write: `net.*` (the tuning
/// plugin's own rule) and not scoped to one interface.
fn sysctl_key(o: Obj<'_>, key: &str, raw: &str, value: &str) -> Result<String, CniError> {
    let dotted = raw.replace('/', ".");
    let parts: Vec<&str> = dotted.split('.').collect();
    if parts.len() < 2 || parts[0] != "net" || parts.iter().any(|p| p.is_empty()) {
        return Err(CniError::Invalid {
            file: o.file.to_string(),
            key: key.to_string(),
            value: render(&Value::from(value)),
            reason: "is not a network sysctl; the tuning plugin writes only net.* keys (like net.core.somaxconn)".into(),
        });
    }
    let scoped = parts.len() >= 5
        && matches!(parts[1], "ipv4" | "ipv6")
        && matches!(parts[2], "conf" | "neigh")
        && !matches!(parts[3], "all" | "default");
    if scoped {
        return Err(CniError::InterfaceSysctl {
            file: o.file.to_string(),
            key: key.to_string(),
            sysctl: dotted,
            value: value.to_string(),
        });
    }
    Ok(dotted)
}

/// Six hex octets separated by ':' or '-'; a multicast address, which the kernel refuses on
/// an Ethernet interface, is refused here.
fn mac(o: Obj<'_>, s: &str) -> Result<[u8; 6], CniError> {
    let bad = |reason: &str| o.invalid("mac", &Value::from(s), reason);
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut out = [0u8; 6];
    let mut parts = s.split(sep);
    for b in out.iter_mut() {
        let p = parts.next().unwrap_or("");
        if p.len() != 2 {
            return Err(bad(
                "is not a MAC address; use six hex octets like 02:42:ac:11:00:02",
            ));
        }
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| bad("is not a MAC address; use six hex octets like 02:42:ac:11:00:02"))?;
    }
    if parts.next().is_some() {
        return Err(bad(
            "is not a MAC address; use six hex octets like 02:42:ac:11:00:02",
        ));
    }
    if out[0] & 1 == 1 {
        return Err(bad(
            "is a multicast address, which an Ethernet interface cannot take; clear the lowest bit of the first octet",
        ));
    }
    Ok(out)
}

/// The bandwidth plugin's limit: a burst is kept in bytes in a u32.
const MAX_BURST_BYTES: u64 = u32::MAX as u64;

fn bandwidth(o: Obj<'_>) -> Result<Bandwidth, CniError> {
    let get = |key: &str| -> Result<u64, CniError> {
        match o.get(key) {
            None => Ok(0),
            Some(v) => integer(v)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| o.wrong_type(key, "a non-negative integer", v)),
        }
    };
    let b = Bandwidth {
        ingress_rate: get("ingressRate")?,
        ingress_burst: get("ingressBurst")?,
        egress_rate: get("egressRate")?,
        egress_burst: get("egressBurst")?,
    };
    for (rate_key, rate, burst_key, burst) in [
        (
            "ingressRate",
            b.ingress_rate,
            "ingressBurst",
            b.ingress_burst,
        ),
        ("egressRate", b.egress_rate, "egressBurst", b.egress_burst),
    ] {
        let missing = match (rate, burst) {
            (r, 0) if r != 0 => Some((rate_key, rate, burst_key)),
            (0, b) if b != 0 => Some((burst_key, burst, rate_key)),
            _ => None,
        };
        if let Some((set, v, other)) = missing {
            return Err(CniError::Invalid {
                file: o.file.to_string(),
                key: o.key(set),
                value: v.to_string(),
                reason: format!(
                    "is set without {}; the bandwidth plugin needs both (rates in bits per second, bursts in bits)",
                    o.key(other)
                ),
            });
        }
        if burst / 8 >= MAX_BURST_BYTES {
            return Err(CniError::Invalid {
                file: o.file.to_string(),
                key: o.key(burst_key),
                value: burst.to_string(),
                reason:
                    "is too large: the bandwidth plugin takes bursts below 4 GB (34359738360 bits)"
                        .into(),
            });
        }
    }
    for key in ["unshapedSubnets", "shapedSubnets"] {
        if let Some(v) = o.array(key)?.filter(|a| !a.is_empty()) {
            return Err(o.invalid(
                key,
                &Value::Array(v.clone()),
                "is not implemented by cnibridge, which shapes all of a container's traffic; remove it",
            ));
        }
    }
    Ok(b)
}
