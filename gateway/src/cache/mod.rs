//! The prediction cache: a repeat prediction is answered from memory and costs no GPU time.
//!
//! ```text
//! classify ─▶ lookup ──hit──────────────▶ answer (stored status, body, content headers, Age)
//!               │ in flight ─▶ wait ─────▶ answer (`coalesced`), or go upstream if the leader fails
//!               │ miss ─▶ lead ─▶ route ─▶ proxy ─▶ capture (2xx, complete, within limits) ─▶ store
//!               └ not eligible (`bypass`) ─▶ route ─▶ proxy
//! ```
//!
//! - [`key`]: what makes two requests the same question (scope, route, model and versions,
//!   canonical JSON body), hashed with BLAKE3.
//! - [`store`]: the moka store, bounded by bytes, per-entry TTL, optional idle timeout.
//! - [`coalesce`]: single flight for concurrent identical misses.
//! - [`shared`]: the optional L2 in Redis (`cache.shared`), shared by gateway instances: the
//!   leader of an L1 miss looks there before going upstream; stored answers go to both.
//!
//! Eligibility comes from classification (`Class::cacheable`: the route has a `cache:` block,
//! POST, body read, deterministic, not streaming, no client `no-store`). A client
//! `Cache-Control: no-cache` (or `Pragma: no-cache`) skips the read but lets the fresh answer
//! replace the entry. Upstream `no-store`, `no-cache`, `private` or `Set-Cookie`, a
//! `max-age`/`s-maxage` of 0, a non-2xx status, an event stream, a `Content-Encoding`, a body
//! over `cache.max_entry_bytes` or one that did not arrive complete: not stored.
//!
//! Invalidation. TTL (the route's `ttl`, or the upstream `s-maxage`/`max-age` if shorter).
//! A model's version in the policy (`models:`) is part of the key, so a bump makes old entries
//! unreachable by construction; they age out. Purges never scan on the request path: *all*
//! bumps a global epoch folded into every key and calls moka's `invalidate_all` (O(1); memory
//! comes back at the next bookkeeping); *model* bumps that model's generation, also folded
//! into its keys (an `ArcSwap` map read once per lookup), and then walks the store on the
//! admin task to free the unreachable entries — chosen over moka's `invalidate_entries_if`,
//! whose registered predicates every read would have to evaluate until the scan finishes;
//! *key* removes one entry. A response in flight during a purge is stored under the old
//! epoch or generation, so it is unreachable too.
//!
//! The cache is built once at start-up and survives policy reloads: `max_bytes` and `idle`
//! take a restart; `max_entry_bytes`, per-route rules and model versions apply on reload.

pub mod coalesce;
pub mod key;
pub mod shared;
pub mod store;

use crate::classify::{self, Class};
use crate::policy::compile::{CacheScope, CacheSettings, RoutingTable};
use crate::telemetry as t;
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use coalesce::{Flights, Join, LeaderGuard, Waiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use key::{BodyForm, CacheKey, DigestMemo, KeyParts, Scope};
use pingora::http::ResponseHeader;
use pingora::OrErr as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use store::Stored;

/// The response header saying what the cache did.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-cache");
/// The response header carrying the entry's key, for `POST /admin/cache/purge {"key": …}`.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-cache-key");

/// The prediction cache: store, flights in progress, purge generations.
pub struct Cache {
    store: store::Store,
    flights: Arc<Flights>,
    /// Bumped by `purge all`; part of every key.
    epoch: AtomicU64,
    /// Per model, bumped by `purge model`; part of that model's keys. Read with one atomic
    /// load per lookup; replaced whole (copy on write) by purges, which are rare.
    generations: ArcSwap<HashMap<String, u64>>,
    /// The L2 shared by instances (`cache.shared`), if any.
    l2: Option<Arc<shared::L2>>,
    /// Body digests of recent requests, by their bytes (`key::DigestMemo`).
    memo: DigestMemo,
}

/// What the lookup found.
pub enum Lookup {
    /// Not eligible: proxied, nothing stored.
    Bypass,
    Hit(Arc<Stored>),
    /// An identical request is in flight: wait for it.
    Wait(Pending, Waiter),
    /// Go upstream; the response may be stored (and, for a leader, handed to waiters).
    Miss(Pending),
}

impl Lookup {
    /// Whether the request is answered without an upstream, whatever routing would say.
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }
}

