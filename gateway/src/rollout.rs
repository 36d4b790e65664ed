//! Progressive delivery (`models.NAME.rollout`): a canary version's share of callers rises
//! by steps (e.g. 5 → 25 → 50 → 100 %), each step ended by a sequential test of the canary
//! against the stable version on errors and SLO misses, plus its cost per request; a worse
//! canary is rolled back (share 0), a good one promoted step by step without anyone acting.
//!
//! **The rule: Wald's SPRT, one per measure.** For the canary's error rate (5xx answers) and
//! its SLO-miss rate (answers later than their objective), each a Bernoulli rate `p`, the
//! test weighs H0: `p = p0` against H1: `p = p0 + δ`, where `p0` is the stable version's
//! rate in the same step (at least 1 %, so that a perfect stable version does not make one
//! canary error decisive) and `δ` the policy's `max_error_increase` /
//! `max_slo_miss_increase`. With `k` bad answers in `n` canary requests the log-likelihood
//! ratio is `k·ln(p1/p0) + (n−k)·ln((1−p1)/(1−p0))`; at or above `ln((1−β)/α)` the canary is
//! worse (rolled back), at or below `ln(β/(1−α))` it is not (that measure passes), with
//! α = β = 5 %. A step ends when its canary has served `min_requests` and either a test
//! rejects (rollback) or both accept and the canary's mean cost per request is within
//! `max_cost_increase` of the stable one's (next step). Why SPRT rather than a Bayesian
//! rule: it decides as soon as the evidence allows (a 5 %-error canary against a clean
//! stable version is rejected after ~80 canary requests, a clean one accepted after ~145)
//! with error rates fixed in advance and known to operators, and its state is two counts per
//! version, which a file or Redis holds; a Bayesian posterior needs a prior per measure and
//! its stopping threshold has no such guarantee. The plug-in `p0` (the stable rate measured
//! alongside) makes the test approximate; the 1 % floor and the minimum sample keep it from
//! deciding on a handful of requests.
//!
//! A caller keeps its version within a step and only moves forward: a caller is on the
//! canary when its sticky key's hash (`Class::version_key`) falls below the step's share,
//! so the canary's callers at 5 % are still on it at 25 %. A request whose path names a
//! version keeps it. The state (step, phase) is written to the rollout's `state_file` at
//! each transition and read back when the gateway starts, so a restart resumes the step
//! (the counts of the step in progress start again); every transition is logged (tracing)
//! and counted (`switchyard_rollout_transitions_total`). Manual control: pause, resume,
//! promote (next step), abort (roll back) through the admin API.
//!
//! State lives here, beside the table, by model name across reloads. The counts of one
//! rollout are behind a mutex held for a few additions per request of that model (the admin
//! API holds it as briefly); the share read when choosing a version is an atomic.

use crate::classify::Class;
use crate::policy::compile::{RolloutRule, RoutingTable};
use crate::telemetry as t;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// α = β = 0.05: `ln(0.95 / 0.05)`.
const UPPER: f64 = 2.944_438_979_166_440_5;
const LOWER: f64 = -UPPER;
/// The stable rate `p0` is taken as at least this.
const P0_FLOOR: f64 = 0.01;

/// Every rollout's live state.
#[derive(Default)]
pub struct Rollouts {
    by_model: ArcSwap<HashMap<String, Arc<Rollout>>>,
}

/// One rollout.
pub struct Rollout {
    /// The canary's share now, in millionths (read on every request of the model).
    share: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Promoted,
    RolledBack,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Counts {
    requests: u64,
    errors: u64,
    slo_misses: u64,
    cost_nanousd: u64,
}

#[derive(Debug)]
struct State {
    step: usize,
    phase: Phase,
    canary: Counts,
    stable: Counts,
    /// Why the last transition happened.
    last: String,
}

/// What the state file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    step: usize,
    phase: Phase,
    last: String,
}

/// A manual action (`POST /admin/rollouts/{model}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }
}

