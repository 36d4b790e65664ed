//! Rollouts end to end: a model served in two versions at once (a canary split), each
//! version on its own pool under its own upstream name, the version sticky per caller.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::*;
use switchyard_gateway::redis::Pool as RedisPool;
use switchyard_gateway::rollout::shared::{Batch, Held, Pair, Shared};
use switchyard_gateway::rollout::{Counts, Phase};
use switchyard_testkit::fleet::MockSpec;
use switchyard_testkit::mock::MockBackend;

/// A mock that answers only `model` (404 for any other name), so a request that reaches it
/// un-rewritten fails.
async fn serving_only(name: &str, model: &str) -> MockBackend {
    let mut spec = MockSpec::new(name, Duration::ZERO, Duration::ZERO);
    spec.config.models = Some(vec![model.to_string()]);
    spec.start().await.expect("start mock")
}

/// `chat-v` split 90/10 between `v1` (pool `pool-v1`, upstream `llama-v1`) and `v2`
/// (pool `pool-v2`, upstream `llama-v2`, version `2` in OIP paths), sticky on `sticky`.
fn split_policy(v1: &MockBackend, v2: &MockBackend, sticky: &str) -> String {
    Policy::new()
        .pool(Pool::edge("pool-v1").endpoint(v1.addr()).models(["llama-v1"]))
        .pool(Pool::edge("pool-v2").endpoint(v2.addr()).models(["llama-v2"]))
        .extra(&format!(
            "models:\n  chat-v:\n    sticky: \"{sticky}\"\n    versions:\n      \
             - {{ name: v1, weight: 90, pools: [pool-v1], upstream_model: llama-v1 }}\n      \
             - {{ name: v2, weight: 10, pools: [pool-v2], upstream_model: llama-v2, upstream_version: \"2\" }}\n"
        ))
        .render()
}

#[tokio::test]
async fn a_90_10_split_lands_within_two_points_and_a_key_never_changes_version() {
    let v1 = serving_only("v1-backend", "llama-v1").await;
    let v2 = serving_only("v2-backend", "llama-v2").await;
    let gw = Gateway::start(&split_policy(&v1, &v2, "header:x-session")).await;

    const N: usize = 2000;
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut on_v2 = 0;
    for i in 0..N {
        let key = format!("session-{i}");
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-session", &key)],
                &chat("chat-v"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let version = r.header("x-switchyard-version").unwrap_or("").to_string();
        // The version's own pool answered, under the version's upstream name.
        let backend = r.header("x-served-by").unwrap_or("");
        assert_eq!(backend, format!("{version}-backend"), "request {i}");
        if version == "v2" {
            on_v2 += 1;
        }
        seen.insert(key, version);
    }
    let share = on_v2 as f64 * 100.0 / N as f64;
    println!("v2 share over {N} keys: {share:.2}%");
    assert!((8.0..=12.0).contains(&share), "v2 got {share:.2}% of {N}");

    // The same keys again, in another order: every one on the version it had.
    for i in (0..N).rev().step_by(3) {
        let key = format!("session-{i}");
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-session", &key)],
                &chat("chat-v"),
            )
            .await;
        assert_eq!(r.header("x-switchyard-version"), Some(seen[&key].as_str()));
    }
}

#[tokio::test]
async fn a_tenant_stays_on_one_version_and_a_path_can_name_one() {
    let v1 = serving_only("v1-backend", "llama-v1").await;
    let v2 = serving_only("v2-backend", "llama-v2").await;
    let gw = Gateway::start(&split_policy(&v1, &v2, "tenant")).await;

    let mut versions = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-api-key", "key-acme")],
                &chat("chat-v"),
            )
            .await;
        assert_eq!(r.status, 200);
        versions.insert(r.header("x-switchyard-version").unwrap_or("").to_string());
    }
    assert_eq!(versions.len(), 1, "{versions:?}");

    // OIP v2: a path naming `v2` gets v2, sent upstream as `llama-v2` version `2`.
    let infer = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0]}]}"#;
    let r = gw
        .post("/v2/models/chat-v/versions/v2/infer", &[], infer)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-switchyard-version"), Some("v2"));
    assert_eq!(r.header("x-served-by"), Some("v2-backend"));

    // `explain` shows the version a request gets and the split.
    let e = gw
        .admin_post(
            "/admin/explain",
            r#"{"client_ip":"127.0.0.1","path":"/v1/chat/completions","headers":{"x-api-key":"key-acme"},"model":"chat-v"}"#,
        )
        .await;
    assert_eq!(e.status, 200, "{}", String::from_utf8_lossy(&e.body));
    let e: serde_json::Value = e.json().unwrap();
    assert_eq!(
        e["class"]["version"].as_str(),
        versions.iter().next().map(String::as_str)
    );
    assert_eq!(e["class"]["split"]["versions"][1]["percent"], 10.0);
    assert_eq!(e["class"]["split"]["versions"][1]["pools"][0], "pool-v2");
}

#[test]
fn diff_shows_a_split_that_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    let policy = |w1: u32, w2: u32| {
        Policy::new()
            .pool(Pool::edge("pool-v1").endpoint("127.0.0.1:1"))
            .pool(Pool::edge("pool-v2").endpoint("127.0.0.1:2"))
            .extra(&format!(
                "models:\n  chat-v:\n    versions:\n      \
                 - {{ name: v1, weight: {w1}, pools: [pool-v1] }}\n      \
                 - {{ name: v2, weight: {w2}, pools: [pool-v2] }}\n"
            ))
            .render()
    };
    std::fs::write(&a, policy(90, 10)).unwrap();
    std::fs::write(&b, policy(75, 25)).unwrap();
    let (code, out, err) = run_cli(
        &["diff", a.to_str().unwrap(), b.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "split chat-v: v1 90.0% [pool-v1], v2 10.0% [pool-v2]; sticky tenant → \
             v1 75.0% [pool-v1], v2 25.0% [pool-v2]; sticky tenant"
        ),
        "{out}"
    );
    // The same split on both sides is not a change.
    let (_, out, _) = run_cli(
        &["diff", a.to_str().unwrap(), a.to_str().unwrap()],
        dir.path(),
    );
    assert!(!out.contains("split chat-v"), "{out}");
}

/// `chat-v` all on `v1` (pool `live`), mirrored to `v2` (pool `shadow`, weight 0) with
/// this `shadow:` block.
fn shadow_policy(live: &MockBackend, shadow: impl std::fmt::Display, block: &str) -> String {
    Policy::new()
        .pool(Pool::edge("live").endpoint(live.addr()))
        .pool(
            Pool::gpu("shadow")
                .endpoint(shadow)
                .price("{ per_request: 0.0002 }"),
        )
        .extra(&format!(
            "models:\n  chat-v:\n    versions:\n      \
             - {{ name: v1, weight: 100, pools: [live] }}\n      \
             - {{ name: v2, weight: 0, pools: [shadow] }}\n    shadow: {block}\n"
        ))
        .render()
}

const INFER: &str = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0]}]}"#;

