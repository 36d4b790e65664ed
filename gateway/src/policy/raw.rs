//! The policy exactly as the operator writes it in YAML.
//!
//! These types mirror the file one to one: serde derives, unknown fields denied, defaults
//! documented on the field. Nothing here is resolved or checked beyond its YAML shape; the
//! semantic checks and the runtime form live in `compile.rs`. Fields that other fields refer
//! to (names) and fields that refer to them are [`Spanned`] so that a semantic error can
//! still point at the line and column the operator has to fix.

#[cfg(feature = "schema")]
use super::schema;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// A Switchyard routing policy: the whole file (see `policies/default.yaml`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Listener addresses. Default: proxy on 0.0.0.0:8080, admin on 127.0.0.1:9090.
    #[serde(default)]
    pub listeners: Listeners,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs). Default: none.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Where the MaxMind (MMDB) country database is.
    #[serde(default)]
    pub geoip: GeoIp,
    /// Region names and which countries / continents belong to each.
    pub regions: Regions,
    /// The region this gateway instance runs in, unless `--region` or `SWITCHYARD_REGION`
    /// name one at start-up (one policy file serves instances in several regions). Absent
    /// everywhere: the gateway is taken to sit beside its clients. Default: none.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub gateway_region: Option<Spanned<String>>,
    /// USD per GB of traffic between regions, `egress_usd_per_gb[from][to]`, charged on the
    /// request and answer bytes that cross regions between the gateway and a pool. A pair
    /// given one way is taken for both; a pair not given, and a region to itself, cost 0.
    /// Default: none.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "BTreeMap<String, BTreeMap<String, f64>>")
    )]
    pub egress_usd_per_gb: BTreeMap<String, BTreeMap<String, Spanned<f64>>>,
    /// Round-trip time in milliseconds between regions: `rtt_ms[from][to]`. Each unordered
    /// pair must be given at least once; the matrix is taken as symmetric.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "BTreeMap<String, BTreeMap<String, schema::Millis>>")
    )]
    pub rtt_ms: BTreeMap<String, BTreeMap<String, Spanned<f64>>>,
    /// SLO tiers by name.
    #[cfg_attr(feature = "schema", schemars(with = "BTreeMap<String, Tier>"))]
    pub tiers: BTreeMap<String, Spanned<Tier>>,
    /// API keys (as SHA-256 hex only) and the tier each tenant gets.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<Tenant>"))]
    pub tenants: Vec<Spanned<Tenant>>,
    /// `optional` (default): a request without a known tenant key is served as anonymous;
    /// `required`: it gets 401 `authentication_error`.
    #[serde(default)]
    pub auth: AuthMode,
    /// The backend pools.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<Pool>"))]
    pub pools: Vec<Spanned<Pool>>,
    /// Request routes, matched in order: the first whose `match` fits the path wins.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<Route>"))]
    pub routes: Vec<Spanned<Route>>,
    /// Upstream behaviour shared by all pools.
    #[serde(default)]
    pub upstream: Upstream,
    /// The batch queue (asynchronous jobs). Absent: no queue; requests routed to batch pools
    /// are proxied synchronously like any other.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Queue>"))]
    pub queue: Option<Spanned<Queue>>,
    /// The prediction cache's size limits. Absent: the defaults below. Whether a route caches
    /// at all is the route's `cache:` block.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<CacheSection>"))]
    pub cache: Option<Spanned<CacheSection>>,
    /// Logs. Absent: the access log goes to stderr as text.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Observe>"))]
    pub observe: Option<Spanned<Observe>>,
    /// Gateway-wide limits. Absent: the defaults below.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Limits>"))]
    pub limits: Option<Spanned<Limits>>,
    /// Per model: the version being served. Part of every cache key for the model, so
    /// bumping it makes the old answers unreachable. Optional.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "BTreeMap<String, ModelDef>"))]
    pub models: BTreeMap<String, Spanned<ModelDef>>,
}

/// The `cache:` section. `max_bytes` and `idle` take effect at start-up (a reload that
/// changes them reports that a restart is needed); `max_entry_bytes` on reload.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Memory bound of the whole cache (bodies, headers, per-entry overhead), e.g. `256MiB`.
    /// Default `64MiB`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_bytes: Option<Spanned<String>>,
    /// Largest response body stored; larger ones are served but not stored. Default `1MiB`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_entry_bytes: Option<Spanned<String>>,
    /// Drop entries not read for this long, e.g. `2m`. Default: none (TTL only).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub idle: Option<Spanned<String>>,
    /// A second level shared by every instance (Redis): an L1 miss looks there before going
    /// upstream. Absent: none. Takes a restart.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<SharedCache>"))]
    pub shared: Option<Spanned<SharedCache>>,
}

/// `cache.shared`: the L2 prediction cache.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SharedCache {
    /// Only `redis`.
    pub backend: SharedCacheBackend,
    /// e.g. `redis://127.0.0.1:6379/0`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub redis_url: Spanned<String>,
    /// Prefix of every Redis key. Default `switchyard`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub redis_prefix: Option<Spanned<String>>,
    /// Largest body stored in Redis. Default `256KiB`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_entry_bytes: Option<Spanned<String>>,
    /// Longest wait for Redis on a lookup; beyond it the request goes upstream. Default `5ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SharedCacheBackend {
    Redis,
}

