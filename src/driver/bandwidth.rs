//! Traffic shaping of endpoints: the CNI `bandwidth` plugin's four keys, from the network's
//! config, from `-o cni.bandwidth.*` on the network, and from
//! `--network name=N,driver-opt=cni.bandwidth.*` on one container (which no Docker driver
//! offers: Docker has no per-container bandwidth limit). Each later source overrides the keys
//! it sets. Pure: the caller applies the result through `Dataplane::set_shaping`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::DriverError;
use crate::cni::chain::{Bandwidth, Chain};
use crate::dataplane::{Shaping, TokenBucket};

/// The option prefix on networks and endpoints.
pub const PREFIX: &str = "cni.bandwidth.";

/// The keys after [`PREFIX`], as the bandwidth plugin names them.
pub const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// Whether `key` is one of ours (`cni.bandwidth.<any>`): unknown suffixes are then refused
/// by [`overlay`], naming the keys there are.
pub fn is_bandwidth_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// `base` with the `cni.bandwidth.*` entries of `options` applied; `what` names the source in
/// errors (`-o` or `driver-opt`). `None` in, no keys given: `None` out.
pub fn overlay<'a>(
    base: Option<Bandwidth>,
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
    what: &str,
) -> Result<Option<Bandwidth>, DriverError> {
    let mut out = base;
    for (key, value) in options {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let n: u64 = value.trim().parse().map_err(|_| {
            DriverError::Invalid(format!(
                "{what} {key}={value:?} is not a whole number; rates are bits per second and bursts bits, as the CNI bandwidth plugin reads them (e.g. {PREFIX}ingressRate=8000000 {PREFIX}ingressBurst=80000)"
            ))
        })?;
        let b = out.get_or_insert_with(Bandwidth::default);
        // The docker CLI lowercases driver-opt keys (`--network name=N,driver-opt=…`), so the
        // plugin's camelCase names are matched in any case.
        match name.to_ascii_lowercase().as_str() {
            "ingressrate" => b.ingress_rate = n,
            "ingressburst" => b.ingress_burst = n,
            "egressrate" => b.egress_rate = n,
            "egressburst" => b.egress_burst = n,
            _ => {
                return Err(DriverError::Invalid(format!(
                    "unknown {what} {key}; the bandwidth keys are {}",
                    KEYS.map(|k| format!("{PREFIX}{k}")).join(", ")
                )))
            }
        }
    }
    if let Some(b) = &out {
        check(b, what)?;
    }
    Ok(out)
}

