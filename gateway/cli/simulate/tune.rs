//! `switchyard tune`: the lowest-spend tier settings that still meet SLO targets, found in
//! simulation, written back into the operator's own YAML.
//!
//! The search is coordinate descent over each tier's `weight` on a grid (0.0, 0.2 … 1.0),
//! its `on_slo_miss` (`fastest`, `shed`, and `queue` when the policy has a `queue:`) and its
//! hedging (off, or on with the tier's own `hedge_after`, else 2), starting from the
//! policy's own settings, for at most a few rounds (at most 11 candidates per tier and
//! round, each simulated once): every candidate is the
//! policy compiled afresh (fresh live state) with the settings changed, run alone through
//! the workload by the simulator. A candidate meets the targets when each targeted tier's
//! SLO attainment reaches its target in **every** phase (the worst phase counts, so a
//! policy cannot pass on average while failing during a fault); among those the lowest
//! spend wins. Coordinate descent is a local search: it can miss a better combination that
//! needs two weights to move at once; the report says how many candidates it tried.
//!
//! The tuned file is the original text with only the changed scalars replaced (or the key
//! added after the tier's `deadline:` when it had none; a `hedge_after` turned off is removed
//! from a flow mapping, or commented out in a block one), so comments and layout survive and
//! lines never move; it is compiled again and its settings compared before anything is
//! written. A shed request counts as a miss of its tier and costs nothing, so `on_slo_miss`
//! is searched only for tiers with a target (elsewhere `shed` would always win).

use super::{simulate_policy, workload_of, PhaseStats, SimError, SimOptions, Workload};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use switchyard_gateway::policy::compile::{self, CompileContext, PoolId, RoutingTable};
use switchyard_gateway::policy::raw::OnSloMiss;
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

/// The weights tried for each tier.
pub const WEIGHTS: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
/// Rounds of coordinate descent at most (it stops earlier when a round changes nothing).
const ROUNDS: usize = 3;
/// The `on_slo_miss` choices tried (`queue` only when the policy has a `queue:`).
const MISSES: [OnSloMiss; 3] = [OnSloMiss::Fastest, OnSloMiss::Shed, OnSloMiss::Queue];
/// The `hedge_after` tried for a tier that has none.
const HEDGE_AFTER: f64 = 2.0;

/// Every tier's settings the search moves, in the policy's tier order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Knobs {
    pub weights: Vec<f64>,
    pub misses: Vec<OnSloMiss>,
    pub hedges: Vec<Option<f64>>,
}

impl Knobs {
    fn of(table: &RoutingTable) -> Knobs {
        Knobs {
            weights: table.tiers.iter().map(|t| t.weight).collect(),
            misses: table.tiers.iter().map(|t| t.on_slo_miss).collect(),
            hedges: table.tiers.iter().map(|t| t.hedge_after).collect(),
        }
    }

    fn key(&self) -> Vec<u64> {
        let weights = self.weights.iter().map(|w| w.to_bits());
        let misses = self.misses.iter().map(|m| *m as u64);
        let hedges = self.hedges.iter().map(|h| h.map_or(u64::MAX, f64::to_bits));
        weights.chain(misses).chain(hedges).collect()
    }

