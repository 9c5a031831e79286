//! host-local's allocator (`backend/allocator/allocator.go`): pure policy over a [`Store`].
//! Every function here expects the store to be locked; [`locked`] takes and gives back the
//! lock around a closure so that no path can forget to unlock.

use std::net::IpAddr;

use ipnet::IpNet;

use super::owner::is_ours;
use super::IpamError;
use crate::range::{is_network_or_broadcast, RangeSet};

/// host-local's `backend.Store`, plus what cnibridge needs to relabel and release one file.
/// IPs are always canonical (IPv4 never IPv4-mapped).
pub trait Store {
    /// Take the store's exclusive lock (host-local: `flock(LOCK_EX)` on `<dir>/lock`).
    fn lock(&mut self) -> Result<(), IpamError>;
    /// Give the lock back.
    fn unlock(&mut self) -> Result<(), IpamError>;
    /// Create the file for `ip` if nobody holds it, write `id\r\nifname`, then the cursor
    /// `last_reserved_ip.<range_index>`. A taken address is `Ok(false)`, not an error.
    fn reserve(
        &mut self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_index: usize,
    ) -> Result<bool, IpamError>;
    /// Write the cursor `last_reserved_ip.<range_index>` alone (moving a pool's files).
    fn set_last_reserved_ip(&mut self, ip: IpAddr, range_index: usize) -> Result<(), IpamError>;
    /// The cursor, if present and parseable exactly as host-local parses it.
    fn last_reserved_ip(&self, range_index: usize) -> Result<Option<IpAddr>, IpamError>;
    /// The content of the file for `ip`, `None` if there is none.
    fn read(&self, ip: IpAddr) -> Result<Option<String>, IpamError>;
    /// Replace the content of the existing file for `ip` in place (it never disappears).
    fn rewrite(&mut self, ip: IpAddr, content: &str) -> Result<(), IpamError>;
    /// Delete the file for `ip`; `false` if there was none.
    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError>;
    /// Every address that has a file.
    fn addresses(&self) -> Result<Vec<IpAddr>, IpamError>;
}

/// Run `f` with the store locked; the lock is given back even when `f` fails, and an unlock
/// failure is reported only if `f` succeeded (its own error says more).
pub fn locked<S: Store + ?Sized, T>(
    store: &mut S,
    f: impl FnOnce(&mut S) -> Result<T, IpamError>,
) -> Result<T, IpamError> {
    store.lock()?;
    let out = f(store);
    let unlocked = store.unlock();
    let out = out?;
    unlocked?;
    Ok(out)
}

/// The first line of an allocation file: host-local's container ID.
pub fn holder_of(content: &str) -> String {
    match content.lines().next().unwrap_or("").trim() {
        // What a writer killed between O_EXCL create and write leaves (host-local too).
        "" => "nobody: an empty file, left by an interrupted allocation".to_string(),
        id => id.to_string(),
    }
}

/// What to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The next free address after the cursor.
    Dynamic,
    /// Exactly this one (`--ip`, `--aux-address`, `--gateway`); it must lie in a range's
    /// subnet but may lie outside `rangeStart..=rangeEnd`, as Docker allows.
    Static(IpAddr),
}

/// host-local's `IPAllocator` for one range set.
pub struct Allocator<'a, S: Store + ?Sized> {
    set: &'a RangeSet,
    store: &'a mut S,
    range_index: usize,
}

impl<'a, S: Store + ?Sized> Allocator<'a, S> {
    /// An allocator writing cursor `last_reserved_ip.<range_index>`.
    pub fn new(set: &'a RangeSet, store: &'a mut S, range_index: usize) -> Self {
        Self {
            set,
            store,
            range_index,
        }
    }

    fn pool(&self) -> Option<IpNet> {
        self.set.0.first().map(|r| r.subnet)
    }

