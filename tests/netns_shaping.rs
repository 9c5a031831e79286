//! Netns tier: CNI `bandwidth` and `tuning` through `NetlinkDataplane` against a real kernel,
//! each test inside a network namespace it creates (root required; see `support::require`).
//! The tc objects are read back with rtnetlink dumps of our own (not with the code under
//! test), links with `ip -j`, sysctls with `ip netns exec ... cat`; a bounded TCP transfer
//! between the test namespace and a "container" namespace shows the limit takes effect.

mod support;
use support::netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::sysctl::SysctlError;
use cnibridge::dataplane::{
    BridgeSpec, Dataplane, DataplaneError, PeerTuning, Shaping, TokenBucket, VethSpec,
};
use futures::TryStreamExt;
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcMessage, TcMirrorActionType, TcOption,
};
use netns::{has_flag, in_netns, link_json, run, NamedNetns};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_core::Nla;

const BRIDGE: &str = "cnbtbr0";
const HOST: &str = "cnbth0";
const PEER: &str = "cnbtc0";
const IFB: &str = "cnbtifb0";
const HOST_IP: &str = "10.89.0.1";
const PEER_IP: &str = "10.89.0.2";

/// 8 Mbit/s into the container, 16 Mbit/s out of it, 80 kbit bursts.
const INGRESS: TokenBucket = TokenBucket {
    rate: 8_000_000,
    burst: 80_000,
};
const EGRESS: TokenBucket = TokenBucket {
    rate: 16_000_000,
    burst: 80_000,
};

fn dataplane() -> NetlinkDataplane {
    NetlinkDataplane::new().expect("open rtnetlink")
}

fn veth(tuning: PeerTuning) -> VethSpec {
    VethSpec {
        host_name: HOST.into(),
        peer_name: PEER.into(),
        bridge: BRIDGE.into(),
        mtu: Some(1380),
        peer_mac: Some([0x02, 0x42, 0x0a, 0x59, 0x00, 0x02]),
        hairpin: false,
        peer_tuning: tuning,
    }
}

/// The bridge (with the "host" address) and the pair on it.
async fn bridge_and_veth(dp: &NetlinkDataplane, tuning: PeerTuning) {
    dp.ensure_bridge(&BridgeSpec {
        name: BRIDGE.into(),
        mtu: Some(1380),
        addresses: vec![format!("{HOST_IP}/24").parse().unwrap()],
        promisc: false,
        force_address: false,
    })
    .await
    .unwrap();
    dp.create_veth(&veth(tuning)).await.unwrap();
}

fn ifindex(name: &str) -> u32 {
    let link = link_json(name).unwrap_or_else(|| panic!("{name} exists"));
    link["ifindex"].as_u64().unwrap() as u32
}

/// A qdisc as the kernel dumps it; for TBF, the `tc_tbf_qopt` fields we set.
#[derive(Debug)]
struct Qdisc {
    kind: String,
    handle: u32,
    parent: u32,
    /// (rate bytes/s, limit bytes, buffer ticks)
    tbf: Option<(u32, u32, u32)>,
}

fn rtnl() -> rtnetlink::Handle {
    let (conn, handle, _) = rtnetlink::new_connection().expect("rtnetlink");
    tokio::spawn(conn);
    handle
}

async fn qdiscs(link: &str) -> Vec<Qdisc> {
    let index = ifindex(link) as i32;
    let all: Vec<TcMessage> = rtnl()
        .qdisc()
        .get()
        .index(index)
        .execute()
        .try_collect()
        .await
        .unwrap();
    all.into_iter()
        .filter(|m| m.header.index == index)
        .map(|m| {
            let mut q = Qdisc {
                kind: String::new(),
                handle: m.header.handle.into(),
                parent: m.header.parent.into(),
                tbf: None,
            };
            for attr in &m.attributes {
                match attr {
                    TcAttribute::Kind(k) => q.kind = k.clone(),
                    TcAttribute::Options(opts) if q.kind == "tbf" => q.tbf = tbf_parms(opts),
                    _ => {}
                }
            }
            q
        })
        .collect()
}

