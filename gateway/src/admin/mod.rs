//! The admin listener: Prometheus metrics, health and readiness, the serving policy, policy
//! reload, and `explain` — a dry run of classification and routing for a described request.
//!
//! It listens apart from the proxy (loopback by default) and never sits on the request path.
//! Gauges that describe live state (in-flight, service-time estimates, endpoint up/down) are
//! computed here when Prometheus scrapes, instead of being updated on every request.

use crate::classify::{self, RequestFacts};
use crate::policy;
use crate::policy::compile::PoolId;
use crate::route::{self, CandidateReport};
use crate::serving::state::{now_ms, EndpointState};
use crate::serving::Serving;
use crate::telemetry as t;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

mod cache;
pub mod ready;
pub mod status;
mod tenants;

/// Largest admin request body (explain requests carry a sample body).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

pub use crate::serving::control::ControlPlane;

pub struct AdminApp {
    pub control: Arc<ControlPlane>,
    pub metrics: PrometheusHandle,
    /// The prediction cache, for purges and its gauges.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// The proxy's request-body budget, for its gauge.
    pub bodies: Option<Arc<crate::pipeline::body::BodyBudget>>,
    /// Whether the proxy listener is this process's (`/readyz`).
    pub readiness: Arc<ready::Readiness>,
    /// Tenant limit state, for `/admin/tenants` and the spend gauges.
    pub limiter: Option<Arc<crate::admit::Limiter>>,
    /// Where capacity demand comes from (Redis or local), for `/admin/capacity`.
    pub demand: Option<Arc<crate::capacity::shared::SharedDemand>>,
    /// Shadow traffic counters, for `/admin/rollouts`.
    pub shadows: Option<Arc<crate::upstream::shadow::Shadows>>,
    /// Rollouts' state, for `/admin/rollouts` and its commands.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        &json!({"error": {"type": status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"), "message": message, "status": status.as_u16()}}),
    )
}

async fn read_body(session: &mut ServerSession) -> Result<Bytes, Response<Vec<u8>>> {
    let mut buf = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "admin request body too large",
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
        }
    }
}

/// Admin paths open without `listeners.admin_token`: probes, the Prometheus scrape, and the
/// static status page (it carries no data, and sends the token itself when opened as
/// `/#token=…`; its data comes from `/admin/status`, which needs the token).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/"];

