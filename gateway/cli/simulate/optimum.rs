//! The exact offline bounds `simulate` reports beside every system: `optimum`, the cheapest
//! assignment of the same requests to pools under the policy's restrictions, and `relaxed`,
//! the same without them. Both know every request in advance (arrival, service quantile,
//! tokens, bytes) and the fault timeline; neither is a router anyone could run.
//!
//! **The model.** Time is cut into slots of [`SLOT`] (and at every phase boundary, so a slot
//! lies in one phase). Each slot is solved on its own: the requests arriving in it, and the
//! capacity of every endpoint in it — its servers × the slot's length, less the time the
//! endpoint is down. Work cannot be carried from one slot to the next (a slot's requests
//! must fit its capacity), and within a slot work is fluid: a request's latency is its
//! service time on that pool, at its arrival, plus the round trip between its client's
//! region and the pool's, with no queueing. (A slot of 1 s is 6.7× the smallest deadline of
//! `fleet-faults`, 150 ms, and holds thousands of service times of 15–250 ms: a fluid
//! schedule is what a work-conserving router could approach; a shorter slot would forbid
//! more useful sharing of capacity across arrivals than it would remove fiction.)
//! A request may go to a pool that serves its model and, for `optimum`, that the policy
//! allows it: its tier's pool kinds and the data residency of its client's region (the
//! exclusions of `route::decide` that do not depend on live state). Its cost there is
//! what `route::cost` bills (usage + egress, [`Workload::bill`]); provisioned capacity is
//! a fixed cost of the phase, the same for every system, added to all of them alike.
//!
//! **The programme.** In a slot, requests with the same client region, tier, model,
//! service-quantile bucket (one of [`BUCKETS`]) and the same set of targets on which they
//! meet their deadline form a group; a target is a pool's endpoints that are alike in the
//! slot (the same faults of their own). For each group `g` and target `t`, `s[g,t]` and
//! `c[g,t]` are the exact service times and bills of its requests on `t`, averaged. The
//! variables `x[g,t] ≥ 0` are how many of `g` go to `t`, and `u[g] ≥ 0` how many are not
//! served at all:
//!
//! ```text
//! Σ_t x[g,t] + u[g] = n[g]                 every request placed (or counted unserved)
//! Σ_g s[g,t] x[g,t] ≤ capacity[t]          per target, the slot's server-time
//! ```
//!
//! The objective is lexicographic, solved as two programmes rather than with a big-M weight
//! (whose coefficients, next to bills of 10⁻⁸ USD, would exceed what a floating-point simplex
//! resolves): first minimise `Σ late x + 2 Σ u` (the most requests within their deadline,
//! then the most answered); then, with that value held (within 10⁻⁷ of a request), minimise
//! `Σ c[g,t] x[g,t]`. When every group's own best target (within its deadline if any, then
//! cheapest) fits every capacity, that assignment is optimal for both programmes at once
//! and the solver is not called: the usual case below saturation.
//!
//! **Exactness.** The figures are the exact optimum of this programme, solved by a simplex
//! (microlp, the maintained pure-Rust fork of minilp: a bounded LP of a few hundred
//! variables per slot, with capacity constraints whose coefficients are service times that
//! differ per group and pool, which is a generalised flow, not a min-cost flow). It is a
//! fractional (fluid) assignment: group members are interchangeable at their group's mean
//! service time, which within a bucket of 1/[`BUCKETS`] of the quantile range differs from
//! each member's by at most that share of the pool's jitter; a per-request programme could
//! place the short ones on a saturated pool and be cheaper by no more than that (measured on
//! `fleet-faults` at 5,000 req/s, where the GPU saturates in every slot: 8 buckets bill
//! within 0.1% of 32, 2 buckets 0.9% above). Capacity is the servers' whole time, with no
//! utilisation cap: a provisioned pool's `safe_utilisation` guards a live pool against
//! queueing, which the fluid model does not have, so the bound stays a bound. Cache:
//! perfect caching — every repeat of a request already seen is answered free and in time
//! (any TTL and byte bound can only do worse), for both bounds.

