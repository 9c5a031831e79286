//! The effective CNI network config of a cnibridge network: the `bridge` plugin's keys with
//! the CNI defaults filled in, and its `host-local` IPAM section canonicalised as host-local
//! does it (legacy single range prepended as range set 0, gateway/rangeStart/rangeEnd
//! defaults). Parsed from a `.conf`/`.json` file (one plugin object, upconverted to a list
//! as libcni's `ConfListFromConf` does) or a `.conflist` (first plugin `bridge` or `flannel`,
//! then the chain of `chain.rs`). Pure but for flannel's subnet file: bytes in, model out;
//! the config files are read by `dir.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::bridge::{capabilities, dns, masq_backend, mtu, valid_ifname, vlan, vlan_trunk};
use super::chain::{self, Chain};
use super::flannel::{self, FlannelSource};
use super::ipam;
use super::json::{wrong_type, Obj};
use super::{is_valid_name, CniError};

/// The cniVersions a config may declare, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A CNI spec version cnibridge accepts in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, in the order of [`SUPPORTED_VERSIONS`].
    pub const ALL: [CniVersion; 7] = [
        Self::V0_1_0,
        Self::V0_2_0,
        Self::V0_3_0,
        Self::V0_3_1,
        Self::V0_4_0,
        Self::V1_0_0,
        Self::V1_1_0,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bridge plugin's `ipMasqBackend` (plugins ≥ v1.6.0; absent = auto), also portmap's `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasqBackend {
    Iptables,
    Nftables,
}

impl MasqBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// One `vlanTrunk` entry; `{"id": n}` is kept as `min == max == n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTrunk {
    pub min: u16,
    pub max: u16,
}

/// The plugin-level `dns` object (copied into the CNI result; Docker writes resolv.conf itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// One host-local range after canonicalisation: every field is the value host-local uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeConf {
    /// The network address with its prefix (no host bits).
    pub subnet: IpNet,
    /// First allocatable address (default: network + 1).
    pub range_start: IpAddr,
    /// Last allocatable address (default: IPv4 broadcast − 1, IPv6 the last address).
    pub range_end: IpAddr,
    /// The gateway (default: network + 1); skipped by the allocator when inside the range.
    pub gateway: IpAddr,
}

/// One `ipam.routes` entry; a missing `gw` means "via this family's gateway" to the bridge plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The host-local section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamConf {
    /// Range sets in host-local's order (the legacy single range first); each set is one
    /// family and yields one address per container; its index is the `N` of
    /// `last_reserved_ip.N`.
    pub range_sets: Vec<Vec<RangeConf>>,
    pub routes: Vec<RouteConf>,
    /// `None` = host-local's default, `/var/lib/cni/networks`.
    pub data_dir: Option<PathBuf>,
    /// host-local's `resolvConf` (kept; Docker manages the container's resolv.conf itself).
    pub resolv_conf: Option<PathBuf>,
}

/// Where a config came from, so that later errors can name keys as the file spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file name used in messages (`mybridge.conf`).
    pub file: String,
    /// Whether the file is a `.conflist` (bridge keys under `plugins[0].`).
    pub conflist: bool,
    /// Whether range set 0 came from the legacy `ipam.subnet`/`rangeStart`/… keys.
    pub legacy_range: bool,
    /// Set when the first plugin is `flannel`: the bridge keys are its `delegate`'s.
    pub flannel: Option<FlannelSource>,
}

impl Origin {
    /// The key prefix of the bridge plugin object as the file spells it (`"plugins[0]."`,
    /// `""`, or flannel's `"plugins[0].delegate."`).
    pub fn prefix(&self) -> &'static str {
        match (self.conflist, self.flannel.is_some()) {
            (true, false) => "plugins[0].",
            (false, false) => "",
            (true, true) => "plugins[0].delegate.",
            (false, true) => "delegate.",
        }
    }

    /// The key path of range `idx` of range set `set`, as written in the file: `ipam` for
    /// the legacy single range, else `ipam.ranges[i][idx]` (shifted by the legacy set).
    pub fn range_label(&self, set: usize, idx: usize) -> String {
        let p = self.prefix();
        match (self.legacy_range, set) {
            (true, 0) => format!("{p}ipam"),
            (true, s) => format!("{p}ipam.ranges[{}][{idx}]", s - 1),
            (false, s) => format!("{p}ipam.ranges[{s}][{idx}]"),
        }
    }

    /// The key of `field` (`subnet`, `gateway`, …) of that range.
    pub fn range_key(&self, set: usize, idx: usize, field: &str) -> String {
        format!("{}.{field}", self.range_label(set, idx))
    }
}

