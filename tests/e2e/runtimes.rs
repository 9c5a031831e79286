//! Issue 11: the default conflist of each container runtime (cni-confs/runtimes/, byte for byte as the
//! projects ship them) gives a Docker network unchanged: `docker network create … --ipam-opt cni.conf=NAME`
//! works, a container gets an address of the config's range on the config's bridge, a port published with
//! `-p` answers from the host and from the outside namespace where the config chains `portmap` (and `-p`
//! is refused, saying to add one, where it does not), and `docker rm` + `docker network rm` leave no
//! address, veth or bridge behind.
//!
//! The runtimes' subnets (10.88/16, 10.4.0/24, 10.85/16, 10.42/16) and bridges (`cni0`, `nerdctl0`,
//! `cni-podman0`) are their real ones; the subnets are checked unused before the suite starts, and the
//! bridges are never swept (a host's real `cni0` is not ours to delete). What a test must move it moves
//! on a copy, as cni-confs/runtimes/README.md lists.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::ctx::{Ctx, SETTLE};
use crate::ports::{expect_page, get_from_outside};
use crate::support::host::{http_get, ip_files_in, link};
use crate::support::outside::{Outside, HOST_IP};
use crate::support::process::stderr_text;
use crate::support::wait_for;

/// The runtimes' own subnets (added to the suite's checked list).
pub const RUNTIME_SUBNETS: &[&str] = &[
    "10.88.0.0/16",
    "10.4.0.0/24",
    "10.85.0.0/16",
    "10.42.0.0/16",
    "fd88:4860:4860::/64",
];

/// containerd's IPv6 range is a public one (Google's); the test moves it to a ULA.
const CONTAINERD_V6: (&str, &str) = ("2001:4860:4860::/64", "fd88:4860:4860::/64");
/// What the k3s test's stand-in for flanneld writes (flanneld with `--ip-masq`, as k3s runs it).
pub const FLANNEL_SUBNET_ENV: &str = "FLANNEL_NETWORK=10.42.0.0/16\n\
FLANNEL_SUBNET=10.42.1.1/24\n\
FLANNEL_MTU=1450\n\
FLANNEL_IPMASQ=true\n";

const TIMEOUT: Duration = Duration::from_secs(3);

/// One runtime's default config, as the test uses it.
pub struct Runtime {
    /// The file in cni-confs/runtimes/.
    pub file: &'static str,
    /// Its `name`, which `--ipam-opt cni.conf=` selects and host-local's directory is named after.
    pub conf_name: &'static str,
    pub bridge: &'static str,
    pub subnet: &'static str,
    /// The IPv6 range, when the config has one (the network is then created with `--ipv6`).
    pub subnet6: Option<&'static str>,
    /// Whether the config chains `portmap`.
    pub portmap: bool,
    /// The host port this runtime's container is published on.
    pub host_port: u16,
}

/// A file put into the daemon's conf dir for one scenario, removed on drop.
pub struct ConfFile(pub PathBuf);

