//! Capacity and the KEDA external scaler, end to end on loopback: the real binary, a mock
//! pool, and a gRPC client on `h2` calling `externalscaler.ExternalScaler` the way KEDA's
//! operator does (GetMetricSpec once, then GetMetrics and IsActive on its polling interval,
//! StreamIsActive held open for `external-push`). The messages are `prost` types declared
//! here from KEDA's `externalscaler.proto`, so the gateway's hand-written codec is checked
//! against an independent one.

mod support;

use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::grpc::{call_raw, frame, unframe};

#[derive(Clone, PartialEq, Message)]
struct ScaledObjectRef {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(map = "string, string", tag = "3")]
    scaler_metadata: HashMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct IsActiveResponse {
    #[prost(bool, tag = "1")]
    result: bool,
}

#[derive(Clone, PartialEq, Message)]
struct MetricSpec {
    #[prost(string, tag = "1")]
    metric_name: String,
    #[prost(int64, tag = "2")]
    target_size: i64,
    #[prost(double, tag = "3")]
    target_size_float: f64,
}

#[derive(Clone, PartialEq, Message)]
struct GetMetricSpecResponse {
    #[prost(message, repeated, tag = "1")]
    metric_specs: Vec<MetricSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct GetMetricsRequest {
    #[prost(message, optional, tag = "1")]
    scaled_object_ref: Option<ScaledObjectRef>,
    #[prost(string, tag = "2")]
    metric_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct MetricValue {
    #[prost(string, tag = "1")]
    metric_name: String,
    #[prost(int64, tag = "2")]
    metric_value: i64,
    #[prost(double, tag = "3")]
    metric_value_float: f64,
}

#[derive(Clone, PartialEq, Message)]
struct GetMetricsResponse {
    #[prost(message, repeated, tag = "1")]
    metric_values: Vec<MetricValue>,
}

const SERVICE: &str = "/externalscaler.ExternalScaler/";

fn scaled_object(pool: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: format!("{pool}-scaler"),
        namespace: "switchyard".into(),
        scaler_metadata: HashMap::from([("pool".to_string(), pool.to_string())]),
    }
}

async fn unary<M: Message + Default>(keda: SocketAddr, method: &str, msg: &impl Message) -> M {
    let r = call_raw(
        keda,
        &format!("{SERVICE}{method}"),
        frame(&msg.encode_to_vec()),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{method}: {e:?}"));
    assert_eq!(r.grpc_status(), Some(0), "{method}: {r:?}");
    r.decode::<M>()
        .unwrap_or_else(|| panic!("{method}: not a response message: {r:?}"))
}

async fn desired(keda: SocketAddr, pool: &str, metric: &str) -> i64 {
    let r: GetMetricsResponse = unary(
        keda,
        "GetMetrics",
        &GetMetricsRequest {
            scaled_object_ref: Some(scaled_object(pool)),
            metric_name: metric.to_string(),
        },
    )
    .await;
    assert_eq!(r.metric_values.len(), 1);
    assert_eq!(r.metric_values[0].metric_name, metric);
    assert_eq!(
        r.metric_values[0].metric_value as f64,
        r.metric_values[0].metric_value_float
    );
    r.metric_values[0].metric_value
}

async fn is_active(keda: SocketAddr, pool: &str) -> bool {
    let r: IsActiveResponse = unary(keda, "IsActive", &scaled_object(pool)).await;
    r.result
}

/// Poll `f` every 250 ms until it holds, at most `patience`; the last value otherwise.
async fn eventually<F, Fut>(patience: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + patience;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait for the scaler's listener (readiness covers the proxy and admin listeners only).
async fn scaler_up(keda: SocketAddr) {
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(keda).await.is_ok()
    })
    .await;
    assert!(up, "the KEDA listener {keda} accepts connections");
}

/// A `StreamIsActive` call held open: each `IsActiveResponse` as it arrives.
async fn stream_is_active(
    keda: SocketAddr,
    pool: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<bool> {
    let tcp = tokio::net::TcpStream::connect(keda).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::post(format!("http://{keda}{SERVICE}StreamIsActive"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(req, false).expect("send");
    send.send_data(frame(&scaled_object(pool).encode_to_vec()), true)
        .expect("send data");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = client;
        let response = response.await.expect("response");
        let mut body = response.into_body();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let one: Vec<u8> = buf.drain(..5 + len).collect();
                let msg = unframe(&one).expect("a framed message");
                let r = IsActiveResponse::decode(Bytes::copy_from_slice(msg)).expect("decode");
                if tx.send(r.result).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Given a pool that may scale to zero, KEDA sees it idle (inactive, 0 replicas); the first
/// request activates it on the push stream; under load the desired replicas rise, and after
/// the load and the scale-down window they fall back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_sees_desired_replicas_rise_under_load_and_fall_after_it() {
    let backend = mock("gpu", 40).await;
    let keda = free_addr();
    let policy = Policy::new()
        .pool(
            Pool::gpu("gpu")
                .endpoints(&[backend.addr()])
                .service_time("40ms")
                .concurrency(64)
                .with(
                    "capacity",
                    "{ min_replicas: 0, max_replicas: 50, concurrency_per_replica: 1, \
                       deadline: 200ms, percentile: 0.99, scale_down_window: 2s, scale_up_time: 30s }",
                ),
        )
        .extra(&format!("listeners: {{ keda: \"{keda}\" }}"));
    let gw = Gateway::start(&policy.render()).await;
    scaler_up(keda).await;

    // KEDA asks for the metric spec once: one metric, target 1 (the value is replicas).
    let spec: GetMetricSpecResponse = unary(keda, "GetMetricSpec", &scaled_object("gpu")).await;
    assert_eq!(spec.metric_specs.len(), 1);
    let metric = spec.metric_specs[0].metric_name.clone();
    assert_eq!(metric, "desired-replicas-gpu");
    assert_eq!(spec.metric_specs[0].target_size, 1);
    assert_eq!(spec.metric_specs[0].target_size_float, 1.0);

    // Idle and `min_replicas: 0`: inactive, zero replicas.
    assert!(
        eventually(Duration::from_secs(5), || async {
            !is_active(keda, "gpu").await && desired(keda, "gpu", &metric).await == 0
        })
        .await,
        "an idle pool with min_replicas 0 is inactive at 0"
    );

    // The push stream says inactive at once, then active when a request arrives.
    let mut stream = stream_is_active(keda, "gpu").await;
    let first = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await;
    assert_eq!(
        first.ok().flatten(),
        Some(false),
        "StreamIsActive sends the state at once"
    );
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await;
    assert_eq!(
        next.ok().flatten(),
        Some(true),
        "the first request activates the pool"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "switchyard_pool_activations_total",
            &[("pool", "gpu")]
        ),
        1.0,
        "{metrics}"
    );

    // Load: 6 clients back to back on a 40 ms pool (~150 requests a second, ~6 in flight).
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, proxy) = (stop.clone(), gw.proxy);
        clients.push(tokio::spawn(async move {
            let body = chat("m");
            let req =
                switchyard_testkit::client::Request::post("/v1/chat/completions", body.as_bytes())
                    .header("content-type", "application/json");
            while !stop.load(Ordering::Relaxed) {
                let _ = switchyard_testkit::client::send(proxy, &req).await;
            }
        }));
    }
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(15);
    while peak < 6 && Instant::now() < until {
        peak = peak.max(desired(keda, "gpu", &metric).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rose = peak >= 6;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    assert!(rose, "desired replicas rise under load (peak {peak})");
    assert!(is_active(keda, "gpu").await);
    let capacity: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/admin/capacity").await.body).expect("json");
    let pool = &capacity["pools"][0];
    assert_eq!(pool["pool"], "gpu", "{capacity}");
    assert!(
        pool["arrival_rate_per_s"].as_f64().unwrap_or(0.0) > 20.0,
        "{capacity}"
    );
    assert_eq!(pool["activations"], 1, "{capacity}");
    let metrics = gw.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "switchyard_pool_desired_replicas",
            &[("pool", "gpu")]
        ) >= 1.0
    );

    // After the load: the 10 s rate window empties, then the 2 s scale-down window passes.
    assert!(
        eventually(Duration::from_secs(25), || async {
            desired(keda, "gpu", &metric).await == 0
        })
        .await,
        "desired replicas fall back to zero after the load and the window"
    );
    assert!(!is_active(keda, "gpu").await);
    let back = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.recv().await {
                Some(false) => return true,
                Some(true) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(back.ok(), Some(true), "the stream says inactive again");
}

/// A pool at zero that a request would take warm is woken by it, though the request goes
/// elsewhere now: a paid-for GPU pool scaled to zero behind a per-use API is asked for a
/// replica by the first request its deadline keeps off it, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_kept_off_a_cold_pool_wakes_it_on_its_way_elsewhere() {
    let gpu = mock("gpu", 10).await;
    let api = mock("api", 10).await;
    let keda = free_addr();
    let policy = Policy::new()
        .pool(
            Pool::gpu("gpu")
                .endpoints(&[gpu.addr()])
                .with("price", "{ per_replica_hour: 1 }")
                .with(
                    "capacity",
                    "{ min_replicas: 0, deadline: 200ms, scale_down_window: 1s, scale_up_time: 30s }",
                ),
        )
        .pool(Pool::edge("api").endpoints(&[api.addr()]))
        .extra(&format!("listeners: {{ keda: \"{keda}\" }}"));
    let gw = Gateway::start(&policy.render()).await;
    scaler_up(keda).await;
    let metric = "desired-replicas-gpu";
    assert!(
        eventually(Duration::from_secs(5), || async {
            !is_active(keda, "gpu").await && desired(keda, "gpu", metric).await == 0
        })
        .await,
        "an idle pool with min_replicas 0 is inactive at 0"
    );

    // 30 s to start a replica is past the standard tier's 1 s: the request goes to the API
    // now, and the GPU pool, cheaper at the margin once warm, is woken.
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-switchyard-pool"), Some("api"));
    assert!(is_active(keda, "gpu").await, "the request woke the pool");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "switchyard_pool_cold_displaced_total",
            &[("pool", "gpu")]
        ),
        1.0,
        "{metrics}"
    );
    let report = capacity_of(&gw).await;
    assert_eq!(report["pools"][0]["displaced"], 1, "{report}");
    assert_eq!(report["pools"][0]["activations"], 1, "{report}");

    // Warm (as far as the gateway knows: a replica is asked for), it takes the traffic.
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.header("x-switchyard-pool"), Some("gpu"), "{r:?}");
}

