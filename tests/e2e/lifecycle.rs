//! Acceptance d (connect/disconnect, stop/start, rm, network rm) and e (the daemon SIGKILLed and restarted).

use crate::ctx::{endpoints, owner_content, Ctx, Endpoint};

/// After an endpoint ends: its host veth and its allocation file are gone.
fn assert_endpoint_gone(ctx: &Ctx, ep: &Endpoint, subnet: &str) {
    ctx.wait_link_gone(&ep.veth());
    ctx.wait_alloc_gone(subnet, ep.ipv4());
}

pub fn d_connect_disconnect(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUB1: &str = "10.237.0.0/24";
    const SUB2: &str = "10.237.1.0/24";
    let mut s = ctx.scope();
    s.network("cnbt-d1", &["--subnet", SUB1, "-o", "bridge=cnbtd1"]);
    s.network("cnbt-d2", &["--subnet", SUB2, "-o", "bridge=cnbtd2"]);
    s.run_sleep("cnbt-dc", "cnbt-d1", &[]);

    ctx.docker_ok(&["network", "connect", "cnbt-d2", "cnbt-dc"]);
    let ep = ctx.endpoint("cnbt-dc", "cnbt-d2");
    ctx.assert_alloc(SUB2, ep.ipv4(), &owner_content(&ep));
    ctx.assert_veth_on(&ep, "cnbtd2");
    let addrs = ctx.exec_ok("cnbt-dc", &["ip", "-4", "addr"]);
    assert!(
        addrs.contains(&format!("inet {}/24", ep.ipv4())),
        "{} not in the container:\n{addrs}",
        ep.ipv4()
    );
    ctx.ping(
        "cnbt-dc",
        "10.237.1.1".parse::<std::net::Ipv4Addr>().unwrap(),
    );

    ctx.docker_ok(&["network", "disconnect", "cnbt-d2", "cnbt-dc"]);
    assert_endpoint_gone(ctx, &ep, SUB2);
    assert!(
        !endpoints(&ctx.cli(), "cnbt-dc").contains_key("cnbt-d2"),
        "still attached after disconnect"
    );

    // The released address can be handed out again (asking for it exactly proves it is free).
    let ip = ep.ipv4().to_string();
    let again = s.run_sleep("cnbt-dr", "cnbt-d2", &["--ip", &ip]);
    assert_eq!(again.ipv4(), ep.ipv4());
    s.rm("cnbt-dr");
    assert_endpoint_gone(ctx, &again, SUB2);

    s.rm("cnbt-dc");
    for (net, bridge, sub) in [("cnbt-d1", "cnbtd1", SUB1), ("cnbt-d2", "cnbtd2", SUB2)] {
        s.network_rm(net);
        ctx.wait_link_gone(bridge);
        ctx.wait_no_allocs(sub);
    }
}

pub fn d_stop_start_rm(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUB: &str = "10.237.2.0/24";
    let mut s = ctx.scope();
    s.network("cnbt-d3", &["--subnet", SUB, "-o", "bridge=cnbtd3"]);
    let old = s.run_sleep("cnbt-ds", "cnbt-d3", &[]);

    // -t 0: busybox sleep as PID 1 ignores SIGTERM, so a grace period would only cost time.
    ctx.docker_ok(&["stop", "-t", "0", "cnbt-ds"]);
    assert_endpoint_gone(ctx, &old, SUB);

    let ip = old.ipv4().to_string();
    let reuse = s.run_sleep("cnbt-dx", "cnbt-d3", &["--ip", &ip]);
    assert_eq!(
        reuse.ipv4(),
        old.ipv4(),
        "the stopped container's address was not free again"
    );
    s.rm("cnbt-dx");
    assert_endpoint_gone(ctx, &reuse, SUB);

    ctx.docker_ok(&["start", "cnbt-ds"]);
    let new = ctx.endpoint("cnbt-ds", "cnbt-d3");
    assert_ne!(
        new.endpoint_id, old.endpoint_id,
        "restart kept the EndpointID"
    );
    ctx.assert_veth_on(&new, "cnbtd3");
    ctx.assert_alloc(SUB, new.ipv4(), &owner_content(&new));
    ctx.ping(
        "cnbt-ds",
        "10.237.2.1".parse::<std::net::Ipv4Addr>().unwrap(),
    );

    s.rm("cnbt-ds");
    assert_endpoint_gone(ctx, &new, SUB);
    s.network_rm("cnbt-d3");
    ctx.wait_link_gone("cnbtd3");
    ctx.wait_no_allocs(SUB);
}