/// A route's `cache:` block: present means the route's deterministic answers are cached.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// How long an answer is kept, e.g. `10m` (an upstream `max-age` may shorten it).
    /// Default `5m`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub ttl: Option<Spanned<String>>,
    /// `tenant` (default): entries are per tenant (per API key when the key is unknown);
    /// `shared`: every caller shares them (public models only).
    #[serde(default)]
    pub scope: CacheScope,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    #[default]
    Tenant,
    Shared,
}

/// The `observe:` section (the logs are opened at start-up: changing them takes a restart;
/// `decision_headers` and `traces` apply on reload).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Observe {
    /// Where the access log goes: `stderr` (default), `stdout`, `off`, or a file path
    /// (relative to the policy file; appended to). Written off the request path; lines are
    /// dropped and counted, never waited for, when the destination cannot keep up.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub access_log: Option<Spanned<String>>,
    /// `text` (default: `key=value` pairs) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub access_log_format: Option<LogFormat>,
    /// Which decision headers answers carry: `all` (default), `no-endpoint` (all but
    /// `x-switchyard-endpoint`, an internal address) or `off`. Applies on reload.
    #[serde(default)]
    pub decision_headers: Option<DecisionHeaders>,
    /// The decision log: one JSON line per request (format version 1, README "The decision
    /// log") to this file, relative to the policy file; the trace `switchyard simulate`
    /// replays. Absent: off. Written off the request path.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub decision_log: Option<Spanned<String>>,
    /// Rotate the decision log at this size (e.g. `64MiB`, the default); the previous file is
    /// kept as `PATH.1`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub decision_log_max: Option<Spanned<String>>,
    /// OpenTelemetry traces: one span per request, exported by OTLP/HTTP (protobuf) off the
    /// request path (README "Traces"). Absent: off. Applies on reload.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Traces>"))]
    pub traces: Option<Spanned<Traces>>,
}

/// `observe.traces`: where spans go, which requests are sampled, and the exporter's limits.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Traces {
    /// The OTLP/HTTP collector, `http://host:port` (spans are POSTed to `/v1/traces` under
    /// it) or a full URL with its path. Plain HTTP only.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub otlp_endpoint: Spanned<String>,
    /// Share of new traces recorded, 0 to 1 (default 1). A request that arrives with a W3C
    /// `traceparent` follows its caller's sampled flag instead (parent-based).
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// `service.name` of the exported resource. Default `switchyard`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Spans per export request at most. Default 512.
    #[serde(default)]
    pub batch_max: Option<u32>,
    /// How often waiting spans are exported (e.g. `1s`, the default).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub batch_every: Option<Spanned<String>>,
    /// Spans waiting for the exporter at most; beyond it they are dropped and counted
    /// (`switchyard_trace_spans_dropped_total`). Default 4096.
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// Attempts per export request (connection errors, 429 and 5xx are retried with
    /// back-off); a batch that fails them all is dropped and counted. Default 3.
    #[serde(default)]
    pub max_attempts: Option<u8>,
}

/// The `limits:` section.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Request-body bytes the gateway holds in memory at once, over all requests in flight
    /// (bodies are read whole before routing, so a failover can re-send them). A request
    /// whose body would go beyond it gets 503 `overloaded` with `Retry-After`; bodies up to
    /// 64KiB are always admitted. Default `512MiB`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_buffered_bytes: Option<Spanned<String>>,
    /// Where tenant limits (rate, concurrency, daily spend) are kept: `local` (default, per
    /// instance) or `redis` (shared by every instance using the same Redis). Takes a restart.
    #[serde(default)]
    pub backend: LimitsBackend,
    /// Redis URL for `backend: redis`, e.g. `redis://127.0.0.1:6379/0`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub redis_url: Option<Spanned<String>>,
    /// Prefix of every Redis key. Default `switchyard`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub redis_prefix: Option<Spanned<String>>,
    /// Longest wait for Redis on a request; beyond it the request is admitted on local
    /// limits. Default `20ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub redis_timeout: Option<Spanned<String>>,
    /// How many gateway instances share the limits: while Redis is unreachable each one
    /// enforces a 1/N share of every limit. Absent: each enforces the full limit.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub instances: Option<Spanned<u32>>,
    /// The limits of anonymous callers (no known tenant key, `auth: optional`), all of them
    /// together. Absent: unlimited.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<TenantLimits>"))]
    pub anonymous: Option<Spanned<TenantLimits>>,
}

/// `auth:`: whether a request must carry a known tenant key.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    #[default]
    Local,
    Redis,
}

