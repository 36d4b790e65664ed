//! The gateway under real faults, end to end on loopback: live estimates move traffic away
//! from a slow endpoint and back, failing endpoints are ejected and re-admitted, health checks
//! take pools out and back in, concurrency limits hold under a burst, the retry budget caps
//! retries when everything fails, and SIGTERM drains requests in flight.

mod support;

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::client::{self, Connection, Request};
use switchyard_testkit::mock::MockBackend;

fn served_by(r: &client::Response) -> String {
    r.header("x-served-by").unwrap_or("").to_string()
}

/// `workers` keep-alive clients posting chat requests for `run`; the statuses seen.
async fn load(gw: &Gateway, workers: usize, run: Duration) -> Vec<u16> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (stop, addr) = (stop.clone(), gw.proxy);
        tasks.push(tokio::spawn(async move {
            let body = chat("m");
            let mut seen = Vec::new();
            let mut conn = Connection::connect(addr).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let req = Request::post("/v1/chat/completions", body.as_bytes())
                    .header("content-type", "application/json");
                match conn.send(&req).await {
                    Ok(r) => seen.push(r.status),
                    Err(_) => conn = Connection::connect(addr).await.expect("reconnect"),
                }
            }
            seen
        }));
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

/// Share of `a` in the requests both mocks got since their last reset.
fn share(a: &MockBackend, b: &MockBackend) -> f64 {
    let (x, y) = (a.stats().requests as f64, b.stats().requests as f64);
    x / (x + y).max(1.0)
}