/// `TCA_TBF_PARMS` out of TBF's options, which netlink-packet-route keeps as one raw nest.
fn tbf_parms(opts: &[TcOption]) -> Option<(u32, u32, u32)> {
    let TcOption::Other(nest) = opts.first()? else {
        return None;
    };
    let mut value = vec![0u8; nest.value_len()];
    nest.emit_value(&mut value);
    let mut rest = &value[..];
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == 1 && len >= 4 + 36 {
            let q = &rest[4..];
            let u = |at: usize| u32::from_ne_bytes(q[at..at + 4].try_into().unwrap());
            return Some((u(8), u(24), u(28)));
        }
        rest = &rest[(len + 3) & !3..];
    }
    None
}

/// The ifindexes the u32 filters on `link`'s ingress redirect to (mirred egress redirect).
async fn redirects(link: &str) -> Vec<u32> {
    let index = ifindex(link) as i32;
    let all: Vec<TcMessage> = rtnl()
        .traffic_filter(index)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for m in all {
        for attr in &m.attributes {
            let TcAttribute::Options(opts) = attr else {
                continue;
            };
            for opt in opts {
                let TcOption::U32(TcFilterU32Option::Action(acts)) = opt else {
                    continue;
                };
                for act in acts {
                    for a in &act.attributes {
                        let TcActionAttribute::Options(aopts) = a else {
                            continue;
                        };
                        for o in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                                if p.eaction == TcMirrorActionType::EgressRedir {
                                    out.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn tbf_of(qs: &[Qdisc]) -> Option<(u32, u32, u32)> {
    qs.iter()
        .find(|q| q.kind == "tbf" && q.parent == 0xffff_ffff)
        .and_then(|q| q.tbf)
}

fn has_ingress_qdisc(qs: &[Qdisc]) -> bool {
    qs.iter()
        .any(|q| q.kind == "ingress" && q.handle == 0xffff_0000)
}

/// Move the calling thread (a throwaway one) into a namespace.
fn enter(path: &PathBuf) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Send `bytes` over TCP from `from` (None = the test namespace) to a listener at `addr` in
/// `listen_in`; the receiver's bytes per second, from accept to EOF.
fn transfer(
    listen_in: Option<PathBuf>,
    from: Option<PathBuf>,
    addr: SocketAddr,
    bytes: usize,
) -> f64 {
    let listener: TcpListener = std::thread::spawn(move || {
        if let Some(p) = &listen_in {
            enter(p);
        }
        TcpListener::bind(addr).expect("bind")
    })
    .join()
    .unwrap();
    let sender = std::thread::spawn(move || {
        if let Some(p) = &from {
            enter(p);
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("send");
            left -= n;
        }
    });
    let (mut conn, _) = netns::accept_within(&listener, Duration::from_secs(5)).expect("accept");
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf).expect("receive");
        if n == 0 {
            break;
        }
        got += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    sender.join().unwrap();
    assert_eq!(got, bytes, "every byte arrived");
    got as f64 / elapsed
}

#[test]
fn shaping_reaches_the_kernel_limits_traffic_and_goes_away() {
    in_netns(
        "shaping_reaches_the_kernel_limits_traffic_and_goes_away",
        || async {
            let dp = dataplane();
            bridge_and_veth(&dp, PeerTuning::default()).await;
            let container = NamedNetns::new("shaping");
            let shaping = Shaping {
                ingress: Some(INGRESS),
                egress: Some(EGRESS),
            };
            dp.set_shaping(HOST, IFB, &shaping).await.unwrap();
            // Repeated (a re-sent Join): replaced, nothing doubled.
            dp.set_shaping(HOST, IFB, &shaping).await.unwrap();

            let host_q = qdiscs(HOST).await;
            assert_eq!(
                tbf_of(&host_q),
                // 1 MB/s; 25 ms of it plus the 10 kB burst; 10 ms in 64 ns ticks.
                Some((1_000_000, 35_000, 156_250)),
                "{host_q:?}"
            );
            assert!(has_ingress_qdisc(&host_q), "{host_q:?}");
            let ifb = link_json(IFB).expect("the ifb exists");
            assert_eq!(ifb["linkinfo"]["info_kind"], "ifb", "{ifb}");
            assert!(has_flag(&ifb, "UP"), "{ifb}");
            assert_eq!(ifb["mtu"], 1380, "the ifb has the host end's MTU");
            assert_eq!(
                tbf_of(&qdiscs(IFB).await),
                Some((2_000_000, 60_000, 78_125))
            );
            assert_eq!(
                redirects(HOST).await,
                vec![ifindex(IFB)],
                "one filter redirecting to the ifb"
            );

            // Into the container at 1 MB/s, out of it at 2 MB/s: TCP cannot beat the bucket.
            container.adopt(PEER, &format!("{PEER_IP}/24"));
            let into: SocketAddr = format!("{PEER_IP}:5202").parse().unwrap();
            let out_of: SocketAddr = format!("{HOST_IP}:5201").parse().unwrap();
            let rate_in = transfer(Some(container.path()), None, into, 2_000_000);
            let rate_out = transfer(None, Some(container.path()), out_of, 3_000_000);
            eprintln!("shaped: into the container {rate_in:.0} B/s, out of it {rate_out:.0} B/s");
            assert!(rate_in <= 1.5 * 1_000_000.0, "ingress {rate_in:.0} B/s");
            assert!(rate_out <= 1.5 * 2_000_000.0, "egress {rate_out:.0} B/s");

            // A new rate replaces the old one in place.
            let slower = Shaping {
                ingress: Some(TokenBucket {
                    rate: 4_000_000,
                    burst: 80_000,
                }),
                egress: None,
            };
            dp.set_shaping(HOST, IFB, &slower).await.unwrap();
            let host_q = qdiscs(HOST).await;
            assert_eq!(tbf_of(&host_q).map(|t| t.0), Some(500_000), "{host_q:?}");
            assert!(!has_ingress_qdisc(&host_q), "egress unshaped: {host_q:?}");
            assert!(link_json(IFB).is_none(), "egress unshaped: the ifb is gone");

            dp.set_shaping(HOST, IFB, &Shaping::default())
                .await
                .unwrap();
            let host_q = qdiscs(HOST).await;
            assert!(tbf_of(&host_q).is_none(), "{host_q:?}");
            assert!(!has_ingress_qdisc(&host_q), "{host_q:?}");
            assert!(redirects(HOST).await.is_empty());
            // Nothing left to remove is fine, and so is deleting an ifb that is gone.
            dp.set_shaping(HOST, IFB, &Shaping::default())
                .await
                .unwrap();
            dp.delete_link(IFB).await.unwrap();

            let free = transfer(Some(container.path()), None, into, 3_000_000);
            eprintln!("unshaped: into the container {free:.0} B/s");
            assert!(free > 3.0 * 1_000_000.0, "no limit left: {free:.0} B/s");
        },
    );
}

#[test]
fn egress_only_shaping_and_refusals() {
    in_netns("egress_only_shaping_and_refusals", || async {
        let dp = dataplane();
        bridge_and_veth(&dp, PeerTuning::default()).await;
        let egress_only = Shaping {
            ingress: None,
            egress: Some(EGRESS),
        };
        dp.set_shaping(HOST, IFB, &egress_only).await.unwrap();
        let host_q = qdiscs(HOST).await;
        assert!(tbf_of(&host_q).is_none(), "{host_q:?}");
        assert!(has_ingress_qdisc(&host_q), "{host_q:?}");
        assert_eq!(redirects(HOST).await, vec![ifindex(IFB)]);

        let err = dp
            .set_shaping("cnbtnone0", IFB, &egress_only)
            .await
            .unwrap_err();
        assert!(matches!(err, DataplaneError::NotFound(_)), "{err:?}");

        // A link of another kind under the ifb's name is not taken over.
        dp.set_shaping(HOST, IFB, &Shaping::default())
            .await
            .unwrap();
        run(&["ip", "link", "add", IFB, "type", "bridge"]);
        let err = dp.set_shaping(HOST, IFB, &egress_only).await.unwrap_err();
        assert!(matches!(err, DataplaneError::WrongKind { .. }), "{err:?}");
    });
}

#[test]
fn peer_tuning_is_on_the_container_end_and_moves_with_it() {
    in_netns(
        "peer_tuning_is_on_the_container_end_and_moves_with_it",
        || async {
            let dp = dataplane();
            let tuning = PeerTuning {
                mtu: Some(1300),
                promisc: Some(true),
                allmulti: Some(true),
                tx_qlen: Some(500),
            };
            bridge_and_veth(&dp, tuning).await;
            let peer = link_json(PEER).unwrap();
            assert_eq!(peer["mtu"], 1300, "tuning's mtu wins: {peer}");
            assert_eq!(peer["promiscuity"], 1, "{peer}");
            assert!(has_flag(&peer, "ALLMULTI"), "{peer}");
            assert_eq!(peer["txqlen"], 500, "{peer}");
            assert_eq!(peer["address"], "02:42:0a:59:00:02", "{peer}");
            assert_eq!(link_json(HOST).unwrap()["mtu"], 1380, "host end untouched");

            // A re-sent Join keeps the pair and applies its tuning.
            dp.create_veth(&veth(PeerTuning {
                tx_qlen: Some(600),
                ..tuning
            }))
            .await
            .unwrap();
            assert_eq!(link_json(PEER).unwrap()["txqlen"], 600);

            // What Docker does next: move the end into the sandbox.
            let container = NamedNetns::new("tuning");
            run(&["ip", "link", "set", PEER, "netns", &container.name]);
            let moved: serde_json::Value =
                serde_json::from_str(&container.ip(&["-j", "-d", "link", "show", PEER])).unwrap();
            let moved = &moved[0];
            assert_eq!(moved["mtu"], 1300, "{moved}");
            assert_eq!(moved["promiscuity"], 1, "{moved}");
            assert!(has_flag(moved, "ALLMULTI"), "{moved}");
            assert_eq!(moved["txqlen"], 600, "{moved}");
        },
    );
}

#[test]
fn sysctls_are_written_in_the_sandbox_only() {
    in_netns("sysctls_are_written_in_the_sandbox_only", || async {
        const KEY_FILE: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
        let container = NamedNetns::new("sysctl");
        let inside = || {
            run(&["ip", "netns", "exec", &container.name, "cat", KEY_FILE])
                .trim()
                .to_string()
        };
        let host_before = std::fs::read_to_string(KEY_FILE).unwrap();
        assert_ne!(inside(), "1000");
        let dp = dataplane();
        dp.set_sysctls(
            &container.path(),
            &[
                ("net.ipv4.ip_unprivileged_port_start".into(), "1000".into()),
                ("net/ipv4/conf/lo/forwarding".into(), "1".into()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(inside(), "1000");
        assert_eq!(
            run(&[
                "ip",
                "netns",
                "exec",
                &container.name,
                "cat",
                "/proc/sys/net/ipv4/conf/lo/forwarding"
            ])
            .trim(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(KEY_FILE).unwrap(),
            host_before,
            "the test namespace (the host) keeps its value"
        );

        let err = dp
            .set_sysctls(
                &container.path(),
                &[("net.ipv4.no_such_sysctl".into(), "1".into())],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, DataplaneError::Sysctl(SysctlError::Missing { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("net.ipv4.no_such_sysctl") && text.contains(&container.name),
            "{text}"
        );

        let err = dp
            .set_sysctls(
                &container.path(),
                &[("net.ipv4.ip_unprivileged_port_start".into(), "x".into())],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, DataplaneError::Sysctl(SysctlError::Write { .. })),
            "{err:?}"
        );

        let err = dp
            .set_sysctls(&container.path(), &[("kernel.shmmax".into(), "1".into())])
            .await
            .unwrap_err();
        assert!(
            matches!(err, DataplaneError::Sysctl(SysctlError::NotNetwork { .. })),
            "{err:?}"
        );
        assert_eq!(inside(), "1000", "refused writes changed nothing");
    });
}