/// A tenant's `limits:` block (and `limits.anonymous`). Every field is optional: absent
/// means no limit of that kind.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Sustained requests per second.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(max = 1_000_000), extend("exclusiveMinimum" = 0)))]
    pub requests_per_second: Option<Spanned<f64>>,
    /// Requests allowed at once above the sustained rate. Default: one second's worth
    /// (`requests_per_second`, at least 1).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub burst: Option<Spanned<u32>>,
    /// Requests in flight at once.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub max_concurrency: Option<Spanned<u32>>,
    /// Tokens per minute, input + output (the answer's `usage`; estimated from the request's
    /// bytes until the answer tells). Up to one minute's worth may be used at once.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u64>", range(min = 1)))]
    pub tokens_per_minute: Option<Spanned<u64>>,
    /// Estimated spend per UTC day, in USD (cache hits are free).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(min = 0)))]
    pub spend_per_day_usd: Option<Spanned<f64>>,
    /// Over the day's spend: `reject` (default, 429 `budget_exceeded`) or
    /// `{ downgrade: TIER }` (served under that tier, e.g. `batch`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<OnBudget>"))]
    pub on_budget: Option<Spanned<OnBudget>>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnBudget {
    /// Refuse with 429 `budget_exceeded` (the default).
    Reject,
    /// Serve the tenant under this tier (e.g. `batch`); answers carry
    /// `x-switchyard-budget: downgraded`.
    Downgrade(String),
}

/// An entry of the `models:` map: the model's served version (part of its cache keys), or
/// the versions served side by side with their weights (a canary split). Exactly one of
/// `version` and `versions`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    /// The version being served, e.g. `2024-06-01` or `"3"`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub version: Option<Spanned<String>>,
    /// Versions served at once: each request is given one by weight, the same one for the
    /// same sticky key, and goes only to that version's pools. Answers carry
    /// `x-switchyard-version`; the version is part of the cache key.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<ModelVersion>"))]
    pub versions: Vec<Spanned<ModelVersion>>,
    /// What keeps a caller on one version: `tenant` (default: the tenant, else the API key,
    /// else the client address), `user` (the OpenAI body's `user` field, else as `tenant`)
    /// or `header:NAME` (that header's value, else as `tenant`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub sticky: Option<Spanned<String>>,
    /// Mirror a share of the model's requests to one of its versions (usually one of weight
    /// 0): the client never waits for it nor sees its answer. Absent: no shadow.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Shadow>"))]
    pub shadow: Option<Spanned<Shadow>>,
    /// Progressive delivery of one version of two: its share goes up by `steps`, each step
    /// ended by a sequential test against the other (stable) version, the canary rolled back
    /// when it is worse. Absent: the weights as written.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Rollout>"))]
    pub rollout: Option<Spanned<Rollout>>,
}

/// `models.NAME.rollout`: progressive delivery of a canary version.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The version rolled out; the model's other version is the stable one.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub canary: Spanned<String>,
    /// The canary's share of callers at each step, in percent, rising; the last is 100.
    /// Default `[5, 25, 50, 100]`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<f64>"))]
    pub steps: Vec<Spanned<f64>>,
    /// Canary requests a step serves before it may end either way. Default 200.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub min_requests: Option<Spanned<u32>>,
    /// Error rate (5xx) above the stable version's that the test rejects, in absolute
    /// terms (0.02: two points). Default 0.02.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 1))
    )]
    pub max_error_increase: Option<Spanned<f64>>,
    /// The same for the SLO-miss rate (answers later than their objective). Default 0.05.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 1))
    )]
    pub max_slo_miss_increase: Option<Spanned<f64>>,
    /// Mean cost per request above the stable version's, as a fraction (0.2: 20 % more),
    /// that rolls the canary back at the end of a step. Default 0.2.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(min = 0)))]
    pub max_cost_increase: Option<Spanned<f64>>,
    /// Where the rollout's step and state are kept across restarts (JSON), relative to the
    /// policy file. Default: `switchyard-rollout-NAME.json` beside the policy.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub state_file: Option<Spanned<String>>,
}

/// `models.NAME.shadow`: mirrored (shadow) traffic to a version.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// The version (of `versions`) the copies go to.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub version: Spanned<String>,
    /// Share of the model's requests mirrored, 0–100. Default 100.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 100))
    )]
    pub percent: Option<Spanned<f64>>,
    /// Mirror only these tenants' requests. Default: every caller's.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    pub tenants: Vec<Spanned<String>>,
    /// Copies in flight at once; beyond it a copy is dropped (counted), never queued.
    /// Default 16.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub max_in_flight: Option<Spanned<u32>>,
    /// Estimated spend on copies per UTC day, in USD; beyond it copies stop until the next
    /// day. Default: no cap.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(min = 0)))]
    pub budget_per_day_usd: Option<Spanned<f64>>,
    /// How a copy's answer is compared with the client's: `status` (default: the status
    /// only), `exact` (the body byte for byte, for deterministic predictions) or
    /// `label:/json/pointer` (the value at that JSON pointer, e.g. a classifier's label).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub compare: Option<Spanned<String>>,
    /// Longest wait for a copy's answer. Default `10s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub timeout: Option<Spanned<String>>,
}

