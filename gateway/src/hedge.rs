//! Hedged requests, for tiers with `hedge_after`: when the first attempt has not answered
//! after `hedge_after` × its pool's service-time estimate, a second attempt goes to the
//! next-best candidate and whichever answers first (with a non-5xx) is the answer.
//!
//! Pingora's `ProxyHttp` drives exactly one upstream attempt at a time (a retry starts only
//! after the attempt failed), so two attempts in flight for one request cannot go through
//! it. This module is therefore a small upstream client of its own, on Pingora's HTTP/1.1
//! connector (with its keep-alive pool): it is used only for requests whose body the gateway
//! has already read, that do not stream and are not cacheable, and it buffers the answer
//! (bounded) before writing it downstream. Both attempts take in-flight slots like any other
//! (compare-and-swap, within the limits), feed the live estimates and count towards
//! ejection; the hedge's extra spend is counted. The losing attempt is dropped (its
//! connection is closed, so the backend sees the client go away).

use crate::classify::Class;
use crate::error::GatewayError;
use crate::policy::compile::PoolId;
use crate::route::{self, Reason};
use crate::serving::state::now_ms;
use crate::serving::Serving;
use crate::telemetry as t;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Largest answer body a hedged request buffers.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

pub(crate) fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

/// The answer that won.
pub struct Answer {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Every attempt made, the winner last.
    pub tried: Vec<(PoolId, u16)>,
    /// Whether a second attempt was sent.
    pub hedged: bool,
}

/// In-flight slots of one attempt, given back when dropped.
struct Slot<'a> {
    table: &'a Serving,
    target: (PoolId, u16),
}