/// The log-likelihood ratio of `bad` in `n` under H1 (`p0 + delta`) against H0 (`p0`).
pub fn llr(bad: u64, n: u64, p0: f64, delta: f64) -> f64 {
    let p0 = p0.clamp(P0_FLOOR, 0.98);
    let p1 = (p0 + delta).min(0.999);
    if p1 <= p0 {
        return LOWER;
    }
    bad as f64 * (p1 / p0).ln() + (n - bad) as f64 * ((1.0 - p1) / (1.0 - p0)).ln()
}

fn rate(bad: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        bad as f64 / n as f64
    }
}

impl Rollouts {
    pub fn new() -> Arc<Rollouts> {
        Arc::new(Rollouts::default())
    }

    /// The rollout of `model`, made (from its state file, if any) on first use.
    fn get(&self, model: &str, rule: &RolloutRule) -> Arc<Rollout> {
        if let Some(r) = self.by_model.load().get(model) {
            return r.clone();
        }
        let mut out = None;
        self.by_model.rcu(|map| {
            let mut map = HashMap::clone(map);
            let r = map
                .entry(model.to_string())
                .or_insert_with(|| Arc::new(Rollout::start(model, rule)))
                .clone();
            out = Some(r);
            map
        });
        out.unwrap_or_else(|| Arc::new(Rollout::start(model, rule)))
    }

    /// Put a request of a rolled-out model on the canary or the stable version by its sticky
    /// key and the step's share (a request whose path named a version keeps it).
    pub fn steer(&self, table: &RoutingTable, class: &mut Class) {
        let (Some((split_id, _)), Some(key)) = (class.version, class.version_key) else {
            return;
        };
        let split = &table.splits[split_id as usize];
        let Some(rule) = &split.rollout else {
            return;
        };
        let share = self.get(&split.model, rule).share.load(Relaxed);
        let v = if key % 1_000_000 < u64::from(share) {
            rule.canary
        } else {
            rule.stable
        };
        class.version = Some((split_id, v));
    }

    /// A finished request of a rolled-out model: counted for its version, and the step
    /// decided when the evidence allows.
    pub fn observe(
        &self,
        table: &RoutingTable,
        class: &Class,
        status: u16,
        slo_miss: bool,
        cost_usd: f64,
    ) {
        let Some((split_id, v)) = class.version else {
            return;
        };
        let split = &table.splits[split_id as usize];
        let Some(rule) = &split.rollout else {
            return;
        };
        // Not answered (0) or the client gone (499): no evidence either way.
        if status == 0 || status == 499 {
            return;
        }
        let rollout = self.get(&split.model, rule);
        let Ok(mut s) = rollout.state.lock() else {
            return;
        };
        if s.phase != Phase::Running {
            return;
        }
        let counts = if v == rule.canary {
            &mut s.canary
        } else {
            &mut s.stable
        };
        counts.requests += 1;
        counts.errors += u64::from(status >= 500);
        counts.slo_misses += u64::from(slo_miss);
        counts.cost_nanousd += t::nano_usd(cost_usd);
        if v != rule.canary {
            return;
        }
        if let Some((next, why)) = judge(&s, rule) {
            rollout.enter(&mut s, &split.model, rule, next, why);
        }
    }