/// What a miss needs to store its response later.
pub struct Pending {
    cache: Arc<Cache>,
    key: CacheKey,
    ttl: Duration,
    model: String,
    generation: u64,
    leader: Option<LeaderGuard>,
}

/// What the cache did with a request, as reported in `x-switchyard-cache` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
    Coalesced,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Coalesced => "coalesced",
        }
    }
}

/// Per-request cache state, carried in the proxy's context across Pingora's phases.
#[derive(Default)]
pub struct CacheCtx {
    pub outcome: Option<Outcome>,
    key: Option<CacheKey>,
    pending: Option<Pending>,
    capture: Option<Capture>,
}

/// A response being captured for the store.
struct Capture {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    ttl: Duration,
    max: usize,
    declared: Option<usize>,
    body: BytesMut,
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    All,
    Model(String),
    Key(CacheKey),
}

impl Cache {
    pub fn new(settings: &CacheSettings) -> Arc<Cache> {
        Arc::new(Cache {
            store: store::Store::new(settings.max_bytes, settings.idle),
            flights: Arc::new(Flights::default()),
            epoch: AtomicU64::new(0),
            generations: ArcSwap::from_pointee(HashMap::new()),
            l2: settings
                .shared
                .as_ref()
                .and_then(|s| match shared::L2::new(s) {
                    Ok(l2) => Some(Arc::new(l2)),
                    Err(e) => {
                        tracing::error!(error = %e, "cache.shared unusable; L1 only");
                        None
                    }
                }),
            // A sixteenth of the store's bound for the bodies behind its keys (4 MiB by
            // default: ~4,000 1 KB prompts).
            memo: DigestMemo::new(usize::try_from(settings.max_bytes / 16).unwrap_or(usize::MAX)),
        })
    }

    /// The key of a classified request, if it may use the cache at all.
    pub fn key_for(
        &self,
        class: &Class,
        table: &RoutingTable,
        target: &str,
        body: &[u8],
    ) -> Option<(CacheKey, u64)> {
        let route = &table.routes[class.route as usize];
        let rule = route.cache.as_ref()?;
        let scope = match (rule.scope, class.tenant, &class.credential) {
            (CacheScope::Shared, _, _) => Scope::Shared,
            (CacheScope::Tenant, Some(t), _) => Scope::Tenant(&table.tenants[t as usize].name),
            (CacheScope::Tenant, None, Some(digest)) => Scope::Credential(digest),
            (CacheScope::Tenant, None, None) => Scope::Anonymous,
        };
        let generation = self
            .generations
            .load()
            .get(class.model.as_str())
            .copied()
            .unwrap_or(0);
        let parts = KeyParts {
            epoch: self.epoch.load(Ordering::Acquire),
            generation,
            scope,
            route: &route.name,
            target,
            model: &class.model,
            path_version: class.model_version.as_deref(),
            // A split model's version, else the version the policy declares.
            policy_version: match class.version {
                Some((s, v)) => Some(table.splits[s as usize].versions[v as usize].name.as_str()),
                None => table
                    .model_versions
                    .get(class.model.as_str())
                    .map(String::as_str),
            },
        };
        // Protobuf has no canonical text form here: a gRPC message is keyed by its bytes.
        let form = if route.protocol == crate::policy::raw::Protocol::OipV2Grpc {
            BodyForm::Raw
        } else {
            BodyForm::Json
        };
        let digest = self.memo.digest(body, form).ok()?;
        Some((key::compute_with(&parts, &digest), generation))
    }

