//! `switchyard diff OLD NEW`: which routing decisions a policy change would change.
//!
//! The grid is every client region × tier × model, where the regions and tiers are the union
//! of both policies' and the models are every model a pool names in either policy plus one
//! model that only `*` pools serve (shown as `(other)`). Each cell is decided by
//! `route::decide` against each policy at its baseline estimates (fresh live state, so the
//! comparison is about the policy, not about the traffic of the moment). A cell changes when
//! the pool or the reason changes; its latency and cost estimates are reported either way.
//!
//! Only routing is compared: the route a path maps to, caching and limits are not. Split
//! models (`models.NAME.versions`) are listed apart, each side's versions with their share
//! and pools, when the split changes; the grid decides a split model as a caller without a
//! version would be routed before the split (by the pools' `models:` lists).
//! `--gateway-region` compiles both policies as the instance in that region would, so an
//! operator sees what each regional instance decides (the estimates' network terms depend on
//! where the gateway runs).

use serde::Serialize;
use std::fmt::Write as _;
use switchyard_gateway::classify::Class;
use switchyard_gateway::policy::compile::RoutingTable;
use switchyard_gateway::route::{self, Reason};
use switchyard_gateway::serving::Serving;

/// The model standing for "anything no pool names", served only by `*` pools.
pub const OTHER_MODEL: &str = "(other)";

/// One cell's decision under one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `None`: shed or no candidate.
    pub pool: Option<String>,
    pub reason: &'static str,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
}

/// One cell of the grid whose decision changed.
#[derive(Debug, Serialize)]
pub struct Change {
    pub region: String,
    pub tier: String,
    pub model: String,
    /// `None` when the region or tier does not exist in that policy.
    pub old: Option<Outcome>,
    pub new: Option<Outcome>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub old_version: String,
    pub new_version: String,
    /// The instance region each side decides as (`--gateway-region`, else the policy's
    /// `gateway_region`; `None`: unknown, the gateway beside its clients).
    pub gateway_region: Option<String>,
    pub regions: Vec<String>,
    pub tiers: Vec<String>,
    pub models: Vec<String>,
    pub cells: usize,
    pub changes: Vec<Change>,
    /// Split models whose versions, weights, pools or stickiness change.
    pub splits: Vec<SplitChange>,
    /// Sum of estimated cost over the cells routed in both policies, one request each.
    pub old_cost_usd: f64,
    pub new_cost_usd: f64,
    /// Mean estimated latency over the cells routed in both policies.
    pub old_mean_latency_ms: f64,
    pub new_mean_latency_ms: f64,
}

