//! The clock of the gateway's periodic background services (health checks, the server load
//! scraper, the spend and capacity meters, the rollout sync, the policy and certificate
//! watchers): a tick
//! every period, a late one delayed rather than bunched, until the server shuts down.

use pingora::server::ShutdownWatch;
use std::time::Duration;
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
