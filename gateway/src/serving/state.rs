//! Live measurements of the fleet: per pool and per endpoint, the observed service time
//! (EWMA), requests in flight, and whether an endpoint is marked down after a failure.
//!
//! The request path reads and writes these with atomics only; nothing here takes a lock that
//! a reload or a metrics scrape could hold. The compiled `RoutingTable` holds none of it: it
//! is pure data. [`Fleet::attach`] builds the [`Live`] state of a table (indexed like the
//! table: pool id, endpoint index) from the [`Fleet`] registry by pool and endpoint name, so
//! state carries over a reload for every pool and endpoint that keeps its name. The registry
//! (behind a mutex) is touched only when a table is attached, never on the request path;
//! `crate::serving::Serving` publishes a table and its `Live` together.

use crate::policy::compile::{PoolId, RoutingTable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use super::budget::RetryBudget;

/// Tokens per request a pool is assumed to use before any answer is measured.
pub const PRIOR_INPUT_TOKENS: f64 = 500.0;
pub const PRIOR_OUTPUT_TOKENS: f64 = 200.0;
pub use crate::policy::compile::Ejection;

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Smoothing: a slower sample is taken at once (a peak EWMA, as in Finagle's and Linkerd's
/// balancers), faster ones pull the estimate down slowly, so a pool that starts to struggle
/// is avoided after its first slow answer and trusted again only gradually.
const ALPHA_UP: f64 = 1.0;
const ALPHA_DOWN: f64 = 0.05;

/// Time constant of the downward step for sparse samples: a sample that arrives `gap` ms
/// after the previous one weighs at least `1 − e^(−gap/τ)`, so an endpoint probed rarely
/// (because it was slow) is believed when its probe comes back fast.
const SPARSE_TAU_MS: f64 = 1000.0;

fn ewma_update(cell: &AtomicU64, sample_us: u64, gap_ms: u64) {
    // A lost update under contention only drops one sample; no loop needed for that, but
    // fetch_update keeps the value consistent.
    let down = ALPHA_DOWN.max(1.0 - (-(gap_ms as f64) / SPARSE_TAU_MS).exp());
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let old_f = old as f64;
        let s = sample_us as f64;
        let alpha = if s > old_f { ALPHA_UP } else { down };
        Some((old_f + alpha * (s - old_f)).max(1.0) as u64)
    });
}

/// Weight of a new round-trip sample (from a health probe): the network path changes in
/// steps (a route flap, a relay), not gradually, so a few probes should be enough to follow.
const RTT_ALPHA: f64 = 0.5;

fn rtt_update(cell: &AtomicU64, sample: Duration) {
    let s = (sample.as_micros() as u64).max(1);
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            s
        } else {
            ((old as f64) + RTT_ALPHA * (s as f64 - old as f64)).max(1.0) as u64
        })
    });
}

fn rtt_of(cell: &AtomicU64) -> Option<Duration> {
    match cell.load(Ordering::Relaxed) {
        0 => None,
        us => Some(Duration::from_micros(us)),
    }
}

/// A pool whose estimate alone keeps it from a tier's requests gets one real request as a
/// probe at most this often, when its estimate has not been refreshed for as long (see
/// `route::probe_instead_of_shed`).
pub const PROBE_EVERY_MS: u64 = 1000;

/// Samples needed before a live estimate replaces the policy's baseline `service_time`.
pub const MIN_SAMPLES: u64 = 5;
/// An estimate that has seen no sample for longer than this starts to decay towards its
/// baseline (only while nothing is in flight), so that a pool or endpoint that was avoided
/// for being slow is probed again now and then and can win its traffic back.
const IDLE_GRACE_MS: u64 = 500;
/// Time constant of that decay, for pools (a probe of a pool is a whole request that may
/// miss its deadline, so pools are probed less eagerly) and for endpoints.
const POOL_IDLE_DECAY_MS: f64 = 3000.0;
const ENDPOINT_IDLE_DECAY_MS: f64 = 1000.0;

/// The estimate to route on: the baseline until [`MIN_SAMPLES`] exist, then the EWMA —
/// decayed towards the baseline when idle (nothing in flight, no recent sample).
fn effective_us(
    (ewma, baseline, samples, last_ms): (u64, u64, u64, u64),
    in_flight: u32,
    now: u64,
    tau_ms: f64,
) -> u64 {
    if samples < MIN_SAMPLES {
        return baseline;
    }
    let idle = now.saturating_sub(last_ms);
    if ewma <= baseline || in_flight > 0 || idle <= IDLE_GRACE_MS {
        return ewma;
    }
    let w = (-((idle - IDLE_GRACE_MS) as f64) / tau_ms).exp();
    baseline + ((ewma - baseline) as f64 * w) as u64
}

/// Take one in-flight slot if fewer than `limit` are taken (compare-and-swap, so a burst
/// cannot overshoot).
fn try_take(cell: &AtomicU32, limit: u32) -> bool {
    cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        (v < limit).then_some(v + 1)
    })
    .is_ok()
}

