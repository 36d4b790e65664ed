//! The batch queue, as a user sees it: a batch-tier request is answered `202` with a job,
//! the job runs on the batch pool, and the jobs API shows its status and result — with the
//! embedded store and with Redis, across a crash and across two instances.
//!
//! Redis tests need `SWITCHYARD_TEST_REDIS` (`.ci/run` starts a `redis-server` and sets it).
//! Without it they fail under CI (`CI=true`) and are skipped, loudly, elsewhere.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{dead_addr, mock, test_redis, Gateway, Policy, Pool};

const BATCH: &[(&str, &str)] = &[("x-slo-tier", "batch")];

/// Policy: an edge pool for the real-time tiers, a batch pool, and a `queue:` section.
fn queue_policy(edge: SocketAddr, batch: SocketAddr, queue: &str) -> String {
    Policy::new()
        .pool(Pool::edge("edge").endpoint(edge).per_request(0.0001))
        .pool(Pool::batch("batch").endpoint(batch))
        .extra(queue)
        .render()
}

fn embedded(extra: &str) -> String {
    format!(
        "queue:\n  path: data/queue.redb\n  max_attempts: 3\n  backoff: {{ base: 50ms, max: 200ms }}\n  callback_allow: [\"127.0.0.1\"]\n{extra}"
    )
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

async fn enqueue(gw: &Gateway, headers: &[(&str, &str)], model: &str) -> String {
    let mut h = BATCH.to_vec();
    h.extend_from_slice(headers);
    let r = gw
        .post("/v1/chat/completions", &h, &support::chat(model))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = json(&r.body);
    let id = v["job_id"].as_str().expect("job_id").to_string();
    assert_eq!(v["status_url"], format!("/v1/jobs/{id}"));
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    id
}

async fn job(gw: &Gateway, id: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = gw.get(&format!("/v1/jobs/{id}"), headers).await;
    (r.status, json(&r.body))
}

/// Poll until the job reaches a final status (or panic after `within`).
async fn wait_final(gw: &Gateway, id: &str, headers: &[(&str, &str)], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = job(gw, id, headers).await;
        assert_eq!(status, 200, "{v}");
        if ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not finished: {v}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A dispatch window that is closed now (opens in 10 minutes), so jobs stay queued.
fn closed_window() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let m = (now / 60 + 10) % 1440;
    let e = (m + 10) % 1440;
    format!("{:02}:{:02}-{:02}:{:02}", m / 60, m % 60, e / 60, e % 60)
}

#[tokio::test]
async fn batch_request_is_queued_then_runs_on_the_batch_pool() {
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 5).await);
    let gw = Gateway::start(&queue_policy(edge.addr(), batch.addr(), &embedded(""))).await;

    let id = enqueue(&gw, &[], "llama-3-8b").await;
    let v = wait_final(&gw, &id, &[], Duration::from_secs(10)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["pool"], "batch");
    assert_eq!(v["result"]["status"], 200);
    assert!(v["result"]["body"].is_object(), "{v}");
    assert_eq!(batch.stats().requests, 1);
    assert_eq!(edge.stats().requests, 0);
    // The raw result, byte for byte.
    let r = gw.get(&format!("/v1/jobs/{id}/result"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body), v["result"]["body"]);

    // A real-time request is still proxied synchronously.
    let r = gw
        .post("/v1/chat/completions", &[], &support::chat("llama-3-8b"))
        .await;
    assert_eq!(r.status, 200);

    let m = gw.metrics().await;
    assert!(
        support::metric_sum(&m, "switchyard_jobs_total", &[("status", "succeeded")]) >= 1.0,
        "{m}"
    );
    assert!(support::metric_sum(&m, "switchyard_job_attempts_total", &[("pool", "batch")]) >= 1.0);
    assert!(m.contains("switchyard_queue_depth"), "{m}");
    assert!(m.contains("switchyard_queue_oldest_job_seconds"));
    assert!(m.contains("switchyard_job_dispatch_seconds"));
}

