//! Test and demo support that needs the gateway's internals: the h2c gRPC mock and client
//! (`grpc`, on the gateway's protobuf codec) and the cache filler (`cache_fill`, on its
//! cache). The rest of the mock fleet (mock backend, fleet start-up, HTTP/1.1 client, relay,
//! traffic generator, GeoIP database writer) is the workspace crate `switchyard-testkit`
//! (`testkit/`), re-exported here so that the demo, the examples, the integration tests and
//! the benches reach all of it as `switchyard::testkit::*`.
//!
//! Nothing here is on the gateway's request path.

pub mod cache_fill;
pub mod grpc;

pub use switchyard_testkit::{client, fleet, mmdb, mock, relay, traffic};
