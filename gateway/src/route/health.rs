//! Active health checks: a Pingora background service that `GET`s each pool's health path
//! on every endpoint at the pool's interval and moves the endpoint between healthy and
//! unhealthy after the pool's thresholds of passed / failed checks in a row.
//!
//! Each passed probe is also the gateway → endpoint round-trip measurement the latency
//! estimate uses (`route::network`): the time from writing the request to reading the
//! status line, on the probe's own connection once it is open, is one network round trip
//! plus the backend's (tiny) health handler. It keeps measuring while no traffic goes to the
//! pool, so a pool avoided for being far is seen again when its path gets shorter.
//!
//! It reads the current policy snapshot every round, so a reload that adds, changes or
//! removes a pool's `health:` block takes effect at the next tick (removing it re-admits the
//! endpoints it had marked unhealthy). The verdict lives in the endpoint's live state
//! (`EndpointState::healthy`), which the router reads with one atomic load; nothing here is
//! on the request path.

use crate::policy::compile::PoolId;
use crate::serving::state::{EndpointState, HealthChange, PoolState};
use crate::serving::Snapshot;
use crate::telemetry as t;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the service looks for checks that are due.
const TICK: Duration = Duration::from_millis(25);

/// The health-check service.
pub struct HealthChecker {
    pub snapshot: Snapshot,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut due = crate::serving::ticker::Due::default();
        let mut ticker = crate::serving::ticker::Ticker::new(TICK, shutdown);
        loop {
            if !ticker.tick().await {
                break;
            }
            let table = self.snapshot.load_full();
            let now = Instant::now();
            for (id, pool) in table.pools.iter().enumerate() {
                let states = table.live.endpoints(id as PoolId);
                // A host name that never resolved has no address to probe, and stays down.
                let Some(hc) = &pool.health else {
                    for (_, state) in pool
                        .endpoints
                        .iter()
                        .zip(states)
                        .filter(|(e, _)| e.resolved)
                    {
                        if !state.healthy() {
                            state.clear_health();
                        }
                    }
                    continue;
                };
                for (ep, state) in pool
                    .endpoints
                    .iter()
                    .zip(states)
                    .filter(|(e, _)| e.resolved)
                {
                    if !due.take(&pool.name, &ep.name, now, hc.interval) {
                        continue;
                    }
                    let job = Check {
                        pool: pool.name.clone(),
                        endpoint: ep.name.clone(),
                        addr: ep.addr,
                        path: hc.path.clone(),
                        timeout: hc.timeout,
                        healthy_after: hc.healthy_threshold,
                        unhealthy_after: hc.unhealthy_threshold,
                        state: state.clone(),
                        pool_state: table.live.pool(id as PoolId).clone(),
                    };
                    tokio::spawn(job.run());
                }
            }
            due.forget_gone(table.pools.iter().map(|p| p.endpoints.len()).sum(), now);
        }
    }
}

/// One check of one endpoint.
struct Check {
    pool: String,
    endpoint: String,
    addr: SocketAddr,
    path: String,
    timeout: Duration,
    healthy_after: u32,
    unhealthy_after: u32,
    state: Arc<EndpointState>,
    pool_state: Arc<PoolState>,
}

impl Check {
    async fn run(self) {
        let result = tokio::time::timeout(self.timeout, probe(self.addr, &self.path)).await;
        let ok = matches!(result, Ok(Ok((200..=299, _))));
        if let (true, Ok(Ok((_, rtt)))) = (ok, result) {
            self.state.observe_rtt(rtt);
            self.pool_state.observe_rtt(rtt);
        }
        metrics::counter!(t::HEALTH_CHECKS, "pool" => self.pool.clone(), "result" => if ok { "pass" } else { "fail" })
            .increment(1);
        match self
            .state
            .health_result(ok, self.healthy_after, self.unhealthy_after)
        {
            HealthChange::None => {}
            HealthChange::BecameHealthy => {
                tracing::info!(pool = %self.pool, endpoint = %self.endpoint, "health check passed; endpoint healthy again");
            }
            HealthChange::BecameUnhealthy => {
                tracing::warn!(pool = %self.pool, endpoint = %self.endpoint, path = %self.path, "health checks failing; endpoint marked unhealthy");
            }
        }
    }
}

/// `GET path` over a fresh connection; the status code of the answer and the time from
/// sending the request to its status line (one round trip: the connection set-up is not in
/// it, as a load balancer or relay in front of the pool may complete that on its own).
async fn probe(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Duration)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: switchyard-health\r\nconnection: close\r\n\r\n"
    );
    let sent = Instant::now();
    stream.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut have = 0;
    // The status line is all we need: `HTTP/1.1 200 ...`.
    while have < 12 {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let rtt = sent.elapsed();
    let line = std::str::from_utf8(&buf[..have]).unwrap_or("");
    line.split(' ')
        .nth(1)
        .and_then(|code| code.trim().parse().ok())
        .map(|code| (code, rtt))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}
