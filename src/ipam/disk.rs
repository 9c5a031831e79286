//! host-local's disk store (`backend/disk/backend.go`, `lock.go`), byte for byte, so that
//! cnibridge and host-local can allocate in one directory at the same time:
//! `<dataDir>/<network>/` holds `lock` (flock(2) only), one file per address named by the
//! address and holding `<id>\r\n<ifname>`, and `last_reserved_ip.<i>` cursors. host-local's
//! DEL reads every file in the directory, so nothing else may ever be written there.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::allocator::Store;
use super::IpamError;
use crate::range::canonical;

/// host-local's cursor file prefix.
pub const LAST_IP_PREFIX: &str = "last_reserved_ip.";
/// host-local's lock file.
pub const LOCK_FILE: &str = "lock";
/// host-local ≥ 1.4.0 creates address and cursor files 0600 (1.1.1 used 0644; both read either).
const FILE_MODE: u32 = 0o600;
const LOCK_MODE: u32 = 0o750;
const DIR_MODE: u32 = 0o755;

/// Replace a small file's content in place: write from offset 0, then cut a longer old tail.
///
/// Never truncate to zero first (O_TRUNC, as host-local's os.WriteFile does): ext4's
/// `auto_da_alloc` then starts writeback at close, and the next truncate or unlink of the file
/// waits for that I/O, 50–120 µs each on the reference VM against ~2 µs in place. Readers take
/// the same flock as we do, so none sees the moment between the write and the cut; a process
/// killed in between leaves a file that is not ours, just as O_TRUNC can leave an empty one.
fn write_in_place(path: &Path, content: &[u8], create: bool) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(create)
        .mode(FILE_MODE)
        .open(path)?;
    f.write_all(content)?;
    let len = content.len() as u64;
    if f.metadata()?.len() > len {
        f.set_len(len)?;
    }
    Ok(())
}

fn store_err(path: &Path, what: &str, e: impl std::fmt::Display) -> IpamError {
    IpamError::Store {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

/// The file name host-local (Go's `net.IP.String()`) gives an address.
pub fn file_name(ip: IpAddr) -> String {
    // Rust's Ipv6Addr Display is RFC 5952, like Go; only IPv4-mapped addresses differ.
    canonical(ip).to_string()
}

/// One network's directory in a host-local data dir. Meant to be kept for the life of the
/// pool: the directory is created once and the lock file stays open, so an operation costs
/// the flock and its own file calls, not a `MkdirAll` and an `open` of `lock` each time.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lock_path: PathBuf,
    /// The open lock file while unlocked; `None` until first used or after it went stale.
    idle: Option<File>,
    /// The lock file while locked.
    held: Option<Flock<File>>,
    /// Device and inode of the open lock file, to notice when its path names another file.
    lock_id: (u64, u64),
}

/// How often `lock` reopens a lock file that was replaced under it before giving up.
const LOCK_ATTEMPTS: usize = 3;

impl DiskStore {
    /// `<data_dir>/<network>`, created 0755 like host-local's `MkdirAll`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        // The name becomes a path component: the CNI name rule is the traversal guard.
        if !crate::names::is_valid_name(network) {
            return Err(IpamError::Invalid(format!(
                "CNI network name {network:?} is invalid; it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
            )));
        }
        let dir = data_dir.join(network);
        let st = Self {
            lock_path: dir.join(LOCK_FILE),
            dir,
            idle: None,
            held: None,
            lock_id: (0, 0),
        };
        st.create_dir()?;
        Ok(st)
    }

    /// The network directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_dir(&self) -> Result<(), IpamError> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(|e| store_err(&self.dir, "cannot create the network directory", e))
    }

    fn open_lock_file(&self) -> Result<(File, (u64, u64)), IpamError> {
        // Again, in case someone removed the directory since we opened the store.
        self.create_dir()?;
        // O_RDONLY|O_CREAT like host-local; std refuses `create` without write access, hence
        // the raw flag.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_CREAT)
            .mode(LOCK_MODE)
            .open(&self.lock_path)
            .map_err(|e| store_err(&self.lock_path, "cannot open the lock file", e))?;
        let m = file
            .metadata()
            .map_err(|e| store_err(&self.lock_path, "cannot stat the lock file", e))?;
        Ok((file, (m.dev(), m.ino())))
    }

    /// Whether `<dir>/lock` is still the file `id` names. A kept-open lock file whose path was
    /// removed or replaced (directory wiped by hand) would lock an inode that host-local no
    /// longer opens, and so exclude nobody.
    fn is_current(&self, id: (u64, u64)) -> Result<bool, IpamError> {
        match fs::metadata(&self.lock_path) {
            Ok(m) => Ok((m.dev(), m.ino()) == id),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_err(&self.lock_path, "cannot stat the lock file", e)),
        }
    }

    fn path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(file_name(ip))
    }

    fn write_cursor(&self, ip: IpAddr, range_index: usize) -> Result<(), IpamError> {
        let path = self.dir.join(format!("{LAST_IP_PREFIX}{range_index}"));
        // Not atomic, like host-local's os.WriteFile: a rename would leave a temporary file
        // that host-local's DEL could read. A torn cursor only moves where the walk starts.
        write_in_place(&path, file_name(ip).as_bytes(), true)
            .map_err(|e| store_err(&path, "cannot write the cursor", e))
    }
}

