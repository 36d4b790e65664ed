//! Validation and compilation: the as-written [`raw::Policy`] becomes an immutable
//! [`RoutingTable`] with every reference resolved to an index, every duration and size typed,
//! every CIDR parsed and every endpoint address resolved.
//!
//! Validation reports *every* problem it finds, each with the line and column of the node to
//! fix, not just the first. Compilation does blocking work (reading the GeoIP database,
//! resolving endpoint host names) and therefore never runs on the request path: it runs at
//! start-up and on reload, and the result is published with one atomic pointer swap.
//!
//! Live measurements (latency EWMAs, in-flight counts, endpoints marked down, the retry
//! budget) are not part of the table, which is pure data: `serving::state::Fleet::attach`
//! builds them beside it by pool and endpoint name, so they survive a reload of a policy that
//! still has the same pools.
//!
//! One submodule per policy section, each beside the runtime types it produces:
//! `listeners`, `regions` (with `rtt_ms`, `gateway_region`, `geoip`), `tiers`, `tenants`,
//! `pools` (with endpoints and `models`), `routes`, `upstream`, `queue`, `cache`, `limits`
//! and `observe`. [`compile`] here only orders the sections (later ones resolve names
//! against earlier ones) and collects their problems.

mod cache;
mod capacity;
mod limits;
mod listeners;
mod models;
mod observe;
pub use super::raw::{DecisionHeaders, LogFormat};
pub use observe::{LogTarget, TraceSettings, DEFAULT_DECISION_LOG_BYTES};
mod pools;
mod pricing;
mod queue;
mod regions;
mod routes;
mod tenants;
mod tiers;
mod upstream;

pub use cache::CacheSettings;
pub use capacity::Capacity;
pub use limits::Limits;
pub use listeners::TlsListener;
pub use models::{Compare, RolloutRule, ShadowRule, Split, SplitId, Sticky, Version};
pub use pools::{Affinity, Endpoint, HealthCheck, ModelSet, Pool, ServerMetrics};
pub use pricing::{Billing, Pricing, DEFAULT_IDLE_TIMEOUT, DEFAULT_SAFE_UTILISATION};
pub use queue::{PoolDispatch, QueueBackend, QueueSettings};
pub use routes::{PathMatch, Route, RouteCache};
pub use tenants::Tenant;
pub use tiers::{KindSet, Tier};
pub use upstream::{BudgetSettings, Ejection, Upstream};

use super::raw;
use super::{PolicyError, PolicyErrors};
use http::HeaderValue;
use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Index of a region in [`RoutingTable::regions`].
pub type RegionId = u16;
/// Index of a tier in [`RoutingTable::tiers`].
pub type TierId = u16;
/// Index of a pool in [`RoutingTable::pools`].
pub type PoolId = u16;
/// Index of a route in [`RoutingTable::routes`].
pub type RouteId = u16;
/// Index of a tenant in [`RoutingTable::tenants`].
pub type TenantId = u16;

/// Request bodies the gateway reads before routing (to find the model, check the JSON and
/// compute cacheability) are held in memory and re-sent on retry; this is the most it holds.
pub const INSPECT_LIMIT: usize = 64 * 1024;
/// The largest `max_body` a route may declare.
pub const MAX_BODY_LIMIT: usize = 256 * 1024 * 1024;
/// A route's `max_body` when it names none: real chat bodies (long prompts, tool
/// definitions, base64 images) run to several MB.
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
/// `limits.max_buffered_bytes` when the policy names none.
pub const DEFAULT_MAX_BUFFERED: u64 = 512 * 1024 * 1024;
/// The largest `cache.max_bytes`.
pub const MAX_CACHE_BYTES: usize = 64 * 1024 * 1024 * 1024;

/// A file the policy names that is loaded when the table is published rather than compiled
/// into it (`serving::resources`: the GeoIP database, certificates), with where the policy
/// names it, so a file that does not load is reported at its line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Resolved against the policy file's directory.
    pub path: PathBuf,
    /// The policy file, and the line and column of the value (0: not written).
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl FileRef {
    /// `written`, resolved beside the policy `file`, named at `node`.
    pub fn beside(file: &Path, written: &str, at: &Location) -> FileRef {
        FileRef {
            path: file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(written),
            file: file.to_path_buf(),
            line: at.line(),
            column: at.column(),
        }
    }

    /// A problem with this file, reported where the policy names it.
    pub fn error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

/// `geoip.database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeoSource {
    /// The test database built into the binary (`geo-data/`); `at`: where the policy says
    /// so, if it does.
    Embedded(Option<FileRef>),
    File(FileRef),
}

