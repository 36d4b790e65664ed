//! The arrival rate ahead of now: robust additive Holt-Winters with a daily season.
//!
//! Each pool's rate is observed once per bucket ([`super::BUCKET`]); the forecast `h`
//! buckets ahead is `level + h·trend + season[(t + h) mod period]`. Additive rather than
//! multiplicative because a pool's rate goes to zero at night (a multiplicative season
//! divides by it). Robust (Gelper, Fried and Croux, "Robust forecasting with exponential and
//! Holt–Winters smoothing", 2010): an observation's surprise is clipped to `K` times a
//! running scale of surprises before it updates the state, so one spike does not raise the
//! level nor write itself into tomorrow's season. A real surge is not missed for it: the
//! capacity meter takes the larger of the replicas for the rate now and for the forecast.
//!
//! Until one season has been seen the season is unknown and the forecast is Holt's (level and
//! trend); at the end of the first season it is initialised from that season's deviations
//! from its mean. Pure: the caller owns the clock.

/// Surprises beyond this many running scales are clipped (Huber's ψ at 2–3 is usual; 3
/// lets an ordinary diurnal ramp through untouched).
const K: f64 = 3.0;

#[derive(Debug, Clone)]
pub struct HoltWinters {
    alpha: f64,
    beta: f64,
    gamma: f64,
    level: f64,
    trend: f64,
    /// Running mean absolute surprise (the scale surprises are clipped against).
    scale: f64,
    season: Vec<f64>,
    /// The first season, as observed, until it is complete.
    first: Vec<f64>,
    /// Observations so far.
    t: u64,
}

impl HoltWinters {
    /// A forecaster with a season of `period` buckets (at least 1) and the usual smoothing
    /// constants for a rate observed each minute (level 0.2, trend 0.02, season 0.2).
    pub fn new(period: usize) -> Self {
        Self::with(period, 0.2, 0.02, 0.2)
    }

    pub fn with(period: usize, alpha: f64, beta: f64, gamma: f64) -> Self {
        let period = period.max(1);
        HoltWinters {
            alpha,
            beta,
            gamma,
            level: 0.0,
            trend: 0.0,
            scale: 0.0,
            season: vec![0.0; period],
            first: Vec::with_capacity(period),
            t: 0,
        }
    }

    /// Whether a whole season has been seen.
    pub fn seasonal(&self) -> bool {
        self.first.len() == self.season.len() && self.t >= self.season.len() as u64
    }

    /// One bucket's observed rate.
    pub fn observe(&mut self, x: f64) {
        let x = if x.is_finite() { x.max(0.0) } else { 0.0 };
        let period = self.season.len();
        let i = (self.t % period as u64) as usize;
        if self.t == 0 {
            self.level = x;
        } else {
            let s = if self.seasonal() { self.season[i] } else { 0.0 };
            let expected = self.level + self.trend + s;
            let surprise = x - expected;
            // Clip only once the scale means something (a few observations in).
            let clipped = if self.t > 3 && self.scale > 0.0 {
                surprise.clamp(-K * self.scale, K * self.scale)
            } else {
                surprise
            };
            self.scale = 0.9 * self.scale
                + 0.1
                    * surprise.abs().min(if self.scale > 0.0 {
                        K * self.scale
                    } else {
                        f64::INFINITY
                    });
            let x = expected + clipped;
            let prev = self.level;
            self.level = self.alpha * (x - s) + (1.0 - self.alpha) * (self.level + self.trend);
            self.trend = self.beta * (self.level - prev) + (1.0 - self.beta) * self.trend;
            if self.seasonal() {
                self.season[i] = self.gamma * (x - self.level) + (1.0 - self.gamma) * s;
            }
        }
        if self.first.len() < period {
            self.first.push(x);
            if self.first.len() == period {
                let mean = self.first.iter().sum::<f64>() / period as f64;
                for (s, v) in self.season.iter_mut().zip(&self.first) {
                    *s = v - mean;
                }
                // The level tracked the season's own swings; restart it at the current
                // point of the season.
                self.level = mean;
                self.trend = 0.0;
            }
        }
        self.t += 1;
    }

    /// The rate `h` buckets after the last observation (never negative).
    pub fn forecast(&self, h: u32) -> f64 {
        if self.t == 0 {
            return 0.0;
        }
        let s = if self.seasonal() {
            let period = self.season.len() as u64;
            self.season[((self.t + u64::from(h).saturating_sub(1)) % period) as usize]
        } else {
            0.0
        };
        (self.level + f64::from(h) * self.trend + s).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// A deterministic noise in [−1, 1].
    fn noise(i: u64) -> f64 {
        let x = (i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
            >> 33;
        (x as f64 / (1u64 << 31) as f64) - 1.0
    }

    fn diurnal(i: u64, period: u64) -> f64 {
        100.0 + 80.0 * (2.0 * PI * (i % period) as f64 / period as f64).sin()
    }

    /// On a noisy daily sine the forecast two buckets ahead tracks the truth (within 10% on
    /// average) after three days, and beats "the rate now" on the ramps, which is the point.
    #[test]
    fn diurnal_trace() {
        let period = 48;
        let mut hw = HoltWinters::new(period as usize);
        let mut err_hw = 0.0;
        let mut err_naive = 0.0;
        let mut n = 0.0;
        let h = 2;
        for i in 0..(5 * period) {
            let x = diurnal(i, period) + 5.0 * noise(i);
            hw.observe(x);
            if i >= 3 * period {
                let truth = diurnal(i + u64::from(h), period);
                err_hw += (hw.forecast(h) - truth).abs() / truth;
                err_naive += (x - truth).abs() / truth;
                n += 1.0;
            }
        }
        let (mape, naive) = (err_hw / n, err_naive / n);
        assert!(mape < 0.10, "forecast error {mape}");
        assert!(mape < naive * 0.7, "forecast {mape} vs naive {naive}");
    }

    /// A single bucket at ten times the rate neither lifts the next buckets' forecast nor
    /// writes itself into the next day's season.
    #[test]
    fn spiky_trace() {
        let period = 24;
        let mut hw = HoltWinters::new(period as usize);
        let base = |i: u64| 50.0 + 2.0 * noise(i);
        let spike_at = 3 * period + 5;
        for i in 0..(4 * period) {
            let x = if i == spike_at { 500.0 } else { base(i) };
            hw.observe(x);
            if i == spike_at + 1 {
                assert!(hw.forecast(1) < 60.0, "after the spike: {}", hw.forecast(1));
            }
        }
        // Next day, the bucket of the spike (observed 4·period so far; ahead to spike+period).
        let h = (spike_at + period + 1 - 4 * period) as u32;
        let f = hw.forecast(h);
        assert!(f < 60.0, "next day at the spike's bucket: {f}");
    }

    /// A steady ramp is followed by the trend.
    #[test]
    fn a_trend_is_followed() {
        let mut hw = HoltWinters::new(10);
        for i in 0..200u64 {
            hw.observe(i as f64);
        }
        let f = hw.forecast(10);
        assert!((f - 209.0).abs() < 15.0, "{f}");
        assert_eq!(HoltWinters::new(4).forecast(3), 0.0);
    }
}
