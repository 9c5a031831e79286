//! CNI configs on the driver side: which config a network uses (`-o cni.conf=NAME`, or the one
//! its pools were requested with through `--ipam-opt`), the checks between that config,
//! Docker's pools and the `-o` options, the effective config kept in the network record (also
//! built from Docker's flags, so every network can be exported), and what Join answers for its
//! routes. Pure: the caller loads pools and writes files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::options::{self, NetworkOptions};
use super::{DriverError, StaticRoute};
use crate::cni::config::{display_name, CniVersion, IpamConf, Origin};
use crate::cni::{self, export, CniError, NetConf, RangeConf, RouteConf};
use crate::ipam::PoolRecord;
use crate::range::{next_ip, usable_range};
use crate::state::records::{CniRange, CniRecord, CniRoute, FamilyData};

/// Bridge keys a config may set to other than the CNI default. cnibridge applies them, except
/// `dns` (logged: Docker owns the container's resolv.conf), `capabilities` (a runtime's
/// business), `ipMasqBackend` (cnibridge masquerades with its own rules either way) and
/// `preserveDefaultVlan` (meaningless without `vlan`, which is refused).
const SUPPORTED_KEYS: &[&str] = &[
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "ipMasqBackend",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "preserveDefaultVlan",
    "dns",
    "capabilities",
];

fn cni_err(e: CniError) -> DriverError {
    DriverError::Invalid(e.to_string())
}

/// A config chosen for a network.
#[derive(Debug, Clone)]
pub(crate) struct Selected {
    pub(crate) path: PathBuf,
    pub(crate) conf: NetConf,
    /// `NAME` as given (`-o` first, else `--ipam-opt`).
    pub(crate) selector: String,
}

impl Selected {
    fn file(&self) -> String {
        display_name(&self.path)
    }
}

/// The config a network uses, if any. `pools` are the network's pools held by cnibridge's
/// IPAM (empty with Docker's IPAM). With cnibridge's IPAM the IPAM side must have been given
/// the config (it allocates from the config's ranges); `-o cni.conf` may repeat it.
pub(crate) fn select(
    conf_dir: &Path,
    opts: &NetworkOptions,
    pools: &[PoolRecord],
) -> Result<Option<Selected>, DriverError> {
    let mut ipam_side: Option<(&PoolRecord, &crate::ipam::PoolConf)> = None;
    for p in pools {
        match (&p.conf, ipam_side) {
            (Some(c), None) => ipam_side = Some((p, c)),
            (Some(c), Some((q, prev))) if c.file != prev.file => {
                return Err(DriverError::Invalid(format!(
                    "pool {} was requested with --ipam-opt cni.conf={} ({}) but pool {} with cni.conf={} ({}); one network uses one config",
                    q.subnet, prev.selector, prev.file_name(), p.subnet, c.selector, c.file_name()
                )))
            }
            _ => {}
        }
    }
    let Some(selector) = opts
        .cni_conf
        .clone()
        .or_else(|| ipam_side.map(|(_, c)| c.selector.clone()))
    else {
        return Ok(None);
    };
    let (path, conf) = cni::dir::find(conf_dir, &selector).map_err(cni_err)?;
    let file = display_name(&path);
    match (ipam_side, pools.first()) {
        (Some((p, c)), _) if c.file != path => {
            let reason = if opts.cni_conf.is_some() {
                format!(
                    "-o cni.conf={selector} selects {file}, but pool {} was requested with --ipam-opt cni.conf={} ({}); give the same config to both, or drop -o cni.conf",
                    p.subnet, c.selector, c.file_name()
                )
            } else {
                format!(
                    "cni.conf={selector} now selects {file}, but pool {} was requested from {}; the conf dir changed in between: remove the network and create it again",
                    p.subnet, c.file_name()
                )
            };
            Err(DriverError::Invalid(reason))
        }
        (None, Some(p)) => Err(DriverError::Invalid(format!(
            "-o cni.conf={selector} selects {file}, but pool {} was requested from cnibridge's IPAM without it; add --ipam-opt cni.conf={selector} so the addresses come from the config's ranges",
            p.subnet
        ))),
        _ => Ok(Some(Selected {
            path,
            conf,
            selector,
        })),
    }
}