    /// Look a classified request up. `target` is its path and query.
    pub async fn lookup(
        self: &Arc<Self>,
        class: &Class,
        table: &RoutingTable,
        target: &str,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Lookup {
        let (Some(rule), true, Some(body)) = (
            table.routes[class.route as usize].cache.as_ref(),
            class.cacheable,
            body,
        ) else {
            return Lookup::Bypass;
        };
        let Some((key, generation)) = self.key_for(class, table, target, body) else {
            return Lookup::Bypass;
        };
        let pending = |leader| Pending {
            cache: self.clone(),
            key,
            ttl: rule.ttl,
            model: class.model.clone(),
            generation,
            leader,
        };
        if classify::client_no_cache(headers) {
            // Skip the read; the fresh answer refreshes the entry.
            return Lookup::Miss(pending(None));
        }
        if let Some(hit) = self.store.get(&key).await {
            return Lookup::Hit(hit);
        }
        match self.flights.join(key, || self.store.contains(&key)) {
            Join::Done(entry) => Lookup::Hit(entry),
            Join::Waiter(w) => Lookup::Wait(pending(None), w),
            Join::Leader(guard) => match &self.l2 {
                // The leader looks in the L2 (bounded by its timeout) while its waiters wait.
                Some(l2) => match l2.get(&class.model, &key, generation).await {
                    Some(entry) => {
                        let landed = guard.complete(entry.clone());
                        self.store.insert(key, entry.clone()).await;
                        landed.done();
                        Lookup::Hit(entry)
                    }
                    None => Lookup::Miss(pending(Some(guard))),
                },
                None => Lookup::Miss(pending(Some(guard))),
            },
            Join::Stored => match self.store.get(&key).await {
                Some(hit) => Lookup::Hit(hit),
                // Expired or purged in between: go upstream without leading.
                None => Lookup::Miss(pending(None)),
            },
        }
    }

    /// Purge entries. Returns how many entries were removed when that is known at once.
    pub async fn purge(&self, what: &Purge) -> Option<usize> {
        match what {
            Purge::All => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.store.invalidate_all();
                if let Some(l2) = &self.l2 {
                    l2.purge(None, None).await;
                }
                None
            }
            Purge::Model(model) => {
                let mut next = 0;
                self.generations.rcu(|map| {
                    let mut map = HashMap::clone(map);
                    let g = map.entry(model.clone()).or_insert(0);
                    *g += 1;
                    next = *g;
                    map
                });
                if let Some(l2) = &self.l2 {
                    l2.purge(Some(model), None).await;
                }
                Some(self.store.invalidate_model(model, next).await)
            }
            Purge::Key(key) => {
                if let Some(l2) = &self.l2 {
                    l2.purge(None, Some(key)).await;
                }
                Some(usize::from(self.store.invalidate(key).await))
            }
        }
    }

    /// Run the store's pending bookkeeping, so sizes are exact.
    pub async fn settle(&self) {
        self.store.settle().await;
    }

    pub fn entries(&self) -> u64 {
        self.store.entries()
    }

    pub fn bytes(&self) -> u64 {
        self.store.bytes()
    }

    pub fn max_bytes(&self) -> u64 {
        self.store.max_bytes()
    }

    /// Identical misses currently in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Refresh the pull gauges (at scrape time).
    pub fn refresh_gauges(&self) {
        metrics::gauge!(t::CACHE_ENTRIES).set(self.entries() as f64);
        metrics::gauge!(t::CACHE_BYTES).set(self.bytes() as f64);
    }
}

impl CacheCtx {
    /// Settle a lookup for this request: wait for a leader if there is one (at most `bound`),
    /// remember what a miss needs, count the lookup. Returns the entry to answer with, if any.
    pub async fn settle(&mut self, lookup: Lookup, bound: Duration) -> Option<Arc<Stored>> {
        let (outcome, answer) = match lookup {
            Lookup::Bypass => (Outcome::Bypass, None),
            Lookup::Hit(entry) => (Outcome::Hit, Some(entry)),
            Lookup::Miss(pending) => {
                self.key = Some(pending.key);
                self.pending = Some(pending);
                (Outcome::Miss, None)
            }
            Lookup::Wait(pending, waiter) => {
                self.key = Some(pending.key);
                match waiter.wait(bound).await {
                    Some(entry) => (Outcome::Coalesced, Some(entry)),
                    None => {
                        // The leader failed or is too slow: our own request, which may
                        // still store its answer.
                        self.pending = Some(pending);
                        (Outcome::Miss, None)
                    }
                }
            }
        };
        metrics::counter!(t::CACHE_LOOKUPS, "result" => outcome.as_str()).increment(1);
        self.outcome = Some(outcome);
        answer
    }

