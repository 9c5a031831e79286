//! One HTTP/1.1 request over a unix socket, answered and closed (`Connection: close`): what the
//! `firewall-reload` command sends to the daemon and what the daemon asks dockerd. Blocking on
//! purpose: both are rare, one-shot exchanges, so a client stack would buy nothing.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An answer: the status code and the body as sent (chunked encoding is not undone; callers
/// only read bodies of answers with a known length, or only for an error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Send `method path` with an optional JSON body; `timeout` bounds each read and write.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> io::Result<Answer> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(body) = json {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    // One write: the peer sees the whole request at once.
    req.push_str(json.unwrap_or_default());
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of the HTTP header"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| invalid("no HTTP status line"))?;
    // Go's server chunks answers it could not buffer whole (e.g. a network with many
    // containers); with `Connection: close` nothing else needs undoing.
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| invalid("malformed chunked body"))?
    } else {
        body.to_vec()
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The payload of a chunked body (`<hex size>[;ext]\r\n<data>\r\n`… `0\r\n\r\n`).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap();
            c.write_all(reply).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (dir, path, server)
    }

    #[test]
    fn sends_the_request_and_reads_status_and_body() {
        let (_dir, path, server) =
            serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\n{\"message\":\"x\"}");
        let a = request(&path, "GET", "/networks/abc", None, Duration::from_secs(5)).unwrap();
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
        let a = request(&path, "GET", "/n", None, Duration::from_secs(5)).unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "{\"a\":1}\r\n"));
        server.join().unwrap();
        assert_eq!(dechunk(b"3\r\nab"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (_dir, path, server) = serve_once(b"hello");
        let e = request(&path, "POST", "/x", Some("{}"), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let sent = server.join().unwrap();
        assert!(sent.ends_with("Content-Length: 2\r\n\r\n{}"), "{sent}");
    }
}
