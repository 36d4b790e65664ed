//! The core gateway, end to end on loopback: the real binary, real mock backends, real YAML
//! and the embedded MMDB. Each test is one thing an operator or client relies on.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;
use switchyard_testkit::mock::MockBackend;

const EU: &str = "192.0.2.10";
const US: &str = "198.51.100.20";
const AP: &str = "203.0.113.30";

fn served_by(r: &switchyard_testkit::client::Response) -> String {
    r.header("x-served-by").unwrap_or("").to_string()
}

/// One edge pool, `edge`, serving every model.
fn one_edge(edge: &MockBackend) -> Policy {
    Policy::new().pool(Pool::edge("edge").endpoint(edge.addr()))
}

/// An edge pool in Europe serving `llama-3-8b` only, and a GPU pool serving every model.
fn eu_edge_and_gpu(edge: &MockBackend, gpu: &MockBackend) -> Policy {
    Policy::new()
        .pool(
            Pool::edge("edge-eu")
                .region("eu")
                .endpoint(edge.addr())
                .models(["llama-3-8b"]),
        )
        .pool(Pool::gpu("gpu").endpoint(gpu.addr()))
}

#[tokio::test]
async fn region_from_trusted_forwarded_for_picks_the_near_edge() {
    let eu = mock("edge-eu", 0).await;
    let us = mock("edge-us", 0).await;
    let gpu = mock("gpu", 0).await;
    let policy = Policy::new()
        .pool(
            Pool::edge("edge-eu")
                .region("eu")
                .endpoint(eu.addr())
                .models(["llama-3-8b"]),
        )
        .pool(
            Pool::edge("edge-us")
                .endpoint(us.addr())
                .models(["llama-3-8b"]),
        )
        .pool(Pool::gpu("gpu").endpoint(gpu.addr()));
    let gw = Gateway::start(&policy.render()).await;

    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU), ("x-slo-tier", "realtime")],
            &chat("llama-3-8b"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-switchyard-region"), Some("eu"));
    assert_eq!(r.header("x-switchyard-pool"), Some("edge-eu"));
    assert_eq!(served_by(&r), "edge-eu");

    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", US), ("x-slo-tier", "realtime")],
            &chat("llama-3-8b"),
        )
        .await;
    assert_eq!(r.header("x-switchyard-region"), Some("us"));
    assert_eq!(served_by(&r), "edge-us");

    // A chain: the right-most untrusted hop is the client; a forged left-most hop is ignored.
    let chain = format!("{EU}, {US}, 127.0.0.1");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", &chain), ("x-slo-tier", "realtime")],
            &chat("llama-3-8b"),
        )
        .await;
    assert_eq!(r.header("x-switchyard-region"), Some("us"));

    // Asia has no edge pool and every pool is too far for 150 ms: the fastest one anyway.
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", AP), ("x-slo-tier", "realtime")],
            &chat("llama-3-8b"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-region"), Some("ap"));
    assert!(r
        .header("x-switchyard-decision")
        .unwrap_or("")
        .starts_with("slo-miss-fastest"));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let eu = mock("edge-eu", 0).await;
    let us = mock("edge-us", 0).await;
    let policy = Policy::new()
        .pool(Pool::edge("edge-eu").region("eu").endpoint(eu.addr()))
        .pool(Pool::edge("edge-us").endpoint(us.addr()))
        // Only 10.0.0.0/8 is trusted; the test connects from 127.0.0.1.
        .trusted_proxies("[10.0.0.0/8]");
    let gw = Gateway::start(&policy.render()).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU), ("x-slo-tier", "realtime")],
            &chat("m"),
        )
        .await;
    assert_eq!(r.status, 200);
    // Loopback is unmapped: the default region, not the spoofed European address.
    assert_eq!(r.header("x-switchyard-region"), Some("us"));
    assert_eq!(served_by(&r), "edge-us");
}

