//! What cnibridge owns in a host-local directory, decided from a file's content alone.
//!
//! host-local's store has no notion of "who wrote this file" beyond its content, and a second
//! record of ours (a ledger) would cost a state write per operation and could disagree with
//! the directory after a crash. So every content cnibridge writes certifies itself:
//! `cnibridge-gateway\r\ngateway`, `cnibridge-aux\r\naux`, `cnibridge-pending-<hex>\r\npending`,
//! and `<EndpointID>\r\n<host veth>` where the veth name is derived from the EndpointID
//! (`vcb` + 12 characters, or one of a few hashed choices: [`crate::names::host_veth_choices`]). A CNI runtime writes
//! `<containerID>\r\n<ifname in the container>` (`eth0`…), which never has that shape.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{IpamError, Owner};
use crate::names;

const GATEWAY_ID: &str = "cnibridge-gateway";
const AUX_ID: &str = "cnibridge-aux";
const PENDING_PREFIX: &str = "cnibridge-pending-";

impl Owner {
    /// An endpoint's claim: its EndpointID and its host veth name, one of the few the driver
    /// derives from the id, which is what makes the file recognisably ours.
    pub fn endpoint(endpoint_id: &str, host_veth: &str) -> Owner {
        Owner::Endpoint {
            endpoint_id: endpoint_id.to_string(),
            ifname: host_veth.to_string(),
        }
    }

    /// host-local's container ID half of the file content.
    pub fn id(&self) -> String {
        match self {
            Owner::Gateway => GATEWAY_ID.to_string(),
            Owner::Aux => AUX_ID.to_string(),
            Owner::Pending(token) => format!("{PENDING_PREFIX}{token}"),
            Owner::Endpoint { endpoint_id, .. } => endpoint_id.clone(),
        }
    }

    /// host-local's ifname half of the file content.
    pub fn ifname(&self) -> &str {
        match self {
            Owner::Gateway => "gateway",
            Owner::Aux => "aux",
            Owner::Pending(_) => "pending",
            Owner::Endpoint { ifname, .. } => ifname,
        }
    }

    /// The exact content of the allocation file: `<id>\r\n<ifname>`, no trailing newline.
    pub fn render(&self) -> String {
        format!("{}\r\n{}", self.id(), self.ifname())
    }

    /// host-local's DEL matches files by `id\r\nifname`, so both halves must follow the CNI
    /// rules (skel's checks); and since ownership is read back from the content, we must
    /// never write a content we would not later recognise as ours (that address would leak).
    pub fn validate(&self) -> Result<(), IpamError> {
        let id = self.id();
        if !crate::names::is_valid_name(&id) {
            return Err(IpamError::Invalid(format!(
                "owner id {id:?} is not a valid CNI container ID (^[a-zA-Z0-9][a-zA-Z0-9_.-]*$)"
            )));
        }
        let ifname = self.ifname();
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(IpamError::Invalid(format!(
                "owner interface name {ifname:?} is not a valid CNI ifname \
                 (1-15 bytes, no '/', ':' or whitespace)"
            )));
        }
        if !is_ours(self.render().as_bytes()) {
            return Err(IpamError::Invalid(match self {
                Owner::Endpoint { endpoint_id, .. } => format!(
                    "owner interface name {ifname:?} is not a host veth name of endpoint \
                     {endpoint_id:?} (such as {:?})",
                    names::host_veth(endpoint_id)
                ),
                _ => format!("pending token in {id:?} must be hexadecimal"),
            }));
        }
        Ok(())
    }
}

fn is_hex_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether an allocation file's content is one cnibridge wrote. Legacy id-only files, empty
/// files (a writer killed between create and write) and anything unreadable are not ours.
pub fn is_ours(content: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(content) else {
        return false;
    };
    // host-local matches TrimSpace'd content; a stray newline must not make us lose a file.
    let Some((id, ifname)) = s.trim().split_once("\r\n") else {
        return false;
    };
    match (id, ifname) {
        (GATEWAY_ID, "gateway") | (AUX_ID, "aux") => true,
        (id, "pending") => id.strip_prefix(PENDING_PREFIX).is_some_and(is_hex_token),
        (id, ifname) => crate::names::is_valid_name(id) && names::is_host_veth_of(id, ifname),
    }
}

/// The owner of a `pending` file's content (`None` for any other content).
pub(super) fn pending_owner(content: &str) -> Option<Owner> {
    let (id, ifname) = content.trim().split_once("\r\n")?;
    let token = id.strip_prefix(PENDING_PREFIX)?;
    (ifname == "pending" && is_hex_token(token)).then(|| Owner::Pending(token.to_string()))
}