#[tokio::test]
async fn a_shadow_copy_is_compared_but_never_waited_for_nor_billed() {
    let live = mock("live", 0).await;
    let slow = mock("shadow", 500).await;
    let gw = Gateway::start(&shadow_policy(
        &live,
        slow.addr(),
        "{ version: v2, percent: 100, max_in_flight: 4, compare: \"label:/outputs/0/data\" }",
    ))
    .await;

    // 12 requests back to back: each answered by v1 without waiting for its copy (a copy
    // takes 500 ms: waiting would take 6 s); beyond 4 copies in flight, copies are dropped.
    let start = std::time::Instant::now();
    for _ in 0..12 {
        let r = gw.post("/v2/models/chat-v/infer", &[], INFER).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-switchyard-version"), Some("v1"));
        assert_eq!(r.header("x-served-by"), Some("live"));
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "clients waited: {took:?}");

    // The copies that were sent answer and agree on the label; the rest were shed.
    let report = loop {
        let r = gw.admin_get("/admin/rollouts").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = r.json().unwrap();
        let s = v["models"]["chat-v"]["shadow"].clone();
        if s["in_flight"] == 0 && s["sent"].as_u64() > Some(0) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sent = report["sent"].as_u64().unwrap();
    assert!((4..12).contains(&sent), "{report}");
    assert_eq!(
        report["dropped_busy"].as_u64().unwrap() + sent,
        12,
        "{report}"
    );
    assert_eq!(report["agree"].as_u64(), Some(sent), "{report}");
    assert!(
        report["mean_shadow_ms"].as_f64().unwrap() >= 500.0,
        "{report}"
    );
    assert_eq!(slow.stats().oip_infer, sent);

    // Spend: the copies in their own counter, never in the requests' cost.
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            "switchyard_shadow_cost_nanousd_total",
            &[("version", "v2")]
        ) > 0.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_cost_nanousd_total", &[("pool", "shadow")]),
        0.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_shadow_compared_total",
            &[("result", "agree")]
        ),
        sent as f64
    );
}

/// Copies run on the gateway's shadow thread, not the proxy's: 200 requests from 20
/// clients at once, each mirrored to a pool that takes 500 ms, are answered as fast as the
/// live backend alone allows, and every copy is accounted for exactly once: sent (and then
/// compared) or dropped as `busy` beyond `max_in_flight`.
#[tokio::test]
async fn concurrent_clients_never_wait_for_their_copies() {
    let live = mock("live", 0).await;
    let slow = mock("shadow", 500).await;
    let gw = std::sync::Arc::new(
        Gateway::start(&shadow_policy(
            &live,
            slow.addr(),
            "{ version: v2, percent: 100, max_in_flight: 64 }",
        ))
        .await,
    );
    let start = std::time::Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let gw = gw.clone();
        clients.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..10 {
                let t = std::time::Instant::now();
                let r = gw.post("/v1/chat/completions", &[], &chat("chat-v")).await;
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                assert_eq!(r.header("x-served-by"), Some("live"));
                slowest = slowest.max(t.elapsed());
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for c in clients {
        slowest = slowest.max(c.await.expect("client"));
    }
    // Ten requests in a row per client: waiting for one copy would take 500 ms, for all 5 s.
    assert!(
        slowest < Duration::from_millis(450),
        "a client waited {slowest:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );

    let report = loop {
        let v: serde_json::Value = gw.admin_get("/admin/rollouts").await.json().unwrap();
        let s = v["models"]["chat-v"]["shadow"].clone();
        if s["in_flight"] == 0 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sent = report["sent"].as_u64().unwrap();
    let busy = report["dropped_busy"].as_u64().unwrap();
    assert_eq!(sent + busy, 200, "{report}");
    assert!(sent >= 64, "{report}");
    // Compared by status (the default): both versions answer 200.
    assert_eq!(report["agree"].as_u64(), Some(sent), "{report}");
    assert_eq!(slow.stats().chat, sent);
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_shadow_requests_total",
            &[("outcome", "sent")]
        ),
        sent as f64
    );
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_shadow_requests_total",
            &[("outcome", "busy")]
        ),
        busy as f64
    );
}

#[tokio::test]
async fn a_shadow_pool_that_is_down_costs_clients_nothing() {
    let live = mock("live", 0).await;
    let gw = Gateway::start(&shadow_policy(
        &live,
        dead_addr(),
        "{ version: v2, compare: exact, budget_per_day_usd: 1 }",
    ))
    .await;
    for _ in 0..10 {
        let r = gw.post("/v1/chat/completions", &[], &chat("chat-v")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-served-by"), Some("live"));
    }
    let m = gw
        .metrics_when(|m| {
            metric_sum(
                m,
                "switchyard_shadow_compared_total",
                &[("result", "failed")],
            ) + metric_sum(
                m,
                "switchyard_shadow_requests_total",
                &[("outcome", "unroutable")],
            ) >= 10.0
        })
        .await;
    let failed = metric_sum(
        &m,
        "switchyard_shadow_compared_total",
        &[("result", "failed")],
    );
    let unroutable = metric_sum(
        &m,
        "switchyard_shadow_requests_total",
        &[("outcome", "unroutable")],
    );
    assert_eq!(failed + unroutable, 10.0, "{m}");
}

#[tokio::test]
async fn a_shadow_budget_stops_the_copies_for_the_day() {
    let live = mock("live", 0).await;
    let other = mock("shadow", 0).await;
    // The shadow pool costs 0.0002 USD a request: a 0.0005 USD day holds two copies.
    let gw = Gateway::start(&shadow_policy(
        &live,
        other.addr(),
        "{ version: v2, budget_per_day_usd: 0.0005 }",
    ))
    .await;
    for _ in 0..6 {
        let r = gw.post("/v1/chat/completions", &[], &chat("chat-v")).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let m = gw
        .metrics_when(|m| {
            metric_sum(
                m,
                "switchyard_shadow_requests_total",
                &[("outcome", "budget")],
            ) >= 4.0
        })
        .await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_shadow_requests_total",
            &[("outcome", "sent")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_shadow_requests_total",
            &[("outcome", "budget")]
        ),
        4.0,
        "{m}"
    );
}

/// `chat-v` rolled out from `v1` (pool `stable`) to `v2` (pool `canary`) by `steps`, each
/// step ending after at least `min` canary requests; the version sticky on `x-session`.
/// Outlier ejection is out of the way (`eject_after: 1000`): a canary failing at random runs
/// into five errors in a row sooner or later, and ejected, each of its callers would be
/// charged to it as an error (see `a_canary_ejected_for_its_errors_…`), which would
/// change the error rate these tests measure the rollout's judgement on.
fn rollout_policy(stable: &MockBackend, canary: &MockBackend, steps: &str, min: u32) -> String {
    rollout_policy_on(
        "{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s, eject_after: 1000 }",
        stable.addr(),
        canary.addr(),
        steps,
        min,
    )
}

/// [`rollout_policy`] with this `upstream:` block, on these endpoints.
fn rollout_policy_on(
    upstream: &str,
    stable: impl std::fmt::Display,
    canary: impl std::fmt::Display,
    steps: &str,
    min: u32,
) -> String {
    Policy::new()
        .upstream(upstream)
        .pool(Pool::edge("stable").endpoint(stable))
        .pool(Pool::edge("canary").endpoint(canary))
        .extra(&format!(
            "models:\n  chat-v:\n    sticky: \"header:x-session\"\n    versions:\n      \
             - {{ name: v1, weight: 100, pools: [stable] }}\n      \
             - {{ name: v2, weight: 0, pools: [canary] }}\n    \
             rollout: {{ canary: v2, steps: {steps}, min_requests: {min} }}\n"
        ))
        .render()
}

async fn rollout_state(gw: &Gateway) -> serde_json::Value {
    let r = gw.admin_get("/admin/rollouts").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = r.json().unwrap();
    v["models"]["chat-v"]["rollout"].clone()
}

/// Send requests from new sessions until the rollout leaves `running` (or `max` requests):
/// how many were sent.
async fn drive(gw: &Gateway, from: usize, max: usize) -> usize {
    for i in 0..max {
        let key = format!("s-{}", from + i);
        let _ = gw
            .post(
                "/v1/chat/completions",
                &[("x-session", &key)],
                &chat("chat-v"),
            )
            .await;
        if i % 20 == 19 && rollout_state(gw).await["phase"] != "running" {
            return i + 1;
        }
    }
    max
}

#[tokio::test]
async fn a_canary_with_five_percent_errors_is_rolled_back_before_500_requests() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    canary.faults().set_error_rate(0.05);
    let gw = Gateway::start(&rollout_policy(&stable, &canary, "[10, 50, 100]", 50)).await;
    assert_eq!(rollout_state(&gw).await["canary_percent"], 10.0);

    let sent = drive(&gw, 0, 8000).await;
    let state = rollout_state(&gw).await;
    let served = canary.stats().requests;
    println!("rolled back after {sent} requests, {served} of them on the canary: {state}");
    assert_eq!(state["phase"], "rolled_back", "{state}");
    assert!(served < 500, "the canary served {served}");
    assert_eq!(state["canary_percent"], 0.0);

    // Rolled back: nobody reaches the canary any more.
    canary.reset_stats();
    drive(&gw, 100_000, 100).await;
    assert_eq!(canary.stats().requests, 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_rollout_transitions_total",
            &[("to", "rolled_back")]
        ),
        1.0
    );
}

