//! CreateNetwork: validate everything, then run the plan (bridge, firewall, pools, export,
//! record), then put the network in the table. Serialised per NetworkID and with its bridge
//! name reserved (see `creating`), so a re-sent create finds the network and two creates
//! cannot take one bridge.

use super::plan::Plan;
use super::*;
use crate::state::records::BridgeChanges;

/// What CreateNetwork's steps share: the record being created (the bridge step learns whether
/// cnibridge made the bridge, which decides its undo) and the firewall intent derived from it.
struct NewNetwork<'d, D, F> {
    driver: &'d Driver<D, F>,
    net: NetworkRecord,
    rules: NetworkRules,
}

/// The pool of one family, if it is ours.
fn pool_of(net: &NetworkRecord, v6: bool) -> Option<String> {
    let fam = if v6 { &net.ipv6 } else { &net.ipv4 };
    fam.as_ref().and_then(|f| f.pool_id.clone())
}

fn create_network_plan<'d, D: Dataplane, F: Firewall>() -> Plan<NewNetwork<'d, D, F>, DriverError> {
    Plan::<NewNetwork<'d, D, F>, DriverError>::new("CreateNetwork")
        .step(
            "ensure bridge",
            |c| {
                Box::pin(async move {
                    let spec = bridge_spec(&c.net);
                    let setting_up = || dp_err(format!("setting up bridge {}", c.net.bridge));
                    // What ensure_bridge will change on a bridge that is there already, by the
                    // same rule it applies, so DeleteNetwork can give the bridge back as it was.
                    let before = c
                        .driver
                        .dp
                        .bridge_addresses(&spec.name)
                        .await
                        .map_err(setting_up())?;
                    let outcome = c
                        .driver
                        .dp
                        .ensure_bridge(&spec)
                        .await
                        .map_err(setting_up())?;
                    c.net.bridge_created = outcome == crate::dataplane::BridgeOutcome::Created;
                    if let (false, Some(before)) = (c.net.bridge_created, before) {
                        if let Ok(plan) = crate::dataplane::plan::plan_addresses(
                            &spec.name,
                            &before,
                            &spec.addresses,
                            spec.force_address,
                        ) {
                            c.net.bridge_changes = BridgeChanges {
                                added: plan.add,
                                removed: plan.remove,
                            };
                        }
                    }
                    Ok(())
                })
            },
            |c| {
                Box::pin(async move {
                    // Only a bridge cnibridge made is its to delete; a borrowed one gets back
                    // what was changed on it.
                    if c.net.bridge_created {
                        c.driver
                            .dp
                            .delete_bridge_if_unused(&c.net.bridge)
                            .await
                            .map_err(dp_err(format!("deleting bridge {}", c.net.bridge)))?;
                    } else {
                        c.driver.restore_borrowed_bridge(&c.net).await?;
                    }
                    Ok(())
                })
            },
        )
        .step(
            "add firewall network",
            |c| {
                Box::pin(async move {
                    c.driver
                        .fw
                        .add_network(&c.rules)
                        .await
                        .map_err(fw_err(format!(
                            "installing firewall rules for bridge {}",
                            c.net.bridge
                        )))
                })
            },
            |c| {
                Box::pin(async move {
                    c.driver
                        .fw
                        .del_network(&c.rules)
                        .await
                        .map_err(fw_err(format!(
                            "removing firewall rules of bridge {}",
                            c.net.bridge
                        )))
                })
            },
        )
        // One step per family, so a failure binding the IPv6 pool unbinds the IPv4 one.
        .step(
            "bind IPv4 pool",
            |c| Box::pin(async move { c.driver.bind_pool(&c.net, false).await }),
            |c| Box::pin(async move { c.driver.unbind_pool(pool_of(&c.net, false)).await }),
        )
        .step(
            "bind IPv6 pool",
            |c| Box::pin(async move { c.driver.bind_pool(&c.net, true).await }),
            |c| Box::pin(async move { c.driver.unbind_pool(pool_of(&c.net, true)).await }),
        )
        .step(
            "export",
            |c| Box::pin(async move { c.driver.export(&c.net).await }),
            |c| {
                Box::pin(async move {
                    // Not in the table yet: another network of that CNI name gets its file back.
                    c.driver.unexport(&c.net).await;
                    Ok(())
                })
            },
        )
        .step(
            "write record",
            |c| {
                Box::pin(async move {
                    let st = &c.driver.state;
                    Ok(st
                        .write_async(NETWORKS, &c.net.id, &c.net, Durability::PowerLoss)
                        .await?)
                })
            },
            |c| {
                Box::pin(async move { Ok(c.driver.state.remove_async(NETWORKS, &c.net.id).await?) })
            },
        )
}

