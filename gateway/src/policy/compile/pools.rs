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
    pub service_time: Duration,
    /// How the pool is billed, and its prices (`policy::compile::pricing`).
    pub pricing: Pricing,
    /// A batch pool behind the queue: requests for it become jobs, and the dispatcher keeps
    /// it within `concurrency`, so routing does not treat it as full (see `endpoint_limit`).
    pub queue_fed: bool,
    /// Active health checks, when the policy asks for them.
    pub health: Option<HealthCheck>,
    /// Upstream TLS and request rewriting for hosted endpoints (`policy::hosted`).
    pub hosted: crate::policy::hosted::Hosted,
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
            service_time,
            pricing,
            health,
            hosted,
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