impl Store for DiskStore {
    fn lock(&mut self) -> Result<(), IpamError> {
        if self.held.is_some() {
            return Err(store_err(&self.dir, "cannot lock", "lock already held"));
        }
        for _ in 0..LOCK_ATTEMPTS {
            let (mut file, id) = match self.idle.take() {
                Some(f) => (f, self.lock_id),
                None => self.open_lock_file()?,
            };
            // flock(2), not fcntl: only flock excludes host-local. No timeout, as in host-local.
            let guard = loop {
                match Flock::lock(file, FlockArg::LockExclusive) {
                    Ok(l) => break l,
                    Err((f, Errno::EINTR)) => file = f,
                    Err((_, e)) => return Err(store_err(&self.lock_path, "cannot flock", e)),
                }
            };
            if self.is_current(id)? {
                self.held = Some(guard);
                self.lock_id = id;
                return Ok(());
            }
            // Stale: dropping the guard closes the file (and so unlocks it); open the new one.
            drop(guard);
        }
        Err(store_err(
            &self.lock_path,
            "cannot lock",
            "the lock file keeps being removed or replaced; is something cleaning this directory?",
        ))
    }

    fn unlock(&mut self) -> Result<(), IpamError> {
        match self.held.take() {
            Some(l) => match l.unlock() {
                Ok(f) => {
                    self.idle = Some(f);
                    Ok(())
                }
                // Dropping the guard closes the file, which releases the lock anyway; the
                // next `lock` opens it again.
                Err((_, e)) => Err(store_err(&self.lock_path, "cannot unlock", e)),
            },
            None => Err(store_err(&self.dir, "cannot unlock", "lock not held")),
        }
    }