#[tokio::test]
async fn tier_comes_from_api_key_then_header_then_route() {
    let edge = mock("edge", 0).await;
    let batch = mock("batch", 0).await;
    let policy = Policy::new()
        .pool(Pool::edge("edge-us").endpoint(edge.addr()))
        .pool(Pool::batch("batch").endpoint(batch.addr()));
    let gw = Gateway::start(&policy.render()).await;

    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.header("x-switchyard-tier"), Some("standard"));
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "batch")],
            &chat("m"),
        )
        .await;
    assert_eq!(r.header("x-switchyard-tier"), Some("batch"));
    assert_eq!(served_by(&r), "batch");
    // The tenant's tier wins over the header: a key cannot be talked into another tier.
    let r = gw
        .post(
            "/v1/chat/completions",
            &[
                ("authorization", "Bearer key-acme"),
                ("x-slo-tier", "batch"),
            ],
            &chat("m"),
        )
        .await;
    assert_eq!(r.header("x-switchyard-tier"), Some("realtime"));
    assert_eq!(served_by(&r), "edge");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-api-key", "key-acme")],
            &chat("m"),
        )
        .await;
    assert_eq!(r.header("x-switchyard-tier"), Some("realtime"));

    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "platinum")],
            &chat("m"),
        )
        .await;
    assert_eq!(r.status, 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], "unknown_tier");
}

#[tokio::test]
async fn a_model_the_edge_does_not_serve_goes_to_the_gpu_pool() {
    let edge = mock("edge", 0).await;
    let gpu = mock("gpu", 0).await;
    let gw = Gateway::start(&eu_edge_and_gpu(&edge, &gpu).render()).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU)],
            &chat("mixtral-8x22b"),
        )
        .await;
    assert_eq!(served_by(&r), "gpu");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU)],
            &chat("llama-3-8b"),
        )
        .await;
    assert_eq!(served_by(&r), "edge");
    // Path-routed protocols too.
    let r = gw
        .post(
            "/v2/models/resnet-50/versions/2/infer",
            &[("x-forwarded-for", EU)],
            r#"{"inputs":[]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(served_by(&r), "gpu");
    assert_eq!(r.json().unwrap()["model_name"], "resnet-50");
    let r = gw
        .post(
            "/v1/models/llama-3-8b:predict",
            &[("x-forwarded-for", EU)],
            r#"{"instances":[1]}"#,
        )
        .await;
    assert_eq!(served_by(&r), "edge");
}

#[tokio::test]
async fn tight_deadline_picks_the_near_pool_and_loose_deadline_the_cheap_one() {
    let near = mock("near", 0).await;
    let far = mock("far", 0).await;
    // Near (EU) is expensive per request; far (US) is cheap but 90 ms away from an EU client.
    let policy = Policy::new()
        .pool(
            Pool::edge("near")
                .region("eu")
                .endpoint(near.addr())
                .per_request(0.001),
        )
        .pool(Pool::gpu("far").endpoint(far.addr()).per_request(0.0001));
    let gw = Gateway::start(&policy.render()).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU), ("x-deadline-ms", "50")],
            &chat("m"),
        )
        .await;
    assert_eq!(
        served_by(&r),
        "near",
        "{:?}",
        r.header("x-switchyard-decision")
    );
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU)],
            &chat("m"),
        )
        .await;
    assert_eq!(
        served_by(&r),
        "far",
        "{:?}",
        r.header("x-switchyard-decision")
    );
    // x-deadline-ms only tightens: asking for more than the tier gives nothing.
    let r = gw
        .post(
            "/v1/chat/completions",
            &[
                ("x-forwarded-for", EU),
                ("x-slo-tier", "strict"),
                ("x-deadline-ms", "100000"),
            ],
            &chat("m"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(served_by(&r), "near");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-deadline-ms", "soon")],
            &chat("m"),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_dead_endpoint_fails_over_and_all_dead_is_a_503_with_retry_after() {
    let live = mock("live", 0).await;
    let dead = dead_addr();
    // The edge pool (cheaper, chosen first) has only a dead endpoint; the GPU pool is up.
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoint(dead))
        .pool(Pool::gpu("gpu").endpoint(live.addr()));
    let gw = Gateway::start(&policy.render()).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(served_by(&r), "live");
    let decision = r.header("x-switchyard-decision").unwrap_or("");
    assert!(decision.contains("attempts=2"), "{decision}");
    for _ in 0..10 {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(served_by(&r), "live");
        // Marked down: not tried again within the back-off.
        assert!(r
            .header("x-switchyard-decision")
            .unwrap_or("")
            .contains("attempts=1"));
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "switchyard_upstream_retries_total",
            &[("pool", "edge")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "switchyard_endpoint_up",
            &[("endpoint", &dead.to_string())]
        ),
        0.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "switchyard_endpoint_up",
            &[("endpoint", &live.addr().to_string())]
        ),
        1.0
    );

    live.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    let v: Value = r.json().unwrap();
    assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    // Both now marked down: refused at once, still JSON with Retry-After.
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json().unwrap()["error"]["type"], "no_capacity");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn bad_input_gets_json_4xx() {
    let edge = mock("edge", 0).await;
    let gw = Gateway::start(&one_edge(&edge).render()).await;

    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(20 * 1024));
    let r = gw.post("/v1/chat/completions", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json().unwrap()["error"]["type"], "payload_too_large");

    let r = gw
        .post(
            "/v1/chat/completions",
            &[],
            r#"{"model": "m", "messages": [}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"]["type"], "invalid_json");

    let r = gw
        .post("/v1/chat/completions", &[], r#"{"messages": []}"#)
        .await;
    assert_eq!(r.status, 400);

    let r = gw.post("/v2/models/x/infer", &[], "not json").await;
    assert_eq!(r.status, 400);

    let r = gw.post("/nowhere", &[], "{}").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["error"]["type"], "not_found");
    assert_eq!(edge.stats().requests, 0, "nothing bad reached the backend");
}

