//! Issue 4 b (subset) and e: networks from CNI configs (`--ipam-opt cni.conf=NAME`) give Docker containers
//! the addresses and routes, and the bridge the addresses, that the real CNI `bridge` plugin gives a plain
//! namespace from the same config; and `docker network create` shows the daemon's readable errors.
//!
//! `ipv6-default-gw.conf` lists its IPv6 range set first and also has an IPv4 one: Docker 20.10 always asks
//! for an IPv4 pool (IPv6-only networks need Docker 28's `--ipv4=false`).
//!
//! The reference run uses a copy of the config with the bridge renamed to a test bridge, `ipMasq` off (the
//! comparison is about addresses and routes, and no iptables rules are then made) and host-local's
//! `dataDir` in a temporary directory; it runs after the Docker network is gone, so the two bridges never
//! hold the same subnet at the same time.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ctx::{Ctx, SETTLE};
use crate::support::cni::{first_plugin, CniNetns};
use crate::support::host::delete_link;
use crate::support::process::{run_ok, stderr_text, stdout_text};
use crate::support::wait_for;

/// The subnets of the configs compared here (added to the suite's checked list).
pub const CONF_SUBNETS: &[&str] = &[
    "10.241.0.0/16",
    "10.242.0.0/16",
    "10.244.0.0/16",
    "fd00:244::/64",
    "10.243.0.0/24",
    "fd00:243::/64",
    "10.15.20.0/24",
];
/// The configs' own bridges (made by cnibridge for the Docker networks) and the reference bridges.
pub const CONF_BRIDGES: &[&str] = &[
    "cni-v4routes",
    "cni-gwout",
    "cni-dual",
    "cnbtr1",
    "cnbtr2",
    "cnbtr3",
    "cni-v6gw",
    "cnbtr4",
    "cni_bridge0",
    "cnbtr5",
];

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// What is compared about one side: eth0's global addresses (family/prefix), the main-table routes of both
/// families (destination and gateway), and the bridge's global addresses (exact).
#[derive(Debug, PartialEq, Eq)]
struct View {
    addrs: BTreeSet<String>,
    routes: BTreeSet<String>,
    bridge: BTreeSet<String>,
}

/// `ip` with a prefix selecting the namespace (`nsenter --net=…` or `ip -n …`).
fn view(ip: &dyn Fn(&[&str]) -> String, bridge: &str) -> View {
    let global = |v: &Value, exact: bool| -> BTreeSet<String> {
        v[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] == "global")
            .map(|a| {
                let fam = a["family"].as_str().unwrap_or("?");
                let len = a["prefixlen"].as_u64().unwrap_or(0);
                match exact {
                    true => format!("{}/{len}", a["local"].as_str().unwrap_or("?")),
                    false => format!("{fam}/{len}"),
                }
            })
            .collect()
    };
    let addrs = global(
        &json(&ip(&["-j", "addr", "show", "dev", "eth0"]), "eth0"),
        false,
    );
    let mut routes = BTreeSet::new();
    for fam in ["-4", "-6"] {
        let text = ip(&["-j", fam, "route", "show", "table", "main"]);
        for r in json(&text, "routes").as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or("?");
            // Docker turns IPv6 off in containers of IPv4-only networks; a plain namespace keeps the
            // kernel's link-local route. Neither comes from the config.
            if dst == "fe80::/64" {
                continue;
            }
            let gw = r["gateway"].as_str().unwrap_or("-");
            routes.insert(format!("{dst} via {gw}"));
        }
    }
    let br = run_ok("ip", &["-j", "addr", "show", "dev", bridge]);
    View {
        addrs,
        routes,
        bridge: global(&json(&br, bridge), true),
    }
}

/// The config file's plugin object for a direct call of the bridge plugin, renamed and redirected.
fn reference_conf(file: &Path, bridge: &str, data_dir: &Path) -> Value {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut plugin = first_plugin(&json(&text, &file.display().to_string()));
    plugin["bridge"] = Value::from(bridge);
    plugin["ipMasq"] = Value::from(false);
    plugin["ipam"]["dataDir"] = Value::from(data_dir.to_string_lossy().into_owned());
    plugin
}

