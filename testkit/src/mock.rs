//! The mock ML backend: an HTTP/1.1 server that answers the three protocol families the
//! gateway routes (OpenAI-compatible, Open Inference Protocol v2, TF-Serving/KServe v1) in
//! their shapes (inference, and the model metadata, readiness and config reads), with configurable service time, jitter and error rate, and faults that can
//! be changed at run time (from Rust through [`Faults`] or over HTTP on `/_mock/faults`).
//! The demo, the integration tests, the `mock_backend` example and the load benchmarks all
//! use it, so it must be correct HTTP/1.1 and fast enough never to be the bottleneck.
//!
//! The hot path is one task per connection, a reused read buffer and a reused response
//! buffer, one write per response, and atomics for every counter and fault: no lock is taken
//! per request (the `watch` channels are only waited on while stalled, down or shutting
//! down). Bad input never panics: a malformed request gets a 4xx JSON answer and the
//! connection is closed. This is not a general web server: no TLS, no HTTP/2, no upgrades.
//! Requests are read with the kit's HTTP/1.1 codec ([`crate::http1`]: its head parser and
//! framing rules, and the chunked decoder the client uses too); answers are written here.
//!
//! Surprises: stalls hold health checks too (a hung backend fails its health check), but never
//! the `/_mock/*` control paths. Dropping a [`MockBackend`] does not stop it; call
//! [`MockBackend::shutdown`]. "Down" closes the listening socket (connects are refused) and
//! every open connection; "up" binds the same address again.
//!
//! Why hand-written HTTP/1.1 and not hyper (measured for issue 16, 2026-12): hyper 1.12 with
//! `server`, `client`, `http1`, `http2`, plus `hyper-util` and `http-body-util`, adds 6 crates to
//! the tree (h2, http, httparse and tokio are already in it) and ~3.6 s of debug build, so its cost
//! is small and it is where HTTP/2, gRPC and TLS mocks should go. Against this server it was
//! measured on 2026-12-01 with `benches/mock_vs_hyper.sh` (wrk -t1, the 1 KB `benches/post_1k.lua`
//! POST on loopback, interleaved 5 s rounds, release builds, one runtime thread each) versus a
//! minimal hyper 1.12 `http1` server answering the same bytes (current-thread runtime, or
//! multi-thread with one worker as `mock_backend` builds: alike): at 32 connections hyper spent
//! 10.2–10.6 µs of server CPU per request against 7.8–8.5 µs here (medians of three 3-round runs;
//! more in all 9 paired rounds) and its p50 was higher in every pair (0.42–0.52 ms against
//! 0.36–0.46 ms); at one connection the two were alike (p50 20–23 µs, 11–12.5 µs CPU). The machine
//! was shared (2 cores, others compiling), so req/s swung from 26k to 82k between rounds and is not
//! the evidence; CPU per request is. Hyper is not at least as fast, so this HTTP/1.1 server stays
//! (neither is near the bottleneck: the gateway on one thread serves ~20k req/s in
//! `benches/load.sh`), and HTTP/2, gRPC and TLS mocks should be hyper servers beside it. It also
//! keeps the wire behaviour the tests rely on: one write per response, "down" closing every open
//! connection at once, stalls that hold health checks.

use crate::http1::{self, Chunk, ChunkedDecoder, Framing, Limits};
use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request body the mock accepts (the gateway's own `max_body` ceiling); larger
/// ones get 413.
pub const MAX_BODY: usize = 256 * 1024 * 1024;
/// What the mock reads: heads up to 64 KiB (larger ones get 431) of at most 64 fields, bodies
/// up to [`MAX_BODY`].
const LIMITS: Limits = Limits::with_max_body(MAX_BODY);
/// Events in a streamed (SSE) answer before `[DONE]`.
const STREAM_CHUNKS: u32 = 5;
/// Smallest pause between two streamed events, so streaming is visible even at 0 latency.
const MIN_STREAM_GAP: Duration = Duration::from_millis(20);

/// How a mock answers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Who answers: the `x-served-by` header and the `"served_by"` JSON field.
    pub name: String,
    /// Base service time before answering.
    pub latency: Duration,
    /// Plus a uniformly random `0..jitter`.
    pub jitter: Duration,
    /// Initial fraction (0.0..=1.0) of model requests answered 500; see [`Faults`].
    pub error_rate: f64,
    /// `GET` here answers 200 `{"status":"ok","name":..}`.
    pub health_path: String,
    /// `None` serves every model; `Some(list)` answers 404 for the others.
    pub models: Option<Vec<String>>,
    /// Answer OpenAI requests as a generating model server does (`None`: the fixed service
    /// time above): see [`Generation`].
    pub generation: Option<Generation>,
    /// A model server's scheduler: at most this many inference requests run at once, the
    /// others wait their turn in a queue (FIFO). `GET /metrics` reports both as vLLM's
    /// gauges (`vllm:num_requests_waiting`, `vllm:num_requests_running`, and
    /// `vllm:kv_cache_usage_perc` as running / this). `None`: no limit, no queue.
    pub max_running: Option<u32>,
    /// A per-server prefix cache (with [`Generation`]): the time to first token of a chat
    /// whose conversation this server answered last turn (its messages but the last two —
    /// the previous answer and the new question — are a prompt it served) is this instead
    /// of `generation.ttft`, as a server that kept the prompt's KV cache computes only the
    /// new tokens. `None`: every prompt is cold.
    pub prefix_cache: Option<Duration>,
}

/// How a generating model server times its answers: a streamed answer's head goes out at
/// once, its first token after `ttft`, each next one `tpot` later, as many tokens as the
/// request's `max_tokens` (else `tokens`; at most 1,024); a plain answer waits for all of
/// them (`ttft + (n − 1) × tpot`). Extra latency faults add to the time to first token.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    pub ttft: Duration,
    pub tpot: Duration,
    pub tokens: u32,
}

impl Generation {
    fn tokens_for(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or(self.tokens).clamp(1, 1024)
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".to_string(),
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            health_path: "/healthz".to_string(),
            models: None,
            generation: None,
            max_running: None,
            prefix_cache: None,
        }
    }
}

