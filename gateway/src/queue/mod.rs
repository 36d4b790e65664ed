//! The batch queue: latency-tolerant requests are stored durably, answered at once with
//! `202 Accepted` and a job id, and drained later to (cheap) batch pools.
//!
//! This module owns the job model ([`Job`]), the storage contract ([`JobStore`]) and the
//! [`Queue`] handle the proxy and the dispatcher share. The pieces:
//! - `embedded.rs`: the default store, a redb file on local disk with group commit;
//! - `redis.rs` (+ `crate::redis::resp`, a small RESP client): Redis Streams, shared by instances;
//! - `dispatcher.rs`: the background service sending jobs to their pools, with retries;
//! - `api.rs`: enqueue (the 202 path) and `GET`/`DELETE /v1/jobs/{id}` on the proxy listener;
//! - `http.rs`: the small HTTP/1.1 client used for dispatch and callbacks.
//!
//! Which backend serves is fixed at start-up (changing it takes a restart); the limits
//! (`max_jobs`, `max_attempts`, back-off, TTL, callback hosts, dispatch windows) are read from
//! the serving policy snapshot, so a reload changes them.
//!
//! Job ids are 128 random bits: they are unguessable, but reading a job still requires the
//! scope (tenant or credential) that created it; any other caller gets 404.

pub mod api;
pub mod dispatcher;
pub mod embedded;
pub mod redis;
pub use crate::redis::resp;

use crate::policy::compile::QueueSettings;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Milliseconds since the Unix epoch: jobs outlive the process, so their clock is the wall
/// clock, not the monotonic one the routing state uses.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// The request as it will be replayed to the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub method: String,
    /// Path and query string.
    pub path: String,
    /// Selected headers only (see `api::KEPT_HEADERS`); credentials are never stored.
    pub headers: Vec<(String, String)>,
}

/// How the request was classified when it was accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobClass {
    pub route: String,
    pub tier: String,
    pub model: String,
    pub region: String,
    /// The pool chosen at enqueue time; the dispatcher sends the job there.
    pub pool: String,
    pub client_ip: String,
}

/// What the pool answered, for a finished job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub status: u16,
    pub content_type: Option<String>,
}

/// One queued request and everything known about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// Who may see it: `tenant:NAME`, `key:SHA256` (an unknown credential) or `anonymous`.
    pub scope: String,
    pub idempotency_key: Option<String>,
    pub status: JobStatus,
    /// Lower goes first: the tier's deadline in milliseconds, so tighter tiers drain first.
    pub priority: u64,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// When the record (and result) is removed; set when the job reaches a final status.
    pub expires_ms: Option<u64>,
    /// Dispatch attempts made so far.
    pub attempts: u32,
    /// Not dispatched again before this time (back-off after a failed attempt).
    pub not_before_ms: u64,
    pub last_error: Option<String>,
    pub request: JobRequest,
    pub class: JobClass,
    pub callback_url: Option<String>,
    pub result: Option<JobResult>,
    /// The request body (bytes, not JSON: stored after the metadata).
    #[serde(skip)]
    pub body: Bytes,
    /// The pool's response body once finished.
    #[serde(skip)]
    pub result_body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} jobs)")]
    Full(u64),
    #[error("job store: {0}")]
    Store(String),
    #[error("corrupt job record: {0}")]
    Corrupt(String),
}

impl Job {
    /// Fresh random id: `job_` and 32 hex digits.
    pub fn new_id() -> String {
        format!("job_{:032x}", fastrand::u128(..))
    }

    /// Binary record: metadata as JSON, then the request body, then the result body, each
    /// length-prefixed, so bodies stay bytes (no base64) and the record stays one value.
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(self).unwrap_or_default();
        let mut out =
            Vec::with_capacity(12 + meta.len() + self.body.len() + self.result_body.len());
        for part in [&meta[..], &self.body[..], &self.result_body[..]] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Job, QueueError> {
        let mut parts = [&[][..]; 3];
        let mut rest = bytes;
        for part in parts.iter_mut() {
            if rest.len() < 4 {
                return Err(QueueError::Corrupt("truncated".into()));
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if rest.len() < len {
                return Err(QueueError::Corrupt("truncated".into()));
            }
            *part = &rest[..len];
            rest = &rest[len..];
        }
        let mut job: Job =
            serde_json::from_slice(parts[0]).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        job.body = Bytes::copy_from_slice(parts[1]);
        job.result_body = Bytes::copy_from_slice(parts[2]);
        Ok(job)
    }

    /// The job as the jobs API and callbacks show it.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "object": "job",
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "created_at_ms": self.created_ms,
            "started_at_ms": self.started_ms,
            "finished_at_ms": self.finished_ms,
            "expires_at_ms": self.expires_ms,
            "tier": self.class.tier,
            "model": self.class.model,
            "pool": self.class.pool,
            "last_error": self.last_error,
        });
        if let Some(r) = &self.result {
            // JSON results are inlined as JSON; anything else as text (and byte-exact at
            // `GET /v1/jobs/{id}/result`).
            let body = serde_json::from_slice::<serde_json::Value>(&self.result_body)
                .unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&self.result_body).into())
                });
            v["result"] = serde_json::json!({
                "status": r.status,
                "content_type": r.content_type,
                "body": body,
            });
        }
        v
    }
}

