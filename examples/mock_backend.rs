//! The mock ML backend as a standalone server, for docker-compose, the load benchmarks and
//! trying the gateway by hand. All the behaviour lives in `switchyard_testkit::mock`; this
//! file only parses flags, builds the runtime and waits for Ctrl-C (or SIGTERM).
//!
//! ```text
//! cargo run --release --example mock_backend -- --listen 127.0.0.1:9001 --name edge-eu-1 \
//!     --latency-ms 5 --jitter-ms 2 --error-rate 0 --health-path /healthz
//! ```
//!
//! The runtime has one worker thread unless `--threads` says otherwise, so that benchmarks
//! compare the gateway with a backend that uses one core. Faults can be changed while it
//! runs: `curl -d '{"extra_latency_ms":200,"error_rate":0.5}' http://ADDR/_mock/faults`,
//! and `curl http://ADDR/_mock/stats` shows the counters.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_testkit::mock::{MockBackend, MockConfig};

/// A mock ML inference backend (OpenAI-compatible, Open Inference Protocol v2, TF-Serving).
#[derive(Parser, Debug)]
#[command(name = "mock_backend")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Name in the `x-served-by` header and the `served_by` JSON field.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Base service time per request, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Plus a uniformly random 0..jitter, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Fraction (0..=1) of model requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Health check path (GET answers 200).
    #[arg(long, default_value = "/healthz")]
    health_path: String,
    /// Models served, comma-separated (default: every model).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Answer OpenAI requests as a generating server: time to first token, in milliseconds
    /// (with `--tpot-ms`; streamed heads go out at once).
    #[arg(long)]
    ttft_ms: Option<f64>,
    /// Time per output token, in milliseconds (with `--ttft-ms`).
    #[arg(long, default_value_t = 20.0)]
    tpot_ms: f64,
    /// Tokens per answer when the request names no `max_tokens` (with `--ttft-ms`).
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Run at most this many inference requests at once; the others wait in a queue
    /// (reported on `GET /metrics` as vLLM's gauges).
    #[arg(long)]
    max_running: Option<u32>,
    /// Keep a prefix cache: a conversation's next turn on this server gets this time to
    /// first token, in milliseconds (with `--ttft-ms`).
    #[arg(long)]
    warm_ttft_ms: Option<f64>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn millis(flag: &str, ms: f64) -> Result<Duration, String> {
    if ms.is_finite() && (0.0..=86_400_000.0).contains(&ms) {
        Ok(Duration::from_secs_f64(ms / 1e3))
    } else {
        Err(format!("--{flag} must be between 0 and 86400000, not {ms}"))
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock_backend: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err(format!(
            "--error-rate must be between 0 and 1, not {}",
            args.error_rate
        ));
    }
    let cfg = MockConfig {
        name: args.name,
        latency: millis("latency-ms", args.latency_ms)?,
        jitter: millis("jitter-ms", args.jitter_ms)?,
        error_rate: args.error_rate,
        health_path: args.health_path,
        models: args.models,
        generation: match args.ttft_ms {
            Some(ttft) => Some(switchyard_testkit::mock::Generation {
                ttft: millis("ttft-ms", ttft)?,
                tpot: millis("tpot-ms", args.tpot_ms)?,
                tokens: args.tokens,
            }),
            None => None,
        },
        max_running: args.max_running,
        prefix_cache: match args.warm_ttft_ms {
            Some(ms) => Some(millis("warm-ttft-ms", ms)?),
            None => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))?;
    runtime.block_on(async move {
        let name = cfg.name.clone();
        let mock = MockBackend::start(cfg, args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        println!("mock_backend {name} listening on {}", mock.addr());
        wait_for_stop().await;
        mock.shutdown();
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM (what `docker stop` sends).
async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
