//! gRPC load for `benches/load.sh MODE=grpc`: a mock `inference.GRPCInferenceService`
//! backend, and a closed-loop client sending `ModelInfer` with a 1 KB tensor over h2c.
//!
//!   grpc_load serve ADDR                      # the mock backend (testkit's GrpcMock)
//!   grpc_load load ADDR SECONDS [CONNS] [STREAMS]
//!
//! `load` keeps CONNS h2 connections (default 4) with STREAMS calls in flight on each
//! (default 8) for SECONDS, then prints `ok=… errors=… rps=… p50_us=… p99_us=…`. Every
//! answer must end with `grpc-status: 0` to count as ok. Loopback targets only.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_gateway::grpc::wire;
use switchyard_testkit::grpc::{infer_request, GrpcMock};
use tokio::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => rt.block_on(async {
            let mock = GrpcMock::start("bench", args[1].parse()?).await?;
            eprintln!("grpc mock on {}", mock.addr());
            std::future::pending::<()>().await;
            Ok(())
        }),
        Some("load") if args.len() >= 3 => {
            let addr: SocketAddr = args[1].parse()?;
            if !addr.ip().is_loopback() {
                return Err("only loopback targets".into());
            }
            let secs: u64 = args[2].parse()?;
            let conns: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
            let streams: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
            rt.block_on(load(addr, Duration::from_secs(secs), conns, streams))
        }
        _ => {
            eprintln!(
                "usage: grpc_load serve ADDR | grpc_load load ADDR SECONDS [CONNS] [STREAMS]"
            );
            std::process::exit(2)
        }
    }
}

async fn load(
    addr: SocketAddr,
    run: Duration,
    conns: usize,
    streams: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let message = wire::frame(&infer_request("resnet", "", &[7u8; 1024]));
    let uri = Arc::new(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ));
    let end = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (client, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for _ in 0..streams {
            let (client, message, uri) = (client.clone(), message.clone(), uri.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    match one(client.clone(), &uri, message.clone()).await {
                        Ok(true) => lat.push(t.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get((lat.len() as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "ok={} errors={errors} rps={:.0} p50_us={} p99_us={}",
        lat.len(),
        lat.len() as f64 / run.as_secs_f64(),
        q(0.50),
        q(0.99)
    );
    Ok(())
}

/// One ModelInfer call; `Ok(true)` when it ended with `grpc-status: 0`.
async fn one(
    client: h2::client::SendRequest<Bytes>,
    uri: &str,
    message: Bytes,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = client.ready().await?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut send) = client.send_request(req, false)?;
    send.send_data(message, true)?;
    let response = response.await?;
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let ok = match body.trailers().await? {
        Some(t) => t.get("grpc-status").is_some_and(|v| v == "0"),
        None => false,
    };
    Ok(ok)
}
