//! The one record of a finished request, built from its state once, feeding everything that
//! counts it: the metrics, the status page's aggregate, the tenant's bill, the decision log
//! and the access log. Nothing here is on the client's critical path: the answer is out;
//! the logs are handed to their writer threads as indices and refcounts.

use super::{Answered, Gateway, Request};
use crate::admit;
use crate::classify::Class;
use crate::grpc::codec::Method;
use crate::observe::access::AccessRecord;
use crate::observe::decision::DecisionRecord;
use crate::observe::status::{self, Via};
use crate::policy::compile::PoolId;
use crate::serving::Serving;
use crate::telemetry as t;
use pingora::protocols::http::ServerSession;
use std::time::SystemTime;

/// Count the spend a cache hit avoided.
pub(super) fn saved(table: &Serving, class: &Class, usd: f64) {
    metrics::counter!(t::COST_SAVED, "tier" => table.tiers[class.tier as usize].name.clone())
        .increment(t::nano_usd(usd));
    status::record_saved(t::nano_usd(usd));
}

/// Record the finished request.
pub(super) fn finish(gw: &Gateway, session: &ServerSession, mut req: Request) {
    let elapsed = req.start.elapsed();
    let status = req.status;
    let trail = req.trail.as_ref();
    let target = trail.and_then(|t| t.tried.last().copied());
    let decision = trail.map(|t| t.decision).or(req.decision);
    let attempts = trail.map_or(0, |t| t.tried.len());
    let via = match (target, req.answered) {
        (Some((p, _)), _) => Via::Pool(p),
        (None, Answered::Cache) => Via::Cache,
        (None, Answered::Queue) => Via::Queue,
        _ => Via::Nothing,
    };
    status::record(
        req.class.as_ref(),
        decision.as_ref(),
        via,
        req.cache.outcome,
        status,
        elapsed,
    );
    let table = req.table.clone();
    let none = u16::MAX;
    let class = req.class.as_ref();
    let key = t::HandleKey {
        table: table.generation,
        route: class.map_or(none, |c| c.route),
        tier: class.map_or(none, |c| c.tier),
        region: class.map_or(none, |c| c.region),
        pool: target.map_or(none, |(p, _)| p),
        status,
        reason: decision.map_or(u8::MAX, |d| d.reason as u8),
    };
    // Names are borrowed from the table; strings are made only when a new label set's
    // handles are first registered.
    let route = class.map_or("none", |c| table.routes[c.route as usize].name.as_str());
    let tier = class.map_or("none", |c| table.tiers[c.tier as usize].name.as_str());
    let region = class.map_or("none", |c| table.regions[c.region as usize].as_str());
    let pool = target.map_or("none", |(p, _)| table.pools[p as usize].name.as_str());
    let reason = decision.map(|d| d.reason.as_str()).unwrap_or("none");
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
    let mut spend_usd = 0.0;
    if let (Some(class), Some(d)) = (class, &decision) {
        handles.decisions.increment(1);
        if elapsed > class.deadline {
            handles.deadline_misses.increment(1);
        }
        // Metadata reads (`Class::inference` false) are routed like inference but are not
        // spend; neither is an error answer.
        let spent = class.inference
            && (200..500).contains(&status)
            && target.is_some()
            && counts_spend(session, &req);
        if let (Some(est), true) = (d.estimate, spent) {
            let usd = match req.tokens.as_mut() {
                // Priced per token: what the answer used, not the estimate.
                Some(meter) => token_spend(&table, target.map(|t| t.0), meter, tier),
                None => est.cost_usd,
            };
            spend_usd = usd;
            handles.cost.increment(t::nano_usd(usd));
            admit::charge(req.ticket.as_ref(), usd);
        }
    }
    if let Some(log) = &gw.decisions {
        log.record(DecisionRecord {
            at: SystemTime::now(),
            table: table.clone(),
            route: key.route,
            region: key.region,
            tier: key.tier,
            tenant: class.and_then(|c| c.tenant).unwrap_or(u16::MAX),
            model: class.map(|c| c.model.clone()).unwrap_or_default(),
            body_bytes: req.permit.as_ref().map_or(0, |b| b.bytes()),
            cacheable: class.is_some_and(|c| c.cacheable),
            cache: req.cache.outcome.map(|o| o.as_str()),
            pool: key.pool,
            reason: decision.map(|d| d.reason.as_str()),
            estimate: decision.and_then(|d| d.estimate),
            attempts: attempts.min(255) as u8,
            upstream: trail.and_then(|t| t.upstream_time),
            elapsed,
            status,
            spend_usd,
        });
    }
    if let Some(log) = &gw.access {
        // Moved to the writer thread as indices and refcounts; formatted there.
        let header = session.req_header();
        log.record(AccessRecord {
            at: SystemTime::now(),
            method: header.method.clone(),
            uri: header.uri.clone(),
            status,
            elapsed,
            client: req.class.as_ref().map(|c| c.client_ip),
            route: key.route,
            tier: key.tier,
            region: key.region,
            pool: key.pool,
            model: req
                .class
                .as_mut()
                .map(|c| std::mem::take(&mut c.model))
                .unwrap_or_default(),
            reason,
            attempts: attempts.min(255) as u8,
            error: req.error.take(),
            table: Some(table),
        });
    }
}

/// Whether a request counts as inference spend: everything but gRPC metadata methods
/// (`ModelReady`, `ModelMetadata`, `ModelConfig`).
fn counts_spend(session: &ServerSession, req: &Request) -> bool {
    !req.grpc
        || Method::from_path(session.req_header().uri.path()).is_some_and(|m| m.is_inference())
}

/// The spend of an answer from a pool priced per token: its `usage` (or the estimate from
/// bytes), counted by source and folded into the pool's tokens-per-request average.
fn token_spend(
    table: &Serving,
    pool: Option<PoolId>,
    meter: &mut crate::route::tokens::Meter,
    tier: &str,
) -> f64 {
    let Some(p) = pool else {
        return 0.0;
    };
    let pool = &table.pools[p as usize];
    let state = table.live.pool(p);
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
