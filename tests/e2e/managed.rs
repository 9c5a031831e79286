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
    let (state, data, conf) = (base.join("state"), base.join("cni"), base.join("conf"));
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target dir: the static build must not fight the test build over one lock or one binary.
    let target = top.join("target").join("managed-plugin");
    // A CNI config in the mounted conf dir, selected by --ipam-opt alone.
    std::fs::create_dir_all(&conf).expect("conf dir");
    std::fs::write(
        conf.join("cnbtmpconf.conf"),
        r#"{"cniVersion":"1.0.0","name":"cnbtmpconf","type":"bridge","bridge":"cnbtmpc","isGateway":true,
            "ipam":{"type":"host-local","subnet":"10.238.3.0/24","routes":[{"dst":"0.0.0.0/0"}]}}"#,
    )
    .expect("write conf");
    let out = Command::new("bash")
        .arg(top.join("plugin-spec/build-plugin.sh"))
        .arg(&name)
        .env("DOCKER_HOST", ctx.cli().host())
        .env("CARGO_TARGET_DIR", &target)
        .env("CNIBRIDGE_STATE_SOURCE", &state)
        .env("CNIBRIDGE_CNI_DATA_SOURCE", &data)
        .env("CNIBRIDGE_CNI_CONF_SOURCE", &conf)
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

        docker_ok(
            &cli,
            &[
                "network",
                "create",
                "-d",
                &tagged,
                "--ipam-driver",
                &tagged,
                "--ipam-opt",
                "cni.conf=cnbtmpconf",
                "cnbt-mpc",
            ],
        );
        docker_ok(
            &cli,
            &[
                "run",
                "-d",
                "--name",
                "cnbt-mp3",
                "--network",
                "cnbt-mpc",
                &image,
                "sleep",
                "600",
            ],
        );
        let c = endpoint(&cli, "cnbt-mp3", "cnbt-mpc");
        let conf_net: ipnet::Ipv4Net = "10.238.3.0/24".parse().unwrap();
        assert!(
            conf_net.contains(&c.ipv4()),
            "{} outside the config's subnet",
            c.ipv4()
        );
        assert!(
            data.join("cnbtmpconf").join(c.ipv4().to_string()).exists(),
            "config-named directory"
        );
        ctx.ping(
            "cnbt-mp3",
            "10.238.3.1".parse::<std::net::Ipv4Addr>().unwrap(),
        );
    }));
    // Tear down whatever happened, then report.
    for c in ["cnbt-mp1", "cnbt-mp2", "cnbt-mp3"] {
        let _ = cli.run(&["rm", "-f", c]);
    }
    for n in ["cnbt-mp", "cnbt-mpc"] {
        let _ = cli.run(&["network", "rm", n]);
    }
    let _ = cli.run(&["plugin", "disable", "-f", &tagged]);
    let _ = cli.run(&["plugin", "rm", "-f", &tagged]);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    ctx.wait_link_gone("cnbtmp");
    ctx.wait_link_gone("cnbtmpc");
    assert!(
        ip_files_in(&data.join(crate::ctx::cni_name(SUB))).is_empty(),
        "address files left by the managed plugin"
    );
}
