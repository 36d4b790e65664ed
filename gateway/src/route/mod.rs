//! Routing: from a [`Class`] and the routing table to a [`Decision`] — which pool, which
//! endpoint, and why.
//!
//! Every pool is a candidate if it serves the model, its kind is allowed for the tier and it
//! has an endpoint up. Each candidate gets an estimate:
//! `latency = client → gateway + gateway → pool round trip + service time × queueing factor`
//! (each network term counted once; see [`network`]) and `cost = per request + per GPU-hour ×
//! expected service time + per-token prices × the pool's average tokens per request`
//! (`tokens`). Among candidates whose
//! latency meets the deadline, the lowest `weight × latency/deadline + (1 − weight) ×
//! cost/max cost` wins; none meets it → the tier's `on_slo_miss`. Inside the chosen pool the
//! endpoint is picked by power of two choices on latency × in-flight (by affinity key with
//! bounded loads on pools with `affinity:`).
//!
//! [`decide`] is a pure function of its inputs plus the live atomics in `state` (the
//! `Serving` it takes is the routing table and its `state::Live`, indexed like the table): no
//! allocation (up to 24 candidates meeting the deadline), no locks. [`explain`] runs the same code and also reports every candidate, so
//! the admin API's explanation cannot disagree with what the proxy does.

pub mod cost;
pub mod health;
pub mod network;
pub mod tokens;

use crate::classify::Class;
use crate::policy::compile::{Billing, Pool, PoolId};
use crate::policy::raw::{OnSloMiss, Protocol};
use crate::serving::state::{self, EndpointState, Live};
use crate::serving::Serving;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Expected latency and cost of sending a request to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    #[serde(serialize_with = "ser_ms")]
    pub latency: Duration,
    pub cost_usd: f64,
    /// The parts of `latency`, each counted once: client → gateway, gateway → pool round
    /// trip, and the service time with its queueing factor.
    #[serde(serialize_with = "ser_ms")]
    pub client_rtt: Duration,
    #[serde(serialize_with = "ser_ms")]
    pub pool_rtt: Duration,
    #[serde(serialize_with = "ser_ms")]
    pub service: Duration,
    /// The parts of `cost_usd` (`cost`): usage, egress, the capacity it displaces.
    pub cost: cost::Terms,
    /// For a stream with a time-per-output-token objective: the pool's measured time per
    /// output token (`None`: not measured yet, or not asked).
    #[serde(serialize_with = "ser_opt_ms")]
    pub tpot: Option<Duration>,
    /// The wait for a pool at zero replicas to start one (`capacity.scale_up_time`),
    /// included in `service` and `latency`.
    #[serde(serialize_with = "ser_ms")]
    pub activation: Duration,
}

impl Estimate {
    /// The estimate once the pool has a replica again: without its activation wait.
    fn warm(&self) -> Estimate {
        Estimate {
            latency: self.latency.saturating_sub(self.activation),
            service: self.service.saturating_sub(self.activation),
            activation: Duration::ZERO,
            ..*self
        }
    }
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_ms(d, s),
        None => s.serialize_none(),
    }
}