/// `None` when the request may proceed; otherwise the 401 to answer. The token is read from
/// the serving snapshot, so a reload can set, rotate or remove it.
fn authorize(
    table: &policy::RoutingTable,
    session: &ServerSession,
    path: &str,
) -> Option<Response<Vec<u8>>> {
    let token = table.admin_token.as_ref()?;
    if OPEN_PATHS.contains(&path) {
        return None;
    }
    let offered = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    if offered.is_some_and(|t| token.matches(t)) {
        return None;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint needs `Authorization: Bearer <listeners.admin_token>`",
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchyard-admin\""),
    );
    Some(resp)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if let Some(denied) = authorize(&self.control.snapshot.load(), session, &path) {
            return denied;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                if let Some(cache) = &self.cache {
                    // Run the cache's pending bookkeeping so its gauges are exact.
                    cache.settle().await;
                }
                self.refresh_gauges();
                if let Some(limiter) = &self.limiter {
                    tenants::refresh_gauges(limiter, &self.control.snapshot.load_full()).await;
                }
                let text = self.metrics.render().into_bytes();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", text.len())
                    .body(text)
                    .unwrap_or_else(|_| Response::new(Vec::new()))
            }
            (&Method::GET, "/") => status::page(),
            (&Method::GET, "/admin/status") => json_response(
                StatusCode::OK,
                &status::status(&self.control, self.cache.as_deref()),
            ),
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (&Method::GET, "/readyz") if !self.readiness.proxy_is_ours().await => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": format!(
                    "the proxy listener {} is not answering as this gateway (not bound yet, or the address belongs to another process)",
                    self.readiness.proxy()
                )}),
            ),
            (&Method::GET, "/readyz") => {
                let table = self.control.snapshot.load();
                let now = now_ms();
                let up = (0..table.pools.len())
                    .flat_map(|p| table.live.endpoints(p as PoolId))
                    .filter(|e| e.is_up(now))
                    .count();
                json_response(
                    StatusCode::OK,
                    &json!({"ready": true, "policy_version": table.version, "endpoints_up": up,
                            "gateway_region": gateway_region(&table)}),
                )
            }
            (&Method::GET, "/admin/policy") => self.policy(),
            (&Method::GET, "/admin/spend") => json_response(
                StatusCode::OK,
                &crate::observe::spend::report(&self.control.snapshot.load()),
            ),
            (&Method::GET, "/admin/capacity") => json_response(
                StatusCode::OK,
                &crate::capacity::report(&self.control.snapshot.load(), self.demand.as_deref()),
            ),
            (&Method::GET, "/admin/pools") => {
                json_response(StatusCode::OK, &pools(&self.control.snapshot.load()))
            }
            (&Method::POST, "/admin/reload") => match self.control.reload() {
                Ok(version) => json_response(
                    StatusCode::OK,
                    &json!({"reloaded": true, "version": version}),
                ),
                Err(errors) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"reloaded": false, "version": self.control.snapshot.load().version,
                            "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
                ),
            },
            (&Method::POST, "/admin/explain") => match read_body(session).await {
                Ok(body) => self.explain(&body),
                Err(resp) => resp,
            },
            (&Method::POST, "/admin/cache/purge") => match read_body(session).await {
                Ok(body) => cache::purge(self.cache.as_deref(), &body).await,
                Err(resp) => resp,
            },
            (&Method::GET, "/admin/cache") => cache::stats(self.cache.as_deref()).await,
            (&Method::GET, "/admin/rollouts") => {
                let table = self.control.snapshot.load();
                let mut report = match &self.shadows {
                    Some(s) => s.report(&table),
                    None => crate::upstream::shadow::Shadows::default().report(&table),
                };
                if let Some(r) = &self.rollouts {
                    for (model, state) in r.report(&table) {
                        report["models"][model.as_str()]["rollout"] = state;
                    }
                }
                json_response(StatusCode::OK, &report)
            }
            (&Method::POST, path) if path.starts_with("/admin/rollouts/") => {
                self.rollout_command(path).await
            }
            (&Method::GET, "/admin/tenants") => match &self.limiter {
                Some(limiter) => tenants::list(limiter, &self.control.snapshot.load_full()).await,
                None => error(StatusCode::NOT_FOUND, "no tenant limits here"),
            },
            (_, "/admin/cache/purge" | "/admin/cache") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (
                _,
                "/" | "/admin/status" | "/metrics" | "/healthz" | "/readyz" | "/admin/policy"
                | "/admin/reload" | "/admin/explain" | "/admin/pools" | "/admin/tenants"
                | "/admin/spend" | "/admin/capacity" | "/admin/rollouts",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

impl AdminApp {
    /// `POST /admin/rollouts/{model}/{pause|resume|promote|abort|restart}`.
    async fn rollout_command(&self, path: &str) -> Response<Vec<u8>> {
        let rest = path.trim_start_matches("/admin/rollouts/");
        let Some((model, action)) = rest.rsplit_once('/') else {
            return error(
                StatusCode::NOT_FOUND,
                "expected /admin/rollouts/{model}/{action}",
            );
        };
        let Some(cmd) = crate::rollout::Command::parse(action) else {
            return error(
                StatusCode::NOT_FOUND,
                "the actions are pause, resume, promote, abort and restart",
            );
        };
        let Some(rollouts) = &self.rollouts else {
            return error(StatusCode::NOT_FOUND, "no rollouts here");
        };
        let table = self.control.snapshot.load_full();
        match rollouts.command(&table, model, cmd).await {
            Ok(state) => json_response(StatusCode::OK, &state),
            Err(e) => error(StatusCode::CONFLICT, &e),
        }
    }

    fn refresh_gauges(&self) {
        let table = self.control.snapshot.load();
        let now = now_ms();
        for (id, pool) in table.pools.iter().enumerate() {
            let state = table.live.pool(id as PoolId);
            metrics::gauge!(t::POOL_IN_FLIGHT, "pool" => pool.name.clone())
                .set(state.in_flight() as f64);
            metrics::gauge!(t::POOL_SERVICE_TIME, "pool" => pool.name.clone())
                .set(state.service_time().as_secs_f64());
            for (ep, state) in pool
                .endpoints
                .iter()
                .zip(table.live.endpoints(id as PoolId))
            {
                metrics::gauge!(t::ENDPOINT_UP, "pool" => pool.name.clone(), "endpoint" => ep.name.clone())
                    .set(if state.is_up(now) { 1.0 } else { 0.0 });
                metrics::gauge!(t::ENDPOINT_LATENCY, "pool" => pool.name.clone(), "endpoint" => ep.name.clone())
                    .set(state.latency().as_secs_f64());
                metrics::gauge!(t::ENDPOINT_IN_FLIGHT, "pool" => pool.name.clone(), "endpoint" => ep.name.clone())
                    .set(state.in_flight() as f64);
            }
        }
        // Exactly one version is 1: the one serving now; the previous one drops to 0.
        static EXPORTED: Mutex<String> = Mutex::new(String::new());
        if let Ok(mut previous) = EXPORTED.lock() {
            if *previous != table.version {
                if !previous.is_empty() {
                    metrics::gauge!(t::POLICY_INFO, "version" => previous.clone()).set(0.0);
                }
                previous.clone_from(&table.version);
            }
        }
        metrics::gauge!(t::POLICY_INFO, "version" => table.version.clone()).set(1.0);
        t::instance_info(gateway_region(&table).unwrap_or("unknown"));
        crate::queue::refresh_gauges();
        if let Some(cache) = &self.cache {
            cache.refresh_gauges();
        }
        if let Some(bodies) = &self.bodies {
            metrics::gauge!(t::BUFFERED_BODY_BYTES).set(bodies.held() as f64);
        }
        for tier in &table.tiers {
            metrics::gauge!(t::TIER_DEADLINE, "tier" => tier.name.clone())
                .set(tier.deadline.as_secs_f64());
        }
    }

    fn policy(&self) -> Response<Vec<u8>> {
        let table = self.control.snapshot.load();
        let loaded_at = table
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last_error = self.control.last_error.lock().ok().and_then(|e| e.clone());
        let now = now_ms();
        let pools: Vec<Value> = table
            .pools
            .iter()
            .enumerate()
            .map(|(id, p)| {
                let state = table.live.pool(id as PoolId);
                json!({
                    "name": p.name, "kind": p.kind.as_str(), "region": table.regions[p.region as usize],
                    "in_flight": state.in_flight(),
                    "service_time_ms": state.service_time().as_secs_f64() * 1e3,
                    "endpoints": p.endpoints.iter().zip(table.live.endpoints(id as PoolId)).map(|(e, s)| json!({
                        "endpoint": e.name, "up": s.is_up(now), "in_flight": s.in_flight(),
                        "latency_ms": s.latency().as_secs_f64() * 1e3,
                    })).collect::<Vec<_>>(),
                    // Header values are credentials: only their names, each `***`.
                    "headers": p.hosted.header_names().into_iter().map(|(n, v)| (n, json!(v))).collect::<serde_json::Map<_, _>>(),
                    "tls": p.endpoints.iter().any(|e| e.sni.is_some()).then(|| json!({
                        "ca": p.hosted.tls.ca_file, "verify": p.hosted.tls.verify,
                        "client_cert": p.hosted.tls.client.is_some(),
                    })),
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "version": table.version,
                "source": table.source.display().to_string(),
                "loaded_at_unix": loaded_at,
                "last_error": last_error,
                "restart_required": self.control.reload_status.restart_required(),
                "tls_listener": self.control.tls.as_ref().map(|c| {
                    let s = c.status();
                    json!({
                        "cert": s.cert_path.display().to_string(),
                        "key": s.key_path.display().to_string(),
                        "loaded_at_unix": s.loaded_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                        "last_error": s.last_error,
                    })
                }),
                "last_reload": self.control.reload_status.last().map(|l| json!({
                    "trigger": l.trigger.as_str(),
                    "at_unix": l.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "ok": l.ok,
                })),
                "reload_triggers": {
                    "file_watch": self.control.reload_status.watching.load(std::sync::atomic::Ordering::Relaxed),
                    "sighup": self.control.reload_status.sighup_armed.load(std::sync::atomic::Ordering::Relaxed),
                    "admin": self.control.policy_path.is_some(),
                },
                "geoip": table.resources.geo.description,
                "gateway_region": gateway_region(&table),
                "regions": table.regions,
                "tiers": table.tiers.iter().map(|t| json!({
                    "name": t.name, "deadline_ms": t.deadline.as_millis() as u64, "weight": t.weight,
                    "ttft_ms": t.ttft.map(|d| d.as_millis() as u64),
                    "tpot_ms": t.tpot.map(|d| d.as_millis() as u64),
                })).collect::<Vec<_>>(),
                "pools": pools,
                "routes": table.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            }),
        )
    }

    fn explain(&self, body: &[u8]) -> Response<Vec<u8>> {
        let req: ExplainRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("explain request: {e}")),
        };
        let table = self.control.snapshot.load_full();
        match explain_with(&table, &req, self.rollouts.as_deref()) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err((status, msg)) => error(status, &msg),
        }
    }
}

