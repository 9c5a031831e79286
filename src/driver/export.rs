//! The export: every network's effective config as `<export-dir>/<name>.conflist`, written at
//! CreateNetwork (and again at start), removed at DeleteNetwork unless another network of
//! ours has the same CNI name, whose export then takes its place. A CNI runtime pointed at
//! the dir attaches containers to the very same bridge and address store.

use std::path::Path;

use super::{blocking_io, cni, short, Driver, DriverError};
use crate::cni::export;
use crate::dataplane::Dataplane;
use crate::firewall::Firewall;
use crate::ipam::PoolRecord;
use crate::state::records::NetworkRecord;

/// Write the export of `net` (nothing for records without an effective config).
pub(super) fn write_blocking(dir: &Path, net: &NetworkRecord) -> Result<(), DriverError> {
    let Some(c) = &net.cni else {
        return Ok(());
    };
    let conf = cni::to_netconf(c, &net.bridge, net.mtu);
    let text = export::render(&conf, &c.data_dir)?;
    export::write(dir, &c.name, &text)?;
    Ok(())
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// Write the export of `net`; another network of ours with the same CNI name (two configs
    /// sharing a `name`) loses its export to this one, as the newest.
    pub(super) async fn export(&self, net: &NetworkRecord) -> Result<(), DriverError> {
        let (dir, n) = (self.export_dir.clone(), net.clone());
        blocking_io(move || write_blocking(&dir, &n)).await?;
        if let Some(c) = &net.cni {
            tracing::info!(network = short(&net.id), cni_name = %c.name, dir = %self.export_dir.display(), "CNI config exported");
        }
        Ok(())
    }

    /// Remove the export of a network that is gone, or hand the file to another network of
    /// ours with the same CNI name. Best effort: the network is gone either way, and Docker
    /// would only retry a failed DeleteNetwork against a network we no longer know.
    pub(super) async fn unexport(&self, net: &NetworkRecord) {
        let Some(name) = net.cni.as_ref().map(|c| c.name.clone()) else {
            return;
        };
        let heir = self.nets.read().ok().and_then(|m| {
            m.iter()
                .find(|(id, s)| **id != net.id && s.cni_name.as_deref() == Some(name.as_str()))
                .map(|(_, s)| s.clone())
        });
        let result = match heir {
            Some(slot) => {
                let other = slot.lock().await.net.clone();
                self.export(&other).await
            }
            None => {
                let dir = self.export_dir.clone();
                blocking_io(move || Ok(export::remove(&dir, &name)?)).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(network = short(&net.id), error = %e, "cannot update the CNI export");
        }
    }

    /// Dual-stack networks from Docker's flags: one host-local directory for both families
    /// (IPv4's, the IPv6 pool as range set 1), as host-local and the export need.
    pub(super) async fn share_directories(
        &self,
        v4: Option<&PoolRecord>,
        v6: Option<&PoolRecord>,
    ) -> Result<(), DriverError> {
        let (Some(v4), Some(v6)) = (v4, v6) else {
            return Ok(());
        };
        let ipam = self.ipam.clone();
        let (a, b) = (v4.id.clone(), v6.id.clone());
        super::blocking(move || ipam.share_directory(&a, &b)).await?;
        if let Some(moved) = self.ipam.pool(&v6.id) {
            if moved.cni_name != v4.cni_name {
                tracing::warn!(pool = %v6.id, dir = %moved.cni_name, "the IPv6 pool keeps its own directory; a CNI runtime using the export would not see its addresses");
            }
        }
        Ok(())
    }
}
