//! The prediction cache on real sockets: a gateway process on loopback with a policy that
//! caches some routes, mock backends that count what reaches them.

mod support;

use std::time::Duration;
use support::*;
use switchyard_testkit::client::Response;
use switchyard_testkit::mock::MockBackend;

/// A deterministic chat request (temperature 0) asking `content`.
fn ask(content: &str) -> String {
    format!(
        r#"{{"model":"m1","temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

async fn fleet(latency_ms: u64, cache: &str) -> (Gateway, MockBackend) {
    let backend = mock("gpu", latency_ms).await;
    // Chat (per tenant, 10m), embeddings (shared), OIP (1s TTL), TF-Serving (not cached).
    let policy = Policy::new()
        .route(Route::chat().cache("{ ttl: 10m }"))
        .route(Route::embeddings().cache("{ ttl: 10m, scope: shared }"))
        .route(Route::oip().cache("{ ttl: 1s }"))
        .pool(Pool::gpu("gpu").endpoint(backend.addr()).per_request(0.002))
        .extra(cache);
    let gw = Gateway::start(&policy.render()).await;
    (gw, backend)
}

fn cache_header(r: &Response) -> &str {
    r.header("x-switchyard-cache").unwrap_or("(none)")
}

async fn chat(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Response {
    let r = gw.post("/v1/chat/completions", headers, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r
}

#[tokio::test]
async fn a_repeat_is_answered_from_memory() {
    let (gw, backend) = fleet(0, "").await;
    let first = chat(&gw, &[], &ask("hello")).await;
    assert_eq!(cache_header(&first), "miss");
    let key = first.header("x-switchyard-cache-key").unwrap().to_string();
    assert_eq!(key.len(), 64);

    let second = chat(&gw, &[], &ask("hello")).await;
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.body, first.body, "the stored answer, byte for byte");
    assert_eq!(second.header("x-switchyard-cache-key"), Some(key.as_str()));
    assert!(second.header("age").is_some());
    assert_eq!(
        second.header("content-type"),
        first.header("content-type"),
        "content headers are stored"
    );
    assert!(second
        .header("x-switchyard-decision")
        .unwrap()
        .starts_with("cache-hit"));
    assert_eq!(backend.stats().requests, 1, "the backend saw one call");

    // The store insert runs on a task after the answer (moka's insert is async; the flight
    // answers repeats until it lands), so on a busy machine the first scrape can come
    // before it: wait for the insert, not for a number.
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_cache_entries", &[]) >= 1.0)
        .await;
    assert_eq!(
        metric_sum(&m, "switchyard_cache_lookups_total", &[("result", "hit")]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_cache_lookups_total", &[("result", "miss")]),
        1.0
    );
    assert!(metric_sum(&m, "switchyard_cost_saved_nanousd_total", &[]) > 0.0);
    assert_eq!(metric_sum(&m, "switchyard_cache_entries", &[]), 1.0);
    assert!(metric_sum(&m, "switchyard_cache_bytes", &[]) > 0.0);
}

#[tokio::test]
async fn canonical_bodies_hit_and_any_difference_misses() {
    let (gw, backend) = fleet(0, "").await;
    chat(
        &gw,
        &[],
        r#"{"model":"m1","temperature":0,"messages":[{"role":"user","content":"a"}]}"#,
    )
    .await;
    let reordered = chat(
        &gw,
        &[],
        "{ \"messages\": [ {\"content\": \"a\", \"role\": \"user\"} ],\n  \"temperature\": 0, \"model\": \"m1\" }",
    )
    .await;
    assert_eq!(cache_header(&reordered), "hit");
    let other = chat(
        &gw,
        &[],
        r#"{"model":"m1","temperature":0,"messages":[{"role":"user","content":"b"}]}"#,
    )
    .await;
    assert_eq!(cache_header(&other), "miss");
    let extra_field = chat(
        &gw,
        &[],
        r#"{"model":"m1","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"a"}]}"#,
    )
    .await;
    assert_eq!(cache_header(&extra_field), "miss");
    // Sampling on: never cached.
    let sampled = r#"{"model":"m1","temperature":0.7,"messages":[]}"#;
    assert_eq!(cache_header(&chat(&gw, &[], sampled).await), "bypass");
    assert_eq!(cache_header(&chat(&gw, &[], sampled).await), "bypass");
    assert_eq!(backend.stats().requests, 5);
}

#[tokio::test]
async fn tenants_and_keys_never_share_entries_unless_the_route_is_shared() {
    let (gw, backend) = fleet(0, "").await;
    let body = ask("same question");
    let callers: [&[(&str, &str)]; 4] = [
        &[("authorization", "Bearer key-acme")], // tenant acme
        &[("x-api-key", "key-unknown-1")],       // unknown keys: scoped by key
        &[("x-api-key", "key-unknown-2")],
        &[], // anonymous
    ];
    let mut firsts = Vec::new();
    for headers in callers {
        let r = chat(&gw, headers, &body).await;
        assert_eq!(
            cache_header(&r),
            "miss",
            "{headers:?} must not see another's entry"
        );
        firsts.push(r.body.clone());
    }
    assert_eq!(backend.stats().requests, 4);
    // Each caller gets its own entry back, never another's.
    for (headers, first) in callers.iter().zip(&firsts) {
        let r = chat(&gw, headers, &body).await;
        assert_eq!(cache_header(&r), "hit");
        assert_eq!(&r.body, first, "{headers:?} got someone else's answer");
    }
    assert_eq!(backend.stats().requests, 4);

    // `scope: shared` (embeddings): every caller shares.
    let emb = r#"{"model":"e1","input":"public text"}"#;
    let a = gw
        .post("/v1/embeddings", &[("x-api-key", "key-unknown-1")], emb)
        .await;
    let b = gw
        .post(
            "/v1/embeddings",
            &[("authorization", "Bearer key-acme")],
            emb,
        )
        .await;
    assert_eq!((cache_header(&a), cache_header(&b)), ("miss", "hit"));
    assert_eq!(a.body, b.body);
    assert_eq!(backend.stats().requests, 5);
}

#[tokio::test]
async fn upstream_no_store_private_and_max_age_are_honoured() {
    let (gw, backend) = fleet(0, "").await;
    for cc in ["no-store", "private, max-age=60", "no-cache"] {
        let body = ask(cc);
        let h = [("x-mock-cache-control", cc)];
        assert_eq!(cache_header(&chat(&gw, &h, &body).await), "miss");
        assert_eq!(
            cache_header(&chat(&gw, &h, &body).await),
            "miss",
            "{cc} was stored"
        );
    }
    assert_eq!(backend.stats().requests, 6);

    // A shorter upstream max-age wins over the route's 10 minutes.
    let body = ask("short-lived");
    let h = [("x-mock-cache-control", "public, max-age=1")];
    assert_eq!(cache_header(&chat(&gw, &h, &body).await), "miss");
    assert_eq!(cache_header(&chat(&gw, &h, &body).await), "hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache_header(&chat(&gw, &h, &body).await), "miss");
}

#[tokio::test]
async fn client_no_store_and_no_cache_are_honoured() {
    let (gw, backend) = fleet(0, "").await;
    let body = ask("private matter");
    // no-store: neither read nor written.
    let ns = [("cache-control", "no-store")];
    assert_eq!(cache_header(&chat(&gw, &ns, &body).await), "bypass");
    assert_eq!(cache_header(&chat(&gw, &ns, &body).await), "bypass");
    let first = chat(&gw, &[], &body).await;
    assert_eq!(cache_header(&first), "miss", "no-store wrote nothing");
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "hit");
    assert_eq!(backend.stats().requests, 3);

    // no-cache: skips the read, refreshes the entry.
    let fresh = chat(&gw, &[("cache-control", "no-cache")], &body).await;
    assert_eq!(cache_header(&fresh), "miss");
    assert_ne!(fresh.body, first.body, "a fresh answer from the backend");
    assert_eq!(backend.stats().requests, 4);
    // The refresh lands asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = chat(&gw, &[], &body).await;
    assert_eq!(cache_header(&after), "hit");
    assert_eq!(after.body, fresh.body, "the entry was refreshed");
}

#[tokio::test]
async fn errors_are_not_cached() {
    let (gw, backend) = fleet(0, "").await;
    backend.faults().set_error_rate(1.0);
    let body = ask("fails");
    for _ in 0..2 {
        let r = gw.post("/v1/chat/completions", &[], &body).await;
        assert_eq!(r.status, 500);
        assert_eq!(cache_header(&r), "miss");
    }
    backend.faults().set_error_rate(0.0);
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "miss");
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "hit");
    assert_eq!(backend.stats().requests, 3);
}

#[tokio::test]
async fn entries_expire_after_the_route_ttl() {
    let (gw, backend) = fleet(0, "").await;
    let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}"#;
    let path = "/v2/models/resnet/infer";
    assert_eq!(cache_header(&gw.post(path, &[], body).await), "miss");
    assert_eq!(cache_header(&gw.post(path, &[], body).await), "hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache_header(&gw.post(path, &[], body).await), "miss");
    assert_eq!(backend.stats().requests, 2);
    // A different model version in the path is a different entry.
    let v2 = "/v2/models/resnet/versions/2/infer";
    assert_eq!(cache_header(&gw.post(v2, &[], body).await), "miss");
    // Routes without `cache:` never cache.
    let tf = "/v1/models/bert:predict";
    assert_eq!(
        cache_header(&gw.post(tf, &[], r#"{"instances":[1]}"#).await),
        "bypass"
    );
}

#[tokio::test]
async fn purge_all_by_model_and_by_key() {
    let (gw, backend) = fleet(0, "").await;
    let a = ask("a");
    let b = ask("b");
    let emb = r#"{"model":"e1","input":"x"}"#;
    let key_a = chat(&gw, &[], &a)
        .await
        .header("x-switchyard-cache-key")
        .unwrap()
        .to_string();
    chat(&gw, &[], &b).await;
    gw.post("/v1/embeddings", &[], emb).await;
    assert_eq!(backend.stats().requests, 3);

    // By key: only that entry.
    let r = gw
        .admin_post("/admin/cache/purge", &format!(r#"{{"key":"{key_a}"}}"#))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(cache_header(&chat(&gw, &[], &a).await), "miss");
    assert_eq!(cache_header(&chat(&gw, &[], &b).await), "hit");

    // By model: m1's entries go, e1's stay.
    let r = gw
        .admin_post("/admin/cache/purge", r#"{"model":"m1"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(cache_header(&chat(&gw, &[], &b).await), "miss");
    let e = gw.post("/v1/embeddings", &[], emb).await;
    assert_eq!(cache_header(&e), "hit");

    // All.
    let r = gw.admin_post("/admin/cache/purge", r#"{"all":true}"#).await;
    assert_eq!(r.status, 200);
    let e = gw.post("/v1/embeddings", &[], emb).await;
    assert_eq!(cache_header(&e), "miss");
    assert_eq!(cache_header(&chat(&gw, &[], &a).await), "miss");

    // Bad purge requests are refused with a reason.
    for bad in [
        r#"{}"#,
        r#"{"key":"nothex"}"#,
        r#"{"all":true,"model":"m1"}"#,
        r#"{"everything":1}"#,
    ] {
        let r = gw.admin_post("/admin/cache/purge", bad).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn a_hundred_identical_requests_reach_the_backend_once() {
    let (gw, backend) = fleet(200, "").await;
    let gw = std::sync::Arc::new(gw);
    let body = ask("everyone asks this at once");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (gw, body) = (gw.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            gw.post("/v1/chat/completions", &[], &body).await
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.insert(r.body.clone());
        *outcomes.entry(cache_header(&r).to_string()).or_default() += 1;
    }
    assert_eq!(backend.stats().requests, 1, "outcomes: {outcomes:?}");
    assert_eq!(bodies.len(), 1, "everyone got the leader's answer");
    assert_eq!(outcomes.get("miss"), Some(&1), "outcomes: {outcomes:?}");
    assert!(
        outcomes.get("coalesced").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn waiters_of_a_failing_leader_make_their_own_requests() {
    let (gw, backend) = fleet(150, "").await;
    backend.faults().set_error_rate(1.0);
    let gw = std::sync::Arc::new(gw);
    let body = ask("the backend is failing");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (gw, body) = (gw.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            gw.post("/v1/chat/completions", &[], &body).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            r.status, 500,
            "each gets its own (failed) answer, none hangs"
        );
    }
    assert_eq!(backend.stats().requests, 10);
}

#[tokio::test]
async fn the_cache_stays_within_max_bytes() {
    let max = 8 * 1024;
    let (gw, backend) = fleet(0, "cache: { max_bytes: 8KiB, max_entry_bytes: 4KiB }").await;
    for i in 0..80 {
        chat(&gw, &[], &ask(&format!("question number {i}"))).await;
    }
    assert_eq!(backend.stats().requests, 80);
    let stats = gw.admin_get("/admin/cache").await;
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let bytes = v["bytes"].as_u64().unwrap();
    assert!(bytes <= max, "weighted size {bytes} > {max}");
    assert!(bytes > 0 && v["entries"].as_u64().unwrap() < 80, "{v}");
    assert_eq!(v["max_bytes"].as_u64(), Some(max));
    let m = gw.metrics().await;
    assert!(metric_sum(&m, "switchyard_cache_bytes", &[]) <= max as f64);
    assert!(metric_sum(&m, "switchyard_cache_evictions_total", &[]) > 0.0 || bytes <= max);
}

#[tokio::test]
async fn a_response_over_the_entry_limit_is_served_not_stored() {
    let (gw, backend) = fleet(0, "cache: { max_entry_bytes: 64 }").await;
    let body = ask("a long answer");
    let first = chat(&gw, &[], &body).await;
    assert!(first.body.len() > 64);
    assert_eq!(cache_header(&first), "miss");
    let second = chat(&gw, &[], &body).await;
    assert_eq!(cache_header(&second), "miss");
    assert!(second.body.len() > 64);
    assert_eq!(backend.stats().requests, 2);
}

#[tokio::test]
async fn a_model_version_bump_in_the_policy_misses() {
    let (gw, backend) = fleet(0, "models: { m1: { version: \"1\" } }").await;
    let body = ask("versioned");
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "miss");
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "hit");
    let text = std::fs::read_to_string(&gw.policy_path).unwrap();
    std::fs::write(
        &gw.policy_path,
        text.replace("version: \"1\"", "version: \"2\""),
    )
    .unwrap();
    let r = gw.admin_post("/admin/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "miss");
    assert_eq!(cache_header(&chat(&gw, &[], &body).await), "hit");
    assert_eq!(backend.stats().requests, 2);
}

/// `observe.decision_headers: off` holds for answers from the cache too: the cache's own
/// headers stay (they are how a client finds the key to purge), the decision line does not.
#[tokio::test]
async fn a_hit_sends_no_decision_headers_when_they_are_off() {
    let (gw, _backend) = fleet(0, "observe: { decision_headers: off }\n").await;
    let first = chat(&gw, &[], &ask("quiet")).await;
    assert_eq!(cache_header(&first), "miss");
    let second = chat(&gw, &[], &ask("quiet")).await;
    assert_eq!(cache_header(&second), "hit");
    assert!(second.header("x-switchyard-cache-key").is_some());
    for r in [&first, &second] {
        assert_eq!(r.header("x-switchyard-decision"), None);
        assert_eq!(r.header("x-switchyard-pool"), None);
    }
}
