//! The `ipam` section: host-local's `LoadIPAMConfig` + `Canonicalize` rules (legacy range
//! prepended as set 0, defaults, one family per set, no overlaps, version rule), plus the
//! checks host-local leaves to the kernel or never makes (network/broadcast addresses,
//! gateway outside the subnet, unreachable route next hops), refused here with the key.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;

use super::config::{CniVersion, IpamConf, RangeConf, RouteConf};
use super::json::Obj;
use super::CniError;
use crate::range::{canonical, to_u128, too_small, usable_range};

/// Route keys of CNI 1.1 that cnibridge does not program; refused rather than ignored,
/// because the plugins honour them.
const UNSUPPORTED_ROUTE_KEYS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

/// A parsed range and the key path of its object (`ipam` or `ipam.ranges[1][0]`).
struct Labeled {
    label: String,
    range: RangeConf,
}

impl Labeled {
    fn describe(&self) -> String {
        format!(
            "{}.subnet \"{}\" ({}-{})",
            self.label, self.range.subnet, self.range.range_start, self.range.range_end
        )
    }
}

pub(super) fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Parse the bridge plugin's `ipam`; also says whether set 0 is the legacy single range.
pub(super) fn parse(b: Obj<'_>, version: CniVersion) -> Result<(IpamConf, bool), CniError> {
    let Some(m) = b.object("ipam")? else {
        return Err(b.missing(
            "ipam",
            "; cnibridge needs an ipam section of type host-local",
        ));
    };
    let prefix = b.key("ipam.");
    let ipam = Obj {
        file: b.file,
        prefix: &prefix,
        map: m,
    };
    let t = ipam
        .string("type")?
        .ok_or_else(|| ipam.missing("type", "; use host-local"))?;
    if t != "host-local" {
        return Err(CniError::UnsupportedIpam {
            file: b.file.to_string(),
            key: ipam.key("type"),
            value: t.to_string(),
        });
    }
    let mut sets: Vec<Vec<Labeled>> = Vec::new();
    let legacy = ipam.get("subnet").is_some();
    if legacy {
        sets.push(vec![range(ipam, prefix.trim_end_matches('.'))?]);
    } else if let Some(k) = ["rangeStart", "rangeEnd", "gateway"]
        .into_iter()
        .find(|k| ipam.get(k).is_some())
    {
        return Err(ipam.missing("subnet", &format!(", but {} is set", ipam.key(k))));
    }
    for (i, set) in ipam.array("ranges")?.into_iter().flatten().enumerate() {
        let key = format!("ranges[{i}]");
        let Value::Array(items) = set else {
            return Err(ipam.wrong_type(&key, "an array of ranges", set));
        };
        if items.is_empty() {
            return Err(ipam.invalid(&key, set, "is empty; a range set needs at least one range"));
        }
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let rkey = format!("{key}[{j}]");
            let Value::Object(rm) = item else {
                return Err(ipam.wrong_type(&rkey, "an object", item));
            };
            let label = ipam.key(&rkey);
            let rprefix = format!("{label}.");
            let o = Obj {
                file: b.file,
                prefix: &rprefix,
                map: rm,
            };
            out.push(range(o, &label)?);
        }
        sets.push(out);
    }
    if sets.is_empty() {
        return Err(ipam.missing(
            "subnet",
            &format!("; set {} or {}", ipam.key("subnet"), ipam.key("ranges")),
        ));
    }
    check_sets(b.file, &sets, version)?;
    let routes = routes(ipam, &sets)?;
    Ok((
        IpamConf {
            range_sets: sets
                .into_iter()
                .map(|s| s.into_iter().map(|l| l.range).collect())
                .collect(),
            routes,
            data_dir: abs_path(ipam, "dataDir")?,
            resolv_conf: abs_path(ipam, "resolvConf")?,
        },
        legacy,
    ))
}

