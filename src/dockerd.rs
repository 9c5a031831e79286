//! What cnibridge asks the dockerd it serves. Docker never tells a network plugin about a
//! network or endpoint removed while the plugin was down (dockerd logs the failed call and goes
//! ahead), so at start and whenever dockerd activates the plugin, cnibridge asks dockerd about
//! each network it knew from before: whether it still exists, and with which endpoints.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::unix_client;

/// dockerd answers from memory; the bound (on the whole exchange) is for a dockerd that accepted
/// the connection but is still starting (its API serves only after containers are restored).
const TIMEOUT: Duration = Duration::from_secs(300);

/// What dockerd says about one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// dockerd has the network, with these endpoints (of running containers and of ones not
    /// yet started alike).
    Present { endpoints: BTreeSet<String> },
    /// dockerd answered 404: it has no such network.
    Removed,
}

/// The endpoint ids of a `GET /networks/<id>` answer (`Containers.*.EndpointID`).
fn endpoints_of(body: &str) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("unreadable network: {e}"))?;
    let containers = match v.get("Containers") {
        None | Some(serde_json::Value::Null) => return Ok(BTreeSet::new()),
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => return Err(format!("Containers is not a map: {other}")),
    };
    containers
        .values()
        .map(|c| {
            c.get("EndpointID")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("a container without EndpointID: {c}"))
        })
        .collect()
}

/// dockerd's view of networks, as the driver needs it (a fake in tests).
pub trait DockerNetworks: Send + Sync + 'static {
    /// Whether dockerd still has the network. `Err` when dockerd cannot be asked or gives no
    /// clear answer; then nothing is forgotten.
    fn presence(&self, network_id: &str) -> impl Future<Output = Result<Presence, String>> + Send;

    /// The subnets of every network dockerd has, whatever its drivers (`IPAM.Config[].Subnet`,
    /// which dockerd fills in from the pool an IPAM driver answered).
    fn subnets(&self) -> impl Future<Output = Result<BTreeSet<IpNet>, String>> + Send;
}

/// The subnets of a `GET /networks` answer.
fn subnets_of(body: &str) -> Result<BTreeSet<IpNet>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("unreadable network list: {e}"))?;
    let nets = v
        .as_array()
        .ok_or_else(|| "the network list is not an array".to_string())?;
    Ok(nets
        .iter()
        .filter_map(|n| n.pointer("/IPAM/Config").and_then(|c| c.as_array()))
        .flatten()
        .filter_map(|c| c.get("Subnet").and_then(|s| s.as_str()))
        .filter_map(|s| s.parse::<IpNet>().ok())
        .map(|s| s.trunc())
        .collect())
}

/// The Engine API on dockerd's unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerApi {
    socket: PathBuf,
}

impl DockerApi {
    /// From `--docker-host`: `unix:///path` or `/path`; `none` (or empty) turns the checks off.
    pub fn from_host(host: &str) -> Result<Option<DockerApi>, String> {
        let host = host.trim();
        if host.is_empty() || host == "none" {
            return Ok(None);
        }
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if !path.starts_with('/') {
            return Err(format!(
                "--docker-host {host:?}: give dockerd's unix socket as unix:///path (or none)"
            ));
        }
        Ok(Some(DockerApi {
            socket: PathBuf::from(path),
        }))
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }
}

impl DockerNetworks for DockerApi {
    async fn presence(&self, network_id: &str) -> Result<Presence, String> {
        // Docker's ids are hex; anything else must not reach a request path.
        if network_id.is_empty() || !network_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("{network_id:?} is not a Docker network id"));
        }
        let path = format!("/networks/{network_id}");
        let answer = unix_client::request(&self.socket, "GET", &path, None, TIMEOUT)
            .await
            .map_err(|e| format!("asking dockerd on {}: {e}", self.socket.display()))?;
        match answer.status {
            200 => Ok(Presence::Present {
                endpoints: endpoints_of(&answer.body).map_err(|e| {
                    format!(
                        "dockerd on {} about network {network_id}: {e}",
                        self.socket.display()
                    )
                })?,
            }),
            404 => Ok(Presence::Removed),
            code => Err(format!(
                "dockerd on {} answered HTTP {code} for network {network_id}: {}",
                self.socket.display(),
                answer.body.trim()
            )),
        }
    }

    async fn subnets(&self) -> Result<BTreeSet<IpNet>, String> {
        let answer = unix_client::request(&self.socket, "GET", "/networks", None, TIMEOUT)
            .await
            .map_err(|e| format!("asking dockerd on {}: {e}", self.socket.display()))?;
        match answer.status {
            200 => subnets_of(&answer.body)
                .map_err(|e| format!("dockerd on {}: {e}", self.socket.display())),
            code => Err(format!(
                "dockerd on {} answered HTTP {code} for the network list: {}",
                self.socket.display(),
                answer.body.trim()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        let api = |h: &str| DockerApi::from_host(h).unwrap().map(|a| a.socket);
        assert_eq!(
            api("unix:///var/run/docker.sock"),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(api("/run/d.sock"), Some(PathBuf::from("/run/d.sock")));
        assert_eq!(api("none"), None);
        assert_eq!(api(""), None);
        let err = DockerApi::from_host("tcp://127.0.0.1:2375").unwrap_err();
        assert!(err.contains("unix:///path"), "{err}");
    }

    #[test]
    fn subnets_come_from_every_networks_ipam_config() {
        let body = r#"[
            {"Name":"bridge","IPAM":{"Driver":"default","Config":[{"Subnet":"172.17.0.0/16","Gateway":"172.17.0.1"}]}},
            {"Name":"n","IPAM":{"Driver":"cnibridge","Config":[{"Subnet":"10.1.2.0/24"},{"Subnet":"fd00:1::/64"}]}},
            {"Name":"host","IPAM":{"Driver":"default","Config":[]}},
            {"Name":"none","IPAM":{"Driver":"default","Config":null}}
        ]"#;
        let want: BTreeSet<IpNet> = ["172.17.0.0/16", "10.1.2.0/24", "fd00:1::/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(subnets_of(body).unwrap(), want);
        assert!(subnets_of("{}").is_err());
    }

    #[test]
    fn endpoints_come_from_the_containers_map() {
        let body = r#"{"Name":"n","Containers":{
            "c1":{"Name":"a","EndpointID":"e1","IPv4Address":"10.1.0.2/24"},
            "ep-e2":{"Name":"b","EndpointID":"e2"}}}"#;
        assert_eq!(
            endpoints_of(body).unwrap(),
            BTreeSet::from(["e1".to_string(), "e2".to_string()])
        );
        assert!(endpoints_of(r#"{"Containers":{}}"#).unwrap().is_empty());
        assert!(endpoints_of(r#"{"Name":"n"}"#).unwrap().is_empty());
        assert!(endpoints_of(r#"{"Containers":{"c":{}}}"#).is_err());
        assert!(endpoints_of("<html>").is_err());
    }

    #[test]
    fn odd_ids_never_reach_the_request() {
        let api = DockerApi::from_host("/nonexistent.sock").unwrap().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for id in ["", "../containers", "a/b", "a?b"] {
            let err = rt.block_on(api.presence(id)).unwrap_err();
            assert!(err.contains("not a Docker network id"), "{id}: {err}");
        }
        let err = rt.block_on(api.presence("abc123")).unwrap_err();
        assert!(err.contains("/nonexistent.sock"), "{err}");
    }
}