/// A ScaledObject naming no pool, or one without `capacity:`, gets a gRPC error, not a
/// number KEDA would scale on.
#[tokio::test]
async fn keda_errors_name_the_problem() {
    let backend = mock("edge", 0).await;
    let keda = free_addr();
    let policy = Policy::new()
        .pool(Pool::edge("edge").endpoints(&[backend.addr()]))
        .extra(&format!("listeners: {{ keda: \"{keda}\" }}"));
    let _gw = Gateway::start(&policy.render()).await;
    scaler_up(keda).await;
    for (object, code, says) in [
        (scaled_object("edge"), 5, "no `capacity:`"),
        (scaled_object("nope"), 5, "no pool `nope`"),
        (
            ScaledObjectRef {
                name: "x".into(),
                ..Default::default()
            },
            3,
            "pool: <name>",
        ),
    ] {
        let r = call_raw(
            keda,
            &format!("{SERVICE}IsActive"),
            frame(&object.encode_to_vec()),
            &[],
        )
        .await
        .expect("call");
        assert_eq!(r.grpc_status(), Some(code), "{r:?}");
        assert!(r.grpc_message().unwrap_or("").contains(says), "{r:?}");
    }
    let r = call_raw(keda, &format!("{SERVICE}StreamMetricSpec"), frame(&[]), &[])
        .await
        .expect("call");
    assert_eq!(r.grpc_status(), Some(12), "{r:?}");
}