/// One version of a split model (`models.NAME.versions[]`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelVersion {
    /// The version's name, e.g. `v2`: in `x-switchyard-version` and the cache key. A
    /// request whose path names this version (OIP v2, TF-Serving) gets it, whatever the
    /// weights.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub name: Spanned<String>,
    /// Share of callers, relative to the other versions' weights (e.g. 90 and 10). 0: only
    /// requests that name the version get it.
    #[cfg_attr(feature = "schema", schemars(with = "u32"))]
    pub weight: Spanned<u32>,
    /// The pools that serve this version (and only they get its requests).
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    pub pools: Vec<Spanned<String>>,
    /// The model name the backend knows this version by: replaces the body's `model`
    /// (OpenAI) or the path's model (OIP v2, TF-Serving). Default: the model as asked.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub upstream_model: Option<Spanned<String>>,
    /// The version segment sent upstream (`/versions/{v}` of OIP v2 and TF-Serving paths).
    /// Default: the client's, if any.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub upstream_version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// The proxy listener (HTTP/1.1 and h2c). Default `0.0.0.0:8080`.
    #[serde(default = "default_proxy_listener")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub proxy: Spanned<String>,
    /// The admin listener (metrics, health, explain). Default `127.0.0.1:9090`.
    #[serde(default = "default_admin_listener")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub admin: Spanned<String>,
    /// Worker threads for the proxy. Default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// On `SIGTERM`: stop accepting, then let requests in flight finish for this long
    /// before exiting (whole seconds, rounded up). Default `5s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub shutdown_grace: Option<Spanned<String>>,
    /// Bearer token every admin endpoint but `/healthz`, `/readyz`, `/metrics` (and the
    /// static status page) requires: `${NAME}` or `${NAME:-default}`, expanded from the
    /// environment at load (an unset variable is a load error).
    /// Required when `admin` is not on loopback. Default: none.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub admin_token: Option<Spanned<String>>,
    /// A TLS listener (HTTP/1.1 and HTTP/2 by ALPN, TLS 1.2 and 1.3). With `tls` set and
    /// `proxy` not written, there is no plain listener. Absent: none.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<TlsListener>"))]
    pub tls: Option<Spanned<TlsListener>>,
    /// The KEDA external scaler (gRPC `externalscaler.ExternalScaler`, h2c), e.g.
    /// `127.0.0.1:9091`: each pool's desired replicas (`capacity:`) for a ScaledObject of
    /// `type: external` with metadata `pool: <name>`. Absent: off.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub keda: Option<Spanned<String>>,
}

/// `listeners.tls`: where to listen and the certificate to serve. The files are read again
/// when they change; a pair that does not load is refused and the old one keeps serving.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub listen: Spanned<String>,
    /// PEM certificate chain (leaf first), relative to the policy file.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), relative to the policy file.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub key: Spanned<String>,
}

fn default_true() -> bool {
    true
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            proxy: default_proxy_listener(),
            admin: default_admin_listener(),
            threads: None,
            shutdown_grace: None,
            admin_token: None,
            tls: None,
            keda: None,
        }
    }
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

fn default_proxy_listener() -> Spanned<String> {
    unspanned("0.0.0.0:8080".to_string())
}

fn default_admin_listener() -> Spanned<String> {
    unspanned("127.0.0.1:9090".to_string())
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GeoIp {
    /// Path to an MMDB country database, relative to the policy file. `embedded` (the
    /// default) uses the small test database compiled into the binary.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub database: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Regions {
    /// The region of clients whose address is private, unknown or unmapped.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub default: Spanned<String>,
    /// Region definitions. A country match wins over a continent match.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<RegionDef>"))]
    pub map: Vec<Spanned<RegionDef>>,
}

/// A region: the countries and continents whose clients belong to it.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionDef {
    /// Region name, as pools, `rtt_ms` and `residency` name it.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub name: Spanned<String>,
    /// ISO 3166-1 alpha-2 country codes, e.g. `DE`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<schema::AreaCode>"))]
    pub countries: Vec<Spanned<String>>,
    /// Continent codes as in GeoIP: AF, AN, AS, EU, NA, OC, SA.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<schema::AreaCode>"))]
    pub continents: Vec<Spanned<String>>,
    /// Data residency: the regions whose pools may serve this region's clients, e.g. `[eu]`.
    /// Default (absent): any region. A request no allowed pool can take is refused (503),
    /// never sent elsewhere.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Vec<String>>"))]
    pub residency: Option<Vec<Spanned<String>>>,
}

/// An SLO tier: a latency objective and the pool kinds that may serve it.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// End-to-end latency objective, e.g. `150ms`, `2s`, `1h`.
    #[cfg_attr(feature = "schema", schemars(with = "schema::Duration"))]
    pub deadline: Spanned<String>,
    /// 0.0 = cost only … 1.0 = latency only, among candidates that meet the deadline.
    #[serde(default = "default_weight")]
    #[cfg_attr(feature = "schema", schemars(with = "f64", range(min = 0, max = 1)))]
    pub weight: Spanned<f64>,
    /// Pool kinds this tier may use (`edge`, `gpu`, `batch`).
    #[cfg_attr(feature = "schema", schemars(with = "Vec<PoolKind>"))]
    pub pools: Vec<Spanned<PoolKind>>,
    /// What to do when no candidate is estimated to meet the deadline.
    #[serde(default)]
    pub on_slo_miss: OnSloMiss,
    /// How long to wait for an upstream answer before 504. Default: the larger of 4×
    /// deadline and 5s, at most 10m.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub timeout: Option<Spanned<String>>,
    /// Hedged requests: when the first attempt has not answered after this many times its
    /// pool's service-time estimate (a peak EWMA: roughly a high percentile), a second
    /// attempt goes to the next-best candidate and the first answer wins. 1.0–100.
    /// Absent: no hedging. Only for non-streaming requests whose body is read.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 1, max = 100))
    )]
    pub hedge_after: Option<Spanned<f64>>,
    /// Streamed requests (`"stream": true`) are judged on their time to first token instead
    /// of the deadline: the decision picks a pool estimated to send the first token within
    /// it, and attainment counts it. A client's `x-slo-ttft-ms` may tighten it. Absent:
    /// streams are judged on the deadline, like every other request.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub ttft: Option<Spanned<String>>,
    /// With `ttft`: the time per output token a stream must keep (mean gap between streamed
    /// events after the first), e.g. `50ms`; a pool measured slower is not a candidate for
    /// such a stream. `x-slo-tpot-ms` may tighten it.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub tpot: Option<Spanned<String>>,
}

