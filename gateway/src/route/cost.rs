//! What a request costs, as the bill shows it. One set of functions serves the decision (the
//! marginal cost of sending a request to a pool now), the pipeline's record (what an
//! answered request was billed), the spend meter (capacity accrued with time) and the
//! simulator, so the estimate, the metrics and a simulated bill cannot disagree.
//!
//! A pool is billed one of four ways (`policy::compile::pricing`):
//! - **provisioned**: `replicas` × `per_replica_hour`, paid busy or idle. That spend accrues
//!   with time ([`capacity_per_second`]); a request adds nothing to the bill. Its marginal
//!   cost in a decision is what it displaces: nothing while the pool stays under its
//!   `safe_utilisation`, then a share of the slot-time it occupies rising linearly to the
//!   full share at saturation ([`displacement`]).
//! - **per use** and **serverless**: `per_request` + tokens × their prices + `per_gpu_hour`
//!   × service time, for every request ([`usage`]); a serverless pool's estimate adds its
//!   cold start when it has scaled to zero (`route::estimate_at`).
//! - **batch**: `per_gpu_hour` × service time (the same formula).
//!
//! Traffic between the gateway's region and a pool's pays `egress_usd_per_gb` on the
//! request's bytes (to the pool) and the answer's (back) ([`egress`]).

use crate::classify::Class;
use crate::policy::compile::{Billing, Pool, Pricing, RegionId, RoutingTable};
use std::time::Duration;

/// The parts of a request's cost, each counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Terms {
    /// What the pool bills for the request itself (per request, per token, per GPU-hour of
    /// service); 0 on a provisioned pool.
    pub usage_usd: f64,
    /// Cross-region traffic between the gateway and the pool.
    pub egress_usd: f64,
    /// A provisioned pool's capacity the request displaces (decisions only: the bill counts
    /// capacity by the hour, not per request).
    pub capacity_usd: f64,
}

impl Terms {
    pub fn total(&self) -> f64 {
        self.usage_usd + self.egress_usd + self.capacity_usd
    }
}

/// Seconds per hour, as the factor from a per-hour price to a per-nanosecond one.
const NANOS_PER_HOUR: f64 = 3.6e12;

/// The usage price of one request with `service` time and `tokens` (input, output): what a
/// per-use, serverless or batch pool bills for it; nothing on a provisioned pool.
#[inline]
pub fn usage(pricing: &Pricing, service: Duration, tokens: (f64, f64)) -> f64 {
    if !pricing.per_use() {
        return 0.0;
    }
    let mut usd = pricing.per_request
        // Nanoseconds times a constant: `as_secs_f64` and a division by 3600 were two
        // dependent float divisions per pool, the slowest instructions in a decision.
        + pricing.per_gpu_hour * service.as_nanos() as u64 as f64 * (1.0 / NANOS_PER_HOUR);
    if pricing.per_token() {
        usd += tokens.0 * 1e-3 * pricing.per_1k_input_tokens
            + tokens.1 * 1e-3 * pricing.per_1k_output_tokens;
    }
    usd
}

/// The region traffic to pools leaves from: the gateway's, else (an instance that does not
/// know its region sits beside its clients) the client's.
#[inline]
pub fn gateway_region(table: &RoutingTable, class: &Class) -> RegionId {
    table.gateway_region.unwrap_or(class.region)
}

/// Egress of `up` bytes from region `here` to a pool in `there` and `down` bytes back.
#[inline]
pub fn egress(table: &RoutingTable, here: RegionId, there: RegionId, up: f64, down: f64) -> f64 {
    if here == there {
        return 0.0;
    }
    up * table.egress_per_byte(here, there) + down * table.egress_per_byte(there, here)
}

/// A provisioned pool's capacity cost, USD per second (0 for other pools).
pub fn capacity_per_second(pool: &Pool) -> f64 {
    pool.replicas()
        .map_or(0.0, |replicas| capacity_per_second_at(pool, replicas))
}

