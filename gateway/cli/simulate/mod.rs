//! `switchyard simulate`: what a policy would do under load, on a virtual clock, before it
//! serves.
//!
//! A discrete-event simulation that runs the gateway's own decision code: the policy is
//! compiled by `policy::compile`, each request is a [`Class`] as `classify` would produce it,
//! and every attempt goes through `route::decide` and the live state of `serving::state` (peak
//! EWMA, overdue attempts, in-flight limits taken with `try_acquire`, outlier ejection with
//! its back-off and half-open probe, the retry budget), all driven by simulated time instead
//! of the process clock. The fleet is a model ([`FleetModel`]): every endpoint is a
//! multi-server FIFO queue whose service times are the pool's base plus a uniform jitter,
//! made slower or refusing connections by a timeline of [`Fault`]s. Each request draws one
//! service quantile that every system shares (common random numbers), so the systems differ
//! only by where they send it.
//!
//! Beside each policy it runs the baselines of the live scenario (client-side round-robin
//! over every pool that serves the model, and always-GPU) and two exact offline bounds
//! (`simulate/optimum.rs`): `optimum`, the cheapest assignment of the same requests that
//! meets the most deadlines within the first policy's restrictions (tier pool kinds,
//! residency) and the fleet's capacity, solved as a linear programme per 1 s slot, and
//! `relaxed`, the same with any pool that serves the model. Every system's distance to each
//! is reported per phase.
//!
//! Every system is billed by `route::cost` — the live gateway's cost function — on the
//! fleet policy's compiled prices ([`Bill`]): per phase, every provisioned pool's capacity
//! over the phase (replicas × price per replica-hour, busy or idle, the same for every
//! system), plus each answered request's usage (per request, its tokens at the per-1k
//! prices, the GPU-hours of its actual service time) and the egress of its bytes between
//! its client's region and the pool's. Tokens and bytes are the workload's per request
//! (per model for the scenario and scripted workloads, a decision log's own for a trace).
//!
//! Every attempt follows the live gateway's rules, called from `switchyard_gateway::upstream::rules`
//! with the virtual clock: the slot rule (`take_slot`: compare-and-swap, decide again on a
//! lost race), the refusal when no slot is left (`no_slot`), a refused connect ejecting at
//! once and retrying within `retry_allowed` (attempts, deadline, retry budget), and on a
//! hedging tier the timer (`hedge_delay`) and the second attempt's target (`hedge_target`)
//! for every attempt, the first answer to arrive winning and the loser cut short as live
//! (out of its endpoint's queue, or its server freed; see `simulate/race.rs`), billed the
//! hedge's estimated cost. Requests the policy queues (a batch pool, `on_slo_miss: queue`)
//! are accepted at once and sent later by a simulated dispatcher on the live one's rules
//! (`queue::dispatcher::room`; see `simulate/queue.rs`). The route's cache keeps fresh
//! answers within its TTL and `cache.max_bytes` (entries weighed as the store weighs them),
//! and identical misses in flight wait for the first one's answer, as `cache::coalesce`
//! makes them (see `simulate/cache.rs`).
//!
//! Where the simulation differs from the live gateway (the one list; the README repeats it):
//! - **Network**: the simulated gateway sits with its clients: an answer's time is the
//!   server's plus the client region's round trip from the policy's matrix, and the
//!   estimates learn service time only (live: measured client and pool round trips, and
//!   the service time is the upstream time less the endpoint's round trip). Egress is
//!   billed from the client's region (live: from the gateway's, `gateway_region`).
//! - **Bill**: tokens and answer bytes are the workload's, not an answer's `usage` (the
//!   pools' token and answer-size averages learn them as live); a hedge's loser is billed
//!   its estimate's usage and egress (live too), not its actual service.
//! - **Hedging on cached routes**: not simulated (live, a hedged answer is captured like any
//!   other); a tier's hedging applies to its uncached routes only.
//! - **Failures**: endpoints refuse connections or get slower; there are no timeouts, no
//!   5xx answers and no stale pooled connections, so no retry of those (the dispatcher
//!   retries refused connections only); a refused connect costs 100 µs.
//! - **Not modelled**: active health checks, TLS, job callbacks, the gateway's own CPU time,
//!   moka's admission policy (evictions go oldest first), a coalesced waiter's own time
//!   bound, and the retry budget's per-second trickle (it refills on the process clock; the
//!   per-request deposits are simulated exactly).
//!
//! The arrivals are streamed and latencies go into fixed-size log histograms (1% buckets),
//! so memory does not grow with the number of requests.
//!
//! `simulate --capacity` (`capacity.rs`) is another simulation on the same workloads: one
//! provisioned pool whose replicas change over time, sized four ways.

mod cache;
pub mod capacity;
pub mod fleet_faults;
pub mod optimum;
mod queue;
mod race;
pub mod rollout;
pub mod trace;
pub mod tune;
pub mod workload;

use crate::scenario::{SystemReport, TierReport};
pub use queue::JobReport;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_gateway::classify::Class;
use switchyard_gateway::policy::compile::{self, CompileContext, PoolId, RegionId};
use switchyard_gateway::route::{self, cost, Reason};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;
use switchyard_gateway::upstream::rules;

/// Cached answers a simulated policy keeps at most (expired ones are dropped first).
const CACHE_ENTRIES: usize = 1 << 20;
/// The body of an answer the simulated cache stores (a typical chat completion); its weight
/// against `cache.max_bytes` is the store's own rule for such an entry.
const ANSWER_BYTES: usize = 2048;
/// The exact bound within the first policy's restrictions (see `optimum.rs`).
pub const OPTIMUM: &str = "optimum";
/// The exact bound with any pool serving the model.
pub const RELAXED: &str = "relaxed";
/// A refused connection costs this much before the next attempt (loopback-like).
const CONNECT_REFUSED_US: u64 = 100;
/// The path the workload's requests are sent to (the route is matched on it).
const PATH: &str = "/v1/chat/completions";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown scenario `{0}` (known: fleet-faults)")]
    UnknownScenario(String),
    #[error("{0}")]
    Policy(#[from] switchyard_gateway::policy::PolicyErrors),
    #[error("{0}")]
    Workload(String),
    #[error("policy `{policy}` does not fit the simulated fleet: {problem}")]
    Mismatch { policy: String, problem: String },
}

/// One pool of the simulated fleet.
#[derive(Debug, Clone)]
pub struct PoolModel {
    /// Matched by name with the policy's pools.
    pub name: String,
    /// Index into [`FleetModel::regions`].
    pub region: usize,
    pub endpoints: usize,
    /// Requests one endpoint serves at once; more wait in its FIFO queue.
    pub servers_per_endpoint: u32,
    /// Service time: `base + quantile × jitter` (uniform).
    pub base: Duration,
    pub jitter: Duration,
    /// The pool in [`FleetModel::bill`] whose compiled `price:` this pool is billed by.
    pub bill: PoolId,
    /// Per model of the workload ([`Workload::models`]), whether the pool serves it.
    pub serves: Vec<bool>,
    /// A GPU pool (the always-GPU baseline's).
    pub gpu: bool,
    /// Observed service times in µs, sorted (from a trace): when present, a request's
    /// quantile picks one of them instead of `base + quantile × jitter`.
    pub empirical: Option<Arc<Vec<u64>>>,
}

/// The fleet as it really is (the policy only has estimates of it).
#[derive(Debug, Clone)]
pub struct FleetModel {
    pub regions: Vec<String>,
    /// True round-trip times between regions, ms (`rtt_ms[client][pool]`).
    pub rtt_ms: Vec<Vec<f64>>,
    pub pools: Vec<PoolModel>,
    /// What the fleet bills: its policy compiled (every pool's `Pricing` and replicas, the
    /// `egress_usd_per_gb` matrix), read only through `route::cost`.
    pub bill: Bill,
}

/// The fleet's compiled policy as its bill, and its regions in the policy's numbering.
#[derive(Clone)]
pub struct Bill {
    pub table: Arc<Serving>,
    /// Per region of [`FleetModel::regions`], the policy's `RegionId`.
    pub regions: Vec<RegionId>,
}

impl std::fmt::Debug for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bill")
            .field("pools", &self.table.pools.len())
            .field("regions", &self.regions)
            .finish()
    }
}

