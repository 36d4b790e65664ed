//! Traffic generator: a steady mix of inference requests against a Switchyard gateway, so that
//! dashboards and the status page have something to show. The compose demo runs it as the
//! `traffic` service; the logic lives in `switchyard_testkit::traffic`.
//!
//! ```sh
//! cargo run --example traffic -- --target 127.0.0.1:8080 --rate 40 \
//!     --regions eu=2,us=2,ap=1 --tiers default=5,realtime=3,batch=1 \
//!     --models llama-3-8b=4,all-minilm-l6@embeddings=2,resnet-50@oip=1 --repeat 0.3
//! ```

use anyhow::Result;
use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_testkit::traffic::{self, Stats, TrafficConfig};

#[derive(Parser)]
#[command(
    name = "traffic",
    about = "Send a configurable mix of inference requests to a gateway"
)]
struct Args {
    /// The gateway's proxy listener, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Requests per second (0 = as fast as the connections allow).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Keep-alive connections (requests in flight at most).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Stop after this many requests (default: never).
    #[arg(long)]
    requests: Option<u64>,
    /// Stop after this many seconds (default: never).
    #[arg(long)]
    duration: Option<f64>,
    /// Client regions: eu, us, ap (test GeoIP addresses), an IP, or `local` (no X-Forwarded-For).
    #[arg(long, default_value = traffic::DEFAULT_REGIONS)]
    regions: String,
    /// Tiers: a name (sent as x-slo-tier), `default` (the route's), or `key:API-KEY`.
    #[arg(long, default_value = traffic::DEFAULT_TIERS)]
    tiers: String,
    /// Models as `model[@chat|completions|embeddings|oip|tf]=weight`.
    #[arg(long, default_value = traffic::DEFAULT_MODELS)]
    models: String,
    /// Share of requests that repeat an earlier one exactly (what a cache can answer).
    #[arg(long, default_value_t = 0.2)]
    repeat: f64,
    /// Print a summary line every this many seconds (0 = only at the end).
    #[arg(long, default_value_t = 10)]
    report_every: u64,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = TrafficConfig::parse(
        &args.target,
        &args.regions,
        &args.tiers,
        &args.models,
        args.repeat,
    )?;
    cfg.rate = args.rate.max(0.0);
    cfg.connections = args.connections.max(1);
    cfg.requests = args.requests;
    cfg.duration = args.duration.map(Duration::from_secs_f64);
    cfg.seed = args.seed;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stats = Arc::new(Stats::default());
        let start = Instant::now();
        if args.report_every > 0 {
            let stats = stats.clone();
            let every = Duration::from_secs(args.report_every);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    println!(
                        "{}",
                        stats.summary(&stats.take_latencies(), start.elapsed())
                    );
                }
            });
        }
        println!("traffic: sending to {} at {} req/s", cfg.target, cfg.rate);
        traffic::run(Arc::new(cfg), stats.clone()).await?;
        println!(
            "{}",
            stats.summary(&stats.take_latencies(), start.elapsed())
        );
        Ok(())
    })
}