impl<'a> Slot<'a> {
    fn take(table: &'a Serving, target: (PoolId, u16)) -> Option<Slot<'a>> {
        let pool = &table.pools[target.0 as usize];
        let state = table.live.pool(target.0);
        if !state.try_acquire(pool.concurrency) {
            return None;
        }
        if !table
            .live
            .endpoint(target.0, target.1 as usize)
            .try_acquire(pool.endpoint_limit())
        {
            state.release();
            return None;
        }
        Some(Slot { table, target })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let live = &self.table.live;
        live.pool(self.target.0).release();
        live.endpoint(self.target.0, self.target.1 as usize)
            .release();
    }
}

type Attempt = Result<(ResponseHeader, Bytes), GatewayError>;

/// One attempt: send the buffered request, read the whole answer.
async fn attempt(slot: Slot<'_>, timeout: Duration, req: &RequestHeader, body: &Bytes) -> Attempt {
    let table = slot.table;
    let pool = &table.pools[slot.target.0 as usize];
    let endpoint = &pool.endpoints[slot.target.1 as usize];
    let endpoint_state = table.live.endpoint(slot.target.0, slot.target.1 as usize);
    let mut peer = match &endpoint.sni {
        Some(sni) => {
            // This connector speaks HTTP/1.1 only.
            let material = &table.resources.pool_tls[slot.target.0 as usize];
            let mut peer =
                crate::tls::upstream::peer(endpoint.addr, sni, &pool.hosted.tls, material);
            peer.options.set_http_version(1, 1);
            peer
        }
        None => HttpPeer::new(endpoint.addr, false, String::new()),
    };
    let mut rewritten;
    let req = match pool.hosted.rewrites() || endpoint.sni.is_some() {
        true => {
            rewritten = req.clone();
            crate::tls::upstream::rewrite(&mut rewritten, &pool.hosted, endpoint, req)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            &rewritten
        }
        false => req,
    };
    peer.options.connection_timeout = Some(table.upstream.connect_timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    let idle = Some(Duration::from_secs(60));
    peer.options.idle_timeout = idle;
    let started = Instant::now();
    let failed = |e: &dyn std::fmt::Display| {
        if endpoint_state
            .failed(now_ms(), &table.upstream.ejection)
            .is_some()
        {
            metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "error")
                .increment(1);
        }
        GatewayError::UpstreamFailed(e.to_string())
    };
    let (session, _reused) = connector()
        .get_http_session(&peer)
        .await
        .map_err(|e| failed(&e))?;
    // Header and body in one write, as the gateway's own sender does.
    let mut session = crate::proxy::one_write(session, &peer, req, body)
        .await
        .map_err(|e| failed(&e))?;
    let header = session
        .resp_header()
        .cloned()
        .ok_or_else(|| GatewayError::UpstreamFailed("no response header".into()))?;
    let took = started.elapsed();
    crate::route::network::observe_upstream(table, slot.target, took);
    if header.status.as_u16() < 500 {
        endpoint_state.mark_success();
    } else {
        failed(&header.status);
    }
    let mut buf = BytesMut::new();
    loop {
        match session.read_body_bytes().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_ANSWER {
                    return Err(GatewayError::UpstreamFailed(
                        "hedged answer larger than 8 MiB".into(),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(failed(&e)),
        }
    }
    connector().release_http_session(session, &peer, idle).await;
    drop(slot);
    Ok((header, buf.freeze()))
}

fn good(a: &Attempt) -> bool {
    matches!(a, Ok((h, _)) if h.status.as_u16() < 500)
}

/// Send `req` to `first`, hedge to the next-best candidate after `hedge_after` × the
/// pool's estimate, return the first good answer (or the last answer if none is good).
pub async fn run(
    table: &Serving,
    class: &Class,
    first: (PoolId, u16),
    req: &RequestHeader,
    body: &Bytes,
    hedge_after: f64,
) -> Result<Answer, GatewayError> {
    let tier = &table.tiers[class.tier as usize];
    let overloaded = || GatewayError::Overloaded {
        tier: tier.name.clone(),
    };
    let slot = Slot::take(table, first).ok_or_else(overloaded)?;
    // The attempt's expected time is the round trip plus the service time (the estimate's
    // gateway → pool part); the hedge waits a multiple of that.
    let pool = &table.pools[first.0 as usize];
    let state = table.live.pool(first.0);
    let network = route::network::upstream_rtt(pool, state, table);
    let delay = (network + state.service_time_behind(now_ms(), network)).mul_f64(hedge_after);
    let primary = attempt(slot, tier.timeout, req, body);
    tokio::pin!(primary);
    let early = tokio::select! {
        done = &mut primary => Some(done),
        _ = tokio::time::sleep(delay) => None,
    };
    if let Some(done) = early {
        return done.map(|(header, body)| Answer {
            header,
            body,
            tried: vec![first],
            hedged: false,
        });
    }
    // Not answered in time: the next-best candidate, if one can take it now.
    let next = route::decide(class, table, &[first], now_ms());
    let second = next
        .target
        .filter(|_| matches!(next.reason, Reason::MeetsDeadline | Reason::FallbackFastest))
        .and_then(|target| Slot::take(table, target).map(|slot| (target, slot)));
    let Some((target, slot)) = second else {
        return primary.await.map(|(header, body)| Answer {
            header,
            body,
            tried: vec![first],
            hedged: false,
        });
    };
    let pool = &table.pools[target.0 as usize];
    metrics::counter!(t::HEDGES, "pool" => pool.name.clone()).increment(1);
    if let Some(est) = next.estimate {
        metrics::counter!(t::HEDGE_COST, "tier" => tier.name.clone())
            .increment(t::nano_usd(est.cost_usd));
    }
    let hedge = attempt(slot, tier.timeout, req, body);
    tokio::pin!(hedge);
    let answer = |won: (PoolId, u16), (header, body): (ResponseHeader, Bytes)| {
        let lost = if won == first { target } else { first };
        Answer {
            header,
            body,
            tried: vec![lost, won],
            hedged: true,
        }
    };
    tokio::select! {
        a = &mut primary => {
            if good(&a) {
                a.map(|r| answer(first, r))
            } else {
                let b = hedge.await;
                if good(&b) { b.map(|r| answer(target, r)) } else { a.map(|r| answer(first, r)) }
            }
        }
        b = &mut hedge => {
            if good(&b) {
                b.map(|r| answer(target, r))
            } else {
                let a = primary.await;
                if good(&a) { a.map(|r| answer(first, r)) } else { b.map(|r| answer(target, r)) }
            }
        }
    }
}
