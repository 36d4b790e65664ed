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
//! **A canary that cannot be served counts against it.** The evidence is answered requests,
//! so a canary bad enough to be ejected (outlier ejection, failed health checks, refused
//! connects) would otherwise stop collecting it and its step would stall, its callers
//! refused. So a request [`steer`](Rollouts::steer)ed to the canary (not one whose path
//! names the version) that finds no pool, because every canary pool it may use has no
//! endpoint up (`route::version_unservable`), is one canary request with one error (no SLO
//! miss, no cost) in the step's pending counts, judged and flushed to Redis like any other
//! evidence, and counted in `switchyard_rollout_canary_unservable_total`. It is then steered
//! to the stable version and decided again (and looked up in the cache under that version):
//! the client is not punished for a broken canary, and its answer says `v1` in
//! `x-switchyard-version`. That stable answer counts once, as stable evidence, as any stable
//! answer does (it is one); it is never canary evidence, and the canary's charge is made at
//! the refusal, not from the answer. Stable unable to serve too: the usual 503 with
//! `Retry-After`, the canary still charged. Not charged (and not re-steered: the usual
//! refusal) is a canary that is merely full or whose servers report themselves busy
//! (overloaded says nothing about its quality), or whose pools the request may not use at
//! all (the tier's pool kinds, residency, no gRPC address: a policy matter). While the
//! rollout is not running (paused, or promoted with the stable version still in the policy)
//! nothing is counted, but the request is still re-steered. The check runs only on that
//! refusal path (a decision with no candidate, not from the cache, of a request on a
//! canary): a served request pays one comparison for it.
//!
//! **Evidence is every request an attempt went upstream for** (`pipeline::record`): an
//! answer, and a failure there too (a timeout, a cut or refused connection, after the
//! version's own retries), which is the gateway's 502/503/504 to the client and one error of
//! the version; an SLO miss when it took longer than the objective, as for an answer. So a
//! canary that hangs, or that refuses the connect that ejects it, is judged on those
//! requests. Not evidence: a request answered from the cache or queued, one refused before
//! any attempt (above), and one whose client went away (499).
//!
//! A caller keeps its version within a step and only moves forward: a caller is on the
//! canary when its sticky key's hash (`Class::version_key`) falls below the step's share,
//! so the canary's callers at 5 % are still on it at 25 %. A request whose path names a
//! version keeps it. Every transition is logged (tracing), kept in the rollout's recent
//! history (`GET /admin/rollouts`, the status page) and counted
//! (`switchyard_rollout_transitions_total`, once, by the instance that applied it). Manual
//! control: pause, resume, promote (next step), abort (roll back) and restart (a rolled-back
//! rollout from its first step, e.g. once the canary is fixed under the same name) through
//! the admin API.
//!
//! **A rollout is its canary's.** The state below (step, phase, counts, state file, Redis
//! hash) is kept for the canary version it was started for (`RolloutRule::canary_name`): a
//! reload or restart on a policy naming another canary starts that one at its first step,
//! never at the previous canary's step or phase.
//!
//! **One instance** (`limits.backend: local`): the state (step, phase) is written to the
//! rollout's `state_file` at each transition and read back when the gateway starts, so a
//! restart resumes the step (the counts of the step in progress start again). A state file
//! that cannot be written (a read-only ConfigMap mount) is warned about once, counted
//! (`switchyard_rollout_state_file_errors_total`) and shown in `/admin/rollouts`; the
//! transition still applies.
//!
//! **Several instances** (`limits.backend: redis`): one state for the fleet, in Redis
//! (`shared.rs`), as the limits and the capacity demand are shared: no Redis round trip on
//! the request path. A request adds its evidence to this instance's *pending* counts (the
//! mutex below); every [`shared::SYNC_EVERY`] the [`RolloutSync`] service flushes them into
//! the step's counts in Redis (one script per rollout: `HINCRBY`s, only under the epoch they
//! were counted in) and reads back the state and the counts summed over every instance. The
//! step is judged on those sums by the tick (which a request that finds the step decidable
//! wakes at once), never by a request; a transition (next step,
//! rollback, promote, a manual command on any instance) is applied by compare-and-set on
//! the state's epoch, so of two instances deciding on the same step one wins and the other
//! adopts the winner's state on its next tick, as every instance does. Redis' state is read
//! at start-up (the first tick, at once) and wins over the state file, which every instance
//! still writes (the single-instance persistence, and the start-up state when Redis is
//! away).
//!
//! **Redis away** (an error or a call slower than `limits.redis_timeout`, at least 500 ms):
//! each instance keeps serving on its own state, judging the fleet's counts as last read
//! plus its own since, on the request path as a single instance does, and writing its state
//! file; warned once, `switchyard_rollout_shared` 0, `"state": {"source": "local_fallback"}`
//! in `/admin/rollouts`. Admin commands then reach only the instance asked. **Rejoin**, at
//! the first tick that Redis answers: an instance that made no transition while away adopts
//! Redis' state, adding the counts it kept if the step is still the one they were counted
//! in (else they are dropped with their step). One that did pushes its state (compare-and-set)
//! when Redis has not moved since it left, since it then holds the newer decision; and
//! pushes a rollback whatever Redis holds, because a canary found worse on one instance's
//! evidence must not be put back in front of users by another's; otherwise it adopts Redis'
//! state (decided on the fleet's counts, more evidence than its own). A Redis that lost its
//! data (restarted empty) is seeded from the first instance that syncs, which may be one
//! that lagged a transition behind: an instance is in step with Redis only when the epoch
//! and the step and phase all match (the lagging one's seed can carry this instance's very
//! epoch), else it adopts Redis' state; except that an instance that has joined the fleet
//! and holds a finished rollout (promoted, or rolled back, which only `restart` leaves) pushes
//! it over an unfinished one from no later an epoch than its own (a seed from before it; a
//! later epoch is a transition the fleet applied after it), and a rollback over a
//! promotion, so a Redis restart never puts a rolled-back canary back in front of users. (At start-up, before joining, Redis'
//! state wins over the state file's, as above.) A flush whose answer
//! did not come (an error or the timeout: Redis may have run it or not) is sent again as the
//! same numbered batch until an answer comes, and Redis adds a batch once whatever the
//! number of times it is sent (`shared.rs`): a step's counts hold each request once.
//! Evidence counted meanwhile waits for the next batch, so after Redis was away the counts
//! it kept reach the fleet one tick later.
//!
//! State lives here, beside the table, by model name across reloads. The counts of one
//! rollout are behind a mutex held for a few additions per request of that model (the sync
//! tick and the admin API hold it as briefly, never across a Redis call); the share read
//! when choosing a version is an atomic.