/// A network's chain with its `-o cni.bandwidth.*` options applied: the bandwidth plugin's
/// keys are overridden (or the plugin is added), in the parsed chain and in the plugin object
/// the export writes, so a CNI runtime sharing the network shapes its containers alike.
pub fn chain_with_options(
    mut chain: Chain,
    generic: &BTreeMap<String, String>,
) -> Result<Chain, DriverError> {
    let given: Vec<(&str, &str)> = generic
        .iter()
        .filter(|(k, _)| is_bandwidth_key(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if given.is_empty() {
        return Ok(chain);
    }
    let Some(b) = overlay(chain.bandwidth, given, "-o")? else {
        return Ok(chain);
    };
    chain.bandwidth = Some(b);
    let keys = [
        ("ingressRate", b.ingress_rate),
        ("ingressBurst", b.ingress_burst),
        ("egressRate", b.egress_rate),
        ("egressBurst", b.egress_burst),
    ];
    let idx = chain
        .raw
        .iter()
        .position(|p| p.get("type").and_then(Value::as_str) == Some("bandwidth"));
    let idx = idx.unwrap_or_else(|| {
        chain.raw.push(serde_json::json!({"type": "bandwidth"}));
        chain.raw.len() - 1
    });
    if let Some(Value::Object(obj)) = chain.raw.get_mut(idx) {
        for (k, v) in keys {
            if v > 0 {
                obj.insert(k.to_string(), Value::from(v));
            } else {
                obj.remove(k);
            }
        }
    }
    Ok(chain)
}

/// The bandwidth plugin's rule: a direction's rate and burst are set together.
fn check(b: &Bandwidth, what: &str) -> Result<(), DriverError> {
    for (dir, rate, burst) in [
        ("ingress", b.ingress_rate, b.ingress_burst),
        ("egress", b.egress_rate, b.egress_burst),
    ] {
        if (rate == 0) != (burst == 0) {
            return Err(DriverError::Invalid(format!(
                "{what}: {dir}Rate {rate} and {dir}Burst {burst}: set both or neither (a token bucket needs a rate and a burst)"
            )));
        }
    }
    Ok(())
}

/// The shaping of an endpoint with limits `b`.
pub fn shaping(b: &Bandwidth) -> Shaping {
    let bucket = |rate: u64, burst: u64| (rate > 0).then_some(TokenBucket { rate, burst });
    Shaping {
        ingress: bucket(b.ingress_rate, b.ingress_burst),
        egress: bucket(b.egress_rate, b.egress_burst),
    }
}

/// The string options of a map whose values may be JSON (CreateEndpoint's `Options`).
pub fn string_options(options: &crate::driver::GenericOptions) -> BTreeMap<String, String> {
    options
        .iter()
        .filter(|(k, _)| is_bandwidth_key(k))
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a str)> {
        pairs.iter().copied()
    }

    #[test]
    fn later_sources_override_the_keys_they_set() {
        let net = Bandwidth {
            ingress_rate: 1000,
            ingress_burst: 100,
            egress_rate: 2000,
            egress_burst: 200,
        };
        let got = overlay(
            Some(net),
            opts(&[
                ("cni.bandwidth.ingressRate", "5000"),
                ("cni.bandwidth.ingressBurst", "500"),
                ("other", "x"),
            ]),
            "driver-opt",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            Bandwidth {
                ingress_rate: 5000,
                ingress_burst: 500,
                ..net
            }
        );
        assert_eq!(overlay(None, opts(&[("x", "1")]), "-o").unwrap(), None);
    }

    /// What `docker run --network name=N,driver-opt=cni.bandwidth.egressRate=…` sends: the CLI
    /// lowercases the key.
    #[test]
    fn keys_lowercased_by_the_docker_cli_are_the_same_keys() {
        let got = overlay(
            None,
            opts(&[
                ("cni.bandwidth.egressrate", "2000000"),
                ("cni.bandwidth.egressburst", "40000"),
            ]),
            "driver-opt",
        )
        .unwrap()
        .unwrap();
        assert_eq!((got.egress_rate, got.egress_burst), (2_000_000, 40_000));
    }

    #[test]
    fn bad_values_and_keys_are_refused_by_name() {
        let err = overlay(None, opts(&[("cni.bandwidth.ingressRate", "8mbit")]), "-o")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("-o cni.bandwidth.ingressRate=\"8mbit\" is not a whole number"),
            "{err}"
        );
        let err = overlay(None, opts(&[("cni.bandwidth.rate", "1")]), "driver-opt")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown driver-opt cni.bandwidth.rate; the bandwidth keys are cni.bandwidth.ingressRate, cni.bandwidth.ingressBurst, cni.bandwidth.egressRate, cni.bandwidth.egressBurst");
        let err = overlay(None, opts(&[("cni.bandwidth.egressRate", "1000")]), "-o")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("egressRate 1000 and egressBurst 0: set both"),
            "{err}"
        );
    }

    #[test]
    fn shaping_has_a_bucket_per_limited_direction() {
        let s = shaping(&Bandwidth {
            ingress_rate: 8_000_000,
            ingress_burst: 80_000,
            ..Bandwidth::default()
        });
        assert_eq!(
            s.ingress,
            Some(TokenBucket {
                rate: 8_000_000,
                burst: 80_000
            })
        );
        assert_eq!(s.egress, None);
    }
}