/// A namespace attached by the real CNI bridge plugin; DEL, namespace and bridge go on drop.
struct Reference {
    ns: CniNetns,
    bridge: String,
    dir: PathBuf,
}

impl Reference {
    fn add(base: &Path, conf_file: &Path, bridge: &str) -> Reference {
        let dir = base.join(format!("ref-{bridge}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let conf = reference_conf(conf_file, bridge, &dir.join("data"));
        let ns = CniNetns::create(&format!("cnbt-ref-{}", std::process::id()), &conf)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = Reference {
            ns,
            bridge: bridge.to_string(),
            dir,
        };
        if let Err(e) = r.ns.add() {
            panic!("reference {}: {e}", conf_file.display());
        }
        r
    }

    fn view(&self) -> View {
        view(
            &|args| self.ns.ip(args).unwrap_or_else(|e| panic!("{e}")),
            &self.bridge,
        )
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        // The namespace field drops after this body; detach it now so the bridge can go.
        if let Err(e) = self.ns.del() {
            eprintln!("warning: reference {}: {e}", self.ns.name());
        }
        let _ = delete_link(&self.bridge);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The container's view, through the host's `ip` in its network namespace.
fn container_view(ctx: &Ctx, container: &str, bridge: &str) -> View {
    let pid = ctx.docker_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
    let net = format!("--net=/proc/{pid}/ns/net");
    view(
        &move |args| {
            let mut all = vec![net.as_str(), "ip"];
            all.extend_from_slice(args);
            run_ok("nsenter", &all)
        },
        bridge,
    )
}

/// One config: Docker network + container, then the reference, compared.
fn compare(ctx: &mut Ctx, name: &str, file: &str, ipv6: bool, ref_bridge: &str) {
    ctx.require_plugin();
    let conf_file = ctx.plugin.conf_dir().join(file);
    let top = json(
        &fs::read_to_string(&conf_file).unwrap_or_else(|e| panic!("{file}: {e}")),
        file,
    );
    let bridge = top
        .get("plugins")
        .map_or(&top, |p| &p[0])
        .get("bridge")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file} names no bridge"))
        .to_string();
    let net = format!("cnbt-cc-{name}");
    let container = format!("cnbt-cc-{name}1");
    let opt = format!("cni.conf={name}");
    let mut args = vec!["--ipam-opt", opt.as_str()];
    if ipv6 {
        args.push("--ipv6");
    }
    let ours = {
        let mut s = ctx.scope();
        s.network(&net, &args);
        s.run_sleep(&container, &net, &[]);
        // IPv6 routes and addresses may settle after DAD; wait until two looks agree.
        let mut last = None;
        let v = wait_for(&format!("{container} settles"), SETTLE, || {
            let v = container_view(ctx, &container, &bridge);
            let same = last.as_ref() == Some(&v);
            last = Some(v);
            match same {
                true => Ok(()),
                false => Err("changing".to_string()),
            }
        });
        v.unwrap_or_else(|e| panic!("{e}"));
        let v = last.take().expect("looked");
        s.rm(&container);
        s.network_rm(&net);
        v
    };
    ctx.wait_link_gone(&bridge);

    let base = ctx.plugin.state_dir().parent().unwrap().to_path_buf();
    let reference = Reference::add(&base, &conf_file, ref_bridge);
    let theirs = wait_for(&format!("reference for {file}"), SETTLE, || {
        let v = reference.view();
        if v == ours {
            Ok(v)
        } else {
            Err(format!("{v:#?}"))
        }
    });
    if let Err(e) = theirs {
        panic!(
            "{file}: the Docker container (bridge {bridge}) differs from the CNI bridge plugin's namespace \
             (bridge {ref_bridge}):\ncnibridge: {ours:#?}\nCNI bridge: {e}"
        );
    }
    drop(reference);
    assert!(
        crate::support::host::link(ref_bridge).is_none(),
        "reference bridge {ref_bridge} still exists"
    );
}

/// The README's walkthrough config.
pub fn b_conf_mybridge(ctx: &mut Ctx) {
    compare(ctx, "mybridge", "mybridge.conf", false, "cnbtr5");
}

pub fn b_conf_ipv4_routes(ctx: &mut Ctx) {
    compare(ctx, "ipv4-routes", "ipv4-routes.conflist", false, "cnbtr1");
}

pub fn b_conf_range_gateway_outside(ctx: &mut Ctx) {
    compare(
        ctx,
        "range-gateway-outside",
        "range-gateway-outside.conf",
        false,
        "cnbtr2",
    );
}

pub fn b_conf_ipv6_default_gw(ctx: &mut Ctx) {
    compare(
        ctx,
        "ipv6-default-gw",
        "ipv6-default-gw.conf",
        true,
        "cnbtr4",
    );
}

pub fn b_conf_dual_stack(ctx: &mut Ctx) {
    compare(ctx, "dual-stack", "dual-stack.conflist", true, "cnbtr3");
}

/// A conflist with a `dnsname` plugin chained after the bridge, which cnibridge refuses.
const PORTMAP_CONF: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cnbt-portmap",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cnbtr1",
      "isGateway": true,
      "ipam": { "type": "host-local", "subnet": "10.241.7.0/24" }
    },
    { "type": "dnsname", "domainName": "dns.podman" }
  ]
}
"#;

