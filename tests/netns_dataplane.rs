//! Netns tier: `NetlinkDataplane` against a real kernel, each test inside a network namespace
//! it creates (root required; see `support::require`). Assertions read the kernel with
//! `ip -j`, not with the code under test.

mod support;
use support::netns;

use std::time::{Duration, Instant};

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeOutcome, BridgeSpec, Dataplane, DataplaneError, VethSpec};
use netns::{addresses, child_netns, has_flag, in_netns, link_json, run, thread_netns};

fn bridge(addrs: &[&str]) -> BridgeSpec {
    BridgeSpec {
        name: "cnbr0".into(),
        mtu: Some(1400),
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        promisc: false,
        force_address: false,
    }
}

fn veth(host: &str, peer: &str) -> VethSpec {
    VethSpec {
        host_name: host.into(),
        peer_name: peer.into(),
        bridge: "cnbr0".into(),
        mtu: Some(1380),
        peer_mac: Some([0x02, 0x42, 0x0a, 0x58, 0x00, 0x05]),
        hairpin: false,
        peer_tuning: Default::default(),
    }
}

fn dataplane() -> NetlinkDataplane {
    NetlinkDataplane::new().expect("open rtnetlink")
}

#[test]
fn forked_processes_and_threads_inherit_the_test_netns() {
    let host = thread_netns();
    in_netns(
        "forked_processes_and_threads_inherit_the_test_netns",
        move || async move {
            let own = thread_netns();
            assert_ne!(own, host);
            assert_eq!(child_netns(), own);
            let from_thread = std::thread::spawn(thread_netns).join().unwrap();
            assert_eq!(
                from_thread, own,
                "a thread spawned here starts in the test netns"
            );
            // /proc/sys/net follows the thread: only lo exists in a fresh namespace.
            let conf: Vec<_> = std::fs::read_dir("/proc/sys/net/ipv4/conf")
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                conf.iter()
                    .all(|n| ["all", "default", "lo"].contains(&n.as_str())),
                "{conf:?}"
            );
        },
    );
}

#[test]
fn ensure_bridge_creates_bridge_with_mtu_and_addresses_up() {
    in_netns(
        "ensure_bridge_creates_bridge_with_mtu_and_addresses_up",
        || async {
            let dp = dataplane();
            let out = dp
                .ensure_bridge(&bridge(&["10.88.0.1/24", "fd88::1/64"]))
                .await
                .unwrap();
            assert_eq!(out, BridgeOutcome::Created);
            let link = link_json("cnbr0").expect("bridge exists");
            assert_eq!(link["linkinfo"]["info_kind"], "bridge");
            assert_eq!(link["mtu"], 1400);
            assert!(has_flag(&link, "UP"), "{link}");
            // Frames between ports of this bridge are handed to iptables/ip6tables whatever the
            // host-wide bridge-nf-call sysctls say.
            let data = &link["linkinfo"]["info_data"];
            assert_eq!(data["nf_call_iptables"], 1, "{data}");
            assert_eq!(data["nf_call_ip6tables"], 1, "{data}");
            let addrs = addresses("cnbr0");
            assert!(addrs.contains(&"10.88.0.1/24".to_string()), "{addrs:?}");
            assert!(addrs.contains(&"fd88::1/64".to_string()), "{addrs:?}");

            let again = dp
                .ensure_bridge(&bridge(&["10.88.0.1/24", "fd88::1/64"]))
                .await
                .unwrap();
            assert_eq!(again, BridgeOutcome::Existed);
            assert_eq!(
                addresses("cnbr0").len(),
                addrs.len(),
                "no address added twice"
            );
        },
    );
}

#[test]
fn ensure_bridge_adopts_an_existing_bridge() {
    in_netns("ensure_bridge_adopts_an_existing_bridge", || async {
        run(&[
            "ip", "link", "add", "cnbr0", "mtu", "1500", "type", "bridge",
        ]);
        let dp = dataplane();
        let out = dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
        assert_eq!(out, BridgeOutcome::Existed);
        let link = link_json("cnbr0").unwrap();
        assert!(has_flag(&link, "UP"));
        assert_eq!(
            link["mtu"], 1500,
            "an existing bridge keeps its MTU, as in CNI"
        );
        assert_eq!(addresses("cnbr0"), vec!["10.88.0.1/24".to_string()]);
    });
}

