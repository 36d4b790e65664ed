//! The simulated prediction cache: fresh answers by request key, with the route's TTL and
//! the policy's `cache.max_bytes`, plus the single flight of identical misses.
//!
//! Entries are weighed by the store's own rule ([`Stored::weight`], applied to a stand-in
//! entry of the answer size the simulator assumes, per model), so a policy whose cache is too
//! small for its working set loses hits in simulation as it would live. When an insert would
//! pass the bound, expired entries go first, then the oldest inserted (moka's TinyLFU
//! admission is not modelled: this is plain insertion order). Identical misses arriving while
//! the first is in flight wait for its answer ([`SimCache::join`]), as `cache::coalesce`
//! makes them: one upstream request for all of them; if the leader fails, each waiter makes
//! its own request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use switchyard_gateway::cache::store::Stored;

/// Entries kept at most whatever their weight (a guard for tiny answers).
const MAX_ENTRIES: usize = 1 << 20;

/// Cached answers and keys in flight for one simulated policy.
pub(super) struct SimCache {
    ttl_us: u64,
    max_bytes: u64,
    /// Per model: an entry's weight, or `None` when the answer exceeds `max_entry_bytes`.
    weights: Vec<Option<u64>>,
    /// Key → (expires at µs, weight, insertion number).
    entries: HashMap<u64, (u64, u64, u64)>,
    /// Insertion order (key, insertion number); stale pairs are skipped.
    order: VecDeque<(u64, u64)>,
    bytes: u64,
    inserted: u64,
    /// Keys in flight → the requests waiting for their answer.
    flights: HashMap<u64, Vec<super::Request>>,
}

impl SimCache {
    pub(super) fn new(
        ttl: Duration,
        settings: &switchyard_gateway::policy::compile::CacheSettings,
        models: &[String],
        answer_bytes: usize,
    ) -> SimCache {
        let weights = models
            .iter()
            .map(|model| {
                (answer_bytes <= settings.max_entry_bytes)
                    .then(|| stand_in(model, answer_bytes).weight() as u64)
            })
            .collect();
        SimCache {
            ttl_us: ttl.as_micros() as u64,
            max_bytes: settings.max_bytes,
            weights,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            inserted: 0,
            flights: HashMap::new(),
        }
    }

    /// Whether `key` has a fresh answer at `now`.
    pub(super) fn fresh(&self, key: u64, now: u64) -> bool {
        self.entries.get(&key).is_some_and(|e| e.0 > now)
    }

    /// A miss for `key`: `true` if an identical request is in flight (the caller waits for
    /// it), else this request becomes the leader.
    pub(super) fn join(&mut self, req: &super::Request) -> bool {
        match self.flights.get_mut(&req.key) {
            Some(waiters) => {
                waiters.push(*req);
                true
            }
            None => {
                self.flights.insert(req.key, Vec::new());
                false
            }
        }
    }

    /// The leader of `key` is done: the requests that waited for it.
    pub(super) fn land(&mut self, key: u64) -> Vec<super::Request> {
        self.flights.remove(&key).unwrap_or_default()
    }

    /// Store the answer to `key` (of `model`) at `now`; the number of entries evicted.
    pub(super) fn insert(&mut self, key: u64, model: u16, now: u64) -> u64 {
        let Some(weight) = self.weights.get(model as usize).copied().flatten() else {
            return 0;
        };
        if weight > self.max_bytes {
            return 0;
        }
        if let Some((_, old, _)) = self.entries.remove(&key) {
            self.bytes -= old;
        }
        let mut evicted = 0;
        if self.bytes + weight > self.max_bytes || self.entries.len() >= MAX_ENTRIES {
            // Expired entries first, then the oldest.
            let mut freed = 0;
            self.entries.retain(|_, e| {
                let keep = e.0 > now;
                if !keep {
                    freed += e.1;
                }
                keep
            });
            self.bytes -= freed;
            while self.bytes + weight > self.max_bytes || self.entries.len() >= MAX_ENTRIES {
                let Some((k, n)) = self.order.pop_front() else {
                    break;
                };
                if let Some(e) = self.entries.get(&k).copied() {
                    if e.2 == n {
                        self.entries.remove(&k);
                        self.bytes -= e.1;
                        evicted += 1;
                    }
                }
            }
        }
        self.inserted += 1;
        self.entries
            .insert(key, (now + self.ttl_us, weight, self.inserted));
        self.order.push_back((key, self.inserted));
        self.bytes += weight;
        // Drop stale order pairs now and then, so memory follows the entries.
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order
                .retain(|(k, n)| entries.get(k).is_some_and(|e| e.2 == *n));
        }
        evicted
    }
}

/// An entry as the store would hold an answer of `answer_bytes` for `model`.
fn stand_in(model: &str, answer_bytes: usize) -> Stored {
    Stored {
        status: 200,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body: bytes::Bytes::from(vec![0u8; answer_bytes]),
        stored_at: Instant::now(),
        ttl: Duration::ZERO,
        model: model.to_string(),
        generation: 0,
        // A key's hex form (a 128-bit hash).
        key_header: http::HeaderValue::from_static("00000000000000000000000000000000"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_gateway::policy::compile::CacheSettings;

    fn req(key: u64) -> crate::simulate::Request {
        crate::simulate::Request {
            at: Duration::ZERO,
            region: 0,
            tier: 0,
            model: 0,
            service_quantile: 0.5,
            key,
            tokens: (0, 0),
            bytes: (0, 0),
            stream: false,
        }
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_expired_go_first() {
        let settings = CacheSettings::default();
        let weight = stand_in("small", 2048).weight() as u64;
        let settings = CacheSettings {
            max_bytes: weight * 3,
            ..settings
        };
        let mut c = SimCache::new(
            Duration::from_secs(60),
            &settings,
            &["small".to_string()],
            2048,
        );
        for k in 1..=3 {
            assert_eq!(c.insert(k, 0, 0), 0);
        }
        assert_eq!(c.insert(4, 0, 0), 1, "a fourth entry evicts one");
        assert!(!c.fresh(1, 1) && c.fresh(2, 1) && c.fresh(4, 1));
        // After the TTL every entry has expired: they go before anything fresh is evicted.
        assert_eq!(c.insert(5, 0, 61_000_000), 0);
        assert!(c.fresh(5, 61_000_001));
    }

    #[test]
    fn identical_misses_in_flight_wait_for_the_leader() {
        let mut c = SimCache::new(
            Duration::from_secs(60),
            &CacheSettings::default(),
            &["small".to_string()],
            2048,
        );
        assert!(!c.join(&req(9)), "the first is the leader");
        assert!(c.join(&req(9)) && c.join(&req(9)));
        assert!(!c.join(&req(10)), "another key has its own flight");
        assert_eq!(c.land(9).len(), 2);
        assert!(!c.join(&req(9)), "after landing, a new flight");
    }
}