/// A new job, or the one an earlier request with the same idempotency key created.
pub enum Enqueued {
    Created(Job),
    Existing(Job),
}

/// Jobs waiting and running, and the age of the oldest waiting one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub queued: u64,
    pub running: u64,
    pub oldest_created_ms: Option<u64>,
}

/// Durable storage of jobs. Every method is a few storage round trips; none waits for a
/// pool. `enqueue` returns only once the job is durable.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Store a new job unless its idempotency key (within its scope) is known, or the queue
    /// already holds `max_jobs` unfinished jobs.
    async fn enqueue(&self, job: Job, max_jobs: u64) -> Result<Enqueued, QueueError>;
    /// The job, if it exists and has not expired.
    async fn get(&self, id: &str) -> Result<Option<Job>, QueueError>;
    /// Cancel a queued job of `scope`. `None`: no such job in that scope; otherwise the job
    /// as it is now (cancelled and kept `ttl`, or unchanged if it had already started).
    async fn cancel(&self, id: &str, scope: &str, ttl: Duration)
        -> Result<Option<Job>, QueueError>;
    /// Take up to `max` jobs that are due for `pool`, in priority then age order, and mark
    /// them running (attempts + 1). A running job whose dispatcher has not finished it within
    /// `lease` is taken again (a dispatcher died).
    async fn claim(&self, pool: &str, max: usize, lease: Duration) -> Result<Vec<Job>, QueueError>;
    /// Record a running job's outcome: final (succeeded / failed, kept `result_ttl`) or
    /// back to queued after a failed attempt (`not_before_ms` set).
    async fn update(&self, job: &Job) -> Result<(), QueueError>;
    async fn stats(&self) -> Result<Stats, QueueError>;
    /// Remove finished jobs whose TTL has passed. Returns how many.
    async fn sweep(&self) -> Result<usize, QueueError>;
    fn backend(&self) -> &'static str;
}

/// Gauges read at scrape time (`admin::refresh_gauges`), refreshed by the dispatcher.
#[derive(Default)]
pub struct QueueGauges {
    pub queued: AtomicU64,
    pub running: AtomicU64,
    /// Unix ms of the oldest queued job's creation; 0 when none.
    pub oldest_created_ms: AtomicU64,
}

static GAUGES: OnceLock<Arc<QueueGauges>> = OnceLock::new();

/// The process's queue gauges (one queue per process, like the metrics recorder).
pub fn gauges() -> &'static Arc<QueueGauges> {
    GAUGES.get_or_init(|| Arc::new(QueueGauges::default()))
}

/// Set the queue gauges from the last stats the dispatcher read (called at scrape).
pub fn refresh_gauges() {
    let Some(g) = GAUGES.get() else { return };
    use crate::telemetry as t;
    metrics::gauge!(t::QUEUE_DEPTH, "status" => "queued")
        .set(g.queued.load(Ordering::Relaxed) as f64);
    metrics::gauge!(t::QUEUE_DEPTH, "status" => "running")
        .set(g.running.load(Ordering::Relaxed) as f64);
    let oldest = g.oldest_created_ms.load(Ordering::Relaxed);
    let age = if oldest == 0 {
        0.0
    } else {
        unix_ms().saturating_sub(oldest) as f64 / 1e3
    };
    metrics::gauge!(t::QUEUE_OLDEST).set(age);
}

/// The queue as the proxy and the dispatcher share it.
pub struct Queue {
    pub store: Arc<dyn JobStore>,
    /// Wakes the dispatcher when a job arrives or a slot frees up.
    pub wake: Notify,
}

impl Queue {
    /// Open the backend the settings name. Start-up code: may block (opening the file,
    /// recovering jobs a crash left running) and fail.
    pub fn open(settings: &QueueSettings) -> Result<Arc<Queue>, QueueError> {
        let store: Arc<dyn JobStore> = match &settings.backend {
            crate::policy::compile::QueueBackend::Embedded { path } => {
                Arc::new(embedded::EmbeddedStore::open(path)?)
            }
            crate::policy::compile::QueueBackend::Redis { url, prefix } => {
                Arc::new(redis::RedisStore::new(url, prefix)?)
            }
        };
        Ok(Arc::new(Queue {
            store,
            wake: Notify::new(),
        }))
    }
}
