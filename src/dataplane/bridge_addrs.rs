//! A bridge's addresses, as the CNI `bridge` plugin's `ensureAddr` handles them, and giving a
//! borrowed bridge back as it was.

use ipnet::IpNet;
use rtnetlink::LinkUnspec;

use super::super::plan::plan_addresses;
use super::super::rtnl::{Link, LinkKind, NlKind};
use super::super::{BridgeOutcome, BridgeSpec, DataplaneError};
use super::{enable_forwarding, op_err, NetlinkDataplane};

impl NetlinkDataplane {
    /// Put the wanted addresses on the bridge, first removing conflicting ones if `force`;
    /// returns whether any was added.
    pub(super) async fn ensure_addresses(
        &self,
        bridge: &Link,
        wanted: &[IpNet],
        force: bool,
    ) -> Result<bool, DataplaneError> {
        let existing = self
            .rtnl
            .addresses(bridge.index)
            .await
            .map_err(|e| op_err(format!("list addresses of bridge {}", bridge.name), e))?;
        let plan = plan_addresses(&bridge.name, &existing, wanted, force)?;
        for addr in &plan.remove {
            tracing::info!(bridge = %bridge.name, address = %addr, "forceAddress: removing the bridge's conflicting address");
            match self.rtnl.del_address(bridge.index, *addr).await {
                Ok(()) => {}
                Err(e) if e.kind == NlKind::NotFound => {}
                Err(e) => {
                    return Err(op_err(
                        format!("remove address {addr} from bridge {}", bridge.name),
                        e,
                    ))
                }
            }
        }
        let missing = plan.add;
        for addr in &missing {
            match self.rtnl.add_address(bridge.index, *addr).await {
                Ok(()) => {}
                Err(e) if e.kind == NlKind::Exists => {}
                Err(e) => {
                    return Err(op_err(
                        format!("add address {addr} to bridge {}", bridge.name),
                        e,
                    ))
                }
            }
        }
        Ok(!missing.is_empty())
    }

    /// Set the bridge MAC to its current value. The kernel then marks it user-set
    /// (`addr_assign_type` 3) and stops deriving it from the lowest port MAC, which otherwise
    /// changes the gateway MAC whenever a container joins or leaves (CNI, kubernetes#30783).
    pub(super) async fn pin_mac(&self, bridge: &Link) -> Result<(), DataplaneError> {
        let Some(mac) = bridge.mac.clone() else {
            return Ok(());
        };
        self.rtnl
            .set_link(
                LinkUnspec::new_with_index(bridge.index)
                    .address(mac)
                    .build(),
            )
            .await
            .map_err(|e| op_err(format!("pin MAC of bridge {}", bridge.name), e))
    }

    /// Promiscuity and addresses of the bridge `ensure_bridge` found or made.
    pub(super) async fn configure_bridge(
        &self,
        spec: &BridgeSpec,
        bridge: &Link,
        outcome: BridgeOutcome,
    ) -> Result<BridgeOutcome, DataplaneError> {
        if spec.promisc && !bridge.promisc {
            self.rtnl
                .set_link(
                    LinkUnspec::new_with_index(bridge.index)
                        .promiscuous(true)
                        .build(),
                )
                .await
                .map_err(|e| op_err(format!("set bridge {} promiscuous", bridge.name), e))?;
        }
        if spec.addresses.is_empty() {
            return Ok(outcome);
        }
        if self
            .ensure_addresses(bridge, &spec.addresses, spec.force_address)
            .await?
        {
            // As in CNI, pinning happens only when an address was added, so a bridge adopted
            // with its addresses in place costs no write.
            self.pin_mac(bridge).await?;
        }
        if spec.addresses.iter().any(|a| matches!(a, IpNet::V4(_))) {
            enable_forwarding(&self.proc_sys.join("net/ipv4/ip_forward"));
        }
        if spec.addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
            enable_forwarding(&self.proc_sys.join("net/ipv6/conf/all/forwarding"));
        }
        Ok(outcome)
    }

    /// `Dataplane::bridge_addresses`.
    pub(super) async fn addresses_of_bridge(
        &self,
        name: &str,
    ) -> Result<Option<Vec<IpNet>>, DataplaneError> {
        let Some(link) = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(format!("look up bridge {name}"), e))?
        else {
            return Ok(None);
        };
        if link.kind != LinkKind::Bridge {
            return Ok(None);
        }
        let addrs = self
            .rtnl
            .addresses(link.index)
            .await
            .map_err(|e| op_err(format!("list addresses of bridge {name}"), e))?;
        Ok(Some(addrs))
    }

    /// `Dataplane::restore_bridge_addresses`.
    pub(super) async fn give_back(
        &self,
        name: &str,
        remove: &[IpNet],
        add: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let Some(link) = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(format!("look up bridge {name}"), e))?
        else {
            return Ok(());
        };
        // Only what is there is removed: the kernel answers a missing address EADDRNOTAVAIL.
        let have = self
            .rtnl
            .addresses(link.index)
            .await
            .map_err(|e| op_err(format!("list addresses of bridge {name}"), e))?;
        for addr in remove.iter().filter(|a| have.contains(a)) {
            match self.rtnl.del_address(link.index, *addr).await {
                Ok(()) => {}
                Err(e) if e.kind == NlKind::NotFound => {}
                Err(e) => return Err(op_err(format!("remove {addr} from bridge {name}"), e)),
            }
        }
        for addr in add {
            match self.rtnl.add_address(link.index, *addr).await {
                Ok(()) => {}
                Err(e) if e.kind == NlKind::Exists => {}
                Err(e) => return Err(op_err(format!("put {addr} back on bridge {name}"), e)),
            }
        }
        Ok(())
    }
}
