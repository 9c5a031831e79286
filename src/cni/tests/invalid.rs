//! Invalid configs, each with the exact text `docker network create` answers.

use super::{conf, list, load, V4};

const VERSIONS: &str = "(supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)";

/// (file name, JSON, exact error).
fn cases() -> Vec<(&'static str, String, String)> {
    let c = |keys: &str, ipam: &str| conf(keys, ipam);
    let ipam = |ipam: &str| conf("", ipam);
    let raw = |s: &str| s.to_string();
    let rows: Vec<(&str, String, &str)> = vec![
        // JSON shape and types.
        ("t.conf", raw("{"), "t.conf: is not valid JSON: EOF while parsing an object at line 1 column 1"),
        ("t.conf", raw("[1]"), "t.conf: the top level must be an object, got [1]"),
        ("t.conf", c(r#""mtu":"big""#, V4), r#"t.conf: mtu must be an integer, got "big""#),
        ("t.conf", c(r#""mtu":1500.5"#, V4), "t.conf: mtu must be an integer, got 1500.5"),
        ("t.conf", c(r#""mtu":20"#, V4), "t.conf: mtu 20 is out of range: use 0 for the kernel default, or 68 to 65535"),
        ("t.conf", c(r#""mtu":-1"#, V4), "t.conf: mtu -1 is out of range: use 0 for the kernel default, or 68 to 65535"),
        ("t.conf", c(r#""mtu":65536"#, V4), "t.conf: mtu 65536 is out of range: use 0 for the kernel default, or 68 to 65535"),
        ("t.conf", c(r#""isGateway":"true""#, V4), r#"t.conf: isGateway must be true or false, got "true""#),
        ("t.conf", c(r#""ipMasq":1"#, V4), "t.conf: ipMasq must be true or false, got 1"),
        ("t.conf", c(r#""bridge":5"#, V4), "t.conf: bridge must be a string, got 5"),
        ("t.conf", c(r#""bridge":"this-name-is-too-long""#, V4), r#"t.conf: bridge "this-name-is-too-long" is not a valid interface name: 1 to 15 bytes, no '/', ':' or spaces"#),
        ("t.conf", c(r#""bridge":"a/b""#, V4), r#"t.conf: bridge "a/b" is not a valid interface name: 1 to 15 bytes, no '/', ':' or spaces"#),
        ("t.conf", c(r#""hairpinMode":true,"promiscMode":true"#, V4), "t.conf: hairpinMode and promiscMode cannot both be true"),
        ("t.conf", c(r#""disableContainerInterface":true"#, V4), "t.conf: disableContainerInterface true cannot be combined with ipam; containers need their addresses"),
        ("t.conf", c(r#""ipMasqBackend":"pf""#, V4), r#"t.conf: ipMasqBackend "pf" is not supported; use iptables or nftables"#),
        ("t.conf", c(r#""vlan":4095"#, V4), "t.conf: vlan 4095 is out of range (0 to 4094)"),
        ("t.conf", c(r#""vlanTrunk":[{"id":0}]"#, V4), "t.conf: vlanTrunk[0].id 0 is out of range (1 to 4094)"),
        ("t.conf", c(r#""vlanTrunk":[{"minID":10,"maxID":5}]"#, V4), "t.conf: vlanTrunk[0].minID 10 is greater than maxID 5"),
        ("t.conf", c(r#""vlanTrunk":[{"minID":10}]"#, V4), r#"t.conf: vlanTrunk[0] {"minID":10} needs either id or both minID and maxID"#),
        ("t.conf", c(r#""vlanTrunk":{"id":1}"#, V4), r#"t.conf: vlanTrunk must be an array, got {"id":1}"#),
        ("t.conf", c(r#""preserveDefaultVlan":"no""#, V4), r#"t.conf: preserveDefaultVlan must be true or false, got "no""#),
        ("t.conf", c(r#""dns":{"search":"x"}"#, V4), r#"t.conf: dns.search must be an array, got "x""#),
        ("t.conf", c(r#""dns":{"nameservers":[1]}"#, V4), "t.conf: dns.nameservers[0] must be a string, got 1"),
        ("t.conf", c(r#""capabilities":{"portMappings":"yes"}"#, V4), r#"t.conf: capabilities.portMappings must be true or false, got "yes""#),
        // Names, versions, plugin types.
        ("t.conf", c("", V4).replace(r#""name":"t""#, r#""name":"../x""#), r#"t.conf: name "../x" is not a valid CNI network name"#),
        ("t.conf", c("", V4).replace(r#""name":"t""#, r#""name":"""#), r#"t.conf: name "" is not a valid CNI network name"#),
        ("t.conf", c("", V4).replace(r#""name":"t""#, r#""name":null"#), "t.conf: name is missing"),
        ("t.conf", c("", V4).replace(r#""name":"t""#, r#""name":5"#), "t.conf: name must be a string, got 5"),
        ("t.conf", c("", V4).replace(r#""1.0.0""#, r#""0.5.0""#), r#"t.conf: cniVersion "0.5.0" is not a supported CNI version "#),
        ("t.conf", c("", V4).replace(r#""1.0.0""#, "1"), "t.conf: cniVersion must be a string, got 1"),
        ("t.conf", c("", V4).replace(r#""type":"bridge""#, r#""type":"macvlan""#), r#"t.conf: type "macvlan" is not implemented by cnibridge (supported: bridge, flannel)"#),
        ("t.conf", c("", V4).replace(r#""type":"bridge","#, ""), "t.conf: type is missing; use bridge"),
        ("t.conf", list("", V4), "t.conf: type is missing; a file with plugins must be named .conflist"),
        ("t.conflist", conf("", V4), "t.conflist: plugins is missing; a single plugin config must be named .conf or .json"),
        ("t.conflist", raw(r#"{"name":"t","cniVersion":"1.0.0"}"#), "t.conflist: plugins is missing; list the bridge plugin in plugins"),
        ("t.conflist", raw(r#"{"name":"t","plugins":[]}"#), "t.conflist: plugins [] must list the bridge plugin"),
        ("t.conflist", raw(r#"{"name":"t","plugins":{}}"#), "t.conflist: plugins must be an array, got {}"),
        ("t.conflist", list("", V4).replace("}]}", r#"},"x"]}"#), r#"t.conflist: plugins[1] must be an object, got "x""#),
        ("t.conflist", list("", V4).replace("}]}", r#"},{"snat":true}]}"#), "t.conflist: plugins[1].type is missing; use one of portmap, firewall, tuning, bandwidth, loopback"),
        ("t.conflist", list("", V4).replace("}]}", r#"},{"type":"vlan"}]}"#), r#"t.conflist: plugins[1].type "vlan" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"#),
        ("t.conflist", list("", V4).replace(r#""type":"bridge""#, r#""type":"ptp""#), r#"t.conflist: plugins[0].type "ptp" is not implemented by cnibridge (supported: bridge, flannel)"#),
        ("t.conflist", list("", V4).replace(r#""name":"t","#, r#""name":"t","cniVersions":["0.5.0"],"#), r#"t.conflist: cniVersions[0] "0.5.0" is not a supported CNI version "#),
        ("t.conflist", list("", V4).replace(r#""name":"t","#, r#""name":"t","cniVersions":[1],"#), "t.conflist: cniVersions[0] must be a string, got 1"),
        ("t.conflist", list("", V4).replace(r#""name":"t","#, r#""name":"t","disableCheck":"maybe","#), r#"t.conflist: disableCheck "maybe" is not a boolean; use true or false"#),
        ("t.conflist", list(r#""mtu":"big""#, V4), r#"t.conflist: plugins[0].mtu must be an integer, got "big""#),
        // The ipam section.
        ("t.conf", raw(r#"{"cniVersion":"1.0.0","name":"t","type":"bridge"}"#), "t.conf: ipam is missing; cnibridge needs an ipam section of type host-local"),
        ("t.conf", raw(r#"{"cniVersion":"1.0.0","name":"t","type":"bridge","ipam":"x"}"#), r#"t.conf: ipam must be an object, got "x""#),
        ("t.conf", raw(r#"{"cniVersion":"1.0.0","name":"t","type":"bridge","ipam":{}}"#), "t.conf: ipam.type is missing; use host-local"),
        ("t.conf", raw(r#"{"cniVersion":"1.0.0","name":"t","type":"bridge","ipam":{"type":"dhcp"}}"#), r#"t.conf: ipam.type "dhcp" is not supported; use host-local"#),
        ("t.conflist", raw(r#"{"name":"t","plugins":[{"type":"bridge","ipam":{"type":"static"}}]}"#), r#"t.conflist: plugins[0].ipam.type "static" is not supported; use host-local"#),
        ("t.conf", ipam(r#""routes":[]"#), "t.conf: ipam.subnet is missing; set ipam.subnet or ipam.ranges"),
        ("t.conf", ipam(r#""ranges":[]"#), "t.conf: ipam.subnet is missing; set ipam.subnet or ipam.ranges"),
        ("t.conf", ipam(r#""rangeStart":"10.1.0.10""#), "t.conf: ipam.subnet is missing, but ipam.rangeStart is set"),
        ("t.conf", ipam(r#""ranges":[[{}]]"#), "t.conf: ipam.ranges[0][0].subnet is missing"),
        ("t.conf", ipam(r#""ranges":[[]]"#), "t.conf: ipam.ranges[0] [] is empty; a range set needs at least one range"),
        ("t.conf", ipam(r#""ranges":"x""#), r#"t.conf: ipam.ranges must be an array, got "x""#),
        ("t.conf", ipam(r#""ranges":[{"subnet":"10.1.0.0/24"}]"#), r#"t.conf: ipam.ranges[0] must be an array of ranges, got {"subnet":"10.1.0.0/24"}"#),
        ("t.conf", ipam(r#""ranges":[["10.1.0.0/24"]]"#), r#"t.conf: ipam.ranges[0][0] must be an object, got "10.1.0.0/24""#),
        ("mybridge.conf", ipam(r#""ranges":[[{"subnet":"10.1.0.5/24"}]]"#), r#"mybridge.conf: ipam.ranges[0][0].subnet "10.1.0.5/24" has host bits set; did you mean 10.1.0.0/24?"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.5/24""#), r#"t.conf: ipam.subnet "10.1.0.5/24" has host bits set; did you mean 10.1.0.0/24?"#),
        ("t.conf", ipam(r#""subnet":"fd00:1::5/64""#), r#"t.conf: ipam.subnet "fd00:1::5/64" has host bits set; did you mean fd00:1::/64?"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0""#), r#"t.conf: ipam.subnet "10.1.0.0" is not a CIDR such as 10.1.0.0/24 or fd00:1::/64"#),
        ("t.conf", ipam(r#""subnet":24"#), "t.conf: ipam.subnet must be a string, got 24"),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/31""#), r#"t.conf: ipam.subnet "10.1.0.0/31" is too small to allocate from; use at least /30 for IPv4"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.1/32""#), r#"t.conf: ipam.subnet "10.1.0.1/32" is too small to allocate from; use at least /30 for IPv4"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"fd00::/127"}]]"#), r#"t.conf: ipam.ranges[0][0].subnet "fd00::/127" is too small to allocate from; use at least /126 for IPv6"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeStart":"10.2.0.5""#), r#"t.conf: ipam.rangeStart "10.2.0.5" is not inside subnet 10.1.0.0/24"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeEnd":"fd00::5""#), r#"t.conf: ipam.rangeEnd "fd00::5" is not an IPv4 address like subnet 10.1.0.0/24"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeStart":"10.1.0.x""#), r#"t.conf: ipam.rangeStart "10.1.0.x" is not an IP address"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeStart":"10.1.0.0""#), r#"t.conf: ipam.rangeStart "10.1.0.0" is the network address of 10.1.0.0/24, which no host may use"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeEnd":"10.1.0.255""#), r#"t.conf: ipam.rangeEnd "10.1.0.255" is the broadcast address of 10.1.0.0/24, which no host may use"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"fd00::/64","rangeStart":"fd00::"}]]"#), r#"t.conf: ipam.ranges[0][0].rangeStart "fd00::" is the network address of fd00::/64, which no host may use"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.5""#), r#"t.conf: ipam.rangeEnd "10.1.0.5" is before rangeStart 10.1.0.10"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","gateway":"10.2.0.1""#), r#"t.conf: ipam.gateway "10.2.0.1" is not inside subnet 10.1.0.0/24"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","gateway":"10.1.0.255""#), r#"t.conf: ipam.gateway "10.1.0.255" is the broadcast address of 10.1.0.0/24, which no host may use"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","gateway":5"#), "t.conf: ipam.gateway must be a string, got 5"),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24","gateway":"10.3.0.1"}]]"#), r#"t.conf: ipam.ranges[0][0].gateway "10.3.0.1" is not inside subnet 10.2.0.0/24"#),
        // host-local's rules across ranges.
        ("t.conf", ipam(r#""ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]"#), r#"t.conf: ipam.ranges[0][1].subnet "fd00::/64" is IPv6, but ipam.ranges[0][0].subnet "10.1.0.0/24" in the same range set is IPv4; put each family in its own range set"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.0/25"}]]"#), r#"t.conf: ipam.ranges[0][1].subnet "10.1.0.0/25" (10.1.0.1-10.1.0.126) overlaps ipam.ranges[0][0].subnet "10.1.0.0/24" (10.1.0.1-10.1.0.254)"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20"},{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.20"}]]"#), r#"t.conf: ipam.ranges[0][1].subnet "10.1.0.0/24" (10.1.0.20-10.1.0.254) overlaps ipam.ranges[0][0].subnet "10.1.0.0/24" (10.1.0.10-10.1.0.20)"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/16","ranges":[[{"subnet":"10.1.2.0/24"}]]"#), r#"t.conf: ipam.ranges[0][0].subnet "10.1.2.0/24" (10.1.2.1-10.1.2.254) overlaps ipam.subnet "10.1.0.0/16" (10.1.0.1-10.1.255.254)"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"fd00::/64"}],[{"subnet":"fd00::/48"}]]"#), r#"t.conf: ipam.ranges[1][0].subnet "fd00::/48" (fd00::1-fd00::ffff:ffff:ffff:ffff:ffff) overlaps ipam.ranges[0][0].subnet "fd00::/64" (fd00::1-fd00::ffff:ffff:ffff:ffff)"#),
        ("t.conf", ipam(r#""ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]"#).replace(r#""1.0.0""#, r#""0.2.0""#), r#"t.conf: ipam.ranges[1][0].subnet "10.2.0.0/24" is a second IPv4 range set, which cniVersion 0.2.0 does not allow; use cniVersion 0.3.0 or later"#),
        ("t.conf", raw(r#"{"name":"t","type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"fd00:1::/64"}],[{"subnet":"fd00:2::/64"}]]}}"#), r#"t.conf: ipam.ranges[1][0].subnet "fd00:2::/64" is a second IPv6 range set, which cniVersion 0.1.0 does not allow; use cniVersion 0.3.0 or later"#),
        // Routes.
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":"x""#), r#"t.conf: ipam.routes must be an array, got "x""#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":["0.0.0.0/0"]"#), r#"t.conf: ipam.routes[0] must be an object, got "0.0.0.0/0""#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"gw":"10.1.0.1"}]"#), "t.conf: ipam.routes[0].dst is missing"),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"10.250.0.1/16"}]"#), r#"t.conf: ipam.routes[0].dst "10.250.0.1/16" has host bits set; did you mean 10.250.0.0/16?"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"default"}]"#), r#"t.conf: ipam.routes[0].dst "default" is not a CIDR such as 10.1.0.0/24 or fd00:1::/64"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"10.250.0.0/16","gw":"fd00::1"}]"#), r#"t.conf: ipam.routes[0].gw "fd00::1" is IPv6 but dst 10.250.0.0/16 is IPv4"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"10.250.0.0/16","gw":"10.9.0.1"}]"#), r#"t.conf: ipam.routes[0].gw "10.9.0.1" is not inside any IPv4 subnet of this network (10.1.0.0/24)"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]"#), r#"t.conf: ipam.routes[1].dst "::/0" is IPv6 but the network has no IPv6 range"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"0.0.0.0/0","priority":10}]"#), "t.conf: ipam.routes[0].priority 10 is not supported by cnibridge"),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.x"}]"#), r#"t.conf: ipam.routes[0].gw "10.1.0.x" is not an IP address"#),
        // dataDir and resolvConf.
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","dataDir":"var/lib""#), r#"t.conf: ipam.dataDir "var/lib" must be an absolute path"#),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","dataDir":5"#), "t.conf: ipam.dataDir must be a string, got 5"),
        ("t.conf", ipam(r#""subnet":"10.1.0.0/24","resolvConf":"resolv.conf""#), r#"t.conf: ipam.resolvConf "resolv.conf" must be an absolute path"#),
        // In a conflist every key is named from the list's top.
        ("t.conflist", list("", r#""ranges":[[{"subnet":"10.1.0.5/24"}]]"#), r#"t.conflist: plugins[0].ipam.ranges[0][0].subnet "10.1.0.5/24" has host bits set; did you mean 10.1.0.0/24?"#),
        ("t.conflist", list("", r#""subnet":"10.1.0.0/24","routes":[{"dst":"::/0"}]"#), r#"t.conflist: plugins[0].ipam.routes[0].dst "::/0" is IPv6 but the network has no IPv6 range"#),
        ("t.conflist", list(r#""hairpinMode":true,"promiscMode":true"#, V4), "t.conflist: plugins[0].hairpinMode and plugins[0].promiscMode cannot both be true"),
    ];
    rows.into_iter()
        .map(|(f, j, e)| {
            // Version errors end with the list of supported versions.
            let e = if e.ends_with("version ") {
                format!("{e}{VERSIONS}")
            } else {
                e.to_string()
            };
            (f, j, e)
        })
        .collect()
}

#[test]
fn invalid_configs_are_refused_with_exact_errors() {
    let mut failures = Vec::new();
    for (i, (file, json, want)) in cases().into_iter().enumerate() {
        match load(file, &json) {
            Ok(c) => failures.push(format!("case {i}: accepted {json}\n  -> {c:?}")),
            Err(e) if e.to_string() != want => {
                failures.push(format!("case {i}: {json}\n  got:  {e}\n  want: {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
