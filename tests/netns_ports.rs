//! Netns tier for published ports: what `add_ports`/`del_ports` do to real traffic, once per
//! backend (the rules themselves are pinned by goldens in `netns_port_rules` for iptables and
//! `netns_nftables`). The test thread's namespace plays the host the backend is meant for
//! (`Backend::host_policy`), named namespaces play a container on a bridge and an "outside" peer
//! wired to the host by a veth. Root required.

mod support;
use support::netns;

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::{BridgeSpec, Dataplane, VethSpec};
use cnibridge::firewall::{Firewall, NetworkRules, Proto};
use netns::backend::Backend;
use netns::cases::{endpoint, ip, net_a, net_b, run_of, tcp, EP_1, HOST_OUT, NET_A};
use netns::{accept_within, bind_retrying, in_netns_for, run, NamedNetns};
use nix::sched::{setns, CloneFlags};

const YES: Duration = Duration::from_secs(3);
const NO: Duration = Duration::from_millis(800);

const OUT: &str = "10.99.0.2";
const GW: &str = "10.77.0.1";
const CONTAINER: &str = "10.77.0.2";

/// Network A with its IPv4 subnet only (the traffic tests are IPv4).
fn net_a_v4() -> NetworkRules {
    NetworkRules {
        subnets: vec!["10.77.0.0/24".parse().unwrap()],
        ..net_a()
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The fake host: the `FORWARD` policy of the backend's host (`Backend::host_policy`), forwarding on, an outside peer on 10.99.0.0/30, bridge
/// `cnb-a` with 10.77.0.1/24 and one container at 10.77.0.2 (default route via the bridge).
struct Host {
    dp: NetlinkDataplane,
    outside: NamedNetns,
    container: NamedNetns,
}

async fn host(backend: Backend) -> Host {
    backend.host_policy();
    run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let outside = NamedNetns::new("out");
    run(&[
        "ip", "link", "add", "vout", "type", "veth", "peer", "name", "vout-o",
    ]);
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_OUT}/30"),
        "dev",
        "vout",
    ]);
    run(&["ip", "link", "set", "vout", "up"]);
    outside.adopt("vout-o", &format!("{OUT}/30"));
    let dp = NetlinkDataplane::new().unwrap();
    let container = bridge_with_container(&dp, "cnb-a", GW, "c", CONTAINER).await;
    Host {
        dp,
        outside,
        container,
    }
}

/// Bridge `bridge` with gateway `gw`/24 and a container `tag` at `addr`/24 on it (veth
/// `vh-<tag>`/`vp-<tag>`), routed via the gateway.
async fn bridge_with_container(
    dp: &NetlinkDataplane,
    bridge: &str,
    gw: &str,
    tag: &str,
    addr: &str,
) -> NamedNetns {
    dp.ensure_bridge(&BridgeSpec {
        name: bridge.into(),
        mtu: None,
        addresses: vec![format!("{gw}/24").parse().unwrap()],
        promisc: false,
        force_address: false,
    })
    .await
    .unwrap();
    let peer = format!("vp-{tag}");
    dp.create_veth(&VethSpec {
        host_name: format!("vh-{tag}"),
        peer_name: peer.clone(),
        bridge: bridge.into(),
        mtu: None,
        peer_mac: None,
        hairpin: false,
        peer_tuning: Default::default(),
    })
    .await
    .unwrap();
    let ns = NamedNetns::new(tag);
    ns.adopt(&peer, &format!("{addr}/24"));
    ns.ip(&["route", "add", "default", "via", gw]);
    ns
}

