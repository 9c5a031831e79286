//! CreateNetwork options → a validated network plan, before any side effect.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::DriverError;

/// `-o` options arrive in this map of strings.
pub const GENERIC: &str = "com.docker.network.generic";
/// Top-level bool for `--internal`.
pub const INTERNAL: &str = "com.docker.network.internal";
/// Top-level bool for `--ipv6`.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";

const BRIDGE: &str = "bridge";
const DOCKER_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const MTU: &str = "mtu";
const DOCKER_MTU: &str = "com.docker.network.driver.mtu";
const IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
/// CNI bridge's masquerade switch (IPv4 here; CNI's covers every family of the attachment).
pub const IP_MASQ: &str = "ipMasq";
/// Docker's spelling of `ipMasq`.
pub const DOCKER_IP_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
/// cnibridge's own key for IPv6 masquerade, in CNI style; neither CNI nor Docker has one.
pub const IP_MASQ_IPV6: &str = "ipMasqIPv6";
/// Docker's inter-container communication switch.
pub const DOCKER_ICC: &str = "com.docker.network.bridge.enable_icc";
/// Docker's default host address of published ports without one (`-p 8080:80`).
pub const HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";

/// Selects a CNI config from `--cni-conf-dir` (also as `--ipam-opt`).
pub const CNI_CONF: &str = "cni.conf";
/// CNI bridge keys accepted as raw `-o` options.
pub const IS_GATEWAY: &str = "isGateway";
pub const IS_DEFAULT_GATEWAY: &str = "isDefaultGateway";
pub const HAIRPIN_MODE: &str = "hairpinMode";
pub const PROMISC_MODE: &str = "promiscMode";
pub const FORCE_ADDRESS: &str = "forceAddress";

/// Keys honoured now.
const HONOURED: &[&str] = &[
    BRIDGE,
    DOCKER_BRIDGE_NAME,
    MTU,
    DOCKER_MTU,
    IFACE_PREFIX,
    IP_MASQ,
    DOCKER_IP_MASQ,
    IP_MASQ_IPV6,
    DOCKER_ICC,
    CNI_CONF,
    IS_GATEWAY,
    IS_DEFAULT_GATEWAY,
    HAIRPIN_MODE,
    PROMISC_MODE,
    FORCE_ADDRESS,
    HOST_BINDING,
];

/// Keys Docker or compose set that mean nothing to this driver.
const IGNORED: &[&str] = &[
    "com.docker.network.bridge.default_bridge",
    "com.docker.network.enable_ipv4",
    "com.docker.network.enable_ipv6",
    "com.docker.network.advertise_addr_nmsgs",
    "com.docker.network.advertise_addr_ms",
];

/// What the options of one CreateNetwork ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    pub iface_prefix: String,
    pub internal: bool,
    pub enable_ipv6: bool,
    /// Masquerade and icc, as `firewall_options` reads them.
    pub firewall: FirewallOptions,
    /// `host_binding_ipv4`: where ports published without a host address listen.
    pub host_binding: Option<IpAddr>,
    /// `-o cni.conf=NAME`.
    pub cni_conf: Option<String>,
    /// The CNI bridge switches given as `-o` options.
    pub cni_flags: CniFlags,
    /// The `-o` map as sent.
    pub generic: BTreeMap<String, String>,
}

/// CNI bridge switches given as raw `-o` options (`None` = not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CniFlags {
    pub is_gateway: Option<bool>,
    pub is_default_gateway: Option<bool>,
    pub hairpin_mode: Option<bool>,
    pub promisc_mode: Option<bool>,
    pub force_address: Option<bool>,
}

impl CniFlags {
    fn parse(generic: &BTreeMap<String, String>) -> Result<Self, DriverError> {
        let get = |k: &str| generic.get(k).map(|v| parse_go_bool(k, v)).transpose();
        let flags = CniFlags {
            is_gateway: get(IS_GATEWAY)?,
            is_default_gateway: get(IS_DEFAULT_GATEWAY)?,
            hairpin_mode: get(HAIRPIN_MODE)?,
            promisc_mode: get(PROMISC_MODE)?,
            force_address: get(FORCE_ADDRESS)?,
        };
        // The bridge plugin refuses the pair at ADD; refusing it here keeps the network
        // exportable.
        if flags.hairpin_mode == Some(true) && flags.promisc_mode == Some(true) {
            return Err(DriverError::Invalid(format!(
                "options {HAIRPIN_MODE}=true and {PROMISC_MODE}=true cannot be combined (the CNI bridge plugin refuses them together); give one of them"
            )));
        }
        Ok(flags)
    }
}

