//! Issue 11 d: the exported conflist of a network made from a chaining config keeps its plugins, and the
//! real CNI plugins (`/usr/lib/cni`: bridge, portmap, firewall, tuning, bandwidth) run it on a plain
//! namespace beside Docker containers on the same network: both publish a port that answers from the
//! outside namespace, both are shaped alike, they reach each other, and CNI DEL removes only what that
//! namespace added (the firewall is as before its ADD, the container's port still answers).

use std::fs;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::ctx::{Ctx, SETTLE};
use crate::ports::{expect_no_answer, expect_page, get_from_outside};
use crate::runtimes::ConfFile;
use crate::support::cni::result_ipv4;
use crate::support::cni_chain::CniChain;
use crate::support::image::INDEX_HTML;
use crate::support::outside::{Outside, HOST_IP};
use crate::support::process::{run_ok, stderr_text};
use crate::support::wait_for;

pub const CHAIN_SUBNET: &str = "10.228.1.0/24";
pub const CHAIN_BRIDGE: &str = "cnbtch";
const DOCKER_PORT: u16 = 18091;
const CNI_PORT: u16 = 18092;

/// Podman's CNI-era default with a bandwidth plugin added and the test's bridge and subnet.
const CHAIN_CONF: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "cnbt-chain",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cnbtch",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.228.1.0/24", "gateway": "10.228.1.1" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "firewall", "backend": "iptables" },
    { "type": "tuning", "sysctl": { "net.core.somaxconn": "512" } },
    { "type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 80000 }
  ]
}
"#;

/// busybox httpd serving the e2e page inside a namespace, killed on drop.
struct NsHttpd {
    child: Child,
    dir: std::path::PathBuf,
}

impl NsHttpd {
    fn start(ns: &str, base: &std::path::Path) -> NsHttpd {
        let dir = base.join("chain-www");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        fs::write(dir.join("index.html"), INDEX_HTML).unwrap();
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("busybox httpd in {ns}: {e}"));
        NsHttpd { child, dir }
    }
}

