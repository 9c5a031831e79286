//! The harness on its own, and acceptance b: one network, two containers, host-local files, ping, HTTP, route.

use std::net::IpAddr;

use ipnet::Ipv4Net;

use crate::ctx::{owner_content, Ctx, GATEWAY_CONTENT, SETTLE};
use crate::support::host::http_get;
use crate::support::image::INDEX_HTML;
use crate::support::wait_for;

/// Proves dockerd and the imported image work without the plugin, so a plugin failure is not mistaken for
/// a harness failure.
pub fn harness_smoke(ctx: &mut Ctx) {
    let image = ctx.image.clone();
    let out = ctx.docker_ok(&["run", "--rm", "--network", "none", &image, "echo", "hi"]);
    assert_eq!(out, "hi");
    let page = ctx.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "cat",
        "/www/index.html",
    ]);
    assert_eq!(format!("{page}\n"), INDEX_HTML);
}

pub fn b_basic(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUBNET: &str = "10.231.1.0/24";
    const BRIDGE: &str = "cnbtb";
    let gateway: std::net::Ipv4Addr = "10.231.1.254".parse().unwrap();
    let subnet: Ipv4Net = SUBNET.parse().unwrap();
    let net = "cnbt-b";
    let mut s = ctx.scope();
    s.network(
        net,
        &[
            "--subnet",
            SUBNET,
            "--gateway",
            "10.231.1.254",
            "-o",
            &format!("bridge={BRIDGE}"),
        ],
    );
    let a = s.run_sleep("cnbt-b1", net, &[]);
    let b = s.run_sleep("cnbt-b2", net, &[]);

    for ep in [&a, &b] {
        let ip = ep.ipv4();
        assert!(subnet.contains(&ip), "{ip} outside {SUBNET}");
        assert_ne!(ip, gateway, "a container got the gateway address");
        assert_eq!(
            ep.gateway,
            Some(gateway),
            "gateway Docker reports for {}",
            ep.endpoint_id
        );
        ctx.assert_alloc(SUBNET, ip, &owner_content(ep));
        ctx.assert_veth_on(ep, BRIDGE);
    }
    assert_ne!(a.ipv4(), b.ipv4(), "two containers got the same address");
    ctx.assert_alloc(SUBNET, gateway, GATEWAY_CONTENT);

    ctx.ping("cnbt-b1", b.ipv4());
    ctx.ping("cnbt-b2", a.ipv4());
    ctx.ping("cnbt-b1", gateway);

    let routes = ctx.exec_ok("cnbt-b1", &["ip", "-4", "route"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("default via {gateway} "))),
        "no default route via {gateway} in:\n{routes}"
    );

    let out = s.run(
        "cnbt-b3",
        net,
        &[],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(
        out.status.success(),
        "httpd container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let web = ctx.endpoint("cnbt-b3", net);
    let page = wait_for("HTTP GET from the host", SETTLE, || {
        http_get(
            IpAddr::V4(web.ipv4()),
            80,
            std::time::Duration::from_secs(3),
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page, INDEX_HTML, "page served by cnbt-b3");

    for c in ["cnbt-b1", "cnbt-b2", "cnbt-b3"] {
        s.rm(c);
    }
    for ep in [&a, &b, &web] {
        ctx.wait_link_gone(&ep.veth());
        ctx.wait_alloc_gone(SUBNET, ep.ipv4());
    }
    s.network_rm(net);
    ctx.wait_link_gone(BRIDGE);
    ctx.wait_no_allocs(SUBNET);
}