/// A pending token: 16 hex digits, unique within the process (a counter) and across restarts
/// (a random base read once, so the hot path does not open /dev/urandom).
pub(super) fn token() -> String {
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let mut b = [0u8; 8];
        if File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok()
        {
            return u64::from_be_bytes(b);
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ u64::from(std::process::id()).rotate_left(40)
    });
    // An odd multiplier is a bijection on u64, so distinct counters never collide, yet
    // consecutive tokens do not look alike in a listing.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_ours_table() {
        let ep = "9dbfb9b7a99ca164c089738d00b0c39a59379e11defbd6a755856f28c0a9fbcc";
        let ours = format!("{ep}\r\nvcb9dbfb9b7a99c");
        let hashed = format!("ep1\r\n{}", names::host_veth("ep1"));
        let runtime = format!("{ep}\r\neth0");
        let other_veth = format!("{ep}\r\nvcb9dbfb9b7a99d");
        let cases: &[(&[u8], bool)] = &[
            (b"cnibridge-gateway\r\ngateway", true),
            (b"cnibridge-aux\r\naux", true),
            (b"cnibridge-pending-0123456789abcdef\r\npending", true),
            (b"cnibridge-pending-AB12\r\npending", true),
            (ours.as_bytes(), true),
            (hashed.as_bytes(), true),
            // host-local trims before comparing; so do we.
            (b"cnibridge-aux\r\naux\n", true),
            // A CNI runtime's files.
            (b"ctrA\r\neth0", false),
            (runtime.as_bytes(), false),
            // The right id with another veth, or a veth of another id.
            (other_veth.as_bytes(), false),
            (b"ep2\r\nvcb9dbfb9b7a99c", false),
            // Legacy id-only files (host-local < 0.8) and the bare ids of ours.
            (b"ctrA", false),
            (ep.as_bytes(), false),
            (b"cnibridge-gateway", false),
            // Empty: a writer killed between O_EXCL create and write.
            (b"", false),
            (b"\r\n", false),
            // Look-alikes.
            (b"cnibridge-pending-\r\npending", false),
            (b"cnibridge-pending-xyz\r\npending", false),
            (b"cnibridge-pending-ab\r\neth0", false),
            (b"cnibridge-gateway\r\naux", false),
            (b"cnibridge-aux\r\naux\r\nextra", false),
            (b"cnibridge-aux\naux", false),
            (b"\xff\xfe\r\naux", false),
        ];
        for (content, want) in cases {
            assert_eq!(
                is_ours(content),
                *want,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn every_valid_owner_renders_a_content_that_is_ours() {
        let owners = [
            Owner::Gateway,
            Owner::Aux,
            Owner::Pending(token()),
            Owner::endpoint(
                "3f5a0c1d9e2b4a6c8d0e",
                &names::host_veth("3f5a0c1d9e2b4a6c8d0e"),
            ),
            Owner::endpoint("ep1", &names::host_veth("ep1")),
        ];
        for o in &owners {
            o.validate().unwrap();
            assert!(is_ours(o.render().as_bytes()), "{o:?}");
        }
        assert_eq!(
            Owner::endpoint(
                "3f5a0c1d9e2b4a6c8d0e",
                &names::host_veth("3f5a0c1d9e2b4a6c8d0e")
            )
            .render(),
            "3f5a0c1d9e2b4a6c8d0e\r\nvcb3f5a0c1d9e2b"
        );
        // The other names an endpoint may take when its first is held are ours too.
        for n in names::host_veth_choices("3f5a0c1d9e2b4a6c8d0e") {
            assert!(
                is_ours(format!("3f5a0c1d9e2b4a6c8d0e\r\n{n}").as_bytes()),
                "{n}"
            );
        }
        let foreign = Owner::Endpoint {
            endpoint_id: "ep1".into(),
            ifname: "veth1".into(),
        };
        let err = foreign.validate().unwrap_err().to_string();
        assert!(err.contains("not a host veth name"), "{err}");
        assert!(Owner::Pending("xyz".into()).validate().is_err());
    }

    #[test]
    fn tokens_are_unique_hex() {
        let a = token();
        assert_eq!(a.len(), 16);
        assert!(is_hex_token(&a));
        let all: std::collections::BTreeSet<String> = (0..1000).map(|_| token()).collect();
        assert_eq!(all.len(), 1000);
    }
}