/// The compiled policy: everything the request path reads, immutable once built.
pub struct RoutingTable {
    /// Short content hash of the policy text; reported in responses and the admin API.
    pub version: String,
    /// Unique per compiled table in this process (unlike `version`, which repeats when the
    /// same text is loaded again); keys per-table caches such as metric handles.
    pub generation: u64,
    pub source: PathBuf,
    pub loaded_at: SystemTime,
    pub proxy_listener: SocketAddr,
    /// Whether the plain `proxy` listener runs (false: `tls` is set and `proxy` is not
    /// written).
    pub plain_listener: bool,
    /// `listeners.tls`: the address, and the certificate pair's files (loaded and checked
    /// when the table is published: `serving::resources`).
    pub tls_listener: Option<TlsListener>,
    pub admin_listener: SocketAddr,
    /// `listeners.keda`: the KEDA external scaler's gRPC listener (`None`: off).
    pub keda_listener: Option<SocketAddr>,
    /// `listeners.admin_token`, expanded; `None`: the admin API is open (loopback only).
    pub admin_token: Option<super::secret::Secret>,
    pub threads: Option<usize>,
    /// How long in-flight requests may finish after `SIGTERM` (start-up only).
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// `geoip.database`: opened when the table is published (`serving::resources`).
    pub geoip: GeoSource,
    pub regions: Vec<String>,
    /// `regions` and `version` as ready header values (see [`header_value`]).
    pub region_headers: Vec<HeaderValue>,
    pub version_header: HeaderValue,
    pub default_region: RegionId,
    /// Where this instance runs (`--region`, `SWITCHYARD_REGION`, else the policy's
    /// `gateway_region`). `None`: unknown, and the estimate takes the gateway to be beside
    /// its clients (`rtt(client region, pool region)` for the whole network path).
    pub gateway_region: Option<RegionId>,
    /// Sorted by code, for a binary search: a country or continent is looked up on every
    /// request, and a search of a few hundred two-byte keys beats hashing them (SipHash).
    country_region: Vec<([u8; 2], RegionId)>,
    continent_region: Vec<([u8; 2], RegionId)>,
    /// The `rtt_ms` matrix, `rtt[from * regions + to]`, as durations: converted once here
    /// because `decide` reads it for every candidate pool.
    rtt: Vec<Duration>,
    /// `egress_usd_per_gb` as USD per byte, `[from * regions + to]`.
    egress: Vec<f64>,
    /// Per client region, the pool regions allowed to serve it (`None`: any).
    residency: Vec<Option<Vec<RegionId>>>,
    pub tiers: Vec<Tier>,
    pub tenants: Vec<Tenant>,
    /// Tenant key digests, scanned whole by [`RoutingTable::tenant_by_key_hash`].
    tenant_keys: Vec<([u8; 32], TenantId)>,
    /// `auth:`: whether requests must carry a known tenant key.
    pub auth: super::tenancy::AuthMode,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub upstream: Upstream,
    /// The batch queue, when the policy has a `queue:` section.
    pub queue: Option<QueueSettings>,
    /// The prediction cache's limits.
    pub cache: CacheSettings,
    /// Gateway-wide limits.
    pub limits: Limits,
    /// Where the access log goes and how it is written.
    pub access_log: (LogTarget, LogFormat),
    /// The decision log's file and rotation size (`observe.decision_log`; `None`: off).
    pub decision_log: Option<(PathBuf, u64)>,
    /// Where spans go and which requests are sampled (`observe.traces`; `None`: off).
    pub traces: Option<observe::TraceSettings>,
    /// Which decision headers answers carry (`observe.decision_headers`).
    pub decision_headers: DecisionHeaders,
    /// Model → the version the policy declares (`models:`), part of the cache key.
    pub model_versions: HashMap<String, String>,
    /// Models served in several versions at once (`models.NAME.versions`), and by name.
    pub splits: Vec<Split>,
    pub split_of: HashMap<String, SplitId>,
    /// The policy text this table was compiled from (compiled again when an endpoint host
    /// name's addresses change: `policy::resolve`).
    pub text: Arc<str>,
    /// What each endpoint host name resolved to, in policy order.
    pub host_names: Vec<super::resolve::NameResolution>,
}

pub use super::raw::CacheScope;

