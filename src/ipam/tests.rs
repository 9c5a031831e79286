//! Tests of the `Ipam` facade against a real store in a temp dir.

mod abandoned;
mod conf;
mod ownership;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

struct Env {
    tmp: tempfile::TempDir,
    ipam: Arc<Ipam>,
}

fn config(root: &Path, defaults: &str) -> IpamConfig {
    IpamConfig {
        state: StateDir::open(root.join("state")).unwrap(),
        data_dir: root.join("data"),
        default_pools: defaults.split(',').map(|d| d.parse().unwrap()).collect(),
        cni_conf_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs"),
    }
}

fn env_with(defaults: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(config(tmp.path(), defaults)).unwrap();
    Env { tmp, ipam }
}

fn env() -> Env {
    env_with(DEFAULT_POOLS)
}

impl Env {
    fn reopen(&self) -> Arc<Ipam> {
        Ipam::open(config(self.tmp.path(), DEFAULT_POOLS)).unwrap()
    }

    fn dir(&self, pool: &str) -> PathBuf {
        self.tmp
            .path()
            .join("data")
            .join(crate::cni::derived_network_name(&net(pool)))
    }

    fn file(&self, pool: &str, addr: &str) -> Option<String> {
        fs::read_to_string(self.dir(pool).join(addr)).ok()
    }

