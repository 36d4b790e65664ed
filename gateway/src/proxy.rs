//! The Pingora `ProxyHttp` implementation: the request path, phase by phase.
//!
//! `request_filter` loads the policy snapshot, matches the route, reads the body (bounded),
//! classifies and decides; `upstream_peer` hands Pingora the chosen endpoint (and re-decides,
//! excluding what was tried, on a retry); the response filters stamp the decision headers and
//! feed the live latency estimates; `logging` records metrics and the access log line. The
//! stages themselves live in `classify` and `route`; this file only calls them in order and
//! converts their outcomes into responses through `error.rs`.
//!
//! Seams for the next stages: a cache lookup goes between classification and the decision
//! (the `Class` already carries `cacheable`), and a queue destination is another outcome of
//! the decision, answered from `request_filter` without an upstream.

use crate::classify::{self, Class, RequestFacts};
use crate::error::GatewayError;
use crate::policy::compile::{PoolId, RoutingTable, INSPECT_LIMIT};
use crate::policy::raw::Protocol;
use crate::policy::Snapshot;
use crate::route::state::now_ms;
use crate::route::{self, Decision};
use crate::telemetry as t;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's proxy service.
pub struct Gateway {
    snapshot: Snapshot,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Self {
        Gateway { snapshot }
    }
}

/// Per-request state, carried across Pingora's phases.
pub struct RequestCtx {
    start: Instant,
    table: Option<Arc<RoutingTable>>,
    class: Option<Class>,
    decision: Option<Decision>,
    /// The attempt in flight: pool and endpoint, and when it was sent.
    current: Option<(PoolId, u16)>,
    attempt_start: Option<Instant>,
    tried: Vec<(PoolId, u16)>,
    /// An error decided before or instead of proxying, rendered by `fail_to_proxy`.
    pending: Option<GatewayError>,
    /// Status of a response the gateway wrote itself.
    own_status: Option<u16>,
}

impl RequestCtx {
    fn pool_name(&self) -> &str {
        match (&self.table, self.current.or(self.tried.last().copied())) {
            (Some(t), Some((p, _))) => &t.pools[p as usize].name,
            _ => "none",
        }
    }

