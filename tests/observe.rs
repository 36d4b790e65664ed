//! What an operator reads off a running gateway, on real sockets: abandoned requests are
//! counted as `499` (not as errors the gateway never sent) and leave no in-flight count
//! behind; the status JSON shows the cache and the queue; a live `/metrics` scrape passes
//! `promtool check metrics` (when `promtool` is installed); the bill (capacity accrued busy or
//! idle, usage per request, egress per byte that crosses regions) reads the same in
//! `/admin/spend`, the metrics and the status JSON.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;

/// Send a chat request on a fresh connection, then close it before the answer comes.
async fn send_and_abandon(proxy: SocketAddr, after: Duration) {
    let body = chat("m");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    drop(s);
}

/// Poll `/admin/pools` until every pool and endpoint has nothing in flight (at most 10 s);
/// the last answer.
async fn pools_when_idle(gw: &Gateway) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = gw.pools().await;
        if in_flight_sum(&pools) == 0 || Instant::now() > deadline {
            return pools;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every `in_flight` number anywhere in a JSON document.
fn in_flight_sum(v: &Value) -> u64 {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                ("in_flight", Some(n)) => n,
                _ => in_flight_sum(v),
            })
            .sum(),
        Value::Array(items) => items.iter().map(in_flight_sum).sum(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_are_499s_that_still_cost_and_leave_nothing_in_flight() {
    // The backend takes 2 s; each client gives up after 300 ms.
    let slow = mock("slow", 2000).await;
    let policy = Policy::new().pool(Pool::edge("edge").endpoint(slow.addr()).per_request(0.5));
    let gw = Gateway::start(&policy.render()).await;
    let clients: Vec<_> = (0..40)
        .map(|_| tokio::spawn(send_and_abandon(gw.proxy, Duration::from_millis(300))))
        .collect();
    for c in clients {
        c.await.expect("client task");
    }

    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[("status", "499")]) >= 40.0)
        .await;
    assert_eq!(
        metric_sum(&m, "switchyard_requests_total", &[("status", "499")]),
        40.0,
        "every abandoned request is one 499\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "switchyard_requests_total", &[]),
        40.0,
        "and nothing else (no 503s the gateway never sent)\n{m}"
    );
    // The backend was already working on them: that spend counts (0.5 USD each).
    assert_eq!(
        metric_sum(&m, "switchyard_cost_nanousd_total", &[("pool", "edge")]),
        40.0 * 0.5e9,
        "{m}"
    );
    let pools = pools_when_idle(&gw).await;
    assert_eq!(
        in_flight_sum(&pools),
        0,
        "in-flight counts left behind: {pools}"
    );
    assert!(
        pools.to_string().contains("\"in_flight\""),
        "the pools report in-flight counts: {pools}"
    );
}

/// A cached chat route, an edge pool and a batch pool whose dispatch window is closed (jobs
/// stay queued), so the cache and the queue both have something to show.
async fn cache_and_queue_fleet() -> (Gateway, switchyard_testkit::mock::MockBackend) {
    let edge = mock("edge", 0).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (m, e) = ((now / 60 + 10) % 1440, (now / 60 + 20) % 1440);
    let queue = format!(
        "cache: {{ max_bytes: 1MiB }}\nqueue:\n  path: data/queue.redb\n  pools:\n    batch: {{ window: \"{:02}:{:02}-{:02}:{:02}\" }}\n",
        m / 60,
        m % 60,
        e / 60,
        e % 60
    );
    let policy = Policy::new()
        .pool(
            Pool::edge("edge")
                .endpoint(edge.addr())
                .per_request(0.001)
                .with("capacity", "{ min_replicas: 0 }"),
        )
        .pool(Pool::batch("batch").endpoint(dead_addr()))
        .routes([Route::chat().cache("{ ttl: 10m }")])
        .extra(&queue);
    let gw = Gateway::start(&policy.render()).await;
    (gw, edge)
}

