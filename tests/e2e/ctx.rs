//! What the scenarios share: the running dockerd + plugin, docker helpers that fail with readable messages,
//! the daemon's naming contract, and a guard that removes a scenario's containers and networks even when
//! the scenario fails half-way (so one failure does not cascade into the next scenarios).

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::fw::Backend;
use crate::support::host::{ip_files_in, link};
use crate::support::process::{stderr_text, stdout_text};
use crate::support::{wait_for, DockerCli, Dockerd, Plugin};

/// How long asynchronous effects get: veth removal after `docker stop`, ARP, IPv6 DAD, httpd start.
pub const SETTLE: Duration = Duration::from_secs(15);

pub struct Ctx {
    pub dockerd: Dockerd,
    pub plugin: Plugin,
    /// Why the plugin's first start failed, if it did; scenarios needing it fail fast with this.
    pub plugin_error: Option<String>,
    pub image: String,
    /// The daemon's `--firewall` backend in this suite.
    pub backend: Backend,
}

/// One container's attachment to one network, from `docker inspect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "IPAddress", deserialize_with = "opt_ip")]
    pub ip: Option<Ipv4Addr>,
    #[serde(deserialize_with = "opt_ip")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(rename = "GlobalIPv6Address", deserialize_with = "opt_ip")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(rename = "IPv6Gateway", deserialize_with = "opt_ip")]
    pub gateway6: Option<Ipv6Addr>,
}

/// Docker prints absent addresses as "".
fn opt_ip<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = Option::<String>::deserialize(de)?.unwrap_or_default();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Endpoint {
    /// The host end of the veth, by the daemon's contract: `vcb` + 12 chars of the EndpointID.
    pub fn veth(&self) -> String {
        format!("vcb{}", &self.endpoint_id[..12.min(self.endpoint_id.len())])
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
            .unwrap_or_else(|| panic!("endpoint {} has no IPv4 address", self.endpoint_id))
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ip6
            .unwrap_or_else(|| panic!("endpoint {} has no IPv6 address", self.endpoint_id))
    }
}

/// The CNI network name (directory under --cni-data-dir) the daemon derives from a Docker subnet.
pub fn cni_name(subnet: &str) -> String {
    format!("cnibridge-{}", subnet.replace('/', "-").replace(':', "_"))
}

/// Content of an allocation file owned by an endpoint: `<EndpointID>\r\n<host veth>` (host-local format).
pub fn owner_content(ep: &Endpoint) -> String {
    format!("{}\r\n{}", ep.endpoint_id, ep.veth())
}

pub const GATEWAY_CONTENT: &str = "cnibridge-gateway\r\ngateway";
pub const AUX_CONTENT: &str = "cnibridge-aux\r\naux";

/// `docker <args>` that must succeed; returns trimmed stdout.
pub fn docker_ok(cli: &DockerCli, args: &[&str]) -> String {
    cli.run_ok(args)
}

/// Every network endpoint of a container, by network name.
pub fn endpoints(cli: &DockerCli, container: &str) -> HashMap<String, Endpoint> {
    let json = docker_ok(
        cli,
        &[
            "inspect",
            "-f",
            "{{json .NetworkSettings.Networks}}",
            container,
        ],
    );
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("docker inspect {container}: {e}: {json}"))
}

/// A container's endpoint on one network.
pub fn endpoint(cli: &DockerCli, container: &str, network: &str) -> Endpoint {
    let mut all = endpoints(cli, container);
    let names: Vec<String> = all.keys().cloned().collect();
    all.remove(network).unwrap_or_else(|| {
        panic!("container {container} is not on network {network} (it is on {names:?})")
    })
}

impl Ctx {
    pub fn cli(&self) -> DockerCli {
        self.dockerd.cli()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.dockerd.docker(args)
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        docker_ok(&self.cli(), args)
    }

    /// Fails the scenario at once if the daemon is not running, instead of after Docker's ~15 s of retries.
    pub fn require_plugin(&mut self) {
        if !self.plugin.is_running() {
            match self.plugin_error {
                Some(_) => {
                    panic!("cnibridge is not running: its start failed (see the warning at setup)")
                }
                None => panic!("cnibridge died; log tail:\n{}", self.plugin.log_tail(20)),
            }
        }
    }

    pub fn scope(&self) -> Scope {
        Scope {
            cli: self.cli(),
            driver: self.plugin.name().to_string(),
            image: self.image.clone(),
            containers: Vec::new(),
            networks: Vec::new(),
        }
    }

    pub fn endpoint(&self, container: &str, network: &str) -> Endpoint {
        endpoint(&self.cli(), container, network)
    }

    /// `docker exec` that must succeed; returns stdout.
    pub fn exec_ok(&self, container: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.docker_ok(&args)
    }

    /// One ping from inside `container`, retried until [`SETTLE`] (first packets may meet ARP/ND or DAD).
    pub fn ping(&self, container: &str, ip: impl Into<IpAddr>) {
        let ip = ip.into();
        let ip_s = ip.to_string();
        let tool = if ip.is_ipv6() { "ping6" } else { "ping" };
        wait_for(&format!("{container} pings {ip}"), SETTLE, || {
            let out = self.docker(&["exec", container, tool, "-c1", "-W2", &ip_s]);
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{} {}", stdout_text(&out), stderr_text(&out)))
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The daemon's host-local directory for a network made with `--subnet subnet`.
    pub fn cni_dir(&self, subnet: &str) -> PathBuf {
        self.plugin.data_dir().join(cni_name(subnet))
    }

    /// Asserts that the allocation file for `ip` exists with exactly `content`.
    pub fn assert_alloc(&self, subnet: &str, ip: impl Into<IpAddr>, content: &str) {
        let path = self.cni_dir(subnet).join(ip.into().to_string());
        let found = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "allocation file {}: {e}; directory has {:?}",
                path.display(),
                ip_files_in(&self.cni_dir(subnet))
            )
        });
        assert_eq!(found, content, "content of {}", path.display());
    }

