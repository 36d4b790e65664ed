//! Requests whose body is larger than Pingora can re-send: the gateway sends them itself.
//!
//! Pingora 0.9 replays a body read before `upstream_peer` only through its retry buffer,
//! which stops at 64 KiB (`BODY_BUF_LIMIT`; Pingora issues 349 and 575). Above that its
//! proxy loop would send the upstream nothing, and a failover could not re-send the body.
//! So a request whose whole body the gateway holds (see `body`) and that is larger than
//! `INSPECT_LIMIT` goes through this small loop on Pingora's public connector instead:
//! the same steps as the proxy phases (`acquire`, `http_peer`, `forward_headers`,
//! `on_upstream_header`, `on_connect_failure`, `on_attempt_failed`, decision headers, cache
//! capture), each attempt sending the whole body, and the answer streamed back chunk by
//! chunk as it arrives (SSE stays unbuffered; gRPC trailers are passed on). Connections are
//! pooled by the connector, HTTP/1.1 keep-alive and h2 alike.
//!
//! Cost: the body is held once (a refcounted `Bytes`, never copied per attempt); the
//! connector is one per process, so large requests do not share Pingora's own upstream pool.

use super::{
    acquire, forward_headers, http_peer, on_attempt_failed, on_body, on_connect_failure,
    on_response, on_trailers, on_upstream_header, respond_error, upstream_status, RequestCtx,
};
use crate::error::GatewayError;
use crate::policy::compile::RoutingTable;
use crate::serving::Serving;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::OnceLock;

fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
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
    let mut req = session.req_header().clone();
    req.remove_header(&http::header::TRANSFER_ENCODING);
    if !ctx.grpc {
        // (gRPC over HTTP/2 frames its messages itself and sends no length.)
        req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    }
    loop {
        let target = match acquire(ctx, table) {
            Ok(target) => target,
            Err(err) => return fail(session, ctx, err).await,
        };
        let peer = http_peer(ctx, table, target);
        forward_headers(&mut req, ctx, session)?;
        let mut upstream = match exchange(&peer, &req, &body).await {
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

/// Connect, send the request header and the whole body, read the response header.
async fn exchange(
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> std::result::Result<HttpSession, Failed> {
    let (mut upstream, reused) = connector()
        .get_http_session(peer)
        .await
        .map_err(Failed::Connect)?;
    upstream.set_read_timeout(peer.options.read_timeout);
    upstream.set_write_timeout(peer.options.write_timeout);
    let sent = async {
        upstream.write_request_header(Box::new(req.clone())).await?;
        upstream.write_request_body(body.clone(), true).await?;
        upstream.finish_request_body().await?;
        upstream.read_response_header().await
    };
    match sent.await {
        Ok(()) => Ok(upstream),
        Err(error) => Err(Failed::Exchange { error, reused }),
    }
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
