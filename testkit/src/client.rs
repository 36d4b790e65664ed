//! A minimal HTTP/1.1 client for the integration tests, the demo's traffic and the scenario
//! runner: one keep-alive [`Connection`], or a one-shot [`send`]. It frames request bodies
//! by `Content-Length` (or sends them as given when the caller sets `Transfer-Encoding`),
//! reads responses framed by `Content-Length`, chunked encoding or the end of the
//! connection, skips interim 1xx answers, and can record when each piece of a streamed
//! answer arrived ([`Connection::send_streaming`]), which is how tests prove that the
//! gateway forwards Server-Sent Events without buffering them.
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
//! when tests need HTTP/2 or TLS clients; `tests/tls.rs` already uses tokio-rustls directly.

use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one exchange (connect, write, read the whole answer) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Largest response body the client reads.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Parse(String),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before a complete response")]
    Closed,
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn parse_err(what: impl Into<String>) -> ClientError {
    ClientError::Parse(what.into())
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

/// A request. `Host` is added unless given; `Content-Length` is added for a body (and for
/// POST, PUT and PATCH) unless `Content-Length` or `Transfer-Encoding` is given, in which
/// case `body` is sent exactly as it is (see [`chunked`]).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            headers: Vec::new(),
            body: &[],
        }
    }

    pub fn get(path: &'a str) -> Request<'a> {
        Request::new("GET", path)
    }

    pub fn post(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request::new("POST", path).body(body)
    }

    /// Add a header (repeats are sent as repeats).
    pub fn header(mut self, name: &'a str, value: impl AsRef<str>) -> Request<'a> {
        self.headers.push((name, value.as_ref().to_string()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Request<'a> {
        self.body = body;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The request head (and the body, when small) in wire format.
    fn encode(&self, host: SocketAddr, close: bool, out: &mut Vec<u8>) {
        out.clear();
        let push = |out: &mut Vec<u8>, parts: &[&[u8]]| {
            for p in parts {
                out.extend_from_slice(p);
            }
        };
        push(
            out,
            &[
                self.method.as_bytes(),
                b" ",
                self.path.as_bytes(),
                b" HTTP/1.1\r\n",
            ],
        );
        if !self.has_header("host") {
            push(out, &[b"host: ", host.to_string().as_bytes(), b"\r\n"]);
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        let wants_length = !self.body.is_empty()
            || ["POST", "PUT", "PATCH"]
                .iter()
                .any(|m| self.method.eq_ignore_ascii_case(m));
        if !framed && wants_length {
            push(
                out,
                &[
                    b"content-length: ",
                    self.body.len().to_string().as_bytes(),
                    b"\r\n",
                ],
            );
        }
        if close && !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        for (k, v) in &self.headers {
            push(out, &[k.as_bytes(), b": ", v.as_bytes(), b"\r\n"]);
        }
        out.extend_from_slice(b"\r\n");
        if self.body.len() <= 64 * 1024 {
            out.extend_from_slice(self.body);
        }
    }
}

/// `parts` in chunked transfer encoding, to send with `Transfer-Encoding: chunked`.
pub fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
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

    fn push(&mut self, piece: Bytes) -> Result<(), ClientError> {
        match self {
            Sink::Collect(pieces) => {
                if !piece.is_empty() {
                    pieces.push(piece);
                }
            }
            Sink::Timed(start, pieces) => {
                if !piece.is_empty() {
                    pieces.push((start.elapsed(), piece));
                }
            }
        }
        Ok(())
    }
}

/// The head of a response.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
}

/// One keep-alive HTTP/1.1 connection. Requests go one at a time; after a response that
/// closes the connection, or a failed exchange, the next send opens a new one.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: BytesMut,
    out: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    /// Connect to `addr` (within [`DEFAULT_TIMEOUT`]).
    pub async fn connect(addr: SocketAddr) -> Result<Connection, ClientError> {
        let mut c = Connection {
            addr,
            stream: None,
            buf: BytesMut::with_capacity(8 * 1024),
            out: Vec::with_capacity(1024),
            timeout: DEFAULT_TIMEOUT,
        };
        let stream = tokio::time::timeout(c.timeout, open(addr))
            .await
            .map_err(|_| ClientError::Timeout(c.timeout))??;
        c.stream = Some(stream);
        Ok(c)
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
        self.stream.is_some()
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
        let timeout = self.timeout;
        let result =
            match tokio::time::timeout(timeout, self.exchange_inner(req, close, sink)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout(timeout)),
            };
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    async fn exchange_inner(
        &mut self,
        req: &Request<'_>,
        close: bool,
        sink: &mut Sink,
    ) -> Result<(u16, Vec<(String, String)>), ClientError> {
        if self.stream.is_none() {
            self.stream = Some(open(self.addr).await?);
        }
        self.buf.clear();
        req.encode(self.addr, close, &mut self.out);
        if let Sink::Timed(start, _) = sink {
            *start = Instant::now();
        }
        {
            let stream = self.stream.as_mut().ok_or(ClientError::Closed)?;
            stream.write_all(&self.out).await?;
            if req.body.len() > 64 * 1024 {
                stream.write_all(req.body).await?;
            }
        }
        let is_head = req.method.eq_ignore_ascii_case("HEAD");
        let head = self.read_head(is_head).await?;
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => self.read_length(n, sink).await?,
            Framing::Chunked => self.read_chunked(sink).await?,
            Framing::UntilClose => self.read_to_close(sink).await?,
        }
        if !head.keep_alive || head.framing == Framing::UntilClose {
            self.stream = None;
            self.buf.clear();
        }
        Ok((head.status, head.headers))
    }

    /// Read more bytes into the buffer; `Closed` at end of stream.
    async fn fill(&mut self, want: usize) -> Result<(), ClientError> {
        let stream = self.stream.as_mut().ok_or(ClientError::Closed)?;
        self.buf.reserve(want.clamp(1024, 1024 * 1024));
        if stream.read_buf(&mut self.buf).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// The head of the final response (interim 1xx answers are skipped).
    async fn read_head(&mut self, is_head: bool) -> Result<Head, ClientError> {
        loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let http11 = resp.version == Some(1);
                        let owned: Vec<(String, String)> = resp
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect();
                        Some((n, status, http11, owned))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => return Err(parse_err(format!("bad response head: {e}"))),
                }
            };
            let Some((n, status, http11, headers)) = parsed else {
                if self.buf.len() > MAX_HEAD {
                    return Err(parse_err("response head too large"));
                }
                self.fill(4096).await?;
                continue;
            };
            self.buf.advance(n);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let framing = framing(status, is_head, &headers)?;
            let conn = header_of(&headers, "connection").unwrap_or("");
            let has = |token: &str| {
                conn.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            };
            let keep_alive = status != 101
                && if http11 {
                    !has("close")
                } else {
                    has("keep-alive")
                };
            return Ok(Head {
                status,
                headers,
                framing,
                keep_alive,
            });
        }
    }

    async fn read_length(&mut self, n: usize, sink: &mut Sink) -> Result<(), ClientError> {
        if n > MAX_BODY {
            return Err(parse_err("response body too large"));
        }
        let mut left = n;
        loop {
            let take = left.min(self.buf.len());
            if take > 0 {
                sink.push(self.buf.split_to(take).freeze())?;
                left -= take;
            }
            if left == 0 {
                return Ok(());
            }
            self.fill(left).await?;
        }
    }

    async fn read_to_close(&mut self, sink: &mut Sink) -> Result<(), ClientError> {
        let mut total = 0usize;
        loop {
            if !self.buf.is_empty() {
                total += self.buf.len();
                if total > MAX_BODY {
                    return Err(parse_err("response body too large"));
                }
                let piece = self.buf.split().freeze();
                sink.push(piece)?;
            }
            match self.fill(16 * 1024).await {
                Ok(()) => {}
                Err(ClientError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_chunked(&mut self, sink: &mut Sink) -> Result<(), ClientError> {
        let mut total = 0usize;
        loop {
            // The size line.
            let line = loop {
                if let Some(i) = find_crlf(&self.buf) {
                    break i;
                }
                if self.buf.len() > 4096 {
                    return Err(parse_err("chunk size line too long"));
                }
                self.fill(4096).await?;
            };
            let size_text = self.buf[..line]
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let size = std::str::from_utf8(size_text)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 16)
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(|| parse_err("bad chunk size"))?;
            self.buf.advance(line + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    match find_crlf(&self.buf) {
                        Some(0) => {
                            self.buf.advance(2);
                            return Ok(());
                        }
                        Some(i) => self.buf.advance(i + 2),
                        None if self.buf.len() > MAX_HEAD => {
                            return Err(parse_err("trailers too large"))
                        }
                        None => self.fill(1024).await?,
                    }
                }
            }
            total += size;
            if total > MAX_BODY {
                return Err(parse_err("response body too large"));
            }
            while self.buf.len() < size + 2 {
                let want = size + 2 - self.buf.len();
                self.fill(want).await?;
            }
            let data = self.buf.split_to(size).freeze();
            if &self.buf[..2] != b"\r\n" {
                return Err(parse_err("chunk not followed by CRLF"));
            }
            self.buf.advance(2);
            sink.push(data)?;
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// How the body of a response with this status and these headers ends (RFC 9112 §6.3).
fn framing(
    status: u16,
    is_head: bool,
    headers: &[(String, String)],
) -> Result<Framing, ClientError> {
    if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    if let Some(te) = header_of(headers, "transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| parse_err(format!("bad content-length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(parse_err("conflicting content-length headers"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

async fn open(addr: SocketAddr) -> Result<TcpStream, ClientError> {
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
        stream: None,
        buf: BytesMut::with_capacity(4 * 1024),
        out: Vec::with_capacity(512),
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

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_encode_with_host_length_and_close() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out = Vec::new();
        Request::post("/p", b"{}")
            .header("X-A", "1")
            .encode(addr, true, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /p HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 2\r\nconnection: close\r\nX-A: 1\r\n\r\n{}"
        );
        Request::get("/g").encode(addr, false, &mut out);
        assert_eq!(out, b"GET /g HTTP/1.1\r\nhost: 127.0.0.1:9\r\n\r\n");
        let body = chunked(&[b"ab", b"", b"cde"]);
        assert_eq!(body, b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");
        Request::post("/c", &body)
            .header("transfer-encoding", "chunked")
            .encode(addr, false, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
    }

    #[test]
    fn framing_follows_the_rfc() {
        assert_eq!(framing(204, false, &[]).unwrap(), Framing::None);
        assert_eq!(
            framing(200, true, &h(&[("content-length", "5")])).unwrap(),
            Framing::None
        );
        assert_eq!(
            framing(200, false, &h(&[("Content-Length", "5")])).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            framing(
                200,
                false,
                &h(&[("Transfer-Encoding", "chunked"), ("content-length", "5")])
            )
            .unwrap(),
            Framing::Chunked
        );
        assert_eq!(framing(200, false, &[]).unwrap(), Framing::UntilClose);
        assert!(framing(200, false, &h(&[("content-length", "x")])).is_err());
        let r = Response {
            status: 200,
            headers: h(&[("X-Served-By", "a")]),
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        assert_eq!(r.header("x-served-by"), Some("a"));
        assert_eq!(r.json().unwrap()["a"], 1);
    }
}
