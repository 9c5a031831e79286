//! hyper answers a request it cannot parse (bad request line or header: 400; headers beyond
//! its buffer: 431; URI too long: 414) itself, before any service runs, with an empty body,
//! and offers no hook for it. dockerd, and an operator with curl, would then see no reason.
//! This wraps a connection's stream and gives those answers an `{"Err"}` body. The router
//! never answers these statuses, so a response head starting with one is hyper's own.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The statuses hyper writes on its own, with what to tell the client.
const HYPER_ANSWERS: [(&[u8], &str); 3] = [
    (
        b" 400 ",
        "the request could not be parsed as HTTP/1.1; send a POST with a JSON body",
    ),
    (
        b" 414 ",
        "the request URI is too long; plugin methods are short paths such as /NetworkDriver.CreateNetwork",
    ),
    (
        b" 431 ",
        "the request headers are too large; send fewer or shorter headers",
    ),
];

/// A stream whose hyper-made error answers carry an `{"Err"}` body.
pub struct ErrBodies<S> {
    inner: S,
    /// A rewritten answer not yet written out.
    pending: Vec<u8>,
}

impl<S> ErrBodies<S> {
    pub fn new(inner: S) -> Self {
        ErrBodies {
            inner,
            pending: Vec::new(),
        }
    }
}

/// The answer to write instead of `head`, if `head` is one of hyper's own.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let status_line = head.split(|b| *b == b'\n').next()?;
    if !status_line.starts_with(b"HTTP/1.") {
        return None;
    }
    let (_, why) = HYPER_ANSWERS
        .iter()
        .find(|(code, _)| status_line.get(8..13) == Some(*code))?;
    let body = serde_json::json!({ "Err": why }).to_string();
    let status = String::from_utf8_lossy(status_line.trim_ascii_end());
    Some(
        format!(
            "{status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> ErrBodies<S> {
    /// Writes out what is pending; Ready once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrBodies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrBodies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        if let Some(answer) = rewrite(buf) {
            // hyper's answer is taken whole; ours goes out on this and the next polls (hyper
            // flushes, then shuts the connection down, and both drain it first).
            this.pending = answer;
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_answers_are_rewritten() {
        let answer =
            rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["Err"].as_str().unwrap().contains("headers are too large"));
        for ours in [
            &b"HTTP/1.1 200 OK\r\n\r\n{}"[..],
            b"HTTP/1.1 500 Internal Server Error\r\n",
            b"{\"Err\":\"HTTP/1.1 400 \"}",
            b"",
        ] {
            assert!(rewrite(ours).is_none());
        }
    }
}