/// Outlier ejection as it is by default (five 5xx answers in a row), ejected for 30 s.
const EJECTING: &str = "{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s }";

/// One request from session `s-{i}`: status and `x-switchyard-version`.
async fn ask(gw: &Gateway, i: usize) -> (u16, String, Option<String>) {
    let key = format!("s-{i}");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-session", &key)],
            &chat("chat-v"),
        )
        .await;
    let version = r.header("x-switchyard-version").unwrap_or("").to_string();
    (
        r.status,
        version,
        r.header("retry-after").map(str::to_string),
    )
}

#[tokio::test]
async fn a_canary_ejected_for_its_errors_is_charged_while_down_and_rolled_back() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    canary.faults().set_error_rate(1.0);
    let policy = rollout_policy_on(EJECTING, stable.addr(), canary.addr(), "[50, 100]", 20);
    let gw = Gateway::start(&policy).await;

    // Half the callers on a canary that answers 500 to everything: after five in a row it is
    // ejected, and every canary caller after that is charged to it and served by v1. The
    // step rolls back when the canary has 20 requests (a few times 20 in all: at 50 %, ~40).
    let mut answers = Vec::new();
    let mut explained = None;
    while rollout_state(&gw).await["phase"] == "running" {
        assert!(answers.len() < 120, "not rolled back after 120 requests");
        answers.push(ask(&gw, answers.len()).await);
        let fives = answers.iter().filter(|a| a.0 >= 500).count();
        if fives == 5 && explained.is_none() {
            // Ejected now: `explain` shows the last canary caller re-steered to v1.
            let body = format!(
                r#"{{"client_ip":"127.0.0.1","path":"/v1/chat/completions","headers":{{"x-session":"s-{}"}},"model":"chat-v"}}"#,
                answers.len() - 1
            );
            let e = gw.admin_post("/admin/explain", &body).await;
            explained = Some(e.json().unwrap());
        }
    }
    let e = explained.expect("five failures seen");
    assert_eq!(e["class"]["version"], "v1", "{e}");
    assert_eq!(e["class"]["resteered_from"], "v2", "{e}");
    assert_eq!(e["decision"]["pool"], "stable", "{e}");
    let state = rollout_state(&gw).await;
    println!("rolled back after {} requests: {state}", answers.len());
    assert_eq!(state["phase"], "rolled_back", "{state}");
    let last = state["last"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("error rate worse (canary 20/20 errors"),
        "{last}"
    );

    // The canary answered (500) until its ejection: five times, the first answers of v2.
    let failed: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i].0 != 200)
        .collect();
    assert_eq!(failed.len(), 5, "{answers:?}");
    assert_eq!(canary.stats().requests, 5);
    for &i in &failed {
        assert_eq!((answers[i].0, answers[i].1.as_str()), (500, "v2"), "{i}");
    }
    // From then on every caller got 200 from the stable version, its canary ones too.
    for (i, (status, version, _)) in answers.iter().enumerate().skip(failed[4] + 1) {
        assert_eq!((*status, version.as_str()), (200, "v1"), "request {i}");
    }
    let m = gw.metrics().await;
    let charged = metric_sum(&m, "switchyard_rollout_canary_unservable_total", &[]);
    assert_eq!(charged, 15.0, "20 canary requests: 5 answered, 15 charged");
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_rollout_transitions_total",
            &[("to", "rolled_back")]
        ),
        1.0
    );

    // Rolled back: everyone on v1, the canary never asked again.
    for i in 1000..1040 {
        let (status, version, _) = ask(&gw, i).await;
        assert_eq!((status, version.as_str()), (200, "v1"));
    }
    assert_eq!(canary.stats().requests, 5);
}

