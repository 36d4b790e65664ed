//! `switchyard tune`: the lowest-spend settings that still meet SLO targets, found in
//! simulation, written back into the operator's own YAML.
//!
//! The search is coordinate descent from the policy's own settings over:
//! - each tier's `weight` on a grid (0.0, 0.2 … 1.0);
//! - each targeted tier's `on_slo_miss`: `fastest`, `shed`, and `queue` when the policy has
//!   a `queue:` (a shed request counts as a miss of its tier and costs nothing, so
//!   `on_slo_miss` is searched only for tiers with a target: elsewhere `shed` would always
//!   win; a queued one is measured from enqueue to its job's result, and the report counts
//!   the requests each candidate queued and shed);
//! - each tier's hedging: off, or on with the tier's own `hedge_after`, else 2;
//! - each tier's `pools:` (the pool kinds it may use): the list with one kind dropped, or with
//!   one kind added that a pool of the policy has and that serves a model the tier's traffic
//!   asks for, and only lists that still leave a pool for every model the tier's traffic
//!   asks for in the workload;
//! - each `provisioned` pool's replicas (`price.replicas`, default its endpoints): one fewer,
//!   one more, half and double, within 1 … its endpoints. The simulator has no notion of
//!   replicas: it maps a policy's endpoints onto its fleet's by position. So a pool with `n`
//!   replicas is simulated on its first `n` endpoints, which takes capacity away with the
//!   count (its `concurrency` stays as written, so the gateway keeps sending as much, and it
//!   queues at fewer servers). A pool that declares more replicas than it lists endpoints
//!   (replicas behind one address) is not searched, and one that declares fewer is
//!   simulated on that many endpoints here, though `simulate` runs it on all of them.
//!
//! Deadlines are never searched: they are the objective.
//!
//! Every candidate is the policy compiled afresh (fresh live state) with the settings
//! changed, run alone through the workload by the simulator. A candidate meets the targets
//! when each targeted tier's SLO attainment reaches its target in **every** phase (the
//! worst phase counts, so a policy cannot pass on average while failing during a fault);
//! among those the lowest spend wins, then the fewest changes, then the fewest requests
//! queued or shed, then the first tried. Spend is the simulator's bill (`route::cost` on
//! the fleet's prices: provisioned capacity over every phase, usage and egress), with a
//! candidate's provisioned pools billed for the replicas it runs, so fewer replicas save
//! their replica-hours and must still meet the targets on the capacity left.
//!
//! The best found is then simplified: each of its changes is undone in turn and left undone
//! when the targets still hold for no more spend, so no change that buys nothing is
//! suggested. The report shows, per candidate, its spend and saving against the current
//! settings and each targeted tier's attainment in every phase; and for a pool list, the
//! replicas and `on_slo_miss: queue`, when the one written leaves them alone, the best
//! candidate tried that changed them (what that lever did).
//!
//! Bounded and deterministic: at most [`PER_TIER`] candidates per tier and [`PER_POOL`] per
//! searched pool in a round, at most [`ROUNDS`] rounds (it stops when a round changes
//! nothing), then one per setting to simplify, each distinct candidate simulated once: with
//! three tiers and no provisioned pool at most 1 + 3 × 42 + 12 = 139 simulations (the
//! report prints the bound). Candidates are tried in a fixed order on a seeded simulator,
//! and ties are broken as above. Coordinate descent is a local search: it can miss a better
//! combination that needs two settings to move at once; the report says how many
//! candidates it tried, and how many of them changed each kind of setting.
//!
//! The tuned file is the original text with only the changed values replaced, so comments
//! and layout survive: a scalar in place (or the key added after the tier's `deadline:` when
//! it had none); a `hedge_after` turned off removed from a flow mapping, commented out in a
//! block one; a flow pool list rewritten between its brackets, a block one with a dropped
//! entry commented out and an added one on a new line after its last entry; `replicas:`
//! replaced in place, or added at the end of the pool's `price:` mapping. It is compiled
//! again and its settings compared before anything is written.

use super::{simulate_policy, workload_of, PhaseStats, SimError, SimOptions, Workload};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use switchyard_gateway::policy::compile::{
    self, Billing, CompileContext, KindSet, PoolId, RoutingTable,
};
use switchyard_gateway::policy::raw::{OnSloMiss, PoolKind};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

/// The weights tried for each tier.
pub const WEIGHTS: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
/// Rounds of coordinate descent at most (it stops earlier when a round changes nothing).
pub const ROUNDS: usize = 3;
/// The `on_slo_miss` choices tried (`queue` only when the policy has a `queue:`).
const MISSES: [OnSloMiss; 3] = [OnSloMiss::Fastest, OnSloMiss::Shed, OnSloMiss::Queue];
/// The `hedge_after` tried for a tier that has none.
const HEDGE_AFTER: f64 = 2.0;
/// The pool kinds, in the order of a tier's kind bits (and of kinds added to a list).
const KINDS: [PoolKind; 3] = [PoolKind::Edge, PoolKind::Gpu, PoolKind::Batch];
/// Candidates per tier and round at most: the weights, the `on_slo_miss` choices, hedging
/// off and on, and each kind dropped or added.
pub const PER_TIER: usize = WEIGHTS.len() + MISSES.len() + 2 + KINDS.len();
/// Candidates per provisioned pool and round at most: replicas −1, +1, halved, doubled.
pub const PER_POOL: usize = 4;

/// Every setting the search moves: per tier in the policy's tier order, per pool in its
/// pool order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Knobs {
    pub weights: Vec<f64>,
    pub misses: Vec<OnSloMiss>,
    pub hedges: Vec<Option<f64>>,
    /// The pool kinds each tier may use, one bit per kind in [`KINDS`] order.
    pub kinds: Vec<u8>,
    /// The replicas of each pool whose count is searched (`None`: not searched).
    pub replicas: Vec<Option<u32>>,
}

fn kind_bit(kind: PoolKind) -> u8 {
    KINDS.iter().position(|k| *k == kind).map_or(0, |i| 1 << i)
}

fn kind_mask(set: KindSet) -> u8 {
    KINDS
        .iter()
        .filter(|k| set.contains(**k))
        .fold(0, |m, k| m | kind_bit(*k))
}

fn kind_set(mask: u8) -> KindSet {
    let mut set = KindSet::default();
    for k in KINDS.iter().filter(|k| mask & kind_bit(**k) != 0) {
        set.insert(*k);
    }
    set
}

fn kind_names(mask: u8) -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| mask & kind_bit(**k) != 0)
        .map(|k| k.as_str())
        .collect()
}

impl Knobs {
    fn of(table: &RoutingTable) -> Knobs {
        Knobs {
            weights: table.tiers.iter().map(|t| t.weight).collect(),
            misses: table.tiers.iter().map(|t| t.on_slo_miss).collect(),
            hedges: table.tiers.iter().map(|t| t.hedge_after).collect(),
            kinds: table.tiers.iter().map(|t| kind_mask(t.kinds)).collect(),
            replicas: table
                .pools
                .iter()
                .map(|p| p.replicas().filter(|r| *r as usize <= p.endpoints.len()))
                .collect(),
        }
    }

    /// Set these settings on a freshly compiled table (before its live state is made, which
    /// is sized by the endpoints).
    fn apply(&self, table: &mut RoutingTable) {
        for (i, tier) in table.tiers.iter_mut().enumerate() {
            tier.weight = self.weights[i];
            tier.on_slo_miss = self.misses[i];
            tier.hedge_after = self.hedges[i];
            tier.kinds = kind_set(self.kinds[i]);
        }
        for (pool, n) in table.pools.iter_mut().zip(&self.replicas) {
            let Some(n) = *n else { continue };
            if let Billing::Provisioned { replicas, .. } = &mut pool.pricing.billing {
                *replicas = Some(n);
                pool.endpoints.truncate(n as usize);
            }
        }
    }