fn give_back(cell: &AtomicU32) {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
}

/// Start times of attempts in flight that a pool keeps, to see one that is overdue.
const TRACKED: usize = 16;
/// An attempt outstanding for more than 1.5× the (peak) estimate is evidence that the
/// service time jumped (the answers that would show it have not come back yet) …
const OVERDUE_AFTER_HALVES: u64 = 3;
/// … and the pool is then taken to be at least this many times its oldest attempt's age.
const OVERDUE_FACTOR: u64 = 4;

/// Live state of one pool.
#[derive(Debug)]
pub struct PoolState {
    ewma_us: AtomicU64,
    baseline_us: AtomicU64,
    samples: AtomicU64,
    last_sample_ms: AtomicU64,
    in_flight: AtomicU32,
    /// `start ms + 1` of up to [`TRACKED`] attempts in flight; 0 = free slot.
    started: [AtomicU64; TRACKED],
    /// Tokens per request, for per-token prices (`route::tokens`).
    pub tokens: TokenAverage,
    /// Answer bytes per request, for egress prices (`route::cost`).
    pub answer_bytes: Average,
    /// Streamed answers: time to first token and per output token (`StreamTimes`).
    pub stream: StreamTimes,
    /// What the pool has cost since start, as the bill shows it (`observe::spend`).
    pub spend: Spend,
    /// Arrivals and the replicas the pool needs (`capacity`).
    pub demand: Demand,
    /// When an attempt last started on the pool (ms; 0: never): a serverless pool idle for
    /// longer than its `idle_timeout` has scaled to zero.
    last_used_ms: AtomicU64,
    /// Measured gateway → pool round trip (µs, EWMA of its endpoints' probes); 0 = none yet.
    rtt_us: AtomicU64,
    /// When a request was last let through as a probe (`route::probe_instead_of_shed`).
    last_probe_ms: AtomicU64,
}

impl PoolState {
    pub(crate) fn new(baseline: Duration) -> Self {
        let us = (baseline.as_micros() as u64).max(1);
        PoolState {
            ewma_us: AtomicU64::new(us),
            baseline_us: AtomicU64::new(us),
            samples: AtomicU64::new(0),
            last_sample_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            started: std::array::from_fn(|_| AtomicU64::new(0)),
            tokens: Default::default(),
            answer_bytes: Average::new(PRIOR_ANSWER_BYTES),
            stream: StreamTimes::default(),
            spend: Spend::default(),
            demand: Demand::default(),
            last_used_ms: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
        }
    }

    /// How long the pool has gone without an attempt at `now` (`None`: never used).
    pub fn idle_ms(&self, now: u64) -> Option<u64> {
        match self.last_used_ms.load(Ordering::Relaxed) {
            0 => None,
            last => Some(now.saturating_sub(last)),
        }
    }

