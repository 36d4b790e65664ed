//! Switchyard's mock fleet: a mock ML backend that speaks the three protocol families
//! (`mock`), a mock gRPC inference server and client on the official messages (`grpc`), the
//! start-up of a fleet of them (`fleet`), a small HTTP/1.1 client (`client`), a TCP relay that
//! adds distance on loopback (`relay`), a traffic generator (`traffic`) and the writer of the
//! reproducible test GeoIP database (`mmdb`). None of it is on the gateway's request path, and
//! none of it uses the gateway: a mock that decoded requests with the gateway's own code
//! could not catch the gateway mangling them.
//!
//! Who depends on it: the request-path library (`switchyard-gateway`) only as a
//! dev-dependency; the `switchyard` command as a normal one, because the demo and the live
//! scenario run this fleet in-process.

pub mod client;
pub mod fleet;
pub mod grpc;
pub mod http1;
pub mod mmdb;
pub mod mock;
pub mod relay;
pub mod traffic;
