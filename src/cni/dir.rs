//! Selecting a config from a conf dir (`--cni-conf-dir`) the way libcni's `LoadNetworkConf`
//! does: `.conflist` files sorted by name first, then `.conf`/`.json` sorted together, the
//! first whose network `name` matches wins; failing that, cnibridge also accepts a file's base
//! name. Unlike libcni, an invalid file elsewhere in the dir does not stop the search; only
//! the selected file's own errors are reported.
//!
//! The selector is never turned into a path: it must be a CNI name and is only compared with
//! names read from files and with the base names of the dir's entries, so it cannot reach
//! outside the dir.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::{display_name, NetConf};
use super::{is_valid_name, CniError};

/// libcni's and the runtimes' default conf dir.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// One config file of a dir and what loading it gave.
#[derive(Debug)]
pub struct ConfFile {
    pub path: PathBuf,
    pub conf: Result<NetConf, CniError>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |source| CniError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// The config files of `dir` in libcni's order. A missing dir holds none, as for libcni.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, CniError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut lists = Vec::new();
    let mut singles = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        // Follows symlinks: a link to a directory is no config. A dangling link stays in the
        // list and reports its read error only if it is selected.
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if has_ext(&path, &["conflist"]) {
            lists.push(path);
        } else if has_ext(&path, &["conf", "json"]) {
            singles.push(path);
        }
    }
    // Go's sort.Strings on the joined paths: byte order of the file names.
    lists.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    singles.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    lists.extend(singles);
    Ok(lists)
}

/// Read and fully validate one config file.
pub fn load_file(path: &Path) -> Result<NetConf, CniError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    NetConf::load(path, &bytes)
}

/// Every config file of `dir`, in libcni's order, each with its own result.
pub fn load_all(dir: &Path) -> Result<Vec<ConfFile>, CniError> {
    Ok(conf_files(dir)?
        .into_iter()
        .map(|path| {
            let conf = load_file(&path);
            ConfFile { path, conf }
        })
        .collect())
}

/// The network name a file declares, if it is JSON with a string `name` (the only thing
/// selection needs, so a file broken elsewhere can still be listed and selected).
fn declared_name(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(bytes).ok()?.get("name")? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The file base name without its extension (`mybridge` for `mybridge.conf`).
fn base_name(path: &Path) -> Option<&str> {
    path.file_stem().and_then(|s| s.to_str())
}

/// The config `cni.conf=NAME` selects: the first file (libcni order) whose network name is
/// `name`, else the first whose base name is `name`. A selected file that is invalid reports
/// its own error; no match lists the names on offer.
pub fn find(dir: &Path, name: &str) -> Result<(PathBuf, NetConf), CniError> {
    if !is_valid_name(name) {
        return Err(CniError::BadSelector {
            value: name.to_string(),
        });
    }
    if !dir.exists() {
        return Err(CniError::NoConfDir {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    let files = conf_files(dir)?;
    let contents: Vec<(&PathBuf, Option<Vec<u8>>)> =
        files.iter().map(|p| (p, fs::read(p).ok())).collect();
    let declared: Vec<Option<String>> = contents
        .iter()
        .map(|(_, b)| b.as_deref().and_then(declared_name))
        .collect();
    let by_name = declared.iter().position(|d| d.as_deref() == Some(name));
    let by_base = || files.iter().position(|p| base_name(p) == Some(name));
    if let Some((path, bytes)) = by_name.or_else(by_base).and_then(|i| contents.get(i)) {
        let conf = match bytes {
            Some(b) => NetConf::load(path, b)?,
            // Unreadable: read again for the error itself.
            None => load_file(path)?,
        };
        return Ok(((*path).clone(), conf));
    }
    let available = files
        .iter()
        .zip(&declared)
        .filter_map(|(p, d)| d.as_ref().map(|d| format!("{d} ({})", display_name(p))))
        .collect();
    Err(CniError::NotFound {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        available,
    })
}