    fn key(&self) -> Vec<u64> {
        let weights = self.weights.iter().map(|w| w.to_bits());
        let misses = self.misses.iter().map(|m| *m as u64);
        let hedges = self.hedges.iter().map(|h| h.map_or(u64::MAX, f64::to_bits));
        let kinds = self.kinds.iter().map(|k| u64::from(*k));
        let replicas = self.replicas.iter().map(|r| r.map_or(u64::MAX, u64::from));
        weights
            .chain(misses)
            .chain(hedges)
            .chain(kinds)
            .chain(replicas)
            .collect()
    }

    /// These settings with setting `j` (each tier's weight, `on_slo_miss`, hedging and pool
    /// list, then each pool's replicas) set back to `to`'s; `None` when it is already.
    fn revert(&self, to: &Knobs, j: usize) -> Option<Knobs> {
        let mut k = self.clone();
        let tiers = self.weights.len();
        match (j / 4, j % 4) {
            (i, 0) if i < tiers => k.weights[i] = to.weights[i],
            (i, 1) if i < tiers => k.misses[i] = to.misses[i],
            (i, 2) if i < tiers => k.hedges[i] = to.hedges[i],
            (i, 3) if i < tiers => k.kinds[i] = to.kinds[i],
            _ => {
                let p = j.checked_sub(4 * tiers)?;
                *k.replicas.get_mut(p)? = to.replicas[p];
            }
        }
        (k != *self).then_some(k)
    }

    /// How many settings differ from `other`'s.
    fn changes(&self, other: &Knobs) -> usize {
        self.describe(other, &[], &[]).len()
    }

    /// Each setting that differs from `from`'s, in words (`realtime weight 0.8 → 0.0`);
    /// `tiers` and `pools` name them (an empty slice: by number).
    fn describe(&self, from: &Knobs, tiers: &[String], pools: &[String]) -> Vec<String> {
        let name = |names: &[String], i: usize| names.get(i).cloned().unwrap_or(i.to_string());
        let hedge = |h: Option<f64>| h.map_or("off".to_string(), |h| h.to_string());
        let mut out = Vec::new();
        for i in 0..self.weights.len() {
            let t = name(tiers, i);
            if (self.weights[i] - from.weights[i]).abs() > 1e-9 {
                out.push(format!(
                    "{t} weight {:.1} → {:.1}",
                    from.weights[i], self.weights[i]
                ));
            }
            if self.misses[i] != from.misses[i] {
                out.push(format!(
                    "{t} on_slo_miss {} → {}",
                    miss_name(from.misses[i]),
                    miss_name(self.misses[i])
                ));
            }
            if self.hedges[i] != from.hedges[i] {
                out.push(format!(
                    "{t} hedge_after {} → {}",
                    hedge(from.hedges[i]),
                    hedge(self.hedges[i])
                ));
            }
            if self.kinds[i] != from.kinds[i] {
                out.push(format!(
                    "{t} pools [{}] → [{}]",
                    kind_names(from.kinds[i]).join(", "),
                    kind_names(self.kinds[i]).join(", ")
                ));
            }
        }
        for (p, (a, b)) in from.replicas.iter().zip(&self.replicas).enumerate() {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    out.push(format!("{} replicas {a} → {b}", name(pools, p)));
                }
            }
        }
        out
    }
}

fn miss_name(m: OnSloMiss) -> &'static str {
    match m {
        OnSloMiss::Fastest => "fastest",
        OnSloMiss::Shed => "shed",
        OnSloMiss::Queue => "queue",
    }
}

/// What to tune and against what.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    pub policy: PathBuf,
    /// Workload (`sim.workload` or the scenario with its phase length and rate) and seed;
    /// `sim.policies` is ignored.
    pub sim: SimOptions,
    /// Tier name and the SLO attainment it must reach, percent.
    pub targets: Vec<(String, f64)>,
}

/// One set of settings and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// What differs from the current settings, in words (`realtime weight 0.8 → 0.0`).
    pub changes: Vec<String>,
    /// Weight per tier, in the policy's tier order.
    pub weights: Vec<(String, f64)>,
    /// `on_slo_miss` per tier.
    pub on_slo_miss: Vec<(String, &'static str)>,
    /// `hedge_after` per tier (`None`: no hedging).
    pub hedge_after: Vec<(String, Option<f64>)>,
    /// The pool kinds each tier may use.
    pub pools: Vec<(String, Vec<&'static str>)>,
    /// Replicas of each provisioned pool whose count is searched.
    pub replicas: Vec<(String, u32)>,
    #[serde(skip)]
    knobs: Knobs,
    /// The order it was first tried in (0: the current settings).
    #[serde(skip)]
    order: usize,
    pub spend_per_1k_usd: f64,
    /// Spend per 1000 requests saved against the current settings (negative: dearer).
    pub saving_per_1k_usd: f64,
    /// The same, percent of the current spend.
    pub saving_percent: f64,
    /// Per targeted tier, its attainment in each phase (the report's `phases`), percent;
    /// `None` where the tier had no request in that phase.
    pub attainment: Vec<(String, Vec<Option<f64>>)>,
    /// Per targeted tier, its attainment in its worst phase, percent.
    pub worst_attainment: Vec<(String, f64)>,
    /// Requests accepted as jobs by the queue, and requests shed, over the workload.
    pub queued: u64,
    pub shed: u64,
    pub meets_targets: bool,
}

/// How many of the candidates simulated changed each kind of setting (against the current
/// ones).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Searched {
    pub weights: usize,
    pub on_slo_miss: usize,
    pub hedging: usize,
    pub pool_lists: usize,
    pub replicas: usize,
}

/// The best candidate tried that changed one kind of setting, shown beside the one written
/// when that one does not change it: what the lever did, per phase.
#[derive(Debug, Clone, Serialize)]
pub struct Lever {
    /// `a pool list`, `replicas` or `on_slo_miss: queue`.
    pub changed: &'static str,
    pub candidate: Candidate,
}

/// The kinds of setting a [`Lever`] is reported for, and whether candidate settings changed
/// one against the current ones.
type Changed = fn(&Knobs, &Knobs) -> bool;
const LEVERS: [(&str, Changed); 3] = [
    ("a pool list", |k, c| k.kinds != c.kinds),
    ("replicas", |k, c| k.replicas != c.replicas),
    ("on_slo_miss: queue", |k, c| {
        let queues = |(a, b): (&OnSloMiss, &OnSloMiss)| *a == OnSloMiss::Queue && *b != *a;
        k.misses.iter().zip(&c.misses).any(queues)
    }),
];

#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub policy: String,
    pub targets: Vec<(String, f64)>,
    /// The workload's phases, in the order of each candidate's `attainment`.
    pub phases: Vec<String>,
    /// Distinct candidates simulated (the current settings included), and at most how many
    /// the search could have tried.
    pub evaluated: usize,
    pub bound: usize,
    pub searched: Searched,
    /// What `spend_per_1k_usd` is.
    pub bill: &'static str,
    pub current: Candidate,
    /// Up to five candidates meeting the targets with different outcomes (spend, attainment,
    /// requests queued and shed), cheapest first, then the fewest changes, then the fewest
    /// requests queued or shed; the first is the one written.
    pub best: Vec<Candidate>,
    /// For a pool list, replicas and `on_slo_miss: queue`, when the first of `best` leaves
    /// it as it is: the best candidate tried that changed it (meeting the targets first,
    /// then the cheapest; else the smallest shortfall).
    pub levers: Vec<Lever>,
    /// The changed lines of the tuned policy against the original (empty if none).
    pub diff: String,
    /// The tuned policy text (the original with the first of `best`'s settings), if any
    /// candidate met the targets.
    #[serde(skip)]
    pub tuned: Option<String>,
}