    /// End the attempt in flight (if any): give back its in-flight slots.
    fn release(&mut self) {
        if let (Some(table), Some((p, e))) = (&self.table, self.current.take()) {
            let pool = &table.pools[p as usize];
            pool.state.release();
            pool.endpoints[e as usize].state.release();
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            table: None,
            class: None,
            decision: None,
            current: None,
            attempt_start: None,
            tried: Vec::new(),
            pending: None,
            own_status: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // One snapshot per request: a reload mid-request never changes its rules.
        let table = self.snapshot.load_full();
        ctx.table = Some(table.clone());
        match prepare(session, &table).await {
            Ok((class, decision)) => {
                ctx.class = Some(class);
                ctx.decision = Some(decision);
                Ok(false)
            }
            Err((class, err)) => {
                ctx.class = class;
                ctx.own_status = Some(err.status());
                respond_error(session, &err, ctx).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(table), Some(class)) = (ctx.table.clone(), ctx.class.as_ref()) else {
            return Err(Error::explain(ErrorType::InternalError, "no classification"));
        };
        let decision = if ctx.tried.is_empty() {
            ctx.decision
        } else {
            // A retry: decide again without the endpoints that already failed.
            let d = route::decide(class, &table, &ctx.tried, now_ms());
            ctx.decision = Some(d);
            Some(d)
        };
        let Some((pool_id, ep)) = decision.and_then(|d| d.target) else {
            let tier = &table.tiers[class.tier as usize];
            ctx.pending = Some(GatewayError::NoCandidate {
                model: class.model.clone(),
                tier: tier.name.clone(),
            });
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no candidate endpoint left",
            ));
        };
        let pool = &table.pools[pool_id as usize];
        let endpoint = &pool.endpoints[ep as usize];
        pool.state.acquire();
        endpoint.state.acquire();
        ctx.current = Some((pool_id, ep));
        ctx.tried.push((pool_id, ep));
        ctx.attempt_start = Some(Instant::now());

        let tier = &table.tiers[class.tier as usize];
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        peer.options.connection_timeout = Some(table.upstream.connect_timeout);
        peer.options.read_timeout = Some(tier.timeout);
        peer.options.write_timeout = Some(tier.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(class) = &ctx.class {
            // Tell the backend how long it has left, so it can give up early too.
            let remaining = class.deadline.saturating_sub(ctx.start.elapsed());
            upstream_request.insert_header("x-switchyard-deadline-ms", remaining.as_millis().to_string())?;
        }
        if let Some(peer) = peer_ip(session) {
            let xff = match session.req_header().headers.get("x-forwarded-for") {
                Some(prev) => format!("{}, {peer}", prev.to_str().unwrap_or("")),
                None => peer.to_string(),
            };
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Time to the response header is the service time the estimates track.
        if let (Some(table), Some((p, e)), Some(sent)) = (&ctx.table, ctx.current, ctx.attempt_start) {
            let took = sent.elapsed();
            let pool = &table.pools[p as usize];
            pool.state.observe(took);
            let ep = &pool.endpoints[e as usize].state;
            ep.observe(took);
            ep.mark_success();
            metrics::histogram!(t::UPSTREAM_DURATION, "pool" => pool.name.clone())
                .record(took.as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        decision_headers(upstream_response, ctx);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(table), Some((p, ep))) = (ctx.table.clone(), ctx.current) {
            let pool = &table.pools[p as usize];
            pool.endpoints[ep as usize]
                .state
                .mark_down(now_ms(), table.upstream.down_backoff);
            tracing::warn!(pool = %pool.name, endpoint = %pool.endpoints[ep as usize].name, error = %e, "upstream connect failed; endpoint marked down");
            ctx.release();
            let within_deadline = ctx
                .class
                .as_ref()
                .is_some_and(|c| ctx.start.elapsed() < c.deadline.max(Duration::from_millis(10)));
            if (ctx.tried.len() as u32) < table.upstream.max_attempts && within_deadline {
                metrics::counter!(t::RETRIES, "pool" => pool.name.clone()).increment(1);
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.release();
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Inference requests are safe to resend when the failure was a stale keep-alive
        // connection and the whole body is still buffered; Pingora's default would refuse
        // because the method is POST.
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.release();
        let err = ctx.pending.take().unwrap_or_else(|| match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                let timeout = ctx
                    .table
                    .as_ref()
                    .zip(ctx.class.as_ref())
                    .map(|(t, c)| t.tiers[c.tier as usize].timeout.as_millis())
                    .unwrap_or(0);
                GatewayError::UpstreamTimeout(timeout)
            }
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectionClosed => GatewayError::UpstreamUnavailable(e.to_string()),
            ErrorType::HTTPStatus(code) if *code == 413 => GatewayError::PayloadTooLarge {
                limit: route_limit(ctx),
            },
            _ if e.esource() == &pingora::ErrorSource::Downstream => {
                GatewayError::BodyRead(e.to_string())
            }
            _ => GatewayError::UpstreamFailed(e.to_string()),
        });
        let code = err.status();
        ctx.own_status = Some(code);
        if session.response_written().is_none() {
            if let Err(write_err) = respond_error(session, &err, ctx).await {
                tracing::debug!(error = %write_err, "could not write error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.release();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.own_status)
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let Some(table) = ctx.table.clone() else {
            return;
        };
        let (route, tier, region) = match &ctx.class {
            Some(c) => (
                table.routes[c.route as usize].name.as_str(),
                table.tiers[c.tier as usize].name.as_str(),
                table.regions[c.region as usize].as_str(),
            ),
            None => ("none", "none", "none"),
        };
        let pool = ctx.pool_name();
        metrics::counter!(t::REQUESTS,
            "route" => route.to_string(), "tier" => tier.to_string(), "region" => region.to_string(),
            "pool" => pool.to_string(), "status" => status_label(status))
        .increment(1);
        metrics::histogram!(t::REQUEST_DURATION, "route" => route.to_string(), "tier" => tier.to_string())
            .record(elapsed.as_secs_f64());
        if let (Some(class), Some(d)) = (&ctx.class, &ctx.decision) {
            metrics::counter!(t::DECISIONS, "tier" => tier.to_string(), "reason" => d.reason.as_str())
                .increment(1);
            if elapsed > class.deadline {
                metrics::counter!(t::DEADLINE_MISSES, "tier" => tier.to_string()).increment(1);
            }
            if let (Some(est), true) = (d.estimate, (200..500).contains(&status) && pool != "none") {
                metrics::gauge!(t::COST, "pool" => pool.to_string(), "tier" => tier.to_string())
                    .increment(est.cost_usd);
            }
        }
        let client = ctx.class.as_ref().map(|c| c.client_ip);
        let model = ctx.class.as_ref().map(|c| c.model.as_str()).unwrap_or("");
        let reason = ctx.decision.map(|d| d.reason.as_str()).unwrap_or("");
        tracing::info!(
            target: "switchyard::access",
            method = %session.req_header().method,
            path = %session.req_header().uri.path(),
            status,
            ms = elapsed.as_secs_f64() * 1e3,
            client = ?client,
            route, tier, region, model, pool, reason,
            attempts = ctx.tried.len(),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}

fn status_label(status: u16) -> &'static str {
    // Fixed strings avoid an allocation per request for the common codes.
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

fn route_limit(ctx: &RequestCtx) -> usize {
    match (&ctx.table, &ctx.class) {
        (Some(t), Some(c)) => t.routes[c.route as usize].max_body,
        _ => 0,
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Everything before the upstream: route, body, classification, decision. An error comes
/// back with whatever classification was reached, for the decision headers and the log.
async fn prepare(
    session: &mut Session,
    table: &RoutingTable,
) -> std::result::Result<(Class, Decision), (Option<Class>, GatewayError)> {
    let path = session.req_header().uri.path().to_string();
    let route_id = table
        .match_route(&path)
        .ok_or_else(|| (None, GatewayError::NoRoute(truncate(&path, 200))))?;
    let route = &table.routes[route_id as usize];

    let body = read_body(session, route.max_body, route.protocol)
        .await
        .map_err(|e| (None, e))?;

    let peer = peer_ip(session).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let header = session.req_header();
    let facts = RequestFacts {
        peer,
        method: &header.method,
        path: &path,
        headers: &header.headers,
        body: body.as_deref(),
    };
    let class = classify::classify(&facts, route_id, table).map_err(|e| (None, e.into()))?;

    // Cache seam: a lookup keyed on `class` goes here when `class.cacheable`.

    let decision = route::decide(&class, table, &[], now_ms());
    let tier = &table.tiers[class.tier as usize];
    match decision.reason {
        route::Reason::Shed => {
            let err = GatewayError::Shed {
                tier: tier.name.clone(),
                deadline_ms: class.deadline.as_millis(),
            };
            Err((Some(class), err))
        }
        route::Reason::NoCandidate => {
            let err = GatewayError::NoCandidate {
                model: class.model.clone(),
                tier: tier.name.clone(),
            };
            Err((Some(class), err))
        }
        _ => Ok((class, decision)),
    }
}

/// Read the request body before routing when it is small enough to hold (and must be read
/// for routes whose model is in the body). Larger bodies of path-routed protocols stream
/// through Pingora unbuffered, with their declared length checked against the limit here.
async fn read_body(
    session: &mut Session,
    max_body: usize,
    protocol: Protocol,
) -> std::result::Result<Option<Bytes>, GatewayError> {
    let header = session.req_header();
    let declared = match header.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| GatewayError::BodyRead("invalid Content-Length".into()))?,
        ),
        None => None,
    };
    let chunked = header.headers.contains_key(http::header::TRANSFER_ENCODING);
    if let Some(len) = declared {
        if len > max_body {
            return Err(GatewayError::PayloadTooLarge { limit: max_body });
        }
        if len > INSPECT_LIMIT && protocol != Protocol::OpenAi {
            return Ok(None);
        }
    } else if !chunked {
        return Ok(Some(Bytes::new()));
    }
    let limit = max_body.min(INSPECT_LIMIT);
    // Pingora keeps a copy (up to 64 KiB) and re-sends it on a retry to another endpoint.
    session.as_mut().enable_retry_buffering();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(GatewayError::BodyRead(e.to_string())),
        }
    }
    Ok(Some(buf.freeze()))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn decision_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) {
    let Some(table) = &ctx.table else { return };
    let _ = resp.insert_header("x-switchyard-policy-version", table.version.as_str());
    if let Some(class) = &ctx.class {
        let _ = resp.insert_header("x-switchyard-tier", table.tiers[class.tier as usize].name.as_str());
        let _ = resp.insert_header("x-switchyard-region", table.regions[class.region as usize].as_str());
    }
    if let Some((p, e)) = ctx.tried.last() {
        let pool = &table.pools[*p as usize];
        let _ = resp.insert_header("x-switchyard-pool", pool.name.as_str());
        let _ = resp.insert_header("x-switchyard-endpoint", pool.endpoints[*e as usize].name.as_str());
    }
    if let Some(d) = &ctx.decision {
        let value = match d.estimate {
            Some(est) => format!(
                "{}; est_ms={:.1}; est_usd={:.6}; candidates={}; feasible={}; attempts={}",
                d.reason.as_str(),
                est.latency.as_secs_f64() * 1e3,
                est.cost_usd,
                d.candidates,
                d.feasible,
                ctx.tried.len()
            ),
            None => d.reason.as_str().to_string(),
        };
        let _ = resp.insert_header("x-switchyard-decision", value);
    }
}

/// Write a JSON error response (with `Retry-After` when the error suggests one).
async fn respond_error(
    session: &mut Session,
    err: &GatewayError,
    ctx: &RequestCtx,
) -> Result<()> {
    let body = err.body();
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(secs) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    decision_headers(&mut resp, ctx);
    if err.status() == 413 || err.status() == 400 {
        // The rest of an unread body would be taken for the next request on this connection.
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