#[tokio::test]
async fn idempotency_cancel_scoping_and_a_full_queue() {
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 0).await);
    let extra = format!(
        "  max_jobs: 3\n  pools:\n    batch: {{ window: \"{}\" }}\n",
        closed_window()
    );
    let gw = Gateway::start(&queue_policy(edge.addr(), batch.addr(), &embedded(&extra))).await;
    let acme: &[(&str, &str)] = &[("authorization", "Bearer job-owner-key")];
    let other: &[(&str, &str)] = &[("authorization", "Bearer someone-else")];

    // The same Idempotency-Key from the same caller is the same job; from another, not.
    let a = enqueue(&gw, &[acme[0], ("idempotency-key", "k1")], "m").await;
    let again = enqueue(&gw, &[acme[0], ("idempotency-key", "k1")], "m").await;
    assert_eq!(a, again);
    let b = enqueue(&gw, &[other[0], ("idempotency-key", "k1")], "m").await;
    assert_ne!(a, b);

    // Another tenant cannot see or cancel it; nor can an anonymous caller.
    assert_eq!(job(&gw, &a, other).await.0, 404);
    assert_eq!(job(&gw, &a, &[]).await.0, 404);
    assert_eq!(
        gw.raw("DELETE", &format!("/v1/jobs/{a}"), other).await.0,
        404
    );
    let (status, v) = job(&gw, &a, acme).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("queued")),
        "window closed: nothing runs"
    );

    // Full: two jobs plus one more = max_jobs 3, the fourth is refused.
    let _c = enqueue(&gw, &[], "m").await;
    let r = gw
        .post("/v1/chat/completions", BATCH, &support::chat("m"))
        .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert_eq!(json(&r.body)["error"]["type"], "queue_full");

    // Cancel frees a place.
    let (status, body) = gw.raw("DELETE", &format!("/v1/jobs/{a}"), acme).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(job(&gw, &a, acme).await.1["status"], "cancelled");
    enqueue(&gw, &[], "m").await;
    assert_eq!(batch.stats().requests, 0);

    // Unknown ids and a malformed one are 404.
    assert_eq!(
        job(&gw, "job_00000000000000000000000000000000", acme)
            .await
            .0,
        404
    );
    assert_eq!(gw.get("/v1/jobs/nope", &[]).await.status, 404);
}