    fn reserve(
        &mut self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_index: usize,
    ) -> Result<bool, IpamError> {
        let path = self.path(ip);
        let mut f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(store_err(&path, "cannot create the address file", e)),
        };
        let content = format!("{}\r\n{ifname}", id.trim());
        if let Err(e) = f.write_all(content.as_bytes()) {
            // An empty or partial file would hold the address for nobody (host-local #498).
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(store_err(&path, "cannot write the address file", e));
        }
        drop(f);
        self.write_cursor(ip, range_index)?;
        Ok(true)
    }

    fn set_last_reserved_ip(&mut self, ip: IpAddr, range_index: usize) -> Result<(), IpamError> {
        self.write_cursor(ip, range_index)
    }

    fn last_reserved_ip(&self, range_index: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join(format!("{LAST_IP_PREFIX}{range_index}"));
        match fs::read(&path) {
            // Parsed exactly like Go's net.ParseIP: anything else (even a newline) is no cursor.
            Ok(b) => Ok(std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .map(canonical)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(&path, "cannot read the cursor", e)),
        }
    }

    fn read(&self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        let path = self.path(ip);
        match fs::read(&path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(&path, "cannot read the address file", e)),
        }
    }

    fn rewrite(&mut self, ip: IpAddr, content: &str) -> Result<(), IpamError> {
        let path = self.path(ip);
        // In place: the file (and so the reservation) never disappears, and readers
        // (host-local DEL) only read under the same lock. Never creates.
        write_in_place(&path, content.as_bytes(), false)
            .map_err(|e| store_err(&path, "cannot rewrite the address file", e))
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_err(&path, "cannot remove the address file", e)),
        }
    }

    fn addresses(&self) -> Result<Vec<IpAddr>, IpamError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| store_err(&self.dir, "cannot list", e))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let ip: IpAddr = name.parse().ok()?;
                // Only names we (or host-local) would give the address: `read` and `remove`
                // address files by that name, never by a look-alike such as `::ffff:10.0.0.1`.
                (file_name(ip) == name).then_some(ip)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn disk_format_is_host_locals_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = DiskStore::open(tmp.path(), "net1").unwrap();
        let dir = tmp.path().join("net1");
        // 0755 less the umask.
        assert_eq!(mode(&dir) & !0o755, 0);
        assert_eq!(mode(&dir) & 0o700, 0o700);
        st.lock().unwrap();
        assert!(st.reserve("ctrA", "eth0", ip("10.203.1.10"), 0).unwrap());
        assert!(st.reserve(" ctrB\n", "eth1", ip("10.203.1.11"), 0).unwrap());
        assert!(!st.reserve("ctrC", "eth0", ip("10.203.1.10"), 0).unwrap());
        assert!(st.reserve("ctrA", "eth0", ip("fd03:203::2"), 1).unwrap());
        assert!(st
            .reserve("ctrD", "eth0", ip("fd03:0:1::1:0:0"), 1)
            .unwrap());
        // IPv4-mapped IPv6 is named as plain IPv4, as Go's net.IP does.
        assert!(st
            .reserve("ctrE", "eth0", ip("::ffff:10.203.1.12"), 0)
            .unwrap());
        st.unlock().unwrap();

        assert_eq!(
            tree(&dir),
            [
                "10.203.1.10",
                "10.203.1.11",
                "10.203.1.12",
                "fd03:0:1::1:0:0",
                "fd03:203::2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
        assert_eq!(fs::read(dir.join("10.203.1.10")).unwrap(), b"ctrA\r\neth0");
        assert_eq!(fs::read(dir.join("10.203.1.11")).unwrap(), b"ctrB\r\neth1");
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.203.1.12"
        );
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.1")).unwrap(),
            b"fd03:0:1::1:0:0"
        );
        assert_eq!(fs::read(dir.join("lock")).unwrap(), b"");
        for f in ["10.203.1.10", "fd03:203::2", "last_reserved_ip.0"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        // 0750 less the umask; never more.
        let lock_mode = mode(&dir.join("lock"));
        assert_eq!(lock_mode & !0o750, 0, "{lock_mode:o}");
        assert_eq!(lock_mode & 0o700, 0o700, "{lock_mode:o}");

        assert_eq!(st.last_reserved_ip(0).unwrap(), Some(ip("10.203.1.12")));
        assert_eq!(st.last_reserved_ip(7).unwrap(), None);
        // A shorter cursor replaces a longer one exactly (it is rewritten in place).
        st.lock().unwrap();
        assert!(st.reserve("ctrF", "eth0", ip("10.0.0.5"), 0).unwrap());
        st.unlock().unwrap();
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.0.0.5"
        );
        let mut addrs = st.addresses().unwrap();
        addrs.sort();
        assert_eq!(addrs.len(), 6);
    }

    #[test]
    fn rewrite_keeps_the_file_and_remove_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = DiskStore::open(tmp.path(), "net1").unwrap();
        st.lock().unwrap();
        assert!(st
            .reserve("cnibridge-pending-ab", "pending", ip("10.0.0.2"), 0)
            .unwrap());
        let path = tmp.path().join("net1/10.0.0.2");
        let ino = fs::metadata(&path).unwrap();
        st.rewrite(ip("10.0.0.2"), "0123456789ab\r\nveth1234567")
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"0123456789ab\r\nveth1234567");
        st.rewrite(ip("10.0.0.2"), "x\r\ny").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x\r\ny");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino.ino());
        assert!(
            st.rewrite(ip("10.0.0.3"), "x\r\ny").is_err(),
            "never creates"
        );
        assert!(st.remove(ip("10.0.0.2")).unwrap());
        assert!(!st.remove(ip("10.0.0.2")).unwrap());
        st.unlock().unwrap();
    }

    #[test]
    fn cursor_with_a_newline_is_ignored_like_host_local() {
        let tmp = tempfile::tempdir().unwrap();
        let st = DiskStore::open(tmp.path(), "n").unwrap();
        fs::write(tmp.path().join("n/last_reserved_ip.0"), b"10.0.0.5\n").unwrap();
        assert_eq!(st.last_reserved_ip(0).unwrap(), None);
        fs::write(tmp.path().join("n/last_reserved_ip.0"), b"10.0.0.5").unwrap();
        assert_eq!(st.last_reserved_ip(0).unwrap(), Some(ip("10.0.0.5")));
    }

    #[test]
    fn network_name_is_a_traversal_guard() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(DiskStore::open(tmp.path(), "../evil").is_err());
        assert!(DiskStore::open(tmp.path(), "").is_err());
    }

    #[test]
    fn the_lock_file_is_kept_open_and_reopened_when_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = DiskStore::open(tmp.path(), "n").unwrap();
        let lock = tmp.path().join("n/lock");
        st.lock().unwrap();
        st.unlock().unwrap();
        let first = fs::metadata(&lock).unwrap().ino();
        st.lock().unwrap();
        st.unlock().unwrap();
        assert_eq!(fs::metadata(&lock).unwrap().ino(), first);
        // Someone wipes the directory: the next operation works in a new one, with a lock
        // file host-local would open too.
        fs::remove_dir_all(tmp.path().join("n")).unwrap();
        st.lock().unwrap();
        assert!(st.reserve("c", "eth0", ip("10.0.0.2"), 0).unwrap());
        st.unlock().unwrap();
        assert!(lock.exists());
        // Replaced by another file of the same name: reopened too.
        fs::remove_file(&lock).unwrap();
        fs::write(&lock, b"").unwrap();
        let replaced = fs::metadata(&lock).unwrap().ino();
        st.lock().unwrap();
        let held = st.held.as_ref().map(|f| f.metadata().unwrap().ino());
        assert_eq!(held, Some(replaced));
        st.unlock().unwrap();
        assert!(st.unlock().is_err(), "not held");
    }

    #[test]
    fn the_lock_is_flock_2() {
        // util-linux flock(1) uses flock(2), the call host-local uses.
        if std::process::Command::new("flock")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: flock(1) not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut st = DiskStore::open(tmp.path(), "n").unwrap();
        let try_lock = || {
            std::process::Command::new("flock")
                .args(["-n", "-E", "42"])
                .arg(tmp.path().join("n/lock"))
                .arg("true")
                .status()
                .unwrap()
                .code()
        };
        st.lock().unwrap();
        assert_eq!(try_lock(), Some(42), "our lock must exclude flock(2) users");
        assert!(st.lock().is_err(), "not re-entrant");
        st.unlock().unwrap();
        assert_eq!(try_lock(), Some(0));
        // The kept-open lock file still excludes after the directory was wiped.
        fs::remove_dir_all(tmp.path().join("n")).unwrap();
        st.lock().unwrap();
        assert_eq!(
            try_lock(),
            Some(42),
            "a recreated lock file must be the one we lock"
        );
        st.unlock().unwrap();
    }
}