/// One range object (`o` holds `subnet`, `rangeStart`, `rangeEnd`, `gateway`), canonicalised.
fn range(o: Obj<'_>, label: &str) -> Result<Labeled, CniError> {
    let text = o.string("subnet")?.ok_or_else(|| o.missing("subnet", ""))?;
    let subnet = cidr(o, "subnet", text)?;
    let v6 = subnet.network().is_ipv6();
    let small = || {
        o.invalid(
            "subnet",
            &Value::from(text),
            format!(
                "is too small to allocate from; use at least /{} for {}",
                subnet.max_prefix_len() - 2,
                family(v6)
            ),
        )
    };
    if too_small(&subnet) {
        return Err(small());
    }
    let (first, last) = usable_range(&subnet, None).ok_or_else(small)?;
    let explicit_start = address(o, "rangeStart", &subnet)?;
    let explicit_end = address(o, "rangeEnd", &subnet)?;
    let gateway = address(o, "gateway", &subnet)?.unwrap_or(first);
    let range_start = explicit_start.unwrap_or(first);
    let range_end = explicit_end.unwrap_or(last);
    if to_u128(range_start) > to_u128(range_end) {
        return Err(match (explicit_end, o.get("rangeEnd")) {
            (Some(_), Some(v)) => {
                o.invalid("rangeEnd", v, format!("is before rangeStart {range_start}"))
            }
            _ => o.invalid(
                "rangeStart",
                o.get("rangeStart").unwrap_or(&Value::Null),
                format!("is after the last usable address {range_end} of {subnet}"),
            ),
        });
    }
    Ok(Labeled {
        label: label.to_string(),
        range: RangeConf {
            subnet,
            range_start,
            range_end,
            gateway,
        },
    })
}

/// A CIDR without host bits.
fn cidr(o: Obj<'_>, key: &str, text: &str) -> Result<IpNet, CniError> {
    let net: IpNet = text.parse().map_err(|_| {
        o.invalid(
            key,
            &Value::from(text),
            "is not a CIDR such as 10.1.0.0/24 or fd00:1::/64",
        )
    })?;
    if net.trunc() != net {
        return Err(CniError::HostBits {
            file: o.file.to_string(),
            key: o.key(key),
            value: text.to_string(),
            suggestion: net.trunc(),
        });
    }
    Ok(net)
}

fn ip(o: Obj<'_>, key: &str, text: &str) -> Result<IpAddr, CniError> {
    text.parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| o.invalid(key, &Value::from(text), "is not an IP address"))
}

/// An address that must be a usable host of `subnet` (not its network or IPv4 broadcast).
fn address(o: Obj<'_>, key: &str, subnet: &IpNet) -> Result<Option<IpAddr>, CniError> {
    let Some(text) = o.string(key)? else {
        return Ok(None);
    };
    let a = ip(o, key, text)?;
    let v = Value::from(text);
    let v6 = subnet.network().is_ipv6();
    if a.is_ipv6() != v6 {
        return Err(o.invalid(
            key,
            &v,
            format!("is not an {} address like subnet {subnet}", family(v6)),
        ));
    }
    if !subnet.contains(&a) {
        return Err(o.invalid(key, &v, format!("is not inside subnet {subnet}")));
    }
    if a == subnet.network() {
        return Err(o.invalid(
            key,
            &v,
            format!("is the network address of {subnet}, which no host may use"),
        ));
    }
    if !v6 && a == subnet.broadcast() {
        return Err(o.invalid(
            key,
            &v,
            format!("is the broadcast address of {subnet}, which no host may use"),
        ));
    }
    Ok(Some(a))
}

/// host-local's `Range.Overlaps`: same family and the start..end windows intersect.
fn overlaps(a: &RangeConf, b: &RangeConf) -> bool {
    a.range_start.is_ipv6() == b.range_start.is_ipv6()
        && to_u128(a.range_start).max(to_u128(b.range_start))
            <= to_u128(a.range_end).min(to_u128(b.range_end))
}

fn conflict(file: &str, reason: String) -> CniError {
    CniError::Conflict {
        file: file.to_string(),
        reason,
    }
}