fn default_weight() -> Spanned<f64> {
    unspanned(0.5)
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnSloMiss {
    /// Send it to the candidate with the lowest latency estimate anyway.
    #[default]
    Fastest,
    /// Refuse with 503 and `Retry-After`.
    Shed,
    /// Accept it as an asynchronous job (`202` + job id) for the cheapest candidate pool;
    /// needs a `queue:` section.
    Queue,
}

/// A pool kind; tiers choose pools by kind.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Edge,
    Gpu,
    Batch,
}

/// A tenant: an API key (as SHA-256 only) and the tier its requests get.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Tenant name.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub name: Spanned<String>,
    /// SHA-256 of the API key, lower-case hex. Keys themselves never appear in a policy.
    #[cfg_attr(feature = "schema", schemars(with = "schema::Sha256Hex"))]
    pub key_sha256: Spanned<String>,
    /// The tier this tenant's requests get.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub tier: Spanned<String>,
    /// Rate, concurrency and daily spend limits. Absent: unlimited.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<TenantLimits>"))]
    pub limits: Option<Spanned<TenantLimits>>,
}

/// A backend pool: endpoints in one region serving some models, at a price.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Pool name; live estimates carry over a reload by this name.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub name: Spanned<String>,
    /// The pool's kind; tiers choose pools by kind.
    pub kind: PoolKind,
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    /// The region the pool is in (one of `regions.map`).
    pub region: Spanned<String>,
    /// Each endpoint: `host:port` (plain HTTP/1.1 only), `https://host[:port]` (HTTPS, port 443
    /// by default; SNI and certificate checks use the host), or
    /// `{ http: host:port, grpc: host:port }` when the server also speaks gRPC (h2c) on its
    /// own port.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<EndpointEntry>"))]
    pub endpoints: Vec<Spanned<EndpointEntry>>,
    /// Model names served; `*` serves every model.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    pub models: Vec<Spanned<String>>,
    /// Requests in flight the whole pool is sized for.
    #[cfg_attr(feature = "schema", schemars(with = "u32", range(min = 1)))]
    pub concurrency: Spanned<u32>,
    /// Expected service time before any is measured, e.g. `40ms`.
    #[cfg_attr(feature = "schema", schemars(with = "schema::Duration"))]
    pub service_time: Spanned<String>,
    /// What the pool costs. Default: nothing.
    #[serde(default)]
    pub price: Price,
    /// Active health checks of every endpoint. Absent: none (passive ejection only).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<HealthCheck>"))]
    pub health: Option<Spanned<HealthCheck>>,
    /// Scrape each endpoint's own load (Prometheus text at `path`): the model server's queue
    /// replaces this gateway's in-flight count in the estimate, so instances sharing a pool
    /// see the same load. Absent: in-flight counting only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<ServerMetrics>"))]
    pub server_metrics: Option<Spanned<ServerMetrics>>,
    /// Prefix and session affinity: requests that share a conversation go to the endpoint
    /// that served it, so the server's KV cache is reused, within a load bound. Absent: off.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Affinity>"))]
    pub affinity: Option<Spanned<Affinity>>,
    /// Upstream request headers set (or replaced) on every request to this pool, e.g.
    /// `authorization: "Bearer ${OPENAI_API_KEY}"`. `${NAME}` / `${NAME:-default}` are
    /// expanded from the gateway's environment at load (an unset variable is a load error);
    /// values are never shown (`***`). A pool that sets a credential here (`authorization`,
    /// `api-key`, `x-api-key`, or any value from `${…}`) never gets the client's own.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "BTreeMap<String, String>"))]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// `Host` (HTTP/1.1) / `:authority` (HTTP/2) of upstream requests. Default: the
    /// endpoint's host for `https://` endpoints, the client's otherwise.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub host: Option<Spanned<String>>,
    /// Prepended to the upstream path, e.g. `/openai/deployments/gpt4o` (starts with `/`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::PathPrefix>"))]
    pub path_prefix: Option<Spanned<String>>,
    /// TLS to `https://` endpoints. Absent: the system's roots, no client certificate.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<PoolTls>"))]
    pub tls: Option<Spanned<PoolTls>>,
    /// The replicas the pool needs, computed from its demand and told to autoscalers
    /// (`/admin/capacity`, metrics, the KEDA scaler). Absent: not computed.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Capacity>"))]
    pub capacity: Option<Spanned<Capacity>>,
}

