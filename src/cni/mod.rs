//! The CNI side: network names and (later) the config model, Docker options → CNI keys, export.

use ipnet::IpNet;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_cni_rule() {
        assert!(is_valid_name("mybridge"));
        assert!(is_valid_name("a..b"));
        assert!(!is_valid_name("../evil"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("-x"));
    }

    #[test]
    fn derived_names_are_valid() {
        for p in ["10.15.20.0/24", "fd15:30::/64", "::/0"] {
            let n = derived_network_name(&p.parse().unwrap());
            assert!(is_valid_name(&n), "{n}");
        }
        assert_eq!(
            derived_network_name(&"10.15.20.0/24".parse().unwrap()),
            "cnibridge-10.15.20.0-24"
        );
        assert_eq!(
            derived_network_name(&"fd15:30::/64".parse().unwrap()),
            "cnibridge-fd15_30__-64"
        );
    }
}
