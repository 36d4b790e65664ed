//! The `routes:` section: path matchers, protocols, body limits, tiers and per-route
//! caching.

use super::tiers::Tiers;
use super::{
    duration_field, parse_duration, parse_size, CacheScope, Problems, TierId, DEFAULT_MAX_BODY,
    MAX_BODY_LIMIT,
};
use crate::policy::raw::{self, Protocol};
use serde_saphyr::Location;
use std::collections::HashSet;
use std::time::Duration;

/// A route's compiled `cache:` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    pub ttl: Duration,
    pub scope: CacheScope,
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
    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// `routes:`; tier names resolve against `tiers`.
pub(super) fn compile(p: &mut Problems, raw: &raw::Policy, tiers: &Tiers) -> Vec<Route> {
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
        let tier = tiers.id(p, &r.tier, "route tier");
        let cache = r.cache.as_ref().map(|node| {
            let ttl = match &node.value.ttl {
                Some(t) => duration_field(p, t, "cache.ttl"),
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
    routes
}