/// What a provisioned pool would bill per second running `replicas` replicas, busy or idle
/// (0 for other pools): the price of a replica count that changes over time (an autoscaled
/// pool in `simulate --capacity`, a replica count `tune` tries).
pub fn capacity_per_second_at(pool: &Pool, replicas: u32) -> f64 {
    match pool.pricing.billing {
        Billing::Provisioned {
            per_replica_hour, ..
        } => per_replica_hour * f64::from(replicas) / 3600.0,
        _ => 0.0,
    }
}

/// The capacity one more request displaces on a provisioned pool with `in_flight` requests
/// and a `service` time: nothing while the pool, with it, stays within its
/// `safe_utilisation` of `concurrency`; above, the request's fair share of the replicas' cost
/// (the slot-time it holds at the pool's price: `per_replica_hour` × replicas / concurrency ×
/// service) times how far into the unsafe band it goes, 0 → 1 at saturation.
#[inline]
pub fn displacement(pool: &Pool, in_flight: u32, service: Duration) -> f64 {
    let Billing::Provisioned {
        per_replica_hour,
        safe_utilisation,
        ..
    } = pool.pricing.billing
    else {
        return 0.0;
    };
    let concurrency = f64::from(pool.concurrency.max(1));
    let utilisation = (f64::from(in_flight) + 1.0) / concurrency;
    if utilisation <= safe_utilisation {
        return 0.0;
    }
    let replicas = f64::from(pool.replicas().unwrap_or(1));
    let share = per_replica_hour * replicas / concurrency
        * service.as_nanos() as u64 as f64
        * (1.0 / NANOS_PER_HOUR);
    let band = (1.0 - safe_utilisation).max(1e-9);
    share * ((utilisation - safe_utilisation) / band).min(1.0)
}