    /// The response header for an answer from the cache: stored status and content headers,
    /// `content-length`, `age`, the cache headers.
    pub fn answer_header(&self, entry: &Stored) -> pingora::Result<ResponseHeader> {
        // Allocation: one header map per hit; the body is shared (`Bytes`), not copied. Built
        // as plain `http` parts: no header-name case map, each name inserted as stored (see
        // `proxy::edit_headers`).
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(entry.status)
            .explain_err(pingora::ErrorType::InternalError, |_| "stored status")?;
        let h = &mut parts.headers;
        h.try_reserve(entry.headers.len() + 12)
            .explain_err(pingora::ErrorType::InternalError, |_| "header count")?;
        for (name, value) in &entry.headers {
            let _ = h.try_append(name.clone(), value.clone());
        }
        let _ = h.try_insert(http::header::CONTENT_LENGTH, entry.body.len().into());
        let _ = h.try_insert(http::header::AGE, entry.age_secs().into());
        let outcome = self.outcome.unwrap_or(Outcome::Hit);
        let _ = h.try_insert(CACHE_HEADER, HeaderValue::from_static(outcome.as_str()));
        let _ = h.try_insert(KEY_HEADER, entry.key_header.clone());
        Ok(ResponseHeader::from(parts))
    }

    /// Say what the cache did on an upstream answer: `x-switchyard-cache` and the key.
    pub fn label(&self, headers: &mut HeaderMap) {
        if let Some(outcome) = self.outcome {
            let _ = headers.try_insert(CACHE_HEADER, HeaderValue::from_static(outcome.as_str()));
        }
        if let Some(key) = &self.key {
            if let Ok(value) = HeaderValue::from_str(&key.to_hex()) {
                let _ = headers.try_insert(KEY_HEADER, value);
            }
        }
    }

    /// The upstream response header arrived (and was [`label`](Self::label)led): decide
    /// whether its body will be captured for the store. A leader whose response cannot be
    /// stored lets its waiters go now rather than when the body ends.
    pub fn on_response_header(&mut self, resp: &ResponseHeader, table: &RoutingTable) {
        let Some(pending) = &self.pending else {
            return;
        };
        match storable(resp, pending.ttl, table.cache.max_entry_bytes) {
            Some((ttl, declared)) => {
                let headers = content_headers(&resp.headers);
                self.capture = Some(Capture {
                    status: resp.status.as_u16(),
                    headers,
                    ttl,
                    max: table.cache.max_entry_bytes,
                    declared,
                    body: BytesMut::with_capacity(declared.unwrap_or(4096)),
                });
            }
            None => {
                // Drops the leader guard, if any: waiters go upstream themselves.
                self.pending = None;
            }
        }
    }

    /// The response turned out not to be storable after its header (a gRPC error status):
    /// capture nothing, and let any waiters go upstream themselves.
    pub fn abandon(&mut self) {
        self.capture = None;
        self.pending = None;
    }

    /// A piece of the upstream body passes to the client. Copies it (bounded by
    /// `max_entry_bytes`) while capturing; at the end a complete response is stored.
    pub fn on_body(&mut self, chunk: &Option<Bytes>, end_of_stream: bool) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        if let Some(chunk) = chunk {
            if capture.body.len() + chunk.len() > capture.max {
                // Served, not stored.
                self.capture = None;
                self.pending = None;
                return;
            }
            capture.body.extend_from_slice(chunk);
        }
        if !end_of_stream {
            return;
        }
        let (Some(capture), Some(pending)) = (self.capture.take(), self.pending.take()) else {
            return;
        };
        if capture.declared.is_some_and(|n| n != capture.body.len()) {
            return; // incomplete: never stored
        }
        let Ok(key_header) = HeaderValue::from_str(&pending.key.to_hex()) else {
            return;
        };
        // Exact-size body: a buffer grown while capturing (or sized for an undeclared
        // length) would otherwise keep its spare capacity for the entry's whole life.
        let body = if capture.body.capacity() == capture.body.len() {
            capture.body.freeze()
        } else {
            Bytes::copy_from_slice(&capture.body)
        };
        let entry = Arc::new(Stored {
            status: capture.status,
            headers: capture.headers,
            body,
            stored_at: Instant::now(),
            ttl: capture.ttl,
            model: pending.model,
            generation: pending.generation,
            key_header,
        });
        let landed = pending.leader.map(|g| g.complete(entry.clone()));
        let (cache, key) = (pending.cache, pending.key);
        // This filter is synchronous and moka's insert is not: insert on a task. The flight
        // (if any) stays visible with the result until the entry is in the store.
        tokio::spawn(async move {
            cache.store.insert(key, entry.clone()).await;
            if let Some(landed) = landed {
                landed.done();
            }
            if let Some(l2) = &cache.l2 {
                l2.put(&key, &entry).await;
            }
        });
    }
}

