//! The one way to a backend: every request the gateway sends upstream, whatever its
//! protocol or body, goes through [`send`].
//!
//! ```text
//! send ── loop ─┬─ acquire a slot on the decided endpoint (re-decide on a retry, excluding
//!               │  what was tried; a lost race for the last slot decides again)
//!               ├─ one Attempt ─── or, on a hedging tier, two raced (`hedge`)
//!               │    connect (plain, TLS, h2c) → write header + body → read the head
//!               │    → report to estimates, health, ejection (the attempt does it itself)
//!               └─ failure or a 5xx: retry elsewhere when it is safe and allowed, else the
//!                  error; an answer: an `Answer` that streams its body to the pipeline
//! ```
//!
//! The body is whole before routing (`pipeline::body`), held once as `Bytes` and re-sent by
//! reference on every attempt, so a failover can always replay it, whatever its size. The
//! request header is prepared once ([`request::Prepared`]: the one hop-by-hop list, the
//! credential rules) and finished per attempt. Connections come from one connector with one
//! keep-alive pool per protocol ([`connect`]); shadow copies' plain HTTP/1.1 connections
//! from a pool of their own.
//!
//! Why not Pingora's `ProxyHttp` loop: it drives exactly one attempt at a time (a hedge needs
//! two in flight, a shadow one more the client never waits for), replays a body only through
//! its 64 KiB retry buffer (Pingora issues 349 and 575), and its HTTP/1 client flushes the
//! request header on its own (a segment and a backend wake-up more per request). Pingora
//! stays the server (`pipeline`) and the connector (here); the attempt, the retries and the
//! hedge are this module's, once.
//!
//! Rules a retry follows (shared with the simulator, which lists its differences in
//! `simulate`): a refused connect is always safe to retry (nothing reached the backend); a
//! stale pooled connection is retried silently; a timeout, a cut connection or a 5xx only on
//! an idempotent route, with another candidate left; every retry within `max_attempts`, the
//! deadline and the retry budget.

pub mod attempt;
pub mod connect;
pub mod request;
pub mod rules;
pub mod scrape;
pub mod shadow;

use crate::classify::Class;
use crate::error::GatewayError;
use crate::policy::compile::PoolId;
use crate::route::{self, Decision};
use crate::serving::state::now_ms;
use crate::serving::Serving;
use crate::telemetry as t;
pub use attempt::{Answer, Attempt, Piece};
use attempt::{Failure, Head};
use bytes::Bytes;
use connect::Timeouts;
use pingora::http::ResponseHeader;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request on its way upstream.
pub struct Outbound<'a> {
    pub table: &'a Arc<Serving>,
    pub class: &'a Class,
    /// The request header, prepared once.
    pub request: request::Prepared,
    /// The whole body, re-sent by reference on every attempt.
    pub body: Bytes,
    /// gRPC to the endpoints' gRPC ports (h2c); gRPC statuses count as HTTP ones.
    pub grpc: bool,
    /// When the request arrived (its deadline counts from here).
    pub start: Instant,
}

/// What the attempts of one request did: the per-request record reads it whatever the
/// outcome.
#[derive(Debug, Clone)]
pub struct Trail {
    /// The decision of the last attempt (a retry decides again).
    pub decision: Decision,
    /// Every endpoint an attempt went to, in order (the answer's last).
    pub tried: Vec<(PoolId, u16)>,
    /// Time to the answering attempt's response header.
    pub upstream_time: Option<Duration>,
    /// The service time in it (the upstream time less the network: `route::network`): what
    /// a pool billed by the GPU-hour charges for.
    pub service_time: Option<Duration>,
    /// `Some(true)`: a second attempt was sent (hedging tier); `Some(false)`: a hedging tier
    /// that did not need one.
    pub hedged: Option<bool>,
    /// When the answering attempt's request was sent (on a new connection, once it was set
    /// up): a stream's time to first token is counted from here.
    pub sent_at: Option<Instant>,
}

impl Trail {
    pub fn new(decision: Decision) -> Trail {
        Trail {
            decision,
            tried: Vec::new(),
            upstream_time: None,
            service_time: None,
            hedged: None,
            sent_at: None,
        }
    }
}

