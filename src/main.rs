//! The `cnibridge` command line. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use cnibridge::cnm::{router, server};
use cnibridge::control;
use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::dataplane::Dataplane;
use cnibridge::dockerd::DockerApi;
use cnibridge::driver::{Driver, DriverConfig, ABANDON_GRACE, DEFAULT_EXPORT_SUBDIR};
use cnibridge::firewall::iptables::IptablesFirewall;
use cnibridge::firewall::leftovers;
use cnibridge::firewall::nftables::NftablesFirewall;
use cnibridge::firewall::Firewall;
use cnibridge::firewall::NoFirewall;
use cnibridge::ipam::{DefaultPool, Ipam, IpamConfig, DEFAULT_POOLS};
use cnibridge::state::StateDir;

#[derive(Parser)]
#[command(
    name = "cnibridge",
    version,
    about = "Docker network + IPAM plugin with CNI bridge/host-local networking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FirewallKind {
    /// iptables/ip6tables chains beside Docker's (a host where dockerd manages iptables).
    Iptables,
    /// One nftables table, `inet cnibridge` (a host where dockerd runs with `--iptables=false`).
    Nftables,
    /// No rules at all.
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the NetworkDriver and IpamDriver APIs to Docker.
    Serve(ServeArgs),
    /// Re-apply every firewall rule of a running cnibridge (after the firewall was flushed);
    /// sending the daemon SIGHUP does the same.
    FirewallReload(ReloadArgs),
}

/// Where `serve` listens unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/docker/plugins/cnibridge.sock";

#[derive(clap::Args)]
struct ReloadArgs {
    /// The socket of the running `cnibridge serve`.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Plugin socket; its base name is the driver and IPAM name Docker uses.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where networks, endpoints and pools are remembered.
    #[arg(long, default_value = "/var/lib/cnibridge")]
    state_dir: PathBuf,
    /// host-local data dir: one directory of address files per CNI network.
    #[arg(long, default_value = "/var/lib/cni/networks")]
    cni_data_dir: PathBuf,
    /// CNI config dir that `--ipam-opt cni.conf=NAME` and `-o cni.conf=NAME` select from.
    #[arg(long, default_value = cnibridge::cni::dir::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// Where every network's effective config is written as `<name>.conflist`, for CNI
    /// runtimes that are to attach to the same networks [default: <state-dir>/cni-export].
    #[arg(long)]
    cni_export_dir: Option<PathBuf>,
    /// Pools for networks created without --subnet: BASE/LEN:SIZE, comma-separated.
    #[arg(long, default_value = DEFAULT_POOLS, value_delimiter = ',')]
    default_pools: Vec<DefaultPool>,
    /// Firewall backend.
    #[arg(long, value_enum, default_value = "iptables")]
    firewall: FirewallKind,
    /// The dockerd this cnibridge serves (`unix:///path`), asked at start and when dockerd
    /// reconnects which networks it removed while cnibridge was down; `none` turns that off.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    docker_host: String,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::FirewallReload(args) => match control::firewall_reload(&args.socket) {
            Ok(()) => {
                println!(
                    "cnibridge on {}: firewall rules re-applied",
                    args.socket.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cnibridge: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // Under dockerd (managed plugin) or a service manager stderr is a log file: no colours.
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cnibridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(async {
                match args.firewall {
                    FirewallKind::Iptables => serve(args, IptablesFirewall::default()).await,
                    FirewallKind::Nftables => serve(args, NftablesFirewall::default()).await,
                    FirewallKind::None => serve(args, NoFirewall).await,
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("cnibridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve<F: Firewall>(args: ServeArgs, fw: F) -> Result<(), String> {
    let docker = DockerApi::from_host(&args.docker_host)?;
    // Before the socket exists, so a SIGHUP sent to a daemon that already answers never takes
    // the default action (exit).
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use cnibridge firewall-reload");
            None
        }
    };
    // First of all: a second cnibridge on a live socket must be refused before it touches the
    // firewall or the kernel. Connections made meanwhile wait in the backlog until `serve`.
    let listener = server::bind(&args.socket)
        .await
        .map_err(|e| e.to_string())?;
    let driver = match open_driver(&args, fw).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            let _ = std::fs::remove_file(&args.socket);
            return Err(e);
        }
    };
    match args.firewall {
        FirewallKind::Iptables => leftovers::remove_nftables_table().await,
        FirewallKind::Nftables => leftovers::remove_iptables_rules().await,
        FirewallKind::None => {}
    }
    tracing::info!(socket = %args.socket.display(), "cnibridge serving");
    let reloader = tokio::spawn(reload_on_sighup(driver.clone(), hup));
    // What the earlier life knew, taken before the first request can create anything new.
    let earlier = driver.known().await;
    let forgetter = docker.map(|d| {
        let driver = driver.clone();
        tokio::spawn(async move { driver.forget_loop(&d, earlier).await })
    });
    let collector = {
        let driver = driver.clone();
        tokio::spawn(async move { driver.collect_abandoned_addresses(ABANDON_GRACE).await })
    };
    let served = server::serve(listener, &args.socket, router(driver), shutdown_signal()).await;
    reloader.abort();
    collector.abort();
    if let Some(f) = forgetter {
        f.abort();
    }
    served.map_err(|e| e.to_string())?;
    tracing::info!("cnibridge stopped");
    Ok(())
}

/// Load the state and reconcile it with the kernel and the firewall, before the first request
/// is read, so it already sees every network of the earlier life.
async fn open_driver<F: Firewall>(
    args: &ServeArgs,
    fw: F,
) -> Result<Driver<NetlinkDataplane, F>, String> {
    let state = StateDir::open(&args.state_dir).map_err(|e| e.to_string())?;
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: args.cni_data_dir.clone(),
        default_pools: args.default_pools.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
    })
    .map_err(|e| e.to_string())?;
    let dp = NetlinkDataplane::new().map_err(|e| e.to_string())?;
    let export_dir = args
        .cni_export_dir
        .clone()
        .unwrap_or_else(|| args.state_dir.join(DEFAULT_EXPORT_SUBDIR));
    Driver::open_with(dp, fw, ipam, state, DriverConfig { export_dir })
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon still serves; SIGKILL stops it.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// SIGHUP re-applies every firewall rule, like `cnibridge firewall-reload`. A failure is
/// logged; the daemon keeps serving. The handler is installed before the socket is bound, so a
/// SIGHUP sent to a daemon that already answers never takes the default action (exit).
async fn reload_on_sighup<D: Dataplane, F: Firewall>(
    driver: Arc<Driver<D, F>>,
    hup: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut hup) = hup else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: re-applying firewall rules");
        if let Err(e) = driver.reload_firewall().await {
            tracing::error!(error = %e, "firewall reload failed");
        }
    }
}
