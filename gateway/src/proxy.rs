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

mod body;
mod buffered;
pub(crate) use buffered::one_write;

pub use body::BodyBudget;

use crate::admit::{self, Limiter, Ticket};
use crate::cache::{Cache, CacheCtx, Lookup};
use crate::classify::{self, Class, RequestFacts};
use crate::error::GatewayError;
use crate::observe::access::AccessRecord;
use crate::observe::text::{push_decimal, push_ip};
use crate::observe::DecisionHeaders;
use crate::policy::compile::{PoolId, RoutingTable};
use crate::queue::{self, Queue};
use crate::route::{self, Decision};
use crate::serving::state::now_ms;
use crate::serving::{Serving, Snapshot};
use crate::telemetry as t;
use async_trait::async_trait;
use body::{BodyLimits, BodyPermit};
use bytes::Bytes;
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
    /// The batch queue, when the policy has one at start-up.
    queue: Option<Arc<Queue>>,
    /// The prediction cache (built once, survives reloads).
    cache: Option<Arc<Cache>>,
    /// Request-body bytes held by all requests in flight.
    bodies: Arc<BodyBudget>,
    /// The access log's queue to its writer thread (`None`: off).
    access: Option<crate::observe::AccessLog>,
    /// The decision log's queue to its writer thread (`None`: off).
    decisions: Option<crate::observe::decision::DecisionLog>,
    /// Live tenant limit state (rate, concurrency, spend), beside the snapshot.
    limiter: Arc<Limiter>,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Self {
        // The upstream connectors load the system's CA certificates when they are built:
        // built here, so that no request (and no endpoint's latency estimate) pays for it.
        buffered::connector();
        crate::hedge::connector();
        Gateway {
            snapshot,
            queue: None,
            cache: None,
            bodies: BodyBudget::new(),
            access: None,
            decisions: None,
            limiter: Limiter::local(),
        }
    }

    /// Write one access log line per request to `log` (off the request path).
    pub fn with_access_log(mut self, log: Option<crate::observe::AccessLog>) -> Self {
        self.access = log;
        self
    }

    /// Write one decision log line per request to `log` (off the request path).
    pub fn with_decision_log(mut self, log: Option<crate::observe::decision::DecisionLog>) -> Self {
        self.decisions = log;
        self
    }

    /// Enforce tenant limits with `limiter` (shared through Redis when it has a backend).
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The request-body budget (the admin listener exports how much of it is held).
    pub fn body_budget(&self) -> Arc<BodyBudget> {
        self.bodies.clone()
    }

    /// Answer repeat predictions from `cache` and store new ones in it.
    pub fn with_cache(mut self, cache: Option<Arc<Cache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Accept queued work into `queue` and serve the jobs API from it.
    pub fn with_queue(mut self, queue: Option<Arc<Queue>>) -> Self {
        self.queue = queue;
        self
    }
}

/// Per-request state, carried across Pingora's phases.
pub struct RequestCtx {
    start: Instant,
    table: Option<Arc<Serving>>,
    class: Option<Class>,
    decision: Option<Decision>,
    /// The attempt in flight: pool and endpoint, and when it was sent.
    current: Option<(PoolId, u16)>,
    attempt_start: Option<Instant>,
    /// Time to the answering attempt's response header (the decision log's `upstream_ms`).
    upstream_time: Option<Duration>,
    /// The pool's slot remembering when the attempt in flight started (overdue detection).
    attempt_slot: Option<u8>,
    tried: Vec<(PoolId, u16)>,
    /// An upstream 5xx being turned into a retry (set in `upstream_response_filter`, read in
    /// `error_while_proxy`).
    retry_status: Option<u16>,
    /// An error decided before or instead of proxying, rendered by `fail_to_proxy`.
    pending: Option<GatewayError>,
    /// Status of a response the gateway wrote itself.
    own_status: Option<u16>,
    /// What the prediction cache did, and a response being captured for it.
    cache: CacheCtx,
    /// The request body's bytes in the gateway's body budget (given back on drop).
    body_permit: Option<BodyPermit>,
    /// The request is gRPC (`content-type: application/grpc*`): errors are gRPC statuses.
    grpc: bool,
    /// The tenant's hold on its limits (concurrency slot given back on drop).
    admit: Option<Ticket>,
    /// The answer's token usage, for pools priced per token (`route::tokens`).
    tokens: Option<route::tokens::Meter>,
    /// Request body length (the token estimate when an answer reports no `usage`).
    request_bytes: usize,
}