impl Drop for ConfFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn runtime_file(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cni-confs/runtimes")
        .join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The runtime's file in the daemon's conf dir, with `edit` applied (nothing else changed).
pub fn install(ctx: &Ctx, file: &str, edit: impl FnOnce(String) -> String) -> ConfFile {
    let to = ctx.plugin.conf_dir().join(file);
    fs::write(&to, edit(runtime_file(file))).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    ConfFile(to)
}

/// A stand-in for flanneld's subnet.env in the suite's directory; the flannel conflist is pointed at it
/// with `subnetFile` (the only change to k3s' file).
pub fn flannel_install(ctx: &Ctx, env: &str) -> (ConfFile, ConfFile) {
    let base = ctx.plugin.state_dir().parent().unwrap().to_path_buf();
    let env_path = base.join("subnet.env");
    fs::write(&env_path, env).unwrap_or_else(|e| panic!("{}: {e}", env_path.display()));
    let at = format!(
        r#""type":"flannel",
      "subnetFile":"{}","#,
        env_path.display()
    );
    let conf = install(ctx, "10-flannel.conflist", |text| {
        assert!(
            text.contains(r#""type":"flannel","#),
            "k3s conflist changed"
        );
        text.replacen(r#""type":"flannel","#, &at, 1)
    });
    (conf, ConfFile(env_path))
}

/// Network, container, published port, teardown; asserts each outcome on the way.
pub fn exercise(ctx: &mut Ctx, rt: &Runtime, out: &Outside) {
    let net = format!("cnbt-rt-{}", rt.conf_name);
    let container = format!("cnbt-rt-{}1", rt.conf_name);
    let opt = format!("cni.conf={}", rt.conf_name);
    let mut args = vec!["--ipam-opt", opt.as_str()];
    if rt.subnet6.is_some() {
        args.push("--ipv6");
    }
    let publish = format!("{}:80", rt.host_port);
    let mut s = ctx.scope();
    s.network(&net, &args);
    assert_eq!(
        ctx.network_subnets(&net)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [Some(rt.subnet), rt.subnet6]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        "{}: the subnets Docker recorded for {net}",
        rt.file
    );
    if !rt.portmap {
        let o = s.run(&container, &net, &["-p", &publish], &["sleep", "600"]);
        let err = stderr_text(&o);
        assert!(
            !o.status.success(),
            "{}: -p started without portmap",
            rt.file
        );
        assert!(
            err.contains("chains no portmap plugin") && err.contains("\"type\": \"portmap\""),
            "{}: docker run -p on a network without portmap: {err}",
            rt.file
        );
        s.rm(&container);
    }
    let extra: Vec<&str> = match rt.portmap {
        true => vec!["-p", &publish],
        false => vec![],
    };
    let o = s.run(
        &container,
        &net,
        &extra,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(
        o.status.success(),
        "{}: docker run: {}",
        rt.file,
        stderr_text(&o)
    );
    let ep = ctx.endpoint(&container, &net);
    let subnet: IpNet = rt.subnet.parse().unwrap();
    let ip = ep
        .ip
        .unwrap_or_else(|| panic!("{}: no IPv4 address", rt.file));
    assert!(
        subnet.contains(&IpAddr::V4(ip)),
        "{}: {ip} not in {subnet}",
        rt.file
    );
    if let Some(v6) = rt.subnet6 {
        let subnet6: IpNet = v6.parse().unwrap();
        let ip6 = ep
            .ip6
            .unwrap_or_else(|| panic!("{}: no IPv6 address", rt.file));
        assert!(
            subnet6.contains(&IpAddr::V6(ip6)),
            "{}: {ip6} not in {subnet6}",
            rt.file
        );
    }
    ctx.assert_veth_on(&ep, rt.bridge);
    let inside = ctx.exec_ok(&container, &["ip", "-4", "addr", "show", "eth0"]);
    assert!(
        inside.contains(&format!("{ip}/{}", subnet.prefix_len())),
        "{}: eth0 in the container: {inside}",
        rt.file
    );
    let host_local = ctx.plugin.data_dir().join(rt.conf_name);
    assert!(
        ip_files_in(&host_local).contains(&ip.to_string()),
        "{}: no allocation file for {ip} in {}",
        rt.file,
        host_local.display()
    );
    if rt.portmap {
        let port = rt.host_port;
        expect_page(
            &format!("{}: outside GET {HOST_IP}:{port}", rt.file),
            || get_from_outside(out, HOST_IP, port),
        );
        expect_page(&format!("{}: host GET 127.0.0.1:{port}", rt.file), || {
            http_get(IpAddr::V4(Ipv4Addr::LOCALHOST), port, TIMEOUT)
        });
    }
    let veth = ep.veth();
    s.rm(&container);
    s.network_rm(&net);
    ctx.wait_link_gone(&veth);
    ctx.wait_link_gone(rt.bridge);
    wait_for(
        &format!("{}: no allocation left", rt.file),
        SETTLE,
        || match ip_files_in(&host_local) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(link(rt.bridge).is_none(), "{}: bridge left", rt.file);
}

fn outside() -> Outside {
    Outside::create().unwrap_or_else(|e| panic!("outside namespace: {e}"))
}

pub fn i_runtime_containerd(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _conf = install(ctx, "10-containerd-net.conflist", |t| {
        assert!(t.contains(CONTAINERD_V6.0), "containerd conflist changed");
        t.replace(CONTAINERD_V6.0, CONTAINERD_V6.1)
    });
    let rt = Runtime {
        file: "10-containerd-net.conflist",
        conf_name: "containerd-net",
        bridge: "cni0",
        subnet: "10.88.0.0/16",
        subnet6: Some(CONTAINERD_V6.1),
        portmap: true,
        host_port: 18081,
    };
    exercise(ctx, &rt, &outside());
}

pub fn i_runtime_nerdctl(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _conf = install(ctx, "nerdctl-bridge.conflist", |t| t);
    let rt = Runtime {
        file: "nerdctl-bridge.conflist",
        conf_name: "bridge",
        bridge: "nerdctl0",
        subnet: "10.4.0.0/24",
        subnet6: None,
        portmap: true,
        host_port: 18082,
    };
    exercise(ctx, &rt, &outside());
}

pub fn i_runtime_podman(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _conf = install(ctx, "87-podman-bridge.conflist", |t| t);
    let rt = Runtime {
        file: "87-podman-bridge.conflist",
        conf_name: "podman",
        bridge: "cni-podman0",
        subnet: "10.88.0.0/16",
        subnet6: None,
        portmap: true,
        host_port: 18083,
    };
    exercise(ctx, &rt, &outside());
}

pub fn i_runtime_crio(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _conf = install(ctx, "11-crio-ipv4-bridge.conflist", |t| t);
    let rt = Runtime {
        file: "11-crio-ipv4-bridge.conflist",
        conf_name: "crio",
        bridge: "cni0",
        subnet: "10.85.0.0/16",
        subnet6: None,
        portmap: false,
        host_port: 18084,
    };
    exercise(ctx, &rt, &outside());
}

pub fn i_runtime_k3s_flannel(ctx: &mut Ctx) {
    ctx.require_plugin();
    let _files = flannel_install(ctx, FLANNEL_SUBNET_ENV);
    let rt = Runtime {
        file: "10-flannel.conflist",
        conf_name: "cbr0",
        bridge: "cni0",
        // host-local hands out of FLANNEL_SUBNET; Docker records the network as the range's subnet.
        subnet: "10.42.1.0/24",
        subnet6: None,
        portmap: true,
        host_port: 18085,
    };
    exercise(ctx, &rt, &outside());
}
