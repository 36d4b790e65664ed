//! Requests with a body: the gateway sends them itself.
//!
//! Every body is read whole before routing (see `body`). Pingora's proxy loop would then
//! replay it from its retry buffer, which costs twice:
//! - above 64 KiB it cannot (`BODY_BUF_LIMIT`; Pingora issues 349 and 575): its loop would
//!   send the upstream nothing, and a failover could not re-send the body;
//! - its HTTP/1 client writes and flushes the request header on its own, then the body:
//!   two sends, two segments and two wake-ups of the backend per request where one does
//!   (`docs/performance.md`, "What only Pingora can change", item 1).
//!
//! So a request whose whole body the gateway holds goes through this small loop on
//! Pingora's public connector instead: the same steps as the proxy phases (`acquire`,
//! `http_peer`, `forward_headers`, `on_upstream_header`, `on_connect_failure`,
//! `on_attempt_failed`, decision headers, cache capture), each attempt sending the whole
//! body (over HTTP/1, header and body in one write), a client that hangs up while the
//! backend works seen at once (as Pingora's loop does), and the answer streamed back chunk
//! by chunk as it arrives (SSE stays unbuffered; gRPC trailers are passed on). Connections
//! are pooled by the connector, HTTP/1.1 keep-alive and h2 alike. Requests without a body,
//! and gRPC up to 64 KiB (HTTP/2 frames its messages itself), keep Pingora's loop.
//!
//! Cost: the body is held once (a refcounted `Bytes`, never copied per attempt; a body up
//! to 64 KiB is copied into the one HTTP/1 write, a larger one is written as it is); the
//! connector is one per process, beside Pingora's own.

use super::{
    acquire, forward_headers, http_peer, on_attempt_failed, on_body, on_connect_failure,
    on_response, on_trailers, on_upstream_header, respond_error, upstream_status, RequestCtx,
};
use crate::error::GatewayError;
use crate::policy::compile::{RoutingTable, INSPECT_LIMIT};
use crate::serving::Serving;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::OnceLock;
use tokio::io::AsyncWriteExt;

pub(super) fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| {
        // Idle upstream connections kept, as many as Pingora's own pool keeps.
        let options = ConnectorOptions::new(crate::server::UPSTREAM_KEEPALIVE_POOL);
        Connector::new(Some(options))
    })
}

/// Whether this loop sends the request: a body Pingora could not replay, or any body but
/// a small gRPC one.
pub(super) fn takes(body: &Bytes, grpc: bool) -> bool {
    body.len() > INSPECT_LIMIT || (!grpc && !body.is_empty())
}

/// How one attempt ended before its answer reached the client.
enum Failed {
    /// No connection: nothing reached the backend.
    Connect(Box<Error>),
    /// Sent (some of) the request, then the connection failed or timed out. `reused`: the
    /// connection came from the keep-alive pool (a stale one fails this way, harmlessly).
    Exchange { error: Box<Error>, reused: bool },
}

