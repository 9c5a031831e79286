//! The effective config of a network as a CNI 1.0.0 conflist (`bridge` + `host-local`, same
//! name, bridge and dataDir, then the network's chained plugins as recorded), so that a CNI
//! runtime pointed at the export dir attaches to the very same network, shares its address
//! store and runs the same portmap/firewall/tuning/bandwidth plugins. Every bridge key is
//! written out, because the CNI defaults (ipMasq, isGateway, hairpinMode false; bridge
//! `cni0`) are not Docker's. A network from flannel exports the bridge flannel expanded to.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

use super::config::{NetConf, VlanTrunk};
use super::{is_valid_name, CniError};

/// The cniVersion of exported lists (what the plugins shipped here, 1.1.1, speak at most).
pub const EXPORT_VERSION: &str = "1.0.0";

/// Export files are world-readable like every CNI config; nothing in them is secret.
const MODE: u32 = 0o644;

/// The export file of network `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}.conflist")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    cni_version: &'static str,
    name: &'a str,
    /// The bridge plugin, then the chain's objects as the config had them.
    plugins: Vec<Plugin<'a>>,
    /// The source conflist's runtime keys (`nerdctlID`, `disableCheck`, …), as it had them.
    #[serde(flatten)]
    list_keys: &'a serde_json::Map<String, Value>,
}

/// Untagged, so the bridge keeps its field order (a `Value` would sort its keys).
#[derive(Serialize)]
#[serde(untagged)]
enum Plugin<'a> {
    Bridge(Box<Bridge<'a>>),
    Chained(&'a Value),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bridge<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    bridge: &'a str,
    is_gateway: bool,
    is_default_gateway: bool,
    force_address: bool,
    ip_masq: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_masq_backend: Option<&'static str>,
    mtu: u32,
    hairpin_mode: bool,
    promisc_mode: bool,
    vlan: u16,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vlan_trunk: Vec<Trunk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preserve_default_vlan: Option<bool>,
    enabledad: bool,
    macspoofchk: bool,
    disable_container_interface: bool,
    port_isolation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<Dns<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    capabilities: &'a BTreeMap<String, bool>,
    ipam: Ipam,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Trunk {
    One {
        id: u16,
    },
    Span {
        #[serde(rename = "minID")]
        min: u16,
        #[serde(rename = "maxID")]
        max: u16,
    },
}

#[derive(Serialize)]
struct Dns<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    nameservers: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    search: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    options: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipam {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: Vec<Vec<RangeOut>>,
    routes: Vec<RouteOut>,
    data_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolv_conf: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RangeOut {
    subnet: String,
    range_start: String,
    range_end: String,
    gateway: String,
}

#[derive(Serialize)]
struct RouteOut {
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
}

fn trunk(t: &VlanTrunk) -> Trunk {
    if t.min == t.max {
        Trunk::One { id: t.min }
    } else {
        Trunk::Span {
            min: t.min,
            max: t.max,
        }
    }
}

/// The conflist text of `conf` (pretty JSON, trailing newline). `default_data_dir` is the
/// data dir the network really uses when the config names none (`--cni-data-dir`), written
/// out so a runtime shares the same address store. The chained plugins follow the bridge
/// as the config spelled them (`conf.chain.raw`), keys cnibridge only accepts included.
pub fn render(conf: &NetConf, default_data_dir: &Path) -> Result<String, CniError> {
    let ipam = &conf.ipam;
    let bridge = Bridge {
        kind: "bridge",
        bridge: &conf.bridge,
        is_gateway: conf.is_gateway,
        is_default_gateway: conf.is_default_gateway,
        force_address: conf.force_address,
        ip_masq: conf.ip_masq,
        ip_masq_backend: conf.ip_masq_backend.map(|b| b.as_str()),
        mtu: conf.mtu,
        hairpin_mode: conf.hairpin_mode,
        promisc_mode: conf.promisc_mode,
        vlan: conf.vlan,
        vlan_trunk: conf.vlan_trunk.iter().map(trunk).collect(),
        preserve_default_vlan: conf.preserve_default_vlan,
        enabledad: conf.enable_dad,
        macspoofchk: conf.macspoofchk,
        disable_container_interface: conf.disable_container_interface,
        port_isolation: conf.port_isolation,
        dns: conf.dns.as_ref().map(|d| Dns {
            nameservers: &d.nameservers,
            domain: d.domain.as_deref(),
            search: &d.search,
            options: &d.options,
        }),
        capabilities: &conf.capabilities,
        ipam: Ipam {
            kind: "host-local",
            ranges: ipam
                .range_sets
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|r| RangeOut {
                            subnet: r.subnet.to_string(),
                            range_start: r.range_start.to_string(),
                            range_end: r.range_end.to_string(),
                            gateway: r.gateway.to_string(),
                        })
                        .collect()
                })
                .collect(),
            routes: ipam
                .routes
                .iter()
                .map(|r| RouteOut {
                    dst: r.dst.to_string(),
                    gw: r.gw.map(|g| g.to_string()),
                })
                .collect(),
            data_dir: ipam
                .data_dir
                .as_deref()
                .unwrap_or(default_data_dir)
                .display()
                .to_string(),
            resolv_conf: ipam.resolv_conf.as_ref().map(|p| p.display().to_string()),
        },
    };
    let mut plugins = Vec::with_capacity(1 + conf.chain.raw.len());
    plugins.push(Plugin::Bridge(Box::new(bridge)));
    plugins.extend(conf.chain.raw.iter().map(Plugin::Chained));
    let list = List {
        cni_version: EXPORT_VERSION,
        name: &conf.name,
        plugins,
        list_keys: &conf.chain.list_keys,
    };
    let mut text = serde_json::to_string_pretty(&list).map_err(|e| CniError::Render {
        name: conf.name.clone(),
        detail: e.to_string(),
    })?;
    text.push('\n');
    Ok(text)
}

fn checked(name: &str) -> Result<(), CniError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(CniError::BadExportName {
            name: name.to_string(),
        })
    }
}

/// Temp-file names must differ between concurrent writers of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Write `text` as `<dir>/<name>.conflist` atomically (temp file in the same dir, fsync,
/// rename, mode 0644), creating `dir` if needed. Returns the file's path.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, CniError> {
    checked(name)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CniError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(file_name(name));
    // A dot name with a `.tmp` extension: no CNI runtime reads it as a config while it grows.
    let tmp = dir.join(format!(
        ".{name}.conflist.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&tmp)?;
        // The umask may have narrowed the mode; exports must be readable by runtimes.
        f.set_permissions(fs::Permissions::from_mode(MODE))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        // Best effort: the write error is what the caller needs; a leftover dot file is inert.
        let _ = fs::remove_file(&tmp);
        return Err(io(&target)(e));
    }
    // Make the rename itself durable; the file is complete either way, so a failure to sync
    // the directory only costs durability and is reported.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(target)
}

/// Remove the export of network `name`; an absent file is already removed.
pub fn remove(dir: &Path, name: &str) -> Result<(), CniError> {
    checked(name)?;
    let path = dir.join(file_name(name));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CniError::Io { path, source }),
    }
}
