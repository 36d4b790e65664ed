//! One attempt to get an answer from one endpoint: the value every way to a backend is
//! built from (a plain request, each retry, both sides of a hedge).
//!
//! An [`Attempt`] holds the endpoint's slot (the pool's and the endpoint's in-flight counts,
//! taken with compare-and-swap so a burst cannot overshoot `concurrency`) and the pool's
//! overdue-tracking slot, and gives them back when dropped, whatever happened: no manual
//! release. [`Attempt::exchange`] connects, writes the request (header and body in one write
//! over HTTP/1 where it fits) and reads the response header; the attempt then reports what it
//! saw to the estimators, health and ejection itself ([`Attempt::answered`],
//! [`Attempt::failed_to_connect`], [`Attempt::failed`]), so every attempt, hedged or not,
//! counts the same way. The winning attempt becomes an [`Answer`], which streams the body
//! and keeps the slot until the body ends.

use super::connect::{self, Keepalive, Timeouts};
use crate::policy::compile::PoolId;
use crate::route;
use crate::serving::state::now_ms;
use crate::serving::Serving;
use crate::telemetry as t;
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An attempt in flight on one endpoint.
pub struct Attempt {
    table: Arc<Serving>,
    pub target: (PoolId, u16),
    /// The pool's slot remembering when the attempt started (overdue detection), until the
    /// response header arrives.
    overdue: Option<u8>,
    started: Instant,
    /// The keep-alive pool its connection comes from and goes back to.
    keepalive: Keepalive,
}

/// How an attempt ended before it had an answer.
pub enum Failure {
    /// No connection: nothing reached the backend. `tls`: the handshake failed.
    Connect { error: Box<Error>, tls: bool },
    /// Sent (some of) the request, then the connection failed or timed out. `reused`: the
    /// connection came from the keep-alive pool (a stale one fails this way, harmlessly).
    Exchange { error: Box<Error>, reused: bool },
}

impl Failure {
    /// A pooled connection the backend had closed: the body is whole, so sending it again is
    /// always safe, and it says nothing about the endpoint.
    pub fn is_stale(&self) -> bool {
        matches!(self, Failure::Exchange { error, reused: true }
            if !matches!(error.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout))
    }

    pub fn error(&self) -> &Error {
        match self {
            Failure::Connect { error, .. } | Failure::Exchange { error, .. } => error,
        }
    }
}

/// A response header, and the session its body comes on.
pub struct Head {
    pub header: ResponseHeader,
    session: HttpSession,
    peer: HttpPeer,
    keepalive: Keepalive,
}

impl Attempt {
    /// An attempt on `target`, whose slots the caller took ([`super::rules::take_slot`]).
    pub fn adopt(table: &Arc<Serving>, target: (PoolId, u16)) -> Attempt {
        Attempt {
            table: table.clone(),
            target,
            overdue: table.live.pool(target.0).track_start(now_ms()),
            started: Instant::now(),
            keepalive: Keepalive::Shared,
        }
    }

    /// The attempt's connection from (and back to) `keepalive`'s pool.
    pub fn keep_alive_in(mut self, keepalive: Keepalive) -> Attempt {
        self.keepalive = keepalive;
        self
    }

    /// Take a slot on `target` whatever the limits say: for a caller that keeps its own count
    /// (the batch dispatcher, within the room `queue::dispatcher::room` gives it).
    pub fn take(table: &Arc<Serving>, target: (PoolId, u16)) -> Attempt {
        table.live.pool(target.0).acquire();
        table.live.endpoint(target.0, target.1 as usize).acquire();
        Attempt::adopt(table, target)
    }

