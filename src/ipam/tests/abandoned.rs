//! `pending` files whose endpoint never came: found after a restart, collected only if still
//! pending with the same token, and never in a pool another network driver uses.

use std::fs;

use super::*;

const NET: &str = "0123456789abcdef0123456789abcdef";

fn host(cidr: String) -> IpAddr {
    ip(cidr.split('/').next().unwrap())
}

#[test]
fn pending_files_of_an_earlier_life_are_found_and_collected() {
    let e = env();
    let p = "10.61.0.0/24";
    e.pool(p, None).unwrap();
    e.ipam.bind_network(p, Some(NET)).unwrap();
    e.addr(p, None, true).unwrap();
    let claimed = host(e.addr(p, None, false).unwrap());
    e.ipam
        .set_owner(
            p,
            claimed,
            &Owner::endpoint(
                "3f5a0c1d9e2b4a6c",
                &crate::names::host_veth("3f5a0c1d9e2b4a6c"),
            ),
        )
        .unwrap();
    // dockerd died between RequestAddress and CreateEndpoint, twice.
    let lost = [
        host(e.addr(p, None, false).unwrap()),
        host(e.addr(p, Some("10.61.0.77"), false).unwrap()),
    ];
    // A CNI runtime's file in the same directory.
    fs::write(e.dir(p).join("10.61.0.50"), "ctrX\r\neth0").unwrap();

    let ipam = e.reopen();
    let seen = ipam.pending_addresses();
    let mut addresses: Vec<IpAddr> = seen.iter().map(|s| s.address).collect();
    addresses.sort();
    assert_eq!(addresses, lost);
    assert!(seen
        .iter()
        .all(|s| s.pool_id == p && matches!(s.owner, Owner::Pending(_))));
    let collected = ipam.collect_abandoned(&seen);
    assert_eq!(collected.len(), 2);
    for a in lost {
        assert_eq!(e.file(p, &a.to_string()), None, "{a} still reserved");
    }
    assert_eq!(
        e.file(p, "10.61.0.1").unwrap(),
        "cnibridge-gateway\r\ngateway"
    );
    assert_eq!(
        e.file(p, &claimed.to_string()).unwrap(),
        "3f5a0c1d9e2b4a6c\r\nvcb3f5a0c1d9e2b"
    );
    assert_eq!(e.file(p, "10.61.0.50").unwrap(), "ctrX\r\neth0");
    // The freed addresses are handed out again.
    assert_eq!(
        ipam.request_address(p, Some(ip("10.61.0.77")), false)
            .unwrap()
            .to_string(),
        "10.61.0.77/24"
    );
    // Nothing left to find but that new request.
    assert_eq!(ipam.pending_addresses().len(), 1);
}

#[test]
fn only_files_still_pending_with_the_same_token_are_collected() {
    let e = env();
    let p = "10.62.0.0/24";
    e.pool(p, None).unwrap();
    e.ipam.bind_network(p, Some(NET)).unwrap();
    let relabeled = host(e.addr(p, None, false).unwrap());
    let released = host(e.addr(p, None, false).unwrap());
    let rerequested = host(e.addr(p, None, false).unwrap());
    let seen = e.ipam.pending_addresses();
    assert_eq!(seen.len(), 3);
    // During the grace period: CreateEndpoint came for one, ReleaseAddress for another, and the
    // third was released and requested again (a new token).
    e.ipam
        .set_owner(
            p,
            relabeled,
            &Owner::endpoint(
                "3f5a0c1d9e2b4a6c",
                &crate::names::host_veth("3f5a0c1d9e2b4a6c"),
            ),
        )
        .unwrap();
    e.ipam.release_address(p, released).unwrap();
    e.ipam.release_address(p, rerequested).unwrap();
    let again = e.ipam.request_address(p, Some(rerequested), false).unwrap();
    assert_eq!(host(again.to_string()), rerequested);
    let before = e.file(p, &rerequested.to_string()).unwrap();

    assert!(e.ipam.collect_abandoned(&seen).is_empty());
    assert_eq!(
        e.file(p, &relabeled.to_string()).unwrap(),
        "3f5a0c1d9e2b4a6c\r\nvcb3f5a0c1d9e2b"
    );
    assert_eq!(e.file(p, &released.to_string()), None);
    assert_eq!(e.file(p, &rerequested.to_string()).unwrap(), before);
}

#[test]
fn pools_no_cnibridge_network_uses_are_left_alone() {
    // `--ipam-driver cnibridge` with another network driver: CreateEndpoint never reaches us,
    // so these addresses are in use while pending.
    let e = env();
    let p = "10.63.0.0/24";
    e.pool(p, None).unwrap();
    let a = host(e.addr(p, None, false).unwrap());
    assert!(e.ipam.pending_addresses().is_empty());
    assert!(e.reopen().pending_addresses().is_empty());
    assert!(e.file(p, &a.to_string()).unwrap().ends_with("\r\npending"));
    // A released pool has nothing to find.
    e.ipam.bind_network(p, Some(NET)).unwrap();
    let seen = e.ipam.pending_addresses();
    assert_eq!(seen.len(), 1);
    e.ipam.release_pool(p).unwrap();
    assert!(e.ipam.pending_addresses().is_empty());
    assert!(e.ipam.collect_abandoned(&seen).is_empty());
}

#[test]
fn a_claim_after_the_file_went_takes_the_address_again_if_free() {
    let e = env();
    let p = "10.64.0.0/24";
    e.pool(p, None).unwrap();
    e.ipam.bind_network(p, Some(NET)).unwrap();
    let a = host(e.addr(p, None, false).unwrap());
    let b = host(e.addr(p, None, false).unwrap());
    e.ipam.collect_abandoned(&e.ipam.pending_addresses());
    // A CreateEndpoint later than any grace: the address is still free, so it is taken again.
    let owner = Owner::endpoint(
        "3f5a0c1d9e2b4a6c",
        &crate::names::host_veth("3f5a0c1d9e2b4a6c"),
    );
    e.ipam.set_owner(p, a, &owner).unwrap();
    assert_eq!(e.file(p, &a.to_string()).unwrap(), owner.render());
    // Taken by a CNI runtime meanwhile: refused, naming the holder; its file stays.
    fs::write(e.dir(p).join(b.to_string()), "ctrX\r\neth0").unwrap();
    let err = e
        .ipam
        .set_owner(
            p,
            b,
            &Owner::endpoint(
                "4e6b1d2eaf3c5b7d",
                &crate::names::host_veth("4e6b1d2eaf3c5b7d"),
            ),
        )
        .unwrap_err();
    assert!(matches!(err, IpamError::AddressInUse { .. }), "{err}");
    assert!(err.to_string().contains("ctrX"), "{err}");
    assert_eq!(e.file(p, &b.to_string()).unwrap(), "ctrX\r\neth0");
}
