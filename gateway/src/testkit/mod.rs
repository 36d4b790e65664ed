//! Test and demo support shipped with the library: a mock ML backend that speaks the three
//! protocol families (and, in `grpc`, its h2c gRPC side with a gRPC client), a small
//! HTTP/1.1 client, a TCP relay that adds distance on loopback, and a writer for the
//! reproducible test GeoIP database. The demo, the examples, the integration tests and the benches all use these, so
//! they live here once instead of being copied into each.
//!
//! Nothing here is on the gateway's request path.

pub mod cache_fill;
pub mod client;
pub mod grpc;
pub mod mmdb;
pub mod mock;
pub mod relay;
pub mod traffic;
