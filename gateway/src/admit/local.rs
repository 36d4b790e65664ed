//! Per-instance limit state: a GCRA rate limiter, an in-flight counter and the day's spend,
//! each a lock-free atomic so the request path never waits on another request.
//!
//! These are what every request is checked against with `limits.backend: local`, and the
//! fallback (with a 1/N share of each limit when `limits.instances` is set) while the shared
//! Redis state is unreachable. The in-flight count and the spend are kept even when Redis
//! serves, so a fallback starts from this instance's true numbers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (a shared clock: Redis uses its own `TIME`).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Days since the Unix epoch, UTC: the budget's day.
pub fn utc_day(now_us: u64) -> u64 {
    now_us / 86_400_000_000
}

/// Microseconds until the next UTC midnight.
pub fn until_midnight_us(now_us: u64) -> u64 {
    86_400_000_000 - now_us % 86_400_000_000
}

/// The GCRA parameters for `rps` with `burst`: (emission interval, tolerance), microseconds.
pub fn gcra_params(rps: f64, burst: u32) -> (u64, u64) {
    let interval = (1e6 / rps).max(1.0) as u64;
    (interval, interval.saturating_mul(u64::from(burst.max(1))))
}

/// Generic cell rate algorithm: one atomic, the theoretical arrival time (TAT). A request
/// at `now` is allowed when `max(TAT, now) + interval - now <= tolerance`, which allows
/// `burst` requests at once and `rps` sustained.
#[derive(Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// `Ok` and the request is counted, or `Err(microseconds until one would be allowed)`.
    pub fn check(&self, now: u64, interval: u64, tolerance: u64) -> Result<(), u64> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + interval;
            if next - now > tolerance {
                return Err(next - tolerance - now);
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Microseconds a bucket of `tokens_per_minute` takes to earn back `tokens`.
pub fn token_cost_us(tokens: i64, tokens_per_minute: f64) -> i64 {
    (tokens as f64 * 60e6 / tokens_per_minute.max(1e-6)).round() as i64
}

/// One minute: a token bucket holds (and may spend at once) one minute's worth.
pub const TOKEN_WINDOW_US: u64 = 60_000_000;

/// Tokens per minute, as a debt clock (GCRA's TAT, charged after the fact): a request is
/// admitted while the bucket is not empty (`TAT - now < one minute`), then charged its
/// estimated tokens; the answer's `usage` corrects the charge either way. The bucket may go
/// into debt by one request's tokens, which later requests pay back by waiting.
#[derive(Default)]
pub struct TokenBucket {
    tat: AtomicU64,
}

impl TokenBucket {
    /// `Err(microseconds until the bucket holds a token again)`.
    pub fn check(&self, now: u64) -> Result<(), u64> {
        let tat = self.tat.load(Ordering::Acquire).max(now);
        if tat - now >= TOKEN_WINDOW_US {
            return Err(tat - now - TOKEN_WINDOW_US + 1);
        }
        Ok(())
    }

    /// Charge `cost_us` (negative: a refund, never below `now`).
    pub fn charge(&self, now: u64, cost_us: i64) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(
                    (tat.max(now) as i64)
                        .saturating_add(cost_us)
                        .max(now as i64) as u64,
                )
            });
    }
}

/// Requests in flight.
#[derive(Default)]
pub struct InFlight(AtomicU32);

impl InFlight {
    /// Take a slot if fewer than `limit` are taken (`None`: no limit, always taken).
    pub fn try_acquire(&self, limit: Option<u32>) -> bool {
        let mut n = self.0.load(Ordering::Acquire);
        loop {
            if limit.is_some_and(|l| n >= l) {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => n = seen,
            }
        }
    }

    pub fn release(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// The day's spend, in micro-USD, and which UTC day it is for. A new day starts at zero.
#[derive(Default)]
pub struct DailySpend {
    day: AtomicU64,
    micro_usd: AtomicU64,
}

impl DailySpend {
    pub fn add(&self, now: u64, usd: f64) {
        self.roll(now);
        let micros = (usd.max(0.0) * 1e6).round() as u64;
        self.micro_usd.fetch_add(micros, Ordering::AcqRel);
    }

    pub fn today(&self, now: u64) -> f64 {
        self.roll(now);
        self.micro_usd.load(Ordering::Acquire) as f64 / 1e6
    }

    /// Start the new day: the first caller to see it resets the sum (a charge racing the
    /// reset may land on either side of midnight; that is within the estimate's accuracy).
    fn roll(&self, now: u64) {
        let day = utc_day(now);
        let seen = self.day.load(Ordering::Acquire);
        if seen != day
            && self
                .day
                .compare_exchange(seen, day, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.micro_usd.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let g = Gcra::default();
        let (interval, tolerance) = gcra_params(10.0, 3);
        let t0 = 1_000_000_000;
        for _ in 0..3 {
            assert!(g.check(t0, interval, tolerance).is_ok());
        }
        let wait = g.check(t0, interval, tolerance).unwrap_err();
        assert_eq!(wait, 100_000);
        assert!(g.check(t0 + wait, interval, tolerance).is_ok());
        assert!(g.check(t0 + wait, interval, tolerance).is_err());
    }

    #[test]
    fn a_token_bucket_holds_a_minute_and_is_corrected_by_usage() {
        let b = TokenBucket::default();
        let t0 = 1_000_000_000_000;
        // 600 tokens a minute: 100 ms a token.
        assert!(b.check(t0).is_ok());
        b.charge(t0, token_cost_us(500, 600.0));
        assert!(b.check(t0).is_ok(), "100 tokens left");
        b.charge(t0, token_cost_us(200, 600.0));
        // 100 tokens in debt: 10 s until the bucket holds one again.
        let wait = b.check(t0).unwrap_err();
        assert_eq!(wait, 10_000_001);
        // The answers used 300 fewer than estimated: refunded.
        b.charge(t0, token_cost_us(-300, 600.0));
        assert!(b.check(t0).is_ok());
        assert!(b.check(t0 + wait).is_ok());
    }

    #[test]
    fn in_flight_is_bounded() {
        let f = InFlight::default();
        assert!(f.try_acquire(Some(2)));
        assert!(f.try_acquire(Some(2)));
        assert!(!f.try_acquire(Some(2)));
        f.release();
        assert!(f.try_acquire(Some(2)));
        assert!(f.try_acquire(None));
        assert_eq!(f.get(), 3);
    }

    #[test]
    fn spend_resets_at_utc_midnight() {
        let s = DailySpend::default();
        let day = 86_400_000_000u64;
        s.add(5 * day + 10, 1.5);
        s.add(5 * day + 20, 0.25);
        assert_eq!(s.today(5 * day + 30), 1.75);
        assert_eq!(s.today(6 * day), 0.0);
        assert_eq!(until_midnight_us(5 * day + 1), day - 1);
    }
}
