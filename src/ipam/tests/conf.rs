//! Pools from CNI configs (`--ipam-opt cni.conf=NAME`) and the shared directory of
//! dual-stack pools from Docker's flags.

use std::fs;

use super::*;

/// An IPAM whose conf dir holds exactly `files` (name, content).
fn env_confs(files: &[(&str, &str)]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let confs = tmp.path().join("conf");
    fs::create_dir_all(&confs).unwrap();
    for (name, text) in files {
        fs::write(confs.join(name), text).unwrap();
    }
    let mut cfg = config(tmp.path(), DEFAULT_POOLS);
    cfg.cni_conf_dir = confs;
    let ipam = Ipam::open(cfg).unwrap();
    Env { tmp, ipam }
}

fn conf_req(sel: &str, v6: bool, pool: Option<&str>, sub: Option<&str>) -> PoolRequest {
    PoolRequest {
        address_space: LOCAL_ADDRESS_SPACE.into(),
        pool: pool.map(net),
        sub_pool: sub.map(net),
        options: [("cni.conf".to_string(), sel.to_string())].into(),
        v6,
    }
}

fn tree_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn ipam_opt_alone_gives_the_configs_pool_and_gateway() {
    // The repo's cni-confs/mybridge.conf: 10.15.20.0/24, no dataDir.
    let e = env();
    let g = e
        .ipam
        .request_pool(&conf_req("mybridge", false, None, None))
        .unwrap();
    assert_eq!(g.pool, net("10.15.20.0/24"));
    assert_eq!(g.pool_id, "10.15.20.0/24");
    assert_eq!(
        g.data,
        [(GATEWAY_DATA.to_string(), "10.15.20.1/24".to_string())].into()
    );
    let rec = e.ipam.pool(&g.pool_id).unwrap();
    assert_eq!(rec.cni_name, "mybridge");
    assert_eq!(rec.data_dir, e.tmp.path().join("data"));
    assert_eq!((rec.range_index, rec.gateway), (0, Some(ip("10.15.20.1"))));
    assert_eq!(rec.conf.as_ref().unwrap().file_name(), "mybridge.conf");
    // --subnet equal to the config's is fine too (the recorded fixture does that).
    e.ipam.release_pool(&g.pool_id).unwrap();
    let p = &e
        .ipam
        .request_pool(&conf_req("mybridge", false, Some("10.15.20.0/24"), None))
        .unwrap()
        .pool_id;
    // The gateway is the config's, skipped like host-local, and has no file (host-local
    // keeps none); --gateway equal to it is answered, another one refused.
    assert_eq!(e.addr(p, None, false).unwrap(), "10.15.20.2/24");
    assert_eq!(
        e.addr(p, Some("10.15.20.1"), true).unwrap(),
        "10.15.20.1/24"
    );
    assert_eq!(e.addr(p, None, true).unwrap(), "10.15.20.1/24");
    assert_eq!(
        e.addr(p, Some("10.15.20.5"), true).unwrap_err().to_string(),
        "gateway 10.15.20.5 does not match mybridge.conf's gateway 10.15.20.1 (network mybridge); drop --gateway or change the config"
    );
    assert!(e
        .addr(p, Some("10.15.20.1"), false)
        .unwrap_err()
        .to_string()
        .contains("is subnet's gateway"));
    let dir = e.tmp.path().join("data/mybridge");
    assert_eq!(tree_of(&dir), ["10.15.20.2", "last_reserved_ip.0", "lock"]);
    // Releasing the gateway (Docker does, before ReleasePool) keeps the config's gateway.
    e.ipam.release_address(p, ip("10.15.20.1")).unwrap();
    assert_eq!(e.ipam.pool(p).unwrap().gateway, Some(ip("10.15.20.1")));
    assert_eq!(e.addr(p, None, false).unwrap(), "10.15.20.3/24");
}

