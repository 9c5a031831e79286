//! What the plugin remembers across restarts: one JSON file per record under the state dir.
//!
//! Records are written to a temporary file and renamed into place, so a reader (or a restart
//! after SIGKILL) sees the old or the new record, never half of one. Network and pool records
//! are also fsynced (with their directory) because they must survive a power loss; endpoint
//! records are not, since a power loss kills the endpoint too and the hot path pays no fsync.
//!
//! Writes block (file I/O, fsync); async callers use [`StateDir::write_async`] and
//! [`StateDir::remove_async`], which do the file work on tokio's blocking pool.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod records;

/// State failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a record failed.
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("state file {path}: cannot encode the record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// How much a write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives the process (rename only).
    Process,
    /// Survives a power loss (fsync of file and directory).
    PowerLoss,
}

/// Where corrupt records are kept, under the state root.
const CORRUPT: &str = "corrupt";

/// The state directory: `<root>/<kind>/<escaped id>.json`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    #[cfg(any(test, feature = "testing"))]
    hook: Option<testing::Hook>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Ids may contain `/` (pool CIDRs); file names may not.
fn file_name(id: &str) -> String {
    format!("{}.json", id.replace('/', "_"))
}

impl StateDir {
    /// Open (and create) the state directory; it is root-only since it names every endpoint.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self {
            root,
            #[cfg(any(test, feature = "testing"))]
            hook: None,
        })
    }

    /// The directory this state lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn kind_dir(&self, kind: &str) -> Result<PathBuf, StateError> {
        let dir = self.root.join(kind);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(dir)
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.root.join(kind).join(file_name(id))
    }

    fn encode<T: Serialize>(&self, kind: &str, id: &str, value: &T) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: self.path(kind, id),
            reason: e.to_string(),
        })
    }

    /// Write one record atomically.
    pub fn write<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StateError> {
        let body = self.encode(kind, id, value)?;
        self.write_body(kind, id, &body, durability)
    }

    fn write_body(
        &self,
        kind: &str,
        id: &str,
        body: &[u8],
        durability: Durability,
    ) -> Result<(), StateError> {
        #[cfg(any(test, feature = "testing"))]
        self.call_hook(testing::StateOp::Write, kind, id)?;
        let dir = self.kind_dir(kind)?;
        let path = dir.join(file_name(id));
        let tmp = dir.join(format!(".{}.tmp", file_name(id)));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(body).map_err(io_err(&tmp))?;
        if durability == Durability::PowerLoss {
            f.sync_all().map_err(io_err(&tmp))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        if durability == Durability::PowerLoss {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Remove one record; a missing record is fine.
    pub fn remove(&self, kind: &str, id: &str) -> Result<(), StateError> {
        #[cfg(any(test, feature = "testing"))]
        self.call_hook(testing::StateOp::Remove, kind, id)?;
        let path = self.path(kind, id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io { path, source: e }),
        }
    }

    /// [`StateDir::write`] on the blocking pool, so a PowerLoss fsync does not stall an async
    /// worker. The value is encoded before the file work starts. Once begun, the write finishes
    /// even if the caller's future is dropped; writers of one record must not overlap (they
    /// share its temporary file), as with `write`.
    pub async fn write_async<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StateError> {
        let body = self.encode(kind, id, value)?;
        let (st, k, i) = (self.clone(), kind.to_string(), id.to_string());
        let done = tokio::task::spawn_blocking(move || st.write_body(&k, &i, &body, durability));
        self.joined(kind, id, done.await)
    }

    /// [`StateDir::remove`] on the blocking pool.
    pub async fn remove_async(&self, kind: &str, id: &str) -> Result<(), StateError> {
        let (st, k, i) = (self.clone(), kind.to_string(), id.to_string());
        let done = tokio::task::spawn_blocking(move || st.remove(&k, &i));
        self.joined(kind, id, done.await)
    }

    fn joined(
        &self,
        kind: &str,
        id: &str,
        done: Result<Result<(), StateError>, tokio::task::JoinError>,
    ) -> Result<(), StateError> {
        // A writer that panicked or never ran (runtime shutting down) leaves the old record
        // or the new one in place, as a failed write does.
        done.unwrap_or_else(|e| {
            Err(StateError::Io {
                path: self.path(kind, id),
                source: std::io::Error::other(format!("state writer task failed: {e}")),
            })
        })
    }

    /// Every record of a kind. Leftover temporary files of an interrupted write are removed.
    pub fn load_all<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, StateError> {
        let dir = self.kind_dir(kind)?;
        let mut out = Vec::new();
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let body = fs::read(&path).map_err(io_err(&path))?;
            match serde_json::from_slice(&body) {
                Ok(value) => out.push(value),
                Err(e) => self.set_aside(kind, &path, &e.to_string()),
            }
        }
        Ok(out)
    }

    /// The folder corrupt records are moved to, by kind.
    pub fn corrupt_dir(&self) -> PathBuf {
        self.root.join(CORRUPT)
    }

    /// A record that does not parse (a 0-byte file after a power loss, a truncated write) is
    /// moved to `corrupt/<kind>/` and left out: cnibridge must start whatever one file holds,
    /// and the callers rebuild what they can from the kernel and the address store (an
    /// endpoint's veth becomes an orphan and is collected). Kept, not deleted, so an operator
    /// can see what was lost.
    fn set_aside(&self, kind: &str, path: &Path, reason: &str) {
        let dir = self.corrupt_dir().join(kind);
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let to = dir.join(&name);
        let moved = fs::create_dir_all(&dir).and_then(|()| fs::rename(path, &to));
        match moved {
            Ok(()) => tracing::error!(
                file = %path.display(),
                kept = %to.display(),
                reason,
                "corrupt state record set aside; what it described is rebuilt or collected"
            ),
            Err(e) => tracing::error!(
                file = %path.display(),
                reason,
                error = %e,
                "corrupt state record ignored (it could not be moved aside)"
            ),
        }
    }
}