    /// How many settings differ from `other`'s.
    fn changes(&self, other: &Knobs) -> usize {
        let w = self.weights.iter().zip(&other.weights);
        let m = self.misses.iter().zip(&other.misses);
        let h = self.hedges.iter().zip(&other.hedges);
        w.filter(|(a, b)| (*a - *b).abs() > 1e-9).count()
            + m.filter(|(a, b)| a != b).count()
            + h.filter(|(a, b)| a != b).count()
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
    /// Weight per tier, in the policy's tier order.
    pub weights: Vec<(String, f64)>,
    /// `on_slo_miss` per tier.
    pub on_slo_miss: Vec<(String, &'static str)>,
    /// `hedge_after` per tier (`None`: no hedging).
    pub hedge_after: Vec<(String, Option<f64>)>,
    #[serde(skip)]
    knobs: Knobs,
    pub spend_per_1k_usd: f64,
    /// Per targeted tier, its attainment in its worst phase, percent.
    pub worst_attainment: Vec<(String, f64)>,
    pub meets_targets: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub policy: String,
    pub targets: Vec<(String, f64)>,
    pub evaluated: usize,
    pub current: Candidate,
    /// Up to five candidates meeting the targets, cheapest first.
    pub best: Vec<Candidate>,
    /// The changed lines of the tuned policy against the original (empty if none).
    pub diff: String,
    /// The tuned policy text (the original with the best weights), if any candidate met
    /// the targets.
    #[serde(skip)]
    pub tuned: Option<String>,
}

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

fn compile_text(text: &str, file: &Path) -> Result<Serving, SimError> {
    let table = compile::compile_str(
        text,
        &CompileContext {
            file,
            gateway_region: None,
        },
    )?;
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
    targets: &'a [(String, f64)],
    seed: u64,
    seen: HashMap<Vec<u64>, Candidate>,
}

impl Search<'_> {
    fn evaluate(&mut self, knobs: &Knobs) -> Result<Candidate, SimError> {
        let key = knobs.key();
        if let Some(c) = self.seen.get(&key) {
            return Ok(c.clone());
        }
        let mut table = compile_text(self.text, self.file)?;
        for (i, tier) in table.table.tiers.iter_mut().enumerate() {
            tier.weight = knobs.weights[i];
            tier.on_slo_miss = knobs.misses[i];
            tier.hedge_after = knobs.hedges[i];
        }
        let name = super::policy_name(self.file);
        let stats = simulate_policy(self.w, &name, table, self.seed)?;
        let c = self.candidate(knobs, &stats);
        self.seen.insert(key, c.clone());
        Ok(c)
    }

    fn candidate(&self, knobs: &Knobs, stats: &[PhaseStats]) -> Candidate {
        let requests: u64 = stats.iter().map(|s| s.requests).sum();
        // Capacity is the same for every candidate, but counted so that the figure is the
        // bill `simulate` reports.
        let capacity: f64 = self.w.phases.iter().map(|p| self.w.capacity_usd(p)).sum();
        let spend: f64 = capacity + stats.iter().map(|s| s.bill.total()).sum::<f64>();
        let mut meets = true;
        let worst_attainment = self
            .targets
            .iter()
            .map(|(tier, target)| {
                let t = self
                    .w
                    .tiers
                    .iter()
                    .position(|(n, _)| n == tier)
                    .unwrap_or(0);
                let worst = stats
                    .iter()
                    .filter(|s| s.tiers[t].requests > 0)
                    .map(|s| s.tiers[t].met as f64 * 100.0 / s.tiers[t].requests as f64)
                    .fold(100.0, f64::min);
                meets &= worst >= *target;
                (tier.clone(), super::round(worst, 2))
            })
            .collect();
        let named = |i: usize| self.tiers[i].clone();
        Candidate {
            weights: (0..self.tiers.len())
                .map(|i| (named(i), knobs.weights[i]))
                .collect(),
            on_slo_miss: (0..self.tiers.len())
                .map(|i| (named(i), miss_name(knobs.misses[i])))
                .collect(),
            hedge_after: (0..self.tiers.len())
                .map(|i| (named(i), knobs.hedges[i]))
                .collect(),
            knobs: knobs.clone(),
            spend_per_1k_usd: super::round(spend * 1000.0 / requests.max(1) as f64, 5),
            worst_attainment,
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

/// Search the weights; the report, and the tuned text when a candidate meets the targets.
pub fn tune(opts: &TuneOptions) -> Result<TuneReport, SimError> {
    let text = std::fs::read_to_string(&opts.policy)
        .map_err(|e| SimError::Workload(format!("{}: cannot read: {e}", opts.policy.display())))?;
    let w = workload_of(&opts.sim)?;
    let base = compile_text(&text, &opts.policy)?;
    let tiers: Vec<String> = base.tiers.iter().map(|t| t.name.clone()).collect();
    let current = Knobs::of(&base);
    let has_queue = base.queue.is_some();
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
    let mut search = Search {
        text: &text,
        file: &opts.policy,
        w: &w,
        tiers: tiers.clone(),
        targets: &opts.targets,
        seed: opts.sim.seed,
        seen: HashMap::new(),
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
            for cand in tries {
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
    let mut meeting: Vec<Candidate> = search
        .seen
        .values()
        .filter(|c| c.meets_targets)
        .cloned()
        .collect();
    meeting.sort_by(|a, b| {
        a.spend_per_1k_usd
            .total_cmp(&b.spend_per_1k_usd)
            .then(changes(a, &current).cmp(&changes(b, &current)))
    });
    meeting.truncate(5);
    let (tuned, diff) = if best_c.meets_targets {
        let (tuned, diff) = rewrite_policy(&text, &opts.policy, &tiers, &best_w)?;
        (Some(tuned), diff)
    } else {
        (None, String::new())
    };
    Ok(TuneReport {
        policy: opts.policy.display().to_string(),
        targets: opts.targets.clone(),
        evaluated: search.seen.len(),
        current: current_c,
        best: meeting,
        diff,
        tuned,
    })
}

/// The policy text with each tier's settings set to `knobs` (in `tiers` order), checked by
/// compiling it again, and the changed lines as `-`/`+` pairs (edits never move lines, so
/// that is the whole diff).
fn rewrite_policy(
    text: &str,
    file: &Path,
    tiers: &[String],
    knobs: &Knobs,
) -> Result<(String, String), SimError> {
    let raw = switchyard_gateway::policy::parse(text, file)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // (line index, byte start, byte end, replacement)
    let mut edits: Vec<(usize, usize, usize, String)> = Vec::new();
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
        if loc.line() > 0 {
            if (tier.value.weight.value - weight).abs() >= 1e-12 {
                let (l, start, end) = token_at(&lines, loc.line(), loc.column())
                    .ok_or_else(|| cannot(&format!("the weight of tier `{name}`")))?;
                edits.push((l, start, end, value));
            }
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
    let check = compile_text(&tuned, file)?;
    let got = Knobs::of(&check);
    let same = tiers.iter().enumerate().all(|(i, name)| {
        check.tier_by_name(name).is_some_and(|t| {
            let t = t as usize;
            (got.weights[t] - knobs.weights[i]).abs() < 1e-9
                && got.misses[t] == knobs.misses[i]
                && got.hedges[t] == knobs.hedges[i]
        })
    });
    if !same {
        return Err(cannot("the tier settings"));
    }
    Ok((tuned, diff))
}

/// Set `key` of the tier whose `deadline:` token is at `deadline` (1-based line, column)
/// to `value`, or remove it (`None`): the value replaced where the key is written, else the
/// key added after the deadline; removed from a flow mapping, commented out in a block one.
/// `None` when the layout is not one this understands.
fn set_key(
    lines: &[&str],
    edits: &mut Vec<(usize, usize, usize, String)>,
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
        "tune {}: targets {} in every phase; {} candidates simulated",
        r.policy,
        targets.join(", "),
        r.evaluated
    );
    let row = |s: &mut String, label: &str, c: &Candidate| {
        let w: Vec<String> = c
            .weights
            .iter()
            .map(|(t, w)| format!("{t} {w:.1}"))
            .collect();
        let a: Vec<String> = c
            .worst_attainment
            .iter()
            .map(|(t, p)| format!("{t} {p:.2}%"))
            .collect();
        let other: Vec<String> = c
            .on_slo_miss
            .iter()
            .zip(&c.hedge_after)
            .map(|((t, m), (_, h))| match h {
                Some(h) => format!("{t} {m}, hedge {h}"),
                None => format!("{t} {m}"),
            })
            .collect();
        let _ = writeln!(
            s,
            "  {label:<8} ${:.5}/1k  worst phase: {}  weights: {}  on_slo_miss: {}{}",
            c.spend_per_1k_usd,
            a.join(", "),
            w.join(", "),
            other.join("; "),
            if c.meets_targets { "" } else { "  (misses)" }
        );
    };
    row(&mut s, "current", &r.current);
    if r.best.is_empty() {
        let _ = writeln!(s, "no candidate meets the targets");
    }
    for (i, c) in r.best.iter().enumerate() {
        row(&mut s, &format!("#{}", i + 1), c);
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
        let tiers = ["realtime", "standard", "batch"].map(String::from);
        let knobs = Knobs {
            weights: vec![0.6, 0.2, 0.4],
            misses: vec![OnSloMiss::Fastest; 3],
            hedges: vec![None; 3],
        };
        let (tuned, diff) = rewrite_policy(&text, Path::new("t.yaml"), &tiers, &knobs)
            .unwrap_or_else(|e| panic!("{e}"));
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
        let tiers = ["realtime", "standard", "batch"].map(String::from);
        let knobs = Knobs {
            weights: vec![0.8, 0.3, 0.5],
            misses: vec![OnSloMiss::Shed, OnSloMiss::Fastest, OnSloMiss::Shed],
            hedges: vec![Some(2.0), None, None],
        };
        let (tuned, _) = rewrite_policy(&text, Path::new("t.yaml"), &tiers, &knobs)
            .unwrap_or_else(|e| panic!("{e}"));
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
        assert_eq!(tuned.lines().count(), text.lines().count() + 2, "{tuned}");
    }
}
