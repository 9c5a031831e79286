//! Range maths, as host-local's `range.go` and `range_set.go` do it: a range set is a list of
//! ranges, each a subnet with an inclusive `rangeStart..=rangeEnd` and a gateway that the
//! iterator skips. Pure: no I/O. A leaf: the IPAM and the CNI config model both use it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One host-local range (`{subnet, rangeStart, rangeEnd, gateway}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Never handed out dynamically; requesting it is refused.
    pub gateway: Option<IpAddr>,
}

/// The addresses host-local allocates from, in order (one `ranges` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

/// An address as a number, so that ranges can be walked and compared within one family.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`] in the family of `like`; `None` if `n` does not fit.
pub fn from_u128(n: u128, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(n).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpAddr::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// The next address in the same family (wrapping like Go's `ip.NextIP`).
pub fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

/// The form host-local (Go's `net.IP`) names files by: an IPv4-mapped IPv6 address is IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// host-local refuses IPv4 /31, /32 and IPv6 /127, /128: nothing would be left to allocate.
pub fn too_small(net: &IpNet) -> bool {
    net.prefix_len() + 2 > net.max_prefix_len()
}

/// Whether `ip` is the subnet's network address, or its broadcast address for IPv4;
/// neither can be given to a host.
pub fn is_network_or_broadcast(subnet: &IpNet, ip: IpAddr) -> bool {
    ip == subnet.network() || (ip.is_ipv4() && ip == subnet.broadcast())
}

/// The range host-local would derive for `subnet` with `rangeStart`/`rangeEnd` taken from
/// `sub_pool`, clamped to usable hosts: never the network address, never the IPv4 broadcast;
/// the all-ones IPv6 address is usable, as in host-local. `None` if nothing is left.
pub fn usable_range(subnet: &IpNet, sub_pool: Option<&IpNet>) -> Option<(IpAddr, IpAddr)> {
    let within = sub_pool.unwrap_or(subnet);
    let first = to_u128(within.network()).max(to_u128(subnet.network()).checked_add(1)?);
    let mut last = to_u128(within.broadcast());
    if subnet.network().is_ipv4() {
        last = last.min(to_u128(subnet.broadcast()).checked_sub(1)?);
    }
    if first > last {
        return None;
    }
    let like = subnet.network();
    Some((from_u128(first, like)?, from_u128(last, like)?))
}

impl Range {
    /// host-local's `Range.Contains`: same family and inside `rangeStart..=rangeEnd`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.range_start.is_ipv4()
            && self.subnet.contains(&ip)
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    /// host-local's `RangeSet.Contains` (within a range, not merely the subnet).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// The index of the range holding `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<usize> {
        self.0.iter().position(|r| r.contains(ip))
    }

    /// The range whose subnet holds `ip` (static requests may lie outside `rangeStart..=rangeEnd`).
    pub fn subnet_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.subnet.contains(&ip))
    }

    /// host-local's `GetIter`: round robin from `last_reserved + 1` when the cursor lies in
    /// this set, otherwise from the first range's start.
    pub fn iter_from(&self, last_reserved: Option<IpAddr>) -> RangeIter<'_> {
        let (idx, cur) = match last_reserved.and_then(|ip| self.range_for(ip).map(|i| (i, ip))) {
            Some((i, ip)) => (i, Some(ip)),
            None => (0, None),
        };
        RangeIter {
            set: self,
            idx,
            cur,
            start: None,
            done: self.0.is_empty(),
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// host-local's `RangeIter`: walks each range to its end, moves to the next range (wrapping to
/// the first), skips each range's gateway and stops once it is back where it started.
#[derive(Debug)]
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
    done: bool,
}

