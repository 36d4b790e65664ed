//! Real payload sizes: multi-MB OpenAI chat bodies (base64 images inlined, the model before
//! or after the megabytes), chunked uploads, failover that re-sends the whole body, the
//! per-route `max_body` (413 naming the limit) and the gateway-wide budget of body bytes held
//! in memory (503 `overloaded`, then recovery). Real binary, real mocks, real sockets.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;
use switchyard_testkit::client::{self, Connection, Request, Response};

/// An OpenAI chat body of about `size` bytes: a text part and a base64 PNG data URL. With
/// `model_last`, keys are sorted as `json.dumps(sort_keys=True)` or Go's encoder write them
/// (`messages` before `model`); otherwise the model comes first, as the OpenAI SDK writes it.
fn image_chat(model: &str, size: usize, model_last: bool, extra: &str) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let image: String = (0..size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            B64[(seed % 64) as usize] as char
        })
        .collect();
    let messages = format!(
        r#"[{{"content":[{{"text":"What is in this image?","type":"text"}},{{"image_url":{{"url":"data:image/png;base64,{image}"}},"type":"image_url"}}],"role":"user"}}]"#
    );
    let body = if model_last {
        format!(r#"{{{extra}"messages":{messages},"model":"{model}"}}"#)
    } else {
        format!(r#"{{"model":"{model}",{extra}"messages":{messages}}}"#)
    };
    body.into_bytes()
}

const MIB: usize = 1024 * 1024;

/// Routes: chat up to 80 MiB (idempotent, so a failed pool's request goes elsewhere) and
/// completions with the default limit (32 MiB).
fn large_bodies() -> Policy {
    Policy::new().routes([
        Route::new("chat", "/v1/chat/completions", "openai")
            .max_body("80MiB")
            .idempotent(),
        Route::new("completions", "/v1/completions", "openai"),
    ])
}

async fn send(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Response {
    let mut req = Request::post(path, body)
        .header("content-type", "application/json")
        .header("x-mock-digest", "1");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut conn = Connection::connect(addr)
        .await
        .expect("connect")
        .with_timeout(Duration::from_secs(60));
    conn.send(&req).await.expect("request")
}

/// The answer came from `pool` and the body it saw is `body`, byte for byte.
fn assert_whole(r: &Response, body: &[u8], pool: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json().expect("json answer");
    assert_eq!(v["served_by"], pool, "{v}");
    assert_eq!(r.header("x-switchyard-pool"), Some(pool));
    assert_eq!(v["request_bytes"].as_u64(), Some(body.len() as u64));
    assert_eq!(
        v["request_blake3"].as_str(),
        Some(blake3::hash(body).to_hex().as_str()),
        "the pool saw different bytes"
    );
}

#[tokio::test]
async fn multi_megabyte_chat_bodies_are_routed_by_model_and_reach_the_pool_whole() {
    let vision = mock("vision", 0).await;
    let text = mock("text", 0).await;
    let policy = large_bodies()
        .pool(
            Pool::edge("vision")
                .endpoint(vision.addr())
                .models(["llava"])
                .per_request(0.0001),
        )
        .pool(
            Pool::edge("text")
                .endpoint(text.addr())
                .models(["llama"])
                .per_request(0.0001),
        );
    let gw = Gateway::start(&policy.render()).await;

    // The SDK's order (model first) and sorted keys (model after 5 MiB of messages).
    for model_last in [false, true] {
        let body = image_chat("llava", 5 * MIB, model_last, "");
        let r = send(gw.proxy, "/v1/chat/completions", &body, &[]).await;
        assert_whole(&r, &body, "vision");
        let body = image_chat("llama", 5 * MIB, model_last, "");
        let r = send(gw.proxy, "/v1/chat/completions", &body, &[]).await;
        assert_whole(&r, &body, "text");
    }

    // 64 MiB, model last, on a route allowing 80 MiB.
    let body = image_chat("llava", 64 * MIB, true, "");
    let r = send(gw.proxy, "/v1/chat/completions", &body, &[]).await;
    assert_whole(&r, &body, "vision");

    // A route with no `max_body` takes 32 MiB by default; one byte more is a 413 that names
    // the limit, answered before the body is uploaded.
    let body = image_chat("llama", 30 * MIB, false, "");
    let r = send(gw.proxy, "/v1/completions", &body, &[]).await;
    assert_whole(&r, &body, "text");
    let big = vec![b' '; 32 * MIB + 1];
    let r = send(gw.proxy, "/v1/completions", &big, &[]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], "payload_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&(32 * MIB).to_string()),
        "{v}"
    );

    // A small body still takes Pingora's own path, unchanged.
    let r = gw.post("/v1/chat/completions", &[], &chat("llama")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-pool"), Some("text"));
}

#[tokio::test]
async fn chunked_uploads_are_read_whole_and_bounded() {
    let vision = mock("vision", 0).await;
    let policy = large_bodies()
        .route(Route::new("small", "/v1/embeddings", "openai").max_body("1MiB"))
        .pool(
            Pool::edge("vision")
                .endpoint(vision.addr())
                .per_request(0.0001),
        );
    let gw = Gateway::start(&policy.render()).await;

    let body = image_chat("llava", 3 * MIB, true, "");
    let parts: Vec<&[u8]> = body.chunks(256 * 1024).collect();
    let framed = client::chunked(&parts);
    let mut conn = Connection::connect(gw.proxy)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let req = Request::post("/v1/chat/completions", &framed)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .header("x-mock-digest", "1");
    let r = conn.send(&req).await.unwrap();
    assert_whole(&r, &body, "vision");

    // Chunked past the route's limit: 413 as soon as the count passes it.
    let body = image_chat("llava", 2 * MIB, false, "");
    let parts: Vec<&[u8]> = body.chunks(64 * 1024).collect();
    let framed = client::chunked(&parts);
    let mut conn = Connection::connect(gw.proxy).await.unwrap();
    let req = Request::post("/v1/embeddings", &framed)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked");
    let r = conn.send(&req).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains(&MIB.to_string()), "{}", r.text());
}

#[tokio::test]
async fn a_failover_resends_the_whole_large_body() {
    let far = mock("far-gpu", 0).await;
    let broken = mock("broken-edge", 0).await;
    // The preferred (cheap, near) pools: one whose endpoint refuses connections, one that
    // answers 500; the route is idempotent, so both fail over to the GPU pool.
    let policy = large_bodies()
        .pool(
            Pool::edge("dead-edge")
                .endpoint(dead_addr())
                .models(["llava"])
                .per_request(0.00001),
        )
        .pool(
            Pool::edge("broken-edge")
                .endpoint(broken.addr())
                .models(["llama"])
                .per_request(0.00001),
        )
        .pool(
            Pool::gpu("far-gpu")
                .region("eu")
                .endpoint(far.addr())
                .per_gpu_hour(40.0),
        );
    let gw = Gateway::start(&policy.render()).await;
    broken.faults().set_error_rate(1.0);
    // A retry is made only within the deadline; reading 64 MiB in a debug build can take
    // longer than the standard tier's second, so these requests ask for the batch tier
    // (1 h, cost first: the cheap edge pools are still tried first).
    let tier = [("x-slo-tier", "batch")];

    let body = image_chat("llava", 5 * MIB, true, "");
    let r = send(gw.proxy, "/v1/chat/completions", &body, &tier).await;
    assert_whole(&r, &body, "far-gpu");
    let decision = r.header("x-switchyard-decision").unwrap_or("");
    assert!(decision.contains("attempts=2"), "{decision}");

    let body = image_chat("llama", 64 * MIB, false, "");
    let r = send(gw.proxy, "/v1/chat/completions", &body, &tier).await;
    assert_whole(&r, &body, "far-gpu");
    assert_eq!(broken.stats().errors, 1, "the broken pool was tried first");
    let decision = r.header("x-switchyard-decision").unwrap_or("");
    assert!(decision.contains("attempts=2"), "{decision}");
}

#[tokio::test]
async fn large_bodies_still_stream_their_answers() {
    let edge = mock("edge", 0).await;
    let policy = large_bodies().pool(Pool::edge("edge").endpoint(edge.addr()).per_request(0.0001));
    let gw = Gateway::start(&policy.render()).await;
    let body = image_chat("llava", 2 * MIB, false, r#""stream":true,"#);
    let mut conn = Connection::connect(gw.proxy).await.unwrap();
    let req =
        Request::post("/v1/chat/completions", &body).header("content-type", "application/json");
    let (status, headers, chunks) = conn.send_streaming(&req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        client::header_of(&headers, "x-switchyard-pool"),
        Some("edge")
    );
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let spread = chunks.last().unwrap().0 - chunks.first().unwrap().0;
    // The mock spaces its events ≥ 20 ms apart: a buffered answer would arrive at once.
    assert!(
        spread >= Duration::from_millis(40),
        "chunks arrived together: {spread:?}"
    );
    let all: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(String::from_utf8_lossy(&all).contains("[DONE]"));
}

#[tokio::test]
async fn the_body_budget_refuses_large_requests_then_recovers() {
    let slow = mock("slow", 1500).await;
    let policy = large_bodies()
        .pool(Pool::edge("slow").endpoint(slow.addr()).per_request(0.0001))
        .extra("limits: { max_buffered_bytes: 8MiB }");
    let gw = Gateway::start(&policy.render()).await;

    // One 6 MiB request held by a slow pool...
    let first_body = image_chat("llava", 6 * MIB, false, "");
    let proxy = gw.proxy;
    let held_body = first_body.clone();
    let first =
        tokio::spawn(async move { send(proxy, "/v1/chat/completions", &held_body, &[]).await });
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_buffered_body_bytes", &[]) >= (6 * MIB) as f64)
        .await;
    assert!(
        metric_sum(&m, "switchyard_buffered_body_bytes", &[]) >= (6 * MIB) as f64,
        "the first body is not counted:\n{m}"
    );

    // ...leaves no room for a second: 503 overloaded with Retry-After, before its upload.
    let second_body = image_chat("llava", 4 * MIB, true, "");
    let r = send(gw.proxy, "/v1/chat/completions", &second_body, &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"]["type"], "overloaded");
    // The refusal names its real reason: the gateway's memory for bodies, not the pools
    // (which have every slot free).
    let message = r.json().unwrap()["error"]["message"].to_string();
    assert!(message.contains("limits.max_buffered_bytes"), "{message}");
    assert!(!message.contains("concurrency"), "{message}");
    assert!(r.header("retry-after").is_some());
    // Small requests are always admitted.
    let r = gw.post("/v1/chat/completions", &[], &chat("llava")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Once the first answer is out, its bytes are given back and the second goes through.
    let r = first.await.unwrap();
    assert_whole(&r, &first_body, "slow");
    let m = gw
        .metrics_when(|m| metric_sum(m, "switchyard_buffered_body_bytes", &[]) == 0.0)
        .await;
    assert_eq!(
        metric_sum(&m, "switchyard_buffered_body_bytes", &[]),
        0.0,
        "{m}"
    );
    let r = send(gw.proxy, "/v1/chat/completions", &second_body, &[]).await;
    assert_whole(&r, &second_body, "slow");
}
