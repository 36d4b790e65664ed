//! An open-loop HTTP/1.1 load generator: requests are *scheduled* at a fixed rate and each
//! one's latency is measured from its scheduled start, so a slow answer delays the requests
//! behind it and counts against them too (no coordinated omission, unlike closed-loop tools
//! such as wrk, which stop sending while they wait).
//!
//! Usage:
//!   cargo run --release --example openloop -- ADDR PATH BODY_FILE RATE SECONDS [CONNECTIONS]
//! e.g. `openloop 127.0.0.1:18080 /v1/chat/completions benches/post_1k.json 2000 10 64`.
//! Prints one line: `rate=… sent=… ok=… errors=… late=… p50_us=… p99_us=… p999_us=… max_us=…`.
//! Only for loopback targets; it stops by itself after SECONDS (plus the answers in flight,
//! each given at most 30 s). HTTP/1.1 is the test kit's codec (`switchyard_testkit::http1`):
//! the request is encoded once, answers are read by any framing, and an answer with a 4xx or
//! 5xx status counts as an error but keeps its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_testkit::http1::{within, ClientConn, Limits, Request};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// Largest answer read; a larger one counts as an error.
const LIMITS: Limits = Limits::with_max_body(16 * 1024 * 1024);
/// Longest wait for one answer (from the request's write) before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: openloop ADDR PATH BODY_FILE RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse()?;
    if !addr.ip().is_loopback() {
        return Err("only loopback targets".into());
    }
    let body = std::fs::read(&args[2])?;
    let rate: f64 = args[3].parse()?;
    let secs: f64 = args[4].parse()?;
    let conns: usize = args.get(5).map(|c| c.parse()).transpose()?.unwrap_or(64);
    let req = Request::post(&args[1], &body).header("content-type", "application/json");
    let mut request = Vec::new();
    req.encode(addr, false, &mut request);
    if !req.body_inline() {
        request.extend_from_slice(&body);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(addr, Arc::new(request), rate, secs, conns))
}

/// Per request: microseconds from its scheduled start to the end of its answer, or `None`.
type Sample = Option<u64>;

async fn run(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    rate: f64,
    secs: f64,
    conns: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, rx) = mpsc::channel::<Instant>(1 << 20);
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Sample>();
    for _ in 0..conns {
        let (rx, done, request) = (rx.clone(), done_tx.clone(), request.clone());
        tokio::spawn(async move {
            let mut conn: Option<ClientConn<TcpStream>> = None;
            loop {
                let Some(scheduled) = rx.lock().await.recv().await else {
                    return;
                };
                let sample = exchange(&mut conn, addr, &request).await;
                let took = sample.map(|()| scheduled.elapsed().as_micros() as u64);
                if done.send(took).is_err() {
                    return;
                }
            }
        });
    }
    drop(done_tx);
    let start = Instant::now();
    let total = (rate * secs) as u64;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut late = 0u64;
    for i in 0..total {
        let at = start + gap.mul_f64(i as f64);
        let now = Instant::now();
        if at > now {
            tokio::time::sleep_until(at.into()).await;
        } else if now - at > Duration::from_millis(1) {
            late += 1; // the generator itself fell behind (its samples still count from `at`)
        }
        if tx.send(at).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    while let Some(s) = done_rx.recv().await {
        match s {
            Some(us) => lat.push(us),
            None => errors += 1,
        }
    }
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rate={rate} sent={total} ok={} errors={errors} late={late} p50_us={} p99_us={} p999_us={} max_us={}",
        lat.len(),
        q(0.50),
        q(0.99),
        q(0.999),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// Send the request on the connection (opened if needed) and read one whole answer:
/// `Some` for a success status. A failed exchange drops the connection.
async fn exchange(
    conn: &mut Option<ClientConn<TcpStream>>,
    addr: SocketAddr,
    request: &[u8],
) -> Option<()> {
    let answer = within(ANSWER_TIMEOUT, async {
        let c = match conn {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                conn.insert(ClientConn::new(s, LIMITS))
            }
        };
        c.send_raw(request).await?;
        c.read_response(false, |_, _| {}, |_| {}).await
    })
    .await;
    match answer {
        Ok(head) => {
            if !head.keep_alive {
                *conn = None;
            }
            (head.status < 400).then_some(())
        }
        Err(_) => {
            *conn = None;
            None
        }
    }
}