fn endpoint<'a>(pools: &'a Value, pool: &str, ep: &str) -> &'a Value {
    pools["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["endpoints"].as_array())
        .and_then(|es| es.iter().find(|e| e["endpoint"] == ep))
        .unwrap_or_else(|| panic!("no endpoint {pool}/{ep} in {pools}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_loses_its_share_and_wins_it_back() {
    let a = mock("a", 5).await;
    let b = mock("b", 5).await;
    let policy = Policy::new().pool(
        Pool::gpu("gpu")
            .endpoints(&[a.addr(), b.addr()])
            .per_gpu_hour(2.0),
    );
    let gw = Gateway::start(&policy.render()).await;

    load(&gw, 4, Duration::from_millis(800)).await;
    a.reset_stats();
    b.reset_stats();
    load(&gw, 4, Duration::from_millis(800)).await;
    let before = share(&a, &b);
    let pools = gw.pools().await;
    assert!(
        before > 0.25,
        "both endpoints share the load at first: {before}\n{pools}"
    );

    a.faults().set_extra_latency(Duration::from_millis(150));
    load(&gw, 4, Duration::from_millis(700)).await;
    a.reset_stats();
    b.reset_stats();
    let statuses = load(&gw, 4, Duration::from_millis(1500)).await;
    let slow = share(&a, &b);
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(slow < 0.05, "the slow endpoint's share falls: {slow}");
    let p = gw.pools().await;
    let ewma = endpoint(&p, "gpu", &a.addr().to_string())["ewma_ms"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(ewma > 50.0, "the live estimate saw it: {p}");

    a.faults().set_extra_latency(Duration::ZERO);
    load(&gw, 4, Duration::from_secs(3)).await;
    a.reset_stats();
    b.reset_stats();
    load(&gw, 4, Duration::from_millis(1500)).await;
    let after = share(&a, &b);
    assert!(after > 0.2, "its share comes back after recovery: {after}");
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_after_its_threshold_and_readmitted() {
    let a = mock("a", 0).await;
    let b = mock("b", 0).await;
    a.faults().set_error_rate(1.0);
    // The edge pool (cheaper, chosen while it has an endpoint up) has only `a`.
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(a.addr()))
        .pool(Pool::gpu("gpu").endpoint(b.addr()).per_request(0.001))
        .upstream("{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 1s, eject_after: 3 }");
    let gw = Gateway::start(&policy.render()).await;
    let ep_a = a.addr().to_string();

    // 5xx answers pass through (the route is not idempotent) until the third in a row.
    let mut errors = 0;
    for _ in 0..10 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        if r.status == 500 {
            errors += 1;
        } else {
            assert_eq!(served_by(&r), "b");
        }
    }
    assert_eq!(errors, 3, "ejected after exactly its threshold");
    let p = gw.pools().await;
    assert_eq!(endpoint(&p, "edge", &ep_a)["state"], "ejected", "{p}");
    assert_eq!(endpoint(&p, "edge", &ep_a)["consecutive_failures"], 3);

    // Recovered: after the back-off one probe goes through, succeeds, and it is back.
    a.faults().set_error_rate(0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.reset_stats();
    for _ in 0..20 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 200);
    }
    assert!(a.stats().requests >= 3, "re-admitted: {:?}", a.stats());
    let p = gw.pools().await;
    assert_eq!(endpoint(&p, "edge", &ep_a)["state"], "up", "{p}");
    assert_eq!(endpoint(&p, "edge", &ep_a)["ejections"], 0);

    // Dead (connects refused): ejected at once, the client never sees it.
    a.faults().set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(served_by(&r), "b");
    }
    let p = gw.pools().await;
    assert_eq!(endpoint(&p, "edge", &ep_a)["state"], "ejected", "{p}");
    a.faults().set_down(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.reset_stats();
    for _ in 0..20 {
        assert_eq!(
            gw.post("/v1/chat/completions", &[], &chat("m"))
                .await
                .status,
            200
        );
    }
    assert!(
        a.stats().requests >= 3,
        "re-admitted after recovery: {:?} {}",
        a.stats(),
        gw.pools().await
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_endpoint_ejections_total",
            &[("cause", "5xx")]
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "switchyard_endpoint_ejections_total",
            &[("cause", "connect")]
        ) >= 1.0
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn health_checks_take_a_pool_out_and_back_in() {
    let edge = mock("edge", 0).await;
    let gpu = mock("gpu", 0).await;
    let edge_pool = Pool::edge("edge").endpoint(edge.addr());
    let gpu_pool = Pool::gpu("gpu").endpoint(gpu.addr()).per_request(0.001);
    let plain = Policy::new().pool(edge_pool.clone()).pool(gpu_pool.clone());
    let checked = Policy::new()
        .pool(edge_pool.with(
            "health",
            "{ path: /healthz, interval: 100ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2 }",
        ))
        .pool(gpu_pool);
    let gw = Gateway::start(&checked.render()).await;
    assert_eq!(
        served_by(&gw.post("/v1/chat/completions", &[], &chat("m")).await),
        "edge"
    );

    // A hung backend fails its health checks: the pool has no healthy endpoint.
    edge.faults().set_stall(true);
    let ep = edge.addr().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = gw.pools().await;
        if endpoint(&p, "edge", &ep)["state"] == "unhealthy" {
            break;
        }
        assert!(Instant::now() < deadline, "never marked unhealthy: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!((r.status, served_by(&r)), (200, "gpu".to_string()));

    edge.faults().set_stall(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = gw.pools().await;
        if endpoint(&p, "edge", &ep)["state"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy again: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_by(&gw.post("/v1/chat/completions", &[], &chat("m")).await),
        "edge"
    );
    // The checker follows reloads: a policy without `health:` re-admits the endpoint even
    // while it still hangs.
    edge.faults().set_stall(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while endpoint(&gw.pools().await, "edge", &ep)["state"] != "unhealthy" {
        assert!(Instant::now() < deadline, "never marked unhealthy again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&gw.policy_path, plain.render()).expect("write policy");
    let r = gw.admin_post("/admin/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(3);
    while endpoint(&gw.pools().await, "edge", &ep)["state"] != "up" {
        assert!(
            Instant::now() < deadline,
            "reload without health: did not re-admit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    edge.faults().set_stall(false);
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            "switchyard_health_checks_total",
            &[("pool", "edge"), ("result", "fail")]
        ) >= 2.0
    );
    edge.shutdown();
    gpu.shutdown();
}

async fn burst(gw: &Gateway, n: usize) -> Vec<client::Response> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = gw.proxy;
            tokio::spawn(async move {
                let body = chat("m");
                let req = Request::post("/v1/chat/completions", body.as_bytes())
                    .header("content-type", "application/json");
                client::send(addr, &req).await.expect("request")
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_under_a_burst() {
    let a = mock("a", 300).await;
    let b = mock("b", 300).await;
    let c = mock("c", 300).await;
    // Edge: concurrency 4 over two endpoints = 2 each. Overflow goes to the GPU pool.
    let edge = Pool::edge("edge")
        .endpoints(&[a.addr(), b.addr()])
        .concurrency(4);
    let policy = Policy::new()
        .pool(edge.clone())
        .pool(Pool::gpu("gpu").endpoint(c.addr()));
    let gw = Gateway::start(&policy.render()).await;
    let answers = burst(&gw, 16).await;
    assert!(
        answers.iter().all(|r| r.status == 200),
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    assert!(a.stats().peak_in_flight <= 2, "{:?}", a.stats());
    assert!(b.stats().peak_in_flight <= 2, "{:?}", b.stats());
    assert_eq!(
        a.stats().requests + b.stats().requests + c.stats().requests,
        16
    );
    assert!(
        c.stats().requests >= 12,
        "overflow went to the next candidate: {:?}",
        c.stats()
    );
    drop(gw);

    // Only the edge pool: the overflow is refused at once with 503 and Retry-After.
    a.reset_stats();
    b.reset_stats();
    let gw = Gateway::start(&Policy::new().pool(edge).render()).await;
    let started = Instant::now();
    let answers = burst(&gw, 12).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let shed: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!((ok, shed.len()), (4, 8));
    assert!(shed.iter().all(|r| r.header("retry-after").is_some()));
    assert_eq!(shed[0].json().unwrap()["error"]["type"], "overloaded");
    assert!(a.stats().peak_in_flight <= 2 && b.stats().peak_in_flight <= 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no local queueing"
    );
    for m in [a, b, c] {
        m.shutdown();
    }
}

/// Chat, idempotent (a 5xx may be retried elsewhere), and embeddings, not.
fn idempotent_chat() -> [Route; 2] {
    [
        Route::new("chat", "/v1/chat/completions", "openai").idempotent(),
        Route::embeddings(),
    ]
}

#[tokio::test]
async fn an_idempotent_route_retries_a_5xx_elsewhere() {
    let broken = mock("broken", 0).await;
    let good = mock("good", 0).await;
    broken.faults().set_error_rate(1.0);
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(broken.addr()))
        .pool(Pool::gpu("gpu").endpoint(good.addr()))
        .routes(idempotent_chat())
        .upstream(
            "{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s, eject_after: 100 }",
        );
    let gw = Gateway::start(&policy.render()).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(
        (r.status, served_by(&r)),
        (200, "good".to_string()),
        "{}",
        r.text()
    );
    assert!(r
        .header("x-switchyard-decision")
        .unwrap_or("")
        .contains("attempts=2"));
    // Not idempotent: the 5xx is the answer.
    let r = gw
        .post("/v1/embeddings", &[], r#"{"model":"m","input":"x"}"#)
        .await;
    assert_eq!(r.status, 500);
    broken.shutdown();
    good.shutdown();
}

#[tokio::test]
async fn the_retry_budget_caps_retries_when_every_backend_fails() {
    let a = mock("a", 0).await;
    let b = mock("b", 0).await;
    a.faults().set_error_rate(1.0);
    b.faults().set_error_rate(1.0);
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(a.addr()))
        .pool(Pool::gpu("gpu").endpoint(b.addr()))
        .routes(idempotent_chat())
        .upstream("{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s, eject_after: 1000, retry_budget: { ratio: 0.2, min_per_second: 0 } }");
    let gw = Gateway::start(&policy.render()).await;
    for _ in 0..100 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 500);
    }
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[]) >= 100.0)
        .await;
    let retries = metric_sum(&m, "switchyard_upstream_retries_total", &[]);
    let upstream = a.stats().requests + b.stats().requests;
    // Without a budget every request would be retried once (100 retries); with it: the
    // starting balance (10) plus 20% of the requests.
    assert!((20.0..=31.0).contains(&retries), "retries {retries}\n{m}");
    assert_eq!(upstream as f64, 100.0 + retries);
    assert!(
        metric_sum(&m, "switchyard_retry_budget_exhausted_total", &[]) >= 60.0,
        "{m}"
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let slow = mock("slow", 1500).await;
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(slow.addr()))
        .extra("listeners: { shutdown_grace: 3s }");
    let mut gw = Gateway::start(&policy.render()).await;
    let addr = gw.proxy;
    let in_flight = tokio::spawn(async move {
        let body = chat("m");
        let req = Request::post("/v1/chat/completions", body.as_bytes())
            .header("content-type", "application/json");
        client::send(addr, &req).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    gw.signal("TERM");
    let r = in_flight
        .await
        .expect("task")
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(&r), "slow");
    // No longer accepting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some(), "did not exit");
    assert!(sent.elapsed() >= Duration::from_millis(1000));
    slow.shutdown();
}

#[tokio::test]
async fn a_hedging_tier_fails_over_a_refused_connect_like_any_other_tier() {
    // The cheap edge pool's only endpoint refuses connections; the GPU pool answers.
    let gpu = mock("gpu", 5).await;
    let text = Policy::new()
        .pool(
            Pool::edge("edge")
                .endpoint(dead_addr())
                .per_request(0.00002),
        )
        .pool(Pool::gpu("gpu").endpoint(gpu.addr()).per_request(0.001))
        .tier(Tier::realtime().with("hedge_after", 2))
        .render();
    let gw = Gateway::start(&text).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "realtime")],
            &chat("m"),
        )
        .await;
    // Refused, ejected at once, and tried again elsewhere within the same request.
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-pool"), Some("gpu"));
    let decision = r.header("x-switchyard-decision").unwrap_or_default();
    assert!(decision.contains("attempts=2"), "{decision}");
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[]) >= 1.0)
        .await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_endpoint_ejections_total",
            &[("pool", "edge"), ("cause", "connect")]
        ),
        1.0,
        "{m}"
    );
    gpu.shutdown();
}

