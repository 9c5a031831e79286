//! What the plugin remembers across restarts: one JSON file per record under the state dir.
//!
//! Records are written to a temporary file and renamed into place, so a reader (or a restart
//! after SIGKILL) sees the old or the new record, never half of one. Network and pool records
//! are also fsynced (with their directory) because they must survive a power loss; endpoint
//! records are not, since a power loss kills the endpoint too and the hot path pays no fsync.

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
    /// A record on disk is not valid JSON of the expected shape.
    #[error("state file {path} is corrupt: {reason}; move it away to let cnibridge start")]
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

/// The state directory: `<root>/<kind>/<escaped id>.json`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
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
        Ok(Self { root })
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

    /// Write one record atomically.
    pub fn write<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StateError> {
        let dir = self.kind_dir(kind)?;
        let path = dir.join(file_name(id));
        let tmp = dir.join(format!(".{}.tmp", file_name(id)));
        let body = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
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
        let path = self.root.join(kind).join(file_name(id));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io { path, source: e }),
        }
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
            let value = serde_json::from_slice(&body).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            out.push(value);
        }
        Ok(out)
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
    fn a_corrupt_record_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        fs::create_dir_all(tmp.path().join("networks")).unwrap();
        fs::write(tmp.path().join("networks/x.json"), b"{not json").unwrap();
        let err = st.load_all::<Rec>("networks").unwrap_err().to_string();
        assert!(err.contains("networks/x.json"), "{err}");
    }
}
