//! Netns tier: link deletions that arrive together are coalesced into group deletes (one
//! RCU wait for all instead of 15–20 ms each). What matters to a user: every deleted pair is
//! gone, host end and peer, and nothing else is touched, not the bridge, not a pair still in
//! use, not a link of the operator's. Root required; each test in a namespace of its own.

mod support;
use support::netns;

use std::time::Instant;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeSpec, Dataplane, VethSpec};
use netns::{in_netns, link_json, run};

const PAIRS: usize = 60;

fn veth(host: &str, peer: &str) -> VethSpec {
    VethSpec {
        host_name: host.into(),
        peer_name: peer.into(),
        bridge: "cnbd0".into(),
        mtu: None,
        peer_mac: None,
        hairpin: false,
        peer_tuning: Default::default(),
    }
}

#[test]
fn deletions_at_once_take_every_pair_asked_for_and_nothing_else() {
    in_netns(
        "deletions_at_once_take_every_pair_asked_for_and_nothing_else",
        || async {
            let dp = NetlinkDataplane::new().expect("open rtnetlink");
            dp.ensure_bridge(&BridgeSpec {
                name: "cnbd0".into(),
                mtu: None,
                addresses: vec!["10.62.0.1/24".parse().unwrap()],
                promisc: false,
                force_address: false,
            })
            .await
            .unwrap();
            for i in 0..=PAIRS {
                dp.create_veth(&veth(&format!("vd{i}"), &format!("pd{i}")))
                    .await
                    .unwrap();
            }
            // The operator's own pair, in a group of its own choosing.
            run(&[
                "ip", "link", "add", "opd0", "group", "7", "type", "veth", "peer", "name", "opd1",
            ]);

            let doomed: Vec<String> = (1..=PAIRS).map(|i| format!("vd{i}")).collect();
            let t0 = Instant::now();
            let results = futures::future::join_all(
                doomed
                    .iter()
                    .map(String::as_str)
                    .chain(["vd-never-made"])
                    .map(|n| dp.delete_link(n)),
            )
            .await;
            eprintln!(
                "{} concurrent deletions answered in {:?}",
                doomed.len() + 1,
                t0.elapsed()
            );
            for r in results {
                r.unwrap();
            }
            for i in 1..=PAIRS {
                for name in [format!("vd{i}"), format!("pd{i}")] {
                    assert!(link_json(&name).is_none(), "{name} is still there");
                }
            }
            for name in ["vd0", "pd0", "cnbd0", "opd0", "opd1"] {
                assert!(link_json(name).is_some(), "{name} went too");
            }
            let op = link_json("opd0").unwrap();
            assert_eq!(op["group"], "7", "the operator's link changed group: {op}");
            let ours = link_json("vd0").unwrap();
            assert_eq!(
                ours["group"], "default",
                "a pair in use changed group: {ours}"
            );
            // Deleting again, alone and in a crowd, is fine.
            dp.delete_link("vd1").await.unwrap();
            dp.delete_link("vd0").await.unwrap();
            assert!(link_json("vd0").is_none() && link_json("pd0").is_none());
            run(&["ip", "link", "del", "opd0"]);
        },
    );
}