pub fn e_plugin_sigkill(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUB: &str = "10.238.0.0/24";
    let gateway: std::net::Ipv4Addr = "10.238.0.1".parse().unwrap();
    let mut s = ctx.scope();
    s.network("cnbt-e", &["--subnet", SUB, "-o", "bridge=cnbte"]);
    let e1 = s.run_sleep("cnbt-e1", "cnbt-e", &[]);
    let e2 = s.run_sleep("cnbt-e2", "cnbt-e", &[]);
    ctx.ping("cnbt-e1", e2.ipv4());

    ctx.plugin.kill9();
    ctx.plugin
        .start()
        .unwrap_or_else(|e| panic!("restart after SIGKILL: {e}"));

    // The kernel objects outlive the daemon; the restarted one must not have disturbed them.
    ctx.ping("cnbt-e1", e2.ipv4());
    ctx.ping("cnbt-e1", gateway);
    // Docker never replays CreateNetwork: this only works if the daemon reloaded the network from disk.
    let e3 = s.run_sleep("cnbt-e3", "cnbt-e", &[]);
    ctx.assert_alloc(SUB, e3.ipv4(), &owner_content(&e3));
    ctx.ping("cnbt-e3", e1.ipv4());

    // An endpoint from the daemon's previous life is cleaned up fully.
    ctx.docker_ok(&["stop", "-t", "0", "cnbt-e1"]);
    assert_endpoint_gone(ctx, &e1, SUB);
    for c in ["cnbt-e1", "cnbt-e2", "cnbt-e3"] {
        s.rm(c);
    }
    assert_endpoint_gone(ctx, &e2, SUB);
    assert_endpoint_gone(ctx, &e3, SUB);
    s.network_rm("cnbt-e");
    ctx.wait_link_gone("cnbte");
    ctx.wait_no_allocs(SUB);
}

