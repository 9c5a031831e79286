//! Issue 4 c and d: CNI's world and Docker's on one network. Two configs sharing one network `name` back two
//! Docker networks at once; and a namespace attached by the real `bridge` + `host-local` plugins from the
//! exported conflist lives on a Docker network beside its containers: they ping each other, each side frees
//! only its own addresses, and twenty CNI ADDs racing twenty `docker run`s never get one address twice.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::thread;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::ctx::{cni_name, owner_content, Ctx, GATEWAY_CONTENT, SETTLE};
use crate::support::cni::{first_plugin, result_ipv4, CniNetns};
use crate::support::host::ip_files_in;
use crate::support::process::stderr_text;
use crate::support::wait_for;

/// The two same-name configs' subnets, and the subnet of the shared network.
pub const SHARE_SUBNETS: &[&str] = &["10.247.1.0/24", "10.247.2.0/24", "10.246.0.0/24"];
pub const SHARE_BRIDGES: &[&str] = &["cnbtsa", "cnbtsb", "cnbtsh"];
/// The `name` both configs carry, hence the one host-local directory and export file they share.
const SAME_NAME: &str = "cnbt-same";
/// Each side's share of the race (acceptance d: 20 + 20).
const RACERS: usize = 20;

/// Config files a scenario adds to the plugin's conf dir; removed on drop.
struct ConfFiles(Vec<PathBuf>);

impl Drop for ConfFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

fn same_name_conf(bridge: &str, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": SAME_NAME,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": subnet,
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        }]
    })
    .to_string()
}

fn net(subnet: &str) -> Ipv4Net {
    subnet.parse().unwrap_or_else(|e| panic!("{subnet}: {e}"))
}

fn gateway(subnet: &str) -> Ipv4Addr {
    net(subnet)
        .hosts()
        .next()
        .unwrap_or_else(|| panic!("{subnet} has no hosts"))
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// The bridge the exported conflist of `name` points at.
fn exported_bridge(ctx: &Ctx, name: &str) -> Option<String> {
    let file = ctx.plugin.export_dir().join(format!("{name}.conflist"));
    if !file.exists() {
        return None;
    }
    first_plugin(&read_json(&file))["bridge"]
        .as_str()
        .map(str::to_string)
}

fn assert_file(dir: &Path, ip: impl Into<IpAddr>, content: &str) {
    let path = dir.join(ip.into().to_string());
    let found = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "allocation file {}: {e}; directory has {:?}",
            path.display(),
            ip_files_in(dir)
        )
    });
    assert_eq!(found, content, "content of {}", path.display());
}

