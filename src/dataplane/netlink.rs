//! rtnetlink implementation of `Dataplane`.
//!
//! Behaviour follows the CNI `bridge` plugin (`ensureBridge`, `ensureAddr`, MAC pinning,
//! forwarding sysctls), with one difference: the veth pair is made whole in the host namespace
//! (host end on the bridge and up, peer down with its final MAC), since Docker moves the peer
//! into the sandbox itself.
//!
//! Namespaces: the netlink socket is bound to the network namespace of the thread that called
//! `NetlinkDataplane::new`, and `/proc/sys/net` resolves against the namespace of the thread
//! that opens it. Both are the host namespace in the daemon, whose threads never `setns`.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use netlink_packet_route::link::{InfoBridge, InfoData, InfoVeth};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

#[path = "bridge_addrs.rs"]
mod bridge_addrs;
use super::batch_delete::BatchDelete;
use super::rtnl::{Link, LinkKind, NlError, NlKind, Rtnl};
use super::{BridgeOutcome, BridgeSpec, Dataplane, DataplaneError, Shaping, VethSpec};

/// A connection whose socket I/O runs on a thread of its own. A netlink `sendmsg` executes the
/// kernel's handler in the caller's context, so a slow `RTM_DELLINK` blocks whichever thread
/// drives the connection; on a runtime worker it would also hold up every task queued there
/// (the answer to the very DeleteEndpoint that started it).
fn connect_on_own_thread() -> Result<Rtnl, DataplaneError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("cnibridge-teardown".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match open_connection() {
                    Ok((mut connection, handle)) => {
                        connection.set_forward_done(true);
                        let _ = tx.send(Ok(handle));
                        // Ends when every handle is dropped.
                        connection.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
    let fail = |reason: String| DataplaneError::Netlink {
        op: "open rtnetlink teardown connection".into(),
        reason,
    };
    spawned.map_err(|e| fail(e.to_string()))?;
    match rx.recv() {
        Ok(Ok(handle)) => Ok(Rtnl::new(handle)),
        Ok(Err(e)) => Err(fail(e)),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// The real dataplane: one rtnetlink connection for building, its handle cloned per request,
/// and a second one for deleting links.
#[derive(Clone)]
pub struct NetlinkDataplane {
    rtnl: Rtnl,
    /// Deleting a veth costs the kernel 15–20 ms (RCU grace periods while the device is
    /// unregistered); on its own socket and thread that wait never queues a Join's
    /// `RTM_NEWLINK` or an HTTP answer behind it.
    teardown: Rtnl,
    /// Link deletions, on the teardown connection, coalesced into group deletes.
    deletions: BatchDelete,
    proc_sys: PathBuf,
}

type Connection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// A new rtnetlink connection asking the kernel to honour the filters of our GET requests
/// (`NETLINK_GET_STRICT_CHK`, Linux 4.20+): an address dump for one ifindex then walks that
/// link only, instead of sending every address of every bridge to be dropped here, a cost
/// that grew with the number of networks. Older kernels refuse the option; the userspace
/// filters in `Rtnl` still apply there.
fn open_connection() -> std::io::Result<(Connection, Handle)> {
    use rtnetlink::sys::AsyncSocket;
    let (mut connection, handle, _) = rtnetlink::new_connection()?;
    if let Err(e) = connection
        .socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true)
    {
        tracing::debug!(error = %e, "NETLINK_GET_STRICT_CHK refused; dumps are filtered here");
    }
    Ok((connection, handle))
}

fn connect(runtime: &tokio::runtime::Handle) -> Result<Rtnl, DataplaneError> {
    let (mut connection, handle) = open_connection().map_err(|e| DataplaneError::Netlink {
        op: "open rtnetlink connection".into(),
        reason: e.to_string(),
    })?;
    // Forward NLMSG_DONE so dumps can see NLM_F_DUMP_INTR, which the kernel may set on the
    // DONE message only.
    connection.set_forward_done(true);
    runtime.spawn(connection);
    Ok(Rtnl::new(handle))
}

impl NetlinkDataplane {
    /// Open the rtnetlink connection and spawn its task on the current tokio runtime.
    ///
    /// Must be called from inside a tokio runtime, on a thread in the namespace the dataplane
    /// is to manage (the socket stays bound to it).
    pub fn new() -> Result<Self, DataplaneError> {
        // Checked first: creating the socket registers it with the reactor and would panic
        // outside a runtime.
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| DataplaneError::Netlink {
                op: "open rtnetlink connection".into(),
                reason: format!("no tokio runtime on this thread: {e}"),
            })?;
        let teardown = connect_on_own_thread()?;
        Ok(NetlinkDataplane {
            rtnl: connect(&runtime)?,
            deletions: BatchDelete::new(teardown.clone()),
            teardown,
            proc_sys: PathBuf::from("/proc/sys"),
        })
    }

    /// Use another root for the forwarding sysctls than `/proc/sys` (e.g. a writable mount in
    /// a managed-plugin sandbox, where `/proc/sys` is read-only).
    pub fn with_proc_sys(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_sys = root.into();
        self
    }

    /// Find the bridge, create it if missing, and make sure it is up.
    async fn bridge_link(
        &self,
        spec: &BridgeSpec,
    ) -> Result<(Link, BridgeOutcome), DataplaneError> {
        let name = &spec.name;
        if let Some(link) = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(format!("look up bridge {name}"), e))?
        {
            let link = self.adopt_bridge(link).await?;
            return Ok((link, BridgeOutcome::Existed));
        }
        // Docker's FORWARD DROP, icc=false and our forward rules only see frames between two
        // ports of one bridge if br_netfilter hands them to iptables; asking for it per bridge
        // keeps that true without changing the host-wide sysctl (inert without br_netfilter).
        let mut create = LinkBridge::new(name)
            .append_info_data(InfoBridge::NfCallIpTables(true))
            .append_info_data(InfoBridge::NfCallIp6Tables(true));
        if let Some(mtu) = spec.mtu {
            create = create.mtu(mtu);
        }
        let outcome = match self.rtnl.add_link(create.build()).await {
            Ok(()) => BridgeOutcome::Created,
            // Lost a race with another creator (another network on the same bridge, or a CNI
            // plugin): adopt what is there, as CNI's ensureBridge does.
            Err(e) if e.kind == NlKind::Exists => BridgeOutcome::Existed,
            Err(e) => return Err(op_err(format!("create bridge {name}"), e)),
        };
        // The index and MAC are only known after creation; one lookup serves both.
        let link = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(format!("look up bridge {name}"), e))?
            .ok_or_else(|| DataplaneError::NotFound(name.clone()))?;
        let link = self.adopt_bridge(link).await?;
        Ok((link, outcome))
    }

    /// Check an existing link is a bridge and bring it up.
    async fn adopt_bridge(&self, link: Link) -> Result<Link, DataplaneError> {
        if link.kind != LinkKind::Bridge {
            return Err(DataplaneError::WrongKind {
                name: link.name,
                wanted: "bridge",
            });
        }
        if !link.up {
            self.rtnl
                .set_up(link.index)
                .await
                .map_err(|e| op_err(format!("set bridge {} up", link.name), e))?;
        }
        Ok(link)
    }

    /// Whether `host` is the complete, attached pair this spec asks for.
    async fn pair_matches(
        &self,
        spec: &VethSpec,
        bridge: &Link,
        host: &Link,
    ) -> Result<bool, DataplaneError> {
        if host.controller != Some(bridge.index) || host.peer_in_other_netns {
            return Ok(false);
        }
        let peer = self
            .rtnl
            .link_by_name(&spec.peer_name)
            .await
            .map_err(|e| op_err(format!("look up veth peer {}", spec.peer_name), e))?;
        Ok(matches!(peer, Some(p) if p.kind == LinkKind::Veth && Some(p.index) == host.peer_index))
    }

    /// The slow path of `create_veth`, after EEXIST: keep a complete pair, remove our stale
    /// halves, refuse to touch links of another kind.
    async fn repair_veth(&self, spec: &VethSpec, bridge: &Link) -> Result<bool, DataplaneError> {
        let host = self
            .rtnl
            .link_by_name(&spec.host_name)
            .await
            .map_err(|e| op_err(format!("look up veth {}", spec.host_name), e))?;
        if let Some(host) = host {
            if host.kind != LinkKind::Veth {
                return Err(DataplaneError::WrongKind {
                    name: host.name,
                    wanted: "veth",
                });
            }
            if self.pair_matches(spec, bridge, &host).await? {
                if !host.up {
                    self.rtnl
                        .set_up(host.index)
                        .await
                        .map_err(|e| op_err(format!("set veth {} up", host.name), e))?;
                }
                return Ok(true);
            }
            tracing::info!(veth = %spec.host_name, "removing stale veth before recreating it");
            self.delete_link(&spec.host_name).await?;
        }
        // Deleting the host end took its own peer with it; whatever still holds the peer name
        // is another leftover.
        if let Some(peer) = self
            .rtnl
            .link_by_name(&spec.peer_name)
            .await
            .map_err(|e| op_err(format!("look up veth peer {}", spec.peer_name), e))?
        {
            if peer.kind != LinkKind::Veth {
                return Err(DataplaneError::WrongKind {
                    name: peer.name,
                    wanted: "veth",
                });
            }
            tracing::info!(veth = %spec.peer_name, "removing stale veth peer before recreating it");
            self.delete_link(&spec.peer_name).await?;
        }
        Ok(false)
    }
}

