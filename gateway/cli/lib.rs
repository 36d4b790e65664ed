//! The `switchyard` command's library: everything the command does besides serving, over the
//! request-path library [`switchyard_gateway`] and the mock fleet [`switchyard_testkit`].
//!
//! - [`tools`]: `check`, `explain`, `diff`, `schema`: offline, on policy files;
//! - [`simulate`]: `simulate` and `tune`, a discrete-event simulation on the gateway's own
//!   decision and attempt rules;
//! - [`fleet_faults`]: the fault scenario, defined once (fleet, traffic, faults, policy);
//! - [`scenario`]: the scenario run live (`demo --scenario fleet-faults`): the real gateway
//!   in front of a mock fleet, beside two baselines;
//! - [`demo`]: the whole system on one machine.
//!
//! None of it is on the request path: `switchyard run` is `switchyard_gateway::server`.

pub mod demo;
pub mod fleet_faults;
pub mod scenario;
pub mod simulate;
pub mod tools;