#[test]
fn ensure_bridge_refuses_a_second_ipv4_address() {
    in_netns("ensure_bridge_refuses_a_second_ipv4_address", || async {
        run(&["ip", "link", "add", "cnbr0", "type", "bridge"]);
        run(&["ip", "addr", "add", "10.99.0.1/24", "dev", "cnbr0"]);
        let err = dataplane()
            .ensure_bridge(&bridge(&["10.88.0.1/24"]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DataplaneError::AddressConflict { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "bridge cnbr0 already has an IP address different from 10.88.0.1/24 (10.99.0.1/24); \
             remove it, choose another bridge name, or set forceAddress to replace it"
        );
        assert_eq!(
            addresses("cnbr0"),
            vec!["10.99.0.1/24".to_string()],
            "nothing was changed"
        );
    });
}

#[test]
fn force_address_replaces_the_bridges_conflicting_addresses() {
    in_netns(
        "force_address_replaces_the_bridges_conflicting_addresses",
        || async {
            run(&["ip", "link", "add", "cnbr0", "type", "bridge"]);
            run(&["ip", "addr", "add", "10.99.0.1/24", "dev", "cnbr0"]);
            run(&["ip", "addr", "add", "fd99::1/64", "dev", "cnbr0"]);
            let mut spec = bridge(&["10.88.0.1/24", "fd99::2/64", "fd88::1/64"]);
            spec.force_address = true;
            dataplane().ensure_bridge(&spec).await.unwrap();
            let mut got = addresses("cnbr0");
            got.sort();
            assert_eq!(got, ["10.88.0.1/24", "fd88::1/64", "fd99::2/64"]);
        },
    );
}

/// The bridge's addresses are read by an ifindex-filtered dump (strict checking): with 50
/// other bridges holding IPv4 and IPv6 addresses, only cnbr0's count, and forceAddress
/// touches cnbr0 alone.
#[test]
fn addresses_of_one_bridge_among_fifty_with_addresses() {
    in_netns(
        "addresses_of_one_bridge_among_fifty_with_addresses",
        || async {
            for i in 0..50 {
                let name = format!("cnbo{i}");
                run(&["ip", "link", "add", &name, "type", "bridge"]);
                run(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.60.{i}.1/24"),
                    "dev",
                    &name,
                ]);
                run(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("fd60:{}::1/64", i + 1),
                    "dev",
                    &name,
                ]);
            }
            run(&["ip", "link", "add", "cnbr0", "type", "bridge"]);
            run(&["ip", "addr", "add", "10.88.0.1/24", "dev", "cnbr0"]);
            let dp = dataplane();
            let out = dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
            assert_eq!(out, BridgeOutcome::Existed);
            assert_eq!(addresses("cnbr0"), ["10.88.0.1/24"]);
            // Another bridge's address is no conflict of cnbr0's.
            let err = dp
                .ensure_bridge(&bridge(&["10.60.7.1/24"]))
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("(10.88.0.1/24)"),
                "only cnbr0's own address conflicts: {err}"
            );
            let mut spec = bridge(&["10.77.0.1/24", "fd77::1/64"]);
            spec.force_address = true;
            dp.ensure_bridge(&spec).await.unwrap();
            let mut got = addresses("cnbr0");
            got.sort();
            assert_eq!(got, ["10.77.0.1/24", "fd77::1/64"]);
            for i in 0..50 {
                let mut got = addresses(&format!("cnbo{i}"));
                got.sort();
                assert_eq!(
                    got,
                    [format!("10.60.{i}.1/24"), format!("fd60:{}::1/64", i + 1)],
                    "cnbo{i} untouched"
                );
            }
        },
    );
}