/// Serve the request through the gateway's own upstream client and write the answer (or
/// the error) downstream. `ctx` carries the classification and decision; `body` is whole.
pub(super) async fn serve(
    session: &mut Session,
    ctx: &mut RequestCtx,
    table: &Serving,
    body: Bytes,
) -> Result<()> {
    let mut req = upstream_request(session.req_header(), body.len(), ctx.grpc)?;
    loop {
        let target = match acquire(ctx, table) {
            Ok(target) => target,
            Err(err) => return fail(session, ctx, err).await,
        };
        let peer = http_peer(ctx, table, target);
        forward_headers(&mut req, ctx, session)?;
        let exchanged = {
            // A client that hangs up while the backend works ends the attempt at once (a
            // 499 in `fail_to_proxy`), as in Pingora's loop.
            let hung_up = session.as_mut().read_body_or_idle(true);
            tokio::select! {
                biased;
                exchanged = exchange(&peer, &req, &body) => exchanged,
                gone = hung_up => {
                    // (HTTP/1 reports a closed socket, HTTP/2 a reset stream: both are a
                    // client gone, so both end as its 499.)
                    ctx.release();
                    let why = "the client hung up before the answer";
                    let e = match gone {
                        Err(cause) => Error::because(ErrorType::ConnectionClosed, why, cause),
                        Ok(_) => Error::explain(ErrorType::ConnectionClosed, why),
                    };
                    return Err(e.into_down());
                }
            }
        };
        let mut upstream = match exchanged {
            Ok(upstream) => upstream,
            Err(Failed::Connect(e)) => {
                let tls = crate::tls::upstream::is_tls_failure(&e);
                if on_connect_failure(ctx, &e, tls) {
                    continue;
                }
                let err = match tls {
                    true => GatewayError::UpstreamTls(crate::tls::upstream::reason(&e)),
                    false => GatewayError::UpstreamUnavailable(e.to_string()),
                };
                return fail(session, ctx, err).await;
            }
            Err(Failed::Exchange { error, reused }) => {
                // A keep-alive connection the backend had closed: the body is whole, so
                // sending it again is always safe and says nothing about the endpoint.
                let stale = reused
                    && !matches!(
                        error.etype(),
                        ErrorType::ReadTimedout | ErrorType::WriteTimedout
                    );
                let retry = if stale {
                    ctx.release();
                    true
                } else {
                    let retry = on_attempt_failed(ctx, true);
                    ctx.release();
                    retry
                };
                if retry {
                    continue;
                }
                return fail(session, ctx, attempt_error(ctx, table, &error)).await;
            }
        };
        let Some(header) = upstream.response_header().cloned() else {
            ctx.release();
            let err = GatewayError::UpstreamFailed("no response header".into());
            return fail(session, ctx, err).await;
        };
        if on_upstream_header(ctx, upstream_status(ctx, &header), true) {
            // A 5xx on an idempotent route, retried elsewhere with the whole body.
            upstream.shutdown().await;
            ctx.release();
            continue;
        }
        return relay(session, ctx, upstream, header, &peer).await;
    }
}

/// The request as the backend gets it: HTTP/1.1 (an HTTP/2 client's `:authority` as
/// `Host`; the h2 client turns it back), the whole body's length, and none of the
/// hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and the fields it names, `Keep-Alive`,
/// `Proxy-Connection`, `Upgrade`, `Transfer-Encoding`, `TE` but `trailers`) nor `Expect`
/// (the gateway answered the client's `100-continue` and holds the whole body). Upstream
/// keep-alive is the gateway's own business.
pub(super) fn upstream_request(
    client: &RequestHeader,
    len: usize,
    grpc: bool,
) -> Result<RequestHeader> {
    let mut req = client.clone();
    req.set_version(http::Version::HTTP_11);
    if !req.headers.contains_key(header::HOST) {
        if let Some(authority) = client.uri.authority() {
            req.insert_header(header::HOST, authority.as_str())?;
        }
    }
    let named: Vec<HeaderName> = client
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| ![header::HOST, header::CONTENT_TYPE].contains(name))
        .collect();
    for name in named {
        req.remove_header(&name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ] {
        req.remove_header(&name);
    }
    let te_trailers = |v: &HeaderValue| v.as_bytes().eq_ignore_ascii_case(b"trailers");
    if req.headers.get(header::TE).is_some_and(|v| !te_trailers(v)) {
        req.remove_header(&header::TE);
    }
    if grpc {
        // (gRPC over HTTP/2 frames its messages itself and sends no length.)
        req.remove_header(&header::CONTENT_LENGTH);
    } else {
        req.insert_header(header::CONTENT_LENGTH, HeaderValue::from(len))?;
    }
    Ok(req)
}