/// A request future dropped mid-flight (Pingora's `logging` never runs then) still gives
/// back its in-flight slots.
impl Drop for RequestCtx {
    fn drop(&mut self) {
        self.release();
    }
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
            let pool = table.live.pool(p);
            if let Some(slot) = self.attempt_slot.take() {
                pool.untrack(slot);
            }
            pool.release();
            table.live.endpoint(p, e as usize).release();
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inline in each request's future, which it moves into
    /// a box per request (`process_new_http`), so an inline context is copied whole every
    /// time; a box is one allocation and eight bytes to move.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            start: Instant::now(),
            table: None,
            class: None,
            decision: None,
            current: None,
            attempt_start: None,
            upstream_time: None,
            attempt_slot: None,
            tried: Vec::new(),
            retry_status: None,
            pending: None,
            own_status: None,
            cache: CacheCtx::default(),
            body_permit: None,
            grpc: false,
            admit: None,
            tokens: None,
            request_bytes: 0,
        })
    }

    // Every answer but the proxied one (discovery, jobs, cache hits, hedges, bodies over
    // 64 KiB, errors) is awaited through a `Box::pin`: Pingora boxes this method's future
    // and moves it on every request, and inline those rare paths made it tens of KiB
    // (callgrind: ~24k of the proxy's ~157k instructions per request were that memcpy).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // One snapshot per request: a reload mid-request never changes its rules.
        if session.req_header().uri.path() == crate::admin::ready::PATH {
            // The readiness self-check (`admin::ready`): which process holds this port. Not
            // traffic: no table, so `logging` counts nothing.
            Box::pin(crate::admin::ready::answer(session)).await?;
            return Ok(true);
        }
        let table = self.snapshot.load_full();
        ctx.table = Some(table.clone());
        // Each protocol's discovery and health endpoints (`/v1/models`, `/v2/health/*`, `/v2`)
        // answer before route matching.
        if let Some(status) = Box::pin(crate::discovery::serve(session, &table)).await? {
            ctx.own_status = Some(status);
            return Ok(true);
        }
        if let Some(queue) = &self.queue {
            // The jobs API (`/v1/jobs/{id}`) answers before route matching.
            if let Some(status) = Box::pin(queue::api::serve(session, queue, &table)).await? {
                ctx.own_status = Some(status);
                return Ok(true);
            }
        }
        ctx.grpc = crate::grpc::codec::is_grpc_content_type(
            session
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
        );
        if ctx.grpc {
            // ServerLive / ServerReady / ServerMetadata: answered here, without a pool.
            if let Some(status) = Box::pin(answer_grpc_server(session, &table)).await? {
                ctx.own_status = Some(status);
                return Ok(true);
            }
        }
        let bodies = (&self.bodies, &mut ctx.body_permit);
        let admit = (&*self.limiter, &mut ctx.admit);
        match prepare(session, &table, self.cache.as_ref(), bodies, admit).await {
            Ok((class, decision, body, lookup)) => {
                // A hit, or the answer of an identical request in flight, is served here
                // before any upstream work; waiters wait at most the tier's upstream timeout.
                let bound = table.tiers[class.tier as usize].timeout;
                if let Some(entry) = ctx.cache.settle(lookup, bound).await {
                    ctx.class = Some(class);
                    Box::pin(answer_from_cache(session, ctx, &table, &decision, &entry)).await?;
                    return Ok(true);
                }
                if let Some(queue) = self.queue.as_ref().filter(|_| {
                    class.inference && !ctx.grpc && queue::api::takes(&table, &decision)
                }) {
                    // A batch pool or `on_slo_miss: queue`: stored durably, answered 202.
                    let result = Box::pin(queue::api::enqueue(
                        session, queue, &table, &class, &decision, body,
                    ))
                    .await;
                    ctx.class = Some(class);
                    ctx.decision = Some(decision);
                    match result {
                        Ok(status) => ctx.own_status = Some(status),
                        Err(err) => {
                            ctx.own_status = Some(err.status());
                            Box::pin(respond_error(session, &err, ctx)).await?;
                        }
                    }
                    return Ok(true);
                }
                // A hedging tier: two attempts may be in flight, which Pingora's proxy loop
                // cannot do; the buffered request goes through `hedge` instead.
                let hedge_after = table.tiers[class.tier as usize].hedge_after;
                if let (Some(factor), Some(target)) = (hedge_after, decision.target) {
                    if class.inference && !class.streaming && !class.cacheable && !ctx.grpc {
                        ctx.class = Some(class);
                        ctx.decision = Some(decision);
                        Box::pin(answer_hedged(session, ctx, &table, target, &body, factor))
                            .await?;
                        return Ok(true);
                    }
                }
                ctx.class = Some(class);
                ctx.decision = Some(decision);
                ctx.request_bytes = body.len();
                if buffered::takes(&body, ctx.grpc) {
                    // A whole body: the gateway sends it itself (header and body in one
                    // write; any size re-sent on a failover). See `buffered`.
                    Box::pin(buffered::serve(session, ctx, &table, body)).await?;
                    return Ok(true);
                }
                Ok(false)
            }
            Err((class, decision, err)) => {
                ctx.class = class;
                // A refusal by the decision (shed, overloaded, no candidate) names its reason
                // in the access log and the metrics like any other decision.
                ctx.decision = decision;
                ctx.own_status = Some(err.status());
                Box::pin(respond_error(session, &err, ctx)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(table) = ctx.table.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no policy snapshot",
            ));
        };
        match acquire(ctx, &table) {
            Ok(target) => Ok(Box::new(http_peer(ctx, &table, target))),
            Err(err) => {
                ctx.pending = Some(err);
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no candidate endpoint left",
                ))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forward_headers(upstream_request, ctx, session)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A trailers-only gRPC UNAVAILABLE is the gRPC server's 503: the same treatment.
        let status = upstream_status(ctx, upstream_response);
        let replayable = !session.as_ref().retry_buffer_truncated();
        if on_upstream_header(ctx, status, replayable) {
            // Ends this attempt before anything is sent downstream; `error_while_proxy`
            // marks it retryable.
            ctx.retry_status = Some(status);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream 5xx; retrying elsewhere",
            ));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        on_response(ctx, upstream_response);
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Bytes>> {
        on_trailers(ctx, upstream_trailers);
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        // Copies the body (bounded) only while a storable response is being captured.
        on_body(ctx, body, end_of_stream);
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let tls = crate::tls::upstream::is_tls_failure(&e);
        if on_connect_failure(ctx, &e, tls) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        // A timeout, or the backend cutting the connection before answering (not a stale
        // keep-alive connection: Pingora's reuse rule below covers that), counts towards
        // ejection, and idempotent routes may retry it elsewhere while nothing has been
        // written downstream yet.
        let upstream_failed = ctx.retry_status.is_none()
            && session.response_written().is_none()
            && (matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            ) || (e.esource() == &pingora::ErrorSource::Upstream && !client_reused));
        let retry_timeout =
            upstream_failed && on_attempt_failed(ctx, !session.as_ref().retry_buffer_truncated());
        ctx.release();
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retry_status.take().is_some() || retry_timeout {
            // An upstream 5xx (turned into this error before the header went downstream) or
            // a timeout on an idempotent route: the checks were made above.
            e.set_retry(true);
        } else if session.as_ref().retry_buffer_truncated() {
            // Inference requests are safe to resend when the failure was a stale keep-alive
            // connection and the whole body is still buffered; Pingora's default would refuse
            // because the method is POST.
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
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        ctx.release();
        if client_went_away(e) && session.response_written().is_none() {
            // Nothing can be sent: the client closed its connection before the answer.
            ctx.pending = None;
            ctx.own_status = Some(CLIENT_CLOSED);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
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
            _ if crate::tls::upstream::is_tls_failure(e) => {
                GatewayError::UpstreamTls(crate::tls::upstream::reason(e))
            }
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
            if let Err(write_err) = Box::pin(respond_error(session, &err, ctx)).await {
                tracing::debug!(error = %write_err, "could not write error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.release();
        if ctx.table.is_none() && session.req_header().uri.path() == crate::admin::ready::PATH {
            return; // the readiness self-check (`admin::ready`) is not traffic
        }
        let written = session.response_written().map(|r| r.status.as_u16());
        let status = if ctx.grpc {
            // A gRPC error is written as HTTP 200: count it by the status it stands for.
            ctx.own_status.or(written).unwrap_or(0)
        } else {
            written.or(ctx.own_status).unwrap_or(0)
        };
        let elapsed = ctx.start.elapsed();
        let queued = self.queue.is_some()
            && ctx
                .table
                .as_ref()
                .zip(ctx.decision.as_ref())
                .is_some_and(|(t, d)| queue::api::takes(t, d));
        let via =
            crate::admin::status::Via::of(ctx.tried.last().map(|t| t.0), ctx.cache.outcome, queued);
        crate::admin::status::record(
            ctx.class.as_ref(),
            ctx.decision.as_ref(),
            via,
            ctx.cache.outcome,
            status,
            elapsed,
        );
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
        let mut tokens = ctx.tokens.take();
        let pool = ctx.pool_name();
        let none = u16::MAX;
        let key = t::HandleKey {
            table: table.generation,
            route: ctx.class.as_ref().map_or(none, |c| c.route),
            tier: ctx.class.as_ref().map_or(none, |c| c.tier),
            region: ctx.class.as_ref().map_or(none, |c| c.region),
            pool: ctx
                .current
                .or(ctx.tried.last().copied())
                .map_or(none, |(p, _)| p),
            status,
            reason: ctx.decision.map_or(u8::MAX, |d| d.reason as u8),
        };
        let reason = ctx.decision.map(|d| d.reason.as_str()).unwrap_or("none");
        let mut spend_usd = 0.0;
        let handles = t::request_handles(key, || t::RequestHandles {
            requests: metrics::counter!(t::REQUESTS,
                "route" => route.to_string(), "tier" => tier.to_string(), "region" => region.to_string(),
                "pool" => pool.to_string(), "status" => status_label(status)),
            duration: metrics::histogram!(t::REQUEST_DURATION, "route" => route.to_string(), "tier" => tier.to_string()),
            decisions: metrics::counter!(t::DECISIONS, "tier" => tier.to_string(), "reason" => reason),
            deadline_misses: metrics::counter!(t::DEADLINE_MISSES, "tier" => tier.to_string()),
            cost: metrics::counter!(t::COST, "pool" => pool.to_string(), "tier" => tier.to_string()),
        });
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        if let (Some(class), Some(d)) = (&ctx.class, &ctx.decision) {
            handles.decisions.increment(1);
            if elapsed > class.deadline {
                handles.deadline_misses.increment(1);
            }
            // Metadata reads (`Class::inference` false) are routed like inference but are
            // not spend; neither is a gRPC error answer.
            let spent = class.inference
                && (200..500).contains(&status)
                && pool != "none"
                && counts_spend(session, ctx);
            if let (Some(est), true) = (d.estimate, spent) {
                let usd = match tokens.as_mut() {
                    // Priced per token: what the answer used, not the estimate.
                    Some(meter) => token_spend(&table, ctx.tried.last(), meter, tier),
                    None => est.cost_usd,
                };
                spend_usd = usd;
                handles.cost.increment(t::nano_usd(usd));
                admit::charge(ctx.admit.as_ref(), usd);
            }
        }
        drop(handles);
        if let Some(log) = &self.decisions {
            // Before the access log takes the model string out of the class.
            log.record(decision_record(
                ctx, &table, key, status, elapsed, spend_usd,
            ));
        }
        if let Some(log) = &self.access {
            // Moved to the writer thread as indices and refcounts; formatted there.
            let req = session.req_header();
            let class = ctx.class.as_mut();
            log.record(AccessRecord {
                at: std::time::SystemTime::now(),
                method: req.method.clone(),
                uri: req.uri.clone(),
                status,
                elapsed,
                client: class.as_ref().map(|c| c.client_ip),
                route: key.route,
                tier: key.tier,
                region: key.region,
                pool: key.pool,
                model: class
                    .map(|c| std::mem::take(&mut c.model))
                    .unwrap_or_default(),
                reason,
                attempts: ctx.tried.len().min(255) as u8,
                error: e.map(|e| e.to_string()),
                table: Some(table),
            });
        }
    }
}

/// The decision log's record of a finished request (indices and numbers; named on the
/// writer thread).
fn decision_record(
    ctx: &RequestCtx,
    table: &Arc<Serving>,
    key: t::HandleKey,
    status: u16,
    elapsed: Duration,
    spend_usd: f64,
) -> crate::observe::decision::DecisionRecord {
    let class = ctx.class.as_ref();
    crate::observe::decision::DecisionRecord {
        at: std::time::SystemTime::now(),
        table: table.clone(),
        route: key.route,
        region: key.region,
        tier: key.tier,
        tenant: class.and_then(|c| c.tenant).unwrap_or(u16::MAX),
        model: class.map(|c| c.model.clone()).unwrap_or_default(),
        body_bytes: ctx.body_permit.as_ref().map_or(0, |b| b.bytes()),
        cacheable: class.is_some_and(|c| c.cacheable),
        cache: ctx.cache.outcome.map(|o| o.as_str()),
        pool: key.pool,
        reason: ctx.decision.map(|d| d.reason.as_str()),
        estimate: ctx.decision.and_then(|d| d.estimate),
        attempts: ctx.tried.len().min(255) as u8,
        upstream: ctx.upstream_time,
        elapsed,
        status,
        spend_usd,
    }
}

// The steps of one upstream attempt, shared by Pingora's proxy loop (the phases above) and
// the gateway's own sender for bodies Pingora cannot replay (`buffered`).

/// Take an in-flight slot on the decided endpoint and record it as the attempt in flight.
/// The first attempt uses the decision made in `request_filter`; a retry decides again
/// without the endpoints already tried. Slots are taken with compare-and-swap so a burst
/// cannot overshoot `concurrency`; a lost race for the last slot decides again on the fresh
/// counts (the next candidate, or the tier's fallback).
fn acquire(
    ctx: &mut RequestCtx,
    table: &Serving,
) -> std::result::Result<(PoolId, u16), GatewayError> {
    let Some(class) = ctx.class.as_ref() else {
        return Err(GatewayError::Internal("no classification".into()));
    };
    let mut decision = if ctx.tried.is_empty() {
        // Every request earns the retry budget a fraction of a retry.
        table.live.budget.deposit(&table.upstream.retry_budget);
        ctx.decision
    } else {
        let d = route::decide(class, table, &ctx.tried, now_ms());
        ctx.decision = Some(d);
        Some(d)
    };
    let mut target = None;
    for _ in 0..4 {
        let Some((pool_id, ep)) = decision.and_then(|d| d.target) else {
            break;
        };
        let pool = &table.pools[pool_id as usize];
        let state = table.live.pool(pool_id);
        if state.try_acquire(pool.concurrency) {
            if table
                .live
                .endpoint(pool_id, ep as usize)
                .try_acquire(pool.endpoint_limit())
            {
                target = Some((pool_id, ep));
                break;
            }
            state.release();
        }
        let d = route::decide(class, table, &ctx.tried, now_ms());
        ctx.decision = Some(d);
        decision = Some(d);
    }
    let Some((pool_id, ep)) = target else {
        let tier = &table.tiers[class.tier as usize];
        return Err(match decision.map(|d| d.reason) {
            Some(route::Reason::Overloaded | route::Reason::MeetsDeadline) => {
                GatewayError::Overloaded {
                    tier: tier.name.clone(),
                }
            }
            _ => GatewayError::NoCandidate {
                model: class.model.clone(),
                tier: tier.name.clone(),
            },
        });
    };
    ctx.current = Some((pool_id, ep));
    ctx.attempt_slot = table.live.pool(pool_id).track_start(now_ms());
    ctx.tried.push((pool_id, ep));
    ctx.attempt_start = Some(Instant::now());
    Ok((pool_id, ep))
}

/// The peer for an attempt on `target`, with the tier's timeouts.
fn http_peer(ctx: &RequestCtx, table: &Serving, (pool_id, ep): (PoolId, u16)) -> HttpPeer {
    let endpoint = &table.pools[pool_id as usize].endpoints[ep as usize];
    let timeout = ctx.class.as_ref().map_or(Duration::from_secs(5), |c| {
        table.tiers[c.tier as usize].timeout
    });
    // gRPC goes to the endpoint's gRPC port (`decide` offers gRPC routes only pools whose
    // endpoints all have one), as h2c with prior knowledge: gRPC servers speak HTTP/2 only.
    let grpc = ctx.grpc
        && ctx.class.as_ref().is_some_and(|c| {
            table.routes[c.route as usize].protocol == crate::policy::raw::Protocol::OipV2Grpc
        });
    let addr = match endpoint.grpc {
        Some(addr) if grpc => addr,
        _ => endpoint.addr,
    };
    let pool = &table.pools[pool_id as usize];
    let mut peer = match &endpoint.sni {
        // HTTPS: SNI and the certificate check use the host name as written; h2 when the
        // pool offers it (ALPN), else HTTP/1.1. Pooled connections keep the handshake off
        // the request path.
        Some(sni) if !grpc => crate::tls::upstream::peer(
            addr,
            sni,
            &pool.hosted.tls,
            &table.resources.pool_tls[pool_id as usize],
        ),
        _ => HttpPeer::new(addr, false, String::new()),
    };
    if grpc {
        peer.options.set_http_version(2, 2);
    }
    peer.options.connection_timeout = Some(table.upstream.connect_timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

/// Headers the gateway adds to every upstream request: the time left before the deadline
/// (so the backend can give up early too) and the client in `X-Forwarded-For`.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

fn forward_headers(req: &mut RequestHeader, ctx: &RequestCtx, session: &Session) -> Result<()> {
    if let (Some(table), Some((p, e))) = (&ctx.table, ctx.current) {
        // Hosted pools: injected credentials, Host, path prefix (`policy::hosted`).
        let pool = &table.pools[p as usize];
        let endpoint = &pool.endpoints[e as usize];
        crate::tls::upstream::rewrite(req, &pool.hosted, endpoint, session.req_header())?;
    }
    if let Some(class) = &ctx.class {
        let remaining = class.deadline.saturating_sub(ctx.start.elapsed());
        // (`HeaderValue::from(u64)`: no `String`, no 128-bit formatting.)
        let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        req.insert_header("x-switchyard-deadline-ms", http::HeaderValue::from(ms))?;
    }
    if let Some(peer) = peer_ip(session) {
        let mut xff = String::with_capacity(48);
        if let Some(prev) = session.req_header().headers.get(X_FORWARDED_FOR) {
            xff.push_str(prev.to_str().unwrap_or(""));
            xff.push_str(", ");
        }
        push_ip(&mut xff, peer);
        req.insert_header("x-forwarded-for", xff)?;
    }
    Ok(())
}

/// The attempt in flight answered with `status`: time to the response header is the service
/// time the estimates track; a 5xx counts towards ejecting the endpoint. Returns whether to
/// retry elsewhere instead of answering: idempotent routes, a body that can be sent again,
/// another candidate, and a token in the retry budget.
fn on_upstream_header(ctx: &mut RequestCtx, status: u16, replayable: bool) -> bool {
    let Some(table) = ctx.table.clone() else {
        return false;
    };
    let (Some((p, e)), Some(sent)) = (ctx.current, ctx.attempt_start) else {
        return false;
    };
    let took = sent.elapsed();
    ctx.upstream_time = Some(took);
    let pool = &table.pools[p as usize];
    // The service time (upstream time minus the endpoint's network round trip) feeds the
    // pool's and the endpoint's estimates.
    route::network::observe_upstream(&table, (p, e), took);
    // Answered: no longer a candidate for "overdue" (a streamed body may go on for long).
    if let Some(slot) = ctx.attempt_slot.take() {
        table.live.pool(p).untrack(slot);
    }
    let ep = &pool.endpoints[e as usize];
    let ep_state = table.live.endpoint(p, e as usize);
    t::pool_handles(table.generation, p, || t::PoolHandles {
        upstream_duration: metrics::histogram!(t::UPSTREAM_DURATION, "pool" => pool.name.clone()),
    })
    .upstream_duration
    .record(took.as_secs_f64());
    if status < 500 {
        ep_state.mark_success();
        return false;
    }
    if let Some(backoff) = ep_state.failed(now_ms(), &table.upstream.ejection) {
        metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "5xx").increment(1);
        tracing::warn!(pool = %pool.name, endpoint = %ep.name, status, backoff_ms = backoff.as_millis() as u64, "endpoint ejected after consecutive failures");
    }
    let retry = replayable
        && is_idempotent(ctx, &table)
        && has_other_candidate(ctx, &table)
        && retry_allowed(ctx, &table);
    if retry {
        metrics::counter!(t::RETRIES, "pool" => pool.name.clone()).increment(1);
    }
    retry
}

/// The attempt in flight could not connect: nothing reached the backend, so the endpoint is
/// ejected at once (with a back-off that doubles while it keeps failing), its slots are given
/// back, and another attempt is always safe (within the deadline and the retry budget).
fn on_connect_failure(ctx: &mut RequestCtx, e: &dyn std::fmt::Display, tls: bool) -> bool {
    let (Some(table), Some((p, ep))) = (ctx.table.clone(), ctx.current) else {
        return false;
    };
    let pool = &table.pools[p as usize];
    if tls {
        // The endpoint answered; its certificate (or ours) was refused. That is a
        // configuration problem, not an outage: counted and logged, never an ejection.
        metrics::counter!(t::UPSTREAM_TLS_FAILURES, "pool" => pool.name.clone()).increment(1);
        tracing::warn!(pool = %pool.name, endpoint = %pool.endpoints[ep as usize].name, error = %e, "upstream TLS handshake failed");
        ctx.release();
        return false;
    }
    let backoff = table
        .live
        .endpoint(p, ep as usize)
        .connect_failed(now_ms(), &table.upstream.ejection);
    metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "connect").increment(1);
    tracing::warn!(pool = %pool.name, endpoint = %pool.endpoints[ep as usize].name, error = %e, backoff_ms = backoff.as_millis() as u64, "upstream connect failed; endpoint ejected");
    ctx.release();
    let retry = retry_allowed(ctx, &table);
    if retry {
        metrics::counter!(t::RETRIES, "pool" => pool.name.clone()).increment(1);
    }
    retry
}

/// The attempt in flight failed before answering (a timeout, or the backend cutting the
/// connection): counts towards ejection. Returns whether an idempotent route may retry it
/// elsewhere (the body must still be whole to send again).
fn on_attempt_failed(ctx: &mut RequestCtx, replayable: bool) -> bool {
    let (Some(table), Some((p, ep))) = (ctx.table.clone(), ctx.current) else {
        return false;
    };
    let pool = &table.pools[p as usize];
    if table
        .live
        .endpoint(p, ep as usize)
        .failed(now_ms(), &table.upstream.ejection)
        .is_some()
    {
        metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "error")
            .increment(1);
    }
    replayable
        && is_idempotent(ctx, &table)
        && has_other_candidate(ctx, &table)
        && retry_allowed(ctx, &table)
}

/// The answer's header is about to go downstream: the decision headers, and the cache
/// deciding whether to capture it. A gRPC trailers-only answer is an error: never stored,
/// counted as what it is.
fn on_response(ctx: &mut RequestCtx, resp: &mut ResponseHeader) {
    edit_headers(resp, |headers| {
        decision_headers(headers, ctx);
        ctx.cache.label(headers);
    });
    if let (Some(table), Some((p, _))) = (&ctx.table, ctx.current) {
        if table.pools[p as usize].price.per_token() && resp.status.is_success() {
            let ct = resp.headers.get(http::header::CONTENT_TYPE);
            let ct = ct.map_or(&b""[..], |v| v.as_bytes());
            ctx.tokens = Some(route::tokens::Meter::new(ct, ctx.request_bytes));
        }
    }
    if let Some(table) = &ctx.table {
        ctx.cache.on_response_header(resp, table);
    }
    if let Some(code) = resp.headers.get("grpc-status").filter(|_| ctx.grpc) {
        ctx.own_status = crate::grpc::http_equivalent(code.as_bytes());
        ctx.cache.abandon();
    }
}

/// The answer's trailers: a gRPC answer ends in them, and only `grpc-status: 0` completes
/// a cache entry.
/// A piece of the answer's body on its way to the client: the cache's capture and the
/// token meter see it.
fn on_body(ctx: &mut RequestCtx, chunk: &Option<Bytes>, end_of_stream: bool) {
    ctx.cache.on_body(chunk, end_of_stream);
    if let (Some(meter), Some(chunk)) = (ctx.tokens.as_mut(), chunk) {
        meter.on_body(chunk);
    }
}

/// The spend of an answer from a pool priced per token: its `usage` (or the estimate from
/// bytes), counted by source and folded into the pool's tokens-per-request average.
fn token_spend(
    table: &Serving,
    target: Option<&(PoolId, u16)>,
    meter: &mut route::tokens::Meter,
    tier: &str,
) -> f64 {
    let Some((p, _)) = target else {
        return 0.0;
    };
    let pool = &table.pools[*p as usize];
    let state = table.live.pool(*p);
    let usage = meter.finish();
    state.tokens.record(usage.input, usage.output);
    let source = usage.source();
    metrics::counter!(t::TOKENS, "pool" => pool.name.clone(), "kind" => "input", "source" => source)
        .increment(usage.input);
    metrics::counter!(t::TOKENS, "pool" => pool.name.clone(), "kind" => "output", "source" => source)
        .increment(usage.output);
    let usd = pool.price.per_request
        + pool.price.per_gpu_hour * state.service_time().as_secs_f64() / 3600.0
        + usage.cost_usd(&pool.price);
    metrics::counter!(t::TOKEN_COST, "pool" => pool.name.clone(), "tier" => tier.to_string(), "source" => source)
        .increment(t::nano_usd(usd));
    usd
}

fn on_trailers(ctx: &mut RequestCtx, trailers: &http::HeaderMap) {
    if ctx.grpc {
        let status = trailers.get("grpc-status").map(|v| v.as_bytes());
        match status {
            Some(b"0") => ctx.cache.on_body(&None, true),
            _ => {
                ctx.cache.abandon();
                ctx.own_status = status.and_then(crate::grpc::http_equivalent);
            }
        }
    }
}

/// The status an upstream answer counts as: a gRPC trailers-only `UNAVAILABLE` (14) is the
/// gRPC server's 503 (ejection, retry elsewhere on idempotent routes).
fn upstream_status(ctx: &RequestCtx, resp: &ResponseHeader) -> u16 {
    let grpc_unavailable = ctx.grpc
        && resp
            .headers
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"14");
    if grpc_unavailable {
        503
    } else {
        resp.status.as_u16()
    }
}

