//! The `switchyard` command's library: everything the command does besides serving, over the
//! request-path library [`switchyard_gateway`] and the mock fleet [`switchyard_testkit`].
//!
//! - [`tools`]: `check`, `explain`, `diff`, `schema`: offline, on policy files;
//! - [`simulate`]: `simulate` and `tune`, a discrete-event simulation on the gateway's own
//!   decision and attempt rules;
//! - [`scenario`]: the live fault scenario (`demo --scenario fleet-faults`): the real gateway
//!   in front of a mock fleet, beside two baselines;
//! - [`demo`]: the whole system on one machine.
//!
//! None of it is on the request path: `switchyard run` is `switchyard_gateway::server`.

pub mod demo;
pub mod scenario;
pub mod simulate;
pub mod tools;
