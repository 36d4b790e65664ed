//! Connections to backends: the connectors and their keep-alive pools, the peer of an
//! endpoint (plain, TLS with the pool's trust settings, or h2c for gRPC), and the HTTP/1
//! request written in one send.
//!
//! Each kind of connection lives in one pool (shadow copies' aside, below): plain HTTP/1.1
//! (most in-house pools) in Pingora's HTTP/1 connector, which can be asked for a pooled
//! connection alone ([`session`]: the common case costs a small future, and only a new
//! connection pays for connecting); TLS endpoints (HTTP/2 or HTTP/1.1 by ALPN) and h2c
//! (gRPC) in Pingora's full connector, which negotiates the protocol. An HTTP/2 connection
//! carries up to [`H2_STREAMS`] requests at once.
//!
//! Shadow copies (`upstream::shadow`) keep their plain HTTP/1.1 connections in a pool of
//! their own ([`Keepalive::Shadow`]): those connections are opened on the shadow thread and
//! registered with its runtime, so a client's request never picks one up and waits on the
//! shadow thread to be told its answer has come. (TLS and h2c copies share the full
//! connector's pools.)
//!
//! A TLS handshake that fails (the pool's certificate is not trusted, names another host,
//! or our client certificate is refused) is a configuration problem, not an outage: it is
//! answered as 502 `upstream_tls` saying why, and the endpoint is not ejected.

use crate::policy::compile::{Endpoint, Pool, INSPECT_LIMIT};
use crate::serving::resources::PoolTls;
use bytes::Bytes;
use pingora::connectors::http::{v1, Connector};
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Requests one HTTP/2 connection to a backend carries at once (gRPC over h2c, `https://`
/// endpoints that choose h2): in-flight calls share a few connections, as gRPC clients and
/// Envoy do, instead of one connection each (Pingora's default). The server's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` caps it further; a call beyond it opens another
/// connection.
pub const H2_STREAMS: usize = 100;

/// Idle upstream connections kept per process.
pub const KEEPALIVE_POOL: usize = 1024;

/// How long an idle pooled upstream connection is kept.
pub const IDLE: Duration = Duration::from_secs(60);

/// The connector for TLS and HTTP/2 peers: Pingora's, with its HTTP/1.1 and HTTP/2 pools.
/// Built at start (`connectors()` in `Gateway::new`): it loads the system's CA certificates,
/// which no request (and no endpoint's latency estimate) should pay for.
pub fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(Some(ConnectorOptions::new(KEEPALIVE_POOL))))
}

/// The connector for plain HTTP/1.1 peers, and its pool.
fn plain() -> &'static v1::Connector {
    static PLAIN: OnceLock<v1::Connector> = OnceLock::new();
    PLAIN.get_or_init(|| v1::Connector::new(Some(ConnectorOptions::new(KEEPALIVE_POOL))))
}

/// The plain HTTP/1.1 connector of shadow copies, and its pool (sized like the clients':
/// it holds the copies' in-flight set of connections between copies).
fn shadow_plain() -> &'static v1::Connector {
    static SHADOW: OnceLock<v1::Connector> = OnceLock::new();
    SHADOW.get_or_init(|| v1::Connector::new(Some(ConnectorOptions::new(KEEPALIVE_POOL))))
}

/// Which keep-alive pool an attempt's plain HTTP/1.1 connection comes from and goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keepalive {
    /// Clients' requests, retries, hedges and queued jobs.
    #[default]
    Shared,
    /// Shadow copies, on the shadow thread.
    Shadow,
}

impl Keepalive {
    fn plain(self) -> &'static v1::Connector {
        match self {
            Keepalive::Shared => plain(),
            Keepalive::Shadow => shadow_plain(),
        }
    }
}

/// Build both connectors now (start-up), not on a request.
pub fn connectors() {
    connector();
    plain();
}

/// Whether `peer` is plain HTTP/1.1 (its connections live in [`plain`]'s pool).
fn is_plain_h1(peer: &HttpPeer) -> bool {
    !peer.is_tls() && peer.options.alpn.get_max_http_version() == 1
}

/// A session to `peer`, and whether it came from the pool. A pooled plain HTTP/1.1
/// connection is found with a small future; connecting (and every TLS or HTTP/2 peer) goes
/// through a boxed one, so the common case does not carry Pingora's connect machinery (~9
/// KiB of future state, copied with every request's future) inline.
pub async fn session(peer: &HttpPeer, keepalive: Keepalive) -> Result<(HttpSession, bool)> {
    if is_plain_h1(peer) {
        let plain = keepalive.plain();
        if let Some(h1) = plain.reused_http_session(peer).await {
            return Ok((HttpSession::H1(h1), true));
        }
        return crate::cold(|| plain.get_http_session(peer))
            .await
            .map(|(h1, reused)| (HttpSession::H1(h1), reused));
    }
    crate::cold(|| connector().get_http_session(peer)).await
}