/// Acceptance c: two configs with one `name` but their own bridges and subnets are two Docker networks at
/// once, sharing host-local's directory (as two CNI networks of one name do) but no address; the export
/// file of the name belongs to the newest and passes to the other when that one goes.
pub fn c_conf_same_name(ctx: &mut Ctx) {
    ctx.require_plugin();
    let conf_dir = ctx.plugin.conf_dir();
    let sides = [
        ("cnbt-same-a", SHARE_BRIDGES[0], SHARE_SUBNETS[0]),
        ("cnbt-same-b", SHARE_BRIDGES[1], SHARE_SUBNETS[1]),
    ];
    let mut files = ConfFiles(Vec::new());
    for (file, bridge, subnet) in sides {
        let path = conf_dir.join(format!("{file}.conflist"));
        fs::write(&path, same_name_conf(bridge, subnet))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files.0.push(path);
    }
    let dir = ctx.plugin.data_dir().join(SAME_NAME);

    let mut s = ctx.scope();
    let mut eps = Vec::new();
    for (file, bridge, subnet) in sides {
        // No config is named after the file, so the base name selects it.
        s.network(file, &["--ipam-opt", &format!("cni.conf={file}")]);
        let container = format!("{file}1");
        let ep = s.run_sleep(&container, file, &[]);
        assert!(
            net(subnet).contains(&ep.ipv4()),
            "{container} got {} outside {subnet}",
            ep.ipv4()
        );
        assert_eq!(ep.gateway, Some(gateway(subnet)), "gateway of {container}");
        ctx.assert_veth_on(&ep, bridge);
        eps.push((container, ep));
    }
    // As with a CNI runtime, a range's gateway needs no file: host-local never hands it out.
    let mut expect: Vec<String> = eps.iter().map(|(_, ep)| ep.ipv4().to_string()).collect();
    expect.sort();
    assert_eq!(ip_files_in(&dir), expect, "{}", dir.display());
    for ((container, ep), (_, _, subnet)) in eps.iter().zip(sides) {
        assert_file(&dir, ep.ipv4(), &owner_content(ep));
        ctx.ping(container, gateway(subnet));
    }
    assert_eq!(
        exported_bridge(ctx, SAME_NAME).as_deref(),
        Some(sides[1].1),
        "the export of {SAME_NAME} belongs to the newest network"
    );

    // The newer network goes first: its addresses go, the other's stay, the export passes to the other.
    let (b_container, b_ep) = &eps[1];
    s.rm(b_container);
    s.network_rm(sides[1].0);
    ctx.wait_link_gone(sides[1].1);
    assert!(
        !dir.join(b_ep.ipv4().to_string()).exists(),
        "{} still allocated after its network was removed",
        b_ep.ipv4()
    );
    let (a_container, a_ep) = &eps[0];
    assert_file(&dir, a_ep.ipv4(), &owner_content(a_ep));
    ctx.ping(a_container, gateway(sides[0].2));
    assert_eq!(
        exported_bridge(ctx, SAME_NAME).as_deref(),
        Some(sides[0].1),
        "the export of {SAME_NAME} after the newer network went"
    );

    s.rm(a_container);
    s.network_rm(sides[0].0);
    ctx.wait_link_gone(sides[0].1);
    assert_eq!(ip_files_in(&dir), Vec::<String>::new(), "{}", dir.display());
    assert_eq!(
        exported_bridge(ctx, SAME_NAME),
        None,
        "export after both went"
    );
}