use super::{us, Charge, Hist, PhaseStats, Request, SimError, Workload, CACHE_ENTRIES};
use microlp::{ComparisonOp, OptimizationDirection, Problem, SolveOutcome};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use switchyard_gateway::serving::Serving;

/// The length of a slot (shorter at the end of a phase).
pub const SLOT: Duration = Duration::from_secs(1);
/// Service-quantile buckets per group.
pub const BUCKETS: usize = 8;
/// How far the second programme may let the first one's objective slip (round-off).
const HOLD: f64 = 1e-7;

/// Which fleet pools a request may be sent to, per (client region, tier, model).
#[derive(Debug, Clone)]
pub struct Allowed {
    tiers: usize,
    models: usize,
    pools: usize,
    allowed: Vec<bool>,
}

impl Allowed {
    fn at(&self, region: usize, tier: usize, model: usize) -> &[bool] {
        let i = ((region * self.tiers + tier) * self.models + model) * self.pools;
        &self.allowed[i..i + self.pools]
    }

    /// Any pool that serves the model (`relaxed`).
    pub fn any(w: &Workload) -> Allowed {
        Self::build(w, |_, _, model, pool| w.serves(pool, model as u16))
    }

    /// What `table` allows besides: the tier's pool kinds and the client region's data
    /// residency, on the policy's pools (a fleet pool the policy does not name is not
    /// allowed).
    pub fn by_policy(w: &Workload, table: &Serving) -> Allowed {
        let regions: Vec<_> = w
            .fleet
            .regions
            .iter()
            .map(|r| table.region_by_name(r))
            .collect();
        let tiers: Vec<_> = w.tiers.iter().map(|(t, _)| table.tier_by_name(t)).collect();
        let pools: Vec<_> = w
            .fleet
            .pools
            .iter()
            .map(|p| table.pools.iter().find(|q| q.name == p.name))
            .collect();
        Self::build(w, |region, tier, model, pool| {
            let (Some(r), Some(t), Some(p)) = (regions[region], tiers[tier], pools[pool]) else {
                return false;
            };
            w.serves(pool, model as u16)
                && p.models.serves(&w.models[model])
                && table.tiers[t as usize].kinds.contains(p.kind)
                && table.residency_allows(r, p.region)
        })
    }

    fn build(w: &Workload, ok: impl Fn(usize, usize, usize, usize) -> bool) -> Allowed {
        let (r, t, m, p) = (
            w.fleet.regions.len(),
            w.tiers.len(),
            w.models.len(),
            w.fleet.pools.len(),
        );
        let mut allowed = Vec::with_capacity(r * t * m * p);
        for region in 0..r {
            for tier in 0..t {
                for model in 0..m {
                    for pool in 0..p {
                        allowed.push(ok(region, tier, model, pool));
                    }
                }
            }
        }
        Allowed {
            tiers: t,
            models: m,
            pools: p,
            allowed,
        }
    }
}

/// Endpoints of one pool that are alike in a slot, and their server-time in it (µs).
#[derive(Debug, Clone)]
struct Target {
    pool: usize,
    /// One of them: service times are computed on it.
    endpoint: usize,
    capacity_us: f64,
}

/// A group's requests, summed per target.
#[derive(Debug, Clone, Default)]
struct Group {
    tier: usize,
    n: u64,
    /// Per target: Σ service µs, Σ usage, Σ egress, Σ latency ms; and whether they meet
    /// the deadline there (the same for all of them: part of the group's key).
    sums: Vec<[f64; 4]>,
    met: Vec<bool>,
    allowed: Vec<bool>,
}

/// A group's key: client region, tier, model, quantile bucket, targets meeting the deadline.
type Key = (u16, u16, u16, u16, u64);

