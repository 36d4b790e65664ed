//! Criterion benchmarks of the KEDA scaler's work with 100 pools: answering `GetMetrics`
//! (decode the request, find the pool, read its published desired replicas, encode), and
//! the capacity meter's per-round arithmetic for 100 pools (Erlang C for the rate now and
//! the forecast, at 400 requests/s each). Target: GetMetrics < 5 ms p99 end to end.
//!
//! Before the timings it measures that end to end: the real `switchyard` binary with a
//! 100-pool policy and `listeners.keda`, and 2,000 `GetMetrics` calls on one h2c connection
//! (as KEDA keeps one), each timed from send to trailers; it prints p50, p99 and max.
//!
//! Run: `cargo bench --bench capacity`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use switchyard_gateway::capacity::{keda, replicas_for};
use switchyard_gateway::grpc::wire;
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

const POOLS: usize = 100;

fn policy(keda: Option<SocketAddr>) -> String {
    let mut s = String::from(
        "regions: { default: us, map: [{ name: us, continents: [NA] }] }\nrtt_ms: { us: { us: 2 } }\ntiers:\n  realtime: { deadline: 300ms, weight: 0.8, pools: [gpu] }\npools:\n",
    );
    for i in 0..POOLS {
        s.push_str(&format!(
            "  - {{ name: pool-{i}, kind: gpu, region: us, endpoints: [\"127.0.0.1:1\"], models: [\"*\"], concurrency: 64, service_time: 150ms, capacity: {{ min_replicas: 0, max_replicas: 50, concurrency_per_replica: 16 }} }}\n"
        ));
    }
    s.push_str("routes:\n  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: realtime }\n");
    if let Some(addr) = keda {
        s.push_str(&format!("listeners: {{ keda: \"{addr}\" }}\n"));
    }
    s
}

/// A `GetMetricsRequest` for `pool`, framed (what KEDA sends).
fn get_metrics(pool: &str) -> Vec<u8> {
    let mut entry = Vec::new();
    wire::put_bytes(&mut entry, 1, b"pool");
    wire::put_bytes(&mut entry, 2, pool.as_bytes());
    let mut object = Vec::new();
    wire::put_bytes(&mut object, 1, b"scaled");
    wire::put_bytes(&mut object, 2, b"switchyard");
    wire::put_bytes(&mut object, 3, &entry);
    let mut req = Vec::new();
    wire::put_bytes(&mut req, 1, &object);
    wire::put_bytes(&mut req, 2, format!("desired-replicas-{pool}").as_bytes());
    req
}

fn bench(c: &mut Criterion) {
    e2e();
    let table = compile_str(
        &policy(None),
        &CompileContext {
            file: std::path::Path::new("bench.yaml"),
            gateway_region: None,
        },
    )
    .expect("policy");
    let table = Serving::load(table, &Fleet::default()).expect("resources");
    // The last pool: the lookup scans past the other 99.
    let msg = get_metrics(&format!("pool-{}", POOLS - 1));
    c.bench_function("keda_get_metrics_100_pools", |b| {
        b.iter(|| keda::unary(black_box(&table), "GetMetrics", black_box(&msg)))
    });
    let capacity = table.pools[0].capacity.clone().expect("capacity");
    let service = Duration::from_millis(150);
    c.bench_function("desired_replicas_round_100_pools", |b| {
        b.iter(|| {
            (0..POOLS)
                .map(|i| {
                    let rate = 400.0 + i as f64;
                    replicas_for(&capacity, black_box(rate), service).max(replicas_for(
                        &capacity,
                        black_box(rate * 1.2),
                        service,
                    ))
                })
                .sum::<u32>()
        })
    });
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The real binary, 2,000 GetMetrics on one h2c connection: p50, p99, max.
fn e2e() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keda_addr = free_addr();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy(Some(keda_addr))).expect("write policy");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--policy"])
        .arg(&path)
        .args(["--listen", &free_addr().to_string()])
        .args(["--admin-listen", &free_addr().to_string()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn switchyard");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let tcp = loop {
            match tokio::net::TcpStream::connect(keda_addr).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(format!("the KEDA listener did not come up: {e}")),
            }
        };
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = Bytes::from(wire::frame(&get_metrics("pool-99")).to_vec());
        let mut times = Vec::with_capacity(2000);
        for i in 0..2200 {
            let mut client = client.clone().ready().await.map_err(|e| e.to_string())?;
            let req = http::Request::post(format!(
                "http://{keda_addr}/externalscaler.ExternalScaler/GetMetrics"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
            let start = Instant::now();
            let (response, mut send) =
                client.send_request(req, false).map_err(|e| e.to_string())?;
            send.send_data(body.clone(), true)
                .map_err(|e| e.to_string())?;
            let mut body = response.await.map_err(|e| e.to_string())?.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.map_err(|e| e.to_string())?;
            let ok = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|v| v == "0");
            if !ok {
                return Err(format!("GetMetrics failed: {trailers:?}"));
            }
            // The first 200 warm the connection and the allocator.
            if i >= 200 {
                times.push(start.elapsed());
            }
        }
        Ok(times)
    });
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(mut times) => {
            times.sort();
            let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
            println!(
                "keda GetMetrics end to end, 100 pools, {} calls on one h2c connection: p50 {:?}, p99 {:?}, max {:?}",
                times.len(),
                at(0.5),
                at(0.99),
                times[times.len() - 1]
            );
        }
        Err(e) => println!("keda GetMetrics end to end: not measured: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