/// Whether `est` meets what `class` is judged on: its latency within the objective (the
/// time to first token for a stream with one, else the deadline) and, for a stream with a
/// `tpot`, the pool's measured time per output token within it.
#[inline]
pub fn meets(class: &Class, est: &Estimate) -> bool {
    est.latency <= class.objective()
        && match (class.tpot, est.tpot) {
            (Some(limit), Some(tpot)) => tpot <= limit,
            _ => true,
        }
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Why the decision came out the way it did (reported in `x-switchyard-decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The best trade-off among candidates that meet the deadline.
    MeetsDeadline,
    /// Nothing meets the deadline; the tier says send it to the fastest anyway.
    FallbackFastest,
    /// Nothing meets the deadline; the tier says refuse.
    Shed,
    /// No pool can take the request at all.
    NoCandidate,
    /// Nothing meets the deadline; the tier says queue it as a job for the cheapest
    /// candidate (`on_slo_miss: queue`).
    Queued,
    /// Every pool that could take it is at its concurrency limit (and the tier does not
    /// queue): refused with 503 and `Retry-After`, never held in a local queue.
    Overloaded,
    /// Nothing meets the deadline and the tier sheds, but a pool kept out only by a measured
    /// estimate that has gone stale gets this request as its probe, so the estimate can come
    /// back (see [`probe_instead_of_shed`]).
    Probe,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MeetsDeadline => "meets-deadline",
            Reason::FallbackFastest => "slo-miss-fastest",
            Reason::Shed => "slo-miss-shed",
            Reason::NoCandidate => "no-candidate",
            Reason::Queued => "slo-miss-queue",
            Reason::Overloaded => "overloaded",
            Reason::Probe => "slo-miss-probe",
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Pool and endpoint index; `None` for shed / no candidate.
    pub target: Option<(PoolId, u16)>,
    pub estimate: Option<Estimate>,
    pub reason: Reason,
    /// How many pools were candidates, and how many of those met the deadline.
    pub candidates: u16,
    pub feasible: u16,
    /// A pool at zero replicas (`capacity.min_replicas: 0`) that this request would have
    /// gone to were it warm: the request goes elsewhere now (or is queued or shed), and the
    /// pool is woken for the requests after it (`capacity::displaced`).
    pub wake: Option<PoolId>,
}

/// Why a pool is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    ModelNotServed,
    /// The request's version of a split model is served by other pools.
    NotThisVersion,
    KindNotAllowedForTier,
    /// The client's region may not be served from this pool's region (data residency).
    Residency,
    NoEndpointUp,
    AlreadyTried,
    /// Every endpoint left is at its share of the pool's `concurrency` (or the pool is full).
    AtCapacity,
    /// A gRPC request, and the pool's endpoints name no `grpc` address.
    NoGrpcEndpoint,
}

/// One pool's part in a decision, for `explain`.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateReport {
    pub pool: String,
    pub kind: &'static str,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Exclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    pub meets_deadline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub chosen: bool,
    pub why: String,
}

/// Endpoints already tried by this request (pool, endpoint), so a retry goes elsewhere.
pub type Tried<'a> = &'a [(PoolId, u16)];

/// `states`: the live state of `pool`'s endpoints (`Live::endpoints`). `sheddable`: the
/// request's tier may be shed or queued, so it avoids a server over its queue or KV-cache
/// threshold.
fn endpoint_available(
    states: &[Arc<EndpointState>],
    (pool_id, pool): (PoolId, &Pool),
    ep: u16,
    tried: Tried,
    (now_ms, sheddable): (u64, bool),
) -> bool {
    let state = &states[ep as usize];
    state.is_available(now_ms, pool.endpoint_limit())
        && !tried.contains(&(pool_id, ep))
        && !(sheddable && server_busy(state, pool, now_ms))
}

/// Whether the endpoint's own metrics (fresh ones) put it over the pool's `max_waiting` or
/// `max_kv_cache`.
fn server_busy(state: &EndpointState, pool: &Pool, now_ms: u64) -> bool {
    let Some(m) = &pool.server_metrics else {
        return false;
    };
    let Some(load) = state.server.fresh(now_ms, m.max_age) else {
        return false;
    };
    m.max_waiting.is_some_and(|w| load.waiting > w)
        || m.max_kv_cache.is_some_and(|k| load.kv_cache > k)
}

/// Whether `class`'s tier has somewhere else to go when no pool meets its objective.
fn sheddable(class: &Class, table: &Serving) -> bool {
    table.tiers[class.tier as usize].on_slo_miss != OnSloMiss::Fastest
}

// Inlined into `decide`'s loop: the call itself (registers saved and restored for each
// pool) was a tenth of a decision, and inlined, the per-request lookups hoist out.
#[inline(always)]
fn exclusion(
    pool_id: PoolId,
    pool: &Pool,
    class: &Class,
    table: &Serving,
    tried: Tried,
    now_ms: u64,
) -> Option<Exclusion> {
    if !table.tiers[class.tier as usize].kinds.contains(pool.kind) {
        return Some(Exclusion::KindNotAllowedForTier);
    }
    if !table.residency_allows(class.region, pool.region) {
        return Some(Exclusion::Residency);
    }
    match class.version {
        // A split model's version goes to that version's pools only.
        Some((split, v)) => {
            let version = &table.splits[split as usize].versions[v as usize];
            if !version.pools.contains(&pool_id) {
                return Some(Exclusion::NotThisVersion);
            }
        }
        None if !pool.models.serves(&class.model) => return Some(Exclusion::ModelNotServed),
        None => {}
    }
    if table.routes[class.route as usize].protocol == Protocol::OipV2Grpc && !pool.serves_grpc() {
        return Some(Exclusion::NoGrpcEndpoint);
    }
    let (mut up, mut untried, mut room) = (false, false, false);
    let limit = pool.endpoint_limit();
    let states = table.live.endpoints(pool_id);
    let shed = pool.server_metrics.is_some() && sheddable(class, table);
    for ep in 0..pool.endpoints.len() as u16 {
        let state = &states[ep as usize];
        if state.is_up(now_ms) {
            up = true;
            if !tried.contains(&(pool_id, ep)) {
                untried = true;
                if state.is_available(now_ms, limit) && !(shed && server_busy(state, pool, now_ms))
                {
                    room = true;
                    break;
                }
            }
        }
    }
    if !up {
        return Some(Exclusion::NoEndpointUp);
    }
    if !untried {
        return Some(Exclusion::AlreadyTried);
    }
    if !room || (!pool.queue_fed && table.live.pool(pool_id).in_flight() >= pool.concurrency) {
        return Some(Exclusion::AtCapacity);
    }
    None
}

/// The estimate for sending `class` to `pool` now.
pub fn estimate(pool_id: PoolId, pool: &Pool, class: &Class, table: &Serving) -> Estimate {
    estimate_at(pool_id, pool, class, table, now_ms_clock())
}

fn now_ms_clock() -> u64 {
    state::now_ms()
}

/// [`estimate`] at a given time: the decision reads the clock once, not once per pool.
#[inline(always)]
pub fn estimate_at(
    pool_id: PoolId,
    pool: &Pool,
    class: &Class,
    table: &Serving,
    now_ms: u64,
) -> Estimate {
    let state = table.live.pool(pool_id);
    // Live once enough samples exist (the baseline before), idle-decayed: see `state`. A
    // stream judged on its first token is estimated with the pool's measured time to first
    // token (until one is measured, its service time).
    let mut service = state.service_time_behind(now_ms, network::upstream_rtt(pool, state, table));
    let mut tpot = None;
    if class.ttft.is_some() {
        if let Some(ttft) = state.stream.ttft() {
            service = ttft;
        }
        tpot = class.tpot.and(state.stream.tpot());
    }
    // The wait of a pool that serves `concurrency` requests at once (M/M/c), by Sakasegawa's
    // approximation: Wq/S ≈ ρ^(√(2(c+1)) − 1) / (c(1 − ρ)), with ρ = in flight / concurrency
    // capped at 0.9 (beyond, the concurrency limit refuses). With c = 1 it is M/M/1's
    // 1/(1 − ρ) (a saturated single server looks 10× slower); with 128 slots a pool at 70 %
    // waits almost nothing, as 128 parallel servers do, where treating it as one server
    // made it look 3× slower and sent traffic elsewhere. An idle pool (most pools in most
    // decisions) has factor 1: no arithmetic.
    let in_flight = match &pool.server_metrics {
        None => state.in_flight(),
        // The servers' own queues (running + waiting: every gateway's requests), where
        // fresh; this instance's in-flight where not, or where it is higher (sent since the
        // last scrape). One pass over the pool's endpoints, only for scraped pools.
        Some(m) => table
            .live
            .endpoints(pool_id)
            .iter()
            .map(|e| e.queue_at(now_ms, Some(m.max_age)))
            .sum(),
    };
    let mut queued = if in_flight == 0 {
        service
    } else {
        let c = f64::from(pool.concurrency);
        let load = f64::from(in_flight);
        let rho = (load / c).min(0.9);
        // A load at or past `c` (a server's own queue, scraped: every gateway's requests)
        // waits at least for the `load − c + 1` ahead of it to clear `c` servers.
        let queue = ((load - c + 1.0) / c).max(0.0);
        let factor = 1.0 + (rho.powf(pool.wait_exponent) / (c * (1.0 - rho))).max(queue);
        // (Integer nanoseconds rather than `mul_f64`, whose checked float conversion is slow.)
        Duration::from_nanos((service.as_nanos() as u64 as f64 * factor) as u64)
    };
    if let Billing::Serverless {
        cold_start,
        idle_timeout,
    } = pool.pricing.billing
    {
        // Scaled to zero after `idle_timeout` without a request: the next one waits for a
        // replica to start.
        let idle = state.idle_ms(now_ms);
        if idle.is_none_or(|ms| u128::from(ms) >= idle_timeout.as_millis()) {
            queued += cold_start;
        }
    }
    // A pool allowed to scale to zero (`capacity.min_replicas: 0`) whose desired replicas
    // went to 0 has no replica, or soon none: the request waits `scale_up_time` for one, so
    // it goes there only if its deadline allows (its arrival then activates the pool).
    let mut activation = Duration::ZERO;
    if let Some(c) = pool.capacity.as_ref().filter(|c| c.min_replicas == 0) {
        if state.demand.desired() == Some(0) {
            activation = c.scale_up_time;
            queued += activation;
        }
    }
    // The network is not queued: only the service time is multiplied.
    let client_rtt = network::client_rtt(class, table);
    let pool_rtt = network::pool_rtt(pool, state, class, table);
    let latency = client_rtt + pool_rtt + queued;
    // Priced as the bill prices it (`cost`): usage at the pool's average tokens per request,
    // the egress of this body and the pool's average answer, the capacity it displaces.
    let cost = cost::marginal(
        pool,
        in_flight,
        service,
        state.tokens.get(),
        state.answer_bytes.get(),
        class,
        table,
    );
    Estimate {
        latency,
        cost_usd: cost.total(),
        client_rtt,
        pool_rtt,
        service: queued,
        cost,
        tpot,
        activation,
    }
}

/// A duration in nanoseconds, as `f64` (no division, unlike `as_secs_f64`).
fn nanos(d: Duration) -> f64 {
    d.as_nanos() as u64 as f64
}

/// How a decision weighs latency against cost: `weight × latency/deadline + (1 − weight) ×
/// cost/max cost`, with the two divisions taken once per decision rather than per pool.
#[derive(Clone, Copy)]
struct Scale {
    weight: f64,
    per_deadline: f64,
    per_max_cost: f64,
}

impl Scale {
    fn new(weight: f64, deadline: Duration, max_cost: f64) -> Scale {
        Scale {
            weight,
            per_deadline: 1.0 / nanos(deadline).max(1.0),
            per_max_cost: if max_cost > 0.0 { 1.0 / max_cost } else { 0.0 },
        }
    }

    fn score(&self, est: &Estimate) -> f64 {
        let lat = nanos(est.latency) * self.per_deadline;
        let cost = est.cost_usd * self.per_max_cost;
        self.weight * lat + (1.0 - self.weight) * cost
    }
}

/// Candidates kept on the stack for a decision's second pass; policies with more pools than
/// this spill the rest into a `Vec`.
const INLINE_CANDIDATES: usize = 24;

/// The candidates that meet the deadline, in pool order. (Slots start empty rather than
/// zeroed: initialising the array whole cost more than the allocation it replaces.)
struct Meeting {
    inline: [Option<(PoolId, Estimate)>; INLINE_CANDIDATES],
    len: usize,
    spill: Vec<(PoolId, Estimate)>,
}

impl Meeting {
    fn new() -> Meeting {
        Meeting {
            inline: [None; INLINE_CANDIDATES],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, c: (PoolId, Estimate)) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = Some(c),
            None => self.spill.push(c),
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &(PoolId, Estimate)> {
        self.inline[..self.len.min(INLINE_CANDIDATES)]
            .iter()
            .flatten()
            .chain(&self.spill)
    }
}

/// Decide where `class` goes.
pub fn decide(class: &Class, table: &Serving, tried: Tried, now_ms: u64) -> Decision {
    let mut decision = decide_once(class, table, tried, now_ms);
    // A pool admitted as a candidate whose last free endpoint slot a concurrent request
    // took between that check and the pick leaves the decision with no endpoint: decide
    // again on the fresh counts, where that pool is at capacity, rather than refuse with
    // "no pool serves" while another pool could (CI saw it on a pool of one endpoint
    // with two slots, shared by six clients).
    for _ in 0..2 {
        if decision.target.is_some()
            || decision.reason != Reason::NoCandidate
            || decision.candidates == 0
        {
            break;
        }
        decision = decide_once(class, table, tried, now_ms);
    }
    decision
}

fn decide_once(class: &Class, table: &Serving, tried: Tried, now_ms: u64) -> Decision {
    let tier = &table.tiers[class.tier as usize];
    let deadline = class.objective();

    // Pass 1: the cost scale among feasible candidates, and the fastest candidate overall.
    let mut candidates = 0u16;
    let mut feasible = 0u16;
    let mut max_cost = 0.0f64;
    let mut fastest: Option<(PoolId, Estimate)> = None;
    let mut cheapest: Option<(PoolId, Estimate)> = None;
    // Pools that could take the request but for being at their concurrency limit.
    let mut cheapest_full: Option<(PoolId, Estimate)> = None;
    // Candidates that meet the deadline, kept for pass 2 so that nothing is estimated twice
    // (on the stack instead of a second round of exclusion checks and estimates).
    let mut meeting = Meeting::new();
    // The cheapest pool at zero replicas that would meet the objective once warm.
    let mut cold: Option<(PoolId, Estimate)> = None;
    for (i, pool) in table.pools.iter().enumerate() {
        let id = i as PoolId;
        match exclusion(id, pool, class, table, tried, now_ms) {
            None => {}
            Some(Exclusion::AtCapacity) => {
                let est = estimate_at(id, pool, class, table, now_ms);
                if cheapest_full.is_none_or(|(_, c)| est.cost_usd < c.cost_usd) {
                    cheapest_full = Some((id, est));
                }
                continue;
            }
            Some(_) => continue,
        }
        candidates += 1;
        let est = estimate_at(id, pool, class, table, now_ms);
        if meets(class, &est) {
            feasible += 1;
            max_cost = max_cost.max(est.cost_usd);
            meeting.push((id, est));
        }
        if fastest.is_none_or(|(_, f)| est.latency < f.latency) {
            fastest = Some((id, est));
        }
        if cheapest.is_none_or(|(_, c)| est.cost_usd < c.cost_usd) {
            cheapest = Some((id, est));
        }
        if !est.activation.is_zero() {
            let warm = est.warm();
            if meets(class, &warm) && cold.is_none_or(|(_, c)| warm.cost_usd < c.cost_usd) {
                cold = Some((id, warm));
            }
        }
    }

    let mut decision = 'decided: {
        let chosen = if feasible > 0 {
            // Pass 2: the best trade-off among those that meet the deadline.
            let scale = Scale::new(tier.weight, deadline, max_cost);
            let mut best: Option<(PoolId, Estimate, f64)> = None;
            for &(id, est) in meeting.iter() {
                let s = scale.score(&est);
                if best.is_none_or(|(_, _, b)| s < b) {
                    best = Some((id, est, s));
                }
            }
            best.map(|(id, est, _)| (id, est, Reason::MeetsDeadline))
        } else {
            match (fastest, tier.on_slo_miss) {
                // Everything that could take it is full: queue it when the tier queues, else
                // refuse now (overflow never waits in a local queue).
                (None, OnSloMiss::Queue) if cheapest_full.is_some() => {
                    break 'decided Decision {
                        target: cheapest_full.map(|(id, _)| (id, 0)),
                        estimate: cheapest_full.map(|(_, e)| e),
                        reason: Reason::Queued,
                        candidates,
                        feasible,
                        wake: None,
                    }
                }
                (None, _) if cheapest_full.is_some() => {
                    break 'decided Decision {
                        target: None,
                        estimate: cheapest_full.map(|(_, e)| e),
                        reason: Reason::Overloaded,
                        candidates,
                        feasible,
                        wake: None,
                    }
                }
                (None, _) => None,
                (Some(_), OnSloMiss::Shed) => {
                    break 'decided Decision {
                        target: None,
                        estimate: fastest.map(|(_, e)| e),
                        reason: Reason::Shed,
                        candidates,
                        feasible,
                        wake: None,
                    }
                }
                (Some((id, est)), OnSloMiss::Fastest) => Some((id, est, Reason::FallbackFastest)),
                // Late anyway: take the cheapest; the queue answers 202 and dispatches later.
                (Some(_), OnSloMiss::Queue) => cheapest.map(|(id, est)| (id, est, Reason::Queued)),
            }
        };

        match chosen {
            Some((pool_id, est, reason)) => {
                let pool = &table.pools[pool_id as usize];
                let shed = sheddable(class, table);
                let key = affinity_key(class, pool);
                match pick_endpoint(&table.live, (pool_id, pool), tried, (now_ms, shed), key) {
                    Some(ep) => Decision {
                        target: Some((pool_id, ep)),
                        estimate: Some(est),
                        reason,
                        candidates,
                        feasible,
                        wake: None,
                    },
                    None => no_candidate(candidates, feasible),
                }
            }
            None => no_candidate(candidates, feasible),
        }
    };
    // A pool at zero that the request would have taken warm is woken by it, though the
    // request goes elsewhere now: else a cold pool that only deadline-bound traffic wants
    // would never be asked for a replica.
    if let Some((id, warm)) = cold {
        let warm_wins = match (decision.target, decision.estimate, decision.reason) {
            // It goes there, and its arrival wakes the pool.
            (Some((p, _)), _, _) if p == id => false,
            (Some(_), Some(est), Reason::MeetsDeadline) => {
                let scale = Scale::new(tier.weight, deadline, max_cost.max(warm.cost_usd));
                scale.score(&warm) < scale.score(&est)
            }
            // Late, queued, shed or refused now, where the warm pool would meet it.
            _ => true,
        };
        if warm_wins {
            decision.wake = Some(id);
        }
    }
    decision
}