/// Waits until the container runs again and returns its endpoint on `network`, which must be new.
pub fn restarted_endpoint(ctx: &Ctx, container: &str, network: &str, old: &Endpoint) -> Endpoint {
    crate::support::wait_for("container restarted by dockerd", crate::ctx::SETTLE, || {
        let running = ctx.docker_ok(&["inspect", "-f", "{{.State.Running}}", container]);
        let eps = endpoints(&ctx.cli(), container);
        match (running.as_str(), eps.get(network)) {
            ("true", Some(ep))
                if ep.endpoint_id != old.endpoint_id && !ep.endpoint_id.is_empty() =>
            {
                Ok(ep.clone())
            }
            _ => Err(format!("running={running}, endpoint not renewed yet")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Fixture 04 for real: dockerd restarted while a restart-policy container runs. Docker never replays CreateNetwork, so the container only comes back if cnibridge remembered the
/// network; the old endpoint's veth and address go, the new one works.
pub fn e_dockerd_restart(ctx: &mut Ctx) {
    ctx.require_plugin();
    const SUB: &str = "10.238.1.0/24";
    let gateway: std::net::Ipv4Addr = "10.238.1.1".parse().unwrap();
    let mut s = ctx.scope();
    s.network("cnbt-r", &["--subnet", SUB, "-o", "bridge=cnbtr"]);
    let first = s.run_sleep("cnbt-r1", "cnbt-r", &["--restart", "always"]);
    ctx.ping("cnbt-r1", gateway);

    ctx.dockerd
        .restart()
        .unwrap_or_else(|e| panic!("dockerd restart: {e}"));
    let second = restarted_endpoint(ctx, "cnbt-r1", "cnbt-r", &first);
    assert_endpoint_gone(ctx, &first, SUB);
    ctx.assert_veth_on(&second, "cnbtr");
    ctx.assert_alloc(SUB, second.ipv4(), &owner_content(&second));
    ctx.ping("cnbt-r1", gateway);

    // A dockerd SIGKILL (fixture 05) is left to the protocol replay: with dockerd-managed containerd,
    // as in this harness, the orphaned containerd keeps the new dockerd from starting.
    let third = second;
    let other = s.run_sleep("cnbt-r2", "cnbt-r", &[]);
    ctx.ping("cnbt-r2", third.ipv4());

    for c in ["cnbt-r1", "cnbt-r2"] {
        s.rm(c);
    }
    assert_endpoint_gone(ctx, &third, SUB);
    assert_endpoint_gone(ctx, &other, SUB);
    s.network_rm("cnbt-r");
    ctx.wait_link_gone("cnbtr");
    ctx.wait_no_allocs(SUB);
}

pub const REBOOT_SUBNET: &str = "10.238.4.0/24";
pub const REBOOT_BRIDGE: &str = "cnbthb";

/// A host reboot, as near as a test gets without one: dockerd stops, then cnibridge; the kernel loses the
/// bridge, every veth and every firewall rule; cnibridge starts before dockerd, as its service does. Only
/// cnibridge's state dir and the host-local files survive, as on disk. The restart-policy container with
/// a published port comes back with an address from the same network, reaches its gateway and the
/// outside, answers on its port, and nothing of its old endpoint is left.
pub fn e_host_reboot(ctx: &mut Ctx) {
    ctx.require_plugin();
    const PORT: u16 = 8093;
    let gateway: std::net::Ipv4Addr = "10.238.4.1".parse().unwrap();
    let out = crate::firewall::outside();
    let mut s = ctx.scope();
    s.network(
        "cnbt-hb",
        &[
            "--subnet",
            REBOOT_SUBNET,
            "-o",
            &format!("bridge={REBOOT_BRIDGE}"),
        ],
    );
    let o = s.run(
        "cnbt-hb1",
        "cnbt-hb",
        &["--restart", "always", "-p", &format!("{PORT}:80")],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(
        o.status.success(),
        "docker run: {}",
        crate::support::process::stderr_text(&o)
    );
    let first = ctx.endpoint("cnbt-hb1", "cnbt-hb");
    let from_outside =
        || crate::ports::get_from_outside(&out, crate::support::outside::HOST_IP, PORT);
    crate::ports::expect_page("the published port before the reboot", from_outside);

    let (dockerd, plugin, backend) = (&mut ctx.dockerd, &mut ctx.plugin, ctx.backend);
    dockerd
        .restart_after(|| {
            plugin
                .stop()
                .unwrap_or_else(|e| panic!("stopping cnibridge: {e}"));
            // What a reboot takes: the links (the containers' veths went with dockerd's stop) and
            // the whole firewall state of ours.
            crate::support::host::delete_link(REBOOT_BRIDGE)
                .unwrap_or_else(|e| panic!("deleting the bridge: {e}"));
            // Gone already when dockerd's stop reached cnibridge.
            let _ = crate::support::host::delete_link(&first.veth());
            backend.remove_ours();
            plugin
                .start()
                .unwrap_or_else(|e| panic!("starting cnibridge: {e}"));
        })
        .unwrap_or_else(|e| panic!("dockerd restart: {e}"));

    let second = restarted_endpoint(ctx, "cnbt-hb1", "cnbt-hb", &first);
    ctx.assert_veth_on(&second, REBOOT_BRIDGE);
    ctx.assert_alloc(REBOOT_SUBNET, second.ipv4(), &owner_content(&second));
    ctx.ping("cnbt-hb1", gateway);
    crate::firewall::expect_egress(ctx, "cnbt-hb1", &out, crate::support::outside::HOST_IP);
    crate::ports::expect_page("the published port after the reboot", from_outside);
    // Only the gateway and the new endpoint hold addresses; no rule names the old endpoint.
    let files = crate::support::host::ip_files_in(&ctx.cni_dir(REBOOT_SUBNET));
    let mut want = vec![gateway.to_string(), second.ipv4().to_string()];
    want.sort();
    assert_eq!(files, want, "allocation files after the reboot");
    let left = ctx.backend.mentions(&[&first.endpoint_id[..12]]);
    assert!(left.is_empty(), "rules of the old endpoint: {left:?}");

    s.rm("cnbt-hb1");
    assert_endpoint_gone(ctx, &second, REBOOT_SUBNET);
    s.network_rm("cnbt-hb");
    ctx.wait_link_gone(REBOOT_BRIDGE);
    ctx.wait_no_allocs(REBOOT_SUBNET);
}
