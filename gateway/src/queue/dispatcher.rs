//! The dispatcher: a Pingora background service beside the proxy that drains the queue to
//! the pools.
//!
//! Every round (on a 100 ms tick, or at once when a job arrives or a dispatch finishes) it
//! asks the store, pool by pool, for as many due jobs as the pool has room for — never more
//! than the pool's `concurrency` in flight from the queue, fewer under a `max_utilisation`
//! ceiling (which counts real-time traffic too), none outside the pool's dispatch `window`.
//! The store hands them out in priority then age order.
//!
//! Each job is sent to an endpoint of its pool chosen as the proxy would (power of two
//! choices), with the tier's timeout. Connect errors, time-outs and 5xx are retried with
//! exponential back-off and jitter up to `queue.max_attempts`, then the job is `failed` with
//! the last error; any other answer is final (2xx/3xx `succeeded`, 4xx `failed`, with the
//! body kept either way). Delivery to a pool is at least once: a crash between the pool's
//! answer and the store update sends the job again, but the job record — what the client
//! reads — gets exactly one final result.

use super::{unix_ms, Job, JobResult, JobStatus, Queue, QueueGauges};
use crate::policy::compile::{PoolDispatch, PoolId};
use crate::policy::url::parse_url;
use crate::route;
use crate::serving::state::now_ms;
use crate::serving::Serving;
use crate::serving::Snapshot;
use crate::telemetry as t;
use crate::upstream::connect::{self, Timeouts};
use crate::upstream::{self, Fetched};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest pool response kept as a job result.
pub const MAX_RESULT: usize = 16 * 1024 * 1024;
/// Callback deliveries tried per job.
const CALLBACK_ATTEMPTS: u32 = 5;

/// The background service.
pub struct Dispatcher {
    pub queue: Arc<Queue>,
    pub snapshot: Snapshot,
    /// Jobs in flight from this dispatcher, per pool name.
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
}

impl Dispatcher {
    pub fn new(queue: Arc<Queue>, snapshot: Snapshot) -> Self {
        Dispatcher {
            queue,
            snapshot,
            in_flight: Arc::default(),
        }
    }

    async fn round(&self) {
        let table = self.snapshot.load_full();
        let Some(settings) = &table.queue else { return };
        let minute = ((unix_ms() / 60_000) % 1440) as u32;
        for (i, pool) in table.pools.iter().enumerate() {
            let rule = settings.pools.get(&pool.name);
            let cap = pool.concurrency as u64;
            let mine = self
                .in_flight
                .lock()
                .map(|m| m.get(&pool.name).copied().unwrap_or(0))
                .unwrap_or(cap);
            let in_flight = table.live.pool(i as PoolId).in_flight() as u64;
            let free = room(pool.concurrency, rule, minute, mine, in_flight);
            if free == 0 {
                continue;
            }
            let jobs = match self
                .queue
                .store
                .claim(&pool.name, free as usize, settings.lease)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "cannot claim jobs");
                    continue;
                }
            };
            for job in jobs {
                if let Ok(mut m) = self.in_flight.lock() {
                    *m.entry(pool.name.clone()).or_default() += 1;
                }
                let queue = self.queue.clone();
                let table = table.clone();
                let in_flight = self.in_flight.clone();
                let pool_name = pool.name.clone();
                tokio::spawn(async move {
                    run(&queue, &table, i as PoolId, job).await;
                    if let Ok(mut m) = in_flight.lock() {
                        if let Some(n) = m.get_mut(&pool_name) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    queue.wake.notify_one();
                });
            }
        }
    }
}

/// How many more queued jobs a pool may take now: its `concurrency` less the `mine` jobs the
/// dispatcher already has in flight there, fewer under a `max_utilisation` ceiling (which
/// counts all `in_flight` requests of the pool, real-time ones too), none outside its dispatch
/// `window` at `minute_of_day` (UTC). The one rule, shared by the dispatcher and the
/// simulator (`simulate::queue`).
pub fn room(
    concurrency: u32,
    rule: Option<&PoolDispatch>,
    minute_of_day: u32,
    mine: u64,
    in_flight: u64,
) -> u64 {
    if rule.is_some_and(|r| !r.open_at(minute_of_day)) {
        return 0;
    }
    let cap = concurrency as u64;
    let free = cap.saturating_sub(mine);
    match rule.filter(|r| r.max_utilisation < 1.0) {
        Some(r) => {
            let ceiling = (r.max_utilisation * cap as f64).floor() as u64;
            free.min(ceiling.saturating_sub(in_flight))
        }
        None => free,
    }
}