/// Give a session whose answer was read to its end back to its pool (else close it).
pub async fn release(session: HttpSession, peer: &HttpPeer, keepalive: Keepalive) {
    match session {
        HttpSession::H1(h1) if is_plain_h1(peer) => {
            keepalive
                .plain()
                .release_http_session(h1, peer, Some(IDLE))
                .await
        }
        session => {
            connector()
                .release_http_session(session, peer, Some(IDLE))
                .await
        }
    }
}

/// How an attempt talks to an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Each read and write of the exchange (the tier's `timeout`).
    pub io: Duration,
}

/// The peer for an attempt on `endpoint` of `pool`. gRPC goes to the endpoint's gRPC port
/// as h2c with prior knowledge (gRPC servers speak HTTP/2 only; `decide` offers gRPC routes
/// only pools whose endpoints all have one). `https://` endpoints: SNI and the certificate
/// check use the host name as written, the pool's CA and client certificate, ALPN `h2` then
/// `http/1.1`.
pub fn peer(
    pool: &Pool,
    endpoint: &Endpoint,
    tls: &PoolTls,
    grpc: bool,
    timeouts: Timeouts,
) -> HttpPeer {
    let addr = match endpoint.grpc {
        Some(addr) if grpc => addr,
        _ => endpoint.addr,
    };
    let mut peer = match &endpoint.sni {
        Some(sni) if !grpc => {
            let spec = &pool.hosted.tls;
            let mut peer = HttpPeer::new(addr, true, sni.to_string());
            peer.options.verify_cert = spec.verify;
            peer.options.verify_hostname = spec.verify;
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client.clone();
            peer.group_key = spec.group;
            peer.options.set_http_version(2, 1);
            peer
        }
        _ => HttpPeer::new(addr, false, String::new()),
    };
    if grpc {
        peer.options.set_http_version(2, 2);
    }
    peer.options.max_h2_streams = H2_STREAMS;
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.read_timeout = Some(timeouts.io);
    peer.options.write_timeout = Some(timeouts.io);
    peer.options.idle_timeout = Some(IDLE);
    peer
}

/// Whether a failed connect was the TLS handshake (certificate or protocol), not TCP.
pub fn is_tls_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    )
}

/// What the client is told about a failed upstream TLS handshake (no secrets in it: the
/// peer address and rustls' reason).
pub fn tls_reason(e: &Error) -> String {
    format!("TLS handshake with the pool failed: {e}")
}

/// HTTP/1: the request header and a body up to 64 KiB in one write and one segment
/// (Pingora's `write_request_header` flushes the header on its own: two sends, two segments
/// and two wake-ups of the backend per request where one does), then the response header. A
/// larger body follows the header without being copied: the body budget
/// (`limits.max_buffered_bytes`) counts each body once, and one segment more is nothing
/// beside a large upload.
///
/// Through the public API only: the session is taken apart for its stream, the request
/// serialised by Pingora's own `http_req_header_to_wire`, and a new session built on the
/// stream reads the answer. That session never saw the request, which matters to it for a
/// `HEAD` (never sent this way), an upgrade (`Upgrade` is never forwarded) and a request's
/// `Connection: close` (never forwarded: keep-alive is decided by the answer).
pub async fn one_write(
    h1: Http1,
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<Http1> {
    let mut stream = h1.into_inner();
    let mut wire = http_req_header_to_wire(req).ok_or_else(|| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request line not fit for HTTP/1.1",
        )
    })?;
    let small = body.len() <= INSPECT_LIMIT;
    if small {
        wire.extend_from_slice(body);
    }
    let write = async {
        stream.write_all(&wire).await?;
        if !small {
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => {
            Error::because(ErrorType::WriteTimedout, "writing the request (timeout)", e)
        }
        _ => Error::because(ErrorType::WriteError, "writing the request", e),
    })?;
    let mut h1 = Http1::new_with_options(stream, peer);
    h1.read_timeout = peer.options.read_timeout;
    h1.write_timeout = peer.options.write_timeout;
    h1.read_response().await?;
    Ok(h1)
}

/// One request to an address that is not a pool's endpoint (a job's callback URL, the
/// readiness self-check): plain HTTP through the same connector, the answer read whole up to
/// `max` bytes.
pub async fn request_once(
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
    max: usize,
) -> Result<(u16, Bytes)> {
    let (session, _) = self::session(peer, Keepalive::Shared).await?;
    let mut session = match session {
        HttpSession::H1(h1) => HttpSession::H1(one_write(h1, peer, req, body).await?),
        other => other,
    };
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if out.len() + chunk.len() > max {
            session.shutdown().await;
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "answer too large");
        }
        out.extend_from_slice(&chunk);
    }
    if session.response_done() {
        release(session, peer, Keepalive::Shared).await;
    }
    Ok((status, out.freeze()))
}

/// A plain HTTP peer for [`request_once`].
pub fn plain_peer(addr: std::net::SocketAddr, timeouts: Timeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.read_timeout = Some(timeouts.io);
    peer.options.write_timeout = Some(timeouts.io);
    peer.options.idle_timeout = Some(IDLE);
    peer
}