/// Send the request until an attempt answers (returned, streaming) or no attempt may be
/// made (the error to answer with). `trail` records every attempt.
pub async fn send(out: &mut Outbound<'_>, trail: &mut Trail) -> Result<Answer, GatewayError> {
    let table = out.table;
    let tier = &table.tiers[out.class.tier as usize];
    let hedge_after = rules::hedges(table, out.class);
    let timeouts = Timeouts {
        connect: table.upstream.connect_timeout,
        io: tier.timeout,
    };
    loop {
        let attempt = acquire(out, trail)?;
        let (attempt, result) = match hedge_after {
            // (Boxed: a hedging tier is the rare case, and inline its state would grow every
            // request's future.)
            Some(factor) => crate::cold(|| hedge(out, trail, attempt, factor, timeouts)).await?,
            None => {
                let mut attempt = attempt;
                let result = exchange(out, &mut attempt, timeouts).await;
                (attempt, result)
            }
        };
        match result {
            Ok(head) => {
                let status = status_of(out.grpc, &head.header);
                let mut attempt = attempt;
                let (upstream, service) = attempt.answered(status, out.class.streaming);
                (trail.upstream_time, trail.service_time) = (Some(upstream), Some(service));
                trail.sent_at = Instant::now().checked_sub(upstream);
                if status >= 500 && may_retry(out, trail) {
                    // A 5xx on an idempotent route, retried elsewhere with the whole body.
                    let pool = &table.pools[attempt.target.0 as usize];
                    metrics::counter!(t::RETRIES, "pool" => pool.name.clone()).increment(1);
                    drop(attempt);
                    head.discard().await;
                    continue;
                }
                return Ok(Answer::new(attempt, head, out.grpc));
            }
            Err(failure) if failure.is_stale() => {
                // Says nothing about the endpoint; the next attempt goes elsewhere.
                continue;
            }
            Err(Failure::Connect { error, tls }) => {
                let pool = &table.pools[attempt.target.0 as usize];
                attempt.failed_to_connect(&error, tls);
                if !tls && retry_allowed(out, trail) {
                    metrics::counter!(t::RETRIES, "pool" => pool.name.clone()).increment(1);
                    continue;
                }
                return Err(match tls {
                    true => GatewayError::UpstreamTls(connect::tls_reason(&error)),
                    false => GatewayError::UpstreamUnavailable(error.to_string()),
                });
            }
            Err(Failure::Exchange { error, .. }) => {
                attempt.failed();
                if may_retry(out, trail) {
                    continue;
                }
                return Err(match error.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                        GatewayError::UpstreamTimeout(tier.timeout.as_millis())
                    }
                    _ => GatewayError::UpstreamFailed(error.to_string()),
                });
            }
        }
    }
}

/// One attempt's exchange, with the request finished for its endpoint.
async fn exchange(
    out: &mut Outbound<'_>,
    attempt: &mut Attempt,
    timeouts: Timeouts,
) -> Result<Head, Failure> {
    let (p, e) = attempt.target;
    let pool = &out.table.pools[p as usize];
    let left = out.class.deadline.saturating_sub(out.start.elapsed());
    let req = out
        .request
        .for_attempt(pool, &pool.endpoints[e as usize], left)
        .map_err(|error| Failure::Connect { error, tls: false })?;
    attempt.exchange(&req, &out.body, out.grpc, timeouts).await
}

/// Take a slot for the next attempt ([`rules::take_slot`]). The first attempt uses the
/// decision the pipeline made; a retry decides again without the endpoints already tried.
fn acquire(out: &Outbound<'_>, trail: &mut Trail) -> Result<Attempt, GatewayError> {
    let table = out.table;
    let class = out.class;
    let now = now_ms();
    let decision = if trail.tried.is_empty() {
        // Every request earns the retry budget a fraction of a retry.
        table.live.budget.deposit(&table.upstream.retry_budget);
        trail.decision
    } else {
        route::decide(class, table, &trail.tried, now)
    };
    let (decision, target) = rules::take_slot(table, class, &trail.tried, decision, now);
    trail.decision = decision;
    match target {
        Some(target) => {
            trail.tried.push(target);
            Ok(Attempt::adopt(table, target))
        }
        None => Err(rules::no_slot_error(class, table, decision.reason)),
    }
}

/// The status an upstream answer counts as: a gRPC trailers-only `UNAVAILABLE` (14) is the
/// gRPC server's 503 (ejection, retry elsewhere on idempotent routes).
fn status_of(grpc: bool, resp: &ResponseHeader) -> u16 {
    let unavailable = grpc
        && resp
            .headers
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"14");
    if unavailable {
        503
    } else {
        resp.status.as_u16()
    }
}

/// [`rules::may_retry`] for this request now.
fn may_retry(out: &Outbound<'_>, trail: &Trail) -> bool {
    rules::may_retry(
        out.table,
        out.class,
        &trail.tried,
        out.start.elapsed(),
        now_ms(),
    )
}