fn enter(f: &File) {
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

fn ns_file(ns: &NamedNetns) -> File {
    File::open(ns.path()).expect("open netns")
}

/// Listen on `listen` inside `server`, connect to `to` from `client` (None = the host, i.e.
/// the test thread's namespace); the source address the server sees, or None.
fn tcp_via(
    client: Option<&NamedNetns>,
    server: &NamedNetns,
    listen: SocketAddr,
    to: SocketAddr,
    t: Duration,
) -> Option<IpAddr> {
    let client: Option<PathBuf> = client.map(NamedNetns::path);
    let server = ns_file(server);
    std::thread::spawn(move || {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        enter(&server);
        let listener = bind_retrying(listen);
        match client {
            Some(p) => enter(&File::open(p).expect("open client netns")),
            None => enter(&home),
        }
        let conn = TcpStream::connect_timeout(&to, t).ok()?;
        let accepted = accept_within(&listener, t);
        // The client closes first, so the server side of port 80 never lingers.
        drop(conn);
        accepted.map(|(_, peer)| peer.ip())
    })
    .join()
    .expect("probe thread")
}

/// One datagram to `to` from `client`, received on `listen` inside `server`: the source seen.
fn udp_via(
    client: Option<&NamedNetns>,
    server: &NamedNetns,
    listen: SocketAddr,
    to: SocketAddr,
    t: Duration,
) -> Option<IpAddr> {
    let client: Option<PathBuf> = client.map(NamedNetns::path);
    let server = ns_file(server);
    std::thread::spawn(move || {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        enter(&server);
        let receiver = UdpSocket::bind(listen).expect("bind receiver");
        receiver.set_read_timeout(Some(t)).expect("timeout");
        match client {
            Some(p) => enter(&File::open(p).expect("open client netns")),
            None => enter(&home),
        }
        let sender = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
        sender.send_to(b"probe", to).ok()?;
        let mut buf = [0u8; 16];
        receiver.recv_from(&mut buf).ok().map(|(_, p)| p.ip())
    })
    .join()
    .expect("probe thread")
}

#[test]
fn published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_legacy() {
    published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_with(
        Backend::IptablesLegacy,
    );
}

#[test]
fn published_ports_answer_from_outside_the_host_localhost_and_the_container_itself() {
    published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_with(
        Backend::Iptables,
    );
}

#[test]
fn published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_nftables() {
    published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_with(
        Backend::Nftables,
    );
}

fn published_ports_answer_from_outside_the_host_localhost_and_the_container_itself_with(
    backend: Backend,
) {
    in_netns_for(backend, "published_ports_answer", move || async move {
        let h = host(backend).await;
        let (c, out) = (&h.container, Some(&h.outside));
        let any80 = sa("0.0.0.0", 80);
        let fw = backend.firewall();
        fw.add_network(&net_a_v4()).await.unwrap();
        assert_eq!(
            tcp_via(out, c, any80, sa(HOST_OUT, 8080), NO),
            None,
            "nothing published yet"
        );

        let p = endpoint(
            EP_1,
            "10.77.0.2/24",
            None,
            vec![
                tcp(None, 8080, 80),
                tcp(Some("127.0.0.1"), 8081, 80),
                run_of(Proto::Udp, 5000, 5001, 6000),
            ],
        );
        fw.add_ports(&p).await.unwrap();
        // With br_netfilter the DNATed hairpin frame is bridged back out of the port it came
        // in on, which the bridge refuses unless the port is in hairpin mode...
        if netns::bridged_through_iptables() {
            assert_eq!(tcp_via(Some(c), c, any80, sa(HOST_OUT, 8080), NO), None);
        }
        // ...which is what Program sets besides the rules.
        h.dp.set_hairpin("vh-c", true).await.unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/cnb-a/route_localnet")
                .unwrap()
                .trim(),
            "1"
        );

        // From outside: the client's own address arrives (no masquerade on the way in).
        assert_eq!(tcp_via(out, c, any80, sa(HOST_OUT, 8080), YES), ip(OUT));
        // From the host, on its outside address and on 127.0.0.1 (masqueraded to the gateway).
        assert_eq!(
            tcp_via(None, c, any80, sa(HOST_OUT, 8080), YES),
            ip(HOST_OUT)
        );
        assert_eq!(tcp_via(None, c, any80, sa("127.0.0.1", 8080), YES), ip(GW));
        assert_eq!(tcp_via(None, c, any80, sa("127.0.0.1", 8081), YES), ip(GW));
        // The 127.0.0.1 mapping is the host's only.
        assert_eq!(tcp_via(out, c, any80, sa(HOST_OUT, 8081), NO), None);
        // Hairpin: the container reaches itself through the host address.
        assert_eq!(tcp_via(Some(c), c, any80, sa(HOST_OUT, 8080), YES), ip(GW));
        assert_eq!(tcp_via(Some(c), c, any80, sa(GW, 8080), YES), ip(GW));
        // A UDP range maps one to one: host 5001 is container 6001.
        assert_eq!(
            udp_via(out, c, sa("0.0.0.0", 6001), sa(HOST_OUT, 5001), YES),
            ip(OUT)
        );

        fw.del_ports(NET_A, EP_1).await.unwrap();
        assert_eq!(tcp_via(out, c, any80, sa(HOST_OUT, 8080), NO), None);
        assert_eq!(tcp_via(None, c, any80, sa("127.0.0.1", 8081), NO), None);
        assert_eq!(tcp_via(Some(c), c, any80, sa(HOST_OUT, 8080), NO), None);
        assert_eq!(
            udp_via(out, c, sa("0.0.0.0", 6001), sa(HOST_OUT, 5001), NO),
            None
        );
    });
}

