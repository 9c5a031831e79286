//! The export: golden text, round trip (export → parse → same effective config), the files
//! in cni-confs/, and the atomic write.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{conf, load, valid};
use crate::cni::config::{CniVersion, Origin};
use crate::cni::dir::load_all;
use crate::cni::export::{file_name, remove, render, write};
use crate::cni::NetConf;

const DATA_DIR: &str = "/var/lib/cni/networks";

/// Export `c`, parse the export back, and check that only what an export must change did:
/// the version (1.0.0), the origin (a conflist without legacy keys) and a written-out dataDir.
pub(super) fn round_trip(c: &NetConf) {
    let text = render(c, Path::new(DATA_DIR)).unwrap();
    let file = file_name(&c.name);
    let back = NetConf::load(Path::new(&file), text.as_bytes())
        .unwrap_or_else(|e| panic!("export of {} does not load: {e}\n{text}", c.name));
    let mut want = c.clone();
    want.cni_version = CniVersion::V1_0_0;
    want.origin = Origin {
        file,
        conflist: true,
        legacy_range: false,
        flannel: None,
    };
    want.ipam
        .data_dir
        .get_or_insert_with(|| PathBuf::from(DATA_DIR));
    assert_eq!(back, want, "{text}");
    // Exporting the re-read config gives the same text: the export is a fixed point.
    assert_eq!(render(&back, Path::new("/elsewhere")).unwrap(), text);
}

#[test]
fn export_is_the_golden_conflist() {
    let c = load(
        "g.conf",
        &conf(
            r#""bridge":"br-g","isGateway":true,"ipMasq":true,"mtu":1400"#,
            r#""subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","routes":[{"dst":"0.0.0.0/0"},{"dst":"10.250.0.0/16","gw":"10.1.0.254"}]"#,
        )
        .replace(r#""name":"t""#, r#""name":"golden""#),
    )
    .unwrap();
    let want = r#"{
  "cniVersion": "1.0.0",
  "name": "golden",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "br-g",
      "isGateway": true,
      "isDefaultGateway": false,
      "forceAddress": false,
      "ipMasq": true,
      "mtu": 1400,
      "hairpinMode": false,
      "promiscMode": false,
      "vlan": 0,
      "enabledad": false,
      "macspoofchk": false,
      "disableContainerInterface": false,
      "portIsolation": false,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [
            {
              "subnet": "10.1.0.0/24",
              "rangeStart": "10.1.0.10",
              "rangeEnd": "10.1.0.254",
              "gateway": "10.1.0.1"
            }
          ]
        ],
        "routes": [
          {
            "dst": "0.0.0.0/0"
          },
          {
            "dst": "10.250.0.0/16",
            "gw": "10.1.0.254"
          }
        ],
        "dataDir": "/var/lib/cni/networks"
      }
    },
    {
      "capabilities": {
        "portMappings": true
      },
      "type": "portmap"
    }
  ]
}
"#;
    assert_eq!(render(&c, Path::new(DATA_DIR)).unwrap(), want);
    round_trip(&c);
}

#[test]
fn every_valid_case_survives_export() {
    for (file, json, _) in valid::cases() {
        let c = load(file, &json).unwrap_or_else(|e| panic!("{e}"));
        round_trip(&c);
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs")
}

#[test]
fn every_example_config_loads_maps_and_survives_export() {
    let files = load_all(&examples()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "mybridge.conf",
        "ipv4-routes.conflist",
        "range-gateway-outside.conf",
        "ipv6-default-gw.conf",
        "dual-stack.conflist",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    for f in files {
        let c = f.conf.unwrap_or_else(|e| panic!("{e}"));
        // Each example is usable as a Docker network with the families it has.
        let v4 = c.family_pool(false).unwrap().is_some();
        let v6 = c.family_pool(true).unwrap().is_some();
        c.docker_pools(v4, v6).unwrap();
        // Examples never name public addresses.
        for set in &c.ipam.range_sets {
            for r in set {
                let private = match r.subnet {
                    ipnet::IpNet::V4(n) => n.addr().is_private(),
                    ipnet::IpNet::V6(n) => n.addr().is_unique_local(),
                };
                assert!(private, "{}: {}", c.name, r.subnet);
            }
        }
        round_trip(&c);
    }
}

#[test]
fn example_configs_say_what_their_names_promise() {
    let ex = |f: &str| crate::cni::dir::load_file(&examples().join(f)).unwrap();
    let c = ex("ipv4-routes.conflist");
    assert_eq!(c.ipam.routes.len(), 2);
    let via = c.ipam.routes[1].gw.unwrap();
    assert!(c.ipam.range_sets[0][0].subnet.contains(&via));
    let c = ex("range-gateway-outside.conf");
    let r = &c.ipam.range_sets[0][0];
    assert!(!crate::range::RangeSet(vec![crate::range::Range {
        subnet: r.subnet,
        range_start: r.range_start,
        range_end: r.range_end,
        gateway: Some(r.gateway),
    }])
    .contains(r.gateway));
    // IPv6 first; the IPv4 range set is there because Docker 20.10 always asks for an IPv4 pool.
    let c = ex("ipv6-default-gw.conf");
    assert!(c.is_default_gateway && c.is_gateway && c.ipam.routes.is_empty());
    assert!(c.ipam.range_sets[0][0].subnet.addr().is_ipv6());
    assert!(c.family_pool(false).unwrap().is_some() && c.family_pool(true).unwrap().is_some());
    let c = ex("dual-stack.conflist");
    assert!(c.family_pool(false).unwrap().is_some() && c.family_pool(true).unwrap().is_some());
    let c = ex("mybridge.conf");
    assert_eq!(c.ipam.routes[1].dst.to_string(), "10.250.0.0/16");
}

#[test]
fn write_is_atomic_0644_and_remove_is_idempotent() {
    let d = TempDir::new().unwrap();
    let dir = d.path().join("export");
    let path = write(&dir, "net1", "first\n").unwrap();
    assert_eq!(path, dir.join("net1.conflist"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "first\n");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    write(&dir, "net1", "second\n").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "second\n");
    // No temp file is left behind.
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["net1.conflist"]);
    remove(&dir, "net1").unwrap();
    assert!(!path.exists());
    remove(&dir, "net1").unwrap();
    for bad in ["../x", "", "a/b"] {
        assert_eq!(
            write(&dir, bad, "x").unwrap_err().to_string(),
            format!("cannot export network {bad:?}: not a valid CNI network name")
        );
        assert!(remove(&dir, bad).is_err());
    }
}