/// What the simulator bills today (see the module documentation).
const BILL: &str = "the simulator's (route::cost on the fleet's prices): provisioned \
                    capacity over every phase for the replicas a candidate runs, plus usage \
                    (per request, tokens, GPU-hours) and egress";

/// Parse `realtime=99.5%` (the `%` is optional).
pub fn parse_target(s: &str) -> Result<(String, f64), String> {
    let (tier, pct) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected TIER=PERCENT, e.g. realtime=99.5%"))?;
    let pct: f64 = pct
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}`: `{pct}` is not a percentage"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("`{s}`: a percentage from 0 to 100"));
    }
    Ok((tier.trim().to_string(), pct))
}

fn compile_table(text: &str, file: &Path) -> Result<RoutingTable, SimError> {
    Ok(compile::compile_str(
        text,
        &CompileContext {
            file,
            gateway_region: None,
        },
    )?)
}

fn load(table: RoutingTable) -> Result<Serving, SimError> {
    let table = Serving::load(table, &Fleet::default())?;
    // As `tools::load`: an endpoint whose name does not resolve offline is still simulated.
    for (i, pool) in table.pools.iter().enumerate() {
        for (e, _) in pool
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, ep)| !ep.resolved)
        {
            table.live.endpoint(i as PoolId, e).clear_health();
        }
    }
    Ok(table)
}

struct Search<'a> {
    text: &'a str,
    file: &'a Path,
    w: &'a Workload,
    tiers: Vec<String>,
    pools: Vec<String>,
    targets: &'a [(String, f64)],
    seed: u64,
    /// Candidates by settings, as an index into `tried` (the order they were tried in).
    seen: HashMap<Vec<u64>, usize>,
    tried: Vec<Candidate>,
}

impl Search<'_> {
    fn evaluate(&mut self, knobs: &Knobs) -> Result<Candidate, SimError> {
        let key = knobs.key();
        if let Some(&i) = self.seen.get(&key) {
            return Ok(self.tried[i].clone());
        }
        let mut table = compile_table(self.text, self.file)?;
        knobs.apply(&mut table);
        let name = super::policy_name(self.file);
        let stats = simulate_policy(self.w, &name, load(table)?, self.seed)?;
        let c = self.candidate(knobs, &stats);
        self.seen.insert(key, self.tried.len());
        self.tried.push(c.clone());
        Ok(c)
    }

    fn candidate(&self, knobs: &Knobs, stats: &[PhaseStats]) -> Candidate {
        let requests: u64 = stats.iter().map(|s| s.requests).sum();
        // Capacity as the candidate would pay it: the fleet's price per replica-hour for the
        // replicas it runs (a candidate that changes no replicas pays what `simulate`
        // reports).
        let replicas: Vec<Option<u32>> = self
            .w
            .fleet
            .pools
            .iter()
            .map(|f| {
                let i = self.pools.iter().position(|p| *p == f.name)?;
                knobs.replicas.get(i).copied().flatten()
            })
            .collect();
        let capacity: f64 = self
            .w
            .phases
            .iter()
            .map(|p| self.w.capacity_usd_with(p, &replicas))
            .sum();
        let spend: f64 = capacity + stats.iter().map(|s| s.bill.total()).sum::<f64>();
        let mut meets = true;
        let mut worst_attainment = Vec::new();
        let mut attainment = Vec::new();
        for (tier, target) in self.targets {
            let t = self
                .w
                .tiers
                .iter()
                .position(|(n, _)| n == tier)
                .unwrap_or(0);
            let phases: Vec<Option<f64>> = stats
                .iter()
                .map(|s| {
                    let s = &s.tiers[t];
                    (s.requests > 0).then(|| s.met as f64 * 100.0 / s.requests as f64)
                })
                .collect();
            let worst = phases.iter().flatten().copied().fold(100.0, f64::min);
            meets &= worst >= *target;
            worst_attainment.push((tier.clone(), super::round(worst, 2)));
            let rounded = phases.iter().map(|p| p.map(|p| super::round(p, 2)));
            attainment.push((tier.clone(), rounded.collect()));
        }
        let named = |i: usize| self.tiers[i].clone();
        let current = self.tried.first().map(|c| &c.knobs).unwrap_or(knobs);
        Candidate {
            changes: knobs.describe(current, &self.tiers, &self.pools),
            weights: (0..self.tiers.len())
                .map(|i| (named(i), knobs.weights[i]))
                .collect(),
            on_slo_miss: (0..self.tiers.len())
                .map(|i| (named(i), miss_name(knobs.misses[i])))
                .collect(),
            hedge_after: (0..self.tiers.len())
                .map(|i| (named(i), knobs.hedges[i]))
                .collect(),
            pools: (0..self.tiers.len())
                .map(|i| (named(i), kind_names(knobs.kinds[i])))
                .collect(),
            replicas: self
                .pools
                .iter()
                .zip(&knobs.replicas)
                .filter_map(|(p, r)| r.map(|r| (p.clone(), r)))
                .collect(),
            knobs: knobs.clone(),
            order: self.tried.len(),
            spend_per_1k_usd: super::round(spend * 1000.0 / requests.max(1) as f64, 5),
            saving_per_1k_usd: 0.0,
            saving_percent: 0.0,
            attainment,
            worst_attainment,
            queued: stats.iter().map(|s| s.queued).sum(),
            shed: stats.iter().map(|s| s.shed).sum(),
            meets_targets: meets,
        }
    }
}

/// How many settings differ from the policy's own.
fn changes(c: &Candidate, current: &Knobs) -> usize {
    c.knobs.changes(current)
}

/// Whether `a` is better than `b`: meeting the targets first, then the lower spend, then
/// fewer changes to the policy; between two that miss, the smaller total shortfall.
fn better(a: &Candidate, b: &Candidate, targets: &[(String, f64)], current: &Knobs) -> bool {
    let shortfall = |c: &Candidate| -> f64 {
        c.worst_attainment
            .iter()
            .zip(targets)
            .map(|((_, got), (_, want))| (want - got).max(0.0))
            .sum()
    };
    match (a.meets_targets, b.meets_targets) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => {
            (a.spend_per_1k_usd, changes(a, current)) < (b.spend_per_1k_usd, changes(b, current))
        }
        (false, false) => shortfall(a) < shortfall(b),
    }
}

/// Per policy tier, the kinds of pool that serve each model its traffic asks for in the
/// workload (one mask per model asked; empty: the tier has no traffic).
fn asked(w: &Workload, table: &RoutingTable, tiers: &[String]) -> Vec<Vec<u8>> {
    let mut asks = vec![vec![false; w.models.len()]; w.tiers.len()];
    for r in w.requests() {
        if let Some(m) = asks
            .get_mut(r.tier)
            .and_then(|t| t.get_mut(r.model as usize))
        {
            *m = true;
        }
    }
    let serving = |model: &str| {
        table
            .pools
            .iter()
            .filter(|p| p.models.serves(model))
            .fold(0, |m, p| m | kind_bit(p.kind))
    };
    tiers
        .iter()
        .map(|tier| {
            let Some(t) = w.tiers.iter().position(|(n, _)| n == tier) else {
                return Vec::new();
            };
            w.models
                .iter()
                .zip(&asks[t])
                .filter(|(_, asked)| **asked)
                .map(|(m, _)| serving(m))
                .collect()
        })
        .collect()
}

/// The pool lists tried for a tier using `kinds` whose traffic's models are served by the
/// kinds in `models` (one mask per model): each kind dropped or added, where every model is
/// still served and an added kind serves one of them.
fn kind_lists(kinds: u8, models: &[u8]) -> Vec<u8> {
    if models.is_empty() {
        return Vec::new();
    }
    KINDS
        .iter()
        .map(|k| kinds ^ kind_bit(*k))
        .filter(|&list| {
            let added = list & !kinds;
            models.iter().all(|m| m & list != 0)
                && (added == 0 || models.iter().any(|m| m & added != 0))
        })
        .collect()
}

/// The replica counts tried for a pool with `n` of them and `endpoints`: one fewer, one
/// more, half and double, within 1 … `endpoints`.
fn replica_counts(n: u32, endpoints: u32) -> Vec<u32> {
    let mut counts = vec![n.saturating_sub(1), n + 1, n / 2, n.saturating_mul(2)];
    counts.retain(|&c| c >= 1 && c <= endpoints && c != n);
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Search the settings; the report, and the tuned text when a candidate meets the targets.
pub fn tune(opts: &TuneOptions) -> Result<TuneReport, SimError> {
    let text = std::fs::read_to_string(&opts.policy)
        .map_err(|e| SimError::Workload(format!("{}: cannot read: {e}", opts.policy.display())))?;
    let w = workload_of(&opts.sim)?;
    let base = compile_table(&text, &opts.policy)?;
    let tiers: Vec<String> = base.tiers.iter().map(|t| t.name.clone()).collect();
    let pools: Vec<String> = base.pools.iter().map(|p| p.name.clone()).collect();
    let endpoints: Vec<u32> = base
        .pools
        .iter()
        .map(|p| p.endpoints.len() as u32)
        .collect();
    let current = Knobs::of(&base);
    let has_queue = base.queue.is_some();
    let models = asked(&w, &base, &tiers);
    drop(base);
    if opts.targets.is_empty() {
        return Err(SimError::Workload(
            "at least one --target TIER=PERCENT".into(),
        ));
    }
    for (tier, _) in &opts.targets {
        if !w.tiers.iter().any(|(n, _)| n == tier) || !tiers.contains(tier) {
            return Err(SimError::Workload(format!(
                "target tier `{tier}` is not both a tier of the policy ({}) and of the workload ({})",
                tiers.join(", "),
                super::names(w.tiers.iter().map(|(n, _)| n.as_str()))
            )));
        }
    }
    let searched_pools = current.replicas.iter().flatten().count();
    let bound = 1
        + ROUNDS * (PER_TIER * tiers.len() + PER_POOL * searched_pools)
        + 4 * tiers.len()
        + searched_pools;
    let mut search = Search {
        text: &text,
        file: &opts.policy,
        w: &w,
        tiers: tiers.clone(),
        pools: pools.clone(),
        targets: &opts.targets,
        seed: opts.sim.seed,
        seen: HashMap::new(),
        tried: Vec::new(),
    };
    let current_c = search.evaluate(&current)?;
    let (mut best_w, mut best_c) = (current.clone(), current_c.clone());
    for _ in 0..ROUNDS {
        let before = best_w.clone();
        for (i, tier) in tiers.iter().enumerate() {
            let mut tries: Vec<Knobs> = Vec::new();
            for g in WEIGHTS {
                let mut cand = best_w.clone();
                cand.weights[i] = g;
                tries.push(cand);
            }
            // Shedding a tier nobody set a target for would always be cheapest.
            let targeted = opts.targets.iter().any(|(t, _)| t == tier);
            for m in MISSES.into_iter().filter(|_| targeted) {
                if m != OnSloMiss::Queue || has_queue {
                    let mut cand = best_w.clone();
                    cand.misses[i] = m;
                    tries.push(cand);
                }
            }
            for h in [None, Some(current.hedges[i].unwrap_or(HEDGE_AFTER))] {
                let mut cand = best_w.clone();
                cand.hedges[i] = h;
                tries.push(cand);
            }
            for list in kind_lists(best_w.kinds[i], &models[i]) {
                let mut cand = best_w.clone();
                cand.kinds[i] = list;
                tries.push(cand);
            }
            for cand in tries {
                let c = search.evaluate(&cand)?;
                if better(&c, &best_c, &opts.targets, &current) {
                    (best_w, best_c) = (cand, c);
                }
            }
        }
        for (p, &listed) in endpoints.iter().enumerate() {
            let Some(n) = best_w.replicas[p] else {
                continue;
            };
            for count in replica_counts(n, listed) {
                let mut cand = best_w.clone();
                cand.replicas[p] = Some(count);
                let c = search.evaluate(&cand)?;
                if better(&c, &best_c, &opts.targets, &current) {
                    (best_w, best_c) = (cand, c);
                }
            }
        }
        if best_w == before {
            break;
        }
    }
    // Each change of the best undone in turn, and left undone when the targets still hold
    // for no more spend: a change that buys nothing is not suggested.
    for j in 0..4 * tiers.len() + pools.len() {
        let Some(cand) = best_w.revert(&current, j) else {
            continue;
        };
        let c = search.evaluate(&cand)?;
        if c.meets_targets && c.spend_per_1k_usd <= best_c.spend_per_1k_usd {
            (best_w, best_c) = (cand, c);
        }
    }
    let was = current_c.spend_per_1k_usd;
    let saving = |mut c: Candidate| {
        let now = c.spend_per_1k_usd;
        c.saving_per_1k_usd = super::round(was - now, 5);
        c.saving_percent = if was > 0.0 {
            super::round((was - now) * 100.0 / was, 2)
        } else {
            0.0
        };
        c
    };
    let mut searched = Searched::default();
    for c in &search.tried {
        let (k, cur) = (&c.knobs, &current);
        let weights = k.weights.iter().zip(&cur.weights);
        searched.weights += usize::from(weights.into_iter().any(|(a, b)| (a - b).abs() > 1e-9));
        searched.on_slo_miss += usize::from(k.misses != cur.misses);
        searched.hedging += usize::from(k.hedges != cur.hedges);
        searched.pool_lists += usize::from(k.kinds != cur.kinds);
        searched.replicas += usize::from(k.replicas != cur.replicas);
    }
    let mut meeting: Vec<Candidate> = search
        .tried
        .iter()
        .filter(|c| c.meets_targets)
        .cloned()
        .map(saving)
        .collect();
    meeting.sort_by(|a, b| {
        a.spend_per_1k_usd
            .total_cmp(&b.spend_per_1k_usd)
            .then(changes(a, &current).cmp(&changes(b, &current)))
            .then((a.queued + a.shed).cmp(&(b.queued + b.shed)))
            .then(a.order.cmp(&b.order))
    });
    // One candidate per outcome (spend, attainment, requests queued and shed): the simplest
    // of those alike.
    let mut outcomes: Vec<(u64, String, u64, u64)> = Vec::new();
    meeting.retain(|c| {
        let outcome = (
            c.spend_per_1k_usd.to_bits(),
            format!("{:?}", c.attainment),
            c.queued,
            c.shed,
        );
        let new = !outcomes.contains(&outcome);
        outcomes.push(outcome);
        new
    });
    meeting.truncate(5);
    let mut levers = Vec::new();
    for (changed, by) in LEVERS {
        if meeting.first().is_some_and(|c| by(&c.knobs, &current)) {
            continue;
        }
        let mut lever: Option<&Candidate> = None;
        for c in search.tried.iter().filter(|c| by(&c.knobs, &current)) {
            if lever.is_none_or(|l| better(c, l, &opts.targets, &current)) {
                lever = Some(c);
            }
        }
        if let Some(c) = lever {
            let candidate = saving(c.clone());
            levers.push(Lever { changed, candidate });
        }
    }
    let (tuned, diff) = match meeting.first() {
        Some(best) => {
            let (tuned, diff) =
                rewrite_policy(&text, &opts.policy, &tiers, &pools, &best.knobs, &current)?;
            (Some(tuned), diff)
        }
        None => (None, String::new()),
    };
    Ok(TuneReport {
        policy: opts.policy.display().to_string(),
        targets: opts.targets.clone(),
        phases: w.phases.iter().map(|p| p.name.clone()).collect(),
        evaluated: search.tried.len(),
        bound,
        searched,
        bill: BILL,
        current: saving(current_c),
        best: meeting,
        levers,
        diff,
        tuned,
    })
}

/// An edit of the policy text: (line index, byte start, byte end, replacement).
type Edit = (usize, usize, usize, String);

/// The policy text with each tier's and pool's settings set to `knobs` (tiers in `tiers`
/// order, pools in `pools` order; a pool's replicas written only where they differ from
/// `current`), checked by compiling it again, and the changed lines as `-`/`+` pairs (an
/// edit changes or adds lines after one line, so that is the whole diff).
fn rewrite_policy(
    text: &str,
    file: &Path,
    tiers: &[String],
    pools: &[String],
    knobs: &Knobs,
    current: &Knobs,
) -> Result<(String, String), SimError> {
    let raw = switchyard_gateway::policy::parse(text, file)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut edits: Vec<Edit> = Vec::new();
    let cannot = |what: &str| {
        SimError::Workload(format!(
            "{}: cannot rewrite {what}; set it by hand",
            file.display()
        ))
    };
    for (name, tier) in &raw.tiers {
        let Some(i) = tiers.iter().position(|n| n == name) else {
            continue;
        };
        let d = &tier.value.deadline.referenced;
        let (weight, miss, hedge) = (knobs.weights[i], knobs.misses[i], knobs.hedges[i]);
        let value = format!("{weight:.1}");
        let loc = &tier.value.weight.referenced;
        if (tier.value.weight.value - weight).abs() < 1e-12 {
            // As written, or the default when it is not.
        } else if loc.line() > 0 {
            let (l, start, end) = token_at(&lines, loc.line(), loc.column())
                .ok_or_else(|| cannot(&format!("the weight of tier `{name}`")))?;
            edits.push((l, start, end, value));
        } else {
            set_key(
                &lines,
                &mut edits,
                (d.line(), d.column()),
                "weight",
                Some(value),
            )
            .ok_or_else(|| cannot(&format!("the weight of tier `{name}`")))?;
        }
        if tier.value.on_slo_miss != miss {
            let value = Some(miss_name(miss).to_string());
            set_key(
                &lines,
                &mut edits,
                (d.line(), d.column()),
                "on_slo_miss",
                value,
            )
            .ok_or_else(|| cannot(&format!("on_slo_miss of tier `{name}`")))?;
        }
        if tier.value.hedge_after.as_ref().map(|h| h.value) != hedge {
            let value = hedge.map(|h| format!("{h}"));
            set_key(
                &lines,
                &mut edits,
                (d.line(), d.column()),
                "hedge_after",
                value,
            )
            .ok_or_else(|| cannot(&format!("hedge_after of tier `{name}`")))?;
        }
        let written = tier
            .value
            .pools
            .iter()
            .fold(0, |m, k| m | kind_bit(k.value));
        if written != knobs.kinds[i] {
            let entries: Vec<(u64, u64, PoolKind)> = tier
                .value
                .pools
                .iter()
                .map(|k| (k.referenced.line(), k.referenced.column(), k.value))
                .collect();
            set_kinds(&lines, &mut edits, &entries, knobs.kinds[i])
                .ok_or_else(|| cannot(&format!("the pools of tier `{name}`")))?;
        }
    }
    // Where each pool's text starts (line index), to find its `price:` before the next.
    let mut starts: Vec<usize> = raw
        .pools
        .iter()
        .map(|p| {
            let line = p.referenced.line().min(p.value.name.referenced.line());
            (line as usize).saturating_sub(1)
        })
        .collect();
    starts.sort_unstable();
    for (p, name) in pools.iter().enumerate() {
        let (Some(want), was) = (knobs.replicas[p], current.replicas[p]) else {
            continue;
        };
        if Some(want) == was {
            continue;
        }
        let pool = raw
            .pools
            .iter()
            .find(|r| r.value.name.value == *name)
            .ok_or_else(|| cannot(&format!("the replicas of pool `{name}`")))?;
        let start = (pool
            .referenced
            .line()
            .min(pool.value.name.referenced.line()) as usize)
            .saturating_sub(1);
        let end = starts
            .iter()
            .copied()
            .find(|&s| s > start)
            .unwrap_or(lines.len());
        let written = pool
            .value
            .price
            .replicas
            .as_ref()
            .map(|r| (r.referenced.line(), r.referenced.column()));
        set_replicas(&lines, &mut edits, start..end, written, want)
            .ok_or_else(|| cannot(&format!("the replicas of pool `{name}`")))?;
    }
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edits.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    let mut changed: Vec<usize> = edits.iter().map(|e| e.0).collect();
    for (l, start, end, with) in edits {
        out[l].replace_range(start..end, &with);
    }
    changed.sort_unstable();
    changed.dedup();
    let mut diff = String::new();
    for l in changed {
        let _ = writeln!(diff, "@@ line {} @@\n-{}", l + 1, lines[l].trim_end());
        for new in out[l].trim_end().lines() {
            let _ = writeln!(diff, "+{new}");
        }
    }
    let tuned = out.concat();
    let check = compile_table(&tuned, file)?;
    let got = Knobs::of(&check);
    let same_tiers = tiers.iter().enumerate().all(|(i, name)| {
        check.tier_by_name(name).is_some_and(|t| {
            let t = t as usize;
            (got.weights[t] - knobs.weights[i]).abs() < 1e-9
                && got.misses[t] == knobs.misses[i]
                && got.hedges[t] == knobs.hedges[i]
                && got.kinds[t] == knobs.kinds[i]
        })
    });
    let same_pools = pools.iter().enumerate().all(|(p, name)| {
        let Some(want) = knobs.replicas[p] else {
            return true;
        };
        check
            .pools
            .iter()
            .find(|c| c.name == *name)
            .is_some_and(|c| c.replicas() == Some(want))
    });
    if !same_tiers || !same_pools {
        return Err(cannot("the settings"));
    }
    Ok((tuned, diff))
}

/// Set a tier's `pools:` list, whose entries (1-based line, column, kind) are `entries`, to
/// the kinds in `want`: entries kept in their order, kinds added after them. A flow list
/// (`[a, b]` on one line) is rewritten between its brackets; in a block list (`- a` per
/// line) a dropped entry is commented out and an added one goes on a new line after the
/// last. `None` when the layout is not one this understands.
fn set_kinds(
    lines: &[&str],
    edits: &mut Vec<Edit>,
    entries: &[(u64, u64, PoolKind)],
    want: u8,
) -> Option<()> {
    let tokens: Vec<(usize, usize, usize, PoolKind)> = entries
        .iter()
        .map(|&(l, c, k)| token_at(lines, l, c).map(|(l, s, e)| (l, s, e, k)))
        .collect::<Option<_>>()?;
    let (first, last) = (tokens.first()?, tokens.last()?);
    let mut kept: Vec<PoolKind> = Vec::new();
    for t in &tokens {
        if want & kind_bit(t.3) != 0 && !kept.contains(&t.3) {
            kept.push(t.3);
        }
    }
    let added: Vec<PoolKind> = KINDS
        .iter()
        .copied()
        .filter(|k| want & kind_bit(*k) != 0 && !kept.contains(k))
        .collect();
    let before = lines[first.0][..first.1].trim_end();
    if let Some(open) = before.strip_suffix('[') {
        if tokens.iter().any(|t| t.0 != first.0) {
            return None;
        }
        let line = lines[first.0];
        let close = last.2 + line[last.2..].find(']')?;
        let list: Vec<&str> = kept.iter().chain(&added).map(|k| k.as_str()).collect();
        edits.push((first.0, open.len() + 1, close, list.join(", ")));
        return Some(());
    }
    let eol = |s: &str| s.trim_end_matches(['\n', '\r']).len();
    // A block list: `- kind` alone on each line.
    let dash = |t: &(usize, usize, usize, PoolKind)| {
        let before = lines[t.0][..t.1].trim_end();
        let dash = before.strip_suffix('-')?;
        dash.trim().is_empty().then_some(dash.len())
    };
    for t in &tokens {
        let at = dash(t)?;
        if tokens.iter().filter(|u| u.0 == t.0).count() > 1 {
            return None;
        }
        if want & kind_bit(t.3) == 0 {
            let line = lines[t.0];
            let was = &line[at..eol(line)];
            edits.push((
                t.0,
                at,
                eol(line),
                format!("# {was} (off: switchyard tune)"),
            ));
        }
    }
    if !added.is_empty() {
        let line = lines[last.0];
        let pad = &line[..dash(last)?];
        let new: String = added
            .iter()
            .map(|k| format!("\n{pad}- {}", k.as_str()))
            .collect();
        edits.push((last.0, eol(line), eol(line), new));
    }
    Some(())
}

/// Where `key:` starts in `line` as a key (at the start, or after `{`, `,` or a space, and
/// before any comment).
fn key_at(line: &str, key: &str) -> Option<usize> {
    let comment = line.find(" #").unwrap_or(line.len());
    line.match_indices(key).map(|(p, _)| p).find(|&p| {
        p < comment
            && line[p + key.len()..].starts_with(':')
            && (p == 0 || matches!(line.as_bytes()[p - 1], b'{' | b',' | b' ' | b'\t'))
    })
}

/// Set `replicas:` of the pool written on lines `span` (indices) to `value`: the token at
/// `written` (1-based line, column) replaced, else `replicas` added at the end of the pool's
/// `price:` mapping (before the `}` of a flow one, on a line after the last of a block one).
/// `None` when the layout is not one this understands.
fn set_replicas(
    lines: &[&str],
    edits: &mut Vec<Edit>,
    span: std::ops::Range<usize>,
    written: Option<(u64, u64)>,
    value: u32,
) -> Option<()> {
    if let Some((line, column)) = written {
        let (l, start, end) = token_at(lines, line, column)?;
        edits.push((l, start, end, value.to_string()));
        return Some(());
    }
    let indent = |s: &str| s.len() - s.trim_start().len();
    let end = span.end.min(lines.len());
    for i in span.start..end {
        let line = lines[i];
        let Some(pos) = key_at(line, "price") else {
            continue;
        };
        let after = pos + "price:".len();
        let rest = line[after..].trim_start();
        if rest.starts_with('{') {
            let open = line.len() - rest.len();
            let mut depth = 0usize;
            for (j, c) in line[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => {
                        let at = line[..open + j].trim_end().len();
                        edits.push((i, at, at, format!(", replicas: {value}")));
                        return Some(());
                    }
                    '}' => depth = depth.checked_sub(1)?,
                    _ => {}
                }
            }
            return None;
        }
        if !(rest.trim().is_empty() || rest.starts_with('#')) {
            return None;
        }
        // A block mapping: its keys are the following lines indented deeper than `price:`.
        let (mut last, mut pad) = (None, None);
        for (j, child) in lines.iter().enumerate().take(end).skip(i + 1) {
            if child.trim().is_empty() || child.trim_start().starts_with('#') {
                continue;
            }
            if indent(child) <= pos {
                break;
            }
            last = Some(j);
            pad.get_or_insert(indent(child));
        }
        let (l, pad) = (last?, " ".repeat(pad?));
        let eol = lines[l].trim_end_matches(['\n', '\r']).len();
        edits.push((l, eol, eol, format!("\n{pad}replicas: {value}")));
        return Some(());
    }
    None
}

/// Set `key` of the tier whose `deadline:` token is at `deadline` (1-based line, column)
/// to `value`, or remove it (`None`): the value replaced where the key is written, else the
/// key added after the deadline; removed from a flow mapping, commented out in a block one.
/// `None` when the layout is not one this understands.
fn set_key(
    lines: &[&str],
    edits: &mut Vec<Edit>,
    deadline: (u64, u64),
    key: &str,
    value: Option<String>,
) -> Option<()> {
    let (l, dstart, dend) = token_at(lines, deadline.0, deadline.1)?;
    let line = lines[l];
    let flow = line[..dstart].contains('{');
    let indent = |s: &str| s.len() - s.trim_start().len();
    // The tier's lines: its flow mapping's line, or the block's lines at the deadline's
    // indentation.
    let mut span = vec![l];
    if !flow {
        let same = |s: &&str| {
            s.trim().is_empty() || s.trim_start().starts_with('#') || indent(s) == indent(line)
        };
        let mut i = l;
        while i > 0 && same(&lines[i - 1]) {
            i -= 1;
            span.push(i);
        }
        let mut i = l + 1;
        while i < lines.len() && same(&lines[i]) {
            span.push(i);
            i += 1;
        }
    }
    let pat = format!("{key}:");
    for &i in &span {
        let s = lines[i];
        let found = s
            .match_indices(&pat)
            .map(|(p, _)| p)
            .find(|&p| p == 0 || matches!(s.as_bytes()[p - 1], b'{' | b',' | b' ' | b'\t'));
        let Some(pos) = found else { continue };
        if !flow && pos != indent(s) {
            continue;
        }
        let after = pos + pat.len();
        let vstart = after + (s[after..].len() - s[after..].trim_start().len());
        let vlen = s[vstart..]
            .find(|c: char| matches!(c, ',' | '}' | '#' | '\n' | '\r') || c.is_whitespace())
            .unwrap_or(s.len() - vstart);
        match value {
            Some(v) => edits.push((i, vstart, vstart + vlen, v)),
            None if flow => {
                // `, key: value` out of the mapping.
                let before = s[..pos].trim_end();
                let comma = before.strip_suffix(',')?.len();
                edits.push((i, comma, vstart + vlen, String::new()));
            }
            None => {
                let eol = s.trim_end_matches(['\n', '\r']).len();
                let was = s[pos..eol].to_string();
                edits.push((i, pos, eol, format!("# {was} (off: switchyard tune)")));
            }
        }
        return Some(());
    }
    let Some(v) = value else { return Some(()) };
    let rest = line[dend..].trim_start();
    if rest.starts_with(',') || rest.starts_with('}') {
        edits.push((l, dend, dend, format!(", {key}: {v}")));
    } else {
        let pad: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        let eol = line.trim_end_matches(['\n', '\r']).len();
        edits.push((l, eol, eol, format!("\n{pad}{key}: {v}")));
    }
    Some(())
}

/// The scalar token starting at 1-based `line`:`column`: (line index, byte start, byte end).
fn token_at(lines: &[&str], line: u64, column: u64) -> Option<(usize, usize, usize)> {
    let l = usize::try_from(line).ok()?.checked_sub(1)?;
    let text = lines.get(l)?;
    let col = usize::try_from(column).ok()?.checked_sub(1)?;
    let start = text.char_indices().nth(col).map(|(i, _)| i)?;
    let len = text[start..]
        .find(|c: char| matches!(c, ',' | '}' | ']' | '#' | '\n' | '\r') || c.is_whitespace())
        .unwrap_or(text.len() - start);
    (len > 0).then_some((l, start, start + len))
}

/// The report as text.
pub fn render(r: &TuneReport) -> String {
    let mut s = String::new();
    let targets: Vec<String> = r
        .targets
        .iter()
        .map(|(t, p)| format!("{t} ≥ {p}%"))
        .collect();
    let _ = writeln!(
        s,
        "tune {}: targets {} in every phase; {} candidates simulated (at most {}): \
         {} changed a weight, {} on_slo_miss, {} hedging, {} a pool list, {} replicas",
        r.policy,
        targets.join(", "),
        r.evaluated,
        r.bound,
        r.searched.weights,
        r.searched.on_slo_miss,
        r.searched.hedging,
        r.searched.pool_lists,
        r.searched.replicas,
    );
    let _ = writeln!(s, "spend: {}", r.bill);
    let phases: Vec<String> = r
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}] {p}", i + 1))
        .collect();
    let _ = writeln!(s, "phases: {}", phases.join(", "));
    let row = |s: &mut String, label: &str, c: &Candidate, current: bool| {
        let saving = if current {
            String::new()
        } else {
            format!(
                "  saves ${:.5}/1k ({:.1}%)",
                c.saving_per_1k_usd, c.saving_percent
            )
        };
        let _ = writeln!(
            s,
            "  {label:<8} ${:.5}/1k{saving}{}",
            c.spend_per_1k_usd,
            if c.meets_targets { "" } else { "  (misses)" }
        );
        let pad = "           ";
        for (tier, phases) in &c.attainment {
            let each: Vec<String> = phases
                .iter()
                .map(|p| p.map_or("-".to_string(), |p| format!("{p:.2}%")))
                .collect();
            let _ = writeln!(s, "{pad}{tier}: {}", each.join(" "));
        }
        if c.queued > 0 || c.shed > 0 {
            let _ = writeln!(s, "{pad}queued {}, shed {}", c.queued, c.shed);
        }
        if current {
            let w: Vec<String> = c
                .weights
                .iter()
                .map(|(t, w)| format!("{t} {w:.1}"))
                .collect();
            let other: Vec<String> = c
                .on_slo_miss
                .iter()
                .zip(&c.hedge_after)
                .zip(&c.pools)
                .map(|(((t, m), (_, h)), (_, k))| {
                    let hedge = h.map_or(String::new(), |h| format!(", hedge {h}"));
                    format!("{t} {m}{hedge}, pools [{}]", k.join(", "))
                })
                .collect();
            let _ = writeln!(s, "{pad}weights: {}", w.join(", "));
            let _ = writeln!(s, "{pad}on_slo_miss, hedging, pools: {}", other.join("; "));
            if !c.replicas.is_empty() {
                let n: Vec<String> = c.replicas.iter().map(|(p, n)| format!("{p} {n}")).collect();
                let _ = writeln!(s, "{pad}replicas: {}", n.join(", "));
            }
        } else if c.changes.is_empty() {
            let _ = writeln!(s, "{pad}(the current settings)");
        } else {
            let _ = writeln!(s, "{pad}{}", c.changes.join("; "));
        }
    };
    row(&mut s, "current", &r.current, true);
    if r.best.is_empty() {
        let _ = writeln!(s, "no candidate meets the targets");
    }
    for (i, c) in r.best.iter().enumerate() {
        row(&mut s, &format!("#{}", i + 1), c, false);
    }
    for l in &r.levers {
        let _ = writeln!(s, "  the best tried that changed {}:", l.changed);
        row(&mut s, "", &l.candidate, false);
    }
    if r.best.first().is_some_and(|c| !c.replicas.is_empty())
        && r.best.first().map(|c| &c.replicas) != Some(&r.current.replicas)
    {
        let _ = writeln!(
            s,
            "\nreplicas: simulated as the pool's first endpoints, as many as the replicas; \
             scale the deployment to match"
        );
    }
    if !r.diff.is_empty() {
        let _ = writeln!(s, "\n--- {}\n+++ tuned\n{}", r.policy, r.diff);
    } else if r.tuned.is_some() {
        let _ = writeln!(s, "\nthe current settings are already the best found");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's tiers and pools (in the compiled order) and its own settings.
    fn setup(text: &str) -> (Vec<String>, Vec<String>, Knobs) {
        let table = compile_table(text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let tiers = table.tiers.iter().map(|t| t.name.clone()).collect();
        let pools = table.pools.iter().map(|p| p.name.clone()).collect();
        (tiers, pools, Knobs::of(&table))
    }

    fn at(names: &[String], name: &str) -> usize {
        names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no `{name}`"))
    }

    fn rewrite(text: &str, knobs: &Knobs) -> (String, String) {
        let (tiers, pools, current) = setup(text);
        rewrite_policy(text, Path::new("t.yaml"), &tiers, &pools, knobs, &current)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const EDGE: u8 = 1;
    const GPU: u8 = 2;
    const BATCH: u8 = 4;

    #[test]
    fn targets_parse_with_or_without_percent() {
        assert_eq!(
            parse_target("realtime=99.5%"),
            Ok(("realtime".into(), 99.5))
        );
        assert_eq!(parse_target("batch=90"), Ok(("batch".into(), 90.0)));
        assert!(parse_target("realtime").is_err());
        assert!(parse_target("realtime=101%").is_err());
    }

    #[test]
    fn weights_are_replaced_or_added_in_place() {
        let text = crate::fleet_faults::POLICY
            .replace("standard: { deadline: 1s, weight: 0.3, ", "standard: { deadline: 1s, ")
            .replace(
                "  batch: { deadline: 30s, weight: 0.0, pools: [batch, gpu, edge], on_slo_miss: fastest }\n",
                "  batch:\n    deadline: 30s # a comment\n    pools: [batch, gpu, edge]\n",
            );
        let (tiers, _, mut knobs) = setup(&text);
        knobs.weights[at(&tiers, "realtime")] = 0.6;
        knobs.weights[at(&tiers, "standard")] = 0.2;
        knobs.weights[at(&tiers, "batch")] = 0.4;
        let (tuned, diff) = rewrite(&text, &knobs);
        assert!(
            tuned.contains("realtime: { deadline: 150ms, weight: 0.6, pools"),
            "{tuned}"
        );
        assert!(
            tuned.contains("standard: { deadline: 1s, weight: 0.2, pools"),
            "{tuned}"
        );
        assert!(
            tuned.contains("    deadline: 30s # a comment\n    weight: 0.4\n"),
            "{tuned}"
        );
        assert!(
            diff.contains("-  realtime: { deadline: 150ms, weight: 0.8"),
            "{diff}"
        );
        assert!(diff.contains("+    weight: 0.4"), "{diff}");
        assert_eq!(diff.matches("@@").count(), 6, "{diff}");
    }

    #[test]
    fn on_slo_miss_and_hedging_are_set_added_or_removed_in_place() {
        let text = crate::fleet_faults::POLICY
            .replace("on_slo_miss: fastest }", "on_slo_miss: fastest, hedge_after: 3 }")
            .replace(
                "  batch: { deadline: 30s, weight: 0.0, pools: [batch, gpu, edge], on_slo_miss: fastest, hedge_after: 3 }\n",
                "  batch:\n    deadline: 30s\n    hedge_after: 3\n    pools: [batch, gpu, edge]\n",
            );
        let (tiers, _, mut knobs) = setup(&text);
        let (r, s, b) = (
            at(&tiers, "realtime"),
            at(&tiers, "standard"),
            at(&tiers, "batch"),
        );
        (knobs.misses[r], knobs.hedges[r]) = (OnSloMiss::Shed, Some(2.0));
        knobs.hedges[s] = None;
        (knobs.misses[b], knobs.hedges[b]) = (OnSloMiss::Shed, None);
        let (tuned, _) = rewrite(&text, &knobs);
        assert!(
            tuned.contains("on_slo_miss: shed, hedge_after: 2 }"),
            "{tuned}"
        );
        assert!(
            tuned.contains("pools: [edge, gpu], on_slo_miss: fastest }"),
            "{tuned}"
        );
        assert!(
            tuned.contains("    # hedge_after: 3 (off: switchyard tune)\n"),
            "{tuned}"
        );
        assert!(tuned.contains("    on_slo_miss: shed\n"), "{tuned}");
        // The batch tier's weight is its default (0.5) unchanged: not written.
        assert!(!tuned.contains("weight: 0.5"), "{tuned}");
        assert_eq!(tuned.lines().count(), text.lines().count() + 1, "{tuned}");
    }

    #[test]
    fn pool_lists_are_rewritten_in_flow_and_block_lists_keeping_comments() {
        let text = crate::fleet_faults::POLICY.replace(
            "  batch: { deadline: 30s, weight: 0.0, pools: [batch, gpu, edge], on_slo_miss: fastest }\n",
            "  batch:\n    deadline: 30s # a comment\n    pools: # kinds\n      - batch # the queue's\n      # between\n      - gpu\n",
        );
        let (tiers, _, mut knobs) = setup(&text);
        let (r, s, b) = (
            at(&tiers, "realtime"),
            at(&tiers, "standard"),
            at(&tiers, "batch"),
        );
        assert_eq!(knobs.kinds[b], BATCH | GPU);
        knobs.kinds[r] = GPU; // edge dropped
        knobs.kinds[s] = EDGE | GPU | BATCH; // batch added
        knobs.kinds[b] = BATCH | EDGE; // gpu dropped, edge added
        let (tuned, diff) = rewrite(&text, &knobs);
        assert!(
            tuned.contains("realtime: { deadline: 150ms, weight: 0.8, pools: [gpu], on_slo_miss"),
            "{tuned}"
        );
        assert!(
            tuned.contains("standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu, batch], on"),
            "{tuned}"
        );
        assert!(
            tuned.contains(
                "    pools: # kinds\n      - batch # the queue's\n      # between\n      \
                 # - gpu (off: switchyard tune)\n      - edge\n"
            ),
            "{tuned}"
        );
        assert!(tuned.contains("# yaml-language-server"), "{tuned}");
        assert_eq!(tuned.lines().count(), text.lines().count() + 1, "{tuned}");
        assert!(diff.contains("+      - edge"), "{diff}");
        // A flow list written over lines is not one this rewrites: said, not guessed.
        let spread = text.replace(
            "pools: [edge, gpu], on_slo_miss: fastest }\n  standard",
            "pools: [edge,\n    gpu], on_slo_miss: fastest }\n  standard",
        );
        let (tiers, pools, current) = setup(&spread);
        let mut knobs = current.clone();
        knobs.kinds[r] = GPU;
        let err = rewrite_policy(
            &spread,
            Path::new("t.yaml"),
            &tiers,
            &pools,
            &knobs,
            &current,
        );
        assert!(
            err.is_err_and(|e| e.to_string().contains("the pools of tier `realtime`")),
            "{spread}"
        );
    }

    /// The scenario's policy with its GPU pool's price as given (it is paid per replica-hour).
    fn provisioned(price: &str) -> String {
        let text = crate::fleet_faults::POLICY.replace(
            "price: { per_replica_hour: 4.0, replicas: 2, safe_utilisation: 0.7 } }",
            &format!("{price} }}"),
        );
        assert_ne!(text, crate::fleet_faults::POLICY);
        text
    }

    #[test]
    fn replicas_are_changed_in_place_or_added_to_the_price() {
        for (price, want) in [
            (
                "price: { per_replica_hour: 10.0 }",
                "price: { per_replica_hour: 10.0, replicas: 1 } }",
            ),
            (
                "price: { per_replica_hour: 10.0, replicas: 2 }",
                "price: { per_replica_hour: 10.0, replicas: 1 } }",
            ),
        ] {
            let text = provisioned(price);
            let (_, pools, mut knobs) = setup(&text);
            let gpu = at(&pools, "gpu");
            assert_eq!(knobs.replicas[gpu], Some(2));
            assert_eq!(knobs.replicas[at(&pools, "edge-eu")], None);
            knobs.replicas[gpu] = Some(1);
            let (tuned, diff) = rewrite(&text, &knobs);
            assert!(tuned.contains(want), "{tuned}");
            assert_eq!(tuned.lines().count(), text.lines().count(), "{tuned}");
            assert_eq!(diff.matches("@@").count(), 2, "{diff}");
        }
        // A block pool, its `price:` a block mapping with comments: `replicas` after its last
        // key, at its keys' indentation.
        let text = crate::fleet_faults::POLICY.replace(
            "  - { name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:3, 127.0.0.1:4], models: [\"*\"], concurrency: 128, service_time: 45ms, price: { per_replica_hour: 4.0, replicas: 2, safe_utilisation: 0.7 } }\n",
            "  - name: gpu\n    price: # paid busy or idle\n      per_replica_hour: 10.0 # each\n\n      # the rest by default\n    kind: gpu\n    region: us\n    endpoints: [127.0.0.1:3, 127.0.0.1:4]\n    models: [\"*\"]\n    concurrency: 128\n    service_time: 45ms\n",
        );
        let (_, pools, mut knobs) = setup(&text);
        knobs.replicas[at(&pools, "gpu")] = Some(1);
        let (tuned, _) = rewrite(&text, &knobs);
        assert!(
            tuned.contains(
                "    price: # paid busy or idle\n      per_replica_hour: 10.0 # each\n      replicas: 1\n\n      # the rest by default\n    kind: gpu\n"
            ),
            "{tuned}"
        );
    }

    #[test]
    fn pool_lists_keep_every_asked_model_served_and_replicas_stay_in_range() {
        // small: served by edge, gpu and batch pools; big: by gpu and batch.
        let (small, big) = (EDGE | GPU | BATCH, GPU | BATCH);
        assert_eq!(
            kind_lists(EDGE | GPU, &[small]),
            vec![GPU, EDGE, EDGE | GPU | BATCH]
        );
        // Dropping gpu would leave the big model to nothing; edge serves no big request.
        assert_eq!(
            kind_lists(EDGE | GPU, &[small, big]),
            vec![GPU, EDGE | GPU | BATCH]
        );
        assert_eq!(kind_lists(GPU, &[big]), vec![GPU | BATCH]);
        assert!(
            kind_lists(GPU, &[]).is_empty(),
            "no traffic, nothing to search"
        );
        assert_eq!(replica_counts(2, 2), vec![1]);
        assert_eq!(replica_counts(4, 8), vec![2, 3, 5, 8]);
        assert_eq!(replica_counts(1, 1), Vec::<u32>::new());
    }
}
