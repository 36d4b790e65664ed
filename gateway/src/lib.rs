//! Switchyard's request path: a routing gateway for ML inference, built on Pingora.
//!
//! ```text
//! client ─▶ pipeline ─▶ classify ─▶ admit ─▶ cache ─▶ route ─▶ upstream ─▶ edge | GPU | hosted
//!                                              │hit       │queue
//!                                              ▼          ▼
//!                                            answer     queue (202; dispatcher ─▶ batch pools)
//! control plane: YAML ─▶ policy (compile) ─▶ serving (+ live state, resources) ─▶ ArcSwap
//! ```
//!
//! The modules, bottom to top (imports point down; `docs/architecture.md` is the map):
//! - [`policy`]: YAML → validated, compiled plain data (the routing table);
//! - [`serving`]: a table with its live state and resources, published as one; reloads;
//! - [`classify`]: request facts → `Class`; [`grpc`]: the gRPC wire format;
//! - [`route`]: `Class` → `Decision` (estimates, candidates, endpoint); health checks;
//! - [`error`]: every client-visible error and its one mapping; [`reply`]: answers as values;
//! - [`admit`]: tenant limits and budgets; [`cache`]: the prediction cache;
//! - [`capacity`]: desired replicas per pool (Erlang C, forecast) and the KEDA scaler;
//! - [`observe`]: access and decision logs, the status page's aggregate;
//! - [`discovery`]: each protocol's own endpoints; [`queue`]: the batch queue;
//! - [`upstream`]: the one way to a backend (attempt, retries, hedging, connections);
//! - [`trace`]: W3C trace context and the OTLP span exporter (off the request path);
//! - [`pipeline`]: the request path top to bottom, the only writer to clients, the record;
//! - [`admin`]: the admin listener and status page; [`tls`]: the certificate watcher;
//! - [`server`]: wiring; [`telemetry`]: metric names; [`redis`]: the RESP client.

/// `$future` written straight into a new box. `Box::pin(future)` (or any function taking the
/// future by value) builds it on the stack and copies it in whole, its full size however
/// little of it is set yet: for the request's future that was ~10 KiB, a tenth of a request's
/// instructions. Built as the argument of `Box::write`, it is written in place.
macro_rules! in_box {
    ($future:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $future))
    };
}

pub mod admin;
pub mod admit;
pub mod cache;
pub mod capacity;
pub mod classify;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod queue;
pub mod redis;
pub mod reply;
pub mod rollout;
pub mod route;
pub mod server;
pub mod serving;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;

/// Run a future from a box, built by `make` outside the calling async body. An async body
/// keeps room in its own state for every future it builds, even one moved into a box at
/// once; the request's future is moved into a box per request, so its size is paid on every
/// request. The paths most requests do not take (errors, the gateway's own answers, the
/// queue, hedging, a new connection) are built here instead.
#[inline(never)]
pub(crate) fn cold<'a, T, F>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>
where
    F: std::future::Future<Output = T> + Send + 'a,
{
    let boxed: std::pin::Pin<Box<F>> = in_box!(make());
    boxed
}
