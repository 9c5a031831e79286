//! The socket's connection handling: slow or silent clients are cut off.

use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{bind, serve_with};

/// A client that connects and sends nothing, or stops mid-header, loses its connection once the
/// header-read timeout passes; a kept-alive connection idle after an answer too. Others are served.
#[tokio::test]
async fn silent_and_stalled_clients_are_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnbt.sock");
    let listener = bind(&path).await.unwrap();
    let router = Router::new().fallback(|| async { "{}" });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = {
        let path = path.clone();
        tokio::spawn(async move {
            serve_with(
                listener,
                &path,
                router,
                async {
                    let _ = stopped.await;
                },
                Duration::from_millis(300),
            )
            .await
        })
    };
    let closed_within = |mut s: UnixStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .map(|_| buf)
    };
    let silent = UnixStream::connect(&path).await.unwrap();
    let mut stalled = UnixStream::connect(&path).await.unwrap();
    stalled
        .write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut kept = UnixStream::connect(&path).await.unwrap();
    kept.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(silent).await.is_ok(), "silent client kept");
    assert!(closed_within(stalled).await.is_ok(), "stalled client kept");
    let answer = closed_within(kept)
        .await
        .expect("idle kept-alive client kept");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    assert!(!path.exists(), "socket left after shutdown");
}
