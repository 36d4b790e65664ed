//! The queue's face on the proxy listener: accepting a request as a job (the `202` path) and
//! the jobs API, `GET /v1/jobs/{id}` (status and, when finished, the result inline),
//! `GET /v1/jobs/{id}/result` (the pool's response body byte for byte) and
//! `DELETE /v1/jobs/{id}` (cancel a job that has not started).
//!
//! Jobs are scoped to whoever created them: the tenant of the API key, else the key itself
//! (its SHA-256), else "anonymous" (then the unguessable id is the only secret). Any other
//! caller gets the same 404 as for a job that does not exist.
//!
//! Which requests are queued ([`takes`]): those whose decision is `on_slo_miss: queue`, and
//! those routed to a pool of kind `batch` — when the policy has a `queue:` section. Without
//! one, batch pools are proxied synchronously like any other.

use super::{unix_ms, Enqueued, Job, JobClass, JobRequest, JobStatus, Queue, QueueError};
use crate::classify::{self, Class};
use crate::error::GatewayError;
use crate::policy::compile::RoutingTable;
use crate::policy::raw::PoolKind;
use crate::policy::url::parse_url;
use crate::reply::Reply;
use crate::route::{Decision, Reason};
use crate::telemetry as t;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

/// Request headers stored with a job and replayed to the pool. Credentials are never
/// stored: the pool sees the job as coming from the gateway.
pub const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Whether this decision sends the request to the queue instead of an upstream.
pub fn takes(table: &RoutingTable, decision: &Decision) -> bool {
    if table.queue.is_none() {
        return false;
    }
    decision.reason == Reason::Queued
        || decision
            .target
            .is_some_and(|(p, _)| table.pools[p as usize].kind == PoolKind::Batch)
}

/// Who may see a job: the tenant, else the credential, else anonymous.
pub fn scope(headers: &http::HeaderMap, table: &RoutingTable) -> String {
    match classify::api_key(headers) {
        Some(key) => {
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            match table.tenant_by_key_hash(&hash) {
                Some(t) => format!("tenant:{}", table.tenants[t as usize].name),
                None => format!(
                    "key:{}",
                    hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            }
        }
        None => "anonymous".into(),
    }
}

/// Store the request as a job and answer `202 Accepted`. The job is durable before the
/// answer is written. Returns the status written.
pub async fn enqueue(
    header: &RequestHeader,
    queue: &Queue,
    table: &RoutingTable,
    class: &Class,
    decision: &Decision,
    body: Bytes,
) -> Result<Reply, GatewayError> {
    let settings = table
        .queue
        .as_ref()
        .ok_or_else(|| GatewayError::Internal("no queue configured".into()))?;
    let Some((pool_id, _)) = decision.target else {
        return Err(GatewayError::Internal(
            "queued decision without a pool".into(),
        ));
    };
    let pool = &table.pools[pool_id as usize];

    let callback_url = match header.headers.get("x-switchyard-callback-url") {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| GatewayError::BadCallback("not a valid URL".into()))?
                .trim()
                .to_string();
            let url = parse_url(&text).ok_or_else(|| {
                GatewayError::BadCallback("expected http://host[:port]/path".into())
            })?;
            if !settings.callback_allowed(&url.host) {
                return Err(GatewayError::BadCallback(format!(
                    "host `{}` is not allowed by the policy (queue.callback_allow)",
                    url.host.chars().take(100).collect::<String>()
                )));
            }
            Some(text)
        }
    };
    let idempotency_key = match header.headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| GatewayError::BadIdempotencyKey)?
                .trim();
            if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(GatewayError::BadIdempotencyKey);
            }
            Some(k.to_string())
        }
    };
    let method = header.method.as_str().to_string();
    let path = header
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| header.uri.path().to_string());
    let headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let v = header.headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), v.to_string()))
        })
        .collect();
    let scope = scope(&header.headers, table);

    // The proxy has read the whole body (within the route's limit); a job is also bounded
    // by the queue's.
    let route = &table.routes[class.route as usize];
    let limit = route.max_body.min(settings.max_body);
    if body.len() > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }

    let now = unix_ms();
    let tier = &table.tiers[class.tier as usize];
    let job = Job {
        id: Job::new_id(),
        scope,
        idempotency_key,
        status: JobStatus::Queued,
        priority: tier.deadline.as_millis() as u64,
        created_ms: now,
        started_ms: None,
        finished_ms: None,
        expires_ms: None,
        attempts: 0,
        not_before_ms: 0,
        last_error: None,
        request: JobRequest {
            method,
            path,
            headers,
        },
        class: JobClass {
            route: route.name.clone(),
            tier: tier.name.clone(),
            model: class.model.clone(),
            region: table.regions[class.region as usize].clone(),
            pool: pool.name.clone(),
            client_ip: class.client_ip.to_string(),
        },
        callback_url,
        result: None,
        body,
        result_body: Bytes::new(),
    };
    let (job, replayed) = match queue.store.enqueue(job, settings.max_jobs).await {
        Ok(Enqueued::Created(job)) => {
            queue.wake.notify_one();
            metrics::counter!(t::JOBS_ENQUEUED, "tier" => tier.name.clone(), "pool" => pool.name.clone())
                .increment(1);
            (job, false)
        }
        Ok(Enqueued::Existing(job)) => (job, true),
        Err(QueueError::Full(max_jobs)) => return Err(GatewayError::QueueFull { max_jobs }),
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue job");
            return Err(GatewayError::QueueUnavailable(e.to_string()));
        }
    };

    let status_url = format!("/v1/jobs/{}", job.id);
    let body = serde_json::json!({
        "job_id": job.id,
        "status_url": status_url,
        "status": job.status.as_str(),
    })
    .to_string();
    let mut reply = Reply::json(202, Bytes::from(body))
        .with(http::header::LOCATION, status_url.as_str())
        .with(JOB_ID, job.id.as_str())
        .with(POOL, pool.name.as_str())
        .with(TIER, tier.name.as_str())
        .with(POLICY_VERSION, table.version.as_str())
        .with(
            DECISION,
            format!("queued; {}; pool={}", decision.reason.as_str(), pool.name),
        );
    if class.tier_source == crate::classify::TierSource::Budget {
        reply = reply.with(BUDGET, "downgraded");
    }
    if replayed {
        reply = reply.with(REPLAYED, "true");
    }
    // The job is stored before the answer is written: a client that does not get it can
    // retry with its idempotency key.
    Ok(reply)
}

