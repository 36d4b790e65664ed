//! Writing answers to the client: a [`Reply`] the gateway decided itself (its endpoints,
//! errors, a queued job's `202`, a cache hit) and the streamed answer of an upstream attempt,
//! each with the decision headers. The only code that writes to the client.

use super::Request;
use crate::cache::Stored;
use crate::classify::{self, Class};
use crate::error::GatewayError;
use crate::observe::text::push_decimal;
use crate::observe::DecisionHeaders;
use crate::policy::compile::PoolId;
use crate::reply::Reply;
use crate::route::Decision;
use crate::serving::Serving;
use crate::upstream::request::ANSWER_HOP_BY_HOP;
use crate::upstream::{Answer, Piece};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::Result;

/// The decision headers' names, parsed once.
mod names {
    use http::HeaderName;
    pub const POLICY_VERSION: HeaderName = HeaderName::from_static("x-switchyard-policy-version");
    pub const TIER: HeaderName = HeaderName::from_static("x-switchyard-tier");
    pub const REGION: HeaderName = HeaderName::from_static("x-switchyard-region");
    pub const BUDGET: HeaderName = HeaderName::from_static("x-switchyard-budget");
    pub const POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
    pub const ENDPOINT: HeaderName = HeaderName::from_static("x-switchyard-endpoint");
    pub const DECISION: HeaderName = HeaderName::from_static("x-switchyard-decision");
    pub const HEDGED: HeaderName = HeaderName::from_static("x-switchyard-hedged");
    pub const VERSION: HeaderName = HeaderName::from_static("x-switchyard-version");
}

/// What the decision headers say about a request.
pub struct Stamp<'a> {
    pub table: &'a Serving,
    pub class: Option<&'a Class>,
    pub decision: Option<&'a Decision>,
    /// The endpoint that answered (the last one tried).
    pub target: Option<(PoolId, u16)>,
    pub attempts: usize,
}

/// The most headers [`decision_headers`], the cache and the hedge add to an answer.
const DECISION_HEADERS: usize = 11;

/// Add the decision headers (`observe.decision_headers` says which). Names and values come
/// ready-made from the compiled table (a refcount bump each), so an answer pays for map
/// inserts only; the decision line is formatted with integers, not `core::fmt` (which was a
/// seventh of this function under callgrind).
pub fn decision_headers(headers: &mut HeaderMap, s: &Stamp) {
    let table = s.table;
    let which = table.decision_headers;
    if which == DecisionHeaders::Off {
        return;
    }
    let _ = headers.try_insert(names::POLICY_VERSION, table.version_header.clone());
    if let Some(class) = s.class {
        let _ = headers.try_insert(names::TIER, table.tiers[class.tier as usize].header.clone());
        if let Some(region) = table.region_headers.get(class.region as usize) {
            let _ = headers.try_insert(names::REGION, region.clone());
        }
        if let Some((split, v)) = class.version {
            let version = &table.splits[split as usize].versions[v as usize];
            let _ = headers.try_insert(names::VERSION, version.header.clone());
        }
        if class.tier_source == classify::TierSource::Budget {
            let _ = headers.try_insert(names::BUDGET, HeaderValue::from_static("downgraded"));
        }
    }
    if let Some((p, e)) = s.target {
        let pool = &table.pools[p as usize];
        let _ = headers.try_insert(names::POOL, pool.header.clone());
        if which == DecisionHeaders::All {
            let endpoint = pool.endpoints[e as usize].header.clone();
            let _ = headers.try_insert(names::ENDPOINT, endpoint);
        }
    }
    if let Some(d) = s.decision {
        let value = match d.estimate {
            Some(est) => {
                // "{reason}; est_ms={ms}.{tenth}; est_usd={usd}.{micro:06}; candidates={c};
                // feasible={f}; attempts={a}"
                let tenths_ms = (est.latency.as_secs_f64() * 1e4).round() as u64;
                let micro_usd = (est.cost_usd * 1e6).round() as u64;
                let mut v = String::with_capacity(96);
                v.push_str(d.reason.as_str());
                v.push_str("; est_ms=");
                push_decimal(&mut v, tenths_ms / 10, 1);
                v.push('.');
                push_decimal(&mut v, tenths_ms % 10, 1);
                v.push_str("; est_usd=");
                push_decimal(&mut v, micro_usd / 1_000_000, 1);
                v.push('.');
                push_decimal(&mut v, micro_usd % 1_000_000, 6);
                v.push_str("; candidates=");
                push_decimal(&mut v, u64::from(d.candidates), 1);
                v.push_str("; feasible=");
                push_decimal(&mut v, u64::from(d.feasible), 1);
                v.push_str("; attempts=");
                push_decimal(&mut v, s.attempts as u64, 1);
                v
            }
            None => d.reason.as_str().to_string(),
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            let _ = headers.try_insert(names::DECISION, value);
        }
    }
}

