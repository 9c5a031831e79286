//! Issue 5 f: cnibridge's rules come from its state. After someone removes them by hand,
//! `cnibridge firewall-reload` gives back egress and published ports; after cnibridge was down while a
//! network was removed, its start leaves none of that network's rules (nor bridge, addresses, export).

use crate::ctx::{owner_content, Ctx, SETTLE};
use crate::firewall::{expect_egress, expect_no_egress, fail, outside};
use crate::ports::{expect_no_answer, expect_page, get_from_outside};
use crate::support::host::ip_files_in;
use crate::support::outside::HOST_IP;
use crate::support::process::{run_ok, stderr_text};
use crate::support::wait_for;

pub const RELOAD_SUBNETS: &[&str] = &["10.248.1.0/24", "10.248.2.0/24", "10.248.3.0/24"];
pub const RELOAD_BRIDGES: &[&str] = &["cnbtrl", "cnbtgn", "cnbtkp"];
const PORT: u16 = 8090;

/// Acceptance f, first half: a container with a published port, its rules removed by hand and put back by
/// `cnibridge firewall-reload`.
pub fn f_firewall_reload_restores_traffic(ctx: &mut Ctx) {
    ctx.require_plugin();
    let (subnet, bridge) = (RELOAD_SUBNETS[0], RELOAD_BRIDGES[0]);
    let out = outside();
    let mut s = ctx.scope();
    s.network(
        "cnbt-rl",
        &["--subnet", subnet, "-o", &format!("bridge={bridge}")],
    );
    let o = s.run(
        "cnbt-rl1",
        "cnbt-rl",
        &["-p", &format!("{PORT}:80")],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(o.status.success(), "docker run -p: {}", stderr_text(&o));
    let from_outside = || get_from_outside(&out, HOST_IP, PORT);
    expect_page("the published port from outside", from_outside);
    expect_egress(ctx, "cnbt-rl1", &out, HOST_IP);

    ctx.backend.remove_ours();
    let left = ctx.backend.mentions(&[bridge, subnet]);
    assert!(left.is_empty(), "rules left after removing ours: {left:?}");
    expect_no_answer(
        "the published port without cnibridge's rules",
        from_outside(),
    );
    expect_no_egress(ctx, "cnbt-rl1", &out, "cnibridge's rules are gone");

    let said = run_ok(
        &ctx.plugin.bin().to_string_lossy(),
        &[
            "firewall-reload",
            "--socket",
            &ctx.plugin.socket().to_string_lossy(),
        ],
    );
    assert!(said.contains("re-applied"), "firewall-reload said {said:?}");
    expect_page("the published port after the reload", from_outside);
    expect_egress(ctx, "cnbt-rl1", &out, HOST_IP);

    s.rm("cnbt-rl1");
    s.network_rm("cnbt-rl");
    let left = ctx.backend.mentions(&[bridge, subnet]);
    if !left.is_empty() {
        fail(format!("rules of the removed network: {}", left.join("\n")));
    }
}

/// Acceptance f, second half: `docker network rm` and `docker rm -f` while cnibridge is down (dockerd
/// removes the network and the endpoint even though the driver cannot be reached, after about a minute of
/// retries); the next start of cnibridge leaves nothing of either, and the other container keeps working.
pub fn f_restart_forgets_deleted_network(ctx: &mut Ctx) {
    ctx.require_plugin();
    let (subnet, bridge) = (RELOAD_SUBNETS[1], RELOAD_BRIDGES[1]);
    let (kept_subnet, kept_bridge) = (RELOAD_SUBNETS[2], RELOAD_BRIDGES[2]);
    let mut s = ctx.scope();
    s.network(
        "cnbt-gone",
        &["--subnet", subnet, "-o", &format!("bridge={bridge}")],
    );
    s.network(
        "cnbt-kept",
        &[
            "--subnet",
            kept_subnet,
            "-o",
            &format!("bridge={kept_bridge}"),
        ],
    );
    let removed = s.run_sleep("cnbt-kept1", "cnbt-kept", &["-p", "8091:80"]);
    let kept = s.run_sleep("cnbt-kept2", "cnbt-kept", &[]);
    assert!(
        !ctx.backend.mentions(&[bridge]).is_empty(),
        "the network has no rules to lose"
    );
    assert!(
        !ctx.backend
            .mentions(&[&removed.endpoint_id[..12]])
            .is_empty(),
        "the endpoint has no rules to lose"
    );
    ctx.plugin
        .stop()
        .unwrap_or_else(|e| panic!("stopping cnibridge: {e}"));
    // Both wait out dockerd's retries; at once, so the scenario waits once.
    let (cli_a, cli_b) = (ctx.cli(), ctx.cli());
    let (rm_net, rm_ctr) = std::thread::scope(|sc| {
        let a = sc.spawn(move || cli_a.run(&["network", "rm", "cnbt-gone"]));
        let b = sc.spawn(move || cli_b.run(&["rm", "-f", "cnbt-kept1"]));
        (a.join(), b.join())
    });
    ctx.plugin
        .start()
        .unwrap_or_else(|e| panic!("starting cnibridge: {e}"));
    for (what, out) in [("docker network rm", rm_net), ("docker rm -f", rm_ctr)] {
        let out = out
            .unwrap_or_else(|_| panic!("{what} panicked"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        println!(
            "note: {what} with cnibridge down: {} {}",
            out.status,
            stderr_text(&out)
        );
        assert!(
            out.status.success(),
            "{what} with cnibridge down failed: {}",
            stderr_text(&out)
        );
    }
    s.forget_network("cnbt-gone");
    wait_for(
        "the removed network's and endpoint's rules gone",
        SETTLE,
        || {
            let left = ctx
                .backend
                .mentions(&[bridge, subnet, &removed.endpoint_id[..12]]);
            match left.is_empty() {
                true => Ok(()),
                false => Err(left.join("\n")),
            }
        },
    )
    .unwrap_or_else(|e| fail(e));
    ctx.wait_link_gone(bridge);
    assert_eq!(ip_files_in(&ctx.cni_dir(subnet)), Vec::<String>::new());
    ctx.wait_link_gone(&removed.veth());
    ctx.wait_alloc_gone(kept_subnet, removed.ipv4());
    // The other container of that network is untouched.
    ctx.assert_alloc(kept_subnet, kept.ipv4(), &owner_content(&kept));
    ctx.assert_veth_on(&kept, kept_bridge);
    ctx.ping(
        "cnbt-kept2",
        kept.gateway.unwrap_or_else(|| panic!("no gateway")),
    );
    s.rm("cnbt-kept2");
    s.network_rm("cnbt-kept");
    ctx.wait_no_allocs(kept_subnet);
}