/// Send `n` chat requests to `gw`, back to back.
async fn traffic(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}

async fn capacity_of(gw: &Gateway) -> serde_json::Value {
    serde_json::from_slice(&gw.admin_get("/admin/capacity").await.body).expect("json")
}

fn shared_policy(backend: SocketAddr, limits: &str) -> String {
    Policy::new()
        .pool(
            Pool::gpu("gpu")
                .endpoints(&[backend])
                .with("capacity", "{ min_replicas: 0, deadline: 500ms }"),
        )
        .extra(limits)
        .render()
}

/// Two instances sharing Redis: desired replicas come from the fleet's demand, so an
/// instance that receives nothing still sees the other's arrivals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_their_demand_through_redis() {
    let Some(url) = test_redis("capacity") else {
        return;
    };
    let backend = mock("gpu", 0).await;
    let prefix = format!("cap{}", std::process::id());
    let limits = format!(
        "limits: {{ backend: redis, redis_url: \"{url}\", redis_prefix: {prefix}, redis_timeout: 500ms }}"
    );
    let a = Gateway::start(&shared_policy(backend.addr(), &limits)).await;
    let b = Gateway::start(&shared_policy(backend.addr(), &limits)).await;
    let sending = traffic(&a, 60);
    let (_, seen) = tokio::join!(sending, async {
        eventually(Duration::from_secs(10), || async {
            capacity_of(&b).await["pools"][0]["arrival_rate_per_s"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
        })
        .await
    });
    let report = capacity_of(&b).await;
    assert!(seen, "the idle instance sees the other's demand: {report}");
    assert_eq!(report["demand"]["source"], "redis", "{report}");
}

/// Redis away: the demand is this instance's × `limits.instances`, said so in
/// `/admin/capacity` and the `switchyard_capacity_shared` gauge.
#[tokio::test]
async fn without_redis_demand_is_local_times_instances() {
    let backend = mock("gpu", 0).await;
    let dead = dead_addr();
    let limits = format!(
        "limits: {{ backend: redis, redis_url: \"redis://{dead}\", redis_timeout: 200ms, instances: 3 }}"
    );
    let gw = Gateway::start(&shared_policy(backend.addr(), &limits)).await;
    traffic(&gw, 20).await;
    let estimated = eventually(Duration::from_secs(10), || async {
        let report = capacity_of(&gw).await;
        report["demand"]["source"] == "local_estimate"
            && report["pools"][0]["arrival_rate_per_s"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
    })
    .await;
    let report = capacity_of(&gw).await;
    assert!(estimated, "{report}");
    let m = gw.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_capacity_shared", &[]),
        0.0,
        "{m}"
    );
    assert!(
        gw.log().contains("capacity demand is this instance's"),
        "{}",
        gw.log()
    );
}