/// The key under which `generic` holds a value given under one of two spellings, for messages.
pub fn given_key<'a>(generic: &BTreeMap<String, String>, a: &'a str, b: &'a str) -> &'a str {
    if generic.contains_key(a) {
        a
    } else {
        b
    }
}

/// The spellings of the bridge-name and MTU options, for messages about them.
pub const BRIDGE_KEYS: (&str, &str) = (BRIDGE, DOCKER_BRIDGE_NAME);
/// See [`BRIDGE_KEYS`].
pub const MTU_KEYS: (&str, &str) = (MTU, DOCKER_MTU);
/// See [`BRIDGE_KEYS`].
pub const IP_MASQ_KEYS: (&str, &str) = (IP_MASQ, DOCKER_IP_MASQ);

/// The masquerade switch as given (either spelling), `None` if not given.
pub fn ip_masq_given(generic: &BTreeMap<String, String>) -> Result<Option<bool>, DriverError> {
    bool_of(generic, IP_MASQ, DOCKER_IP_MASQ)
}

/// The firewall switches of a network (Docker's bridge defaults: masquerade and icc on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallOptions {
    /// IPv4 masquerade: `ipMasq` / `enable_ip_masquerade`, default true, off when internal.
    pub masquerade: bool,
    /// IPv6 masquerade: `ipMasqIPv6`, default false, off when internal.
    pub masquerade_ipv6: bool,
    /// `enable_icc`, default true.
    pub icc: bool,
}

impl FirewallOptions {
    /// What a network gets when it sets none of the keys.
    pub fn defaults(internal: bool) -> Self {
        FirewallOptions {
            masquerade: !internal,
            masquerade_ipv6: false,
            icc: true,
        }
    }
}

/// `com.docker.network.bridge.host_binding_ipv4`, as Docker's bridge reads it: any IP address
/// (despite the name, an IPv6 one too), the host address of every port published without one.
/// Unset is Docker's empty `HostIP`: every address.
pub fn host_binding(generic: &BTreeMap<String, String>) -> Result<Option<IpAddr>, DriverError> {
    match generic.get(HOST_BINDING).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            DriverError::Invalid(format!(
                "-o {HOST_BINDING}={v:?} is not an IP address; give the host address published ports listen on"
            ))
        }),
    }
}

/// Read the firewall switches from the `-o` map. `--internal` turns masquerade off whatever the
/// options say (there is no traffic leaving the network to masquerade), as Docker does.
pub fn firewall_options(
    generic: &BTreeMap<String, String>,
    internal: bool,
) -> Result<FirewallOptions, DriverError> {
    let defaults = FirewallOptions::defaults(internal);
    let masquerade = bool_of(generic, IP_MASQ, DOCKER_IP_MASQ)?.unwrap_or(true);
    let masquerade_ipv6 = match generic.get(IP_MASQ_IPV6) {
        Some(v) => parse_go_bool(IP_MASQ_IPV6, v)?,
        None => defaults.masquerade_ipv6,
    };
    let icc = match generic.get(DOCKER_ICC) {
        Some(v) => parse_go_bool(DOCKER_ICC, v)?,
        None => defaults.icc,
    };
    Ok(FirewallOptions {
        masquerade: masquerade && !internal,
        masquerade_ipv6: masquerade_ipv6 && !internal,
        icc,
    })
}

/// Go's `strconv.ParseBool`, which is what Docker uses for these options.
pub fn parse_go_bool(key: &str, value: &str) -> Result<bool, DriverError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(DriverError::Invalid(format!(
            "option {key}={value:?} is not a boolean; use true or false"
        ))),
    }
}

/// Linux interface name rules (the kernel's `dev_valid_name`).
pub fn check_ifname(what: &str, name: &str) -> Result<(), DriverError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(DriverError::Invalid(format!(
            "{what} {name:?} is not a valid interface name: 1 to 15 bytes, no '/', ':' or spaces"
        )));
    }
    Ok(())
}

fn top_bool(options: &Map<String, Value>, key: &str) -> Result<bool, DriverError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => parse_go_bool(key, s),
        Some(other) => Err(DriverError::Invalid(format!(
            "option {key} must be a boolean, got {other}"
        ))),
    }
}

/// One value given under two spellings must agree.
fn one_of(
    generic: &BTreeMap<String, String>,
    a: &str,
    b: &str,
) -> Result<Option<String>, DriverError> {
    match (generic.get(a), generic.get(b)) {
        (Some(x), Some(y)) if x != y => Err(DriverError::Invalid(format!(
            "options {a}={x:?} and {b}={y:?} contradict each other; give one of them"
        ))),
        (Some(x), _) | (None, Some(x)) => Ok(Some(x.clone())),
        (None, None) => Ok(None),
    }
}

