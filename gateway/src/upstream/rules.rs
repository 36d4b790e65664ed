//! The rules every attempt follows, as functions of the table, its live state and a clock:
//! the live loop (`upstream::send`) calls them with the process clock and the simulator
//! (`switchyard simulate`) with its virtual one, so the two cannot drift apart. What the
//! simulator models differently is listed in one place, in its module documentation.

use crate::classify::Class;
use crate::error::GatewayError;
use crate::policy::compile::PoolId;
use crate::route::{self, Decision, Reason};
use crate::serving::Serving;
use crate::telemetry as t;
use std::time::Duration;

/// Take in-flight slots on `target`: the pool's and the endpoint's, with compare-and-swap so
/// that a burst cannot overshoot `concurrency`. Both or neither.
pub fn take(table: &Serving, target: (PoolId, u16)) -> bool {
    let pool = &table.pools[target.0 as usize];
    let state = table.live.pool(target.0);
    if !state.try_acquire(pool.concurrency) {
        return false;
    }
    if table
        .live
        .endpoint(target.0, target.1 as usize)
        .try_acquire(pool.endpoint_limit())
    {
        return true;
    }
    state.release();
    false
}

/// Give back what [`take`] took.
pub fn give_back(table: &Serving, target: (PoolId, u16)) {
    table.live.pool(target.0).release();
    table.live.endpoint(target.0, target.1 as usize).release();
}

/// The slot for the next attempt: `decision`'s target, and on a lost race for the last slot
/// (or for an affinity endpoint's bounded load, [`route::affinity_holds`]) a new decision on
/// the fresh counts (the next candidate, or the tier's fallback), up to four times. Returns the decision that holds, and the target whose slots were taken.
pub fn take_slot(
    table: &Serving,
    class: &Class,
    tried: &[(PoolId, u16)],
    mut decision: Decision,
    now_ms: u64,
) -> (Decision, Option<(PoolId, u16)>) {
    for round in 0..4 {
        let Some(target) = decision.target else {
            break;
        };
        if take(table, target) {
            // Bounded load is a preference: the last round keeps what it took.
            if round == 3 || route::affinity_holds(class, table, target, tried, now_ms) {
                return (decision, Some(target));
            }
            give_back(table, target);
        }
        decision = route::decide(class, table, tried, now_ms);
    }
    (decision, None)
}

/// What a request that found no slot is refused as: the pool it was decided for filled up
/// meanwhile, or every pool that could take it is full (`overloaded`: 503 with
/// `Retry-After`, whatever the decision's reason was — meets the deadline, the tier's
/// fastest fallback, a probe), the tier sheds, or nothing serves it.
pub fn no_slot(reason: Reason) -> Reason {
    match reason {
        Reason::MeetsDeadline | Reason::Overloaded | Reason::FallbackFastest | Reason::Probe => {
            Reason::Overloaded
        }
        Reason::Shed => Reason::Shed,
        _ => Reason::NoCandidate,
    }
}

/// The error for [`no_slot`].
pub fn no_slot_error(class: &Class, table: &Serving, reason: Reason) -> GatewayError {
    let tier = &table.tiers[class.tier as usize];
    match no_slot(reason) {
        Reason::Overloaded => GatewayError::Overloaded {
            tier: tier.name.clone(),
        },
        Reason::Shed => GatewayError::Shed {
            tier: tier.name.clone(),
            deadline_ms: class.deadline.as_millis(),
        },
        _ => GatewayError::NoCandidate {
            model: class.model.clone(),
            tier: tier.name.clone(),
        },
    }
}

/// Whether another attempt may be made, `elapsed` into the request after `tried` attempts:
/// attempts left, time left before the deadline, and a token in the retry budget (an empty
/// budget is counted). A refused connect is always safe to retry under this rule: nothing
/// reached the backend.
pub fn retry_allowed(table: &Serving, class: &Class, tried: usize, elapsed: Duration) -> bool {
    let within_deadline = elapsed < class.deadline.max(Duration::from_millis(10));
    if (tried as u32) >= table.upstream.max_attempts || !within_deadline {
        return false;
    }
    if table.live.budget.try_withdraw(&table.upstream.retry_budget) {
        return true;
    }
    metrics::counter!(t::RETRY_BUDGET_EXHAUSTED).increment(1);
    false
}

/// Whether an attempt that may have reached the backend (a timeout, a cut connection, a
/// 5xx) may be made again: idempotent routes only, another candidate left, and
/// [`retry_allowed`].
pub fn may_retry(
    table: &Serving,
    class: &Class,
    tried: &[(PoolId, u16)],
    elapsed: Duration,
    now_ms: u64,
) -> bool {
    table.routes[class.route as usize].idempotent
        && route::decide(class, table, tried, now_ms).target.is_some()
        && retry_allowed(table, class, tried.len(), elapsed)
}

/// The tier's `hedge_after` when this request is hedged: an inference request that is not
/// streamed (a hedge races response headers, and a stream's header says nothing of its
/// first token).
pub fn hedges(table: &Serving, class: &Class) -> Option<f64> {
    table.tiers[class.tier as usize]
        .hedge_after
        .filter(|_| class.inference && !class.streaming)
}

/// How long a hedging tier waits for its first attempt on `pool` before sending a second:
/// the attempt's expected time (`network`, the round trip, plus the pool's service-time
/// estimate) times the tier's `hedge_after`.
pub fn hedge_delay(
    table: &Serving,
    pool: PoolId,
    network: Duration,
    factor: f64,
    now_ms: u64,
) -> Duration {
    let state = table.live.pool(pool);
    (network + state.service_time_behind(now_ms, network)).mul_f64(factor)
}

/// Where a hedge goes: the next-best candidate without the endpoints tried, if it meets the
/// deadline or is the tier's fallback.
pub fn hedge_target(
    table: &Serving,
    class: &Class,
    tried: &[(PoolId, u16)],
    now_ms: u64,
) -> Option<Decision> {
    let next = route::decide(class, table, tried, now_ms);
    (next.target.is_some()
        && matches!(next.reason, Reason::MeetsDeadline | Reason::FallbackFastest))
    .then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_whose_pool_filled_up_is_overloaded_whatever_it_was_decided_for() {
        // Told "overloaded, retry after", not "no healthy pool serves the model": the pool
        // exists and is up, it is full.
        for r in [
            Reason::MeetsDeadline,
            Reason::FallbackFastest,
            Reason::Probe,
            Reason::Overloaded,
        ] {
            assert_eq!(no_slot(r), Reason::Overloaded, "{r:?}");
        }
        assert_eq!(no_slot(Reason::Shed), Reason::Shed);
        assert_eq!(no_slot(Reason::NoCandidate), Reason::NoCandidate);
    }
}