impl<D: Dataplane, F: Firewall> Driver<D, F> {
    /// CreateNetwork: validate everything, then bridge, firewall, pools, export, record, each
    /// undone if a later one fails.
    pub async fn create_network(&self, req: &NetworkSpec) -> Result<(), DriverError> {
        if req.network_id.is_empty() {
            return Err(DriverError::Invalid("NetworkID is missing".into()));
        }
        // A re-sent CreateNetwork waits here for the original, then finds the network.
        let _turn = self.creations.turn(&req.network_id).await;
        if self.entry(&req.network_id).is_some() {
            return Ok(());
        }
        let opts = options::parse(&req.options)?;
        let ipv4 = self.family("IPv4", &req.ipv4, false)?;
        let ipv6 = self.family("IPv6", &req.ipv6, true)?;
        let pool_of = |f: &Option<FamilyData>| {
            f.as_ref()
                .and_then(|f| f.pool_id.as_deref())
                .and_then(|id| self.ipam.pool(id))
        };
        let (pool4, pool6) = (pool_of(&ipv4), pool_of(&ipv6));
        let ours: Vec<_> = pool4.iter().chain(pool6.iter()).cloned().collect();
        let selected = {
            let (dir, o, p) = (
                self.ipam.cni_conf_dir().to_path_buf(),
                opts.clone(),
                ours.clone(),
            );
            blocking_io(move || cni::select(&dir, &o, &p)).await?
        };
        if let Some(sel) = &selected {
            cni::check(sel, ipv4.as_ref(), ipv6.as_ref(), !ours.is_empty(), &opts)?;
        }
        let (bridge, mtu) = match &selected {
            Some(sel) => (
                sel.conf.bridge.clone(),
                (sel.conf.mtu != 0).then_some(sel.conf.mtu),
            ),
            None => (
                opts.bridge
                    .clone()
                    .unwrap_or_else(|| names::default_bridge(&req.network_id)),
                opts.mtu,
            ),
        };
        // Held until the network is in the table, so no other create passes this check.
        let reserved = match self
            .creations
            .reserve(&bridge, &req.network_id, |b| self.network_on_bridge(b))
        {
            Ok(r) => r,
            Err(other) => {
                let how = if selected.is_some() {
                    "set another \"bridge\" in the config"
                } else {
                    "choose another -o bridge=NAME"
                };
                return Err(DriverError::Invalid(format!(
                    "bridge {bridge} is already used by network {}; {how}",
                    short(&other)
                )));
            }
        };
        let data_dir = self.ipam.data_dir().to_path_buf();
        let cni_rec = match &selected {
            Some(sel) => {
                cni::log_unapplied(sel);
                Some(cni::from_conf(sel, &data_dir, opts.internal))
            }
            None => {
                // Not a step with an undo: sharing is what any create of this pair does, a
                // re-sent one included, and the record below names the shared directory.
                self.share_directories(pool4.as_ref(), pool6.as_ref())
                    .await?;
                cni::from_flags(
                    [
                        (ipv4.as_ref(), pool4.as_ref()),
                        (ipv6.as_ref(), pool6.as_ref()),
                    ],
                    &opts,
                    &data_dir,
                )
            }
        };
        let cni_rec = match cni_rec {
            Some(mut c) => {
                c.chain = super::bandwidth::chain_with_options(c.chain, &opts.generic)?;
                Some(c)
            }
            None => None,
        };
        if ours.is_empty() {
            tracing::info!(
                network = short(&req.network_id),
                "addresses come from Docker's IPAM, which keeps no host-local files: a CNI runtime using this network's export would not see them"
            );
        }
        let net = NetworkRecord {
            id: req.network_id.clone(),
            bridge,
            bridge_created: false,
            mtu,
            iface_prefix: opts.iface_prefix,
            internal: opts.internal,
            ipv4,
            ipv6,
            options: opts.generic,
            cni: cni_rec,
            bridge_changes: Default::default(),
        };
        let rules = firewall_rules(&net);
        let mut ctx = NewNetwork {
            driver: self,
            net,
            rules,
        };
        create_network_plan().run(&mut ctx).await?;
        let net = ctx.net;
        tracing::info!(network = short(&net.id), bridge = %net.bridge, created = net.bridge_created, "network created");
        if let Ok(mut map) = self.nets.write() {
            map.insert(net.id.clone(), NetSlot::new(NetState::new(net)));
        }
        drop(reserved);
        Ok(())
    }

    fn network_on_bridge(&self, bridge: &str) -> Option<String> {
        let map = self.nets.read().ok()?;
        map.iter()
            .find(|(_, slot)| slot.bridge == bridge)
            .map(|(id, _)| id.clone())
    }
}
