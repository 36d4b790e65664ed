//! Traces (`observe.traces`): a span per request, exported to an OpenTelemetry collector by
//! OTLP/HTTP (`POST /v1/traces`, `application/x-protobuf`), and the W3C `traceparent`
//! continued to the backend.
//!
//! The request path only decides (its [`TraceContext`], parent-based sampling, at its start)
//! and, once the answer is out, moves a small [`SpanRecord`] into a queue: no encoding, no
//! lock, no system call. The queue is bounded by a count (`max_queue`, read from the
//! request's snapshot, so it applies on reload): a span beyond it is dropped and counted
//! (`switchyard_trace_spans_dropped_total`), never waited for. The exporter thread, started
//! with the first sampled span, wakes on a clock (a send never wakes it), builds the
//! protobuf, and POSTs batches of up to `batch_max` spans every `batch_every` through the
//! gateway's own upstream connector (plain HTTP/1; no second HTTP stack), retrying
//! connection errors, 429 and 5xx with back-off up to `max_attempts`; a batch that fails
//! them all is dropped and counted (`switchyard_trace_spans_failed_total`). It reads the
//! collector's address and the service name from the current snapshot, so a reload moves
//! or stops the export without a restart.
//!
//! **At shutdown** ([`Tracer::flush`], called by `server` once Pingora's grace period is over
//! and the proxy's runtimes have stopped, so every request's span is queued) the exporter
//! exports what waits at once, whatever `batch_every`, and the process exits when it has or
//! when the time given (at most 2 s, and not more than `listeners.shutdown_grace`) is up,
//! whichever comes first; spans still unexported then are lost with the process and counted
//! in the log line that says so. A gateway that never sampled a span has no exporter and
//! does not wait.

pub mod context;
pub mod span;

pub use context::TraceContext;
pub use span::SpanRecord;

use crate::policy::compile::TraceSettings;
use crate::serving::Snapshot;
use crate::telemetry as t;
use crate::upstream::connect::{self, Timeouts};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use pingora::http::RequestHeader;
use prost::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often the exporter looks at its queue (it exports when `batch_every` has passed or
/// `batch_max` spans wait).
const TICK: Duration = Duration::from_millis(50);
/// The collector's answer is read up to this size (an `ExportTraceServiceResponse`).
const MAX_ANSWER: usize = 64 * 1024;

/// The exporter thread's two queues: spans (a request sends one, unboxed), and flushes
/// asked for (each answered on its channel once the spans sent before it are exported).
struct Queues {
    spans: Sender<SpanRecord>,
    flushes: Sender<SyncSender<()>>,
}

/// The request side of the exporter, held by the gateway (and, cloned, by the server for
/// the flush at shutdown).
#[derive(Clone)]
pub struct Tracer {
    snapshot: Snapshot,
    /// Spans queued or in the exporter's batch, not yet exported or given up.
    queued: Arc<AtomicUsize>,
    /// The exporter's queue, made with the first span (`None`: its thread could not start).
    tx: Arc<OnceLock<Option<Queues>>>,
}

impl Tracer {
    pub fn new(snapshot: Snapshot) -> Tracer {
        Tracer {
            snapshot,
            queued: Arc::new(AtomicUsize::new(0)),
            tx: Arc::new(OnceLock::new()),
        }
    }

    /// Export every queued span now, waiting at most `within` (the shutdown's flush, see the
    /// module docs): whether none is left unexported. Returns at once when no span waits.
    pub fn flush(&self, within: Duration) -> bool {
        let waiting = self.queued.load(Ordering::Relaxed);
        if waiting == 0 {
            return true;
        }
        let Some(Some(tx)) = self.tx.get() else {
            return true;
        };
        let (done_tx, done) = sync_channel(1);
        let flushed = tx.flushes.send(done_tx).is_ok() && done.recv_timeout(within).is_ok();
        if !flushed {
            let left = self.queued.load(Ordering::Relaxed);
            tracing::warn!(
                spans = left,
                ?within,
                "spans not exported at shutdown are lost"
            );
            return left == 0;
        }
        tracing::info!(
            spans = waiting,
            "queued spans sent to the collector at shutdown"
        );
        true
    }

    /// Queue a sampled request's span, unless `max_queue` spans wait already (then it is
    /// dropped and counted).
    pub fn record(&self, span: SpanRecord, max_queue: usize) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= max_queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(t::TRACE_SPANS_DROPPED).increment(1);
            return;
        }
        // The first sampled span starts the thread (a gateway without traces has none).
        let tx = self.tx.get_or_init(|| self.start());
        if tx.as_ref().is_none_or(|tx| tx.spans.send(span).is_err()) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(t::TRACE_SPANS_DROPPED).increment(1);
        }
    }

    fn start(&self) -> Option<Queues> {
        let (spans, rx) = channel();
        let (flushes, asked) = channel();
        let (queued, snapshot) = (self.queued.clone(), self.snapshot.clone());
        match std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || export_all(rx, asked, queued, snapshot))
        {
            Ok(_) => Some(Queues { spans, flushes }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the trace exporter; spans are dropped");
                None
            }
        }
    }
}

