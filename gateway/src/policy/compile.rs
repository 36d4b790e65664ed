//! Validation and compilation: the as-written [`raw::Policy`] becomes an immutable
//! [`RoutingTable`] with every reference resolved to an index, every duration and size typed,
//! every CIDR parsed and every endpoint address resolved.
//!
//! Validation reports *every* problem it finds, each with the line and column of the node to
//! fix, not just the first. Compilation does blocking work (reading the GeoIP database,
//! resolving endpoint host names) and therefore never runs on the request path: it runs at
//! start-up and on reload, and the result is published with one atomic pointer swap.
//!
//! Live measurements (latency EWMAs, in-flight counts, endpoints marked down) are not part of
//! the table: they live in [`Fleet`] and are attached here by pool and endpoint name, so they
//! survive a reload of a policy that still has the same pools.

use super::raw::{self, OnSloMiss, PoolKind, Price, Protocol};
use super::{PolicyError, PolicyErrors};
use crate::classify::geo::GeoDb;
use crate::route::budget::BudgetSettings;
use crate::route::state::{Ejection, EndpointState, Fleet, PoolState, RetryBudget};
use http::HeaderValue;
use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
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
    pub admin_listener: SocketAddr,
    /// `listeners.admin_token`, expanded; `None`: the admin API is open (loopback only).
    pub admin_token: Option<super::secret::Secret>,
    pub threads: Option<usize>,
    /// How long in-flight requests may finish after `SIGTERM` (start-up only).
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub geo: Arc<GeoDb>,
    pub regions: Vec<String>,
    /// `regions` and `version` as ready header values (see [`header_value`]).
    pub region_headers: Vec<HeaderValue>,
    pub version_header: HeaderValue,
    pub default_region: RegionId,
    country_region: HashMap<[u8; 2], RegionId>,
    continent_region: HashMap<[u8; 2], RegionId>,
    /// `rtt_ms[from * regions + to]`.
    rtt_ms: Vec<f64>,
    /// Per client region, the pool regions allowed to serve it (`None`: any).
    residency: Vec<Option<Vec<RegionId>>>,
    pub tiers: Vec<Tier>,
    tier_by_name: HashMap<String, TierId>,
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
    pub access_log: (crate::observe::LogTarget, crate::observe::LogFormat),
    /// The decision log's file and rotation size (`observe.decision_log`; `None`: off).
    pub decision_log: Option<(PathBuf, u64)>,
    /// Model → the version the policy declares (`models:`), part of the cache key.
    pub model_versions: HashMap<String, String>,
    /// The policy text this table was compiled from (compiled again when an endpoint host
    /// name's addresses change: `policy::resolve`).
    pub text: Arc<str>,
    /// What each endpoint host name resolved to, in policy order.
    pub host_names: Vec<super::resolve::NameResolution>,
}

pub use super::raw::CacheScope;

/// The compiled `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request-body bytes held in memory at once, over all requests; a large body that would
    /// go beyond it is refused with 503 (small bodies are always admitted).
    pub max_buffered_bytes: u64,
    /// Where tenant limits are kept, and the anonymous callers' limits.
    pub admission: super::tenancy::Admission,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_bytes: DEFAULT_MAX_BUFFERED,
            admission: Default::default(),
        }
    }
}

/// The compiled `cache:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
    pub idle: Option<Duration>,
    /// The L2 in Redis (`cache.shared`), if any.
    pub shared: Option<super::tenancy::SharedCacheSettings>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            idle: None,
            shared: None,
        }
    }
}

/// A route's compiled `cache:` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    pub ttl: Duration,
    pub scope: CacheScope,
}

pub struct Tier {
    pub name: String,
    /// `name` as a ready header value: responses carry it without re-validating it.
    pub header: HeaderValue,
    pub deadline: Duration,
    pub weight: f64,
    pub kinds: KindSet,
    pub on_slo_miss: OnSloMiss,
    pub timeout: Duration,
    /// Hedge after this many times the pool's service-time estimate (`None`: never).
    pub hedge_after: Option<f64>,
}

/// A set of pool kinds as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u8);

impl KindSet {
    pub fn insert(&mut self, kind: PoolKind) {
        self.0 |= kind_bit(kind);
    }
    pub fn contains(self, kind: PoolKind) -> bool {
        self.0 & kind_bit(kind) != 0
    }
}

fn kind_bit(kind: PoolKind) -> u8 {
    match kind {
        PoolKind::Edge => 1,
        PoolKind::Gpu => 2,
        PoolKind::Batch => 4,
    }
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Edge => "edge",
            PoolKind::Gpu => "gpu",
            PoolKind::Batch => "batch",
        }
    }
}

pub struct Tenant {
    pub name: String,
    pub tier: TierId,
    /// Rate, concurrency and spend limits (`None`: unlimited).
    pub limits: Option<super::tenancy::TenantLimits>,
}

pub struct Pool {
    pub name: String,
    pub header: HeaderValue,
    pub kind: PoolKind,
    pub region: RegionId,
    pub endpoints: Vec<Endpoint>,
    pub models: ModelSet,
    pub concurrency: u32,
    pub service_time: Duration,
    pub price: Price,
    pub state: Arc<PoolState>,
    /// A batch pool behind the queue: requests for it become jobs, and the dispatcher keeps
    /// it within `concurrency`, so routing does not treat it as full (see `endpoint_limit`).
    pub queue_fed: bool,
    /// Active health checks, when the policy asks for them.
    pub health: Option<HealthCheck>,
}