/// The config against the network Docker asks for: the families it was created with, its
/// subnets and gateways (`ours` = cnibridge's IPAM planned them from the config), the keys
/// cnibridge implements, and the `-o` options, which may only repeat what the config says.
pub(crate) fn check(
    sel: &Selected,
    ipv4: Option<&FamilyData>,
    ipv6: Option<&FamilyData>,
    ours: bool,
    opts: &NetworkOptions,
) -> Result<(), DriverError> {
    let conf = &sel.conf;
    let file = sel.file();
    let name = &conf.name;
    check_keys(conf)?;
    let pools = conf
        .docker_pools(ipv4.is_some(), ipv6.is_some())
        .map_err(cni_err)?;
    for (fam, want) in [(ipv4, &pools.v4), (ipv6, &pools.v6)] {
        let (Some(fam), Some(want)) = (fam, want) else {
            continue;
        };
        if fam.pool != want.subnet {
            return Err(DriverError::Invalid(if ours {
                format!(
                    "pool {} does not match {file}'s subnet {} (network {name}); the config changed since the pool was requested: remove the network and create it again",
                    fam.pool, want.subnet
                )
            } else {
                format!(
                    "subnet {} does not match {file}'s subnet {} (network {name}); pass --subnet {} --gateway {}, or use --ipam-driver cnibridge --ipam-opt cni.conf={}",
                    fam.pool, want.subnet, want.subnet, want.gateway, sel.selector
                )
            }));
        }
        match fam.gateway.map(|g| g.addr()) {
            Some(g) if g == want.gateway => {}
            Some(g) => {
                return Err(DriverError::Invalid(format!(
                    "gateway {g} does not match {file}'s gateway {} (network {name}); drop --gateway or change the config",
                    want.gateway
                )))
            }
            None => {
                return Err(DriverError::Invalid(format!(
                    "Docker reserved no gateway in {}, but {file} has gateway {} (network {name}); pass --gateway {}",
                    fam.pool, want.gateway, want.gateway
                )))
            }
        }
    }
    check_options(sel, opts)
}