pub mod shared;

use crate::classify::Class;
use crate::policy::compile::{RolloutRule, RoutingTable};
use crate::policy::tenancy::LimitsBackend;
use crate::serving::by_name::{self, ByName};
use crate::serving::Snapshot;
use crate::telemetry as t;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use shared::{Batch, Held, Pair, Shared};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// α = β = 0.05: `ln(0.95 / 0.05)`.
const UPPER: f64 = 2.944_438_979_166_440_5;
const LOWER: f64 = -UPPER;
/// The stable rate `p0` is taken as at least this.
const P0_FLOOR: f64 = 0.01;
/// Transitions kept per rollout for `/admin/rollouts`.
const HISTORY: usize = 20;

/// Every rollout's live state, and the Redis backend when the fleet shares it.
#[derive(Default)]
pub struct Rollouts {
    by_model: ByName<Rollout>,
    shared: Option<Shared>,
    /// Wakes the sync tick early: a request found the fleet's step decidable.
    wake: tokio::sync::Notify,
}

/// One rollout.
pub struct Rollout {
    /// The canary this rollout is of (`RolloutRule::canary_name`).
    canary: String,
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

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "running" => Phase::Running,
            "paused" => Phase::Paused,
            "promoted" => Phase::Promoted,
            "rolled_back" => Phase::RolledBack,
            _ => return None,
        })
    }
}

/// One version's evidence in a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub slo_misses: u64,
    pub cost_nanousd: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.slo_misses += o.slo_misses;
        self.cost_nanousd += o.cost_nanousd;
    }
}

#[derive(Debug)]
struct State {
    step: usize,
    phase: Phase,
    /// The step's counts summed over the fleet as last read from Redis (zero when local).
    fleet: Pair,
    /// This instance's counts not in `fleet` yet and in no batch (all of them when local).
    pending: Pair,
    /// The batch sent to Redis and not answered yet: sent again as it is at the next sync
    /// (see the module docs of `shared.rs`); its counts are not in `fleet` either.
    unanswered: Option<Batch>,
    /// Why the last transition happened.
    last: String,
    /// The Redis epoch this state is (0: not read from Redis yet).
    epoch: u64,
    /// A transition was applied here while not joined to Redis' state (see the module docs
    /// on rejoining).
    away: bool,
    history: VecDeque<serde_json::Value>,
    /// The state file's last write error (warned once), until a write succeeds.
    file_error: Option<String>,
}

