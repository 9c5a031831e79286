//! Tests of the CNI config model: the parsing tables (acceptance a), conf dir selection,
//! the Docker mapping and the export.

use std::path::Path;

use super::{CniError, NetConf};

mod chain;
mod dir;
mod docker;
mod export;
mod flannel;
mod invalid;
mod names;
mod valid;

/// Load `json` as if it were the file `file` (the extension picks the format).
fn load(file: &str, json: &str) -> Result<NetConf, CniError> {
    NetConf::load(Path::new(file), json.as_bytes())
}

/// A single-plugin config with cniVersion 1.0.0, name `t`, extra bridge keys `keys` (a JSON
/// member list, may be empty) and host-local members `ipam`.
fn conf(keys: &str, ipam: &str) -> String {
    let sep = if keys.is_empty() { "" } else { "," };
    format!(
        r#"{{"cniVersion":"1.0.0","name":"t","type":"bridge"{sep}{keys},"ipam":{{"type":"host-local",{ipam}}}}}"#
    )
}

/// The same as a one-plugin conflist.
fn list(keys: &str, ipam: &str) -> String {
    let sep = if keys.is_empty() { "" } else { "," };
    format!(
        r#"{{"cniVersion":"1.0.0","name":"t","plugins":[{{"type":"bridge"{sep}{keys},"ipam":{{"type":"host-local",{ipam}}}}}]}}"#
    )
}

const V4: &str = r#""subnet":"10.1.0.0/24""#;
