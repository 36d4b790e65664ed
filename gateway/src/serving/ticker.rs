//! The clock of the gateway's periodic background services (health checks, the server load
//! scraper, the spend and capacity meters, the rollout sync, the policy and certificate
//! watchers): a tick
//! every period, a late one delayed rather than bunched, until the server shuts down; and
//! [`Due`], when each endpoint's next periodic job (a health check, a scrape) is due.

use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::time::{Interval, MissedTickBehavior};

pub struct Ticker {
    interval: Interval,
    shutdown: ShutdownWatch,
}

impl Ticker {
    pub fn new(every: Duration, shutdown: ShutdownWatch) -> Ticker {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Wait for the next tick: `false` once the server is shutting down.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.shutdown.changed() => false,
        }
    }
}

/// When each endpoint's next periodic job is due, by pool and endpoint name (so an endpoint
/// a reload keeps keeps its schedule, and a new one is due at once).
#[derive(Default)]
pub struct Due {
    /// Pool name → endpoint name → when next due.
    next: HashMap<String, HashMap<String, Instant>>,
}

impl Due {
    /// Whether the job of `endpoint` of `pool` is due at `now`; if so it is next due
    /// `every` later. (The names are copied only when an endpoint is first seen.)
    pub fn take(&mut self, pool: &str, endpoint: &str, now: Instant, every: Duration) -> bool {
        if let Some(due) = self.next.get_mut(pool).and_then(|p| p.get_mut(endpoint)) {
            if now < *due {
                return false;
            }
            *due = now + every;
            return true;
        }
        self.next
            .entry(pool.to_string())
            .or_default()
            .insert(endpoint.to_string(), now + every);
        true
    }

    /// Forget endpoints a reload removed, once the map holds well more than the `endpoints`
    /// the policy has (an entry not due for a minute is gone from the policy).
    pub fn forget_gone(&mut self, endpoints: usize, now: Instant) {
        let held: usize = self.next.values().map(HashMap::len).sum();
        if held > 4 * endpoints + 16 {
            for eps in self.next.values_mut() {
                eps.retain(|_, due| *due + Duration::from_secs(60) > now);
            }
            self.next.retain(|_, eps| !eps.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_due_at_once_then_every_period_and_gone_endpoints_are_forgotten() {
        let mut due = Due::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(due.take("p", "a", t0, s));
        assert!(!due.take("p", "a", t0 + s / 2, s));
        assert!(due.take("p", "a", t0 + s, s));
        assert!(
            due.take("p", "b", t0, s),
            "another endpoint has its own schedule"
        );
        for i in 0..40 {
            due.take("old", &i.to_string(), t0, s);
        }
        due.forget_gone(2, t0 + Duration::from_secs(120));
        assert!(due.next.is_empty(), "nothing was due in the last minute");
    }
}