impl NetlinkDataplane {
    /// Set the hairpin flag of the bridge port `name`.
    async fn set_hairpin(&self, name: &str, on: bool) -> Result<(), DataplaneError> {
        let op = || {
            format!(
                "set hairpin mode {} on bridge port {name}",
                if on { "on" } else { "off" }
            )
        };
        let link = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(op(), e))?
            .ok_or_else(|| DataplaneError::NotFound(name.to_string()))?;
        self.rtnl
            .set_hairpin(link.index, on)
            .await
            .map_err(|e| op_err(op(), e))
    }
}

impl Dataplane for NetlinkDataplane {
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<BridgeOutcome, DataplaneError> {
        let (bridge, outcome) = self.bridge_link(spec).await?;
        let result = self.configure_bridge(spec, &bridge, outcome).await;
        // A bridge made by this call and then not set up is nobody's: the caller's plan has no
        // step to undo yet, so it goes here.
        if result.is_err() && outcome == BridgeOutcome::Created {
            if let Err(e) = self.rtnl.del_link(bridge.index).await {
                tracing::warn!(bridge = %bridge.name, error = %e, "cannot delete the half-made bridge");
            }
        }
        result
    }

    async fn bridge_addresses(&self, name: &str) -> Result<Option<Vec<IpNet>>, DataplaneError> {
        self.addresses_of_bridge(name).await
    }