/// Add headers to an answer through its plain `http` header map.
///
/// Pingora keeps the original case of every header name of an HTTP/1 answer in a second map,
/// and `ResponseHeader::insert_header` parses the name back from bytes (an allocation for a
/// custom name), inserts into both maps and grows them as they fill: ~1.5k instructions a
/// header under callgrind, the largest part of the gateway's own per-request work
/// (`docs/performance.md`). Through the `http` parts a header is one insert of a ready-made
/// name. The price is the case map: header names are case-insensitive (RFC 9110 §5.1),
/// HTTP/2 sends them all in lowercase, and proxies like Envoy do the same on HTTP/1, so the
/// answer goes out with standard names in title case and the others in lowercase. Only
/// `ResponseHeader`'s public conversions are used (to `http` parts, which keep the status,
/// version, headers and extensions, and back); a non-standard reason phrase is carried over.
pub fn edit_headers(resp: &mut ResponseHeader, edit: impl FnOnce(&mut HeaderMap)) {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let cased = std::mem::replace(resp, empty);
    let reason = cased
        .get_reason_phrase()
        .filter(|r| Some(*r) != cased.status.canonical_reason())
        .map(str::to_owned);
    let mut parts = http::response::Parts::from(cased);
    // Only fails past `http`'s 32,768-entry limit, and then so do the inserts, quietly.
    let _ = parts.headers.try_reserve(DECISION_HEADERS);
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
}