    /// Remember that an attempt started at `now` (a free slot, if any; `None` when all
    /// [`TRACKED`] slots are taken, which only loses precision).
    pub fn track_start(&self, now: u64) -> Option<u8> {
        if self.last_used_ms.load(Ordering::Relaxed) != now {
            self.last_used_ms.store(now.max(1), Ordering::Relaxed);
        }
        (0..TRACKED)
            .find(|&i| {
                self.started[i]
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .map(|i| i as u8)
    }

    pub fn untrack(&self, slot: u8) {
        if let Some(cell) = self.started.get(slot as usize) {
            cell.store(0, Ordering::Release);
        }
    }

    /// Age in ms of the oldest tracked attempt in flight (0 if none).
    pub fn oldest_in_flight_ms(&self, now: u64) -> u64 {
        // Idle pools (the common case for most pools in a decision) skip the slot scan.
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.started
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .min()
            .map_or(0, |oldest| (now + 1).saturating_sub(oldest))
    }

    /// The service time the decision uses now: the policy's baseline until enough samples
    /// exist, then the live EWMA (see [`effective_us`]).
    pub fn service_time(&self) -> Duration {
        self.service_time_at(now_ms())
    }

    pub fn service_time_at(&self, now: u64) -> Duration {
        self.service_time_behind(now, Duration::ZERO)
    }

    /// [`Self::service_time_at`] for a pool `network` away: an attempt's age includes that
    /// round trip, which is not service time, so it is taken out before an attempt is judged
    /// overdue.
    #[inline]
    pub fn service_time_behind(&self, now: u64, network: Duration) -> Duration {
        let estimate = effective_us(
            (
                self.ewma_us.load(Ordering::Relaxed),
                self.baseline_us.load(Ordering::Relaxed),
                self.samples.load(Ordering::Relaxed),
                self.last_sample_ms.load(Ordering::Relaxed),
            ),
            self.in_flight.load(Ordering::Relaxed),
            now,
            POOL_IDLE_DECAY_MS,
        );
        // Peak sensitivity before any slow answer is back: an attempt far overdue means the
        // pool got slower now, not when its answer finally arrives.
        let age_us = self
            .oldest_in_flight_ms(now)
            .saturating_mul(1000)
            .saturating_sub(network.as_micros() as u64);
        let estimate = if age_us.saturating_mul(2) > OVERDUE_AFTER_HALVES * estimate {
            estimate.max(age_us * OVERDUE_FACTOR)
        } else {
            estimate
        };
        Duration::from_micros(estimate)
    }

    /// The raw EWMA of observed service times (seeded by the baseline).
    pub fn ewma(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn baseline(&self) -> Duration {
        Duration::from_micros(self.baseline_us.load(Ordering::Relaxed))
    }

    fn set_baseline(&self, baseline: Duration) {
        self.baseline_us
            .store((baseline.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// The measured gateway → pool round trip, once a probe has measured it.
    pub fn rtt(&self) -> Option<Duration> {
        rtt_of(&self.rtt_us)
    }

    /// One round-trip sample of one of the pool's endpoints (a health probe).
    pub fn observe_rtt(&self, rtt: Duration) {
        rtt_update(&self.rtt_us, rtt);
    }

    /// Milliseconds since the last service-time sample (`now` if there never was one).
    pub fn sample_age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_sample_ms.load(Ordering::Relaxed))
    }

    /// Claim the pool's probe slot: true for at most one caller per [`PROBE_EVERY_MS`].
    pub fn claim_probe(&self, now: u64) -> bool {
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= PROBE_EVERY_MS)
            && self
                .last_probe_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn observe(&self, upstream: Duration) {
        self.observe_at(upstream, now_ms());
    }

    /// [`Self::observe`] at a given time (the simulator's virtual clock).
    pub fn observe_at(&self, upstream: Duration, now: u64) {
        let gap = now.saturating_sub(self.last_sample_ms.swap(now, Ordering::Relaxed));
        ewma_update(&self.ewma_us, upstream.as_micros() as u64, gap);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request in flight without a limit (the batch dispatcher sizes itself).
    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request in flight if the pool has fewer than `limit`.
    pub fn try_acquire(&self, limit: u32) -> bool {
        try_take(&self.in_flight, limit)
    }

    pub fn release(&self) {
        give_back(&self.in_flight);
    }
}

/// A model server's own load, as last scraped from its metrics (`upstream::scrape`):
/// requests waiting and running, and KV-cache use. Written by the scraper, read by the
/// router with atomic loads; stale after the pool's `server_metrics.max_age`.
#[derive(Debug, Default)]
pub struct ServerLoad {
    waiting: AtomicU32,
    running: AtomicU32,
    /// KV-cache use in millionths (0 to 1 000 000).
    kv_ppm: AtomicU32,
    /// This gateway's in-flight count on the endpoint when the scrape answered: requests
    /// sent since are not in the server's figures yet.
    own_at_scrape: AtomicU32,
    /// When scraped (`now_ms() + 1`; 0: never).
    at_ms: AtomicU64,
}

/// One scrape's figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSample {
    pub waiting: u32,
    pub running: u32,
    pub kv_cache: f64,
}

impl ServerLoad {
    pub fn set(&self, sample: LoadSample, own_in_flight: u32, now_ms: u64) {
        self.own_at_scrape.store(own_in_flight, Ordering::Relaxed);
        self.waiting.store(sample.waiting, Ordering::Relaxed);
        self.running.store(sample.running, Ordering::Relaxed);
        let ppm = (sample.kv_cache.clamp(0.0, 1.0) * 1e6) as u32;
        self.kv_ppm.store(ppm, Ordering::Relaxed);
        self.at_ms.store(now_ms + 1, Ordering::Release);
    }

    /// The last sample, if taken within `max_age` of `now_ms`.
    pub fn fresh(&self, now_ms: u64, max_age: Duration) -> Option<LoadSample> {
        let at = self.at_ms.load(Ordering::Acquire);
        if at == 0 || now_ms.saturating_sub(at - 1) > max_age.as_millis() as u64 {
            return None;
        }
        Some(LoadSample {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_cache: f64::from(self.kv_ppm.load(Ordering::Relaxed)) / 1e6,
        })
    }
}

/// Live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    ewma_us: AtomicU64,
    baseline_us: AtomicU64,
    samples: AtomicU64,
    last_sample_ms: AtomicU64,
    in_flight: AtomicU32,
    down_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejections in a row without a success since; non-zero after a back-off ends means
    /// half-open: one probe request at a time until one succeeds.
    ejections: AtomicU32,
    probing: AtomicBool,
    /// Active health checks: the verdict and the streaks that move it.
    healthy: AtomicBool,
    health_ok_streak: AtomicU32,
    health_fail_streak: AtomicU32,
    /// Measured gateway → endpoint round trip (µs, EWMA of health probes); 0 = none yet.
    rtt_us: AtomicU64,
    /// The server's own load, when the pool scrapes it (`server_metrics:`).
    pub server: ServerLoad,
}

/// What [`EndpointState::health_result`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl EndpointState {
    fn new(baseline: Duration) -> Self {
        let us = (baseline.as_micros() as u64).max(1);
        EndpointState {
            ewma_us: AtomicU64::new(us),
            baseline_us: AtomicU64::new(us),
            samples: AtomicU64::new(0),
            last_sample_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            health_ok_streak: AtomicU32::new(0),
            health_fail_streak: AtomicU32::new(0),
            rtt_us: AtomicU64::new(0),
            server: ServerLoad::default(),
        }
    }

    /// The placeholder of an endpoint whose host name has never resolved: not healthy, so
    /// never up and never chosen (health checks skip it; see `policy::resolve`).
    pub fn unresolved() -> Self {
        let state = Self::new(Duration::from_millis(50));
        state.healthy.store(false, Ordering::Relaxed);
        state
    }

    /// Not ejected and not failing its health checks.
    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms && self.healthy.load(Ordering::Relaxed)
    }

    /// Up, below `limit` in flight, and not a half-open endpoint whose probe is out.
    pub fn is_available(&self, now_ms: u64, limit: u32) -> bool {
        self.is_up(now_ms)
            && self.in_flight.load(Ordering::Relaxed) < limit
            && !(self.ejections.load(Ordering::Relaxed) > 0 && self.probing.load(Ordering::Relaxed))
    }

    /// Mark the endpoint down until `now + backoff` (the batch dispatcher's connect failures).
    pub fn mark_down(&self, now_ms: u64, backoff: Duration) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.down_until_ms
            .fetch_max(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
    }

    /// A connect failure: certain, so the endpoint is ejected at once. Returns the back-off.
    pub fn connect_failed(&self, now_ms: u64, ejection: &Ejection) -> Duration {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.eject(now_ms, ejection)
    }

    /// A 5xx answer or a timeout: ejects after `ejection.after` in a row, or at once when
    /// it was the half-open probe. Returns the back-off when it ejected.
    pub fn failed(&self, now_ms: u64, ejection: &Ejection) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let half_open = self.ejections.load(Ordering::Relaxed) > 0;
        (half_open || n >= ejection.after.max(1)).then(|| self.eject(now_ms, ejection))
    }