fn is_idempotent(ctx: &RequestCtx, table: &RoutingTable) -> bool {
    ctx.class
        .as_ref()
        .is_some_and(|c| table.routes[c.route as usize].idempotent)
}

/// Status recorded for a request whose client closed the connection before it was answered
/// (nginx's convention; never sent, only counted and logged).
pub const CLIENT_CLOSED: u16 = 499;

/// Whether `e` means the client went away. Pingora 0.9 notices a client that closes while
/// the request is proxied (it polls the downstream beside the upstream) and ends the attempt
/// with `ConnectionClosed` (or a read error) from `ErrorSource::Downstream`; then
/// `error_while_proxy`, `fail_to_proxy` and `logging` run as for any failure (the request
/// future is not dropped). A failed write of our own answer is a `WriteError`.
fn client_went_away(e: &Error) -> bool {
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError => {
            e.esource() == &pingora::ErrorSource::Downstream
        }
        ErrorType::WriteError => e.esource() != &pingora::ErrorSource::Upstream,
        _ => false,
    }
}

/// Whether another attempt may be made: attempts left, time left before the deadline, and a
/// token in the retry budget (an empty budget is counted).
fn retry_allowed(ctx: &RequestCtx, table: &Serving) -> bool {
    let within_deadline = ctx
        .class
        .as_ref()
        .is_some_and(|c| ctx.start.elapsed() < c.deadline.max(Duration::from_millis(10)));
    if (ctx.tried.len() as u32) >= table.upstream.max_attempts || !within_deadline {
        return false;
    }
    if table.live.budget.try_withdraw(&table.upstream.retry_budget) {
        return true;
    }
    metrics::counter!(t::RETRY_BUDGET_EXHAUSTED).increment(1);
    false
}

