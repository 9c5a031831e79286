//! The CNI side: network names, the config model of a CNI `bridge` + `host-local` network
//! (`config`, with the IPAM section in `ipam`), selecting a config from a conf dir (`dir`),
//! mapping it onto Docker's one-pool-per-family (`docker`), and exporting a network's
//! effective config as a conflist (`export`).

use ipnet::IpNet;

mod bridge;
pub mod config;
pub mod dir;
mod docker;
mod error;
pub mod export;
mod ipam;
mod json;
#[cfg(test)]
mod tests;

pub use config::{CniVersion, IpamConf, NetConf, RangeConf, RouteConf};
pub use docker::{DockerPools, FamilyPool};
pub use error::CniError;

/// libcni/skel's rule for network names and container ids: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
/// The name becomes a directory under the data dir, so this is also the traversal guard.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The CNI network name of a pool that no config names: stable, valid, and readable
/// (`cnibridge-10.15.20.0-24`, `cnibridge-fd15_30__-64`).
pub fn derived_network_name(pool: &IpNet) -> String {
    let addr = pool.network().to_string().replace(':', "_");
    format!("cnibridge-{addr}-{}", pool.prefix_len())
}