async fn refresh_stats(queue: &Queue, gauges: &QueueGauges) {
    match queue.store.stats().await {
        Ok(s) => {
            gauges.queued.store(s.queued, Ordering::Relaxed);
            gauges.running.store(s.running, Ordering::Relaxed);
            gauges
                .oldest_created_ms
                .store(s.oldest_created_ms.unwrap_or(0), Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read queue statistics"),
    }
}

#[async_trait]
impl BackgroundService for Dispatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let gauges = super::gauges().clone();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = Instant::now() - Duration::from_secs(10);
        let mut last_sweep = Instant::now();
        tracing::info!(
            backend = self.queue.store.backend(),
            "job dispatcher started"
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.queue.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            self.round().await;
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                refresh_stats(&self.queue, &gauges).await;
            }
            if last_sweep.elapsed() >= Duration::from_secs(10) {
                last_sweep = Instant::now();
                match self.queue.store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "expired jobs removed"),
                    Err(e) => tracing::warn!(error = %e, "cannot remove expired jobs"),
                }
            }
        }
        // Jobs still in flight are left `running`: the embedded store requeues them at the
        // next start, Redis hands them to another instance once their lease runs out.
    }
}

/// What one attempt came to.
enum Attempt {
    /// The pool answered with something that is not worth retrying.
    Answer(Answer),
    /// Worth another attempt; the last answer (a 5xx) if there was one.
    Retry(String, Option<Answer>),
}

/// A pool's answer to a job.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: bytes::Bytes,
}

/// Dispatch one claimed job and record its outcome.
async fn run(queue: &Queue, table: &Arc<Serving>, pool_id: PoolId, mut job: Job) {
    let Some(settings) = &table.queue else { return };
    let outcome = attempt(table, pool_id, &job).await;
    let now = unix_ms();
    let (status, error, response) = match outcome {
        Attempt::Answer(resp) if resp.status < 400 => (JobStatus::Succeeded, None, Some(resp)),
        Attempt::Answer(resp) => {
            let e = format!("pool `{}` answered {}", job.class.pool, resp.status);
            (JobStatus::Failed, Some(e), Some(resp))
        }
        Attempt::Retry(e, resp) if job.attempts >= settings.max_attempts => {
            let e = format!("{e} (gave up after {} attempts)", job.attempts);
            (JobStatus::Failed, Some(e), resp)
        }
        Attempt::Retry(e, _) => {
            job.status = JobStatus::Queued;
            job.not_before_ms = now + backoff(settings, job.attempts).as_millis() as u64;
            job.last_error = Some(e);
            if let Err(e) = queue.store.update(&job).await {
                tracing::error!(job = %job.id, error = %e, "cannot requeue job");
            }
            return;
        }
    };
    job.status = status;
    job.last_error = error;
    job.finished_ms = Some(now);
    job.expires_ms = Some(now + settings.result_ttl.as_millis() as u64);
    if let Some(resp) = response {
        job.result = Some(JobResult {
            status: resp.status,
            content_type: resp.content_type,
        });
        job.result_body = resp.body;
    }
    job.body = bytes::Bytes::new(); // the request is no longer needed
    if let Err(e) = queue.store.update(&job).await {
        // Left `running`: it will be dispatched again after a restart or its lease.
        tracing::error!(job = %job.id, error = %e, "cannot record the job's result");
        return;
    }
    metrics::counter!(t::JOBS, "status" => status.as_str()).increment(1);
    if let Some(url) = job.callback_url.clone() {
        let connect = table.upstream.connect_timeout;
        let allowed = parse_url(&url).is_some_and(|u| settings.callback_allowed(&u.host));
        if allowed {
            let body = job.view().to_string();
            let id = job.id.clone();
            tokio::spawn(async move { callback(&url, &id, body, connect).await });
        } else {
            tracing::warn!(job = %job.id, "callback host no longer allowed by the policy; not sent");
        }
    }
}

/// `base × 2^(attempt−1)`, at most `max`, ±20% jitter (also the simulator's).
pub fn backoff(settings: &crate::policy::compile::QueueSettings, attempts: u32) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    exp.min(settings.backoff_max)
        .mul_f64(0.8 + fastrand::f64() * 0.4)
}