/// host-local's rules across ranges: one family per set, no overlap inside a set, at most one
/// set per family before cniVersion 0.3.0, no overlap between sets.
fn check_sets(file: &str, sets: &[Vec<Labeled>], version: CniVersion) -> Result<(), CniError> {
    for set in sets {
        let Some(first) = set.first() else { continue };
        let v6 = first.range.subnet.network().is_ipv6();
        for r in set.iter().skip(1) {
            if r.range.subnet.network().is_ipv6() != v6 {
                return Err(conflict(
                    file,
                    format!(
                        "{}.subnet \"{}\" is {}, but {}.subnet \"{}\" in the same range set is {}; put each family in its own range set",
                        r.label,
                        r.range.subnet,
                        family(!v6),
                        first.label,
                        first.range.subnet,
                        family(v6)
                    ),
                ));
            }
        }
        for (i, a) in set.iter().enumerate() {
            for b in set.iter().skip(i + 1) {
                if overlaps(&a.range, &b.range) {
                    return Err(conflict(
                        file,
                        format!("{} overlaps {}", b.describe(), a.describe()),
                    ));
                }
            }
        }
    }
    if version < CniVersion::V0_3_0 {
        for v6 in [false, true] {
            let mut of_family = sets
                .iter()
                .filter_map(|s| s.first())
                .filter(|r| r.range.subnet.network().is_ipv6() == v6);
            if let (Some(_), Some(second)) = (of_family.next(), of_family.next()) {
                return Err(conflict(
                    file,
                    format!(
                        "{}.subnet \"{}\" is a second {} range set, which cniVersion {version} does not allow; use cniVersion 0.3.0 or later",
                        second.label,
                        second.range.subnet,
                        family(v6)
                    ),
                ));
            }
        }
    }
    for (i, s1) in sets.iter().enumerate() {
        for s2 in sets.iter().skip(i + 1) {
            for a in s1 {
                if let Some(b) = s2.iter().find(|b| overlaps(&a.range, &b.range)) {
                    return Err(conflict(
                        file,
                        format!("{} overlaps {}", b.describe(), a.describe()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `ipam.routes`: CIDR destinations, next hops of the same family inside one of the
/// network's subnets (the container's only link), and only families the network has.
fn routes(ipam: Obj<'_>, sets: &[Vec<Labeled>]) -> Result<Vec<RouteConf>, CniError> {
    let Some(items) = ipam.array("routes")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("routes[{i}]");
        let Value::Object(m) = item else {
            return Err(ipam.wrong_type(&key, "an object", item));
        };
        let prefix = ipam.key(&format!("{key}."));
        let o = Obj {
            file: ipam.file,
            prefix: &prefix,
            map: m,
        };
        let dst_text = o.string("dst")?.ok_or_else(|| o.missing("dst", ""))?;
        let dst = cidr(o, "dst", dst_text)?;
        let v6 = dst.network().is_ipv6();
        let subnets: Vec<IpNet> = sets
            .iter()
            .flatten()
            .map(|l| l.range.subnet)
            .filter(|s| s.network().is_ipv6() == v6)
            .collect();
        if subnets.is_empty() {
            return Err(o.invalid(
                "dst",
                &Value::from(dst_text),
                format!(
                    "is {} but the network has no {} range",
                    family(v6),
                    family(v6)
                ),
            ));
        }
        let gw = match o.string("gw")? {
            None => None,
            Some(text) => {
                let gw = ip(o, "gw", text)?;
                if gw.is_ipv6() != v6 {
                    return Err(o.invalid(
                        "gw",
                        &Value::from(text),
                        format!("is {} but dst {dst} is {}", family(!v6), family(v6)),
                    ));
                }
                if !subnets.iter().any(|s| s.contains(&gw)) {
                    let list: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
                    return Err(o.invalid(
                        "gw",
                        &Value::from(text),
                        format!(
                            "is not inside any {} subnet of this network ({})",
                            family(v6),
                            list.join(", ")
                        ),
                    ));
                }
                Some(gw)
            }
        };
        if let Some((k, v)) = UNSUPPORTED_ROUTE_KEYS
            .iter()
            .find_map(|k| o.get(k).map(|v| (*k, v)))
        {
            return Err(o.invalid(k, v, "is not supported by cnibridge"));
        }
        out.push(RouteConf { dst, gw });
    }
    Ok(out)
}

/// An absolute path; `""` counts as absent, as in Go.
fn abs_path(ipam: Obj<'_>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match ipam.string(key)? {
        None | Some("") => Ok(None),
        Some(p) if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
        Some(p) => Err(ipam.invalid(key, &Value::from(p), "must be an absolute path")),
    }
}
