//! cnibridge inside the test process: a Driver over the dataplane and firewall the test picks
//! (recording fakes, or the real netlink dataplane in a test namespace), its state and IPAM under
//! one directory, served by the real router on a unix socket there. The in-process counterpart of
//! the spawned daemon ([`super::daemon`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnibridge::cnm::{router, server};
use cnibridge::dataplane::Dataplane;
use cnibridge::driver::{Driver, DriverConfig};
use cnibridge::firewall::Firewall;
use cnibridge::ipam::{Ipam, IpamConfig};
use cnibridge::state::StateDir;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::Value;

/// Where an in-process plugin keeps its things, and how its IPAM starts.
pub struct InProcess {
    /// `state/`, `data/` (the host-local store) and the socket live here.
    pub dir: PathBuf,
    /// `--default-pools`, e.g. `10.210.0.0/16:24`.
    pub default_pools: Vec<String>,
    pub cni_conf_dir: PathBuf,
    /// `--cni-export-dir`; None: the daemon's default under the state dir.
    pub export_dir: Option<PathBuf>,
    /// The socket's file name in `dir`.
    pub socket_name: &'static str,
}

impl InProcess {
    pub fn new(dir: &Path) -> InProcess {
        InProcess {
            dir: dir.to_path_buf(),
            default_pools: Vec::new(),
            cni_conf_dir: "/nonexistent/cni-conf".into(),
            export_dir: None,
            socket_name: "cnbt.sock",
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(self.socket_name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Opens the driver from the state dir (as a start of the daemon does) and serves it.
    pub async fn serve<D: Dataplane, F: Firewall>(&self, dp: D, fw: F) -> Served {
        let state = StateDir::open(self.dir.join("state")).expect("state dir");
        let ipam = Ipam::open(IpamConfig {
            state: state.clone(),
            data_dir: self.data_dir(),
            default_pools: self
                .default_pools
                .iter()
                .map(|p| p.parse().expect("default pool"))
                .collect(),
            cni_conf_dir: self.cni_conf_dir.clone(),
        })
        .expect("ipam");
        let driver = match &self.export_dir {
            Some(export_dir) => {
                let cfg = DriverConfig {
                    export_dir: export_dir.clone(),
                };
                Driver::open_with(dp, fw, ipam, state, cfg).await
            }
            None => Driver::open(dp, fw, ipam, state).await,
        }
        .expect("driver");
        let socket = self.socket();
        let listener = server::bind(&socket).await.expect("bind the socket");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            server::serve(listener, &path, router(Arc::new(driver)), async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Served {
            socket,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

/// A driver being served; [`Served::stop`] ends it, as a stop of the daemon does.
pub struct Served {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving and waits until the server has finished.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

pub type UnixClient = Client<UnixConnector, Full<Bytes>>;

pub fn client() -> UnixClient {
    Client::unix()
}

/// POSTs `body` to `path` on `socket` as dockerd does (with its `Accept` header); the status and
/// the answer, which must be JSON.
pub async fn call(client: &UnixClient, socket: &Path, path: &str, body: String) -> (u16, Value) {
    let uri: hyper::Uri = hyperlocal::Uri::new(socket, path).into();
    let req = hyper::Request::post(uri)
        .header("Accept", "application/vnd.docker.plugins.v1.2+json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = client.request(req).await.expect("plugin answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}