/// The region this instance runs in, by name (`None`: not known).
pub fn gateway_region(table: &policy::RoutingTable) -> Option<&str> {
    table
        .gateway_region
        .map(|g| table.regions[g as usize].as_str())
}

/// An endpoint's own load as its model server last reported it (`server_metrics:` pools;
/// `null` when the pool scrapes none, or the last scrape is older than `max_age`, in which
/// case routing counts this gateway's in-flight requests instead).
pub fn server_load(pool: &policy::compile::Pool, state: &EndpointState, now: u64) -> Value {
    let sample = pool
        .server_metrics
        .as_ref()
        .and_then(|m| state.server.fresh(now, m.max_age));
    match sample {
        Some(l) => json!({
            "waiting": l.waiting,
            "running": l.running,
            "kv_cache": (l.kv_cache * 1e3).round() / 1e3,
        }),
        None => Value::Null,
    }
}

/// How [`route::pick_endpoint`] picks `class`'s endpoint on `pool`.
fn endpoint_by(class: &classify::Class, pool: &policy::compile::Pool) -> &'static str {
    match route::affinity_key(class, pool) {
        0 => "power_of_two_choices",
        _ if class.affinity.session != 0 => "affinity_session",
        _ => "affinity_prefix",
    }
}

/// A pool's `affinity:` as it routes (`null`: endpoints by power of two choices).
pub fn affinity(pool: &policy::compile::Pool) -> Value {
    match &pool.affinity {
        Some(a) => json!({
            "prefix": a.prefix,
            "session_header": a.session_header.as_ref().map(|h| h.as_str()),
            "load_factor": a.load_factor,
        }),
        None => Value::Null,
    }
}

