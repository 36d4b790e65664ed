//! The status page's history: rates, percentiles, the traffic split and spend need it, so
//! the pipeline calls [`record`] once per request (from its per-request record) and this
//! module keeps a small in-process aggregate, which `admin::status` renders:
//!
//! * a ring of [`SLOTS`] time slots of [`SLOT_MS`] each (a sliding window of about a
//!   minute) holding, per tier, a request count, a count of answers within the deadline and
//!   a fixed-bucket latency histogram, per pool a request count and the estimated spend,
//!   where each tier's requests were answered from (a pool, the prediction `cache`, the batch
//!   `queue`, or nothing), and the cache's lookups, hits and spend avoided;
//! * totals since start.
//!
//! Queue depth and the oldest job's age come from the gauges the dispatcher refreshes; cache
//! entries and bytes from the cache itself.
//!
//! Recording is atomics only: no lock, no allocation, no hashing (tiers and pools are counted
//! by their index in the policy). A slot is cleared by the first request that enters it
//! again; a request racing with that clear may be lost, which a glance page can afford.
//! Because counts are kept by index, a reload that reorders tiers or pools attributes at most
//! one window of history to the wrong name; Prometheus (`/metrics`) is the record, this is
//! the glance. Policies with more than [`MAX_TIERS`] tiers or [`MAX_POOLS`] pools are
//! summarised for the first ones only.
//!
//! The aggregate is process-wide (one gateway per process is how Switchyard runs).

use crate::cache::Outcome;
use crate::classify::Class;
use crate::policy::compile::PoolId;
use crate::serving::state::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Tiers summarised per policy (the rest are left out of the page).
pub const MAX_TIERS: usize = 16;
/// Pools summarised per policy (the rest are left out of the page).
pub const MAX_POOLS: usize = 32;
/// Slots in the sliding window.
pub const SLOTS: usize = 6;
/// Length of one slot.
pub const SLOT_MS: u64 = 10_000;
/// Latency histogram buckets: four per power of two from 16 µs, so the last bucket starts
/// at about 4.5 minutes and every bucket is at most 25% wide.
const BUCKETS: usize = 96;
/// Spend is accumulated in nano-dollars so that it fits an integer atomic.
pub const NANO: f64 = crate::telemetry::NANO_USD;
/// Columns of the traffic split: one per pool, then answers from the cache, jobs accepted by
/// the queue, and requests nothing answered.
pub const SPLIT: usize = MAX_POOLS + 3;
pub const SPLIT_CACHE: usize = MAX_POOLS;
pub const SPLIT_QUEUE: usize = MAX_POOLS + 1;
pub const SPLIT_NONE: usize = MAX_POOLS + 2;

const fn zeros<const N: usize>() -> [AtomicU64; N] {
    [const { AtomicU64::new(0) }; N]
}

struct TierCell {
    requests: AtomicU64,
    /// Answered 2xx within the request's deadline.
    met: AtomicU64,
    /// 5xx, or no response at all.
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl TierCell {
    const fn new() -> Self {
        TierCell {
            requests: AtomicU64::new(0),
            met: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: zeros::<BUCKETS>(),
        }
    }

    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.met.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for b in &self.latency {
            b.store(0, Ordering::Relaxed);
        }
    }
}

struct Slot {
    /// Which slot of time this holds (`now_ms / SLOT_MS + 1`); 0 when never used.
    epoch: AtomicU64,
    tiers: [TierCell; MAX_TIERS],
    pool_requests: [AtomicU64; MAX_POOLS],
    pool_cost_nusd: [AtomicU64; MAX_POOLS],
    /// Requests by tier and where they were answered from (see [`SPLIT`]).
    split: [[AtomicU64; SPLIT]; MAX_TIERS],
    cache: CacheCells,
}

/// The prediction cache's part of a slot (or of the totals).
pub struct CacheCells {
    /// Lookups that could hit: hits, coalesced waits and misses (not bypasses).
    pub lookups: AtomicU64,
    /// Answered from the cache: hits and coalesced waits.
    pub hits: AtomicU64,
    pub saved_nusd: AtomicU64,
}

