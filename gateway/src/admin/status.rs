//! The status page: `GET /` serves one self-contained HTML page (`status.html`, inline CSS
//! and JS, charts drawn as SVG by the page) that polls `GET /admin/status`, a JSON summary of
//! the gateway for when no Prometheus is around.
//!
//! Live state (endpoint health, in-flight, service-time estimates, policy version, last
//! reload error) is read from the serving snapshot when the page asks; the history (rates,
//! percentiles, the split, spend) from the aggregate the pipeline feeds (`observe::status`).

use super::ControlPlane;
use crate::cache::Cache;
use crate::observe::status::{
    round, Aggregate, AGGREGATE, MAX_POOLS, MAX_TIERS, NANO, SPLIT_CACHE, SPLIT_QUEUE,
};
use crate::serving::state::now_ms;
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

/// The page itself, compiled in: no files to ship, no build step.
const PAGE: &str = include_str!("status.html");

/// `GET /`: the page.
pub fn page() -> Response<Vec<u8>> {
    let body = PAGE.as_bytes().to_vec();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// `GET /admin/status`: live state of the serving policy plus the window.
pub fn status(control: &ControlPlane, cache: Option<&Cache>) -> Value {
    status_of(control, cache, &AGGREGATE, now_ms())
}

/// [`status`] against any aggregate and clock (for tests).
pub fn status_of(
    control: &ControlPlane,
    cache: Option<&Cache>,
    agg: &Aggregate,
    now: u64,
) -> Value {
    let table = control.snapshot.load();
    let w = agg.window(now);
    let per_s = |n: u64| round(n as f64 / w.seconds, 3);
    let per_hour = |nusd: u64| round(nusd as f64 / NANO / w.seconds * 3600.0, 6);

    let pools: Vec<Value> = table
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let state = table.live.pool(i as crate::policy::compile::PoolId);
            let endpoints = table.live.endpoints(i as crate::policy::compile::PoolId);
            let up = endpoints.iter().filter(|e| e.is_up(now)).count();
            let in_flight = state.in_flight();
            let spent = state.spend.totals();
            let capacity_per_hour = crate::route::cost::capacity_per_second(p) * 3600.0;
            let (win_req, win_nusd, total_req, total_nusd) = if i < MAX_POOLS {
                (
                    w.pool_requests[i],
                    w.pool_cost_nusd[i],
                    agg.pool_requests[i].load(Ordering::Relaxed),
                    agg.pool_cost_nusd[i].load(Ordering::Relaxed),
                )
            } else {
                (0, 0, 0, 0)
            };
            json!({
                "name": p.name,
                "kind": p.kind.as_str(),
                "region": table.regions.get(p.region as usize),
                "health": if up == p.endpoints.len() { "up" } else if up == 0 { "down" } else { "degraded" },
                "endpoints_up": up,
                "endpoints_total": p.endpoints.len(),
                "in_flight": in_flight,
                "concurrency": p.concurrency,
                "utilisation": round(in_flight as f64 / p.concurrency.max(1) as f64, 3),
                // In flight over concurrency, averaged over about a minute (`observe::spend`).
                "utilisation_avg": round(spent.utilisation, 3),
                "billing": p.pricing.billing.as_str(),
                "replicas": p.replicas(),
                // `capacity:` pools: the replicas they need, and requests that woke them.
                "desired_replicas": p.capacity.as_ref().and(state.demand.desired()),
                "activations": state.demand.activations(),
                "displaced": state.demand.displaced(),
                "service_time_ms": round(state.service_time().as_secs_f64() * 1e3, 2),
                // Gateway → pool round trip (measured, else the matrix prior), apart from
                // the service time: the estimate adds them, each once.
                "rtt_ms": crate::route::network::pool_rtt_now(p, state, &table).0.map(|d| round(d.as_secs_f64() * 1e3, 2)),
                "baseline_ms": round(p.service_time.as_secs_f64() * 1e3, 2),
                // Streamed answers, once measured: the server's time to first token and per
                // output token (what a stream with a `ttft` objective is routed on).
                "ttft_ms": state.stream.ttft().map(|d| round(d.as_secs_f64() * 1e3, 2)),
                "tpot_ms": state.stream.tpot().map(|d| round(d.as_secs_f64() * 1e3, 2)),
                "samples": state.samples(),
                "rps": per_s(win_req),
                "requests_total": total_req,
                // As the bill shows it: a provisioned pool's replica-hours, idle included, plus
                // what requests were billed (usage and egress) in the window.
                "capacity_usd_per_hour": round(capacity_per_hour, 6),
                "spend_usd_per_hour": round(per_hour(win_nusd) + capacity_per_hour, 6),
                "requests_usd_total": round(total_nusd as f64 / NANO, 6),
                "spend_usd_total": round(spent.capacity_usd + spent.usage_usd + spent.egress_usd, 6),
                "endpoints": p.endpoints.iter().zip(endpoints).map(|(e, s)| json!({
                    "endpoint": e.name,
                    "up": s.is_up(now),
                    "in_flight": s.in_flight(),
                    "latency_ms": round(s.latency().as_secs_f64() * 1e3, 2),
                    "consecutive_failures": s.consecutive_failures(),
                    "server": super::server_load(p, s, now),
                })).collect::<Vec<_>>(),
                "affinity": super::affinity(p),
            })
        })
        .collect();

    let pool_name = |p: usize| -> &str {
        match p {
            SPLIT_CACHE => "cache",
            SPLIT_QUEUE => "queue",
            _ => table
                .pools
                .get(p)
                .map(|p| p.name.as_str())
                .unwrap_or("(none)"),
        }
    };
    let mut win_queued = 0u64;
    let mut split = Vec::new();
    let (mut win_requests, mut win_met) = (0u64, 0u64);
    let tiers: Vec<Value> = table
        .tiers
        .iter()
        .enumerate()
        .take(MAX_TIERS)
        .map(|(t, tier)| {
            let tw = &w.tiers[t];
            win_requests += tw.requests;
            win_met += tw.met;
            win_queued += w.split[t][SPLIT_QUEUE];
            for (p, &n) in w.split[t].iter().enumerate() {
                if n > 0 {
                    split.push(json!({"tier": tier.name, "pool": pool_name(p), "requests": n, "rps": per_s(n)}));
                }
            }
            let deadline_ms = tier.deadline.as_secs_f64() * 1e3;
            json!({
                "name": tier.name,
                "deadline_ms": round(deadline_ms, 3),
                "requests": tw.requests,
                "rps": per_s(tw.requests),
                "errors": tw.errors,
                "p50_ms": tw.quantile_ms(0.50).map(|v| round(v, 2)),
                "p99_ms": tw.quantile_ms(0.99).map(|v| round(v, 2)),
                "slo_attainment": (tw.requests > 0).then(|| round(tw.met as f64 / tw.requests as f64, 4)),
                "requests_total": agg.tier_requests[t].load(Ordering::Relaxed),
                "met_total": agg.tier_met[t].load(Ordering::Relaxed),
            })
        })
        .collect();

    let pool_count = table.pools.len().min(MAX_POOLS);
    let win_nusd: u64 = w.pool_cost_nusd[..pool_count].iter().sum();
    let win_pool_req: u64 = w.pool_requests[..pool_count].iter().sum();
    let capacity_per_hour: f64 = table
        .pools
        .iter()
        .map(|p| crate::route::cost::capacity_per_second(p) * 3600.0)
        .sum();
    let spend_per_hour = round(per_hour(win_nusd) + capacity_per_hour, 6);
    let rps = win_requests as f64 / w.seconds;
    let last_error = control.last_error.lock().ok().and_then(|e| e.clone());
    let loaded_at = table
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "policy": {
            "version": table.version,
            "source": table.source.display().to_string(),
            "loaded_at_unix": loaded_at,
            "last_error": last_error,
            "gateway_region": super::gateway_region(&table),
        },
        "uptime_s": round(now as f64 / 1e3, 1),
        "window_s": round(w.seconds, 1),
        "totals": {
            "requests_total": agg.requests.load(Ordering::Relaxed),
            "rps": per_s(win_requests),
            "proxied_rps": per_s(win_pool_req),
            "slo_attainment": (win_requests > 0).then(|| round(win_met as f64 / win_requests as f64, 4)),
            // Capacity (idle included) plus what requests were billed, per hour; and per 1,000
            // requests answered in the window (null while none was).
            "spend_usd_per_hour": spend_per_hour,
            "capacity_usd_per_hour": round(capacity_per_hour, 6),
            "usd_per_1k_requests": (rps > 0.0).then(|| round(spend_per_hour / (rps * 3600.0) * 1000.0, 6)),
        },
        "pools": pools,
        "tiers": tiers,
        "split": split,
        "what_if": what_if(&table),
        // Null when the gateway runs without a cache or a queue (the page shows "–").
        "cache": cache.map(|c| json!({
            "hit_ratio": (w.cache_lookups > 0).then(|| round(w.cache_hits as f64 / w.cache_lookups as f64, 4)),
            "hits_per_s": per_s(w.cache_hits),
            "lookups_per_s": per_s(w.cache_lookups),
            "saved_usd_per_hour": per_hour(w.cache_saved_nusd),
            "hits_total": agg.cache.hits.load(Ordering::Relaxed),
            "lookups_total": agg.cache.lookups.load(Ordering::Relaxed),
            "saved_usd_total": round(agg.cache.saved_nusd.load(Ordering::Relaxed) as f64 / NANO, 6),
            "entries": c.entries(),
            "bytes": c.bytes(),
            "max_bytes": c.max_bytes(),
        })),
        "queue": table.queue.as_ref().map(|_| {
            let g = crate::queue::gauges();
            let queued = g.queued.load(Ordering::Relaxed);
            let oldest = g.oldest_created_ms.load(Ordering::Relaxed);
            let age_ms = crate::queue::unix_ms().saturating_sub(oldest);
            json!({
                "depth": queued,
                "running": g.running.load(Ordering::Relaxed),
                "oldest_job_s": (oldest > 0 && queued > 0).then(|| round(age_ms as f64 / 1e3, 1)),
                "enqueued_per_s": per_s(win_queued),
            })
        }),
    })
}

/// The status page's pointer to `switchyard simulate`: the command that replays this
/// gateway's recorded traffic (its decision log) through the serving policy and a candidate,
/// or `null` when no decision log is being written.
fn what_if(table: &crate::policy::RoutingTable) -> Value {
    let Some((log, _)) = &table.decision_log else {
        return json!({ "decision_log": null, "command": null });
    };
    let log = log.display().to_string();
    let command = format!(
        "switchyard simulate --trace {} --policy {} --policy CANDIDATE.yaml",
        shell_word(&log),
        shell_word(&table.source.display().to_string()),
    );
    json!({ "decision_log": log, "command": command })
}

/// `s` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