impl RoutingTable {
    /// The first route whose match fits `path` (query string already removed).
    pub fn match_route(&self, path: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| r.matcher.matches(path))
            .map(|i| i as RouteId)
    }

    /// The tier called `name` (from `x-slo-tier`): a scan, as a policy has a handful of
    /// tiers and comparing their names is cheaper than hashing the header.
    pub fn tier_by_name(&self, name: &str) -> Option<TierId> {
        self.tiers
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as TierId)
    }

    /// The tenant whose key has this SHA-256. Every stored digest is compared, in constant
    /// time, so the time taken says nothing about how close a guess came to any key.
    pub fn tenant_by_key_hash(&self, hash: &[u8; 32]) -> Option<TenantId> {
        use subtle::ConstantTimeEq;
        let mut found = subtle::CtOption::new(0u16, subtle::Choice::from(0));
        for (digest, id) in &self.tenant_keys {
            let hit = digest.ct_eq(hash);
            found = subtle::CtOption::new(*id, hit).or_else(|| found);
        }
        Option::from(found)
    }

    pub fn region_of_country(&self, iso: &[u8]) -> Option<RegionId> {
        by_code(&self.country_region, iso)
    }

    pub fn region_of_continent(&self, code: &[u8]) -> Option<RegionId> {
        by_code(&self.continent_region, code)
    }

    pub fn rtt(&self, from: RegionId, to: RegionId) -> Duration {
        let n = self.regions.len();
        self.rtt
            .get(from as usize * n + to as usize)
            .copied()
            .unwrap_or_default()
    }

    /// USD per byte of traffic from region `from` to region `to` (`egress_usd_per_gb`).
    pub fn egress_per_byte(&self, from: RegionId, to: RegionId) -> f64 {
        let n = self.regions.len();
        self.egress
            .get(from as usize * n + to as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// Whether residency rules let a pool in `pool` serve a client in `client`.
    pub fn residency_allows(&self, client: RegionId, pool: RegionId) -> bool {
        match self.residency.get(client as usize) {
            Some(Some(allowed)) => allowed.contains(&pool),
            _ => true,
        }
    }

    /// The pool regions allowed for clients in `client`, if the policy restricts them.
    pub fn residency(&self, client: RegionId) -> Option<&[RegionId]> {
        self.residency.get(client as usize)?.as_deref()
    }

    pub fn region_by_name(&self, name: &str) -> Option<RegionId> {
        self.regions
            .iter()
            .position(|r| r == name)
            .map(|i| i as RegionId)
    }
}

/// A policy name as a response header value, validated once at compile time instead of on
/// every response. Names that are not valid header text (control characters) show as `-`.
pub fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Parse a duration such as `150ms`, `2s`, `10m`, `1h`, `250us`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parse a size such as `1MiB`, `64KiB`, `500KB`, `2048`.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    value.checked_mul(factor)
}

/// Collects problems while compiling, each at a location in the policy file.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<PolicyError>,
}

impl Problems<'_> {
    fn at(&mut self, loc: &Location, message: impl Into<String>) {
        self.list.push(PolicyError {
            file: self.file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }
    fn on<T>(&mut self, node: &Spanned<T>, message: impl Into<String>) {
        self.at(&node.referenced, message);
    }
}

fn duration_field(p: &mut Problems, node: &Spanned<String>, what: &str) -> Duration {
    match parse_duration(&node.value) {
        Some(d) => d,
        None => {
            p.on(
                node,
                format!(
                    "{what}: expected a duration such as `150ms`, `2s`, `10m` or `1h`, found `{}`",
                    node.value
                ),
            );
            Duration::ZERO
        }
    }
}

/// Everything `compile` needs besides the policy text.
pub struct CompileContext<'a> {
    /// The file the policy came from: named in every error, and the base for relative paths.
    pub file: &'a Path,
    /// Where this instance runs, when given at start-up (`--region`, `SWITCHYARD_REGION`):
    /// overrides the policy's `gateway_region`, and must name one of its regions.
    pub gateway_region: Option<String>,
}

/// Parse, validate and compile policy text.
pub fn compile_str(text: &str, cx: &CompileContext) -> Result<RoutingTable, PolicyErrors> {
    let placed = |errors| place_unlocated(text, errors);
    let raw = super::parse(text, cx.file).map_err(placed)?;
    let version = content_version(text);
    let mut table = compile(raw, version, cx).map_err(placed)?;
    table.text = Arc::from(text);
    Ok(table)
}