/// Whether a retry would find somewhere else to go (so a 5xx is not swapped for a 503).
fn has_other_candidate(ctx: &RequestCtx, table: &Serving) -> bool {
    ctx.class.as_ref().is_some_and(|c| {
        route::decide(c, table, &ctx.tried, now_ms())
            .target
            .is_some()
    })
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
        499 => "499",
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

/// The kernel's smoothed round-trip time of the downstream TCP connection (`tcpi_rtt`, µs),
/// through Pingora's socket digest; `None` when not TCP or not yet measured.
fn downstream_rtt(session: &Session) -> Option<Duration> {
    let info = session.digest()?.socket_digest.as_ref()?.tcp_info()?;
    (info.tcpi_rtt > 0).then(|| Duration::from_micros(info.tcpi_rtt as u64))
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
    table: &Serving,
    cache: Option<&Arc<Cache>>,
    (budget, permit): (&Arc<BodyBudget>, &mut Option<BodyPermit>),
    (limiter, ticket): (&Limiter, &mut Option<Ticket>),
) -> std::result::Result<
    (Class, Decision, Bytes, Lookup),
    (Option<Class>, Option<Decision>, GatewayError),
> {
    let route_id = {
        let path = session.req_header().uri.path();
        table
            .match_route(path)
            .ok_or_else(|| (None, None, GatewayError::NoRoute(truncate(path, 200))))?
    };
    let route = &table.routes[route_id as usize];

    let limits = BodyLimits {
        max_body: route.max_body,
        budget,
        max_buffered: table.limits.max_buffered_bytes,
        tier: &table.tiers[route.tier as usize].name,
    };
    let body = body::read(session, &limits, permit)
        .await
        .map_err(|e| (None, None, e))?;

    let peer = peer_ip(session).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let header = session.req_header();
    let path = header.uri.path();
    let facts = RequestFacts {
        peer,
        method: &header.method,
        path,
        headers: &header.headers,
        body: Some(&body),
    };
    let mut class =
        classify::classify(&facts, route_id, table).map_err(|e| (None, None, e.into()))?;
    if table.gateway_region.is_some() && !table.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        // The client connected directly: its own connection's round trip is the
        // client → gateway term of the estimate (one getsockopt, only for regional instances).
        class.client_rtt = downstream_rtt(session);
    }
    // Authentication, rate and concurrency: before the cache (a limited caller gets no hits).
    admit::check(limiter, table, &class, ticket)
        .await
        .map_err(|e| (Some(class.clone()), None, e))?;

    // The cache: looked up before deciding, so that a hit is answered even when no pool
    // could take the request now (the decision is still made, for the spend avoided).
    let lookup = match cache {
        Some(cache) => {
            let target = header.uri.path_and_query().map_or(path, |pq| pq.as_str());
            cache
                .lookup(&class, table, target, &header.headers, Some(&body))
                .await
        }
        None => Lookup::Bypass,
    };

    if !lookup.is_hit() {
        // The daily budget: only requests that will cost something (hits are free); may
        // move the request to the tenant's downgrade tier.
        if let Err(e) = admit::spend(ticket.as_ref(), table, &mut class) {
            return Err((Some(class), None, e));
        }
    }
    let now = now_ms();
    let mut decision = route::decide(&class, table, &[], now);
    if lookup.is_hit() {
        return Ok((class, decision, body, lookup));
    }
    if decision.reason == route::Reason::Shed {
        // A pool kept out only by a stale estimate gets this request as its probe.
        if let Some(probe) = route::probe_instead_of_shed(&class, table, now) {
            decision = probe;
        }
    }
    let tier = &table.tiers[class.tier as usize];
    match decision.reason {
        route::Reason::Shed => {
            let err = GatewayError::Shed {
                tier: tier.name.clone(),
                deadline_ms: class.deadline.as_millis(),
            };
            Err((Some(class), Some(decision), err))
        }
        route::Reason::Overloaded => Err((
            Some(class),
            Some(decision),
            GatewayError::Overloaded {
                tier: tier.name.clone(),
            },
        )),
        route::Reason::NoCandidate => {
            let err = GatewayError::NoCandidate {
                model: class.model.clone(),
                tier: tier.name.clone(),
            };
            Err((Some(class), Some(decision), err))
        }
        _ => Ok((class, decision, body, lookup)),
    }
}

