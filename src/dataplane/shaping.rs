//! CNI `bandwidth` in the kernel: the tc objects the plugin makes (`ifb_creator.go`), encoded
//! as rtnetlink messages, and the one verb that makes an endpoint's shaping exactly what it
//! should be.
//!
//! - into the container (`ingress`): a TBF root qdisc on the host end;
//! - out of it (`egress`): an ingress qdisc (`ffff:`) on the host end whose u32 filter matches
//!   every frame and redirects it (mirred, egress redirect) to an ifb device, which carries a
//!   TBF root qdisc.
//!
//! netlink-packet-route knows ingress, u32 and mirred but not TBF, whose `TCA_OPTIONS` are
//! encoded here (`struct tc_tbf_qopt`, `linux/pkt_sched.h`).

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::LinkIfb;

use super::rtnl::{LinkKind, NlError, NlKind, Rtnl};
use super::{DataplaneError, Shaping, TokenBucket};

/// The queueing latency the bandwidth plugin sizes the TBF queue for (`latencyInMillis`).
const LATENCY_US: u64 = 25_000;
/// Length of a packet-scheduler tick: `PSCHED_SHIFT` has been 6 since Linux 2.6.24, so a tick
/// is 64 ns (the second field of `/proc/net/psched`), and TBF's `buffer` is counted in them.
const TICK_NS: u64 = 64;
/// `TCA_TBF_PARMS`, `TCA_TBF_RATE64` (`linux/pkt_sched.h`).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
/// `TC_LINKLAYER_ETHERNET`: what iproute2 puts in a rate spec for a veth or ifb.
const LINKLAYER_ETHERNET: u8 = 1;
/// `ETH_P_ALL`: the redirect filter takes every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// Priority of the redirect filter, as the bandwidth plugin sets it.
const FILTER_PRIO: u16 = 1;
/// The redirect filter's handle, `800::800`: the first node of the root hash table u32 makes on
/// a fresh ingress qdisc. Naming it makes `NLM_F_REPLACE` replace the filter on a repeated call
/// instead of adding a second one.
const FILTER_HANDLE: u32 = 0x8000_0800;

/// A TBF qdisc's parameters in the kernel's units, computed as the bandwidth plugin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tbf {
    /// Bytes per second.
    pub(crate) rate: u64,
    /// Bytes that may be queued: what the rate drains in 25 ms, plus the burst.
    pub(crate) limit: u32,
    /// The bucket size as transmit time at `rate`, in scheduler ticks.
    pub(crate) buffer: u32,
}

impl Tbf {
    /// `createTBF`: rate and burst arrive in bits; the kernel wants bytes, and the burst as
    /// the time the rate needs to send it (`tc.Xmittime`).
    pub(crate) fn from_bucket(what: &str, bucket: &TokenBucket) -> Result<Tbf, DataplaneError> {
        let rate = bucket.rate / 8;
        let burst = bucket.burst / 8;
        if rate == 0 || burst == 0 {
            return Err(DataplaneError::Netlink {
                op: format!("shape {what}"),
                reason: format!(
                    "rate {} bits/s with burst {} bits is below one byte; give the bandwidth plugin a rate and burst of at least 8 bits",
                    bucket.rate, bucket.burst
                ),
            });
        }
        let xmit_us = burst.saturating_mul(1_000_000) / rate;
        let buffer = xmit_us.saturating_mul(1000) / TICK_NS;
        let limit = rate.saturating_mul(LATENCY_US) / 1_000_000 + burst;
        Ok(Tbf {
            rate,
            limit: clamp_u32(limit),
            buffer: clamp_u32(buffer),
        })
    }

    /// `TCA_OPTIONS` of the qdisc: `struct tc_tbf_qopt`, plus `TCA_TBF_RATE64` when the rate
    /// does not fit the struct's 32 bits.
    fn options(&self) -> Vec<TcOption> {
        let mut qopt = Vec::with_capacity(36);
        // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align, mpu, rate.
        qopt.extend_from_slice(&[0, LINKLAYER_ETHERNET]);
        qopt.extend_from_slice(&0u16.to_ne_bytes());
        qopt.extend_from_slice(&0i16.to_ne_bytes());
        qopt.extend_from_slice(&0u16.to_ne_bytes());
        qopt.extend_from_slice(&clamp_u32(self.rate).to_ne_bytes());
        // struct tc_ratespec peakrate: none.
        qopt.extend_from_slice(&[0u8; 12]);
        qopt.extend_from_slice(&self.limit.to_ne_bytes());
        qopt.extend_from_slice(&self.buffer.to_ne_bytes());
        // mtu: only used with a peak rate.
        qopt.extend_from_slice(&0u32.to_ne_bytes());
        let mut options = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt))];
        if self.rate > u64::from(u32::MAX) {
            options.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        options
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `tc qdisc replace dev <index> root handle 1: tbf ...`.
pub(crate) fn tbf_qdisc(index: u32, tbf: &Tbf) -> TcMessage {
    let mut msg = TcMessage::with_index(index_i32(index));
    msg.header.parent = TcHandle::ROOT;
    msg.header.handle = TcHandle { major: 1, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes.push(TcAttribute::Options(tbf.options()));
    msg
}

/// `tc qdisc replace dev <index> ingress` (handle `ffff:`).
pub(crate) fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index_i32(index));
    msg.header.parent = TcHandle::INGRESS;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    msg
}

