//! The operator's toolkit behind `switchyard check | explain | diff | schema`: everything
//! those subcommands compute, so that `main.rs` only parses arguments and prints.
//!
//! Every tool works offline on policy files: it compiles them with a fresh [`Fleet`], so the
//! estimates are the policy's own baselines (no live measurements), and it never starts a
//! listener or talks to a gateway. The tools reuse the request path's own functions
//! (`compile`, `classify`, `route::decide`/`explain`, `admin::explain`) rather than
//! re-implementing them, so what they predict is what the gateway would do.

pub mod check;
pub mod diff;
pub mod schema;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use switchyard_gateway::admin::{self, ExplainRequest};
use switchyard_gateway::policy::compile::{PathMatch, PoolId, RoutingTable};
use switchyard_gateway::policy::raw::Protocol;
use switchyard_gateway::policy::{self, PolicyErrors};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    #[error("{0}")]
    Usage(String),
}

/// Compile a policy file on its own, with baseline estimates. Offline tools answer what the
/// policy decides, so an endpoint whose host name does not resolve here (a compose or
/// cluster service name) counts as up, as it would where the gateway runs.
pub fn load(path: &Path) -> Result<Serving, PolicyErrors> {
    load_at(path, None)
}

/// [`load`] as the instance in `gateway_region` would compile it (`--gateway-region`;
/// `None`: the policy's own `gateway_region`).
pub fn load_at(path: &Path, gateway_region: Option<&str>) -> Result<Serving, PolicyErrors> {
    let table = policy::load_file(path, gateway_region.map(str::to_string))?;
    let table = Serving::load(table, &Fleet::default())?;
    for (i, pool) in table.pools.iter().enumerate() {
        let states = table.live.endpoints(i as PoolId);
        for (_, state) in pool
            .endpoints
            .iter()
            .zip(states)
            .filter(|(e, _)| !e.resolved)
        {
            state.clear_health();
        }
    }
    Ok(table)
}

/// What `switchyard explain` is asked.
#[derive(Debug, Default)]
pub struct ExplainArgs {
    pub client_ip: Option<IpAddr>,
    pub region: Option<String>,
    pub tier: Option<String>,
    pub model: String,
    pub path: Option<String>,
    /// `name: value` pairs as given with `-H`.
    pub headers: Vec<String>,
}

/// Classify and route the described request against `table`, offline. The result has the
/// same shape as `POST /admin/explain`.
pub fn explain(table: &Serving, args: &ExplainArgs) -> Result<Value, ToolError> {
    if args.client_ip.is_none() && args.region.is_none() {
        return Err(ToolError::Usage("give --client-ip or --region".into()));
    }
    let mut headers = BTreeMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| ToolError::Usage(format!("header `{h}`: expected `name: value`")))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    if let Some(t) = &args.tier {
        headers.insert("x-slo-tier".into(), t.clone());
    }
    let path = match &args.path {
        Some(p) => p.clone(),
        None => default_path(table, &args.model)?,
    };
    let req = ExplainRequest {
        client_ip: args.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        region: args.region.clone(),
        method: "POST".into(),
        path,
        headers,
        body: None,
        model: Some(args.model.clone()),
    };
    admin::explain(table, &req).map_err(|(_, msg)| ToolError::Usage(msg))
}

/// A path that reaches the first route able to carry `model`: an exact OpenAI route, or a
/// path-protocol route with the model put in the path.
fn default_path(table: &RoutingTable, model: &str) -> Result<String, ToolError> {
    for r in &table.routes {
        match (&r.matcher, r.protocol) {
            (PathMatch::Exact(p), Protocol::OpenAi) => return Ok(p.clone()),
            (PathMatch::Prefix(p), Protocol::OipV2) if p == "/v2/models/" => {
                return Ok(format!("/v2/models/{model}/infer"))
            }
            (PathMatch::Prefix(p), Protocol::TfServing) if p == "/v1/models/" => {
                return Ok(format!("/v1/models/{model}:predict"))
            }
            _ => {}
        }
    }
    Err(ToolError::Usage(
        "no route to guess a path from; give --path".into(),
    ))
}

/// Render an explanation (the JSON of [`explain`] or `POST /admin/explain`) as a table.
pub fn render_explain(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let c = &v["class"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy version {}, as the instance in region {}",
        s(&v["policy_version"]),
        match &v["gateway_region"] {
            Value::String(g) => g.as_str(),
            _ => "(unknown: the gateway is taken to be beside the client)",
        }
    );
    let residency = match &c["residency"] {
        Value::Array(a) => format!(
            " (residency: {})",
            a.iter().map(&s).collect::<Vec<_>>().join(", ")
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "class: route={} region={}{} tier={} (from {}) deadline={} ms model={} cacheable={}",
        s(&c["route"]),
        s(&c["region"]),
        residency,
        s(&c["tier"]),
        s(&c["tier_source"]),
        match (&c["ttft_ms"], &c["tpot_ms"]) {
            (Value::Number(t), Value::Number(p)) =>
                format!("{} (stream: ttft={t} ms tpot={p} ms)", s(&c["deadline_ms"])),
            (Value::Number(t), _) => format!("{} (stream: ttft={t} ms)", s(&c["deadline_ms"])),
            _ => s(&c["deadline_ms"]),
        },
        s(&c["model"]),
        s(&c["cacheable"]),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<20} {:<6} {:<8} {:>11} {:>20} {:>12} {:>32} {:>7}  why",
        "pool",
        "kind",
        "region",
        "latency",
        "client+pool+service",
        "cost",
        "usage+egress+capacity",
        "score"
    );
    for cand in v["candidates"].as_array().into_iter().flatten() {
        let mark = if cand["chosen"] == Value::Bool(true) {
            "▶"
        } else {
            " "
        };
        let f = |e: &serde_json::Map<String, Value>, k: &str| e[k].as_f64().unwrap_or(0.0);
        let (lat, parts, cost, terms) = match &cand["estimate"] {
            Value::Object(e) => (
                format!("{:.1} ms", f(e, "latency")),
                format!(
                    "{:.0}+{:.0}+{:.1}",
                    f(e, "client_rtt"),
                    f(e, "pool_rtt"),
                    f(e, "service")
                ),
                format!("${:.6}", f(e, "cost_usd")),
                match &e.get("cost") {
                    Some(Value::Object(t)) => format!(
                        "{:.6}+{:.6}+{:.6}",
                        f(t, "usage_usd"),
                        f(t, "egress_usd"),
                        f(t, "capacity_usd")
                    ),
                    _ => "-".into(),
                },
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let score = cand["score"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.3}"));
        let why = match &cand["excluded"] {
            Value::String(e) => format!("excluded ({e}): {}", s(&cand["why"])),
            _ => s(&cand["why"]),
        };
        let _ = writeln!(
            out,
            "{mark} {:<20} {:<6} {:<8} {:>11} {:>20} {:>12} {:>32} {:>7}  {}",
            s(&cand["pool"]),
            s(&cand["kind"]),
            s(&cand["region"]),
            lat,
            parts,
            cost,
            terms,
            score,
            why
        );
    }
    let d = &v["decision"];
    let _ = writeln!(out);
    let est = match &d["estimate"] {
        Value::Object(e) => format!(
            ", estimated {:.1} ms, ${:.6}",
            e["latency"].as_f64().unwrap_or(0.0),
            e["cost_usd"].as_f64().unwrap_or(0.0)
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "decision: {} ({}){est}; {} candidate(s), {} meet the deadline",
        s(&d["pool"]),
        s(&d["reason"]),
        s(&d["candidates"]),
        s(&d["feasible"]),
    );
    out
}