/// A snapshot of the counters. `requests` counts every request except health checks and
/// `/_mock/*` control requests (404s and 400s included); the per-family counts are requests
/// that reached that family's route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    pub requests: u64,
    /// Injected 500s (the error rate).
    pub errors: u64,
    /// 4xx answers: unknown path or model, invalid JSON, body too large, malformed request.
    pub rejected: u64,
    /// Answers streamed as Server-Sent Events.
    pub streams: u64,
    pub chat: u64,
    pub completions: u64,
    pub embeddings: u64,
    pub oip_infer: u64,
    pub tf_predict: u64,
    /// Model metadata, readiness and config reads (`GET /v2/models/{m}[/ready|/config]`,
    /// `GET /v1/models/{m}[/metadata]`).
    pub metadata: u64,
    /// Requests being answered right now (counted ones only).
    pub in_flight: u64,
    /// Most requests in flight at once since start or the last reset.
    pub peak_in_flight: u64,
    /// Inference requests waiting in the queue (`max_running`), and the most at once since
    /// start or the last reset.
    pub waiting: u64,
    pub peak_waiting: u64,
    /// Inference requests that had to wait for a slot (since start or the last reset).
    pub queued: u64,
    /// Chats that found their conversation's prefix in this server's cache (`prefix_cache`).
    pub prefix_hits: u64,
    /// TCP connections accepted (to check keep-alive reuse).
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    streams: AtomicU64,
    chat: AtomicU64,
    completions: AtomicU64,
    embeddings: AtomicU64,
    oip_infer: AtomicU64,
    tf_predict: AtomicU64,
    metadata: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    running: AtomicU64,
    waiting: AtomicU64,
    peak_waiting: AtomicU64,
    queued: AtomicU64,
    prefix_hits: AtomicU64,
    connections: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            streams: self.streams.load(Relaxed),
            chat: self.chat.load(Relaxed),
            completions: self.completions.load(Relaxed),
            embeddings: self.embeddings.load(Relaxed),
            oip_infer: self.oip_infer.load(Relaxed),
            tf_predict: self.tf_predict.load(Relaxed),
            metadata: self.metadata.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            peak_waiting: self.peak_waiting.load(Relaxed),
            queued: self.queued.load(Relaxed),
            prefix_hits: self.prefix_hits.load(Relaxed),
            connections: self.connections.load(Relaxed),
        }
    }

    fn reset(&self) {
        for c in [
            &self.requests,
            &self.errors,
            &self.rejected,
            &self.streams,
            &self.chat,
            &self.completions,
            &self.embeddings,
            &self.oip_infer,
            &self.tf_predict,
            &self.metadata,
            &self.queued,
            &self.prefix_hits,
            &self.connections,
        ] {
            c.store(0, Relaxed);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.peak_waiting.store(self.waiting.load(Relaxed), Relaxed);
    }
}

/// An inference request's turn on the server (`max_running`): waits in the queue for a
/// slot, holds it until dropped.
struct Running<'a> {
    c: &'a Counters,
    _slot: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<'a> Running<'a> {
    async fn enter(sh: &'a Shared) -> Running<'a> {
        let c = &sh.counters;
        let slot = match &sh.slots {
            Some(slots) => match slots.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    c.queued.fetch_add(1, Relaxed);
                    let now = c.waiting.fetch_add(1, Relaxed) + 1;
                    c.peak_waiting.fetch_max(now, Relaxed);
                    let slot = slots.acquire().await.ok();
                    c.waiting.fetch_sub(1, Relaxed);
                    slot
                }
            },
            None => None,
        };
        c.running.fetch_add(1, Relaxed);
        Running { c, _slot: slot }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.c.running.fetch_sub(1, Relaxed);
    }
}

/// Counts a request as in flight until dropped (also when its connection is cut).
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(c: &'a Counters) -> Self {
        let now = c.in_flight.fetch_add(1, Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Whether the listener should be open, and whether the mock is gone for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Life {
    down: bool,
    shutdown: bool,
}

/// Run-time faults. Reads on the request path are atomic loads; the setters wake whoever
/// waits on a stall or a down listener.
pub struct Faults {
    extra_latency_us: AtomicU64,
    /// `f64` bits.
    error_rate: AtomicU64,
    stall: AtomicBool,
    stall_tx: watch::Sender<bool>,
    life: watch::Sender<Life>,
}

/// The faults as JSON (`GET`/`POST /_mock/faults`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultState {
    pub extra_latency_ms: f64,
    pub error_rate: f64,
    pub stall: bool,
    pub down: bool,
}

/// A `POST /_mock/faults` body: any subset of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsPatch {
    extra_latency_ms: Option<f64>,
    error_rate: Option<f64>,
    stall: Option<bool>,
}

impl Faults {
    fn new(error_rate: f64) -> Faults {
        let f = Faults {
            extra_latency_us: AtomicU64::new(0),
            error_rate: AtomicU64::new(0),
            stall: AtomicBool::new(false),
            stall_tx: watch::Sender::new(false),
            life: watch::Sender::new(Life::default()),
        };
        f.set_error_rate(error_rate);
        f
    }

    /// Service time added to every model request, on top of the configured latency.
    pub fn set_extra_latency(&self, extra: Duration) {
        let us = u64::try_from(extra.as_micros()).unwrap_or(u64::MAX);
        self.extra_latency_us.store(us, Relaxed);
    }

    pub fn extra_latency(&self) -> Duration {
        Duration::from_micros(self.extra_latency_us.load(Relaxed))
    }