/// When [`decide`] sheds: the candidate pool with the lowest estimate among those whose
/// measured estimate has not been refreshed for [`state::PROBE_EVERY_MS`], if its probe
/// slot is free (one request per pool per interval). A shed tier would otherwise never send
/// the pool the request that shows it got faster again; the probe is a real request that
/// the estimate says will be late, which for that client beats a certain 503. Pools still
/// on the policy's baseline (never measured) are not probed: the baseline is the operator's
/// word, not a stale measurement. Claims the slot, so call it only to act on the answer.
pub fn probe_instead_of_shed(class: &Class, table: &Serving, now_ms: u64) -> Option<Decision> {
    let mut best: Option<(PoolId, Estimate)> = None;
    let mut candidates = 0u16;
    for (i, pool) in table.pools.iter().enumerate() {
        let id = i as PoolId;
        if exclusion(id, pool, class, table, &[], now_ms).is_some() {
            continue;
        }
        candidates += 1;
        let state = table.live.pool(id);
        if state.samples() == 0 || state.sample_age_ms(now_ms) < state::PROBE_EVERY_MS {
            continue;
        }
        let est = estimate_at(id, pool, class, table, now_ms);
        if best.is_none_or(|(_, b)| est.latency < b.latency) {
            best = Some((id, est));
        }
    }
    let (id, est) = best?;
    let pool = &table.pools[id as usize];
    if !table.live.pool(id).claim_probe(now_ms) {
        return None;
    }
    let when = (now_ms, sheddable(class, table));
    let ep = pick_endpoint(
        &table.live,
        (id, pool),
        &[],
        when,
        affinity_key(class, pool),
    )?;
    Some(Decision {
        target: Some((id, ep)),
        estimate: Some(est),
        reason: Reason::Probe,
        candidates,
        feasible: 0,
        wake: None,
    })
}

