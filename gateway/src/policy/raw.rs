//! The policy exactly as the operator writes it in YAML.
//!
//! These types mirror the file one to one: serde derives, unknown fields denied, defaults
//! documented on the field. Nothing here is resolved or checked beyond its YAML shape; the
//! semantic checks and the runtime form live in `compile.rs`. Fields that other fields refer
//! to (names) and fields that refer to them are [`Spanned`] so that a semantic error can
//! still point at the line and column the operator has to fix.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Listener addresses. Default: proxy on 0.0.0.0:8080, admin on 127.0.0.1:9090.
    #[serde(default)]
    pub listeners: Listeners,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs). Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Where the MaxMind (MMDB) country database is.
    #[serde(default)]
    pub geoip: GeoIp,
    /// Region names and which countries / continents belong to each.
    pub regions: Regions,
    /// Round-trip time in milliseconds between regions: `rtt_ms[from][to]`. Each unordered
    /// pair must be given at least once; the matrix is taken as symmetric.
    pub rtt_ms: BTreeMap<String, BTreeMap<String, Spanned<f64>>>,
    /// SLO tiers by name.
    pub tiers: BTreeMap<String, Spanned<Tier>>,
    /// API keys (as SHA-256 hex only) and the tier each tenant gets.
    #[serde(default)]
    pub tenants: Vec<Spanned<Tenant>>,
    /// The backend pools.
    pub pools: Vec<Spanned<Pool>>,
    /// Request routes, matched in order: the first whose `match` fits the path wins.
    pub routes: Vec<Spanned<Route>>,
    /// Upstream behaviour shared by all pools.
    #[serde(default)]
    pub upstream: Upstream,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// The proxy listener (HTTP/1.1 and h2c). Default `0.0.0.0:8080`.
    #[serde(default = "default_proxy_listener")]
    pub proxy: Spanned<String>,
    /// The admin listener (metrics, health, explain). Default `127.0.0.1:9090`.
    #[serde(default = "default_admin_listener")]
    pub admin: Spanned<String>,
    /// Worker threads for the proxy. Default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            proxy: default_proxy_listener(),
            admin: default_admin_listener(),
            threads: None,
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
#[serde(deny_unknown_fields)]
pub struct GeoIp {
    /// Path to an MMDB country database, relative to the policy file. `embedded` (the
    /// default) uses the small test database compiled into the binary.
    #[serde(default)]
    pub database: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regions {
    /// The region of clients whose address is private, unknown or unmapped.
    pub default: Spanned<String>,
    /// Region definitions. A country match wins over a continent match.
    pub map: Vec<Spanned<RegionDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDef {
    pub name: Spanned<String>,
    /// ISO 3166-1 alpha-2 country codes, e.g. `DE`.
    #[serde(default)]
    pub countries: Vec<Spanned<String>>,
    /// Continent codes as in GeoIP: AF, AN, AS, EU, NA, OC, SA.
    #[serde(default)]
    pub continents: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// End-to-end latency objective, e.g. `150ms`, `2s`, `1h`.
    pub deadline: Spanned<String>,
    /// 0.0 = cost only … 1.0 = latency only, among candidates that meet the deadline.
    #[serde(default = "default_weight")]
    pub weight: Spanned<f64>,
    /// Pool kinds this tier may use (`edge`, `gpu`, `batch`).
    pub pools: Vec<Spanned<PoolKind>>,
    /// What to do when no candidate is estimated to meet the deadline.
    #[serde(default)]
    pub on_slo_miss: OnSloMiss,
    /// How long to wait for an upstream answer before 504. Default: the larger of 4×
    /// deadline and 5s, at most 10m.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

fn default_weight() -> Spanned<f64> {
    unspanned(0.5)
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSloMiss {
    /// Send it to the candidate with the lowest latency estimate anyway.
    #[default]
    Fastest,
    /// Refuse with 503 and `Retry-After`.
    Shed,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Edge,
    Gpu,
    Batch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: Spanned<String>,
    /// SHA-256 of the API key, lower-case hex. Keys themselves never appear in a policy.
    pub key_sha256: Spanned<String>,
    /// The tier this tenant's requests get.
    pub tier: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: Spanned<String>,
    pub kind: PoolKind,
    pub region: Spanned<String>,
    /// `host:port` of each endpoint (plain HTTP/1.1).
    pub endpoints: Vec<Spanned<String>>,
    /// Model names served; `*` serves every model.
    pub models: Vec<Spanned<String>>,
    /// Requests in flight the whole pool is sized for.
    pub concurrency: Spanned<u32>,
    /// Expected service time before any is measured, e.g. `40ms`.
    pub service_time: Spanned<String>,
    #[serde(default)]
    pub price: Price,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per request.
    #[serde(default)]
    pub per_request: f64,
    /// USD per GPU-hour, charged for the expected service time.
    #[serde(default)]
    pub per_gpu_hour: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Spanned<String>,
    /// Path to match: exact, or a prefix when it ends in `*` (`/v2/models/*`).
    #[serde(rename = "match")]
    pub path: Spanned<String>,
    /// How to find the model: `openai` (JSON body field `model`), `oip-v2`
    /// (`/v2/models/{m}[/versions/{v}]/infer`), `tf-serving` (`/v1/models/{m}[/versions/{v}]:predict`).
    pub protocol: Protocol,
    /// Largest request body accepted, e.g. `1MiB`. Default 1MiB.
    #[serde(default)]
    pub max_body: Option<Spanned<String>>,
    /// Tier for requests that name none (no tenant key, no `x-slo-tier`).
    pub tier: Spanned<String>,
    /// Whether responses on this route may be cached. Default true.
    #[serde(default = "default_true")]
    pub cacheable: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "oip-v2")]
    OipV2,
    #[serde(rename = "tf-serving")]
    TfServing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// TCP connect timeout per attempt. Default `1s`.
    #[serde(default)]
    pub connect_timeout: Option<Spanned<String>>,
    /// Most attempts per request (first try + retries on connect failure). Default 3.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// How long an endpoint that failed to connect is skipped. Default `5s`.
    #[serde(default)]
    pub down_backoff: Option<Spanned<String>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout: None,
            max_attempts: default_attempts(),
            down_backoff: None,
        }
    }
}

fn default_attempts() -> u32 {
    3
}