    async fn restore_bridge_addresses(
        &self,
        name: &str,
        remove: &[IpNet],
        add: &[IpNet],
    ) -> Result<(), DataplaneError> {
        self.give_back(name, remove, add).await
    }

    async fn delete_bridge_if_unused(&self, name: &str) -> Result<bool, DataplaneError> {
        let Some(link) = self
            .rtnl
            .link_by_name(name)
            .await
            .map_err(|e| op_err(format!("look up bridge {name}"), e))?
        else {
            return Ok(false);
        };
        if link.kind != LinkKind::Bridge {
            return Err(DataplaneError::WrongKind {
                name: link.name,
                wanted: "bridge",
            });
        }
        let ports = self
            .rtnl
            .links_with_controller(link.index)
            .await
            .map_err(|e| op_err(format!("list ports of bridge {name}"), e))?;
        if let Some(port) = ports.first() {
            tracing::debug!(bridge = name, port = %port.name, ports = ports.len(), "bridge still has ports; keeping it");
            return Ok(false);
        }
        match self.rtnl.del_link(link.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind == NlKind::NotFound => Ok(false),
            Err(e) => Err(op_err(format!("delete bridge {name}"), e)),
        }
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<(), DataplaneError> {
        let bridge = self
            .rtnl
            .link_by_name(&spec.bridge)
            .await
            .map_err(|e| op_err(format!("look up bridge {}", spec.bridge), e))?
            .ok_or_else(|| DataplaneError::NotFound(spec.bridge.clone()))?;
        if bridge.kind != LinkKind::Bridge {
            return Err(DataplaneError::WrongKind {
                name: bridge.name,
                wanted: "bridge",
            });
        }
        // Hot path: one RTM_NEWLINK creates both ends, sets MTUs and the peer MAC, enslaves
        // the host end and brings it up; the kernel undoes the whole pair if enslaving fails.
        let op = || {
            format!(
                "create veth {} (peer {}) on bridge {}",
                spec.host_name, spec.peer_name, spec.bridge
            )
        };
        let created = match self.rtnl.add_link(veth_message(spec, bridge.index)).await {
            Ok(()) => true,
            Err(e) if e.kind == NlKind::Exists => false,
            Err(e) => return Err(op_err(op(), e)),
        };
        if !created && !self.repair_veth(spec, &bridge).await? {
            self.rtnl
                .add_link(veth_message(spec, bridge.index))
                .await
                .map_err(|e| op_err(op(), e))?;
        }
        // A new port starts with hairpin off, so only "on" costs requests; a kept pair is set
        // either way, as the CNI plugin sets the flag on/off at every ADD.
        if spec.hairpin || !created {
            self.set_hairpin(&spec.host_name, spec.hairpin).await?;
        }
        if !created && spec.peer_tuning != Default::default() {
            // A kept pair may come from a Join with other tuning; the peer is still ours, in
            // the host namespace.
            self.rtnl
                .set_link(peer_settings(LinkUnspec::new_with_name(&spec.peer_name), spec).build())
                .await
                .map_err(|e| op_err(format!("tune veth peer {}", spec.peer_name), e))?;
        }
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), DataplaneError> {
        self.deletions
            .delete(name)
            .await
            .map_err(|e| op_err(format!("delete link {name}"), e))
    }

    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, DataplaneError> {
        let op = || format!("list ports of bridge {bridge}");
        let Some(link) = self
            .rtnl
            .link_by_name(bridge)
            .await
            .map_err(|e| op_err(op(), e))?
        else {
            return Ok(Vec::new());
        };
        let ports = self
            .rtnl
            .links_with_controller(link.index)
            .await
            .map_err(|e| op_err(op(), e))?;
        Ok(ports.into_iter().map(|l| l.name).collect())
    }

    async fn link_exists(&self, name: &str) -> Result<bool, DataplaneError> {
        self.rtnl
            .link_by_name(name)
            .await
            .map(|l| l.is_some())
            .map_err(|e| op_err(format!("look up link {name}"), e))
    }

    async fn set_hairpin(&self, port: &str, on: bool) -> Result<(), DataplaneError> {
        let op = || {
            format!(
                "set hairpin {} on bridge port {port}",
                if on { "on" } else { "off" }
            )
        };
        let link = self
            .rtnl
            .link_by_name(port)
            .await
            .map_err(|e| op_err(op(), e))?
            .ok_or_else(|| DataplaneError::NotFound(port.to_string()))?;
        self.rtnl
            .set_port(
                rtnetlink::LinkBridgePort::new(link.index)
                    .hairpin(on)
                    .build(),
            )
            .await
            .map_err(|e| op_err(op(), e))
    }

    async fn set_shaping(
        &self,
        host_veth: &str,
        ifb: &str,
        shaping: &Shaping,
    ) -> Result<(), DataplaneError> {
        super::shaping::apply(&self.rtnl, &self.teardown, host_veth, ifb, shaping).await
    }

    async fn set_sysctls(
        &self,
        netns: &Path,
        sysctls: &[(String, String)],
    ) -> Result<(), DataplaneError> {
        if sysctls.is_empty() {
            return Ok(());
        }
        super::sysctl::write_in_netns(netns, &self.proc_sys, sysctls)
            .await
            .map_err(DataplaneError::from)
    }
}

/// The single `RTM_NEWLINK` that creates a whole pair: host end with MTU, master and up; the
/// peer (nested `VETH_INFO_PEER`, which the kernel reads as its own link message) with MTU and
/// MAC, left down.
fn veth_message(spec: &VethSpec, bridge_index: u32) -> netlink_packet_route::link::LinkMessage {
    let peer = peer_settings(
        LinkMessageBuilder::<LinkUnspec>::new().name(spec.peer_name.clone()),
        spec,
    );
    let mut host = LinkVeth::new(&spec.host_name, &spec.peer_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .controller(bridge_index)
        .up();
    if let Some(mtu) = spec.mtu {
        host = host.mtu(mtu);
    }
    host.build()
}

/// The container end's MTU, MAC and CNI `tuning` (whose `mtu` wins over the network's), on a
/// link message for it.
fn peer_settings(
    mut peer: LinkMessageBuilder<LinkUnspec>,
    spec: &VethSpec,
) -> LinkMessageBuilder<LinkUnspec> {
    let t = &spec.peer_tuning;
    if let Some(mtu) = t.mtu.or(spec.mtu) {
        peer = peer.mtu(mtu);
    }
    if let Some(mac) = spec.peer_mac {
        peer = peer.address(mac.to_vec());
    }
    if let Some(on) = t.promisc {
        peer = peer.promiscuous(on);
    }
    if let Some(on) = t.allmulti {
        peer = peer.allmulticast(on);
    }
    if let Some(len) = t.tx_qlen {
        peer = peer.txqueuelen(len);
    }
    peer
}

/// Write 1 to a forwarding sysctl unless it already holds 1. Failures only warn: in Docker's
/// managed-plugin sandbox `/proc/sys` is read-only and the operator enables forwarding.
///
/// Deliberately blocking `std::fs` on the calling thread: `/proc/sys/net` shows the namespace
/// of the thread that opens it, and `tokio::fs` would open it on a blocking-pool thread.
fn enable_forwarding(path: &Path) {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read forwarding sysctl; containers may not reach beyond the bridge");
            return;
        }
    }
    if let Err(e) = std::fs::write(path, b"1") {
        tracing::warn!(path = %path.display(), error = %e, "cannot enable forwarding; enable it on the host or containers cannot reach beyond the bridge");
    }
}

/// A failed request, with what was being done; the kinds callers act on were handled before.
fn op_err(op: String, e: NlError) -> DataplaneError {
    DataplaneError::Netlink {
        op,
        reason: e.detail,
    }
}