/// `route_localnet` on the bridge would let a container send to the host's own 127.0.0.1
/// services (CVE-2020-8558); `CNIBRIDGE-INPUT` drops that. The container is given a route to
/// 127.0.0.0/8 via the bridge, as a hostile one could.
#[test]
fn route_localnet_does_not_expose_the_hosts_loopback_services() {
    route_localnet_does_not_expose_the_hosts_loopback_services_with(Backend::Iptables);
}

#[test]
fn route_localnet_does_not_expose_the_hosts_loopback_services_nftables() {
    route_localnet_does_not_expose_the_hosts_loopback_services_with(Backend::Nftables);
}

fn route_localnet_does_not_expose_the_hosts_loopback_services_with(backend: Backend) {
    in_netns_for(
        backend,
        "route_localnet_does_not_expose_loopback",
        move || async move {
            let h = host(backend).await;
            let c = &h.container;
            c.ip(&[
                "route",
                "del",
                "local",
                "127.0.0.0/8",
                "dev",
                "lo",
                "table",
                "local",
            ]);
            c.ip(&[
                "route",
                "del",
                "local",
                "127.0.0.1",
                "dev",
                "lo",
                "table",
                "local",
            ]);
            c.ip(&["route", "add", "127.0.0.0/8", "via", GW]);
            run(&[
                "ip",
                "netns",
                "exec",
                &c.name,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.route_localnet=1",
                "net.ipv4.conf.vp-c.route_localnet=1",
            ]);
            let fw = backend.firewall();
            fw.add_network(&net_a()).await.unwrap();
            fw.add_ports(&endpoint(
                EP_1,
                "10.77.0.2/24",
                None,
                vec![tcp(None, 8080, 80)],
            ))
            .await
            .unwrap();
            // A UDP service on the host's 127.0.0.1 (a stub resolver, say), probed from the
            // container.
            let probe = || {
                let home = File::open("/proc/thread-self/ns/net").unwrap();
                let container = ns_file(c);
                std::thread::spawn(move || {
                    let receiver = UdpSocket::bind("127.0.0.1:7070").unwrap();
                    receiver.set_read_timeout(Some(NO)).unwrap();
                    enter(&container);
                    let sender = UdpSocket::bind("0.0.0.0:0").unwrap();
                    let _ = sender.send_to(b"x", "127.0.0.1:7070");
                    enter(&home);
                    let mut buf = [0u8; 4];
                    receiver.recv_from(&mut buf).ok().map(|(_, p)| p.ip())
                })
                .join()
                .unwrap()
            };
            assert_eq!(probe(), None, "the guard must drop it");
            // Proof that the guard is what stops it.
            backend.remove_loopback_guard();
            assert_eq!(
                probe(),
                ip(CONTAINER),
                "without the guard the datagram arrives"
            );
        },
    );
}

/// What `cnibridge firewall-reload` (a reconcile) does after an admin removed every rule of
/// ours: published ports answer again.
#[test]
fn reload_after_a_flush_restores_published_traffic() {
    reload_after_a_flush_restores_published_traffic_with(Backend::Iptables);
}

#[test]
fn reload_after_a_flush_restores_published_traffic_nftables() {
    reload_after_a_flush_restores_published_traffic_with(Backend::Nftables);
}

fn reload_after_a_flush_restores_published_traffic_with(backend: Backend) {
    in_netns_for(
        backend,
        "reload_restores_published_traffic",
        move || async move {
            let h = host(backend).await;
            let (c, out) = (&h.container, Some(&h.outside));
            let any80 = sa("0.0.0.0", 80);
            let fw = backend.firewall();
            let net = net_a_v4();
            let p = endpoint(EP_1, "10.77.0.2/24", None, vec![tcp(None, 8080, 80)]);
            fw.add_network(&net).await.unwrap();
            fw.add_ports(&p).await.unwrap();
            assert_eq!(tcp_via(out, c, any80, sa(HOST_OUT, 8080), YES), ip(OUT));
            for delete in [false, true] {
                backend.flush_by_hand(delete);
                assert_eq!(
                    tcp_via(out, c, any80, sa(HOST_OUT, 8080), NO),
                    None,
                    "flushed (deleted: {delete})"
                );
                fw.reconcile(std::slice::from_ref(&net), std::slice::from_ref(&p))
                    .await
                    .unwrap();
                assert_eq!(
                    tcp_via(out, c, any80, sa(HOST_OUT, 8080), YES),
                    ip(OUT),
                    "reloaded (deleted: {delete})"
                );
            }
        },
    );
}

