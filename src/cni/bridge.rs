//! The bridge plugin's own keys beyond the booleans: interface name, MTU, VLANs, masquerade
//! backend, `dns` and `capabilities`, each checked as the plugin (or the kernel) would.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{Dns, MasqBackend, VlanTrunk};
use super::json::{render, Obj};
use super::CniError;

/// The kernel's `dev_valid_name`.
pub(super) fn valid_ifname(name: &str) -> bool {
    !(name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace()))
}

pub(super) fn masq_backend(b: Obj<'_>) -> Result<Option<MasqBackend>, CniError> {
    match b.string("ipMasqBackend")? {
        None => Ok(None),
        Some("iptables") => Ok(Some(MasqBackend::Iptables)),
        Some("nftables") => Ok(Some(MasqBackend::Nftables)),
        Some(s) => Err(b.invalid(
            "ipMasqBackend",
            &Value::from(s),
            "is not supported; use iptables or nftables",
        )),
    }
}

pub(super) fn mtu(b: Obj<'_>) -> Result<u32, CniError> {
    let Some(n) = b.integer("mtu")? else {
        return Ok(0);
    };
    // 68 is IPv4's minimum link MTU; 65535 the largest a bridge or veth takes.
    match u32::try_from(n) {
        Ok(m) if m == 0 || (68..=65535).contains(&m) => Ok(m),
        _ => Err(CniError::Invalid {
            file: b.file.to_string(),
            key: b.key("mtu"),
            value: n.to_string(),
            reason: "is out of range: use 0 for the kernel default, or 68 to 65535".into(),
        }),
    }
}

fn vlan_id(o: Obj<'_>, key: &str, min: i128) -> Result<Option<u16>, CniError> {
    let Some(n) = o.integer(key)? else {
        return Ok(None);
    };
    match u16::try_from(n) {
        Ok(v) if i128::from(v) >= min && v <= 4094 => Ok(Some(v)),
        _ => Err(CniError::Invalid {
            file: o.file.to_string(),
            key: o.key(key),
            value: n.to_string(),
            reason: format!("is out of range ({min} to 4094)"),
        }),
    }
}

pub(super) fn vlan(b: Obj<'_>) -> Result<u16, CniError> {
    Ok(vlan_id(b, "vlan", 0)?.unwrap_or(0))
}

pub(super) fn vlan_trunk(b: Obj<'_>) -> Result<Vec<VlanTrunk>, CniError> {
    let Some(items) = b.array("vlanTrunk")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let prefix = b.key(&format!("vlanTrunk[{i}]."));
        let Value::Object(m) = item else {
            return Err(b.wrong_type(&format!("vlanTrunk[{i}]"), "an object", item));
        };
        let o = Obj {
            file: b.file,
            prefix: &prefix,
            map: m,
        };
        let id = vlan_id(o, "id", 1)?;
        let min = vlan_id(o, "minID", 1)?;
        let max = vlan_id(o, "maxID", 1)?;
        let t = match (id, min, max) {
            (Some(id), None, None) => VlanTrunk { min: id, max: id },
            (None, Some(min), Some(max)) if min <= max => VlanTrunk { min, max },
            (None, Some(min), Some(max)) => {
                return Err(CniError::Conflict {
                    file: b.file.to_string(),
                    reason: format!("{}minID {min} is greater than maxID {max}", prefix),
                })
            }
            _ => {
                return Err(CniError::Invalid {
                    file: b.file.to_string(),
                    key: b.key(&format!("vlanTrunk[{i}]")),
                    value: render(item),
                    reason: "needs either id or both minID and maxID".into(),
                })
            }
        };
        out.push(t);
    }
    Ok(out)
}

pub(super) fn dns(b: Obj<'_>) -> Result<Option<Dns>, CniError> {
    let Some(m) = b.object("dns")? else {
        return Ok(None);
    };
    let prefix = b.key("dns.");
    let o = Obj {
        file: b.file,
        prefix: &prefix,
        map: m,
    };
    Ok(Some(Dns {
        nameservers: o.strings("nameservers")?,
        domain: o.string("domain")?.map(str::to_string),
        search: o.strings("search")?,
        options: o.strings("options")?,
    }))
}

pub(super) fn capabilities(b: Obj<'_>) -> Result<BTreeMap<String, bool>, CniError> {
    let Some(m) = b.object("capabilities")? else {
        return Ok(BTreeMap::new());
    };
    let prefix = b.key("capabilities.");
    let o = Obj {
        file: b.file,
        prefix: &prefix,
        map: m,
    };
    m.keys()
        .map(|k| Ok((k.clone(), o.boolean(k)?.unwrap_or(false))))
        .collect()
}