/// [`rules::retry_allowed`] for this request now.
fn retry_allowed(out: &Outbound<'_>, trail: &Trail) -> bool {
    rules::retry_allowed(out.table, out.class, trail.tried.len(), out.start.elapsed())
}

/// What one attempt of a queued job came to ([`fetch`]).
pub enum Fetched {
    /// The endpoint answered (any status).
    Answer {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// No usable answer; `retryable`: a connect error, a timeout, a cut connection (the
    /// queue tries again after its back-off), not an answer too large to keep.
    Failed { error: String, retryable: bool },
}

/// One attempt of a queued job on `target`: the batch dispatcher's way to a backend, the same
/// attempt as a request's (slot, outcome reported to estimates, health and ejection; TLS and
/// the pool's rewriting for hosted batch pools), with the answer read whole up to `max`
/// bytes. Its retries are the queue's (back-off between dispatches), not [`send`]'s; the
/// slot is taken whatever the limits say, because the dispatcher keeps its own count
/// (`queue::dispatcher::room`). `keepalive`: the pool its plain HTTP/1.1 connection comes
/// from (a shadow copy's own).
pub async fn fetch(
    table: &Arc<Serving>,
    target: (PoolId, u16),
    header: &pingora::http::RequestHeader,
    body: &Bytes,
    timeout: Duration,
    max: usize,
    keepalive: connect::Keepalive,
) -> Fetched {
    fetch_as(
        table,
        target,
        header,
        body,
        (timeout, max),
        (keepalive, false),
    )
    .await
}

/// [`fetch`], of a gRPC call when `grpc` (a shadow copy of one): over the pool's h2c
/// connection, its status the HTTP equivalent of the answer's `grpc-status` (header or
/// trailer), as the client's is counted.
pub async fn fetch_as(
    table: &Arc<Serving>,
    target: (PoolId, u16),
    header: &pingora::http::RequestHeader,
    body: &Bytes,
    (timeout, max): (Duration, usize),
    (keepalive, grpc): (connect::Keepalive, bool),
) -> Fetched {
    let failed = |error: String, retryable| Fetched::Failed { error, retryable };
    let pool = &table.pools[target.0 as usize];
    let endpoint = &pool.endpoints[target.1 as usize];
    let timeouts = Timeouts {
        connect: table.upstream.connect_timeout,
        io: timeout,
    };
    let prepared = request::Prepared::new(header, body.len(), grpc, None, false);
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => return failed(e.to_string(), false),
    };
    let req = match prepared.for_attempt(pool, endpoint, timeout) {
        Ok(req) => req,
        Err(e) => return failed(e.to_string(), false),
    };
    let mut attempt = Attempt::take(table, target).keep_alive_in(keepalive);
    match attempt.exchange(&req, body, grpc, timeouts).await {
        Ok(head) => {
            let mut status = head.header.status.as_u16();
            // A trailers-only gRPC answer carries its status in the header.
            let grpc_status = |h: &http::HeaderMap| {
                h.get("grpc-status")
                    .and_then(|v| crate::grpc::http_equivalent(v.as_bytes()))
            };
            if grpc {
                status = grpc_status(&head.header.headers).unwrap_or(status);
            }
            let content_type = head
                .header
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            attempt.answered(status, false);
            let mut answer = Answer::new(attempt, head, grpc);
            match answer.body.read_all_with_trailers(max).await {
                Ok((body, trailers)) => Fetched::Answer {
                    status: trailers
                        .as_ref()
                        .filter(|_| grpc)
                        .and_then(grpc_status)
                        .unwrap_or(status),
                    content_type,
                    body,
                },
                Err(e) => {
                    let retryable = !matches!(e, attempt::BodyError::TooLarge(_));
                    failed(format!("endpoint {}: {e}", endpoint.name), retryable)
                }
            }
        }
        Err(failure) => {
            let error = format!("endpoint {}: {}", endpoint.name, failure.error());
            attempt.report(&failure);
            failed(error, true)
        }
    }
}

