//! `switchyard check`: validate policy files and point out what is legal but probably not
//! meant — a pool no request can reach, a tier whose deadline no pool can meet, a route
//! shadowed by an earlier one, residency rules that leave a region with no pool.
//!
//! Errors come from `compile` (the same validation a reload runs); warnings are computed
//! here from the compiled table, with locations taken from a second parse of the text.
//! Warnings never make `check` fail: only errors do. This module must not grow rules that
//! the gateway itself does not enforce at load time as *errors*; those belong in `compile`.

use serde::Serialize;
use serde_saphyr::Spanned;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_gateway::policy::compile::{compile_str, CompileContext, PathMatch, RoutingTable};
use switchyard_gateway::policy::tenancy::AuthMode;
use switchyard_gateway::policy::{self, raw, PolicyError};
use switchyard_gateway::serving::resources::Resources;

/// What `check` found in one file.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub pools: usize,
    pub routes: usize,
    pub tiers: usize,
    pub regions: usize,
    /// Per pool, how it is billed (`Pricing::describe`), and the egress matrix if any.
    pub costs: Vec<String>,
    /// Per pool with `capacity:`, how its desired replicas are computed.
    pub capacity: Vec<String>,
}

/// One error or warning at a place in the file (line and column 0 when not known).
#[derive(Debug, Serialize, Clone)]
pub struct Diagnostic {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl From<&PolicyError> for Diagnostic {
    fn from(e: &PolicyError) -> Self {
        Diagnostic {
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        }
    }
}

/// Check one policy file.
pub fn check_file(path: &Path) -> FileReport {
    let mut report = FileReport {
        file: path.to_path_buf(),
        ok: false,
        version: None,
        summary: None,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.errors.push(Diagnostic {
                line: 0,
                column: 0,
                message: format!("cannot read policy file: {e}"),
            });
            return report;
        }
    };
    match compile_str(
        &text,
        &CompileContext {
            file: path,
            gateway_region: None,
        },
    )
    .and_then(|table| {
        // The files the policy names (GeoIP database, certificates) are opened as the
        // gateway opens them when it publishes the table.
        Resources::load(&table)?;
        Ok(table)
    }) {
        Ok(table) => {
            report.ok = true;
            report.version = Some(table.version.clone());
            report.summary = Some(Summary {
                pools: table.pools.len(),
                routes: table.routes.len(),
                tiers: table.tiers.len(),
                regions: table.regions.len(),
                costs: costs(&table),
                capacity: table
                    .pools
                    .iter()
                    .filter_map(|p| {
                        Some(format!("{}: {}", p.name, p.capacity.as_ref()?.describe()))
                    })
                    .collect(),
            });
            if let Ok(raw) = policy::parse(&text, path) {
                report.warnings = warnings(&raw, &table);
            }
        }
        Err(errors) => report.errors = errors.0.iter().map(Diagnostic::from).collect(),
    }
    report
}

