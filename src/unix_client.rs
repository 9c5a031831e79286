//! One HTTP/1.1 request over a unix socket, answered and closed: what the `firewall-reload`
//! command sends to the daemon and what the daemon asks dockerd. hyper frames the exchange
//! (chunked answers, as Go's server sends for a network with many containers, included) and
//! hyperlocal connects it; no connection is kept, both exchanges are rare and one-shot.

use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Body;
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;

/// An answer: the status code and the body, decoded from the transfer encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nothing answers on the socket: it is missing, refused or not ours to open. The kind
    /// tells a peer that is not running from one that is not reachable.
    #[error("{0}")]
    Connect(io::Error),
    /// The peer accepted the connection but sent no well-formed HTTP answer.
    #[error("no HTTP answer: {0}")]
    NoAnswer(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not sent: the method or path cannot make a request.
    #[error("cannot make the request: {0}")]
    Request(String),
    /// `request_blocking` could not start its runtime.
    #[error("cannot start a runtime for the request: {0}")]
    Runtime(io::Error),
}

/// Send `method path` with an optional JSON body; `timeout` bounds the whole exchange, from
/// the connection to the last byte of the answer.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<Answer, RequestError> {
    tokio::time::timeout(timeout, exchange(socket, method, path, json))
        .await
        .map_err(|_| RequestError::Timeout(timeout))?
}

/// `request` for a caller without a runtime (the command line, a test harness). Must not be
/// called from inside a tokio runtime.
pub fn request_blocking(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<Answer, RequestError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RequestError::Runtime)?
        .block_on(request(socket, method, path, json, timeout))
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<Answer, RequestError> {
    let bad = |e: &dyn std::fmt::Display| RequestError::Request(e.to_string());
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| bad(&e))?;
    let uri: hyper::Uri = hyperlocal::Uri::new(socket, path).into();
    // Told so the peer closes after answering, as the one-shot exchange expects; Title-Case
    // headers are what dockerd's clients send.
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONNECTION, "close");
    if json.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(json.unwrap_or_default().to_string())
        .map_err(|e| bad(&e))?;
    let client: Client<UnixConnector, String> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http1_title_case_headers(true)
        .build(UnixConnector);
    let answer = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            RequestError::Connect(io_source(&e).unwrap_or_else(|| io::Error::other(e.to_string())))
        } else {
            RequestError::NoAnswer(chain(&e))
        }
    })?;
    let status = answer.status().as_u16();
    let mut body = answer.into_body();
    let mut raw = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| RequestError::NoAnswer(chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            raw.extend_from_slice(&data);
        }
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&raw).into_owned(),
    })
}

/// The `io::Error` under a connect failure, so callers can tell "not running" (NotFound,
/// ConnectionRefused) from "not allowed".
fn io_source(e: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    let mut cur = e.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io::Error::new(io.kind(), io.to_string()));
        }
        cur = err.source();
    }
    None
}

/// An error with its causes: hyper's top-level messages alone ("client error (SendRequest)")
/// say little.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A server answering one connection with `reply`; the thread returns what it was sent.
    fn serve_once(
        reply: &'static [u8],
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let sent = read_request(&mut c);
            c.write_all(reply).unwrap();
            sent
        });
        (dir, path, server)
    }

    /// The head and, when it names a length, the body: hyper may write them apart.
    fn read_request(c: &mut impl Read) -> String {
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = c.read(&mut buf).unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    return text;
                }
            }
            if n == 0 {
                return text;
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn sends_the_request_and_reads_status_and_body() {
        let (_dir, path, server) =
            serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\n{\"message\":\"x\"}");
        let a =
            request_blocking(&path, "GET", "/networks/abc", None, Duration::from_secs(5)).unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.body, "{\"message\":\"x\"}");
        let sent = server.join().unwrap();
        assert!(sent.starts_with("GET /networks/abc HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Connection: close\r\n"), "{sent}");
    }

    #[test]
    fn chunked_answers_are_decoded() {
        let (_dir, path, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n5;x=y\r\n:1}\r\n\r\n0\r\n\r\n",
        );
        let a = rt()
            .block_on(request(&path, "GET", "/n", None, Duration::from_secs(5)))
            .unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "{\"a\":1}\r\n"));
        server.join().unwrap();
    }

    #[test]
    fn malformed_chunks_are_an_error() {
        let (_dir, path, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        let e = request_blocking(&path, "GET", "/n", None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, RequestError::NoAnswer(_)), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (_dir, path, server) = serve_once(b"hello");
        let e =
            request_blocking(&path, "POST", "/x", Some("{}"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, RequestError::NoAnswer(_)), "{e:?}");
        let sent = server.join().unwrap();
        assert!(sent.contains("Content-Length: 2\r\n"), "{sent}");
        assert!(
            sent.contains("Content-Type: application/json\r\n"),
            "{sent}"
        );
        assert!(sent.ends_with("\r\n\r\n{}"), "{sent}");
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = request_blocking(
            &dir.path().join("none.sock"),
            "GET",
            "/",
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        match e {
            RequestError::Connect(io) => assert_eq!(io.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let e = request_blocking(&path, "GET", "/", None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RequestError::Timeout(_)), "{e:?}");
    }
}
