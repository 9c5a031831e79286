//! Which files the facade treats as its own: decided from their content alone, also after a
//! restart, and never touching a CNI runtime's files.

use std::fs;

use super::*;

#[test]
fn releases_touch_only_our_own_files() {
    let e = env();
    let p = "10.40.0.0/24";
    e.pool(p, None).unwrap();
    e.addr(p, None, true).unwrap();
    let ours = ip(e.addr(p, None, false).unwrap().split('/').next().unwrap());
    let rewritten = ip(e.addr(p, None, false).unwrap().split('/').next().unwrap());
    let dir = e.dir(p);
    // Someone else's reservation (a CNI runtime's host-local) and a file of ours that someone
    // else rewrote.
    fs::write(dir.join("10.40.0.50"), "ctrX\r\neth0").unwrap();
    fs::write(dir.join(rewritten.to_string()), "ctrY\r\neth0").unwrap();
    e.ipam.release_address(p, ip("10.40.0.50")).unwrap();
    assert_eq!(e.file(p, "10.40.0.50").unwrap(), "ctrX\r\neth0");
    e.ipam.release_address(p, rewritten).unwrap();
    assert_eq!(e.file(p, &rewritten.to_string()).unwrap(), "ctrY\r\neth0");
    e.ipam.release_address(p, ours).unwrap();
    assert_eq!(e.file(p, &ours.to_string()), None);
    // Idempotent, also for unknown pools.
    e.ipam.release_address(p, ours).unwrap();
    e.ipam.release_address("10.99.0.0/24", ours).unwrap();
    // release_pool removes what is ours and nothing else.
    let left = ip(e.addr(p, None, false).unwrap().split('/').next().unwrap());
    e.ipam.release_pool(p).unwrap();
    e.ipam.release_pool(p).unwrap();
    assert!(e.ipam.pool(p).is_none());
    assert_eq!(e.file(p, &left.to_string()), None);
    assert_eq!(e.file(p, "10.40.0.1"), None);
    assert_eq!(
        e.tree(p),
        [
            "10.40.0.3".to_string(),
            "10.40.0.50".into(),
            "last_reserved_ip.0".into(),
            "lock".into()
        ]
    );
    assert!(matches!(
        e.addr(p, None, false),
        Err(IpamError::UnknownPool(_))
    ));
    assert!(e.reopen().pools().is_empty());
}

#[test]
fn set_owner_rewrites_the_file_byte_exact() {
    let e = env();
    let p = "10.50.0.0/24";
    e.pool(p, None).unwrap();
    let a = e.addr(p, None, false).unwrap();
    assert_eq!(a, "10.50.0.2/24");
    let pending = e.file(p, "10.50.0.2").unwrap();
    let token = pending
        .strip_prefix("cnibridge-pending-")
        .and_then(|t| t.strip_suffix("\r\npending"))
        .unwrap();
    assert_eq!(token.len(), 16);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let owners = [
        (
            Owner::endpoint(
                "3f5a0c1d9e2b4a6c",
                &crate::names::host_veth("3f5a0c1d9e2b4a6c"),
            ),
            "3f5a0c1d9e2b4a6c\r\nvcb3f5a0c1d9e2b",
        ),
        (Owner::Aux, "cnibridge-aux\r\naux"),
        (Owner::Gateway, "cnibridge-gateway\r\ngateway"),
        (
            Owner::Pending("ab12".into()),
            "cnibridge-pending-ab12\r\npending",
        ),
    ];
    for (owner, want) in &owners {
        assert_eq!(owner.render(), *want);
        e.ipam.set_owner(p, ip("10.50.0.2"), owner).unwrap();
        assert_eq!(
            fs::read(e.dir(p).join("10.50.0.2")).unwrap(),
            want.as_bytes()
        );
    }
    let bad = Owner::Endpoint {
        endpoint_id: "ep".into(),
        ifname: "eth 0".into(),
    };
    assert!(e.ipam.set_owner(p, ip("10.50.0.2"), &bad).is_err());
    let bad = Owner::Endpoint {
        endpoint_id: "../x".into(),
        ifname: "eth0".into(),
    };
    assert!(e.ipam.set_owner(p, ip("10.50.0.2"), &bad).is_err());
    // A content we would not recognise later (the address would leak): refused.
    let bad = Owner::Endpoint {
        endpoint_id: "ep".into(),
        ifname: "veth1".into(),
    };
    let err = e.ipam.set_owner(p, ip("10.50.0.2"), &bad).unwrap_err();
    assert!(err.to_string().contains("not a host veth name"), "{err}");
    assert_eq!(
        e.file(p, "10.50.0.2").unwrap(),
        "cnibridge-pending-ab12\r\npending"
    );
    // Not ours (a CNI runtime's, or empty after an interrupted write): refused, untouched.
    fs::write(e.dir(p).join("10.50.0.60"), "ctrX\r\neth0").unwrap();
    let err = e
        .ipam
        .set_owner(p, ip("10.50.0.60"), &Owner::Aux)
        .unwrap_err();
    assert!(matches!(err, IpamError::AddressInUse { .. }), "{err}");
    assert!(err.to_string().contains("held by ctrX"), "{err}");
    assert_eq!(e.file(p, "10.50.0.60").unwrap(), "ctrX\r\neth0");
    fs::write(e.dir(p).join("10.50.0.61"), "").unwrap();
    let err = e
        .ipam
        .set_owner(p, ip("10.50.0.61"), &Owner::Aux)
        .unwrap_err();
    assert!(err.to_string().contains("empty file"), "{err}");
    assert_eq!(e.file(p, "10.50.0.61").unwrap(), "");
    // No file (removed by hand): the claimant uses the address, so it is reserved again.
    e.ipam.set_owner(p, ip("10.50.0.62"), &Owner::Aux).unwrap();
    assert_eq!(e.file(p, "10.50.0.62").unwrap(), "cnibridge-aux\r\naux");
    assert!(matches!(
        e.ipam.set_owner(p, ip("10.51.0.2"), &Owner::Aux),
        Err(IpamError::OutOfPool { .. })
    ));
    // Ours but rewritten by someone else: refused.
    fs::write(e.dir(p).join("10.50.0.2"), "ctrY\r\neth0").unwrap();
    let err = e
        .ipam
        .set_owner(p, ip("10.50.0.2"), &Owner::Aux)
        .unwrap_err();
    assert!(err.to_string().contains("held by ctrY"), "{err}");
    assert_eq!(e.file(p, "10.50.0.2").unwrap(), "ctrY\r\neth0");
    assert!(matches!(
        e.ipam
            .set_owner("10.51.0.0/24", ip("10.51.0.2"), &Owner::Aux),
        Err(IpamError::UnknownPool(_))
    ));
}