impl CacheCells {
    const fn new() -> Self {
        CacheCells {
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            saved_nusd: AtomicU64::new(0),
        }
    }

    fn all(&self) -> [&AtomicU64; 3] {
        [&self.lookups, &self.hits, &self.saved_nusd]
    }

    fn record(&self, outcome: Outcome) {
        if outcome == Outcome::Bypass {
            return;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Hit | Outcome::Coalesced) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Slot {
    const fn new() -> Self {
        Slot {
            epoch: AtomicU64::new(0),
            tiers: [const { TierCell::new() }; MAX_TIERS],
            pool_requests: zeros::<MAX_POOLS>(),
            pool_cost_nusd: zeros::<MAX_POOLS>(),
            split: [const { zeros::<SPLIT>() }; MAX_TIERS],
            cache: CacheCells::new(),
        }
    }

    fn clear(&self) {
        for t in &self.tiers {
            t.clear();
        }
        for a in self.pool_requests.iter().chain(&self.pool_cost_nusd) {
            a.store(0, Ordering::Relaxed);
        }
        for a in self.cache.all() {
            a.store(0, Ordering::Relaxed);
        }
        for row in &self.split {
            for a in row {
                a.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Per-request aggregate behind the status page.
pub struct Aggregate {
    slots: [Slot; SLOTS],
    /// Totals since start (the page reads them directly).
    pub requests: AtomicU64,
    pub tier_requests: [AtomicU64; MAX_TIERS],
    pub tier_met: [AtomicU64; MAX_TIERS],
    /// What requests of each tier were billed (usage and egress), nano-USD.
    pub tier_cost_nusd: [AtomicU64; MAX_TIERS],
    pub pool_requests: [AtomicU64; MAX_POOLS],
    pub pool_cost_nusd: [AtomicU64; MAX_POOLS],
    pub cache: CacheCells,
}

/// The process-wide aggregate the proxy records into.
pub static AGGREGATE: Aggregate = Aggregate::new();

/// Where a request was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The pool that answered (the last one tried).
    Pool(PoolId),
    /// The prediction cache (a hit or a coalesced wait).
    Cache,
    /// The batch queue took it (202 and a job).
    Queue,
    /// Nothing answered it (rejected, shed, failed).
    Nothing,
}

impl Via {
    /// From what the proxy knows at `logging`: the last pool tried, what the cache did, and
    /// whether the decision sent the request to the queue.
    pub fn of(pool: Option<PoolId>, cache: Option<Outcome>, queued: bool) -> Via {
        match (pool, cache) {
            (Some(p), _) => Via::Pool(p),
            (None, Some(Outcome::Hit | Outcome::Coalesced)) => Via::Cache,
            _ if queued => Via::Queue,
            _ => Via::Nothing,
        }
    }
}

/// Record one finished request (called once from the proxy's `logging` phase).
///
/// `via` is where it was answered from, `cache` what the cache did with it, `status` the
/// status sent (0 when none was; 499 when the client went away), `elapsed` its time to the
/// last byte, `judged` the time it is judged on against `Class::objective` (a stream with a
/// time-to-first-token objective: its first token), `spend_usd` what it was billed (the
/// record's usage and egress, as counted in the spend metrics).
#[inline]
pub fn record(
    class: Option<&Class>,
    via: Via,
    cache: Option<Outcome>,
    status: u16,
    elapsed: Duration,
    judged: Duration,
    spend_usd: f64,
) {
    AGGREGATE.record(
        class,
        via,
        cache,
        status,
        elapsed,
        judged,
        spend_usd,
        now_ms(),
    );
}

/// Record spend avoided by an answer from the cache, in nano-USD (called where the proxy
/// counts `switchyard_cost_saved_nanousd_total`).
#[inline]
pub fn record_saved(nusd: u64) {
    AGGREGATE.record_saved(nusd, now_ms());
}

impl Default for Aggregate {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregate {
    pub const fn new() -> Self {
        Aggregate {
            slots: [const { Slot::new() }; SLOTS],
            requests: AtomicU64::new(0),
            tier_requests: zeros::<MAX_TIERS>(),
            tier_met: zeros::<MAX_TIERS>(),
            tier_cost_nusd: zeros::<MAX_TIERS>(),
            pool_requests: zeros::<MAX_POOLS>(),
            pool_cost_nusd: zeros::<MAX_POOLS>(),
            cache: CacheCells::new(),
        }
    }

    /// The slot for `now`, cleared first if it last held an older stretch of time.
    fn slot(&self, now: u64) -> &Slot {
        let epoch = now / SLOT_MS + 1;
        let slot = &self.slots[(epoch as usize) % SLOTS];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen < epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.clear();
        }
        slot
    }

    pub fn record_saved(&self, nusd: u64, now: u64) {
        self.cache.saved_nusd.fetch_add(nusd, Ordering::Relaxed);
        self.slot(now)
            .cache
            .saved_nusd
            .fetch_add(nusd, Ordering::Relaxed);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        class: Option<&Class>,
        via: Via,
        cache: Option<Outcome>,
        status: u16,
        elapsed: Duration,
        judged: Duration,
        spend_usd: f64,
        now: u64,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(now);
        if let Some(outcome) = cache {
            self.cache.record(outcome);
            slot.cache.record(outcome);
        }
        let column = match via {
            Via::Pool(p) if usize::from(p) < MAX_POOLS => usize::from(p),
            Via::Pool(_) => SPLIT_NONE,
            Via::Cache => SPLIT_CACHE,
            Via::Queue => SPLIT_QUEUE,
            Via::Nothing => SPLIT_NONE,
        };
        let pool = match via {
            Via::Pool(p) => Some(usize::from(p)).filter(|&p| p < MAX_POOLS),
            _ => None,
        };
        if let Some(p) = pool {
            self.pool_requests[p].fetch_add(1, Ordering::Relaxed);
            slot.pool_requests[p].fetch_add(1, Ordering::Relaxed);
            if spend_usd > 0.0 {
                let nusd = crate::telemetry::nano_usd(spend_usd);
                self.pool_cost_nusd[p].fetch_add(nusd, Ordering::Relaxed);
                slot.pool_cost_nusd[p].fetch_add(nusd, Ordering::Relaxed);
            }
        }
        let Some(class) = class else { return };
        let tier = usize::from(class.tier);
        if tier >= MAX_TIERS {
            return;
        }
        let cell = &slot.tiers[tier];
        cell.requests.fetch_add(1, Ordering::Relaxed);
        self.tier_requests[tier].fetch_add(1, Ordering::Relaxed);
        if spend_usd > 0.0 {
            let nusd = crate::telemetry::nano_usd(spend_usd);
            self.tier_cost_nusd[tier].fetch_add(nusd, Ordering::Relaxed);
        }
        if (200..300).contains(&status) && judged <= class.objective() {
            cell.met.fetch_add(1, Ordering::Relaxed);
            self.tier_met[tier].fetch_add(1, Ordering::Relaxed);
        }
        if status == 0 || status >= 500 {
            cell.errors.fetch_add(1, Ordering::Relaxed);
        }
        cell.latency[bucket(elapsed.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
        slot.split[tier][column].fetch_add(1, Ordering::Relaxed);
    }

    /// Sum the slots inside the window ending at `now`.
    pub fn window(&self, now: u64) -> Window {
        let current = now / SLOT_MS + 1;
        let oldest = current.saturating_sub(SLOTS as u64 - 1).max(1);
        // The window runs from the start of the oldest slot kept (or process start) to now.
        let span_ms = now.saturating_sub((oldest - 1) * SLOT_MS).max(1);
        let mut w = Window {
            seconds: span_ms as f64 / 1e3,
            ..Window::default()
        };
        for slot in &self.slots {
            let epoch = slot.epoch.load(Ordering::Acquire);
            if epoch < oldest || epoch > current {
                continue;
            }
            for (t, cell) in slot.tiers.iter().enumerate() {
                w.tiers[t].requests += cell.requests.load(Ordering::Relaxed);
                w.tiers[t].met += cell.met.load(Ordering::Relaxed);
                w.tiers[t].errors += cell.errors.load(Ordering::Relaxed);
                for (b, n) in cell.latency.iter().enumerate() {
                    w.tiers[t].latency[b] += n.load(Ordering::Relaxed);
                }
                for (p, n) in slot.split[t].iter().enumerate() {
                    w.split[t][p] += n.load(Ordering::Relaxed);
                }
            }
            for p in 0..MAX_POOLS {
                w.pool_requests[p] += slot.pool_requests[p].load(Ordering::Relaxed);
                w.pool_cost_nusd[p] += slot.pool_cost_nusd[p].load(Ordering::Relaxed);
            }
            w.cache_lookups += slot.cache.lookups.load(Ordering::Relaxed);
            w.cache_hits += slot.cache.hits.load(Ordering::Relaxed);
            w.cache_saved_nusd += slot.cache.saved_nusd.load(Ordering::Relaxed);
        }
        w
    }
}

/// Bucket of a latency in microseconds: four buckets per power of two, from 16 µs.
fn bucket(us: u64) -> usize {
    let us = us.max(16);
    let msb = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (msb - 2)) & 3) as usize;
    ((msb - 4) * 4 + sub).min(BUCKETS - 1)
}

/// Lower and upper bound of a bucket, in microseconds.
fn bucket_bounds(i: usize) -> (f64, f64) {
    let msb = i / 4 + 4;
    let sub = (i % 4) as u64;
    let unit = 1u64 << (msb - 2);
    (((4 + sub) * unit) as f64, ((5 + sub) * unit) as f64)
}

/// One tier's part of the window.
#[derive(Clone)]
pub struct TierWindow {
    pub requests: u64,
    pub met: u64,
    pub errors: u64,
    latency: [u64; BUCKETS],
}

impl Default for TierWindow {
    fn default() -> Self {
        TierWindow {
            requests: 0,
            met: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl TierWindow {
    /// The `q` quantile of end-to-end latency in milliseconds (the geometric middle of the
    /// bucket it falls in, so within about 12%), or `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = bucket_bounds(i);
                return Some((lo * hi).sqrt() / 1e3);
            }
        }
        None
    }
}

/// The sliding window, summed.
pub struct Window {
    pub seconds: f64,
    pub tiers: Vec<TierWindow>,
    pub pool_requests: [u64; MAX_POOLS],
    pub pool_cost_nusd: [u64; MAX_POOLS],
    pub split: [[u64; SPLIT]; MAX_TIERS],
    pub cache_lookups: u64,
    pub cache_hits: u64,
    pub cache_saved_nusd: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            seconds: 0.0,
            tiers: vec![TierWindow::default(); MAX_TIERS],
            pool_requests: [0; MAX_POOLS],
            pool_cost_nusd: [0; MAX_POOLS],
            split: [[0; SPLIT]; MAX_TIERS],
            cache_lookups: 0,
            cache_hits: 0,
            cache_saved_nusd: 0,
        }
    }
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for us in [
            1u64, 16, 17, 20, 24, 31, 32, 100, 1_000, 10_000, 123_456, 60_000_000,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            let (lo, hi) = bucket_bounds(b);
            if us >= 16 && b < BUCKETS - 1 {
                assert!(lo <= us as f64 && (us as f64) < hi, "{us} in [{lo}, {hi})");
                assert!(hi / lo <= 1.25 + 1e-9);
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_land_near_the_truth() {
        let mut tw = TierWindow::default();
        // 1..=1000 ms, one sample each.
        for ms in 1..=1000u64 {
            tw.latency[bucket(ms * 1000)] += 1;
        }
        let p50 = tw.quantile_ms(0.5).unwrap_or(0.0);
        let p99 = tw.quantile_ms(0.99).unwrap_or(0.0);
        assert!((p50 - 500.0).abs() / 500.0 < 0.13, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.13, "{p99}");
        assert_eq!(TierWindow::default().quantile_ms(0.5), None);
    }

    #[test]
    fn the_window_slides_and_old_slots_are_cleared() {
        let agg = Aggregate::new();
        let t0 = 5 * SLOT_MS;
        agg.record(
            None,
            Via::Pool(1),
            None,
            200,
            Duration::from_millis(3),
            Duration::from_millis(3),
            0.0,
            t0,
        );
        agg.record(
            None,
            Via::Pool(1),
            None,
            200,
            Duration::from_millis(3),
            Duration::from_millis(3),
            0.0,
            t0 + 1,
        );
        assert_eq!(agg.window(t0 + 2).pool_requests[1], 2);
        // Still inside the window a few slots later.
        let later = t0 + (SLOTS as u64 - 1) * SLOT_MS;
        assert_eq!(agg.window(later).pool_requests[1], 2);
        // Out of it once the ring has come round, and the slot is reused cleanly.
        let much_later = t0 + SLOTS as u64 * SLOT_MS;
        assert_eq!(agg.window(much_later).pool_requests[1], 0);
        agg.record(
            None,
            Via::Pool(1),
            None,
            200,
            Duration::from_millis(3),
            Duration::from_millis(3),
            0.0,
            much_later,
        );
        assert_eq!(agg.window(much_later).pool_requests[1], 1);
        // Totals never slide.
        assert_eq!(agg.pool_requests[1].load(Ordering::Relaxed), 3);
        // Pools past the limit are ignored, not a panic.
        agg.record(
            None,
            Via::Pool(MAX_POOLS as PoolId),
            None,
            200,
            Duration::ZERO,
            Duration::ZERO,
            0.0,
            much_later,
        );
    }

    fn class(tier: u16, deadline_ms: u64) -> Class {
        Class {
            request_bytes: 0,
            ttft: None,
            tpot: None,
            affinity: Default::default(),
            route: 0,
            client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
            country: None,
            region: 0,
            tenant: None,
            credential: None,
            tier,
            tier_source: crate::classify::TierSource::Route,
            deadline: Duration::from_millis(deadline_ms),
            model: "m".into(),
            model_version: None,
            version: None,
            version_key: None,
            streaming: false,
            cacheable: false,
            inference: true,
            client_rtt: None,
        }
    }

    #[test]
    fn tiers_count_deadline_attainment_errors_and_the_split() {
        let agg = Aggregate::new();
        let now = 42 * SLOT_MS;
        let rt = class(1, 100);
        agg.record(
            Some(&rt),
            Via::Pool(0),
            None,
            200,
            Duration::from_millis(20),
            Duration::from_millis(20),
            0.0,
            now,
        );
        agg.record(
            Some(&rt),
            Via::Pool(2),
            None,
            200,
            Duration::from_millis(200),
            Duration::from_millis(200),
            0.0,
            now,
        ); // too slow
        agg.record(
            Some(&rt),
            Via::Nothing,
            None,
            503,
            Duration::from_millis(1),
            Duration::from_millis(1),
            0.0,
            now,
        ); // shed
        agg.record(
            Some(&rt),
            Via::of(None, Some(Outcome::Hit), false),
            Some(Outcome::Hit),
            200,
            Duration::from_millis(1),
            Duration::from_millis(1),
            0.0,
            now,
        );
        agg.record(
            Some(&rt),
            Via::of(None, Some(Outcome::Miss), true),
            Some(Outcome::Miss),
            202,
            Duration::from_millis(1),
            Duration::from_millis(1),
            0.0,
            now,
        );
        let w = agg.window(now);
        let t = &w.tiers[1];
        assert_eq!((t.requests, t.met, t.errors), (5, 3, 1));
        assert_eq!(w.split[1][0], 1);
        assert_eq!(w.split[1][2], 1);
        assert_eq!(w.split[1][SPLIT_NONE], 1);
        assert_eq!(w.split[1][SPLIT_CACHE], 1);
        assert_eq!(w.split[1][SPLIT_QUEUE], 1);
        // One hit out of two lookups that could hit.
        assert_eq!((w.cache_hits, w.cache_lookups), (1, 2));
        let p99 = t.quantile_ms(0.99).unwrap_or(0.0);
        assert!((180.0..230.0).contains(&p99), "{p99}");
        // Tiers past the limit are ignored.
        agg.record(
            Some(&class(MAX_TIERS as u16, 1)),
            Via::Nothing,
            None,
            200,
            Duration::ZERO,
            Duration::ZERO,
            0.0,
            now,
        );
        assert_eq!(agg.requests.load(Ordering::Relaxed), 6);
    }
}
