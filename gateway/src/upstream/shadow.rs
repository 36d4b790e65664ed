//! Shadow (mirrored) traffic: a copy of a client's request sent to another version of its
//! model (`models.NAME.shadow`), that the client never waits for and never sees.
//!
//! The pipeline asks [`Shadows::sample`] before relaying an upstream answer (so that the
//! client's answer body is captured, up to [`CAPTURE_MAX`], when the comparison reads it),
//! and hands the copy to [`Shadows::spawn`] once the client's answer is written. `spawn`
//! only counts and queues: the copy runs on the gateway's shadow thread, a single-threaded
//! runtime of its own fed by a bounded queue ([`QUEUE`]), so its connect, write, read,
//! timers and comparison never take a turn on a proxy thread, and a client's request never
//! waits behind a copy's wake-up. The copy is one [`super::fetch_as`] attempt, the same
//! attempt type as every request (slot, estimates, health and ejection of the shadow pool:
//! a copy's outcome teaches the shadow pool's estimates like any answer's), with the
//! buffered body re-sent by reference (a gRPC call's over h2c, its message's model and
//! version rewritten for the shadow version, its status the HTTP equivalent of its
//! `grpc-status`, as the client's is); its plain HTTP/1.1 connection comes from the copies'
//! own keep-alive pool (`connect::Keepalive::Shadow`: opened on the shadow thread, never
//! handed to a client's request), so their in-flight set is opened once and reused.
//!
//! What keeps clients unaffected: the copy starts after the answer and off the proxy's
//! threads; at most `max_in_flight` copies per model run (or wait in the queue) at once, and
//! a copy beyond that, or with the queue full, is dropped and counted `busy`, never waited
//! for (shed first); a daily cap on the copies' estimated spend; the shadow version's own
//! pools only. Copies are not requests of the tenant: not in its limits, bill, budget, SLO
//! or the request metrics; their spend is `switchyard_shadow_cost_nanousd_total`.
//!
//! Each copy is compared with the client's answer (status, latency, and by the rule's
//! `compare`: the status only, the exact body, or a label at a JSON pointer), counted in
//! metrics and in [`Shadows::report`] (`GET /admin/rollouts`). The counters and their metric
//! handles (registered once per model and version, not per copy) live here, beside the
//! table and kept by model name across reloads.

use super::{fetch_as, Fetched};
use crate::classify::Class;
use crate::policy::compile::{Compare, RoutingTable, ShadowRule, SplitId};
use crate::policy::hosted::CLIENT_CREDENTIALS;
use crate::policy::raw::Protocol;
use crate::serving::by_name::{self, ByName};
use crate::serving::state::now_ms;
use crate::serving::Serving;
use crate::telemetry as t;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most bytes of the client's answer kept for the comparison (and of a copy's answer read).
pub const CAPTURE_MAX: usize = 256 * 1024;

/// Copies waiting for the shadow thread to start them; a copy beyond this is dropped (as
/// `busy`), never queued longer.
pub const QUEUE: usize = 4096;

/// How long the shadow thread lets copies gather after starting a batch: the proxy threads
/// then hand most copies over without waking it (a wake-up is a syscall on the proxy
/// thread), and a copy leaves at most this much later.
const GATHER: Duration = Duration::from_millis(2);

/// Every model's shadow counters, and the queue to the shadow thread.
#[derive(Default)]
pub struct Shadows {
    by_model: ByName<Stats>,
    /// Started with the first copy (a gateway without shadows has no thread); `None`: the
    /// thread could not be started, and copies run on the proxy's runtime.
    queue: OnceLock<Option<mpsc::Sender<CopyJob>>>,
}

/// One model's shadow counters (monotonic, except `in_flight` and the day's spend).
#[derive(Default)]
pub struct Stats {
    /// Requests seen for sampling.
    seen: AtomicU64,
    in_flight: AtomicU32,
    sent: AtomicU64,
    dropped_busy: AtomicU64,
    dropped_budget: AtomicU64,
    unroutable: AtomicU64,
    failed: AtomicU64,
    status_differs: AtomicU64,
    agree: AtomicU64,
    disagree: AtomicU64,
    /// Sums of the answered copies' and their clients' times, in µs.
    shadow_us: AtomicU64,
    primary_us: AtomicU64,
    answered: AtomicU64,
    /// The UTC day (days since the epoch) `spent_today` is for.
    day: AtomicU64,
    spent_today: AtomicU64,
    spent_total: AtomicU64,
    /// The metric handles of the current shadow version (registered once, not per copy).
    handles: ArcSwapOption<Handles>,
}