#[test]
fn a_file_written_just_before_a_kill_is_adopted() {
    let e = env();
    let p = "10.80.0.0/24";
    e.pool(p, None).unwrap();
    // What a SIGKILL right after the write of a RequestAddress leaves: the file and nothing
    // else. Its content alone makes it ours after a restart.
    let owner = Owner::Pending("deadbeefdeadbeef".into());
    fs::create_dir_all(e.dir(p)).unwrap();
    fs::write(e.dir(p).join("10.80.0.7"), owner.render()).unwrap();
    // Not ours: a look-alike token, and an empty file (a kill between create and write,
    // which host-local can leave too) that is left for a garbage collector.
    fs::write(e.dir(p).join("10.80.0.8"), "cnibridge-pending-x\r\npending").unwrap();
    fs::write(e.dir(p).join("10.80.0.9"), "").unwrap();
    let again = e.reopen();
    again
        .set_owner(
            p,
            ip("10.80.0.7"),
            &Owner::endpoint("ep7", &crate::names::host_veth("ep7")),
        )
        .unwrap();
    again.release_address(p, ip("10.80.0.7")).unwrap();
    again.release_address(p, ip("10.80.0.8")).unwrap();
    again.release_address(p, ip("10.80.0.9")).unwrap();
    assert_eq!(e.file(p, "10.80.0.7"), None);
    assert!(e.file(p, "10.80.0.8").is_some());
    assert_eq!(e.file(p, "10.80.0.9").unwrap(), "");
    // The dynamic walk skips both, as host-local's would.
    assert_eq!(
        again
            .request_address(p, Some(ip("10.80.0.9")), false)
            .unwrap_err()
            .to_string(),
        "requested IP address 10.80.0.9 is not available in pool 10.80.0.0/24 (held by nobody: \
         an empty file, left by an interrupted allocation)"
    );
}

#[test]
fn release_pool_removes_only_our_files_of_its_subnet() {
    let e = env();
    let p = "10.81.0.0/24";
    e.pool(p, None).unwrap();
    e.addr(p, None, true).unwrap();
    let a = ip(e.addr(p, None, false).unwrap().split('/').next().unwrap());
    e.ipam
        .set_owner(
            p,
            a,
            &Owner::endpoint("epA", &crate::names::host_veth("epA")),
        )
        .unwrap();
    e.addr(p, Some("10.81.0.9"), false).unwrap();
    e.ipam.set_owner(p, ip("10.81.0.9"), &Owner::Aux).unwrap();
    e.addr(p, None, false).unwrap();
    let dir = e.dir(p);
    // A foreign file, an empty one, a file named like an address outside the subnet but with
    // our content (another writer's directory layout), a look-alike name, and a stray file.
    fs::write(dir.join("10.81.0.50"), "ctrX\r\neth0").unwrap();
    fs::write(dir.join("10.81.0.51"), "").unwrap();
    fs::write(dir.join("10.82.0.5"), "cnibridge-aux\r\naux").unwrap();
    fs::write(dir.join("::ffff:10.81.0.52"), "cnibridge-aux\r\naux").unwrap();
    fs::write(dir.join("notes"), "cnibridge-aux\r\naux").unwrap();
    e.ipam.release_pool(p).unwrap();
    assert_eq!(
        e.tree(p),
        [
            "10.81.0.50",
            "10.81.0.51",
            "10.82.0.5",
            "::ffff:10.81.0.52",
            "last_reserved_ip.0",
            "lock",
            "notes"
        ]
    );
    assert!(e.ipam.pool(p).is_none());
}

#[test]
fn a_panic_mid_operation_gives_the_flock_back() {
    let e = env();
    let p = "10.82.0.0/24";
    e.pool(p, None).unwrap();
    e.addr(p, None, false).unwrap();
    let slot = e.ipam.slot(p).unwrap();
    let rec = e.ipam.pool(p).unwrap();
    let crashed = std::thread::scope(|s| {
        s.spawn(|| {
            let mut work = slot.work();
            let st = work.store(&rec).unwrap();
            allocator::locked(st, |_| -> Result<(), IpamError> {
                panic!("injected panic while the store is locked")
            })
        })
        .join()
    });
    assert!(crashed.is_err());
    // Another flock(2) user gets the lock at once, and so do we.
    let lock = fs::File::open(e.dir(p).join("lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    drop(lock);
    assert_eq!(e.addr(p, None, false).unwrap(), "10.82.0.3/24");
}
