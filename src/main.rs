//! The `cnibridge` command line. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use cnibridge::cnm::{router, server};
use cnibridge::dataplane::netlink::NetlinkDataplane;
use cnibridge::driver::{Driver, DriverConfig, DEFAULT_EXPORT_SUBDIR};
use cnibridge::firewall::iptables::IptablesFirewall;
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
    Iptables,
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the NetworkDriver and IpamDriver APIs to Docker.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Plugin socket; its base name is the driver and IPAM name Docker uses.
    #[arg(long, default_value = "/run/docker/plugins/cnibridge.sock")]
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
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
    // State is loaded and reconciled before the socket opens, so the first request already
    // sees every network of the earlier life.
    let driver = Driver::open_with(dp, fw, ipam, state, DriverConfig { export_dir })
        .await
        .map_err(|e| e.to_string())?;
    let listener = server::bind(&args.socket)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(socket = %args.socket.display(), "cnibridge serving");
    server::serve(
        listener,
        &args.socket,
        router(Arc::new(driver)),
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!("cnibridge stopped");
    Ok(())
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