/// One model's shadow metrics for one version, registered once: labelling a metric per copy
/// allocates its label strings and hashes them into the registry.
struct Handles {
    version: String,
    sent: metrics::Counter,
    busy: metrics::Counter,
    budget: metrics::Counter,
    unroutable: metrics::Counter,
    cost: metrics::Counter,
    duration: metrics::Histogram,
    agree: metrics::Counter,
    disagree: metrics::Counter,
    status_differs: metrics::Counter,
    failed: metrics::Counter,
}

impl Handles {
    fn new(model: &str, version: &str) -> Handles {
        let outcome = |o: &'static str| metrics::counter!(t::SHADOW_REQUESTS, "model" => model.to_string(), "version" => version.to_string(), "outcome" => o);
        let result = |r: &'static str| metrics::counter!(t::SHADOW_COMPARED, "model" => model.to_string(), "version" => version.to_string(), "result" => r);
        Handles {
            version: version.to_string(),
            sent: outcome("sent"),
            busy: outcome("busy"),
            budget: outcome("budget"),
            unroutable: outcome("unroutable"),
            cost: metrics::counter!(t::SHADOW_COST, "model" => model.to_string(), "version" => version.to_string()),
            duration: metrics::histogram!(t::SHADOW_DURATION, "model" => model.to_string(), "version" => version.to_string()),
            agree: result("agree"),
            disagree: result("disagree"),
            status_differs: result("status_differs"),
            failed: result("failed"),
        }
    }
}

impl Stats {
    /// The handles for `version` of `model` (built again only when a reload changed the
    /// shadow version).
    fn handles(&self, model: &str, version: &str) -> Arc<Handles> {
        if let Some(h) = self.handles.load_full() {
            if h.version == version {
                return h;
            }
        }
        let h = Arc::new(Handles::new(model, version));
        self.handles.store(Some(h.clone()));
        h
    }
}

/// A copy on its way to the shadow thread: everything it needs, owned.
struct CopyJob {
    table: Arc<Serving>,
    class: Class,
    rule: ShadowRule,
    header: RequestHeader,
    body: Bytes,
    capture: Capture,
    primary: Primary,
    handles: Arc<Handles>,
    /// The copy's in-flight place, given back however it ends (sent, failed or dropped).
    guard: InFlight,
}

impl CopyJob {
    async fn run(self) {
        let stats = &self.guard.0;
        mirror(
            &self.table,
            self.class,
            &self.rule,
            self.header,
            self.body,
            self.capture,
            self.primary,
            stats,
            &self.handles,
        )
        .await;
    }
}

/// A request chosen to be mirrored: its split, and the client's answer being captured.
pub struct Capture {
    split: SplitId,
    /// The model's counters (looked up once, when sampled).
    stats: Arc<Stats>,
    /// The comparison reads the body (`exact`, `label`): else nothing is kept.
    keep: bool,
    body: Vec<u8>,
    truncated: bool,
}

impl Capture {
    /// A piece of the client's answer body (copied only if the comparison reads it).
    pub fn on_body(&mut self, chunk: &[u8]) {
        if !self.keep {
            return;
        }
        if self.body.len() + chunk.len() > CAPTURE_MAX {
            self.truncated = true;
        } else {
            self.body.extend_from_slice(chunk);
        }
    }
}

/// What the client got, for the comparison.
pub struct Primary {
    pub status: u16,
    pub elapsed: Duration,
}

impl Shadows {
    pub fn new() -> Arc<Shadows> {
        Arc::new(Shadows::default())
    }

    /// A model's counters (made at its first copy; a reload keeps them by name).
    fn stats(&self, model: &str) -> Arc<Stats> {
        by_name::get_or_make(&self.by_model, model, |_| true, Stats::default)
    }

    /// Whether this request is mirrored: its model has a shadow rule, the tenant is one the
    /// rule names (if it names any), and it falls in the rule's share (every n-th request by
    /// a counter: exact shares, no random draw).
    pub fn sample(&self, table: &RoutingTable, class: &Class) -> Option<Capture> {
        let (split_id, _) = class.version?;
        let split = &table.splits[split_id as usize];
        let rule = split.shadow.as_ref()?;
        if !rule.tenants.is_empty() && !class.tenant.is_some_and(|t| rule.tenants.contains(&t)) {
            return None;
        }
        if !class.inference || rule.per_million == 0 {
            return None;
        }
        let stats = self.stats(&split.model);
        let n = stats.seen.fetch_add(1, Relaxed);
        let p = u64::from(rule.per_million);
        let picked = (n + 1) * p / 1_000_000 > n * p / 1_000_000;
        picked.then(|| Capture {
            split: split_id,
            stats,
            keep: rule.compare != Compare::Status,
            body: Vec::new(),
            truncated: false,
        })
    }

