//! Switchyard: a routing gateway for ML inference, built on Pingora.
//!
//! ```text
//! client ──▶ classify ──▶ (cache) ──▶ route ──▶ edge pool | central GPU pool | batch pool
//!              │                        │
//!              └── region (GeoIP),      └── estimate latency and cost per candidate pool,
//!                  tier, model,             pick the cheapest that meets the deadline,
//!                  cacheability             power-of-two-choices inside the pool
//! control plane: YAML policy ─▶ validate ─▶ compile ─▶ ArcSwap snapshot (reload keeps last good)
//! ```
//!
//! The modules follow the request path: [`classify`] turns request facts into a `Class`,
//! [`admit`] checks the caller's key, rate, concurrency and budget (shared through [`redis`]
//! when several instances run), [`route`] turns a `Class` into a `Decision`, [`proxy`] is the Pingora glue that calls them
//! in order, [`policy`] is the control plane (the routing table, pure data), [`serving`] publishes
//! a table together with its live state (`serving::state`), [`admin`] the admin listener,
//! [`telemetry`] the metric names, and [`error`] the one mapping from errors to HTTP responses.

pub mod admin;
pub mod admit;
pub mod cache;
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
pub mod route;
pub mod server;
pub mod serving;
pub mod telemetry;
pub mod tls;
pub mod upstream;
