//! The `pools:` and `models:` sections: pools with their endpoints (host names resolved by
//! `policy::resolve`), models, capacity, prices, health checks and hosted-API settings
//! (`policy::hosted`), and the declared model versions.

use super::pricing::{Billing, Pricing};
use super::regions::Regions;
use super::{duration_field, header_value, CompileContext, Problems, RegionId};
use crate::policy::raw::{self, PoolKind};
use crate::policy::resolve::NameResolution;
use http::HeaderValue;
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Pool {
    pub name: String,
    pub header: HeaderValue,
    pub kind: PoolKind,
    pub region: RegionId,
    pub endpoints: Vec<Endpoint>,
    pub models: ModelSet,
    pub concurrency: u32,
    /// `√(2(c+1)) − 1` for `c` = `concurrency`: the exponent of the pool's multi-server
    /// waiting time (`route::estimate_at`), taken once here rather than per decision.
    pub wait_exponent: f64,
    pub service_time: Duration,
    /// How the pool is billed, and its prices (`policy::compile::pricing`).
    pub pricing: Pricing,
    /// A batch pool behind the queue: requests for it become jobs, and the dispatcher keeps
    /// it within `concurrency`, so routing does not treat it as full (see `endpoint_limit`).
    pub queue_fed: bool,
    /// Active health checks, when the policy asks for them.
    pub health: Option<HealthCheck>,
    /// Scraping of the endpoints' own load, when the policy asks for it.
    pub server_metrics: Option<ServerMetrics>,
    /// Prefix / session affinity, when the policy asks for it.
    pub affinity: Option<Affinity>,
    /// Upstream TLS and request rewriting for hosted endpoints (`policy::hosted`).
    pub hosted: crate::policy::hosted::Hosted,
    /// `capacity:` (`policy::compile::capacity`); `None`: desired replicas not computed.
    pub capacity: Option<super::Capacity>,
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

/// A pool's compiled `affinity:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub prefix: bool,
    /// Lower-case, as `http` names headers.
    pub session_header: Option<http::HeaderName>,
    pub load_factor: f64,
}

/// A pool's compiled `server_metrics:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerMetrics {
    pub path: String,
    pub interval: Duration,
    pub max_age: Duration,
    pub waiting: String,
    pub running: String,
    pub kv_cache: String,
    pub max_waiting: Option<u32>,
    pub max_kv_cache: Option<f64>,
}

impl Pool {
    /// Whether the pool takes gRPC requests (its endpoints name `grpc` addresses; compile
    /// makes that all or none, so the first one tells).
    pub fn serves_grpc(&self) -> bool {
        self.endpoints.first().is_some_and(|e| e.grpc.is_some())
    }

