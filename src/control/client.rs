//! The client of the private methods: what `cnibridge firewall-reload` sends to the running
//! daemon, and how its answer becomes the operator's message.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cnm::router::FIREWALL_RELOAD_PATH;
use crate::unix_client::{self, RequestError};

/// How long the command waits for the daemon's answer (a reload of many networks is a few
/// iptables-restore runs).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no cnibridge is serving on {} ({source}); start it with cnibridge serve", socket.display())]
    NotServing { socket: PathBuf, source: io::Error },
    #[error("cnibridge on {} gave no HTTP answer", socket.display())]
    NoAnswer { socket: PathBuf },
    #[error("talking to cnibridge on {}: {source}", socket.display())]
    Talking {
        socket: PathBuf,
        source: RequestError,
    },
    #[error("the cnibridge serving on {} does not know firewall-reload (an older version?)", socket.display())]
    UnknownMethod { socket: PathBuf },
    #[error("firewall reload failed (HTTP {status}): {message}")]
    Failed { status: u16, message: String },
}

/// POST the private reload method to the daemon's socket and check the answer. Blocking: the
/// command line has no runtime of its own.
pub fn firewall_reload(socket: &Path) -> Result<(), ControlError> {
    let answer = unix_client::request_blocking(
        socket,
        "POST",
        FIREWALL_RELOAD_PATH,
        Some("{}"),
        RELOAD_TIMEOUT,
    )
    .map_err(|e| unreachable_daemon(socket, e))?;
    match answer.status {
        200 => Ok(()),
        404 => Err(ControlError::UnknownMethod {
            socket: socket.to_path_buf(),
        }),
        status => Err(ControlError::Failed {
            status,
            message: error_message(&answer.body),
        }),
    }
}

fn unreachable_daemon(socket: &Path, e: RequestError) -> ControlError {
    let socket = socket.to_path_buf();
    match e {
        RequestError::Connect(source)
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            ControlError::NotServing { socket, source }
        }
        RequestError::NoAnswer(_) => ControlError::NoAnswer { socket },
        source => ControlError::Talking { socket, source },
    }
}

/// The `Err` of a `{"Err": …}` answer, or the body as sent when it is not one.
fn error_message(body: &str) -> String {
    let body = body.trim();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("Err").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_socket_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = firewall_reload(&socket).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "no cnibridge is serving on {} (",
                socket.display()
            )),
            "{err}"
        );
        assert!(err.ends_with("; start it with cnibridge serve"), "{err}");
        assert_eq!(
            error_message(r#" {"Err":"iptables: no chain"} "#),
            "iptables: no chain"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