/// The figures of one phase, fractional until the phase is done.
#[derive(Debug, Clone, Default)]
struct Tally {
    requests: u64,
    cache_hits: u64,
    errors: f64,
    met: Vec<f64>,
    tier_requests: Vec<u64>,
    served: Vec<f64>,
    busy_us: Vec<f64>,
    bill: Charge,
    latency: Vec<Hist>,
}

/// The bound for `w` with the pools `allowed`: per phase, as the systems report.
pub(super) fn solve(w: &Workload, allowed: &Allowed) -> Result<Vec<PhaseStats>, SimError> {
    let pools = w.fleet.pools.len();
    let mut tallies: Vec<Tally> = w
        .phases
        .iter()
        .map(|_| Tally {
            met: vec![0.0; w.tiers.len()],
            tier_requests: vec![0; w.tiers.len()],
            served: vec![0.0; pools],
            busy_us: vec![0.0; pools],
            latency: vec![Hist::default(); w.tiers.len()],
            ..Default::default()
        })
        .collect();
    let mut answered: HashSet<u64> = HashSet::new();
    let mut slot: Option<Slot> = None;
    for req in w.requests() {
        let phase = w.phase_of(req.at);
        let t = &mut tallies[phase];
        t.requests += 1;
        t.tier_requests[req.tier] += 1;
        if req.key != 0 {
            if answered.contains(&req.key) {
                t.cache_hits += 1;
                t.met[req.tier] += 1.0;
                t.latency[req.tier].add(0.0);
                continue;
            }
            if answered.len() < CACHE_ENTRIES {
                answered.insert(req.key);
            }
        }
        let index = slot_of(w, phase, req.at);
        if slot.as_ref().is_none_or(|s| s.index != index) {
            if let Some(done) = slot.take() {
                let phase = done.index.0;
                done.settle(&mut tallies[phase])?;
            }
            slot = Some(Slot::new(w, index));
        }
        if let Some(s) = slot.as_mut() {
            s.add(w, allowed, &req);
        }
    }
    if let Some(done) = slot.take() {
        let phase = done.index.0;
        done.settle(&mut tallies[phase])?;
    }
    Ok(tallies
        .into_iter()
        .map(|t| {
            let mut s = PhaseStats::new(w.tiers.len(), pools);
            s.requests = t.requests;
            s.cache_hits = t.cache_hits;
            s.errors = t.errors.round() as u64;
            for (i, ts) in s.tiers.iter_mut().enumerate() {
                ts.requests = t.tier_requests[i];
                ts.met = (t.met[i].round() as u64).min(ts.requests);
                ts.latency = t.latency[i].clone();
            }
            s.served = t.served.iter().map(|v| v.round() as u64).collect();
            s.busy_us = t.busy_us.iter().map(|v| v.round() as u64).collect();
            s.bill = t.bill;
            s
        })
        .collect())
}

/// A slot: (phase, its number within the phase).
type SlotIndex = (usize, u64);

fn slot_of(w: &Workload, phase: usize, at: Duration) -> SlotIndex {
    let into = at.saturating_sub(w.phases[phase].start);
    (phase, (into.as_micros() / SLOT.as_micros()) as u64)
}

/// The requests of one slot, grouped, and its targets.
struct Slot {
    index: SlotIndex,
    targets: Vec<Target>,
    groups: HashMap<Key, Group>,
}

impl Slot {
    fn new(w: &Workload, index: SlotIndex) -> Slot {
        let phase = &w.phases[index.0];
        let from = phase.start + SLOT * index.1 as u32;
        let to = (from + SLOT).min(phase.start + phase.len);
        let (from, to) = (us(from), us(to).max(us(from) + 1));
        let mut targets = Vec::new();
        for (p, pool) in w.fleet.pools.iter().enumerate() {
            // Endpoints are alike when the same faults name them (their own slowdowns and
            // outages overlapping the slot).
            let mut kinds: Vec<(Vec<usize>, usize, f64)> = Vec::new();
            for e in 0..pool.endpoints {
                let own = w.own_faults(p, e, from, to);
                let up_us = (to - from).saturating_sub(w.down_us(p, e, from, to)) as f64;
                let capacity = f64::from(pool.servers_per_endpoint) * up_us;
                match kinds.iter_mut().find(|k| k.0 == own) {
                    Some(k) => k.2 += capacity,
                    None => kinds.push((own, e, capacity)),
                }
            }
            for (_, endpoint, capacity_us) in kinds {
                if capacity_us > 0.0 {
                    targets.push(Target {
                        pool: p,
                        endpoint,
                        capacity_us,
                    });
                }
            }
        }
        Slot {
            index,
            targets,
            groups: HashMap::new(),
        }
    }