    /// Hand the copy to the shadow thread (it never runs on the proxy's threads). `header`
    /// and `body` are the client's request as it came (the shadow version's upstream model
    /// and version are applied there). Over `max_in_flight` copies of the model, or with the
    /// shadow thread's queue full, the copy is dropped and counted `busy`: shed first.
    pub fn spawn(
        self: &Arc<Self>,
        capture: Capture,
        table: Arc<Serving>,
        class: Class,
        header: RequestHeader,
        body: Bytes,
        primary: Primary,
    ) {
        let split = &table.splits[capture.split as usize];
        let Some(rule) = split.shadow.clone() else {
            return;
        };
        let stats = capture.stats.clone();
        let handles = stats.handles(&split.model, &split.versions[rule.version as usize].name);
        if stats.in_flight.fetch_add(1, Relaxed) >= rule.max_in_flight {
            stats.in_flight.fetch_sub(1, Relaxed);
            stats.dropped_busy.fetch_add(1, Relaxed);
            handles.busy.increment(1);
            return;
        }
        let copy = CopyJob {
            guard: InFlight(stats),
            table,
            class,
            rule,
            header,
            body,
            capture,
            primary,
            handles,
        };
        match self.queue.get_or_init(start) {
            Some(queue) => {
                if let Err(e) = queue.try_send(copy) {
                    let copy = match e {
                        mpsc::error::TrySendError::Full(c)
                        | mpsc::error::TrySendError::Closed(c) => c,
                    };
                    copy.guard.0.dropped_busy.fetch_add(1, Relaxed);
                    copy.handles.busy.increment(1);
                }
            }
            None => {
                tokio::spawn(Box::pin(copy.run()));
            }
        }
    }

    /// Every model's counters, for `GET /admin/rollouts`.
    pub fn report(&self, table: &RoutingTable) -> serde_json::Value {
        let map = self.by_model.load();
        let mut models = serde_json::Map::new();
        for split in &table.splits {
            let shadow = split.shadow.as_ref().map(|rule| {
                let s = map.get(&split.model).cloned().unwrap_or_default();
                let answered = s.answered.load(Relaxed).max(1) as f64;
                let compared = s.agree.load(Relaxed) + s.disagree.load(Relaxed);
                serde_json::json!({
                    "version": split.versions[rule.version as usize].name,
                    "percent": f64::from(rule.per_million) / 10_000.0,
                    "compare": match &rule.compare {
                        Compare::Status => "status".to_string(),
                        Compare::Exact => "exact".to_string(),
                        Compare::Label(p) => format!("label:{p}"),
                    },
                    "in_flight": s.in_flight.load(Relaxed),
                    "sent": s.sent.load(Relaxed),
                    "dropped_busy": s.dropped_busy.load(Relaxed),
                    "dropped_budget": s.dropped_budget.load(Relaxed),
                    "unroutable": s.unroutable.load(Relaxed),
                    "failed": s.failed.load(Relaxed),
                    "status_differs": s.status_differs.load(Relaxed),
                    "agree": s.agree.load(Relaxed),
                    "disagree": s.disagree.load(Relaxed),
                    "agreement": (compared > 0).then(|| s.agree.load(Relaxed) as f64 / compared as f64),
                    "mean_shadow_ms": s.shadow_us.load(Relaxed) as f64 / answered / 1000.0,
                    "mean_client_ms": s.primary_us.load(Relaxed) as f64 / answered / 1000.0,
                    "spent_today_usd": s.spent_today.load(Relaxed) as f64 / 1e9,
                    "spent_usd": s.spent_total.load(Relaxed) as f64 / 1e9,
                })
            });
            let versions: Vec<_> = split
                .versions
                .iter()
                .map(|v| serde_json::json!({ "name": v.name, "weight": v.weight }))
                .collect();
            models.insert(
                split.model.clone(),
                serde_json::json!({ "versions": versions, "shadow": shadow }),
            );
        }
        serde_json::json!({ "models": models })
    }
}