/// The exporter thread: collect spans on a clock, export a batch when `batch_max` wait or
/// `batch_every` has passed (everything at once when asked to flush), until the gateway goes.
fn export_all(
    rx: Receiver<SpanRecord>,
    asked: Receiver<SyncSender<()>>,
    queued: Arc<AtomicUsize>,
    snapshot: Snapshot,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the trace exporter; spans are dropped");
            return;
        }
    };
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut last = Instant::now();
    loop {
        std::thread::sleep(TICK);
        let mut open = true;
        // Flushes asked for, taken before the spans: every span sent before a flush was
        // asked for is in this round's batch.
        let mut flushes: Vec<SyncSender<()>> = asked.try_iter().collect();
        loop {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let settings = snapshot.load().traces.clone();
        let Some(settings) = settings else {
            // Traces were turned off by a reload: what waits is dropped.
            give_up(&queued, &mut batch, t::TRACE_SPANS_DROPPED);
            answer(&mut flushes);
            if !open {
                return;
            }
            continue;
        };
        let max = settings.batch_max.max(1);
        let now = !open || !flushes.is_empty();
        while batch.len() >= max
            || (!batch.is_empty() && (last.elapsed() >= settings.batch_every || now))
        {
            let rest = batch.split_off(max.min(batch.len()));
            let n = batch.len();
            let body = encode(&settings, &batch);
            batch = rest;
            let exported = runtime.block_on(post(&settings, body, n));
            let counter = if exported {
                t::TRACE_SPANS_EXPORTED
            } else {
                t::TRACE_SPANS_FAILED
            };
            metrics::counter!(counter).increment(n as u64);
            queued.fetch_sub(n, Ordering::Relaxed);
            last = Instant::now();
        }
        if batch.is_empty() {
            last = Instant::now();
        }
        answer(&mut flushes);
        if !open {
            return;
        }
    }
}

/// Tell each flush waiting that it is done (one whose caller gave up is not waited on).
fn answer(flushes: &mut Vec<SyncSender<()>>) {
    for done in flushes.drain(..) {
        let _ = done.try_send(());
    }
}

fn give_up(queued: &AtomicUsize, batch: &mut Vec<SpanRecord>, counter: &'static str) {
    if !batch.is_empty() {
        metrics::counter!(counter).increment(batch.len() as u64);
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        batch.clear();
    }
}

/// One `ExportTraceServiceRequest` of `spans`, under the service's resource.
fn encode(settings: &TraceSettings, spans: &[SpanRecord]) -> Bytes {
    let attr = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    attr("service.name", &settings.service_name),
                    attr("service.version", env!("CARGO_PKG_VERSION")),
                    attr("telemetry.sdk.name", "switchyard"),
                    attr("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "switchyard".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans: spans.iter().map(SpanRecord::to_proto).collect(),
                schema_url: "https://opentelemetry.io/schemas/1.37.0".to_string(),
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(request.encode_to_vec())
}

/// POST one batch to the collector; `true` when it took it (2xx).
async fn post(settings: &TraceSettings, body: Bytes, spans: usize) -> bool {
    let host = if settings.port == 80 {
        settings.host.clone()
    } else if settings.host.contains(':') {
        format!("[{}]:{}", settings.host, settings.port)
    } else {
        format!("{}:{}", settings.host, settings.port)
    };
    let request = || -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", settings.path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, host.as_str())?;
        req.insert_header(http::header::CONTENT_TYPE, "application/x-protobuf")?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        Ok(req)
    };
    let req = match request() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the OTLP export request");
            return false;
        }
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        io: Duration::from_secs(5),
    };
    let mut why = String::new();
    for n in 0..settings.max_attempts.max(1) {
        if n > 0 {
            // 100 ms, 200 ms, 400 ms, ... at most 5 s.
            tokio::time::sleep(
                Duration::from_millis(100 << (n - 1).min(5)).min(Duration::from_secs(5)),
            )
            .await;
        }
        let addr = match tokio::net::lookup_host((settings.host.as_str(), settings.port)).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                why = format!("{} does not resolve: {e}", settings.host);
                continue;
            }
        };
        let Some(addr) = addr else {
            why = format!("{} has no address", settings.host);
            continue;
        };
        let peer = connect::plain_peer(addr, timeouts);
        match connect::request_once(&peer, &req, &body, MAX_ANSWER).await {
            Ok((status, _)) if (200..300).contains(&status) => return true,
            Ok((status, _)) if status == 429 || status >= 500 => {
                why = format!("the collector answered {status}");
            }
            Ok((status, _)) => {
                tracing::warn!(status, spans, "the OTLP collector refused a batch of spans");
                return false;
            }
            Err(e) => why = e.to_string(),
        }
    }
    tracing::warn!(spans, error = %why, "cannot export spans to the OTLP collector");
    false
}