impl State {
    /// This instance's counts not in `fleet` yet: the unanswered batch's and the pending.
    fn unflushed(&self) -> Pair {
        match &self.unanswered {
            Some(b) => self.pending.sum(&b.deltas),
            None => self.pending,
        }
    }

    /// The step's counts as this instance knows them: the fleet's as last read plus its own
    /// since.
    fn counts(&self) -> Pair {
        self.fleet.sum(&self.unflushed())
    }
}

/// What the state file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The canary it is for (absent in files written before it was recorded: taken as the
    /// current one's).
    #[serde(default)]
    canary: Option<String>,
    step: usize,
    phase: Phase,
    last: String,
}

/// How a transition came to be applied here.
#[derive(Debug, Clone)]
enum Via {
    /// Decided or commanded here on this instance's state alone.
    Local,
    /// Decided or commanded here and won the compare-and-set: the new epoch.
    Fleet(u64),
    /// Applied by another instance (`by`) and read from Redis.
    Adopted { epoch: u64, by: String },
}

/// A manual action (`POST /admin/rollouts/{model}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote,
    Abort,
    /// A rolled-back rollout from its first step again (the canary fixed under the same
    /// name): the step's counts start afresh.
    Restart,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            "restart" => Command::Restart,
            _ => return None,
        })
    }

    /// Where this command takes a rollout in `(step, phase)`, or why it cannot.
    fn target(
        self,
        model: &str,
        rule: &RolloutRule,
        step: usize,
        phase: Phase,
    ) -> Result<(usize, Phase), String> {
        Ok(match (self, phase) {
            (Command::Pause, Phase::Running) => (step, Phase::Paused),
            (Command::Resume, Phase::Paused) => (step, Phase::Running),
            (Command::Promote, Phase::Running | Phase::Paused) => {
                if step + 1 >= rule.steps.len() {
                    (step, Phase::Promoted)
                } else {
                    (step + 1, phase)
                }
            }
            (Command::Abort, Phase::Running | Phase::Paused) => (step, Phase::RolledBack),
            (Command::Restart, Phase::RolledBack) => (0, Phase::Running),
            (_, phase) => {
                return Err(format!(
                    "the rollout of `{model}` is {phase:?}: nothing to {self:?}"
                ))
            }
        })
    }
}