#[tokio::test]
async fn with_both_versions_down_a_canary_caller_gets_503_the_canary_is_charged_and_judged_once_stable_is_back(
) {
    // Both versions down: an outage, not a canary worse than stable. Each endpoint refuses
    // its first connection (that request is its version's error) and is ejected; every
    // request after that finds no pool: 503 with Retry-After, the canary charged for its
    // callers. The step is not decided on it: stable failed as often (1 of 1), and the test
    // is against stable's rate. Once stable is back, its answers are the yardstick and the
    // charged canary is rolled back.
    let stable = mock("stable", 0).await;
    stable.faults().set_down(true);
    let upstream = "{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 500ms }";
    let policy = rollout_policy_on(upstream, stable.addr(), dead_addr(), "[50, 100]", 10);
    let gw = Gateway::start(&policy).await;
    let mut answers = Vec::new();
    for i in 0..30 {
        answers.push(ask(&gw, i).await);
    }
    assert!(
        answers
            .iter()
            .all(|(status, _, retry)| *status == 503 && retry.is_some()),
        "{answers:?}"
    );
    // Only the canary's first caller was on v2 (its connection refused); the rest went to v1.
    assert!(
        answers.iter().filter(|a| a.1 == "v2").count() <= 1,
        "{answers:?}"
    );
    let state = rollout_state(&gw).await;
    assert_eq!(state["phase"], "running", "decided on an outage: {state}");
    let m = gw.metrics().await;
    let charged = metric_sum(&m, "switchyard_rollout_canary_unservable_total", &[]);
    assert!(charged >= 10.0, "{charged} charged");

    // Stable back: once its endpoint's back-off has passed, it answers, and the canary is
    // rolled back on the stable version's answers.
    stable.faults().set_down(false);
    let mut n = answers.len();
    while rollout_state(&gw).await["phase"] == "running" {
        assert!(n < 400, "not rolled back after stable came back");
        let _ = ask(&gw, n).await;
        n += 1;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let state = rollout_state(&gw).await;
    assert_eq!(state["phase"], "rolled_back", "{state}");
    let (status, version, _) = ask(&gw, 10_000).await;
    assert_eq!((status, version.as_str()), (200, "v1"));
}

#[tokio::test]
async fn a_canary_that_hangs_is_judged_on_its_timeouts_and_rolled_back() {
    // The canary answers after 2 s; the tier gives up after 250 ms: every canary caller gets
    // the gateway's 504, which is the canary's error (the evidence is every request that went
    // upstream, not only the answered ones). Ejection is off, so the timeouts themselves are
    // the evidence, not the charge of an ejected canary.
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    canary.faults().set_extra_latency(Duration::from_secs(2));
    let policy = Policy::new()
        .tier(Tier::standard().with("timeout", "250ms"))
        .upstream(
            "{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s, eject_after: 1000 }",
        )
        .pool(Pool::edge("stable").endpoint(stable.addr()))
        .pool(Pool::edge("canary").endpoint(canary.addr()))
        .extra(
            "models:\n  chat-v:\n    sticky: \"header:x-session\"\n    versions:\n      \
             - { name: v1, weight: 100, pools: [stable] }\n      \
             - { name: v2, weight: 0, pools: [canary] }\n    \
             rollout: { canary: v2, steps: [50, 100], min_requests: 10 }\n",
        )
        .render();
    let gw = Gateway::start(&policy).await;
    let mut answers = Vec::new();
    while rollout_state(&gw).await["phase"] == "running" {
        assert!(
            answers.len() < 60,
            "not rolled back after 60 requests: {answers:?}"
        );
        answers.push(ask(&gw, answers.len()).await);
    }
    let state = rollout_state(&gw).await;
    println!("rolled back after {} requests: {state}", answers.len());
    assert_eq!(state["phase"], "rolled_back", "{state}");
    let last = state["last"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("error rate worse (canary 10/10 errors"),
        "{last}"
    );
    // Every canary caller timed out (504, v2); every stable one was answered.
    for (i, (status, version, _)) in answers.iter().enumerate() {
        match version.as_str() {
            "v2" => assert_eq!(*status, 504, "request {i}"),
            _ => assert_eq!((*status, version.as_str()), (200, "v1"), "request {i}"),
        }
    }
    assert_eq!(answers.iter().filter(|a| a.1 == "v2").count(), 10);
    // Rolled back: nobody waits on the canary any more.
    for i in 1000..1020 {
        let (status, version, _) = ask(&gw, i).await;
        assert_eq!((status, version.as_str()), (200, "v1"));
    }
}

#[tokio::test]
async fn a_good_canary_reaches_100_percent_through_its_steps_unattended() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let gw = Gateway::start(&rollout_policy(&stable, &canary, "[20, 50, 100]", 50)).await;
    let sent = drive(&gw, 0, 8000).await;
    let state = rollout_state(&gw).await;
    println!("promoted after {sent} requests: {state}");
    assert_eq!(state["phase"], "promoted", "{state}");
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_rollout_transitions_total",
            &[("to", "step")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_rollout_canary_percent", &[]),
        100.0
    );
    stable.reset_stats();
    drive(&gw, 100_000, 50).await;
    assert_eq!(stable.stats().requests, 0);
    // `explain` chooses as the rollout does (the weights as written say v1).
    let e = gw
        .admin_post(
            "/admin/explain",
            r#"{"client_ip":"127.0.0.1","path":"/v1/chat/completions","headers":{"x-session":"anyone"},"model":"chat-v"}"#,
        )
        .await;
    let e: serde_json::Value = e.json().unwrap();
    assert_eq!(e["class"]["version"], "v2", "{e}");
}

#[tokio::test]
async fn a_rollout_is_paused_promoted_and_aborted_by_hand_and_survives_a_restart() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let mut gw = Gateway::start(&rollout_policy(&stable, &canary, "[10, 50, 100]", 1000)).await;
    let r = gw.admin_post("/admin/rollouts/chat-v/pause", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(rollout_state(&gw).await["phase"], "paused");
    let r = gw.admin_post("/admin/rollouts/chat-v/promote", "").await;
    assert_eq!(r.status, 200);
    let r = gw.admin_post("/admin/rollouts/chat-v/resume", "").await;
    assert_eq!(r.status, 200);
    let state = rollout_state(&gw).await;
    assert_eq!(
        (state["step"].as_u64(), state["canary_percent"].as_f64()),
        (Some(1), Some(50.0))
    );

    // A restart resumes at the step it had.
    gw.restart().await;
    let state = rollout_state(&gw).await;
    assert_eq!(state["phase"], "running", "{state}");
    assert_eq!(state["canary_percent"], 50.0, "{state}");

    let r = gw.admin_post("/admin/rollouts/chat-v/abort", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(rollout_state(&gw).await["canary_percent"], 0.0);
    // Nothing more to do on a rolled-back rollout, nor on an unknown model or action.
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/promote", "")
            .await
            .status,
        409
    );
    assert_eq!(
        gw.admin_post("/admin/rollouts/nope/abort", "").await.status,
        409
    );
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/jump", "")
            .await
            .status,
        404
    );
    // The canary fixed under the same name: restarted from its first step, counts afresh.
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/restart", "")
            .await
            .status,
        200
    );
    let state = rollout_state(&gw).await;
    assert_eq!(
        (
            state["phase"].as_str(),
            state["step"].as_u64(),
            state["canary_percent"].as_f64()
        ),
        (Some("running"), Some(0), Some(10.0)),
        "{state}"
    );
    assert_eq!(state["canary_counts"]["requests"], 0, "{state}");
    // Restart applies to a rolled-back rollout only.
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/restart", "")
            .await
            .status,
        409
    );
}

/// A rollout's canary, phase and canary share, as `GET /admin/rollouts` shows them.
fn at(state: &serde_json::Value) -> (Option<&str>, Option<&str>, Option<f64>) {
    (
        state["canary"].as_str(),
        state["phase"].as_str(),
        state["canary_percent"].as_f64(),
    )
}

