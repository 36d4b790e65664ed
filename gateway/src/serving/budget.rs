//! The retry budget: how many retries the gateway may add on top of the requests it gets,
//! so that a failing fleet sees at most a bounded amount of extra load (no retry storm).
//!
//! A token bucket in the spirit of Finagle's `RetryBudget`: every request deposits `ratio`
//! of a token (0.2 = retries may add 20% load), a small `min_per_second` trickles in with
//! time so that a quiet gateway can still retry, and every retry withdraws one whole token.
//! The balance is capped (ten seconds of the minimum, at least ten tokens) so that a long
//! healthy spell cannot save up a storm for later. Atomics only: it sits on the request path.

use super::state::now_ms;
use crate::policy::compile::BudgetSettings;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Milli-tokens per token.
const MILLI: i64 = 1000;

/// The most milli-tokens the bucket holds: ten seconds of the minimum, at least ten tokens.
fn cap(s: &BudgetSettings) -> i64 {
    ((s.min_per_second * 10.0).max(10.0) * MILLI as f64) as i64
}

/// The shared bucket (lives in the `Fleet`, so it survives reloads).
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicI64,
    last_refill_ms: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            milli_tokens: AtomicI64::new(cap(&BudgetSettings::default())),
            last_refill_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl RetryBudget {
    /// A request arrived: it earns `ratio` of a retry.
    pub fn deposit(&self, s: &BudgetSettings) {
        self.add((s.ratio * MILLI as f64) as i64, cap(s));
    }

    /// Take one retry if the budget has it.
    pub fn try_withdraw(&self, s: &BudgetSettings) -> bool {
        self.refill(s);
        self.milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }

    /// Whole tokens left (for the admin API).
    pub fn tokens(&self) -> f64 {
        self.milli_tokens.load(Ordering::Relaxed) as f64 / MILLI as f64
    }

    fn refill(&self, s: &BudgetSettings) {
        let now = now_ms();
        let last = self.last_refill_ms.load(Ordering::Relaxed);
        if now <= last {
            return;
        }
        // Whoever wins the swap adds the elapsed time's minimum; the others add nothing.
        if self
            .last_refill_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let add = ((now - last) as f64 * s.min_per_second) as i64; // ms × tokens/s = milli-tokens
            self.add(add, cap(s));
        }
    }

    fn add(&self, milli: i64, cap: i64) {
        if milli <= 0 {
            return;
        }
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_add(milli).min(cap))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_ratio() {
        let s = BudgetSettings {
            ratio: 0.2,
            min_per_second: 0.0,
        };
        let b = RetryBudget::default();
        // Drain the starting balance.
        while b.try_withdraw(&s) {}
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit(&s);
            if b.try_withdraw(&s) {
                retries += 1;
            }
        }
        assert!((19..=20).contains(&retries), "{retries}");
    }

    #[test]
    fn the_balance_is_capped() {
        let s = BudgetSettings {
            ratio: 1.0,
            min_per_second: 0.0,
        };
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.deposit(&s);
        }
        assert_eq!(b.tokens(), 10.0);
    }
}