    /// host-local's `Get` (the store must be locked). host-local's duplicate-ID scan is left
    /// out: cnibridge's IDs are unique per request (pending tokens), so it could never match.
    pub fn get(&mut self, id: &str, ifname: &str, req: Request) -> Result<IpAddr, IpamError> {
        match req {
            Request::Static(ip) => self.get_static(id, ifname, ip),
            Request::Dynamic => self.get_dynamic(id, ifname),
        }
    }

    fn get_static(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<IpAddr, IpamError> {
        let Some(r) = self.set.subnet_for(ip) else {
            return Err(match self.pool() {
                Some(pool) => IpamError::OutOfPool { address: ip, pool },
                None => IpamError::Invalid(format!("requested IP address {ip}: empty range set")),
            });
        };
        if is_network_or_broadcast(&r.subnet, ip) {
            return Err(IpamError::Invalid(format!(
                "requested IP address {ip} is the network or broadcast address of {}; \
                 choose a host address",
                r.subnet
            )));
        }
        if Some(ip) == r.gateway {
            return Err(IpamError::Invalid(format!(
                "requested ip {ip} is subnet's gateway; choose another address"
            )));
        }
        let pool = r.subnet;
        if self.store.reserve(id, ifname, ip, self.range_index)? {
            return Ok(ip);
        }
        let holder = match self.store.read(ip)? {
            Some(content) => holder_of(&content),
            // Freed between the create and the read: still report it as taken, as host-local does.
            None => "unknown".to_string(),
        };
        Err(IpamError::AddressInUse {
            address: ip,
            pool,
            holder,
        })
    }

    fn get_dynamic(&mut self, id: &str, ifname: &str) -> Result<IpAddr, IpamError> {
        // host-local logs and ignores an unreadable cursor; so do we (it only costs round robin).
        let last = match self.store.last_reserved_ip(self.range_index) {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable last_reserved_ip");
                None
            }
        };
        for ip in self.set.iter_from(last) {
            if self.store.reserve(id, ifname, ip, self.range_index)? {
                return Ok(ip);
            }
        }
        match (self.set.0.first(), self.set.0.last()) {
            (Some(first), Some(last)) => Err(IpamError::Exhausted {
                pool: first.subnet,
                start: first.range_start,
                end: last.range_end,
            }),
            _ => Err(IpamError::Invalid("empty range set".to_string())),
        }
    }
}

/// What happened to a file we meant to release or relabel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Done,
    /// There is no file (released by hand, by host-local's DEL, or never ours).
    Missing,
    /// The file holds a content that is not ours; it was left alone.
    Foreign(String),
}

/// The file's content if it is ours, else what to report (the store must be locked).
fn ours<S: Store + ?Sized>(store: &S, ip: IpAddr) -> Result<Result<String, Outcome>, IpamError> {
    Ok(match store.read(ip)? {
        None => Err(Outcome::Missing),
        Some(c) if is_ours(c.as_bytes()) => Ok(c),
        Some(c) => Err(Outcome::Foreign(c)),
    })
}

/// Delete the file for `ip` only if its content is ours (the store must be locked).
pub fn release<S: Store + ?Sized>(store: &mut S, ip: IpAddr) -> Result<Outcome, IpamError> {
    if let Err(o) = ours(store, ip)? {
        return Ok(o);
    }
    Ok(if store.remove(ip)? {
        Outcome::Done
    } else {
        Outcome::Missing
    })
}