/// Answer from the prediction cache: the stored status, content headers and body, the cache
/// and classification headers, and the spend the request did not cause.
async fn answer_from_cache(
    session: &mut Session,
    ctx: &mut RequestCtx,
    table: &RoutingTable,
    decision: &Decision,
    entry: &crate::cache::Stored,
) -> Result<()> {
    let mut resp = ctx.cache.answer_header(entry)?;
    let saved = match (decision.target, decision.estimate) {
        (Some(_), Some(est)) => est.cost_usd,
        _ => 0.0,
    };
    edit_headers(&mut resp, |h| {
        decision_headers(h, ctx);
        // A hit's decision line says what it saved (unless `observe.decision_headers` is
        // off).
        if table.decision_headers != DecisionHeaders::Off {
            let line = format!("cache-hit; est_usd=0.000000; saved_usd={saved:.6}");
            if let Ok(line) = http::HeaderValue::try_from(line) {
                let _ = h.try_insert(names::DECISION, line);
            }
        }
    });
    if let Some(class) = &ctx.class {
        metrics::counter!(t::COST_SAVED, "tier" => table.tiers[class.tier as usize].name.clone())
            .increment(t::nano_usd(saved));
        crate::admin::status::record_saved(t::nano_usd(saved));
    }
    ctx.own_status = Some(entry.status);
    if ctx.grpc {
        // Only answers that ended in `grpc-status: 0` are stored: replay those trailers.
        return crate::grpc::write_ok(session, resp, entry.body.clone()).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(entry.body.clone()), true)
        .await?;
    Ok(())
}

