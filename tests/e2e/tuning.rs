//! Issue 11 b: CNI `tuning` from a network's config, as the container sees it: `mac`, `mtu`, `promisc`,
//! `allmulti` and `txQLen` on its interface (set on the veth's container end before Docker moves it), and
//! a namespace-wide `sysctl` in its namespace (Docker sends Join before the namespace exists; cnibridge
//! writes it once Docker mounts it).

use std::fs;

use crate::ctx::{Ctx, SETTLE};
use crate::runtimes::ConfFile;
use crate::support::wait_for;

pub const TUNING_SUBNET: &str = "10.227.1.0/24";
pub const TUNING_BRIDGE: &str = "cnbttu";
const MAC: &str = "02:42:0a:e3:01:63";

const TUNING_CONF: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cnbt-tuning",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cnbttu",
      "isGateway": true,
      "ipam": { "type": "host-local", "subnet": "10.227.1.0/24" }
    },
    {
      "type": "tuning",
      "mac": "02:42:0a:e3:01:63",
      "mtu": 1400,
      "promisc": true,
      "allmulti": true,
      "txQLen": 500,
      "sysctl": { "net.core.somaxconn": "777", "net.ipv4.conf.all.arp_ignore": "1" }
    }
  ]
}
"#;

pub fn i_tuning(ctx: &mut Ctx) {
    ctx.require_plugin();
    let path = ctx.plugin.conf_dir().join("cnbt-tuning.conflist");
    fs::write(&path, TUNING_CONF).unwrap();
    let _conf = ConfFile(path);
    let net = "cnbt-tuning";
    let mut s = ctx.scope();
    s.network(net, &["--ipam-opt", "cni.conf=cnbt-tuning"]);
    let ep = s.run_sleep("cnbt-tuning1", net, &[]);
    // The host's `ip` in the container's namespace: busybox's does not name PROMISC and ALLMULTI.
    let pid = ctx.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "cnbt-tuning1"]);
    let link = crate::support::process::run_ok(
        "nsenter",
        &[
            &format!("--net=/proc/{}/ns/net", pid.trim()),
            "ip",
            "link",
            "show",
            "eth0",
        ],
    );
    for want in [
        "mtu 1400",
        "PROMISC",
        "ALLMULTI",
        "qlen 500",
        &format!("link/ether {MAC}"),
    ] {
        assert!(
            link.contains(want),
            "{want:?} on the container's eth0: {link}"
        );
    }
    // The host end keeps the network's MTU; only the container's interface is tuned.
    let host = crate::support::process::run_ok("ip", &["link", "show", &ep.veth()]);
    assert!(!host.contains("PROMISC"), "host end tuned: {host}");
    wait_for("the tuning sysctls in the container", SETTLE, || {
        let got = (
            ctx.exec_ok("cnbt-tuning1", &["cat", "/proc/sys/net/core/somaxconn"]),
            ctx.exec_ok(
                "cnbt-tuning1",
                &["cat", "/proc/sys/net/ipv4/conf/all/arp_ignore"],
            ),
        );
        match (got.0.trim(), got.1.trim()) {
            ("777", "1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The host's own value is untouched.
    let host_value = fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    assert_ne!(host_value.trim(), "777", "the host's somaxconn changed");
    s.rm("cnbt-tuning1");
    s.network_rm(net);
    ctx.wait_link_gone(TUNING_BRIDGE);
}
