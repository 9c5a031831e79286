//! A map-backed [`Store`] for allocator tests (host-local's `backend/testing/fake_store.go`).
//! Strict: every file operation fails unless the lock is held, so a test catches a policy that
//! touches the store unlocked.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::allocator::Store;
use super::IpamError;

#[derive(Debug, Default)]
pub struct FakeStore {
    pub files: BTreeMap<IpAddr, String>,
    pub last_reserved: BTreeMap<usize, IpAddr>,
    pub locked: bool,
    /// Make `lock` fail, as a broken lock file would.
    pub fail_lock: bool,
}

fn err(reason: &str) -> IpamError {
    IpamError::Store {
        path: PathBuf::from("fake"),
        reason: reason.to_string(),
    }
}

impl FakeStore {
    fn held(&self) -> Result<(), IpamError> {
        if self.locked {
            Ok(())
        } else {
            Err(err("used without holding the lock"))
        }
    }
}

impl Store for FakeStore {
    fn lock(&mut self) -> Result<(), IpamError> {
        if self.fail_lock {
            return Err(err("cannot lock: injected failure"));
        }
        if self.locked {
            return Err(err("lock taken twice"));
        }
        self.locked = true;
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), IpamError> {
        self.held()?;
        self.locked = false;
        Ok(())
    }

    fn reserve(
        &mut self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_index: usize,
    ) -> Result<bool, IpamError> {
        self.held()?;
        if self.files.contains_key(&ip) {
            return Ok(false);
        }
        self.files.insert(ip, format!("{id}\r\n{ifname}"));
        self.last_reserved.insert(range_index, ip);
        Ok(true)
    }

    fn set_last_reserved_ip(&mut self, ip: IpAddr, range_index: usize) -> Result<(), IpamError> {
        self.held()?;
        self.last_reserved.insert(range_index, ip);
        Ok(())
    }

    fn last_reserved_ip(&self, range_index: usize) -> Result<Option<IpAddr>, IpamError> {
        self.held()?;
        Ok(self.last_reserved.get(&range_index).copied())
    }

    fn read(&self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        self.held()?;
        Ok(self.files.get(&ip).cloned())
    }

    fn rewrite(&mut self, ip: IpAddr, content: &str) -> Result<(), IpamError> {
        self.held()?;
        match self.files.get_mut(&ip) {
            Some(c) => {
                *c = content.to_string();
                Ok(())
            }
            None => Err(err("rewrite of a missing file")),
        }
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        self.held()?;
        Ok(self.files.remove(&ip).is_some())
    }

    fn addresses(&self) -> Result<Vec<IpAddr>, IpamError> {
        self.held()?;
        Ok(self.files.keys().copied().collect())
    }
}
