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
/// Time from sending upstream to the response header (a new connection's set-up not
/// included). Labels: pool.
pub const UPSTREAM_DURATION: &str = "switchyard_upstream_duration_seconds";
/// A streamed answer's time to first token, from the request's arrival to its first event
/// relayed. Labels: pool, tier, model (a model the pool names, else `*`).
pub const TTFT: &str = "switchyard_time_to_first_token_seconds";
/// A streamed answer's mean time per output token (the gap between events after the
/// first). Labels: pool, tier, model.
pub const TPOT: &str = "switchyard_time_per_output_token_seconds";
/// Time to set up a new upstream connection (TCP, and TLS when the pool uses it). Labels:
/// pool.
pub const UPSTREAM_CONNECT: &str = "switchyard_upstream_connect_seconds";
/// Usage spend: what pools billed per use for the requests (per request, per token, per
/// GPU-hour of service; nothing on a provisioned pool, whose bill is
/// [`CAPACITY_COST`]), in nano-USD (10⁻⁹ USD; divide by 1e9 for dollars). Labels: pool, tier.
///
/// Spend is an integer counter in a sub-unit because the `metrics` facade's counters are
/// `u64`; nano rather than micro so that a request of a cheap pool (a few µUSD) does not lose
/// a visible share to rounding. A real counter, so `rate()` and `increase()` handle restarts.
pub const COST: &str = "switchyard_cost_nanousd_total";
/// Capacity spend of provisioned pools, accrued with time whether busy or idle (replicas ×
/// price per replica-hour), in nano-USD. Labels: pool.
pub const CAPACITY_COST: &str = "switchyard_capacity_cost_nanousd_total";
/// Egress spend: request and answer bytes that crossed regions between the gateway and a
/// pool, at `egress_usd_per_gb`, in nano-USD. Labels: pool, tier.
pub const EGRESS_COST: &str = "switchyard_egress_cost_nanousd_total";
/// Bytes that crossed regions between the gateway and a pool. Labels: pool, direction
/// (`to_pool`, `from_pool`).
pub const EGRESS_BYTES: &str = "switchyard_egress_bytes_total";
/// Replicas a provisioned pool pays for. Labels: pool.
pub const POOL_REPLICAS: &str = "switchyard_pool_replicas";
/// Replicas a pool with `capacity:` needs (now and at its forecast horizon, held through
/// its scale-down window, within its bounds). Labels: pool.
pub const POOL_DESIRED_REPLICAS: &str = "switchyard_pool_desired_replicas";
/// Requests per second sent to a pool, across instances. Labels: pool.
pub const POOL_ARRIVAL_RATE: &str = "switchyard_pool_arrival_rate";
/// A pool's forecast arrival rate `scale_up_time` ahead, per second. Labels: pool.
pub const POOL_FORECAST_RATE: &str = "switchyard_pool_forecast_arrival_rate";
/// Requests that found their pool at zero replicas and activated it. Labels: pool.
pub const POOL_ACTIVATIONS: &str = "switchyard_pool_activations_total";
/// Requests sent elsewhere (or queued or shed) because their pool was at zero replicas,
/// where they would have gone warm; each also wakes it. Labels: pool.
pub const POOL_COLD_DISPLACED: &str = "switchyard_pool_cold_displaced_total";
/// 1 while capacity demand is shared through Redis, 0 while it is this instance's estimate.
pub const CAPACITY_SHARED: &str = "switchyard_capacity_shared";
/// KEDA external scaler calls. Labels: method, code (gRPC status).
pub const KEDA_CALLS: &str = "switchyard_keda_calls_total";
/// A pool's utilisation: requests in flight over its `concurrency`, averaged over the last
/// minute. Labels: pool.
pub const POOL_UTILISATION: &str = "switchyard_pool_utilisation";
/// Estimated spend avoided by answering from the prediction cache: what the request would
/// have cost where routing would have sent it, in nano-USD. Labels: tier.
pub const COST_SAVED: &str = "switchyard_cost_saved_nanousd_total";
/// Spend of answers from pools priced per token, in nano-USD (also counted in [`COST`]).
/// Labels: pool, tier, source (`usage`: the answer reported it; `estimated`: from bytes).
pub const TOKEN_COST: &str = "switchyard_token_cost_nanousd_total";
/// Tokens of answers from pools priced per token. Labels: pool, kind (`input`, `output`),
/// source (`usage`, `estimated`).
pub const TOKENS: &str = "switchyard_tokens_total";
/// Upstream TLS handshakes that failed (certificate refused either way). Labels: pool.
pub const UPSTREAM_TLS_FAILURES: &str = "switchyard_upstream_tls_failures_total";
/// Reloads of the TLS listener's certificate. Labels: result (`ok`, `error`).
pub const TLS_CERT_RELOADS: &str = "switchyard_tls_cert_reloads_total";
/// Nano-USD per USD, for the spend counters.
pub const NANO_USD: f64 = 1e9;