/// Connect, send the request header and the whole body, read the response header.
async fn exchange(
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> std::result::Result<HttpSession, Failed> {
    let (upstream, reused) = connector()
        .get_http_session(peer)
        .await
        .map_err(Failed::Connect)?;
    let sent = match upstream {
        HttpSession::H1(h1) if req.method != http::Method::HEAD => {
            one_write(h1, peer, req, body).await.map(HttpSession::H1)
        }
        mut upstream => {
            upstream.set_read_timeout(peer.options.read_timeout);
            upstream.set_write_timeout(peer.options.write_timeout);
            let sent = async {
                upstream.write_request_header(Box::new(req.clone())).await?;
                upstream.write_request_body(body.clone(), true).await?;
                upstream.finish_request_body().await?;
                upstream.read_response_header().await
            };
            sent.await.map(|()| upstream)
        }
    };
    sent.map_err(|error| Failed::Exchange { error, reused })
}

/// HTTP/1: the request header and a body up to 64 KiB in one write and one segment
/// (Pingora's `write_request_header` flushes the header on its own), then the response
/// header. A larger body follows the header without being copied.
///
/// Through the public API only: the session is taken apart for its stream, the request
/// serialised by Pingora's own `http_req_header_to_wire`, and a new session built on the
/// stream reads the answer. That session never saw the request, which matters to it for a
/// `HEAD` (never sent here), an upgrade (`Upgrade` is removed above) and a request's
/// `Connection: close` (removed above: keep-alive is decided by the answer).
pub(crate) async fn one_write(
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
    // A small body joins the header in one buffer and one send. A large one is written
    // after it, never copied: the body budget (`limits.max_buffered_bytes`) counts each body
    // once, and one segment more is nothing beside a large upload.
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

/// Write the answer downstream as it arrives: header (with the decision headers, and the
/// cache deciding whether to capture it), body chunks, trailers.
async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut upstream: HttpSession,
    header: ResponseHeader,
    peer: &HttpPeer,
) -> Result<()> {
    let mut resp = header;
    if session.as_ref().is_http2() {
        // Connection-specific fields have no place in an HTTP/2 answer.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ] {
            resp.remove_header(name);
        }
    } else {
        resp.remove_header("connection");
        resp.remove_header("keep-alive");
    }
    on_response(ctx, &mut resp);
    // A gRPC trailers-only answer (its status in the header) ends with the header.
    let trailers_only = ctx.grpc && resp.headers.contains_key("grpc-status");
    session
        .write_response_header(Box::new(resp), trailers_only)
        .await?;
    if trailers_only {
        release(upstream, peer).await;
        return Ok(());
    }
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) => {
                let chunk = Some(chunk);
                if !ctx.grpc && upstream.response_done() {
                    // The last chunk. The cache learns that the body ended, and the
                    // connection goes back to the pool, before the chunk goes out (as in
                    // Pingora's loop): a client with the whole answer may send its next
                    // request at once, and must find the flight finished and the
                    // connection idle, not open another one.
                    on_body(ctx, &chunk, true);
                    release(upstream, peer).await;
                    session.write_response_body(chunk, false).await?;
                    return session.write_response_body(None, true).await;
                }
                on_body(ctx, &chunk, false);
                session.write_response_body(chunk, false).await?;
            }
            Ok(None) => break,
            Err(e) => {
                // The header is out: the client sees the connection end early.
                on_attempt_failed(ctx, false);
                upstream.shutdown().await;
                return Err(e);
            }
        }
    }
    let trailers = match &mut upstream {
        HttpSession::H2(h2) => h2.read_trailers().await?,
        _ => None,
    };
    match trailers {
        // Trailers end the stream (gRPC's status travels in them).
        Some(trailers) => {
            on_trailers(ctx, &trailers);
            if !ctx.grpc {
                on_body(ctx, &None, true);
            }
            session.as_mut().write_response_trailers(trailers).await?;
        }
        None => {
            on_body(ctx, &None, true);
            session.write_response_body(None, true).await?;
        }
    }
    release(upstream, peer).await;
    Ok(())
}

/// Give a finished upstream session back to the connector's pool.
async fn release(mut upstream: HttpSession, peer: &HttpPeer) {
    if upstream.response_done() {
        connector()
            .release_http_session(upstream, peer, peer.options.idle_timeout)
            .await;
    } else {
        upstream.shutdown().await;
    }
}

/// The error an attempt that failed mid-exchange is reported as.
fn attempt_error(ctx: &RequestCtx, table: &RoutingTable, e: &Error) -> GatewayError {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            let timeout = ctx
                .class
                .as_ref()
                .map_or(0, |c| table.tiers[c.tier as usize].timeout.as_millis());
            GatewayError::UpstreamTimeout(timeout)
        }
        _ => GatewayError::UpstreamFailed(e.to_string()),
    }
}

/// Answer with `err` (the attempt's slots are already given back).
async fn fail(session: &mut Session, ctx: &mut RequestCtx, err: GatewayError) -> Result<()> {
    ctx.own_status = Some(err.status());
    respond_error(session, &err, ctx).await
}