    fn add(&mut self, w: &Workload, allowed: &Allowed, req: &Request) {
        let at = us(req.at);
        let ok = allowed.at(req.region, req.tier, req.model as usize);
        let n = self.targets.len();
        // Per target: (allowed, service µs, bill, latency ms).
        let mut row: Vec<(bool, u64, Charge, f64)> = Vec::with_capacity(n);
        let mut met_bits = 0u64;
        for (i, t) in self.targets.iter().enumerate() {
            if !ok[t.pool] {
                row.push((false, 0, Charge::default(), 0.0));
                continue;
            }
            let service = w.service_at(t.pool, t.endpoint, req.service_quantile, at);
            let latency_us = service + w.rtt_us(req.region, t.pool);
            // What the request is judged on there: its last byte against the deadline, or
            // a stream's first token against its tier's TTFT objective.
            let (judged_us, objective_us) = w.judged(req, t.pool, 0, service);
            // (The key has room for 64 targets: past them a target counts as late, and the
            // bound's attainment errs low.)
            if judged_us <= objective_us && i < 64 {
                met_bits |= 1 << i;
            }
            let charge = w.bill(t.pool, req, service);
            row.push((true, service, charge, latency_us as f64 / 1000.0));
        }
        let bucket = ((req.service_quantile * BUCKETS as f64) as usize).min(BUCKETS - 1);
        let key = (
            req.region as u16,
            req.tier as u16,
            req.model,
            bucket as u16,
            met_bits,
        );
        let g = self.groups.entry(key).or_insert_with(|| Group {
            tier: req.tier,
            n: 0,
            sums: vec![[0.0; 4]; n],
            met: (0..n).map(|i| i < 64 && met_bits & (1 << i) != 0).collect(),
            allowed: row.iter().map(|r| r.0).collect(),
        });
        g.n += 1;
        for (sum, (_, service, charge, latency)) in g.sums.iter_mut().zip(row) {
            sum[0] += service as f64;
            sum[1] += charge.usage;
            sum[2] += charge.egress;
            sum[3] += latency;
        }
    }

    /// Solve the slot and add its assignment to the phase's figures.
    fn settle(self, tally: &mut Tally) -> Result<(), SimError> {
        let groups: Vec<Group> = self.groups.into_values().collect();
        let plan = match greedy(&groups, &self.targets) {
            Some(plan) => plan,
            None => programme(&groups, &self.targets)?,
        };
        for (g, (x, unserved)) in groups.iter().zip(plan) {
            tally.errors += unserved;
            let mut placed = 0u64;
            for (t, &share) in x.iter().enumerate() {
                if share <= 0.0 {
                    continue;
                }
                let n = g.n as f64;
                let mean = |k: usize| g.sums[t][k] / n;
                let pool = self.targets[t].pool;
                tally.served[pool] += share;
                tally.busy_us[pool] += share * mean(0);
                tally.bill.usage += share * mean(1);
                tally.bill.egress += share * mean(2);
                if g.met[t] {
                    tally.met[g.tier] += share;
                }
                let count = (share.round() as u64).min(g.n - placed);
                placed += count;
                tally.latency[g.tier].add_n(mean(3), count);
            }
            let failed = g.n - placed;
            tally.latency[g.tier].add_n(f64::INFINITY, failed);
        }
        Ok(())
    }
}

