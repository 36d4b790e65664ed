//! A minimal HTTP/1.1 client for the integration tests, the demo's traffic and the scenario
//! runner: one keep-alive [`Connection`], or a one-shot [`send`]. It frames request bodies
//! by `Content-Length` (or sends them as given when the caller sets `Transfer-Encoding`),
//! reads responses framed by `Content-Length`, chunked encoding or the end of the
//! connection, skips interim 1xx answers, and can record when each piece of a streamed
//! answer arrived ([`Connection::send_streaming`]), which is how tests prove that the
//! gateway forwards Server-Sent Events without buffering them.
//!
//! The wire format is the kit's one HTTP/1.1 codec ([`crate::http1`]: [`Request`] is its
//! encoder, its response reader does the framing); this module adds the TCP connection,
//! reconnecting, and answers collected whole or timed piece by piece.
//!
//! Every exchange has a timeout (30 s unless set), so a test never hangs. It is test
//! support, not a production client: no TLS, no HTTP/2, no redirects, no pooling, no retries
//! (a connection the server closed is reopened on the next send; one that fails is dropped).
//!
//! Why not hyper's client (measured for issue 16, 2026-12): hyper with `hyper-util` and
//! `http-body-util` adds 6 crates and ~3.6 s of debug build, cheap enough; what keeps this
//! one is what tests assert through it: the arrival time of each piece of a streamed answer
//! as read off the socket, raw `Transfer-Encoding` bodies sent as given, and malformed or
//! early-closed answers reported as errors rather than retried. A hyper client is the plan
//! when tests need HTTP/2 clients; `tests/tls.rs` speaks HTTP/1.1 over tokio-rustls with the
//! same codec ([`crate::http1::ClientConn`] takes any stream).

use crate::http1::{self, within, ClientConn, ConnError, Limits};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub use crate::http1::{chunked, Request};

/// How long one exchange (connect, write, read the whole answer) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body the client reads.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// 64 KiB heads of at most 64 fields, bodies up to [`MAX_BODY`].
const LIMITS: Limits = Limits::with_max_body(MAX_BODY);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Parse(#[from] http1::Error),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before a complete response")]
    Closed,
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<ConnError> for ClientError {
    fn from(e: ConnError) -> ClientError {
        match e {
            ConnError::Io(e) => ClientError::Io(e),
            ConnError::Closed => ClientError::Closed,
            ConnError::Timeout(t) => ClientError::Timeout(t),
            ConnError::Protocol(e) => ClientError::Parse(e),
        }
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The first header called `name` (any case) in a header list.
pub fn header_of<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where body pieces go: collected into one body, or kept apart with arrival times.
enum Sink {
    Collect(Vec<Bytes>),
    Timed(Instant, Vec<(Duration, Bytes)>),
}

impl Sink {
    fn collect() -> Sink {
        Sink::Collect(Vec::new())
    }

    /// The collected body: usually one piece, kept without copying.
    fn into_body(self) -> Bytes {
        match self {
            Sink::Collect(mut pieces) if pieces.len() == 1 => pieces.pop().unwrap_or_default(),
            Sink::Collect(pieces) => pieces.concat().into(),
            Sink::Timed(..) => Bytes::new(),
        }
    }

    fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        match self {
            Sink::Collect(pieces) => pieces.push(piece),
            Sink::Timed(start, pieces) => pieces.push((start.elapsed(), piece)),
        }
    }
}

/// One keep-alive HTTP/1.1 connection. Requests go one at a time; after a response that
/// closes the connection, or a failed exchange, the next send opens a new one.
pub struct Connection {
    addr: SocketAddr,
    conn: Option<ClientConn<TcpStream>>,
    timeout: Duration,
}

impl Connection {
    /// Connect to `addr` (within [`DEFAULT_TIMEOUT`]).
    pub async fn connect(addr: SocketAddr) -> Result<Connection, ClientError> {
        let timeout = DEFAULT_TIMEOUT;
        let stream = within(timeout, async { Ok(open(addr).await?) }).await?;
        Ok(Connection {
            addr,
            conn: Some(ClientConn::new(stream, LIMITS)),
            timeout,
        })
    }

    /// The timeout of each later exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Connection {
        self.timeout = timeout;
        self
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the TCP connection is still open for the next request.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Send `req` and read the whole response.
    pub async fn send(&mut self, req: &Request<'_>) -> Result<Response, ClientError> {
        let mut sink = Sink::collect();
        let (status, headers) = self.exchange(req, false, &mut sink).await?;
        Ok(Response {
            status,
            headers,
            body: sink.into_body(),
        })
    }

    /// Send `req` and read the response as it arrives: each body piece (each chunk of a
    /// chunked body, each read otherwise) with when it was complete, counted from the
    /// moment the request was written.
    #[allow(clippy::type_complexity)]
    pub async fn send_streaming(
        &mut self,
        req: &Request<'_>,
    ) -> Result<(u16, Vec<(String, String)>, Vec<(Duration, Bytes)>), ClientError> {
        let mut sink = Sink::Timed(Instant::now(), Vec::new());
        let (status, headers) = self.exchange(req, false, &mut sink).await?;
        let pieces = match sink {
            Sink::Timed(_, pieces) => pieces,
            Sink::Collect(_) => Vec::new(),
        };
        Ok((status, headers, pieces))
    }

    /// One exchange within the timeout; on any failure the connection is dropped.
    async fn exchange(
        &mut self,
        req: &Request<'_>,
        close: bool,
        sink: &mut Sink,
    ) -> Result<(u16, Vec<(String, String)>), ClientError> {
        let result = within(self.timeout, self.exchange_inner(req, close, sink)).await;
        if result.is_err() {
            self.conn = None;
        }
        Ok(result?)
    }

    async fn exchange_inner(
        &mut self,
        req: &Request<'_>,
        close: bool,
        sink: &mut Sink,
    ) -> Result<(u16, Vec<(String, String)>), ConnError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self
                .conn
                .insert(ClientConn::new(open(self.addr).await?, LIMITS)),
        };
        if let Sink::Timed(start, _) = sink {
            *start = Instant::now();
        }
        conn.send(req, self.addr, close).await?;
        let mut headers = Vec::new();
        let head = conn
            .read_response(
                req.method.eq_ignore_ascii_case("HEAD"),
                |name, value| {
                    let value = String::from_utf8_lossy(value).trim().to_string();
                    headers.push((name.to_string(), value));
                },
                |piece| sink.push(piece),
            )
            .await?;
        if !head.keep_alive {
            self.conn = None;
        }
        Ok((head.status, headers))
    }
}

async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request on a new connection (`Connection: close`), within [`DEFAULT_TIMEOUT`].
pub async fn send(addr: SocketAddr, req: &Request<'_>) -> Result<Response, ClientError> {
    send_with_timeout(addr, req, DEFAULT_TIMEOUT).await
}

/// [`send`] with its own timeout for the whole exchange, connect included.
pub async fn send_with_timeout(
    addr: SocketAddr,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut conn = Connection {
        addr,
        conn: None,
        timeout,
    };
    let mut sink = Sink::collect();
    let (status, headers) = conn.exchange(req, true, &mut sink).await?;
    Ok(Response {
        status,
        headers,
        body: sink.into_body(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_read_their_headers_and_body() {
        let r = Response {
            status: 200,
            headers: vec![("X-Served-By".to_string(), "a".to_string())],
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        assert_eq!(r.header("x-served-by"), Some("a"));
        assert_eq!(r.json().unwrap()["a"], 1);
        assert_eq!(r.text(), "{\"a\":1}");
    }
}