#[tokio::test]
async fn hedged_requests_return_the_faster_answer() {
    let slow = mock("slow", 400).await;
    let fast = mock("fast", 5).await;
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(slow.addr()))
        .pool(Pool::gpu("gpu").endpoint(fast.addr()).per_request(0.001))
        .tier(Tier::realtime().with("hedge_after", 2));
    let gw = Gateway::start(&policy.render()).await;
    let started = Instant::now();
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "realtime")],
            &chat("m"),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    // The cheap edge pool was asked first; after 2 × its estimate the GPU pool was asked
    // too, and its answer came back first.
    assert_eq!(served_by(&r), "fast");
    assert_eq!(r.json().unwrap()["served_by"], "fast");
    assert_eq!(r.header("x-switchyard-hedged"), Some("1"));
    assert_eq!(r.header("x-switchyard-pool"), Some("gpu"));
    assert!(took < Duration::from_millis(300), "{took:?}");
    // A tier without hedging waits for the slow answer.
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!((r.status, served_by(&r)), (200, "slow".to_string()));
    assert_eq!(r.header("x-switchyard-hedged"), None);
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[]) >= 2.0)
        .await;
    assert_eq!(
        metric_sum(&m, "switchyard_hedges_total", &[("pool", "gpu")]),
        1.0,
        "{m}"
    );
    assert!(metric_sum(&m, "switchyard_hedge_cost_nanousd_total", &[]) > 0.0);
    slow.shutdown();
    fast.shutdown();
}