/// A pool's compiled `health:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Pool {
    /// Whether the pool takes gRPC requests (its endpoints name `grpc` addresses; compile
    /// makes that all or none, so the first one tells).
    pub fn serves_grpc(&self) -> bool {
        self.endpoints.first().is_some_and(|e| e.grpc.is_some())
    }

    /// The most requests one endpoint may have in flight: its share of `concurrency`.
    pub fn endpoint_limit(&self) -> u32 {
        if self.queue_fed {
            return u32::MAX;
        }
        let n = (self.endpoints.len() as u32).max(1);
        self.concurrency.div_ceil(n).max(1)
    }
}

pub struct Endpoint {
    /// As written in the policy (`ip:port`), or `host:port@ip` for one address of a host
    /// name (see `policy::resolve`); used in metrics, headers and live state.
    pub name: String,
    pub header: HeaderValue,
    pub addr: SocketAddr,
    /// The gRPC (h2c) address, when the policy names one.
    pub grpc: Option<SocketAddr>,
    pub state: Arc<EndpointState>,
    /// `host:port` as written: the `Host` of requests the gateway makes itself.
    pub authority: String,
    /// False for the placeholder of a host name that has never resolved: never up.
    pub resolved: bool,
}

/// The models a pool serves.
pub struct ModelSet {
    pub any: bool,
    pub names: HashSet<String>,
    /// The same names when there are few: comparing a handful of short strings is cheaper
    /// than hashing the model once per pool, and `decide` asks every pool.
    few: Vec<String>,
}

impl ModelSet {
    const FEW: usize = 8;

    pub fn new(any: bool, names: HashSet<String>) -> Self {
        let few = if names.len() <= Self::FEW {
            names.iter().cloned().collect()
        } else {
            Vec::new()
        };
        ModelSet { any, names, few }
    }

    pub fn serves(&self, model: &str) -> bool {
        self.any
            || if self.names.len() <= Self::FEW {
                self.few.iter().any(|m| m == model)
            } else {
                self.names.contains(model)
            }
    }
}

pub struct Route {
    pub name: String,
    pub matcher: PathMatch,
    pub protocol: Protocol,
    pub max_body: usize,
    pub tier: TierId,
    /// Present: the route's deterministic answers are cached.
    pub cache: Option<RouteCache>,
    /// 5xx answers and timeouts may be retried elsewhere.
    pub idempotent: bool,
}

pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// The compiled `queue:` section (see `policy::raw::Queue` for what each field means).
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub max_jobs: u64,
    pub max_attempts: u32,
    pub result_ttl: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_body: usize,
    pub lease: Duration,
    /// Lower-case host names / addresses, or `*.suffix` patterns.
    pub callback_allow: Vec<String>,
    /// Dispatch rules by pool name.
    pub pools: HashMap<String, PoolDispatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// A redb file (absolute, or relative to the policy file when written).
    Embedded {
        path: PathBuf,
    },
    Redis {
        url: String,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolDispatch {
    /// Daily UTC window in minutes after midnight, `[start, end)`; wraps if start > end.
    pub window: Option<(u32, u32)>,
    pub max_utilisation: f64,
}

impl PoolDispatch {
    /// Whether batch work may be sent at `minute_of_day` (UTC).
    pub fn open_at(&self, minute_of_day: u32) -> bool {
        match self.window {
            None => true,
            Some((a, b)) if a <= b => (a..b).contains(&minute_of_day),
            Some((a, b)) => minute_of_day >= a || minute_of_day < b,
        }
    }
}

impl QueueSettings {
    /// Whether a callback may go to `host` (already lower-case).
    pub fn callback_allowed(&self, host: &str) -> bool {
        self.callback_allow
            .iter()
            .any(|pat| match pat.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }
                None => pat == host,
            })
    }
}

pub struct Upstream {
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub down_backoff: Duration,
    /// Outlier ejection: when and for how long.
    pub ejection: Ejection,
    pub retry_budget: BudgetSettings,
    /// The shared bucket (from the `Fleet`: it survives reloads).
    pub budget: Arc<RetryBudget>,
    /// How often endpoint host names are looked up again (`policy::resolve`).
    pub resolve_every: Duration,
}

impl RoutingTable {
    /// The first route whose match fits `path` (query string already removed).
    pub fn match_route(&self, path: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| r.matcher.matches(path))
            .map(|i| i as RouteId)
    }

    pub fn tier_by_name(&self, name: &str) -> Option<TierId> {
        self.tier_by_name.get(name).copied()
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
        let key: [u8; 2] = iso.try_into().ok()?;
        self.country_region.get(&key).copied()
    }

    pub fn region_of_continent(&self, code: &[u8]) -> Option<RegionId> {
        let key: [u8; 2] = code.try_into().ok()?;
        self.continent_region.get(&key).copied()
    }

    pub fn rtt(&self, from: RegionId, to: RegionId) -> Duration {
        let n = self.regions.len();
        let ms = self
            .rtt_ms
            .get(from as usize * n + to as usize)
            .copied()
            .unwrap_or(0.0);
        Duration::from_secs_f64(ms / 1000.0)
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

fn compile_health(p: &mut Problems, pool: &str, node: &Spanned<raw::HealthCheck>) -> HealthCheck {
    let h = &node.value;
    let path = h
        .path
        .as_ref()
        .map_or("/healthz".to_string(), |n| n.value.clone());
    if !path.starts_with('/') {
        if let Some(n) = &h.path {
            p.on(n, format!("pool `{pool}`: health.path must start with `/`"));
        }
    }
    let dur = |p: &mut Problems, n: &Option<Spanned<String>>, what: &str, default: u64| match n {
        Some(n) => duration_field(p, n, what),
        None => Duration::from_millis(default),
    };
    let interval = dur(p, &h.interval, "health.interval", 1000);
    let timeout = dur(p, &h.timeout, "health.timeout", 500);
    if interval < Duration::from_millis(10) {
        p.on(
            node,
            format!("pool `{pool}`: health.interval must be at least 10ms"),
        );
    }
    let threshold = |p: &mut Problems, n: &Option<Spanned<u32>>, what: &str| match n {
        Some(n) if n.value == 0 => {
            p.on(
                n,
                format!("pool `{pool}`: health.{what} must be at least 1"),
            );
            1
        }
        Some(n) => n.value,
        None => 2,
    };
    HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold: threshold(p, &h.healthy_threshold, "healthy_threshold"),
        unhealthy_threshold: threshold(p, &h.unhealthy_threshold, "unhealthy_threshold"),
    }
}