fn at<T>(node: &Spanned<T>, message: String) -> Diagnostic {
    Diagnostic {
        line: node.referenced.line(),
        column: node.referenced.column(),
        message,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Warnings for a policy that compiled. `raw` and `table` come from the same text, so pools,
/// tiers (both in name order) and routes line up by index.
pub fn warnings(raw: &raw::Policy, table: &RoutingTable) -> Vec<Diagnostic> {
    let mut out = Vec::new();

    // An admin listener off loopback without a token is a load error (compile); here, a
    // token that is not really a deployment secret.
    if let Some(node) = &raw.listeners.admin_token {
        use switchyard_gateway::policy::secret::{expand, Source};
        match expand(&node.value, |n| std::env::var(n).ok()) {
            Ok((_, Source::Literal)) => out.push(at(
                node,
                "listeners.admin_token is written in the policy file: use `${NAME}` and set the token in the environment".into(),
            )),
            Ok((_, Source::Default)) => out.push(at(
                node,
                "listeners.admin_token: the variable is not set, so the default written in the file is the token; set it for anything but a demo".into(),
            )),
            _ => {}
        }
    }

    // Endpoint host names that do not resolve here (offline, or outside the network that
    // runs the gateway, e.g. compose service names): not an error, the gateway starts with
    // them down and keeps looking them up (`policy::resolve`).
    for (pool, rp) in table.pools.iter().zip(&raw.pools) {
        for ep in &rp.value.endpoints {
            let https = switchyard_gateway::policy::resolve::https_target(ep.value.http())
                .ok()
                .flatten()
                .map(|t| t.hostport);
            let http = https.as_deref().unwrap_or(ep.value.http());
            let written = [Some(http), ep.value.grpc()];
            let unresolved = table
                .host_names
                .iter()
                .find(|n| written.contains(&Some(n.name.as_str())) && n.addrs.is_empty());
            if let Some(n) = unresolved {
                out.push(at(
                    ep,
                    format!(
                        "pool `{}`: endpoint `{}`: {}; the gateway starts with it down and looks it up again every {}s",
                        pool.name,
                        n.name,
                        n.error.as_deref().unwrap_or("does not resolve"),
                        table.upstream.resolve_every.as_secs()
                    ),
                ));
            }
        }
    }

    // Hosted endpoints: TLS settings that leave the traffic or the credentials readable.
    for (pool, rp) in table.pools.iter().zip(&raw.pools) {
        let https = pool.endpoints.iter().any(|e| e.sni.is_some());
        let plain = pool.endpoints.iter().any(|e| e.sni.is_none());
        if let Some(tls) = &rp.value.tls {
            if !tls.value.verify {
                out.push(at(
                    tls,
                    format!("pool `{}`: tls.verify is false: the endpoints' certificates are not checked, so anyone on the path can read and change the traffic (and the injected credentials)", pool.name),
                ));
            }
            if !https {
                out.push(at(
                    tls,
                    format!(
                        "pool `{}`: `tls` is set but no endpoint is `https://`, so it is not used",
                        pool.name
                    ),
                ));
            }
        }
        // A client's credential headers go to a pool that brings none of its own, unless the
        // gateway consumed a tenant key first (`auth: required`): to a third party's
        // `https://` endpoint that is a leak of the caller's key.
        if https && !pool.hosted.injects_credential && table.auth != AuthMode::Required {
            out.push(at(
                &rp.value.name,
                format!(
                    "pool `{}`: clients' credential headers (Authorization, x-api-key, api-key) are forwarded to its https:// endpoints: inject the pool's own (`headers: {{ authorization: \"Bearer ${{KEY}}\" }}`) or set `auth: required`",
                    pool.name
                ),
            ));
        }
        if plain && !pool.hosted.headers.is_empty() {
            out.push(at(
                &rp.value.name,
                format!("pool `{}`: injected `headers` are sent over plain HTTP to its non-https:// endpoints", pool.name),
            ));
        }
    }

    // Pools no request can reach: no tier allows their kind, or residency excludes their
    // region for every client region.
    for (pool, rp) in table.pools.iter().zip(&raw.pools) {
        if !table.tiers.iter().any(|t| t.kinds.contains(pool.kind)) {
            out.push(at(
                &rp.value.name,
                format!(
                    "pool `{}`: no tier allows {} pools, so no request can reach it",
                    pool.name,
                    pool.kind.as_str()
                ),
            ));
        }
        let reachable = (0..table.regions.len() as u16)
            .any(|client| table.residency_allows(client, pool.region));
        if !reachable {
            out.push(at(
                &rp.value.name,
                format!(
                    "pool `{}`: residency rules of every region exclude region `{}`, so no request can reach it",
                    pool.name, table.regions[pool.region as usize]
                ),
            ));
        }
    }

    // Regions whose residency leaves them no pool at all.
    for (i, def) in raw.regions.map.iter().enumerate().take(table.regions.len()) {
        let client = i as u16;
        if let Some(allowed) = table.residency(client) {
            if !table.pools.iter().any(|p| allowed.contains(&p.region)) {
                out.push(at(
                    &def.value.name,
                    format!(
                        "region `{}`: no pool is in its residency regions, so every request from it is refused",
                        table.regions[i]
                    ),
                ));
            }
        }
    }

    // Tiers whose deadline no pool meets, from some or every region, at baseline estimates.
    for (tier, (_, rt)) in table.tiers.iter().zip(&raw.tiers) {
        let mut missed = Vec::new();
        let mut served = 0;
        for client in 0..table.regions.len() as u16 {
            let best = table
                .pools
                .iter()
                .filter(|p| tier.kinds.contains(p.kind) && table.residency_allows(client, p.region))
                .map(|p| (p, table.rtt(client, p.region) + p.service_time))
                .min_by_key(|(_, d)| *d);
            let Some((pool, latency)) = best else {
                continue;
            };
            served += 1;
            if latency > tier.deadline {
                missed.push(format!(
                    "{} (best: {} at {})",
                    table.regions[client as usize],
                    pool.name,
                    ms(latency)
                ));
            }
        }
        if missed.is_empty() {
            continue;
        }
        let consequence = match tier.on_slo_miss {
            raw::OnSloMiss::Shed => "these requests are shed (503)",
            raw::OnSloMiss::Fastest => {
                "these requests go to the fastest pool and miss the deadline"
            }
            raw::OnSloMiss::Queue => {
                "these requests are queued as jobs (202) for the cheapest pool"
            }
        };
        let scope = if missed.len() == served {
            "from every region"
        } else {
            "from some regions"
        };
        out.push(at(
            rt,
            format!(
                "tier `{}`: no pool meets the {} deadline {scope} at baseline estimates (rtt + service_time): {}; {consequence}",
                tier.name,
                ms(tier.deadline),
                missed.join(", ")
            ),
        ));
    }

    // Routes that an earlier prefix route always matches first.
    for (i, (route, rr)) in table.routes.iter().zip(&raw.routes).enumerate() {
        let own = match &route.matcher {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        };
        let earlier = table.routes[..i].iter().find(|e| match &e.matcher {
            PathMatch::Prefix(p) => own.starts_with(p.as_str()),
            PathMatch::Exact(p) => {
                matches!(&route.matcher, PathMatch::Exact(q) if q == p)
            }
        });
        if let Some(e) = earlier {
            out.push(at(
                &rr.value.path,
                format!(
                    "route `{}` is never matched: route `{}` comes first and matches every path it does",
                    route.name, e.name
                ),
            ));
        }
    }
    out
}

/// `check` output as text: `ok` lines for stdout, diagnostics for stderr.
pub fn render_text(reports: &[FileReport]) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for r in reports {
        let loc = |d: &Diagnostic| {
            if d.line == 0 {
                format!("{}", r.file.display())
            } else {
                format!("{}:{}:{}", r.file.display(), d.line, d.column)
            }
        };
        for e in &r.errors {
            let _ = writeln!(err, "{}: {}", loc(e), e.message);
        }
        for w in &r.warnings {
            let _ = writeln!(err, "{}: warning: {}", loc(w), w.message);
        }
        match (&r.version, &r.summary) {
            (Some(v), Some(s)) if r.ok => {
                let _ = writeln!(
                    out,
                    "{}: ok (version {v}, {} pools, {} routes, {} tiers{})",
                    r.file.display(),
                    s.pools,
                    s.routes,
                    s.tiers,
                    if r.warnings.is_empty() {
                        String::new()
                    } else {
                        format!(", {} warning(s)", r.warnings.len())
                    }
                );
                for line in &s.costs {
                    let _ = writeln!(out, "  cost: {line}");
                }
                for line in &s.capacity {
                    let _ = writeln!(out, "  {line}");
                }
            }
            _ => {
                let _ = writeln!(err, "{}: {} error(s)", r.file.display(), r.errors.len());
            }
        }
    }
    (out, err)
}

/// How each pool is billed, and what crossing regions costs.
fn costs(table: &RoutingTable) -> Vec<String> {
    let mut lines: Vec<String> = table
        .pools
        .iter()
        .map(|p| format!("{}: {}", p.name, p.pricing.describe(p.replicas())))
        .collect();
    let n = table.regions.len();
    let mut egress = Vec::new();
    for a in 0..n {
        for b in 0..n {
            let usd = table.egress_per_byte(a as _, b as _) * 1e9;
            if a != b && usd > 0.0 {
                egress.push(format!("{}→{} ${usd}", table.regions[a], table.regions[b]));
            }
        }
    }
    if !egress.is_empty() {
        lines.push(format!(
            "egress per GB, on request and answer bytes between the gateway's region and the pool's: {}",
            egress.join(", ")
        ));
    }
    lines
}

/// `check --format json` output.
pub fn render_json(reports: &[FileReport]) -> String {
    let errors: usize = reports.iter().map(|r| r.errors.len()).sum();
    let warnings: usize = reports.iter().map(|r| r.warnings.len()).sum();
    serde_json::json!({
        "ok": reports.iter().all(|r| r.ok),
        "errors": errors,
        "warnings": warnings,
        "files": reports,
    })
    .to_string()
}