/// The root qdisc, or the ingress qdisc, of a link, for deletion (whatever its handle).
pub(crate) fn qdisc_at(index: u32, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::with_index(index_i32(index));
    msg.header.parent = parent;
    msg
}

/// `tc filter replace dev <index> parent ffff: protocol all prio 1 handle 800::800 u32 match
/// u32 0 0 action mirred egress redirect dev <ifb>`.
pub(crate) fn redirect_filter(index: u32, ifb_index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index_i32(index));
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.header.handle = TcHandle::from(FILTER_HANDLE);
    // tcm_info: priority in the upper half, the protocol in network byte order in the lower.
    msg.header.info = u32::from(FILTER_PRIO) << 16 | u32::from(ETH_P_ALL.to_be());

    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    // Mask 0 at offset 0: every frame matches.
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifb_index;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    msg.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    msg
}

/// Interface indexes are positive `int`s in the kernel; tc headers carry them signed.
fn index_i32(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// Make the shaping of `host_veth` exactly `shaping` (see `Dataplane::set_shaping`). An ifb
/// no longer needed is deleted over `teardown`, the connection whose thread may wait out the
/// kernel's slow link deletion.
pub(crate) async fn apply(
    rtnl: &Rtnl,
    teardown: &Rtnl,
    host_veth: &str,
    ifb: &str,
    shaping: &Shaping,
) -> Result<(), DataplaneError> {
    let op = |what: &str| format!("{what} of veth {host_veth}");
    let host = rtnl
        .link_by_name(host_veth)
        .await
        .map_err(|e| nl_err(op("look up for shaping"), e))?
        .ok_or_else(|| DataplaneError::NotFound(host_veth.to_string()))?;
    for (direction, bucket) in [("ingress", &shaping.ingress), ("egress", &shaping.egress)] {
        if let (Some(b), Some(mtu)) = (bucket, host.mtu) {
            // TBF drops any packet larger than its bucket that it cannot segment.
            if b.burst / 8 < u64::from(mtu) {
                tracing::warn!(veth = host_veth, direction, burst_bits = b.burst, mtu, "bandwidth burst is smaller than one full-size packet; such packets are dropped: raise the burst to at least 8 x MTU bits");
            }
        }
    }

    match &shaping.ingress {
        Some(bucket) => {
            let tbf = Tbf::from_bucket(&format!("ingress of {host_veth}"), bucket)?;
            replace(
                rtnl,
                RouteNetlinkMessage::NewQueueDiscipline(tbf_qdisc(host.index, &tbf)),
            )
            .await
            .map_err(|e| nl_err(op("set the ingress rate (tbf root qdisc)"), e))?;
        }
        None => delete(rtnl, qdisc_at(host.index, TcHandle::ROOT))
            .await
            .map_err(|e| nl_err(op("remove the ingress rate (root qdisc)"), e))?,
    }

    let Some(bucket) = &shaping.egress else {
        delete(rtnl, qdisc_at(host.index, TcHandle::INGRESS))
            .await
            .map_err(|e| nl_err(op("remove the egress redirect (ingress qdisc)"), e))?;
        return match teardown.del_link_by_name(ifb).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == NlKind::NotFound => Ok(()),
            Err(e) => Err(nl_err(format!("delete ifb {ifb}"), e)),
        };
    };
    let tbf = Tbf::from_bucket(&format!("egress of {host_veth}"), bucket)?;
    let ifb_index = ensure_ifb(rtnl, ifb, host.mtu).await?;
    // Shape the ifb before anything is redirected to it.
    replace(
        rtnl,
        RouteNetlinkMessage::NewQueueDiscipline(tbf_qdisc(ifb_index, &tbf)),
    )
    .await
    .map_err(|e| {
        nl_err(
            format!("set the egress rate (tbf root qdisc) of ifb {ifb}"),
            e,
        )
    })?;
    replace(
        rtnl,
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(host.index)),
    )
    .await
    .map_err(|e| nl_err(op("add the ingress qdisc"), e))?;
    replace(
        rtnl,
        RouteNetlinkMessage::NewTrafficFilter(redirect_filter(host.index, ifb_index)),
    )
    .await
    .map_err(|e| nl_err(op(&format!("redirect the traffic to ifb {ifb}")), e))?;
    Ok(())
}