impl Bill {
    /// `table` as the bill of a fleet with these `regions` (each must be the policy's).
    pub fn new(table: Arc<Serving>, regions: &[String]) -> Result<Bill, SimError> {
        let regions = regions
            .iter()
            .map(|r| {
                table.region_by_name(r).ok_or_else(|| {
                    SimError::Workload(format!("the fleet's policy has no region `{r}`"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Bill { table, regions })
    }

    /// The pool of the bill named `name`.
    pub fn pool(&self, name: &str) -> Result<PoolId, SimError> {
        self.table
            .pools
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as PoolId)
            .ok_or_else(|| SimError::Workload(format!("the fleet's policy has no pool `{name}`")))
    }
}

/// A change to the fleet for a while (`from` inclusive, `to` exclusive, from the start).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Every service time of the pool (or of one of its endpoints) that starts in the window
    /// takes `extra` more.
    Slower {
        pool: usize,
        endpoint: Option<usize>,
        /// The share (0..1] of attempts slowed: below 1, a tail of stalls that a second
        /// attempt (its own draw) usually escapes.
        share: f64,
        extra: Duration,
        from: Duration,
        to: Duration,
    },
    /// The endpoint refuses connections.
    Down {
        pool: usize,
        endpoint: usize,
        from: Duration,
        to: Duration,
    },
}

/// One request of a workload.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Arrival, from the start.
    pub at: Duration,
    /// Index into the fleet's regions and the workload's tiers.
    pub region: usize,
    pub tier: usize,
    /// Index into [`Workload::models`].
    pub model: u16,
    /// Where in its pool's service-time distribution this request falls (0..1).
    pub service_quantile: f64,
    /// Identical requests share a key (a repeat the prediction cache can answer); 0: unique.
    pub key: u64,
    /// Tokens in and out (the per-token prices), bytes to the pool and back (egress).
    pub tokens: (u32, u32),
    pub bytes: (u32, u32),
    /// Streamed (`"stream": true`): judged on its first token where its tier has a TTFT
    /// objective ([`Streams`]).
    pub stream: bool,
}

/// A request's bill on a pool: usage and egress, USD (capacity is billed by the hour).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Charge {
    pub usage: f64,
    pub egress: f64,
}

impl Charge {
    pub fn total(&self) -> f64 {
        self.usage + self.egress
    }

    fn add(&mut self, other: Charge) {
        self.usage += other.usage;
        self.egress += other.egress;
    }
}

/// One reporting phase of a workload, back to back from the start.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    pub name: String,
    pub start: Duration,
    pub len: Duration,
    /// Requests per second at the phase's start (open loop).
    pub rate: f64,
    /// Requests per second at its end: the rate moves linearly from `rate` to this over the
    /// phase (equal to `rate`: a constant rate).
    pub to_rate: f64,
}

impl PhaseSpec {
    /// The mean rate over the phase.
    pub fn mean_rate(&self) -> f64 {
        (self.rate + self.to_rate) / 2.0
    }

    /// Whether the rate rises over the phase (a ramp up).
    pub fn rising(&self) -> bool {
        self.to_rate > self.rate
    }
}

/// Who sends what.
#[derive(Debug, Clone)]
pub enum Mix {
    /// The live scenario's draws, exactly (see [`fleet_faults::Schedule`]).
    FleetFaults,
    /// Weights per fleet region and per tier, and per tier the share (0..1) asking for the
    /// big model.
    Scripted {
        regions: Vec<f64>,
        tiers: Vec<f64>,
        big: Vec<f64>,
        /// Share (0..1) of requests repeating one of the recent distinct ones.
        repeat: f64,
        /// Poisson arrivals at the phase's rate (else evenly spaced).
        poisson: bool,
    },
    /// A decision log, replayed (see [`trace`]).
    Trace(Arc<trace::TraceIndex>),
}

/// Traffic, fleet and faults.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub phases: Vec<PhaseSpec>,
    /// Tier names and their deadlines in ms (the objective the report measures).
    pub tiers: Vec<(String, f64)>,
    /// The models requests ask for.
    pub models: Vec<String>,
    /// Per model, what a typical request carries: tokens (in, out) and bytes (to the pool,
    /// back). Each [`Request`] carries its own; these are the size a decision sees (the
    /// class's `request_bytes`).
    pub sizes: Vec<((u32, u32), (u32, u32))>,
    pub fleet: FleetModel,
    pub faults: Vec<Fault>,
    pub mix: Mix,
    pub seed: u64,
    /// Streamed requests: what they are judged on and when their first token comes.
    pub streams: Streams,
    /// The workload's `capacity:` section: what `simulate --capacity` autoscales.
    pub capacity: Option<capacity::Setup>,
}

/// How streamed requests are timed and judged. A stream's first token arrives after
/// `first_token[pool]` × its service time (the rest is the answer's other tokens; default
/// 1: the whole answer at once); where its tier has a `ttft_ms` objective it is judged on
/// that first token plus the round trip, as the gateway judges it, else on its deadline.
#[derive(Debug, Clone, Default)]
pub struct Streams {
    /// Per workload tier, the share (0..1) of its requests that stream.
    pub share: Vec<f64>,
    /// Per workload tier, the time-to-first-token objective, ms.
    pub ttft_ms: Vec<Option<f64>>,
    /// Per fleet pool, the share (0..1] of a stream's service time before its first token.
    pub first_token: Vec<f64>,
}

