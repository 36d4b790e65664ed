//! Request bodies: read whole before routing, bounded per route and in total.
//!
//! The model of an OpenAI-style request is in its JSON body (after megabytes of `messages`
//! when the client sorts its keys), the cache key covers the body, and a failover must
//! re-send it whole, so the gateway reads every body before it decides. Two bounds keep that
//! safe: the route's `max_body` (413 before a byte is read when `Content-Length` says so,
//! else as soon as the count passes it) and `limits.max_buffered_bytes`, the body bytes held
//! by all requests at once ([`BodyBudget`]): a body that would go beyond it is refused with
//! 503 `overloaded` and `Retry-After`, never an out-of-memory. Bodies up to
//! [`INSPECT_LIMIT`] are always admitted (they are counted, never refused), so small
//! requests keep flowing while large uploads wait their turn.
//!
//! The whole body then goes upstream by reference (`upstream`), re-sent as it is on every
//! attempt: a failover replays it whatever its size.

use crate::error::GatewayError;
use crate::policy::compile::INSPECT_LIMIT;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Request-body bytes held in memory by every request in flight (one per gateway; survives
/// reloads, while the limit comes from the snapshot each request reads).
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicU64,
}

impl BodyBudget {
    pub fn new() -> Arc<BodyBudget> {
        Arc::new(BodyBudget::default())
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Grow `permit` by `more` bytes: refused when the request's total would pass
    /// [`INSPECT_LIMIT`] and all requests together would pass `max`.
    fn grow(self: &Arc<Self>, permit: &mut Option<BodyPermit>, more: u64, max: u64) -> bool {
        let mine = permit.as_ref().map_or(0, |p| p.bytes);
        let small = mine + more <= INSPECT_LIMIT as u64;
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
                (small || held + more <= max).then_some(held + more)
            })
            .is_ok();
        if taken {
            match permit {
                Some(p) => p.bytes += more,
                None => {
                    *permit = Some(BodyPermit {
                        budget: self.clone(),
                        bytes: more,
                    })
                }
            }
        }
        taken
    }
}

/// Bytes one request holds in the [`BodyBudget`]; given back when dropped (with the
/// request's context, after its log line).
#[derive(Debug)]
pub struct BodyPermit {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyPermit {
    /// The body bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The limits a body is read under.
pub struct BodyLimits<'a> {
    /// The route's `max_body`.
    pub max_body: usize,
    pub budget: &'a Arc<BodyBudget>,
    /// `limits.max_buffered_bytes`.
    pub max_buffered: u64,
}

/// Read the whole request body within `limits`, taking its bytes from the budget into
/// `permit`. A client that sent `Expect: 100-continue` is told to go on first (the upstream
/// request no longer carries the expectation: the gateway has the body).
pub async fn read(
    session: &mut Session,
    limits: &BodyLimits<'_>,
    permit: &mut Option<BodyPermit>,
) -> Result<Bytes, GatewayError> {
    let header = session.req_header();
    let declared = match header.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| GatewayError::BodyRead("invalid Content-Length".into()))?,
        ),
        None => None,
    };
    if let Some(len) = declared {
        if len > limits.max_body {
            return Err(GatewayError::PayloadTooLarge {
                limit: limits.max_body,
            });
        }
    }
    if declared == Some(0) || (declared.is_none() && session.is_body_empty()) {
        return Ok(Bytes::new());
    }
    let overloaded = || GatewayError::BodyMemoryFull {
        limit: limits.max_buffered,
    };
    // A declared length is taken from the budget at once, so that a client is refused
    // before it uploads; a chunked (or h2) body is taken as it arrives.
    let first = declared.unwrap_or(0) as u64;
    if first > 0 && !limits.budget.grow(permit, first, limits.max_buffered) {
        return Err(overloaded());
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // Pingora turns keep-alive off when an answer (even this `100`) is written before the
    // body is read; it is set back once the body is whole.
    let keepalive = expects_continue.then(|| session.get_keepalive());
    if expects_continue {
        if !session.is_http2() {
            let go_on = ResponseHeader::build(100, Some(0))
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            session
                .write_response_header(Box::new(go_on))
                .await
                .map_err(|e| GatewayError::BodyRead(e.to_string()))?;
        }
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
    }
    // A body that arrives in one piece (most small ones) is kept as Pingora handed it over:
    // no buffer to allocate and nothing to copy. Only a second piece starts one.
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                len += chunk.len();
                if len > limits.max_body {
                    return Err(GatewayError::PayloadTooLarge {
                        limit: limits.max_body,
                    });
                }
                let held = permit.as_ref().map_or(0, |p| p.bytes) as usize;
                if len > held
                    && !limits
                        .budget
                        .grow(permit, (len - held) as u64, limits.max_buffered)
                {
                    return Err(overloaded());
                }
                match (&mut buf, first.take()) {
                    (Some(buf), _) => buf.extend_from_slice(&chunk),
                    (None, None) => first = Some(chunk),
                    (None, Some(head)) => {
                        let mut b = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).max(len));
                        b.extend_from_slice(&head);
                        b.extend_from_slice(&chunk);
                        buf = Some(b);
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return Err(GatewayError::BodyRead(e.to_string())),
        }
    }
    if let Some(keepalive) = keepalive {
        session.set_keepalive(keepalive);
    }
    Ok(match (buf, first) {
        (Some(buf), _) => buf.freeze(),
        (None, first) => first.unwrap_or_default(),
    })
}

/// After refusing a request whose body was not read (413 before the upload, 503 from the
/// budget), read and drop what the client is still sending, within bounds, before the
/// connection closes: closing a socket with unread data resets it, and a client still
/// writing its body would then lose the answer instead of reading it (nginx's "lingering
/// close"). Nothing is kept; a client that waits for `100 Continue` sends nothing and the
/// wait ends at the time bound.
pub async fn linger(session: &mut Session) {
    const MOST: usize = 256 * 1024 * 1024;
    const FOR: std::time::Duration = std::time::Duration::from_secs(2);
    let drain = async {
        let mut seen = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            seen += chunk.len();
            if seen > MOST {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(FOR, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_large_bodies_beyond_the_limit_and_gives_bytes_back() {
        let budget = BodyBudget::new();
        let max = 1024 * 1024;
        let mut a = None;
        assert!(budget.grow(&mut a, 800 * 1024, max));
        let mut b = None;
        // A second large body would pass the limit.
        assert!(!budget.grow(&mut b, 300 * 1024, max));
        assert!(b.is_none());
        // Small bodies are always admitted, and counted.
        let mut small = None;
        assert!(budget.grow(&mut small, 300 * 1024 / 8, max));
        assert_eq!(budget.held(), 800 * 1024 + 300 * 1024 / 8);
        drop(small);
        drop(a);
        assert_eq!(budget.held(), 0);
        assert!(budget.grow(&mut b, 300 * 1024, max));
        // Growing past the small-body bound counts the whole body against the limit.
        let mut c = None;
        assert!(budget.grow(&mut c, 60 * 1024, max));
        assert!(!budget.grow(&mut c, max, max));
        assert_eq!(c.as_ref().map(|p| p.bytes), Some(60 * 1024));
    }
}