/// A pool's `capacity:` block: how its desired replicas are computed (an M/M/c queue per
/// replica slot, for the rate now and the rate forecast `scale_up_time` ahead).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// The fewest replicas asked for; 0 lets the pool scale to zero when idle. Default 1.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>"))]
    pub min_replicas: Option<Spanned<u32>>,
    /// The most replicas asked for. Default 10.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub max_replicas: Option<Spanned<u32>>,
    /// Requests one replica serves at once. Default: the pool's `concurrency` over its
    /// replicas (`price.replicas`, else its endpoints), rounded up.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub concurrency_per_replica: Option<Spanned<u32>>,
    /// How long a new replica takes to serve: replicas are asked for the rate forecast this
    /// far ahead. Default `60s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub scale_up_time: Option<Spanned<String>>,
    /// Replicas are given back only when no computation in this window asked for more
    /// (scale-down stabilisation). Default `5m`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub scale_down_window: Option<Spanned<String>>,
    /// The share of requests that must meet the deadline. Default 0.99.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0.5, max = 0.99999))
    )]
    pub percentile: Option<Spanned<f64>>,
    /// The deadline the pool is sized for. Default: the shortest deadline of the tiers
    /// allowed on the pool's kind.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub deadline: Option<Spanned<String>>,
}

/// A pool's `tls:` block (for its `https://` endpoints).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolTls {
    /// PEM file of the CA certificates to trust instead of the system's, relative to the
    /// policy file.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub ca: Option<Spanned<String>>,
    /// PEM client certificate chain for mTLS (with `client_key`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub client_cert: Option<Spanned<String>>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub client_key: Option<Spanned<String>>,
    /// Verify the endpoint's certificate and host name. Default true; false is accepted
    /// with a `check` warning (anyone on the path can read and change the traffic).
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// One endpoint as written: a plain `host:port` string (HTTP only), or a map naming the
/// HTTP address and, optionally, the gRPC (h2c) address of the same server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(untagged))]
pub enum EndpointEntry {
    Http(String),
    Ports(EndpointPorts),
}

impl<'de> Deserialize<'de> for EndpointEntry {
    // By hand rather than `untagged`, so that a mistake in the map form is reported as what
    // it is (`unknown field `grcp`, expected `http` or `grpc``), not as "no variant matched".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = EndpointEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`host:port` or `{ http: host:port, grpc: host:port }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointEntry, E> {
                Ok(EndpointEntry::Http(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EndpointEntry, A::Error> {
                EndpointPorts::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndpointEntry::Ports)
            }
        }
        d.deserialize_any(Entry)
    }
}

/// The map form of an endpoint.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointPorts {
    /// `host:port` of the HTTP/1.1 listener.
    pub http: String,
    /// `host:port` of the gRPC listener (h2c, `inference.GRPCInferenceService`). Absent: the
    /// endpoint takes no gRPC requests.
    #[serde(default)]
    pub grpc: Option<String>,
}

impl EndpointEntry {
    /// The HTTP address as written.
    pub fn http(&self) -> &str {
        match self {
            EndpointEntry::Http(a) => a,
            EndpointEntry::Ports(p) => &p.http,
        }
    }

    /// The gRPC address as written, if any.
    pub fn grpc(&self) -> Option<&str> {
        match self {
            EndpointEntry::Http(_) => None,
            EndpointEntry::Ports(p) => p.grpc.as_deref(),
        }
    }
}

/// A pool's `health:` block: `GET path` on every endpoint every `interval`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path to `GET`; a 2xx answer is healthy. Default `/healthz`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::UrlPath>"))]
    pub path: Option<Spanned<String>>,
    /// Time between checks of one endpoint. Default `1s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub interval: Option<Spanned<String>>,
    /// A check not answered within this long failed. Default `500ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub timeout: Option<Spanned<String>>,
    /// Passed checks in a row that make an unhealthy endpoint healthy. Default 2.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub healthy_threshold: Option<Spanned<u32>>,
    /// Failed checks in a row that make a healthy endpoint unhealthy. Default 2.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub unhealthy_threshold: Option<Spanned<u32>>,
}

/// A pool's `server_metrics:` block. The gauge names default to vLLM's; name SGLang's, TGI's
/// or Triton's here. A gauge with several label sets (e.g. one per model) is summed.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServerMetrics {
    /// Path to `GET`. Default `/metrics`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::UrlPath>"))]
    pub path: Option<Spanned<String>>,
    /// Time between scrapes of one endpoint. Default `200ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub interval: Option<Spanned<String>>,
    /// Metrics older than this are stale: the estimate falls back to in-flight counting.
    /// Default five intervals.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub max_age: Option<Spanned<String>>,
    /// The gauge of requests waiting in the server's queue. Default
    /// `vllm:num_requests_waiting`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub waiting: Option<Spanned<String>>,
    /// The gauge of requests the server is running. Default `vllm:num_requests_running`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub running: Option<Spanned<String>>,
    /// The gauge of KV-cache use, 0 to 1. Default `vllm:kv_cache_usage_perc`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub kv_cache: Option<Spanned<String>>,
    /// An endpoint with more requests waiting is avoided for tiers that may be shed or
    /// queued (`on_slo_miss: shed | queue`). Absent: no such threshold.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>"))]
    pub max_waiting: Option<Spanned<u32>>,
    /// An endpoint with more KV cache in use (0 to 1) is avoided likewise.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 1))
    )]
    pub max_kv_cache: Option<Spanned<f64>>,
}