impl Streams {
    fn first_token(&self, pool: usize) -> f64 {
        self.first_token.get(pool).copied().unwrap_or(1.0)
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Workload {
    /// What a request answered by `pool` after `service_us` of service that started
    /// `waited_us` after its arrival is judged on, and against what (µs): a stream with a
    /// TTFT objective on its first token, anything else on its last byte and its deadline.
    fn judged(&self, req: &Request, pool: usize, waited_us: u64, service_us: u64) -> (f64, f64) {
        let rtt = self.rtt_us(req.region, pool) as f64;
        match self.streams.ttft_ms.get(req.tier).copied().flatten() {
            Some(ttft) if req.stream => {
                let first = service_us as f64 * self.streams.first_token(pool);
                (waited_us as f64 + first + rtt, ttft * 1000.0)
            }
            _ => (
                (waited_us + service_us) as f64 + rtt,
                self.tiers[req.tier].1 * 1000.0,
            ),
        }
    }

    fn requests(&self) -> Box<dyn Iterator<Item = Request> + '_> {
        match &self.mix {
            Mix::FleetFaults => {
                let total = self.phases.iter().map(|p| p.len).sum();
                let rate = self.phases.first().map_or(1.0, |p| p.rate);
                Box::new(fleet_faults::Schedule::new(rate, total, self.seed))
            }
            Mix::Scripted { .. } => Box::new(workload::Scripted::new(self)),
            Mix::Trace(index) => Box::new(trace::Replay::new(index.clone(), self.seed)),
        }
    }

    fn phase_of(&self, at: Duration) -> usize {
        self.phases.iter().rposition(|p| p.start <= at).unwrap_or(0)
    }

    /// Service time in µs of a request with `quantile` starting on `pool` at `now_us`, with
    /// the pool-wide faults only.
    #[cfg(test)]
    fn service_us(&self, pool: usize, quantile: f64, now_us: u64) -> u64 {
        self.service_at(pool, usize::MAX, quantile, now_us)
    }

    /// Service time in µs of a request with `quantile` starting on `pool`'s `endpoint` at
    /// `now_us`.
    fn service_at(&self, pool: usize, endpoint: usize, quantile: f64, now_us: u64) -> u64 {
        let p = &self.fleet.pools[pool];
        let mut t = match &p.empirical {
            Some(samples) if !samples.is_empty() => {
                let i = ((samples.len() - 1) as f64 * quantile).round() as usize;
                samples[i.min(samples.len() - 1)]
            }
            _ => us(p.base) + (us(p.jitter) as f64 * quantile) as u64,
        };
        for f in &self.faults {
            if let Fault::Slower {
                pool: fp,
                endpoint: fe,
                share,
                extra,
                from,
                to,
            } = f
            {
                let here = *fp == pool
                    && fe.is_none_or(|fe| fe == endpoint)
                    && (*share >= 1.0 || (quantile * 7919.0).fract() < *share);
                if here && (us(*from)..us(*to)).contains(&now_us) {
                    t += us(*extra);
                }
            }
        }
        t.max(1)
    }

    /// The faults that name `pool`'s `endpoint` itself (not the whole pool) and overlap
    /// `from..to` (µs): endpoints with the same ones behave alike in that window.
    fn own_faults(&self, pool: usize, endpoint: usize, from: u64, to: u64) -> Vec<usize> {
        let overlaps = |a: &Duration, b: &Duration| us(*a) < to && us(*b) > from;
        (0..self.faults.len())
            .filter(|&i| match &self.faults[i] {
                Fault::Slower {
                    pool: fp,
                    endpoint: Some(fe),
                    from: a,
                    to: b,
                    ..
                }
                | Fault::Down {
                    pool: fp,
                    endpoint: fe,
                    from: a,
                    to: b,
                } => *fp == pool && *fe == endpoint && overlaps(a, b),
                Fault::Slower { endpoint: None, .. } => false,
            })
            .collect()
    }

    /// How long `pool`'s `endpoint` refuses connections within `from..to` (µs).
    fn down_us(&self, pool: usize, endpoint: usize, from: u64, to: u64) -> u64 {
        let mut windows: Vec<(u64, u64)> = self
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Down {
                    pool: fp,
                    endpoint: fe,
                    from: a,
                    to: b,
                } if *fp == pool && *fe == endpoint => Some((us(*a).max(from), us(*b).min(to))),
                _ => None,
            })
            .filter(|(a, b)| a < b)
            .collect();
        windows.sort_unstable();
        let (mut total, mut reach) = (0, from);
        for (a, b) in windows {
            let a = a.max(reach);
            if b > a {
                total += b - a;
                reach = b;
            }
        }
        total
    }

    fn is_down(&self, pool: usize, endpoint: usize, now_us: u64) -> bool {
        self.faults.iter().any(|f| match f {
            Fault::Down {
                pool: fp,
                endpoint: fe,
                from,
                to,
            } => *fp == pool && *fe == endpoint && (us(*from)..us(*to)).contains(&now_us),
            Fault::Slower { .. } => false,
        })
    }

    fn rtt_us(&self, region: usize, pool: usize) -> u64 {
        (self.fleet.rtt_ms[region][self.fleet.pools[pool].region] * 1000.0) as u64
    }

    /// What `pool` bills for `req` served in `service_us`, as `route::cost` prices it on the
    /// fleet's compiled policy: usage (per request, tokens, GPU-hours of service; nothing on a
    /// provisioned pool) and the egress of its bytes between the client's region (the
    /// simulated gateway sits with its clients) and the pool's.
    fn bill(&self, pool: usize, req: &Request, service_us: u64) -> Charge {
        let bill = &self.fleet.bill;
        let p = &bill.table.pools[self.fleet.pools[pool].bill as usize];
        let tokens = (f64::from(req.tokens.0), f64::from(req.tokens.1));
        let here = bill.regions[req.region];
        Charge {
            usage: cost::usage(&p.pricing, Duration::from_micros(service_us), tokens),
            egress: cost::egress(
                &bill.table,
                here,
                p.region,
                f64::from(req.bytes.0),
                f64::from(req.bytes.1),
            ),
        }
    }

    /// A provisioned pool's capacity, USD per second (`route::cost::capacity_per_second`):
    /// paid over every phase, busy or idle, whoever sends it traffic.
    fn capacity_per_second(&self, pool: usize) -> f64 {
        let bill = &self.fleet.bill;
        cost::capacity_per_second(&bill.table.pools[self.fleet.pools[pool].bill as usize])
    }

    /// Every provisioned pool's capacity over `phase`, USD: the same for every system.
    fn capacity_usd(&self, phase: &PhaseSpec) -> f64 {
        self.capacity_usd_with(phase, &[])
    }

    /// [`Workload::capacity_usd`] with some pools' replica counts changed (`replicas[p]`
    /// for fleet pool `p`; `None` or missing: the fleet's): what an operator who runs that
    /// many replicas pays, at the fleet's price per replica-hour (`tune` bills a candidate
    /// that changes `replicas` this way).
    fn capacity_usd_with(&self, phase: &PhaseSpec, replicas: &[Option<u32>]) -> f64 {
        let secs = phase.len.as_secs_f64();
        let bill = &self.fleet.bill;
        (0..self.fleet.pools.len())
            .map(|p| {
                let pool = &bill.table.pools[self.fleet.pools[p].bill as usize];
                match replicas.get(p).copied().flatten() {
                    Some(n) => cost::capacity_per_second_at(pool, n) * secs,
                    None => self.capacity_per_second(p) * secs,
                }
            })
            .sum()
    }

    fn serves(&self, pool: usize, model: u16) -> bool {
        self.fleet.pools[pool]
            .serves
            .get(model as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The built-in scenario (`fleet-faults`).
    pub scenario: String,
    /// A scripted workload file instead of the scenario's traffic and faults.
    pub workload: Option<PathBuf>,
    /// A decision log to replay instead (on the fleet of `fleet`, else the first policy).
    pub trace: Option<PathBuf>,
    pub fleet: Option<PathBuf>,
    /// Report phases a trace is cut into (equal lengths).
    pub phases: usize,
    pub phase: Duration,
    pub rate: f64,
    /// Seeds the service-time draws and the endpoint choice (the traffic is the scenario's).
    pub seed: u64,
    /// Policy files to compare; none: the scenario's own policy, as `switchyard`.
    pub policies: Vec<PathBuf>,
    /// Every phase's rate multiplied by this (what if traffic triples?).
    pub rate_scale: f64,
}

/// Latencies in 1%-wide logarithmic buckets from 0.1 ms; failures count as infinite.
#[derive(Debug, Default, Clone)]
struct Hist {
    counts: Vec<u64>,
    infinite: u64,
}

const HIST_MIN_MS: f64 = 0.1;
const HIST_GROWTH: f64 = 1.01;

impl Hist {
    fn add(&mut self, ms: f64) {
        self.add_n(ms, 1);
    }

    /// `n` latencies of `ms` each.
    fn add_n(&mut self, ms: f64, n: u64) {
        if !ms.is_finite() {
            self.infinite += n;
            return;
        }
        let b = if ms <= HIST_MIN_MS {
            0
        } else {
            ((ms / HIST_MIN_MS).ln() / HIST_GROWTH.ln()).ceil() as usize
        };
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += n;
    }

    /// The scenario's percentile rule (`sorted[round((n − 1) × p)]`, −1 if infinite), read
    /// off the buckets (each bucket's upper edge).
    fn percentile(&self, p: f64) -> f64 {
        let n: u64 = self.counts.iter().sum::<u64>() + self.infinite;
        if n == 0 {
            return 0.0;
        }
        let rank = ((n as f64 - 1.0) * p).round() as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let v = HIST_MIN_MS * HIST_GROWTH.powi(b as i32);
                return (v * 10.0).round() / 10.0;
            }
        }
        -1.0
    }
}

#[derive(Debug, Default, Clone)]
struct TierStats {
    requests: u64,
    met: u64,
    latency: Hist,
    /// Streamed requests answered, and their time to first token (ms, client-side).
    streams: u64,
    ttft: Hist,
}

/// What one system did in one phase.
#[derive(Debug, Clone)]
struct PhaseStats {
    tiers: Vec<TierStats>,
    requests: u64,
    errors: u64,
    /// What the answered requests were billed (usage and egress; capacity accrues with the
    /// phase's time, see [`Workload::capacity_usd`]).
    bill: Charge,
    served: Vec<u64>,
    busy_us: Vec<u64>,
    shed: u64,
    overloaded: u64,
    no_candidate: u64,
    queued: u64,
    retries: u64,
    cache_hits: u64,
    /// Requests answered with an identical in-flight request's answer (single flight).
    coalesced: u64,
    /// Second attempts sent by a hedging tier, and their estimated bill (usage and egress).
    hedges: u64,
    hedge_spend: f64,
    /// Cached answers evicted to stay within `cache.max_bytes`.
    evictions: u64,
    /// Losing hedge attempts cut short (see `race.rs`).
    hedges_cut: u64,
    /// The batch queue's figures (see `queue.rs`).
    jobs: queue::JobStats,
}

impl PhaseStats {
    fn new(tiers: usize, pools: usize) -> Self {
        PhaseStats {
            tiers: vec![TierStats::default(); tiers],
            requests: 0,
            errors: 0,
            bill: Charge::default(),
            served: vec![0; pools],
            busy_us: vec![0; pools],
            shed: 0,
            overloaded: 0,
            no_candidate: 0,
            queued: 0,
            retries: 0,
            cache_hits: 0,
            coalesced: 0,
            hedges: 0,
            hedge_spend: 0.0,
            evictions: 0,
            hedges_cut: 0,
            jobs: Default::default(),
        }
    }
}