/// An estimated spend in USD as the nano-USD the spend counters count (negative → 0).
pub fn nano_usd(usd: f64) -> u64 {
    (usd.max(0.0) * NANO_USD).round() as u64
}
/// Request-body bytes held in memory by all requests in flight (refreshed at scrape); bounded
/// by `limits.max_buffered_bytes`.
pub const BUFFERED_BODY_BYTES: &str = "switchyard_buffered_body_bytes";
/// Access log lines dropped because the writer could not keep up (or could not write).
pub const ACCESS_LOG_DROPPED: &str = "switchyard_access_log_dropped_total";
/// Decision log lines dropped because the writer could not keep up (or could not write).
pub const DECISION_LOG_DROPPED: &str = "switchyard_decision_log_dropped_total";
/// Spans dropped because the exporter's queue was full (`observe.traces.max_queue`).
pub const TRACE_SPANS_DROPPED: &str = "switchyard_trace_spans_dropped_total";
/// Spans the OTLP collector accepted.
pub const TRACE_SPANS_EXPORTED: &str = "switchyard_trace_spans_exported_total";
/// Spans given up after every export attempt failed (collector down, refused, 5xx).
pub const TRACE_SPANS_FAILED: &str = "switchyard_trace_spans_failed_total";
/// Prediction cache lookups. Labels: result (`hit`, `miss`, `bypass`, `coalesced`).
pub const CACHE_LOOKUPS: &str = "switchyard_cache_lookups_total";
/// Entries in the prediction cache (refreshed at scrape).
pub const CACHE_ENTRIES: &str = "switchyard_cache_entries";
/// Weighted size of the prediction cache in bytes (refreshed at scrape).
pub const CACHE_BYTES: &str = "switchyard_cache_bytes";
/// Entries the prediction cache evicted. Labels: cause (`size`, `expired`).
pub const CACHE_EVICTIONS: &str = "switchyard_cache_evictions_total";
/// Requests whose end-to-end time exceeded their deadline. Labels: tier.
pub const DEADLINE_MISSES: &str = "switchyard_deadline_misses_total";
/// Shadow (mirrored) copies by outcome: `sent`, `busy` (over `max_in_flight`, dropped),
/// `budget` (over the day's cap), `unroutable`. Labels: model, version.
pub const SHADOW_REQUESTS: &str = "switchyard_shadow_requests_total";
/// Shadow copies compared with the client's answer: `agree`, `disagree`, `status_differs`,
/// `failed`. Labels: model, version.
pub const SHADOW_COMPARED: &str = "switchyard_shadow_compared_total";
/// A shadow copy's time to its whole answer. Labels: model, version.
pub const SHADOW_DURATION: &str = "switchyard_shadow_duration_seconds";
/// Estimated spend of shadow copies, in nano-USD (not in any tenant's bill nor
/// `switchyard_cost_nanousd_total`). Labels: model, version.
pub const SHADOW_COST: &str = "switchyard_shadow_cost_nanousd_total";
/// Rollout transitions. Labels: model, to (`step`, `paused`, `promoted`, `rolled_back`).
pub const ROLLOUT_TRANSITIONS: &str = "switchyard_rollout_transitions_total";
/// A rollout's canary share of callers now, in percent. Labels: model.
pub const ROLLOUT_CANARY_PERCENT: &str = "switchyard_rollout_canary_percent";
/// Whether the rollouts' state is the fleet's from Redis (1) or this instance's while Redis is
/// away (0); absent with `limits.backend: local`.
pub const ROLLOUT_SHARED: &str = "switchyard_rollout_shared";
/// Rollout syncs and transitions Redis did not answer (in time). Labels: op (sync, transition).
pub const ROLLOUT_REDIS_ERRORS: &str = "switchyard_rollout_redis_errors_total";
/// A rollout's state file could not be written (the transition still applies). Labels: model.
pub const ROLLOUT_STATE_FILE_ERRORS: &str = "switchyard_rollout_state_file_errors_total";
/// Requests steered to a canary whose pools were all down or ejected: each charged to the
/// canary as an error and served by the stable version instead. Labels: model.
pub const ROLLOUT_CANARY_UNSERVABLE: &str = "switchyard_rollout_canary_unservable_total";
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
/// Observed latency estimate per endpoint (what power-of-two-choices compares), seconds.
/// Labels: pool, endpoint.
pub const ENDPOINT_LATENCY: &str = "switchyard_endpoint_latency_seconds";
/// Requests in flight to an endpoint. Labels: pool, endpoint.
pub const ENDPOINT_IN_FLIGHT: &str = "switchyard_endpoint_in_flight";
/// Outlier ejections. Labels: pool, cause (`connect`, `5xx`, `error`: timeout or cut connection).
pub const EJECTIONS: &str = "switchyard_endpoint_ejections_total";
/// Active health checks. Labels: pool, result (`pass`, `fail`).
pub const HEALTH_CHECKS: &str = "switchyard_health_checks_total";
/// Hedged second attempts sent. Labels: pool (of the hedge).
pub const HEDGES: &str = "switchyard_hedges_total";
/// Estimated extra spend of hedged second attempts, in nano-USD. Labels: tier.
pub const HEDGE_COST: &str = "switchyard_hedge_cost_nanousd_total";
/// Retries refused because the retry budget was empty.
pub const RETRY_BUDGET_EXHAUSTED: &str = "switchyard_retry_budget_exhausted_total";
/// Policy loads. Labels: result (`ok`, `error`).
pub const POLICY_RELOADS: &str = "switchyard_policy_reloads_total";
/// Info metric carrying the serving policy's version. Labels: version.
pub const POLICY_INFO: &str = "switchyard_policy_info";
/// Info metric naming the region this instance runs in (`--region`, `SWITCHYARD_REGION` or
/// the policy's `gateway_region`; `unknown` when none). Labels: region.
pub const INSTANCE_INFO: &str = "switchyard_instance_info";
/// Each tier's deadline, seconds, so dashboards can draw latency against it. Labels: tier.
pub const TIER_DEADLINE: &str = "switchyard_tier_deadline_seconds";