/// [`rollout_policy`] with the canary version named `canary`.
fn rollout_of(stable: &MockBackend, canary_mock: &MockBackend, canary: &str) -> String {
    Policy::new()
        .pool(Pool::edge("stable").endpoint(stable.addr()))
        .pool(Pool::edge("canary").endpoint(canary_mock.addr()))
        .extra(&format!(
            "models:\n  chat-v:\n    sticky: \"header:x-session\"\n    versions:\n      \
             - {{ name: v1, weight: 100, pools: [stable] }}\n      \
             - {{ name: {canary}, weight: 0, pools: [canary] }}\n    \
             rollout: {{ canary: {canary}, steps: [10, 50, 100], min_requests: 1000 }}\n"
        ))
        .render()
}

#[tokio::test]
async fn a_new_canary_starts_its_own_rollout_after_a_reload_or_a_restart() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let mut gw = Gateway::start(&rollout_of(&stable, &canary, "v2")).await;
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/abort", "")
            .await
            .status,
        200
    );
    assert_eq!(rollout_state(&gw).await["phase"], "rolled_back");

    // The operator ships v3 as the new canary: it starts at its first step, not at v2's
    // rolled-back 0 % (nor, had v2 been promoted, at 100 %).
    std::fs::write(&gw.policy_path, rollout_of(&stable, &canary, "v3")).expect("write");
    assert_eq!(gw.admin_post("/admin/reload", "").await.status, 200);
    let state = rollout_state(&gw).await;
    assert_eq!(
        at(&state),
        (Some("v3"), Some("running"), Some(10.0)),
        "{state}"
    );
    // v3's own progress survives a restart.
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/promote", "")
            .await
            .status,
        200
    );
    gw.restart().await;
    let state = rollout_state(&gw).await;
    assert_eq!(
        (state["canary"].as_str(), state["canary_percent"].as_f64()),
        (Some("v3"), Some(50.0)),
        "{state}"
    );
    // A restart on a policy naming another canary does not resume v3's state file.
    std::fs::write(&gw.policy_path, rollout_of(&stable, &canary, "v4")).expect("write");
    gw.restart().await;
    let state = rollout_state(&gw).await;
    assert_eq!(
        at(&state),
        (Some("v4"), Some("running"), Some(10.0)),
        "{state}"
    );
}