/// A server of `pool` busy from `start` to `end` (µs): its time within each phase's window.
fn busy(w: &Workload, stats: &mut [PhaseStats], pool: usize, start: u64, end: u64) {
    for (phase, s) in w.phases.iter().zip(stats) {
        let (from, to) = (us(phase.start), us(phase.start + phase.len));
        let overlap = end.min(to).saturating_sub(start.max(from));
        s.busy_us[pool] += overlap;
    }
}

/// One request in the system (an attempt in flight or waiting at an endpoint).
#[derive(Debug, Clone)]
struct InFlight {
    req: Request,
    /// Endpoints tried, in the policy's numbering (baselines: the fleet's).
    tried: Vec<(PoolId, u16)>,
    /// Fleet pool and endpoint of the attempt.
    target: (usize, usize),
    sent_us: u64,
    slot: Option<u8>,
    reason: Option<Reason>,
    /// Time a server spends on the attempt (without waiting in the endpoint's queue): what
    /// the pool bills.
    service_us: u64,
    /// A baseline's request counter at arrival (its round-robin position).
    k: usize,
    /// The request's number in the run (a hedged request's two attempts share it).
    id: u64,
}

impl InFlight {
    /// Request `id`, arrived and not yet sent anywhere.
    fn new(id: u64, req: Request) -> InFlight {
        InFlight {
            req,
            tried: Vec::new(),
            target: (0, 0),
            sent_us: 0,
            slot: None,
            reason: None,
            service_us: 0,
            k: 0,
            id,
        }
    }
}

enum What {
    Done(InFlight),
    Retry(InFlight),
    /// A hedging tier's timer: the first attempt has not answered in time.
    Hedge(InFlight),
    /// A hedged request's attempt reaches the gateway (its round trip after the server is
    /// done): the first to arrive wins.
    Answer(InFlight),
    /// A batch-queue dispatcher round: its 100 ms tick (true) or a wake (see `queue.rs`).
    Dispatch(bool),
}

struct Event {
    at: u64,
    seq: u64,
    what: What,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event goes first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct EndpointQueue {
    busy: u32,
    waiting: VecDeque<InFlight>,
}

/// The clock, the endpoint queues and the figures of one system's run.
struct Engine<'w> {
    w: &'w Workload,
    events: BinaryHeap<Event>,
    seq: u64,
    queues: Vec<Vec<EndpointQueue>>,
    stats: Vec<PhaseStats>,
    next_id: u64,
    /// Hedged attempts that may be cut short (see `race.rs`).
    races: race::Races,
}

impl<'w> Engine<'w> {
    fn new(w: &'w Workload) -> Self {
        Engine {
            w,
            events: BinaryHeap::new(),
            seq: 0,
            queues: w
                .fleet
                .pools
                .iter()
                .map(|p| (0..p.endpoints).map(|_| EndpointQueue::default()).collect())
                .collect(),
            stats: (0..w.phases.len())
                .map(|_| PhaseStats::new(w.tiers.len(), w.fleet.pools.len()))
                .collect(),
            next_id: 0,
            races: Default::default(),
        }
    }

    fn push(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            what,
        });
    }

    fn phase(&mut self, req: &Request) -> &mut PhaseStats {
        let p = self.w.phase_of(req.at);
        &mut self.stats[p]
    }

    /// Send an attempt to its endpoint: served now if a server is free, else queued.
    fn send(&mut self, f: InFlight, now: u64) {
        let (p, e) = f.target;
        let servers = self.w.fleet.pools[p].servers_per_endpoint;
        let q = &mut self.queues[p][e];
        if q.busy < servers {
            self.start(f, now);
        } else {
            q.waiting.push_back(f);
        }
    }

    fn start(&mut self, mut f: InFlight, now: u64) {
        let (p, e) = f.target;
        self.queues[p][e].busy += 1;
        let service = self.w.service_at(p, e, f.req.service_quantile, now);
        f.service_us = service;
        busy(self.w, &mut self.stats, p, now, now + service);
        self.races.started(&f, now, now + service);
        self.push(now + service, What::Done(f));
    }

    /// An attempt answered: free its server and start the next in line.
    fn finish(&mut self, f: &InFlight, now: u64) {
        let (p, e) = f.target;
        let q = &mut self.queues[p][e];
        q.busy = q.busy.saturating_sub(1);
        if let Some(next) = q.waiting.pop_front() {
            self.start(next, now);
        }
    }

    fn succeed(&mut self, f: &InFlight, now: u64) {
        let (pool, _) = f.target;
        let rtt = self.w.rtt_us(f.req.region, pool);
        let latency_ms = (now - us(f.req.at) + rtt) as f64 / 1000.0;
        let charge = self.w.bill(pool, &f.req, f.service_us);
        let waited = (now - us(f.req.at)).saturating_sub(f.service_us);
        let (judged, objective) = self.w.judged(&f.req, pool, waited, f.service_us);
        let streamed = f.req.stream;
        let s = self.phase(&f.req);
        s.requests += 1;
        s.served[pool] += 1;
        s.bill.add(charge);
        let t = &mut s.tiers[f.req.tier];
        t.requests += 1;
        t.met += u64::from(judged <= objective);
        t.latency.add(latency_ms);
        if streamed {
            t.streams += 1;
            t.ttft.add(judged / 1000.0);
        }
    }

    /// Answered with the answer of an identical request in flight, when it arrives from
    /// `pool` (no spend of its own).
    fn coalesced(&mut self, req: &Request, pool: usize, now: u64) {
        let rtt = self.w.rtt_us(req.region, pool);
        let latency_ms = (now - us(req.at) + rtt) as f64 / 1000.0;
        // (Only non-streamed requests are cached, so never a stream.)
        let deadline = self.w.tiers[req.tier].1;
        let s = self.phase(req);
        s.requests += 1;
        s.coalesced += 1;
        let t = &mut s.tiers[req.tier];
        t.requests += 1;
        t.met += u64::from(latency_ms <= deadline);
        t.latency.add(latency_ms);
    }

    /// A hedge sent: billed its estimate's usage and egress (the losing attempt's bill,
    /// whichever loses; `hedge::run` counts the estimate too).
    fn lost(&mut self, req: &Request, charge: Charge) {
        let s = self.phase(req);
        s.bill.add(charge);
        s.hedge_spend += charge.total();
    }

    /// Answered from the prediction cache at once (the client's time to the gateway is not
    /// modelled).
    fn cache_hit(&mut self, req: &Request) {
        let s = self.phase(req);
        s.requests += 1;
        s.cache_hits += 1;
        let t = &mut s.tiers[req.tier];
        t.requests += 1;
        t.met += 1;
        t.latency.add(0.0);
    }

    fn fail(&mut self, req: &Request, reason: Option<Reason>) {
        let s = self.phase(req);
        s.requests += 1;
        s.errors += 1;
        match reason {
            Some(Reason::Shed) => s.shed += 1,
            Some(Reason::Overloaded) => s.overloaded += 1,
            Some(Reason::NoCandidate) => s.no_candidate += 1,
            _ => {}
        }
        let t = &mut s.tiers[req.tier];
        t.requests += 1;
        t.latency.add(f64::INFINITY);
    }

    /// Run the workload through `system`: arrivals streamed from the schedule, merged with
    /// the event queue on the virtual clock.
    fn run(mut self, system: &mut System) -> Vec<PhaseStats> {
        let mut arrivals = self.w.requests().peekable();
        loop {
            let next_event = self.events.peek().map(|e| e.at);
            let next_arrival = arrivals.peek().map(|r| us(r.at));
            match (next_arrival, next_event) {
                (Some(a), Some(e)) if a <= e => {}
                (Some(_), None) => {}
                (_, Some(_)) => {
                    let Some(ev) = self.events.pop() else { break };
                    match ev.what {
                        What::Done(f) => {
                            if self.races.void(&f) {
                                continue;
                            }
                            self.finish(&f, ev.at);
                            system.done(&mut self, f, ev.at);
                        }
                        What::Retry(f) => system.attempt(&mut self, f, ev.at),
                        What::Hedge(f) => system.hedge(&mut self, f, ev.at),
                        What::Answer(f) => system.answer(&mut self, f, ev.at),
                        What::Dispatch(tick) => system.dispatch(&mut self, ev.at, tick),
                    }
                    continue;
                }
                (None, None) => break,
            }
            let Some(req) = arrivals.next() else { break };
            self.next_id += 1;
            let f = InFlight::new(self.next_id, req);
            system.arrive(&mut self, f, us(req.at));
        }
        self.stats
    }
}