/// Gives a copy's in-flight place back, however its task ends.
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Start the shadow thread: a single-threaded runtime of its own, fed by a bounded queue,
/// so that copies (their connects, writes, reads, timers and comparisons) never take a turn
/// on a proxy thread. It ends when the gateway's [`Shadows`] goes (its queue closes).
fn start() -> Option<mpsc::Sender<CopyJob>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the shadow runtime; copies run on the proxy's");
            return None;
        }
    };
    let (tx, mut rx) = mpsc::channel::<CopyJob>(QUEUE);
    let started = std::thread::Builder::new()
        .name("shadow".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut batch = Vec::with_capacity(256);
                while rx.recv_many(&mut batch, 256).await > 0 {
                    for copy in batch.drain(..) {
                        // Boxed: the copy's future (an attempt's exchange inline) is large,
                        // and spawned by value tokio moves it several times into its task
                        // and again when it ends (callgrind: memcpy was half of a mirrored
                        // request's instructions).
                        tokio::spawn(Box::pin(copy.run()));
                    }
                    tokio::time::sleep(GATHER).await;
                }
            });
        });
    match started {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the shadow thread; copies run on the proxy's");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn mirror(
    table: &Arc<Serving>,
    mut class: Class,
    rule: &ShadowRule,
    mut header: RequestHeader,
    body: Bytes,
    capture: Capture,
    primary: Primary,
    stats: &Stats,
    handles: &Handles,
) {
    let Some((split_id, _)) = class.version else {
        return;
    };
    let split = &table.splits[split_id as usize];
    let version = &split.versions[rule.version as usize];
    let (model, vname) = (split.model.as_str(), version.name.as_str());
    class.version = Some((split_id, rule.version));
    class.deadline = rule.timeout;
    class.ttft = None;
    let decision = crate::route::decide(&class, table, &[], now_ms());
    let Some(target) = decision.target else {
        stats.unroutable.fetch_add(1, Relaxed);
        handles.unroutable.increment(1);
        return;
    };
    // The day's cap, on the estimate (a copy is charged before it is sent).
    let cost = decision
        .estimate
        .map_or(0, |e| (e.cost_usd.max(0.0) * 1e9) as u64);
    let today = now_ms() / 86_400_000;
    if stats.day.swap(today, Relaxed) != today {
        stats.spent_today.store(0, Relaxed);
    }
    let spent = stats.spent_today.fetch_add(cost, Relaxed) + cost;
    if rule.budget_nanousd.is_some_and(|cap| spent > cap) {
        stats.spent_today.fetch_sub(cost, Relaxed);
        stats.dropped_budget.fetch_add(1, Relaxed);
        handles.budget.increment(1);
        return;
    }
    stats.spent_total.fetch_add(cost, Relaxed);
    handles.cost.increment(cost);
    // The copy as the shadow version's backend knows it, without the client's credentials.
    for name in &CLIENT_CREDENTIALS {
        header.remove_header(name);
    }
    let protocol = table.routes[class.route as usize].protocol;
    let mut body = body;
    match protocol {
        Protocol::OpenAi => {
            if let Some(b) = version
                .upstream_model
                .as_deref()
                .and_then(|m| super::request::version_body(&body, m))
            {
                body = b;
            }
        }
        Protocol::OipV2 | Protocol::TfServing => {
            let prefix = if protocol == Protocol::OipV2 {
                "/v2/models/"
            } else {
                "/v1/models/"
            };
            let pq = header.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let path = super::request::version_path(
                pq,
                prefix,
                version.upstream_model.as_deref(),
                version.upstream_version.as_deref(),
            );
            if let Some(uri) =
                path.and_then(|p| http::Uri::builder().path_and_query(p).build().ok())
            {
                header.set_uri(uri);
            }
        }
        // The message's `model_name` / `model_version` as the shadow version's backend
        // knows them, over its h2c connection; compared on the `grpc-status`.
        Protocol::OipV2Grpc => {
            let rewritten = crate::grpc::codec::with_model(
                &body,
                version.upstream_model.as_deref(),
                version.upstream_version.as_deref(),
            );
            if let Ok(Some(b)) = rewritten {
                body = b;
            }
        }
    }
    stats.sent.fetch_add(1, Relaxed);
    handles.sent.increment(1);
    let start = Instant::now();
    let grpc = protocol == Protocol::OipV2Grpc;
    let fetched = fetch_as(
        table,
        target,
        &header,
        &body,
        (rule.timeout, CAPTURE_MAX),
        (super::connect::Keepalive::Shadow, grpc),
    )
    .await;
    let took = start.elapsed();
    let (status, answer) = match fetched {
        Fetched::Answer { status, body, .. } => (status, body),
        Fetched::Failed { error, .. } => {
            stats.failed.fetch_add(1, Relaxed);
            handles.failed.increment(1);
            tracing::debug!(model, version = vname, %error, "shadow copy failed");
            return;
        }
    };
    stats.answered.fetch_add(1, Relaxed);
    stats.shadow_us.fetch_add(took.as_micros() as u64, Relaxed);
    stats
        .primary_us
        .fetch_add(primary.elapsed.as_micros() as u64, Relaxed);
    handles.duration.record(took.as_secs_f64());
    if status != primary.status {
        stats.status_differs.fetch_add(1, Relaxed);
        handles.status_differs.increment(1);
        return;
    }
    let agree = match &rule.compare {
        Compare::Status => true,
        Compare::Exact => !capture.truncated && capture.body == answer[..],
        Compare::Label(ptr) => {
            let label = |b: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v.pointer(ptr).cloned())
            };
            let mine = label(&capture.body);
            !capture.truncated && mine.is_some() && mine == label(&answer)
        }
    };
    if agree {
        stats.agree.fetch_add(1, Relaxed);
        handles.agree.increment(1);
    } else {
        stats.disagree.fetch_add(1, Relaxed);
        handles.disagree.increment(1);
    }
}