#[test]
fn promisc_and_hairpin_reach_the_kernel() {
    in_netns("promisc_and_hairpin_reach_the_kernel", || async {
        let dp = dataplane();
        let mut spec = bridge(&["10.88.0.1/24"]);
        spec.promisc = true;
        dp.ensure_bridge(&spec).await.unwrap();
        let link = link_json("cnbr0").unwrap();
        assert!(has_flag(&link, "PROMISC"), "{link}");
        // CNI never turns it off again: a spec without it leaves it on.
        dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
        assert!(has_flag(&link_json("cnbr0").unwrap(), "PROMISC"));

        let hairpin =
            |name: &str| link_json(name).unwrap()["linkinfo"]["info_slave_data"]["hairpin"].clone();
        let mut on = veth("vh0", "vp0");
        on.hairpin = true;
        dp.create_veth(&on).await.unwrap();
        assert_eq!(hairpin("vh0"), true);
        // A kept pair gets the flag it is asked for, as CNI sets it at every ADD.
        dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
        assert_eq!(hairpin("vh0"), false);
        dp.create_veth(&veth("vh1", "vp1")).await.unwrap();
        assert_eq!(hairpin("vh1"), false);
        assert!(!has_flag(&link_json("vh1").unwrap(), "PROMISC"));
    });
}

#[test]
fn ensure_bridge_refuses_a_non_bridge_of_the_same_name() {
    in_netns(
        "ensure_bridge_refuses_a_non_bridge_of_the_same_name",
        || async {
            // The test kernel has no dummy driver; a veth is just as much "not a bridge".
            run(&[
                "ip", "link", "add", "cnbr0", "type", "veth", "peer", "name", "cnbr0p",
            ]);
            let err = dataplane().ensure_bridge(&bridge(&[])).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    DataplaneError::WrongKind {
                        wanted: "bridge",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "cnbr0 already exists but is not a bridge");
        },
    );
}

#[test]
fn ensure_bridge_pins_the_mac_when_it_adds_an_address() {
    in_netns(
        "ensure_bridge_pins_the_mac_when_it_adds_an_address",
        || async {
            let dp = dataplane();
            // Control: without an address nothing is pinned, and the bridge takes the lowest
            // port MAC, which is what the pinning prevents.
            dp.ensure_bridge(&BridgeSpec {
                name: "cnbr1".into(),
                mtu: None,
                addresses: vec![],
                promisc: false,
                force_address: false,
            })
            .await
            .unwrap();
            run(&[
                "ip",
                "link",
                "add",
                "lowmac1",
                "address",
                "00:00:00:00:00:01",
                "type",
                "veth",
                "peer",
                "name",
                "lowpeer1",
            ]);
            run(&["ip", "link", "set", "lowmac1", "master", "cnbr1"]);
            assert_eq!(link_json("cnbr1").unwrap()["address"], "00:00:00:00:00:01");

            dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
            let mac = link_json("cnbr0").unwrap()["address"].clone();
            run(&[
                "ip",
                "link",
                "add",
                "lowmac0",
                "address",
                "00:00:00:00:00:01",
                "type",
                "veth",
                "peer",
                "name",
                "lowpeer0",
            ]);
            run(&["ip", "link", "set", "lowmac0", "master", "cnbr0"]);
            assert_eq!(
                link_json("cnbr0").unwrap()["address"],
                mac,
                "pinned MAC must not follow the port"
            );
        },
    );
}

#[test]
fn ensure_bridge_enables_forwarding_in_its_own_netns_only() {
    let host_v4 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_v6 = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();
    in_netns(
        "ensure_bridge_enables_forwarding_in_its_own_netns_only",
        || async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "0").unwrap();
            dataplane()
                .ensure_bridge(&bridge(&["10.88.0.1/24", "fd88::1/64"]))
                .await
                .unwrap();
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                    .unwrap()
                    .trim(),
                "1"
            );
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                    .unwrap()
                    .trim(),
                "1"
            );
        },
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_v4
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
        host_v6
    );
}

#[test]
fn forwarding_failure_is_only_a_warning() {
    in_netns("forwarding_failure_is_only_a_warning", || async {
        // A sysctl root that does not exist stands in for a read-only /proc/sys.
        let dp = dataplane().with_proc_sys("/nonexistent-proc-sys");
        let out = dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
        assert_eq!(out, BridgeOutcome::Created);
    });
}