/// A hook seeing every write and remove before it touches the disk: it can hold a writer (to
/// show that no lock is held across the write) or fail it (to test the caller's rollback).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::sync::Arc;

    use super::{StateDir, StateError};

    /// Which change the hook sees.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StateOp {
        Write,
        Remove,
    }

    type HookFn = dyn Fn(StateOp, &str, &str) -> std::io::Result<()> + Send + Sync;

    #[derive(Clone)]
    pub(super) struct Hook(Arc<HookFn>);

    impl std::fmt::Debug for Hook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hook")
        }
    }

    impl StateDir {
        /// This state dir with `hook` called as `(op, kind, id)` before each write and remove
        /// (on the thread doing it); an error from it fails that change, which then does
        /// nothing. Clones share the hook.
        pub fn with_hook(
            mut self,
            hook: impl Fn(StateOp, &str, &str) -> std::io::Result<()> + Send + Sync + 'static,
        ) -> Self {
            self.hook = Some(Hook(Arc::new(hook)));
            self
        }

        pub(super) fn call_hook(
            &self,
            op: StateOp,
            kind: &str,
            id: &str,
        ) -> Result<(), StateError> {
            match &self.hook {
                Some(Hook(h)) => h(op, kind, id).map_err(|source| StateError::Io {
                    path: self.path(kind, id),
                    source,
                }),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: String,
        n: u32,
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        st.write(
            "pools",
            "10.1.0.0/24",
            &Rec {
                id: "a".into(),
                n: 1,
            },
            Durability::PowerLoss,
        )
        .unwrap();
        st.write(
            "pools",
            "fd00::/64",
            &Rec {
                id: "b".into(),
                n: 2,
            },
            Durability::Process,
        )
        .unwrap();
        st.write(
            "pools",
            "10.1.0.0/24",
            &Rec {
                id: "a".into(),
                n: 3,
            },
            Durability::Process,
        )
        .unwrap();
        // An interrupted write leaves a temp file behind; it must not be read as a record.
        fs::write(tmp.path().join("pools/.x.json.tmp"), b"{").unwrap();
        let again = StateDir::open(tmp.path()).unwrap();
        let mut recs: Vec<Rec> = again.load_all("pools").unwrap();
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            recs,
            vec![
                Rec {
                    id: "a".into(),
                    n: 3
                },
                Rec {
                    id: "b".into(),
                    n: 2
                }
            ]
        );
        assert!(!tmp.path().join("pools/.x.json.tmp").exists());
        again.remove("pools", "10.1.0.0/24").unwrap();
        again.remove("pools", "10.1.0.0/24").unwrap();
        assert_eq!(again.load_all::<Rec>("pools").unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_record_is_set_aside_and_the_rest_load() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let good = Rec {
            id: "a".into(),
            n: 1,
        };
        st.write("endpoints", "a", &good, Durability::Process)
            .unwrap();
        // A power loss before the data reached the disk, and a torn write.
        fs::write(tmp.path().join("endpoints/x.json"), b"").unwrap();
        fs::write(
            tmp.path().join("endpoints/y.json"),
            b"{\"id\": \"y\", \"n\"",
        )
        .unwrap();
        assert_eq!(st.load_all::<Rec>("endpoints").unwrap(), vec![good]);
        for f in ["x.json", "y.json"] {
            assert!(!tmp.path().join("endpoints").join(f).exists(), "{f}");
            assert!(
                tmp.path().join("corrupt/endpoints").join(f).is_file(),
                "{f}"
            );
        }
        // The kept copies are not records any more.
        assert_eq!(st.load_all::<Rec>("endpoints").unwrap().len(), 1);
    }

    #[tokio::test]
    async fn async_writes_and_removes_match_the_blocking_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = Rec {
            id: "a".into(),
            n: 1,
        };
        let b = Rec {
            id: "b".into(),
            n: 2,
        };
        st.write_async("pools", "10.1.0.0/24", &a, Durability::PowerLoss)
            .await
            .unwrap();
        st.write_async("endpoints", "b", &b, Durability::Process)
            .await
            .unwrap();
        assert_eq!(st.load_all::<Rec>("pools").unwrap(), vec![a]);
        assert_eq!(st.load_all::<Rec>("endpoints").unwrap(), vec![b]);
        assert!(tmp.path().join("pools/10.1.0.0_24.json").is_file());
        st.remove_async("pools", "10.1.0.0/24").await.unwrap();
        // Missing is fine, as for `remove`.
        st.remove_async("pools", "10.1.0.0/24").await.unwrap();
        assert!(st.load_all::<Rec>("pools").unwrap().is_empty());
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(tmp.path().join("pools")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn async_write_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        // A file where the kind's directory should be.
        fs::write(tmp.path().join("networks"), b"").unwrap();
        let rec = Rec {
            id: "x".into(),
            n: 1,
        };
        let err = st
            .write_async("networks", "x", &rec, Durability::PowerLoss)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("networks"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_writes_leave_the_worker_free() {
        use std::sync::mpsc;
        use std::time::Duration;
        // The hook holds the write until another task on the (only) worker thread answers:
        // that can only happen if the write runs somewhere else.
        let (tx, rx) = mpsc::channel::<()>();
        let rx = std::sync::Mutex::new(rx);
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path())
            .unwrap()
            .with_hook(move |op, kind, _| {
                if op == testing::StateOp::Write && kind == "networks" {
                    rx.lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10))
                        .map_err(std::io::Error::other)?;
                }
                Ok(())
            });
        let rec = Rec {
            id: "n".into(),
            n: 1,
        };
        let other = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        });
        st.write_async("networks", "n", &rec, Durability::PowerLoss)
            .await
            .unwrap();
        other.await.unwrap();
        assert_eq!(st.load_all::<Rec>("networks").unwrap(), vec![rec]);
    }

    #[tokio::test]
    async fn a_failing_hook_fails_the_change_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path())
            .unwrap()
            .with_hook(|op, _, id| match (op, id) {
                (testing::StateOp::Write, "bad") | (testing::StateOp::Remove, "kept") => {
                    Err(std::io::Error::other("injected"))
                }
                _ => Ok(()),
            });
        let rec = |id: &str| Rec {
            id: id.into(),
            n: 1,
        };
        let err = st
            .write_async("pools", "bad", &rec("bad"), Durability::PowerLoss)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pools/bad.json") && err.contains("injected"),
            "{err}"
        );
        assert!(st
            .write("pools", "bad", &rec("bad"), Durability::Process)
            .is_err());
        st.write("pools", "kept", &rec("kept"), Durability::Process)
            .unwrap();
        assert!(st.remove_async("pools", "kept").await.is_err());
        assert!(st.remove("pools", "kept").is_err());
        assert_eq!(st.load_all::<Rec>("pools").unwrap(), vec![rec("kept")]);
    }
}