/// Write a reply the gateway decided itself, with `edit` applied to its headers.
pub async fn reply(
    session: &mut ServerSession,
    mut reply: Reply,
    edit: impl FnOnce(&mut HeaderMap),
) -> Result<()> {
    edit(&mut reply.headers);
    let trailers_only = reply.is_trailers_only();
    if reply.trailers.is_none() && !trailers_only {
        reply
            .headers
            .insert(http::header::CONTENT_LENGTH, reply.body.len().into());
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    parts.headers = reply.headers;
    let header = Box::new(ResponseHeader::from(parts));
    let tasks = match reply.trailers {
        // A gRPC status alone: one HEADERS frame that ends the stream.
        _ if trailers_only || reply.head => vec![HttpTask::Header(header, true)],
        Some(trailers) => vec![
            HttpTask::Header(header, false),
            HttpTask::Body(Some(reply.body), false),
            HttpTask::Trailer(Some(Box::new(trailers))),
        ],
        // (Over HTTP/1, header and body leave in one write.)
        None => vec![
            HttpTask::Header(header, false),
            HttpTask::Body(Some(reply.body), true),
        ],
    };
    session.response_duplex_vec(tasks).await?;
    Ok(())
}

/// The reply for an error: a JSON body (`Retry-After` when it helps), or for a gRPC request a
/// trailers-only gRPC status.
pub fn error_reply(err: &GatewayError, grpc: bool, table: &Serving) -> Reply {
    let reply = if grpc {
        let mut code = err.grpc_status();
        if let GatewayError::NoCandidate { model, .. } = err {
            // A model some gRPC pool serves, but none can take now: UNAVAILABLE (retryable),
            // not NOT_FOUND.
            if !crate::grpc::model_unknown(table, model) {
                code = 14;
            }
        }
        Reply::grpc_status(code, &err.to_string())
    } else {
        Reply::json(err.status(), err.body())
    };
    match err.retry_after() {
        Some(secs) => reply.with(http::header::RETRY_AFTER, secs),
        None => reply,
    }
}

/// Write `err` (the request's state gives the decision headers). A request whose body was not
/// read, or was refused as too large or malformed, closes the connection: the rest of an
/// unread body would be taken for the next request on it. An unread body is then drained
/// within bounds ([`super::body::linger`]) so that the client reads the answer.
pub async fn error(session: &mut ServerSession, req: &Request, err: &GatewayError) -> Result<()> {
    let mut reply = error_reply(err, req.grpc, &req.table);
    let unread = !session.is_body_done();
    let close = !req.grpc && (unread || err.status() == 413 || err.status() == 400);
    if close {
        reply = reply.with(http::header::CONNECTION, "close");
        session.set_keepalive(None);
    }
    self::reply(session, reply, |h| decision_headers(h, &req.stamp())).await?;
    if unread {
        super::body::linger(session).await;
    }
    Ok(())
}

/// Answer from the prediction cache: the stored status, content headers and body, the cache
/// and decision headers, and the spend the request did not cause.
pub async fn cache_hit(
    session: &mut ServerSession,
    req: &Request,
    entry: &Stored,
    saved: f64,
) -> Result<()> {
    let mut resp = req.cache.answer_header(entry)?;
    let table = &req.table;
    edit_headers(&mut resp, |h| {
        decision_headers(h, &req.stamp());
        // A hit's decision line says what it saved (unless `observe.decision_headers` is
        // off).
        if table.decision_headers != DecisionHeaders::Off {
            let line = format!("cache-hit; est_usd=0.000000; saved_usd={saved:.6}");
            if let Ok(line) = HeaderValue::try_from(line) {
                h.insert(names::DECISION, line);
            }
        }
    });
    let body = entry.body.clone();
    let tasks = if req.grpc {
        // Only answers that ended in `grpc-status: 0` are stored: replay those trailers.
        resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        vec![
            HttpTask::Header(Box::new(resp), false),
            HttpTask::Body(Some(body), false),
            HttpTask::Trailer(Some(Box::new(crate::grpc::ok_trailers()))),
        ]
    } else {
        vec![
            HttpTask::Header(Box::new(resp), false),
            HttpTask::Body(Some(body), true),
        ]
    };
    session.response_duplex_vec(tasks).await?;
    Ok(())
}

/// Relay an upstream answer as it arrives: the header (hop-by-hop fields removed, the
/// decision headers added, the cache deciding whether to capture it, the token meter
/// started), then each body chunk (SSE stays unbuffered), then the trailers (gRPC's status
/// travels in them). A backend's `grpc-status` counts as its HTTP equivalent in the record.
pub async fn relay(session: &mut ServerSession, req: &mut Request, answer: Answer) -> Result<()> {
    let Answer {
        header: mut resp,
        mut body,
    } = answer;
    if session.is_http2() {
        for name in &ANSWER_HOP_BY_HOP {
            resp.remove_header(name);
        }
    } else {
        resp.remove_header(&http::header::CONNECTION);
        resp.remove_header("keep-alive");
    }
    let hedged = req.trail.as_ref().and_then(|t| t.hedged);
    edit_headers(&mut resp, |h| {
        decision_headers(h, &req.stamp());
        req.cache.label(h);
        if let Some(hedged) = hedged {
            let _ = h.try_insert(
                names::HEDGED,
                HeaderValue::from_static(if hedged { "1" } else { "0" }),
            );
        }
    });
    req.on_response_header(&resp);
    // A gRPC trailers-only answer (its status in the header) ends with the header.
    let trailers_only = req.grpc && resp.headers.contains_key("grpc-status");
    if trailers_only {
        body.release().await;
        crate::cold(|| session.response_duplex_vec(vec![HttpTask::Header(Box::new(resp), true)]))
            .await?;
        return Ok(());
    }
    session.write_response_header(Box::new(resp)).await?;
    loop {
        match body.next().await? {
            Piece::Data { chunk, last } => {
                // On the last chunk the cache learns that the body ended before the chunk
                // goes out: a client with the whole answer may ask again at once and must
                // find the flight finished.
                req.on_body(Some(&chunk), last);
                session.write_response_body(chunk, last).await?;
                if last {
                    return Ok(());
                }
            }
            Piece::Trailers(trailers) => {
                req.on_trailers(&trailers);
                let tasks = vec![HttpTask::Trailer(Some(Box::new(trailers)))];
                crate::cold(|| session.response_duplex_vec(tasks)).await?;
                return Ok(());
            }
            Piece::End => {
                req.on_body(None, true);
                session.write_response_body(Bytes::new(), true).await?;
                return Ok(());
            }
        }
    }
}

/// The estimate's cost of a decision that sent a request somewhere: what a cache hit saved.
pub fn estimated_cost(decision: &Decision) -> f64 {
    match (decision.target, decision.estimate) {
        (Some(_), Some(est)) => est.cost_usd,
        _ => 0.0,
    }
}