/// The effective config of one network: what the bridge + host-local plugins would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// The network name (list name; for a `.conf` the plugin's `name`).
    pub name: String,
    pub cni_version: CniVersion,
    /// Linux bridge name (default `cni0`).
    pub bridge: String,
    /// Put the gateway on the bridge; forced true by `is_default_gateway`.
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub ip_masq_backend: Option<MasqBackend>,
    /// 0 = kernel default.
    pub mtu: u32,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// 0 = no VLAN.
    pub vlan: u16,
    pub vlan_trunk: Vec<VlanTrunk>,
    /// `None` = the plugin's default, which changed in plugins v1.8.0.
    pub preserve_default_vlan: Option<bool>,
    pub enable_dad: bool,
    pub macspoofchk: bool,
    /// Always false in a valid config: the plugin refuses it together with IPAM.
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    pub dns: Option<Dns>,
    pub capabilities: BTreeMap<String, bool>,
    pub ipam: IpamConf,
    /// The plugins after `bridge` (or `flannel`) in a conflist.
    pub chain: Chain,
    pub origin: Origin,
}

/// The name errors use for `path`: its file name, else the whole path.
pub fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Whether libcni reads `path` as a list (`.conflist`) rather than one plugin object.
pub fn is_conflist(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "conflist")
}

impl NetConf {
    /// Parse and validate a config: [`NetConf::parse`], then [`NetConf::check_supported`].
    pub fn load(path: &Path, bytes: &[u8]) -> Result<Self, CniError> {
        let conf = Self::parse(path, bytes)?;
        conf.check_supported()?;
        Ok(conf)
    }