#[test]
fn a_config_that_does_not_fit_the_request_names_file_and_value() {
    let e = env();
    let cases: &[(PoolRequest, &str)] = &[
        (
            conf_req("mybridge", false, Some("10.15.21.0/24"), None),
            "subnet 10.15.21.0/24 does not match mybridge.conf's subnet 10.15.20.0/24 (network mybridge); drop --subnet or change the config",
        ),
        (
            conf_req("mybridge", false, Some("10.15.20.0/24"), Some("10.15.20.128/25")),
            "ip-range 10.15.20.128/25 does not match mybridge.conf's range 10.15.20.1-10.15.20.254 (network mybridge); drop --ip-range or change the config",
        ),
        (
            conf_req("mybridge", true, None, None),
            "mybridge.conf has no IPv6 range (network mybridge), but Docker asked for an IPv6 pool; drop --ipv6, or add an IPv6 range set to the config",
        ),
        (
            conf_req("../etc/passwd", false, None, None),
            "cni.conf \"../etc/passwd\" is not a valid CNI network name",
        ),
        (
            conf_req("nosuch", false, None, None),
            "no CNI config named \"nosuch\" in ",
        ),
    ];
    for (req, want) in cases {
        let err = e.ipam.request_pool(req).unwrap_err().to_string();
        assert!(err.starts_with(want), "{req:?}:\n{err}\nwant: {want}");
    }
    // IPv6-only configs need Docker 28's --ipv4=false: Docker 20.10 asks for an IPv4 pool first.
    let v6_only = env_confs(&[(
        "ipv6-only.conf",
        r#"{"cniVersion": "1.0.0", "name": "ipv6-only", "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00:243::/64"}]]}}"#,
    )]);
    let err = v6_only
        .ipam
        .request_pool(&conf_req("ipv6-only", false, None, None))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "ipv6-only.conf has no IPv4 range (network ipv6-only), but Docker asked for an IPv4 pool; add an IPv4 range set to the config, or create the network with --ipv4=false (Docker 28 or later)"
    );
    assert!(e.ipam.pools().is_empty());
    // A matching --ip-range is fine.
    let e = env();
    e.ipam
        .request_pool(&conf_req("ipv4-routes", false, Some("10.241.0.0/16"), None))
        .unwrap();
    // An invalid config is refused with its own error.
    let e = env_confs(&[(
        "bad.conf",
        r#"{"cniVersion":"1.0.0","name":"bad","type":"macvlan","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
    )]);
    let err = e
        .ipam
        .request_pool(&conf_req("bad", false, None, None))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad.conf: type \"macvlan\" is not implemented by cnibridge (supported: bridge, flannel)"
    );
}

#[test]
fn a_dual_stack_config_shares_one_directory_with_host_locals_indices() {
    let e = env_confs(&[(
        "ds.conflist",
        r#"{"cniVersion":"1.0.0","name":"ds","plugins":[{"type":"bridge","ipam":{"type":"host-local","dataDir":"DATA",
            "ranges":[[{"subnet":"fd33::/64"}],[{"subnet":"10.33.0.0/24","gateway":"10.33.0.254"}]]}}]}"#,
    )]);
    // The config's own dataDir: rewrite the placeholder now that the temp dir is known.
    let data = e.tmp.path().join("own-data");
    let file = e.tmp.path().join("conf/ds.conflist");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("DATA", data.to_str().unwrap())).unwrap();
    let g4 = e
        .ipam
        .request_pool(&conf_req("ds", false, None, None))
        .unwrap();
    let g6 = e
        .ipam
        .request_pool(&conf_req("ds", true, None, None))
        .unwrap();
    assert_eq!(g4.data[GATEWAY_DATA], "10.33.0.254/24");
    assert_eq!(g6.data[GATEWAY_DATA], "fd33::1/64");
    let (r4, r6) = (
        e.ipam.pool(&g4.pool_id).unwrap(),
        e.ipam.pool(&g6.pool_id).unwrap(),
    );
    // Range set order is the config's: IPv6 is set 0 here.
    assert_eq!((r4.range_index, r6.range_index), (1, 0));
    assert_eq!(
        (r4.data_dir.clone(), r6.data_dir.clone()),
        (data.clone(), data.clone())
    );
    assert_eq!(e.addr(&g4.pool_id, None, false).unwrap(), "10.33.0.1/24");
    assert_eq!(e.addr(&g6.pool_id, None, false).unwrap(), "fd33::2/64");
    assert_eq!(
        tree_of(&data.join("ds")),
        [
            "10.33.0.1",
            "fd33::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(
        fs::read_to_string(data.join("ds/last_reserved_ip.1")).unwrap(),
        "10.33.0.1"
    );
}

#[test]
fn several_ranges_of_a_set_are_walked_like_host_local() {
    let e = env_confs(&[(
        "multi.conf",
        r#"{"cniVersion":"1.0.0","name":"multi","type":"bridge","ipam":{"type":"host-local","ranges":[[
            {"subnet":"10.34.0.0/24","rangeStart":"10.34.0.10","rangeEnd":"10.34.0.11"},
            {"subnet":"10.34.0.0/24","rangeStart":"10.34.0.20","rangeEnd":"10.34.0.20"}]]}}"#,
    )]);
    let p = &e
        .ipam
        .request_pool(&conf_req("multi", false, None, None))
        .unwrap()
        .pool_id;
    let got: Vec<String> = (0..3).map(|_| e.addr(p, None, false).unwrap()).collect();
    assert_eq!(got, ["10.34.0.10/24", "10.34.0.11/24", "10.34.0.20/24"]);
    let err = e.addr(p, None, false).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    // A static address outside the windows but inside the subnet is still Docker's to give.
    assert_eq!(
        e.addr(p, Some("10.34.0.100"), false).unwrap(),
        "10.34.0.100/24"
    );
    // Freed .10 comes back after the walk wraps, as host-local's round robin.
    e.ipam.release_address(p, ip("10.34.0.10")).unwrap();
    assert_eq!(e.addr(p, None, false).unwrap(), "10.34.0.10/24");
}

