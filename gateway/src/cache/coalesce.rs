//! Single flight for identical misses: the first request for a key that is neither stored
//! nor in flight becomes the *leader* and goes upstream; requests for the same key that
//! arrive while it is in flight become *waiters* and are answered with the leader's response
//! when it is stored.
//!
//! A flight is a `tokio::sync::watch` channel in a sharded map of keys in flight. The leader
//! holds a [`LeaderGuard`]: [`LeaderGuard::complete`] publishes the response; dropping the
//! guard without completing (upstream error, timeout, a response that may not be stored,
//! the client going away) publishes `Failed`, and every waiter then makes its own upstream
//! request, so a failing leader never fails its waiters. Waiters also stop waiting after a
//! bound of their own.
//!
//! A completed flight stays in the map until its entry is in the store (the insert is
//! asynchronous, the response body filter that completes the flight is not), so a request
//! arriving in between is answered from the flight instead of starting another one.
//!
//! Locking: one `std::sync::Mutex` per shard, held only for a hash-map lookup or insert and
//! never across an `.await`; only cacheable misses take it (hits are answered from the store
//! first), and the control plane never does.

use super::key::CacheKey;
use super::store::Stored;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const SHARDS: usize = 16;

/// What a flight has come to.
#[derive(Debug, Clone)]
pub enum FlightState {
    Pending,
    Done(Arc<Stored>),
    Failed,
}

/// The keys in flight.
pub struct Flights {
    shards: [Mutex<HashMap<CacheKey, watch::Receiver<FlightState>>>; SHARDS],
}

/// Joining a flight: lead it, wait for it, or take its finished result.
pub enum Join {
    Leader(LeaderGuard),
    Waiter(Waiter),
    Done(Arc<Stored>),
    /// No flight, but the store has an entry (it landed between the caller's store lookup and
    /// this call): read the store again.
    Stored,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl Flights {
    fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, watch::Receiver<FlightState>>> {
        &self.shards[key.shard(SHARDS)]
    }

    /// Join the flight for `key`, or start one. `stored` says whether the store has the key
    /// now; it is asked under the shard lock, so a flight that finished (entry inserted, then
    /// flight removed) is never missed in between.
    pub fn join(self: &Arc<Self>, key: CacheKey, stored: impl FnOnce() -> bool) -> Join {
        // A poisoned lock only means a panic elsewhere while holding it; the map is intact.
        let mut map = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(&key) {
            return match &*rx.borrow() {
                FlightState::Done(entry) => Join::Done(entry.clone()),
                // `Failed` is only visible between the guard's drop and its removal: wait on
                // it anyway, the waiter sees `Failed` at once and goes upstream itself.
                _ => Join::Waiter(Waiter { rx: rx.clone() }),
            };
        }
        if stored() {
            return Join::Stored;
        }
        let (tx, rx) = watch::channel(FlightState::Pending);
        map.insert(key, rx);
        Join::Leader(LeaderGuard {
            flights: self.clone(),
            key,
            tx: Some(tx),
        })
    }

    fn remove(&self, key: &CacheKey) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    /// Flights in progress (for tests and the admin API).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held by the leader of a flight until its response is stored or it gives up.
pub struct LeaderGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    tx: Option<watch::Sender<FlightState>>,
}

impl LeaderGuard {
    /// Publish the leader's response to the waiters. The flight stays visible until
    /// [`Landed::done`] says the entry is in the store.
    pub fn complete(mut self, entry: Arc<Stored>) -> Landed {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(FlightState::Done(entry));
        }
        Landed {
            flights: self.flights.clone(),
            key: self.key,
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Waiters wake and go upstream themselves.
            let _ = tx.send(FlightState::Failed);
            self.flights.remove(&self.key);
        }
    }
}

/// A completed flight whose entry is being inserted.
pub struct Landed {
    flights: Arc<Flights>,
    key: CacheKey,
}

impl Landed {
    pub fn done(self) {}
}

impl Drop for Landed {
    fn drop(&mut self) {
        self.flights.remove(&self.key);
    }
}

/// A request waiting for a leader.
pub struct Waiter {
    rx: watch::Receiver<FlightState>,
}

impl Waiter {
    /// The leader's stored response, or `None` when it failed, could not be stored, or took
    /// longer than `bound`.
    pub async fn wait(mut self, bound: Duration) -> Option<Arc<Stored>> {
        let settled = tokio::time::timeout(
            bound,
            self.rx.wait_for(|s| !matches!(s, FlightState::Pending)),
        )
        .await;
        match settled {
            Ok(Ok(state)) => match &*state {
                FlightState::Done(entry) => Some(entry.clone()),
                _ => None,
            },
            // Timed out, or the leader vanished without a word (cannot happen: the guard
            // always sends): go upstream.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;

    fn entry() -> Arc<Stored> {
        Arc::new(Stored {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from_static(b"ok"),
            stored_at: Instant::now(),
            ttl: Duration::from_secs(1),
            model: "m".into(),
            generation: 0,
            key_header: http::HeaderValue::from_static("k"),
        })
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_response() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey([1; 32]);
        let Join::Leader(guard) = flights.join(key, || false) else {
            panic!("first is the leader")
        };
        let Join::Waiter(w) = flights.join(key, || false) else {
            panic!("second waits")
        };
        let waiting = tokio::spawn(w.wait(Duration::from_secs(5)));
        let landed = guard.complete(entry());
        // Until the entry lands, late arrivals take the result directly.
        assert!(matches!(flights.join(key, || false), Join::Done(_)));
        assert_eq!(waiting.await.unwrap().unwrap().body, "ok");
        landed.done();
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_failed_leader_releases_its_waiters() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey([2; 32]);
        let guard = flights.join(key, || false);
        let Join::Waiter(w) = flights.join(key, || false) else {
            panic!("second waits")
        };
        let started = Instant::now();
        let waiting = tokio::spawn(w.wait(Duration::from_secs(5)));
        drop(guard);
        assert!(waiting.await.unwrap().is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(flights.is_empty());
        // The next request leads a new flight.
        assert!(matches!(flights.join(key, || false), Join::Leader(_)));
    }

    #[tokio::test]
    async fn waiters_give_up_after_their_bound() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey([3; 32]);
        let _guard = flights.join(key, || false);
        let Join::Waiter(w) = flights.join(key, || false) else {
            panic!("second waits")
        };
        assert!(w.wait(Duration::from_millis(20)).await.is_none());
        assert!(matches!(flights.join(key, || true), Join::Waiter(_)));
        let other = CacheKey([4; 32]);
        assert!(matches!(flights.join(other, || true), Join::Stored));
    }
}