#[test]
fn create_veth_attaches_host_end_and_leaves_peer_down() {
    in_netns(
        "create_veth_attaches_host_end_and_leaves_peer_down",
        || async {
            let dp = dataplane();
            dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
            dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
            let host = link_json("vh0").expect("host end");
            assert_eq!(host["linkinfo"]["info_kind"], "veth");
            assert_eq!(host["master"], "cnbr0");
            assert!(has_flag(&host, "UP"), "{host}");
            assert_eq!(host["mtu"], 1380);
            assert_eq!(host["link"], "vp0");
            let peer = link_json("vp0").expect("peer");
            assert_eq!(peer["mtu"], 1380);
            assert_eq!(peer["address"], "02:42:0a:58:00:05");
            assert!(!has_flag(&peer, "UP"), "peer must stay down: {peer}");
            assert!(peer.get("master").is_none());
        },
    );
}

#[test]
fn create_veth_twice_keeps_one_pair() {
    in_netns("create_veth_twice_keeps_one_pair", || async {
        let dp = dataplane();
        dp.ensure_bridge(&bridge(&[])).await.unwrap();
        dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
        let first = link_json("vh0").unwrap()["ifindex"].clone();
        dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
        assert_eq!(
            link_json("vh0").unwrap()["ifindex"],
            first,
            "the pair was kept, not recreated"
        );
        let veths = run(&["ip", "-o", "link", "show", "type", "veth"]);
        assert_eq!(veths.lines().count(), 2, "{veths}");
    });
}

#[test]
fn create_veth_replaces_a_stale_half() {
    in_netns("create_veth_replaces_a_stale_half", || async {
        let dp = dataplane();
        dp.ensure_bridge(&bridge(&[])).await.unwrap();
        // A leftover: the host name exists, paired with another peer and not on the bridge.
        run(&[
            "ip", "link", "add", "vh0", "type", "veth", "peer", "name", "oldpeer",
        ]);
        dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
        assert_eq!(link_json("vh0").unwrap()["master"], "cnbr0");
        assert_eq!(link_json("vh0").unwrap()["link"], "vp0");
        assert!(link_json("oldpeer").is_none());
        // A leftover peer alone.
        run(&[
            "ip", "link", "add", "vp1", "type", "veth", "peer", "name", "other1",
        ]);
        dp.create_veth(&veth("vh1", "vp1")).await.unwrap();
        assert_eq!(link_json("vh1").unwrap()["link"], "vp1");
    });
}

#[test]
fn create_veth_on_a_missing_bridge_is_not_found() {
    in_netns("create_veth_on_a_missing_bridge_is_not_found", || async {
        let err = dataplane()
            .create_veth(&veth("vh0", "vp0"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DataplaneError::NotFound(ref b) if b == "cnbr0"),
            "{err:?}"
        );
        assert!(link_json("vh0").is_none());
    });
}

#[test]
fn delete_link_twice_is_ok() {
    in_netns("delete_link_twice_is_ok", || async {
        let dp = dataplane();
        dp.ensure_bridge(&bridge(&[])).await.unwrap();
        dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
        assert!(dp.link_exists("vp0").await.unwrap());
        dp.delete_link("vh0").await.unwrap();
        dp.delete_link("vh0").await.unwrap();
        assert!(!dp.link_exists("vh0").await.unwrap());
        assert!(
            !dp.link_exists("vp0").await.unwrap(),
            "the peer goes with the pair"
        );
    });
}

#[test]
fn delete_bridge_if_unused_waits_for_the_last_port() {
    in_netns(
        "delete_bridge_if_unused_waits_for_the_last_port",
        || async {
            let dp = dataplane();
            assert!(
                !dp.delete_bridge_if_unused("cnbr0").await.unwrap(),
                "missing is Ok(false)"
            );
            dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
            dp.create_veth(&veth("vh0", "vp0")).await.unwrap();
            assert!(!dp.delete_bridge_if_unused("cnbr0").await.unwrap());
            assert!(link_json("cnbr0").is_some());
            dp.delete_link("vh0").await.unwrap();
            assert!(dp.delete_bridge_if_unused("cnbr0").await.unwrap());
            assert!(link_json("cnbr0").is_none());
        },
    );
}