/// Whether `class`'s version of a split model cannot serve it for its health alone: at least
/// one of the version's pools has no endpoint up (ejected after consecutive failures, failing
/// its health checks, or skipped after a refused connect) and every other one is kept from
/// this request by something that says nothing about the version's health (its kind not
/// allowed for the tier, data residency, no gRPC address). A pool that is up but full or
/// whose servers are busy (`AtCapacity`) says the version is loaded, not broken: then this
/// is `false`, as it is when no pool of the version was ever open to the request (a policy
/// matter, not evidence). Called only on the refusal path (`rollout` charges the canary).
pub fn version_unservable(class: &Class, table: &Serving, now_ms: u64) -> bool {
    let Some((split, v)) = class.version else {
        return false;
    };
    let version = &table.splits[split as usize].versions[v as usize];
    let mut down = false;
    for &id in &version.pools {
        let pool = &table.pools[id as usize];
        match exclusion(id, pool, class, table, &[], now_ms) {
            Some(Exclusion::NoEndpointUp) => down = true,
            Some(
                Exclusion::KindNotAllowedForTier
                | Exclusion::Residency
                | Exclusion::NoGrpcEndpoint
                | Exclusion::ModelNotServed
                | Exclusion::NotThisVersion,
            ) => {}
            Some(Exclusion::AtCapacity | Exclusion::AlreadyTried) | None => return false,
        }
    }
    down
}

fn no_candidate(candidates: u16, feasible: u16) -> Decision {
    Decision {
        wake: None,
        target: None,
        estimate: None,
        reason: Reason::NoCandidate,
        candidates,
        feasible,
    }
}

/// The affinity key `class` has on `pool` (0: none, or the pool has no `affinity:`): its
/// session, else its prompt prefix.
pub fn affinity_key(class: &Class, pool: &Pool) -> u64 {
    match &pool.affinity {
        Some(_) if class.affinity.session != 0 => class.affinity.session,
        Some(a) if a.prefix => class.affinity.prefix,
        _ => 0,
    }
}

