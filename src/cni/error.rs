//! What can be wrong with a CNI config, its selection or its export. Every message names the
//! file, the key as written (`plugins[0].ipam.ranges[1][0].subnet`) and the value, because it
//! reaches the user verbatim as the answer to `docker network create`.

use std::path::PathBuf;

use ipnet::IpNet;

use super::config::SUPPORTED_VERSIONS;

/// Errors of the CNI config model; `to_string()` is the user-facing text.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The file is not JSON at all.
    #[error("{file}: is not valid JSON: {detail}")]
    Json { file: String, detail: String },
    /// A key holds a JSON value of the wrong type; `got` is the value rendered as JSON.
    #[error("{file}: {key} must be {expected}, got {got}")]
    WrongType {
        file: String,
        key: String,
        expected: &'static str,
        got: String,
    },
    /// A required key is absent (or `null`); `hint` starts with "; " when present.
    #[error("{file}: {key} is missing{hint}")]
    Missing {
        file: String,
        key: String,
        hint: String,
    },
    /// The network name breaks the CNI rule `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
    #[error("{file}: {key} {value:?} is not a valid CNI network name")]
    BadName {
        file: String,
        key: String,
        value: String,
    },
    /// `cniVersion` (or a `cniVersions` entry) outside 0.1.0–1.1.0.
    #[error("{file}: {key} {value:?} is not a supported CNI version (supported: {})", SUPPORTED_VERSIONS.join(", "))]
    BadVersion {
        file: String,
        key: String,
        value: String,
    },
    /// A first plugin (or flannel delegate) type other than `bridge` or `flannel`.
    #[error(
        "{file}: {key} {value:?} is not implemented by cnibridge (supported: bridge, flannel)"
    )]
    UnsupportedPlugin {
        file: String,
        key: String,
        value: String,
    },
    /// A plugin after the first whose type cnibridge does not implement.
    #[error("{file}: {key} {value:?} is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list")]
    UnsupportedChained {
        file: String,
        key: String,
        value: String,
    },
    /// A second chained plugin of one type.
    #[error("{file}: {key} {value:?} is listed twice (also plugins[{first}]); cnibridge runs each chained plugin once: merge their keys into one")]
    DuplicatePlugin {
        file: String,
        key: String,
        value: String,
        first: usize,
    },
    /// A key a chained plugin of a known type does not have (or cnibridge does not know);
    /// `value` is rendered as JSON.
    #[error(
        "{file}: {key} {value} is not a {plugin} key cnibridge knows ({}); remove it",
        describe_known(plugin, known)
    )]
    UnknownKey {
        file: String,
        key: String,
        value: String,
        plugin: &'static str,
        known: &'static [&'static str],
    },
    /// A tuning sysctl of one interface (`net.ipv4.conf.eth0.*`, `sysctl` in dotted form):
    /// the sandbox's interface names are Docker's, not known to the driver.
    #[error("{file}: {key} {sysctl:?} is scoped to interface {:?}, and cnibridge applies tuning sysctls to the whole container namespace without knowing the interface name Docker gives the container; set it per container with `docker run --sysctl {}={value}` or, with Docker 27+, per endpoint with `--network name=NETWORK,driver-opt=com.docker.network.endpoint.sysctls={}={value}`, and remove it from the config", sysctl_iface(sysctl, None), sysctl_iface(sysctl, Some("eth0")), sysctl_iface(sysctl, Some("IFNAME")))]
    InterfaceSysctl {
        file: String,
        key: String,
        sysctl: String,
        value: String,
    },
    /// flannel's subnet file cannot be read.
    #[error("{file}: cannot read flannel's subnet file {}: {detail}; is flanneld running on this host? If it writes the file elsewhere, set {key} to that path", path.display())]
    FlannelSubnetFile {
        file: String,
        /// The `subnetFile` key as written (`plugins[0].subnetFile`).
        key: String,
        path: PathBuf,
        detail: String,
    },
    /// flannel's subnet file is there but unusable; `reason` completes the sentence.
    #[error("{file}: flannel's subnet file {} {reason}", path.display())]
    FlannelSubnetEnv {
        file: String,
        path: PathBuf,
        reason: String,
    },
    /// An IPAM type other than `host-local`.
    #[error("{file}: {key} {value:?} is not supported; use host-local")]
    UnsupportedIpam {
        file: String,
        key: String,
        value: String,
    },
    /// A CIDR with host bits, which host-local and the kernel would not take as a network.
    #[error("{file}: {key} {value:?} has host bits set; did you mean {suggestion}?")]
    HostBits {
        file: String,
        key: String,
        value: String,
        suggestion: IpNet,
    },
    /// A value of the right type that is still wrong; `value` is rendered as JSON and
    /// `reason` completes the sentence ("is not inside subnet 10.1.0.0/24").
    #[error("{file}: {key} {value} {reason}")]
    Invalid {
        file: String,
        key: String,
        value: String,
        reason: String,
    },
    /// Keys that are fine alone but not together (overlapping ranges, hairpin + promisc).
    #[error("{file}: {reason}")]
    Conflict { file: String, reason: String },
    /// A valid config that a Docker network cannot represent (one subnet per family, the
    /// families the network was created with).
    #[error("{file}: {reason}")]
    NotForDocker { file: String, reason: String },
    /// `cni.conf=NAME` that is not a CNI name, so it could name no config (and could try to
    /// leave the conf dir).
    #[error("cni.conf {value:?} is not a valid CNI network name; use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    BadSelector { value: String },
    /// No config has this network name or file base name.
    #[error("no CNI config named {name:?} in {}{}", dir.display(), describe_available(available))]
    NotFound {
        name: String,
        dir: PathBuf,
        /// `netname (file)` of every config whose name could be read, in libcni's order.
        available: Vec<String>,
    },
    /// The conf dir itself is absent (e.g. not mounted into the managed plugin).
    #[error("no CNI config named {name:?}: the conf dir {} does not exist; check --cni-conf-dir", dir.display())]
    NoConfDir { name: String, dir: PathBuf },
    /// Reading the conf dir or a file, or writing the export, failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An export was asked for under a name that is no CNI name.
    #[error("cannot export network {name:?}: not a valid CNI network name")]
    BadExportName { name: String },
    /// Serialising the export failed (cannot happen with the types used; reported, not panicked).
    #[error("cannot render the export of network {name:?}: {detail}")]
    Render { name: String, detail: String },
}

fn describe_known(plugin: &str, known: &[&str]) -> String {
    if known.is_empty() {
        format!("{plugin} takes only type, name, capabilities, cniVersion, runtimeConfig and args")
    } else {
        format!("known: {}", known.join(", "))
    }
}

fn describe_available(available: &[String]) -> String {
    if available.is_empty() {
        "; it holds no readable .conflist, .conf or .json file".to_string()
    } else {
        format!("; available: {}", available.join(", "))
    }
}

/// The interface part (the 4th) of a dotted per-interface sysctl, or the sysctl with that
/// part replaced (`eth0` is Docker's first interface name; `IFNAME` is replaced by Docker
/// with the endpoint's interface).
fn sysctl_iface(sysctl: &str, replace: Option<&str>) -> String {
    let mut parts: Vec<&str> = sysctl.split('.').collect();
    match (parts.get_mut(3), replace) {
        (Some(p), None) => p.to_string(),
        (Some(p), Some(r)) => {
            *p = r;
            parts.join(".")
        }
        (None, _) => sysctl.to_string(),
    }
}