    /// Fraction of model requests answered 500; clamped to 0.0..=1.0 (NaN is 0).
    pub fn set_error_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.error_rate.store(rate.to_bits(), Relaxed);
    }

    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Relaxed))
    }

    /// Stalled: requests are read but not answered until un-stalled (control paths excepted).
    pub fn set_stall(&self, stall: bool) {
        self.stall.store(stall, Relaxed);
        self.stall_tx.send_replace(stall);
    }

    pub fn stalled(&self) -> bool {
        self.stall.load(Relaxed)
    }

    /// Down: the listening socket is closed (connects are refused) and open connections are
    /// cut. Up again: the same address is bound again.
    pub fn set_down(&self, down: bool) {
        self.life.send_modify(|l| l.down = down);
    }

    pub fn is_down(&self) -> bool {
        self.life.borrow().down
    }

    pub fn state(&self) -> FaultState {
        FaultState {
            extra_latency_ms: self.extra_latency().as_secs_f64() * 1e3,
            error_rate: self.error_rate(),
            stall: self.stalled(),
            down: self.is_down(),
        }
    }

    async fn wait_unstalled(&self) {
        if self.stalled() {
            let mut rx = self.stall_tx.subscribe();
            let _ = rx.wait_for(|stalled| !*stalled).await;
        }
    }

    fn apply(&self, patch: FaultsPatch) -> Result<(), &'static str> {
        if let Some(ms) = patch.extra_latency_ms {
            if !(0.0..=86_400_000.0).contains(&ms) {
                return Err("extra_latency_ms must be between 0 and 86400000");
            }
        }
        if let Some(rate) = patch.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err("error_rate must be between 0 and 1");
            }
        }
        if let Some(ms) = patch.extra_latency_ms {
            self.set_extra_latency(Duration::from_secs_f64(ms / 1e3));
        }
        if let Some(rate) = patch.error_rate {
            self.set_error_rate(rate);
        }
        if let Some(stall) = patch.stall {
            self.set_stall(stall);
        }
        Ok(())
    }
}

/// What every connection task reads.
struct Shared {
    /// The name, JSON-quoted once (`"edge-eu"`), for the bodies.
    name_json: String,
    name: String,
    health_path: String,
    models: Option<Vec<String>>,
    latency: Duration,
    jitter: Duration,
    generation: Option<Generation>,
    /// `max_running` slots (FIFO: tokio's semaphore is fair).
    slots: Option<tokio::sync::Semaphore>,
    max_running: Option<u32>,
    /// The warm time to first token and the prompts served (hashes; a lock taken only by
    /// mocks with a prefix cache, once per chat; cleared when it reaches 100 000).
    prefix_cache: Option<(Duration, std::sync::Mutex<std::collections::HashSet<u64>>)>,
    faults: Faults,
    counters: Counters,
    next_id: AtomicU64,
}

impl Shared {
    /// Configured latency + jitter + extra latency, for one request.
    fn service_time(&self) -> Duration {
        let mut t = self.latency + self.faults.extra_latency();
        let jitter = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        if jitter > 0 {
            t += Duration::from_micros(fastrand::u64(..jitter));
        }
        t
    }

    fn serves(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == model))
    }
}