/// One ping from a CNI namespace, retried like `Ctx::ping`.
fn ns_ping(ns: &CniNetns, ip: Ipv4Addr) {
    let ip_s = ip.to_string();
    wait_for(&format!("{} pings {ip}", ns.name()), SETTLE, || {
        ns.exec_in(&["busybox", "ping", "-c1", "-W2", &ip_s])
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A racer's outcome; a panicking racer is a failed one.
fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T, String>>) -> Result<T, String> {
    h.join()
        .unwrap_or_else(|_| Err("racer panicked".to_string()))
}

/// Acceptance d: the exported conflist, run by the real plugins, puts a namespace on the Docker network.
pub fn d_cni_runtime_shares_network(ctx: &mut Ctx) {
    ctx.require_plugin();
    let (subnet, bridge) = (SHARE_SUBNETS[2], SHARE_BRIDGES[2]);
    let network = "cnbt-share";
    let mut s = ctx.scope();
    s.network(
        network,
        &["--subnet", subnet, "-o", &format!("bridge={bridge}")],
    );
    let c1 = s.run_sleep("cnbt-share1", network, &[]);
    let dir = ctx.cni_dir(subnet);

    let export = ctx
        .plugin
        .export_dir()
        .join(format!("{}.conflist", cni_name(subnet)));
    let conf = first_plugin(&read_json(&export));
    assert_eq!(conf["bridge"], bridge, "bridge of {}", export.display());
    assert_eq!(
        conf["ipam"]["dataDir"],
        ctx.plugin.data_dir().to_string_lossy().as_ref(),
        "dataDir of {}",
        export.display()
    );

    // One namespace and one container: they reach each other both ways over the bridge.
    let pid = std::process::id();
    let mut ns =
        CniNetns::create(&format!("cnbt-sh{pid}"), &conf).unwrap_or_else(|e| panic!("{e}"));
    let result = ns.add().unwrap_or_else(|e| panic!("{e}"));
    let ns_ip = result_ipv4(&result).unwrap_or_else(|| panic!("no IPv4 in {result}"));
    assert!(
        net(subnet).contains(&ns_ip),
        "CNI got {ns_ip} outside {subnet}"
    );
    assert_ne!(ns_ip, c1.ipv4(), "CNI was given the container's address");
    assert_file(&dir, ns_ip, &format!("{}\r\neth0", ns.name()));
    ns_ping(&ns, c1.ipv4());
    ctx.ping("cnbt-share1", ns_ip);

    // CNI DEL frees the namespace's address and nothing of Docker's.
    ns.del().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !dir.join(ns_ip.to_string()).exists(),
        "{ns_ip} still allocated after CNI DEL"
    );
    ctx.assert_alloc(subnet, c1.ipv4(), &owner_content(&c1));
    ctx.assert_alloc(subnet, gateway(subnet), GATEWAY_CONTENT);
    ctx.ping("cnbt-share1", gateway(subnet));
    drop(ns);

    // The race: twenty CNI ADDs and twenty `docker run`s at once.
    let names: Vec<String> = (0..RACERS).map(|i| format!("cnbt-share-r{i}")).collect();
    for n in &names {
        s.track(n);
    }
    let (cli, image) = (ctx.cli(), ctx.image.clone());
    let (cni_side, docker_side) = thread::scope(|sc| {
        let cni: Vec<_> = (0..RACERS)
            .map(|i| {
                let conf = &conf;
                sc.spawn(move || {
                    let mut n = CniNetns::create(&format!("cnbt-sh{pid}-{i}"), conf)?;
                    let r = n.add()?;
                    let ip = result_ipv4(&r).ok_or_else(|| format!("no IPv4 in {r}"))?;
                    Ok::<_, String>((n, ip))
                })
            })
            .collect();
        let docker: Vec<_> = names
            .iter()
            .map(|name| {
                let (cli, image) = (&cli, &image);
                sc.spawn(move || {
                    let out = cli.run(&[
                        "run",
                        "-d",
                        "--name",
                        name,
                        "--network",
                        network,
                        image,
                        "sleep",
                        "600",
                    ])?;
                    match out.status.success() {
                        true => Ok(()),
                        false => Err(format!("docker run {name}: {}", stderr_text(&out))),
                    }
                })
            })
            .collect();
        (
            cni.into_iter().map(join).collect::<Vec<_>>(),
            docker.into_iter().map(join).collect::<Vec<_>>(),
        )
    });
    // Collected before any assertion, so every namespace made is cleaned up by its guard.
    let mut attached = Vec::new();
    let mut errors = Vec::new();
    for r in cni_side {
        match r {
            Ok(a) => attached.push(a),
            Err(e) => errors.push(e),
        }
    }
    errors.extend(docker_side.into_iter().filter_map(Result::err));
    assert!(errors.is_empty(), "racers failed:\n{}", errors.join("\n"));

    let docker_eps: Vec<_> = names.iter().map(|n| ctx.endpoint(n, network)).collect();
    let mut seen = HashSet::from([c1.ipv4(), gateway(subnet)]);
    for ip in attached
        .iter()
        .map(|(_, ip)| *ip)
        .chain(docker_eps.iter().map(|ep| ep.ipv4()))
    {
        assert!(net(subnet).contains(&ip), "{ip} outside {subnet}");
        assert!(seen.insert(ip), "{ip} was given twice");
    }
    assert_eq!(seen.len(), 2 * RACERS + 2, "distinct addresses");
    for (n, ip) in &attached {
        assert_file(&dir, *ip, &format!("{}\r\neth0", n.name()));
    }
    for ep in &docker_eps {
        ctx.assert_alloc(subnet, ep.ipv4(), &owner_content(ep));
    }
    assert_eq!(ip_files_in(&dir).len(), 2 * RACERS + 2, "allocation files");

    // Each side's release frees its own addresses only.
    for (n, _) in &mut attached {
        n.del().unwrap_or_else(|e| panic!("{e}"));
    }
    for (_, ip) in &attached {
        assert!(
            !dir.join(ip.to_string()).exists(),
            "{ip} left after CNI DEL"
        );
    }
    for ep in &docker_eps {
        ctx.assert_alloc(subnet, ep.ipv4(), &owner_content(ep));
    }
    drop(attached);
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    ctx.docker_ok(&rm);
    for ep in &docker_eps {
        ctx.wait_alloc_gone(subnet, ep.ipv4());
    }
    s.rm("cnbt-share1");
    s.network_rm(network);
    ctx.wait_link_gone(bridge);
    ctx.wait_no_allocs(subnet);
    assert!(
        !export.exists(),
        "{} left after network rm",
        export.display()
    );
}