/// A pool's `affinity:` block.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    /// Key OpenAI chat requests by their prompt's prefix: the messages up to and including
    /// the first user message (at most 4 KiB of them), which every turn of a conversation
    /// repeats. Default `true`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<bool>"))]
    pub prefix: Option<Spanned<bool>>,
    /// A request header naming the session (e.g. `x-session-id`); it wins over the prefix.
    /// OpenAI's `user` field is a session key too. Absent: the `user` field only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub session_header: Option<Spanned<String>>,
    /// Bounded load: an endpoint takes a keyed request only while its load stays within this
    /// factor of the pool's mean (else the key's next endpoint). Default `1.25`, at least 1.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(min = 1)))]
    pub load_factor: Option<Spanned<f64>>,
}

/// How a pool is paid for (`price.billing`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// Replicas paid by the hour, busy or idle (`per_replica_hour` × `replicas`): a GPU
    /// cluster the platform team runs. A request costs nothing more while the pool is under
    /// its `safe_utilisation`, and more as it nears saturation.
    Provisioned,
    /// Paid per request and per token (`per_request`, `per_1k_input_tokens`,
    /// `per_1k_output_tokens`): a hosted model API.
    PerUse,
    /// Paid per use like `per_use`, scaled to zero after `idle_timeout` without a request:
    /// the first request after that waits for a `cold_start`.
    Serverless,
    /// Paid per GPU-hour of work (`per_gpu_hour` × service time): batch workers.
    Batch,
}

/// A pool's price model: how it is billed, and its prices (each 0 unless written).
#[derive(Debug, Deserialize, Default, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// How the pool is paid for. Default: from the prices written: `per_replica_hour` →
    /// `provisioned`, `cold_start` → `serverless`, only `per_gpu_hour` → `batch`, else
    /// `per_use`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Billing>"))]
    pub billing: Option<Spanned<Billing>>,
    /// USD per request.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub per_request: f64,
    /// USD per GPU-hour, charged for the service time of each request (`batch`; also adds to
    /// a `per_use` pool's price).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub per_gpu_hour: f64,
    /// USD per 1000 prompt tokens (hosted LLM APIs): counted from the answer's `usage`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub per_1k_input_tokens: f64,
    /// USD per 1000 completion tokens.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub per_1k_output_tokens: f64,
    /// `provisioned`: USD per replica-hour, paid busy or idle.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub per_replica_hour: f64,
    /// `provisioned`: the replicas paid for. Default: the pool's endpoints (as resolved).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub replicas: Option<Spanned<u32>>,
    /// `provisioned`: the share of `concurrency` in flight up to which a request costs
    /// nothing more (the pool meets its objectives up to there). Default 0.7.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0.05, max = 1.0))
    )]
    pub safe_utilisation: Option<Spanned<f64>>,
    /// `serverless`: how long the first request waits when the pool has scaled to zero.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub cold_start: Option<Spanned<String>>,
    /// `serverless`: how long without a request before the pool scales to zero. Default 5m.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub idle_timeout: Option<Spanned<String>>,
}

/// A request route; the first whose `match` fits the path wins.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub name: Spanned<String>,
    /// Path to match: exact, or a prefix when it ends in `*` (`/v2/models/*`).
    #[serde(rename = "match")]
    #[cfg_attr(feature = "schema", schemars(with = "schema::UrlPath"))]
    pub path: Spanned<String>,
    /// How to find the model: `openai` (JSON body field `model`), `oip-v2`
    /// (`/v2/models/{m}[/versions/{v}]/infer`), `tf-serving` (`/v1/models/{m}[/versions/{v}]:predict`),
    /// `oip-v2-grpc` (gRPC `/inference.GRPCInferenceService/{Method}`, model in the protobuf).
    pub protocol: Protocol,
    /// Largest request body accepted, e.g. `64MiB`; at most `256MiB`. Default `32MiB`. The
    /// whole body is read before routing (and re-sent whole on a failover); see `limits`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_body: Option<Spanned<String>>,
    /// Tier for requests that name none (no tenant key, no `x-slo-tier`).
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub tier: Spanned<String>,
    /// Prediction caching for this route. Absent: never cached.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<RouteCache>"))]
    pub cache: Option<Spanned<RouteCache>>,
    /// Requests on this route may be sent twice: an upstream 5xx or timeout is retried on
    /// another endpoint or pool (within the deadline and the retry budget). Default false:
    /// only connect failures are retried.
    #[serde(default)]
    pub idempotent: bool,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Protocol {
    /// OpenAI-style JSON: the model is the body's `model` field.
    #[serde(rename = "openai")]
    OpenAi,
    /// Open Inference Protocol v2 over HTTP: `/v2/models/{m}[/versions/{v}]/infer`.
    #[serde(rename = "oip-v2")]
    OipV2,
    /// TensorFlow Serving REST: `/v1/models/{m}[/versions/{v}]:predict`.
    #[serde(rename = "tf-serving")]
    TfServing,
    /// gRPC `inference.GRPCInferenceService` (OIP v2 / KServe / Triton) over h2c; the model is
    /// field 1 of the request message.
    #[serde(rename = "oip-v2-grpc")]
    OipV2Grpc,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// TCP connect timeout per attempt. Default `1s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub connect_timeout: Option<Spanned<String>>,
    /// Most attempts per request (first try + retries on connect failure). Default 3.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// How long an endpoint that failed to connect is skipped. Default `5s`. Also the first
    /// outlier-ejection back-off: the k-th ejection in a row lasts `down_backoff × 2^k`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub down_backoff: Option<Spanned<String>>,
    /// Longest ejection back-off. Default `60s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub max_backoff: Option<Spanned<String>>,
    /// Consecutive 5xx answers or timeouts that eject an endpoint (a refused connect
    /// ejects at once). Default 5.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1)))]
    pub eject_after: Option<Spanned<u32>>,
    /// How many retries the gateway may add to the load. Default ratio 0.2, 5 per second.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<RetryBudget>"))]
    pub retry_budget: Option<Spanned<RetryBudget>>,
    /// How often endpoint host names are looked up again while serving (every address of a
    /// name is an endpoint; a failed lookup keeps the last good ones). Default `30s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub resolve_every: Option<Spanned<String>>,
}