    /// Waits until the allocation file for `ip` is gone.
    pub fn wait_alloc_gone(&self, subnet: &str, ip: impl Into<IpAddr>) {
        let path = self.cni_dir(subnet).join(ip.into().to_string());
        wait_for(
            &format!("{} removed", path.display()),
            SETTLE,
            || match path.exists() {
                false => Ok(()),
                true => Err(fs::read_to_string(&path)
                    .unwrap_or_default()
                    .replace("\r\n", " ")),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the network directory holds no allocation file at all (gateway and aux included).
    pub fn wait_no_allocs(&self, subnet: &str) {
        let dir = self.cni_dir(subnet);
        wait_for(
            &format!("no allocation files in {}", dir.display()),
            SETTLE,
            || {
                let left = ip_files_in(&dir);
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:?}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Asserts the endpoint's host veth exists and is attached to `bridge`.
    pub fn assert_veth_on(&self, ep: &Endpoint, bridge: &str) {
        let veth =
            link(&ep.veth()).unwrap_or_else(|| panic!("host veth {} does not exist", ep.veth()));
        assert_eq!(
            veth.master.as_deref(),
            Some(bridge),
            "master of {}",
            veth.name
        );
        let br = link(bridge).unwrap_or_else(|| panic!("bridge {bridge} does not exist"));
        assert_eq!(br.kind.as_deref(), Some("bridge"), "kind of {bridge}");
    }

    pub fn wait_link_gone(&self, name: &str) {
        wait_for(&format!("link {name} removed"), SETTLE, || {
            match link(name) {
                None => Ok(()),
                Some(l) => Err(format!("{l:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The IPv4 and IPv6 subnets Docker recorded for a network.
    pub fn network_subnets(&self, network: &str) -> Vec<IpNet> {
        let json = self.docker_ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", network]);
        let configs: Vec<HashMap<String, String>> = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("IPAM.Config of {network}: {e}: {json}"));
        configs
            .iter()
            .filter_map(|c| c.get("Subnet"))
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|e| panic!("subnet {s} of {network}: {e}"))
            })
            .collect()
    }
}

/// Containers and networks one scenario made; dropping it removes them (containers first), whatever happened.
pub struct Scope {
    cli: DockerCli,
    driver: String,
    image: String,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Scope {
    /// `docker network create -d <plugin> --ipam-driver <plugin> <args> <name>` that must succeed; returns
    /// the NetworkID.
    pub fn network(&mut self, name: &str, args: &[&str]) -> String {
        let mut all = vec![
            "network",
            "create",
            "-d",
            &self.driver,
            "--ipam-driver",
            &self.driver,
        ];
        all.extend_from_slice(args);
        all.push(name);
        self.networks.push(name.to_string());
        docker_ok(&self.cli, &all)
    }

    /// `docker run -d --name <name> --network <network> <extra> <image> <cmd>`; the caller checks the result
    /// (a failed start still leaves a created container, which the scope removes).
    pub fn run(&mut self, name: &str, network: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let mut all = vec!["run", "-d", "--name", name, "--network", network];
        all.extend_from_slice(extra);
        all.push(&self.image);
        all.extend_from_slice(cmd);
        self.containers.push(name.to_string());
        self.cli.run(&all).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `sleep 600` container that must start; returns its endpoint on `network`.
    pub fn run_sleep(&mut self, name: &str, network: &str, extra: &[&str]) -> Endpoint {
        let out = self.run(name, network, extra, &["sleep", "600"]);
        assert!(
            out.status.success(),
            "docker run {name} on {network} failed: {}",
            stderr_text(&out)
        );
        endpoint(&self.cli, name, network)
    }

    /// Makes the scope remove a container started elsewhere (e.g. by parallel `docker run`s).
    pub fn track(&mut self, container: &str) {
        self.containers.push(container.to_string());
    }

    /// `docker rm -f` (SIGKILL, then the full disconnect sequence) that must succeed.
    pub fn rm(&mut self, name: &str) {
        docker_ok(&self.cli, &["rm", "-f", name]);
        self.containers.retain(|c| c != name);
    }

    /// A network removed some other way: nothing left for the scope to remove.
    pub fn forget_network(&mut self, name: &str) {
        self.networks.retain(|n| n != name);
    }

    /// `docker network rm` that must succeed.
    pub fn network_rm(&mut self, name: &str) {
        docker_ok(&self.cli, &["network", "rm", name]);
        self.networks.retain(|n| n != name);
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed scenario unwinds.
        for c in self.containers.drain(..).rev() {
            if let Ok(out) = self.cli.run(&["rm", "-f", &c]) {
                if !out.status.success() && !stderr_text(&out).contains("No such container") {
                    eprintln!("warning: docker rm -f {c}: {}", stderr_text(&out));
                }
            }
        }
        for n in self.networks.drain(..).rev() {
            if let Ok(out) = self.cli.run(&["network", "rm", &n]) {
                let err = stderr_text(&out);
                if !out.status.success()
                    && !err.contains("not found")
                    && !err.contains("No such network")
                {
                    eprintln!("warning: docker network rm {n}: {err}");
                }
            }
        }
    }
}
