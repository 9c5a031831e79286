//! One running daemon: the socket bound first, the driver opened and reconciled, the firewall
//! of the other backend cleared, the background loops (SIGHUP reload, forgetting what dockerd
//! removed, collecting abandoned addresses) started, the API served until SIGTERM or SIGINT,
//! and the background veth deletions settled before the process exits.

mod open;
mod signals;

use std::path::PathBuf;
use std::sync::Arc;

use crate::cnm::router::router;
use crate::cnm::server::{self, ServerError};
use crate::dataplane::DataplaneError;
use crate::dockerd::DockerApi;
use crate::driver::{DriverError, ABANDON_GRACE};
use crate::firewall::iptables::IptablesFirewall;
use crate::firewall::leftovers;
use crate::firewall::nftables::NftablesFirewall;
use crate::firewall::{Firewall, NoFirewall};
use crate::ipam::{DefaultPool, IpamError};
use crate::state::StateError;

/// Which firewall backend renders the networks' rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallKind {
    Iptables,
    Nftables,
    None,
}

/// What `cnibridge serve` was told (see its flags for the meaning and defaults of each).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// `None`: `<state_dir>/cni-export`.
    pub cni_export_dir: Option<PathBuf>,
    pub default_pools: Vec<DefaultPool>,
    pub firewall: FirewallKind,
    /// `unix:///path`, `/path`, or `none`.
    pub docker_host: String,
    /// A tracing filter; an unreadable one means `info`.
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    DockerHost(String),
    #[error(transparent)]
    Socket(#[from] ServerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Log to stderr, serve until SIGTERM or SIGINT, and return once the daemon has stopped.
/// A failure to serve is also logged; the caller reports it and exits non-zero.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under dockerd (managed plugin) or a service manager stderr is a log file: no colours.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(limit) = server::raise_nofile_limit() {
        tracing::debug!(limit, "open-files limit");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = rt.block_on(async {
        match config.firewall {
            FirewallKind::Iptables => serve(&config, IptablesFirewall::default()).await,
            FirewallKind::Nftables => serve(&config, NftablesFirewall::default()).await,
            FirewallKind::None => serve(&config, NoFirewall).await,
        }
    });
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    result
}

async fn serve<F: Firewall>(config: &ServeConfig, fw: F) -> Result<(), ServeError> {
    let docker = DockerApi::from_host(&config.docker_host).map_err(ServeError::DockerHost)?;
    // Before the socket exists, so a SIGHUP sent to a daemon that already answers never takes
    // the default action (exit).
    let hup = signals::hangup();
    // First of all: a second cnibridge on a live socket must be refused before it touches the
    // firewall or the kernel. Connections made meanwhile wait in the backlog until `serve`.
    let listener = server::bind(&config.socket).await?;
    let driver = match open::open_driver(config, fw).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };
    match config.firewall {
        FirewallKind::Iptables => leftovers::remove_nftables_table().await,
        FirewallKind::Nftables => leftovers::remove_iptables_rules().await,
        FirewallKind::None => {}
    }
    tracing::info!(socket = %config.socket.display(), "cnibridge serving");
    let mut background = vec![tokio::spawn(signals::reload_on_sighup(driver.clone(), hup))];
    // What the earlier life knew, taken before the first request can create anything new.
    let earlier = driver.known().await;
    if let Some(docker) = docker {
        let (d, pools_docker) = (driver.clone(), docker.clone());
        background.push(tokio::spawn(async move {
            d.forget_loop(&docker, earlier).await
        }));
        let d = driver.clone();
        background.push(tokio::spawn(async move {
            d.collect_unused_pools(&pools_docker, ABANDON_GRACE).await
        }));
    }
    {
        let driver = driver.clone();
        background.push(tokio::spawn(async move {
            driver.collect_abandoned_addresses(ABANDON_GRACE).await
        }));
    }
    {
        let driver = driver.clone();
        background.push(tokio::spawn(async move { driver.collect_orphans().await }));
    }
    let served = server::serve(
        listener,
        &config.socket,
        router(driver.clone()),
        signals::shutdown(),
    )
    .await;
    // Stopped (not merely told to) before settling, so no forget can start a veth deletion
    // that the settling would miss.
    for task in &background {
        task.abort();
    }
    for task in background {
        let _ = task.await;
    }
    driver.settle().await;
    served?;
    tracing::info!("cnibridge stopped");
    Ok(())
}
