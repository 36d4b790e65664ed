//! `switchyard schema`: the JSON Schema (draft 2020-12) of the policy file, for editors
//! (`# yaml-language-server: $schema=./schema.json`) and CI. Shipped as `policies/schema.json`;
//! a test keeps the two identical and validates every shipped policy against it.
//!
//! Written by hand from `policy::raw`, which it must mirror: every struct there denies
//! unknown fields, so every object here has `additionalProperties: false`; a field with a
//! serde default is optional; an `Option` also accepts `null`. Only the *shape* is described
//! (types, enums, simple bounds): references between names, durations and sizes are checked by
//! `switchyard check`, not here. When you add a field to `raw.rs`, add it here and run
//! `switchyard schema > policies/schema.json`.

use serde_json::{json, Map, Value};

fn object(description: &str, required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn optional_string(description: &str) -> Value {
    json!({ "type": ["string", "null"], "description": description })
}

fn strings(description: &str) -> Value {
    json!({ "type": "array", "description": description, "items": { "type": "string" } })
}

fn enumeration(description: &str, values: &[&str]) -> Value {
    json!({ "type": "string", "description": description, "enum": values })
}

/// The policy schema as a JSON value.
pub fn policy_schema() -> Value {
    let listeners = object(
        "Listener addresses. Changing them takes a restart.",
        &[],
        json!({
            "proxy": string("Proxy listener `ip:port` (HTTP/1.1 and h2c). Default 0.0.0.0:8080."),
            "admin": string("Admin listener `ip:port`. Default 127.0.0.1:9090; keep it on loopback."),
            "threads": { "type": ["integer", "null"], "minimum": 0, "description": "Proxy worker threads. Default: the number of CPUs." },
            "shutdown_grace": optional_string("On SIGTERM: stop accepting, let requests in flight finish for this long (whole seconds, rounded up), then exit. Default 5s."),
            "admin_token": optional_string("Bearer token for every admin endpoint but /healthz, /readyz, /metrics and the static status page: `${NAME}` or `${NAME:-default}`, expanded from the environment at load (an unset variable is a load error). Required when `admin` is not on loopback. Default: none."),
            "tls": {
                "type": ["object", "null"],
                "description": "A TLS listener (TLS 1.2/1.3, ALPN h2 and http/1.1). With `tls` set and `proxy` not written, there is no plain listener. The certificate and key are re-read when their files change; a bad pair is refused and the old one keeps serving.",
                "additionalProperties": false,
                "required": ["listen", "cert", "key"],
                "properties": {
                    "listen": string("`ip:port`, e.g. 0.0.0.0:8443."),
                    "cert": string("PEM certificate chain (leaf first), relative to the policy file."),
                    "key": string("PEM private key, relative to the policy file."),
                },
            },
        }),
    );
    let geoip = object(
        "Where the MaxMind (MMDB) country database is.",
        &[],
        json!({
            "database": optional_string("MMDB file relative to the policy file, or `embedded` (the small test database; the default)."),
        }),
    );
    let region = object(
        "A region: the countries and continents whose clients belong to it.",
        &["name"],
        json!({
            "name": string("Region name, used by pools, rtt_ms and residency."),
            "countries": strings("ISO 3166-1 alpha-2 country codes, e.g. DE. A country match wins over a continent match."),
            "continents": strings("Continent codes as in GeoIP: AF, AN, AS, EU, NA, OC, SA."),
            "residency": {
                "type": ["array", "null"],
                "items": { "type": "string" },
                "description": "Data residency: the regions whose pools may serve this region's clients. Absent: any region. A request no allowed pool can take is refused (503), never sent elsewhere.",
            },
        }),
    );
    let regions = object(
        "Region names and which countries / continents belong to each.",
        &["default", "map"],
        json!({
            "default": string("Region of clients whose address is private, unknown or unmapped."),
            "map": { "type": "array", "items": region, "description": "Region definitions." },
        }),
    );
    let rtt_ms = json!({
        "type": "object",
        "description": "Round-trip time in milliseconds between regions: rtt_ms[from][to]. Each unordered pair at least once; the matrix is symmetric.",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": { "type": "number", "minimum": 0 },
        },
    });
    let kinds = &["edge", "gpu", "batch"];
    let tier = object(
        "An SLO tier.",
        &["deadline", "pools"],
        json!({
            "deadline": string("End-to-end latency objective, e.g. 150ms, 2s, 1h."),
            "weight": { "type": "number", "minimum": 0, "maximum": 1, "description": "0 = cost only … 1 = latency only, among pools that meet the deadline. Default 0.5." },
            "pools": { "type": "array", "items": enumeration("Pool kind.", kinds), "description": "Pool kinds this tier may use." },
            "on_slo_miss": enumeration("When no pool is estimated to meet the deadline: send to the fastest anyway, refuse with 503, or queue as a job for the cheapest pool (needs `queue:`). Default fastest.", &["fastest", "shed", "queue"]),
            "timeout": optional_string("Upstream timeout before 504, e.g. 5s. Default max(4 × deadline, 5s), at most 10m."),
            "hedge_after": { "type": ["number", "null"], "minimum": 1, "maximum": 100, "description": "Hedged requests: when the first attempt has not answered after this many times its pool's service-time estimate, a second attempt goes to the next-best candidate and the first answer wins. Absent: no hedging." },
        }),
    );
    // `on_budget` is the string `reject` or a `{downgrade: TIER}` map; the schema subset has
    // no `oneOf`, so which string is left to `switchyard check`.
    let tenant_limits = object(
        "Rate, concurrency and daily spend limits; each absent field is no limit of that kind.",
        &[],
        json!({
            "requests_per_second": { "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1000000, "description": "Sustained requests per second; over it: 429 rate_limited with Retry-After." },
            "burst": { "type": ["integer", "null"], "minimum": 1, "description": "Requests allowed at once above the rate. Default: one second's worth." },
            "max_concurrency": { "type": ["integer", "null"], "minimum": 1, "description": "Requests in flight at once; over it: 429 rate_limited." },
            "spend_per_day_usd": { "type": ["number", "null"], "minimum": 0, "description": "Estimated spend per UTC day in USD (cache hits are free)." },
            "on_budget": {
                "type": ["string", "object", "null"],
                "description": "Over the day's spend: `reject` (default: 429 budget_exceeded) or `{ downgrade: TIER }` (served under that tier, x-switchyard-budget: downgraded).",
                "additionalProperties": false,
                "required": ["downgrade"],
                "properties": { "downgrade": string("The tier to serve the tenant under, e.g. batch.") },
            },
        }),
    );
    let tenant = object(
        "An API key (as SHA-256 only) and the tier its requests get.",
        &["name", "key_sha256", "tier"],
        json!({
            "name": string("Tenant name."),
            "key_sha256": string("SHA-256 of the API key, 64 lower-case hex characters."),
            "tier": string("Tier name."),
            "limits": tenant_limits.clone(),
        }),
    );
    let price = object(
        "Price model of a pool.",
        &[],
        json!({
            "per_request": { "type": "number", "minimum": 0, "description": "USD per request." },
            "per_gpu_hour": { "type": "number", "minimum": 0, "description": "USD per GPU-hour, charged for the expected service time." },
            "per_1k_input_tokens": { "type": "number", "minimum": 0, "description": "USD per 1000 prompt tokens, counted from the answer's `usage` (estimated from bytes when absent)." },
            "per_1k_output_tokens": { "type": "number", "minimum": 0, "description": "USD per 1000 completion tokens." },
        }),
    );
    let pool = object(
        "A backend pool.",
        &[
            "name",
            "kind",
            "region",
            "endpoints",
            "models",
            "concurrency",
            "service_time",
        ],
        json!({
            "name": string("Pool name; live estimates carry over reloads by this name."),
            "kind": enumeration("Pool kind.", kinds),
            "region": string("Region the pool is in."),
            "endpoints": {
                "type": "array",
                "description": "Each endpoint: `host:port` (HTTP/1.1 only), `https://host[:port]` (HTTPS, port 443 by default; SNI and certificate checks use the host), or `{ http: host:port, grpc: host:port }` when the server also speaks gRPC (h2c) on its own port.",
                "items": {
                    "type": ["string", "object"],
                    "description": "`host:port`, or a map naming the HTTP and the gRPC address.",
                    "additionalProperties": false,
                    "required": ["http"],
                    "properties": {
                        "http": string("`host:port` of the HTTP/1.1 listener."),
                        "grpc": optional_string("`host:port` of the gRPC listener (h2c). Absent: no gRPC requests."),
                    },
                },
            },
            "models": strings("Model names served; `*` serves every model."),
            "concurrency": { "type": "integer", "minimum": 1, "description": "Requests in flight the pool is sized for." },
            "service_time": string("Expected service time before any is measured, e.g. 40ms."),
            "price": price,
            "health": object("Active health checks: GET path on every endpoint every interval. Absent: none (passive ejection only).", &[], json!({
                "path": optional_string("Path to GET; a 2xx answer passes. Default /healthz."),
                "interval": optional_string("Time between checks of one endpoint. Default 1s."),
                "timeout": optional_string("A check not answered within this long fails. Default 500ms."),
                "healthy_threshold": { "type": ["integer", "null"], "minimum": 1, "description": "Passed checks in a row that make an unhealthy endpoint healthy. Default 2." },
                "unhealthy_threshold": { "type": ["integer", "null"], "minimum": 1, "description": "Failed checks in a row that make a healthy endpoint unhealthy. Default 2." },
            })),
            "headers": {
                "type": "object",
                "description": "Upstream headers set (or replaced) on every request to this pool; `${NAME}` / `${NAME:-default}` expanded from the environment at load (an unset variable is a load error). Values are never shown. Setting `authorization` drops the client's own Authorization and x-api-key.",
                "additionalProperties": { "type": "string" },
            },
            "host": optional_string("Host / :authority of upstream requests. Default: an https:// endpoint's host, else the client's."),
            "path_prefix": optional_string("Prepended to the upstream path, e.g. /openai/deployments/gpt4o."),
            "tls": {
                "type": ["object", "null"],
                "description": "TLS to the pool's https:// endpoints. Absent: the system's roots, no client certificate.",
                "additionalProperties": false,
                "required": [],
                "properties": {
                    "ca": optional_string("PEM CA certificates to trust instead of the system's, relative to the policy file."),
                    "client_cert": optional_string("PEM client certificate chain for mTLS (with client_key)."),
                    "client_key": optional_string("PEM private key of client_cert."),
                    "verify": { "type": "boolean", "description": "Verify the certificate and host name. Default true; false draws a check warning." },
                },
            },
        }),
    );
    let route = object(
        "A request route; the first whose match fits the path wins.",
        &["name", "match", "protocol", "tier"],
        json!({
            "name": string("Route name."),
            "match": string("Path: exact, or a prefix when it ends in `*`."),
            "protocol": enumeration("How to find the model.", &["openai", "oip-v2", "tf-serving", "oip-v2-grpc"]),
            "max_body": optional_string("Largest request body, e.g. 64MiB (at most 256MiB). Default 32MiB."),
            "tier": string("Tier for requests that name none."),
            "idempotent": { "type": "boolean", "description": "Upstream 5xx answers and timeouts may be retried on another endpoint or pool (within the deadline and the retry budget). Default false: only connect failures are retried." },
            "cache": object("Prediction caching for this route. Absent: never cached.", &[], json!({
                "ttl": optional_string("How long an answer is kept, e.g. 10m (an upstream max-age may shorten it). Default 5m."),
                "scope": enumeration("tenant: entries per tenant (per API key when unknown); shared: every caller shares them (public models only). Default tenant.", &["tenant", "shared"]),
            })),
        }),
    );
    let cache = object(
        "Prediction cache limits. Absent: the defaults. max_bytes and idle take a restart.",
        &[],
        json!({
            "max_bytes": optional_string("Memory bound of the whole cache, e.g. 256MiB. Default 64MiB."),
            "max_entry_bytes": optional_string("Largest response body stored; larger ones are served, not stored. Default 1MiB."),
            "idle": optional_string("Drop entries not read for this long, e.g. 2m. Default: none."),
            "shared": object("The L2 shared by every instance (Redis): an L1 miss looks there before going upstream. Takes a restart.", &["backend", "redis_url"], json!({
                "backend": enumeration("Only redis.", &["redis"]),
                "redis_url": string("redis://host:port[/db]"),
                "redis_prefix": optional_string("Prefix of every Redis key. Default switchyard."),
                "max_entry_bytes": optional_string("Largest body stored in Redis. Default 256KiB."),
                "timeout": optional_string("Longest wait for Redis on a lookup; then the request goes upstream. Default 5ms."),
            })),
        }),
    );
    let model = object(
        "A model's served version: part of its cache keys, so a bump invalidates its answers.",
        &["version"],
        json!({
            "version": string("The version being served, e.g. 2024-06-01 (quote numbers: \"3\")."),
        }),
    );
    let upstream = object(
        "Upstream behaviour shared by all pools.",
        &[],
        json!({
            "connect_timeout": optional_string("TCP connect timeout per attempt. Default 1s."),
            "max_attempts": { "type": "integer", "minimum": 0, "description": "Most attempts per request. Default 3." },
            "down_backoff": optional_string("How long an endpoint that failed to connect is skipped, and the first outlier-ejection back-off (the k-th in a row lasts down_backoff × 2^k). Default 5s."),
            "max_backoff": optional_string("Longest ejection back-off. Default 60s."),
            "eject_after": { "type": ["integer", "null"], "minimum": 1, "description": "Consecutive 5xx answers or timeouts that eject an endpoint (a refused connect ejects at once). Default 5." },
            "retry_budget": object("Retries the gateway may add: at most ratio × requests + min_per_second × seconds.", &[], json!({
                "ratio": { "type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "Retries per request. Default 0.2 (at most 20% extra load)." },
                "min_per_second": { "type": ["number", "null"], "minimum": 0, "maximum": 1000, "description": "Retries per second on top. Default 5." },
            })),
            "resolve_every": optional_string("How often endpoint host names are looked up again while serving (at least 1s). Every address of a name is an endpoint; a failed lookup keeps the last good addresses; a name that never resolved is an endpoint that is down. Default 30s."),
        }),
    );
    let queue = object(
        "The batch queue: asynchronous jobs answered 202 and dispatched later. Absent: no queue.",
        &[],
        json!({
            "backend": enumeration("Job store: a local redb file, or Redis Streams shared by instances. Changing it takes a restart. Default embedded.", &["embedded", "redis"]),
            "path": optional_string("Embedded store file, relative to the policy. Default switchyard-queue.redb."),
            "redis_url": optional_string("redis://host:port[/db], for backend redis."),
            "redis_prefix": optional_string("Prefix of every Redis key. Default switchyard."),
            "max_jobs": { "type": "integer", "minimum": 1, "description": "Most unfinished jobs; beyond it 503. Default 100000." },
            "max_attempts": { "type": "integer", "minimum": 1, "maximum": 100, "description": "Dispatch attempts before a job fails. Default 5." },
            "result_ttl": optional_string("How long finished jobs are kept. Default 24h."),
            "backoff": object("Retry back-off: base × 2^(attempt−1), at most max.", &[], json!({
                "base": optional_string("First retry delay. Default 500ms."),
                "max": optional_string("Longest retry delay. Default 30s."),
            })),
            "max_body": optional_string("Largest job request body (also bounded by the route). Default 1MiB."),
            "lease": optional_string("A running job unfinished this long is taken over by another dispatcher. Default 5m."),
            "callback_allow": strings("Hosts x-switchyard-callback-url may name: exact, or *.domain. Empty: no callbacks."),
            "pools": { "type": "object", "description": "Dispatch rules by pool name.", "additionalProperties": object("When and how hard batch work may use a pool.", &[], json!({
                "window": optional_string("Daily UTC window HH:MM-HH:MM."),
                "max_utilisation": { "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "description": "Dispatch only below this fraction of the pool's concurrency. Default 1." },
            })) },
        }),
    );
    let mut root = Map::new();
    root.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    root.insert("title".into(), json!("Switchyard routing policy"));
    let Value::Object(body) = object(
        "A Switchyard routing policy (see policies/default.yaml).",
        &["regions", "rtt_ms", "tiers", "pools", "routes"],
        json!({
            "listeners": listeners,
            "trusted_proxies": strings("CIDRs (or addresses) whose X-Forwarded-For is believed."),
            "geoip": geoip,
            "regions": regions,
            "gateway_region": string("The region this gateway instance runs in (one of regions.map), unless --region or SWITCHYARD_REGION say at start-up."),
            "rtt_ms": rtt_ms,
            "tiers": { "type": "object", "description": "SLO tiers by name.", "additionalProperties": tier },
            "tenants": { "type": "array", "items": tenant },
            "pools": { "type": "array", "items": pool },
            "routes": { "type": "array", "items": route },
            "upstream": upstream,
            "queue": queue,
            "cache": cache,
            "observe": object("Logs and decision headers. Absent: the access log goes to stderr as text, every decision header is sent. The logs are read at start-up.", &[], json!({
                "access_log": optional_string("stderr (default), stdout, off, or a file path relative to the policy (appended to)."),
                "access_log_format": enumeration("text (default) or json (one object per line).", &["text", "json"]),
                "decision_log": optional_string("The decision log (one JSON line per request, the trace simulate replays): a file path relative to the policy. Absent: off."),
                "decision_log_max": optional_string("Rotate the decision log at this size, e.g. 64MiB (default); the previous file is kept as PATH.1."),
                "decision_headers": enumeration("Which x-switchyard-* decision headers answers carry: all (default), no-endpoint (all but x-switchyard-endpoint, an internal address) or off. Applies on reload.", &["all", "no-endpoint", "off"]),
            })),
            "auth": enumeration("optional (default): requests without a known tenant key are anonymous; required: they get 401.", &["optional", "required"]),
            "limits": object("Gateway-wide limits. Absent: the defaults.", &[], json!({
                "max_buffered_bytes": optional_string("Request-body bytes held in memory at once over all requests; beyond it large requests get 503. Default 512MiB."),
                "backend": enumeration("Where tenant limits are kept: local (default, per instance) or redis (shared by instances). Takes a restart.", &["local", "redis"]),
                "redis_url": optional_string("redis://host:port[/db] for backend: redis."),
                "redis_prefix": optional_string("Prefix of every Redis key. Default switchyard."),
                "redis_timeout": optional_string("Longest wait for Redis on a request; then local limits apply. Default 20ms."),
                "instances": { "type": ["integer", "null"], "minimum": 1, "description": "Instances sharing the limits: while Redis is away each enforces a 1/N share. Absent: the full limit." },
                "anonymous": tenant_limits,
            })),
            "models": { "type": "object", "description": "Per model: the version being served (cache keys).", "additionalProperties": model },
        }),
    ) else {
        return Value::Null;
    };
    root.extend(body);
    Value::Object(root)
}

/// The schema as shipped in `policies/schema.json`: pretty JSON with a final newline.
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&policy_schema()).unwrap_or_default();
    s.push('\n');
    s
}