    /// Connect, send `req` and the whole `body`, read the response header.
    pub async fn exchange(
        &mut self,
        req: &RequestHeader,
        body: &Bytes,
        grpc: bool,
        timeouts: Timeouts,
    ) -> Result<Head, Failure> {
        let (pool_id, ep) = self.target;
        let pool = &self.table.pools[pool_id as usize];
        let endpoint = &pool.endpoints[ep as usize];
        let tls = &self.table.resources.pool_tls[pool_id as usize];
        let peer = connect::peer(pool, endpoint, tls, grpc, timeouts);
        self.started = Instant::now();
        let (upstream, reused) =
            connect::session(&peer, self.keepalive)
                .await
                .map_err(|error| Failure::Connect {
                    tls: connect::is_tls_failure(&error),
                    error,
                })?;
        if !reused {
            // A new connection's set-up (TCP, TLS: round trips to the pool) is network time,
            // paid once per connection: the upstream time the estimates learn starts when the
            // request is sent, so a first request's handshake does not inflate the pool's
            // service time for every later request on open connections.
            metrics::histogram!(t::UPSTREAM_CONNECT, "pool" => pool.name.clone())
                .record(self.started.elapsed().as_secs_f64());
            self.started = Instant::now();
        }
        let sent = match upstream {
            HttpSession::H1(h1) if req.method != http::Method::HEAD => {
                connect::one_write(h1, &peer, req, body)
                    .await
                    .map(HttpSession::H1)
            }
            mut upstream => {
                upstream.set_read_timeout(peer.options.read_timeout);
                upstream.set_write_timeout(peer.options.write_timeout);
                let sent = async {
                    upstream.write_request_header(Box::new(req.clone())).await?;
                    upstream.write_request_body(body.clone(), true).await?;
                    upstream.finish_request_body().await?;
                    upstream.read_response_header().await
                };
                sent.await.map(|()| upstream)
            }
        };
        let mut session = sent.map_err(|error| Failure::Exchange { error, reused })?;
        match session.response_header().cloned() {
            Some(header) => Ok(Head {
                header,
                session,
                peer,
                keepalive: self.keepalive,
            }),
            None => {
                session.shutdown().await;
                Err(Failure::Exchange {
                    error: Error::explain(ErrorType::InvalidHTTPHeader, "no response header"),
                    reused,
                })
            }
        }
    }

    /// The response header arrived, counting as `status` (a gRPC trailers-only UNAVAILABLE
    /// counts as 503): the time since the request was sent (on a new connection, since it
    /// was set up) is the upstream time the
    /// estimates track (less the round trip: `route::network`), and a 5xx counts towards
    /// ejecting the endpoint. Returns the upstream time and the service time in it.
    ///
    /// A `streaming` answer's head says nothing of its service time (a model server sends it
    /// before the first token): the pipeline observes the stream itself when it ends
    /// (`pipeline::record`), and nothing is learned here.
    pub fn answered(&mut self, status: u16, streaming: bool) -> (Duration, Duration) {
        let took = self.started.elapsed();
        let table = &self.table;
        let (p, e) = self.target;
        let pool = &table.pools[p as usize];
        let service = route::network::observe_upstream(table, self.target, took, !streaming);
        // Answered: no longer a candidate for "overdue" (a streamed body may go on for long).
        if let Some(slot) = self.overdue.take() {
            table.live.pool(p).untrack(slot);
        }
        t::pool_handles(table.generation, p, || t::PoolHandles {
            upstream_duration: metrics::histogram!(t::UPSTREAM_DURATION, "pool" => pool.name.clone()),
        })
        .upstream_duration
        .record(took.as_secs_f64());
        let state = table.live.endpoint(p, e as usize);
        if status < 500 {
            state.mark_success();
        } else if let Some(backoff) = state.failed(now_ms(), &table.upstream.ejection) {
            metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "5xx")
                .increment(1);
            tracing::warn!(pool = %pool.name, endpoint = %pool.endpoints[e as usize].name, status, backoff_ms = backoff.as_millis() as u64, "endpoint ejected after consecutive failures");
        }
        (took, service)
    }

    /// The attempt could not connect. A refused or timed-out connect ejects the endpoint at
    /// once (with a back-off that doubles while it keeps failing): nothing reached it. A TLS
    /// failure is a configuration problem, not an outage: counted and logged, never an
    /// ejection.
    pub fn failed_to_connect(self, error: &Error, tls: bool) {
        let (p, e) = self.target;
        let pool = &self.table.pools[p as usize];
        let name = &pool.endpoints[e as usize].name;
        if tls {
            metrics::counter!(t::UPSTREAM_TLS_FAILURES, "pool" => pool.name.clone()).increment(1);
            tracing::warn!(pool = %pool.name, endpoint = %name, %error, "upstream TLS handshake failed");
            return;
        }
        let backoff = self
            .table
            .live
            .endpoint(p, e as usize)
            .connect_failed(now_ms(), &self.table.upstream.ejection);
        metrics::counter!(t::EJECTIONS, "pool" => pool.name.clone(), "cause" => "connect")
            .increment(1);
        tracing::warn!(pool = %pool.name, endpoint = %name, %error, backoff_ms = backoff.as_millis() as u64, "upstream connect failed; endpoint ejected");
    }

    /// The attempt failed after connecting (a timeout, or the backend cutting the
    /// connection before or while answering): counts towards ejection.
    pub fn failed(self) {
        let (p, e) = self.target;
        if self
            .table
            .live
            .endpoint(p, e as usize)
            .failed(now_ms(), &self.table.upstream.ejection)
            .is_some()
        {
            let pool = &self.table.pools[p as usize].name;
            metrics::counter!(t::EJECTIONS, "pool" => pool.clone(), "cause" => "error")
                .increment(1);
        }
    }

    /// Report `failure` (a stale pooled connection reports nothing).
    pub fn report(self, failure: &Failure) {
        match failure {
            Failure::Connect { error, tls } => self.failed_to_connect(error, *tls),
            f if f.is_stale() => {}
            Failure::Exchange { .. } => self.failed(),
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(slot) = self.overdue.take() {
            self.table.live.pool(self.target.0).untrack(slot);
        }
        super::rules::give_back(&self.table, self.target);
    }
}