impl Drop for NsHttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The firewall as `iptables-save` prints it, counters and comments on order aside.
fn iptables_rules() -> Vec<String> {
    let mut rules: Vec<String> = ["iptables-save", "ip6tables-save"]
        .iter()
        .flat_map(|cmd| {
            run_ok(cmd, &[])
                .lines()
                .filter(|l| l.starts_with('-') || l.starts_with(':'))
                // Chain lines carry packet counters.
                .map(|l| l.split(" [").next().unwrap_or(l).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    rules.sort();
    rules
}

fn tbf_rate(dev: &str) -> Option<u64> {
    let text = run_ok("tc", &["-j", "qdisc", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&text).ok()?;
    v.as_array()?
        .iter()
        .find(|q| q["kind"] == "tbf")
        .and_then(|q| q["options"]["rate"].as_u64())
}

pub fn i_cni_chain_interop(ctx: &mut Ctx) {
    ctx.require_plugin();
    let out = Outside::create().unwrap_or_else(|e| panic!("outside namespace: {e}"));
    let conf_path = ctx.plugin.conf_dir().join("cnbt-chain.conflist");
    fs::write(&conf_path, CHAIN_CONF).unwrap();
    let _conf = ConfFile(conf_path);
    let net = "cnbt-chain";
    let mut s = ctx.scope();
    s.network(net, &["--ipam-opt", "cni.conf=cnbt-chain"]);
    let o = s.run(
        "cnbt-chain1",
        net,
        &["-p", &format!("{DOCKER_PORT}:80")],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(o.status.success(), "docker run: {}", stderr_text(&o));
    let c1 = ctx.endpoint("cnbt-chain1", net);
    let c1_ip = c1.ipv4();

    // The export keeps the chain, keys included.
    let export = ctx.plugin.export_dir().join("cnbt-chain.conflist");
    let text = fs::read_to_string(&export).unwrap_or_else(|e| panic!("{}: {e}", export.display()));
    let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["bridge", "portmap", "firewall", "tuning", "bandwidth"],
        "plugins of {}",
        export.display()
    );
    assert_eq!(list["plugins"][4]["ingressRate"], json!(8000000), "{text}");

    let before = iptables_rules();
    let pid = std::process::id();
    let mappings = json!({"portMappings": [
        {"hostPort": CNI_PORT, "containerPort": 80, "protocol": "tcp"}
    ]});
    let mut ns = CniChain::create(&format!("cnbt-chn{pid}"), &list, mappings)
        .unwrap_or_else(|e| panic!("{e}"));
    let result = ns
        .add()
        .unwrap_or_else(|e| panic!("CNI ADD of the exported chain: {e}"));
    let ns_ip = result_ipv4(&result).unwrap_or_else(|| panic!("no IPv4 in {result}"));
    assert_ne!(ns_ip, c1_ip, "CNI was given the container's address");
    let base = ctx.plugin.state_dir().parent().unwrap().to_path_buf();
    let httpd = NsHttpd::start(ns.name(), &base);

    // Both publish.
    for (who, port) in [("container", DOCKER_PORT), ("CNI namespace", CNI_PORT)] {
        expect_page(&format!("{who}: outside GET {HOST_IP}:{port}"), || {
            get_from_outside(&out, HOST_IP, port)
        });
    }
    // Both reach each other.
    ctx.ping("cnbt-chain1", ns_ip);
    wait_for("the CNI namespace pings the container", SETTLE, || {
        ns.exec_in(&["busybox", "ping", "-c", "1", "-W", "1", &c1_ip.to_string()])
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Both shaped alike: 8 Mbit/s into each.
    let host_veth = result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none() && i["name"] != CHAIN_BRIDGE)
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no host veth in {result}"))
        .to_string();
    assert_eq!(tbf_rate(&c1.veth()), Some(1_000_000), "container's TBF");
    // The real plugin shapes ingress on the host veth, as cnibridge does.
    assert_eq!(tbf_rate(&host_veth), Some(1_000_000), "CNI namespace's TBF");
    // tuning's sysctl, in the namespace.
    let somaxconn = ns
        .exec_in(&["cat", "/proc/sys/net/core/somaxconn"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        somaxconn.trim(),
        "512",
        "tuning sysctl in the CNI namespace"
    );
    let inside = ctx.exec_ok("cnbt-chain1", &["cat", "/proc/sys/net/core/somaxconn"]);
    assert_eq!(inside.trim(), "512", "tuning sysctl in the container");

    // CNI DEL removes only what the namespace added.
    drop(httpd);
    ns.del().unwrap_or_else(|e| panic!("CNI DEL: {e}"));
    // The plugins' own chain skeletons (CNI-FORWARD, CNI-HOSTPORT-DNAT, …) stay, as after any CNI DEL;
    // nothing may still name the namespace, and nothing of the container's may be gone.
    let after = iptables_rules();
    let removed: Vec<_> = before.iter().filter(|r| !after.contains(r)).collect();
    assert!(
        removed.is_empty(),
        "CNI DEL removed rules it did not add:
{removed:#?}"
    );
    let ip_word = format!("{ns_ip}/32");
    let left: Vec<_> = after
        .iter()
        .filter(|r| r.contains(ns.name()) || r.contains(&ip_word) || r.contains(&host_veth))
        .collect();
    assert!(
        left.is_empty(),
        "rules of the CNI namespace after its DEL:\n{left:#?}"
    );
    assert!(
        !ctx.plugin
            .data_dir()
            .join("cnbt-chain")
            .join(ns_ip.to_string())
            .exists(),
        "{ns_ip} still allocated after CNI DEL"
    );
    expect_page(
        &format!("container after DEL: GET {HOST_IP}:{DOCKER_PORT}"),
        || get_from_outside(&out, HOST_IP, DOCKER_PORT),
    );
    expect_no_answer(
        &format!("CNI port after DEL {HOST_IP}:{CNI_PORT}"),
        get_from_outside(&out, HOST_IP, CNI_PORT),
    );
    drop(ns);
    s.rm("cnbt-chain1");
    s.network_rm(net);
    ctx.wait_link_gone(CHAIN_BRIDGE);
}
