//! Dual-stack networks from Docker's flags. Docker requests the IPv4 and the IPv6 pool one by
//! one, and nothing in RequestPool says which pools will form one network, so each starts in
//! a host-local directory of its own. host-local keeps every range set of a network in one
//! directory (`last_reserved_ip.0`, `.1`), and an exported conflist can name only one; so at
//! CreateNetwork the IPv6 pool's files move into the IPv4 pool's directory as the next range
//! set. Pools from a CNI config already share their config's directory.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::allocator::{locked, release, Store};
use super::disk::{LAST_IP_PREFIX, LOCK_FILE};
use super::{is_ours, read, Ipam, IpamError};

/// Remove a directory left with nothing but host-local's bookkeeping (`lock`, cursors).
/// Best effort: a directory anyone still uses keeps other files and stays.
fn remove_if_only_bookkeeping(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let bookkeeping = |n: &String| n == LOCK_FILE || n.starts_with(LAST_IP_PREFIX);
    if !names.iter().all(bookkeeping) {
        return;
    }
    for n in &names {
        let _ = fs::remove_file(dir.join(n));
    }
    let _ = fs::remove_dir(dir);
}

impl Ipam {
    /// Move pool `other`'s allocation files (and its cursor) into pool `main`'s host-local
    /// directory as range set `main.range_index + 1`, and point `other`'s record there.
    /// Idempotent. Left alone: pools from a CNI config, pools already sharing a directory, and
    /// a directory holding any file that is not ours (someone else allocates there).
    ///
    /// Order, for crash safety: copy under both flocks, then the durable record, then remove
    /// the old files; a crash in between leaves at worst a stray file of ours, never an
    /// address held by nobody.
    pub fn share_directory(&self, main: &str, other: &str) -> Result<(), IpamError> {
        let unknown = |id: &str| IpamError::UnknownPool(id.to_string());
        let a = self.slot(main).ok_or_else(|| unknown(main))?;
        let b = self.slot(other).ok_or_else(|| unknown(other))?;
        if Arc::ptr_eq(&a, &b) {
            return Ok(());
        }
        // Always `main` first; no other path holds two pools' work at once.
        let mut wa = a.work();
        let mut wb = b.work();
        if wa.released {
            return Err(unknown(main));
        }
        if wb.released {
            return Err(unknown(other));
        }
        let ra = read(&a.record).clone();
        let rb = read(&b.record).clone();
        let shared = ra.data_dir == rb.data_dir && ra.cni_name == rb.cni_name;
        if shared || ra.conf.is_some() || rb.conf.is_some() {
            return Ok(());
        }
        let index = ra.range_index + 1;
        let sa = wa.store(&ra)?;
        let sb = wb.store(&rb)?;
        let old_dir = sb.dir().to_path_buf();
        let copied = locked(sa, |sa| {
            locked(sb, |sb| {
                let mut files = Vec::new();
                for ip in sb.addresses()? {
                    let content = sb.read(ip)?.unwrap_or_default();
                    if !is_ours(content.as_bytes()) {
                        tracing::warn!(pool = %rb.id, address = %ip, dir = %old_dir.display(),
                            "not moving a pool whose directory holds another writer's file");
                        return Ok(None);
                    }
                    files.push((ip, content));
                }
                for (ip, content) in &files {
                    let (id, ifname) = content.split_once("\r\n").unwrap_or((content, ""));
                    if !sa.reserve(id, ifname, *ip, index)? {
                        return Err(IpamError::AddressInUse {
                            address: *ip,
                            pool: rb.subnet,
                            holder: format!("a file in {}", sa.dir().display()),
                        });
                    }
                }
                if let Some(cursor) = sb.last_reserved_ip(rb.range_index)? {
                    sa.set_last_reserved_ip(cursor, index)?;
                }
                Ok(Some(files))
            })
        })?;
        let Some(files) = copied else {
            return Ok(());
        };
        self.update_record(&b, |r| {
            r.cni_name = ra.cni_name.clone();
            r.data_dir = ra.data_dir.clone();
            r.range_index = index;
        })?;
        let removed = locked(sb, |sb| {
            for (ip, _) in &files {
                release(sb, *ip)?;
            }
            Ok(())
        });
        if let Err(e) = removed {
            tracing::warn!(pool = %rb.id, error = %e, "moved pool: cannot remove the old files");
        }
        // Closes the old lock file; the next operation opens the new directory.
        wb.store = None;
        remove_if_only_bookkeeping(&old_dir);
        tracing::debug!(pool = %rb.id, into = %ra.cni_name, range_index = index, "pool moved into its partner's directory");
        Ok(())
    }
}