/// A deterministic (cacheable) chat request.
fn ask(content: &str) -> String {
    format!(
        r#"{{"model":"m1","temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

/// Two misses, two hits, one queued job.
async fn cache_and_queue_traffic(gw: &Gateway) {
    for content in ["a", "b", "a", "b"] {
        let r = gw.post("/v1/chat/completions", &[], &ask(content)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "batch")],
            &chat("m1"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_shows_the_cache_and_the_queue() {
    let (gw, edge) = cache_and_queue_fleet().await;
    cache_and_queue_traffic(&gw).await;
    assert_eq!(
        edge.stats().requests,
        2,
        "the repeats were answered from memory"
    );

    // Queue depth comes from the dispatcher's statistics (refreshed every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let r = gw.admin_get("/admin/status").await;
        assert_eq!(r.status, 200);
        let s: Value = serde_json::from_slice(&r.body).expect("status JSON");
        if s["queue"]["depth"] == 1 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cache = &s["cache"];
    assert_eq!(cache["hit_ratio"], 0.5, "{s}");
    assert_eq!(cache["hits_total"], 2, "{s}");
    assert_eq!(cache["max_bytes"], 1024 * 1024, "{s}");
    // Two hits of a pool costing 0.001 USD a request.
    let saved = cache["saved_usd_total"].as_f64().unwrap_or(0.0);
    assert!((saved - 0.002).abs() < 1e-9, "{s}");
    assert!(
        cache["saved_usd_per_hour"].as_f64().unwrap_or(0.0) > 0.0,
        "{s}"
    );
    let queue = &s["queue"];
    assert_eq!(queue["depth"], 1, "{s}");
    assert!(queue["oldest_job_s"].as_f64().is_some(), "{s}");
    // The traffic split names where answers came from: the pool, the cache, the queue.
    let split: Vec<(String, u64)> = s["split"]
        .as_array()
        .expect("split")
        .iter()
        .map(|p| {
            (
                p["pool"].as_str().unwrap_or("").to_string(),
                p["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (pool, n) in [("edge", 2), ("cache", 2), ("queue", 1)] {
        assert!(
            split.contains(&(pool.to_string(), n)),
            "{pool}: {n} expected in {split:?}"
        );
    }
    assert!(
        !split.iter().any(|(p, _)| p == "(none)"),
        "nothing unanswered: {split:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("note: promtool is not installed; skipping `promtool check metrics` (.ci/run installs it)");
        return;
    };
    assert!(out.status.success(), "promtool --version failed");
    let (gw, _edge) = cache_and_queue_fleet().await;
    cache_and_queue_traffic(&gw).await;
    let m = gw
        .metrics_when(|m| {
            metric_sum(m, "switchyard_cost_saved_nanousd_total", &[]) > 0.0
                && m.contains("switchyard_pool_desired_replicas{")
        })
        .await;
    for family in [
        "switchyard_cost_nanousd_total",
        "switchyard_pool_desired_replicas",
        "switchyard_pool_arrival_rate",
        "switchyard_pool_forecast_arrival_rate",
        "switchyard_cost_saved_nanousd_total",
        "switchyard_cache_lookups_total",
        "switchyard_queue_depth",
        "switchyard_request_duration_seconds_bucket",
    ] {
        assert!(m.contains(family), "{family} missing from the scrape:\n{m}");
    }
    promtool_accepts(&m);
}

/// `promtool check metrics` finds nothing to say about the scrape `m`.
fn promtool_accepts(m: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(m.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\nscrape:\n{m}"
    );
}

#[tokio::test]
async fn the_access_log_is_written_off_the_request_path_as_json_lines() {
    let edge = mock("edge", 0).await;
    // The policy names a file: written whatever RUST_LOG says about `switchyard::access`.
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(edge.addr()))
        .extra("observe: { access_log: access.jsonl, access_log_format: json }");
    let gw = Gateway::start(&policy.render()).await;
    for i in 0..20 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-forwarded-for", "192.0.2.10")],
                &chat(&format!("model-{i}")),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = gw.post("/nowhere", &[], "{}").await;
    assert_eq!(r.status, 404);
    let path = gw.dir.path().join("access.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect();
        if lines.len() >= 21 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 21, "{lines:?}");
    // (Lines of requests answered by different threads may interleave.)
    let first = lines
        .iter()
        .find(|l| l["model"] == "model-0")
        .expect("the first request's line");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "chat");
    assert_eq!(first["region"], "eu");
    assert_eq!(first["pool"], "edge");
    assert_eq!(first["model"], "model-0");
    assert_eq!(first["attempts"], 1);
    assert!(first["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(first["ms"].as_f64().is_some());
    let refused = lines
        .iter()
        .find(|l| l["status"] == 404)
        .expect("the 404's line");
    assert_eq!(refused["route"], "none");
    assert_eq!(refused["pool"], "none");
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_access_log_dropped_total", &[]),
        0.0
    );
}

/// `observe.decision_headers`: `no-endpoint` keeps internal addresses from clients, `off`
/// sends no decision header at all, and a reload switches between them without a restart.
#[tokio::test]
async fn decision_headers_hide_the_endpoint_or_go_off_and_follow_a_reload() {
    let backend = mock("edge-us", 0).await;
    let with = |which: &str| {
        Policy::new()
            .pool(Pool::edge("edge-us").endpoint(backend.addr()).models(["m"]))
            .extra(&format!("observe: {{ decision_headers: {which} }}"))
            .render()
    };
    let gw = Gateway::start(&with("no-endpoint")).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-switchyard-pool"), Some("edge-us"));
    assert!(r.header("x-switchyard-decision").is_some());
    assert_eq!(r.header("x-switchyard-endpoint"), None);

    std::fs::write(&gw.policy_path, with("off")).expect("write policy");
    let reload = gw.admin_post("/admin/reload", "").await;
    assert_eq!(
        reload.status,
        200,
        "{}",
        String::from_utf8_lossy(&reload.body)
    );
    let status = gw.admin_get("/admin/policy").await;
    let status: Value = serde_json::from_slice(&status.body).expect("policy JSON");
    assert_eq!(
        status["restart_required"],
        serde_json::json!([]),
        "{status}"
    );
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("edge-us"));
    for name in [
        "pool",
        "endpoint",
        "decision",
        "tier",
        "region",
        "policy-version",
    ] {
        assert_eq!(r.header(&format!("x-switchyard-{name}")), None, "{name}");
    }

    std::fs::write(&gw.policy_path, with("all")).expect("write policy");
    assert_eq!(gw.admin_post("/admin/reload", "").await.status, 200);
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(
        r.header("x-switchyard-endpoint"),
        Some(backend.addr().to_string().as_str())
    );
}

fn promtool_installed() -> bool {
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bill_shows_capacity_busy_or_idle_usage_and_egress() {
    let (gpu, edge) = (mock("gpu", 0).await, mock("edge", 0).await);
    // A provisioned GPU pool beside the clients (us): 1 replica at $36/hour is $0.01 a
    // second, paid whether it serves or not. A per-use edge pool in eu, $0.001 a request,
    // and $1,000 per GB from us to eu and back ($1e-6 a byte), so a few requests show.
    let policy = Policy::new()
        .pool(
            Pool::gpu("gpu")
                .endpoint(gpu.addr())
                .price("{ per_replica_hour: 36 }"),
        )
        .pool(
            Pool::edge("edge-eu")
                .region("eu")
                .endpoint(edge.addr())
                .per_request(0.001),
        )
        .tier(Tier::new("standard", "5s", 0.0, ["edge"]))
        .extra("egress_usd_per_gb: { us: { eu: 1000 } }\n");
    let started = Instant::now();
    let gw = Gateway::start(&policy.render()).await;
    let body = chat("m");
    let mut answer_bytes = 0;
    for _ in 0..5 {
        let r = gw.post("/v1/chat/completions", &[], &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-pool"), Some("edge-eu"));
        answer_bytes += r.body.len();
    }
    // Idle time is paid too.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let spend = gw.admin_get("/admin/spend").await;
    assert_eq!(spend.status, 200, "{}", spend.text());
    let spend: Value = serde_json::from_slice(&spend.body).expect("json");
    let pool = |name: &str| {
        spend["pools"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["pool"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no pool {name} in {spend}"))
    };
    let (g, e) = (pool("gpu"), pool("edge-eu"));
    assert_eq!(g["billing"], "provisioned", "{g}");
    assert_eq!(g["replicas"], 1, "{g}");
    assert_eq!(g["capacity_usd_per_hour"], 36.0, "{g}");
    let capacity = g["capacity_usd"].as_f64().unwrap_or(0.0);
    let up_to = started.elapsed().as_secs_f64() * 0.01;
    assert!(
        capacity >= 0.01 && capacity <= up_to + 0.003,
        "capacity accrues at $0.01/s for the ~{:.1} s the gateway ran: {g}",
        up_to / 0.01
    );
    assert_eq!(
        g["usage_usd"], 0.0,
        "a provisioned pool bills nothing per request: {g}"
    );
    assert_eq!(e["requests"], 5, "{e}");
    assert!(
        (e["usage_usd"].as_f64().unwrap_or(0.0) - 0.005).abs() < 1e-9,
        "{e}"
    );
    let bytes = 5 * body.len() + answer_bytes;
    let egress = e["egress_usd"].as_f64().unwrap_or(0.0);
    assert!(
        (egress - bytes as f64 * 1e-6).abs() < 1e-5,
        "egress on {bytes} bytes each way at $1e-6: {e}"
    );
    let standard = spend["tiers"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["tier"] == "standard"))
        .and_then(|t| t["requests_usd"].as_f64());
    assert!(
        standard.is_some_and(|usd| (usd - (0.005 + egress)).abs() < 1e-5),
        "the tier's requests were billed usage and egress: {spend}"
    );

    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_capacity_cost_nanousd_total", &[]) > 0.0)
        .await;
    assert!(
        metric_sum(
            &m,
            "switchyard_capacity_cost_nanousd_total",
            &[("pool", "gpu")]
        ) > 0.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_egress_bytes_total", &[("pool", "edge-eu")]),
        bytes as f64,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "switchyard_egress_cost_nanousd_total",
            &[("pool", "edge-eu"), ("tier", "standard")]
        ) > 0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "switchyard_pool_replicas", &[("pool", "gpu")]),
        1.0,
        "{m}"
    );
    assert!(m.contains("switchyard_pool_utilisation{"), "{m}");
    if promtool_installed() {
        promtool_accepts(&m);
    }

    // The status page: capacity per hour, idle included, and the cost per 1k requests.
    let status: Value =
        serde_json::from_slice(&gw.admin_get("/admin/status").await.body).expect("status json");
    assert_eq!(status["totals"]["capacity_usd_per_hour"], 36.0, "{status}");
    assert!(
        status["totals"]["spend_usd_per_hour"]
            .as_f64()
            .unwrap_or(0.0)
            >= 36.0,
        "{status}"
    );
    assert!(
        status["totals"]["usd_per_1k_requests"]
            .as_f64()
            .unwrap_or(0.0)
            > 1.0,
        "{status}"
    );
}