#[tokio::test]
async fn a_failing_pool_is_retried_until_it_recovers() {
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 0).await);
    batch.faults().set_error_rate(1.0);
    let gw = Gateway::start(&queue_policy(edge.addr(), batch.addr(), &embedded(""))).await;
    let id = enqueue(&gw, &[], "m").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while batch.stats().requests < 2 {
        assert!(Instant::now() < deadline, "not retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    batch.faults().set_error_rate(0.0);
    let v = wait_final(&gw, &id, &[], Duration::from_secs(10)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(v["attempts"].as_u64().unwrap() >= 2, "{v}");
}

#[tokio::test]
async fn a_dead_pool_fails_the_job_after_max_attempts() {
    let edge = mock("edge", 0).await;
    let gw = Gateway::start(&queue_policy(edge.addr(), dead_addr(), &embedded(""))).await;
    let id = enqueue(&gw, &[], "m").await;
    let v = wait_final(&gw, &id, &[], Duration::from_secs(15)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["attempts"], 3);
    let err = v["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("connect") || err.contains("no endpoint"),
        "{err}"
    );
}

#[tokio::test]
async fn callbacks_go_only_to_allowed_hosts() {
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 0).await);
    let (sink, seen) = support::sink().await;
    let gw = Gateway::start(&queue_policy(edge.addr(), batch.addr(), &embedded(""))).await;

    let url = format!("http://{sink}/done");
    let id = enqueue(&gw, &[("x-switchyard-callback-url", &url)], "m").await;
    wait_final(&gw, &id, &[], Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no callback");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = json(seen.lock().unwrap()[0].as_bytes());
    assert_eq!(delivered["id"], id.as_str());
    assert_eq!(delivered["status"], "succeeded");

    let mut h = BATCH.to_vec();
    h.push(("x-switchyard-callback-url", "http://evil.example.com/steal"));
    let r = gw
        .post("/v1/chat/completions", &h, &support::chat("m"))
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
}

/// Crash safety: SIGKILL mid-dispatch, restart on the same store, nothing is lost and every
/// job ends `succeeded` once.
#[tokio::test]
async fn jobs_survive_a_crash() {
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 20).await);
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(edge.addr()).per_request(0.0001))
        .pool(Pool::batch("batch").endpoint(batch.addr()).concurrency(8))
        .extra(&embedded(""));
    let mut gw = Gateway::start(&policy.render()).await;

    let mut ids = Vec::new();
    for chunk in 0..10 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let proxy = gw.proxy;
            let key = format!("crash-{chunk}-{i}");
            set.spawn(async move {
                let body = support::chat("m");
                let req = switchyard_testkit::client::Request::post(
                    "/v1/chat/completions",
                    body.as_bytes(),
                )
                .header("content-type", "application/json")
                .header("x-slo-tier", "batch")
                .header("idempotency-key", &key);
                switchyard_testkit::client::send(proxy, &req)
                    .await
                    .expect("enqueue")
            });
        }
        while let Some(r) = set.join_next().await {
            let r = r.expect("task");
            assert_eq!(
                r.status,
                202,
                "{:?} {}",
                r.header("x-switchyard-decision"),
                r.text()
            );
            ids.push(json(&r.body)["job_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 200);
    // Mid-dispatch: some done, most not.
    let deadline = Instant::now() + Duration::from_secs(20);
    while batch.stats().requests < 16 {
        assert!(Instant::now() < deadline, "dispatch did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill();
    let before = batch.stats().requests;
    assert!(before < 200, "killed too late to test anything ({before})");
    gw.restart().await;

    let mut succeeded = 0;
    for id in &ids {
        let v = wait_final(&gw, id, &[], Duration::from_secs(30)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        succeeded += 1;
    }
    assert_eq!(succeeded, 200);
    // The depth gauges are refreshed by the dispatcher about once a second.
    let m = gw
        .metrics_when(|m| support::metric_sum(m, "switchyard_queue_depth", &[]) == 0.0)
        .await;
    assert_eq!(
        support::metric_sum(&m, "switchyard_queue_depth", &[]),
        0.0,
        "{m}"
    );
}

fn redis_queue(url: &str, prefix: &str) -> String {
    format!(
        "queue:\n  backend: redis\n  redis_url: \"{url}\"\n  redis_prefix: \"{prefix}\"\n  max_attempts: 3\n  backoff: {{ base: 50ms, max: 200ms }}\n"
    )
}

#[tokio::test]
async fn redis_backend_enqueue_poll_result_across_two_instances() {
    let Some(url) = test_redis("queue") else {
        return;
    };
    let prefix = format!("test-{:x}", fastrand_u64());
    let (edge, batch) = (mock("edge", 0).await, mock("batch", 5).await);
    let text = queue_policy(edge.addr(), batch.addr(), &redis_queue(&url, &prefix));
    let one = Gateway::start(&text).await;
    let two = Gateway::start(&text).await;

    let acme: &[(&str, &str)] = &[("authorization", "Bearer job-owner-key")];
    let mut ids = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &one } else { &two };
        ids.push(enqueue(gw, acme, "m").await);
    }
    for id in &ids {
        let v = wait_final(&one, id, acme, Duration::from_secs(15)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        let (status, w) = job(&two, id, acme).await;
        assert_eq!(status, 200);
        assert_eq!(w["status"], "succeeded");
        assert_eq!(job(&two, id, &[]).await.0, 404, "scoped in Redis too");
    }
    assert!(batch.stats().requests >= 20);
    // Both instances dispatched (each wakes its own dispatcher when it enqueues).
    for gw in [&one, &two] {
        let m = gw.metrics().await;
        assert!(
            support::metric_sum(&m, "switchyard_job_attempts_total", &[]) >= 1.0,
            "{m}"
        );
    }
    // Idempotency holds across instances.
    let a = enqueue(&one, &[acme[0], ("idempotency-key", "same")], "m").await;
    let b = enqueue(&two, &[acme[0], ("idempotency-key", "same")], "m").await;
    assert_eq!(a, b);
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}
