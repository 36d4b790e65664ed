//! How many servers a pool needs so that a tier meets its deadline at its percentile: the
//! M/M/c queue with Erlang C.
//!
//! A pool is `c` servers (replicas × concurrency per replica, each slot serving one request
//! at a time), requests arrive at rate λ (Poisson) and take an exponential service time of
//! mean `S` (μ = 1/S). With offered load `a = λS` and `c > a`, the chance a request waits at
//! all is Erlang C, and the wait beyond `t` is exponential:
//!
//! ```text
//! P(W > t) = C(c, a) · exp(−(cμ − λ) · t)
//! ```
//!
//! A request meets its deadline `d` when its wait is at most `d − S` (the mean service time
//! is the budget's other part), so [`servers_needed`] is the smallest `c` with
//! `P(W > d − S) ≤ 1 − percentile`. `C(c, a)` comes from the Erlang B recursion
//! (`B(0) = 1`, `B(k) = a·B(k−1) / (k + a·B(k−1))`, `C = c·B / (c − a(1 − B))`), which is
//! stable for any `c` (no factorials, no powers). Pure and allocation-free.

/// The most servers [`servers_needed`] looks for before it gives up and answers this.
pub const MAX_SERVERS: u32 = 1_000_000;

/// Erlang C: the chance an arrival waits, with `c` servers and offered load `a` (Erlangs).
/// 1 when the queue is unstable (`c ≤ a`).
pub fn erlang_c(c: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    if f64::from(c) <= a {
        return 1.0;
    }
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    let c = f64::from(c);
    (c * b / (c - a * (1.0 - b))).clamp(0.0, 1.0)
}

/// The chance a request waits longer than `t_s` seconds: `C(c, a)·exp(−(cμ − λ)t)`.
pub fn wait_exceeds(c: u32, rate: f64, service_s: f64, t_s: f64) -> f64 {
    let a = rate * service_s;
    let pc = erlang_c(c, a);
    if pc >= 1.0 || service_s <= 0.0 {
        return pc;
    }
    let drain = f64::from(c) / service_s - rate;
    pc * (-drain * t_s.max(0.0)).exp()
}

/// The fewest servers (concurrent slots) such that a request arriving at `rate` per second,
/// served in `service_s` seconds on average, waits longer than `deadline_s − service_s`
/// with a chance of at most `1 − percentile`. 0 when nothing arrives. When the deadline is
/// shorter than the service time, no queueing at all is allowed (`P(W > 0)`), the best
/// any number of servers can do.
pub fn servers_needed(rate: f64, service_s: f64, deadline_s: f64, percentile: f64) -> u32 {
    if !(rate > 0.0 && service_s > 0.0) {
        return 0;
    }
    let allowed = (1.0 - percentile).max(0.0);
    let slack = (deadline_s - service_s).max(0.0);
    let a = rate * service_s;
    // Below `a` the queue is unstable; start just above it.
    let mut c = (a.floor() as u32).saturating_add(1).max(1);
    // The Erlang B recursion from scratch per `c` is O(c); step `c` up carrying `B`.
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    while c < MAX_SERVERS {
        let cf = f64::from(c);
        let pc = (cf * b / (cf - a * (1.0 - b))).clamp(0.0, 1.0);
        let p = pc * (-(cf / service_s - rate) * slack).exp();
        if p <= allowed {
            return c;
        }
        c += 1;
        b = a * b / (f64::from(c) + a * b);
    }
    MAX_SERVERS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Known values of Erlang C (closed forms for small `c`, and published tables).
    #[test]
    fn erlang_c_known_values() {
        assert!(close(erlang_c(1, 0.5), 0.5)); // M/M/1: ρ
        assert!(close(erlang_c(2, 1.0), 1.0 / 3.0));
        assert!(close(erlang_c(3, 2.0), 4.0 / 9.0));
        assert!((erlang_c(5, 3.0) - 0.236_151_6).abs() < 1e-6);
        assert!((erlang_c(11, 10.0) - 0.682_118_2).abs() < 1e-6);
        assert!((erlang_c(100, 90.0) - 0.216_940_5).abs() < 1e-6);
        assert_eq!(erlang_c(3, 3.0), 1.0);
        assert_eq!(erlang_c(3, 0.0), 0.0);
    }

    #[test]
    fn wait_tail_is_exponential_in_the_spare_rate() {
        // M/M/1, λ = 5/s, S = 0.1 s: ρ = 0.5, P(W > t) = 0.5·exp(−5t).
        let p = wait_exceeds(1, 5.0, 0.1, 0.2);
        assert!(close(p, 0.5 * (-1.0f64).exp()));
    }

    #[test]
    fn servers_needed_is_the_smallest_that_meets_the_percentile() {
        // λ = 100/s, S = 0.1 s (a = 10), deadline 0.3 s at p99: check the answer against
        // the definition on both sides.
        let c = servers_needed(100.0, 0.1, 0.3, 0.99);
        assert!(wait_exceeds(c, 100.0, 0.1, 0.2) <= 0.01);
        assert!(wait_exceeds(c - 1, 100.0, 0.1, 0.2) > 0.01);
        assert_eq!(c, 12);
        // No slack: waiting at all is a miss, so C(c, 10) ≤ 1%.
        let strict = servers_needed(100.0, 0.1, 0.1, 0.99);
        assert!(erlang_c(strict, 10.0) <= 0.01 && erlang_c(strict - 1, 10.0) > 0.01);
        assert!(strict > c);
        // More demand, more servers; nothing arriving, none.
        assert!(servers_needed(200.0, 0.1, 0.3, 0.99) > c);
        assert_eq!(servers_needed(0.0, 0.1, 0.3, 0.99), 0);
        // A light load still needs one.
        assert_eq!(servers_needed(0.01, 0.1, 0.3, 0.99), 1);
    }
}