/// A split model on each side (`None`: not split there), as `v1 90% [pool-a], …`.
#[derive(Debug, Serialize)]
pub struct SplitChange {
    pub model: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

fn split_text(t: &RoutingTable, model: &str) -> Option<String> {
    let split = &t.splits[*t.split_of.get(model)? as usize];
    let versions: Vec<String> = split
        .versions
        .iter()
        .map(|v| {
            let pools: Vec<&str> = v
                .pools
                .iter()
                .map(|p| t.pools[*p as usize].name.as_str())
                .collect();
            let pct = f64::from(v.weight) * 100.0 / f64::from(split.total);
            format!("{} {pct:.1}% [{}]", v.name, pools.join(", "))
        })
        .collect();
    Some(format!(
        "{}; sticky {}",
        versions.join(", "),
        split.sticky.describe()
    ))
}

fn split_changes(old: &RoutingTable, new: &RoutingTable) -> Vec<SplitChange> {
    let mut names: Vec<String> = union(
        old.splits.iter().map(|s| s.model.clone()),
        new.splits.iter().map(|s| s.model.clone()),
    );
    names.sort();
    names
        .into_iter()
        .filter_map(|model| {
            let (a, b) = (split_text(old, &model), split_text(new, &model));
            (a != b).then_some(SplitChange {
                model,
                old: a,
                new: b,
            })
        })
        .collect()
}

fn union(a: impl IntoIterator<Item = String>, b: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in a.into_iter().chain(b) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn models(t: &RoutingTable) -> Vec<String> {
    let mut names: Vec<String> = t
        .pools
        .iter()
        .flat_map(|p| p.models.names.iter().filter(|m| *m != "*").cloned())
        .collect();
    names.sort();
    names
}

/// The decision for one cell, or `None` when the region or tier is not in `table`.
fn decide(table: &Serving, region: &str, tier: &str, model: &str) -> Option<Outcome> {
    let region = table.region_by_name(region)?;
    let tier = table.tier_by_name(tier)?;
    let class = Class::what_if(table, 0, region, tier, model);
    let d = route::decide(&class, table, &[], 0);
    let routed = d.target.is_some();
    Some(Outcome {
        pool: d.target.map(|(p, _)| table.pools[p as usize].name.clone()),
        reason: d.reason.as_str(),
        latency_ms: d
            .estimate
            .filter(|_| routed)
            .map(|e| (e.latency.as_secs_f64() * 1e4).round() / 10.0),
        cost_usd: d.estimate.filter(|_| routed).map(|e| e.cost_usd),
    })
}

/// Compare the decisions of two policies over the grid.
pub fn diff(old: &Serving, new: &Serving) -> Report {
    let regions = union(old.regions.clone(), new.regions.clone());
    let tiers = union(
        old.tiers.iter().map(|t| t.name.clone()),
        new.tiers.iter().map(|t| t.name.clone()),
    );
    let mut models = union(models(old), models(new));
    models.sort();
    if old.pools.iter().chain(&new.pools).any(|p| p.models.any) {
        models.push(OTHER_MODEL.to_string());
    }
    let mut changes = Vec::new();
    let (mut old_cost, mut new_cost, mut old_lat, mut new_lat, mut both) =
        (0.0, 0.0, 0.0, 0.0, 0usize);
    let mut cells = 0;
    for region in &regions {
        for tier in &tiers {
            for model in &models {
                cells += 1;
                let a = decide(old, region, tier, model);
                let b = decide(new, region, tier, model);
                if let (Some(oa), Some(ob)) = (&a, &b) {
                    if let (Some(ca), Some(cb), Some(la), Some(lb)) =
                        (oa.cost_usd, ob.cost_usd, oa.latency_ms, ob.latency_ms)
                    {
                        old_cost += ca;
                        new_cost += cb;
                        old_lat += la;
                        new_lat += lb;
                        both += 1;
                    }
                }
                let same = match (&a, &b) {
                    (Some(x), Some(y)) => x.pool == y.pool && x.reason == y.reason,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    changes.push(Change {
                        region: region.clone(),
                        tier: tier.clone(),
                        model: model.clone(),
                        old: a,
                        new: b,
                    });
                }
            }
        }
    }
    let mean = |sum: f64| if both == 0 { 0.0 } else { sum / both as f64 };
    Report {
        old_version: old.version.clone(),
        gateway_region: new.gateway_region.map(|g| new.regions[g as usize].clone()),
        new_version: new.version.clone(),
        regions,
        tiers,
        models,
        cells,
        changes,
        splits: split_changes(old, new),
        old_cost_usd: old_cost,
        new_cost_usd: new_cost,
        old_mean_latency_ms: mean(old_lat),
        new_mean_latency_ms: mean(new_lat),
    }
}

fn show(o: &Option<Outcome>) -> String {
    match o {
        None => "(absent)".into(),
        Some(o) => match (&o.pool, o.latency_ms, o.cost_usd) {
            (Some(p), Some(l), Some(c)) => format!("{p} [{}, {l:.1} ms, ${c:.6}]", o.reason),
            _ => format!("refused [{}]", o.reason),
        },
    }
}

fn delta(old: &Option<Outcome>, new: &Option<Outcome>) -> String {
    let pair = |f: fn(&Outcome) -> Option<f64>| match (old, new) {
        (Some(a), Some(b)) => f(a).zip(f(b)),
        _ => None,
    };
    let mut parts = Vec::new();
    if let Some((a, b)) = pair(|o| o.latency_ms) {
        parts.push(format!("latency {:+.1} ms", b - a));
    }
    if let Some((a, b)) = pair(|o| o.cost_usd) {
        let pct = if a > 0.0 {
            format!(" ({:+.0}%)", (b - a) / a * 100.0)
        } else {
            String::new()
        };
        parts.push(format!("cost {:+.6} USD{pct}", b - a));
    }
    parts.join(", ")
}

/// `diff` output as text: one line per changed cell, then the summary line.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {} → {}: {} regions × {} tiers × {} models = {} decisions",
        r.old_version,
        r.new_version,
        r.regions.len(),
        r.tiers.len(),
        r.models.len(),
        r.cells
    );
    if let Some(g) = &r.gateway_region {
        let _ = writeln!(out, "as decided by the instance in region {g}");
    }
    for c in &r.changes {
        let d = delta(&c.old, &c.new);
        let _ = writeln!(
            out,
            "  {}/{}/{}: {} → {}{}",
            c.region,
            c.tier,
            c.model,
            show(&c.old),
            show(&c.new),
            if d.is_empty() {
                String::new()
            } else {
                format!("; {d}")
            }
        );
    }
    for c in &r.splits {
        let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "(not split)".into());
        let _ = writeln!(
            out,
            "  split {}: {} → {}",
            c.model,
            side(&c.old),
            side(&c.new)
        );
    }
    let refused = |o: &Option<Outcome>| {
        o.as_ref().is_some_and(|o| {
            o.reason == Reason::Shed.as_str() || o.reason == Reason::NoCandidate.as_str()
        })
    };
    let newly_refused = r
        .changes
        .iter()
        .filter(|c| refused(&c.new) && !refused(&c.old))
        .count();
    let cost_pct = if r.old_cost_usd > 0.0 {
        format!(
            " ({:+.0}%)",
            (r.new_cost_usd - r.old_cost_usd) / r.old_cost_usd * 100.0
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "summary: {} of {} decisions change ({} newly refused); one request per cell costs ${:.6} → ${:.6}{}; mean estimated latency {:.1} ms → {:.1} ms",
        r.changes.len(),
        r.cells,
        newly_refused,
        r.old_cost_usd,
        r.new_cost_usd,
        cost_pct,
        r.old_mean_latency_ms,
        r.new_mean_latency_ms,
    );
    out
}