/// Per group: requests per target, and unserved.
type Plan = Vec<(Vec<f64>, f64)>;

/// Each group wholly on its own best target (meeting its deadline if any can, then the
/// cheapest), if that fits every capacity: then optimal.
fn greedy(groups: &[Group], targets: &[Target]) -> Option<Plan> {
    let mut load = vec![0.0; targets.len()];
    let mut plan = Vec::with_capacity(groups.len());
    for g in groups {
        let mut x = vec![0.0; targets.len()];
        let best = (0..targets.len())
            .filter(|&t| g.allowed[t])
            .min_by(|&a, &b| {
                let cost = |t: usize| g.sums[t][1] + g.sums[t][2];
                (!g.met[a], cost(a))
                    .partial_cmp(&(!g.met[b], cost(b)))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        match best {
            Some(t) => {
                x[t] = g.n as f64;
                load[t] += g.sums[t][0];
                plan.push((x, 0.0));
            }
            // Nowhere to go at all: unserved whatever the capacity.
            None => plan.push((x, g.n as f64)),
        }
    }
    load.iter()
        .zip(targets)
        .all(|(l, t)| *l <= t.capacity_us)
        .then_some(plan)
}

/// The two programmes of the module's doc, for a slot whose capacity binds.
fn programme(groups: &[Group], targets: &[Target]) -> Result<Plan, SimError> {
    let lp = |e: microlp::Error| SimError::Workload(format!("optimum: the solver failed: {e}"));
    // Service times in ms keep the capacity rows' coefficients near 1..1000.
    let build = |phase_two: Option<f64>| {
        let mut p = Problem::new(OptimizationDirection::Minimize);
        let mut vars = Vec::with_capacity(groups.len());
        let mut lateness = Vec::new();
        let mut per_target: Vec<Vec<(microlp::Variable, f64)>> = vec![Vec::new(); targets.len()];
        for g in groups {
            let n = g.n as f64;
            let mut row = Vec::new();
            let mut x = vec![None; targets.len()];
            for t in 0..targets.len() {
                if !g.allowed[t] {
                    continue;
                }
                let cost_micro_usd = (g.sums[t][1] + g.sums[t][2]) / n * 1e6;
                let late = if g.met[t] { 0.0 } else { 1.0 };
                let coeff = if phase_two.is_some() {
                    cost_micro_usd
                } else {
                    late
                };
                let v = p.add_var(coeff, (0.0, f64::INFINITY));
                x[t] = Some(v);
                row.push((v, 1.0));
                per_target[t].push((v, g.sums[t][0] / n / 1000.0));
                if late > 0.0 {
                    lateness.push((v, 1.0));
                }
            }
            let u = p.add_var(
                if phase_two.is_some() { 0.0 } else { 2.0 },
                (0.0, f64::INFINITY),
            );
            row.push((u, 1.0));
            lateness.push((u, 2.0));
            p.add_constraint(row.as_slice(), ComparisonOp::Eq, n);
            vars.push((x, u));
        }
        for (t, row) in per_target.iter().enumerate() {
            if !row.is_empty() {
                p.add_constraint(
                    row.as_slice(),
                    ComparisonOp::Le,
                    targets[t].capacity_us / 1000.0,
                );
            }
        }
        if let Some(held) = phase_two {
            if !lateness.is_empty() {
                p.add_constraint(
                    lateness.as_slice(),
                    ComparisonOp::Le,
                    held + HOLD.max(held * HOLD),
                );
            }
        }
        (p, vars)
    };
    let solved = |p: &Problem| -> Result<microlp::Solution, SimError> {
        match p.solve().map_err(lp)? {
            SolveOutcome::Solution(s) => Ok(s),
            SolveOutcome::Interrupted(_) => Err(SimError::Workload(
                "optimum: the solver stopped before a solution".into(),
            )),
        }
    };
    let (first, _) = build(None);
    let held = solved(&first)?.objective();
    let (second, vars) = build(Some(held));
    let s = solved(&second)?;
    Ok(vars
        .iter()
        .map(|(x, u)| {
            let x = x
                .iter()
                .map(|v| v.map_or(0.0, |v| s.var_value(v).max(0.0)))
                .collect();
            (x, s.var_value(*u).max(0.0))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(tier: usize, n: u64, per_target: &[(bool, bool, f64, f64)]) -> Group {
        // (allowed, met, service µs per request, bill per request)
        let nf = n as f64;
        Group {
            tier,
            n,
            sums: per_target
                .iter()
                .map(|&(_, _, s, c)| [s * nf, c * nf, 0.0, s / 1000.0 * nf])
                .collect(),
            met: per_target.iter().map(|t| t.1).collect(),
            allowed: per_target.iter().map(|t| t.0).collect(),
        }
    }

    fn target(pool: usize, capacity_us: f64) -> Target {
        Target {
            pool,
            endpoint: 0,
            capacity_us,
        }
    }

    #[test]
    fn a_tiny_instance_has_the_optimum_worked_out_by_hand() {
        // Two targets: a cheap one with room for 1 s of work, a dear one with plenty.
        // Group A: 10 requests, 100 ms each on either, met on both; B: 6 requests, 100 ms
        // on the cheap one (met) and 300 ms on the dear one (late).
        // By hand: B must all go cheap to be in time (0.6 s), leaving 0.4 s: 4 of A; the
        // other 6 of A go dear. Late: 0. Bill: cheap 10 × 1 + dear 6 × 5 = 40.
        let targets = [target(0, 1_000_000.0), target(1, 1e12)];
        let groups = [
            group(
                0,
                10,
                &[(true, true, 100_000.0, 1.0), (true, true, 100_000.0, 5.0)],
            ),
            group(
                0,
                6,
                &[(true, true, 100_000.0, 1.0), (true, false, 300_000.0, 5.0)],
            ),
        ];
        assert!(greedy(&groups, &targets).is_none(), "capacity binds");
        let plan = programme(&groups, &targets).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (&plan[0], &plan[1]);
        assert!((b.0[0] - 6.0).abs() < 1e-6, "{plan:?}");
        assert!((a.0[0] - 4.0).abs() < 1e-6, "{plan:?}");
        assert!((a.0[1] - 6.0).abs() < 1e-6, "{plan:?}");
        assert!(a.1.abs() < 1e-6 && b.1.abs() < 1e-6, "all served");
        let bill: f64 = plan
            .iter()
            .zip(&groups)
            .map(|((x, _), g)| {
                x.iter()
                    .enumerate()
                    .map(|(t, v)| v * g.sums[t][1] / g.n as f64)
                    .sum::<f64>()
            })
            .sum();
        assert!((bill - 40.0).abs() < 1e-4, "{bill}");
    }

    #[test]
    fn lateness_comes_before_cost_and_serving_late_before_not_at_all() {
        // One target with room for 2 requests of 1 s, in time; 3 requests: 2 in time, the
        // third cannot be placed (no other target) and is unserved.
        let targets = [target(0, 2_000_000.0)];
        let groups = [group(0, 3, &[(true, true, 1_000_000.0, 1.0)])];
        let plan = programme(&groups, &targets).unwrap_or_else(|e| panic!("{e}"));
        assert!((plan[0].0[0] - 2.0).abs() < 1e-6, "{plan:?}");
        assert!((plan[0].1 - 1.0).abs() < 1e-6, "{plan:?}");
        // A dear target in time beats a free one too slow.
        let targets = [target(0, 1e12), target(1, 1e12)];
        let groups = [group(
            0,
            5,
            &[(true, false, 1_000.0, 0.0), (true, true, 1_000.0, 9.0)],
        )];
        let plan = greedy(&groups, &targets).unwrap_or_default();
        assert_eq!(plan[0].0, vec![0.0, 5.0]);
    }
}