/// A compiled policy, and how its names map onto the simulated fleet and workload.
struct PolicySystem {
    table: Serving,
    /// Policy pool → fleet pool.
    pools: Vec<usize>,
    /// Per (region, tier, model): the class `classify` gives such a request.
    classes: Vec<Class>,
    /// The route's cache (`None`: the route does not cache).
    cache: Option<cache::SimCache>,
    /// Hedged requests with an attempt in flight: whether answered, attempts in flight.
    hedged: std::collections::HashMap<u64, (bool, u8)>,
    /// The batch queue, when the policy has one.
    queue: Option<queue::SimQueue>,
}

impl PolicySystem {
    fn new(name: &str, table: Serving, w: &Workload) -> Result<Self, SimError> {
        let mismatch = |problem: String| SimError::Mismatch {
            policy: name.to_string(),
            problem,
        };
        let mut pools = Vec::with_capacity(table.pools.len());
        for p in &table.pools {
            let Some(i) = w.fleet.pools.iter().position(|m| m.name == p.name) else {
                return Err(mismatch(format!(
                    "pool `{}` is not in the fleet (known: {})",
                    p.name,
                    names(w.fleet.pools.iter().map(|m| m.name.as_str()))
                )));
            };
            if p.endpoints.len() > w.fleet.pools[i].endpoints {
                return Err(mismatch(format!(
                    "pool `{}` has {} endpoints, the fleet {}",
                    p.name,
                    p.endpoints.len(),
                    w.fleet.pools[i].endpoints
                )));
            }
            pools.push(i);
        }
        // The chat route, else the first: the tier and model decide the rest.
        let route = table
            .match_route(PATH)
            .or((!table.routes.is_empty()).then_some(0))
            .ok_or_else(|| mismatch("no route".into()))?;
        let mut classes = Vec::new();
        for region in &w.fleet.regions {
            let r = table
                .region_by_name(region)
                .ok_or_else(|| mismatch(format!("no region `{region}`")))?;
            for (tier, _) in &w.tiers {
                let t = table
                    .tier_by_name(tier)
                    .ok_or_else(|| mismatch(format!("no tier `{tier}`")))?;
                for (m, model) in w.models.iter().enumerate() {
                    let mut class = Class::what_if(&table, route, r, t, model);
                    class.request_bytes = w.sizes.get(m).map_or(0, |s| s.1 .0);
                    // The same request streamed, as `classify` makes it: judged on the
                    // tier's time to first token, where it has one.
                    let tier = &table.tiers[t as usize];
                    let streamed = Class {
                        streaming: true,
                        ttft: tier.ttft.map(|ttft| ttft.min(class.deadline)),
                        tpot: tier.tpot.filter(|_| tier.ttft.is_some()),
                        ..class.clone()
                    };
                    classes.push(class);
                    classes.push(streamed);
                }
            }
        }
        let cache = table.routes[route as usize]
            .cache
            .map(|c| cache::SimCache::new(c.ttl, &table.cache, &w.models, ANSWER_BYTES));
        Ok(PolicySystem {
            queue: queue::SimQueue::new(&table, w),
            table,
            pools,
            classes,
            cache,
            hedged: std::collections::HashMap::new(),
        })
    }

    /// The tier's `hedge_after` when this request is hedged (`rules::hedges`), but for a
    /// route the simulated cache keeps (see the module's list of differences).
    fn hedge_after(&self, w: &Workload, req: &Request) -> Option<f64> {
        let class = self.class(w, req);
        rules::hedges(&self.table, class).filter(|_| self.cache.is_none())
    }

    /// A cache leader failed: its waiters each make their own request.
    fn leader_failed(&mut self, eng: &mut Engine, req: &Request, now: u64) {
        let Some(cache) = self.cache.as_mut().filter(|_| req.key != 0) else {
            return;
        };
        for waiter in cache.land(req.key) {
            eng.next_id += 1;
            let f = InFlight::new(eng.next_id, waiter);
            eng.push(now, What::Retry(f));
        }
    }