/// Unfinished jobs in the queue. Labels: status (`queued`, `running`).
pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
/// Age of the oldest queued job, seconds (0 when none).
pub const QUEUE_OLDEST: &str = "switchyard_queue_oldest_job_seconds";
/// Jobs that reached a final status. Labels: status (`succeeded`, `failed`, `cancelled`).
pub const JOBS: &str = "switchyard_jobs_total";
/// Job dispatch attempts. Labels: pool.
pub const JOB_ATTEMPTS: &str = "switchyard_job_attempts_total";
/// Time of one dispatch attempt, from connecting to the whole response read. Labels: pool.
pub const JOB_DISPATCH: &str = "switchyard_job_dispatch_seconds";
/// Jobs accepted (202). Labels: tier, pool.
pub const JOBS_ENQUEUED: &str = "switchyard_jobs_enqueued_total";
/// Requests refused with 401 under `auth: required`. Labels: reason (`missing_key`,
/// `unknown_key`).
pub const AUTH_FAILURES: &str = "switchyard_auth_failures_total";
/// Requests a tenant's limits stopped or changed. Labels: tenant (`anonymous` for callers
/// without a known key), reason (`rate`, `concurrency`, `budget`, `budget_downgrade`).
pub const TENANT_LIMITED: &str = "switchyard_tenant_limited_total";
/// Estimated spend today (UTC), USD (refreshed at scrape). Labels: tenant.
pub const TENANT_SPEND: &str = "switchyard_tenant_spend_today_usd";
/// `spend_per_day_usd` minus the spend today, USD (refreshed at scrape). Labels: tenant.
pub const TENANT_BUDGET_REMAINING: &str = "switchyard_tenant_budget_remaining_usd";
/// 1 while `limits.backend: redis` is reachable, 0 while limits fall back to local ones.
pub const LIMITS_SHARED: &str = "switchyard_limits_shared";
/// Redis calls of the limits that failed or timed out (each one degrades to local limits).
/// Labels: op (`sync`, `ping`: the sync loop's, which mark Redis away; `refill`: a request's,
/// admitted on local limits alone).
pub const LIMITS_DEGRADED: &str = "switchyard_limits_redis_errors_total";
/// Lease syncs of the shared tenant limits (one Lua script each). Labels: caller
/// (`background`: the sync loop; `request`: a request found its tenant's lease empty), lease
/// (`all` for the loop; for a request the empty one: `first`, `rate`, `tokens`, `slots`).
pub const LIMITS_SYNCS: &str = "switchyard_limits_syncs_total";
/// Scrapes of model servers' own metrics (`server_metrics:`). Labels: pool, result (`ok`,
/// `error`).
pub const SERVER_SCRAPES: &str = "switchyard_server_metrics_scrapes_total";
/// Lookups in the shared L2 prediction cache after an L1 miss. Labels: result (`hit`,
/// `miss`, `error`: Redis failed or was too slow, `skipped`: not asked for a second after an
/// error; either way the request went upstream).
pub const CACHE_L2_LOOKUPS: &str = "switchyard_cache_l2_lookups_total";

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
    describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access log lines dropped because the writer could not keep up"
    );
    describe_counter!(
        DECISION_LOG_DROPPED,
        "Decision log lines dropped because the writer could not keep up or write"
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans dropped because the trace exporter's queue was full (observe.traces.max_queue)"
    );
    describe_counter!(TRACE_SPANS_EXPORTED, "Spans the OTLP collector accepted");
    describe_counter!(
        TRACE_SPANS_FAILED,
        "Spans given up after every OTLP export attempt failed"
    );
    describe_gauge!(
        BUFFERED_BODY_BYTES,
        Unit::Bytes,
        "Request-body bytes held in memory by all requests in flight (limit: limits.max_buffered_bytes)"
    );
    describe_counter!(
        REQUESTS,
        "Requests answered, by route, tier, region, pool and status"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "End-to-end request time in the gateway"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time from sending the request upstream to the response header, connection set-up excluded"
    );
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Streamed answers: time from the request's arrival to the first event relayed"
    );
    describe_histogram!(
        TPOT,
        Unit::Seconds,
        "Streamed answers: mean time per output token (gap between events after the first)"
    );
    describe_histogram!(
        UPSTREAM_CONNECT,
        Unit::Seconds,
        "Time to set up a new upstream connection (TCP and TLS)"
    );
    describe_counter!(
        COST,
        "Usage spend in nano-USD (1e-9 USD): what pools billed per use for the requests, by pool and tier"
    );
    describe_counter!(
        CAPACITY_COST,
        "Capacity spend of provisioned pools in nano-USD, accrued busy or idle, by pool"
    );
    describe_counter!(
        EGRESS_COST,
        "Egress spend in nano-USD of bytes that crossed regions to and from pools, by pool and tier"
    );
    describe_counter!(
        EGRESS_BYTES,
        "Bytes that crossed regions between the gateway and pools, by pool and direction"
    );
    describe_gauge!(
        POOL_REPLICAS,
        "Replicas a provisioned pool pays for, by pool"
    );
    describe_gauge!(
        POOL_DESIRED_REPLICAS,
        "Replicas a pool needs to meet its deadline at its percentile, now and at its forecast horizon, by pool"
    );
    describe_gauge!(
        POOL_ARRIVAL_RATE,
        "Requests per second sent to a pool across instances, by pool"
    );
    describe_gauge!(
        POOL_FORECAST_RATE,
        "Forecast requests per second at the pool's scale_up_time ahead, by pool"
    );
    describe_counter!(
        POOL_ACTIVATIONS,
        "Requests that found their pool at zero replicas and activated it, by pool"
    );
    describe_counter!(
        POOL_COLD_DISPLACED,
        "Requests sent elsewhere because their pool was at zero replicas (each wakes it), by pool"
    );
    describe_gauge!(
        CAPACITY_SHARED,
        "1 while capacity demand is shared through Redis, 0 while it is this instance's estimate"
    );
    describe_counter!(
        KEDA_CALLS,
        "KEDA external scaler calls, by method and gRPC status code"
    );
    describe_gauge!(
        POOL_UTILISATION,
        "Requests in flight over concurrency, averaged over the last minute, by pool"
    );
    describe_counter!(
        TOKEN_COST,
        "Spend in nano-USD of answers from pools priced per token, by pool, tier and source (usage or estimated)"
    );
    describe_counter!(
        TOKENS,
        "Tokens of answers from pools priced per token, by pool, kind (input, output) and source (usage or estimated)"
    );
    describe_counter!(
        UPSTREAM_TLS_FAILURES,
        "Upstream TLS handshakes that failed, by pool"
    );
    describe_counter!(
        TLS_CERT_RELOADS,
        "Reloads of the TLS listener certificate, by result (ok, error)"
    );
    describe_counter!(
        COST_SAVED,
        "Estimated spend in nano-USD (1e-9 USD) avoided by answering from the prediction cache, by tier"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Prediction cache lookups, by result (hit, miss, bypass, coalesced)"
    );
    describe_gauge!(CACHE_ENTRIES, "Entries in the prediction cache");
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Weighted size of the prediction cache (bodies, headers, per-entry overhead)"
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Prediction cache entries evicted, by cause (size, expired)"
    );
    describe_counter!(
        SHADOW_REQUESTS,
        "Shadow copies by outcome (sent, busy, budget, unroutable), by model and version"
    );
    describe_counter!(
        SHADOW_COMPARED,
        "Shadow copies compared with the client's answer (agree, disagree, status_differs, failed), by model and version"
    );
    describe_histogram!(
        SHADOW_DURATION,
        Unit::Seconds,
        "Time of a shadow copy to its whole answer, by model and version"
    );
    describe_counter!(
        SHADOW_COST,
        "Estimated spend in nano-USD of shadow copies (never billed to a tenant), by model and version"
    );
    describe_counter!(
        ROLLOUT_TRANSITIONS,
        "Rollout transitions, by model and to (step, paused, promoted, rolled_back)"
    );
    describe_gauge!(
        ROLLOUT_CANARY_PERCENT,
        "A rollout's canary share of callers now, in percent, by model"
    );
    describe_gauge!(
        ROLLOUT_SHARED,
        "Whether rollout state is shared through Redis (1) or this instance's while Redis is away (0)"
    );
    describe_counter!(
        ROLLOUT_REDIS_ERRORS,
        "Rollout syncs and transitions Redis did not answer, by op (sync, transition)"
    );
    describe_counter!(
        ROLLOUT_STATE_FILE_ERRORS,
        "Rollout state file writes that failed (the transition still applied), by model"
    );
    describe_counter!(
        ROLLOUT_CANARY_UNSERVABLE,
        "Requests steered to a canary with no pool up: charged to it as errors and sent to the stable version, by model"
    );
    describe_counter!(
        DEADLINE_MISSES,
        "Requests that took longer than their deadline"
    );
    describe_counter!(DECISIONS, "Routing decisions, by tier and reason");
    describe_counter!(RETRIES, "Upstream attempts that failed and were retried");
    describe_gauge!(POOL_IN_FLIGHT, "Requests in flight to a pool");
    describe_gauge!(
        POOL_SERVICE_TIME,
        Unit::Seconds,
        "Observed service time estimate of a pool"
    );
    describe_gauge!(
        ENDPOINT_UP,
        "1 when an endpoint is up, 0 while it is marked down"
    );
    describe_gauge!(
        ENDPOINT_LATENCY,
        Unit::Seconds,
        "Latency estimate of an endpoint (what power-of-two-choices compares)"
    );
    describe_gauge!(ENDPOINT_IN_FLIGHT, "Requests in flight to an endpoint");
    describe_counter!(
        EJECTIONS,
        "Outlier ejections of endpoints, by pool and cause"
    );
    describe_counter!(HEALTH_CHECKS, "Active health checks, by pool and result");
    describe_counter!(HEDGES, "Hedged second attempts sent, by pool");
    describe_counter!(
        HEDGE_COST,
        "Estimated extra spend in nano-USD (1e-9 USD) of hedged second attempts, by tier"
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries refused because the retry budget was empty"
    );
    describe_counter!(POLICY_RELOADS, "Policy loads by result");
    describe_gauge!(
        INSTANCE_INFO,
        "The region this gateway instance runs in (value is always 1)"
    );
    describe_gauge!(
        POLICY_INFO,
        "The serving policy's version (value is always 1)"
    );
    describe_gauge!(QUEUE_DEPTH, "Unfinished jobs in the queue, by status");
    describe_gauge!(QUEUE_OLDEST, Unit::Seconds, "Age of the oldest queued job");
    describe_counter!(JOBS, "Jobs that reached a final status, by status");
    describe_counter!(JOB_ATTEMPTS, "Job dispatch attempts, by pool");
    describe_histogram!(
        JOB_DISPATCH,
        Unit::Seconds,
        "Time of one job dispatch attempt, by pool"
    );
    describe_counter!(JOBS_ENQUEUED, "Jobs accepted with 202, by tier and pool");
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused with 401 under auth: required, by reason"
    );
    describe_counter!(
        TENANT_LIMITED,
        "Requests a tenant's limits refused or downgraded, by tenant and reason"
    );
    describe_gauge!(
        TENANT_SPEND,
        "Estimated spend today (UTC) in USD, by tenant"
    );
    describe_gauge!(
        TENANT_BUDGET_REMAINING,
        "Daily budget left today (UTC) in USD, by tenant"
    );
    describe_gauge!(
        LIMITS_SHARED,
        "1 while tenant limits are shared through Redis, 0 while they are local"
    );
    describe_counter!(
        LIMITS_DEGRADED,
        "Redis calls of the tenant limits that failed or timed out, by op"
    );
    describe_counter!(
        SERVER_SCRAPES,
        "Scrapes of model servers' own metrics (server_metrics), by pool and result"
    );
    describe_counter!(
        LIMITS_SYNCS,
        "Lease syncs of the shared tenant limits, by caller (background, request)"
    );
    describe_counter!(
        CACHE_L2_LOOKUPS,
        "Lookups in the shared L2 prediction cache, by result (hit, miss, error, skipped)"
    );
    describe_gauge!(
        TIER_DEADLINE,
        Unit::Seconds,
        "The deadline of each SLO tier in the serving policy"
    );
}

