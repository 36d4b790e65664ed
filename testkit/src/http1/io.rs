//! The client side of one HTTP/1.1 connection, around the pure [`codec`](super::codec): it
//! writes requests and reads whole responses from any byte stream (a `TcpStream`, a TLS
//! stream), through one reused read buffer. Interim `1xx` answers are skipped; bodies arrive
//! piece by piece (each read of a `Content-Length` or until-close body, each whole chunk of a
//! chunked one) so that callers can time them.
//!
//! No method has a time limit of its own; wrap an exchange in [`within`]. After any error the
//! connection is out of step: drop it.

use super::codec::{parse_response_head, Chunk, ChunkedDecoder, Error, Framing, Limits};
use super::codec::{Request, ResponseHead};
use bytes::{Buf, Bytes, BytesMut};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before a complete response")]
    Closed,
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("malformed response: {0}")]
    Protocol(#[from] Error),
}

/// `exchange`, or [`ConnError::Timeout`] once `limit` has passed.
pub async fn within<T>(
    limit: Duration,
    exchange: impl Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(ConnError::Timeout(limit)))
}

/// One client connection: requests go one at a time (no pipelining).
pub struct ClientConn<S> {
    io: S,
    buf: BytesMut,
    out: Vec<u8>,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConn<S> {
    pub fn new(io: S, limits: Limits) -> ClientConn<S> {
        ClientConn {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            out: Vec::with_capacity(1024),
            limits,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Write `req` (see [`Request::encode`]): the head and a small body in one write, a large
    /// body after it uncopied. Bytes still buffered from before are dropped first: this side
    /// never pipelines, so nothing the server sent before the request is its answer.
    pub async fn send(
        &mut self,
        req: &Request<'_>,
        host: impl Display,
        close: bool,
    ) -> Result<(), ConnError> {
        self.buf.clear();
        req.encode(host, close, &mut self.out);
        self.io.write_all(&self.out).await?;
        if !req.body_inline() {
            self.io.write_all(req.body).await?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Write a request already in wire format (one encoded once and sent many times), as
    /// [`send`](Self::send) does.
    pub async fn send_raw(&mut self, wire: &[u8]) -> Result<(), ConnError> {
        self.buf.clear();
        self.io.write_all(wire).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Read the answer to the request just sent (`head_request`: it was `HEAD`): the final
    /// head's fields go to `on_header` in order, the body's pieces to `on_piece` as they
    /// complete. Returns the head; when it is not `keep_alive`, drop the connection.
    pub async fn read_response(
        &mut self,
        head_request: bool,
        mut on_header: impl FnMut(&str, &[u8]),
        mut on_piece: impl FnMut(Bytes),
    ) -> Result<ResponseHead, ConnError> {
        let head = loop {
            match parse_response_head(&self.buf, head_request, &self.limits, &mut on_header)? {
                Some(head) => {
                    self.buf.advance(head.len);
                    if !head.is_interim() {
                        break head;
                    }
                }
                None => self.fill(4096).await?,
            }
        };
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => self.read_length(n, &mut on_piece).await?,
            Framing::Chunked => self.read_chunked(&mut on_piece).await?,
            Framing::UntilClose => self.read_to_close(&mut on_piece).await?,
        }
        Ok(head)
    }

    /// Read more into the buffer (room for `want` bytes, within reason); `Closed` at the end.
    async fn fill(&mut self, want: usize) -> Result<(), ConnError> {
        self.buf.reserve(want.clamp(1024, 1024 * 1024));
        if self.io.read_buf(&mut self.buf).await? == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    async fn read_length(
        &mut self,
        n: usize,
        on_piece: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnError> {
        let mut left = n;
        loop {
            let take = left.min(self.buf.len());
            if take > 0 {
                on_piece(self.buf.split_to(take).freeze());
                left -= take;
            }
            if left == 0 {
                return Ok(());
            }
            self.fill(left).await?;
        }
    }

    async fn read_chunked(&mut self, on_piece: &mut impl FnMut(Bytes)) -> Result<(), ConnError> {
        let mut decoder = ChunkedDecoder::new(self.limits);
        loop {
            match decoder.decode(&mut self.buf)? {
                Chunk::Data(data) => on_piece(data),
                Chunk::NeedMore(want) => self.fill(want).await?,
                Chunk::Done => return Ok(()),
            }
        }
    }

    async fn read_to_close(&mut self, on_piece: &mut impl FnMut(Bytes)) -> Result<(), ConnError> {
        let mut total = 0usize;
        loop {
            if !self.buf.is_empty() {
                total += self.buf.len();
                if total > self.limits.max_body {
                    return Err(Error::BodyTooLarge(self.limits.max_body).into());
                }
                on_piece(self.buf.split().freeze());
            }
            match self.fill(16 * 1024).await {
                Ok(()) => {}
                Err(ConnError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    const LIMITS: Limits = Limits::with_max_body(1 << 20);

    /// A client on one end of an in-memory pipe; the other end reads one request head, then
    /// answers `answer` in small writes (so the reader meets every kind of boundary) and
    /// closes when `close`, else stays open.
    async fn answered(answer: &'static [u8], close: bool) -> ClientConn<DuplexStream> {
        let (client, mut server) = duplex(64);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if server.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            for piece in answer.chunks(5) {
                if server.write_all(piece).await.is_err() {
                    return;
                }
            }
            if !close {
                std::future::pending::<()>().await;
            }
        });
        ClientConn::new(client, LIMITS)
    }

    type Answer = (ResponseHead, Vec<(String, String)>, Vec<Bytes>);

    async fn exchange(
        conn: &mut ClientConn<DuplexStream>,
        head_request: bool,
    ) -> Result<Answer, ConnError> {
        let req = Request::new(if head_request { "HEAD" } else { "GET" }, "/");
        conn.send(&req, "h", false).await?;
        let (mut headers, mut pieces) = (Vec::new(), Vec::new());
        let head = conn
            .read_response(
                head_request,
                |n, v| headers.push((n.to_string(), String::from_utf8_lossy(v).into_owned())),
                |p| pieces.push(p),
            )
            .await?;
        Ok((head, headers, pieces))
    }

    #[tokio::test]
    async fn reads_each_framing_and_skips_interim_answers() {
        let mut c = answered(
            b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\nT: 1\r\n\r\n",
            false,
        )
        .await;
        let (head, headers, pieces) = exchange(&mut c, false).await.unwrap();
        assert_eq!((head.status, head.framing), (200, Framing::Chunked));
        assert_eq!(
            headers,
            vec![("transfer-encoding".to_string(), "chunked".to_string())]
        );
        assert_eq!(pieces, vec![Bytes::from("abc"), Bytes::from("de")]);

        let mut c = answered(
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nhello world!",
            false,
        )
        .await;
        let (head, _, pieces) = exchange(&mut c, false).await.unwrap();
        assert!(head.keep_alive);
        assert_eq!(pieces.concat(), b"hello world!");

        let mut c = answered(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", true).await;
        let (head, _, pieces) = exchange(&mut c, false).await.unwrap();
        assert!(!head.keep_alive);
        assert_eq!(pieces.concat(), b"until the end");

        let mut c = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", false).await;
        let (head, _, pieces) = exchange(&mut c, true).await.unwrap();
        assert_eq!((head.framing, pieces.len()), (Framing::None, 0));
    }

    #[tokio::test]
    async fn early_close_malformed_answers_and_limits_are_errors() {
        let mut c = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true).await;
        assert!(matches!(
            exchange(&mut c, false).await,
            Err(ConnError::Closed)
        ));
        let mut c = answered(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab",
            true,
        )
        .await;
        assert!(matches!(
            exchange(&mut c, false).await,
            Err(ConnError::Closed)
        ));
        let mut c = answered(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
        )
        .await;
        assert!(matches!(
            exchange(&mut c, false).await,
            Err(ConnError::Protocol(Error::BadChunkSize))
        ));
        let mut c = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", false).await;
        let limit = Duration::from_millis(50);
        assert!(matches!(
            within(limit, exchange(&mut c, false)).await,
            Err(ConnError::Timeout(l)) if l == limit
        ));
        let mut c = answered(b"HTTP/1.1 200 OK\r\n\r\nmore than four", true).await;
        c.limits.max_body = 4;
        assert!(matches!(
            exchange(&mut c, false).await,
            Err(ConnError::Protocol(Error::BodyTooLarge(4)))
        ));
    }
}
