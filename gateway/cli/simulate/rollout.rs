//! `switchyard simulate --rollout MODEL --policy FILE`: the policy's rollout of `MODEL`
//! played on a virtual clock against three canaries: a good one (as the stable version), a
//! slow one (3× the service time) and one with 5 % errors. It reports how many requests
//! each bad canary hurt (answered with an error or after its objective) before it was rolled
//! back, and how long the good one took to reach 100 %.
//!
//! The version choice and the decisions are the gateway's own (`rollout::Rollouts::steer`
//! and `observe`, on the compiled policy); what is modelled: each request is a new caller
//! (its sticky key a counter's hash), arriving at `--rate` per second; its service time is
//! the version's first pool's `service_time` × a uniform 0.5–1.5 (× 3 for the slow canary),
//! compared with the route's tier's deadline; errors are drawn at the canary's rate (the
//! stable version has none); cost per request is the version's first pool's `per_request`.
//! Not modelled: queueing, retries, network, the routing decision itself (the version's
//! first pool answers). Nothing is written: the rollout's state file is not used.

use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use switchyard_gateway::classify::Class;
use switchyard_gateway::policy::compile::RoutingTable;
use switchyard_gateway::rollout::{Phase, Rollouts};

/// One canary's run.
#[derive(Debug, Serialize)]
pub struct CanaryRun {
    pub canary: &'static str,
    /// `promoted`, `rolled_back`, or `running` when `--requests` ran out.
    pub outcome: &'static str,
    /// Requests (both versions) until the outcome, and the virtual time that took.
    pub requests: u64,
    pub seconds: f64,
    /// Requests the canary served, and those it hurt (an error or a missed objective).
    pub canary_requests: u64,
    pub hurt: u64,
}

#[derive(Debug, Serialize)]
pub struct RolloutReport {
    pub model: String,
    pub canary: String,
    pub stable: String,
    pub steps_percent: Vec<f64>,
    pub min_requests: u32,
    pub rate: f64,
    pub deadline_ms: f64,
    pub runs: Vec<CanaryRun>,
}

/// Run the three canaries.
pub fn run(
    policy: &Path,
    model: &str,
    rate: f64,
    max_requests: u64,
    seed: u64,
) -> Result<RolloutReport, String> {
    let mut table =
        switchyard_gateway::policy::load_file(policy, None).map_err(|e| e.to_string())?;
    let split_id = *table
        .split_of
        .get(model)
        .ok_or_else(|| format!("`{model}` is not a split model in {}", policy.display()))?;
    let split = &mut table.splits[split_id as usize];
    let rule = split
        .rollout
        .as_mut()
        .ok_or_else(|| format!("`{model}` has no rollout"))?;
    rule.state_file = None;
    let rule = rule.clone();
    let route = table
        .routes
        .iter()
        .position(|r| r.protocol == switchyard_gateway::policy::raw::Protocol::OpenAi)
        .unwrap_or(0) as u16;
    let tier = table.routes[route as usize].tier;
    let deadline = table.tiers[tier as usize].deadline;
    let version_pool = |v: u16| {
        let p = table.splits[split_id as usize].versions[v as usize].pools[0];
        &table.pools[p as usize]
    };
    let stable_service = version_pool(rule.stable).service_time;
    let canary_service = version_pool(rule.canary).service_time;
    let (stable_cost, canary_cost) = (
        version_pool(rule.stable).pricing.per_request,
        version_pool(rule.canary).pricing.per_request,
    );
    let split = &table.splits[split_id as usize];
    let mut runs = Vec::new();
    for (name, slow, errors) in [
        ("good", 1.0, 0.0),
        ("3x slower", 3.0, 0.0),
        ("5% errors", 1.0, 0.05),
    ] {
        let world = World {
            table: &table,
            split: split_id,
            route,
            tier,
            deadline,
            model,
            service: (stable_service, canary_service.mul_f64(slow)),
            cost: (stable_cost, canary_cost),
            errors,
        };
        runs.push(play(&world, name, rate, max_requests, seed));
    }
    Ok(RolloutReport {
        model: model.to_string(),
        canary: split.versions[rule.canary as usize].name.clone(),
        stable: split.versions[rule.stable as usize].name.clone(),
        steps_percent: rule
            .steps
            .iter()
            .map(|p| f64::from(*p) / 10_000.0)
            .collect(),
        min_requests: rule.min_requests,
        rate,
        deadline_ms: deadline.as_secs_f64() * 1e3,
        runs,
    })
}

struct World<'a> {
    table: &'a RoutingTable,
    split: u16,
    route: u16,
    tier: u16,
    deadline: Duration,
    model: &'a str,
    /// Stable's and canary's base service time.
    service: (Duration, Duration),
    cost: (f64, f64),
    /// The canary's error rate.
    errors: f64,
}

fn play(w: &World, name: &'static str, rate: f64, max: u64, seed: u64) -> CanaryRun {
    let rollouts = Rollouts::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    let rule = w.table.splits[w.split as usize].rollout.as_ref();
    let canary = rule.map_or(1, |r| r.canary);
    let (mut canary_requests, mut hurt) = (0, 0);
    let mut class = Class::what_if(w.table, w.route, 0, w.tier, w.model);
    for i in 0..max {
        class.version = Some((w.split, 0));
        class.version_key = Some(mix(i ^ seed.rotate_left(32)));
        rollouts.steer(w.table, &mut class);
        let on_canary = class.version.is_some_and(|(_, v)| v == canary);
        let base = if on_canary { w.service.1 } else { w.service.0 };
        let took = base.mul_f64(0.5 + rng.f64());
        let error = on_canary && rng.f64() < w.errors;
        let miss = took > w.deadline;
        if on_canary {
            canary_requests += 1;
            hurt += u64::from(error || miss);
        }
        let cost = if on_canary { w.cost.1 } else { w.cost.0 };
        rollouts.observe(w.table, &class, if error { 500 } else { 200 }, miss, cost);
        let phase = rollouts.phase(w.table, w.model).map(|(p, _)| p);
        let outcome = match phase {
            Some(Phase::Promoted) => "promoted",
            Some(Phase::RolledBack) => "rolled_back",
            _ => continue,
        };
        return CanaryRun {
            canary: name,
            outcome,
            requests: i + 1,
            seconds: (i + 1) as f64 / rate,
            canary_requests,
            hurt,
        };
    }
    CanaryRun {
        canary: name,
        outcome: "running",
        requests: max,
        seconds: max as f64 / rate,
        canary_requests,
        hurt,
    }
}

/// splitmix64: a caller's sticky key from its number.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The report as text.
pub fn render(r: &RolloutReport) -> String {
    let steps: Vec<String> = r.steps_percent.iter().map(|p| format!("{p}")).collect();
    let mut out = format!(
        "rollout of {} ({} → {}), steps {} %, at least {} canary requests a step, {} req/s, objective {:.0} ms\n",
        r.model,
        r.stable,
        r.canary,
        steps.join(" → "),
        r.min_requests,
        r.rate,
        r.deadline_ms
    );
    for c in &r.runs {
        out.push_str(&format!(
            "  {:<10} {:<11} after {:>6} requests ({:>7.1} s); the canary served {}, hurt {}\n",
            c.canary, c.outcome, c.requests, c.seconds, c.canary_requests, c.hurt
        ));
    }
    out
}