/// One boolean given under two spellings must mean the same (`1` and `true` agree).
fn bool_of(
    generic: &BTreeMap<String, String>,
    a: &str,
    b: &str,
) -> Result<Option<bool>, DriverError> {
    let x = generic.get(a).map(|v| parse_go_bool(a, v)).transpose()?;
    let y = generic.get(b).map(|v| parse_go_bool(b, v)).transpose()?;
    match (x, y) {
        (Some(x), Some(y)) if x != y => Err(DriverError::Invalid(format!(
            "options {a}={:?} and {b}={:?} contradict each other; give one of them",
            generic.get(a).map(String::as_str).unwrap_or_default(),
            generic.get(b).map(String::as_str).unwrap_or_default(),
        ))),
        (x, y) => Ok(x.or(y)),
    }
}

/// Parse and validate CreateNetwork's `Options`.
pub fn parse(options: &Map<String, Value>) -> Result<NetworkOptions, DriverError> {
    let mut generic = BTreeMap::new();
    match options.get(GENERIC) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(DriverError::Invalid(format!(
                            "option {k} must be a string, got {other}"
                        )))
                    }
                };
                generic.insert(k.clone(), v);
            }
        }
        Some(other) => {
            return Err(DriverError::Invalid(format!(
                "{GENERIC} must be a map of strings, got {other}"
            )))
        }
    }
    for key in generic.keys() {
        let known = HONOURED.contains(&key.as_str())
            || IGNORED.contains(&key.as_str())
            || key.starts_with("com.docker.network.driver.private.")
            || super::bandwidth::is_bandwidth_key(key);
        if !known {
            let bandwidth =
                super::bandwidth::KEYS.map(|k| format!("{}{k}", super::bandwidth::PREFIX));
            let mut all: Vec<&str> = HONOURED.to_vec();
            all.extend(bandwidth.iter().map(String::as_str));
            all.sort_unstable();
            return Err(DriverError::Invalid(format!(
                "unknown option -o {key}; known options: {}",
                all.join(", ")
            )));
        }
    }

    let bridge = one_of(&generic, BRIDGE, DOCKER_BRIDGE_NAME)?;
    if let Some(name) = &bridge {
        check_ifname("bridge name", name)?;
    }
    let mtu = match one_of(&generic, MTU, DOCKER_MTU)? {
        None => None,
        Some(s) => match s.trim().parse::<i64>() {
            Ok(0) => None,
            Ok(n) if (68..=65535).contains(&n) => Some(n as u32),
            _ => {
                return Err(DriverError::Invalid(format!(
                    "option mtu={s:?} is not a valid MTU; use a whole number from 68 to 65535"
                )))
            }
        },
    };
    let iface_prefix = generic
        .get(IFACE_PREFIX)
        .cloned()
        .unwrap_or_else(|| "eth".to_string());
    // Docker appends an index, so leave room for it within 15 bytes.
    if iface_prefix.len() > 13 {
        return Err(DriverError::Invalid(format!(
            "option {IFACE_PREFIX}={iface_prefix:?} is too long; use at most 13 bytes"
        )));
    }
    check_ifname(IFACE_PREFIX, &iface_prefix)?;
    let internal = top_bool(options, INTERNAL)?;

    Ok(NetworkOptions {
        bridge,
        mtu,
        iface_prefix,
        internal,
        enable_ipv6: top_bool(options, ENABLE_IPV6)?,
        firewall: firewall_options(&generic, internal)?,
        host_binding: host_binding(&generic)?,
        cni_conf: generic.get(CNI_CONF).cloned(),
        cni_flags: CniFlags::parse(&generic)?,
        generic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn fixture_options_parse() {
        let o = parse(&opts(json!({
            "com.docker.network.enable_ipv6": false,
            "com.docker.network.generic": {"bridge": "cni_bridge0", "ipMasq": "true"}
        })))
        .unwrap();
        assert_eq!(o.bridge.as_deref(), Some("cni_bridge0"));
        assert!(!o.internal && !o.enable_ipv6);
        let o = parse(&opts(json!({
            "com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"},
            "com.docker.network.internal": true
        })))
        .unwrap();
        assert_eq!(o.mtu, Some(1400));
        assert!(o.internal);
        assert_eq!(o.iface_prefix, "eth");
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let cases = [
            (
                json!({"com.docker.network.generic": {"bridg": "x"}}),
                "unknown option -o bridg; known options: ",
            ),
            (
                json!({"com.docker.network.generic": {"bridge": "a", "com.docker.network.bridge.name": "b"}}),
                "contradict",
            ),
            (
                json!({"com.docker.network.generic": {"bridge": "this-name-is-too-long"}}),
                "not a valid interface name",
            ),
            (
                json!({"com.docker.network.generic": {"mtu": "big"}}),
                "not a valid MTU",
            ),
            (
                json!({"com.docker.network.generic": {"mtu": "-1"}}),
                "not a valid MTU",
            ),
            (
                json!({"com.docker.network.generic": ["x"]}),
                "must be a map",
            ),
            (
                json!({"com.docker.network.internal": "maybe"}),
                "not a boolean",
            ),
        ];
        for (input, want) in cases {
            let err = parse(&opts(input.clone())).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    fn fw(generic: Value, internal: bool) -> Result<FirewallOptions, DriverError> {
        parse(&opts(json!({
            "com.docker.network.generic": generic,
            "com.docker.network.internal": internal,
        })))
        .map(|o| o.firewall)
    }

    #[test]
    fn firewall_defaults_are_docker_bridge_defaults() {
        let want = FirewallOptions {
            masquerade: true,
            masquerade_ipv6: false,
            icc: true,
        };
        assert_eq!(fw(json!({}), false).unwrap(), want);
        // No generic map at all: the same.
        assert_eq!(parse(&Map::new()).unwrap().firewall, want);
    }

    #[test]
    fn firewall_keys_are_honoured_under_both_spellings() {
        let cases = [
            (json!({"ipMasq": "false"}), false, false, true),
            (json!({"ipMasq": "0"}), false, false, true),
            (
                json!({"com.docker.network.bridge.enable_ip_masquerade": "false"}),
                false,
                false,
                true,
            ),
            (
                json!({"ipMasq": "true", "com.docker.network.bridge.enable_ip_masquerade": "1"}),
                true,
                false,
                true,
            ),
            (
                json!({"ipMasq": "F", "com.docker.network.bridge.enable_ip_masquerade": "false"}),
                false,
                false,
                true,
            ),
            (json!({"ipMasqIPv6": "true"}), true, true, true),
            (
                json!({"ipMasq": "false", "ipMasqIPv6": "true"}),
                false,
                true,
                true,
            ),
            (
                json!({"com.docker.network.bridge.enable_icc": "false"}),
                true,
                false,
                false,
            ),
            (json!({"ipMasq": true}), true, false, true),
        ];
        for (generic, masquerade, masquerade_ipv6, icc) in cases {
            let want = FirewallOptions {
                masquerade,
                masquerade_ipv6,
                icc,
            };
            assert_eq!(fw(generic.clone(), false).unwrap(), want, "{generic}");
        }
    }

    #[test]
    fn internal_turns_masquerade_off_but_keeps_icc() {
        for generic in [
            json!({}),
            json!({"ipMasq": "true", "ipMasqIPv6": "true"}),
            json!({"com.docker.network.bridge.enable_icc": "false"}),
        ] {
            let got = fw(generic.clone(), true).unwrap();
            assert!(!got.masquerade && !got.masquerade_ipv6, "{generic}");
            assert_eq!(
                got.icc,
                generic
                    .get("com.docker.network.bridge.enable_icc")
                    .is_none()
            );
        }
    }

    #[test]
    fn bad_firewall_values_are_refused() {
        for (generic, want) in [
            (
                json!({"ipMasq": "true", "com.docker.network.bridge.enable_ip_masquerade": "false"}),
                "options ipMasq=\"true\" and com.docker.network.bridge.enable_ip_masquerade=\"false\" contradict each other",
            ),
            (json!({"ipMasq": "yes"}), "option ipMasq=\"yes\" is not a boolean"),
            (json!({"ipMasqIPv6": "on"}), "option ipMasqIPv6=\"on\" is not a boolean"),
            (
                json!({"com.docker.network.bridge.enable_icc": ""}),
                "option com.docker.network.bridge.enable_icc=\"\" is not a boolean",
            ),
        ] {
            let err = fw(generic.clone(), false).unwrap_err().to_string();
            assert!(err.contains(want), "{generic}: {err}");
            // An internal network validates them too.
            assert!(fw(generic, true).is_err());
        }
    }

    #[test]
    fn go_bool_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parse_go_bool("k", t).unwrap());
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parse_go_bool("k", f).unwrap());
        }
        assert!(parse_go_bool("k", "yes").is_err());
    }
}
