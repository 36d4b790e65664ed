//! Every metric the gateway exports: name, description and labels, in one place, so the
//! dashboards, the README and the code cannot drift apart.
//!
//! Recording goes through the `metrics` facade; [`install`] sets up the Prometheus recorder
//! whose text the admin listener serves at `/metrics`.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Requests answered. Labels: route, tier, region, pool (`none` if not proxied), status.
pub const REQUESTS: &str = "switchyard_requests_total";
/// End-to-end time in the gateway. Labels: route, tier.
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// Time from sending upstream to the response header. Labels: pool.
pub const UPSTREAM_DURATION: &str = "switchyard_upstream_duration_seconds";
/// Estimated spend. Labels: pool, tier.
pub const COST: &str = "switchyard_cost_usd_total";
/// Requests whose end-to-end time exceeded their deadline. Labels: tier.
pub const DEADLINE_MISSES: &str = "switchyard_deadline_misses_total";
/// Routing decisions. Labels: tier, reason.
pub const DECISIONS: &str = "switchyard_decisions_total";
/// Upstream attempts that failed and were retried elsewhere. Labels: pool.
pub const RETRIES: &str = "switchyard_upstream_retries_total";
/// Requests in flight to a pool. Labels: pool.
pub const POOL_IN_FLIGHT: &str = "switchyard_pool_in_flight";
/// Observed service time estimate per pool, seconds. Labels: pool.
pub const POOL_SERVICE_TIME: &str = "switchyard_pool_service_time_seconds";
/// 1 when an endpoint is up, 0 while marked down. Labels: pool, endpoint.
pub const ENDPOINT_UP: &str = "switchyard_endpoint_up";
/// Policy loads. Labels: result (`ok`, `error`).
pub const POLICY_RELOADS: &str = "switchyard_policy_reloads_total";
/// Info metric carrying the serving policy's version. Labels: version.
pub const POLICY_INFO: &str = "switchyard_policy_info";

/// Latency buckets from 1 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder (once per process) and describe every metric.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(REQUESTS, "Requests answered, by route, tier, region, pool and status");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "End-to-end request time in the gateway");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Time to the upstream response header");
    describe_counter!(COST, "Estimated spend in USD, by pool and tier");
    describe_counter!(DEADLINE_MISSES, "Requests that took longer than their deadline");
    describe_counter!(DECISIONS, "Routing decisions, by tier and reason");
    describe_counter!(RETRIES, "Upstream attempts that failed and were retried");
    describe_gauge!(POOL_IN_FLIGHT, "Requests in flight to a pool");
    describe_gauge!(POOL_SERVICE_TIME, Unit::Seconds, "Observed service time estimate of a pool");
    describe_gauge!(ENDPOINT_UP, "1 when an endpoint is up, 0 while it is marked down");
    describe_counter!(POLICY_RELOADS, "Policy loads by result");
    describe_gauge!(POLICY_INFO, "The serving policy's version (value is always 1)");
}
