//! Switchyard's mock fleet: a mock ML backend that speaks the three protocol families
//! (`mock`), the start-up of a fleet of them (`fleet`), a small HTTP/1.1 client (`client`),
//! a TCP relay that adds distance on loopback (`relay`), a traffic generator (`traffic`) and
//! the writer of the reproducible test GeoIP database (`mmdb`). None of it is on the
//! gateway's request path, and none of it uses the gateway.
//!
//! Why a workspace crate and not a dev-dependency or a module of the gateway: the demo and
//! the scenario are product commands (`switchyard demo`, `switchyard scenario`) that run this
//! fleet in-process, so the gateway depends on it at run time and it cannot be test-only;
//! and as a module it made ~3.5k lines of mocks read as part of the gateway. As its own
//! crate, gateway/src is the gateway, this crate cannot reach into the gateway's internals,
//! and it adds no dependency (every crate it uses is already in the gateway's tree). The
//! gateway re-exports it as `switchyard::testkit`, beside the two pieces of test support
//! that do use gateway internals (the gRPC mock, on the gateway's protobuf codec, and the
//! cache filler, on its cache), so every existing path keeps working.

pub mod client;
pub mod fleet;
pub mod mmdb;
pub mod mock;
pub mod relay;
pub mod traffic;