/// `upstream.retry_budget`: retries ≤ `ratio` × requests + `min_per_second` × seconds.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per request, 0.0–1.0. Default 0.2 (at most 20% extra load).
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 1))
    )]
    pub ratio: Option<Spanned<f64>>,
    /// Retries allowed per second on top, so a quiet gateway can still retry. Default 5.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<f64>", range(min = 0, max = 1000))
    )]
    pub min_per_second: Option<Spanned<f64>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout: None,
            max_attempts: default_attempts(),
            down_backoff: None,
            max_backoff: None,
            eject_after: None,
            retry_budget: None,
            resolve_every: None,
        }
    }
}

fn default_attempts() -> u32 {
    3
}

/// The `queue:` section: where jobs are stored and how they are dispatched.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// `embedded` (default: a local redb file, no external service) or `redis` (Redis
    /// Streams, shared by several gateway instances). Changing it takes a restart.
    #[serde(default)]
    pub backend: QueueBackend,
    /// Embedded store file, relative to the policy file. Default `switchyard-queue.redb`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub path: Option<Spanned<String>>,
    /// Redis URL for `backend: redis`, e.g. `redis://127.0.0.1:6379/0`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub redis_url: Option<Spanned<String>>,
    /// Prefix of every Redis key, so several queues can share one Redis. Default `switchyard`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub redis_prefix: Option<Spanned<String>>,
    /// Most unfinished (queued + running) jobs; beyond it enqueue answers 503. Default 100000.
    #[serde(default = "default_max_jobs")]
    #[cfg_attr(feature = "schema", schemars(with = "u64", range(min = 1)))]
    pub max_jobs: Spanned<u64>,
    /// Dispatch attempts per job before it is `failed`. Default 5.
    #[serde(default = "default_job_attempts")]
    #[cfg_attr(feature = "schema", schemars(with = "u32", range(min = 1, max = 100)))]
    pub max_attempts: Spanned<u32>,
    /// How long a finished job (and its result) is kept. Default `24h`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub result_ttl: Option<Spanned<String>>,
    /// Back-off between attempts: `base × 2^(attempt−1)`, at most `max`, ±20% jitter.
    #[serde(default)]
    pub backoff: Backoff,
    /// Largest request body a job may carry, e.g. `1MiB` (also bounded by the route's
    /// `max_body`). Default `1MiB`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Size>"))]
    pub max_body: Option<Spanned<String>>,
    /// A running job not finished within this long is taken over by another dispatcher
    /// (Redis: the instance running it died). Default `5m`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub lease: Option<Spanned<String>>,
    /// Hosts `x-switchyard-callback-url` may point at: exact names or addresses, or
    /// `*.example.com` for subdomains. Empty (default): callbacks are refused.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    pub callback_allow: Vec<Spanned<String>>,
    /// Per pool: when and how hard batch work may use it.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "BTreeMap<String, PoolDispatch>"))]
    pub pools: BTreeMap<String, Spanned<PoolDispatch>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First retry delay. Default `500ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub base: Option<Spanned<String>>,
    /// Longest retry delay. Default `30s`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Duration>"))]
    pub max: Option<Spanned<String>>,
}

/// When and how hard batch work may use a pool (`queue.pools.NAME`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolDispatch {
    /// Dispatch only inside this daily UTC window, `HH:MM-HH:MM` (may wrap midnight).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::Window>"))]
    pub window: Option<Spanned<String>>,
    /// Dispatch only while the pool's in-flight requests (real-time + batch) are below this
    /// fraction of its `concurrency`, 0.0–1.0. Default 1.0.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>", range(max = 1), extend("exclusiveMinimum" = 0)))]
    pub max_utilisation: Option<Spanned<f64>>,
}

fn default_max_jobs() -> Spanned<u64> {
    unspanned(100_000)
}

fn default_job_attempts() -> Spanned<u32> {
    unspanned(5)
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `key=value` pairs after a timestamp, like the rest of the gateway's log.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Which decision headers (`x-switchyard-policy-version`, `-tier`, `-region`, `-budget`,
/// `-pool`, `-endpoint`, `-decision`) answers carry (`observe.decision_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DecisionHeaders {
    /// All of them.
    #[default]
    All,
    /// All but `x-switchyard-endpoint`, which names an internal address.
    NoEndpoint,
    /// None.
    Off,
}
