//! RequestPool from a CNI config (`--ipam-opt cni.conf=NAME`): the pool is the config's range
//! set of the requested family, in the config's own host-local directory
//! (`<dataDir>/<name>/`, cursor `last_reserved_ip.<set index>`), so a CNI runtime using the
//! same config allocates in the same store. `--subnet` and `--ip-range`, when given, must say
//! what the config says; the gateway (`--gateway`) is checked at RequestAddress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{IpamError, PoolConf, PoolRecord, PoolRequest, Window};
use crate::cni::config::display_name;
use crate::cni::{dir, CniError};
use crate::range::usable_range;

/// The `--ipam-opt` key that selects a config.
pub(super) const CONF_OPT: &str = "cni.conf";

/// Every `--ipam-opt` key cnibridge knows.
const KNOWN_OPTS: &[&str] = &[CONF_OPT];

/// Refuse unknown `--ipam-opt` keys: a typo would otherwise silently give a network that is
/// not the one asked for.
pub(super) fn check_options(options: &BTreeMap<String, String>) -> Result<(), IpamError> {
    match options.keys().find(|k| !KNOWN_OPTS.contains(&k.as_str())) {
        Some(k) => Err(IpamError::Invalid(format!(
            "unknown --ipam-opt {k}; known keys: {}",
            KNOWN_OPTS.join(", ")
        ))),
        None => Ok(()),
    }
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn cni_err(e: CniError) -> IpamError {
    IpamError::Invalid(e.to_string())
}

/// A pool planned from a config, before the overlap check.
#[derive(Debug)]
pub(super) struct Planned {
    subnet: IpNet,
    sub_pool: Option<IpNet>,
    windows: Vec<Window>,
    gateway: std::net::IpAddr,
    name: String,
    data_dir: PathBuf,
    set_index: usize,
    conf: PoolConf,
}

impl Planned {
    pub(super) fn record(self, address_space: &str) -> PoolRecord {
        let first = self.windows.first().copied().unwrap_or(Window {
            start: self.gateway,
            end: self.gateway,
        });
        PoolRecord {
            id: self.subnet.to_string(),
            address_space: address_space.to_string(),
            subnet: self.subnet,
            sub_pool: self.sub_pool,
            range_start: first.start,
            range_end: first.end,
            gateway: Some(self.gateway),
            cni_name: self.name,
            data_dir: self.data_dir,
            range_index: self.set_index,
            network_id: None,
            ranges: self.windows,
            conf: Some(self.conf),
        }
    }
}

/// Load the config `selector` names from `conf_dir` and plan the pool of the requested
/// family; `default_data_dir` is `--cni-data-dir`, used when the config names no `dataDir`.
pub(super) fn plan(
    conf_dir: &Path,
    default_data_dir: &Path,
    selector: &str,
    req: &PoolRequest,
) -> Result<Planned, IpamError> {
    let (path, conf) = dir::find(conf_dir, selector).map_err(cni_err)?;
    let file = display_name(&path);
    let name = &conf.name;
    let pool = conf.family_pool(req.v6).map_err(cni_err)?.ok_or_else(|| {
        let hint = if req.v6 {
            "drop --ipv6, or add an IPv6 range set to the config"
        } else {
            "add an IPv4 range set to the config, or create the network with --ipv4=false (Docker 28 or later)"
        };
        IpamError::Invalid(format!(
            "{file} has no {} range (network {name}), but Docker asked for an {} pool; {hint}",
            family(req.v6),
            family(req.v6)
        ))
    })?;
    if let Some(given) = req.pool {
        if given != pool.subnet {
            return Err(IpamError::Invalid(format!(
                "subnet {given} does not match {file}'s subnet {} (network {name}); drop --subnet or change the config",
                pool.subnet
            )));
        }
    }
    if let Some(sub) = req.sub_pool {
        // Docker's --ip-range is a CIDR; it matches a config whose set is that one window.
        let wanted = usable_range(&pool.subnet, Some(&sub));
        let only = match pool.ranges.0.as_slice() {
            [r] => Some((r.range_start, r.range_end)),
            _ => None,
        };
        if wanted.is_none() || wanted != only {
            return Err(IpamError::Invalid(format!(
                "ip-range {sub} does not match {file}'s range {} (network {name}); drop --ip-range or change the config",
                pool.ranges
            )));
        }
    }
    let windows = pool
        .ranges
        .0
        .iter()
        .map(|r| Window {
            start: r.range_start,
            end: r.range_end,
        })
        .collect();
    Ok(Planned {
        subnet: pool.subnet,
        sub_pool: req.sub_pool,
        windows,
        gateway: pool.gateway,
        name: name.clone(),
        data_dir: conf
            .ipam
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir.to_path_buf()),
        set_index: pool.set_index,
        conf: PoolConf {
            selector: selector.to_string(),
            file: path,
        },
    })
}

/// The error of a `--gateway` that differs from the config's gateway.
pub(super) fn gateway_mismatch(
    rec: &PoolRecord,
    conf: &PoolConf,
    given: std::net::IpAddr,
) -> IpamError {
    let want = rec
        .gateway
        .map(|g| g.to_string())
        .unwrap_or_else(|| "none".to_string());
    IpamError::Invalid(format!(
        "gateway {given} does not match {}'s gateway {want} (network {}); drop --gateway or change the config",
        conf.file_name(),
        rec.cni_name
    ))
}