/// The marginal cost of sending `class` to `pool` now (a decision's estimate): its usage at
/// the pool's expected tokens, the egress of its body and the pool's average answer, and the
/// capacity it displaces.
#[inline]
pub fn marginal(
    pool: &Pool,
    in_flight: u32,
    service: Duration,
    tokens: (f64, f64),
    answer_bytes: f64,
    class: &Class,
    table: &RoutingTable,
) -> Terms {
    let here = gateway_region(table, class);
    Terms {
        usage_usd: usage(&pool.pricing, service, tokens),
        egress_usd: egress(
            table,
            here,
            pool.region,
            f64::from(class.request_bytes),
            answer_bytes,
        ),
        capacity_usd: displacement(pool, in_flight, service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{compile_str, CompileContext};
    use std::path::Path;

    fn table(pools: &str, extra: &str) -> RoutingTable {
        let text = format!(
            r#"
regions:
  default: us
  map: [{{ name: us, continents: [NA] }}, {{ name: eu, continents: [EU] }}]
rtt_ms: {{ us: {{ us: 1, eu: 80 }}, eu: {{ eu: 1 }} }}
tiers:
  standard: {{ deadline: 1s, weight: 0.5, pools: [gpu, edge, batch] }}
pools:
{pools}
routes:
  - {{ name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }}
{extra}
"#
        );
        compile_str(
            &text,
            &CompileContext {
                file: Path::new("cost.yaml"),
                gateway_region: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_provisioned_pool_costs_nothing_more_until_its_safe_utilisation() {
        // 2 replicas × $3.60 per hour, 10 slots: a slot-second costs $0.0002.
        let t = table(
            "  - { name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:1, 127.0.0.1:2], models: [\"*\"], concurrency: 10, service_time: 1s, price: { per_replica_hour: 3.6 } }",
            "",
        );
        let pool = &t.pools[0];
        assert_eq!(
            pool.replicas(),
            Some(2),
            "replicas default to the endpoints"
        );
        assert!((capacity_per_second(pool) - 0.002).abs() < 1e-12);
        // In flight 0..=6: with the request, at most 70 %.
        for in_flight in 0..=6 {
            assert_eq!(displacement(pool, in_flight, MS(1000)), 0.0, "{in_flight}");
        }
        // 8 of 10: a third of the way into the unsafe band; 10 of 10: the full share.
        let share = 3.6 * 2.0 / 10.0 / 3600.0;
        assert!((displacement(pool, 7, MS(1000)) - share / 3.0).abs() < 1e-12);
        assert!((displacement(pool, 9, MS(1000)) - share).abs() < 1e-12);
        assert_eq!(usage(&pool.pricing, MS(1000), (500.0, 200.0)), 0.0);
    }

    #[test]
    fn per_use_pools_bill_requests_tokens_and_service() {
        let t = table(
            "  - { name: api, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: [\"*\"], concurrency: 10, service_time: 1s, price: { per_request: 0.001, per_1k_input_tokens: 0.002, per_1k_output_tokens: 0.01 } }\n  - { name: batch, kind: batch, region: us, endpoints: [127.0.0.1:2], models: [\"*\"], concurrency: 10, service_time: 1s, price: { per_gpu_hour: 3.6 } }",
            "",
        );
        let api = &t.pools[0].pricing;
        assert_eq!(api.billing, Billing::PerUse);
        let usd = usage(api, MS(50), (1000.0, 100.0));
        assert!((usd - (0.001 + 0.002 + 0.001)).abs() < 1e-12, "{usd}");
        let batch = &t.pools[1].pricing;
        assert_eq!(batch.billing, Billing::Batch);
        // 3.6 USD per GPU-hour is 0.001 USD per GPU-second.
        assert!((usage(batch, MS(2000), (0.0, 0.0)) - 0.002).abs() < 1e-12);
    }

    #[test]
    fn egress_is_charged_on_bytes_that_cross_regions_both_ways() {
        let t = table(
            "  - { name: eu, kind: gpu, region: eu, endpoints: [127.0.0.1:1], models: [\"*\"], concurrency: 10, service_time: 1s }",
            "egress_usd_per_gb: { us: { eu: 0.02 }, eu: { us: 0.05 } }",
        );
        let (us, eu) = (
            t.region_by_name("us").unwrap(),
            t.region_by_name("eu").unwrap(),
        );
        // 1 GB up at 0.02, 2 GB down at 0.05.
        let usd = egress(&t, us, eu, 1e9, 2e9);
        assert!((usd - (0.02 + 0.10)).abs() < 1e-12, "{usd}");
        assert_eq!(egress(&t, eu, eu, 1e9, 1e9), 0.0);
    }

    #[test]
    fn billing_is_read_from_the_prices_and_checked() {
        let serverless = table(
            "  - { name: sl, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: [\"*\"], concurrency: 10, service_time: 1s, price: { per_request: 0.001, cold_start: 8s } }",
            "",
        );
        assert_eq!(
            serverless.pools[0].pricing.billing,
            Billing::Serverless {
                cold_start: MS(8000),
                idle_timeout: crate::policy::compile::DEFAULT_IDLE_TIMEOUT
            }
        );
        let bad = |price: &str| {
            let text = format!(
                "regions: {{ default: us, map: [{{ name: us, continents: [NA] }}] }}\nrtt_ms: {{ us: {{ us: 1 }} }}\ntiers:\n  standard: {{ deadline: 1s, pools: [gpu] }}\npools:\n  - {{ name: g, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: [\"*\"], concurrency: 4, service_time: 1s, price: {price} }}\nroutes:\n  - {{ name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }}\n"
            );
            compile_str(
                &text,
                &CompileContext {
                    file: Path::new("bad.yaml"),
                    gateway_region: None,
                },
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert!(bad("{ per_replica_hour: 2, per_request: 0.1 }").contains("per replica-hour"));
        assert!(bad("{ billing: serverless, per_request: 0.1 }").contains("cold_start"));
        assert!(bad("{ per_request: 0.1, replicas: 2 }").contains("provisioned"));
        assert!(bad("{ per_replica_hour: 2, safe_utilisation: 1.5 }").contains("safe_utilisation"));
        assert!(bad("{ billing: batch, cold_start: 1s }").contains("serverless"));
    }
}