const JOB_ID: HeaderName = HeaderName::from_static("x-switchyard-job-id");
const JOB_STATUS: HeaderName = HeaderName::from_static("x-switchyard-job-status");
const POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
const TIER: HeaderName = HeaderName::from_static("x-switchyard-tier");
const BUDGET: HeaderName = HeaderName::from_static("x-switchyard-budget");
const POLICY_VERSION: HeaderName = HeaderName::from_static("x-switchyard-policy-version");
const DECISION: HeaderName = HeaderName::from_static("x-switchyard-decision");
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The jobs API's answer if the path is under `/v1/jobs/`; `None`: not a jobs request.
pub async fn reply(header: &RequestHeader, queue: &Queue, table: &RoutingTable) -> Option<Reply> {
    let rest = header.uri.path().strip_prefix("/v1/jobs/")?;
    let (id, result_only) = match rest.strip_suffix("/result") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    Some(match answer(header, queue, table, id, result_only).await {
        Ok((status, content_type, body, job_status)) => {
            let mut reply = Reply::json(status, body).with(JOB_STATUS, job_status);
            if let Ok(v) = http::HeaderValue::from_str(&content_type) {
                reply.headers.insert(http::header::CONTENT_TYPE, v);
            }
            reply
        }
        Err(e) => {
            let mut reply = Reply::json(e.status(), e.body());
            if let Some(secs) = e.retry_after() {
                reply = reply.with(http::header::RETRY_AFTER, secs);
            }
            reply
        }
    })
}

/// Status, content type, body and the job's status.
type Answer = (u16, String, Bytes, &'static str);

async fn answer(
    header: &RequestHeader,
    queue: &Queue,
    table: &RoutingTable,
    id: &str,
    result_only: bool,
) -> Result<Answer, GatewayError> {
    let valid =
        id.len() == 36 && id.starts_with("job_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(GatewayError::JobNotFound);
    }
    let scope = scope(&header.headers, table);
    let unavailable = |e: QueueError| GatewayError::QueueUnavailable(e.to_string());
    let json = |job: &Job| {
        (
            200,
            "application/json".to_string(),
            Bytes::from(job.view().to_string()),
            job.status.as_str(),
        )
    };
    match (&header.method, result_only) {
        (&http::Method::GET, false) => match queue.store.get(id).await.map_err(unavailable)? {
            Some(job) if job.scope == scope => Ok(json(&job)),
            _ => Err(GatewayError::JobNotFound),
        },
        (&http::Method::GET, true) => match queue.store.get(id).await.map_err(unavailable)? {
            Some(job) if job.scope == scope => match &job.result {
                Some(r) => Ok((
                    r.status,
                    r.content_type
                        .clone()
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    job.result_body.clone(),
                    job.status.as_str(),
                )),
                None => Err(GatewayError::JobNotFinished(job.status.as_str())),
            },
            _ => Err(GatewayError::JobNotFound),
        },
        (&http::Method::DELETE, false) => {
            let ttl = table
                .queue
                .as_ref()
                .map(|q| q.result_ttl)
                .unwrap_or(std::time::Duration::from_secs(3600));
            match queue
                .store
                .cancel(id, &scope, ttl)
                .await
                .map_err(unavailable)?
            {
                Some(job) if job.status == JobStatus::Cancelled => {
                    metrics::counter!(t::JOBS, "status" => "cancelled").increment(1);
                    Ok(json(&job))
                }
                Some(job) => Err(GatewayError::JobNotCancellable(job.status.as_str())),
                None => Err(GatewayError::JobNotFound),
            }
        }
        (m, _) => Err(GatewayError::MethodNotAllowed(m.to_string())),
    }
}