/// Replace the content of the file for `ip` by `new`, only if its content is ours (the store
/// must be locked). Already `new` is done without a write, so a replay costs one read.
pub fn relabel<S: Store + ?Sized>(
    store: &mut S,
    ip: IpAddr,
    new: &str,
) -> Result<Outcome, IpamError> {
    match ours(store, ip)? {
        Err(o) => return Ok(o),
        Ok(c) if c == new => return Ok(Outcome::Done),
        Ok(_) => {}
    }
    store.rewrite(ip, new)?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeStore;
    use super::super::Owner;
    use super::*;
    use crate::range::Range;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(subnet: &str, start: &str, end: &str, gw: Option<&str>) -> RangeSet {
        RangeSet(vec![Range {
            subnet: subnet.parse().unwrap(),
            range_start: ip(start),
            range_end: ip(end),
            gateway: gw.map(ip),
        }])
    }

    fn get(
        store: &mut FakeStore,
        set: &RangeSet,
        id: &str,
        req: Request,
    ) -> Result<IpAddr, IpamError> {
        locked(store, |s| Allocator::new(set, s, 0).get(id, "eth0", req))
    }

    #[test]
    fn dynamic_allocation_is_round_robin() {
        let s = set("10.0.0.0/24", "10.0.0.10", "10.0.0.12", None);
        let mut store = FakeStore::default();
        let next = |store: &mut FakeStore, id: &str| get(store, &s, id, Request::Dynamic);
        assert_eq!(next(&mut store, "c0").unwrap(), ip("10.0.0.10"));
        assert_eq!(next(&mut store, "c1").unwrap(), ip("10.0.0.11"));
        // Freed as host-local's DEL would (c0's content is not ours to release).
        locked(&mut store, |s| s.remove(ip("10.0.0.10"))).unwrap();
        // The freed .10 comes back only after .12 (host-local: "freed .10 was reused only
        // after .11/.12"), so a crash-looping container does not get the same address.
        assert_eq!(next(&mut store, "c2").unwrap(), ip("10.0.0.12"));
        assert_eq!(next(&mut store, "c3").unwrap(), ip("10.0.0.10"));
        assert_eq!(store.last_reserved.get(&0), Some(&ip("10.0.0.10")));
        let err = next(&mut store, "c4").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no IP addresses available in range set: 10.0.0.10-10.0.0.12 (pool 10.0.0.0/24); \
             release addresses or use a larger --subnet/--ip-range"
        );
    }

    #[test]
    fn dynamic_table() {
        let s = set("10.0.0.0/29", "10.0.0.1", "10.0.0.6", Some("10.0.0.1"));
        // (files already taken, cursor, address or error)
        type Case<'a> = (&'a [&'a str], Option<&'a str>, Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            (&[], None, Ok("10.0.0.2")),
            (&[], Some("10.0.0.2"), Ok("10.0.0.3")),
            // wrap past the end, skipping the gateway
            (&[], Some("10.0.0.6"), Ok("10.0.0.2")),
            (&["10.0.0.2", "10.0.0.3"], Some("10.0.0.6"), Ok("10.0.0.4")),
            (&["10.0.0.6"], Some("10.0.0.5"), Ok("10.0.0.2")),
            // cursor outside the range set: from rangeStart
            (&[], Some("10.0.0.7"), Ok("10.0.0.2")),
            (
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
                Some("10.0.0.3"),
                Err("no IP addresses available in range set: 10.0.0.1-10.0.0.6 (pool 10.0.0.0/29)"),
            ),
        ];
        for (taken, cursor, want) in cases {
            let mut store = FakeStore::default();
            for t in *taken {
                store.files.insert(ip(t), "other\r\neth0".into());
            }
            if let Some(c) = cursor {
                store.last_reserved.insert(0, ip(c));
            }
            let got = get(&mut store, &s, "me", Request::Dynamic);
            match (got, want) {
                (Ok(a), Ok(w)) => {
                    assert_eq!(a, ip(w), "{taken:?} {cursor:?}");
                    assert_eq!(store.files[&a], "me\r\neth0");
                    assert_eq!(store.last_reserved[&0], a);
                }
                (Err(e), Err(w)) => assert!(e.to_string().starts_with(w), "{e}"),
                (got, want) => panic!("{taken:?} {cursor:?}: got {got:?}, want {want:?}"),
            }
            assert!(!store.locked, "lock given back");
        }
    }

    #[test]
    fn static_table() {
        let s = set("10.0.0.0/24", "10.0.0.128", "10.0.0.254", Some("10.0.0.1"));
        let cases: &[(&str, Result<(), &str>)] = &[
            // outside --ip-range but inside the subnet: accepted, as Docker allows
            ("10.0.0.5", Ok(())),
            ("10.0.0.200", Ok(())),
            ("10.0.0.1", Err("requested ip 10.0.0.1 is subnet's gateway")),
            ("10.0.0.0", Err("is the network or broadcast address")),
            ("10.0.0.255", Err("is the network or broadcast address")),
            (
                "10.0.1.5",
                Err("requested IP address 10.0.1.5 is not in pool 10.0.0.0/24"),
            ),
            (
                "10.0.0.7",
                Err("not available in pool 10.0.0.0/24 (held by ctrX)"),
            ),
        ];
        for (addr, want) in cases {
            let mut store = FakeStore::default();
            store.files.insert(ip("10.0.0.7"), "ctrX\r\neth0".into());
            let got = get(&mut store, &s, "me", Request::Static(ip(addr)));
            match (got, want) {
                (Ok(a), Ok(())) => {
                    assert_eq!(a, ip(addr));
                    // host-local moves the cursor for requested IPs too.
                    assert_eq!(store.last_reserved[&0], a);
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{addr}: {e}"),
                (got, want) => panic!("{addr}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn release_and_relabel_touch_only_our_content() {
        let ep = Owner::endpoint("ep1", &crate::names::host_veth("ep1")).render();
        let mut store = FakeStore::default();
        store
            .files
            .insert(ip("10.0.0.2"), "cnibridge-pending-ab\r\npending".into());
        store.files.insert(ip("10.0.0.3"), "theirs\r\neth0".into());
        store.files.insert(ip("10.0.0.5"), String::new());
        let out = locked(&mut store, |s| relabel(s, ip("10.0.0.2"), &ep)).unwrap();
        assert_eq!(out, Outcome::Done);
        assert_eq!(store.files[&ip("10.0.0.2")], ep);
        // A replay is done too.
        let out = locked(&mut store, |s| relabel(s, ip("10.0.0.2"), &ep)).unwrap();
        assert_eq!(out, Outcome::Done);
        for (addr, content) in [("10.0.0.3", "theirs\r\neth0"), ("10.0.0.5", "")] {
            let out = locked(&mut store, |s| relabel(s, ip(addr), &ep)).unwrap();
            assert_eq!(out, Outcome::Foreign(content.into()));
            let out = locked(&mut store, |s| release(s, ip(addr))).unwrap();
            assert_eq!(out, Outcome::Foreign(content.into()));
            assert_eq!(store.files[&ip(addr)], content);
        }
        let out = locked(&mut store, |s| release(s, ip("10.0.0.4"))).unwrap();
        assert_eq!(out, Outcome::Missing);
        let out = locked(&mut store, |s| relabel(s, ip("10.0.0.4"), &ep)).unwrap();
        assert_eq!(out, Outcome::Missing);
        let out = locked(&mut store, |s| release(s, ip("10.0.0.2"))).unwrap();
        assert_eq!(out, Outcome::Done);
        assert!(!store.files.contains_key(&ip("10.0.0.2")));
        assert_eq!(
            holder_of(""),
            "nobody: an empty file, left by an interrupted allocation"
        );
        assert_eq!(holder_of("ctrX\r\neth0"), "ctrX");
    }

    #[test]
    fn lock_failure_is_propagated_and_nothing_is_written() {
        let s = set("10.0.0.0/24", "10.0.0.1", "10.0.0.254", None);
        let mut store = FakeStore {
            fail_lock: true,
            ..Default::default()
        };
        let err = get(&mut store, &s, "me", Request::Dynamic).unwrap_err();
        assert!(err.to_string().contains("lock"), "{err}");
        assert!(store.files.is_empty());
    }
}