    fn class(&self, w: &Workload, req: &Request) -> &Class {
        let m = w.models.len();
        let i = (req.region * w.tiers.len() + req.tier) * m + req.model as usize;
        &self.classes[2 * i + usize::from(req.stream)]
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// What decides where a request goes.
enum System {
    Policy(Box<PolicySystem>),
    /// Client-side round-robin over every pool that serves the model; one retry elsewhere.
    RoundRobin(usize),
    /// Round-robin over the endpoints of the first GPU pool serving the model; one retry on
    /// the next.
    AlwaysGpu(usize),
}

impl System {
    fn arrive(&mut self, eng: &mut Engine, f: InFlight, now: u64) {
        if let System::Policy(p) = self {
            if let Some(cache) = p.cache.as_mut().filter(|_| f.req.key != 0) {
                // A repeat within the route's TTL is answered from the cache: no pool, no
                // spend.
                if cache.fresh(f.req.key, now) {
                    eng.cache_hit(&f.req);
                    return;
                }
                // An identical miss in flight: wait for its answer (single flight).
                if cache.join(&f.req) {
                    return;
                }
            }
            // Every request earns the retry budget a fraction of a retry (as in `acquire`).
            let up = &p.table.upstream;
            p.table.live.budget.deposit(&up.retry_budget);
        }
        self.attempt(eng, f, now);
    }

    fn attempt(&mut self, eng: &mut Engine, mut f: InFlight, now: u64) {
        let w = eng.w;
        match self {
            System::Policy(sys) => {
                let table = &sys.table;
                let class = sys.class(w, &f.req);
                let now_ms = now / 1000;
                // A hedging tier races every attempt (`upstream::send`).
                let hedge_after = sys.hedge_after(w, &f.req);
                let d = route::decide(class, table, &f.tried, now_ms);
                if f.tried.is_empty() && queue::takes(sys, class, &d) {
                    sys.enqueue(eng, f, &d, now);
                    return;
                }
                // The slot rule of every attempt: take the slots, decide again on a lost race.
                let (d, target) = rules::take_slot(table, class, &f.tried, d, now_ms);
                f.reason = Some(d.reason);
                let Some((p, e)) = target else {
                    eng.fail(&f.req, Some(rules::no_slot(d.reason)));
                    sys.leader_failed(eng, &f.req, now);
                    return;
                };
                f.tried.push((p, e));
                let pool = &table.pools[p as usize];
                let fleet_pool = sys.pools[p as usize];
                if w.is_down(fleet_pool, e as usize, now) {
                    // As `Attempt::failed_to_connect`: eject at once, give the slots back;
                    // retry by `rules::retry_allowed` (nothing reached the backend).
                    let ep = table.live.endpoint(p, e as usize);
                    ep.connect_failed(now_ms, &table.upstream.ejection);
                    rules::give_back(table, (p, e));
                    let elapsed = Duration::from_micros(now - us(f.req.at));
                    if rules::retry_allowed(table, class, f.tried.len(), elapsed) {
                        eng.phase(&f.req).retries += 1;
                        eng.push(now + CONNECT_REFUSED_US, What::Retry(f));
                    } else {
                        eng.fail(&f.req, None);
                        sys.leader_failed(eng, &f.req, now);
                    }
                    return;
                }
                f.slot = table.live.pool(p).track_start(now_ms);
                f.target = (fleet_pool, e as usize);
                f.sent_us = now;
                // `rules::hedge_delay`: `hedge_after` × (round trip + the pool's service-time
                // estimate). The simulated gateway sits with its clients (an answer's time is
                // the server's plus the client region's round trip, and the estimates learn
                // service time only), so the round trip is the policy's from the client's
                // region.
                let timer = hedge_after.map(|factor| {
                    let network = table.rtt(class.region, pool.region);
                    let wait = rules::hedge_delay(table, p, network, factor, now_ms);
                    (now + us(wait).max(1), f.clone())
                });
                if timer.is_some() {
                    eng.races.enter(&f);
                }
                eng.send(f, now);
                if let Some((at, f)) = timer {
                    sys.hedged.insert(f.id, (false, 1));
                    eng.push(at, What::Hedge(f));
                }
            }
            System::RoundRobin(next) | System::AlwaysGpu(next) => {
                // The k-th request's j-th attempt, as the live scenario's clients do it.
                if f.tried.is_empty() {
                    f.k = *next;
                    *next += 1;
                }
                let (k, j) = (f.k, f.tried.len());
                let serving = (0..w.fleet.pools.len()).filter(|&p| w.serves(p, f.req.model));
                let target = match self {
                    System::RoundRobin(_) => {
                        let serving: Vec<usize> = serving.collect();
                        serving
                            .get((k + j) % serving.len().max(1))
                            .map(|&p| (p, (k / serving.len()) % w.fleet.pools[p].endpoints.max(1)))
                    }
                    System::AlwaysGpu(_) => serving
                        .filter(|&p| w.fleet.pools[p].gpu)
                        .map(|p| (p, (k + j) % w.fleet.pools[p].endpoints.max(1)))
                        .next(),
                    System::Policy(_) => return,
                };
                let Some(target) = target else {
                    eng.fail(&f.req, Some(Reason::NoCandidate));
                    return;
                };
                f.tried.push((target.0 as PoolId, target.1 as u16));
                if w.is_down(target.0, target.1, now) {
                    if f.tried.len() < 2 {
                        eng.phase(&f.req).retries += 1;
                        eng.push(now + CONNECT_REFUSED_US, What::Retry(f));
                    } else {
                        eng.fail(&f.req, None);
                    }
                    return;
                }
                f.target = target;
                f.sent_us = now;
                eng.send(f, now);
            }
        }
    }

    fn done(&mut self, eng: &mut Engine, f: InFlight, now: u64) {
        if let System::Policy(sys) = self {
            // As `Attempt::answered` with a 2xx, then the attempt's slots given back.
            let now_ms = now / 1000;
            let took = Duration::from_micros(now - f.sent_us);
            if let Some(&(p, e)) = f.tried.last() {
                let pool = sys.table.live.pool(p);
                pool.observe_at(took, now_ms);
                if let Some(slot) = f.slot {
                    pool.untrack(slot);
                }
                if f.req.stream {
                    // As `pipeline::record` learns a stream: the server's time to its first
                    // token (the whole stream is the service-time sample above).
                    let first = f.service_us as f64 * eng.w.streams.first_token(f.target.0);
                    pool.stream
                        .observe_ttft(Duration::from_micros(first as u64));
                }
                let ep = sys.table.live.endpoint(p, e as usize);
                ep.observe_at(took, now_ms);
                ep.mark_success();
                pool.release();
                ep.release();
                // As `record::charge`: the answer's tokens and bytes into the pool's averages,
                // which the next estimates price.
                pool.tokens
                    .record(u64::from(f.req.tokens.0), u64::from(f.req.tokens.1));
                pool.answer_bytes.record(f64::from(f.req.bytes.1));
            }
            if sys.job_done(eng, &f, now) {
                return;
            }
            // A hedged request: the race is decided where the answers arrive, a round trip
            // after the servers are done.
            if sys.hedged.contains_key(&f.id) {
                let rtt = w_rtt(eng, &f);
                eng.push(now + rtt, What::Answer(f));
                return;
            }
            if let Some(cache) = sys.cache.as_mut().filter(|_| f.req.key != 0) {
                let evicted = cache.insert(f.req.key, f.req.model, now);
                eng.phase(&f.req).evictions += evicted;
                for waiter in cache.land(f.req.key) {
                    eng.coalesced(&waiter, f.target.0, now);
                }
            }
        }
        eng.succeed(&f, now);
    }

    /// A hedged request's attempt arrived: the first wins, the other is only billed.
    fn answer(&mut self, eng: &mut Engine, f: InFlight, now: u64) {
        let System::Policy(sys) = self else { return };
        let Some(state) = sys.hedged.get_mut(&f.id) else {
            return;
        };
        let answered = state.0;
        state.0 = true;
        state.1 = state.1.saturating_sub(1);
        if state.1 == 0 {
            sys.hedged.remove(&f.id);
        }
        if !answered {
            // `succeed` adds the round trip itself.
            eng.succeed(&f, now - w_rtt(eng, &f));
            sys.cut_losers(eng, &f.req, f.id, now);
        }
    }

    /// A hedging tier's timer fired: as `hedge::run`, a second attempt to the next-best
    /// candidate if the first has not answered and a candidate can take it now.
    fn hedge(&mut self, eng: &mut Engine, f: InFlight, now: u64) {
        let System::Policy(sys) = self else { return };
        if sys.hedged.get(&f.id).is_none_or(|state| state.0) {
            return;
        }
        let w = eng.w;
        let table = &sys.table;
        let class = sys.class(w, &f.req);
        let now_ms = now / 1000;
        let Some(next) = rules::hedge_target(table, class, &f.tried, now_ms) else {
            return;
        };
        let Some((p, e)) = next.target.filter(|&t| rules::take(table, t)) else {
            return;
        };
        let ep = table.live.endpoint(p, e as usize);
        eng.phase(&f.req).hedges += 1;
        let charge = next.estimate.map_or(Charge::default(), |e| Charge {
            usage: e.cost.usage_usd,
            egress: e.cost.egress_usd,
        });
        eng.lost(&f.req, charge);
        let fleet_pool = sys.pools[p as usize];
        if w.is_down(fleet_pool, e as usize, now) {
            // The hedge cannot connect (`Attempt::failed_to_connect`): the first attempt's
            // answer stands.
            ep.connect_failed(now_ms, &table.upstream.ejection);
            rules::give_back(table, (p, e));
            return;
        }
        let mut h = f;
        h.tried.push((p, e));
        h.slot = None;
        h.target = (fleet_pool, e as usize);
        h.sent_us = now;
        // Another server: its own draw from the pool's service times (derived from the
        // request's, so every system and every run draws the same).
        h.req.service_quantile = (h.req.service_quantile + 0.618_033_988_749_895).fract();
        if let Some(state) = sys.hedged.get_mut(&h.id) {
            state.1 += 1;
        }
        eng.races.enter(&h);
        eng.send(h, now);
    }
}

/// The round trip between a request's client region and the pool of its attempt, µs.
fn w_rtt(eng: &Engine, f: &InFlight) -> u64 {
    eng.w.rtt_us(f.req.region, f.target.0)
}

/// One system in one phase: the live scenario's figures plus what only a simulation sees.
#[derive(Debug, Clone, Serialize)]
pub struct SimSystemReport {
    #[serde(flatten)]
    pub base: SystemReport,
    /// Per tier with streamed requests: how many, and their time to first token as the
    /// client sees it (the tier's attainment counts a stream on it where the tier has a
    /// TTFT objective). Empty without streams.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamReport>,
    /// `spend_per_1k_usd`, split: provisioned pools' capacity over the phase (the same for
    /// every system), usage (per request, tokens, GPU-hours of service) and egress.
    pub capacity_per_1k_usd: f64,
    pub usage_per_1k_usd: f64,
    pub egress_per_1k_usd: f64,
    /// Distance to the bounds, percent of the bound's whole bill (capacity included):
    /// `(spend − optimum) / optimum` and the same against `relaxed`; and on usage + egress
    /// alone (what routing can change). `None` when the bound's bill is zero.
    pub vs_optimum_pct: Option<f64>,
    pub vs_relaxed_pct: Option<f64>,
    pub variable_vs_optimum_pct: Option<f64>,
    /// Busy servers ÷ servers per pool over the phase, percent.
    pub utilisation: BTreeMap<String, f64>,
    pub shed: u64,
    pub overloaded: u64,
    pub no_candidate: u64,
    /// Accepted into the batch queue (202): a batch pool or the tier's `on_slo_miss: queue`.
    pub queued: u64,
    /// Attempts after a refused connection.
    pub retries: u64,
    /// Answered from the prediction cache (counted in `requests`, not in `traffic`).
    pub cache_hits: u64,
    /// Answered with an identical in-flight request's answer (one upstream request for all).
    pub coalesced: u64,
    /// Cached answers evicted to stay within `cache.max_bytes`.
    pub evictions: u64,
    /// Second attempts of hedging tiers, and their bill per 1k requests as the gateway
    /// counts it, each hedge's estimated cost (included in `spend_per_1k_usd`).
    pub hedges: u64,
    pub hedge_spend_per_1k_usd: f64,
    /// Losing hedge attempts cut short when the winner answered (out of their endpoint's
    /// queue, or their server freed).
    pub hedges_cut: u64,
    /// The batch queue: jobs completed and failed, completion latency, depth, spend.
    #[serde(flatten)]
    pub jobs: JobReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimPhaseReport {
    pub phase: String,
    pub systems: Vec<SimSystemReport>,
}

/// The whole run, in the shape of `demo --scenario --json` (phases → systems → tiers).
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub scenario: String,
    pub simulated: bool,
    pub phase_secs: f64,
    pub rate_per_sec: f64,
    pub seed: u64,
    pub note: String,
    pub phases: Vec<SimPhaseReport>,
}

fn mean(it: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = it.len().max(1) as f64;
    it.sum::<f64>() / n
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// One tier's streamed requests in a phase.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub tier: String,
    pub requests: u64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
}

fn summarise(w: &Workload, name: &str, s: &PhaseStats, phase: &PhaseSpec) -> SimSystemReport {
    let phase_len = phase.len;
    let per_1k = |usd: f64| round(usd * 1000.0 / s.requests.max(1) as f64, 5);
    let capacity = w.capacity_usd(phase);
    let tiers = w
        .tiers
        .iter()
        .zip(&s.tiers)
        .map(|((tier, _), t)| TierReport {
            tier: tier.clone(),
            requests: t.requests as usize,
            slo_attainment: if t.requests == 0 {
                100.0
            } else {
                round(t.met as f64 * 100.0 / t.requests as f64, 2)
            },
            p50_ms: t.latency.percentile(0.5),
            p99_ms: t.latency.percentile(0.99),
        })
        .collect();
    let answered = (s.requests - s.errors).max(1) as f64;
    let pool_names = w.fleet.pools.iter().map(|p| p.name.clone());
    let traffic = pool_names
        .clone()
        .zip(&s.served)
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| (p, round(*n as f64 * 100.0 / answered, 1)))
        .chain((s.cache_hits > 0).then(|| {
            let share = round(s.cache_hits as f64 * 100.0 / answered, 1);
            ("cache".to_string(), share)
        }))
        .collect();
    let utilisation = w
        .fleet
        .pools
        .iter()
        .zip(&s.busy_us)
        .map(|(p, busy)| {
            let capacity =
                p.endpoints as f64 * p.servers_per_endpoint as f64 * us(phase_len) as f64;
            (p.name.clone(), round(*busy as f64 * 100.0 / capacity, 1))
        })
        .collect();
    SimSystemReport {
        base: SystemReport {
            system: name.to_string(),
            requests: s.requests as usize,
            errors: s.errors as usize,
            spend_per_1k_usd: per_1k(capacity + s.bill.total()),
            tiers,
            traffic,
            // The simulator estimates with the policy's baselines and knows the truth it
            // drew: no live estimate to compare (the scenario reports it for real runs).
            estimate_error: Default::default(),
        },
        capacity_per_1k_usd: per_1k(capacity),
        vs_optimum_pct: None,
        vs_relaxed_pct: None,
        variable_vs_optimum_pct: None,
        usage_per_1k_usd: per_1k(s.bill.usage),
        egress_per_1k_usd: per_1k(s.bill.egress),
        utilisation,
        shed: s.shed,
        overloaded: s.overloaded,
        no_candidate: s.no_candidate,
        queued: s.queued,
        retries: s.retries,
        cache_hits: s.cache_hits,
        coalesced: s.coalesced,
        evictions: s.evictions,
        hedges: s.hedges,
        hedge_spend_per_1k_usd: round(s.hedge_spend * 1000.0 / s.requests.max(1) as f64, 5),
        hedges_cut: s.hedges_cut,
        jobs: queue::report(&s.jobs, s.requests),
        streams: w
            .tiers
            .iter()
            .zip(&s.tiers)
            .filter(|(_, t)| t.streams > 0)
            .map(|((tier, _), t)| StreamReport {
                tier: tier.clone(),
                requests: t.streams,
                ttft_p50_ms: t.ttft.percentile(0.5),
                ttft_p99_ms: t.ttft.percentile(0.99),
            })
            .collect(),
    }
}

/// A system's name from its policy file: the file stem.
fn policy_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The workload `opts` asks for: a `--workload` file, else the built-in scenario.
fn workload_of(opts: &SimOptions) -> Result<Workload, SimError> {
    if !(opts.rate_scale > 0.0 && opts.rate_scale.is_finite()) {
        return Err(SimError::Workload(format!(
            "--rate-scale must be above 0, not {}",
            opts.rate_scale
        )));
    }
    if let Some(path) = &opts.trace {
        let fleet = opts
            .fleet
            .as_ref()
            .or(opts.policies.first())
            .ok_or_else(|| {
                SimError::Workload("--trace needs the fleet's policy: --fleet or --policy".into())
            })?;
        let table = Arc::new(crate::tools::load(fleet)?);
        return trace::load(path, table, opts.phases, opts.rate_scale, opts.seed);
    }
    let mut w = match &opts.workload {
        Some(path) => workload::load(path, opts.seed)?,
        None if opts.scenario == crate::fleet_faults::NAME => {
            fleet_faults::workload(opts.phase, opts.rate, opts.seed)?
        }
        None => return Err(SimError::UnknownScenario(opts.scenario.clone())),
    };
    for p in &mut w.phases {
        p.rate *= opts.rate_scale;
        p.to_rate *= opts.rate_scale;
    }
    Ok(w)
}

/// One compiled policy alone through the workload (for `tune`).
fn simulate_policy(
    w: &Workload,
    name: &str,
    table: Serving,
    seed: u64,
) -> Result<Vec<PhaseStats>, SimError> {
    let mut system = System::Policy(Box::new(PolicySystem::new(name, table, w)?));
    fastrand::seed(seed);
    Ok(Engine::new(w).run(&mut system))
}

/// `simulate --workload FILE --capacity`: the workload's `capacity:` pool autoscaled four
/// ways (see `capacity.rs`), sized and priced by the first policy (else the fleet's).
pub fn run_capacity(opts: &SimOptions) -> Result<capacity::CapacityReport, SimError> {
    if opts.workload.is_none() {
        return Err(SimError::Workload(
            "--capacity needs a --workload with a `capacity:` section".into(),
        ));
    }
    let w = workload_of(opts)?;
    let (name, table) = match opts.policies.first() {
        Some(path) => (policy_name(path), crate::tools::load(path)?),
        None => (
            crate::fleet_faults::POLICY_PATH.to_string(),
            fleet_faults::policy()?,
        ),
    };
    capacity::run(&w, &table, &name)
}

/// Simulate the scenario with every policy, the baselines and the bounds.
pub fn run(opts: &SimOptions) -> Result<SimReport, SimError> {
    let w = workload_of(opts)?;
    let mut systems: Vec<(String, System)> = Vec::new();
    // The optimum's restrictions: the first policy's (the tier's pool kinds, residency).
    let mut allowed: Option<optimum::Allowed> = None;
    if opts.policies.is_empty() {
        let table = compile::compile_str(
            crate::fleet_faults::POLICY,
            &CompileContext {
                file: Path::new(crate::fleet_faults::POLICY_PATH),
                gateway_region: None,
            },
        )?;
        let table = Serving::load(table, &Fleet::default())?;
        let sys = PolicySystem::new("switchyard", table, &w)?;
        allowed.get_or_insert_with(|| optimum::Allowed::by_policy(&w, &sys.table));
        systems.push(("switchyard".into(), System::Policy(Box::new(sys))));
    }
    for path in &opts.policies {
        let name = policy_name(path);
        // A fresh live state per policy: nothing one run learns leaks into another.
        let table = crate::tools::load(path)?;
        let sys = PolicySystem::new(&name, table, &w)?;
        allowed.get_or_insert_with(|| optimum::Allowed::by_policy(&w, &sys.table));
        systems.push((name, System::Policy(Box::new(sys))));
    }
    let relaxed = optimum::Allowed::any(&w);
    let allowed = allowed.unwrap_or_else(|| relaxed.clone());
    systems.push(("round-robin".into(), System::RoundRobin(0)));
    systems.push(("always-gpu".into(), System::AlwaysGpu(0)));

    let mut results: Vec<(String, Vec<PhaseStats>)> = Vec::new();
    for (name, mut system) in systems {
        // The endpoint choice (power of two choices) draws from this thread's generator.
        fastrand::seed(opts.seed);
        let stats = Engine::new(&w).run(&mut system);
        results.push((name, stats));
    }
    results.push((OPTIMUM.into(), optimum::solve(&w, &allowed)?));
    results.push((RELAXED.into(), optimum::solve(&w, &relaxed)?));

    let phases = w
        .phases
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let capacity = w.capacity_usd(phase);
            let bill = |name: &str| {
                let (_, stats) = results.iter().find(|(n, _)| n == name)?;
                Some(stats[i].bill.total())
            };
            let bounds = (bill(OPTIMUM), bill(RELAXED));
            let systems = results
                .iter()
                .map(|(name, stats)| {
                    let mut r = summarise(&w, name, &stats[i], phase);
                    let own = stats[i].bill.total();
                    let pct = |bound: Option<f64>, fixed: f64| {
                        bound
                            .filter(|b| b + fixed > 0.0)
                            .map(|b| round((own - b) * 100.0 / (b + fixed), 2))
                    };
                    r.vs_optimum_pct = pct(bounds.0, capacity);
                    r.vs_relaxed_pct = pct(bounds.1, capacity);
                    r.variable_vs_optimum_pct = pct(bounds.0, 0.0);
                    r
                })
                .collect();
            SimPhaseReport {
                phase: phase.name.clone(),
                systems,
            }
        })
        .collect();
    Ok(SimReport {
        scenario: w.name.clone(),
        simulated: true,
        phase_secs: mean(w.phases.iter().map(|p| p.len.as_secs_f64())),
        rate_per_sec: mean(w.phases.iter().map(|p| p.mean_rate())),
        seed: opts.seed,
        note: "Simulated on a virtual clock with the gateway's own decide and live state; RTT from the fleet's matrix. Spend per phase = provisioned capacity over the phase (the same for every system) + usage + egress, priced by route::cost on the fleet policy's prices. optimum: the cheapest assignment of the same requests that meets the most deadlines, within the first policy's tier pool kinds and residency, each endpoint's capacity per 1 s slot (down endpoints removed), exact service times, perfect caching; an exact LP optimum of a fluid model (no queueing within a slot, no work carried across slots). relaxed: the same, any pool serving the model. vs_optimum_pct = (spend - optimum) / optimum on the whole bill; variable_vs_optimum_pct on usage + egress only.".into(),
        phases,
    })
}