#[test]
fn two_configs_with_one_name_share_a_directory_but_not_addresses() {
    // Issue point c: CNI keys the directory by name, so both use `<data>/same/`; the pool
    // ids (CIDRs) keep the pools apart, and the shared cursor only costs round robin.
    let conf = |subnet: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"same","type":"bridge","ipam":{{"type":"host-local","subnet":"{subnet}"}}}}"#
        )
    };
    let (a, b) = (conf("10.35.0.0/24"), conf("10.36.0.0/24"));
    let e = env_confs(&[("a.conf", &a), ("b.conf", &b)]);
    // By network name the first file in libcni's order wins; base names reach the other.
    let pa = e
        .ipam
        .request_pool(&conf_req("same", false, None, None))
        .unwrap()
        .pool_id;
    let pb = e
        .ipam
        .request_pool(&conf_req("b", false, None, None))
        .unwrap()
        .pool_id;
    assert_eq!((pa.as_str(), pb.as_str()), ("10.35.0.0/24", "10.36.0.0/24"));
    assert_eq!(e.addr(&pa, None, false).unwrap(), "10.35.0.2/24");
    assert_eq!(e.addr(&pb, None, false).unwrap(), "10.36.0.2/24");
    assert_eq!(e.addr(&pb, None, false).unwrap(), "10.36.0.3/24");
    assert_eq!(e.addr(&pa, None, false).unwrap(), "10.35.0.3/24");
    e.ipam.release_pool(&pa).unwrap();
    assert_eq!(
        tree_of(&e.tmp.path().join("data/same")),
        ["10.36.0.2", "10.36.0.3", "last_reserved_ip.0", "lock"]
    );
}

#[test]
fn share_directory_moves_the_ipv6_pool_into_the_ipv4_directory() {
    let e = env();
    let (p4, p6) = ("10.50.0.0/24", "fd50::/64");
    e.pool(p4, None).unwrap();
    e.pool(p6, None).unwrap();
    e.addr(p4, None, true).unwrap();
    e.addr(p6, None, true).unwrap();
    e.addr(p6, Some("fd50::99"), false).unwrap();
    e.ipam.set_owner(p6, ip("fd50::99"), &Owner::Aux).unwrap();
    let old = e.dir(p6);
    assert!(old.exists());
    e.ipam.share_directory(p4, p6).unwrap();
    let rec = e.ipam.pool(p6).unwrap();
    assert_eq!(
        (rec.cni_name.as_str(), rec.range_index),
        ("cnibridge-10.50.0.0-24", 1)
    );
    assert!(!old.exists(), "the IPv6 pool's own directory is gone");
    assert_eq!(
        e.tree(p4),
        [
            "10.50.0.1",
            "fd50::1",
            "fd50::99",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(e.file(p4, "fd50::99").unwrap(), Owner::Aux.render());
    // The cursor moved with it: the next IPv6 address follows the aux address.
    assert_eq!(e.addr(p6, None, false).unwrap(), "fd50::9a/64");
    assert_eq!(
        fs::read_to_string(e.dir(p4).join("last_reserved_ip.1")).unwrap(),
        "fd50::9a"
    );
    // Idempotent, and the record survives a restart.
    e.ipam.share_directory(p4, p6).unwrap();
    assert_eq!(e.reopen().pool(p6).unwrap().range_index, 1);
    // Release goes to the new directory.
    e.ipam.release_address(p6, ip("fd50::9a")).unwrap();
    assert_eq!(e.file(p4, "fd50::9a"), None);
}

#[test]
fn share_directory_leaves_a_directory_with_foreign_files() {
    let e = env();
    let (p4, p6) = ("10.51.0.0/24", "fd51::/64");
    e.pool(p4, None).unwrap();
    e.pool(p6, None).unwrap();
    e.addr(p6, None, true).unwrap();
    fs::write(e.dir(p6).join("fd51::5"), "ctrX\r\neth0").unwrap();
    e.ipam.share_directory(p4, p6).unwrap();
    assert_eq!(e.ipam.pool(p6).unwrap().range_index, 0);
    assert!(e.dir(p6).join("fd51::1").exists());
    // Config pools are never moved.
    let e = env();
    let g = e
        .ipam
        .request_pool(&conf_req("mybridge", false, None, None))
        .unwrap();
    e.pool("fd52::/64", None).unwrap();
    e.ipam.share_directory(&g.pool_id, "fd52::/64").unwrap();
    assert_eq!(e.ipam.pool("fd52::/64").unwrap().range_index, 0);
}

#[test]
fn records_from_before_configs_still_load() {
    let old = r#"{"id":"10.1.0.0/24","address_space":"CniLocal","subnet":"10.1.0.0/24","sub_pool":null,
        "range_start":"10.1.0.1","range_end":"10.1.0.254","gateway":null,"cni_name":"x",
        "data_dir":"/tmp","range_index":0,"network_id":null}"#;
    let rec: PoolRecord = serde_json::from_str(old).unwrap();
    assert!(rec.ranges.is_empty() && rec.conf.is_none());
    assert_eq!(
        rec.windows(),
        [Window {
            start: ip("10.1.0.1"),
            end: ip("10.1.0.254")
        }]
    );
}