#[test]
fn create_veth_and_delete_link_timing() {
    in_netns("create_veth_and_delete_link_timing", || async {
        let dp = dataplane();
        dp.ensure_bridge(&bridge(&["10.88.0.1/24"])).await.unwrap();
        let mut create = Vec::new();
        let mut delete = Vec::new();
        for i in 0..50 {
            let spec = veth(&format!("vh{i}"), &format!("vp{i}"));
            let t0 = Instant::now();
            dp.create_veth(&spec).await.unwrap();
            let t1 = Instant::now();
            dp.delete_link(&spec.host_name).await.unwrap();
            create.push(t1 - t0);
            delete.push(t1.elapsed());
        }
        create.sort();
        delete.sort();
        eprintln!(
            "create_veth median {:?} (max {:?}), delete_link median {:?} (max {:?}) over 50",
            create[25], create[49], delete[25], delete[49]
        );
        // Loose bound: catches a sleep or a poll on the hot path, not scheduler noise.
        assert!(create[25] < Duration::from_millis(100), "{:?}", create[25]);
    });
}

/// Issue 12 (1): twenty bridges set up at once through one dataplane (one rtnetlink socket, as
/// twenty parallel CreateNetworks share it) all succeed with their addresses: concurrent dumps
/// on one socket must not meet the kernel's EBUSY.
#[test]
fn twenty_bridges_set_up_at_once_all_succeed() {
    in_netns("twenty_bridges_set_up_at_once_all_succeed", || async {
        let dp = dataplane();
        let specs: Vec<BridgeSpec> = (0..20)
            .map(|i| BridgeSpec {
                name: format!("cnbp{i}"),
                mtu: None,
                addresses: vec![format!("10.61.{i}.1/24").parse().unwrap()],
                promisc: false,
                force_address: false,
            })
            .collect();
        let results = futures::future::join_all(specs.iter().map(|s| dp.ensure_bridge(s))).await;
        for (spec, r) in specs.iter().zip(results) {
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{}: {e}", spec.name)),
                BridgeOutcome::Created
            );
            assert_eq!(addresses(&spec.name), [spec.addresses[0].to_string()]);
        }
    });
}

/// Issue 12 (3), the kernel side: what a borrowed bridge had and what it gets back.
#[test]
fn a_borrowed_bridges_addresses_are_read_and_given_back() {
    in_netns(
        "a_borrowed_bridges_addresses_are_read_and_given_back",
        || async {
            let dp = dataplane();
            assert_eq!(dp.bridge_addresses("cnbr0").await.unwrap(), None);
            run(&["ip", "link", "add", "cnbr0", "type", "bridge"]);
            run(&["ip", "addr", "add", "10.66.0.9/24", "dev", "cnbr0"]);
            let own: ipnet::IpNet = "10.66.0.9/24".parse().unwrap();
            assert_eq!(dp.bridge_addresses("cnbr0").await.unwrap(), Some(vec![own]));
            let mut spec = bridge(&["10.67.0.1/24"]);
            spec.force_address = true;
            dp.ensure_bridge(&spec).await.unwrap();
            assert_eq!(addresses("cnbr0"), ["10.67.0.1/24"]);
            let gw: ipnet::IpNet = "10.67.0.1/24".parse().unwrap();
            dp.restore_bridge_addresses("cnbr0", &[gw], &[own])
                .await
                .unwrap();
            assert_eq!(addresses("cnbr0"), ["10.66.0.9/24"]);
            // Again, and on a bridge that is gone: nothing to do.
            dp.restore_bridge_addresses("cnbr0", &[gw], &[own])
                .await
                .unwrap();
            dp.restore_bridge_addresses("cnbrx", &[gw], &[own])
                .await
                .unwrap();
        },
    );
}
