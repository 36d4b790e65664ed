//! Traces (`observe.traces`), on a real gateway: a span per request exported by OTLP/HTTP to
//! a receiver that decodes it with the official protobuf types; the caller's `traceparent`
//! continued (the span is its child, the backend's parent is the span); the GenAI and
//! HTTP attributes and the decision; with the collector down, requests still succeed
//! while the lost spans are counted; and at `SIGTERM` the queued spans are exported before
//! the process exits, within a bound even when the collector never answers.

mod support;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::otlp::{attr, header, hex, otlp_receiver, recording_backend, Received};
use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One edge pool priced per token (so the answer's `usage` is read) at `backend`, and
/// `traces` as the `observe.traces` settings.
fn policy(backend: SocketAddr, traces: &str) -> String {
    Policy::new()
        .pool(
            Pool::edge("edge")
                .region("eu")
                .endpoint(backend)
                .price("{ per_1k_input_tokens: 0.001, per_1k_output_tokens: 0.002 }"),
        )
        .extra(&format!("observe: {{ traces: {traces} }}"))
        .render()
}

/// The spans received once there are at least `n` (at most 5 s).
async fn spans_when(seen: &Arc<Mutex<Received>>, n: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spans = seen.lock().unwrap().spans();
        if spans.len() >= n || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn double(v: Option<&Value>) -> Option<f64> {
    match v {
        Some(Value::DoubleValue(d)) => Some(*d),
        _ => None,
    }
}

/// The chat requests the backend was sent (not health probes).
fn chats(heads: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("post /v1/chat/completions"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_request_is_one_child_span_and_the_backends_parent() {
    let (collector, seen) = otlp_receiver().await;
    let (backend, heads) = recording_backend().await;
    let gw = Gateway::start(&policy(
        backend,
        &format!(
            "{{ otlp_endpoint: 'http://{collector}', batch_every: 100ms, service_name: gw-test }}"
        ),
    ))
    .await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[
                ("x-forwarded-for", "192.0.2.10"),
                ("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01")),
                ("tracestate", "vendor=abc"),
            ],
            &chat("model-a"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let spans = spans_when(&seen, 1).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(hex(&span.trace_id), TRACE, "the caller's trace");
    assert_eq!(
        hex(&span.parent_span_id),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(span.span_id.len(), 8);
    assert_ne!(hex(&span.span_id), CALLER_SPAN);
    assert_eq!(span.trace_state, "vendor=abc");
    assert_eq!(span.name, "chat model-a");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    assert_eq!(span.status, None, "a 200 is not an error");
    // HTTP server conventions.
    assert_eq!(text(attr(span, "http.request.method")), Some("POST"));
    assert_eq!(text(attr(span, "url.path")), Some("/v1/chat/completions"));
    assert_eq!(int(attr(span, "http.response.status_code")), Some(200));
    assert_eq!(text(attr(span, "server.address")), Some("127.0.0.1"));
    assert_eq!(
        int(attr(span, "server.port")),
        Some(i64::from(gw.proxy.port()))
    );
    assert_eq!(text(attr(span, "http.route")), Some("chat"));
    // GenAI conventions: the model asked for and the answer's `usage`.
    assert_eq!(text(attr(span, "gen_ai.operation.name")), Some("chat"));
    assert_eq!(text(attr(span, "gen_ai.request.model")), Some("model-a"));
    assert_eq!(int(attr(span, "gen_ai.usage.input_tokens")), Some(12));
    assert_eq!(int(attr(span, "gen_ai.usage.output_tokens")), Some(7));
    assert_eq!(
        attr(span, "gen_ai.provider.name"),
        None,
        "not a known hosted API"
    );
    // The decision.
    assert_eq!(text(attr(span, "switchyard.pool")), Some("edge"));
    assert_eq!(text(attr(span, "switchyard.region")), Some("eu"));
    assert_eq!(text(attr(span, "switchyard.tier")), Some("standard"));
    assert_eq!(
        text(attr(span, "switchyard.reason")),
        Some("meets-deadline")
    );
    assert_eq!(int(attr(span, "switchyard.attempts")), Some(1));
    assert!(double(attr(span, "switchyard.estimate_ms")).is_some_and(|e| e > 0.0));
    // 12 input and 7 output tokens at $0.001 and $0.002 per 1k.
    let cost = double(attr(span, "switchyard.cost_usd")).unwrap_or(-1.0);
    assert!((cost - 0.000026).abs() < 1e-9, "{cost}");
    {
        let got = seen.lock().unwrap();
        let head = got.heads[0].to_ascii_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert_eq!(
            header(&head, "content-type"),
            Some("application/x-protobuf")
        );
        let resource = got.exports[0].resource_spans[0]
            .resource
            .clone()
            .unwrap_or_default();
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name");
        assert_eq!(
            service.and_then(|kv| kv.value.as_ref()?.value.clone()),
            Some(Value::StringValue("gw-test".into()))
        );
    }
    // The backend's parent is the gateway's span; the caller's `tracestate` passes.
    let sent = chats(&heads);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        header(&sent[0], "traceparent"),
        Some(format!("00-{TRACE}-{}-01", hex(&span.span_id)).as_str())
    );
    assert_eq!(header(&sent[0], "tracestate"), Some("vendor=abc"));
    let metrics = gw
        .metrics_when(|m| m.contains("switchyard_trace_spans_exported_total"))
        .await;
    assert_eq!(
        metric_sum(&metrics, "switchyard_trace_spans_exported_total", &[]),
        1.0
    );

    // Without a `traceparent`: a new trace, its root the gateway's span.
    let r = gw.post("/v1/chat/completions", &[], &chat("model-b")).await;
    assert_eq!(r.status, 200);
    let spans = spans_when(&seen, 2).await;
    let root = spans
        .iter()
        .find(|s| text(attr(s, "gen_ai.request.model")) == Some("model-b"))
        .expect("model-b's span");
    assert!(root.parent_span_id.is_empty());
    assert_ne!(hex(&root.trace_id), TRACE);
    assert_ne!(root.trace_id, vec![0; 16]);
    let sent = chats(&heads);
    assert_eq!(
        header(&sent[1], "traceparent"),
        Some(format!("00-{}-{}-01", hex(&root.trace_id), hex(&root.span_id)).as_str())
    );

    // A caller that does not sample: no span, but the backend still gets the trace, unsampled.
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-00"))],
            &chat("model-c"),
        )
        .await;
    assert_eq!(r.status, 200);
    let sent = chats(&heads);
    let forwarded = header(&sent[2], "traceparent")
        .unwrap_or_default()
        .to_string();
    assert!(
        forwarded.starts_with(&format!("00-{TRACE}-")) && forwarded.ends_with("-00"),
        "{forwarded}"
    );
    // (Two export intervals later, still two spans.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().spans().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_requests_succeed_and_lost_spans_are_counted() {
    let (backend, _) = recording_backend().await;
    let down = dead_addr();
    // Two spans wait at most; the first export, after 1 s, fails twice.
    let gw = Gateway::start(&policy(
        backend,
        &format!(
            "{{ otlp_endpoint: 'http://{down}', batch_every: 1s, max_queue: 2, max_attempts: 2 }}"
        ),
    ))
    .await;
    for _ in 0..5 {
        let r = gw.post("/v1/chat/completions", &[], &chat("model-a")).await;
        assert_eq!(r.status, 200);
    }
    let metrics = gw
        .metrics_when(|m| metric_sum(m, "switchyard_trace_spans_failed_total", &[]) >= 2.0)
        .await;
    assert_eq!(
        metric_sum(&metrics, "switchyard_trace_spans_dropped_total", &[]),
        3.0
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_trace_spans_failed_total", &[]),
        2.0
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_trace_spans_exported_total", &[]),
        0.0
    );
    // The queue has room again: the next span waits for the next export.
    let r = gw.post("/v1/chat/completions", &[], &chat("model-a")).await;
    assert_eq!(r.status, 200);
    let metrics = gw
        .metrics_when(|m| metric_sum(m, "switchyard_trace_spans_failed_total", &[]) >= 3.0)
        .await;
    assert_eq!(
        metric_sum(&metrics, "switchyard_trace_spans_dropped_total", &[]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_turn_on_with_a_reload_and_sample_ratio_zero_records_no_new_trace() {
    let (collector, seen) = otlp_receiver().await;
    let (backend, heads) = recording_backend().await;
    let untraced = Policy::new()
        .pool(Pool::edge("edge").region("eu").endpoint(backend))
        .render();
    let gw = Gateway::start(&untraced).await;
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("traceparent", &caller)],
            &chat("model-a"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&chats(&heads)[0], "traceparent"),
        Some(caller.as_str()),
        "traces off: the caller's header passes as it came"
    );
    std::fs::write(
        &gw.policy_path,
        policy(
            backend,
            &format!("{{ otlp_endpoint: 'http://{collector}/v1/traces', batch_every: 100ms, sample_ratio: 0 }}"),
        ),
    )
    .expect("write policy");
    let r = gw.admin_post("/admin/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Ratio 0: a new trace is not sampled, a sampled caller's is (parent-based).
    for headers in [vec![], vec![("traceparent", caller.as_str())]] {
        let r = gw
            .post("/v1/chat/completions", &headers, &chat("model-a"))
            .await;
        assert_eq!(r.status, 200);
    }
    let spans = spans_when(&seen, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans_later = seen.lock().unwrap().spans();
    assert_eq!((spans.len(), spans_later.len()), (1, 1), "{spans_later:?}");
    assert_eq!(hex(&spans[0].trace_id), TRACE);
    let sent = chats(&heads);
    assert!(
        header(&sent[1], "traceparent").is_some_and(|t| t.ends_with("-00")),
        "the unsampled new trace is still propagated: {sent:?}"
    );
}

/// A gateway (grace 1 s) exporting to `collector` in batches every 30 s, so that nothing is
/// exported in a test's time but by the shutdown's flush, after `n` sampled requests.
async fn spans_queued_for(collector: SocketAddr, n: usize) -> Gateway {
    let (backend, _heads) = recording_backend().await;
    let text = format!(
        "{}listeners: {{ shutdown_grace: 1s }}\n",
        policy(
            backend,
            &format!("{{ otlp_endpoint: 'http://{collector}/v1/traces', batch_every: 30s, sample_ratio: 1 }}"),
        )
    );
    let gw = Gateway::start(&text).await;
    for _ in 0..n {
        let r = gw.post("/v1/chat/completions", &[], &chat("model-a")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    gw
}

/// A collector that takes connections and reads what it is sent but never answers.
async fn silent_collector() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                use tokio::io::AsyncReadExt;
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_sigterm_are_exported_before_the_gateway_exits() {
    let (collector, seen) = otlp_receiver().await;
    const N: usize = 25;
    let mut gw = spans_queued_for(collector, N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.lock().unwrap().spans().len(),
        0,
        "nothing exported yet"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_trace_spans_exported_total", &[]),
        0.0
    );

    let sent = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    println!("exited {:?} after SIGTERM (grace 1 s)", sent.elapsed());
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        gw.log()
    );
    let spans = seen.lock().unwrap().spans();
    assert_eq!(spans.len(), N, "every span queued at shutdown was exported");
    let mut ids: Vec<_> = spans.iter().map(|s| hex(&s.span_id)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "each once");
    assert!(!gw.log().contains("spans not exported"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_shutdown_by_the_flush_bound_at_most() {
    let mut gw = spans_queued_for(silent_collector().await, 5).await;
    let sent = Instant::now();
    gw.signal("TERM");
    // The grace period (1 s) and the flush's bound (min(2 s, grace): 1 s), with room for
    // the runtimes' shutdown; without the bound the export's own 5 s read timeout and its
    // retries would hold the process.
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let took = sent.elapsed();
    println!("exited {took:?} after SIGTERM (grace 1 s, collector silent)");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        gw.log()
    );
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(
        gw.log().contains("spans not exported at shutdown are lost"),
        "{}",
        gw.log()
    );
}
