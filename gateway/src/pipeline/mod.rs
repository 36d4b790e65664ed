//! The request path, top to bottom. [`serve`] calls the stages in order:
//!
//! ```text
//! own endpoints (readiness id, discovery and health, jobs API, gRPC server methods)
//!   → route match → body → classify → admit → cache → decide
//!   → answer from the cache | enqueue (202) | send upstream and relay the answer
//!   → record (metrics, status page, billing, access log, decision log)
//! ```
//!
//! Each stage is a function of the request and the one snapshot it loaded at its start
//! (`classify`, `admit`, `cache`, `route`, `queue`, `upstream`); a refusal anywhere is one
//! `GatewayError`, answered in one place ([`answer::error`]). Only [`answer`] writes to the
//! client. Whatever happened, [`record::finish`] turns the request's state into its one
//! record.
//!
//! The pipeline runs on pingora-core's server: [`Gateway`] is an `HttpServerApp`, which owns
//! the session (read the request, stream the answer, hand the connection back for
//! keep-alive) without pingora-proxy's `ProxyHttp` machinery (its per-request future box, its
//! request and header bookkeeping), which the gateway no longer used once the upstream
//! attempt was its own (`upstream`). `docs/performance.md` has both figures.

mod answer;
pub mod body;
pub mod ready;
mod record;

use crate::admit::{self, Limiter, Ticket};
use crate::cache::{Cache, CacheCtx, Lookup};
use crate::classify::{self, Class, RequestFacts};
use crate::error::GatewayError;
use crate::grpc::codec::Method;
use crate::observe::decision::DecisionLog;
use crate::observe::AccessLog;
use crate::policy::raw::Protocol;
use crate::queue::{self, Queue};
use crate::rollout::Rollouts;
use crate::route::{self, tokens::Meter, Decision, Reason};
use crate::serving::state::now_ms;
use crate::serving::{Serving, Snapshot};
use crate::upstream::shadow::{self, Shadows};
use crate::upstream::{self, request::Prepared, Outbound, Trail};
use async_trait::async_trait;
use body::{BodyBudget, BodyLimits, BodyPermit};
use bytes::Bytes;
use http::HeaderMap;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Status recorded for a request whose client closed the connection before it was answered
/// (nginx's convention; never sent, only counted and logged).
pub const CLIENT_CLOSED: u16 = 499;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The gateway's proxy service.
pub struct Gateway {
    snapshot: Snapshot,
    /// The batch queue, when the policy has one at start-up.
    queue: Option<Arc<Queue>>,
    /// The prediction cache (built once, survives reloads).
    cache: Option<Arc<Cache>>,
    /// Request-body bytes held by all requests in flight.
    bodies: Arc<BodyBudget>,
    /// The access log's queue to its writer thread (`None`: off).
    access: Option<AccessLog>,
    /// The decision log's queue to its writer thread (`None`: off).
    decisions: Option<DecisionLog>,
    /// The trace exporter's queue (used while the policy has `observe.traces`).
    traces: crate::trace::Tracer,
    /// Live tenant limit state (rate, concurrency, spend), beside the snapshot.
    limiter: Arc<Limiter>,
    /// h2c on the plain listener (prior knowledge), as gRPC clients need.
    options: HttpServerOptions,
    /// Shadow traffic's counters (`upstream::shadow`), beside the snapshot.
    shadows: Arc<Shadows>,
    /// Rollouts' live state (`rollout`), beside the snapshot.
    rollouts: Arc<Rollouts>,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Self {
        // The upstream connectors load the system's CA certificates when they are built:
        // built here, so that no request (and no endpoint's latency estimate) pays for it.
        upstream::connect::connectors();
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Gateway {
            traces: crate::trace::Tracer::new(snapshot.clone()),
            snapshot,
            queue: None,
            cache: None,
            bodies: BodyBudget::new(),
            access: None,
            decisions: None,
            limiter: Limiter::local(),
            options,
            shadows: Shadows::new(),
            rollouts: Rollouts::new(),
        }
    }

