//! Issue 11 e: every refusal of a chained plugin reaches the user through `docker network create`, and
//! nothing is created: no bridge, no address file, no network.

use std::fs;

use serde_json::{json, Value};

use crate::cniconf::refused;
use crate::ctx::Ctx;
use crate::runtimes::ConfFile;
use crate::support::host::{ip_files_in, link};

/// The bridge every refused config names; it must never appear.
const BRIDGE: &str = "cnbtr1";
const SUBNET: &str = "10.241.7.0/24";

/// A conflist: the bridge plugin (or `first`), then `chained`.
fn conflist(name: &str, first: Option<Value>, chained: &[Value]) -> String {
    let bridge = json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipam": {"type": "host-local", "subnet": SUBNET}
    });
    let mut plugins = vec![first.unwrap_or(bridge)];
    plugins.extend_from_slice(chained);
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins}).to_string()
}

pub fn e_chain_refusals(ctx: &mut Ctx) {
    ctx.require_plugin();
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let cases: Vec<(&str, Option<Value>, Vec<Value>, &str)> = vec![
        (
            "macvlan",
            None,
            vec![json!({"type": "macvlan", "master": "eth0"})],
            r#"plugins[1].type "macvlan" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback"#,
        ),
        (
            "unknown-key",
            None,
            vec![json!({"type": "portmap", "snatt": false})],
            "plugins[1].snatt false is not a portmap key cnibridge knows",
        ),
        (
            "firewalld",
            None,
            vec![json!({"type": "firewall", "backend": "firewalld"})],
            r#"plugins[1].backend "firewalld" is not implemented"#,
        ),
        (
            "iface-sysctl",
            None,
            vec![json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}})],
            "docker run --sysctl net.ipv4.conf.eth0.arp_filter=1",
        ),
        (
            "twice",
            None,
            vec![portmap.clone(), portmap.clone()],
            r#"plugins[2].type "portmap" is listed twice"#,
        ),
        (
            "bad-mac",
            None,
            vec![json!({"type": "tuning", "mac": "zz:zz"})],
            "is not a MAC address",
        ),
        (
            "rate-only",
            None,
            vec![json!({"type": "bandwidth", "ingressRate": 8000000})],
            "is set without plugins[1].ingressBurst",
        ),
        (
            "no-flanneld",
            Some(
                json!({"type": "flannel", "subnetFile": "/nonexistent/cnbt/subnet.env",
                        "delegate": {"bridge": BRIDGE}}),
            ),
            vec![portmap],
            "is flanneld running on this host?",
        ),
    ];
    for (tag, first, chained, expect) in cases {
        let name = format!("cnbt-refused-{tag}");
        let path = ctx.plugin.conf_dir().join(format!("{name}.conflist"));
        fs::write(&path, conflist(&name, first, &chained)).unwrap();
        let _file = ConfFile(path);
        refused(
            ctx,
            tag,
            &["--ipam-opt", &format!("cni.conf={name}")],
            expect,
        );
        assert!(link(BRIDGE).is_none(), "{tag}: bridge {BRIDGE} exists");
        let dir = ctx.plugin.data_dir().join(&name);
        assert!(
            ip_files_in(&dir).is_empty(),
            "{tag}: address files in {}",
            dir.display()
        );
    }
    let networks = ctx.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !networks.lines().any(|n| n == "cnbt-ce"),
        "a refused network exists: {networks}"
    );
}