/// A running mock backend. Dropping the handle leaves the server running; see
/// [`MockBackend::shutdown`].
pub struct MockBackend {
    /// Where it listens (the bound port when started on port 0). Also [`MockBackend::addr`].
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockBackend {
    /// Bind `addr` (port 0 picks a free port) and serve on the current tokio runtime.
    pub async fn start(cfg: MockConfig, addr: SocketAddr) -> std::io::Result<MockBackend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut name_json = String::with_capacity(cfg.name.len() + 2);
        push_json_str(&mut name_json, &cfg.name);
        let shared = Arc::new(Shared {
            name_json,
            name: cfg.name,
            health_path: cfg.health_path,
            models: cfg.models,
            latency: cfg.latency,
            jitter: cfg.jitter,
            generation: cfg.generation,
            slots: cfg
                .max_running
                .map(|n| tokio::sync::Semaphore::new(n.max(1) as usize)),
            max_running: cfg.max_running,
            prefix_cache: cfg.prefix_cache.map(|warm| (warm, Default::default())),
            faults: Faults::new(cfg.error_rate),
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(listener, addr, shared.clone()));
        Ok(MockBackend { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> MockStats {
        self.shared.counters.snapshot()
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Zero the counters (`in_flight` stays; `peak_in_flight` restarts from it).
    pub fn reset_stats(&self) {
        self.shared.counters.reset();
    }

    /// Stop for good: close the listener and every open connection. Idempotent.
    pub fn shutdown(&self) {
        self.shared.faults.life.send_modify(|l| l.shutdown = true);
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut life = shared.faults.life.subscribe();
    let mut listener = Some(listener);
    loop {
        let now = *life.borrow_and_update();
        if now.shutdown {
            return;
        }
        if now.down {
            listener = None;
            if life.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.as_ref() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => listener.insert(l),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "mock backend cannot bind again; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!(error = %e, "mock backend accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            changed = life.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    shared.counters.connections.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let mut life = shared.faults.life.subscribe();
    tokio::select! {
        served = serve(stream, &shared) => {
            if let Err(e) = served {
                tracing::trace!(error = %e, "mock connection ended");
            }
        }
        _ = life.wait_for(|l| l.down || l.shutdown) => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenAi {
    Chat,
    Completions,
    Embeddings,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    /// `GET /metrics`: the load as a vLLM server reports it.
    Metrics,
    GetFaults,
    SetFaults,
    Stats,
    ResetStats,
    OpenAi(OpenAi),
    Oip {
        model: String,
        version: Option<String>,
    },
    Tf {
        model: String,
    },
    /// A model metadata read; `what` names it (`metadata`, `ready`, `config` for OIP v2;
    /// `status`, `metadata` for TF-Serving) and the answer echoes `path`.
    Meta {
        oip: bool,
        what: &'static str,
        model: String,
        version: Option<String>,
        path: String,
    },
    NotFound,
}

impl Route {
    fn counted(&self) -> bool {
        !matches!(
            self,
            Route::Health
                | Route::Metrics
                | Route::GetFaults
                | Route::SetFaults
                | Route::Stats
                | Route::ResetStats
        )
    }
}

fn route(method: Method, path: &str, health_path: &str) -> Route {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let get = matches!(method, Method::Get | Method::Head);
    let post = method == Method::Post;
    match path {
        _ if get
            && (path == health_path || path == "/v2/health/ready" || path == "/v2/health/live") =>
        {
            Route::Health
        }
        "/metrics" if get => Route::Metrics,
        "/_mock/faults" if get => Route::GetFaults,
        "/_mock/faults" if post => Route::SetFaults,
        "/_mock/stats" if get => Route::Stats,
        "/_mock/stats/reset" if post => Route::ResetStats,
        "/v1/chat/completions" if post => Route::OpenAi(OpenAi::Chat),
        "/v1/completions" if post => Route::OpenAi(OpenAi::Completions),
        "/v1/embeddings" if post => Route::OpenAi(OpenAi::Embeddings),
        _ if post => {
            if let Some(rest) = path
                .strip_prefix("/v2/models/")
                .and_then(|r| r.strip_suffix("/infer"))
            {
                let (model, version) = match rest.split_once("/versions/") {
                    Some((m, v)) => (m, Some(v)),
                    None => (rest, None),
                };
                let ok = |s: &str| !s.is_empty() && !s.contains('/');
                if ok(model) && version.is_none_or(ok) {
                    return Route::Oip {
                        model: model.to_string(),
                        version: version.map(str::to_string),
                    };
                }
            } else if let Some(model) = path
                .strip_prefix("/v1/models/")
                .and_then(|r| r.strip_suffix(":predict"))
            {
                if !model.is_empty() && !model.contains('/') {
                    return Route::Tf {
                        model: model.to_string(),
                    };
                }
            }
            Route::NotFound
        }
        _ if get => metadata_route(path),
        _ => Route::NotFound,
    }
}

/// OIP v2 `/v2/models/{m}[/versions/{v}][/ready|/config]` and TF-Serving
/// `/v1/models/{m}[/versions/{v}][/metadata]`.
fn metadata_route(path: &str) -> Route {
    let (oip, rest) = match (
        path.strip_prefix("/v2/models/"),
        path.strip_prefix("/v1/models/"),
    ) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return Route::NotFound,
    };
    let suffixes: &[&'static str] = if oip {
        &["ready", "config"]
    } else {
        &["metadata"]
    };
    let (rest, what) = suffixes
        .iter()
        .find_map(|w| {
            rest.strip_suffix(*w)
                .and_then(|r| r.strip_suffix('/'))
                .map(|r| (r, *w))
        })
        .unwrap_or((rest, if oip { "metadata" } else { "status" }));
    let (model, version) = match rest.split_once("/versions/") {
        Some((m, v)) => (m, Some(v)),
        None => (rest, None),
    };
    let ok = |s: &str| !s.is_empty() && !s.contains(['/', ':']);
    if !ok(model) || !version.is_none_or(ok) {
        return Route::NotFound;
    }
    Route::Meta {
        oip,
        what,
        model: model.to_string(),
        version: version.map(str::to_string),
        path: path.to_string(),
    }
}

/// The answer to a metadata read, in the shape of the protocol (not on the hot path).
fn metadata_body(
    json: &mut Vec<u8>,
    sh: &Shared,
    (oip, what): (bool, &str),
    model: &str,
    version: Option<&str>,
    path: &str,
) {
    let v = version.unwrap_or("1");
    let mut body = match (oip, what) {
        (true, "ready") => serde_json::json!({ "name": model, "ready": true }),
        (true, "config") => {
            serde_json::json!({ "name": model, "platform": "mock", "max_batch_size": 0 })
        }
        (true, _) => serde_json::json!({
            "name": model, "versions": [v], "platform": "mock",
            "inputs": [{ "name": "input0", "datatype": "FP32", "shape": [-1, 2] }],
            "outputs": [{ "name": "output0", "datatype": "FP32", "shape": [-1, 2] }],
        }),
        (false, "metadata") => serde_json::json!({
            "model_spec": { "name": model, "signature_name": "", "version": v },
            "metadata": { "signature_def": { "signature_def": {} } },
        }),
        (false, _) => serde_json::json!({
            "model_version_status": [{
                "version": v, "state": "AVAILABLE",
                "status": { "error_code": "OK", "error_message": "" },
            }],
        }),
    };
    body["served_by"] = serde_json::Value::String(sh.name.clone());
    body["path"] = serde_json::Value::String(path.to_string());
    let _ = serde_json::to_writer(&mut *json, &body);
}

/// The parts of a request head the mock uses, owned so the read buffer can move on.
#[derive(Debug)]
struct Head {
    len: usize,
    method: Method,
    http11: bool,
    keep_alive: bool,
    framing: Framing,
    expect_continue: bool,
    route: Route,
    request_id: Option<String>,
    deadline_ms: Option<String>,
    /// `x-mock-cache-control: V` asks for `cache-control: V` on the answer (cache tests).
    cache_control: Option<String>,
    /// `x-mock-digest: 1` asks OpenAI answers to carry `request_bytes` and `request_blake3`
    /// of the body received (so tests can see a large body arrived byte for byte).
    digest: bool,
}

/// A request the mock refuses before reading its body; the connection is closed after.
#[derive(Debug, PartialEq, Eq)]
struct Reject {
    status: u16,
    message: &'static str,
}

fn reject(status: u16, message: &'static str) -> Reject {
    Reject { status, message }
}

fn header_string(value: &[u8]) -> Option<String> {
    std::str::from_utf8(value)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The answer to a request the codec refuses.
fn refusal(e: http1::Error) -> Reject {
    use http1::Error as E;
    match e {
        E::TooManyHeaders(_) => reject(431, "too many request headers"),
        E::HeadTooLarge(_) => reject(431, "request head too large"),
        E::BadHead(_) => reject(400, "malformed HTTP request"),
        E::BadContentLength(_) => reject(400, "invalid content-length"),
        E::ConflictingContentLength => reject(400, "conflicting content-length headers"),
        E::UnsupportedTransferEncoding(_) => reject(501, "unsupported transfer-encoding"),
        E::LengthAndChunked => reject(400, "both content-length and transfer-encoding"),
        E::ChunkedInHttp10 => reject(400, "chunked body in HTTP/1.0"),
        E::BodyTooLarge(_) => reject(413, "request body too large"),
        E::BadChunkSize | E::ChunkLineTooLong(_) | E::BadChunkEnd | E::TrailersTooLarge(_) => {
            reject(400, "malformed chunked body")
        }
    }
}

/// Parse a request head from the start of `buf`: `Ok(None)` when more bytes are needed.
fn parse_head(buf: &[u8], health_path: &str) -> Result<Option<Head>, Reject> {
    let mut request_id = None;
    let mut deadline_ms = None;
    let mut cache_control = None;
    let mut digest = false;
    let parsed = http1::parse_request_head(buf, &LIMITS, |name, value| {
        if name.eq_ignore_ascii_case("x-request-id") {
            request_id = header_string(value);
        } else if name.eq_ignore_ascii_case("x-switchyard-deadline-ms") {
            deadline_ms = header_string(value);
        } else if name.eq_ignore_ascii_case("x-mock-cache-control") {
            cache_control = header_string(value);
        } else if name.eq_ignore_ascii_case("x-mock-digest") {
            digest = true;
        }
    })
    .map_err(refusal)?;
    let Some(req) = parsed else {
        return Ok(None);
    };
    let method = match req.method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    Ok(Some(Head {
        len: req.len,
        method,
        http11: req.http11,
        keep_alive: req.keep_alive,
        framing: req.framing,
        expect_continue: req.expect_continue,
        route: route(method, req.target, health_path),
        request_id,
        deadline_ms,
        cache_control,
        digest,
    }))
}

/// `read_buf` with room for at least `want` bytes; 0 means the peer closed.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    buf.reserve(want.max(1024));
    stream.read_buf(buf).await
}

/// Serve one connection until the peer closes, a response says close, or an error.
async fn serve(mut stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut body_json: Vec<u8> = Vec::with_capacity(512);
    loop {
        // The head: loop until httparse has all of it.
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, &sh.health_path) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(r) => return refuse(&mut stream, sh, r).await,
                }
            }
            if fill(&mut stream, &mut buf, 4096).await? == 0 {
                return Ok(());
            }
        };
        buf.advance(head.len);
        let counted = head.route.counted();
        if counted {
            sh.counters.requests.fetch_add(1, Relaxed);
        }

        // The body.
        let body = match head.framing {
            // (A request body never ends with the connection.)
            Framing::None | Framing::UntilClose => BytesMut::new(),
            Framing::Length(n) => {
                if head.expect_continue && buf.len() < n {
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                while buf.len() < n {
                    let want = n - buf.len();
                    if fill(&mut stream, &mut buf, want).await? == 0 {
                        return Ok(());
                    }
                }
                buf.split_to(n)
            }
            Framing::Chunked => {
                if head.expect_continue && buf.is_empty() {
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                let mut body = BytesMut::new();
                let mut chunks = ChunkedDecoder::new(LIMITS);
                loop {
                    match chunks.decode(&mut buf) {
                        Ok(Chunk::Done) => break,
                        Ok(Chunk::Data(data)) => body.extend_from_slice(&data),
                        Ok(Chunk::NeedMore(want)) => {
                            if fill(&mut stream, &mut buf, want.max(4096)).await? == 0 {
                                return Ok(());
                            }
                        }
                        Err(e) => return refuse(&mut stream, sh, refusal(e)).await,
                    }
                }
                body
            }
        };

        let keep_alive = respond(&mut stream, sh, &head, &body, &mut out, &mut body_json).await?;
        if !keep_alive {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        // Give the allocation back to `buf` when the body was split off it.
        drop(body);
    }
}

/// Answer a request that cannot be read (bad framing, too large) and close the connection,
/// draining what the client still sends for a moment so that it sees the answer instead of
/// a reset.
async fn refuse(stream: &mut TcpStream, sh: &Shared, r: Reject) -> std::io::Result<()> {
    sh.counters.rejected.fetch_add(1, Relaxed);
    let id = sh.next_id.fetch_add(1, Relaxed) + 1;
    let mut body = Vec::with_capacity(128);
    error_body(&mut body, sh, error_type(r.status), r.message);
    let mut out = Vec::with_capacity(256 + body.len());
    write_head(
        &mut out,
        sh,
        r.status,
        "application/json",
        Some(body.len()),
        id,
        None,
        false,
        true,
    );
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.shutdown().await?;
    let mut scratch = [0u8; 8192];
    let drain = async { while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    Ok(())
}

fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request",
        404 => "not_found",
        413 => "payload_too_large",
        431 => "headers_too_large",
        500 => "internal_error",
        501 => "not_implemented",
        _ => "error",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// The status line and headers. `len: None` means a streamed body: chunked on HTTP/1.1,
/// until close on HTTP/1.0.
#[allow(clippy::too_many_arguments)]
fn write_head(
    out: &mut Vec<u8>,
    sh: &Shared,
    status: u16,
    content_type: &str,
    len: Option<usize>,
    id: u64,
    head: Option<&Head>,
    chunked: bool,
    close: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match len {
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            if let Some(cc) = head.and_then(|h| h.cache_control.as_deref()) {
                out.extend_from_slice(b"cache-control: ");
                out.extend_from_slice(cc.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        None if chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
        }
        None => out.extend_from_slice(b"cache-control: no-cache\r\n"),
    }
    out.extend_from_slice(b"x-served-by: ");
    out.extend_from_slice(sh.name.as_bytes());
    let _ = write!(out, "\r\nx-mock-request-id: {id}\r\n");
    if let Some(rid) = head.and_then(|h| h.request_id.as_deref()) {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(rid.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if head.is_some_and(|h| !h.http11) {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append `s` as a JSON string literal (quoted, escaped).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `push_json_str` into a byte buffer.
fn push_json_bytes(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let mut quoted = String::with_capacity(s.len() + 8);
        push_json_str(&mut quoted, s);
        out.extend_from_slice(quoted.as_bytes());
    }
}

fn error_body(out: &mut Vec<u8>, sh: &Shared, kind: &str, message: &str) {
    out.extend_from_slice(b"{\"error\":{\"type\":");
    push_json_bytes(out, kind);
    out.extend_from_slice(b",\"message\":");
    push_json_bytes(out, message);
    out.extend_from_slice(b"},\"served_by\":");
    out.extend_from_slice(sh.name_json.as_bytes());
    out.push(b'}');
}

/// `,"echo":{..}` with the request headers tests like to see, when any was sent.
fn echo(out: &mut Vec<u8>, head: &Head) {
    if head.request_id.is_none() && head.deadline_ms.is_none() {
        return;
    }
    out.extend_from_slice(b",\"echo\":{");
    let mut first = true;
    for (k, v) in [
        ("x-request-id", &head.request_id),
        ("x-switchyard-deadline-ms", &head.deadline_ms),
    ] {
        if let Some(v) = v {
            if !first {
                out.push(b',');
            }
            first = false;
            push_json_bytes(out, k);
            out.push(b':');
            push_json_bytes(out, v);
        }
    }
    out.push(b'}');
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The fields of an OpenAI-style body the mock reads; everything else is only validated.
#[derive(Deserialize)]
struct OpenAiBody<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

/// A prompt's hash: its messages in order.
fn prompt_hash(messages: &[serde_json::Value]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in messages {
        m.to_string().hash(&mut h);
    }
    h.finish()
}

impl Shared {
    /// With a prefix cache: whether this chat's conversation was served here last turn
    /// (and remember its prompt for the next one).
    fn prefix_warm(&self, messages: &[serde_json::Value]) -> Option<Duration> {
        let (warm, seen) = self.prefix_cache.as_ref()?;
        let mut seen = seen.lock().ok()?;
        let hit =
            messages.len() > 2 && seen.contains(&prompt_hash(&messages[..messages.len() - 2]));
        if seen.len() >= 100_000 {
            seen.clear();
        }
        seen.insert(prompt_hash(messages));
        hit.then(|| {
            self.counters.prefix_hits.fetch_add(1, Relaxed);
            *warm
        })
    }
}

const ANSWER: &str = "Hello from the Switchyard mock backend.";

/// Write the answer to one request; returns whether the connection stays open.
async fn respond(
    stream: &mut TcpStream,
    sh: &Shared,
    head: &Head,
    body: &[u8],
    out: &mut Vec<u8>,
    json: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let id = sh.next_id.fetch_add(1, Relaxed) + 1;
    let c = &sh.counters;
    let in_flight = head.route.counted().then(|| InFlight::enter(c));
    // Inference waits its turn on a server with `max_running`.
    let running = match head.route {
        Route::OpenAi(_) | Route::Oip { .. } | Route::Tf { .. } => Some(Running::enter(sh).await),
        _ => None,
    };
    json.clear();
    out.clear();
    let mut keep_alive = head.keep_alive;
    let status: u16 = 'answer: {
        match &head.route {
            Route::Health => {
                sh.faults.wait_unstalled().await;
                json.extend_from_slice(b"{\"status\":\"ok\",\"name\":");
                json.extend_from_slice(sh.name_json.as_bytes());
                json.push(b'}');
                200
            }
            Route::Metrics => {
                let running = c.running.load(Relaxed);
                let kv = sh
                    .max_running
                    .map_or(0.0, |n| running as f64 / f64::from(n.max(1)));
                let _ = write!(
                    json,
                    "# TYPE vllm:num_requests_running gauge\n\
                     vllm:num_requests_running{{model_name=\"mock\"}} {running}\n\
                     # TYPE vllm:num_requests_waiting gauge\n\
                     vllm:num_requests_waiting{{model_name=\"mock\"}} {}\n\
                     # TYPE vllm:kv_cache_usage_perc gauge\n\
                     vllm:kv_cache_usage_perc{{model_name=\"mock\"}} {kv}\n",
                    c.waiting.load(Relaxed)
                );
                200
            }
            Route::GetFaults => {
                let _ = serde_json::to_writer(&mut *json, &sh.faults.state());
                200
            }
            Route::SetFaults => {
                let patch = if body.trim_ascii().is_empty() {
                    Ok(FaultsPatch {
                        extra_latency_ms: None,
                        error_rate: None,
                        stall: None,
                    })
                } else {
                    serde_json::from_slice::<FaultsPatch>(body).map_err(|e| e.to_string())
                };
                match patch.and_then(|p| sh.faults.apply(p).map_err(str::to_string)) {
                    Ok(()) => {
                        let _ = serde_json::to_writer(&mut *json, &sh.faults.state());
                        200
                    }
                    Err(e) => {
                        error_body(json, sh, "invalid_request", &e);
                        400
                    }
                }
            }
            Route::Stats => {
                let _ = serde_json::to_writer(&mut *json, &c.snapshot());
                200
            }
            Route::ResetStats => {
                c.reset();
                let _ = serde_json::to_writer(&mut *json, &c.snapshot());
                200
            }
            Route::NotFound => {
                c.rejected.fetch_add(1, Relaxed);
                error_body(json, sh, "not_found", "no such route on the mock backend");
                404
            }
            Route::OpenAi(kind) => {
                match kind {
                    OpenAi::Chat => &c.chat,
                    OpenAi::Completions => &c.completions,
                    OpenAi::Embeddings => &c.embeddings,
                }
                .fetch_add(1, Relaxed);
                let parsed: OpenAiBody = match serde_json::from_slice(body) {
                    Ok(p) => p,
                    Err(_) => {
                        break 'answer bad_request(sh, json, "the body is not a valid JSON object")
                    }
                };
                let Some(model) = parsed.model else {
                    break 'answer bad_request(sh, json, "\"model\" is required");
                };
                if !sh.serves(&model) {
                    break 'answer not_served(sh, json);
                }
                let streaming = *kind != OpenAi::Embeddings
                    && matches!(parsed.stream, Some(serde_json::Value::Bool(true)));
                let mut generation = sh.generation.filter(|_| *kind != OpenAi::Embeddings);
                if let Some(g) = generation.as_mut() {
                    if let Some(warm) = sh.prefix_warm(&parsed.messages) {
                        g.ttft = warm;
                    }
                }
                let service = match generation {
                    // A generating server times the answer itself (below, or as it streams).
                    Some(_) => {
                        sh.faults.wait_unstalled().await;
                        Duration::ZERO
                    }
                    None => prepare(sh).await,
                };
                if inject_error(sh, json) {
                    break 'answer 500;
                }
                let tokens = generation.map(|g| (g, g.tokens_for(parsed.max_tokens)));
                if streaming {
                    c.streams.fetch_add(1, Relaxed);
                    let timing = match tokens {
                        Some((g, n)) => Timing::Generated(g, n),
                        None => Timing::Spread(service),
                    };
                    return stream_sse(stream, sh, head, *kind, &model, id, timing, out).await;
                }
                if let Some((g, n)) = tokens {
                    let extra = sh.faults.extra_latency();
                    tokio::time::sleep(extra + g.ttft + g.tpot * (n - 1)).await;
                }
                openai_body(json, sh, head, *kind, &model, id, body);
                200
            }
            Route::Oip { model, version } => {
                c.oip_infer.fetch_add(1, Relaxed);
                if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                    break 'answer bad_request(sh, json, "the body is not valid JSON");
                }
                if !sh.serves(model) {
                    break 'answer not_served(sh, json);
                }
                prepare(sh).await;
                if inject_error(sh, json) {
                    break 'answer 500;
                }
                json.extend_from_slice(b"{\"model_name\":");
                push_json_bytes(json, model);
                json.extend_from_slice(b",\"model_version\":");
                match version {
                    Some(v) => push_json_bytes(json, v),
                    None => json.extend_from_slice(b"null"),
                }
                let _ = write!(
                    json,
                    ",\"id\":\"{id}\",\"outputs\":[{{\"name\":\"output0\",\"datatype\":\"FP32\",\"shape\":[1,2],\"data\":[0.1,0.9]}}],\"served_by\":"
                );
                json.extend_from_slice(sh.name_json.as_bytes());
                echo(json, head);
                json.push(b'}');
                200
            }
            Route::Meta {
                oip,
                what,
                model,
                version,
                path,
            } => {
                c.metadata.fetch_add(1, Relaxed);
                if !sh.serves(model) {
                    break 'answer not_served(sh, json);
                }
                prepare(sh).await;
                metadata_body(json, sh, (*oip, what), model, version.as_deref(), path);
                200
            }
            Route::Tf { model } => {
                c.tf_predict.fetch_add(1, Relaxed);
                if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                    break 'answer bad_request(sh, json, "the body is not valid JSON");
                }
                if !sh.serves(model) {
                    break 'answer not_served(sh, json);
                }
                prepare(sh).await;
                if inject_error(sh, json) {
                    break 'answer 500;
                }
                json.extend_from_slice(b"{\"predictions\":[[0.1,0.9]],\"model\":");
                push_json_bytes(json, model);
                json.extend_from_slice(b",\"served_by\":");
                json.extend_from_slice(sh.name_json.as_bytes());
                echo(json, head);
                json.push(b'}');
                200
            }
        }
    };
    if status == 400 && head.route.counted() {
        // A request we could read but not understand: answer, then close.
        keep_alive = false;
    }
    let content_type = match head.route {
        Route::Metrics => "text/plain; version=0.0.4",
        _ => "application/json",
    };
    write_head(
        out,
        sh,
        status,
        content_type,
        Some(json.len()),
        id,
        Some(head),
        false,
        !keep_alive,
    );
    if head.method != Method::Head {
        out.extend_from_slice(json);
    }
    // The request leaves the server's count before its answer is written, as a server's
    // own metrics would have it: once the client can see the last byte, the count never
    // still holds the request (a preempted mock thread would otherwise count it a moment
    // after the gateway has sent the next one).
    drop((in_flight, running));
    stream.write_all(out).await?;
    Ok(keep_alive)
}

fn bad_request(sh: &Shared, json: &mut Vec<u8>, message: &str) -> u16 {
    sh.counters.rejected.fetch_add(1, Relaxed);
    error_body(json, sh, "invalid_request", message);
    400
}

fn not_served(sh: &Shared, json: &mut Vec<u8>) -> u16 {
    sh.counters.rejected.fetch_add(1, Relaxed);
    error_body(
        json,
        sh,
        "model_not_found",
        "this backend does not serve the model",
    );
    404
}

/// Wait out a stall, then the service time; returns the service time.
async fn prepare(sh: &Shared) -> Duration {
    sh.faults.wait_unstalled().await;
    let service = sh.service_time();
    if !service.is_zero() {
        tokio::time::sleep(service).await;
    }
    service
}

/// Roll the error rate; on an error, the 500 body is in `json`.
fn inject_error(sh: &Shared, json: &mut Vec<u8>) -> bool {
    let rate = sh.faults.error_rate();
    if rate > 0.0 && fastrand::f64() < rate {
        sh.counters.errors.fetch_add(1, Relaxed);
        error_body(json, sh, "internal_error", "injected failure");
        return true;
    }
    false
}

fn openai_body(
    json: &mut Vec<u8>,
    sh: &Shared,
    head: &Head,
    kind: OpenAi,
    model: &str,
    id: u64,
    body: &[u8],
) {
    let prompt_tokens = (body.len() / 4).max(1);
    match kind {
        OpenAi::Chat => {
            let _ = write!(
                json,
                "{{\"id\":\"chatcmpl-{id}\",\"object\":\"chat.completion\",\"created\":{},\"model\":",
                unix_now()
            );
        }
        OpenAi::Completions => {
            let _ = write!(
                json,
                "{{\"id\":\"cmpl-{id}\",\"object\":\"text_completion\",\"created\":{},\"model\":",
                unix_now()
            );
        }
        OpenAi::Embeddings => {
            json.extend_from_slice(
                b"{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]}],\"model\":",
            );
        }
    }
    push_json_bytes(json, model);
    json.extend_from_slice(b",\"served_by\":");
    json.extend_from_slice(sh.name_json.as_bytes());
    if head.digest {
        let _ = write!(
            json,
            ",\"request_bytes\":{},\"request_blake3\":\"{}\"",
            body.len(),
            blake3::hash(body).to_hex()
        );
    }
    let completion_tokens = match kind {
        OpenAi::Chat => {
            let _ = write!(
                json,
                ",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{ANSWER}\"}},\"finish_reason\":\"stop\"}}]"
            );
            8
        }
        OpenAi::Completions => {
            let _ = write!(
                json,
                ",\"choices\":[{{\"index\":0,\"text\":\"{ANSWER}\",\"logprobs\":null,\"finish_reason\":\"stop\"}}]"
            );
            8
        }
        OpenAi::Embeddings => 0,
    };
    let _ = write!(
        json,
        ",\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"total_tokens\":{}}}",
        prompt_tokens + completion_tokens
    );
    echo(json, head);
    json.push(b'}');
}

/// One SSE event (`data: {json}\n\n`), chunk-framed when `chunked`.
fn push_event(out: &mut Vec<u8>, chunked: bool, event: &[u8]) {
    if chunked {
        let _ = write!(out, "{:x}\r\n", event.len() + 8);
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(event);
    out.extend_from_slice(b"\n\n");
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
}

/// When a streamed answer's events go out.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// `STREAM_CHUNKS` events spread over the service time already waited (at least
    /// `MIN_STREAM_GAP` apart).
    Spread(Duration),
    /// A generating server (the head at once, then `n` tokens: see [`Generation`]).
    Generated(Generation, u32),
}

/// Stream an OpenAI answer as Server-Sent Events, timed by `timing`, then `data: [DONE]`.
#[allow(clippy::too_many_arguments)]
async fn stream_sse(
    stream: &mut TcpStream,
    sh: &Shared,
    head: &Head,
    kind: OpenAi,
    model: &str,
    id: u64,
    timing: Timing,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    // HTTP/1.0 has no chunked encoding: the body ends with the connection.
    let chunked = head.http11;
    let keep_alive = head.keep_alive && chunked;
    let (events, first, gap) = match timing {
        Timing::Spread(service) => (
            STREAM_CHUNKS,
            Duration::ZERO,
            (service / STREAM_CHUNKS).max(MIN_STREAM_GAP),
        ),
        Timing::Generated(g, n) => (n, g.ttft + sh.faults.extra_latency(), g.tpot),
    };
    let created = unix_now();
    let mut model_json = Vec::with_capacity(model.len() + 2);
    push_json_bytes(&mut model_json, model);
    out.clear();
    write_head(
        out,
        sh,
        200,
        "text/event-stream",
        None,
        id,
        Some(head),
        chunked,
        !keep_alive,
    );
    if head.method == Method::Head {
        stream.write_all(out).await?;
        return Ok(keep_alive);
    }
    if !first.is_zero() {
        // A model server sends the head before its first token.
        stream.write_all(out).await?;
        out.clear();
        tokio::time::sleep(first).await;
    }
    let mut event = Vec::with_capacity(256);
    for i in 0..events {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let last = i + 1 == events;
        event.clear();
        let (prefix, object) = match kind {
            OpenAi::Chat => ("chatcmpl", "chat.completion.chunk"),
            _ => ("cmpl", "text_completion"),
        };
        let _ = write!(
            event,
            "{{\"id\":\"{prefix}-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":"
        );
        event.extend_from_slice(&model_json);
        event.extend_from_slice(b",\"served_by\":");
        event.extend_from_slice(sh.name_json.as_bytes());
        let finish = if last { "\"stop\"" } else { "null" };
        match kind {
            OpenAi::Chat => {
                let _ = write!(
                    event,
                    ",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":{finish}}}]}}"
                );
            }
            _ => {
                let _ = write!(
                    event,
                    ",\"choices\":[{{\"index\":0,\"text\":\"token{i} \",\"finish_reason\":{finish}}}]}}"
                );
            }
        }
        push_event(out, chunked, &event);
        if last {
            push_event(out, chunked, b"[DONE]");
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_three_protocol_families() {
        let r = |m, p| route(m, p, "/healthz");
        assert_eq!(r(Method::Get, "/healthz"), Route::Health);
        assert_eq!(r(Method::Get, "/v2/health/ready"), Route::Health);
        assert_eq!(r(Method::Post, "/healthz"), Route::NotFound);
        assert_eq!(
            r(Method::Post, "/v1/chat/completions?x=1"),
            Route::OpenAi(OpenAi::Chat)
        );
        assert_eq!(r(Method::Get, "/v1/chat/completions"), Route::NotFound);
        assert_eq!(
            r(Method::Post, "/v2/models/resnet-50/versions/3/infer"),
            Route::Oip {
                model: "resnet-50".into(),
                version: Some("3".into())
            }
        );
        assert_eq!(
            r(Method::Post, "/v2/models/resnet-50/infer"),
            Route::Oip {
                model: "resnet-50".into(),
                version: None
            }
        );
        assert_eq!(r(Method::Post, "/v2/models//infer"), Route::NotFound);
        assert_eq!(r(Method::Post, "/v2/models/a/b/infer"), Route::NotFound);
        assert_eq!(
            r(Method::Post, "/v1/models/bert-base:predict"),
            Route::Tf {
                model: "bert-base".into()
            }
        );
        assert_eq!(r(Method::Post, "/v1/models/:predict"), Route::NotFound);
        let meta = |oip, what, version: Option<&str>, path: &str| Route::Meta {
            oip,
            what,
            model: "m".into(),
            version: version.map(str::to_string),
            path: path.into(),
        };
        for (path, want) in [
            ("/v2/models/m", meta(true, "metadata", None, "/v2/models/m")),
            (
                "/v2/models/m/versions/2/ready",
                meta(true, "ready", Some("2"), "/v2/models/m/versions/2/ready"),
            ),
            (
                "/v2/models/m/config",
                meta(true, "config", None, "/v2/models/m/config"),
            ),
            ("/v1/models/m", meta(false, "status", None, "/v1/models/m")),
            (
                "/v1/models/m/versions/3/metadata",
                meta(
                    false,
                    "metadata",
                    Some("3"),
                    "/v1/models/m/versions/3/metadata",
                ),
            ),
        ] {
            assert_eq!(r(Method::Get, path), want, "{path}");
        }
        assert_eq!(r(Method::Get, "/v2/models/"), Route::NotFound);
        assert_eq!(r(Method::Get, "/v2/models/a/b/ready"), Route::NotFound);
        assert_eq!(r(Method::Post, "/_mock/faults"), Route::SetFaults);
        assert!(!r(Method::Get, "/_mock/stats").counted());
    }

    #[test]
    fn heads_are_parsed_and_bad_ones_rejected() {
        let h = parse_head(
            b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 5\r\nX-Request-Id: abc\r\n\r\nhello",
            "/h",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.request_id.as_deref(), Some("abc"));
        assert_eq!(h.len, 70);
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Le", "/h")
            .unwrap()
            .is_none());
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n", "/h")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "/h")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n", "/h")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let status = |raw: &[u8]| parse_head(raw, "/h").unwrap_err().status;
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            400
        );
        let many: String = (0..70).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
        let mut b = Vec::new();
        push_json_bytes(&mut b, "plain");
        assert_eq!(b, b"\"plain\"");
    }

    #[test]
    fn faults_clamp_and_patch() {
        let f = Faults::new(2.0);
        assert_eq!(f.error_rate(), 1.0);
        f.set_error_rate(f64::NAN);
        assert_eq!(f.error_rate(), 0.0);
        let patch = |s: &str| serde_json::from_str::<FaultsPatch>(s).unwrap();
        assert!(f.apply(patch(r#"{"error_rate":1.5}"#)).is_err());
        assert!(f.apply(patch(r#"{"extra_latency_ms":-1}"#)).is_err());
        f.apply(patch(r#"{"extra_latency_ms":250,"stall":true}"#))
            .unwrap();
        assert_eq!(f.extra_latency(), Duration::from_millis(250));
        assert!(f.stalled());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"nope":1}"#).is_err());
    }
}