/// Serve a request of a hedging tier through [`crate::hedge::run`] and write its answer
/// (buffered; the headers the gateway adds are the same as on the proxied path, plus
/// `x-switchyard-hedged`).
async fn answer_hedged(
    session: &mut Session,
    ctx: &mut RequestCtx,
    table: &Serving,
    target: (PoolId, u16),
    body: &Bytes,
    factor: f64,
) -> Result<()> {
    let Some(class) = ctx.class.take() else {
        return Ok(());
    };
    // (HTTP/1.1, the body's length, no hop-by-hop fields: as the gateway's own sender.)
    let mut req = buffered::upstream_request(session.req_header(), body.len(), false)?;
    ctx.class = Some(class);
    forward_headers(&mut req, ctx, session)?;
    let Some(class) = ctx.class.take() else {
        return Ok(());
    };
    let result = crate::hedge::run(table, &class, target, &req, body, factor).await;
    ctx.class = Some(class);
    match result {
        Ok(answer) => {
            ctx.tried = answer.tried;
            let status = answer.header.status.as_u16();
            let mut resp = ResponseHeader::build(answer.header.status, None)?;
            for (name, value) in answer.header.headers.iter() {
                if !matches!(
                    name.as_str(),
                    "connection" | "keep-alive" | "transfer-encoding" | "content-length"
                ) {
                    resp.append_header(name.clone(), value.clone())?;
                }
            }
            resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
            resp.insert_header("x-switchyard-hedged", if answer.hedged { "1" } else { "0" })?;
            edit_headers(&mut resp, |h| decision_headers(h, ctx));
            ctx.own_status = Some(status);
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(answer.body), true).await?;
        }
        Err(err) => {
            ctx.own_status = Some(err.status());
            Box::pin(respond_error(session, &err, ctx)).await?;
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The most headers [`decision_headers`] and the cache add to an answer.
const DECISION_HEADERS: usize = 9;

/// Add headers to an answer through its plain `http` header map.
///
/// Pingora keeps the original case of every header name of an HTTP/1 answer in a second map,
/// and `ResponseHeader::insert_header` parses the name back from bytes (an allocation for a
/// custom name), inserts into both maps and grows them as they fill: ~1.5k instructions a
/// header under callgrind, the largest part of the gateway's own per-request work
/// (`docs/performance.md`). Through the `http` parts a header is one insert of a ready-made
/// name. The price is the case map: header names are case-insensitive (RFC 9110 §5.1),
/// HTTP/2 sends them all in lowercase, and proxies like Envoy do the same on HTTP/1, so the
/// answer goes out with standard names in title case and the others in lowercase. Only
/// `ResponseHeader`'s public conversions are used (to `http` parts, which keep the status,
/// version, headers and extensions, and back); a non-standard reason phrase is carried over.
fn edit_headers(resp: &mut ResponseHeader, edit: impl FnOnce(&mut http::HeaderMap)) {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let cased = std::mem::replace(resp, empty);
    let reason = cased
        .get_reason_phrase()
        .filter(|r| Some(*r) != cased.status.canonical_reason())
        .map(str::to_owned);
    let mut parts = http::response::Parts::from(cased);
    // Only fails past `http`'s 32,768-entry limit, and then so do the inserts, quietly.
    let _ = parts.headers.try_reserve(DECISION_HEADERS);
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
}

/// The decision headers' names, parsed once.
mod names {
    use http::HeaderName;
    pub const POLICY_VERSION: HeaderName = HeaderName::from_static("x-switchyard-policy-version");
    pub const TIER: HeaderName = HeaderName::from_static("x-switchyard-tier");
    pub const REGION: HeaderName = HeaderName::from_static("x-switchyard-region");
    pub const BUDGET: HeaderName = HeaderName::from_static("x-switchyard-budget");
    pub const POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
    pub const ENDPOINT: HeaderName = HeaderName::from_static("x-switchyard-endpoint");
    pub const DECISION: HeaderName = HeaderName::from_static("x-switchyard-decision");
}

fn decision_headers(headers: &mut http::HeaderMap, ctx: &RequestCtx) {
    // Names and values come ready-made from the compiled table (a refcount bump each), so a
    // response pays for map inserts only; the decision line is formatted with integers.
    let Some(table) = &ctx.table else { return };
    let which = table.decision_headers;
    if which == DecisionHeaders::Off {
        return;
    }
    let _ = headers.try_insert(names::POLICY_VERSION, table.version_header.clone());
    if let Some(class) = &ctx.class {
        let _ = headers.try_insert(names::TIER, table.tiers[class.tier as usize].header.clone());
        if let Some(region) = table.region_headers.get(class.region as usize) {
            let _ = headers.try_insert(names::REGION, region.clone());
        }
        if class.tier_source == classify::TierSource::Budget {
            let _ = headers.try_insert(names::BUDGET, http::HeaderValue::from_static("downgraded"));
        }
    }
    if let Some((p, e)) = ctx.tried.last() {
        let pool = &table.pools[*p as usize];
        let _ = headers.try_insert(names::POOL, pool.header.clone());
        if which == DecisionHeaders::All {
            let endpoint = pool.endpoints[*e as usize].header.clone();
            let _ = headers.try_insert(names::ENDPOINT, endpoint);
        }
    }
    if let Some(d) = &ctx.decision {
        let value = match d.estimate {
            Some(est) => {
                // "{reason}; est_ms={ms}.{tenth}; est_usd={usd}.{micro:06}; candidates={c};
                // feasible={f}; attempts={a}", written without `core::fmt` (which was a
                // seventh of this function in callgrind).
                let tenths_ms = (est.latency.as_secs_f64() * 1e4).round() as u64;
                let micro_usd = (est.cost_usd * 1e6).round() as u64;
                let mut v = String::with_capacity(96);
                v.push_str(d.reason.as_str());
                v.push_str("; est_ms=");
                push_decimal(&mut v, tenths_ms / 10, 1);
                v.push('.');
                push_decimal(&mut v, tenths_ms % 10, 1);
                v.push_str("; est_usd=");
                push_decimal(&mut v, micro_usd / 1_000_000, 1);
                v.push('.');
                push_decimal(&mut v, micro_usd % 1_000_000, 6);
                v.push_str("; candidates=");
                push_decimal(&mut v, u64::from(d.candidates), 1);
                v.push_str("; feasible=");
                push_decimal(&mut v, u64::from(d.feasible), 1);
                v.push_str("; attempts=");
                push_decimal(&mut v, ctx.tried.len() as u64, 1);
                v
            }
            None => d.reason.as_str().to_string(),
        };
        if let Ok(value) = http::HeaderValue::try_from(value) {
            let _ = headers.try_insert(names::DECISION, value);
        }
    }
}

/// Write a JSON error response (with `Retry-After` when the error suggests one); a gRPC
/// request gets a trailers-only gRPC status instead.
async fn respond_error(session: &mut Session, err: &GatewayError, ctx: &RequestCtx) -> Result<()> {
    if ctx.grpc {
        return respond_grpc_error(session, err, ctx).await;
    }
    let body = err.body();
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(secs) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    edit_headers(&mut resp, |h| decision_headers(h, ctx));
    let unread = !session.as_mut().is_body_done();
    if unread || err.status() == 413 || err.status() == 400 {
        // The rest of an unread body would be taken for the next request on this connection.
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    if unread {
        body::linger(session).await;
    }
    Ok(())
}

/// The gRPC shape of an error: HTTP 200, trailers-only, `grpc-status` from
/// [`GatewayError::grpc_status`], with the decision headers as metadata.
async fn respond_grpc_error(
    session: &mut Session,
    err: &GatewayError,
    ctx: &RequestCtx,
) -> Result<()> {
    let mut code = err.grpc_status();
    if let (GatewayError::NoCandidate { model, .. }, Some(table)) = (err, &ctx.table) {
        // A model some gRPC pool serves, but none can take now: UNAVAILABLE (retryable),
        // not NOT_FOUND.
        if !crate::grpc::model_unknown(table, model) {
            code = 14;
        }
    }
    let mut resp = crate::grpc::status_header(code, &err.to_string())?;
    if let Some(secs) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    edit_headers(&mut resp, |h| decision_headers(h, ctx));
    crate::grpc::write_status(session, resp).await
}

/// Answer the gRPC server methods (`ServerLive`, `ServerReady`, `ServerMetadata`) of a path
/// whose route is `oip-v2-grpc`; `None` when the request is not one of them.
async fn answer_grpc_server(session: &mut Session, table: &Serving) -> Result<Option<u16>> {
    let path = session.req_header().uri.path();
    let Some(method) = crate::grpc::codec::Method::from_path(path).filter(|m| m.is_server()) else {
        return Ok(None);
    };
    let grpc_route = table.match_route(path).is_some_and(|r| {
        table.routes[r as usize].protocol == crate::policy::raw::Protocol::OipV2Grpc
    });
    let Some(body) = crate::grpc::server_answer(method, table).filter(|_| grpc_route) else {
        return Ok(None);
    };
    // The (empty) request message is read so the stream closes cleanly; its content is moot.
    body::linger(session).await;
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("x-switchyard-policy-version", table.version_header.clone())?;
    crate::grpc::write_ok(session, resp, body).await?;
    Ok(Some(200))
}

/// Whether a request counts as inference spend: everything but gRPC metadata methods
/// (`ModelReady`, `ModelMetadata`, `ModelConfig`).
fn counts_spend(session: &Session, ctx: &RequestCtx) -> bool {
    !ctx.grpc
        || crate::grpc::codec::Method::from_path(session.req_header().uri.path())
            .is_some_and(|m| m.is_inference())
}
