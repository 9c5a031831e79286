//! The command line: every subcommand, flag and default, and how they become the library's
//! configuration.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use cnibridge::ipam::{DefaultPool, DEFAULT_POOLS};
use cnibridge::serve::{FirewallKind, ServeConfig};

#[derive(Parser)]
#[command(
    name = "cnibridge",
    version,
    about = "Docker network + IPAM plugin with CNI bridge/host-local networking"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FirewallArg {
    /// iptables/ip6tables chains beside Docker's (a host where dockerd manages iptables).
    Iptables,
    /// One nftables table, `inet cnibridge` (a host where dockerd runs with `--iptables=false`).
    Nftables,
    /// No rules at all.
    None,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the NetworkDriver and IpamDriver APIs to Docker.
    Serve(ServeArgs),
    /// Re-apply every firewall rule of a running cnibridge (after the firewall was flushed);
    /// sending the daemon SIGHUP does the same.
    FirewallReload(ReloadArgs),
}

/// Where `serve` listens unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/docker/plugins/cnibridge.sock";

#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The socket of the running `cnibridge serve`.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args)]
pub struct ServeArgs {
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
    firewall: FirewallArg,
    /// The dockerd this cnibridge serves (`unix:///path`), asked at start and when dockerd
    /// reconnects which networks it removed while cnibridge was down; `none` turns that off.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    docker_host: String,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info")]
    log_level: String,
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        ServeConfig {
            socket: a.socket,
            state_dir: a.state_dir,
            cni_data_dir: a.cni_data_dir,
            cni_conf_dir: a.cni_conf_dir,
            cni_export_dir: a.cni_export_dir,
            default_pools: a.default_pools,
            firewall: match a.firewall {
                FirewallArg::Iptables => FirewallKind::Iptables,
                FirewallArg::Nftables => FirewallKind::Nftables,
                FirewallArg::None => FirewallKind::None,
            },
            docker_host: a.docker_host,
            log_level: a.log_level,
        }
    }
}
