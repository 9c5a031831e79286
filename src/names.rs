//! Names: what cnibridge calls kernel objects, and the CNI rule for network names. A leaf:
//! every layer may use it, it uses none of them.
//!
//! Names cnibridge gives to kernel objects. Derived from Docker's ids so a re-sent request
//! finds the same object, and so an operator can map a link back to its network or endpoint.

use ipnet::IpNet;

/// Default bridge: `cnb-` + the first 11 characters of the NetworkID (15 bytes, the kernel limit).
pub fn default_bridge(network_id: &str) -> String {
    format!("cnb-{}", id_part(network_id, 11))
}

/// Prefix of every host-side veth cnibridge makes.
pub const HOST_VETH_PREFIX: &str = "vcb";

/// Host end of an endpoint's veth pair: `vcb` + 12 characters of the EndpointID.
pub fn host_veth(endpoint_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", id_part(endpoint_id, 12))
}

/// How many host veth names an endpoint may take: [`host_veth`] and, when another live
/// endpoint holds that one (their EndpointIDs share 12 characters), hashed ones of the whole
/// id. Few and derived from the id, so an allocation file's owner is still recognised from
/// its content alone.
pub const HOST_VETH_CHOICES: u8 = 4;

/// The host veth names `endpoint_id` may take, in order of preference.
pub fn host_veth_choices(endpoint_id: &str) -> impl Iterator<Item = String> + '_ {
    (0..HOST_VETH_CHOICES).map(move |n| match n {
        0 => host_veth(endpoint_id),
        _ => {
            let mut salted = endpoint_id.as_bytes().to_vec();
            salted.push(n);
            format!(
                "{HOST_VETH_PREFIX}{}",
                &format!("{:016x}", fnv1a(&salted))[..12]
            )
        }
    })
}

/// Whether `name` is one of the host veth names `endpoint_id` may take.
pub fn is_host_veth_of(endpoint_id: &str, name: &str) -> bool {
    host_veth_choices(endpoint_id).any(|c| c == name)
}

/// The container end of the pair whose host end is `host_veth`: the same 12 characters.
pub fn peer_of_host_veth(host_veth: &str) -> Option<String> {
    host_veth
        .strip_prefix(HOST_VETH_PREFIX)
        .map(|id| format!("ccb{id}"))
}

/// The ifb device carrying an endpoint's egress shaping (CNI `bandwidth`): `bcb` + 12
/// characters of the EndpointID.
pub fn ifb(endpoint_id: &str) -> String {
    format!("{IFB_PREFIX}{}", id_part(endpoint_id, 12))
}

const IFB_PREFIX: &str = "bcb";

/// The ifb device of the endpoint whose host veth is `host_veth`: both carry the same part of
/// the EndpointID, so an orphan veth (its endpoint forgotten) leads to its orphan ifb.
pub fn ifb_of_host_veth(host_veth: &str) -> Option<String> {
    host_veth
        .strip_prefix(HOST_VETH_PREFIX)
        .map(|id| format!("{IFB_PREFIX}{id}"))
}

/// Container end before Docker renames it: `ccb` + 12 characters of the EndpointID.
pub fn peer_veth(endpoint_id: &str) -> String {
    format!("ccb{}", id_part(endpoint_id, 12))
}

/// A locally administered unicast MAC derived from the EndpointID, so a re-sent CreateEndpoint
/// answers the same MAC.
pub fn endpoint_mac(endpoint_id: &str) -> [u8; 6] {
    let h = fnv1a(endpoint_id.as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Docker ids are hex; anything else (tests, other engines) is hashed so names stay valid.
fn id_part(id: &str, len: usize) -> String {
    match id.get(..len) {
        Some(p) if p.chars().all(|c| c.is_ascii_alphanumeric()) => p.to_ascii_lowercase(),
        _ => format!("{:016x}", fnv1a(id.as_bytes()))[..len].to_string(),
    }
}

/// libcni/skel's rule for network names and container ids: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
/// The name becomes a directory under the data dir, so this is also the traversal guard.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The CNI network name of a pool that no config names: stable, valid, and readable
/// (`cnibridge-10.15.20.0-24`, `cnibridge-fd15_30__-64`).
pub fn derived_network_name(pool: &IpNet) -> String {
    let addr = pool.network().to_string().replace(':', "_");
    format!("cnibridge-{addr}-{}", pool.prefix_len())
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit() {
        let id = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
        assert_eq!(host_veth(id), "vcb9dbfb9b7a99c");
        assert_eq!(peer_veth(id), "ccb9dbfb9b7a99c");
        assert_eq!(default_bridge(id), "cnb-9dbfb9b7a99");
        for n in [host_veth("x"), peer_veth("a/b"), default_bridge("")] {
            assert!(
                n.len() <= 15 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
        }
    }

    #[test]
    fn endpoint_ids_sharing_12_characters_have_other_veth_choices() {
        let a = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
        let b = "9dbfb9b7a99cffffc089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
        let (ca, cb): (Vec<_>, Vec<_>) = (
            host_veth_choices(a).collect(),
            host_veth_choices(b).collect(),
        );
        assert_eq!(ca[0], cb[0]);
        assert!(ca[1..].iter().all(|n| !cb.contains(n)), "{ca:?} {cb:?}");
        for n in &ca {
            assert!(n.len() <= 15 && is_host_veth_of(a, n), "{n}");
            assert_eq!(peer_of_host_veth(n).map(|p| p.len()), Some(n.len()));
        }
        assert_eq!(
            peer_of_host_veth(&ca[0]).as_deref(),
            Some(peer_veth(a).as_str())
        );
        assert!(!is_host_veth_of(a, "vcbffffffffffff"));
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let m = endpoint_mac("abc");
        assert_eq!(m, endpoint_mac("abc"));
        assert_eq!(m[0] & 0x03, 0x02);
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
        assert_eq!(parse_mac("00:00:00:00:00"), None);
    }
}
