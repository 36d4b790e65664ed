//! Spend as the bill shows it: capacity, usage and egress per pool.
//!
//! Usage and egress are billed per request by the pipeline's record (`route::cost`); this
//! module's [`SpendMeter`] accrues the rest, a provisioned pool's replica-hours, with time,
//! busy or idle, every [`TICK`], and samples each pool's utilisation (in flight over
//! `concurrency`, averaged over about a minute). Both live in the pool's live state
//! (`serving::state::Spend`), kept by pool name across reloads; [`report`] is what
//! `/admin/spend` and the status page show.

use crate::policy::compile::PoolId;
use crate::route::cost;
use crate::serving::state::{now_ms, SpendTotals};
use crate::serving::{Serving, Snapshot};
use crate::telemetry as t;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How often capacity is accrued and utilisation sampled.
pub const TICK: Duration = Duration::from_millis(250);
/// The span the utilisation average covers.
const UTILISATION_SPAN: Duration = Duration::from_secs(60);

/// Background service: accrues provisioned capacity and samples utilisation.
pub struct SpendMeter {
    pub snapshot: Snapshot,
}

#[async_trait]
impl BackgroundService for SpendMeter {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut ticker = crate::serving::ticker::Ticker::new(TICK, shutdown);
        let mut last = Instant::now();
        loop {
            if !ticker.tick().await {
                break;
            }
            let now = Instant::now();
            let elapsed = now.duration_since(last);
            last = now;
            accrue(&self.snapshot.load_full(), elapsed);
        }
    }
}

/// Accrue `elapsed` of every provisioned pool's capacity and sample utilisation.
pub fn accrue(table: &Serving, elapsed: Duration) {
    let alpha = (elapsed.as_secs_f64() / UTILISATION_SPAN.as_secs_f64()).min(1.0);
    for (i, pool) in table.pools.iter().enumerate() {
        let state = table.live.pool(i as PoolId);
        let usd = cost::capacity_per_second(pool) * elapsed.as_secs_f64();
        if usd > 0.0 {
            let nusd = t::nano_usd(usd);
            state.spend.accrue(nusd);
            metrics::counter!(t::CAPACITY_COST, "pool" => pool.name.clone()).increment(nusd);
        }
        let utilisation = f64::from(state.in_flight()) / f64::from(pool.concurrency.max(1));
        state.spend.sample_utilisation(utilisation, alpha);
        metrics::gauge!(t::POOL_UTILISATION, "pool" => pool.name.clone())
            .set(state.spend.totals().utilisation);
        if let Some(replicas) = pool.replicas() {
            metrics::gauge!(t::POOL_REPLICAS, "pool" => pool.name.clone()).set(f64::from(replicas));
        }
    }
}

/// Spend since start per pool and in all, and the cost per 1,000 requests with idle
/// capacity included: what `/admin/spend` answers.
pub fn report(table: &Serving) -> Value {
    let mut all = SpendTotals::default();
    let pools: Vec<Value> = table
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let s = table.live.pool(i as PoolId).spend.totals();
            all.capacity_usd += s.capacity_usd;
            all.usage_usd += s.usage_usd;
            all.egress_usd += s.egress_usd;
            all.requests += s.requests;
            json!({
                "pool": pool.name,
                "billing": pool.pricing.billing.as_str(),
                "replicas": pool.replicas(),
                "capacity_usd_per_hour": round(cost::capacity_per_second(pool) * 3600.0),
                "capacity_usd": round(s.capacity_usd),
                "usage_usd": round(s.usage_usd),
                "egress_usd": round(s.egress_usd),
                "total_usd": round(s.capacity_usd + s.usage_usd + s.egress_usd),
                "requests": s.requests,
                "utilisation": (s.utilisation * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    let total = all.capacity_usd + all.usage_usd + all.egress_usd;
    // Usage and egress by the tier of the requests billed (capacity belongs to no tier).
    let agg = &crate::observe::status::AGGREGATE;
    let tiers: Vec<Value> = table
        .tiers
        .iter()
        .zip(&agg.tier_cost_nusd)
        .map(|(tier, nusd)| {
            json!({
                "tier": tier.name,
                "requests_usd": round(nusd.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9),
            })
        })
        .collect();
    json!({
        "at_ms": now_ms(),
        "pools": pools,
        "tiers": tiers,
        "total": {
            "capacity_usd": round(all.capacity_usd),
            "usage_usd": round(all.usage_usd),
            "egress_usd": round(all.egress_usd),
            "total_usd": round(total),
            "requests": all.requests,
            "usd_per_1k_requests": (all.requests > 0).then(|| round(total * 1000.0 / all.requests as f64)),
        },
    })
}

fn round(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}
