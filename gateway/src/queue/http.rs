//! A small HTTP/1.1 client for the dispatcher and for callbacks: one request per
//! connection (`Connection: close`), `Content-Length` bodies, responses with a length,
//! chunked or read to EOF, every step under one deadline and the response bounded in size.
//!
//! Why not Pingora's connector: it is built around a downstream session, and batch work does
//! not need connection reuse (a job takes far longer than a TCP handshake on a LAN). Why not
//! `testkit::client`: that is test support, and this must be strict about limits and errors.

use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response header block accepted.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    /// Connect errors, time-outs and broken connections are worth another attempt.
    pub fn retryable(&self) -> bool {
        !matches!(self, HttpError::TooLarge(_))
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to send.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Value of the `Host` header.
    pub host: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Send one request to `addr` and read the whole response.
pub async fn send(
    addr: SocketAddr,
    req: &Outgoing<'_>,
    connect_timeout: Duration,
    timeout: Duration,
    max_response: usize,
) -> Result<HttpResponse, HttpError> {
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(HttpError::Connect(addr, e.to_string())),
        Err(_) => return Err(HttpError::Connect(addr, "connect timed out".into())),
    };
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(timeout, exchange(&mut stream, req, max_response)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout.as_millis())),
    }
}

fn skip_header(name: &str) -> bool {
    [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "te",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

async fn exchange(
    stream: &mut TcpStream,
    req: &Outgoing<'_>,
    max_response: usize,
) -> Result<HttpResponse, HttpError> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        req.method,
        req.path,
        req.host,
        req.body.len()
    );
    for (k, v) in req.headers {
        if !skip_header(k) && !k.contains(['\r', '\n', ':']) && !v.contains(['\r', '\n']) {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| HttpError::Io(e.to_string());
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(req.body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // Parse the head; skip interim 1xx responses.
        let (status, headers, consumed) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (resp.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_HEAD {
                        return Err(HttpError::Protocol("response head too large".into()));
                    }
                    if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                        return Err(HttpError::Io(
                            "connection closed before the response".into(),
                        ));
                    }
                }
                Err(e) => return Err(HttpError::Protocol(e.to_string())),
            }
        };
        let _ = buf.split_to(consumed);
        if (100..200).contains(&status) {
            continue;
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let chunked =
            find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if status == 204 || status == 304 || req.method.eq_ignore_ascii_case("HEAD") {
            Bytes::new()
        } else if chunked {
            read_chunked(stream, buf, max_response).await?
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| HttpError::Protocol("bad content-length".into()))?;
            if len > max_response {
                return Err(HttpError::TooLarge(max_response));
            }
            while buf.len() < len {
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err(HttpError::Io("connection closed mid-body".into()));
                }
            }
            buf.truncate(len);
            buf.freeze()
        } else {
            loop {
                if buf.len() > max_response {
                    return Err(HttpError::TooLarge(max_response));
                }
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    break;
                }
            }
            buf.freeze()
        };
        return Ok(HttpResponse {
            status,
            headers,
            body,
        });
    }
}

async fn read_chunked(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    max_response: usize,
) -> Result<Bytes, HttpError> {
    let io = |e: std::io::Error| HttpError::Io(e.to_string());
    let mut out = BytesMut::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if buf.len() > 1024 {
                return Err(HttpError::Protocol("bad chunk header".into()));
            }
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(HttpError::Io("connection closed mid-body".into()));
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Protocol("bad chunk size".into()))?;
        let _ = buf.split_to(line_end + 2);
        if size == 0 {
            return Ok(out.freeze()); // trailers, if any, are ignored (Connection: close)
        }
        if out.len() + size > max_response {
            return Err(HttpError::TooLarge(max_response));
        }
        while buf.len() < size + 2 {
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(HttpError::Io("connection closed mid-chunk".into()));
            }
        }
        out.extend_from_slice(&buf[..size]);
        let _ = buf.split_to(size + 2);
    }
}

/// A parsed `http://host[:port]/path` URL (callbacks are plain HTTP, like upstreams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(text: &str) -> Option<Url> {
    let rest = text.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        // [v6]:port
        let end = h.find(']')?;
        let port = match &h[end + 1..] {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (&h[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    Some(Url {
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://Example.com:8080/hook?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 8080, "/hook?x=1")
        );
        assert_eq!(parse_url("http://127.0.0.1").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]:9/a").unwrap().host, "::1");
        assert!(parse_url("https://x/").is_none());
        assert!(parse_url("http://user@x/").is_none());
        assert!(parse_url("http://:80/").is_none());
    }
}