    /// A manual action on `model`'s rollout.
    pub fn command(
        &self,
        table: &RoutingTable,
        model: &str,
        cmd: Command,
    ) -> Result<serde_json::Value, String> {
        let split = table
            .split_of
            .get(model)
            .map(|s| &table.splits[*s as usize])
            .ok_or_else(|| format!("no split model `{model}`"))?;
        let rule = split
            .rollout
            .as_ref()
            .ok_or_else(|| format!("model `{model}` has no rollout"))?;
        let rollout = self.get(model, rule);
        {
            let mut s = rollout
                .state
                .lock()
                .map_err(|_| "rollout state poisoned".to_string())?;
            let step = s.step;
            let (to_step, phase) = match (cmd, s.phase) {
                (Command::Pause, Phase::Running) => (step, Phase::Paused),
                (Command::Resume, Phase::Paused) => (step, Phase::Running),
                (Command::Promote, Phase::Running | Phase::Paused) => {
                    if step + 1 >= rule.steps.len() {
                        (step, Phase::Promoted)
                    } else {
                        (step + 1, s.phase)
                    }
                }
                (Command::Abort, Phase::Running | Phase::Paused) => (step, Phase::RolledBack),
                (_, phase) => {
                    return Err(format!(
                        "the rollout of `{model}` is {phase:?}: nothing to {cmd:?}"
                    ))
                }
            };
            rollout.enter(
                &mut s,
                model,
                rule,
                (to_step, phase),
                format!("manual {cmd:?}").to_lowercase(),
            );
        }
        Ok(self.report_one(table, model).unwrap_or_default())
    }

    fn report_one(&self, table: &RoutingTable, model: &str) -> Option<serde_json::Value> {
        let split = &table.splits[*table.split_of.get(model)? as usize];
        let rule = split.rollout.as_ref()?;
        let rollout = self.get(model, rule);
        let s = rollout.state.lock().ok()?;
        let p0e = rate(s.stable.errors, s.stable.requests);
        let p0s = rate(s.stable.slo_misses, s.stable.requests);
        Some(serde_json::json!({
            "canary": split.versions[rule.canary as usize].name,
            "stable": split.versions[rule.stable as usize].name,
            "phase": s.phase,
            "step": s.step,
            "steps_percent": rule.steps.iter().map(|p| f64::from(*p) / 10_000.0).collect::<Vec<_>>(),
            "canary_percent": f64::from(rollout.share.load(Relaxed)) / 10_000.0,
            "min_requests": rule.min_requests,
            "canary_counts": s.canary,
            "stable_counts": s.stable,
            "llr_errors": llr(s.canary.errors, s.canary.requests, p0e, rule.max_error_increase),
            "llr_slo_misses": llr(s.canary.slo_misses, s.canary.requests, p0s, rule.max_slo_miss_increase),
            "thresholds": [LOWER, UPPER],
            "last": s.last,
        }))
    }

    /// `model`'s rollout phase and canary share (millionths) now.
    pub fn phase(&self, table: &RoutingTable, model: &str) -> Option<(Phase, u32)> {
        let split = &table.splits[*table.split_of.get(model)? as usize];
        let rollout = self.get(model, split.rollout.as_ref()?);
        let phase = rollout.state.lock().ok()?.phase;
        Some((phase, rollout.share.load(Relaxed)))
    }

    /// Every rollout, by model (for `GET /admin/rollouts`).
    pub fn report(&self, table: &RoutingTable) -> HashMap<String, serde_json::Value> {
        table
            .splits
            .iter()
            .filter_map(|s| Some((s.model.clone(), self.report_one(table, &s.model)?)))
            .collect()
    }
}

/// The end of the step, if the evidence allows: the next (step, phase) and why.
fn judge(s: &State, rule: &RolloutRule) -> Option<((usize, Phase), String)> {
    let c = &s.canary;
    if c.requests < u64::from(rule.min_requests) {
        return None;
    }
    let st = &s.stable;
    let errors = llr(
        c.errors,
        c.requests,
        rate(st.errors, st.requests),
        rule.max_error_increase,
    );
    let slo = llr(
        c.slo_misses,
        c.requests,
        rate(st.slo_misses, st.requests),
        rule.max_slo_miss_increase,
    );
    let summary = format!(
        "canary {}/{} errors, {} SLO misses; stable {}/{} errors, {} SLO misses",
        c.errors, c.requests, c.slo_misses, st.errors, st.requests, st.slo_misses
    );
    if errors >= UPPER {
        return Some((
            (s.step, Phase::RolledBack),
            format!("error rate worse ({summary})"),
        ));
    }
    if slo >= UPPER {
        return Some((
            (s.step, Phase::RolledBack),
            format!("SLO-miss rate worse ({summary})"),
        ));
    }
    if errors > LOWER || slo > LOWER {
        return None;
    }
    let mean = |x: &Counts| x.cost_nanousd as f64 / x.requests.max(1) as f64;
    if st.requests > 0 && mean(c) > mean(st) * (1.0 + rule.max_cost_increase) + 1.0 {
        return Some((
            (s.step, Phase::RolledBack),
            format!(
                "cost per request {:.0} nUSD against {:.0}",
                mean(c),
                mean(st)
            ),
        ));
    }
    let next = s.step + 1;
    Some(if next + 1 >= rule.steps.len() {
        (
            (rule.steps.len() - 1, Phase::Promoted),
            format!("promoted ({summary})"),
        )
    } else {
        ((next, Phase::Running), format!("next step ({summary})"))
    })
}

