//! The plugin socket: `/run/docker/plugins/<name>.sock`, root-only, one per live daemon.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::UnixListener;

/// Socket failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket.
    #[error("another cnibridge is already serving on {0}; stop it first or pass another --socket")]
    InUse(PathBuf),
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bind the socket: a stale file (nobody answers) is replaced, a live one is refused.
pub async fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if path.exists() {
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(ServerError::InUse(path.to_path_buf())),
            Err(_) => std::fs::remove_file(path).map_err(io(path))?,
        }
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    // Whoever can talk to the socket can create bridges and veths: root only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// Serve until `shutdown` resolves, then remove the socket.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(io(path));
    let _ = std::fs::remove_file(path);
    result
}