    /// Write one access log line per request to `log` (off the request path).
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access = log;
        self
    }

    /// Write one decision log line per request to `log` (off the request path).
    pub fn with_decision_log(mut self, log: Option<DecisionLog>) -> Self {
        self.decisions = log;
        self
    }

    /// Enforce tenant limits with `limiter` (shared through Redis when it has a backend).
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Keep rollouts' state in `rollouts` (shared through Redis when it has a backend).
    pub fn with_rollouts(mut self, rollouts: Arc<Rollouts>) -> Self {
        self.rollouts = rollouts;
        self
    }

    /// Rollouts' state (the admin listener reports and commands them).
    pub fn rollouts(&self) -> Arc<Rollouts> {
        self.rollouts.clone()
    }

    /// Shadow traffic's counters (the admin listener reports them).
    pub fn shadows(&self) -> Arc<Shadows> {
        self.shadows.clone()
    }

    /// The request-body budget (the admin listener exports how much of it is held).
    pub fn body_budget(&self) -> Arc<BodyBudget> {
        self.bodies.clone()
    }

    /// The trace exporter's handle (the server flushes it at shutdown).
    pub fn tracer(&self) -> crate::trace::Tracer {
        self.traces.clone()
    }

    /// Answer repeat predictions from `cache` and store new ones in it.
    pub fn with_cache(mut self, cache: Option<Arc<Cache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Accept queued work into `queue` and serve the jobs API from it.
    pub fn with_queue(mut self, queue: Option<Arc<Queue>>) -> Self {
        self.queue = queue;
        self
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A keep-alive connection waiting for its next request is closed at shutdown.
        let mut stopping = shutdown.clone();
        if *stopping.borrow() {
            session.set_keepalive(None);
        }
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            _ = stopping.changed() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // A request the HTTP parser refuses: 400 with a JSON body, then close.
                if matches!(e.etype(), pingora::ErrorType::InvalidHTTPHeader) {
                    let err = GatewayError::BodyRead(format!("malformed request: {e}"));
                    let reply = answer::error_reply(&err, false, &self.snapshot.load());
                    let reply = reply.with(http::header::CONNECTION, "close");
                    session.set_keepalive(None);
                    let _ = answer::reply(&mut session, reply, |_| {}).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // Boxed: the pipeline's future is large and this one is moved into Pingora's box per
        // request; a pointer keeps that move small (and `in_box` builds it in place).
        let reusable = in_box!(serve(self, &mut session)).await;
        if !reusable {
            session.shutdown().await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// What every request has, from its start to its record, and what it became.
pub(crate) struct Request {
    pub start: Instant,
    /// The one snapshot the request reads: a reload mid-request never changes its rules.
    pub table: Arc<Serving>,
    /// `content-type: application/grpc*`: errors are gRPC statuses.
    pub grpc: bool,
    pub class: Option<Class>,
    pub decision: Option<Decision>,
    /// The upstream attempts, when it went upstream.
    pub trail: Option<Trail>,
    /// What the prediction cache did, and a response being captured for it.
    pub cache: CacheCtx,
    /// The request body's bytes in the gateway's body budget (given back on drop).
    pub permit: Option<BodyPermit>,
    /// The tenant's hold on its limits (concurrency slot given back on drop).
    pub ticket: Option<Ticket>,
    /// The answer's token usage, for pools priced per token (`route::tokens`).
    pub tokens: Option<Meter>,
    /// How it was answered.
    pub answered: Answered,
    /// Bytes of the upstream answer's body relayed (egress, the pool's average).
    pub answer_bytes: u64,
    /// A streamed answer's clock: first and last event relayed, events counted.
    pub stream: Option<StreamClock>,
    /// Meter the tokens of every OpenAI answer, not only a per-token pool's: the decision
    /// log is on, and its `tokens` let `simulate --trace` price a token-billed pool.
    pub record_tokens: bool,
    /// The status it counts as (a gRPC error's HTTP equivalent; 499 for a client gone).
    pub status: u16,
    /// Why it failed, for the access log.
    pub error: Option<String>,
    /// Its place in a trace, when the policy has `observe.traces`.
    pub trace: Option<crate::trace::TraceContext>,
    /// A request mirrored to a shadow version: the client's answer captured for comparing.
    pub shadow: Option<shadow::Capture>,
}

/// When a streamed answer's events were relayed: the first (the time to first token), the
/// last, and how many (Server-Sent Events `data:` lines other than `[DONE]`; a stream that
/// is not SSE counts its chunks), for its time per output token.
#[derive(Debug, Default)]
pub(crate) struct StreamClock {
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub events: u32,
}

impl StreamClock {
    fn on_chunk(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        let data = chunk.windows(5).filter(|w| *w == b"data:").count() as u32;
        let done = chunk.windows(6).filter(|w| *w == b"[DONE]").count() as u32;
        self.events += if data == 0 {
            1
        } else {
            data.saturating_sub(done)
        };
    }

    /// The mean gap between events after the first (`None` below two events).
    pub fn per_token(&self) -> Option<std::time::Duration> {
        let (first, last) = (self.first?, self.last?);
        (self.events >= 2).then(|| last.duration_since(first) / (self.events - 1))
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// By the gateway itself: its own endpoints, a refusal, an error.
    Gateway,
    /// From the prediction cache (a hit, or an identical request's answer).
    Cache,
    /// Stored as a job (`202`).
    Queue,
    /// By a backend.
    Upstream,
}

impl Request {
    fn new(table: Arc<Serving>, grpc: bool) -> Request {
        Request {
            start: Instant::now(),
            table,
            grpc,
            class: None,
            decision: None,
            trail: None,
            cache: CacheCtx::default(),
            permit: None,
            ticket: None,
            tokens: None,
            answered: Answered::Gateway,
            answer_bytes: 0,
            stream: None,
            record_tokens: false,
            status: 0,
            error: None,
            trace: None,
            shadow: None,
        }
    }

    /// What the decision headers say.
    fn stamp(&self) -> answer::Stamp<'_> {
        let trail = self.trail.as_ref();
        answer::Stamp {
            table: &self.table,
            class: self.class.as_ref(),
            decision: trail.map(|t| &t.decision).or(self.decision.as_ref()),
            target: trail.and_then(|t| t.tried.last().copied()),
            attempts: trail.map_or(0, |t| t.tried.len()),
        }
    }

    /// The upstream answer's header is about to go to the client: the cache decides whether
    /// to capture it, the token meter starts for a pool priced per token, a tenant with
    /// `tokens_per_minute`, or any OpenAI answer while something records tokens (the
    /// decision log, a sampled span), and a gRPC status in the header counts as its HTTP
    /// equivalent (never stored).
    fn on_response_header(&mut self, resp: &ResponseHeader) {
        self.status = resp.status.as_u16();
        let target = self.trail.as_ref().and_then(|t| t.tried.last().copied());
        if let Some((p, _)) = target {
            let logged = self.record_tokens
                && self.class.as_ref().is_some_and(|c| {
                    self.table.routes[c.route as usize].protocol == Protocol::OpenAi
                });
            let metered = self.table.pools[p as usize].pricing.per_token()
                || self.ticket.as_ref().is_some_and(|t| t.meters_tokens());
            if (metered || logged) && resp.status.is_success() {
                let ct = resp.headers.get(http::header::CONTENT_TYPE);
                let ct = ct.map_or(&b""[..], |v| v.as_bytes());
                let bytes = self.permit.as_ref().map_or(0, |p| p.bytes()) as usize;
                self.tokens = Some(Meter::new(ct, bytes));
            }
        }
        if resp.status.is_success() && self.class.as_ref().is_some_and(|c| c.streaming) {
            self.stream = Some(StreamClock::default());
        }
        self.cache.on_response_header(resp, &self.table);
        if let Some(code) = resp.headers.get("grpc-status").filter(|_| self.grpc) {
            if let Some(status) = crate::grpc::http_equivalent(code.as_bytes()) {
                self.status = status;
            }
            self.cache.abandon();
        }
    }

    /// A piece of the answer's body on its way to the client: the cache's capture and the
    /// token meter see it.
    fn on_body(&mut self, chunk: Option<&Bytes>, end: bool) {
        if let Some(chunk) = chunk {
            self.answer_bytes += chunk.len() as u64;
            if let Some(clock) = self.stream.as_mut() {
                clock.on_chunk(chunk);
            }
        }
        self.cache.on_body(&chunk.cloned(), end);
        if let (Some(meter), Some(chunk)) = (self.tokens.as_mut(), chunk) {
            meter.on_body(chunk);
        }
        if let (Some(capture), Some(chunk)) = (self.shadow.as_mut(), chunk) {
            capture.on_body(chunk);
        }
    }

    /// The answer's trailers: a gRPC answer ends in them, and only `grpc-status: 0` completes
    /// a cache entry.
    fn on_trailers(&mut self, trailers: &HeaderMap) {
        if !self.grpc {
            self.cache.on_body(&None, true);
            return;
        }
        let status = trailers.get("grpc-status").map(|v| v.as_bytes());
        match status {
            Some(b"0") => self.cache.on_body(&None, true),
            _ => {
                self.cache.abandon();
                if let Some(s) = status.and_then(crate::grpc::http_equivalent) {
                    self.status = s;
                }
            }
        }
    }
}

/// Serve one request and record it. Returns whether the connection may be kept for the next
/// one.
async fn serve(gw: &Gateway, session: &mut ServerSession) -> bool {
    if session.req_header().uri.path() == ready::PATH {
        // The readiness self-check (`admin::ready`): which process holds this port. Not
        // traffic: nothing is recorded.
        return crate::cold(|| answer::reply(session, ready::reply(), |_| {}))
            .await
            .is_ok();
    }
    let table = gw.snapshot.load_full();
    let grpc = crate::grpc::codec::is_grpc_content_type(
        session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    );
    let mut req = Request::new(table, grpc);
    if let Some(traces) = &req.table.traces {
        let parent = session.req_header().headers.get(TRACEPARENT);
        req.trace = Some(crate::trace::TraceContext::start(
            parent,
            traces.sample_ratio,
        ));
    }
    // Tokens of every OpenAI answer, not only a per-token pool's, when something records
    // them: the decision log, or a sampled span (`gen_ai.usage.*`).
    req.record_tokens = gw.decisions.is_some() || req.trace.as_ref().is_some_and(|t| t.sampled);
    let outcome = stages(gw, session, &mut req).await;
    let reusable = match outcome {
        Ok(()) => true,
        Err(Ended::Refused(err)) => {
            req.status = err.status();
            req.error = Some(err.to_string());
            // (Boxed, as every path most requests do not take: it keeps the request's future,
            // which is moved into a box per request, small.)
            if let Err(e) = crate::cold(|| answer::error(session, &req, &err)).await {
                tracing::debug!(error = %e, "could not write the error answer");
            }
            true
        }
        Err(Ended::ClientGone(why)) => {
            req.status = CLIENT_CLOSED;
            req.error = Some(why);
            false
        }
        Err(Ended::Broken(e)) => {
            // The answer had started: the client sees the connection end early.
            if req.status == 0 {
                req.status = 502;
            }
            req.error = Some(e.to_string());
            false
        }
    };
    record::finish(gw, session, req);
    reusable && session.response_written().is_some()
}

/// How a request ended before its answer was complete.
enum Ended {
    /// A refusal or error, answered with its status and body.
    Refused(GatewayError),
    /// The client closed its connection before the answer: nothing can be sent.
    ClientGone(String),
    /// Writing the answer failed after it started.
    Broken(Box<pingora::Error>),
}

impl From<GatewayError> for Ended {
    fn from(e: GatewayError) -> Self {
        Ended::Refused(e)
    }
}

impl From<Box<pingora::Error>> for Ended {
    fn from(e: Box<pingora::Error>) -> Self {
        Ended::Broken(e)
    }
}

/// The stages, in order.
async fn stages(gw: &Gateway, session: &mut ServerSession, req: &mut Request) -> Result<(), Ended> {
    let table = req.table.clone();

    // The gateway's own endpoints answer before route matching: each protocol's discovery
    // and health (`/v1/models`, `/v2/health/*`, `/v2`), the jobs API, the gRPC server
    // methods.
    let own = match crate::discovery::reply(session.req_header(), &table) {
        Some(reply) => Some(reply),
        None => match &gw.queue {
            Some(queue) => {
                crate::cold(|| queue::api::reply(session.req_header(), queue, &table)).await
            }
            None => None,
        },
    };
    let own = own.or_else(|| grpc_server_reply(session, req));
    if let Some(reply) = own {
        req.status = reply.status;
        if reply.is_trailers_only() || reply.trailers.is_some() {
            // (The gRPC server methods' empty request is read so the stream closes cleanly.)
            crate::cold(|| body::linger(session)).await;
        }
        crate::cold(|| answer::reply(session, reply, |_| {})).await?;
        return Ok(());
    }

    // Route, then the body (bounded by the route's limit and the gateway's memory for
    // bodies), then classification.
    let route_id = table
        .match_route(session.req_header().uri.path())
        .ok_or_else(|| GatewayError::NoRoute(truncate(session.req_header().uri.path(), 200)))?;
    let route = &table.routes[route_id as usize];
    let limits = BodyLimits {
        max_body: route.max_body,
        budget: &gw.bodies,
        max_buffered: table.limits.max_buffered_bytes,
    };
    let body = body::read(session, &limits, &mut req.permit).await?;
    let peer = peer_ip(session).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let header = session.req_header();
    let facts = RequestFacts {
        peer,
        method: &header.method,
        path: header.uri.path(),
        headers: &header.headers,
        body: Some(&body),
    };
    let mut class = classify::classify(&facts, route_id, &table).map_err(GatewayError::from)?;
    if table.gateway_region.is_some() && !table.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        // The client connected directly: its own connection's round trip is the client →
        // gateway term of the estimate (one getsockopt, only for regional instances).
        class.client_rtt = downstream_rtt(session);
    }
    if class.version_key.is_some() {
        // A rolled-out model: the canary's share of this step decides the version.
        gw.rollouts.steer(&table, &mut class);
    }
    // Held by the request from here on (its record and decision headers read it).
    let class = req.class.insert(class);

    // Authentication, rate, tokens and concurrency: before the cache (a limited caller gets
    // no hits).
    admit::check(&gw.limiter, &table, class, body.len(), &mut req.ticket).await?;

    // The cache is looked up before deciding, so that a hit is answered even when no pool
    // could take the request now (the decision is still made, for the spend avoided).
    let mut lookup = look_up(gw, session, class, &table, &body).await;
    if !lookup.is_hit() {
        // The daily budget: only requests that will cost something (hits are free); may
        // move the request to the tenant's downgrade tier.
        admit::spend(req.ticket.as_ref(), &table, class)?;
    }
    let mut decision = decide(class, &table, lookup.is_hit());
    if decision.reason == Reason::NoCandidate
        && !lookup.is_hit()
        && gw.rollouts.on_canary(&table, class)
        && route::version_unservable(class, &table, now_ms())
    {
        // A canary with no pool up (`rollout`'s module docs): charged one error, and the
        // request goes to the stable version, looked up in the cache under that version
        // (the canary's lookup let go: a leader's waiters go upstream themselves).
        gw.rollouts.canary_unservable(&table, class);
        drop(lookup);
        lookup = crate::cold(|| look_up(gw, session, class, &table, &body)).await;
        decision = decide(class, &table, lookup.is_hit());
    }
    req.decision = Some(decision);
    if !lookup.is_hit() {
        // Demand for the capacity meter (an atomic add; wakes KEDA if the pool is at zero).
        if let Some((pool, _)) = decision.target {
            crate::capacity::arrive(&table, pool);
        }
        if let Some(pool) = decision.wake {
            crate::capacity::displaced(&table, pool);
        }
    }

    // A hit, or the answer of an identical request in flight, is served before any upstream
    // work; waiters wait at most the tier's upstream timeout.
    let bound = table.tiers[class.tier as usize].timeout;
    if let Some(entry) = req.cache.settle(lookup, bound).await {
        let saved = answer::estimated_cost(&decision);
        record::saved(&table, class, saved);
        req.status = entry.status;
        req.answered = Answered::Cache;
        crate::cold(|| answer::cache_hit(session, req, &entry, saved)).await?;
        return Ok(());
    }
    refuse(class, &table, &decision)?;

    // A batch pool or `on_slo_miss: queue`: stored durably, answered 202.
    if let Some(queue) = gw
        .queue
        .as_ref()
        .filter(|_| class.inference && !req.grpc && queue::api::takes(&table, &decision))
    {
        let reply = crate::cold(|| {
            queue::api::enqueue(session.req_header(), queue, &table, class, &decision, body)
        })
        .await?;
        req.status = reply.status;
        req.answered = Answered::Queue;
        if let Err(e) = crate::cold(|| answer::reply(session, reply, |_| {})).await {
            // The job is stored either way; the client can retry with its idempotency key.
            tracing::debug!(error = %e, "could not write the 202");
        }
        return Ok(());
    }

    // Upstream: the attempts, while watching for the client hanging up.
    let grpc_route = req.grpc && route.protocol == Protocol::OipV2Grpc;
    let prepared = Prepared::new(
        session.req_header(),
        body.len(),
        grpc_route,
        Some(peer),
        class.tenant.is_some(),
    )
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let (mut prepared, body) = for_version(&table, class, route.protocol, prepared, body)?;
    if let Some(trace) = &req.trace {
        // The backend's parent is the gateway's span (`tracestate` passes as it came).
        prepared
            .set_header(TRACEPARENT, trace.traceparent())
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
    }
    let mut out = Outbound {
        table: &table,
        class,
        request: prepared,
        body,
        grpc: grpc_route,
        start: req.start,
    };
    let sent = {
        let trail = req.trail.insert(Trail::new(decision));
        let hung_up = session.read_body_or_idle(true);
        tokio::select! {
            biased;
            sent = upstream::send(&mut out, trail) => sent,
            gone = hung_up => {
                // (HTTP/1 reports a closed socket, HTTP/2 a reset stream: both are a client
                // gone, so both end as its 499.)
                let why = match gone {
                    Err(e) => format!("the client hung up before the answer: {e}"),
                    Ok(_) => "the client hung up before the answer".to_string(),
                };
                return Err(Ended::ClientGone(why));
            }
        }
    };
    let answer = sent?;
    req.answered = Answered::Upstream;
    // A request mirrored to a shadow version: the copy leaves once the client's answer is
    // written, detached (`upstream::shadow`).
    // (Only a split model's request is looked at: one branch for every other.)
    let mirror = match out
        .class
        .version
        .and_then(|_| gw.shadows.sample(&table, out.class))
    {
        Some(capture) => {
            req.shadow = Some(capture);
            Some((out.class.clone(), out.body.clone()))
        }
        None => None,
    };
    answer::relay(session, req, answer).await?;
    if let (Some((class, body)), Some(capture)) = (mirror, req.shadow.take()) {
        let primary = shadow::Primary {
            status: req.status,
            elapsed: req.start.elapsed(),
        };
        let header = session.req_header().clone();
        gw.shadows
            .spawn(capture, table.clone(), class, header, body, primary);
    }
    Ok(())
}

/// The prediction cache's lookup for `class` (`Bypass` without a cache).
async fn look_up(
    gw: &Gateway,
    session: &ServerSession,
    class: &Class,
    table: &Serving,
    body: &Bytes,
) -> Lookup {
    match &gw.cache {
        Some(cache) => {
            let header = session.req_header();
            let target = header
                .uri
                .path_and_query()
                .map_or(header.uri.path(), |pq| pq.as_str());
            cache
                .lookup(class, table, target, &header.headers, Some(body))
                .await
        }
        None => Lookup::Bypass,
    }
}

/// A split model's version as its backend knows it: the OpenAI body's `model`, or the OIP
/// v2 / TF-Serving path's model and version segments (`upstream::request`), or the gRPC
/// message's `model_name` / `model_version` fields (`grpc::codec::with_model`), rewritten.
fn for_version(
    table: &Serving,
    class: &Class,
    protocol: Protocol,
    mut prepared: Prepared,
    body: Bytes,
) -> Result<(Prepared, Bytes), GatewayError> {
    let Some((split, v)) = class.version else {
        return Ok((prepared, body));
    };
    let version = &table.splits[split as usize].versions[v as usize];
    let internal = |e: Box<pingora::Error>| GatewayError::Internal(e.to_string());
    match protocol {
        Protocol::OpenAi => match version.upstream_model.as_deref() {
            Some(model) if model != class.model => {
                let Some(rewritten) = upstream::request::version_body(&body, model) else {
                    return Ok((prepared, body));
                };
                prepared.set_len(rewritten.len()).map_err(internal)?;
                Ok((prepared, rewritten))
            }
            _ => Ok((prepared, body)),
        },
        Protocol::OipV2 | Protocol::TfServing => {
            let prefix = if protocol == Protocol::OipV2 {
                "/v2/models/"
            } else {
                "/v1/models/"
            };
            let path = upstream::request::version_path(
                prepared.path_and_query(),
                prefix,
                version.upstream_model.as_deref(),
                version.upstream_version.as_deref(),
            );
            if let Some(path) = path {
                prepared.set_path(&path).map_err(internal)?;
            }
            Ok((prepared, body))
        }
        Protocol::OipV2Grpc => {
            // `ModelInferRequest` (and the metadata calls' `ModelRef`): field 1 the name,
            // field 2 the version; the message framed again with its new length.
            let rewritten = crate::grpc::codec::with_model(
                &body,
                version
                    .upstream_model
                    .as_deref()
                    .filter(|m| *m != class.model),
                version.upstream_version.as_deref(),
            )
            .map_err(|e| GatewayError::BadRequest(e.into()))?;
            match rewritten {
                Some(rewritten) => {
                    prepared.set_len(rewritten.len()).map_err(internal)?;
                    Ok((prepared, rewritten))
                }
                None => Ok((prepared, body)),
            }
        }
    }
}

/// The decision for `class` now. A request the tier would shed goes to a pool kept out only
/// by a stale estimate, as its probe ([`route::probe_instead_of_shed`]); a cache hit takes
/// no probe.
fn decide(class: &Class, table: &Serving, hit: bool) -> Decision {
    let now = now_ms();
    let decision = route::decide(class, table, &[], now);
    if !hit && decision.reason == Reason::Shed {
        if let Some(probe) = route::probe_instead_of_shed(class, table, now) {
            return probe;
        }
    }
    decision
}

/// A decision that sends the request nowhere is a refusal: shed, overloaded, no candidate.
fn refuse(class: &Class, table: &Serving, decision: &Decision) -> Result<(), GatewayError> {
    let tier = &table.tiers[class.tier as usize];
    match decision.reason {
        Reason::Shed => Err(GatewayError::Shed {
            tier: tier.name.clone(),
            deadline_ms: class.deadline.as_millis(),
        }),
        Reason::Overloaded => Err(GatewayError::Overloaded {
            tier: tier.name.clone(),
        }),
        Reason::NoCandidate => Err(GatewayError::NoCandidate {
            model: class.model.clone(),
            tier: tier.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// The gRPC server methods (`ServerLive`, `ServerReady`, `ServerMetadata`) of a path whose
/// route is `oip-v2-grpc`, answered without a pool.
fn grpc_server_reply(session: &ServerSession, req: &Request) -> Option<crate::reply::Reply> {
    if !req.grpc {
        return None;
    }
    let table = &req.table;
    let path = session.req_header().uri.path();
    let method = Method::from_path(path).filter(|m| m.is_server())?;
    let grpc_route = table
        .match_route(path)
        .is_some_and(|r| table.routes[r as usize].protocol == Protocol::OipV2Grpc);
    let body = crate::grpc::server_answer(method, table).filter(|_| grpc_route)?;
    Some(
        crate::reply::Reply::grpc_ok(body)
            .with(answer_names::POLICY_VERSION, table.version_header.clone()),
    )
}

mod answer_names {
    pub const POLICY_VERSION: http::HeaderName =
        http::HeaderName::from_static("x-switchyard-policy-version");
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The kernel's smoothed round-trip time of the downstream TCP connection (`tcpi_rtt`, µs),
/// through Pingora's socket digest; `None` when not TCP or not yet measured.
fn downstream_rtt(session: &ServerSession) -> Option<Duration> {
    let info = session.digest()?.socket_digest.as_ref()?.tcp_info()?;
    (info.tcpi_rtt > 0).then(|| Duration::from_micros(info.tcpi_rtt as u64))
}

fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