/// Whether an upstream response may be stored, and for how long: `(ttl, declared length)`.
fn storable(
    resp: &ResponseHeader,
    route_ttl: Duration,
    max_entry: usize,
) -> Option<(Duration, Option<usize>)> {
    if !resp.status.is_success() {
        return None;
    }
    let h = &resp.headers;
    if h.contains_key(http::header::SET_COOKIE) {
        return None;
    }
    if let Some(enc) = h.get(http::header::CONTENT_ENCODING) {
        // The key does not include Accept-Encoding, so only identity bodies are shared.
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return None;
        }
    }
    let event_stream = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if event_stream {
        return None;
    }
    let declared = match h.get(http::header::CONTENT_LENGTH) {
        Some(v) => Some(v.to_str().ok()?.trim().parse::<usize>().ok()?),
        None => None,
    };
    if declared.is_some_and(|n| n > max_entry) {
        return None;
    }
    let mut ttl = route_ttl;
    let (mut max_age, mut s_maxage) = (None, None);
    for value in h.get_all(http::header::CACHE_CONTROL) {
        let value = value.to_str().ok()?;
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let is = |d: &str| name.eq_ignore_ascii_case(d);
            if is("no-store") || is("private") || is("no-cache") {
                return None;
            }
            let secs = arg.and_then(|a| a.parse::<u64>().ok());
            if is("max-age") {
                max_age = Some(secs?);
            } else if is("s-maxage") {
                s_maxage = Some(secs?);
            }
        }
    }
    // We are a shared cache: `s-maxage` wins over `max-age`.
    if let Some(secs) = s_maxage.or(max_age) {
        ttl = ttl.min(Duration::from_secs(secs));
    }
    if ttl.is_zero() {
        return None;
    }
    Some((ttl, declared))
}

/// The headers a cached answer repeats: the `content-*` family except the length.
///
/// Values are copied, not shared: Pingora's values are slices of the buffer the whole
/// response header was read into (4 KiB or more), which a shared value would keep alive for
/// as long as the entry lives.
fn content_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut kept: Vec<(HeaderName, HeaderValue)> = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n.starts_with("content-") && n != "content-length"
        })
        .filter_map(|(k, v)| Some((k.clone(), HeaderValue::from_bytes(v.as_bytes()).ok()?)))
        .collect();
    kept.shrink_to_fit();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn what_may_be_stored() {
        let ttl = Duration::from_secs(600);
        let ok = |h: &[(&str, &str)]| storable(&resp(200, h), ttl, 1000).map(|s| s.0);
        assert_eq!(ok(&[]), Some(ttl));
        assert_eq!(
            ok(&[("cache-control", "public, max-age=30")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=30, s-maxage=5")]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(ok(&[("cache-control", "max-age=99999")]), Some(ttl));
        assert_eq!(ok(&[("cache-control", "no-store")]), None);
        assert_eq!(ok(&[("cache-control", "Private")]), None);
        assert_eq!(ok(&[("cache-control", "max-age=0")]), None);
        assert_eq!(ok(&[("content-type", "text/event-stream")]), None);
        assert_eq!(ok(&[("content-encoding", "gzip")]), None);
        assert_eq!(ok(&[("set-cookie", "a=b")]), None);
        assert_eq!(ok(&[("content-length", "2000")]), None);
        assert!(storable(&resp(503, &[]), ttl, 1000).is_none());
        assert!(storable(&resp(201, &[]), ttl, 1000).is_some());
    }
}
