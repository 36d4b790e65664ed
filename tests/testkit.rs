//! The test kit on real sockets: a mock backend on 127.0.0.1:0 driven by the test client
//! (and, where the client is too polite, by raw TCP). Every other integration test trusts
//! these two, so this file pins down their behaviour: the three protocol families, HTTP/1.1
//! framing and keep-alive, faults from Rust and over HTTP, streaming, stats and shutdown.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_testkit::client::{self, chunked, ClientError, Connection, Request};
use switchyard_testkit::mock::{MockBackend, MockConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(cfg: MockConfig) -> MockBackend {
    MockBackend::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn mock(name: &str) -> MockBackend {
    start(MockConfig {
        name: name.into(),
        ..MockConfig::default()
    })
    .await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> client::Response {
    let req = Request::post(path, body.as_bytes()).header("content-type", "application/json");
    client::send(addr, &req).await.unwrap()
}

/// Raw bytes in, everything until the server closes out.
async fn raw(addr: SocketAddr, wire: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn answers_each_protocol_family_in_its_shape() {
    let m = mock("edge-eu-1").await;
    let chat = post(
        m.addr(),
        "/v1/chat/completions",
        r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(chat.status, 200);
    assert_eq!(chat.header("content-type"), Some("application/json"));
    assert_eq!(chat.header("X-Served-By"), Some("edge-eu-1"));
    let v = chat.json().unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama-3-8b");
    assert_eq!(v["served_by"], "edge-eu-1");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let v = post(
        m.addr(),
        "/v1/completions",
        r#"{"model":"gpt-x","prompt":"a"}"#,
    )
    .await
    .json()
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["model"], "gpt-x");

    let v = post(
        m.addr(),
        "/v1/embeddings",
        r#"{"model":"all-minilm-l6","input":"x"}"#,
    )
    .await
    .json()
    .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["model"], "all-minilm-l6");
    assert_eq!(v["served_by"], "edge-eu-1");

    let v = post(m.addr(), "/v2/models/resnet-50/infer", r#"{"inputs":[]}"#)
        .await
        .json()
        .unwrap();
    assert_eq!(v["model_name"], "resnet-50");
    assert_eq!(v["model_version"], Value::Null);
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 2]));
    assert_eq!(v["served_by"], "edge-eu-1");
    let v = post(m.addr(), "/v2/models/resnet-50/versions/7/infer", "{}")
        .await
        .json()
        .unwrap();
    assert_eq!(v["model_version"], "7");

    let v = post(
        m.addr(),
        "/v1/models/bert-base:predict",
        r#"{"instances":[1]}"#,
    )
    .await
    .json()
    .unwrap();
    assert_eq!(v["predictions"], serde_json::json!([[0.1, 0.9]]));
    assert_eq!(v["model"], "bert-base");

    for path in ["/healthz", "/v2/health/ready"] {
        let r = client::send(m.addr(), &Request::get(path)).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
    let v = client::send(m.addr(), &Request::get("/healthz"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v, serde_json::json!({"status": "ok", "name": "edge-eu-1"}));

    let s = m.stats();
    assert_eq!(s.requests, 6, "health checks are not requests: {s:?}");
    assert_eq!((s.chat, s.completions, s.embeddings), (1, 1, 1));
    assert_eq!((s.oip_infer, s.tf_predict), (2, 1));
    assert_eq!(s.errors, 0);
}

#[tokio::test]
async fn errors_are_json_404_400_and_500() {
    let m = start(MockConfig {
        name: "picky".into(),
        models: Some(vec!["llama-3-8b".into()]),
        ..MockConfig::default()
    })
    .await;
    let r = post(m.addr(), "/v1/nope", "{}").await;
    assert_eq!(r.status, 404);
    assert!(r.json().unwrap()["error"].is_object());
    let r = client::send(m.addr(), &Request::get("/v1/chat/completions"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = post(m.addr(), "/v1/chat/completions", r#"{"model":"other"}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["error"]["type"], "model_not_found");
    let r = post(m.addr(), "/v2/models/other/infer", "{}").await;
    assert_eq!(r.status, 404);
    let r = post(m.addr(), "/v1/chat/completions", "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["served_by"], "picky");
    let r = post(m.addr(), "/v1/chat/completions", r#"{"messages":[]}"#).await;
    assert_eq!(r.status, 400, "model is required");
    let r = post(m.addr(), "/v1/models/llama-3-8b:predict", "").await;
    assert_eq!(r.status, 400, "an empty body is not JSON");
    let r = post(
        m.addr(),
        "/v1/chat/completions",
        r#"{"model":"llama-3-8b"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let s = m.stats();
    assert_eq!((s.requests, s.rejected), (8, 7), "{s:?}");

    let failing = start(MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let r = post(failing.addr(), "/v1/chat/completions", r#"{"model":"m"}"#).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json().unwrap()["error"]["type"], "internal_error");
    let r = client::send(failing.addr(), &Request::get("/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "health is not subject to the error rate");
    assert_eq!(failing.stats().errors, 1);
}

#[tokio::test]
async fn one_connection_carries_many_requests_and_ids_are_echoed() {
    let m = mock("ka").await;
    let mut conn = Connection::connect(m.addr()).await.unwrap();
    let mut last_id = 0;
    for i in 0..200 {
        let rid = format!("req-{i}");
        let body = format!(r#"{{"model":"m{i}"}}"#);
        let req = Request::post("/v1/chat/completions", body.as_bytes())
            .header("x-request-id", &rid)
            .header("x-switchyard-deadline-ms", "150");
        let r = conn.send(&req).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some(rid.as_str()));
        let id: u64 = r.header("x-mock-request-id").unwrap().parse().unwrap();
        assert!(id > last_id);
        last_id = id;
        let v = r.json().unwrap();
        assert_eq!(v["model"], format!("m{i}"));
        assert_eq!(v["echo"]["x-switchyard-deadline-ms"], "150");
        assert!(conn.is_open());
    }
    assert_eq!(m.stats().connections, 1);
    assert_eq!(m.stats().requests, 200);

    // `Connection: close` is honoured, and the client reconnects for the next request.
    let req = Request::get("/healthz").header("connection", "close");
    let r = conn.send(&req).await.unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(!conn.is_open());
    assert_eq!(
        conn.send(&Request::get("/healthz")).await.unwrap().status,
        200
    );
    assert_eq!(m.stats().connections, 2);
}

#[tokio::test]
async fn request_bodies_by_chunks_partial_reads_pipelining_and_http10() {
    let m = mock("wire").await;
    let body = chunked(&[br#"{"model":"#, br#""chunky","#, br#""input":"x"}"#]);
    let req = Request::post("/v1/embeddings", &body).header("transfer-encoding", "chunked");
    let mut conn = Connection::connect(m.addr()).await.unwrap();
    let r = conn.send(&req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["model"], "chunky");
    // The connection is still in step after a chunked body.
    let r = conn.send(&Request::get("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);

    // A request dribbled in small pieces.
    let wire = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"instances\":[]}";
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    for piece in wire.chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("\"model\":\"tiny\""), "{out}");

    // Two pipelined requests in one write get two answers, in order.
    let two = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"model\":\"a\"}POST /v1/completions HTTP/1.1\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"model\":\"b\"}";
    let out = raw(m.addr(), two).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    let (a, b) = (
        out.find("\"model\":\"a\"").unwrap(),
        out.find("\"model\":\"b\"").unwrap(),
    );
    assert!(a < b);

    // HTTP/1.0 closes unless asked to keep alive.
    let out = raw(m.addr(), b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("connection: keep-alive"));

    // Expect: 100-continue gets its interim answer, which the client skips.
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 13\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{\"model\":\"e\"}").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_and_closed() {
    let m = mock("strict").await;
    let out = raw(m.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("connection: close"));
    let too_long = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        switchyard_testkit::mock::MAX_BODY + 1
    );
    let out = raw(m.addr(), too_long.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(out.contains("payload_too_large"));
    let out = raw(
        m.addr(),
        b"POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = raw(
        m.addr(),
        format!("GET /healthz HTTP/1.1\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    // Invalid JSON: a 400 that closes the connection.
    let out = raw(
        m.addr(),
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 3\r\n\r\n{{{",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    // The server is fine afterwards.
    assert_eq!(
        client::send(m.addr(), &Request::get("/healthz"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn faults_over_http_change_behaviour_and_do_not_count() {
    let m = mock("ctl").await;
    let r = post(m.addr(), "/_mock/faults", r#"{"error_rate":1.0}"#).await;
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    assert_eq!(v["error_rate"], 1.0);
    assert_eq!(v["stall"], false);
    assert_eq!(
        post(m.addr(), "/v1/chat/completions", r#"{"model":"m"}"#)
            .await
            .status,
        500
    );
    assert_eq!(m.faults().error_rate(), 1.0);

    let v = post(
        m.addr(),
        "/_mock/faults",
        r#"{"error_rate":0,"extra_latency_ms":120}"#,
    )
    .await
    .json()
    .unwrap();
    assert_eq!(v["extra_latency_ms"], 120.0);
    let started = Instant::now();
    assert_eq!(
        post(m.addr(), "/v1/chat/completions", r#"{"model":"m"}"#)
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert_eq!(m.faults().extra_latency(), Duration::from_millis(120));

    assert_eq!(
        post(m.addr(), "/_mock/faults", r#"{"error_rate":7}"#)
            .await
            .status,
        400
    );
    assert_eq!(
        post(m.addr(), "/_mock/faults", r#"{"typo":1}"#)
            .await
            .status,
        400
    );
    let v = client::send(m.addr(), &Request::get("/_mock/faults"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["error_rate"], 0.0);

    let stats = client::send(m.addr(), &Request::get("/_mock/stats"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        stats["requests"], 2,
        "control requests do not count: {stats}"
    );
    assert_eq!(stats["errors"], 1);
    let r = post(m.addr(), "/_mock/stats/reset", "").await;
    assert_eq!(r.json().unwrap()["requests"], 0);
    assert_eq!(m.stats().requests, 0);
}

#[tokio::test]
async fn a_stalled_mock_reads_but_does_not_answer_until_released() {
    let m = mock("stuck").await;
    m.faults().set_stall(true);
    let req = Request::post("/v1/chat/completions", br#"{"model":"m"}"#);
    let started = Instant::now();
    let err = client::send_with_timeout(m.addr(), &req, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Control requests still answer while stalled, and can release the stall.
    let r = post(m.addr(), "/_mock/faults", r#"{"stall":false}"#);
    let waiting = tokio::spawn({
        let addr = m.addr();
        async move {
            client::send(
                addr,
                &Request::post("/v1/chat/completions", br#"{"model":"m"}"#),
            )
            .await
            .unwrap()
            .status
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    assert_eq!(r.await.status, 200);
    assert_eq!(waiting.await.unwrap(), 200);
    assert!(!m.faults().stalled());
}

#[tokio::test]
async fn streamed_answers_arrive_as_spread_out_sse_chunks() {
    let m = mock("sse").await;
    let mut conn = Connection::connect(m.addr()).await.unwrap();
    let req = Request::post(
        "/v1/chat/completions",
        br#"{"model":"llama-3-8b","stream":true,"messages":[]}"#,
    );
    let (status, headers, chunks) = conn.send_streaming(&req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        client::header_of(&headers, "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(
        client::header_of(&headers, "transfer-encoding"),
        Some("chunked")
    );
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    let (first, last) = (chunks[0].0, chunks[chunks.len() - 1].0);
    assert!(
        last - first >= Duration::from_millis(60),
        "{first:?}..{last:?}"
    );
    let text: String = chunks
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["served_by"], "sse");
        assert_eq!(v["model"], "llama-3-8b");
    }
    // The stream ended cleanly: the connection is reused.
    let r = conn.send(&Request::get("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(m.stats().connections, 1);
    assert_eq!(m.stats().streams, 1);

    // Completions stream too; the whole stream read at once is the same bytes.
    let r = post(
        m.addr(),
        "/v1/completions",
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
}

#[tokio::test]
async fn stats_count_peak_in_flight() {
    let m = start(MockConfig {
        latency: Duration::from_millis(50),
        jitter: Duration::from_millis(5),
        ..MockConfig::default()
    })
    .await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let addr = m.addr();
            tokio::spawn(async move {
                client::send(addr, &Request::post("/v1/embeddings", br#"{"model":"m"}"#))
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(50));
    let s = m.stats();
    assert_eq!(s.requests, 20);
    assert_eq!(s.in_flight, 0);
    assert!(s.peak_in_flight >= 10, "{s:?}");
    m.reset_stats();
    assert_eq!(m.stats().peak_in_flight, 0);
}

#[tokio::test]
async fn down_refuses_connections_and_up_serves_again_and_shutdown_is_final() {
    let m = mock("flaky").await;
    let mut conn = Connection::connect(m.addr()).await.unwrap();
    assert_eq!(
        conn.send(&Request::get("/healthz")).await.unwrap().status,
        200
    );

    m.faults().set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(m.faults().is_down());
    let err = TcpStream::connect(m.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        conn.send(&Request::get("/healthz")).await.is_err(),
        "open connections are cut"
    );

    m.faults().set_down(false);
    let mut up = false;
    for _ in 0..50 {
        if let Ok(r) = client::send(m.addr(), &Request::get("/healthz")).await {
            up = r.status == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the mock listens again on the same address");

    let mut conn = Connection::connect(m.addr()).await.unwrap();
    assert_eq!(
        conn.send(&Request::get("/healthz")).await.unwrap().status,
        200
    );
    m.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = TcpStream::connect(m.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(conn.send(&Request::get("/healthz")).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_keeps_the_mock_serving() {
    let addr = mock("kept").await.addr();
    let r = client::send(addr, &Request::get("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_client_reads_bodies_until_close_and_skips_no_body_statuses() {
    // A tiny server with answers the mock never gives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer: &[u8] = if req.starts_with("GET /eof") {
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
                } else if req.starts_with("HEAD") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"
                } else {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    let r = client::send(addr, &Request::get("/eof")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    let r = client::send(addr, &Request::new("HEAD", "/"))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = client::send(addr, &Request::get("/nothing")).await.unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert!(r.json().is_err());
}