    /// Parse a config file's bytes (`path` decides the format and names the file in errors)
    /// and apply the bridge plugin's and host-local's own validation, and the chained
    /// plugins' (refusing those cnibridge does not implement, naming the key). A `flannel`
    /// first plugin is expanded as flannel does, reading its subnet file.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, CniError> {
        let file = display_name(path);
        let root: Value = serde_json::from_slice(bytes).map_err(|e| CniError::Json {
            file: file.clone(),
            detail: e.to_string(),
        })?;
        let Value::Object(top) = &root else {
            return Err(wrong_type(
                &file,
                "the top level".into(),
                "an object",
                &root,
            ));
        };
        let top = Obj {
            file: &file,
            prefix: "",
            map: top,
        };
        let conflist = is_conflist(path);
        let (cni_version, plugin, chain) = if conflist {
            let l = list_parts(top)?;
            let mut chain = chain::parse(&file, &l.rest)?;
            chain.list_keys = l.list_keys;
            (l.version, l.first, chain)
        } else {
            if top.get("type").is_none() && top.get("plugins").is_some() {
                return Err(top.missing("type", "; a file with plugins must be named .conflist"));
            }
            // A single `.conf` chains nothing, so it states no wish about ports: its networks
            // publish as cnibridge always did, as a network from Docker's flags does (and the
            // export says so with a portmap plugin). Only a conflist that leaves portmap out
            // refuses `-p`.
            (
                version(top, "cniVersion")?,
                top.map,
                Chain::docker_default(),
            )
        };
        // The list's name wins: the runtime injects it into every plugin of a conflist.
        let name = top.string("name")?.ok_or_else(|| top.missing("name", ""))?;
        if !is_valid_name(name) {
            return Err(CniError::BadName {
                file: file.clone(),
                key: "name".into(),
                value: name.to_string(),
            });
        }
        let mut origin = Origin {
            file: file.clone(),
            conflist,
            legacy_range: false,
            flannel: None,
        };
        let first = Obj {
            file: &file,
            prefix: origin.prefix(),
            map: plugin,
        };
        let expanded;
        let plugin = if plugin_type(first)? == FirstPlugin::Flannel {
            let (delegate, source) = flannel::delegate(first)?;
            origin.flannel = Some(source);
            expanded = delegate;
            &expanded
        } else {
            plugin
        };
        let b = Obj {
            file: &file,
            prefix: origin.prefix(),
            map: plugin,
        };
        let bridge = b.string("bridge")?.unwrap_or("cni0");
        if !valid_ifname(bridge) {
            return Err(b.invalid(
                "bridge",
                &Value::from(bridge),
                "is not a valid interface name: 1 to 15 bytes, no '/', ':' or spaces",
            ));
        }
        let flag = |key: &str| b.boolean(key).map(|v| v.unwrap_or(false));
        let is_default_gateway = flag("isDefaultGateway")?;
        let hairpin_mode = flag("hairpinMode")?;
        let promisc_mode = flag("promiscMode")?;
        if hairpin_mode && promisc_mode {
            return Err(CniError::Conflict {
                file: file.clone(),
                reason: format!(
                    "{} and {} cannot both be true",
                    b.key("hairpinMode"),
                    b.key("promiscMode")
                ),
            });
        }
        let disable_container_interface = flag("disableContainerInterface")?;
        if disable_container_interface {
            return Err(b.invalid(
                "disableContainerInterface",
                &Value::Bool(true),
                "cannot be combined with ipam; containers need their addresses",
            ));
        }
        let mut conf = Self {
            name: name.to_string(),
            cni_version,
            bridge: bridge.to_string(),
            // The bridge plugin: "isDefaultGateway" forces "isGateway".
            is_gateway: flag("isGateway")? || is_default_gateway,
            is_default_gateway,
            force_address: flag("forceAddress")?,
            ip_masq: flag("ipMasq")?,
            ip_masq_backend: masq_backend(b)?,
            mtu: mtu(b)?,
            hairpin_mode,
            promisc_mode,
            vlan: vlan(b)?,
            vlan_trunk: vlan_trunk(b)?,
            preserve_default_vlan: b.boolean("preserveDefaultVlan")?,
            enable_dad: flag("enabledad")?,
            macspoofchk: flag("macspoofchk")?,
            disable_container_interface,
            port_isolation: flag("portIsolation")?,
            dns: dns(b)?,
            capabilities: capabilities(b)?,
            ipam: IpamConf::default(),
            chain,
            origin,
        };
        // Last, so that errors come in the order a file usually reads: bridge keys, then ipam.
        let (ipam, legacy) = ipam::parse(b, cni_version)?;
        conf.ipam = ipam;
        conf.origin.legacy_range = legacy;
        Ok(conf)
    }

    /// Refuse what parses but cnibridge does not implement. Nothing is left here: chained
    /// plugins and keys cnibridge does not implement are refused while parsing, where the
    /// key path is at hand; the bridge keys the driver cannot honour are its business.
    pub fn check_supported(&self) -> Result<(), CniError> {
        Ok(())
    }

    /// The bridge keys whose value differs from the CNI default, by their CNI names, so the
    /// driver can refuse or honour them by name.
    pub fn non_default_keys(&self) -> Vec<&'static str> {
        let keys = [
            ("bridge", self.bridge != "cni0"),
            ("isGateway", self.is_gateway),
            ("isDefaultGateway", self.is_default_gateway),
            ("forceAddress", self.force_address),
            ("ipMasq", self.ip_masq),
            ("ipMasqBackend", self.ip_masq_backend.is_some()),
            ("mtu", self.mtu != 0),
            ("hairpinMode", self.hairpin_mode),
            ("promiscMode", self.promisc_mode),
            ("vlan", self.vlan != 0),
            ("vlanTrunk", !self.vlan_trunk.is_empty()),
            ("preserveDefaultVlan", self.preserve_default_vlan.is_some()),
            ("enabledad", self.enable_dad),
            ("macspoofchk", self.macspoofchk),
            ("portIsolation", self.port_isolation),
            ("dns", self.dns.is_some()),
            ("capabilities", !self.capabilities.is_empty()),
        ];
        keys.iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// What a `.conflist` contributes beyond the bridge plugin's own keys.
