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
use crate::route::cost;
use crate::serving::Serving;
use crate::telemetry as t;
use crate::trace::SpanRecord;
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
    // The tenant's tokens first (before the request counts as answered): its next request
    // is checked against the corrected bucket. `finish` gives the same usage when the bill
    // below asks again.
    if let Some(meter) = req.tokens.as_mut() {
        let usage = meter.finish();
        admit::used_tokens(req.ticket.as_ref(), usage.input, usage.output);
    }
    handles.requests.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    let streamed = match (class, target, req.stream.as_ref()) {
        (Some(class), Some(target), Some(clock)) => {
            stream_times(&table, class, target, trail, clock, req.start, tier)
        }
        _ => None,
    };
    // What the request is judged on: a stream with a time-to-first-token objective on its
    // first token (and its time per output token), anything else on its last byte.
    let judged = match (class, &streamed) {
        (Some(c), Some(s)) if c.ttft.is_some() => {
            let slow = matches!((c.tpot, s.tpot), (Some(limit), Some(tpot)) if tpot > limit);
            if slow {
                std::time::Duration::MAX
            } else {
                s.ttft
            }
        }
        _ => elapsed,
    };
    let mut bill = None;
    if let (Some(class), Some(d)) = (class, &decision) {
        handles.decisions.increment(1);
        if judged > class.objective() {
            handles.deadline_misses.increment(1);
        }
        // Metadata reads (`Class::inference` false) are routed like inference but are not
        // spend; neither is an error answer.
        let spent = class.inference && (200..500).contains(&status) && counts_spend(session, &req);
        if let (Some((p, _)), Some(est), true) = (target, d.estimate, spent) {
            // The service time the answer took (a stream's, to its last event), else what
            // the decision expected.
            let service = streamed
                .as_ref()
                .and_then(|s| s.service)
                .or(trail.and_then(|t| t.service_time))
                .unwrap_or(est.service);
            let billed = charge(
                &table,
                (p, class),
                service,
                req.tokens.as_mut(),
                req.answer_bytes,
                tier,
            );
            handles.cost.increment(billed.usage_nusd);
            bill = Some(billed);
        }
    }
    let spend_usd = bill.as_ref().map_or(0.0, Billed::usd);
    // A rolled-out model's evidence (`rollout`): status, SLO, cost of every request an
    // attempt went upstream for: answered, or failed there (a timeout, a cut or refused
    // connection: the gateway's 502/503/504 is the version's error, or a hanging canary
    // would never be judged). A refusal before any attempt is the decision's, not the
    // version's (an unservable canary is charged where it is refused, `rollout`).
    let went_upstream = req.answered == Answered::Upstream || (attempts > 0 && status >= 500);
    if let Some(c) = class.filter(|c| c.version.is_some() && went_upstream) {
        gw.rollouts
            .observe(&table, c, status, judged > c.objective(), spend_usd);
    }
    admit::charge(req.ticket.as_ref(), spend_usd);
    status::record(
        req.class.as_ref(),
        via,
        req.cache.outcome,
        status,
        elapsed,
        judged,
        spend_usd,
    );
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
            egress_usd: bill
                .as_ref()
                .map_or(0.0, |b| b.egress_nusd as f64 / t::NANO_USD),
            tokens: bill.as_ref().and_then(|b| b.tokens),
        });
    }
    if let (Some(context), Some(traces)) = (req.trace.filter(|c| c.sampled), &table.traces) {
        // Moved to the exporter thread as indices and refcounts; encoded there.
        let header = session.req_header();
        let end = SystemTime::now();
        gw.traces.record(
            SpanRecord {
                context,
                trace_state: header.headers.get("tracestate").cloned(),
                start: end.checked_sub(elapsed).unwrap_or(end),
                end,
                table: table.clone(),
                method: header.method.clone(),
                uri: header.uri.clone(),
                host: header.headers.get(http::header::HOST).cloned(),
                client: class.map(|c| c.client_ip),
                route: key.route,
                region: key.region,
                tier: key.tier,
                pool: key.pool,
                model: class.map(|c| c.model.clone()).unwrap_or_default(),
                status,
                reason: decision.map(|d| d.reason.as_str()),
                cache: req.cache.outcome.map(|o| o.as_str()),
                estimate: decision.and_then(|d| d.estimate),
                attempts: attempts.min(255) as u8,
                spend_usd,
                tokens: bill
                    .as_ref()
                    .and_then(|b| b.tokens.filter(|_| b.from_usage)),
                ttft: streamed.as_ref().map(|s| s.ttft),
                error: req.error.clone(),
            },
            traces.max_queue,
        );
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

/// A streamed answer's times, as the client judges them.
struct Streamed {
    /// From the request's arrival to its first event relayed.
    ttft: std::time::Duration,
    /// Mean gap between events after the first (two events or more).
    tpot: Option<std::time::Duration>,
    /// The server's time on the whole stream (sent → last event, less the round trip).
    service: Option<std::time::Duration>,
}

/// Time a streamed answer: its time to first token and per output token into the metrics,
/// and into the pool's estimates the server's time to first token (from the request sent,
/// less the network), its time per token, and the whole stream as a service-time sample
/// (what a request that waits for the last byte takes there).
fn stream_times(
    table: &Serving,
    class: &Class,
    target: (PoolId, u16),
    trail: Option<&crate::upstream::Trail>,
    clock: &super::StreamClock,
    start: std::time::Instant,
    tier: &str,
) -> Option<Streamed> {
    let first = clock.first?;
    let pool = &table.pools[target.0 as usize];
    let state = table.live.pool(target.0);
    let ttft = first.saturating_duration_since(start);
    let tpot = clock.per_token();
    let model = if !pool.models.any || pool.models.names.contains(&class.model) {
        class.model.as_str()
    } else {
        "*"
    };
    metrics::histogram!(t::TTFT, "pool" => pool.name.clone(), "tier" => tier.to_string(), "model" => model.to_string())
        .record(ttft.as_secs_f64());
    if let Some(tpot) = tpot {
        metrics::histogram!(t::TPOT, "pool" => pool.name.clone(), "tier" => tier.to_string(), "model" => model.to_string())
            .record(tpot.as_secs_f64());
        state.stream.observe_tpot(tpot);
    }
    let sent = trail.and_then(|t| t.sent_at);
    let service = sent.map(|sent| {
        let to_first = first.saturating_duration_since(sent);
        let server_ttft = crate::route::network::observe_upstream(table, target, to_first, false);
        state.stream.observe_ttft(server_ttft);
        let last = clock.last.unwrap_or(first);
        crate::route::network::observe_upstream(
            table,
            target,
            last.saturating_duration_since(sent),
            true,
        )
    });
    Some(Streamed {
        ttft,
        tpot,
        service,
    })
}

/// What one request was billed on the pool that answered it (`route::cost`).
struct Billed {
    usage_nusd: u64,
    egress_nusd: u64,
    /// Tokens the answer used (`usage`, or estimated from bytes), on a pool priced per token.
    tokens: Option<(u64, u64)>,
    /// `tokens` came from the answer's `usage` (not estimated).
    from_usage: bool,
}

impl Billed {
    fn usd(&self) -> f64 {
        (self.usage_nusd + self.egress_nusd) as f64 / t::NANO_USD
    }
}

/// Bill a request on pool `p` as the pool's bill will: usage (per request, the tokens the
/// answer used, the GPU-hours of its service time; nothing on a provisioned pool) and the
/// egress of its bytes between the gateway's region and the pool's. Folds the answer's
/// tokens and bytes into the pool's averages, and counts it in the pool's spend.
fn charge(
    table: &Serving,
    (p, class): (PoolId, &Class),
    service: std::time::Duration,
    meter: Option<&mut crate::route::tokens::Meter>,
    answer_bytes: u64,
    tier: &str,
) -> Billed {
    let pool = &table.pools[p as usize];
    let state = table.live.pool(p);
    let tokens = meter.map(|meter| {
        let usage = meter.finish();
        state.tokens.record(usage.input, usage.output);
        let source = usage.source();
        metrics::counter!(t::TOKENS, "pool" => pool.name.clone(), "kind" => "input", "source" => source)
            .increment(usage.input);
        metrics::counter!(t::TOKENS, "pool" => pool.name.clone(), "kind" => "output", "source" => source)
            .increment(usage.output);
        (usage.input, usage.output, source)
    });
    // Without an answer's `usage` (an error, a client gone), the pool's average stands in.
    let expected = match tokens {
        Some((input, output, _)) => (input as f64, output as f64),
        None => state.tokens.get(),
    };
    let usage_nusd = t::nano_usd(cost::usage(&pool.pricing, service, expected));
    if let (Some((_, _, source)), true) = (tokens, pool.pricing.per_token()) {
        metrics::counter!(t::TOKEN_COST, "pool" => pool.name.clone(), "tier" => tier.to_string(), "source" => source)
            .increment(usage_nusd);
    }
    if answer_bytes > 0 {
        state.answer_bytes.record(answer_bytes as f64);
    }
    let here = cost::gateway_region(table, class);
    let (up, down) = (u64::from(class.request_bytes), answer_bytes);
    let egress_nusd = t::nano_usd(cost::egress(
        table,
        here,
        pool.region,
        up as f64,
        down as f64,
    ));
    if here != pool.region {
        metrics::counter!(t::EGRESS_BYTES, "pool" => pool.name.clone(), "direction" => "to_pool")
            .increment(up);
        metrics::counter!(t::EGRESS_BYTES, "pool" => pool.name.clone(), "direction" => "from_pool")
            .increment(down);
        if egress_nusd > 0 {
            metrics::counter!(t::EGRESS_COST, "pool" => pool.name.clone(), "tier" => tier.to_string())
                .increment(egress_nusd);
        }
    }
    state.spend.bill(usage_nusd, egress_nusd);
    Billed {
        usage_nusd,
        egress_nusd,
        tokens: tokens.map(|(i, o, _)| (i, o)),
        from_usage: tokens.is_some_and(|(_, _, source)| source == "usage"),
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
        499 => "499",
        0 => "0",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
