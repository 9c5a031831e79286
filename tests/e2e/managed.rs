//! cnibridge as a managed Docker plugin: `plugin-spec/build-plugin.sh` builds a static binary into a rootfs
//! with the iptables tools, `docker plugin create/enable`, and the driver is used with its tag.

use std::path::Path;
use std::process::Command;

use crate::ctx::{docker_ok, endpoint, owner_content, Ctx};
use crate::support::host::ip_files_in;

pub fn f_managed_plugin(ctx: &mut Ctx) {
    const SUB: &str = "10.238.2.0/24";
    let name = format!("cnbtmp{}", std::process::id());
    let tagged = format!("{name}:latest");
    let base = ctx.dockerd.dir().join("managed");
    let (state, data) = (base.join("state"), base.join("cni"));
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target dir: the static build must not fight the test build over one lock or one binary.
    let target = top.join("target").join("managed-plugin");
    let out = Command::new("bash")
        .arg(top.join("plugin-spec/build-plugin.sh"))
        .arg(&name)
        .env("DOCKER_HOST", ctx.cli().host())
        .env("CARGO_TARGET_DIR", &target)
        .env("CNIBRIDGE_STATE_SOURCE", &state)
        .env("CNIBRIDGE_CNI_DATA_SOURCE", &data)
        .output()
        .expect("run build-plugin.sh");
    assert!(
        out.status.success(),
        "build-plugin.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = ctx.cli();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        docker_ok(&cli, &["plugin", "enable", &tagged]);
        docker_ok(
            &cli,
            &[
                "network",
                "create",
                "-d",
                &tagged,
                "--ipam-driver",
                &tagged,
                "--subnet",
                SUB,
                "-o",
                "bridge=cnbtmp",
                "cnbt-mp",
            ],
        );
        let image = ctx.image.clone();
        for c in ["cnbt-mp1", "cnbt-mp2"] {
            docker_ok(
                &cli,
                &[
                    "run",
                    "-d",
                    "--name",
                    c,
                    "--network",
                    "cnbt-mp",
                    &image,
                    "sleep",
                    "600",
                ],
            );
        }
        let a = endpoint(&cli, "cnbt-mp1", "cnbt-mp");
        let b = endpoint(&cli, "cnbt-mp2", "cnbt-mp");
        // The plugin's data dir is the bind-mounted host directory.
        let dir = data.join(crate::ctx::cni_name(SUB));
        let content = std::fs::read_to_string(dir.join(a.ipv4().to_string()))
            .unwrap_or_else(|e| panic!("{e}; files: {:?}", ip_files_in(&dir)));
        assert_eq!(content, owner_content(&a));
        ctx.ping("cnbt-mp1", b.ipv4());
        ctx.ping("cnbt-mp2", a.ipv4());
    }));
    // Tear down whatever happened, then report.
    for c in ["cnbt-mp1", "cnbt-mp2"] {
        let _ = cli.run(&["rm", "-f", c]);
    }
    let _ = cli.run(&["network", "rm", "cnbt-mp"]);
    let _ = cli.run(&["plugin", "disable", "-f", &tagged]);
    let _ = cli.run(&["plugin", "rm", "-f", &tagged]);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    ctx.wait_link_gone("cnbtmp");
    assert!(
        ip_files_in(&data.join(crate::ctx::cni_name(SUB))).is_empty(),
        "address files left by the managed plugin"
    );
}