/// Isolation holds for published ports too: a container of another cnibridge network cannot
/// reach them through the host's address (the DNAT happens, the forward is dropped), while the
/// outside can.
#[test]
fn a_container_of_another_network_cannot_reach_a_published_port() {
    a_container_of_another_network_cannot_reach_a_published_port_with(Backend::Iptables);
}

#[test]
fn a_container_of_another_network_cannot_reach_a_published_port_nftables() {
    a_container_of_another_network_cannot_reach_a_published_port_with(Backend::Nftables);
}

fn a_container_of_another_network_cannot_reach_a_published_port_with(backend: Backend) {
    in_netns_for(
        backend,
        "another_network_cannot_reach_a_published_port",
        move || async move {
            let h = host(backend).await;
            let other = bridge_with_container(&h.dp, "cnb-b", "10.78.0.1", "d", "10.78.0.2").await;
            let (c, out) = (&h.container, Some(&h.outside));
            let any80 = sa("0.0.0.0", 80);
            let fw = backend.firewall();
            fw.add_network(&net_a_v4()).await.unwrap();
            fw.add_network(&net_b()).await.unwrap();
            fw.add_ports(&endpoint(
                EP_1,
                "10.77.0.2/24",
                None,
                vec![tcp(None, 8080, 80)],
            ))
            .await
            .unwrap();
            assert_eq!(tcp_via(out, c, any80, sa(HOST_OUT, 8080), YES), ip(OUT));
            assert_eq!(
                tcp_via(Some(&other), c, any80, sa(HOST_OUT, 8080), NO),
                None,
                "via the host's outside address"
            );
            assert_eq!(
                tcp_via(Some(&other), c, any80, sa("10.78.0.1", 8080), NO),
                None,
                "via its own gateway"
            );
            // The other network's container itself still gets out.
            assert_eq!(
                tcp_via(Some(&other), &h.outside, sa(OUT, 7000), sa(OUT, 7000), YES),
                ip(HOST_OUT)
            );
        },
    );
}

/// A UDP client that sent to a host port before it was published (its flow is tracked as going
/// to the host itself) reaches the container with its next datagram once the port is published:
/// publishing forgets such flows, as Docker's bridge does.
#[test]
fn a_udp_flow_older_than_its_published_port_reaches_the_container() {
    a_udp_flow_older_than_its_published_port_reaches_the_container_with(Backend::Iptables);
}

#[test]
fn a_udp_flow_older_than_its_published_port_reaches_the_container_nftables() {
    a_udp_flow_older_than_its_published_port_reaches_the_container_with(Backend::Nftables);
}

fn a_udp_flow_older_than_its_published_port_reaches_the_container_with(backend: Backend) {
    in_netns_for(
        backend,
        "udp_flow_older_than_its_port",
        move || async move {
            let h = host(backend).await;
            let fw = backend.firewall();
            fw.add_network(&net_a_v4()).await.unwrap();
            // The client keeps one source port, as a retrying DNS or syslog client does.
            let client = {
                let out = ns_file(&h.outside);
                std::thread::spawn(move || {
                    enter(&out);
                    UdpSocket::bind(sa(OUT, 4444)).expect("bind client")
                })
                .join()
                .expect("client thread")
            };
            let to = sa(HOST_OUT, 9100);
            client.send_to(b"early", to).expect("send early");
            let receiver = {
                let c = ns_file(&h.container);
                std::thread::spawn(move || {
                    enter(&c);
                    let r = UdpSocket::bind(sa("0.0.0.0", 9100)).expect("bind receiver");
                    r.set_read_timeout(Some(YES)).expect("timeout");
                    r
                })
                .join()
                .expect("receiver thread")
            };
            let p = endpoint(
                EP_1,
                "10.77.0.2/24",
                None,
                vec![run_of(Proto::Udp, 9100, 9100, 9100)],
            );
            fw.add_ports(&p).await.unwrap();
            client.send_to(b"late", to).expect("send late");
            let mut buf = [0u8; 16];
            let got = receiver
                .recv_from(&mut buf)
                .ok()
                .map(|(n, from)| (buf[..n].to_vec(), from.ip()));
            assert_eq!(
                got,
                Some((b"late".to_vec(), OUT.parse().unwrap())),
                "the datagram after publishing (the early one went to the host)"
            );
        },
    );
}