/// The metric handles one request records into, for one combination of labels.
pub struct RequestHandles {
    pub requests: metrics::Counter,
    pub duration: metrics::Histogram,
    pub decisions: metrics::Counter,
    pub deadline_misses: metrics::Counter,
    pub cost: metrics::Counter,
}

/// Labels of a request by index into the routing table that served it (`u16::MAX` = none).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandleKey {
    /// [`crate::policy::RoutingTable::generation`]: indices mean nothing across tables.
    pub table: u64,
    pub route: u16,
    pub tier: u16,
    pub region: u16,
    pub pool: u16,
    pub status: u16,
    pub reason: u8,
}

/// Most cached combinations per thread before the cache is dropped and rebuilt (reloads
/// leave stale keys behind; this bounds them).
const MAX_CACHED: usize = 4096;

/// The handles of one pool's per-attempt metrics (recorded once per upstream answer, before
/// the request's status is known, so not part of [`RequestHandles`]).
pub struct PoolHandles {
    pub upstream_duration: metrics::Histogram,
}

type HandleCache<K, V> = std::cell::RefCell<std::collections::HashMap<K, std::rc::Rc<V>>>;

thread_local! {
    static HANDLES: HandleCache<HandleKey, RequestHandles> = Default::default();
    static POOL_HANDLES: HandleCache<(u64, u16), PoolHandles> = Default::default();
}

