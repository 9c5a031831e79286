//! The driver of one daemon, opened over the real kernel.

use crate::dataplane::netlink::NetlinkDataplane;
use crate::driver::{Driver, DriverConfig, DEFAULT_EXPORT_SUBDIR};
use crate::firewall::Firewall;
use crate::ipam::{Ipam, IpamConfig};
use crate::state::StateDir;

use super::{ServeConfig, ServeError};

/// Load the state and reconcile it with the kernel and the firewall, before the first request
/// is read, so it already sees every network of the earlier life.
pub(super) async fn open_driver<F: Firewall>(
    config: &ServeConfig,
    fw: F,
) -> Result<Driver<NetlinkDataplane, F>, ServeError> {
    let state = StateDir::open(&config.state_dir)?;
    let ipam = Ipam::open(IpamConfig {
        state: state.clone(),
        data_dir: config.cni_data_dir.clone(),
        default_pools: config.default_pools.clone(),
        cni_conf_dir: config.cni_conf_dir.clone(),
    })?;
    let dp = NetlinkDataplane::new()?;
    let export_dir = config
        .cni_export_dir
        .clone()
        .unwrap_or_else(|| config.state_dir.join(DEFAULT_EXPORT_SUBDIR));
    Ok(Driver::open_with(dp, fw, ipam, state, DriverConfig { export_dir }).await?)
}