/// The answer of the winning attempt: its header, and its body to come.
pub struct Answer {
    pub header: ResponseHeader,
    pub body: Body,
}

/// An answer's body as it arrives: the winning attempt (its slot held until the body ends)
/// and the upstream session the body comes on.
pub struct Body {
    attempt: Option<Attempt>,
    session: Option<HttpSession>,
    peer: HttpPeer,
    keepalive: Keepalive,
    /// The body ends with trailers (HTTP/2, gRPC): the last data chunk is not the end.
    trailers_follow: bool,
}

/// A piece of an answer's body.
pub enum Piece {
    /// A chunk; `last`: nothing follows (the connection is already back in the pool).
    Data { chunk: Bytes, last: bool },
    /// The trailers, which end the answer.
    Trailers(HeaderMap),
    /// The end, with nothing more.
    End,
}

impl Answer {
    pub(super) fn new(attempt: Attempt, head: Head, trailers_follow: bool) -> Answer {
        Answer {
            header: head.header,
            body: Body {
                attempt: Some(attempt),
                session: Some(head.session),
                peer: head.peer,
                keepalive: head.keepalive,
                trailers_follow,
            },
        }
    }
}

impl Body {
    /// The next piece of the body. On the last data chunk the connection goes back to the
    /// pool before the chunk is handed over (as Pingora's own loop does): a client with the
    /// whole answer may send its next request at once, and must find the connection idle,
    /// not open another one. A failed read counts against the endpoint.
    pub async fn next(&mut self) -> pingora::Result<Piece> {
        let Some(session) = self.session.as_mut() else {
            return Ok(Piece::End);
        };
        match session.read_response_body().await {
            Ok(Some(chunk)) => {
                let last = !self.trailers_follow && session.response_done();
                if last {
                    self.release().await;
                }
                Ok(Piece::Data { chunk, last })
            }
            Ok(None) => {
                let trailers = match session {
                    HttpSession::H2(h2) => h2.read_trailers().await?,
                    _ => None,
                };
                self.release().await;
                Ok(trailers.map_or(Piece::End, Piece::Trailers))
            }
            Err(e) => {
                if let Some(attempt) = self.attempt.take() {
                    attempt.failed();
                }
                if let Some(mut session) = self.session.take() {
                    session.shutdown().await;
                }
                Err(e)
            }
        }
    }

    /// Give the session back to the connector's pool if the answer was read to its end,
    /// else close it; the attempt's slot goes with it.
    pub async fn release(&mut self) {
        if let Some(mut session) = self.session.take() {
            if session.response_done() {
                connect::release(session, &self.peer, self.keepalive).await;
            } else {
                session.shutdown().await;
            }
        }
        self.attempt = None;
    }
}

impl Body {
    /// The whole body, up to `max` bytes (more is an error: the answer is not kept).
    pub async fn read_all(&mut self, max: usize) -> Result<Bytes, BodyError> {
        Ok(self.read_all_with_trailers(max).await?.0)
    }

    /// [`Body::read_all`], and the trailers that ended the body, if any (gRPC's status).
    pub async fn read_all_with_trailers(
        &mut self,
        max: usize,
    ) -> Result<(Bytes, Option<http::HeaderMap>), BodyError> {
        let mut body = bytes::BytesMut::new();
        loop {
            match self.next().await.map_err(BodyError::Read)? {
                Piece::Data { chunk, last } => {
                    if body.len() + chunk.len() > max {
                        self.release().await;
                        return Err(BodyError::TooLarge(max));
                    }
                    body.extend_from_slice(&chunk);
                    if last {
                        return Ok((body.freeze(), None));
                    }
                }
                Piece::Trailers(t) => return Ok((body.freeze(), Some(t))),
                Piece::End => return Ok((body.freeze(), None)),
            }
        }
    }
}

/// Why an answer's body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Read(Box<Error>),
}

impl Head {
    /// Close the exchange without reading the body (an answer not used: a 5xx retried
    /// elsewhere).
    pub async fn discard(mut self) {
        self.session.shutdown().await;
    }
}