/// `GET /admin/pools`: the live estimates and health of every pool and endpoint.
pub fn pools(table: &Serving) -> Value {
    let now = now_ms();
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let pools: Vec<Value> = table
        .pools
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let state = table.live.pool(id as PoolId);
            let samples = state.samples();
            let service =
                state.service_time_behind(now, route::network::upstream_rtt(p, state, table));
            let (rtt, rtt_source) = route::network::pool_rtt_now(p, state, table);
            json!({
                "name": p.name,
                "kind": p.kind.as_str(),
                "region": table.regions[p.region as usize],
                "concurrency": p.concurrency,
                "endpoint_limit": p.endpoint_limit(),
                "in_flight": state.in_flight(),
                "samples": samples,
                "baseline_ms": ms(state.baseline()),
                "ewma_ms": ms(state.ewma()),
                "estimate_ms": ms(service),
                "estimate_source": if samples >= crate::serving::state::MIN_SAMPLES { "live" } else { "baseline" },
                // The two terms of the gateway → pool part of the estimate, apart: the network
                // round trip (measured by health probes, else the policy's matrix) and the
                // service time (upstream time minus that round trip).
                "service_ms": ms(service),
                "rtt_ms": rtt.map(ms),
                "rtt_source": rtt_source,
                "affinity": affinity(p),
                "server_metrics": p.server_metrics.as_ref().map(|m| json!({
                    "path": m.path, "interval_ms": m.interval.as_millis() as u64,
                    "max_age_ms": m.max_age.as_millis() as u64,
                    "max_waiting": m.max_waiting, "max_kv_cache": m.max_kv_cache,
                })),
                "health_check": p.health.as_ref().map(|h| json!({
                    "path": h.path, "interval_ms": h.interval.as_millis() as u64,
                    "timeout_ms": h.timeout.as_millis() as u64,
                    "healthy_threshold": h.healthy_threshold, "unhealthy_threshold": h.unhealthy_threshold,
                })),
                "endpoints": p.endpoints.iter().zip(table.live.endpoints(id as PoolId)).map(|(e, s)| {
                    let until = s.ejected_until_ms();
                    let state = if !e.resolved {
                        "unresolved"
                    } else if !s.healthy() {
                        "unhealthy"
                    } else if until > now {
                        "ejected"
                    } else if s.ejections() > 0 {
                        "half_open"
                    } else {
                        "up"
                    };
                    json!({
                        "endpoint": e.name,
                        "state": state,
                        "up": s.is_up(now),
                        "healthy": s.healthy(),
                        "ejected_for_ms": until.saturating_sub(now),
                        "ejections": s.ejections(),
                        "consecutive_failures": s.consecutive_failures(),
                        "in_flight": s.in_flight(),
                        "samples": s.samples(),
                        "ewma_ms": ms(s.ewma()),
                        "latency_ms": ms(s.latency()),
                        "rtt_ms": s.rtt().map(ms),
                        "server": server_load(p, s, now),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "policy_version": table.version,
        "gateway_region": gateway_region(table),
        "retry_budget": {
            "tokens": table.live.budget.tokens(),
            "ratio": table.upstream.retry_budget.ratio,
            "min_per_second": table.upstream.retry_budget.min_per_second,
        },
        "pools": pools,
    })
}

/// A request described for a dry run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The client address as the gateway would see it (the socket peer). Default
    /// `0.0.0.0` (unmapped: the default region), for use with `region`.
    #[serde(default = "unspecified_ip")]
    pub client_ip: IpAddr,
    /// Force the client region instead of looking the address up (what-if for a region).
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The request body: a JSON value, sent as its JSON text.
    #[serde(default)]
    pub body: Option<Value>,
    /// Shorthand for OpenAI routes: the model, when no body is given.
    #[serde(default)]
    pub model: Option<String>,
}

fn default_method() -> String {
    "POST".into()
}

fn unspecified_ip() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

/// Classify and route a described request against `table`, reporting every candidate.
pub fn explain(table: &Serving, req: &ExplainRequest) -> Result<Value, (StatusCode, String)> {
    explain_with(table, req, None)
}

/// [`explain`], with a rolled-out model's version chosen by the rollout's step now.
pub fn explain_with(
    table: &Serving,
    req: &ExplainRequest,
    rollouts: Option<&crate::rollout::Rollouts>,
) -> Result<Value, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v).map_err(|e| bad(format!("header {k}: {e}")))?;
        headers.append(name, value);
    }
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let body = match (&req.body, &req.model) {
        (Some(Value::String(s)), _) => s.clone().into_bytes(),
        (Some(v), _) => v.to_string().into_bytes(),
        (None, Some(m)) => json!({"model": m}).to_string().into_bytes(),
        (None, None) => Vec::new(),
    };
    let path = req.path.split('?').next().unwrap_or("");
    let route = table
        .match_route(path)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no route matches `{path}`")))?;
    let facts = RequestFacts {
        peer: req.client_ip,
        method: &method,
        path,
        headers: &headers,
        body: Some(&body),
    };
    let mut class = classify::classify(&facts, route, table).map_err(|e| bad(e.to_string()))?;
    if let Some(r) = rollouts {
        r.steer(table, &mut class);
    }
    if let Some(name) = &req.region {
        class.region = table.region_by_name(name).ok_or_else(|| {
            bad(format!(
                "unknown region `{name}` (regions: {})",
                table.regions.join(", ")
            ))
        })?;
    }
    let residency: Option<Vec<&str>> = table.residency(class.region).map(|r| {
        r.iter()
            .map(|id| table.regions[*id as usize].as_str())
            .collect()
    });
    // A canary with no pool up for this request: the request goes to the stable version
    // (and, served, the canary is charged an error; explaining charges nothing).
    let mut resteered_from = None;
    if rollouts.is_some_and(|r| r.on_canary(table, &class))
        && route::version_unservable(&class, table, now_ms())
    {
        resteered_from = class
            .version
            .map(|(s, v)| table.splits[s as usize].versions[v as usize].name.clone());
        crate::rollout::to_stable(table, &mut class);
    }
    let (decision, candidates): (_, Vec<CandidateReport>) = route::explain(&class, table, now_ms());
    let tier = &table.tiers[class.tier as usize];
    Ok(json!({
        "policy_version": table.version,
        "gateway_region": gateway_region(table),
        "class": {
            "route": table.routes[class.route as usize].name,
            "client_ip": class.client_ip.to_string(),
            "country": class.country.and_then(|c| String::from_utf8(c.to_vec()).ok()),
            "region": table.regions[class.region as usize],
            "residency": residency,
            "tenant": class.tenant.map(|t| table.tenants[t as usize].name.clone()),
            "tier": tier.name,
            "tier_source": class.tier_source.as_str(),
            "deadline_ms": class.deadline.as_millis() as u64,
            // A stream judged on its first token: the objective the decision meets.
            "ttft_ms": class.ttft.map(|d| d.as_millis() as u64),
            "tpot_ms": class.tpot.map(|d| d.as_millis() as u64),
            "model": class.model,
            "model_version": class.model_version,
            // A split model: the version this request gets, and the split it came from.
            "version": class.version.map(|(s, v)| table.splits[s as usize].versions[v as usize].name.clone()),
            "split": class.version.map(|(s, _)| split_json(table, &table.splits[s as usize])),
            // Steered to a canary that has no pool up, so re-steered to the stable version.
            "resteered_from": resteered_from,
            "streaming": class.streaming,
            "cacheable": class.cacheable,
        },
        "decision": {
            "pool": decision.target.map(|(p, _)| table.pools[p as usize].name.clone()),
            "endpoint": decision.target.map(|(p, e)| table.pools[p as usize].endpoints[e as usize].name.clone()),
            // How the endpoint was picked: by the request's session or prompt prefix on a pool
            // with `affinity:` (rendezvous hashing within the load bound), else the less
            // loaded of two at random.
            "endpoint_by": decision.target.map(|(p, _)| endpoint_by(&class, &table.pools[p as usize])),
            "reason": decision.reason,
            "estimate": decision.estimate,
            // The chosen pool's `capacity:` and desired replicas, when it has one.
            "capacity": decision.target.and_then(|(p, _)| crate::capacity::pool_report(table, p)),
            "candidates": decision.candidates,
            "feasible": decision.feasible,
            // A pool at zero replicas this request would take warm: it wakes it on its way
            // elsewhere.
            "wakes": decision.wake.map(|p| table.pools[p as usize].name.clone()),
        },
        "candidates": candidates,
    }))
}

/// A split model as `explain` shows it: each version's weight (and share), pools and
/// upstream names, and what keeps a caller on one version.
pub fn split_json(
    table: &policy::RoutingTable,
    split: &crate::policy::compile::Split,
) -> serde_json::Value {
    let versions: Vec<_> = split
        .versions
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "weight": v.weight,
                "percent": f64::from(v.weight) * 100.0 / f64::from(split.total),
                "pools": v.pools.iter().map(|p| table.pools[*p as usize].name.as_str()).collect::<Vec<_>>(),
                "upstream_model": v.upstream_model,
                "upstream_version": v.upstream_version,
            })
        })
        .collect();
    json!({ "sticky": split.sticky.describe(), "versions": versions })
}
