//! Parsing Docker's portmap option and resolving requests, against a fake host.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::json;

use super::*;

/// A host whose ephemeral range is small and some of whose ports are bound.
struct FakeHost {
    range: (u16, u16),
    bound: BTreeSet<(Proto, u16)>,
    asked: Mutex<Vec<u16>>,
}

impl FakeHost {
    fn new(range: (u16, u16), bound: &[(Proto, u16)]) -> Self {
        FakeHost {
            range,
            bound: bound.iter().copied().collect(),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl HostPorts for FakeHost {
    fn ephemeral_range(&self) -> (u16, u16) {
        self.range
    }
    fn is_free(&self, proto: Proto, _host_ip: Option<IpAddr>, port: u16) -> bool {
        self.asked.lock().unwrap().push(port);
        !self.bound.contains(&(proto, port))
    }
}

fn opts(v: serde_json::Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(PORTMAP.into(), v);
    m
}

fn req(proto: Proto, host_ip: Option<&str>, hp: u16, hpe: u16, cp: u16) -> PortRequest {
    PortRequest {
        proto,
        container_port: cp,
        host_ip: host_ip.map(|s| s.parse().unwrap()),
        host_port: hp,
        host_port_end: hpe,
    }
}

const BOTH: Families = Families { v4: true, v6: true };
const V4: Families = Families {
    v4: true,
    v6: false,
};

fn err_of(r: Result<impl std::fmt::Debug, DriverError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn fixture_01_options_parse() {
    // The Join options of fixtures/dockerd-20.10/01-create-run-publish-rm.jsonl, verbatim.
    let join: Map<String, Value> = serde_json::from_str(
        r#"{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80},{"Proto":17,"Port":53}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353}]}"#,
    )
    .unwrap();
    assert_eq!(
        parse_portmap(&join).unwrap().unwrap(),
        vec![
            req(Proto::Tcp, None, 8080, 8080, 80),
            req(Proto::Udp, Some("127.0.0.1"), 5353, 5353, 53),
        ]
    );
    // The second container of the fixture publishes nothing.
    let empty: Map<String, Value> =
        serde_json::from_str(r#"{"com.docker.network.portmap":[]}"#).unwrap();
    assert_eq!(parse_portmap(&empty).unwrap(), Some(vec![]));
    assert_eq!(parse_portmap(&opts(Value::Null)).unwrap(), Some(vec![]));
    assert_eq!(parse_portmap(&Map::new()).unwrap(), None);
}

#[test]
fn parsing_follows_docker_semantics() {
    let parsed = parse_portmap(&opts(json!([
        {"Proto": 132, "Port": 9, "HostIP": "::ffff:10.0.0.1", "HostPort": 0, "HostPortEnd": 0},
        {"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 0},
        {"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010, "Future": true},
    ])))
    .unwrap()
    .unwrap();
    assert_eq!(
        parsed,
        vec![
            // IPv4-mapped IPv6 is the IPv4 address.
            req(Proto::Sctp, Some("10.0.0.1"), 0, 0, 9),
            // HostPortEnd 0 means HostPort.
            req(Proto::Tcp, None, 8000, 8000, 80),
            req(Proto::Tcp, None, 8000, 8010, 80),
        ]
    );
}

#[test]
fn malformed_bindings_name_the_field() {
    for (v, needle) in [
        (json!({"Proto": 6}), "must be a list"),
        (json!(["x"]), "portmap[0] must be an object"),
        (json!([{"Port": 80}]), "portmap[0].Proto is missing"),
        (
            json!([{"Proto": 6, "Port": 80}, {"Proto": 1, "Port": 80}]),
            "portmap[1].Proto 1 is not tcp (6), udp (17) or sctp (132)",
        ),
        (
            json!([{"Proto": "6", "Port": 80}]),
            "portmap[0].Proto \"6\"",
        ),
        (json!([{"Proto": 6}]), "portmap[0].Port is missing"),
        (json!([{"Proto": 6, "Port": 0}]), "portmap[0].Port 0"),
        (
            json!([{"Proto": 6, "Port": 70000}]),
            "portmap[0].Port 70000 is not a port",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostPort": -1}]),
            "HostPort -1",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostIP": "nope"}]),
            "HostIP \"nope\"",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostIP": 5}]),
            "HostIP 5 is not a string",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "IP": 5}]),
            "portmap[0].IP 5",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostPort": 90, "HostPortEnd": 80}]),
            "HostPortEnd 80 is below HostPort 90",
        ),
        (
            json!([{"Proto": 6, "Port": 80, "HostPort": 0, "HostPortEnd": 80}]),
            "HostPortEnd 80 is set without a HostPort",
        ),
    ] {
        let e = err_of(parse_portmap(&opts(v.clone())));
        assert!(e.contains(needle), "{v}: {e:?} lacks {needle:?}");
    }
}

fn table(entries: &[(&str, &str, PortMapping)]) -> PortTable {
    let mut t = PortTable::new();
    for (net, ep, m) in entries {
        t.entry((net.to_string(), ep.to_string()))
            .or_default()
            .push(*m);
    }
    t
}

const NET: &str = "791e17b650f762350d6d2a4f46730c611b40a62ed86ac2c0b93956bcbab6cd6e";
const EP: &str = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";

#[test]
fn a_port_held_by_another_endpoint_is_refused_naming_it() {
    let host = FakeHost::new(DEFAULT_EPHEMERAL, &[]);
    let held = table(&[(NET, EP, PortMapping::single(Proto::Tcp, None, 8080, 80))]);
    let e = err_of(resolve(
        &[req(Proto::Tcp, None, 8080, 8080, 81)],
        BOTH,
        &held,
        &host,
    ));
    assert_eq!(
        e,
        "host port 8080/tcp is already published by endpoint 9dbfb9b7a99c (network 791e17b650f7)"
    );
    // A specific address conflicts with the unset one, and says which address it asked for.
    let e = err_of(resolve(
        &[req(Proto::Tcp, Some("127.0.0.1"), 8080, 8080, 81)],
        BOTH,
        &held,
        &host,
    ));
    assert!(
        e.starts_with("host port 127.0.0.1:8080/tcp is already published by endpoint 9dbfb9b7a99c"),
        "{e}"
    );
    // Other protocol, or another port: fine.
    assert!(resolve(&[req(Proto::Udp, None, 8080, 8080, 81)], BOTH, &held, &host).is_ok());
    assert!(resolve(&[req(Proto::Tcp, None, 8081, 8081, 81)], BOTH, &held, &host).is_ok());
    // Two specific addresses of one family do not overlap.
    let held_lo = table(&[(
        NET,
        EP,
        PortMapping::single(Proto::Tcp, Some("127.0.0.1".parse().unwrap()), 8080, 80),
    )]);
    assert!(resolve(
        &[req(Proto::Tcp, Some("10.0.0.1"), 8080, 8080, 81)],
        BOTH,
        &held_lo,
        &host
    )
    .is_ok());
    // Twice in one request.
    let e = err_of(resolve(
        &[
            req(Proto::Tcp, None, 8080, 8080, 80),
            req(Proto::Tcp, Some("0.0.0.0"), 8080, 8080, 81),
        ],
        BOTH,
        &PortTable::new(),
        &host,
    ));
    assert_eq!(
        e,
        "host port 8080/tcp is already published by this container"
    );
}

#[test]
fn an_explicit_port_a_host_process_holds_is_refused() {
    let host = FakeHost::new(DEFAULT_EPHEMERAL, &[(Proto::Tcp, 8080)]);
    let e = err_of(resolve(
        &[req(Proto::Tcp, Some("127.0.0.1"), 8080, 8080, 80)],
        BOTH,
        &PortTable::new(),
        &host,
    ));
    assert_eq!(
        e,
        "host port 127.0.0.1:8080/tcp is already in use on the host; stop what listens on it or \
         publish another host port"
    );
    // The other protocol is free, and so is the port once nobody holds it.
    assert!(resolve(
        &[req(Proto::Udp, None, 8080, 8080, 80)],
        BOTH,
        &PortTable::new(),
        &host
    )
    .is_ok());
    let free = FakeHost::new(DEFAULT_EPHEMERAL, &[]);
    assert!(resolve(
        &[req(Proto::Tcp, None, 8080, 8080, 80)],
        BOTH,
        &PortTable::new(),
        &free
    )
    .is_ok());
}

#[test]
fn port_zero_takes_the_lowest_free_ephemeral_port() {
    let host = FakeHost::new((40000, 40005), &[(Proto::Tcp, 40001)]);
    let held = table(&[(NET, EP, PortMapping::single(Proto::Tcp, None, 40000, 80))]);
    let got = resolve(
        &[
            req(Proto::Tcp, None, 0, 0, 80),
            req(Proto::Tcp, None, 0, 0, 90),
        ],
        BOTH,
        &held,
        &host,
    )
    .unwrap();
    // 40000 is ours already, 40001 bound on the host: 40002, then 40003.
    assert_eq!(
        got,
        vec![
            PortMapping::single(Proto::Tcp, None, 40002, 80),
            PortMapping::single(Proto::Tcp, None, 40003, 90),
        ]
    );
    // The host is only asked about ports no endpoint of ours holds.
    assert!(!host.asked.lock().unwrap().contains(&40000));
    // UDP has its own ports.
    let udp = resolve(&[req(Proto::Udp, None, 0, 0, 53)], BOTH, &held, &host).unwrap();
    assert_eq!(udp[0].host_port, 40000);
    // Exhausted.
    let full = FakeHost::new((40000, 40001), &[(Proto::Tcp, 40000), (Proto::Tcp, 40001)]);
    let e = err_of(resolve(
        &[req(Proto::Tcp, None, 0, 0, 80)],
        BOTH,
        &PortTable::new(),
        &full,
    ));
    assert!(
        e.starts_with("no free host port in 40000-40001/tcp for container port 80"),
        "{e}"
    );
}

#[test]
fn a_host_range_with_one_container_port_picks_one_port_of_it() {
    // `-p 8000-8010:80`: Docker's "any one of these".
    let host = FakeHost::new(DEFAULT_EPHEMERAL, &[(Proto::Tcp, 8000)]);
    let got = resolve(
        &[req(Proto::Tcp, None, 8000, 8010, 80)],
        BOTH,
        &PortTable::new(),
        &host,
    )
    .unwrap();
    assert_eq!(got, vec![PortMapping::single(Proto::Tcp, None, 8001, 80)]);
}

#[test]
fn consecutive_ports_merge_into_one_run() {
    // `-p 9000-9002:9000-9002/udp` arrives as three entries.
    let host = FakeHost::new(DEFAULT_EPHEMERAL, &[]);
    let reqs: Vec<PortRequest> = (0..3)
        .map(|i| req(Proto::Udp, None, 9000 + i, 9000 + i, 9000 + i))
        .chain([
            req(Proto::Udp, None, 9004, 9004, 9004),
            req(Proto::Tcp, None, 9003, 9003, 9003),
        ])
        .collect();
    let got = resolve(&reqs, BOTH, &PortTable::new(), &host).unwrap();
    assert_eq!(
        got,
        vec![
            PortMapping::single(Proto::Tcp, None, 9003, 9003),
            PortMapping {
                host_port_end: 9002,
                ..PortMapping::single(Proto::Udp, None, 9000, 9000)
            },
            PortMapping::single(Proto::Udp, None, 9004, 9004),
        ]
    );
    // Host and container must both continue: 8000->80, 8001->82 stay apart.
    let apart = merge_runs(vec![
        PortMapping::single(Proto::Tcp, None, 8000, 80),
        PortMapping::single(Proto::Tcp, None, 8001, 82),
    ]);
    assert_eq!(apart.len(), 2);
    assert_eq!(
        describe(&got),
        "9003/tcp->9003, 9000-9002/udp->9000-9002, 9004/udp->9004"
    );
}

#[test]
fn bindings_the_endpoint_cannot_serve_are_refused() {
    let host = FakeHost::new(DEFAULT_EPHEMERAL, &[]);
    let none = PortTable::new();
    for (r, fam, needle) in [
        (
            req(Proto::Tcp, Some("fd00::1"), 80, 80, 80),
            V4,
            "no IPv6 address",
        ),
        (
            req(Proto::Tcp, Some("10.0.0.1"), 80, 80, 80),
            Families {
                v4: false,
                v6: true,
            },
            "no IPv4 address",
        ),
        (
            req(Proto::Tcp, Some("::1"), 80, 80, 80),
            BOTH,
            "IPv6 loopback",
        ),
        (
            req(Proto::Tcp, Some("224.0.0.1"), 80, 80, 80),
            BOTH,
            "multicast",
        ),
        (
            req(Proto::Tcp, None, 80, 80, 80),
            Families {
                v4: false,
                v6: false,
            },
            "no address",
        ),
    ] {
        let e = err_of(resolve(&[r], fam, &none, &host));
        assert!(e.contains(needle), "{e}");
        assert!(e.starts_with("cannot publish "), "{e}");
    }
}