/// `docker network create` that must fail with `expect` in its output.
pub(crate) fn refused(ctx: &Ctx, what: &str, args: &[&str], expect: &str) {
    let mut all = vec![
        "network",
        "create",
        "-d",
        ctx.plugin.name(),
        "--ipam-driver",
        ctx.plugin.name(),
    ];
    all.extend_from_slice(args);
    all.push("cnbt-ce");
    let out = ctx.docker(&all);
    let text = format!("{} {}", stdout_text(&out), stderr_text(&out));
    if out.status.success() {
        let _ = ctx.docker(&["network", "rm", "cnbt-ce"]);
        panic!("{what}: docker network create succeeded: {text}");
    }
    assert!(
        text.contains(expect),
        "{what}: docker network create output lacks {expect:?}: {text}"
    );
}

/// Acceptance e: the daemon's messages reach the user through `docker network create`.
pub fn e_conf_errors(ctx: &mut Ctx) {
    ctx.require_plugin();
    let portmap = ctx.plugin.conf_dir().join("cnbt-portmap.conflist");
    fs::write(&portmap, PORTMAP_CONF).unwrap_or_else(|e| panic!("{}: {e}", portmap.display()));
    struct RemoveFile(PathBuf);
    impl Drop for RemoveFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _guard = RemoveFile(portmap);

    refused(
        ctx,
        "unknown -o key",
        &["--subnet", "10.241.8.0/24", "-o", "bogus=1"],
        "unknown option -o bogus",
    );
    refused(
        ctx,
        "missing config",
        &["--ipam-opt", "cni.conf=nope"],
        "no CNI config named \"nope\"",
    );
    refused(
        ctx,
        "subnet mismatch",
        &[
            "--ipam-opt",
            "cni.conf=ipv4-routes",
            "--subnet",
            "10.241.9.0/24",
        ],
        "subnet 10.241.9.0/24 does not match ipv4-routes.conflist's subnet 10.241.0.0/16",
    );
    refused(
        ctx,
        "unsupported plugin type",
        &["--ipam-opt", "cni.conf=cnbt-portmap"],
        "plugins[1].type \"dnsname\" is not implemented by cnibridge",
    );
    // Nothing was made by any of them.
    for b in ["cnbtr1", "cni-v4routes"] {
        assert!(
            crate::support::host::link(b).is_none(),
            "bridge {b} exists after refused creates"
        );
    }
}