/// Whether this instance's phase `mine` must replace the fleet's `held` in Redis: a
/// finished rollout (promoted, or rolled back, which only `restart` leaves, by a transition
/// that moves the epoch) is never undone by a state from before it, such as the one a
/// lagging instance writes into a Redis that lost its data (its epoch can even equal this
/// instance's); and a rollback wins over a promotion. (The caller compares the epochs.)
fn finished_wins(mine: Phase, held: Phase) -> bool {
    match mine {
        Phase::RolledBack => held != Phase::RolledBack,
        Phase::Promoted => matches!(held, Phase::Running | Phase::Paused),
        Phase::Running | Phase::Paused => false,
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

/// Put a rolled-out model's request on its stable version (`explain` shows a request re-steered
/// from an unservable canary with this, without charging the canary).
pub fn to_stable(table: &RoutingTable, class: &mut Class) {
    if let Some((split_id, _)) = class.version {
        if let Some(rule) = &table.splits[split_id as usize].rollout {
            class.version = Some((split_id, rule.stable));
        }
    }
}

/// A split model's rollout rule and its canary's name.
fn rule_of<'a>(table: &'a RoutingTable, model: &str) -> Option<(&'a RolloutRule, &'a str)> {
    let split = &table.splits[*table.split_of.get(model)? as usize];
    let rule = split.rollout.as_ref()?;
    Some((rule, split.versions[rule.canary as usize].name.as_str()))
}

impl Rollouts {
    /// Rollouts of this instance alone (`limits.backend: local`).
    pub fn new() -> Arc<Rollouts> {
        Arc::new(Rollouts::default())
    }

    /// Rollouts shared by the fleet when the limits are (`limits.backend: redis`), else of
    /// this instance alone; fixed at start-up. Shared ones need [`RolloutSync`] running.
    pub fn with_backend(backend: &LimitsBackend) -> Arc<Rollouts> {
        let shared = match backend {
            LimitsBackend::Local => None,
            LimitsBackend::Redis {
                url,
                prefix,
                timeout,
            } => match Shared::new(url, prefix, *timeout) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "limits.redis_url unusable; rollouts are per instance");
                    None
                }
            },
        };
        Arc::new(Rollouts {
            by_model: ArcSwap::default(),
            shared,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Whether rollouts are shared through Redis (whether or not it answers now).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether `s` is the fleet's state: decisions are then the sync tick's, by
    /// compare-and-set, never a request's.
    fn joined(&self, s: &State) -> bool {
        self.shared.as_ref().is_some_and(Shared::is_up) && s.epoch > 0 && !s.away
    }

    /// The rollout of `model`, made (from its state file, if any) on first use.
    fn get(&self, model: &str, rule: &RolloutRule) -> Arc<Rollout> {
        // The model's first request, or a reload that names another canary: a new rollout
        // from its first step (the previous canary's phase, step and counts are not this
        // one's).
        by_name::get_or_make(
            &self.by_model,
            model,
            |r| r.canary == rule.canary_name,
            || Rollout::start(model, rule),
        )
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

    /// A finished request of a rolled-out model: counted for its version, and, when this
    /// instance decides alone, the step decided when the evidence allows.
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
        // No status (0) or the client gone (499): no evidence either way.
        if status == 0 || status == 499 {
            return;
        }
        let answer = Counts {
            requests: 1,
            errors: u64::from(status >= 500),
            slo_misses: u64::from(slo_miss),
            cost_nanousd: t::nano_usd(cost_usd),
        };
        self.count(&split.model, rule, v == rule.canary, &answer);
    }

    /// Whether `class` was put on its model's canary by [`steer`](Self::steer) (not by a
    /// path naming the version): one branch for every request that is not.
    pub fn on_canary(&self, table: &RoutingTable, class: &Class) -> bool {
        let (Some((split_id, v)), Some(_)) = (class.version, class.version_key) else {
            return false;
        };
        table.splits[split_id as usize]
            .rollout
            .as_ref()
            .is_some_and(|rule| v == rule.canary)
    }

    /// A request [`on_canary`](Self::on_canary) that the canary cannot serve for its
    /// health (`route::version_unservable`, decided by the caller): charged to the canary
    /// as one errored request (no SLO miss, no cost) while the step runs, counted in
    /// `switchyard_rollout_canary_unservable_total`, and moved to the stable version, which
    /// the caller then decides for as for any stable request (see the module docs).
    pub fn canary_unservable(&self, table: &RoutingTable, class: &mut Class) {
        let Some((split_id, _)) = class.version else {
            return;
        };
        let split = &table.splits[split_id as usize];
        let Some(rule) = &split.rollout else {
            return;
        };
        metrics::counter!(t::ROLLOUT_CANARY_UNSERVABLE, "model" => split.model.clone())
            .increment(1);
        let refused = Counts {
            requests: 1,
            errors: 1,
            ..Counts::default()
        };
        self.count(&split.model, rule, true, &refused);
        to_stable(table, class);
    }

    /// Add one request's evidence to its version's pending counts (while the step runs)
    /// and, for the canary, decide the step when the evidence allows (here when alone, by
    /// waking the sync when the fleet shares the state).
    fn count(&self, model: &str, rule: &RolloutRule, canary: bool, one: &Counts) {
        let rollout = self.get(model, rule);
        let Ok(mut s) = rollout.state.lock() else {
            return;
        };
        if s.phase != Phase::Running {
            return;
        }
        if canary {
            s.pending.canary.add(one);
        } else {
            s.pending.stable.add(one);
            return;
        }
        if let Some((next, why)) = judge(s.step, &s.counts(), rule) {
            if self.joined(&s) {
                // The fleet's transition is the sync's (compare-and-set): now, not at its
                // next tick.
                self.wake.notify_one();
            } else {
                self.apply(&rollout, &mut s, model, rule, next, why, Via::Local);
            }
        }
    }

    /// Apply a transition to `s`; one made on this instance's state alone while the fleet
    /// shares rollouts is marked for the rejoin.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rollout: &Rollout,
        s: &mut State,
        model: &str,
        rule: &RolloutRule,
        to: (usize, Phase),
        why: String,
        via: Via,
    ) {
        let local = matches!(via, Via::Local);
        rollout.enter(s, model, rule, to, why, via);
        if local && self.shared.is_some() {
            s.away = true;
        }
    }

    /// A manual action on `model`'s rollout: through Redis' compare-and-set when the fleet
    /// shares the state (so it reaches every instance at its next tick), else here alone.
    pub async fn command(
        &self,
        table: &RoutingTable,
        model: &str,
        cmd: Command,
    ) -> Result<serde_json::Value, String> {
        if !table.split_of.contains_key(model) {
            return Err(format!("no split model `{model}`"));
        }
        let (rule, canary) =
            rule_of(table, model).ok_or_else(|| format!("model `{model}` has no rollout"))?;
        let rollout = self.get(model, rule);
        let why = format!("manual {cmd:?}").to_lowercase();
        // A lost compare-and-set (another instance moved the step) reads the new state and
        // judges the command against it, a few times at most.
        for _ in 0..3 {
            let (to, epoch, joined) = {
                let s = rollout
                    .state
                    .lock()
                    .map_err(|_| "rollout state poisoned".to_string())?;
                (
                    cmd.target(model, rule, s.step, s.phase)?,
                    s.epoch,
                    self.joined(&s),
                )
            };
            if let (Some(sh), true) = (&self.shared, joined) {
                match sh.transition(model, canary, epoch, to, &why).await {
                    Ok(Some(e)) => {
                        {
                            let mut s = rollout
                                .state
                                .lock()
                                .map_err(|_| "rollout state poisoned".to_string())?;
                            let via = Via::Fleet(e);
                            self.apply(&rollout, &mut s, model, rule, to, why.clone(), via);
                        }
                        return Ok(self.report_one(table, model).unwrap_or_default());
                    }
                    Ok(None) => {
                        self.sync_one(sh, model, rule, canary, &rollout).await;
                        continue;
                    }
                    // Redis away: this instance alone, below.
                    Err(_) => {}
                }
            }
            {
                let mut s = rollout
                    .state
                    .lock()
                    .map_err(|_| "rollout state poisoned".to_string())?;
                let to = cmd.target(model, rule, s.step, s.phase)?;
                self.apply(&rollout, &mut s, model, rule, to, why.clone(), Via::Local);
            }
            return Ok(self.report_one(table, model).unwrap_or_default());
        }
        Err(format!(
            "the rollout of `{model}` kept moving under the command; try again"
        ))
    }

    /// One round of the fleet's state for every rolled-out model of `table` (the
    /// [`RolloutSync`] tick): flush, read, adopt or push, decide.
    pub async fn sync(&self, table: &RoutingTable) {
        let Some(sh) = &self.shared else {
            return;
        };
        for split in &table.splits {
            let Some((rule, canary)) = rule_of(table, &split.model) else {
                continue;
            };
            let rollout = self.get(&split.model, rule);
            if !self
                .sync_one(sh, &split.model, rule, canary, &rollout)
                .await
            {
                // Redis away: the other rollouts wait for the next tick.
                return;
            }
        }
    }

    /// One rollout's round with Redis (see the module docs); `false` when Redis did not
    /// answer.
    async fn sync_one(
        &self,
        sh: &Shared,
        model: &str,
        rule: &RolloutRule,
        canary: &str,
        rollout: &Rollout,
    ) -> bool {
        let (batch, epoch, away, seed) = {
            let Ok(mut s) = rollout.state.lock() else {
                return false;
            };
            let seed = Held {
                epoch: s.epoch + 1,
                step: s.step,
                phase: s.phase,
                last: s.last.clone(),
                by: sh.instance.clone(),
            };
            // The batch whose answer did not come goes again, unchanged: Redis may have
            // added it already, and only its number tells.
            let batch = match &s.unanswered {
                Some(b) => b.clone(),
                None => {
                    let counted = (!s.away && s.epoch > 0).then_some(s.epoch);
                    let b = sh.batch(counted, std::mem::take(&mut s.pending));
                    s.unanswered = Some(b.clone());
                    b
                }
            };
            (batch, s.epoch, s.away, seed)
        };
        let got = sh.sync(model, canary, &batch, &seed).await;
        let push = {
            let Ok(mut s) = rollout.state.lock() else {
                return false;
            };
            // Kept to be sent again when no answer came.
            let Ok(got) = got else {
                return false;
            };
            // Answered: the batch is settled, unless a transition dropped it meanwhile or
            // another sync of this rollout settled it first.
            if s.unanswered.as_ref().is_some_and(|b| b.seq == batch.seq) {
                s.unanswered = None;
                if !got.added {
                    // Refused (counted under another epoch): the deltas are this instance's
                    // again, for the step they belong to if it is still this one.
                    s.pending.add(&batch.deltas);
                }
            }
            if got.replayed {
                tracing::debug!(
                    model,
                    seq = batch.seq,
                    "rollout sync: the batch was added by an earlier sync whose answer was lost"
                );
            }
            let held = got.held;
            if s.epoch != epoch || s.away != away {
                // A command moved it meanwhile: the next tick settles it.
                return true;
            }
            if got.seeded {
                tracing::info!(model, epoch = held.epoch, step = s.step, phase = ?s.phase,
                    "rollout state written to redis (it had none)");
                s.epoch = held.epoch;
                s.away = false;
                s.fleet = got.fleet;
                None
            } else if !away && held.epoch == epoch && (held.step, held.phase) == (s.step, s.phase) {
                s.fleet = got.fleet;
                None
            } else if (away && (held.epoch == epoch || finished_wins(s.phase, held.phase)))
                || (epoch > 0 && held.epoch <= epoch && finished_wins(s.phase, held.phase))
            {
                Some((held.epoch, (s.step, s.phase), s.last.clone()))
            } else if epoch == 0 && !away && (held.step, held.phase) == (s.step, s.phase) {
                // Joining, at start-up, the state this instance already has (from its
                // state file): its counts so far are of this step, kept to be flushed.
                s.epoch = held.epoch;
                s.last = held.last;
                s.fleet = got.fleet;
                None
            } else {
                let to = (
                    held.step.min(rule.steps.len().saturating_sub(1)),
                    held.phase,
                );
                let via = Via::Adopted {
                    epoch: held.epoch,
                    by: held.by,
                };
                rollout.enter(&mut s, model, rule, to, held.last, via);
                s.fleet = got.fleet;
                None
            }
        };
        if let Some((expected, to, why)) = push {
            if let Ok(Some(e)) = sh.transition(model, canary, expected, to, &why).await {
                if let Ok(mut s) = rollout.state.lock() {
                    if s.away && (s.step, s.phase) == to {
                        tracing::info!(model, epoch = e, step = to.0, phase = ?to.1,
                            "rollout: the transition made while redis was away is the fleet's now");
                        s.epoch = e;
                        s.away = false;
                        s.fleet = Pair::default();
                    }
                }
            }
            return sh.is_up();
        }
        let decision = {
            let Ok(s) = rollout.state.lock() else {
                return true;
            };
            if !self.joined(&s) || s.phase != Phase::Running {
                None
            } else {
                judge(s.step, &s.counts(), rule).map(|d| (d, s.epoch))
            }
        };
        if let Some(((to, why), expected)) = decision {
            // Lost (`None`): another instance decided first; its state is adopted next tick.
            if let Ok(Some(e)) = sh.transition(model, canary, expected, to, &why).await {
                if let Ok(mut s) = rollout.state.lock() {
                    if s.epoch == expected {
                        self.apply(rollout, &mut s, model, rule, to, why, Via::Fleet(e));
                    }
                }
            }
        }
        sh.is_up()
    }

    fn report_one(&self, table: &RoutingTable, model: &str) -> Option<serde_json::Value> {
        let split = &table.splits[*table.split_of.get(model)? as usize];
        let rule = split.rollout.as_ref()?;
        let rollout = self.get(model, rule);
        let s = rollout.state.lock().ok()?;
        let total = s.counts();
        let own = s.unflushed();
        let (c, st) = (&total.canary, &total.stable);
        let p0e = rate(st.errors, st.requests);
        let p0s = rate(st.slo_misses, st.requests);
        let state = match &self.shared {
            None => serde_json::json!({"source": "local"}),
            Some(sh) if self.joined(&s) => serde_json::json!({
                "source": "redis", "epoch": s.epoch, "instance": sh.instance,
                "local_counts": own.canary.requests + own.stable.requests,
            }),
            Some(sh) => serde_json::json!({
                "source": "local_fallback", "epoch": s.epoch, "instance": sh.instance,
                "transitions_while_away": s.away,
                "why": if sh.is_up() { "joining the fleet's state at the next tick" }
                       else { "redis is away: this instance decides on the fleet's counts as last read plus its own" },
            }),
        };
        Some(serde_json::json!({
            "canary": split.versions[rule.canary as usize].name,
            "stable": split.versions[rule.stable as usize].name,
            "phase": s.phase,
            "step": s.step,
            "steps_percent": rule.steps.iter().map(|p| f64::from(*p) / 10_000.0).collect::<Vec<_>>(),
            "canary_percent": f64::from(rollout.share.load(Relaxed)) / 10_000.0,
            "min_requests": rule.min_requests,
            "canary_counts": c,
            "stable_counts": st,
            "llr_errors": llr(c.errors, c.requests, p0e, rule.max_error_increase),
            "llr_slo_misses": llr(c.slo_misses, c.requests, p0s, rule.max_slo_miss_increase),
            "thresholds": [LOWER, UPPER],
            "last": s.last,
            "state": state,
            "history": s.history,
            "state_file": rule.state_file.as_ref().map(|f| f.display().to_string()),
            "state_file_error": s.file_error,
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

/// Background service (`limits.backend: redis`): every rollout's round with Redis each
/// [`shared::SYNC_EVERY`] (the first at once), or sooner when a request finds a step
/// decidable.
pub struct RolloutSync {
    pub snapshot: Snapshot,
    pub rollouts: Arc<Rollouts>,
}

#[async_trait]
impl BackgroundService for RolloutSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut ticker = crate::serving::ticker::Ticker::new(shared::SYNC_EVERY, shutdown);
        loop {
            tokio::select! {
                more = ticker.tick() => if !more { break },
                () = self.rollouts.wake.notified() => {}
            }
            let table = self.snapshot.load_full();
            self.rollouts.sync(&table.table).await;
        }
    }
}

/// The end of step `step` on `counts`, if the evidence allows: the next (step, phase) and
/// why.
fn judge(step: usize, counts: &Pair, rule: &RolloutRule) -> Option<((usize, Phase), String)> {
    let c = &counts.canary;
    if c.requests < u64::from(rule.min_requests) {
        return None;
    }
    let st = &counts.stable;
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
            (step, Phase::RolledBack),
            format!("error rate worse ({summary})"),
        ));
    }
    if slo >= UPPER {
        return Some((
            (step, Phase::RolledBack),
            format!("SLO-miss rate worse ({summary})"),
        ));
    }
    if errors > LOWER || slo > LOWER {
        return None;
    }
    let mean = |x: &Counts| x.cost_nanousd as f64 / x.requests.max(1) as f64;
    if st.requests > 0 && mean(c) > mean(st) * (1.0 + rule.max_cost_increase) + 1.0 {
        return Some((
            (step, Phase::RolledBack),
            format!(
                "cost per request {:.0} nUSD against {:.0}",
                mean(c),
                mean(st)
            ),
        ));
    }
    let next = step + 1;
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
        let saved = saved.filter(|s| {
            let ours = s.canary.as_ref().is_none_or(|c| *c == rule.canary_name);
            if !ours {
                tracing::info!(model, canary = %rule.canary_name, was = ?s.canary,
                    "the rollout state file is another canary's: starting at the first step");
            }
            ours
        });
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
            canary: rule.canary_name.clone(),
            share: AtomicU32::new(0),
            state: Mutex::new(State {
                step,
                phase,
                fleet: Pair::default(),
                pending: Pair::default(),
                unanswered: None,
                last,
                epoch: 0,
                away: false,
                history: VecDeque::new(),
                file_error: None,
            }),
        };
        r.share.store(share(rule, step, phase), Relaxed);
        metrics::gauge!(t::ROLLOUT_CANARY_PERCENT, "model" => model.to_string())
            .set(f64::from(share(rule, step, phase)) / 10_000.0);
        r
    }

    /// Move to `(step, phase)`: the share, a fresh step's counts, the log, the history, the
    /// metrics (a transition adopted from another instance is counted there, not here), the
    /// state file.
    fn enter(
        &self,
        s: &mut State,
        model: &str,
        rule: &RolloutRule,
        (step, phase): (usize, Phase),
        why: String,
        via: Via,
    ) {
        s.step = step;
        s.phase = phase;
        s.fleet = Pair::default();
        s.pending = Pair::default();
        // Its deltas are of the step left: added there or not, never to the new one.
        s.unanswered = None;
        s.last = why;
        let share = share(rule, step, phase);
        self.share.store(share, Relaxed);
        let percent = f64::from(share) / 10_000.0;
        let source = match &via {
            Via::Local => "this instance".to_string(),
            Via::Fleet(e) => {
                s.epoch = *e;
                s.away = false;
                "this instance, for the fleet".to_string()
            }
            Via::Adopted { epoch, by } => {
                s.epoch = *epoch;
                s.away = false;
                format!("instance {by}")
            }
        };
        tracing::info!(model, step, ?phase, percent, why = %s.last, by = %source, epoch = s.epoch, "rollout step");
        if !matches!(via, Via::Adopted { .. }) {
            let to = match phase {
                Phase::Running => "step",
                other => other.as_str(),
            };
            metrics::counter!(t::ROLLOUT_TRANSITIONS, "model" => model.to_string(), "to" => to)
                .increment(1);
        }
        metrics::gauge!(t::ROLLOUT_CANARY_PERCENT, "model" => model.to_string()).set(percent);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if s.history.len() == HISTORY {
            s.history.pop_front();
        }
        s.history.push_back(serde_json::json!({
            "at_unix_ms": at, "step": step, "phase": phase, "canary_percent": percent,
            "why": s.last, "by": source, "epoch": s.epoch,
        }));
        let Some(file) = &rule.state_file else {
            return;
        };
        let saved = Saved {
            canary: Some(rule.canary_name.clone()),
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
        match written {
            Ok(()) => {
                if s.file_error.take().is_some() {
                    tracing::info!(model, file = %file.display(), "rollout state file written again");
                }
            }
            Err(e) => {
                metrics::counter!(t::ROLLOUT_STATE_FILE_ERRORS, "model" => model.to_string())
                    .increment(1);
                if s.file_error.is_none() {
                    tracing::warn!(model, file = %file.display(), error = %e,
                        "cannot write the rollout state file (warned once): transitions still apply, but a restart without redis starts the rollout again; set models.{model}.rollout.state_file to a writable path");
                }
                s.file_error = Some(format!("{}: {e}", file.display()));
            }
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
    use crate::policy::compile::{compile_str, CompileContext};

    #[test]
    fn a_finished_rollout_is_never_undone_and_a_rollback_beats_a_promotion() {
        use Phase::*;
        for held in [Running, Paused, Promoted] {
            assert!(finished_wins(RolledBack, held), "{held:?}");
        }
        assert!(!finished_wins(RolledBack, RolledBack));
        assert!(finished_wins(Promoted, Running) && finished_wins(Promoted, Paused));
        assert!(!finished_wins(Promoted, Promoted) && !finished_wins(Promoted, RolledBack));
        for mine in [Running, Paused] {
            for held in [Running, Paused, Promoted, RolledBack] {
                assert!(!finished_wins(mine, held), "{mine:?} over {held:?}");
            }
        }
    }

    /// `m` rolled out from `v1` (pool `a`) to `v2` (pool `b`) at 50 %, 10 canary requests a
    /// step, its state file in `dir`.
    fn table(dir: &std::path::Path) -> RoutingTable {
        let text = r#"
regions: { default: us, map: [{ name: us, continents: [NA] }] }
rtt_ms: { us: { us: 5 } }
tiers:
  t: { deadline: 2s, weight: 0.0, pools: [edge] }
pools:
  - { name: a, kind: edge, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 8, service_time: 10ms }
  - { name: b, kind: edge, region: us, endpoints: [127.0.0.1:2], models: ["*"], concurrency: 8, service_time: 10ms }
routes:
  - { name: r, match: /x, protocol: openai, tier: t }
models:
  m:
    versions:
      - { name: v1, weight: 100, pools: [a] }
      - { name: v2, weight: 0, pools: [b] }
    rollout: { canary: v2, steps: [50, 100], min_requests: 10 }
"#;
        compile_str(
            text,
            &CompileContext {
                file: &dir.join("p.yaml"),
                gateway_region: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_unservable_canary_request_is_one_canary_error_and_goes_to_the_stable_version() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path());
        let rollouts = Rollouts::new();
        let on = |v: u16, key: Option<u64>| {
            let mut c = Class::what_if(&table, 0, 0, 0, "m");
            c.version = Some((0, v));
            c.version_key = key;
            c
        };
        // Steered to the canary, not named by the path, not on the stable version.
        assert!(rollouts.on_canary(&table, &on(1, Some(7))));
        assert!(!rollouts.on_canary(&table, &on(1, None)));
        assert!(!rollouts.on_canary(&table, &on(0, Some(7))));

        let mut c = on(1, Some(7));
        rollouts.canary_unservable(&table, &mut c);
        assert_eq!(c.version, Some((0, 0)), "moved to v1");
        // Its stable answer is stable evidence, once, like any stable answer.
        rollouts.observe(&table, &c, 200, false, 0.0);
        let report = rollouts.report(&table);
        let m = &report["m"];
        assert_eq!(m["canary_counts"]["requests"], 1);
        assert_eq!(m["canary_counts"]["errors"], 1);
        assert_eq!(m["canary_counts"]["slo_misses"], 0);
        assert_eq!(m["canary_counts"]["cost_nanousd"], 0);
        assert_eq!(m["stable_counts"]["requests"], 1);
        assert_eq!(m["stable_counts"]["errors"], 0);
        // The step's minimum of such requests rolls the canary back on the usual rule.
        for _ in 1..10 {
            rollouts.canary_unservable(&table, &mut on(1, Some(7)));
        }
        assert_eq!(rollouts.phase(&table, "m"), Some((Phase::RolledBack, 0)));
    }

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
