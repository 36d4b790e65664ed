//! Live measurements of the fleet: per pool and per endpoint, the observed service time
//! (EWMA), requests in flight, and whether an endpoint is marked down after a failure.
//!
//! The request path reads and writes these with atomics only; nothing here takes a lock that
//! a reload or a metrics scrape could hold. The [`Fleet`] registry (behind a mutex) is touched
//! only when a policy is compiled, so state carries over a reload for every pool and endpoint
//! that keeps its name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Smoothing: rise quickly towards slower samples, decay slowly towards faster ones, so a
/// pool that starts to struggle is avoided quickly and trusted again only gradually.
const ALPHA_UP: f64 = 0.3;
const ALPHA_DOWN: f64 = 0.05;

fn ewma_update(cell: &AtomicU64, sample_us: u64) {
    // A lost update under contention only drops one sample; no loop needed for that, but
    // fetch_update keeps the value consistent.
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let old_f = old as f64;
        let s = sample_us as f64;
        let alpha = if s > old_f { ALPHA_UP } else { ALPHA_DOWN };
        Some((old_f + alpha * (s - old_f)).max(1.0) as u64)
    });
}

/// Live state of one pool.
#[derive(Debug)]
pub struct PoolState {
    ewma_us: AtomicU64,
    samples: AtomicU64,
    in_flight: AtomicU32,
}

impl PoolState {
    fn new(baseline: Duration) -> Self {
        PoolState {
            ewma_us: AtomicU64::new((baseline.as_micros() as u64).max(1)),
            samples: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// The pool's observed service time (seeded by the policy's baseline).
    pub fn service_time(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn observe(&self, upstream: Duration) {
        ewma_update(&self.ewma_us, upstream.as_micros() as u64);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Live state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    ewma_us: AtomicU64,
    in_flight: AtomicU32,
    down_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
}

impl EndpointState {
    fn new(baseline: Duration) -> Self {
        EndpointState {
            ewma_us: AtomicU64::new((baseline.as_micros() as u64).max(1)),
            in_flight: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Mark the endpoint down until `now + backoff`.
    pub fn mark_down(&self, now_ms: u64, backoff: Duration) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.down_until_ms
            .fetch_max(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn mark_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Power-of-two-choices score: expected latency times the queue it would join.
    pub fn load_score(&self) -> u64 {
        self.ewma_us
            .load(Ordering::Relaxed)
            .saturating_mul(self.in_flight.load(Ordering::Relaxed) as u64 + 1)
    }

    pub fn observe(&self, upstream: Duration) {
        ewma_update(&self.ewma_us, upstream.as_micros() as u64);
    }

    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Registry of live state by pool name and endpoint, used when compiling a policy.
#[derive(Default)]
pub struct Fleet {
    pools: Mutex<HashMap<String, Arc<PoolState>>>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet::default())
    }

    /// The state of pool `name`, created with `baseline` as its first estimate if new.
    pub fn pool(&self, name: &str, baseline: Duration) -> Arc<PoolState> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PoolState::new(baseline)))
            .clone()
    }

    /// The state of endpoint `endpoint` of pool `pool`.
    pub fn endpoint(&self, pool: &str, endpoint: &str) -> Arc<EndpointState> {
        let baseline = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools
                .get(pool)
                .map(|p| p.service_time())
                .unwrap_or(Duration::from_millis(50))
        };
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        eps.entry((pool.to_string(), endpoint.to_string()))
            .or_insert_with(|| Arc::new(EndpointState::new(baseline)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_rises_fast_and_decays_slowly() {
        let p = PoolState::new(Duration::from_millis(10));
        p.observe(Duration::from_millis(110));
        let up = p.service_time();
        assert!(up >= Duration::from_millis(39), "{up:?}");
        p.observe(Duration::from_millis(10));
        let down = p.service_time();
        assert!(down < up && down > Duration::from_millis(30), "{down:?}");
    }

    #[test]
    fn state_is_shared_by_name() {
        let fleet = Fleet::default();
        let a = fleet.pool("gpu", Duration::from_millis(5));
        a.observe(Duration::from_millis(100));
        let b = fleet.pool("gpu", Duration::from_millis(5));
        assert_eq!(a.service_time(), b.service_time());
        let e1 = fleet.endpoint("gpu", "127.0.0.1:1");
        e1.mark_down(now_ms(), Duration::from_secs(60));
        assert!(!fleet.endpoint("gpu", "127.0.0.1:1").is_up(now_ms()));
        assert!(fleet.endpoint("gpu", "127.0.0.1:2").is_up(now_ms()));
    }
}