/// The ifb device, up, with the host end's MTU; returns its index. An existing ifb of that name
/// (a repeated call) is kept; a link of another kind is refused.
async fn ensure_ifb(rtnl: &Rtnl, ifb: &str, mtu: Option<u32>) -> Result<u32, DataplaneError> {
    let lookup = || async {
        rtnl.link_by_name(ifb)
            .await
            .map_err(|e| nl_err(format!("look up ifb {ifb}"), e))
    };
    if lookup().await?.is_none() {
        let mut create = LinkIfb::new(ifb).up();
        if let Some(mtu) = mtu {
            create = create.mtu(mtu);
        }
        match rtnl.add_link(create.build()).await {
            Ok(()) => {}
            Err(e) if e.kind == NlKind::Exists => {}
            Err(e) => return Err(nl_err(format!("create ifb {ifb}"), e)),
        }
    }
    let link = lookup()
        .await?
        .ok_or_else(|| DataplaneError::NotFound(ifb.to_string()))?;
    if link.kind != LinkKind::Other("ifb".into()) {
        return Err(DataplaneError::WrongKind {
            name: link.name,
            wanted: "ifb",
        });
    }
    if !link.up || (mtu.is_some() && link.mtu != mtu) {
        let mut set = rtnetlink::LinkUnspec::new_with_index(link.index).up();
        if let Some(mtu) = mtu {
            set = set.mtu(mtu);
        }
        rtnl.set_link(set.build())
            .await
            .map_err(|e| nl_err(format!("set ifb {ifb} up"), e))?;
    }
    Ok(link.index)
}

/// `NLM_F_CREATE | NLM_F_REPLACE`: create, or replace what is there.
async fn replace(rtnl: &Rtnl, msg: RouteNetlinkMessage) -> Result<(), NlError> {
    rtnl.tc(msg, NLM_F_CREATE | NLM_F_REPLACE).await
}

/// Delete a qdisc; one that is not there (the device's default) is fine.
async fn delete(rtnl: &Rtnl, msg: TcMessage) -> Result<(), NlError> {
    match rtnl
        .tc(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
        .await
    {
        Err(e) if e.kind != NlKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn nl_err(op: String, e: NlError) -> DataplaneError {
    DataplaneError::Netlink {
        op,
        reason: e.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Nla};

    fn bucket(rate: u64, burst: u64) -> TokenBucket {
        TokenBucket { rate, burst }
    }

    #[test]
    fn tbf_parameters_follow_the_bandwidth_plugin() {
        // 8 Mbit/s, 80 kbit burst: 1 MB/s, 10 kB burst = 10 ms = 156250 ticks of 64 ns; the
        // queue holds 25 ms at the rate plus the burst.
        let tbf = Tbf::from_bucket("x", &bucket(8_000_000, 80_000)).unwrap();
        assert_eq!(
            tbf,
            Tbf {
                rate: 1_000_000,
                limit: 25_000 + 10_000,
                buffer: 156_250,
            }
        );
    }

    #[test]
    fn a_rate_below_a_byte_is_refused() {
        let err = Tbf::from_bucket("ingress of v", &bucket(7, 80_000)).unwrap_err();
        assert!(err.to_string().contains("at least 8 bits"), "{err}");
        assert!(Tbf::from_bucket("x", &bucket(8_000, 7)).is_err());
    }

    #[test]
    fn tbf_options_are_a_tc_tbf_qopt() {
        let tbf = Tbf {
            rate: 1_000_000,
            limit: 35_000,
            buffer: 156_250,
        };
        let opts = tbf.options();
        assert_eq!(opts.len(), 1);
        let mut buf = vec![0u8; opts[0].buffer_len()];
        opts[0].emit(&mut buf);
        // NLA header (len 4+36, type 1), then the struct.
        assert_eq!(&buf[..4], &[40, 0, 1, 0]);
        let q = &buf[4..];
        assert_eq!(q.len(), 36);
        assert_eq!(q[1], LINKLAYER_ETHERNET);
        assert_eq!(&q[8..12], &1_000_000u32.to_ne_bytes());
        assert_eq!(&q[12..24], &[0u8; 12]);
        assert_eq!(&q[24..28], &35_000u32.to_ne_bytes());
        assert_eq!(&q[28..32], &156_250u32.to_ne_bytes());
    }

    #[test]
    fn rates_beyond_32_bits_carry_rate64() {
        let tbf = Tbf::from_bucket("x", &bucket(80_000_000_000, 8_000_000)).unwrap();
        let opts = tbf.options();
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[1].kind(), TCA_TBF_RATE64);
    }

    #[test]
    fn the_redirect_filter_matches_every_protocol_at_prio_1() {
        let msg = redirect_filter(7, 9);
        assert_eq!(msg.header.info >> 16, 1);
        assert_eq!(
            (msg.header.info as u16).to_ne_bytes(),
            ETH_P_ALL.to_be_bytes()
        );
        assert_eq!(u32::from(msg.header.parent), 0xffff_0000);
        assert_eq!(u32::from(msg.header.handle), FILTER_HANDLE);
    }
}