    /// The replicas a provisioned pool pays for: as written, else its endpoints (as
    /// resolved); `None` for a pool billed per use.
    pub fn replicas(&self) -> Option<u32> {
        match self.pricing.billing {
            Billing::Provisioned { replicas, .. } => {
                Some(replicas.unwrap_or(self.endpoints.len().max(1) as u32))
            }
            _ => None,
        }
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
    /// name (see `policy::resolve`); used in metrics, headers and to find its live state.
    pub name: String,
    pub header: HeaderValue,
    pub addr: SocketAddr,
    /// The gRPC (h2c) address, when the policy names one.
    pub grpc: Option<SocketAddr>,
    /// `host:port` as written: the `Host` of requests the gateway makes itself.
    pub authority: String,
    /// False for the placeholder of a host name that has never resolved: never up.
    pub resolved: bool,
    /// `https://` endpoints: the host name for SNI and the certificate check.
    pub sni: Option<String>,
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

/// `pools:`, and what each endpoint host name resolved to, in policy order.
pub(super) fn compile(
    p: &mut Problems,
    raw: &raw::Policy,
    regions: &Regions,
    cx: &CompileContext,
) -> (Vec<Pool>, Vec<NameResolution>) {
    let mut pools = Vec::new();
    let mut host_names = Vec::new();
    let mut pool_names = HashSet::new();
    for pool in &raw.pools {
        let r = &pool.value;
        let name = r.name.value.clone();
        if !pool_names.insert(name.clone()) {
            p.on(&r.name, format!("duplicate pool name `{name}`"));
        }
        let region = regions.id(p, &r.region, "pool region");
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
        let service_time = duration_field(p, &r.service_time, "service_time");
        let pricing = super::pricing::compile(p, &name, pool, &r.price, r.kind == PoolKind::Batch);
        let health = r.health.as_ref().map(|h| compile_health(p, &name, h));
        let server_metrics = r
            .server_metrics
            .as_ref()
            .map(|m| compile_server_metrics(p, &name, m));
        let affinity = r.affinity.as_ref().map(|a| compile_affinity(p, &name, a));
        let hosted = crate::policy::hosted::compile(
            &name,
            r,
            cx.file,
            &|n| std::env::var(n).ok(),
            &mut |loc, m| p.at(loc, m),
        );
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
            match crate::policy::resolve::endpoints(&ep.value) {
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
        if let (Some(h), true) = (&r.health, endpoints.iter().any(|e| e.sni.is_some())) {
            // The health checker (`route::health`) probes over plain HTTP only.
            p.on(h, format!("pool `{name}`: `health` checks plain HTTP only; not supported with https:// endpoints (passive ejection still applies)"));
        }
        let any = r.models.iter().any(|m| m.value == "*");
        let names = r.models.iter().map(|m| m.value.clone()).collect();
        pools.push(Pool {
            header: header_value(&name),
            queue_fed: false,
            name,
            kind: r.kind,
            region,
            endpoints,
            models: ModelSet::new(any, names),
            concurrency: r.concurrency.value.max(1),
            wait_exponent: (2.0 * (f64::from(r.concurrency.value.max(1)) + 1.0)).sqrt() - 1.0,
            service_time,
            pricing,
            health,
            server_metrics,
            affinity,
            hosted,
            capacity: None,
        });
    }
    (pools, host_names)
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

fn compile_affinity(p: &mut Problems, pool: &str, node: &Spanned<raw::Affinity>) -> Affinity {
    let a = &node.value;
    let session_header = a.session_header.as_ref().and_then(|n| {
        let parsed = http::HeaderName::from_bytes(n.value.as_bytes()).ok();
        if parsed.is_none() {
            p.on(
                n,
                format!("pool `{pool}`: affinity.session_header is not a header name"),
            );
        }
        parsed
    });
    let load_factor = a.load_factor.as_ref().map_or(1.25, |n| {
        if !(n.value >= 1.0 && n.value.is_finite()) {
            p.on(
                n,
                format!("pool `{pool}`: affinity.load_factor must be at least 1"),
            );
        }
        n.value.max(1.0)
    });
    Affinity {
        prefix: a.prefix.as_ref().is_none_or(|n| n.value),
        session_header,
        load_factor,
    }
}

fn compile_server_metrics(
    p: &mut Problems,
    pool: &str,
    node: &Spanned<raw::ServerMetrics>,
) -> ServerMetrics {
    let m = &node.value;
    let path = m
        .path
        .as_ref()
        .map_or("/metrics".to_string(), |n| n.value.clone());
    if !path.starts_with('/') {
        if let Some(n) = &m.path {
            p.on(
                n,
                format!("pool `{pool}`: server_metrics.path must start with `/`"),
            );
        }
    }
    let interval = match &m.interval {
        Some(n) => duration_field(p, n, "server_metrics.interval"),
        None => Duration::from_millis(200),
    };
    if interval < Duration::from_millis(10) {
        p.on(
            node,
            format!("pool `{pool}`: server_metrics.interval must be at least 10ms"),
        );
    }
    let max_age = match &m.max_age {
        Some(n) => duration_field(p, n, "server_metrics.max_age"),
        None => interval * 5,
    };
    let name = |n: &Option<Spanned<String>>, default: &str| {
        n.as_ref().map_or(default.to_string(), |n| n.value.clone())
    };
    let max_kv_cache = m.max_kv_cache.as_ref().map(|n| {
        if !(0.0..=1.0).contains(&n.value) {
            p.on(
                n,
                format!("pool `{pool}`: server_metrics.max_kv_cache is a fraction, 0 to 1"),
            );
        }
        n.value
    });
    ServerMetrics {
        path,
        interval,
        max_age,
        waiting: name(&m.waiting, "vllm:num_requests_waiting"),
        running: name(&m.running, "vllm:num_requests_running"),
        kv_cache: name(&m.kv_cache, "vllm:kv_cache_usage_perc"),
        max_waiting: m.max_waiting.as_ref().map(|n| n.value),
        max_kv_cache,
    }
}