/// Problems no single node carries (a pair missing from `rtt_ms`, no routes, an unreadable
/// GeoIP database, a YAML error reported without a position) are placed at the top-level key
/// of the section their message names, else at 1:1: every problem in a file has a line to go
/// to (the property tests hold the parser to that).
fn place_unlocated(text: &str, mut errors: PolicyErrors) -> PolicyErrors {
    for e in errors.0.iter_mut().filter(|e| e.line == 0 || e.column == 0) {
        let section = e.message.split(':').next().unwrap_or("");
        let line = text
            .lines()
            .position(|l| {
                !section.is_empty()
                    && l.strip_prefix(section)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
            .map_or(1, |i| i as u64 + 1);
        if e.line == 0 {
            e.line = line;
        }
        e.column = e.column.max(1);
    }
    errors
}

/// A short, stable hash of the policy text, used as its version.
pub fn content_version(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn compile(
    raw: raw::Policy,
    version: String,
    cx: &CompileContext,
) -> Result<RoutingTable, PolicyErrors> {
    let mut problems = Problems {
        file: cx.file,
        list: Vec::new(),
    };
    let p = &mut problems;
    let listeners = listeners::compile(p, &raw.listeners, cx.file);
    let trusted_proxies = listeners::trusted_proxies(p, &raw);
    let regions = regions::compile(p, &raw, cx.gateway_region.as_deref());
    let tiers = tiers::compile(p, &raw);
    let tenants = tenants::compile(p, &raw, &tiers);
    let (mut pools, host_names) = pools::compile(p, &raw, &regions, cx);
    tiers::check_kinds_served(p, &raw, &pools);
    capacity::compile(p, &raw, &tiers, &mut pools);
    let routes = routes::compile(p, &raw, &tiers);
    let down_backoff = upstream::down_backoff(p, &raw);
    let shutdown_grace = listeners::shutdown_grace(p, &raw.listeners);
    let upstream = upstream::compile(p, &raw, down_backoff);
    let queue = queue::compile(p, &raw, &mut pools, cx.file);
    let cache = raw
        .cache
        .as_ref()
        .map(|c| cache::compile_cache(p, c))
        .unwrap_or_default();
    let mut limits = raw
        .limits
        .as_ref()
        .map(|l| limits::compile_limits(p, l))
        .unwrap_or_default();
    let access_log = observe::compile_access_log(p, raw.observe.as_ref(), cx.file);
    let decision_log = observe::compile_decision_log(p, raw.observe.as_ref(), cx.file);
    let traces = observe::compile_traces(p, raw.observe.as_ref());
    limits::compile_admission(p, &raw, &tiers, &mut limits);
    let models = models::compile(p, &raw, &pools, &tenants.list, cx.file);
    let geoip = regions::geo_source(&raw, cx.file);
    let egress = pricing::egress(p, &raw, &regions.names);

    if !problems.list.is_empty() {
        return Err(PolicyErrors(problems.list));
    }
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(RoutingTable {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        version_header: header_value(&version),
        region_headers: regions.names.iter().map(|r| header_value(r)).collect(),
        version,
        source: cx.file.to_path_buf(),
        loaded_at: SystemTime::now(),
        proxy_listener: listeners.proxy,
        plain_listener: listeners.plain,
        tls_listener: listeners.tls,
        admin_listener: listeners.admin,
        keda_listener: listeners.keda,
        admin_token: listeners.admin_token,
        threads: raw.listeners.threads,
        shutdown_grace,
        trusted_proxies,
        geoip,
        default_region: regions.default,
        gateway_region: regions.gateway,
        country_region: sorted_codes(regions.country),
        continent_region: sorted_codes(regions.continent),
        // Integer nanoseconds (a missing pair is NaN, which the cast makes 0).
        rtt: regions
            .rtt_ms
            .iter()
            .map(|ms| Duration::from_nanos((ms * 1e6) as u64))
            .collect(),
        residency: regions.residency,
        egress,
        regions: regions.names,
        tiers: tiers.list,
        tenants: tenants.list,
        tenant_keys: tenants.by_key.into_iter().collect(),
        auth: raw.auth,
        pools,
        routes,
        upstream,
        queue,
        cache,
        limits,
        access_log,
        decision_log,
        traces,
        decision_headers: raw
            .observe
            .as_ref()
            .and_then(|o| o.value.decision_headers)
            .unwrap_or_default(),
        model_versions: models.versions,
        split_of: models
            .splits
            .iter()
            .enumerate()
            .map(|(i, s)| (s.model.clone(), i as SplitId))
            .collect(),
        splits: models.splits,
        text: Arc::from(""),
        host_names,
    })
}

/// A region map as a sorted list of (code, region).
fn sorted_codes(map: HashMap<[u8; 2], RegionId>) -> Vec<([u8; 2], RegionId)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_unstable();
    v
}

fn by_code(codes: &[([u8; 2], RegionId)], code: &[u8]) -> Option<RegionId> {
    let key: [u8; 2] = code.try_into().ok()?;
    codes
        .binary_search_by_key(&key, |(c, _)| *c)
        .ok()
        .map(|i| codes[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::raw::Protocol;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_size("1MiB"), Some(1024 * 1024));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("1 MB"), Some(1_000_000));
        assert_eq!(parse_size("lots"), None);
    }

    fn compile_pools(pools: &str) -> Result<RoutingTable, PolicyErrors> {
        let text = format!(
            r#"
regions: {{ default: us, map: [{{ name: us, continents: [NA] }}] }}
rtt_ms: {{ us: {{ us: 5 }} }}
tiers: {{ t: {{ deadline: 1s, weight: 0.5, pools: [edge] }} }}
pools:
{pools}
routes:
  - {{ name: g, match: "/inference.GRPCInferenceService/*", protocol: oip-v2-grpc, tier: t }}
"#
        );
        compile_str(
            &text,
            &CompileContext {
                file: std::path::Path::new("t.yaml"),
                gateway_region: None,
            },
        )
    }

    #[test]
    fn capacity_defaults_and_errors_with_their_place() {
        let table = compile_pools(
            "  - { name: p, kind: edge, region: us, endpoints: [\"127.0.0.1:8000\", \"127.0.0.1:8001\"], models: [m], concurrency: 9, service_time: 10ms, capacity: { min_replicas: 0 } }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = table.pools[0].capacity.clone().expect("capacity");
        assert_eq!((c.min_replicas, c.max_replicas), (0, 10));
        // 9 in flight over 2 endpoints: 5 per replica; the deadline is tier `t`'s.
        assert_eq!(c.concurrency_per_replica, 5);
        assert_eq!(c.deadline, Duration::from_secs(1));
        assert_eq!(c.deadline_tier.as_deref(), Some("t"));
        assert_eq!(c.percentile, 0.99);
        assert_eq!(c.scale_down_window, Duration::from_secs(300));

        let errors = compile_pools(
            "  - { name: p, kind: edge, region: us, endpoints: [\"127.0.0.1:8000\"], models: [m], concurrency: 4, service_time: 10ms,\n      capacity: { min_replicas: 5, max_replicas: 2, percentile: 1.5, scale_up_time: soon } }",
        )
        .err()
        .expect("errors")
        .to_string();
        for (what, line) in [
            ("min_replicas (5) is more than max_replicas (2)", 7),
            ("capacity.percentile", 7),
            ("capacity.scale_up_time", 7),
        ] {
            assert!(
                errors.contains(what) && errors.contains(&format!("t.yaml:{line}:")),
                "{what}: {errors}"
            );
        }
    }

    #[test]
    fn endpoints_name_an_http_and_optionally_a_grpc_address() {
        let table = compile_pools(
            "  - { name: p, kind: edge, region: us, endpoints: [{ http: \"127.0.0.1:8000\", grpc: \"127.0.0.1:8001\" }], models: [m], concurrency: 4, service_time: 10ms }\n\
             \x20 - { name: q, kind: edge, region: us, endpoints: [\"127.0.0.1:9000\", { http: \"127.0.0.1:9100\" }], models: [m], concurrency: 4, service_time: 10ms }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = &table.pools[0];
        assert_eq!(p.endpoints[0].name, "127.0.0.1:8000");
        assert_eq!(p.endpoints[0].addr.port(), 8000);
        assert_eq!(p.endpoints[0].grpc.map(|a| a.port()), Some(8001));
        assert!(p.serves_grpc());
        assert!(!table.pools[1].serves_grpc());
        assert_eq!(table.routes[0].protocol, Protocol::OipV2Grpc);

        // Half a pool on gRPC cannot be routed to consistently: refused, with the reason.
        let err = compile_pools(
            "  - { name: p, kind: edge, region: us, endpoints: [{ http: \"127.0.0.1:8000\", grpc: \"127.0.0.1:8001\" }, \"127.0.0.1:9000\"], models: [m], concurrency: 4, service_time: 10ms }",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("every endpoint names a `grpc` address or none"),
            "{err}"
        );
        // Unknown keys in the map form are rejected like everywhere else.
        assert!(compile_pools(
            "  - { name: p, kind: edge, region: us, endpoints: [{ http: \"127.0.0.1:8000\", grcp: \"127.0.0.1:8001\" }], models: [m], concurrency: 4, service_time: 10ms }",
        )
        .is_err());
    }
}