/// The report as text: the live scenario's tables, then the simulation's extra figures.
pub fn render(report: &SimReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (simulated, seed {}): {} phase(s) of {:.1} s, {:.0} req/s on average (the same requests to every system)",
        report.scenario,
        report.seed,
        report.phases.len(),
        report.phase_secs,
        report.rate_per_sec
    );
    let _ = writeln!(out, "{}\n", report.note);
    for p in &report.phases {
        let _ = writeln!(out, "phase {}", p.phase);
        for s in &p.systems {
            let b = &s.base;
            let tiers: Vec<String> = b
                .tiers
                .iter()
                .map(|t| {
                    let p99 = if t.p99_ms < 0.0 {
                        "failed".to_string()
                    } else {
                        format!("{:.0}ms", t.p99_ms)
                    };
                    format!(
                        "{} {:.2}% p50 {:.0}ms p99 {p99}",
                        t.tier, t.slo_attainment, t.p50_ms
                    )
                })
                .collect();
            let traffic: Vec<String> = b
                .traffic
                .iter()
                .map(|(pool, v)| format!("{pool} {v:.0}%"))
                .collect();
            let util: Vec<String> = s
                .utilisation
                .iter()
                .map(|(pool, u)| format!("{pool} {u:.1}%"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<12} ${:.4}/1k req (capacity {:.4} + usage {:.4} + egress {:.4}), {} requests, {} cache hits, {} errors (shed {}, overloaded {}, no candidate {}), queued {}, retries {}",
                b.system, b.spend_per_1k_usd, s.capacity_per_1k_usd, s.usage_per_1k_usd, s.egress_per_1k_usd, b.requests, s.cache_hits, b.errors, s.shed, s.overloaded, s.no_candidate, s.queued, s.retries
            );
            if s.coalesced + s.evictions + s.hedges > 0 {
                let _ = writeln!(
                    out,
                    "  {:<12} coalesced {}, cache evictions {}, hedges {} (${:.4}/1k req of it, {} losers cut short)",
                    "", s.coalesced, s.evictions, s.hedges, s.hedge_spend_per_1k_usd, s.hedges_cut
                );
            }
            if let Some(line) = queue::render(s) {
                let _ = writeln!(out, "  {:<12} {line}", "");
            }
            let bound = [OPTIMUM, RELAXED].contains(&b.system.as_str());
            if let (Some(o), Some(r), Some(v), false) = (
                s.vs_optimum_pct,
                s.vs_relaxed_pct,
                s.variable_vs_optimum_pct,
                bound,
            ) {
                let _ = writeln!(
                    out,
                    "  {:<12} vs optimum {o:+.2}% (usage+egress {v:+.2}%), vs relaxed {r:+.2}%",
                    ""
                );
            }
            let _ = writeln!(out, "  {:<12} SLO: {}", "", tiers.join("; "));
            if !s.streams.is_empty() {
                let streams: Vec<String> = s
                    .streams
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} streamed, first token p50 {:.0}ms p99 {:.0}ms",
                            t.tier, t.requests, t.ttft_p50_ms, t.ttft_p99_ms
                        )
                    })
                    .collect();
                let _ = writeln!(out, "  {:<12} streams: {}", "", streams.join("; "));
            }
            let _ = writeln!(out, "  {:<12} traffic: {}", "", traffic.join(", "));
            let _ = writeln!(out, "  {:<12} utilisation: {}", "", util.join(", "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_within_a_bucket() {
        let mut h = Hist::default();
        for ms in 1..=100 {
            h.add(ms as f64);
        }
        let p50 = h.percentile(0.5);
        assert!((50.0..=51.5).contains(&p50), "{p50}");
        h.add(f64::INFINITY);
        assert_eq!(h.percentile(1.0), -1.0, "a failure is infinitely late");
    }

    #[test]
    fn requests_are_billed_by_route_cost_on_the_fleets_prices() {
        let w = fleet_faults::workload(Duration::from_secs(10), 10.0, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut req = fleet_faults::Schedule::new(10.0, Duration::from_secs(1), 1)
            .next()
            .unwrap_or_else(|| panic!("a request"));
        req.region = 0; // eu
        req.model = 0;
        (req.tokens, req.bytes) = ((400, 150), (1_800, 1_000));
        // edge-eu, in eu, per use: 0.00002 + 0.4 × 0.00005 + 0.15 × 0.0002; no egress.
        let edge = w.bill(0, &req, 17_000);
        assert!((edge.usage - 0.00007).abs() < 1e-12, "{edge:?}");
        assert_eq!(edge.egress, 0.0);
        // gpu, in us, provisioned: no usage; 2,800 bytes eu ↔ us at 0.02 USD/GB.
        let gpu = w.bill(2, &req, 45_000);
        assert_eq!(gpu.usage, 0.0);
        assert!((gpu.egress - 2_800.0 * 0.02 / 1e9).abs() < 1e-15, "{gpu:?}");
        // batch: 0.9 USD per GPU-hour of the 225 ms served.
        let batch = w.bill(3, &req, 225_000);
        assert!(
            (batch.usage - 0.9 * 0.225 / 3600.0).abs() < 1e-12,
            "{batch:?}"
        );
        // Capacity: 2 replicas × 4 USD per hour, over a 10 s phase.
        let capacity = w.capacity_usd(&w.phases[0]);
        assert!((capacity - 8.0 / 360.0).abs() < 1e-12, "{capacity}");
    }

    #[test]
    fn downtime_and_own_faults_within_a_window() {
        let w = fleet_faults::workload(Duration::from_secs(1), 10.0, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        // The GPU's endpoint 0 is down in phase 3 (2 s..3 s).
        assert_eq!(w.down_us(2, 0, 1_500_000, 2_500_000), 500_000);
        assert_eq!(w.down_us(2, 1, 1_500_000, 2_500_000), 0);
        assert_eq!(w.own_faults(2, 0, 2_000_000, 3_000_000), vec![1]);
        assert!(w.own_faults(2, 0, 0, 2_000_000).is_empty());
        // A pool-wide slowdown is no endpoint's own.
        assert!(w.own_faults(0, 0, 1_000_000, 2_000_000).is_empty());
    }

    #[test]
    fn faults_slow_and_refuse_only_in_their_window() {
        let w = fleet_faults::workload(Duration::from_secs(1), 10.0, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.service_us(0, 0.0, 0), 15_000);
        assert_eq!(w.service_us(0, 0.0, 1_500_000), 150_000);
        assert_eq!(w.service_us(0, 1.0, 3_000_000), 20_000);
        assert!(!w.is_down(2, 0, 1_999_999));
        assert!(w.is_down(2, 0, 2_000_000));
        assert!(!w.is_down(2, 1, 2_500_000));
    }
}