#[tokio::test]
async fn metrics_count_requests_cost_and_decisions() {
    let edge = mock("edge", 0).await;
    let policy = Policy::new().pool(Pool::edge("edge").endpoint(edge.addr()).per_request(0.5));
    let gw = Gateway::start(&policy.render()).await;
    for _ in 0..4 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-forwarded-for", US)],
                &chat("m"),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let _ = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-tier", "nope")],
            &chat("m"),
        )
        .await;
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[]) >= 5.0)
        .await;
    let ok = [
        ("route", "chat"),
        ("tier", "standard"),
        ("region", "us"),
        ("pool", "edge"),
        ("status", "200"),
    ];
    assert_eq!(metric_sum(&m, "switchyard_requests_total", &ok), 4.0, "{m}");
    assert_eq!(
        metric_sum(&m, "switchyard_requests_total", &[("status", "400")]),
        1.0
    );
    // Spend is counted in nano-USD.
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_cost_nanousd_total",
            &[("pool", "edge"), ("tier", "standard")]
        ),
        2e9,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_decisions_total",
            &[("reason", "meets-deadline")]
        ),
        4.0
    );
    assert!(m.contains("switchyard_request_duration_seconds_bucket"));
    assert!(m.contains("switchyard_upstream_duration_seconds_bucket"));
    assert_eq!(
        metric_sum(&m, "switchyard_endpoint_up", &[("pool", "edge")]),
        1.0
    );
    assert!(m.contains("switchyard_pool_in_flight"));
}

#[tokio::test]
async fn explain_agrees_with_what_the_proxy_did() {
    let eu = mock("edge-eu", 0).await;
    let gpu = mock("gpu", 0).await;
    let gw = Gateway::start(&eu_edge_and_gpu(&eu, &gpu).render()).await;
    for (ip, model, tier) in [
        (EU, "llama-3-8b", "realtime"),
        (EU, "other", "realtime"),
        (AP, "llama-3-8b", "standard"),
        (US, "llama-3-8b", "batch"),
    ] {
        let body = format!(
            r#"{{"client_ip":"127.0.0.1","path":"/v1/chat/completions","headers":{{"x-forwarded-for":"{ip}","x-slo-tier":"{tier}"}},"model":"{model}"}}"#
        );
        let e = gw.admin_post("/admin/explain", &body).await;
        assert_eq!(e.status, 200, "{}", String::from_utf8_lossy(&e.body));
        let e: Value = e.json().unwrap();
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-forwarded-for", ip), ("x-slo-tier", tier)],
                &chat(model),
            )
            .await;
        assert_eq!(
            e["class"]["region"].as_str(),
            r.header("x-switchyard-region"),
            "{e}"
        );
        assert_eq!(
            e["decision"]["pool"].as_str(),
            r.header("x-switchyard-pool"),
            "{e}"
        );
        let reason = e["decision"]["reason"].as_str().unwrap().replace('_', "-");
        let header = r.header("x-switchyard-decision").unwrap_or("");
        let expect = match reason.as_str() {
            "fallback-fastest" => "slo-miss-fastest",
            other => other,
        };
        assert!(header.starts_with(expect), "{header} vs {reason}");
        assert_eq!(e["candidates"].as_array().unwrap().len(), 2);
    }
    // Explain reports why a pool was excluded.
    let e: Value = gw
        .admin_post(
            "/admin/explain",
            r#"{"client_ip":"192.0.2.1","path":"/v1/chat/completions","model":"other"}"#,
        )
        .await
        .json()
        .unwrap();
    let edge = e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pool"] == "edge-eu")
        .unwrap()
        .clone();
    assert_eq!(edge["excluded"], "model_not_served");
}