fn compile_budget(p: &mut Problems, node: Option<&Spanned<raw::RetryBudget>>) -> BudgetSettings {
    let mut s = BudgetSettings::default();
    let Some(node) = node else { return s };
    if let Some(r) = &node.value.ratio {
        if (0.0..=1.0).contains(&r.value) {
            s.ratio = r.value;
        } else {
            p.on(r, "upstream.retry_budget.ratio: expected 0.0 to 1.0");
        }
    }
    if let Some(m) = &node.value.min_per_second {
        if m.value.is_finite() && (0.0..=1000.0).contains(&m.value) {
            s.min_per_second = m.value;
        } else {
            p.on(
                m,
                "upstream.retry_budget.min_per_second: expected 0 to 1000",
            );
        }
    }
    s
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

/// `listeners.admin_token`: expanded from the environment (an unset variable is an error
/// naming it, never showing a value); an admin listener off loopback without one is an
/// error, since reload, purge and the policy would be open to the network.
fn compile_admin_token(
    p: &mut Problems,
    listeners: &raw::Listeners,
    admin: SocketAddr,
) -> Option<super::secret::Secret> {
    let token = match &listeners.admin_token {
        Some(node) => match super::secret::expand(&node.value, |n| std::env::var(n).ok()) {
            Ok((secret, _)) => Some(secret),
            Err(message) => {
                p.on(node, format!("listeners.admin_token: {message}"));
                return None;
            }
        },
        None => None,
    };
    let parsed = listeners.admin.value.parse::<SocketAddr>().is_ok();
    if token.is_none() && parsed && !admin.ip().is_loopback() {
        p.on(
            &listeners.admin,
            format!(
                "listeners.admin `{admin}` is not on loopback: set `listeners.admin_token: \"${{SWITCHYARD_ADMIN_TOKEN}}\"` (or bind 127.0.0.1) so that reload, cache purge and the policy are not open to the network"
            ),
        );
    }
    token
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

fn socket_field(p: &mut Problems, node: &Spanned<String>, what: &str) -> SocketAddr {
    match node.value.parse() {
        Ok(a) => a,
        Err(_) => {
            p.on(
                node,
                format!(
                    "{what}: expected `ip:port` such as `127.0.0.1:9090`, found `{}`",
                    node.value
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}

/// Everything `compile` needs besides the policy text.
pub struct CompileContext<'a> {
    /// The file the policy came from: named in every error, and the base for relative paths.
    pub file: &'a Path,
    /// Live state to attach pools and endpoints to.
    pub fleet: &'a Fleet,
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
    let mut p = Problems {
        file: cx.file,
        list: Vec::new(),
    };

    let proxy_listener = socket_field(&mut p, &raw.listeners.proxy, "listeners.proxy");
    let admin_listener = socket_field(&mut p, &raw.listeners.admin, "listeners.admin");
    let admin_token = compile_admin_token(&mut p, &raw.listeners, admin_listener);

    let mut trusted_proxies = Vec::new();
    for cidr in &raw.trusted_proxies {
        let parsed = cidr
            .value
            .parse::<IpNet>()
            .or_else(|_| cidr.value.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => p.on(
                cidr,
                format!(
                    "trusted_proxies: expected a CIDR such as `10.0.0.0/8`, found `{}`",
                    cidr.value
                ),
            ),
        }
    }

    // Regions.
    let mut regions: Vec<String> = Vec::new();
    let mut country_region = HashMap::new();
    let mut continent_region = HashMap::new();
    for def in &raw.regions.map {
        let name = &def.value.name;
        if regions.contains(&name.value) {
            p.on(name, format!("duplicate region name `{}`", name.value));
            continue;
        }
        let id = regions.len() as RegionId;
        regions.push(name.value.clone());
        for (codes, table, what) in [
            (&def.value.countries, &mut country_region, "country"),
            (&def.value.continents, &mut continent_region, "continent"),
        ] {
            for code in codes {
                let key: Option<[u8; 2]> = code.value.as_bytes().try_into().ok();
                match key {
                    Some(k) if k.iter().all(u8::is_ascii_uppercase) => {
                        if let Some(other) = table.insert(k, id) {
                            p.on(
                                code,
                                format!(
                                    "{what} `{}` is in two regions: `{}` and `{}`",
                                    code.value, regions[other as usize], name.value
                                ),
                            );
                        }
                    }
                    _ => p.on(
                        code,
                        format!(
                            "expected a two-letter upper-case {what} code such as `DE` or `EU`, found `{}`",
                            code.value
                        ),
                    ),
                }
            }
        }
    }
    let region_id = |p: &mut Problems, node: &Spanned<String>, what: &str| -> RegionId {
        match regions.iter().position(|r| *r == node.value) {
            Some(i) => i as RegionId,
            None => {
                p.on(
                    node,
                    format!(
                        "{what}: unknown region `{}` (regions: {})",
                        node.value,
                        regions.join(", ")
                    ),
                );
                0
            }
        }
    };
    let default_region = region_id(&mut p, &raw.regions.default, "regions.default");
    let mut residency = Vec::with_capacity(regions.len());
    for def in &raw.regions.map {
        if regions.get(residency.len()) != Some(&def.value.name.value) {
            continue; // a duplicate region name, already reported
        }
        residency.push(def.value.residency.as_ref().map(|allowed| {
            if allowed.is_empty() {
                p.on(
                    &def.value.name,
                    format!(
                        "region `{}`: `residency: []` would refuse every request; omit it to allow any region",
                        def.value.name.value
                    ),
                );
            }
            allowed
                .iter()
                .map(|r| region_id(&mut p, r, "residency"))
                .collect::<Vec<_>>()
        }));
    }

    // RTT matrix: every unordered pair at least once, symmetric.
    let n = regions.len();
    let mut rtt_ms = vec![f64::NAN; n * n];
    for (from, row) in &raw.rtt_ms {
        for (to, ms) in row {
            let (Some(a), Some(b)) = (
                regions.iter().position(|r| r == from),
                regions.iter().position(|r| r == to),
            ) else {
                p.on(
                    ms,
                    format!("rtt_ms: unknown region in pair `{from}` → `{to}`"),
                );
                continue;
            };
            if !(ms.value.is_finite() && ms.value >= 0.0) {
                p.on(ms, "rtt_ms: expected a non-negative number of milliseconds");
                continue;
            }
            rtt_ms[a * n + b] = ms.value;
            if rtt_ms[b * n + a].is_nan() {
                rtt_ms[b * n + a] = ms.value;
            }
        }
    }
    let mut missing = Vec::new();
    for a in 0..n {
        for b in a..n {
            if rtt_ms[a * n + b].is_nan() {
                if a == b {
                    // A region's distance to itself defaults to zero.
                    rtt_ms[a * n + a] = 0.0;
                } else {
                    missing.push(format!("{} ↔ {}", regions[a], regions[b]));
                }
            }
        }
    }
    if !missing.is_empty() {
        p.at(
            &Location::UNKNOWN,
            format!("rtt_ms: missing pairs: {}", missing.join(", ")),
        );
    }

    // Tiers.
    let mut tiers = Vec::new();
    let mut tier_by_name = HashMap::new();
    for (name, tier) in &raw.tiers {
        let t = &tier.value;
        let deadline = duration_field(&mut p, &t.deadline, "deadline");
        if deadline.is_zero() && parse_duration(&t.deadline.value).is_some() {
            p.on(&t.deadline, "deadline must be greater than zero");
        }
        if !(0.0..=1.0).contains(&t.weight.value) {
            p.on(
                &t.weight,
                format!(
                    "weight: expected a number from 0.0 (cost only) to 1.0 (latency only), found {}",
                    t.weight.value
                ),
            );
        }
        let mut kinds = KindSet::default();
        for k in &t.pools {
            kinds.insert(k.value);
        }
        if t.pools.is_empty() {
            p.on(
                tier,
                format!("tier `{name}`: `pools` must name at least one pool kind"),
            );
        }
        let timeout = match &t.timeout {
            Some(node) => duration_field(&mut p, node, "timeout"),
            None => (deadline * 4).clamp(Duration::from_secs(5), Duration::from_secs(600)),
        };
        tier_by_name.insert(name.clone(), tiers.len() as TierId);
        tiers.push(Tier {
            header: header_value(name),
            name: name.clone(),
            deadline,
            weight: t.weight.value,
            kinds,
            on_slo_miss: t.on_slo_miss,
            timeout,
            hedge_after: t.hedge_after.as_ref().and_then(|h| {
                if h.value.is_finite() && (1.0..=100.0).contains(&h.value) {
                    Some(h.value)
                } else {
                    p.on(
                        h,
                        format!("tier `{name}`: hedge_after: expected 1.0 to 100"),
                    );
                    None
                }
            }),
        });
    }
    let tier_id = |p: &mut Problems, node: &Spanned<String>, what: &str| -> TierId {
        match tier_by_name.get(&node.value) {
            Some(id) => *id,
            None => {
                let mut names: Vec<&str> = tier_by_name.keys().map(String::as_str).collect();
                names.sort_unstable();
                p.on(
                    node,
                    format!(
                        "{what}: unknown tier `{}` (tiers: {})",
                        node.value,
                        names.join(", ")
                    ),
                );
                0
            }
        }
    };

    // Tenants.
    let mut tenants = Vec::new();
    let mut tenant_by_key = HashMap::new();
    let mut tenant_names = HashSet::new();
    for tenant in &raw.tenants {
        let t = &tenant.value;
        if !tenant_names.insert(t.name.value.clone()) {
            p.on(&t.name, format!("duplicate tenant name `{}`", t.name.value));
        }
        let tier = tier_id(&mut p, &t.tier, "tenant tier");
        let key = &t.key_sha256.value;
        match decode_sha256_hex(key) {
            Some(hash) => {
                if tenant_by_key
                    .insert(hash, tenants.len() as TenantId)
                    .is_some()
                {
                    p.on(&t.key_sha256, "two tenants have the same key_sha256");
                }
            }
            None => p.on(
                &t.key_sha256,
                "key_sha256: expected 64 lower-case hex characters (the SHA-256 of the API key, \
                 e.g. from `printf %s \"$KEY\" | sha256sum`)",
            ),
        }
        let mut found = super::tenancy::Found::default();
        let limits = t.limits.as_ref().map(|l| {
            let what = format!("tenant `{}`: limits", t.name.value);
            super::tenancy::compile_tenant_limits(&mut found, l, &what, &|n: &str| {
                tier_by_name.get(n).copied()
            })
        });
        for (loc, msg) in found.0 {
            p.at(&loc, msg);
        }
        tenants.push(Tenant {
            name: t.name.value.clone(),
            tier,
            limits,
        });
    }

    // Pools.
    let mut pools = Vec::new();
    let mut host_names = Vec::new();
    let mut pool_names = HashSet::new();
    for pool in &raw.pools {
        let r = &pool.value;
        let name = r.name.value.clone();
        if !pool_names.insert(name.clone()) {
            p.on(&r.name, format!("duplicate pool name `{name}`"));
        }
        let region = region_id(&mut p, &r.region, "pool region");
        if r.endpoints.is_empty() {
            p.on(pool, format!("pool `{name}`: `endpoints` is empty"));
        }
        if r.models.is_empty() {
            p.on(
                pool,
                format!("pool `{name}`: `models` is empty (use `*` to serve every model)"),
            );
        }
        if r.concurrency.value == 0 {
            p.on(
                &r.concurrency,
                format!("pool `{name}`: concurrency must be at least 1"),
            );
        }
        let service_time = duration_field(&mut p, &r.service_time, "service_time");
        let price_ok = |v: f64| v.is_finite() && v >= 0.0;
        if !price_ok(r.price.per_request) || !price_ok(r.price.per_gpu_hour) {
            p.on(
                pool,
                format!("pool `{name}`: prices must be non-negative numbers"),
            );
        }
        let health = r.health.as_ref().map(|h| compile_health(&mut p, &name, h));
        let state = cx.fleet.pool(&name, service_time);
        let mut endpoints = Vec::new();
        let mut seen = HashSet::new();
        for ep in &r.endpoints {
            let written = ep.value.http();
            if !seen.insert(written.to_string()) {
                p.on(
                    ep,
                    format!("duplicate endpoint `{written}` in pool `{name}`"),
                );
                continue;
            }
            // Every address of a host name is an endpoint; a name that does not resolve is
            // a down placeholder, not an error (`policy::resolve`).
            match super::resolve::endpoints(&name, &ep.value, cx.fleet) {
                Ok((found, resolution)) => {
                    endpoints.extend(found);
                    host_names.extend(resolution);
                }
                Err(why) => p.on(ep, format!("endpoint `{written}`: {why}")),
            }
        }
        // gRPC routing picks a pool, then any endpoint in it: all of them must take gRPC.
        let with_grpc = r
            .endpoints
            .iter()
            .filter(|e| e.value.grpc().is_some())
            .count();
        if with_grpc > 0 && with_grpc < r.endpoints.len() {
            p.on(
                pool,
                format!(
                    "pool `{name}`: either every endpoint names a `grpc` address or none does \
                     ({with_grpc} of {} do)",
                    r.endpoints.len()
                ),
            );
        }
        let any = r.models.iter().any(|m| m.value == "*");
        let names = r.models.iter().map(|m| m.value.clone()).collect();
        pools.push(Pool {
            header: header_value(&name),
            state,
            queue_fed: false,
            name,
            kind: r.kind,
            region,
            endpoints,
            models: ModelSet::new(any, names),
            concurrency: r.concurrency.value.max(1),
            service_time,
            price: r.price,
            health,
        });
    }
    for tier in &raw.tiers {
        let (name, t) = tier;
        if !pools
            .iter()
            .any(|pool| t.value.pools.iter().any(|k| k.value == pool.kind))
        {
            let kinds: Vec<&str> = t.value.pools.iter().map(|k| k.value.as_str()).collect();
            p.on(
                t,
                format!(
                    "tier `{name}` can use pool kinds [{}] but no pool has one of those kinds",
                    kinds.join(", ")
                ),
            );
        }
    }

    // Routes.
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for route in &raw.routes {
        let r = &route.value;
        if !route_names.insert(r.name.value.clone()) {
            p.on(&r.name, format!("duplicate route name `{}`", r.name.value));
        }
        let path = &r.path.value;
        let matcher = if !path.starts_with('/') {
            p.on(
                &r.path,
                format!("match: a path must start with `/`, found `{path}`"),
            );
            PathMatch::Exact(path.clone())
        } else if let Some(prefix) = path.strip_suffix('*') {
            PathMatch::Prefix(prefix.to_string())
        } else {
            PathMatch::Exact(path.clone())
        };
        let max_body = match &r.max_body {
            None => DEFAULT_MAX_BODY,
            Some(node) => match parse_size(&node.value) {
                Some(size) if size <= MAX_BODY_LIMIT => size,
                Some(_) => {
                    p.on(
                        node,
                        format!("max_body: at most {MAX_BODY_LIMIT} bytes (256MiB)"),
                    );
                    0
                }
                None => {
                    p.on(
                        node,
                        format!(
                            "max_body: expected a size such as `1MiB`, `64KiB` or `2048`, found `{}`",
                            node.value
                        ),
                    );
                    0
                }
            },
        };
        let tier = tier_id(&mut p, &r.tier, "route tier");
        let cache = r.cache.as_ref().map(|node| {
            let ttl = match &node.value.ttl {
                Some(t) => duration_field(&mut p, t, "cache.ttl"),
                None => Duration::from_secs(300),
            };
            if ttl.is_zero() && node.value.ttl.as_ref().is_some_and(|t| parse_duration(&t.value).is_some()) {
                p.on(
                    node,
                    format!(
                        "route `{}`: cache.ttl must be greater than zero (omit `cache:` to not cache)",
                        r.name.value
                    ),
                );
            }
            RouteCache {
                ttl,
                scope: node.value.scope,
            }
        });
        routes.push(Route {
            name: r.name.value.clone(),
            matcher,
            protocol: r.protocol,
            max_body,
            tier,
            cache,
            idempotent: r.idempotent,
        });
    }
    if routes.is_empty() {
        p.at(&Location::UNKNOWN, "routes: at least one route is required");
    }

    let down_backoff = match &raw.upstream.down_backoff {
        Some(node) => duration_field(&mut p, node, "upstream.down_backoff"),
        None => Duration::from_secs(5),
    };
    let shutdown_grace = match &raw.listeners.shutdown_grace {
        Some(node) => duration_field(&mut p, node, "listeners.shutdown_grace"),
        None => Duration::from_secs(5),
    };
    let upstream = Upstream {
        connect_timeout: match &raw.upstream.connect_timeout {
            Some(node) => duration_field(&mut p, node, "upstream.connect_timeout"),
            None => Duration::from_secs(1),
        },
        max_attempts: raw.upstream.max_attempts.clamp(1, 10),
        down_backoff,
        ejection: Ejection {
            after: match &raw.upstream.eject_after {
                Some(node) if node.value == 0 => {
                    p.on(node, "upstream.eject_after: at least 1");
                    1
                }
                Some(node) => node.value,
                None => 5,
            },
            base: down_backoff,
            max: match &raw.upstream.max_backoff {
                Some(node) => duration_field(&mut p, node, "upstream.max_backoff"),
                None => Duration::from_secs(60),
            },
        },
        retry_budget: compile_budget(&mut p, raw.upstream.retry_budget.as_ref()),
        budget: cx.fleet.retry_budget(),
        resolve_every: match &raw.upstream.resolve_every {
            Some(node) => {
                let d = duration_field(&mut p, node, "upstream.resolve_every");
                if parse_duration(&node.value).is_some_and(|d| d < Duration::from_secs(1)) {
                    p.on(node, "upstream.resolve_every: at least `1s`");
                }
                d
            }
            None => super::resolve::DEFAULT_RESOLVE_EVERY,
        },
    };

    let queue = raw
        .queue
        .as_ref()
        .map(|q| compile_queue(&mut p, q, &pools, cx.file));
    if queue.is_some() {
        for pool in pools.iter_mut().filter(|pool| pool.kind == PoolKind::Batch) {
            pool.queue_fed = true;
        }
    }
    for (name, tier) in &raw.tiers {
        if tier.value.on_slo_miss == OnSloMiss::Queue && queue.is_none() {
            p.on(
                tier,
                format!("tier `{name}`: `on_slo_miss: queue` needs a `queue:` section"),
            );
        }
    }

    let cache = raw
        .cache
        .as_ref()
        .map(|c| compile_cache(&mut p, c))
        .unwrap_or_default();
    let mut limits = raw
        .limits
        .as_ref()
        .map(|l| compile_limits(&mut p, l))
        .unwrap_or_default();
    let access_log = compile_access_log(&mut p, raw.observe.as_ref(), cx.file);
    let decision_log = compile_decision_log(&mut p, raw.observe.as_ref(), cx.file);
    if let Some(l) = &raw.limits {
        let mut found = super::tenancy::Found::default();
        limits.admission = super::tenancy::compile_admission(&mut found, l, &|n: &str| {
            tier_by_name.get(n).copied()
        });
        for (loc, msg) in found.0 {
            p.at(&loc, msg);
        }
    }
    let mut model_versions = HashMap::new();
    for (model, def) in &raw.models {
        let version = def.value.version.value.trim();
        if version.is_empty() {
            p.on(
                &def.value.version,
                format!("models.{model}.version: must not be empty"),
            );
        }
        if !pools.iter().any(|pool| pool.models.serves(model)) {
            p.on(def, format!("models: no pool serves model `{model}`"));
        }
        model_versions.insert(model.clone(), version.to_string());
    }

    // The GeoIP database is opened last so that a policy with typos is reported in full even
    // when the database path is also wrong.
    let geo = match &raw.geoip.database {
        None => GeoDb::embedded().map_err(|e| {
            p.at(&Location::UNKNOWN, format!("geoip: {e}"));
        }),
        Some(node) if node.value == "embedded" => GeoDb::embedded().map_err(|e| {
            p.on(node, format!("geoip.database: {e}"));
        }),
        Some(node) => {
            let path = cx
                .file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(&node.value);
            GeoDb::open(&path).map_err(|e| {
                p.on(node, format!("geoip.database: {e}"));
            })
        }
    };

    if !p.list.is_empty() {
        return Err(PolicyErrors(p.list));
    }
    let geo = match geo {
        Ok(g) => g,
        Err(()) => return Err(PolicyErrors(p.list)),
    };
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(RoutingTable {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        version_header: header_value(&version),
        region_headers: regions.iter().map(|r| header_value(r)).collect(),
        version,
        source: cx.file.to_path_buf(),
        loaded_at: SystemTime::now(),
        proxy_listener,
        admin_listener,
        admin_token,
        threads: raw.listeners.threads,
        shutdown_grace,
        trusted_proxies,
        geo: Arc::new(geo),
        regions,
        default_region,
        country_region,
        continent_region,
        rtt_ms,
        residency,
        tiers,
        tier_by_name,
        tenants,
        tenant_keys: tenant_by_key.into_iter().collect(),
        auth: raw.auth,
        pools,
        routes,
        upstream,
        queue,
        cache,
        limits,
        access_log,
        decision_log,
        model_versions,
        text: Arc::from(""),
        host_names,
    })
}

/// The `observe:` section's access log.
fn compile_access_log(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
    file: &Path,
) -> (crate::observe::LogTarget, crate::observe::LogFormat) {
    use crate::observe::LogTarget;
    let Some(node) = node else {
        return (LogTarget::Default, Default::default());
    };
    let format = node.value.access_log_format.unwrap_or_default();
    let target = match node.value.access_log.as_ref() {
        None => LogTarget::Default,
        Some(t) => match t.value.trim() {
            "stderr" => LogTarget::Stderr,
            "stdout" => LogTarget::Stdout,
            "off" => LogTarget::Off,
            "" => {
                p.on(
                    t,
                    "observe.access_log: expected stderr, stdout, off or a file path".to_string(),
                );
                LogTarget::Stderr
            }
            path => LogTarget::File(file.parent().unwrap_or_else(|| Path::new(".")).join(path)),
        },
    };
    (target, format)
}

/// The `observe:` section's decision log.
fn compile_decision_log(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
    file: &Path,
) -> Option<(PathBuf, u64)> {
    let o = &node?.value;
    let max = match &o.decision_log_max {
        None => crate::observe::decision::DEFAULT_MAX_BYTES,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s >= 4096 => s as u64,
            _ => {
                p.on(
                    n,
                    "observe.decision_log_max: expected a size of at least 4KiB, e.g. 64MiB"
                        .to_string(),
                );
                crate::observe::decision::DEFAULT_MAX_BYTES
            }
        },
    };
    let path = o.decision_log.as_ref()?;
    if path.value.trim().is_empty() {
        p.on(
            path,
            "observe.decision_log: expected a file path".to_string(),
        );
        return None;
    }
    Some((
        file.parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path.value.trim()),
        max,
    ))
}

/// The `limits:` section.
fn compile_limits(p: &mut Problems, node: &Spanned<raw::Limits>) -> Limits {
    let mut limits = Limits::default();
    if let Some(n) = &node.value.max_buffered_bytes {
        match parse_size(&n.value) {
            Some(s) if (INSPECT_LIMIT..=MAX_CACHE_BYTES).contains(&s) => {
                limits.max_buffered_bytes = s as u64
            }
            _ => p.on(
                n,
                format!(
                    "limits.max_buffered_bytes: expected a size from 64KiB to 64GiB such as `512MiB`, found `{}`",
                    n.value
                ),
            ),
        }
    }
    limits
}

fn compile_cache(p: &mut Problems, node: &Spanned<raw::CacheSection>) -> CacheSettings {
    let c = &node.value;
    let defaults = CacheSettings::default();
    let size = |p: &mut Problems, f: &Option<Spanned<String>>, what: &str, default: usize| {
        let Some(n) = f else { return default };
        match parse_size(&n.value) {
            Some(s) if s > 0 && s <= MAX_CACHE_BYTES => s,
            _ => {
                p.on(
                    n,
                    format!(
                        "cache.{what}: expected a size from 1 byte to 64GiB such as `256MiB`, found `{}`",
                        n.value
                    ),
                );
                default
            }
        }
    };
    let max_bytes = size(p, &c.max_bytes, "max_bytes", defaults.max_bytes as usize);
    let max_entry_bytes = size(
        p,
        &c.max_entry_bytes,
        "max_entry_bytes",
        defaults.max_entry_bytes.min(max_bytes),
    );
    if max_entry_bytes > max_bytes || max_entry_bytes > MAX_BODY_LIMIT {
        if let Some(n) = &c.max_entry_bytes {
            p.on(
                n,
                format!(
                    "cache.max_entry_bytes: at most cache.max_bytes ({max_bytes}) and {MAX_BODY_LIMIT} bytes"
                ),
            );
        }
    }
    let idle = c.idle.as_ref().map(|n| {
        let d = duration_field(p, n, "cache.idle");
        if d.is_zero() && parse_duration(&n.value).is_some() {
            p.on(
                n,
                "cache.idle must be greater than zero (omit it for no idle timeout)",
            );
        }
        d
    });
    CacheSettings {
        max_bytes: max_bytes as u64,
        max_entry_bytes: max_entry_bytes.min(MAX_BODY_LIMIT),
        idle,
        shared: c.shared.as_ref().map(|n| {
            let mut found = super::tenancy::Found::default();
            let shared = super::tenancy::compile_shared_cache(&mut found, n);
            for (loc, msg) in found.0 {
                p.at(&loc, msg);
            }
            shared
        }),
    }
}

fn compile_queue(
    p: &mut Problems,
    node: &Spanned<raw::Queue>,
    pools: &[Pool],
    file: &Path,
) -> QueueSettings {
    let q = &node.value;
    let dur = |p: &mut Problems, f: &Option<Spanned<String>>, what: &str, default: Duration| match f
    {
        Some(n) => duration_field(p, n, what),
        None => default,
    };
    let backend = match q.backend {
        raw::QueueBackend::Embedded => {
            if let Some(url) = &q.redis_url {
                p.on(url, "queue.redis_url: only used with `backend: redis`");
            }
            let written = q
                .path
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "switchyard-queue.redb".into());
            let path = Path::new(&written);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                file.parent().unwrap_or_else(|| Path::new(".")).join(path)
            };
            QueueBackend::Embedded { path }
        }
        raw::QueueBackend::Redis => {
            let url = match &q.redis_url {
                Some(n) if n.value.starts_with("redis://") => n.value.clone(),
                Some(n) => {
                    p.on(
                        n,
                        format!(
                            "queue.redis_url: expected `redis://host:port[/db]`, found `{}`",
                            n.value
                        ),
                    );
                    String::new()
                }
                None => {
                    p.on(node, "queue: `backend: redis` needs `redis_url`");
                    String::new()
                }
            };
            let prefix = q
                .redis_prefix
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "switchyard".into());
            QueueBackend::Redis { url, prefix }
        }
    };
    if q.max_jobs.value == 0 {
        p.on(&q.max_jobs, "queue.max_jobs must be at least 1");
    }
    if q.max_attempts.value == 0 || q.max_attempts.value > 100 {
        p.on(&q.max_attempts, "queue.max_attempts: expected 1 to 100");
    }
    let result_ttl = dur(
        p,
        &q.result_ttl,
        "queue.result_ttl",
        Duration::from_secs(24 * 3600),
    );
    let backoff_base = dur(
        p,
        &q.backoff.base,
        "queue.backoff.base",
        Duration::from_millis(500),
    );
    let backoff_max = dur(
        p,
        &q.backoff.max,
        "queue.backoff.max",
        Duration::from_secs(30),
    );
    if backoff_max < backoff_base {
        if let Some(n) = &q.backoff.max {
            p.on(n, "queue.backoff.max must not be below queue.backoff.base");
        }
    }
    let lease = dur(p, &q.lease, "queue.lease", Duration::from_secs(300));
    let max_body = match &q.max_body {
        None => 1024 * 1024,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s > 0 && s <= MAX_BODY_LIMIT => s,
            _ => {
                p.on(n, format!("queue.max_body: expected a size up to {MAX_BODY_LIMIT} bytes such as `1MiB`, found `{}`", n.value));
                0
            }
        },
    };
    let mut callback_allow = Vec::new();
    for host in &q.callback_allow {
        let h = host.value.trim().to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        if bare.is_empty()
            || (bare.contains(['/', ':', '*', ' ']) && bare.parse::<std::net::IpAddr>().is_err())
        {
            p.on(host, format!("queue.callback_allow: expected a host name, an address or `*.domain`, found `{}`", host.value));
            continue;
        }
        callback_allow.push(h);
    }
    let mut dispatch = HashMap::new();
    for (name, rule) in &q.pools {
        if !pools.iter().any(|pool| &pool.name == name) {
            p.on(rule, format!("queue.pools: unknown pool `{name}`"));
        }
        let window = rule.value.window.as_ref().and_then(|w| {
            let parsed = parse_window(&w.value);
            if parsed.is_none() {
                p.on(
                    w,
                    format!(
                        "queue.pools.{name}.window: expected `HH:MM-HH:MM` (UTC), found `{}`",
                        w.value
                    ),
                );
            }
            parsed
        });
        let max_utilisation = match &rule.value.max_utilisation {
            Some(u) if (0.0..=1.0).contains(&u.value) && u.value > 0.0 => u.value,
            Some(u) => {
                p.on(u, format!("queue.pools.{name}.max_utilisation: expected a fraction in (0, 1], found {}", u.value));
                1.0
            }
            None => 1.0,
        };
        dispatch.insert(
            name.clone(),
            PoolDispatch {
                window,
                max_utilisation,
            },
        );
    }
    QueueSettings {
        backend,
        max_jobs: q.max_jobs.value.max(1),
        max_attempts: q.max_attempts.value.clamp(1, 100),
        result_ttl,
        backoff_base,
        backoff_max,
        max_body,
        lease,
        callback_allow,
        pools: dispatch,
    }
}

/// `HH:MM-HH:MM` → minutes after midnight.
fn parse_window(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once('-')?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = (minutes(a)?, minutes(b)?);
    (a != b).then_some((a, b))
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = hex_digit(pair[0])?;
        let lo = hex_digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let fleet = crate::route::state::Fleet::default();
        compile_str(
            &text,
            &CompileContext {
                file: std::path::Path::new("t.yaml"),
                fleet: &fleet,
            },
        )
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

    #[test]
    fn sha256_hex() {
        let hex = "a".repeat(64);
        assert_eq!(decode_sha256_hex(&hex), Some([0xaa; 32]));
        assert_eq!(decode_sha256_hex(&"A".repeat(64)), None);
        assert_eq!(decode_sha256_hex("abc"), None);
    }
}