/// Refuse keys cnibridge does not implement, naming file, key and value.
fn check_keys(conf: &NetConf) -> Result<(), DriverError> {
    let Some(key) = conf
        .non_default_keys()
        .into_iter()
        .find(|k| !SUPPORTED_KEYS.contains(k))
    else {
        return Ok(());
    };
    let value = match key {
        "vlan" => conf.vlan.to_string(),
        "vlanTrunk" => {
            let items: Vec<String> = conf
                .vlan_trunk
                .iter()
                .map(|t| {
                    if t.min == t.max {
                        format!("{{\"id\":{}}}", t.min)
                    } else {
                        format!("{{\"minID\":{},\"maxID\":{}}}", t.min, t.max)
                    }
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        // The rest are booleans whose non-default value is true.
        _ => "true".to_string(),
    };
    Err(DriverError::Invalid(format!(
        "{}: {}{key} {value} is not implemented by cnibridge; remove it from the config",
        conf.origin.file,
        conf.origin.prefix()
    )))
}

/// `-o` options that the config also sets must agree with it: the config is authoritative,
/// and a silent override would give a network that is not the one the file describes.
fn check_options(sel: &Selected, opts: &NetworkOptions) -> Result<(), DriverError> {
    let conf = &sel.conf;
    let file = sel.file();
    let clash = |key: &str, cni_key: &str, have: String| {
        let given = opts.generic.get(key).cloned().unwrap_or_default();
        DriverError::Invalid(format!(
            "-o {key}={given} contradicts {file}'s {cni_key} {have} (network {}); drop the option or change the config",
            conf.name
        ))
    };
    let g = &opts.generic;
    if let Some(b) = &opts.bridge {
        if *b != conf.bridge {
            let key = options::given_key(g, options::BRIDGE_KEYS.0, options::BRIDGE_KEYS.1);
            return Err(clash(key, "bridge", format!("{:?}", conf.bridge)));
        }
    }
    if let Some(m) = opts.mtu {
        if m != conf.mtu {
            let key = options::given_key(g, options::MTU_KEYS.0, options::MTU_KEYS.1);
            return Err(clash(key, "mtu", conf.mtu.to_string()));
        }
    }
    if let Some(m) = options::ip_masq_given(g)? {
        if m != conf.ip_masq {
            let key = options::given_key(g, options::IP_MASQ_KEYS.0, options::IP_MASQ_KEYS.1);
            return Err(clash(key, "ipMasq", conf.ip_masq.to_string()));
        }
    }
    let f = opts.cni_flags;
    let flags = [
        (options::IS_GATEWAY, f.is_gateway, conf.is_gateway),
        (
            options::IS_DEFAULT_GATEWAY,
            f.is_default_gateway,
            conf.is_default_gateway,
        ),
        (options::HAIRPIN_MODE, f.hairpin_mode, conf.hairpin_mode),
        (options::PROMISC_MODE, f.promisc_mode, conf.promisc_mode),
        (options::FORCE_ADDRESS, f.force_address, conf.force_address),
    ];
    for (key, given, have) in flags {
        if given.is_some_and(|v| v != have) {
            return Err(clash(key, key, have.to_string()));
        }
    }
    Ok(())
}

fn is_default_route(dst: &IpNet) -> bool {
    dst.prefix_len() == 0
}

/// The effective config of a network created from a config. `--internal` keeps the config
/// but, as Docker's bridge does, gives no default route and no masquerade.
pub(crate) fn from_conf(sel: &Selected, default_data_dir: &Path, internal: bool) -> CniRecord {
    let conf = &sel.conf;
    let mut routes: Vec<CniRoute> = conf
        .ipam
        .routes
        .iter()
        .map(|r| CniRoute {
            dst: r.dst,
            gw: r.gw,
        })
        .collect();
    if internal {
        routes.retain(|r| !is_default_route(&r.dst));
    }
    CniRecord {
        name: conf.name.clone(),
        file: Some(sel.path.clone()),
        is_gateway: conf.is_gateway,
        is_default_gateway: conf.is_default_gateway && !internal,
        force_address: conf.force_address,
        ip_masq: conf.ip_masq && !internal,
        hairpin_mode: conf.hairpin_mode,
        promisc_mode: conf.promisc_mode,
        range_sets: conf
            .ipam
            .range_sets
            .iter()
            .map(|set| {
                set.iter()
                    .map(|r| CniRange {
                        subnet: r.subnet,
                        range_start: r.range_start,
                        range_end: r.range_end,
                        gateway: r.gateway,
                    })
                    .collect()
            })
            .collect(),
        routes,
        data_dir: conf
            .ipam
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir.to_path_buf()),
        chain: conf.chain.clone(),
    }
}

/// The effective config of a network made from Docker's flags, with Docker's defaults spelled
/// out: the gateway on the bridge, a default route per family (none when `--internal`),
/// masquerade as the options say. `pools` are cnibridge's pools of the families (`None` with
/// Docker's IPAM, which keeps no host-local files).
pub(crate) fn from_flags(
    families: [(Option<&FamilyData>, Option<&PoolRecord>); 2],
    opts: &NetworkOptions,
    default_data_dir: &Path,
) -> Option<CniRecord> {
    let f = opts.cni_flags;
    let internal = opts.internal;
    let is_default_gateway = f.is_default_gateway.unwrap_or(false) && !internal;
    let mut range_sets = Vec::new();
    let mut routes = Vec::new();
    let mut name = None;
    let mut data_dir = None;
    for (fam, pool) in families {
        let Some(fam) = fam else { continue };
        let gateway = fam
            .gateway
            .map(|g| g.addr())
            .unwrap_or_else(|| next_ip(fam.pool.network()));
        let windows: Vec<(IpAddr, IpAddr)> = match pool {
            Some(p) => p.windows().iter().map(|w| (w.start, w.end)).collect(),
            None => usable_range(&fam.pool, None).into_iter().collect(),
        };
        range_sets.push(
            windows
                .into_iter()
                .map(|(range_start, range_end)| CniRange {
                    subnet: fam.pool,
                    range_start,
                    range_end,
                    gateway,
                })
                .collect(),
        );
        if !internal && !is_default_gateway {
            let dst = if fam.pool.network().is_ipv6() {
                IpNet::V6(ipnet::Ipv6Net::default())
            } else {
                IpNet::V4(ipnet::Ipv4Net::default())
            };
            routes.push(CniRoute { dst, gw: None });
        }
        name.get_or_insert_with(|| match pool {
            Some(p) => p.cni_name.clone(),
            None => cni::derived_network_name(&fam.pool),
        });
        data_dir.get_or_insert_with(|| match pool {
            Some(p) => p.data_dir.clone(),
            None => default_data_dir.to_path_buf(),
        });
    }
    Some(CniRecord {
        name: name?,
        file: None,
        is_gateway: f.is_gateway.unwrap_or(true) || is_default_gateway,
        is_default_gateway,
        force_address: f.force_address.unwrap_or(false),
        ip_masq: opts.firewall.masquerade,
        hairpin_mode: f.hairpin_mode.unwrap_or(false),
        promisc_mode: f.promisc_mode.unwrap_or(false),
        range_sets,
        routes,
        data_dir: data_dir?,
        chain: crate::cni::chain::Chain::docker_default(),
    })
}

/// What Join answers for one family: the gateway Docker makes the default route (empty = no
/// default route, as CNI gives none without a default route or `isDefaultGateway`) and the
/// other routes as next-hop routes (no `gw` = via the family's gateway, as the bridge plugin).
pub(crate) fn join_routes(
    cni: &CniRecord,
    fam: &FamilyData,
    internal: bool,
) -> (Option<IpAddr>, Vec<StaticRoute>) {
    let v6 = fam.pool.network().is_ipv6();
    let gateway = fam.gateway.map(|g| g.addr());
    let mut default = None;
    let mut statics = Vec::new();
    for r in cni
        .routes
        .iter()
        .filter(|r| r.dst.network().is_ipv6() == v6)
    {
        let via = r.gw.or(gateway);
        if is_default_route(&r.dst) {
            // Docker takes one default route per family, from Join's gateway.
            default = default.or(via);
            continue;
        }
        match via {
            Some(v) => statics.push(StaticRoute {
                destination: r.dst,
                next_hop: v,
            }),
            None => {
                tracing::warn!(route = %r.dst, network = %cni.name, "route without gw in a family without gateway; not applied")
            }
        }
    }
    if cni.is_default_gateway {
        default = default.or(gateway);
    }
    if internal {
        default = None;
    }
    (default, statics)
}

/// The effective config as the CNI model, for [`export::render`].
pub(crate) fn to_netconf(cni: &CniRecord, bridge: &str, mtu: Option<u32>) -> NetConf {
    NetConf {
        name: cni.name.clone(),
        cni_version: CniVersion::V1_0_0,
        bridge: bridge.to_string(),
        is_gateway: cni.is_gateway,
        is_default_gateway: cni.is_default_gateway,
        force_address: cni.force_address,
        ip_masq: cni.ip_masq,
        ip_masq_backend: None,
        mtu: mtu.unwrap_or(0),
        hairpin_mode: cni.hairpin_mode,
        promisc_mode: cni.promisc_mode,
        vlan: 0,
        vlan_trunk: Vec::new(),
        preserve_default_vlan: None,
        enable_dad: false,
        macspoofchk: false,
        disable_container_interface: false,
        port_isolation: false,
        dns: None,
        capabilities: BTreeMap::new(),
        ipam: IpamConf {
            range_sets: cni
                .range_sets
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|r| RangeConf {
                            subnet: r.subnet,
                            range_start: r.range_start,
                            range_end: r.range_end,
                            gateway: r.gateway,
                        })
                        .collect()
                })
                .collect(),
            routes: cni
                .routes
                .iter()
                .map(|r| RouteConf {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect(),
            data_dir: Some(cni.data_dir.clone()),
            resolv_conf: None,
        },
        chain: cni.chain.clone(),
        origin: Origin {
            file: export::file_name(&cni.name),
            conflist: true,
            legacy_range: false,
            flannel: None,
        },
    }
}

/// The log lines for what a config asks that a Docker network driver cannot apply.
pub(crate) fn log_unapplied(sel: &Selected) {
    let conf = &sel.conf;
    let file = sel.file();
    if let Some(dns) = &conf.dns {
        tracing::warn!(
            file = %file,
            network = %conf.name,
            nameservers = ?dns.nameservers,
            search = ?dns.search,
            "{}dns is not applied: Docker writes the container's resolv.conf itself; use docker run --dns, --dns-search, --dns-option",
            conf.origin.prefix()
        );
    }
    if let Some(rc) = &conf.ipam.resolv_conf {
        tracing::warn!(
            file = %file,
            network = %conf.name,
            resolv_conf = %rc.display(),
            "ipam.resolvConf is not applied: Docker writes the container's resolv.conf itself"
        );
    }
}
