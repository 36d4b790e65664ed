//! gRPC inference (`inference.GRPCInferenceService`, as `tritonclient.grpc` and KServe clients
//! speak it) through the gateway, end to end on loopback: the real binary over h2c, mock
//! gRPC backends on h2, real YAML. Each test is one thing a gRPC client relies on.

mod support;

use std::net::SocketAddr;
use support::*;
use switchyard_testkit::grpc::proto::{
    ModelInferResponse, ModelMetadataResponse, ModelReadyResponse, ServerLiveResponse,
    ServerMetadataResponse,
};
use switchyard_testkit::grpc::{
    call, call_raw, infer_request, model_request, GrpcMock, GrpcResponse,
};

const INFER: &str = "ModelInfer";

/// The default routes and gRPC inference.
fn grpc_policy() -> Policy {
    Policy::new().route(Route::grpc())
}

/// A cheap edge pool serving `resnet` over gRPC on `grpc` (its HTTP port on `http`).
fn resnet_edge(http: SocketAddr, grpc: SocketAddr) -> Pool {
    Pool::edge("edge")
        .grpc_endpoint(http, grpc)
        .models(["resnet"])
}

async fn grpc_mock(name: &str) -> GrpcMock {
    GrpcMock::start(name, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start grpc mock")
}

/// The backend that answered a `ModelInfer` (the mock puts its name in the response's `id`).
fn answered_by(r: &GrpcResponse) -> String {
    r.decode::<ModelInferResponse>()
        .map(|m| m.id)
        .unwrap_or_else(|| panic!("not a ModelInferResponse: {r:?}"))
}

async fn infer(gw: &Gateway, model: &str, metadata: &[(&str, &str)]) -> GrpcResponse {
    call(
        gw.proxy,
        INFER,
        &infer_request(model, "", b"tensor"),
        metadata,
    )
    .await
    .expect("grpc call through the gateway")
}

/// The fleet most tests use: a cheap edge pool serving `resnet` over gRPC, a GPU pool
/// serving every model over gRPC, and a cheapest-of-all HTTP-only pool serving everything.
struct Fleet {
    gw: Gateway,
    edge: GrpcMock,
    gpu: GrpcMock,
    http_only: switchyard_testkit::mock::MockBackend,
}

/// A cheap edge pool serving `resnet` and a GPU pool serving every model, both over gRPC
/// (their HTTP ports are dead addresses).
fn edge_and_gpu(edge: &GrpcMock, gpu: &GrpcMock) -> Policy {
    grpc_policy()
        .pool(resnet_edge(dead_addr(), edge.addr()))
        .pool(Pool::gpu("gpu").grpc_endpoint(dead_addr(), gpu.addr()))
}

/// [`Fleet`], its gRPC route `grpc`.
async fn fleet(grpc: Route) -> Fleet {
    let edge = grpc_mock("edge").await;
    let gpu = grpc_mock("gpu").await;
    let http_only = mock("http-only", 0).await;
    let policy = edge_and_gpu(&edge, &gpu).route(grpc).pool(
        Pool::edge("http-only")
            .endpoint(http_only.addr())
            .per_request(0.000001),
    );
    let gw = Gateway::start(&policy.render()).await;
    Fleet {
        gw,
        edge,
        gpu,
        http_only,
    }
}

#[tokio::test]
async fn model_infer_is_routed_by_the_model_in_the_protobuf() {
    let f = fleet(Route::grpc()).await;

    let r = infer(&f.gw, "resnet", &[]).await;
    assert_eq!(r.http_status, 200);
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    // ModelInferResponse: model_name (1) and the backend that answered (id, 3).
    let answer = r
        .decode::<ModelInferResponse>()
        .expect("a ModelInferResponse");
    assert_eq!(answer.model_name, "resnet");
    assert_eq!(answer.id, "edge");
    // The decision travels as initial metadata.
    assert_eq!(r.header("x-switchyard-pool"), Some("edge"));
    assert_eq!(r.header("x-switchyard-tier"), Some("standard"));
    assert!(r.header("x-switchyard-policy-version").is_some());
    assert!(r
        .header("x-switchyard-decision")
        .is_some_and(|d| d.starts_with("meets-deadline")));

    let r = infer(&f.gw, "bert", &[]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "gpu");
    assert_eq!(r.header("x-switchyard-pool"), Some("gpu"));
    assert_eq!((f.edge.infer_calls(), f.gpu.infer_calls()), (1, 1));
}

#[tokio::test]
async fn a_pool_without_a_grpc_address_is_never_chosen() {
    let f = fleet(Route::grpc()).await;
    // The HTTP-only pool is the cheapest for every model, yet never takes a gRPC call.
    for _ in 0..5 {
        let r = infer(&f.gw, "bert", &[]).await;
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
        assert_eq!(r.header("x-switchyard-pool"), Some("gpu"));
    }
    assert_eq!(f.http_only.stats().requests, 0);
    // HTTP requests still go to it.
    let r =
        f.gw.post("/v2/models/bert/infer", &[], r#"{"inputs":[]}"#)
            .await;
    assert_eq!(r.header("x-switchyard-pool"), Some("http-only"));
}

#[tokio::test]
async fn refusals_are_grpc_statuses_with_http_200() {
    let f = fleet(Route::grpc()).await;

    let r = infer(&f.gw, "resnet", &[]).await;
    assert_eq!(r.grpc_status(), Some(0));

    // Malformed protobuf: INVALID_ARGUMENT.
    let path = "/inference.GRPCInferenceService/ModelInfer";
    let garbage = switchyard_testkit::grpc::frame(&[0x0a, 0x7f, 0x01]);
    let r = call_raw(f.gw.proxy, path, garbage, &[])
        .await
        .expect("call");
    assert_eq!((r.http_status, r.grpc_status()), (200, Some(3)), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert!(r.grpc_message().is_some_and(|m| m.contains("protobuf")));

    // A compressed message: UNIMPLEMENTED (the gateway reads messages uncompressed).
    let mut compressed =
        switchyard_testkit::grpc::frame(&infer_request("resnet", "", b"x")).to_vec();
    compressed[0] = 1;
    let r = call_raw(f.gw.proxy, path, compressed.into(), &[])
        .await
        .expect("call");
    assert_eq!(r.grpc_status(), Some(12), "{r:?}");

    // A method the service does not have, and the streaming one: UNIMPLEMENTED.
    let r = call(f.gw.proxy, "Nope", b"", &[]).await.expect("call");
    assert_eq!(r.grpc_status(), Some(12), "{r:?}");
    let r = call(
        f.gw.proxy,
        "ModelStreamInfer",
        &infer_request("resnet", "", b""),
        &[],
    )
    .await
    .expect("call");
    assert_eq!(r.grpc_status(), Some(12), "{r:?}");

    // An unknown SLO tier in the metadata: INVALID_ARGUMENT, not a JSON 400.
    let r = infer(&f.gw, "resnet", &[("x-slo-tier", "gold")]).await;
    assert_eq!((r.http_status, r.grpc_status()), (200, Some(3)), "{r:?}");
    assert_eq!(f.edge.infer_calls() + f.gpu.infer_calls(), 1);
}

#[tokio::test]
async fn an_unknown_model_is_not_found() {
    let edge = grpc_mock("edge").await;
    let policy = grpc_policy().pool(resnet_edge(dead_addr(), edge.addr()));
    let gw = Gateway::start(&policy.render()).await;
    let r = infer(&gw, "no-such-model", &[]).await;
    assert_eq!(r.http_status, 200);
    assert_eq!(r.grpc_status(), Some(5), "{r:?}");
    assert!(r
        .grpc_message()
        .is_some_and(|m| m.contains("no-such-model")));
    assert_eq!(edge.infer_calls(), 0);
}

#[tokio::test]
async fn server_live_and_ready_are_answered_by_the_gateway() {
    let f = fleet(Route::grpc()).await;
    for method in ["ServerLive", "ServerReady"] {
        let r = call(f.gw.proxy, method, b"", &[]).await.expect("call");
        assert_eq!(r.grpc_status(), Some(0), "{method}: {r:?}");
        // ServerLiveResponse.live / ServerReadyResponse.ready (field 1, the same shape) is true.
        let live = r.decode::<ServerLiveResponse>().map(|m| m.live);
        assert_eq!(live, Some(true), "{method}");
    }
    let r = call(f.gw.proxy, "ServerMetadata", b"", &[])
        .await
        .expect("call");
    let meta = r.decode::<ServerMetadataResponse>().map(|m| m.name);
    assert_eq!(meta.as_deref(), Some("switchyard"));
    assert_eq!(f.edge.calls("ServerLive") + f.gpu.calls("ServerLive"), 0);
    assert_eq!(f.edge.calls("ServerReady") + f.gpu.calls("ServerReady"), 0);
}

#[tokio::test]
async fn model_ready_goes_to_a_pool_serving_the_model() {
    let f = fleet(Route::grpc()).await;
    let req = model_request("resnet");
    let r = call(f.gw.proxy, "ModelReady", &req, &[])
        .await
        .expect("call");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(
        r.decode::<ModelReadyResponse>().map(|m| m.ready),
        Some(true)
    );
    assert_eq!(r.header("x-switchyard-pool"), Some("edge"));
    assert_eq!(f.edge.calls("ModelReady"), 1);

    let r = call(f.gw.proxy, "ModelMetadata", &req, &[])
        .await
        .expect("call");
    let meta = r.decode::<ModelMetadataResponse>().map(|m| m.name);
    assert_eq!(meta.as_deref(), Some("resnet"));
    assert_eq!(f.edge.infer_calls(), 0);

    // Metadata calls are no inference spend; a ModelInfer is.
    let counted = |n: f64| {
        move |m: &str| metric_sum(m, "switchyard_requests_total", &[("route", "grpc")]) >= n
    };
    let m = f.gw.metrics_when(counted(2.0)).await;
    assert_eq!(
        metric_sum(&m, "switchyard_cost_nanousd_total", &[("pool", "edge")]),
        0.0
    );
    infer(&f.gw, "resnet", &[]).await;
    let m = f.gw.metrics_when(counted(3.0)).await;
    assert!(metric_sum(&m, "switchyard_cost_nanousd_total", &[("pool", "edge")]) > 0.0);
}

#[tokio::test]
async fn a_refused_grpc_endpoint_fails_over_to_another_pool() {
    let gpu = grpc_mock("gpu").await;
    // The first choice (cheap edge) refuses connections on its gRPC port.
    let policy = grpc_policy()
        .pool(resnet_edge(dead_addr(), dead_addr()))
        .pool(Pool::gpu("gpu").grpc_endpoint(dead_addr(), gpu.addr()));
    let gw = Gateway::start(&policy.render()).await;
    let r = infer(&gw, "resnet", &[]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "gpu");
    assert_eq!(r.header("x-switchyard-pool"), Some("gpu"));
    assert_eq!(gpu.infer_calls(), 1);
}

#[tokio::test]
async fn an_upstream_grpc_error_reaches_the_client_unchanged() {
    let f = fleet(Route::grpc()).await;
    f.edge.fail_with(9);
    let r = infer(&f.gw, "resnet", &[]).await;
    assert_eq!(r.grpc_status(), Some(9), "{r:?}");
    assert_eq!(r.grpc_message(), Some("mock told to fail"));
    // Counted as the failure it is (FAILED_PRECONDITION ~ 400), not as HTTP 200.
    let m = f
        .gw
        .metrics_when(|m| metric_sum(m, "switchyard_requests_total", &[("route", "grpc")]) >= 1.0)
        .await;
    let with = |s: &str| {
        metric_sum(
            &m,
            "switchyard_requests_total",
            &[("route", "grpc"), ("status", s)],
        )
    };
    assert_eq!((with("400"), with("200")), (1.0, 0.0), "{m}");
}

#[tokio::test]
async fn large_messages_are_routed_whole_fail_over_and_are_bounded_by_max_body() {
    let edge = grpc_mock("edge").await;
    let gpu = grpc_mock("gpu").await;
    let policy = edge_and_gpu(&edge, &gpu).route(Route::grpc().idempotent().max_body("4MiB"));
    let gw = Gateway::start(&policy.render()).await;

    // A 3 MiB tensor (past the 64 KiB Pingora can replay): sent by the gateway's own
    // sender over h2c, answered with its trailers.
    // (A retry is made only within the deadline, and moving 3 MiB through the test's debug
    // build h2 client and mock takes seconds: these calls ask for the 1 h batch tier.)
    let tier = [("x-slo-tier", "batch")];
    let big = infer_request("resnet", "", &vec![7u8; 3 * 1024 * 1024]);
    let r = call(gw.proxy, INFER, &big, &tier).await.expect("call");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "edge");
    assert_eq!(r.header("x-switchyard-pool"), Some("edge"));

    // The edge answers UNAVAILABLE: the whole message goes to the GPU pool.
    edge.fail_with(14);
    let r = call(gw.proxy, INFER, &big, &tier).await.expect("call");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "gpu");
    assert_eq!((edge.infer_calls(), gpu.infer_calls()), (2, 1));

    // Over the route's max_body: RESOURCE_EXHAUSTED, as a gRPC status.
    let too_big = infer_request("resnet", "", &vec![7u8; 5 * 1024 * 1024]);
    let r = call(gw.proxy, INFER, &too_big, &tier).await.expect("call");
    assert_eq!((r.http_status, r.grpc_status()), (200, Some(8)), "{r:?}");
}

#[tokio::test]
async fn an_unavailable_backend_is_retried_elsewhere_on_an_idempotent_route() {
    let edge = grpc_mock("edge").await;
    let gpu = grpc_mock("gpu").await;
    let policy = edge_and_gpu(&edge, &gpu).route(Route::grpc().idempotent());
    let gw = Gateway::start(&policy.render()).await;
    edge.fail_with(14);
    let r = infer(&gw, "resnet", &[]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "gpu");
    assert_eq!((edge.infer_calls(), gpu.infer_calls()), (1, 1));
}

#[tokio::test]
async fn a_cacheable_route_answers_a_repeated_model_infer_from_the_cache() {
    let f = fleet(Route::grpc().cache("{ ttl: 10m }")).await;
    let first = infer(&f.gw, "resnet", &[]).await;
    assert_eq!(first.grpc_status(), Some(0), "{first:?}");
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    let second = infer(&f.gw, "resnet", &[]).await;
    assert_eq!(second.grpc_status(), Some(0), "{second:?}");
    assert_eq!(second.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(second.message(), first.message());
    assert_eq!(f.edge.infer_calls(), 1);

    // A failed call is never stored: both attempts reach the backend.
    f.gpu.fail_with(14);
    for _ in 0..2 {
        let r = infer(&f.gw, "bert", &[]).await;
        assert_eq!(r.grpc_status(), Some(14), "{r:?}");
    }
    assert_eq!(f.gpu.infer_calls(), 2);
}

#[tokio::test]
async fn grpc_timeout_tightens_the_deadline_sent_upstream() {
    let f = fleet(Route::grpc()).await;
    let r = infer(&f.gw, "resnet", &[("grpc-timeout", "200m")]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    let sent = f
        .edge
        .last_headers()
        .and_then(|h| h.get("x-switchyard-deadline-ms").cloned())
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .expect("deadline header upstream");
    assert!(sent <= 200, "deadline sent upstream: {sent} ms");
    // What a gRPC server checks reaches it unchanged.
    let h = f.edge.last_headers().expect("headers");
    assert_eq!(
        h.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    let r = infer(&f.gw, "resnet", &[("grpc-timeout", "soon")]).await;
    assert_eq!(r.grpc_status(), Some(3), "{r:?}");
}

/// `resnet` split 90/10 between `v1` (pool `grpc-v1`, upstream `resnet-v1` version `1`) and
/// `v2` (pool `grpc-v2`, upstream `resnet-canary` version `2`), sticky on `x-session`.
fn grpc_split(v1: &GrpcMock, v2: &GrpcMock, weights: (u32, u32), shadow: &str) -> String {
    grpc_policy()
        .pool(Pool::edge("grpc-v1").grpc_endpoint(dead_addr(), v1.addr()).models(["resnet-v1"]))
        .pool(Pool::edge("grpc-v2").grpc_endpoint(dead_addr(), v2.addr()).models(["resnet-canary"]))
        .extra(&format!(
            "models:\n  resnet:\n    sticky: \"header:x-session\"\n    versions:\n      \
             - {{ name: v1, weight: {}, pools: [grpc-v1], upstream_model: resnet-v1, upstream_version: \"1\" }}\n      \
             - {{ name: v2, weight: {}, pools: [grpc-v2], upstream_model: resnet-canary, upstream_version: \"2\" }}\n{shadow}",
            weights.0, weights.1
        ))
        .render()
}

async fn infer_version(gw: &Gateway, version: &str, session: &str) -> GrpcResponse {
    call(
        gw.proxy,
        INFER,
        &infer_request("resnet", version, b"tensor"),
        &[("x-session", session)],
    )
    .await
    .expect("grpc call through the gateway")
}

#[tokio::test]
async fn a_grpc_call_for_the_canary_version_reaches_it_with_model_name_and_version_rewritten() {
    let v1 = grpc_mock("v1").await;
    let v2 = grpc_mock("v2").await;
    let gw = Gateway::start(&grpc_split(&v1, &v2, (90, 10), "")).await;

    // The client names the split's version `v2` in `model_version`.
    let r = infer_version(&gw, "v2", "anyone").await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert_eq!(answered_by(&r), "v2");
    assert_eq!(r.header("x-switchyard-version"), Some("v2"));
    // The backend decoded a well-framed message naming its own model and version.
    assert_eq!(
        v2.infers(),
        vec![("resnet-canary".to_string(), "2".to_string())]
    );
    let answer = r
        .decode::<ModelInferResponse>()
        .expect("a ModelInferResponse");
    assert_eq!(
        (answer.model_name.as_str(), answer.model_version.as_str()),
        ("resnet-canary", "2")
    );
    // Without a version: the caller's sticky version, rewritten the same way.
    let r = infer_version(&gw, "", "someone").await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    let on = answered_by(&r);
    let expected = if on == "v1" {
        ("resnet-v1", "1")
    } else {
        ("resnet-canary", "2")
    };
    let mock = if on == "v1" { &v1 } else { &v2 };
    let last = mock.infers().last().cloned().expect("received");
    assert_eq!((last.0.as_str(), last.1.as_str()), expected);
}

#[tokio::test]
async fn a_90_10_split_holds_for_grpc_and_every_call_reaches_its_versions_model() {
    let v1 = grpc_mock("v1").await;
    let v2 = grpc_mock("v2").await;
    let gw = Gateway::start(&grpc_split(&v1, &v2, (90, 10), "")).await;
    const N: usize = 1000;
    let mut on_v2 = 0;
    for i in 0..N {
        let r = infer_version(&gw, "", &format!("session-{i}")).await;
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
        let version = r.header("x-switchyard-version").unwrap_or("").to_string();
        assert_eq!(answered_by(&r), version, "call {i}");
        on_v2 += usize::from(version == "v2");
    }
    let share = on_v2 as f64 * 100.0 / N as f64;
    println!("v2 share over {N} gRPC sessions: {share:.1}%");
    assert!((7.0..=13.0).contains(&share), "v2 got {share:.1}%");
    assert_eq!(v2.infers().len(), on_v2);
    assert!(v1
        .infers()
        .iter()
        .all(|(m, v)| m == "resnet-v1" && v == "1"));
    assert!(v2
        .infers()
        .iter()
        .all(|(m, v)| m == "resnet-canary" && v == "2"));
}

#[tokio::test]
async fn grpc_shadow_copies_are_rewritten_for_their_version_and_compared_on_grpc_status() {
    let live = grpc_mock("v1").await;
    let shadow = grpc_mock("v2").await;
    let gw = Gateway::start(&grpc_split(
        &live,
        &shadow,
        (100, 0),
        "    shadow: { version: v2, percent: 100, compare: status }\n",
    ))
    .await;
    for i in 0..5 {
        let r = infer_version(&gw, "", &format!("s-{i}")).await;
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
        assert_eq!(answered_by(&r), "v1");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        let s = shadow_report(&gw).await;
        if s["agree"] == 5 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(s["sent"], 5, "{s}");
    assert_eq!(shadow.infers().len(), 5);
    assert!(shadow
        .infers()
        .iter()
        .all(|(m, v)| m == "resnet-canary" && v == "2"));

    // A shadow answering UNAVAILABLE (grpc-status 14) differs from the client's OK.
    shadow.fail_with(14);
    for i in 0..3 {
        let r = infer_version(&gw, "", &format!("t-{i}")).await;
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    }
    let s = loop {
        let s = shadow_report(&gw).await;
        if s["status_differs"] == 3 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(s["agree"], 5, "{s}");
}

/// `GET /admin/rollouts`'s shadow counters of `resnet`.
async fn shadow_report(gw: &Gateway) -> serde_json::Value {
    let v: serde_json::Value = gw.admin_get("/admin/rollouts").await.json().expect("json");
    v["models"]["resnet"]["shadow"].clone()
}

#[tokio::test]
async fn concurrent_calls_share_a_few_h2_connections_to_the_backend() {
    // 60 calls in flight at once (each from its own client connection) to a backend that
    // holds each for 300 ms: the gateway multiplexes them over its h2c connections to the
    // backend instead of opening one per call, as gRPC clients and Envoy do.
    let gpu = grpc_mock("gpu").await;
    gpu.set_delay(std::time::Duration::from_millis(300));
    let gw = Gateway::start(
        &grpc_policy()
            .pool(Pool::gpu("gpu").grpc_endpoint(dead_addr(), gpu.addr()))
            .render(),
    )
    .await;
    // One call first: the connection is open before the crowd arrives.
    assert_eq!(infer(&gw, "resnet", &[]).await.grpc_status(), Some(0));
    let before = gpu.connections();
    const N: usize = 60;
    let calls: Vec<_> = (0..N)
        .map(|_| {
            let proxy = gw.proxy;
            tokio::spawn(async move {
                call(proxy, INFER, &infer_request("resnet", "", b"tensor"), &[]).await
            })
        })
        .collect();
    for c in calls {
        let r = c.await.expect("join").expect("call");
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
        assert_eq!(answered_by(&r), "gpu");
    }
    let opened = gpu.connections() - before;
    println!(
        "{N} concurrent calls: {opened} new backend connections, {} calls held at once",
        gpu.most_open()
    );
    assert!(gpu.most_open() >= (N / 2) as u64, "the calls did overlap");
    // (Pingora's connector can miss a connection while another call is opening a stream on
    // it, and opens one more: a few, never one per call.)
    assert!(opened <= 20, "{opened} connections for {N} calls in flight");
}
