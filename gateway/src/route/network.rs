//! The network terms of the latency estimate, each counted once:
//! `latency = client → gateway + gateway → pool round trip + service time × queueing`.
//!
//! - **client → gateway**: the kernel's smoothed RTT of the client's own TCP connection when
//!   the client connected directly (`Class::client_rtt`), else the policy's
//!   `rtt_ms[client region][gateway region]`.
//! - **gateway → pool**: measured per endpoint by the active health probes (the time from
//!   sending the probe's request to its status line, on a connection already open, so it is
//!   one round trip through whatever lies between: relays, load balancers, TLS terminators),
//!   with `rtt_ms[gateway region][pool region]` as the prior until a probe has answered.
//! - **service time**: every upstream time observed minus the round trip of the endpoint that
//!   answered ([`service_sample`]), smoothed by the peak EWMA in `state`.
//!
//! When the instance does not know its region (`RoutingTable::gateway_region` is `None`) the
//! model is the one before regions existed: the gateway sits beside its clients, the whole
//! network path is `rtt_ms[client region][pool region]` and the upstream time is all service.
//!
//! Everything here is a pure function of the compiled table, the class and the live atomics
//! (`state`, passed beside the table), so a simulator can run the same model on a virtual
//! clock.

use crate::classify::Class;
use crate::policy::compile::{Pool, PoolId, RoutingTable};
use crate::serving::state::{EndpointState, PoolState};
use crate::serving::Serving;
use std::time::Duration;

/// The client → gateway part: measured on the client's socket, or the matrix; zero when the
/// gateway's region is unknown (the old model counts the whole path in [`pool_rtt`]).
pub fn client_rtt(class: &Class, table: &RoutingTable) -> Duration {
    match table.gateway_region {
        Some(g) => class
            .client_rtt
            .unwrap_or_else(|| table.rtt(class.region, g)),
        None => Duration::ZERO,
    }
}

/// The gateway → pool round trip for a request from `class`: the pool's measured RTT (from
/// its live `state`), else the matrix prior (see the module docs for the
/// gateway-region-less model).
pub fn pool_rtt(pool: &Pool, state: &PoolState, class: &Class, table: &RoutingTable) -> Duration {
    match table.gateway_region {
        Some(g) => state.rtt().unwrap_or_else(|| table.rtt(g, pool.region)),
        None => table.rtt(class.region, pool.region),
    }
}

/// The round trip inside an upstream time observed on `pool` (what [`observe_upstream`]
/// takes out of it, at the pool level): measured, else the prior, else zero.
pub fn upstream_rtt(pool: &Pool, state: &PoolState, table: &RoutingTable) -> Duration {
    state
        .rtt()
        .or_else(|| table.gateway_region.map(|g| table.rtt(g, pool.region)))
        .unwrap_or(Duration::ZERO)
}

/// The gateway → pool round trip as far as the instance knows it, independent of any client
/// (what `/admin/pools` and the status page show): measured, the prior, or `None` when the
/// instance has no region and nothing was measured.
pub fn pool_rtt_now(
    pool: &Pool,
    state: &PoolState,
    table: &RoutingTable,
) -> (Option<Duration>, &'static str) {
    match (state.rtt(), table.gateway_region) {
        (Some(rtt), _) => (Some(rtt), "measured"),
        (None, Some(g)) => (Some(table.rtt(g, pool.region)), "prior"),
        (None, None) => (None, "unknown"),
    }
}

/// The round trip to take out of an upstream time observed on `endpoint` of `pool`: the
/// endpoint's measured RTT, else the pool's, else the matrix prior (zero when the gateway's
/// region is unknown: then the upstream time is all service, as in the old model).
fn rtt_to_subtract(
    pool: &PoolState,
    endpoint: &EndpointState,
    prior: Option<Duration>,
) -> Duration {
    endpoint
        .rtt()
        .or_else(|| pool.rtt())
        .or(prior)
        .unwrap_or(Duration::ZERO)
}

/// The service time in one observed upstream time (request sent → response header): the
/// upstream time minus the network round trip, never below 2% of the upstream time (a
/// prior larger than the truth must not turn every sample into zero).
pub fn service_sample(
    pool: &PoolState,
    endpoint: &EndpointState,
    prior: Option<Duration>,
    upstream: Duration,
) -> Duration {
    upstream
        .saturating_sub(rtt_to_subtract(pool, endpoint, prior))
        .max(upstream / 50)
}

/// Feed one observed upstream time of `(pool, endpoint)` into the live estimates: the one
/// place every attempt records a sample. Returns the service time in it; `learn: false`
/// (a stream's head) computes it without feeding the estimates.
pub fn observe_upstream(
    table: &Serving,
    (pool_id, ep): (PoolId, u16),
    upstream: Duration,
    learn: bool,
) -> Duration {
    let pool = &table.pools[pool_id as usize];
    let prior = table.gateway_region.map(|g| table.rtt(g, pool.region));
    let Some(endpoint) = table.live.endpoints(pool_id).get(ep as usize) else {
        return upstream;
    };
    let state = table.live.pool(pool_id);
    let service = service_sample(state, endpoint, prior, upstream);
    if learn {
        state.observe(service);
        endpoint.observe(service);
    }
    service
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::state::Fleet;

    #[test]
    fn the_round_trip_is_taken_out_of_upstream_time_once() {
        let fleet = Fleet::default();
        let pool = fleet.pool("gpu", Duration::from_millis(5));
        let ep = fleet.endpoint("gpu", "127.0.0.1:1");
        let ms = Duration::from_millis;
        // Nothing measured, no prior: all service (the old model).
        assert_eq!(service_sample(&pool, &ep, None, ms(97)), ms(97));
        // The matrix prior until a probe answers.
        assert_eq!(service_sample(&pool, &ep, Some(ms(90)), ms(97)), ms(7));
        // A measured round trip wins over the prior.
        ep.observe_rtt(ms(60));
        assert_eq!(service_sample(&pool, &ep, Some(ms(90)), ms(97)), ms(37));
        // A prior far above the truth leaves 2% of the sample, not zero.
        let other = fleet.endpoint("gpu", "127.0.0.1:2");
        assert_eq!(service_sample(&pool, &other, Some(ms(500)), ms(50)), ms(1));
    }
}