    /// Every file name in the pool's directory.
    fn tree(&self, pool: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir(pool))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn pool(&self, subnet: &str, sub: Option<&str>) -> Result<PoolGrant, IpamError> {
        self.ipam.request_pool(&PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: Some(net(subnet)),
            sub_pool: sub.map(net),
            options: BTreeMap::new(),
            v6: net(subnet).network().is_ipv6(),
        })
    }

    fn default_pool(&self, v6: bool) -> Result<PoolGrant, IpamError> {
        self.ipam.request_pool(&PoolRequest {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            v6,
            ..Default::default()
        })
    }

    fn addr(&self, pool: &str, a: Option<&str>, gw: bool) -> Result<String, IpamError> {
        self.ipam
            .request_address(pool, a.map(ip), gw)
            .map(|n| n.to_string())
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn default_pools_are_distinct_while_held_then_exhausted() {
    let e = env_with("10.210.0.0/23:24,fd7b::/63:64");
    let a = e.default_pool(false).unwrap();
    let b = e.default_pool(false).unwrap();
    assert_eq!(
        (a.pool, b.pool),
        (net("10.210.0.0/24"), net("10.210.1.0/24"))
    );
    assert_eq!(a.pool_id, "10.210.0.0/24");
    assert!(a.data.is_empty());
    let err = e.default_pool(false).unwrap_err();
    assert!(matches!(err, IpamError::NoFreePool { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no free pool left in the default pools (10.210.0.0/23:24); pass --subnet or add pools \
         with --default-pools"
    );
    e.ipam.release_pool(&a.pool_id).unwrap();
    assert_eq!(e.default_pool(false).unwrap().pool, net("10.210.0.0/24"));
    assert_eq!(e.default_pool(true).unwrap().pool, net("fd7b::/64"));
    assert_eq!(e.default_pool(true).unwrap().pool, net("fd7b:0:0:1::/64"));
    assert!(e.default_pool(true).is_err());
    // A --subnet pool held elsewhere is skipped too.
    let e = env_with("10.210.0.0/23:24");
    e.pool("10.210.0.0/25", None).unwrap();
    assert_eq!(e.default_pool(false).unwrap().pool, net("10.210.1.0/24"));
}

#[test]
fn overlap_error_names_both_subnets_and_the_holder() {
    let e = env();
    let p = e.pool("10.15.0.0/16", None).unwrap();
    let err = e.pool("10.15.20.0/24", None).unwrap_err().to_string();
    assert_eq!(
        err,
        "subnet 10.15.20.0/24 overlaps 10.15.0.0/16 (a pool no network has taken yet: a network \
         being created, or a lost answer that cnibridge releases a few minutes after its next \
         start); choose another --subnet or remove that network"
    );
    e.ipam
        .bind_network(&p.pool_id, Some("0123456789abcdef0123456789abcdef"))
        .unwrap();
    // Any address space: the host-local store is host-wide.
    let err = e
        .ipam
        .request_pool(&PoolRequest {
            address_space: GLOBAL_ADDRESS_SPACE.into(),
            pool: Some(net("10.0.0.0/8")),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("subnet 10.0.0.0/8 overlaps 10.15.0.0/16 (network 0123456789ab)"),
        "{err}"
    );
    // The same subnet again is an overlap too.
    assert!(matches!(
        e.pool("10.15.0.0/16", None),
        Err(IpamError::Overlap { .. })
    ));
    e.ipam.bind_network(&p.pool_id, None).unwrap();
    assert_eq!(e.ipam.pool(&p.pool_id).unwrap().network_id, None);
}

#[test]
fn request_pool_validation() {
    let e = env();
    // (address space, --subnet, --ip-range, error)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: &[Case] = &[
        (
            "CniLocal",
            Some("10.15.20.5/24"),
            None,
            "has host bits set; did you mean 10.15.20.0/24?",
        ),
        ("CniLocal", Some("10.15.20.0/31"), None, "too small"),
        ("", Some("10.15.20.0/24"), None, "AddressSpace is empty"),
        (
            "CniLocal",
            Some("10.15.20.0/24"),
            Some("10.16.0.0/24"),
            "is not inside --subnet",
        ),
        (
            "CniLocal",
            None,
            Some("10.0.0.0/25"),
            "--ip-range 10.0.0.0/25 needs --subnet",
        ),
    ];
    for (space, pool, sub, want) in cases {
        let req = PoolRequest {
            address_space: space.to_string(),
            pool: pool.map(net),
            sub_pool: sub.map(net),
            ..Default::default()
        };
        let err = e.ipam.request_pool(&req).unwrap_err().to_string();
        assert!(err.contains(want), "{pool:?}: {err}");
    }
    // Unknown --ipam-opt keys are refused with the known ones, so a typo never gives a
    // network other than the one asked for.
    let err = e
        .ipam
        .request_pool(&PoolRequest {
            address_space: "whatever".into(),
            pool: Some(net("10.15.20.0/24")),
            options: [("cni.cnf".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown --ipam-opt cni.cnf; known keys: cni.conf"
    );
    assert!(e.ipam.pools().is_empty());
    // Any address space name is accepted.
    let g = e
        .ipam
        .request_pool(&PoolRequest {
            address_space: "whatever".into(),
            pool: Some(net("10.15.20.0/24")),
            ..Default::default()
        })
        .unwrap();
    let rec = e.ipam.pool(&g.pool_id).unwrap();
    assert_eq!(rec.cni_name, "cnibridge-10.15.20.0-24");
    assert_eq!(rec.data_dir, e.tmp.path().join("data"));
    assert_eq!((rec.range_index, rec.gateway), (0, None));
    assert!(e.ipam.pools().len() == 1);
    assert!(e.ipam.find_pool("other", &net("10.15.20.0/24")).is_some());
    assert!(e
        .ipam
        .find_pool("whatever", &net("10.15.21.0/24"))
        .is_none());
}

#[test]
fn gateway_rules() {
    let e = env();
    let p = "10.20.0.0/24";
    e.pool(p, None).unwrap();
    assert_eq!(e.addr(p, None, true).unwrap(), "10.20.0.1/24");
    assert_eq!(e.ipam.pool(p).unwrap().gateway, Some(ip("10.20.0.1")));
    assert_eq!(
        e.file(p, "10.20.0.1").unwrap(),
        "cnibridge-gateway\r\ngateway"
    );
    // A replayed gateway request gets the same answer.
    assert_eq!(e.addr(p, None, true).unwrap(), "10.20.0.1/24");
    let err = e.addr(p, Some("10.20.0.1"), false).unwrap_err().to_string();
    assert!(
        err.contains("requested ip 10.20.0.1 is subnet's gateway"),
        "{err}"
    );
    assert!(e
        .addr(p, Some("10.20.0.9"), true)
        .unwrap_err()
        .to_string()
        .contains("already has gateway 10.20.0.1"));
    // Releasing the gateway clears it; a --gateway inside the range is then skipped instead.
    e.ipam.release_address(p, ip("10.20.0.1")).unwrap();
    assert_eq!(e.ipam.pool(p).unwrap().gateway, None);
    assert_eq!(e.file(p, "10.20.0.1"), None);
    assert_eq!(
        e.addr(p, Some("10.20.0.254"), true).unwrap(),
        "10.20.0.254/24"
    );
    // The cursor (.254) wraps to .1, which is no longer the gateway.
    assert_eq!(e.addr(p, None, false).unwrap(), "10.20.0.1/24");
    for bad in ["10.20.0.0", "10.20.0.255"] {
        let err = e.addr(p, Some(bad), true).unwrap_err().to_string();
        assert!(err.contains("network or broadcast"), "{err}");
    }
    assert!(matches!(
        e.ipam.request_address(p, Some(ip("10.21.0.1")), true),
        Err(IpamError::OutOfPool { .. })
    ));
}

#[test]
fn ip_range_is_clamped_and_static_may_lie_outside_it() {
    let e = env();
    let p = "10.30.0.0/24";
    e.pool(p, Some("10.30.0.0/30")).unwrap();
    let rec = e.ipam.pool(p).unwrap();
    assert_eq!(
        (rec.range_start, rec.range_end),
        (ip("10.30.0.1"), ip("10.30.0.3"))
    );
    e.addr(p, None, true).unwrap();
    assert_eq!(e.addr(p, None, false).unwrap(), "10.30.0.2/24");
    assert_eq!(e.addr(p, None, false).unwrap(), "10.30.0.3/24");
    let err = e.addr(p, None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IP addresses available in range set: 10.30.0.1-10.30.0.3 (pool 10.30.0.0/24); \
         release addresses or use a larger --subnet/--ip-range"
    );
    // --ip / --aux-address outside --ip-range but inside --subnet is fine (Docker allows it).
    assert_eq!(
        e.addr(p, Some("10.30.0.100"), false).unwrap(),
        "10.30.0.100/24"
    );
    let err = e.addr(p, Some("10.30.0.100"), false).unwrap_err();
    assert!(matches!(err, IpamError::AddressInUse { .. }), "{err}");
    assert!(
        err.to_string().contains("(held by cnibridge-pending-"),
        "{err}"
    );
    for bad in ["10.30.0.0", "10.30.0.255"] {
        assert!(e.addr(p, Some(bad), false).is_err(), "{bad}");
    }
    // Broadcast end of the whole subnet is never handed out either.
    let p = "10.31.0.0/30";
    e.pool(p, None).unwrap();
    e.addr(p, None, true).unwrap();
    assert_eq!(e.addr(p, None, false).unwrap(), "10.31.0.2/30");
    assert!(matches!(
        e.addr(p, None, false),
        Err(IpamError::Exhausted { .. })
    ));
}

#[test]
fn v6_range_ends_at_the_last_address() {
    let e = env();
    let p = "fd15:30::/126";
    e.pool(p, None).unwrap();
    let rec = e.ipam.pool(p).unwrap();
    assert_eq!(
        (rec.range_start, rec.range_end),
        (ip("fd15:30::1"), ip("fd15:30::3"))
    );
    assert_eq!(e.addr(p, None, true).unwrap(), "fd15:30::1/126");
    assert_eq!(e.addr(p, None, false).unwrap(), "fd15:30::2/126");
    assert_eq!(e.addr(p, None, false).unwrap(), "fd15:30::3/126");
    assert!(matches!(
        e.addr(p, None, false),
        Err(IpamError::Exhausted { .. })
    ));
    let err = e
        .addr("fd15:30::/126", Some("fd15:31::1"), false)
        .unwrap_err();
    assert!(matches!(err, IpamError::OutOfPool { .. }));
    // An IPv4-mapped request names the IPv4 file, as host-local does.
    assert!(matches!(
        e.ipam
            .request_address(p, Some(ip("::ffff:10.0.0.1")), false),
        Err(IpamError::OutOfPool { .. })
    ));
}

#[test]
fn disk_format_through_the_facade() {
    let e = env();
    let p = "10.60.0.0/24";
    e.pool(p, None).unwrap();
    e.addr(p, None, true).unwrap();
    e.addr(p, None, false).unwrap();
    e.addr(p, Some("10.60.0.9"), false).unwrap();
    e.ipam
        .set_owner(
            p,
            ip("10.60.0.2"),
            &Owner::endpoint("ep1", &crate::names::host_veth("ep1")),
        )
        .unwrap();
    assert_eq!(
        e.tree(p),
        [
            "10.60.0.1",
            "10.60.0.2",
            "10.60.0.9",
            "last_reserved_ip.0",
            "lock"
        ]
    );
    assert_eq!(
        fs::read(e.dir(p).join("10.60.0.2")).unwrap(),
        format!("ep1\r\n{}", crate::names::host_veth("ep1")).as_bytes()
    );
    assert_eq!(
        fs::read(e.dir(p).join("last_reserved_ip.0")).unwrap(),
        b"10.60.0.9"
    );
    for f in ["10.60.0.1", "10.60.0.2", "10.60.0.9", "last_reserved_ip.0"] {
        let mode = fs::metadata(e.dir(p).join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Static requests move the cursor too, as in host-local.
    assert_eq!(e.addr(p, None, false).unwrap(), "10.60.0.10/24");
}

#[test]
fn state_survives_reopen() {
    let e = env();
    let p = "10.70.0.0/24";
    e.pool(p, Some("10.70.0.128/25")).unwrap();
    e.addr(p, None, true).unwrap();
    e.addr(p, None, false).unwrap();
    e.addr(p, Some("10.70.0.5"), false).unwrap();
    e.ipam.set_owner(p, ip("10.70.0.5"), &Owner::Aux).unwrap();
    e.ipam.bind_network(p, Some("netid")).unwrap();
    let before = e.ipam.pools();
    drop(e.ipam.clone());
    let again = e.reopen();
    assert_eq!(again.pools(), before);
    // The reopened IPAM knows which files are its own: a replayed gateway request gets the
    // same answer, and releases delete.
    assert_eq!(
        again.request_address(p, None, true).unwrap().to_string(),
        "10.70.0.1/24"
    );
    again.release_address(p, ip("10.70.0.128")).unwrap();
    again.release_address(p, ip("10.70.0.5")).unwrap();
    assert_eq!(e.file(p, "10.70.0.128"), None);
    assert_eq!(e.file(p, "10.70.0.5"), None);
    // ... and still refuses overlaps with what it held before the restart.
    let err = again.request_pool(&PoolRequest {
        address_space: "CniLocal".into(),
        pool: Some(net("10.70.0.0/16")),
        ..Default::default()
    });
    assert!(err.unwrap_err().to_string().contains("(network netid)"));
    again.release_pool(p).unwrap();
    assert_eq!(e.file(p, "10.70.0.1"), None);
}

#[test]
fn concurrent_requests_get_distinct_addresses() {
    let e = env();
    let p = "10.90.0.0/24";
    e.pool(p, None).unwrap();
    let q = "10.91.0.0/24";
    e.pool(q, None).unwrap();
    let mut got: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let ipam = &e.ipam;
                let pool = if i % 2 == 0 { p } else { q };
                s.spawn(move || {
                    (0..10)
                        .map(|_| ipam.request_address(pool, None, false).unwrap().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 80);
    assert_eq!(e.tree(p).len(), 40 + 2);
}

#[test]
fn unknown_pools_and_bad_default_pools() {
    let e = env();
    let p = "10.1.0.0/24";
    assert!(matches!(
        e.addr(p, None, false),
        Err(IpamError::UnknownPool(_))
    ));
    assert!(e.ipam.bind_network(p, None).is_err());
    assert!(e.ipam.release_pool(p).is_ok());
    assert!(e.ipam.pool(p).is_none());
    let err = Ipam::open(config(e.tmp.path(), "10.0.0.0/16:31"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("too small"), "{err}");
}
