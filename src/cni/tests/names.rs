//! The name rules of `mod.rs`.

use crate::cni::{derived_network_name, is_valid_name};

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

#[test]
fn versions_match_their_list() {
    use crate::cni::config::SUPPORTED_VERSIONS;
    use crate::cni::CniVersion;
    let strs: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    assert_eq!(strs, SUPPORTED_VERSIONS);
    assert!(CniVersion::ALL.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(CniVersion::parse("0.3.2"), None);
}