/// Rendezvous (highest random weight) score of endpoint `ep` for `key`.
fn rendezvous(key: u64, ep: u16) -> u64 {
    // splitmix64's finaliser on the pair: cheap, and well spread for any key.
    let mut z = key ^ (u64::from(ep) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An affinity key's endpoint with bounded load: the available endpoint ranked highest for
/// `key` whose queue stays within `load_factor` × the mean with this request added
/// (consistent hashing with bounded loads, Mirrokni et al., on rendezvous hashing: an
/// endpoint that goes away moves only its own keys). Some endpoint is always within the
/// bound (one at or below the mean), so `None` only without endpoints.
fn pick_by_affinity(
    states: &[Arc<EndpointState>],
    available: &[u16],
    (key, load_factor): (u64, f64),
    (now_ms, max_age): (u64, Option<Duration>),
) -> Option<u16> {
    let total: u64 = available
        .iter()
        .map(|&e| u64::from(states[e as usize].queue_at(now_ms, max_age)))
        .sum();
    let bound = (load_factor * (total + 1) as f64 / available.len() as f64).ceil() as u64;
    available
        .iter()
        .filter(|&&e| u64::from(states[e as usize].queue_at(now_ms, max_age)) < bound)
        .max_by_key(|&&e| rendezvous(key, e))
        .copied()
}

/// Call `f` with the endpoints of `pool` that may take a request now
/// ([`endpoint_available`]), noted on the stack for a pool of up to 32.
fn with_available<R>(
    live: &Live,
    (pool_id, pool): (PoolId, &Pool),
    tried: Tried,
    when: (u64, bool),
    f: impl FnOnce(&[Arc<EndpointState>], &[u16]) -> R,
) -> R {
    let n = pool.endpoints.len() as u16;
    let states = live.endpoints(pool_id);
    let is_available = |&e: &u16| endpoint_available(states, (pool_id, pool), e, tried, when);
    let mut inline = [0u16; 32];
    if usize::from(n) <= inline.len() {
        let mut count = 0;
        for e in (0..n).filter(is_available) {
            inline[count] = e;
            count += 1;
        }
        f(states, &inline[..count])
    } else {
        let spilled: Vec<u16> = (0..n).filter(is_available).collect();
        f(states, &spilled)
    }
}

/// Power of two choices among the available endpoints, on latency × (in-flight + 1) (the
/// server's own queue instead of in-flight where it is scraped). `sheddable`: see
/// [`endpoint_available`]. `affinity`: the request's key on this pool ([`affinity_key`]),
/// which picks by [`pick_by_affinity`] instead.
pub fn pick_endpoint(
    live: &Live,
    (pool_id, pool): (PoolId, &Pool),
    tried: Tried,
    (now_ms, sheddable): (u64, bool),
    affinity: u64,
) -> Option<u16> {
    let max_age = pool.server_metrics.as_ref().map(|m| m.max_age);
    let when = (now_ms, sheddable);
    with_available(live, (pool_id, pool), tried, when, |states, available| {
        if let (Some(a), true, false) = (&pool.affinity, affinity != 0, available.is_empty()) {
            let key = (affinity, a.load_factor);
            return pick_by_affinity(states, available, key, (now_ms, max_age));
        }
        match available.len() {
            0 => None,
            1 => Some(available[0]),
            count => {
                let a = fastrand::usize(0..count);
                let mut b = fastrand::usize(0..count - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (available[a], available[b]);
                let sa = states[a as usize].load_score_at(now_ms, max_age);
                let sb = states[b as usize].load_score_at(now_ms, max_age);
                Some(if sb < sa { b } else { a })
            }
        }
    })
}

/// Whether `target`, picked by affinity and its slot now taken, is still within the bounded
/// load on the fresh counts: [`pick_by_affinity`] reads the queues before the slot is taken,
/// so two requests picking at once could both pass its check. Checked after the take (which
/// counts every earlier take), at most the bound pass. Always true for a request without an
/// affinity key on the pool.
pub fn affinity_holds(
    class: &Class,
    table: &Serving,
    target: (PoolId, u16),
    tried: Tried,
    now_ms: u64,
) -> bool {
    let (pool_id, ep) = target;
    let pool = &table.pools[pool_id as usize];
    let (Some(a), true) = (&pool.affinity, affinity_key(class, pool) != 0) else {
        return true;
    };
    let max_age = pool.server_metrics.as_ref().map(|m| m.max_age);
    let when = (now_ms, sheddable(class, table));
    with_available(
        &table.live,
        (pool_id, pool),
        tried,
        when,
        |states, available| {
            let queue = |e: u16| u64::from(states[e as usize].queue_at(now_ms, max_age));
            // The target may have just filled its endpoint limit: counted whether or not it is
            // still "available".
            let others = available.iter().filter(|&&e| e != ep);
            let (total, n) = others.fold((queue(ep), 1u64), |(t, n), &e| (t + queue(e), n + 1));
            let bound = (a.load_factor * total as f64 / n as f64).ceil() as u64;
            queue(ep) <= bound
        },
    )
}

/// The decision plus a report on every pool: what the admin API's explain returns.
pub fn explain(class: &Class, table: &Serving, now_ms: u64) -> (Decision, Vec<CandidateReport>) {
    let decision = decide(class, table, &[], now_ms);
    let tier = &table.tiers[class.tier as usize];
    let max_cost = table
        .pools
        .iter()
        .enumerate()
        .filter(|(i, p)| exclusion(*i as PoolId, p, class, table, &[], now_ms).is_none())
        .map(|(i, p)| estimate(i as PoolId, p, class, table))
        .filter(|e| meets(class, e))
        .map(|e| e.cost_usd)
        .fold(0.0, f64::max);
    let scale = Scale::new(tier.weight, class.objective(), max_cost);
    let objective = match class.ttft {
        Some(ttft) => format!("{} ms time-to-first-token objective", ttft.as_millis()),
        None => format!("{} ms deadline", class.deadline.as_millis()),
    };
    let chosen_pool = decision.target.map(|(p, _)| p);
    let reports = table
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let id = i as PoolId;
            let base = CandidateReport {
                pool: pool.name.clone(),
                kind: pool.kind.as_str(),
                region: table.regions[pool.region as usize].clone(),
                excluded: None,
                estimate: None,
                meets_deadline: false,
                score: None,
                chosen: chosen_pool == Some(id),
                why: String::new(),
            };
            if let Some(ex) = exclusion(id, pool, class, table, &[], now_ms) {
                return CandidateReport {
                    excluded: Some(ex),
                    why: match ex {
                        Exclusion::ModelNotServed => format!("does not serve `{}`", class.model),
                        Exclusion::NotThisVersion => format!(
                            "does not serve version `{}` of `{}`",
                            class
                                .version
                                .map(|(s, v)| table.splits[s as usize].versions[v as usize].name.as_str())
                                .unwrap_or("-"),
                            class.model
                        ),
                        Exclusion::KindNotAllowedForTier => {
                            format!("{} pools are not allowed for tier `{}`", pool.kind.as_str(), tier.name)
                        }
                        Exclusion::Residency => format!(
                            "clients in `{}` may only be served from [{}]",
                            table.regions[class.region as usize],
                            table
                                .residency(class.region)
                                .unwrap_or(&[])
                                .iter()
                                .map(|r| table.regions[*r as usize].as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Exclusion::NoEndpointUp => "no endpoint is up".into(),
                        Exclusion::AlreadyTried => "already tried".into(),
                        Exclusion::NoGrpcEndpoint => "has no gRPC endpoint".into(),
                        Exclusion::AtCapacity => format!(
                            "at its concurrency limit ({} in flight of {})",
                            table.live.pool(id).in_flight(),
                            pool.concurrency
                        ),
                    },
                    ..base
                };
            }
            let est = estimate(id, pool, class, table);
            let meets = meets(class, &est);
            let score = meets.then(|| scale.score(&est));
            let why = match (base.chosen, meets, decision.reason) {
                (true, _, Reason::MeetsDeadline) => format!(
                    "best latency/cost trade-off (weight {}) among {} pools meeting the {objective}",
                    tier.weight,
                    decision.feasible,
                ),
                (true, _, _) => "fastest candidate; nothing meets the deadline".into(),
                (false, true, _) => "meets the deadline but scores worse".into(),
                (false, false, _) if est.latency <= class.objective() => format!(
                    "measured {:.1} ms per output token exceeds the {} ms objective",
                    est.tpot.unwrap_or_default().as_secs_f64() * 1e3,
                    class.tpot.unwrap_or_default().as_millis()
                ),
                (false, false, _) => format!(
                    "estimated {:.1} ms exceeds the {objective}",
                    est.latency.as_secs_f64() * 1e3,
                ),
            };
            CandidateReport {
                estimate: Some(est),
                meets_deadline: meets,
                score,
                why,
                ..base
            }
        })
        .collect();
    (decision, reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Class, TierSource};
    use crate::policy::compile::{compile_str, CompileContext, RoutingTable};
    use crate::serving::state::{Fleet, MIN_SAMPLES};
    use std::path::Path;

    const POLICY: &str = r#"
regions:
  default: us
  map: [{ name: eu, continents: [EU] }, { name: us, continents: [NA] }]
rtt_ms: { eu: { eu: 5, us: 90 }, us: { us: 5 } }
tiers:
  tight: { deadline: 50ms, weight: 0.5, pools: [edge, gpu], on_slo_miss: shed }
  loose: { deadline: 2s, weight: 0.0, pools: [edge, gpu] }
  fast: { deadline: 10ms, weight: 1.0, pools: [edge, gpu], on_slo_miss: fastest }
pools:
  - { name: near, kind: edge, region: eu, endpoints: [127.0.0.1:1, 127.0.0.1:2], models: [m], concurrency: 8, service_time: 10ms, price: { per_request: 0.001 } }
  - { name: far, kind: gpu, region: us, endpoints: [127.0.0.1:3], models: ["*"], concurrency: 8, service_time: 10ms, price: { per_request: 0.0001 } }
routes:
  - { name: r, match: /x, protocol: openai, tier: loose }
"#;

    fn setup() -> (Serving, Fleet) {
        serving(POLICY)
    }

    /// `text` compiled and attached to a fresh fleet's live state.
    fn serving(text: &str) -> (Serving, Fleet) {
        let fleet = Fleet::default();
        let table = compile_str(
            text,
            &CompileContext {
                file: Path::new("t.yaml"),
                gateway_region: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (Serving::load(table, &fleet).expect("resources"), fleet)
    }

    fn class(table: &RoutingTable, tier: &str, model: &str) -> Class {
        let tier = table.tier_by_name(tier).unwrap();
        let mut c = Class::what_if(table, 0, table.region_by_name("eu").unwrap(), tier, model);
        c.tier_source = TierSource::Route;
        c
    }

    #[test]
    fn deadline_and_cost_trade_off() {
        let (table, _f) = setup();
        let near = |d: &Decision| d.target.map(|(p, _)| table.pools[p as usize].name.as_str());
        let d = decide(&class(&table, "tight", "m"), &table, &[], 0);
        assert_eq!(near(&d), Some("near"));
        assert_eq!((d.candidates, d.feasible), (2, 1));
        let d = decide(&class(&table, "loose", "m"), &table, &[], 0);
        assert_eq!(near(&d), Some("far"), "cheapest that meets the deadline");
        let d = decide(&class(&table, "loose", "other"), &table, &[], 0);
        assert_eq!(near(&d), Some("far"), "only far serves it");
        let d = decide(&class(&table, "tight", "other"), &table, &[], 0);
        assert_eq!(d.reason, Reason::Shed);
        let d = decide(&class(&table, "fast", "m"), &table, &[], 0);
        assert_eq!(
            (near(&d), d.reason),
            (Some("near"), Reason::FallbackFastest)
        );
    }

    #[test]
    fn a_servers_own_queue_is_its_load_and_a_busy_one_is_avoided_by_sheddable_tiers() {
        let text = POLICY.replace(
            "price: { per_request: 0.001 } }",
            "price: { per_request: 0.001 }, server_metrics: { max_waiting: 2, max_age: 1s } }",
        );
        let (table, _f) = serving(&text);
        let fast = class(&table, "fast", "m");
        let idle = estimate_at(0, &table.pools[0], &fast, &table, 0).latency;
        // Both servers report 5 waiting and 3 running: 16 for a pool of concurrency 8,
        // which this instance (nothing in flight) would not know by itself.
        let busy = crate::serving::state::LoadSample {
            waiting: 5,
            running: 3,
            kv_cache: 0.5,
        };
        for ep in 0..2 {
            table.live.endpoint(0, ep).server.set(busy, 0, 0);
        }
        let loaded = estimate_at(0, &table.pools[0], &fast, &table, 0).latency;
        // 16 on 8 servers: the request waits for the 9 ahead of it to clear 8 servers, 1.125
        // service times (10 ms each), after the 5 ms round trip: 5 + 10 × 2.125.
        let want = Duration::from_micros(26_250);
        assert!(
            loaded.abs_diff(want) < Duration::from_micros(300),
            "{loaded:?} vs {idle:?}"
        );
        // Over `max_waiting`: a tier that sheds goes without it (far is too far: shed), one
        // that takes the fastest still uses it.
        let tight = class(&table, "tight", "m");
        let d = decide(&tight, &table, &[], 0);
        assert_eq!(d.reason, Reason::Shed, "{d:?}");
        assert_eq!(
            explain(&tight, &table, 0).1[0].excluded,
            Some(Exclusion::AtCapacity)
        );
        assert_eq!(explain(&fast, &table, 0).1[0].excluded, None);
        // Stale metrics (older than `max_age`): in-flight counting again.
        let later = estimate_at(0, &table.pools[0], &fast, &table, 2000).latency;
        assert!(later < loaded, "{later:?}");
        let d = decide(&class(&table, "tight", "m"), &table, &[], 2000);
        assert_eq!(d.target.map(|(p, _)| p), Some(0), "{d:?}");
    }

    #[test]
    fn retries_avoid_tried_and_down_endpoints() {
        let (table, _f) = setup();
        let c = class(&table, "tight", "m");
        let d = decide(&c, &table, &[(0, 0)], 0);
        assert_eq!(d.target, Some((0, 1)));
        let d = decide(&c, &table, &[(0, 0), (0, 1)], 0);
        assert_eq!(d.reason, Reason::Shed, "far is too far for 50 ms");
        table
            .live
            .endpoint(0, 0)
            .mark_down(0, Duration::from_secs(60));
        table
            .live
            .endpoint(0, 1)
            .mark_down(0, Duration::from_secs(60));
        let d = decide(&class(&table, "loose", "m"), &table, &[], 1);
        assert_eq!(d.target, Some((1, 0)));
        let (_, reports) = explain(&c, &table, 1);
        assert_eq!(reports[0].excluded, Some(Exclusion::NoEndpointUp));
    }

    #[test]
    fn every_endpoint_of_a_large_pool_can_be_picked_and_tried_ones_never_are() {
        // More endpoints than `pick_endpoint` notes on the stack.
        let endpoints: Vec<String> = (1..=40).map(|p| format!("127.0.0.1:{p}")).collect();
        let text = POLICY.replace(
            "endpoints: [127.0.0.1:3]",
            &format!("endpoints: [{}]", endpoints.join(", ")),
        );
        assert_ne!(text, POLICY);
        let (table, _f) = serving(&text);
        let pool = &table.pools[1];
        // 35 left to choose from: more than the 32 noted on the stack.
        let tried: Vec<(PoolId, u16)> = (0..5).map(|e| (1, e)).collect();
        let mut picked = [false; 40];
        for _ in 0..4000 {
            let ep = pick_endpoint(&table.live, (1, pool), &tried, (0, false), 0).unwrap();
            assert!(ep >= 5, "endpoint {ep} was tried already");
            picked[ep as usize] = true;
        }
        assert!(picked[5..].iter().all(|p| *p), "{picked:?}");
    }

    const COSTED: &str = r#"
regions:
  default: us
  map: [{ name: eu, continents: [EU] }, { name: us, continents: [NA] }]
rtt_ms: { eu: { eu: 5, us: 20 }, us: { us: 5 } }
tiers:
  cheap: { deadline: 2s, weight: 0.0, pools: [edge, gpu] }
  quick: { deadline: 60ms, weight: 0.0, pools: [edge, gpu], on_slo_miss: fastest }
pools:
  - { name: paid, kind: gpu, region: eu, endpoints: [127.0.0.1:1], models: [m], concurrency: 10, service_time: 10ms, price: { per_replica_hour: 36, safe_utilisation: 0.5 } }
  - { name: api, kind: edge, region: eu, endpoints: [127.0.0.1:2], models: [m], concurrency: 100, service_time: 10ms, price: { per_request: 0.000001 } }
  - { name: wake, kind: edge, region: eu, endpoints: [127.0.0.1:3], models: [w], concurrency: 100, service_time: 10ms, price: { per_request: 0.0000001, cold_start: 100ms, idle_timeout: 60s } }
  - { name: warm, kind: edge, region: eu, endpoints: [127.0.0.1:4], models: [w], concurrency: 100, service_time: 10ms, price: { per_request: 0.00001 } }
routes:
  - { name: r, match: /x, protocol: openai, tier: cheap }
"#;

    #[test]
    fn paid_for_capacity_fills_first_then_spills_by_price() {
        let (table, _f) = serving(COSTED);
        let c = class(&table, "cheap", "m");
        let pool = |d: &Decision| d.target.map(|(p, _)| table.pools[p as usize].name.clone());
        let paid = table.live.pool(0);
        // Up to half of its 10 slots (with this request), an idle replica serves it for
        // nothing more than what is already paid: cheaper than $0.000001 per request.
        for _ in 0..4 {
            let d = decide(&c, &table, &[], 0);
            assert_eq!(pool(&d).as_deref(), Some("paid"));
            let est = d.estimate.unwrap();
            assert_eq!((est.cost.capacity_usd, est.cost.usage_usd), (0.0, 0.0));
            paid.acquire();
        }
        // Past 50 %, it displaces a rising share of a slot-time ($1e-5 for 10 ms at
        // saturation): from 60 % that is dearer than the API's price, so the request spills.
        paid.acquire();
        let d = decide(&c, &table, &[], 0);
        assert_eq!(pool(&d).as_deref(), Some("api"), "{d:?}");
        let (_, reports) = explain(&c, &table, 0);
        let displaced = reports[0].estimate.unwrap().cost.capacity_usd;
        assert!((displaced - 2e-6).abs() < 1e-12, "{displaced}");
        for _ in 0..5 {
            paid.release();
        }
        assert_eq!(pool(&decide(&c, &table, &[], 0)).as_deref(), Some("paid"));
    }

    #[test]
    fn a_serverless_pool_that_scaled_to_zero_is_estimated_with_its_cold_start() {
        let (table, _f) = serving(COSTED);
        let c = class(&table, "quick", "w");
        let pool = |d: &Decision| d.target.map(|(p, _)| table.pools[p as usize].name.clone());
        // Never used: scaled to zero, 100 ms to wake, beyond the 60 ms deadline.
        let d = decide(&c, &table, &[], 1_000);
        assert_eq!(pool(&d).as_deref(), Some("warm"));
        let (_, reports) = explain(&c, &table, 1_000);
        assert!(reports[2].estimate.unwrap().latency >= Duration::from_millis(100));
        // A request started on it a second ago: warm, and the cheapest that meets it.
        table.live.pool(2).track_start(1_000);
        let d = decide(&c, &table, &[], 2_000);
        assert_eq!(pool(&d).as_deref(), Some("wake"));
        // Idle for its 60 s timeout: cold again.
        let d = decide(&c, &table, &[], 61_000);
        assert_eq!(pool(&d).as_deref(), Some("warm"));
        // A tier with time to wait for it takes the cheap pool cold.
        let d = decide(&class(&table, "cheap", "w"), &table, &[], 200_000);
        assert_eq!(pool(&d).as_deref(), Some("wake"));
    }

    #[test]
    fn a_provisioned_pool_at_zero_replicas_is_estimated_with_its_scale_up_time() {
        let (table, _f) = serving(&COSTED.replace(
            "price: { per_replica_hour: 36, safe_utilisation: 0.5 } }",
            "price: { per_replica_hour: 36, safe_utilisation: 0.5 }, capacity: { min_replicas: 0, scale_up_time: 30s } }",
        ));
        let c = class(&table, "cheap", "m");
        let pool = |d: &Decision| d.target.map(|(p, _)| table.pools[p as usize].name.clone());
        assert_eq!(pool(&decide(&c, &table, &[], 0)).as_deref(), Some("paid"));
        // The capacity meter asked for no replica: 30 s to get one is past the 2 s deadline.
        table.live.pool(0).demand.publish(0, 0.0, 0.0);
        let d = decide(&c, &table, &[], 0);
        assert_eq!(pool(&d).as_deref(), Some("api"));
        // Warm, it would have taken the request: the request wakes it on its way elsewhere.
        assert_eq!(d.wake, Some(0), "{d:?}");
        let est = d.estimate.unwrap();
        assert_eq!(est.activation, Duration::ZERO, "api has no activation wait");
        // Not woken by a request it does not serve.
        let other = class(&table, "cheap", "w");
        assert_eq!(decide(&other, &table, &[], 0).wake, None);
        // Activated (a request arrived for it): no longer estimated cold.
        assert!(table.live.pool(0).demand.arrive());
        assert_eq!(pool(&decide(&c, &table, &[], 0)).as_deref(), Some("paid"));
    }

    fn regional(gateway_region: &str) -> (Serving, Fleet) {
        serving(&POLICY.replace(
            "tiers:",
            &format!("gateway_region: {gateway_region}\ntiers:"),
        ))
    }

    #[test]
    fn a_regional_instance_counts_each_network_term_once() {
        let (table, _f) = regional("us");
        let c = class(&table, "loose", "m"); // a client in eu
        let far = estimate(1, &table.pools[1], &c, &table); // us pool, 10 ms service
        let ms = Duration::from_millis;
        assert_eq!(
            (far.client_rtt, far.pool_rtt, far.service),
            (ms(90), ms(5), ms(10))
        );
        assert_eq!(far.latency, ms(105));
        // An upstream time of 97 ms from that pool is 92 ms of service, not 97 on top of
        // the 5 ms round trip.
        for _ in 0..MIN_SAMPLES {
            network::observe_upstream(&table, (1, 0), ms(97), true);
        }
        assert_eq!(estimate(1, &table.pools[1], &c, &table).latency, ms(187));
        // A measured round trip replaces the prior.
        table.live.pool(1).observe_rtt(ms(40));
        assert_eq!(estimate(1, &table.pools[1], &c, &table).pool_rtt, ms(40));
        // The same client and pool from an instance in eu: the client is near, the pool far.
        let (eu, _f) = regional("eu");
        let near_client = estimate(1, &eu.pools[1], &class(&eu, "loose", "m"), &eu);
        assert_eq!(
            (near_client.client_rtt, near_client.pool_rtt),
            (ms(5), ms(90))
        );
        // An unknown region is a compile error, not a silent default.
        let err = compile_str(
            POLICY,
            &CompileContext {
                file: Path::new("t.yaml"),
                gateway_region: Some("mars".into()),
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("unknown region `mars`"), "{err}");
    }

    #[test]
    fn a_shedding_tier_probes_a_stale_pool_once_per_interval() {
        let (table, _f) = regional("eu");
        let c = class(&table, "tight", "other"); // only `far` serves it: 5 + 90 + 10 > 50 ms
        assert_eq!(decide(&c, &table, &[], 0).reason, Reason::Shed);
        // Never measured: the baseline is the operator's word, no probe.
        assert_eq!(probe_instead_of_shed(&c, &table, 10_000), None);
        table.live.pool(1).observe(Duration::from_millis(10));
        let now = state::now_ms() + 2 * state::PROBE_EVERY_MS;
        let probe = probe_instead_of_shed(&c, &table, now);
        assert_eq!(
            probe.map(|d| (d.target, d.reason)),
            Some((Some((1, 0)), Reason::Probe))
        );
        assert_eq!(Reason::Probe.as_str(), "slo-miss-probe");
        assert_eq!(
            probe_instead_of_shed(&c, &table, now + 10),
            None,
            "one per interval"
        );
        assert!(probe_instead_of_shed(&c, &table, now + state::PROBE_EVERY_MS).is_some());
    }

    #[test]
    fn load_raises_the_latency_estimate_as_a_multi_server_queue_waits() {
        let (table, _f) = setup();
        let c = class(&table, "loose", "m");
        // `near`: 8 requests at once, 10 ms each.
        let wait = |n: u32| {
            let pool = table.live.pool(0);
            while pool.in_flight() < n {
                pool.acquire();
            }
            let idle = Duration::from_millis(10);
            estimate(0, &table.pools[0], &c, &table)
                .service
                .as_secs_f64()
                / idle.as_secs_f64()
                - 1.0
        };
        // Erlang C for 8 servers: the mean wait over the service time is 0.178 at 6 in
        // flight and 0.635 at 7; Sakasegawa's approximation is within 11 %.
        let (six, seven) = (wait(6), wait(7));
        assert!((six - 0.178).abs() < 0.178 * 0.11, "{six}");
        assert!((seven - 0.635).abs() < 0.635 * 0.11, "{seven}");
        assert!(seven > six);
    }

    #[test]
    fn a_full_pool_is_not_a_candidate_and_all_full_is_overloaded() {
        let (table, _f) = setup();
        let c = class(&table, "tight", "m");
        // `near` has concurrency 8 over two endpoints: 4 each.
        assert_eq!(table.pools[0].endpoint_limit(), 4);
        for _ in 0..4 {
            assert!(table.live.endpoint(0, 0).try_acquire(4));
        }
        assert!(!table.live.endpoint(0, 0).try_acquire(4));
        let d = decide(&c, &table, &[], 0);
        assert_eq!(
            d.target,
            Some((0, 1)),
            "the endpoint at its limit is skipped"
        );
        for _ in 0..4 {
            assert!(table.live.endpoint(0, 1).try_acquire(4));
        }
        let d = decide(&class(&table, "loose", "m"), &table, &[], 0);
        assert_eq!(
            d.target.map(|t| t.0),
            Some(1),
            "overflow goes to the next pool"
        );
        let d = decide(&c, &table, &[], 0);
        assert_eq!(
            d.reason,
            Reason::Shed,
            "far is too far, near is full: the tier sheds"
        );
        for _ in 0..8 {
            assert!(table.live.endpoint(1, 0).try_acquire(8));
        }
        let d = decide(&class(&table, "loose", "m"), &table, &[], 0);
        assert_eq!(d.reason, Reason::Overloaded, "everything is full");
        let (_, reports) = explain(&c, &table, 0);
        assert_eq!(reports[0].excluded, Some(Exclusion::AtCapacity));
    }

    /// A version is unservable for its health only when its pools that the request may use
    /// are all down: not when one is merely full, nor when the tier keeps it from every one.
    #[test]
    fn a_version_is_unservable_only_when_its_usable_pools_are_down() {
        let text = POLICY.replace(
            "  fast:",
            "  edge_only: { deadline: 2s, weight: 0.0, pools: [edge] }\n  fast:",
        ) + "models:\n  s:\n    versions:\n      \
             - { name: v1, weight: 50, pools: [far] }\n      \
             - { name: v2, weight: 50, pools: [near, far] }\n";
        let (table, _f) = serving(&text);
        let on = |tier: &str, v: u16| {
            let mut c = class(&table, tier, "s");
            c.version = Some((0, v));
            c
        };
        assert!(!version_unservable(&on("loose", 1), &table, 1));
        // `near` at capacity (both endpoints full), `far` allowed and up: servable; for the
        // edge-only tier `near` is the only pool it may use, and full is not broken.
        for ep in 0..2 {
            for _ in 0..4 {
                assert!(table.live.endpoint(0, ep).try_acquire(4));
            }
        }
        assert!(!version_unservable(&on("edge_only", 1), &table, 1));
        for ep in 0..2 {
            for _ in 0..4 {
                table.live.endpoint(0, ep).release();
            }
        }
        // `near` down: the edge-only tier's only pool is down (`far` is a gpu pool, which
        // says nothing about the version); the loose tier still has `far`.
        for ep in 0..2 {
            table
                .live
                .endpoint(0, ep)
                .mark_down(0, Duration::from_secs(60));
        }
        assert!(version_unservable(&on("edge_only", 1), &table, 1));
        assert!(!version_unservable(&on("loose", 1), &table, 1));
        // v1 lives on `far` alone, which the edge-only tier may never use: a policy matter.
        assert!(!version_unservable(&on("edge_only", 0), &table, 1));
        table
            .live
            .endpoint(1, 0)
            .mark_down(0, Duration::from_secs(60));
        assert!(version_unservable(&on("loose", 1), &table, 1));
        assert!(version_unservable(&on("loose", 0), &table, 1));
        // Back after the back-off: servable again.
        assert!(!version_unservable(&on("loose", 1), &table, 120_000));
        // Not a split model's request: never.
        assert!(!version_unservable(&class(&table, "loose", "m"), &table, 1));
    }

    /// Bounded load holds when two requests pick the same endpoint at once: the pick reads
    /// the queues before the slot is taken, so the check after the take is what keeps the
    /// second one off an endpoint already over the bound.
    #[test]
    fn affinity_bound_is_checked_after_the_slot_is_taken() {
        let text = POLICY.replace(
            "  - { name: far,",
            "  - { name: chat, kind: gpu, region: eu, endpoints: [127.0.0.1:4, 127.0.0.1:5, 127.0.0.1:6, 127.0.0.1:7], models: [llm], concurrency: 64, service_time: 10ms, price: { per_request: 0.00001 }, affinity: { prefix: true, load_factor: 1.25 } }\n  - { name: far,",
        );
        let (table, _f) = serving(&text);
        let mut c = class(&table, "loose", "llm");
        c.affinity.prefix = 42;
        let d = decide(&c, &table, &[], 0);
        let (pool, ep) = d.target.expect("a target");
        assert_eq!(table.pools[pool as usize].name, "chat");
        // Another request with the same prefix picked the same endpoint and took its slot
        // first; then this one takes its own.
        table.live.endpoint(pool, ep as usize).acquire();
        assert!(
            affinity_holds(&c, &table, (pool, ep), &[], 0),
            "1 of 1 in flight"
        );
        table.live.endpoint(pool, ep as usize).acquire();
        assert!(
            !affinity_holds(&c, &table, (pool, ep), &[], 0),
            "2 in flight on one endpoint of 4, none elsewhere: over 1.25 x the mean"
        );
        // Without an affinity key the bound does not apply.
        c.affinity.prefix = 0;
        assert!(affinity_holds(&c, &table, (pool, ep), &[], 0));
    }
}