#[tokio::test]
async fn streaming_responses_pass_through_unbuffered() {
    let edge = mock("edge", 0).await;
    let gw = Gateway::start(&one_edge(&edge).render()).await;
    let mut conn = switchyard_testkit::client::Connection::connect(gw.proxy)
        .await
        .unwrap();
    let req = switchyard_testkit::client::Request::post(
        "/v1/chat/completions",
        br#"{"model":"m","stream":true,"messages":[]}"#,
    )
    .header("content-type", "application/json");
    let (status, _headers, chunks) = conn.send_streaming(&req).await.unwrap();
    assert_eq!(status, 200);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let first = chunks.first().unwrap().0;
    let last = chunks.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(40),
        "chunks arrived together: {first:?}..{last:?}"
    );
    let all: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(String::from_utf8_lossy(&all).contains("[DONE]"));
}

#[tokio::test]
async fn upstream_timeout_is_a_504() {
    let slow = mock("slow", 3000).await;
    let policy = one_edge(&slow).tier(Tier::standard().deadline("100ms").with("timeout", "300ms"));
    let gw = Gateway::start(&policy.render()).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["error"]["type"], "upstream_timeout");
}

#[tokio::test]
async fn admin_reports_the_policy_and_health() {
    let edge = mock("edge", 0).await;
    let gw = Gateway::start(&one_edge(&edge).render()).await;
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    let p: Value = gw.admin_get("/admin/policy").await.json().unwrap();
    assert_eq!(p["version"].as_str().unwrap().len(), 12);
    assert_eq!(p["pools"][0]["name"], "edge");
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(
        r.header("x-switchyard-policy-version"),
        p["version"].as_str()
    );
    assert_eq!(gw.admin_get("/nope").await.status, 404);
}

/// The gateway adds its headers through the `http` header map, without Pingora's
/// header-name case map (`proxy::edit_headers`): the backend's status, reason phrase, headers
/// and body still reach the client unchanged but for the case of non-standard names.
#[tokio::test]
async fn a_backends_status_reason_headers_and_body_pass_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A non-standard reason phrase and a header of its own, as a hand-written server might.
    let (backend, _) =
        recording_backend("HTTP/1.1 201 Stored Nicely\r\nX-Model-Version: 7\r\n").await;
    let gw = edge_gateway(backend).await;
    let body = chat("llama-3-8b");
    let mut s = tokio::net::TcpStream::connect(gw.proxy)
        .await
        .expect("connect");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text.split_once("\r\n\r\n").expect("a response");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 201 Stored Nicely"), "{head}");
    let headers: Vec<&str> = lines.collect();
    assert!(headers.contains(&"x-model-version: 7"), "{head}");
    assert!(
        headers.contains(&"Content-Type: application/json"),
        "{head}"
    );
    assert!(headers.contains(&"x-switchyard-pool: edge-us"), "{head}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("x-switchyard-decision: ")),
        "{head}"
    );
    assert_eq!(rest, r#"{"id":"x","choices":[]}"#);
}

/// A gateway whose one pool (`edge-us`, model `llama-3-8b`) is `backend`.
async fn edge_gateway(backend: std::net::SocketAddr) -> Gateway {
    let policy = Policy::new().pool(
        Pool::edge("edge-us")
            .endpoint(backend)
            .models(["llama-3-8b"]),
    );
    Gateway::start(&policy.render()).await
}

