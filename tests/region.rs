//! Multi-region truth, on real sockets with real distance: pools sit behind a TCP relay that
//! delays every byte (testkit `Relay`), the gateway knows where it runs (`--region`, the
//! policy's `gateway_region`), and its estimate counts the network round trip once. A far
//! pool that answers in time keeps its traffic instead of being shed; two instances of one
//! policy file decide for their own position; a pool whose path gets longer is avoided and
//! wins its traffic back when the path is short again.

mod support;

use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::client::Response;
use switchyard_testkit::relay::Relay;

/// A client address the embedded GeoIP database places in Europe.
const EU_CLIENT: &str = "192.0.2.10";

fn pool_of(r: &Response) -> String {
    r.header("x-switchyard-pool").unwrap_or("").to_string()
}

/// `est_ms=…` of the decision header.
fn estimate_ms(r: &Response) -> f64 {
    r.header("x-switchyard-decision")
        .and_then(|d| d.split("; ").find_map(|kv| kv.strip_prefix("est_ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn reason(r: &Response) -> String {
    r.header("x-switchyard-decision")
        .and_then(|d| d.split(';').next())
        .unwrap_or("")
        .to_string()
}

/// Two regions, `eu` (the default) and `us`, 90 ms apart, and one route, chat, in tier
/// `realtime`: each test adds that tier and an edge pool `edge-eu` and a GPU pool `gpu-us`.
fn eu_and_us(realtime: Tier, edge: Pool, gpu: Pool) -> Policy {
    Policy::minimal()
        .regions(
            "regions:
  default: eu
  map: [{ name: eu, continents: [EU] }, { name: us, continents: [NA, SA] }]
rtt_ms: { eu: { eu: 5, us: 90 }, us: { us: 5 } }
",
        )
        .tier(realtime)
        .pool(edge)
        .pool(gpu)
        .route(Route::new("chat", "/v1/chat/completions", "openai").tier("realtime"))
}

/// The edge pool in `eu` on `addr`.
fn edge_eu(addr: std::net::SocketAddr) -> Pool {
    Pool::edge("edge-eu").region("eu").endpoint(addr)
}

/// The GPU pool in `us` on `addr`, priced per request above the edge.
fn gpu_us(addr: std::net::SocketAddr) -> Pool {
    Pool::gpu("gpu-us").endpoint(addr).per_request(0.00005)
}

/// The case: a gateway in `eu`, a GPU pool in `us` 90 ms away answering in 5 ms, a
/// local edge pool that takes 200 ms, a real-time tier with a 150 ms deadline that sheds.
/// The client connects directly, so its own connection's RTT is the client → gateway term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_pool_that_answers_in_time_keeps_its_traffic_and_sheds_say_why() {
    let gpu = mock("gpu-us", 5).await;
    let edge = mock("edge-eu", 200).await;
    let relay = Relay::start(gpu.addr(), Duration::from_millis(90))
        .await
        .expect("relay");
    let policy = eu_and_us(
        Tier::realtime().on_slo_miss("shed"),
        edge_eu(edge.addr()).service_time("200ms"),
        gpu_us(relay.addr()).service_time("5ms"),
    );
    let gw = Gateway::start_with(&policy.render(), &["--region", "eu"]).await;

    // Well past the five samples after which the live estimate replaces the baseline.
    let mut errors = Vec::new();
    for i in 0..25 {
        let started = Instant::now();
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        let observed = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(pool_of(&r), "gpu-us", "request {i}");
        let est = estimate_ms(&r);
        errors.push(((est - observed) / observed).abs());
        assert!(
            (est - observed).abs() <= 0.3 * observed,
            "request {i}: estimated {est} ms, the client saw {observed:.1} ms"
        );
    }

    // The path gets so long that nothing meets the deadline: shed, and the log and metrics
    // name the reason.
    relay.set_rtt(Duration::from_millis(400));
    let mut shed = 0;
    for _ in 0..40 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        if r.status == 503 {
            assert_eq!(reason(&r), "slo-miss-shed", "{:?}", r.headers);
            shed += 1;
            if shed >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shed >= 3, "never shed with a 400 ms path");
    let metrics = gw
        .metrics_when(|m| {
            metric_sum(
                m,
                "switchyard_decisions_total",
                &[("reason", "slo-miss-shed")],
            ) >= 3.0
        })
        .await;
    assert!(
        metric_sum(
            &metrics,
            "switchyard_decisions_total",
            &[("reason", "slo-miss-shed")]
        ) >= 3.0,
        "{metrics}"
    );

    // The path is short again: shed requests must not blind the router. A probe request now
    // and then (and the stale estimate's decay) bring the pool back.
    relay.set_rtt(Duration::from_millis(90));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = 0;
    while served < 3 {
        assert!(
            Instant::now() < deadline,
            "gpu-us never came back: {}",
            gw.pools().await
        );
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        if r.status == 200 && reason(&r) == "meets-deadline" {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gpu.shutdown();
    edge.shutdown();
}

/// One policy file, two instances: the one in `eu` (the file's `gateway_region`) serves a
/// European real-time request from the European edge; the one started with `--region us`
/// does not send that request back across the Atlantic (client → us → eu pool would be two
/// crossings) and serves it from the US GPU pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_policy_decide_for_their_own_region() {
    let edge = mock("edge-eu", 10).await;
    let gpu = mock("gpu-us", 10).await;
    let policy = eu_and_us(
        Tier::realtime().on_slo_miss("shed"),
        edge_eu(edge.addr()),
        gpu_us(gpu.addr()),
    )
    .trusted_proxies("[127.0.0.0/8]")
    .extra("gateway_region: eu")
    .render();
    let in_eu = Gateway::start(&policy).await;
    let in_us = Gateway::start_with(&policy, &["--region", "us"]).await;

    let xff = [("x-forwarded-for", EU_CLIENT)];
    let r = in_eu.post("/v1/chat/completions", &xff, &chat("m")).await;
    assert_eq!((r.status, pool_of(&r).as_str()), (200, "edge-eu"));
    let r = in_us.post("/v1/chat/completions", &xff, &chat("m")).await;
    assert_eq!((r.status, pool_of(&r).as_str()), (200, "gpu-us"));
    // client → us (90) + us → gpu-us (5) + 10 ms service.
    assert_eq!(estimate_ms(&r), 105.0, "{:?}", r.headers);

    // Each instance says where it runs.
    for (gw, region) in [(&in_eu, "eu"), (&in_us, "us")] {
        let ready: serde_json::Value = gw.admin_get("/readyz").await.json().expect("json");
        assert_eq!(ready["gateway_region"], region);
        let policy: serde_json::Value = gw.admin_get("/admin/policy").await.json().expect("json");
        assert_eq!(policy["gateway_region"], region);
        let pools = gw.pools().await;
        assert_eq!(pools["gateway_region"], region);
        let metrics = gw
            .metrics_when(|m| m.contains("switchyard_instance_info"))
            .await;
        assert_eq!(
            metric_sum(&metrics, "switchyard_instance_info", &[("region", region)]),
            1.0,
            "{metrics}"
        );
    }

    // The offline tools decide as either instance would.
    let dir = &in_eu.dir;
    let file = in_eu.policy_path.to_string_lossy().to_string();
    for (region, pool) in [("eu", "edge-eu"), ("us", "gpu-us")] {
        let (code, out, err) = run_cli(
            &[
                "explain",
                "--policy",
                &file,
                "--region",
                "eu",
                "--tier",
                "realtime",
                "--model",
                "m",
                "--gateway-region",
                region,
                "--format",
                "json",
            ],
            dir.path(),
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("explain json");
        assert_eq!(v["decision"]["pool"], pool, "{out}");
        assert_eq!(v["gateway_region"], region, "{out}");
    }
    let (code, out, err) = run_cli(
        &["diff", &file, &file, "--gateway-region", "us"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("instance in region us"), "{out}");

    // A region the policy does not have is a start-up error, not a silent default.
    let (code, _, err) = run_cli(
        &[
            "run",
            "--policy",
            &file,
            "--region",
            "mars",
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown region `mars`"), "{err}");
    edge.shutdown();
    gpu.shutdown();
}

/// Health probes measure each endpoint's round trip; when the path to the cheap pool grows
/// (the relay's delay raised at run time) its traffic moves to the dearer near pool, and it
/// comes back when the path is short again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_round_trip_grows_is_avoided_and_used_again_when_it_drops() {
    let far = mock("gpu-us", 10).await;
    let near = mock("edge-eu", 10).await;
    let far_relay = Relay::start(far.addr(), Duration::from_millis(60))
        .await
        .expect("relay");
    let near_relay = Relay::start(near.addr(), Duration::from_millis(10))
        .await
        .expect("relay");
    let health = "{ path: /healthz, interval: 100ms, timeout: 1s }";
    let policy = eu_and_us(
        Tier::realtime().weight(0.3),
        edge_eu(near_relay.addr())
            .per_request(0.001)
            .with("health", health),
        gpu_us(far_relay.addr()).with("health", health),
    );
    let gw = Gateway::start_with(&policy.render(), &["--region", "eu"]).await;

    // The probes replace the matrix's 90 ms with what they measure.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pools = gw.pools().await;
        let p = &pools["pools"][1];
        if p["rtt_source"] == "measured" {
            let rtt = p["rtt_ms"].as_f64().unwrap_or(0.0);
            assert!(rtt >= 60.0, "the relay adds 60 ms: {p}");
            break;
        }
        assert!(Instant::now() < deadline, "never measured: {pools}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let until = |want: &'static str| {
        let gw = &gw;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut in_a_row = 0;
            while in_a_row < 3 {
                assert!(
                    Instant::now() < deadline,
                    "traffic never went to {want}: {}",
                    gw.pools().await
                );
                let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
                assert_eq!(r.status, 200, "{}", r.text());
                in_a_row = if pool_of(&r) == want { in_a_row + 1 } else { 0 };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("gpu-us").await;
    far_relay.set_rtt(Duration::from_millis(250));
    until("edge-eu").await;
    far_relay.set_rtt(Duration::from_millis(60));
    until("gpu-us").await;
    far.shutdown();
    near.shutdown();
}