/// A hedging tier's attempt: `first`, and when it has not answered after [`hedge_delay`] a
/// second attempt to the next-best candidate (if one can take it now and meets the deadline
/// or is the tier's fallback). The first good answer (not a 5xx) wins and the other attempt
/// is dropped (its connection closed, so the backend sees the client go away); with no good
/// answer, the last one. An attempt that fails while the other is still running is reported
/// and the race waits for the other.
async fn hedge(
    out: &mut Outbound<'_>,
    trail: &mut Trail,
    mut first: Attempt,
    factor: f64,
    timeouts: Timeouts,
) -> Result<(Attempt, Result<Head, Failure>), GatewayError> {
    let table = out.table;
    let pool = &table.pools[first.target.0 as usize];
    let network = route::network::upstream_rtt(pool, table.live.pool(first.target.0), table);
    let delay = rules::hedge_delay(table, first.target.0, network, factor, now_ms());
    let left = out.class.deadline.saturating_sub(out.start.elapsed());
    let (first_target, (p, e)) = (first.target, first.target);
    let pool = &table.pools[p as usize];
    let req_a = out
        .request
        .for_attempt(pool, &pool.endpoints[e as usize], left)
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .into_owned();
    let body = out.body.clone();
    let grpc = out.grpc;
    // Boxed (only on this path): dropping a future must end its borrow of its attempt.
    let mut primary = Box::pin(first.exchange(&req_a, &body, grpc, timeouts));
    let early = tokio::select! {
        done = &mut primary => Some(done),
        _ = tokio::time::sleep(delay) => None,
    };
    if let Some(done) = early {
        drop(primary);
        trail.hedged = Some(false);
        return Ok((first, done));
    }
    // Not answered in time: the next-best candidate, if one can take it now.
    let next = rules::hedge_target(table, out.class, &trail.tried, now_ms());
    let second = next
        .and_then(|d| d.target)
        .filter(|&t| rules::take(table, t));
    let (Some(next), Some(second)) = (next, second) else {
        let done = primary.await;
        trail.hedged = Some(false);
        return Ok((first, done));
    };
    let mut second = Attempt::adopt(table, second);
    let tier = &table.tiers[out.class.tier as usize];
    let hedge_pool = &table.pools[second.target.0 as usize];
    metrics::counter!(t::HEDGES, "pool" => hedge_pool.name.clone()).increment(1);
    if let Some(est) = next.estimate {
        metrics::counter!(t::HEDGE_COST, "tier" => tier.name.clone())
            .increment(t::nano_usd(est.cost.usage_usd + est.cost.egress_usd));
    }
    trail.hedged = Some(true);
    let second_target = second.target;
    let left = out.class.deadline.saturating_sub(out.start.elapsed());
    let req_b = out
        .request
        .for_attempt(
            hedge_pool,
            &hedge_pool.endpoints[second_target.1 as usize],
            left,
        )
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .into_owned();
    let mut hedged = Box::pin(second.exchange(&req_b, &body, grpc, timeouts));
    let good =
        |r: &Result<Head, Failure>| matches!(r, Ok(head) if status_of(grpc, &head.header) < 500);
    // The first to finish; with no good answer from it, the other too.
    let (first_result, second_result, primary_first) = tokio::select! {
        a = &mut primary => {
            if good(&a) { (Some(a), None, true) } else { (Some(a), Some(hedged.as_mut().await), true) }
        }
        b = &mut hedged => {
            if good(&b) { (None, Some(b), false) } else { (Some(primary.as_mut().await), Some(b), false) }
        }
    };
    drop(primary);
    drop(hedged);
    // The winner: the good answer, else the one that came first. It goes last in `tried`:
    // the answer's pool is the last one tried.
    let won_by_second = match (&first_result, &second_result) {
        (_, Some(b)) if good(b) => true,
        (Some(a), _) if good(a) => false,
        _ => !primary_first,
    };
    trail
        .tried
        .retain(|t| *t != first_target && *t != second_target);
    if won_by_second {
        trail.tried.extend([first_target, second_target]);
        if let Some(a) = first_result {
            settle_loser(first, a).await;
        }
        let b = second_result
            .ok_or_else(|| GatewayError::Internal("hedge without an answer".into()))?;
        Ok((second, b))
    } else {
        trail.tried.extend([second_target, first_target]);
        if let Some(b) = second_result {
            settle_loser(second, b).await;
        }
        let a =
            first_result.ok_or_else(|| GatewayError::Internal("hedge without an answer".into()))?;
        Ok((first, a))
    }
}

/// The losing side of a hedge that finished: a failure is reported like any other attempt's
/// (a 5xx was already counted when its head arrived), an unused answer is closed.
async fn settle_loser(mut attempt: Attempt, result: Result<Head, Failure>) {
    match result {
        Ok(head) => {
            let status = head.header.status.as_u16();
            attempt.answered(status, false);
            head.discard().await;
        }
        Err(failure) => attempt.report(&failure),
    }
}