async fn attempt(table: &Arc<Serving>, pool_id: PoolId, job: &Job) -> Attempt {
    let Some(pool) = table.pools.get(pool_id as usize) else {
        return Attempt::Retry("pool missing".into(), None);
    };
    let Some(ep_id) = route::pick_endpoint(&table.live, (pool_id, pool), &[], (now_ms(), false), 0)
    else {
        return Attempt::Retry(format!("no endpoint of pool `{}` is up", pool.name), None);
    };
    let ep = &pool.endpoints[ep_id as usize];
    let timeout = table
        .tier_by_name(&job.class.tier)
        .map(|t| table.tiers[t as usize].timeout)
        .unwrap_or(Duration::from_secs(60));
    let header = match job_request(job, &ep.authority) {
        Ok(h) => h,
        Err(e) => return Attempt::Answer(bad_gateway(e.to_string())),
    };
    metrics::counter!(t::JOB_ATTEMPTS, "pool" => pool.name.clone()).increment(1);
    let started = Instant::now();
    let fetched = upstream::fetch(
        table,
        (pool_id, ep_id),
        &header,
        &job.body,
        timeout,
        MAX_RESULT,
        upstream::connect::Keepalive::Shared,
    )
    .await;
    metrics::histogram!(t::JOB_DISPATCH, "pool" => pool.name.clone())
        .record(started.elapsed().as_secs_f64());
    match fetched {
        Fetched::Answer {
            status,
            content_type,
            body,
        } => {
            let answer = Answer {
                status,
                content_type,
                body,
            };
            if status >= 500 {
                let e = format!(
                    "pool `{}` endpoint {} answered {status}",
                    pool.name, ep.name
                );
                Attempt::Retry(e, Some(answer))
            } else {
                Attempt::Answer(answer)
            }
        }
        Fetched::Failed {
            error,
            retryable: true,
        } => Attempt::Retry(format!("pool `{}` {error}", pool.name), None),
        Fetched::Failed { error, .. } => Attempt::Answer(bad_gateway(error)),
    }
}

/// The request a job's attempt sends: the job's method, path and kept headers, with its id
/// and the client's address.
fn job_request(job: &Job, host: &str) -> pingora::Result<RequestHeader> {
    let r = &job.request;
    let mut header = RequestHeader::build(r.method.as_str(), r.path.as_bytes(), None)?;
    for (name, value) in &r.headers {
        header.append_header(name.clone(), value.as_str())?;
    }
    header.insert_header(http::header::HOST, host)?;
    header.insert_header("x-switchyard-job-id", job.id.as_str())?;
    header.insert_header("x-forwarded-for", job.class.client_ip.as_str())?;
    Ok(header)
}

/// A job answer the gateway makes up when the pool's cannot be kept.
fn bad_gateway(error: String) -> Answer {
    Answer {
        status: 502,
        content_type: None,
        body: bytes::Bytes::from(error),
    }
}

/// POST the finished job to its callback URL, retrying connect errors and 5xx.
async fn callback(url: &str, id: &str, body: String, connect_timeout: Duration) {
    let Some(u) = parse_url(url) else {
        return;
    };
    let host_header = if u.port == 80 {
        u.host.clone()
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let request = || -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", u.path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, host_header.as_str())?;
        req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        req.insert_header("x-switchyard-job-id", id)?;
        Ok(req)
    };
    let Ok(req) = request() else {
        return;
    };
    let body = bytes::Bytes::from(body.clone());
    let timeouts = Timeouts {
        connect: connect_timeout,
        io: Duration::from_secs(10),
    };
    for n in 0..CALLBACK_ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(250 << n)).await;
        }
        let addr = match tokio::net::lookup_host((u.host.as_str(), u.port)).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => a,
                None => continue,
            },
            Err(e) => {
                tracing::debug!(job = id, error = %e, "callback host does not resolve");
                continue;
            }
        };
        let peer = connect::plain_peer(addr, timeouts);
        match connect::request_once(&peer, &req, &body, 64 * 1024).await {
            Ok((status, _)) if status < 500 => {
                if status >= 400 {
                    tracing::warn!(job = id, status, "callback refused");
                }
                return;
            }
            Ok((status, _)) => tracing::debug!(job = id, status, "callback failed; will retry"),
            Err(e) => tracing::debug!(job = id, error = %e, "callback failed; will retry"),
        }
    }
    tracing::warn!(
        job = id,
        "callback not delivered after {CALLBACK_ATTEMPTS} attempts"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_concurrency_less_own_jobs_under_the_ceiling_inside_the_window() {
        let rule = |window, max_utilisation| PoolDispatch {
            window,
            max_utilisation,
        };
        assert_eq!(room(10, None, 0, 3, 100), 7);
        // A ceiling of 5 slots counts every request in flight, real-time ones too.
        assert_eq!(room(10, Some(&rule(None, 0.5)), 0, 1, 3), 2);
        assert_eq!(room(10, Some(&rule(None, 0.5)), 0, 1, 9), 0);
        // 01:00-02:00 UTC only.
        let night = rule(Some((60, 120)), 1.0);
        assert_eq!(room(10, Some(&night), 30, 0, 0), 0);
        assert_eq!(room(10, Some(&night), 90, 0, 0), 10);
    }
}