/// A backend that records, for every request, its connection number, the bytes of the first
/// read that began it, and the whole request (head and body); it answers each with `head`
/// (status line and headers), a JSON content type and a small JSON body.
async fn recording_backend(
    head: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<u8>, Vec<u8>)>>>,
) {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            conn += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 1 << 16];
                loop {
                    // Each request starts with a read of its own (the client waits for the
                    // answer before sending the next one).
                    let first = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => chunk[..n].to_vec(),
                    };
                    let mut buf = first.clone();
                    loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    log.lock().expect("log").push((conn, first, buf));
                    let body = br#"{"id":"x","choices":[]}"#;
                    let answer = format!(
                        "{head}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err()
                        || s.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// What the backend gets: over HTTP/1 the request head and a small body in one write (one
/// segment, one wake-up; Pingora's own client flushes the head on its own), HTTP/1.1 with
/// the client's `Host`, the body's length, `X-Forwarded-For`, none of the client's hop-by-hop
/// fields (`Connection`, what it names, `Keep-Alive`, `Expect`), and one kept upstream
/// connection for consecutive requests. A large (100 KB) body arrives whole, written after
/// the head without a copy. The
/// client's connection stays open after an `Expect: 100-continue` (Pingora closes it when
/// the `100` goes out before the body is read; the gateway sets keep-alive back).
#[tokio::test]
async fn a_request_reaches_the_backend_in_one_write_without_hop_by_hop_fields() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, seen) = recording_backend("HTTP/1.1 200 OK\r\n").await;
    let gw = edge_gateway(backend).await;
    let mut s = tokio::net::TcpStream::connect(gw.proxy)
        .await
        .expect("connect");
    let small = chat("llama-3-8b");
    // (Chat allows 16 KiB in these tests' policy; embeddings the default 32 MiB.)
    let large = format!(
        r#"{{"model":"llama-3-8b","input":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let sent = [
        ("/v1/chat/completions", &small),
        ("/v1/embeddings", &large),
        ("/v1/chat/completions", &small),
    ];
    for (path, body) in sent {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: test.example\r\nContent-Type: application/json\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write head");
        // The gateway answers the `Expect` itself before the body is sent.
        let mut cont = [0u8; 25];
        if let Err(e) = s.read_exact(&mut cont).await {
            panic!(
                "{path}: {e} (connection kept?) {}",
                String::from_utf8_lossy(&cont)
            );
        }
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(body.as_bytes()).await.expect("write body");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(br#"{"id":"x","choices":[]}"#) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 3);
    for ((conn, first, whole), (path, body)) in seen.iter().zip(sent) {
        let text = String::from_utf8_lossy(whole).to_string();
        let (head, sent) = text.split_once("\r\n\r\n").expect("a head");
        if body.len() <= 64 * 1024 {
            assert_eq!(
                first, whole,
                "the whole request in the backend's first read"
            );
        }
        // (A larger body follows its head uncopied; it arrives whole, checked below.)
        assert_eq!(sent, body.as_str());
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.starts_with(&format!("post {path} http/1.1\r\n")),
            "{head}"
        );
        assert!(lower.contains("\r\nhost: test.example"), "{head}");
        assert!(
            lower.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        assert!(lower.contains("\r\nx-forwarded-for: 127.0.0.1"), "{head}");
        for gone in ["connection:", "x-hop:", "keep-alive:", "expect:"] {
            assert!(!lower.contains(&format!("\r\n{gone}")), "{gone} in {head}");
        }
        assert_eq!(*conn, 1, "one kept upstream connection");
    }
}

/// A client that sends its next request the moment it has an answer, on a new connection
/// each time, finds the upstream connection idle in the pool: ten requests use one upstream
/// connection. (The gateway gives it back before the answer's last bytes go out; the window
/// it closes is too narrow for this test to hit reliably, so it guards the pooling itself.)
#[tokio::test]
async fn back_to_back_requests_reuse_one_upstream_connection() {
    let (backend, seen) = recording_backend("HTTP/1.1 200 OK\r\n").await;
    let gw = edge_gateway(backend).await;
    for i in 0..10 {
        let r = gw
            .post("/v1/chat/completions", &[], &chat("llama-3-8b"))
            .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let conns: Vec<usize> = seen.lock().expect("log").iter().map(|s| s.0).collect();
    assert_eq!(conns, vec![1; 10], "upstream connection of each request");
}
