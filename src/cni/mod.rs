//! The CNI side: network names, the config model of a CNI `bridge` + `host-local` network
//! (`config`, with the IPAM section in `ipam`), selecting a config from a conf dir (`dir`),
//! mapping it onto Docker's one-pool-per-family (`docker`), and exporting a network's
//! effective config as a conflist (`export`).

mod bridge;
pub mod chain;
pub mod config;
pub mod dir;
mod docker;
mod error;
pub mod export;
pub mod flannel;
mod ipam;
mod json;
#[cfg(test)]
mod tests;

pub use config::{CniVersion, IpamConf, NetConf, RangeConf, RouteConf};
pub use docker::{DockerPools, FamilyPool};
pub use error::CniError;

pub use crate::names::{derived_network_name, is_valid_name};