impl Iterator for RangeIter<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        // A loop where Go recurses: every turn moves the cursor, and the walk ends at `start`.
        while !self.done {
            let n = self.set.0.len();
            let r = self.set.0.get(self.idx)?;
            let ip = match self.cur {
                None => {
                    self.start = Some(r.range_start);
                    r.range_start
                }
                Some(cur) => {
                    let ip = if cur == r.range_end {
                        self.idx = (self.idx + 1) % n;
                        self.set.0.get(self.idx)?.range_start
                    } else {
                        next_ip(cur)
                    };
                    match self.start {
                        None => self.start = Some(ip),
                        Some(s) if s == ip => {
                            self.done = true;
                            return None;
                        }
                        Some(_) => {}
                    }
                    ip
                }
            };
            self.cur = Some(ip);
            if Some(ip) == self.set.0.get(self.idx)?.gateway {
                continue;
            }
            return Some(ip);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str, start: &str, end: &str, gw: Option<&str>) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            range_start: ip(start),
            range_end: ip(end),
            gateway: gw.map(ip),
        }
    }

    fn walk(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        set.iter_from(last.map(ip)).map(|a| a.to_string()).collect()
    }

    #[test]
    fn usable_range_clamps_to_hosts() {
        // (subnet, --ip-range, usable range)
        type Case<'a> = (&'a str, Option<&'a str>, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            ("10.0.0.0/24", None, Some(("10.0.0.1", "10.0.0.254"))),
            (
                "10.0.0.0/24",
                Some("10.0.0.0/24"),
                Some(("10.0.0.1", "10.0.0.254")),
            ),
            (
                "10.0.0.0/24",
                Some("10.0.0.0/25"),
                Some(("10.0.0.1", "10.0.0.127")),
            ),
            (
                "10.0.0.0/24",
                Some("10.0.0.128/25"),
                Some(("10.0.0.128", "10.0.0.254")),
            ),
            ("10.0.0.0/24", Some("10.0.0.0/32"), None),
            ("10.0.0.0/24", Some("10.0.0.255/32"), None),
            ("10.0.0.0/30", None, Some(("10.0.0.1", "10.0.0.2"))),
            // host-local hands out the all-ones IPv6 address.
            (
                "fd00::/64",
                None,
                Some(("fd00::1", "fd00::ffff:ffff:ffff:ffff")),
            ),
            (
                "fd00::/120",
                Some("fd00::80/121"),
                Some(("fd00::80", "fd00::ff")),
            ),
            (
                "fd00::/120",
                Some("fd00::/127"),
                Some(("fd00::1", "fd00::1")),
            ),
        ];
        for (subnet, sub, want) in cases {
            let subnet: IpNet = subnet.parse().unwrap();
            let sub: Option<IpNet> = sub.map(|s| s.parse().unwrap());
            let got = usable_range(&subnet, sub.as_ref());
            assert_eq!(got, want.map(|(a, b)| (ip(a), ip(b))), "{subnet} {sub:?}");
        }
    }

    #[test]
    fn iterator_follows_host_local() {
        let one = RangeSet(vec![range(
            "10.0.0.0/29",
            "10.0.0.1",
            "10.0.0.6",
            Some("10.0.0.1"),
        )]);
        let two = RangeSet(vec![
            range("10.0.0.0/29", "10.0.0.2", "10.0.0.3", Some("10.0.0.1")),
            range("10.0.1.0/29", "10.0.1.1", "10.0.1.2", Some("10.0.1.1")),
        ]);
        let only_gw = RangeSet(vec![range(
            "10.0.0.0/30",
            "10.0.0.1",
            "10.0.0.1",
            Some("10.0.0.1"),
        )]);
        let cases: &[(&RangeSet, Option<&str>, &[&str])] = &[
            // No cursor: from rangeStart, gateway skipped.
            (
                &one,
                None,
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            ),
            // Cursor: last + 1, wrap, stop before the cursor's successor comes round again.
            (
                &one,
                Some("10.0.0.4"),
                &["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
            ),
            (
                &one,
                Some("10.0.0.6"),
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            ),
            // A cursor outside the set (e.g. a static address outside --ip-range) restarts.
            (
                &one,
                Some("10.0.0.7"),
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            ),
            (
                &one,
                Some("10.9.9.9"),
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            ),
            // Across ranges of a set.
            (
                &two,
                Some("10.0.0.3"),
                &["10.0.1.2", "10.0.0.2", "10.0.0.3"],
            ),
            (&two, None, &["10.0.0.2", "10.0.0.3", "10.0.1.2"]),
            (&only_gw, None, &[]),
            (&RangeSet(vec![]), None, &[]),
        ];
        for (set, last, want) in cases {
            assert_eq!(walk(set, *last), *want, "{set} from {last:?}");
        }
    }

    #[test]
    fn iterator_walks_v6_to_the_last_address() {
        let set = RangeSet(vec![range(
            "fd00::/126",
            "fd00::1",
            "fd00::3",
            Some("fd00::1"),
        )]);
        assert_eq!(walk(&set, Some("fd00::2")), ["fd00::3", "fd00::2"]);
    }

    #[test]
    fn range_set_renders_like_host_local() {
        let set = RangeSet(vec![
            range("10.0.0.0/24", "10.0.0.10", "10.0.0.12", None),
            range("10.0.1.0/24", "10.0.1.1", "10.0.1.254", None),
        ]);
        assert_eq!(set.to_string(), "10.0.0.10-10.0.0.12,10.0.1.1-10.0.1.254");
        assert!(set.contains(ip("10.0.0.11")));
        assert!(!set.contains(ip("10.0.0.13")));
        assert!(set.subnet_for(ip("10.0.0.200")).is_some());
        assert!(!set.contains(ip("::ffff:10.0.0.11")));
        assert_eq!(canonical(ip("::ffff:10.0.0.11")), ip("10.0.0.11"));
    }
}