struct ListParts<'a> {
    version: CniVersion,
    /// The list-level keys that are the runtimes' (`nerdctlID`, `nerdctlLabels`, `args`, …):
    /// not looked at, as by libcni, but kept for the export.
    list_keys: Map<String, Value>,
    /// The first plugin object (`bridge` or `flannel`).
    first: &'a Map<String, Value>,
    /// The plugin objects after it.
    rest: Vec<&'a Map<String, Value>>,
}

/// A `.conflist`: its version, the first plugin object and the ones after it.
fn list_parts<'a>(top: Obj<'a>) -> Result<ListParts<'a>, CniError> {
    let mut v = version(top, "cniVersion")?;
    if let Some(list) = top.array("cniVersions")? {
        v = highest_version(top, list, top.get("cniVersion").map(|_| v))?;
    }
    for key in ["disableCheck", "disableGC"] {
        list_bool(top, key)?;
    }
    let Some(plugins) = top.array("plugins")? else {
        let hint = if top.get("type").is_some() {
            "; a single plugin config must be named .conf or .json"
        } else {
            "; list the bridge plugin in plugins"
        };
        return Err(top.missing("plugins", hint));
    };
    let mut objects = Vec::with_capacity(plugins.len());
    for (i, p) in plugins.iter().enumerate() {
        match p {
            Value::Object(m) => objects.push(m),
            _ => return Err(top.wrong_type(&format!("plugins[{i}]"), "an object", p)),
        }
    }
    let Some((first, rest)) = objects.split_first() else {
        return Err(top.invalid(
            "plugins",
            &Value::Array(vec![]),
            "must list the bridge plugin",
        ));
    };
    // cniVersions is left out: the export speaks one version of its own.
    let list_keys = top
        .map
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "cniVersion" | "cniVersions" | "name" | "plugins"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(ListParts {
        version: v,
        list_keys,
        first,
        rest: rest.to_vec(),
    })
}

#[derive(PartialEq, Eq)]
enum FirstPlugin {
    Bridge,
    Flannel,
}

/// The first plugin object's `type`: `bridge`, or `flannel` delegating to one.
fn plugin_type(b: Obj<'_>) -> Result<FirstPlugin, CniError> {
    let t = b
        .string("type")?
        .ok_or_else(|| b.missing("type", "; use bridge"))?;
    match t {
        "bridge" => Ok(FirstPlugin::Bridge),
        "flannel" => Ok(FirstPlugin::Flannel),
        _ => Err(CniError::UnsupportedPlugin {
            file: b.file.to_string(),
            key: b.key("type"),
            value: t.to_string(),
        }),
    }
}

/// `cniVersion`; absent means 0.1.0, as the CNI library's config decoder reads it.
fn version(o: Obj<'_>, key: &str) -> Result<CniVersion, CniError> {
    match o.string(key)? {
        None => Ok(CniVersion::V0_1_0),
        Some(s) => CniVersion::parse(s).ok_or_else(|| CniError::BadVersion {
            file: o.file.to_string(),
            key: o.key(key),
            value: s.to_string(),
        }),
    }
}

/// CNI 1.1's `cniVersions`: the highest listed version wins; versions newer than 1.1.0 are
/// skipped, as libcni skips those newer than its own.
fn highest_version(
    top: Obj<'_>,
    list: &[Value],
    declared: Option<CniVersion>,
) -> Result<CniVersion, CniError> {
    let mut best = declared;
    for (i, v) in list.iter().enumerate() {
        let key = format!("cniVersions[{i}]");
        let Value::String(s) = v else {
            return Err(top.wrong_type(&key, "a string", v));
        };
        let newer = semver(s).is_some_and(|t| t > (1, 1, 0));
        if newer {
            continue;
        }
        let parsed = CniVersion::parse(s).ok_or_else(|| CniError::BadVersion {
            file: top.file.to_string(),
            key: key.clone(),
            value: s.clone(),
        })?;
        best = best.max(Some(parsed));
    }
    Ok(best.unwrap_or(CniVersion::V0_1_0))
}

fn semver(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// libcni's reading of the list-level bools: a JSON bool, or the string "true"/"false" in
/// any case.
fn list_bool(top: Obj<'_>, key: &str) -> Result<bool, CniError> {
    match top.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v @ Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(top.invalid(key, v, "is not a boolean; use true or false")),
        },
        Some(v) => Err(top.wrong_type(key, "true or false", v)),
    }
}