impl Rollout {
    fn start(model: &str, rule: &RolloutRule) -> Rollout {
        let saved: Option<Saved> = rule
            .state_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (step, phase, last) = match saved {
            Some(s) => (
                s.step.min(rule.steps.len().saturating_sub(1)),
                s.phase,
                s.last,
            ),
            None => (0, Phase::Running, "started".to_string()),
        };
        tracing::info!(model, step, ?phase, "rollout state");
        let r = Rollout {
            share: AtomicU32::new(0),
            state: Mutex::new(State {
                step,
                phase,
                canary: Counts::default(),
                stable: Counts::default(),
                last,
            }),
        };
        r.share.store(share(rule, step, phase), Relaxed);
        metrics::gauge!(t::ROLLOUT_CANARY_PERCENT, "model" => model.to_string())
            .set(f64::from(share(rule, step, phase)) / 10_000.0);
        r
    }

    /// Move to `(step, phase)`: the share, a fresh step's counts, the log, the metric, the
    /// state file.
    fn enter(
        &self,
        s: &mut State,
        model: &str,
        rule: &RolloutRule,
        (step, phase): (usize, Phase),
        why: String,
    ) {
        s.step = step;
        s.phase = phase;
        s.canary = Counts::default();
        s.stable = Counts::default();
        s.last = why;
        let share = share(rule, step, phase);
        self.share.store(share, Relaxed);
        let percent = f64::from(share) / 10_000.0;
        tracing::info!(model, step, ?phase, percent, why = %s.last, "rollout step");
        let to = match phase {
            Phase::Running => "step",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        };
        metrics::counter!(t::ROLLOUT_TRANSITIONS, "model" => model.to_string(), "to" => to)
            .increment(1);
        metrics::gauge!(t::ROLLOUT_CANARY_PERCENT, "model" => model.to_string()).set(percent);
        let Some(file) = &rule.state_file else {
            return;
        };
        let saved = Saved {
            step,
            phase,
            last: s.last.clone(),
        };
        // Written beside and renamed: a crash never leaves half a file.
        let tmp = file.with_extension("tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(model, file = %file.display(), error = %e, "cannot save the rollout state");
        }
    }
}

/// The canary's share in `(step, phase)`.
fn share(rule: &RolloutRule, step: usize, phase: Phase) -> u32 {
    match phase {
        Phase::Promoted => 1_000_000,
        Phase::RolledBack => 0,
        Phase::Running | Phase::Paused => rule.steps.get(step).copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprt_rejects_a_five_percent_canary_and_accepts_a_clean_one() {
        // 5 errors in 100 against a clean stable version: past the upper threshold.
        assert!(llr(5, 100, 0.0, 0.02) >= UPPER);
        // 2 in 100 is not enough either way.
        let two = llr(2, 100, 0.0, 0.02);
        assert!(two < UPPER && two > LOWER);
        // None in 145: accepted; in 100, not yet.
        assert!(llr(0, 145, 0.0, 0.02) <= LOWER);
        assert!(llr(0, 100, 0.0, 0.02) > LOWER);
        // Against a stable version with 5 % errors, 5 % on the canary is no worse.
        assert!(llr(10, 200, 0.05, 0.02) < UPPER);
    }
}