    fn eject(&self, now_ms: u64, ejection: &Ejection) -> Duration {
        let k = self.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = ejection.backoff(k);
        self.down_until_ms
            .fetch_max(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
        self.probing.store(false, Ordering::Relaxed);
        backoff
    }

    /// A good answer: the failure streak ends and a half-open endpoint is re-admitted.
    pub fn mark_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Ejections in a row (the exponent of the next back-off).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// When the current ejection ends (process-clock ms; `<= now` when not ejected).
    pub fn ejected_until_ms(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// One active health-check result, with the pool's thresholds.
    pub fn health_result(
        &self,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> HealthChange {
        if ok {
            self.health_fail_streak.store(0, Ordering::Relaxed);
            let n = self.health_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.healthy() && n >= healthy_after.max(1) {
                self.healthy.store(true, Ordering::Relaxed);
                return HealthChange::BecameHealthy;
            }
        } else {
            self.health_ok_streak.store(0, Ordering::Relaxed);
            let n = self.health_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if self.healthy() && n >= unhealthy_after.max(1) {
                self.healthy.store(false, Ordering::Relaxed);
                return HealthChange::BecameUnhealthy;
            }
        }
        HealthChange::None
    }

    /// Forget active health checks (the pool no longer has any).
    pub fn clear_health(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.health_ok_streak.store(0, Ordering::Relaxed);
        self.health_fail_streak.store(0, Ordering::Relaxed);
    }

    /// The latency P2C compares: the (idle-decayed) EWMA.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us(now_ms()))
    }

    fn latency_us(&self, now: u64) -> u64 {
        effective_us(
            (
                self.ewma_us.load(Ordering::Relaxed),
                self.baseline_us.load(Ordering::Relaxed),
                // No baseline phase inside a pool: a new endpoint compared on the policy's
                // baseline against a measured sibling could starve; its EWMA starts at the
                // baseline and its first samples weigh heavily anyway (sparse-sample α).
                MIN_SAMPLES,
                self.last_sample_ms.load(Ordering::Relaxed),
            ),
            self.in_flight.load(Ordering::Relaxed),
            now,
            ENDPOINT_IDLE_DECAY_MS,
        )
    }

    /// The raw EWMA of observed service times.
    pub fn ewma(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Power-of-two-choices score: expected latency times the queue it would join.
    pub fn load_score(&self) -> u64 {
        self.load_score_at(now_ms(), None)
    }

    /// `server_max_age`: the pool scrapes its servers' load (metrics older are stale).
    pub fn load_score_at(&self, now: u64, server_max_age: Option<Duration>) -> u64 {
        // Service time plus the endpoint's own network round trip (two endpoints of a pool
        // can sit at different distances), times the queue it would join.
        (self.latency_us(now) + self.rtt_us.load(Ordering::Relaxed))
            .saturating_mul(u64::from(self.queue_at(now, server_max_age)) + 1)
    }

    /// The queue a request would join: the server's own (running + waiting: every
    /// gateway's requests) when scraped within `server_max_age`, plus what this gateway sent
    /// since the scrape; this gateway's in-flight count when there is no fresh scrape.
    pub fn queue_at(&self, now: u64, server_max_age: Option<Duration>) -> u32 {
        let own = self.in_flight.load(Ordering::Relaxed);
        match server_max_age.and_then(|age| self.server.fresh(now, age)) {
            Some(load) => {
                let since = own.saturating_sub(self.server.own_at_scrape.load(Ordering::Relaxed));
                (load.waiting + load.running + since).max(own)
            }
            None => own,
        }
    }

    /// The measured gateway → endpoint round trip, once a health probe has measured it.
    pub fn rtt(&self) -> Option<Duration> {
        rtt_of(&self.rtt_us)
    }

    /// One round-trip sample from a health probe.
    pub fn observe_rtt(&self, rtt: Duration) {
        rtt_update(&self.rtt_us, rtt);
    }

    pub fn observe(&self, upstream: Duration) {
        self.observe_at(upstream, now_ms());
    }

    /// [`Self::observe`] at a given time (the simulator's virtual clock).
    pub fn observe_at(&self, upstream: Duration, now: u64) {
        let gap = now.saturating_sub(self.last_sample_ms.swap(now, Ordering::Relaxed));
        ewma_update(&self.ewma_us, upstream.as_micros() as u64, gap);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request in flight without a limit (the batch dispatcher sizes itself).
    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Take a slot if fewer than `limit` are in flight; a half-open endpoint takes only its
    /// one probe. Atomic, so concurrent requests cannot overshoot the limit.
    pub fn try_acquire(&self, limit: u32) -> bool {
        let half_open = self.ejections.load(Ordering::Relaxed) > 0;
        if half_open && self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        let ok = try_take(&self.in_flight, limit);
        if !ok && half_open {
            self.probing.store(false, Ordering::Release);
        }
        ok
    }

    pub fn release(&self) {
        give_back(&self.in_flight);
        if self.probing.load(Ordering::Relaxed) {
            self.probing.store(false, Ordering::Relaxed);
        }
    }
}

/// The live state of one routing table, indexed like it: a pool's by its `PoolId`, an
/// endpoint's by its pool and its index in `Pool::endpoints`. Built by [`Fleet::attach`];
/// published beside its table (`crate::serving::Serving`), so one pointer load gives both.
pub struct Live {
    pools: Vec<Arc<PoolState>>,
    endpoints: Vec<Vec<Arc<EndpointState>>>,
    /// The retry budget's shared bucket (from the `Fleet`: it survives reloads).
    pub budget: Arc<RetryBudget>,
}

impl Live {
    /// The state of pool `pool` (an index, as the table's `pools`).
    pub fn pool(&self, pool: PoolId) -> &Arc<PoolState> {
        &self.pools[pool as usize]
    }

    /// The state of endpoint `ep` of pool `pool` (indices, as the table's).
    pub fn endpoint(&self, pool: PoolId, ep: usize) -> &Arc<EndpointState> {
        &self.endpoints[pool as usize][ep]
    }

    /// The states of every endpoint of pool `pool`, in the order of `Pool::endpoints`.
    pub fn endpoints(&self, pool: PoolId) -> &[Arc<EndpointState>] {
        &self.endpoints[pool as usize]
    }
}

/// Registry of live state by pool name and endpoint, used when a table is attached.
#[derive(Default)]
pub struct Fleet {
    pools: Mutex<HashMap<String, Arc<PoolState>>>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    /// The retry budget: shared by every request, kept across reloads.
    retry_budget: Arc<RetryBudget>,
    /// Where this instance runs (`--region` / `SWITCHYARD_REGION`): a property of the
    /// process, not of the policy, so it is kept here and applied to every compiled table.
    gateway_region: Mutex<Option<String>>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet::default())
    }

    /// The state of pool `name`, created with `baseline` as its first estimate if new; an
    /// existing pool keeps its measurements and takes the (possibly changed) baseline.
    pub fn pool(&self, name: &str, baseline: Duration) -> Arc<PoolState> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let state = pools
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PoolState::new(baseline)))
            .clone();
        state.set_baseline(baseline);
        state
    }

    /// The state of endpoint `endpoint` of pool `pool` (baseline: the pool's).
    pub fn endpoint(&self, pool: &str, endpoint: &str) -> Arc<EndpointState> {
        let baseline = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools
                .get(pool)
                .map(|p| p.baseline())
                .unwrap_or(Duration::from_millis(50))
        };
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let state = eps
            .entry((pool.to_string(), endpoint.to_string()))
            .or_insert_with(|| Arc::new(EndpointState::new(baseline)))
            .clone();
        state
            .baseline_us
            .store((baseline.as_micros() as u64).max(1), Ordering::Relaxed);
        state
    }

    /// The live state of `table`, by pool and endpoint name: a pool or endpoint this fleet
    /// has seen keeps its measurements (and takes the table's baseline), a new one starts
    /// from its pool's `service_time`; an endpoint whose host name never resolved gets a
    /// fresh [`EndpointState::unresolved`] placeholder.
    pub fn attach(&self, table: &RoutingTable) -> Live {
        let mut pools = Vec::with_capacity(table.pools.len());
        let mut endpoints = Vec::with_capacity(table.pools.len());
        for pool in &table.pools {
            pools.push(self.pool(&pool.name, pool.service_time));
            endpoints.push(
                pool.endpoints
                    .iter()
                    .map(|ep| match ep.resolved {
                        true => self.endpoint(&pool.name, &ep.name),
                        false => Arc::new(EndpointState::unresolved()),
                    })
                    .collect(),
            );
        }
        Live {
            pools,
            endpoints,
            budget: self.retry_budget(),
        }
    }

    pub fn retry_budget(&self) -> Arc<RetryBudget> {
        self.retry_budget.clone()
    }

    /// Name the region this instance runs in, overriding the policy's `gateway_region`
    /// (checked against the policy's regions when a table is compiled).
    pub fn set_gateway_region(&self, region: Option<String>) {
        *self
            .gateway_region
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = region;
    }

    /// The instance's region as given on the command line or in the environment.
    pub fn gateway_region(&self) -> Option<String> {
        self.gateway_region
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a pool has cost since the process started, in nano-USD, as its bill shows it:
/// capacity (a provisioned pool's replica-hours, accrued with time by `observe::spend`),
/// usage (what each request was billed) and egress; and its utilisation.
#[derive(Debug, Default)]
pub struct Spend {
    capacity_nusd: AtomicU64,
    usage_nusd: AtomicU64,
    egress_nusd: AtomicU64,
    /// Requests billed (answered, or abandoned after the pool started on them).
    requests: AtomicU64,
    /// In flight over concurrency, averaged over about a minute (f64 bits).
    utilisation: AtomicU64,
}

/// A pool's demand and the replicas it needs: arrivals counted on the request path (one
/// atomic add), the rest published by the capacity meter (`capacity::CapacityMeter`) for the
/// admin API and the KEDA scaler to read.
#[derive(Debug)]
pub struct Demand {
    arrivals: AtomicU64,
    /// Desired replicas ([`Demand::UNKNOWN`]: not computed yet).
    desired: AtomicU32,
    /// Arrivals per second now, and forecast `scale_up_time` ahead, across all instances
    /// (f64 bits).
    rate: AtomicU64,
    forecast: AtomicU64,
    /// Requests that found the pool at zero replicas and activated it.
    activations: AtomicU64,
    /// Requests sent elsewhere (or queued or shed) because the pool was at zero replicas,
    /// where they would have gone warm.
    displaced: AtomicU64,
}

impl Default for Demand {
    fn default() -> Self {
        Demand {
            arrivals: AtomicU64::new(0),
            desired: AtomicU32::new(Demand::UNKNOWN),
            rate: AtomicU64::new(0),
            forecast: AtomicU64::new(0),
            activations: AtomicU64::new(0),
            displaced: AtomicU64::new(0),
        }
    }
}

impl Demand {
    pub const UNKNOWN: u32 = u32::MAX;

    /// A request was sent to the pool. True when it found the pool at zero replicas: the
    /// pool is then asked for one at once (the meter confirms it on its next round).
    pub fn arrive(&self) -> bool {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        if self.desired.load(Ordering::Relaxed) == 0
            && self
                .desired
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.activations.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    pub fn activations(&self) -> u64 {
        self.activations.load(Ordering::Relaxed)
    }

    /// One request went elsewhere because the pool was at zero ([`Demand::displaced`]).
    pub fn displace(&self) {
        self.displaced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn displaced(&self) -> u64 {
        self.displaced.load(Ordering::Relaxed)
    }

    /// Desired replicas (`None`: not computed yet).
    pub fn desired(&self) -> Option<u32> {
        Some(self.desired.load(Ordering::Relaxed)).filter(|d| *d != Demand::UNKNOWN)
    }

    /// The rate now and the forecast rate, per second.
    pub fn rates(&self) -> (f64, f64) {
        (
            f64::from_bits(self.rate.load(Ordering::Relaxed)),
            f64::from_bits(self.forecast.load(Ordering::Relaxed)),
        )
    }

    /// Publish a computation. An activation that lands between the meter's count and this
    /// store is overwritten, and restored by the next round, which counts its arrival.
    pub fn publish(&self, desired: u32, rate: f64, forecast: f64) {
        self.desired.store(desired, Ordering::Relaxed);
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
        self.forecast.store(forecast.to_bits(), Ordering::Relaxed);
    }
}

/// A copy of a pool's [`Spend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SpendTotals {
    pub capacity_usd: f64,
    pub usage_usd: f64,
    pub egress_usd: f64,
    pub requests: u64,
    pub utilisation: f64,
}

impl Spend {
    /// One request billed `usage_nusd` and `egress_nusd`.
    pub fn bill(&self, usage_nusd: u64, egress_nusd: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.usage_nusd.fetch_add(usage_nusd, Ordering::Relaxed);
        self.egress_nusd.fetch_add(egress_nusd, Ordering::Relaxed);
    }

    /// Capacity paid for over a stretch of time.
    pub fn accrue(&self, nusd: u64) {
        self.capacity_nusd.fetch_add(nusd, Ordering::Relaxed);
    }

    /// Fold a utilisation sample in, with weight `alpha`.
    pub fn sample_utilisation(&self, sample: f64, alpha: f64) {
        let old = f64::from_bits(self.utilisation.load(Ordering::Relaxed));
        let new = old + alpha * (sample - old);
        self.utilisation.store(new.to_bits(), Ordering::Relaxed);
    }

    pub fn totals(&self) -> SpendTotals {
        let usd = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        SpendTotals {
            capacity_usd: usd(&self.capacity_nusd),
            usage_usd: usd(&self.usage_nusd),
            egress_usd: usd(&self.egress_nusd),
            requests: self.requests.load(Ordering::Relaxed),
            utilisation: f64::from_bits(self.utilisation.load(Ordering::Relaxed)),
        }
    }
}

/// What a pool's streamed answers take (EWMA, α = 1/16, seconds): the server's time to the
/// first streamed event (from the request sent, less the network round trip) and the mean
/// gap between events after it. Until a stream is measured the decision falls back on the
/// pool's service-time estimate for the first token and takes no view of the rest.
#[derive(Debug)]
pub struct StreamTimes {
    ttft: Average,
    tpot: Average,
    ttft_samples: AtomicU32,
    tpot_samples: AtomicU32,
}

impl Default for StreamTimes {
    fn default() -> Self {
        StreamTimes {
            ttft: Average::new(0.0),
            tpot: Average::new(0.0),
            ttft_samples: AtomicU32::new(0),
            tpot_samples: AtomicU32::new(0),
        }
    }
}

impl StreamTimes {
    /// One stream's server time to first token.
    pub fn observe_ttft(&self, ttft: Duration) {
        Self::observe(&self.ttft, &self.ttft_samples, ttft);
    }

    /// One stream's mean time per output token.
    pub fn observe_tpot(&self, tpot: Duration) {
        Self::observe(&self.tpot, &self.tpot_samples, tpot);
    }

    fn observe(avg: &Average, samples: &AtomicU32, d: Duration) {
        // The first sample replaces the prior rather than being averaged with nothing.
        if samples.fetch_add(1, Ordering::Relaxed) == 0 {
            avg.0.store(d.as_secs_f64().to_bits(), Ordering::Relaxed);
        } else {
            avg.record(d.as_secs_f64());
        }
    }

    /// The time to first token estimate, once a stream was measured.
    pub fn ttft(&self) -> Option<Duration> {
        Self::get(&self.ttft, &self.ttft_samples)
    }

    /// The time per output token estimate, once a stream of two events or more was measured.
    pub fn tpot(&self) -> Option<Duration> {
        Self::get(&self.tpot, &self.tpot_samples)
    }

    fn get(avg: &Average, samples: &AtomicU32) -> Option<Duration> {
        (samples.load(Ordering::Relaxed) > 0)
            .then(|| Duration::from_secs_f64(avg.get().clamp(0.0, 3600.0)))
    }
}

/// Answer bytes per request a pool is assumed to send before any answer is measured.
pub const PRIOR_ANSWER_BYTES: f64 = 2048.0;

/// A moving average (EWMA, α = 1/16) stored as f64 bits in an atomic: read by every routing
/// estimate, written once per answer; a lost update under contention only slows it.
#[derive(Debug)]
pub struct Average(AtomicU64);

impl Average {
    pub fn new(prior: f64) -> Self {
        Average(AtomicU64::new(prior.to_bits()))
    }

    pub fn record(&self, v: f64) {
        let old = f64::from_bits(self.0.load(Ordering::Relaxed));
        let new = old + TokenAverage::ALPHA * (v - old);
        self.0.store(new.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A pool's moving average of input and output tokens per request (EWMA, α = 1/16),
/// stored as f64 bits in atomics: read by every routing estimate, written once per answer.
#[derive(Debug)]
pub struct TokenAverage {
    input: AtomicU64,
    output: AtomicU64,
}

impl Default for TokenAverage {
    fn default() -> Self {
        TokenAverage {
            input: AtomicU64::new(PRIOR_INPUT_TOKENS.to_bits()),
            output: AtomicU64::new(PRIOR_OUTPUT_TOKENS.to_bits()),
        }
    }
}

impl TokenAverage {
    const ALPHA: f64 = 1.0 / 16.0;

    /// Fold one answer's tokens in. Lost updates under contention only slow the average.
    pub fn record(&self, input: u64, output: u64) {
        let fold = |cell: &AtomicU64, v: u64| {
            let old = f64::from_bits(cell.load(Ordering::Relaxed));
            let new = old + Self::ALPHA * (v as f64 - old);
            cell.store(new.to_bits(), Ordering::Relaxed);
        };
        fold(&self.input, input);
        fold(&self.output, output);
    }

    /// (input, output) tokens per request.
    pub fn get(&self) -> (f64, f64) {
        (
            f64::from_bits(self.input.load(Ordering::Relaxed)),
            f64::from_bits(self.output.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_rises_fast_and_decays_slowly() {
        let p = PoolState::new(Duration::from_millis(10));
        p.observe(Duration::from_millis(110));
        let up = p.ewma();
        assert!(up >= Duration::from_millis(39), "{up:?}");
        p.observe(Duration::from_millis(10));
        let down = p.ewma();
        assert!(down < up && down > Duration::from_millis(30), "{down:?}");
    }

    #[test]
    fn state_is_shared_by_name() {
        let fleet = Fleet::default();
        let a = fleet.pool("gpu", Duration::from_millis(5));
        a.observe(Duration::from_millis(100));
        let b = fleet.pool("gpu", Duration::from_millis(5));
        assert_eq!(a.ewma(), b.ewma());
        let e1 = fleet.endpoint("gpu", "127.0.0.1:1");
        e1.mark_down(now_ms(), Duration::from_secs(60));
        assert!(!fleet.endpoint("gpu", "127.0.0.1:1").is_up(now_ms()));
        assert!(fleet.endpoint("gpu", "127.0.0.1:2").is_up(now_ms()));
    }

    #[test]
    fn baseline_until_enough_samples_then_live() {
        let p = PoolState::new(Duration::from_millis(10));
        for _ in 0..MIN_SAMPLES - 1 {
            p.observe(Duration::from_millis(100));
        }
        let now = now_ms();
        p.acquire(); // in flight: no idle decay
        assert_eq!(p.service_time_at(now), Duration::from_millis(10));
        p.observe(Duration::from_millis(100));
        assert!(p.service_time_at(now) > Duration::from_millis(50));
        p.release();
        // Idle for a long time: decays back towards the baseline, so it is probed again.
        let later = p.service_time_at(now + 20_000);
        assert!(later < Duration::from_millis(12), "{later:?}");
    }

    #[test]
    fn ejection_backs_off_exponentially_and_half_open_takes_one_probe() {
        let e = EndpointState::new(Duration::from_millis(10));
        let ej = Ejection {
            after: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        assert_eq!(e.failed(0, &ej), None);
        assert_eq!(e.failed(0, &ej), None);
        assert_eq!(e.failed(0, &ej), Some(Duration::from_secs(1)));
        assert!(!e.is_up(500));
        assert!(e.is_up(1000));
        // Half-open: one probe at a time.
        assert!(e.try_acquire(10));
        assert!(!e.try_acquire(10));
        assert!(!e.is_available(1000, 10));
        // The probe fails: ejected again at once, for twice as long.
        assert_eq!(e.failed(1000, &ej), Some(Duration::from_secs(2)));
        e.release();
        assert!(!e.is_up(2999));
        assert_eq!(e.connect_failed(3000, &ej), Duration::from_secs(4));
        assert_eq!(
            e.connect_failed(3000, &ej),
            Duration::from_secs(5),
            "capped"
        );
        e.mark_success();
        assert_eq!((e.ejections(), e.consecutive_failures()), (0, 0));
        assert!(
            e.try_acquire(10) && e.try_acquire(10),
            "closed again: no probe limit"
        );
    }

    #[test]
    fn acquisition_never_overshoots_the_limit() {
        let e = Arc::new(EndpointState::new(Duration::from_millis(10)));
        let taken = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (e, taken) = (e.clone(), taken.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if e.try_acquire(5) {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        assert_eq!(taken.load(Ordering::Relaxed), 5);
        assert_eq!(e.in_flight(), 5);
    }

    #[test]
    fn health_thresholds_move_the_verdict() {
        let e = EndpointState::new(Duration::from_millis(10));
        assert_eq!(e.health_result(false, 2, 2), HealthChange::None);
        assert_eq!(e.health_result(false, 2, 2), HealthChange::BecameUnhealthy);
        assert!(!e.is_up(0));
        assert_eq!(e.health_result(true, 2, 2), HealthChange::None);
        assert_eq!(e.health_result(true, 2, 2), HealthChange::BecameHealthy);
        assert!(e.is_up(0));
    }

    #[test]
    fn the_average_moves_towards_what_answers_use() {
        let avg = TokenAverage::default();
        for _ in 0..200 {
            avg.record(1000, 100);
        }
        let (i, o) = avg.get();
        assert!(
            (i - 1000.0).abs() < 1.0 && (o - 100.0).abs() < 1.0,
            "{i} {o}"
        );
    }
}
