//! The signals a running daemon answers: SIGHUP re-applies the firewall, SIGTERM and SIGINT
//! stop it.

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::dataplane::Dataplane;
use crate::driver::Driver;
use crate::firewall::Firewall;

/// The SIGHUP stream, taken before the socket is bound. Without it the daemon still serves;
/// `cnibridge firewall-reload` does the same.
pub(super) fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use cnibridge firewall-reload");
            None
        }
    }
}

/// Resolves at SIGTERM or SIGINT.
pub(super) async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon still serves; SIGKILL stops it.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// SIGHUP re-applies every firewall rule, like `cnibridge firewall-reload`. A failure is
/// logged; the daemon keeps serving.
pub(super) async fn reload_on_sighup<D: Dataplane, F: Firewall>(
    driver: Arc<Driver<D, F>>,
    hup: Option<Signal>,
) {
    let Some(mut hup) = hup else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: re-applying firewall rules");
        if let Err(e) = driver.reload_firewall().await {
            tracing::error!(error = %e, "firewall reload failed");
        }
    }
}