#[test]
fn the_simulator_rolls_back_bad_canaries_and_promotes_a_good_one() {
    let (code, out, err) = run_cli(
        &[
            "simulate",
            "--rollout",
            "chat-v",
            "--policy",
            "policies/canary.yaml",
            "--rate",
            "50",
            "--json",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = |name: &str| {
        r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["canary"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(run("good")["outcome"], "promoted", "{r}");
    assert_eq!(run("good")["hurt"], 0, "{r}");
    for bad in ["3x slower", "5% errors"] {
        let c = run(bad);
        assert_eq!(c["outcome"], "rolled_back", "{r}");
        assert!(c["canary_requests"].as_u64().unwrap() < 500, "{r}");
    }
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_is_warned_once_and_the_steps_still_apply() {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    // As under a read-only ConfigMap mount: the file's directory cannot be written.
    let policy = rollout_policy(&stable, &canary, "[10, 50, 100]", 1000).replace(
        "min_requests: 1000",
        "min_requests: 1000, state_file: no-such-dir/chat-v.json",
    );
    let gw = Gateway::start(&policy).await;
    for _ in 0..2 {
        let r = gw.admin_post("/admin/rollouts/chat-v/promote", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let state = rollout_state(&gw).await;
    assert_eq!(state["step"], 2, "{state}");
    assert_eq!(state["canary_percent"], 100.0, "{state}");
    assert!(
        state["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-dir")),
        "{state}"
    );
    assert_eq!(
        state["history"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );
    let log = gw.log();
    assert_eq!(
        log.matches("cannot write the rollout state file").count(),
        1,
        "{log}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_rollout_state_file_errors_total", &[]),
        2.0
    );
}

/// [`rollout_policy`] with its state shared on the Redis at `url` under `prefix`.
fn shared_rollout_policy(
    stable: &MockBackend,
    canary: &MockBackend,
    steps: &str,
    min: u32,
    url: &str,
    prefix: &str,
) -> String {
    shared(rollout_policy(stable, canary, steps, min), url, prefix)
}

/// `policy` with its rollouts' state shared on the Redis at `url` under `prefix`.
fn shared(policy: String, url: &str, prefix: &str) -> String {
    format!(
        "{policy}limits:\n  backend: redis\n  redis_url: {url}\n  redis_prefix: {prefix}\n  redis_timeout: 500ms\n"
    )
}

fn fresh_prefix() -> String {
    format!("syroll{:016x}", fastrand::u64(..))
}

/// `gw`'s rollout once it reads its state from Redis (at most 5 s).
async fn joined(gw: &Gateway) -> serde_json::Value {
    rollout_until(gw, Duration::from_secs(5), |s| {
        s["state"]["source"] == "redis"
    })
    .await
    .0
}

/// One gateway sharing a canary rollout (`steps`, `min` requests a step) through the Redis
/// at `url` under `prefix`, joined to it; with the stable and canary mocks it routes to.
async fn one_instance_on(
    url: &str,
    prefix: &str,
    steps: &str,
    min: u32,
) -> (MockBackend, MockBackend, Gateway) {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let gw = Gateway::start(&shared_rollout_policy(
        &stable, &canary, steps, min, url, prefix,
    ))
    .await;
    joined(&gw).await;
    (stable, canary, gw)
}

/// Two gateway instances sharing a canary rollout (10 → 50 → 100 %, 1,000 requests a step)
/// through the Redis at `url` under key prefix `prefix`, both reading their state from it;
/// with the stable and canary mocks they route to.
async fn two_instances_on(url: &str, prefix: &str) -> (MockBackend, MockBackend, Gateway, Gateway) {
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let policy = shared_rollout_policy(&stable, &canary, "[10, 50, 100]", 1000, url, prefix);
    let a = Gateway::start(&policy).await;
    let b = Gateway::start(&policy).await;
    for gw in [&a, &b] {
        joined(gw).await;
    }
    (stable, canary, a, b)
}

/// Poll `gw`'s rollout until `done` holds (at most `within`): the state, and how long it took.
async fn rollout_until(
    gw: &Gateway,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = std::time::Instant::now();
    loop {
        let state = rollout_state(gw).await;
        if done(&state) {
            return (state, start.elapsed());
        }
        assert!(start.elapsed() < within, "not within {within:?}: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` requests from new sessions `from..from + n`; every status seen.
async fn send(gw: &Gateway, from: usize, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for i in from..from + n {
        let key = format!("s-{i}");
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-session", &key)],
                &chat("chat-v"),
            )
            .await;
        out.push(r.status);
    }
    out
}

#[tokio::test]
async fn two_instances_on_one_redis_judge_one_rollout_on_their_summed_counts() {
    let Some(url) = test_redis("rollout") else {
        return;
    };
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    // A clean canary is accepted after ~145 canary requests (0 errors): at 50 %, 160 requests
    // to one instance give it ~80, too few alone; both instances' together suffice.
    let policy = shared_rollout_policy(&stable, &canary, "[50, 100]", 100, &url, &fresh_prefix());
    let a = Gateway::start(&policy).await;
    let b = Gateway::start(&policy).await;
    for gw in [&a, &b] {
        let state = joined(gw).await;
        assert_eq!(state["canary_percent"], 50.0, "{state}");
    }

    assert!(send(&a, 0, 160).await.iter().all(|s| *s == 200));
    let on_canary = canary.stats().requests;
    assert!((50..145).contains(&on_canary), "{on_canary} on the canary");
    // B, which served nothing, sees A's counts within a tick or two.
    let (state, _) = rollout_until(&b, Duration::from_secs(3), |s| {
        s["canary_counts"]["requests"].as_u64() == Some(on_canary)
    })
    .await;
    assert_eq!(state["phase"], "running", "{state}");

    assert!(send(&b, 1000, 160).await.iter().all(|s| *s == 200));
    let (state, _) = rollout_until(&a, Duration::from_secs(3), |s| s["phase"] == "promoted").await;
    let last = state["last"].as_str().unwrap_or_default();
    // The decision counted more canary requests than A's alone.
    let counted: u64 = last
        .split("canary 0/")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(counted > on_canary, "{last} (A alone: {on_canary})");
    rollout_until(&b, Duration::from_secs(3), |s| s["phase"] == "promoted").await;
    // Applied once for the fleet: one instance counts the transition, the other adopted it.
    let promoted = |m: &str| {
        metric_sum(
            m,
            "switchyard_rollout_transitions_total",
            &[("to", "promoted")],
        )
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(promoted(&ma) + promoted(&mb), 1.0);
}

#[tokio::test]
async fn two_instances_charge_an_ejected_canary_into_the_fleets_counts_and_roll_it_back() {
    let Some(url) = test_redis("rollout") else {
        return;
    };
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    canary.faults().set_error_rate(1.0);
    let policy = shared(
        rollout_policy_on(EJECTING, stable.addr(), canary.addr(), "[50, 100]", 30),
        &url,
        &fresh_prefix(),
    );
    let a = Gateway::start(&policy).await;
    let b = Gateway::start(&policy).await;
    for gw in [&a, &b] {
        joined(gw).await;
    }
    // Each instance ejects the canary after its own five 500s, then charges its canary
    // callers to the step's counts in Redis and serves them from v1. 30 canary requests a
    // step: neither instance reaches it alone in 20 requests to each (at 50 %, ~10 canary
    // callers each); together, with a few more, they do.
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push(ask(&a, i).await);
        answers.push(ask(&b, 1000 + i).await);
    }
    // Each instance's canary requests so far (its 500s and its charges), and A's view of the
    // step's counts: both instances' once flushed.
    let charged = |m: &str| metric_sum(m, "switchyard_rollout_canary_unservable_total", &[]);
    let own = |m: &str, from: usize| {
        charged(m) as u64
            + answers[from..]
                .iter()
                .step_by(2)
                .filter(|a| a.0 == 500)
                .count() as u64
    };
    let (own_a, own_b) = (own(&a.metrics().await, 0), own(&b.metrics().await, 1));
    assert!(own_a > 5 && own_b > 5, "A {own_a}, B {own_b}: both charged");
    let (state, _) = rollout_until(&a, Duration::from_secs(3), |s| {
        s["canary_counts"]["requests"].as_u64() == Some(own_a + own_b)
    })
    .await;
    println!("after 40 requests, A {own_a} and B {own_b} canary requests: {state}");
    assert_eq!(
        state["phase"], "running",
        "neither alone nor together at 30 yet"
    );
    assert_eq!(state["canary_counts"]["errors"], own_a + own_b);
    let mut i = 20;
    while rollout_state(&a).await["phase"] == "running" {
        assert!(i < 120, "not rolled back after {} requests", 2 * i);
        answers.push(ask(&a, i).await);
        answers.push(ask(&b, 1000 + i).await);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (state, _) = rollout_until(&b, Duration::from_secs(3), |s| s["phase"] != "running").await;
    assert_eq!(state["phase"], "rolled_back", "{state}");
    let last = state["last"].as_str().unwrap_or_default();
    assert!(last.starts_with("error rate worse (canary "), "{last}");
    // At most five 500s per instance (their ejections), everything else 200 from v1.
    let failed = answers.iter().filter(|a| a.0 != 200).count();
    assert!(failed <= 10, "{answers:?}");
    assert!(answers.iter().all(
        |(status, version, _)| (*status, version.as_str()) == (500, "v2")
            || (*status, version.as_str()) == (200, "v1")
    ));
    assert!(canary.stats().requests <= 10);
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let rolled = |m: &str| {
        metric_sum(
            m,
            "switchyard_rollout_transitions_total",
            &[("to", "rolled_back")],
        )
    };
    assert_eq!(rolled(&ma) + rolled(&mb), 1.0, "applied once for the fleet");
}

#[tokio::test]
async fn a_rollback_on_one_instance_and_commands_on_either_reach_the_other() {
    let Some(url) = test_redis("rollout") else {
        return;
    };
    let stable = mock("stable", 0).await;
    let canary = mock("canary", 0).await;
    let policy =
        shared_rollout_policy(&stable, &canary, "[10, 50, 100]", 20, &url, &fresh_prefix());
    let a = Gateway::start(&policy).await;
    let mut b = Gateway::start(&policy).await;
    for gw in [&a, &b] {
        joined(gw).await;
    }

    // A manual promote on A moves B; a pause on B stops A; a resume on A runs both again.
    let r = a.admin_post("/admin/rollouts/chat-v/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (state, took) = rollout_until(&b, Duration::from_secs(2), |s| s["step"] == 1).await;
    println!("B followed A's promote in {took:?}");
    assert_eq!(state["canary_percent"], 50.0, "{state}");
    // B restarts with a stale state file (step 0): the fleet's state in Redis wins.
    let file = b.dir.path().join("switchyard-rollout-chat-v.json");
    let saved = std::fs::read_to_string(&file).expect("B wrote its state file");
    assert!(saved.contains("\"step\":1"), "{saved}");
    std::fs::write(&file, r#"{"step":0,"phase":"running","last":"stale"}"#).unwrap();
    b.restart().await;
    let state = joined(&b).await;
    assert_eq!(state["step"], 1, "{state}");
    assert_eq!(state["canary_percent"], 50.0, "{state}");
    assert_eq!(
        b.admin_post("/admin/rollouts/chat-v/pause", "")
            .await
            .status,
        200
    );
    rollout_until(&a, Duration::from_secs(2), |s| s["phase"] == "paused").await;
    assert_eq!(
        a.admin_post("/admin/rollouts/chat-v/resume", "")
            .await
            .status,
        200
    );
    rollout_until(&b, Duration::from_secs(2), |s| s["phase"] == "running").await;

    // A canary failing 30 % of requests (not enough in a row to be ejected), seen by A only:
    // the fleet's state rolls it back (decided by whichever instance's tick is first), and
    // B follows.
    canary.faults().set_error_rate(0.3);
    let mut from = 0;
    let state = loop {
        send(&a, from, 20).await;
        from += 20;
        let s = rollout_state(&a).await;
        if s["phase"] == "rolled_back" {
            break s;
        }
        assert!(from < 2000, "never rolled back: {s}");
    };
    let (_, took) =
        rollout_until(&b, Duration::from_secs(2), |s| s["phase"] == "rolled_back").await;
    println!("B followed A's rollback in {took:?}: {state}");
    assert!(took < Duration::from_secs(1), "B followed after {took:?}");
    canary.reset_stats();
    assert!(send(&b, 100_000, 50).await.iter().all(|s| *s == 200));
    assert_eq!(canary.stats().requests, 0);
    // A command on a rolled-back rollout is refused on either instance.
    assert_eq!(
        b.admin_post("/admin/rollouts/chat-v/promote", "")
            .await
            .status,
        409
    );
    // Restarted on B (the canary fixed): A follows to the first step, and does not push its
    // rollback back over it (the restart is a later epoch than its rollback).
    assert_eq!(
        b.admin_post("/admin/rollouts/chat-v/restart", "")
            .await
            .status,
        200
    );
    let (state, took) =
        rollout_until(&a, Duration::from_secs(2), |s| s["phase"] == "running").await;
    assert_eq!(state["canary_percent"], 10.0, "{state}");
    println!("A followed B's restart in {took:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    for gw in [&a, &b] {
        let state = rollout_state(gw).await;
        assert_eq!(state["phase"], "running", "{state}");
    }
}

#[tokio::test]
async fn with_redis_stopped_both_instances_serve_on_local_state_and_rejoin() {
    let Some(mut redis) = own_redis("shared rollout outage") else {
        return;
    };
    let (_stable, canary, a, b) = two_instances_on(&redis.url(), "outage").await;
    assert_eq!(
        a.admin_post("/admin/rollouts/chat-v/promote", "")
            .await
            .status,
        200
    );
    rollout_until(&b, Duration::from_secs(2), |s| s["step"] == 1).await;

    redis.stop();
    // Both keep serving (never a 5xx) while they notice, and after.
    let mut statuses = Vec::new();
    statuses.extend(send(&a, 0, 30).await);
    statuses.extend(send(&b, 1000, 30).await);
    for gw in [&a, &b] {
        let (state, _) = rollout_until(gw, Duration::from_secs(5), |s| {
            s["state"]["source"] == "local_fallback"
        })
        .await;
        assert_eq!(state["canary_percent"], 50.0, "{state}");
    }
    statuses.extend(send(&a, 2000, 30).await);
    statuses.extend(send(&b, 3000, 30).await);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert_eq!(metric_sum(&m, "switchyard_rollout_shared", &[]), 0.0);
        assert!(metric_sum(&m, "switchyard_rollout_redis_errors_total", &[]) >= 1.0);
        let log = gw.log();
        assert_eq!(
            log.matches("redis unreachable: rollouts decide").count(),
            1,
            "{log}"
        );
    }
    // An abort while Redis is away reaches only the instance asked...
    let r = a.admin_post("/admin/rollouts/chat-v/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rollout_state(&a).await["canary_percent"], 0.0);
    assert_eq!(rollout_state(&b).await["canary_percent"], 50.0);

    // ...and, Redis back (empty), both rejoin one state: a rollback wins the rejoin.
    let port = redis.port;
    let _redis = OwnRedis::start(Some(port)).expect("restart redis-server");
    for gw in [&a, &b] {
        let (state, _) = rollout_until(gw, Duration::from_secs(10), |s| {
            s["state"]["source"] == "redis" && s["phase"] == "rolled_back"
        })
        .await;
        assert_eq!(state["canary_percent"], 0.0, "{state}");
        let m = gw.metrics().await;
        assert_eq!(metric_sum(&m, "switchyard_rollout_shared", &[]), 1.0);
    }
    canary.reset_stats();
    assert!(send(&b, 5000, 30).await.iter().all(|s| *s == 200));
    assert_eq!(canary.stats().requests, 0);
    // Commands reach the fleet again.
    assert_eq!(
        b.admin_post("/admin/rollouts/chat-v/promote", "")
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn a_step_taken_while_redis_hangs_is_the_fleets_when_it_answers_again() {
    let Some(redis) = own_redis("shared rollout hang") else {
        return;
    };
    let (_stable, _canary, a, b) = two_instances_on(&redis.url(), "hang").await;
    // Redis hangs (its data kept): calls time out, both instances fall back.
    redis.signal("-STOP");
    for gw in [&a, &b] {
        rollout_until(gw, Duration::from_secs(5), |s| {
            s["state"]["source"] == "local_fallback"
        })
        .await;
    }
    // A promote on A alone, while nobody can move the fleet's state...
    let r = a.admin_post("/admin/rollouts/chat-v/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rollout_state(&b).await["step"], 0);
    assert!(send(&b, 0, 20).await.iter().all(|s| *s == 200));
    // ...is the newest decision when Redis answers again: A pushes it, B adopts it.
    redis.signal("-CONT");
    for gw in [&a, &b] {
        let (state, _) = rollout_until(gw, Duration::from_secs(10), |s| {
            s["state"]["source"] == "redis" && s["step"] == 1
        })
        .await;
        assert_eq!(state["canary_percent"], 50.0, "{state}");
    }
}

/// A batch of `canary` and `stable` requests with `errors` canary errors.
fn deltas(canary: u64, errors: u64, stable: u64) -> Pair {
    Pair {
        canary: Counts {
            requests: canary,
            errors,
            slo_misses: 0,
            cost_nanousd: canary * 10,
        },
        stable: Counts {
            requests: stable,
            errors: 0,
            slo_misses: 0,
            cost_nanousd: stable * 10,
        },
    }
}

/// `field` of `chat-v`'s rollout hash under `prefix`, read by a client of the test's own
/// (0 when absent).
async fn hash_field(redis: &RedisPool, prefix: &str, field: &str) -> u64 {
    let key = format!("{prefix}:rollout:chat-v");
    let v = redis
        .cmd(&[b"HGET", key.as_bytes(), field.as_bytes()])
        .await
        .expect("HGET");
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_flush_whose_answer_was_lost_is_sent_again_and_added_once() {
    let Some(mut redis) = own_redis("rollout sync replay") else {
        return;
    };
    let prefix = fresh_prefix();
    let sh = Shared::new(&redis.url(), &prefix, Duration::from_millis(500)).expect("shared");
    let seed = Held {
        epoch: 1,
        step: 0,
        phase: Phase::Running,
        last: "started".into(),
        by: sh.instance.clone(),
    };
    let sync = |batch: Batch| {
        let (sh, seed) = (&sh, seed.clone());
        async move { sh.sync("chat-v", "v2", &batch, &seed).await }
    };
    let first = sync(sh.batch(None, Pair::default())).await.expect("seed");
    assert!(first.seeded);
    let held_epoch = first.held.epoch;
    let epoch = Some(held_epoch);

    // 1. The script ran but its answer came after the timeout: Redis is stopped with the
    // call sent, and reads and runs it once continued, the client gone.
    let one = sh.batch(epoch, deltas(7, 2, 30));
    redis.signal("-STOP");
    let lost = sync(one.clone()).await;
    redis.signal("-CONT");
    assert!(lost.is_err(), "{lost:?}");
    let probe = RedisPool::new(&redis.url(), Duration::from_secs(5)).expect("pool");
    let mut ran = 0;
    for _ in 0..50 {
        ran = hash_field(&probe, &prefix, "c_n").await;
        if ran > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ran, 7, "the timed-out sync ran on Redis");
    // The same batch again (as the sync tick sends it): the counts hold it once.
    let again = sync(one.clone()).await.expect("resend");
    assert!(again.added && again.replayed, "{again:?}");
    assert_eq!(again.fleet, deltas(7, 2, 30));
    // And again, however many times.
    let thrice = sync(one).await.expect("resend");
    assert_eq!(thrice.fleet, deltas(7, 2, 30));

    // 2. The script did not run: writes are paused for longer than the timeout.
    let two = sh.batch(epoch, deltas(5, 0, 40));
    probe
        .cmd(&[b"CLIENT", b"PAUSE", b"900", b"WRITE"])
        .await
        .expect("CLIENT PAUSE");
    let lost = sync(two.clone()).await;
    assert!(lost.is_err(), "{lost:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hash_field(&probe, &prefix, "c_n").await, 7, "not run");
    let again = sync(two).await.expect("resend");
    assert!(again.added && !again.replayed, "{again:?}");
    assert_eq!(again.fleet, deltas(12, 2, 70));

    // 3. Another instance (or this one restarted: a new instance id) numbers its batches
    // from 1 again: they are its own, added.
    let other = Shared::new(&redis.url(), &prefix, Duration::from_millis(500)).expect("shared");
    let theirs = other
        .sync("chat-v", "v2", &other.batch(epoch, deltas(1, 1, 1)), &seed)
        .await
        .expect("other instance");
    assert!(theirs.added && !theirs.replayed);
    assert_eq!(theirs.fleet, deltas(13, 3, 71));

    // 4. A batch counted under an epoch Redis has left is refused, not added, numbered or not.
    let stale = sh.batch(Some(held_epoch + 7), deltas(100, 0, 0));
    let refused = sync(stale).await.expect("stale");
    assert!(!refused.added, "{refused:?}");
    assert_eq!(refused.fleet, deltas(13, 3, 71));

    // 5. Redis restarted empty while a batch was unanswered: the resend seeds the new hash
    // and is added there once (the counts it was to join are gone with the numbers).
    let five = sh.batch(epoch, deltas(3, 0, 3));
    let port = redis.port;
    redis.stop();
    assert!(sync(five.clone()).await.is_err());
    let _redis = OwnRedis::start(Some(port)).expect("restart redis-server");
    let again = sync(five.clone()).await.expect("resend after restart");
    assert!(again.seeded && again.added && !again.replayed, "{again:?}");
    assert_eq!(again.fleet, deltas(3, 0, 3));
    let again = sync(five).await.expect("resend");
    assert!(again.replayed);
    assert_eq!(again.fleet, deltas(3, 0, 3));
}

#[tokio::test]
async fn requests_whose_flush_timed_out_are_in_the_fleets_counts_once() {
    let Some(redis) = own_redis("rollout sync late") else {
        return;
    };
    let prefix = fresh_prefix();
    // No step decidable within the test: no transition zeroes the counts under it.
    let (stable, canary, gw) = one_instance_on(&redis.url(), &prefix, "[50, 100]", 100_000).await;
    let mut statuses = send(&gw, 0, 40).await;
    // Redis stops with the next flushes sent to it: they time out on the gateway, are sent
    // again, and all run once Redis continues.
    redis.signal("-STOP");
    statuses.extend(send(&gw, 1000, 40).await);
    let sync_errors = |m: &str| {
        metric_sum(
            m,
            "switchyard_rollout_redis_errors_total",
            &[("op", "sync")],
        )
    };
    let start = std::time::Instant::now();
    while sync_errors(&gw.metrics().await) < 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no sync timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.signal("-CONT");
    statuses.extend(send(&gw, 2000, 40).await);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let served = stable.stats().requests + canary.stats().requests;
    assert_eq!(served, 120);
    // Settled: nothing of this instance's unflushed, and the fleet's counts (read from
    // Redis) are the requests served, each once.
    let total = |s: &serde_json::Value| {
        s["canary_counts"]["requests"].as_u64().unwrap_or(0)
            + s["stable_counts"]["requests"].as_u64().unwrap_or(0)
    };
    let (state, _) = rollout_until(&gw, Duration::from_secs(5), |s| {
        s["state"]["source"] == "redis" && s["state"]["local_counts"] == 0 && total(s) >= served
    })
    .await;
    assert_eq!(total(&state), served, "{state}");
    assert_eq!(
        state["canary_counts"]["requests"].as_u64(),
        Some(canary.stats().requests),
        "{state}"
    );
    let probe = RedisPool::new(&redis.url(), Duration::from_secs(5)).expect("pool");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held = hash_field(&probe, &prefix, "c_n").await + hash_field(&probe, &prefix, "s_n").await;
    assert_eq!(held, served);
    assert_eq!(total(&rollout_state(&gw).await), served);
}

#[tokio::test]
async fn a_redis_that_lost_its_data_never_puts_a_rolled_back_canary_back() {
    let Some(redis) = own_redis("rollout reseed") else {
        return;
    };
    let prefix = fresh_prefix();
    let (_stable, _canary, gw) =
        one_instance_on(&redis.url(), &prefix, "[10, 50, 100]", 1000).await;
    assert_eq!(
        gw.admin_post("/admin/rollouts/chat-v/abort", "")
            .await
            .status,
        200
    );
    let probe = RedisPool::new(&redis.url(), Duration::from_secs(5)).expect("pool");
    let key = format!("{prefix}:rollout:chat-v");
    let phase = || async {
        let v = probe
            .cmd(&[b"HGET", key.as_bytes(), b"phase"])
            .await
            .expect("HGET");
        v.as_str().unwrap_or_default().to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while phase().await != "rolled_back" {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollback never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let epoch = hash_field(&probe, &prefix, "epoch").await;

    // Redis loses its data, and an instance that lagged a step behind (it never saw the
    // abort) seeds it first, with its own state: running, at this instance's very epoch.
    probe.cmd(&[b"FLUSHALL"]).await.expect("FLUSHALL");
    let epoch = epoch.to_string();
    probe
        .cmd(&[
            b"HSET",
            key.as_bytes(),
            b"canary",
            b"v2",
            b"epoch",
            epoch.as_bytes(),
            b"step",
            b"0",
            b"phase",
            b"running",
            b"last",
            b"started",
            b"by",
            b"lagging-instance",
        ])
        .await
        .expect("HSET");
    // The instance that rolled back puts its rollback back in Redis (for every instance to
    // adopt), instead of taking the seed for its own state.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while phase().await != "rolled_back" {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis kept the lagging instance's running state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = rollout_state(&gw).await;
    assert_eq!(state["phase"], "rolled_back", "{state}");
    assert_eq!(state["canary_percent"], 0.0, "{state}");
}