/// The handles for `key`, built by `make` (which formats the label strings and registers
/// them) only the first time a thread sees the combination. Registering a labelled metric
/// means allocating its label strings and hashing them into the recorder's registry; doing
/// that once per combination instead of once per request takes it off the hot path.
pub fn request_handles(
    key: HandleKey,
    make: impl FnOnce() -> RequestHandles,
) -> std::rc::Rc<RequestHandles> {
    cached(&HANDLES, key, make)
}

/// The handles of pool `pool` of the table with generation `table` (see [`request_handles`]).
pub fn pool_handles(
    table: u64,
    pool: u16,
    make: impl FnOnce() -> PoolHandles,
) -> std::rc::Rc<PoolHandles> {
    cached(&POOL_HANDLES, (table, pool), make)
}

fn cached<K: std::hash::Hash + Eq, V>(
    cache: &'static std::thread::LocalKey<HandleCache<K, V>>,
    key: K,
    make: impl FnOnce() -> V,
) -> std::rc::Rc<V> {
    cache.with(|cell| {
        let mut map = cell.borrow_mut();
        if let Some(h) = map.get(&key) {
            return h.clone();
        }
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        let h = std::rc::Rc::new(make());
        map.insert(key, h.clone());
        h
    })
}

/// Set [`INSTANCE_INFO`] to `region` (the previous region's series goes to 0, so a reload
/// that moves the instance leaves one series at 1).
pub fn instance_info(region: &str) {
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(old) = last.as_deref().filter(|old| *old != region) {
        metrics::gauge!(INSTANCE_INFO, "region" => old.to_string()).set(0.0);
    }
    metrics::gauge!(INSTANCE_INFO, "region" => region.to_string()).set(1.0);
    *last = Some(region.to_string());
}
