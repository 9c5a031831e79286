//! What cnibridge owns in a host-local directory: the rendering of [`Owner`]s into file
//! content, and the ledger of files we wrote (address → content), kept in the state dir so a
//! restarted daemon, even after SIGKILL, deletes or relabels only its own files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::allocator::Store;
use super::{IpamError, Owner};

impl Owner {
    /// host-local's container ID half of the file content.
    pub fn id(&self) -> String {
        match self {
            Owner::Gateway => "cnibridge-gateway".to_string(),
            Owner::Aux => "cnibridge-aux".to_string(),
            Owner::Pending(token) => format!("cnibridge-pending-{token}"),
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
    /// rules (skel's checks), or a file could never be matched or could match someone else.
    pub fn validate(&self) -> Result<(), IpamError> {
        let id = self.id();
        if !crate::cni::is_valid_name(&id) {
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
        Ok(())
    }
}

/// A write about to happen, remembered first so that a SIGKILL between the file and the
/// ledger update cannot make us forget a file we own: recovery adopts a file whose content is
/// exactly the intent's (our content is unique per request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Intent {
    /// `None` = a dynamic allocation: any file of the directory may hold it.
    pub(super) address: Option<IpAddr>,
    pub(super) owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Held {
    pub(super) address: IpAddr,
    pub(super) owner: Owner,
}

/// The ledger as stored (`allocations/<pool id>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LedgerRecord {
    pub(super) pool_id: String,
    pub(super) held: Vec<Held>,
    pub(super) intent: Option<Intent>,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) owned: BTreeMap<IpAddr, Owner>,
    pub(super) intent: Option<Intent>,
}

impl Ledger {
    pub(super) fn to_record(&self, pool_id: &str) -> LedgerRecord {
        LedgerRecord {
            pool_id: pool_id.to_string(),
            held: self
                .owned
                .iter()
                .map(|(a, o)| Held {
                    address: *a,
                    owner: o.clone(),
                })
                .collect(),
            intent: self.intent.clone(),
        }
    }

    pub(super) fn from_record(rec: LedgerRecord) -> Self {
        Self {
            owned: rec.held.into_iter().map(|h| (h.address, h.owner)).collect(),
            intent: rec.intent,
        }
    }

    /// Settle a pending intent against the store (which must be locked): adopt the file that
    /// holds exactly the intended content. `true` if the ledger changed and must be saved.
    pub(super) fn recover<S: Store + ?Sized>(
        &mut self,
        s: &mut S,
        pool_id: &str,
    ) -> Result<bool, IpamError> {
        let Some(intent) = self.intent.clone() else {
            return Ok(false);
        };
        let want = intent.owner.render();
        let candidates = match intent.address {
            Some(a) => vec![a],
            None => s.addresses()?,
        };
        for a in candidates {
            if s.read(a)?.is_some_and(|c| c.trim() == want) {
                tracing::info!(pool = %pool_id, address = %a, "adopting an allocation file written before a restart");
                self.owned.insert(a, intent.owner.clone());
            }
        }
        self.intent = None;
        Ok(true)
    }
}

/// A unique pending token: 8 random bytes as hex, or time and a counter if /dev/urandom fails.
pub(super) fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        b = (nanos ^ n.rotate_left(40) ^ u64::from(std::process::id())).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeStore;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn recovery_adopts_only_the_intended_content() {
        let pending = Owner::Pending("t1".into());
        let mut store = FakeStore {
            locked: true,
            ..Default::default()
        };
        store
            .files
            .insert(ip("10.0.0.2"), "cnibridge-pending-t0\r\npending".into());
        store.files.insert(ip("10.0.0.3"), pending.render());
        store.files.insert(ip("10.0.0.4"), "ctrX\r\neth0".into());
        let mut l = Ledger {
            intent: Some(Intent {
                address: None,
                owner: pending.clone(),
            }),
            ..Default::default()
        };
        assert!(l.recover(&mut store, "p").unwrap());
        assert_eq!(
            l.owned.into_iter().collect::<Vec<_>>(),
            [(ip("10.0.0.3"), pending)]
        );
        assert_eq!(l.intent, None);
        // A relabel interrupted before its write: the old owner stays.
        let mut l = Ledger {
            owned: [(ip("10.0.0.4"), Owner::Aux)].into(),
            intent: Some(Intent {
                address: Some(ip("10.0.0.4")),
                owner: Owner::Gateway,
            }),
        };
        assert!(l.recover(&mut store, "p").unwrap());
        assert_eq!(l.owned[&ip("10.0.0.4")], Owner::Aux);
        assert!(!l.recover(&mut store, "p").unwrap());
    }

    #[test]
    fn tokens_are_unique_hex() {
        let a = token();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, token());
    }
}
