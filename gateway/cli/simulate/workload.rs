//! `switchyard simulate --workload FILE`: a scripted workload in a small YAML file — phases
//! with their length and request rate (a rate curve: a step per phase, or a linear ramp
//! within one with `to_rate`), the mix of client regions, tiers (with the deadline each is
//! measured against) and big-model requests, and a timeline of faults — played against the
//! `fleet-faults` fleet.
//!
//! The file is parsed into plain "as written" types with unknown fields rejected, then
//! checked as a whole (every problem reported, not just the first) and turned into a
//! [`Workload`]. Arrivals are evenly spaced within a phase (open loop, as the live scenario
//! sends them; on a ramp, evenly spaced in the ramp's cumulative count), or a Poisson
//! process of the same rate with `arrivals: poisson`, and generated one at a time, so a
//! long workload costs no memory.
//!
//! A daily curve for `simulate --capacity` (`examples/workloads/diurnal.yaml`) is its day's
//! phases with ramps, played `cycles` times back to back, and a `capacity:` section naming
//! the pool whose replicas are simulated, the virtual length of a day (the forecast's
//! season: a day compressed into less virtual time) and a warm-up left out of the figures:
//!
//! ```yaml
//! phases:
//!   - { name: night, duration: 15m, rate: 24 }
//!   - { name: morning, duration: 10m, rate: 24, to_rate: 200 }   # a linear ramp
//! cycles: 3                                    # the phases, three times (default 1)
//! arrivals: poisson                            # default: even
//! capacity: { pool: gpu, day: 1h, warm_up: 1h }  # day default 24h, warm_up default 0
//! ```
//!
//! ```yaml
//! phases:
//!   - { name: baseline, duration: 10s, rate: 100 }
//!   - { name: surge, duration: 10s, rate: 400 }
//! regions: { us: 50, eu: 25, ap: 25 }         # weights
//! tiers:                                       # weights, deadlines, % asking the big model
//!   - { name: realtime, share: 50, deadline: 150ms }
//!   - { name: standard, share: 30, deadline: 1s, big_model: 30 }
//!   - { name: batch, share: 20, deadline: 30s, big_model: 50 }
//!   # streamed: % of the tier's requests that stream; ttft: what a stream is judged on
//!   # (its first token), e.g. - { name: chat, share: 10, deadline: 2s, streamed: 80, ttft: 300ms }
//! first_token: { gpu: 0.2 }                    # share of a stream's service time before its
//!                                              # first token, per pool (default 1)
//! faults:                                      # from / to: time since the start
//!   - { pool: edge-eu, slower: 10, from: 5s, to: 15s }
//!   - { pool: gpu, endpoint: 1, slower: 3, from: 5s, to: 8s }  # one endpoint only
//!   - { pool: gpu, slower: 6, share: 3, from: 0s, to: 20s }    # 3% of attempts stall
//!   - { pool: gpu, endpoint: 0, down: true, from: 12s, to: 20s }
//! seed: 6                                      # the traffic's seed (default 6)
//! ```

use super::{fleet_faults, Fault, Mix, PhaseSpec, Request, SimError, Workload};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use switchyard_gateway::policy::compile::parse_duration;

/// The most requests per second a phase may ask for (a typo guard, not a limit of the
/// simulator's design).
const MAX_RATE: f64 = 1_000_000.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    phases: Vec<RawPhase>,
    regions: BTreeMap<String, f64>,
    tiers: Vec<RawTier>,
    #[serde(default)]
    faults: Vec<RawFault>,
    /// Percent of requests repeating one of the last 1,000 distinct ones (same model and
    /// body: a prediction-cache hit when the route caches and the entry is fresh).
    #[serde(default)]
    repeat: f64,
    #[serde(default)]
    seed: Option<u64>,
    /// Per pool, the share (0..1] of a streamed answer's service time before its first
    /// token (default 1: all of it).
    #[serde(default)]
    first_token: BTreeMap<String, f64>,
    /// The phases played this many times back to back (default 1).
    #[serde(default)]
    cycles: Option<u32>,
    /// `even` (default) or `poisson`.
    #[serde(default)]
    arrivals: Option<String>,
    /// What `simulate --capacity` autoscales.
    #[serde(default)]
    capacity: Option<RawCapacity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    /// The fleet pool whose replicas change over time (its policy's `capacity:` and price).
    pool: String,
    /// A day's length in virtual time (default 24h).
    #[serde(default)]
    day: Option<String>,
    /// Figures count from this time on (default 0).
    #[serde(default)]
    warm_up: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    #[serde(default)]
    name: Option<String>,
    duration: String,
    rate: f64,
    /// The rate at the phase's end (a linear ramp from `rate`; default: `rate`).
    #[serde(default)]
    to_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    share: f64,
    deadline: String,
    /// Percent of the tier's requests asking for the big model (default 0).
    #[serde(default)]
    big_model: f64,
    /// Percent of the tier's requests that stream (default 0).
    #[serde(default)]
    streamed: f64,
    /// What a streamed request of the tier is judged on: its time to first token (absent:
    /// the deadline, its last byte).
    #[serde(default)]
    ttft: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    pool: String,
    #[serde(default)]
    endpoint: Option<usize>,
    /// Service times × this factor (≥ 1).
    #[serde(default)]
    slower: Option<f64>,
    /// With `slower`: the percent of attempts slowed (default 100); below 100, a tail of
    /// stalls, each attempt drawn on its own.
    #[serde(default)]
    share: Option<f64>,
    /// The endpoint refuses connections (needs `endpoint`). With `slower`, `endpoint` slows
    /// that endpoint only.
    #[serde(default)]
    down: bool,
    from: String,
    to: String,
}

/// Read and check a workload file.
pub fn load(path: &Path, seed: u64) -> Result<Workload, SimError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SimError::Workload(format!("{}: cannot read: {e}", path.display())))?;
    let mut w = parse(&text, seed).map_err(|problems| {
        SimError::Workload(
            problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    w.name = super::policy_name(path);
    Ok(w)
}

/// Parse and check a workload; every problem found.
pub fn parse(text: &str, seed: u64) -> Result<Workload, Vec<String>> {
    let raw: RawWorkload = serde_saphyr::from_str(text).map_err(|e| vec![e.to_string()])?;
    let fleet = fleet_faults::fleet().map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();

    let mut phases: Vec<PhaseSpec> = Vec::new();
    let mut start = Duration::ZERO;
    let cycles = raw.cycles.unwrap_or(1);
    if cycles == 0 {
        problems.push("cycles: at least 1".into());
    }
    for cycle in 0..cycles.max(1) {
        for (i, p) in raw.phases.iter().enumerate() {
            let len = if cycle == 0 {
                duration(&mut problems, &format!("phases[{i}].duration"), &p.duration)
            } else {
                phases[i].len
            };
            let name = p.name.clone().unwrap_or_else(|| (i + 1).to_string());
            phases.push(PhaseSpec {
                name: if cycles > 1 {
                    format!("{} {name}", cycle + 1)
                } else {
                    name
                },
                start,
                len,
                rate: p.rate,
                to_rate: p.to_rate.unwrap_or(p.rate),
            });
            start += len;
        }
    }
    let poisson = match raw.arrivals.as_deref() {
        None | Some("even") => false,
        Some("poisson") => true,
        Some(other) => {
            problems.push(format!("arrivals: `even` or `poisson`, not `{other}`"));
            false
        }
    };
    let capacity = raw.capacity.as_ref().map(|c| {
        let day = c.day.as_ref().map_or(Duration::from_secs(24 * 3600), |d| {
            duration(&mut problems, "capacity.day", d)
        });
        let warm_up = c.warm_up.as_ref().map_or(Duration::ZERO, |d| {
            duration(&mut problems, "capacity.warm_up", d)
        });
        // A forecast bucket (a day's 1/1440th) is at least the sizing's 1 s round.
        if day < Duration::from_secs(1440) {
            problems.push("capacity.day: at least 24m".into());
        }
        if warm_up >= start {
            problems.push("capacity.warm_up: shorter than the workload".into());
        }
        if fleet.pools.iter().all(|p| p.name != c.pool) {
            problems.push(format!(
                "capacity.pool: no pool `{}` in the fleet (known: {})",
                c.pool,
                super::names(fleet.pools.iter().map(|p| p.name.as_str()))
            ));
        }
        super::capacity::Setup {
            pool: c.pool.clone(),
            day,
            warm_up,
        }
    });
    let tiers: Vec<(String, f64)> = raw
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let d = duration(&mut problems, &format!("tiers[{i}].deadline"), &t.deadline);
            (t.name.clone(), d.as_secs_f64() * 1000.0)
        })
        .collect();
    let mut faults = Vec::new();
    let mut fault_windows = Vec::new();
    for (i, f) in raw.faults.iter().enumerate() {
        let from = duration(&mut problems, &format!("faults[{i}].from"), &f.from);
        let to = duration(&mut problems, &format!("faults[{i}].to"), &f.to);
        fault_windows.push((i, from, to));
        let Some(pool) = fleet.pools.iter().position(|p| p.name == f.pool) else {
            problems.push(format!(
                "faults[{i}].pool: no pool `{}` in the fleet (known: {})",
                f.pool,
                super::names(fleet.pools.iter().map(|p| p.name.as_str()))
            ));
            continue;
        };
        let endpoints = fleet.pools[pool].endpoints;
        match (f.slower, f.down, f.endpoint) {
            (Some(_), false, Some(e)) if e >= endpoints => problems.push(format!(
                "faults[{i}].endpoint: `{}` has {endpoints} endpoints (0-based), not {e}",
                f.pool
            )),
            (Some(_), false, _) if !f.share.is_none_or(|p| p > 0.0 && p <= 100.0) => {
                problems.push(format!("faults[{i}].share: a percentage above 0, at most 100"))
            }
            (Some(k), false, endpoint) if k >= 1.0 && k.is_finite() => {
                faults.push(Fault::Slower {
                    pool,
                    endpoint,
                    share: f.share.map_or(1.0, |p| p / 100.0),
                    extra: fleet.pools[pool].base.mul_f64(k - 1.0),
                    from,
                    to,
                })
            }
            (Some(_), false, _) => {
                problems.push(format!("faults[{i}].slower: a factor of at least 1"))
            }
            (None, true, Some(e)) if e < fleet.pools[pool].endpoints => faults.push(Fault::Down {
                pool,
                endpoint: e,
                from,
                to,
            }),
            (None, true, Some(e)) => problems.push(format!(
                "faults[{i}].endpoint: `{}` has {} endpoints (0-based), not {e}",
                f.pool, fleet.pools[pool].endpoints
            )),
            _ => problems.push(format!(
                "faults[{i}]: either `slower: K` (a pool, or one `endpoint: N`) or `down: true` with `endpoint: N`"
            )),
        }
    }

    if phases.is_empty() {
        problems.push("phases: at least one".into());
    }
    for (i, p) in raw.phases.iter().enumerate() {
        if !(p.rate > 0.0 && p.rate <= MAX_RATE) {
            problems.push(format!(
                "phases[{i}].rate: between 0 and {MAX_RATE} requests per second"
            ));
        }
        if p.to_rate.is_some_and(|r| !(r > 0.0 && r <= MAX_RATE)) {
            problems.push(format!(
                "phases[{i}].to_rate: between 0 and {MAX_RATE} requests per second"
            ));
        }
        if phases[i].len.is_zero() && parse_duration(&p.duration).is_some() {
            problems.push(format!("phases[{i}].duration: longer than zero"));
        }
    }
    let mut region_weights = vec![0.0; fleet.regions.len()];
    for (name, w) in &raw.regions {
        match fleet.regions.iter().position(|r| r == name) {
            Some(r) if *w >= 0.0 => region_weights[r] = *w,
            Some(_) => problems.push(format!("regions.{name}: a weight of 0 or more")),
            None => problems.push(format!(
                "regions.{name}: not a region of the fleet (known: {})",
                fleet.regions.join(", ")
            )),
        }
    }
    if !(0.0..=100.0).contains(&raw.repeat) {
        problems.push("repeat: a percentage, 0 to 100".into());
    }
    if region_weights.iter().sum::<f64>() <= 0.0 {
        problems.push("regions: at least one weight above 0".into());
    }
    if raw.tiers.is_empty() || raw.tiers.iter().map(|t| t.share).sum::<f64>() <= 0.0 {
        problems.push("tiers: at least one with a share above 0".into());
    }
    for (i, t) in raw.tiers.iter().enumerate() {
        if t.share < 0.0 {
            problems.push(format!("tiers[{i}].share: 0 or more"));
        }
        if !(0.0..=100.0).contains(&t.big_model) {
            problems.push(format!("tiers[{i}].big_model: a percentage, 0 to 100"));
        }
        if raw.tiers[..i].iter().any(|o| o.name == t.name) {
            problems.push(format!("tiers[{i}].name: `{}` twice", t.name));
        }
        if !(0.0..=100.0).contains(&t.streamed) {
            problems.push(format!("tiers[{i}].streamed: a percentage, 0 to 100"));
        }
    }
    let ttft_ms: Vec<Option<f64>> = raw
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let text = t.ttft.as_ref()?;
            let d = duration(&mut problems, &format!("tiers[{i}].ttft"), text);
            Some(d.as_secs_f64() * 1000.0)
        })
        .collect();
    let mut first_token = vec![1.0; fleet.pools.len()];
    for (name, share) in &raw.first_token {
        match fleet.pools.iter().position(|p| p.name == *name) {
            Some(p) if *share > 0.0 && *share <= 1.0 => first_token[p] = *share,
            Some(_) => problems.push(format!("first_token.{name}: a share above 0, at most 1")),
            None => problems.push(format!(
                "first_token.{name}: no pool `{name}` in the fleet (known: {})",
                super::names(fleet.pools.iter().map(|p| p.name.as_str()))
            )),
        }
    }
    for (i, from, to) in fault_windows {
        if to <= from {
            problems.push(format!("faults[{i}]: `to` must come after `from`"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Workload {
        name: "workload".into(),
        phases,
        mix: Mix::Scripted {
            regions: region_weights,
            tiers: raw.tiers.iter().map(|t| t.share).collect(),
            big: raw.tiers.iter().map(|t| t.big_model / 100.0).collect(),
            repeat: raw.repeat / 100.0,
            poisson,
        },
        tiers,
        models: crate::fleet_faults::MODELS
            .iter()
            .map(|m| m.to_string())
            .collect(),
        sizes: (0..crate::fleet_faults::MODELS.len())
            .map(fleet_faults::size)
            .collect(),
        fleet,
        faults,
        seed: raw.seed.unwrap_or(6) ^ seed.rotate_left(32),
        streams: super::Streams {
            share: raw.tiers.iter().map(|t| t.streamed / 100.0).collect(),
            ttft_ms,
            first_token,
        },
        capacity,
    })
}

fn duration(problems: &mut Vec<String>, what: &str, text: &str) -> Duration {
    parse_duration(text).unwrap_or_else(|| {
        problems.push(format!(
            "{what}: `{text}` is not a duration (e.g. 150ms, 10s)"
        ));
        Duration::ZERO
    })
}

/// The scripted arrivals, one at a time.
pub struct Scripted {
    /// (start, length, rate at the start, rate at the end).
    phases: Vec<(Duration, Duration, f64, f64)>,
    phase: usize,
    k: u64,
    /// Poisson arrivals: the phase's cumulative count reached so far (a sum of unit
    /// exponential gaps), and their own generator (so that other draws do not move).
    poisson: Option<(f64, fastrand::Rng)>,
    regions: Vec<f64>,
    tiers: Vec<f64>,
    big: Vec<f64>,
    repeat: f64,
    /// Per tier, the share of requests that stream.
    streamed: Vec<f64>,
    /// The last distinct requests: (key, model), a ring.
    recent: Vec<(u64, u16)>,
    next_key: u64,
    rng: fastrand::Rng,
    quantiles: fastrand::Rng,
}

/// Distinct requests a repeat is drawn from.
const RECENT: usize = 1000;

impl Scripted {
    pub fn new(w: &Workload) -> Scripted {
        let (regions, tiers, big, repeat, poisson) = match &w.mix {
            Mix::Scripted {
                regions,
                tiers,
                big,
                repeat,
                poisson,
            } => (
                regions.clone(),
                tiers.clone(),
                big.clone(),
                *repeat,
                *poisson,
            ),
            Mix::FleetFaults | Mix::Trace(_) => (vec![1.0], vec![1.0], vec![0.0], 0.0, false),
        };
        Scripted {
            phases: w
                .phases
                .iter()
                .map(|p| (p.start, p.len, p.rate, p.to_rate))
                .collect(),
            phase: 0,
            k: 0,
            poisson: poisson.then(|| {
                (
                    0.0,
                    fastrand::Rng::with_seed(w.seed.wrapping_mul(0x2545_f491)),
                )
            }),
            regions,
            tiers,
            big,
            repeat,
            streamed: w.streams.share.clone(),
            recent: Vec::with_capacity(RECENT),
            next_key: 1,
            rng: fastrand::Rng::with_seed(w.seed),
            quantiles: fastrand::Rng::with_seed(w.seed.wrapping_add(0x9e37_79b9_7f4a_7c15)),
        }
    }
}

/// When, in a phase of `secs` whose rate moves linearly from `r0` to `r1`, the cumulative
/// count reaches `u`: the root of `r0·t + (r1 − r0)·t²/(2·secs) = u` (a constant rate: `u/r0`).
fn time_of(u: f64, r0: f64, r1: f64, secs: f64) -> f64 {
    if r0 == r1 {
        return u / r0;
    }
    let a = (r1 - r0) / (2.0 * secs);
    // The stable form of (−r0 + √(r0² + 4au)) / 2a.
    (2.0 * u / (r0 + (r0 * r0 + 4.0 * a * u).max(0.0).sqrt())).min(secs)
}

/// Index drawn with probability proportional to its weight.
fn weighted(rng: &mut fastrand::Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut r = rng.f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

impl Iterator for Scripted {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        loop {
            let &(start, len, rate, to_rate) = self.phases.get(self.phase)?;
            let secs = len.as_secs_f64();
            let total = (rate + to_rate) / 2.0 * secs;
            // The arrival's place in the phase's cumulative count: the k-th (even), or the
            // sum of unit exponential gaps (Poisson).
            let u = match &mut self.poisson {
                None if self.k >= total as u64 => None,
                None => Some(self.k as f64),
                Some((u, rng)) => {
                    *u += -(1.0 - rng.f64()).ln();
                    (*u < total).then_some(*u)
                }
            };
            let Some(u) = u else {
                self.phase += 1;
                self.k = 0;
                if let Some((u, _)) = &mut self.poisson {
                    *u = 0.0;
                }
                continue;
            };
            let at = start + Duration::from_secs_f64(time_of(u, rate, to_rate, secs));
            self.k += 1;
            let region = weighted(&mut self.rng, &self.regions);
            let tier = weighted(&mut self.rng, &self.tiers);
            let big = self.rng.f64() < self.big[tier];
            let repeats = self.repeat > 0.0 && !self.recent.is_empty();
            let (key, model) = if repeats && self.rng.f64() < self.repeat {
                self.recent[self.rng.usize(0..self.recent.len())]
            } else {
                let fresh = (self.next_key, u16::from(big));
                self.next_key += 1;
                if self.recent.len() < RECENT {
                    self.recent.push(fresh);
                } else {
                    self.recent[(fresh.0 as usize) % RECENT] = fresh;
                }
                fresh
            };
            let (tokens, bytes) = fleet_faults::size(usize::from(model));
            // (Drawn only where a tier streams, so that a workload without streams draws
            // the same requests as before they could be asked for.)
            let share = self.streamed.get(tier).copied().unwrap_or(0.0);
            let stream = share > 0.0 && self.rng.f64() < share;
            return Some(Request {
                at,
                region,
                tier,
                model,
                service_quantile: self.quantiles.f64(),
                // A stream is never answered from the cache.
                key: if stream { 0 } else { key },
                tokens,
                bytes,
                stream,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOAD: &str = r#"
phases:
  - { name: baseline, duration: 2s, rate: 100 }
  - { name: surge, duration: 1s, rate: 300 }
regions: { us: 2, eu: 1, ap: 1 }
tiers:
  - { name: realtime, share: 1, deadline: 150ms }
  - { name: batch, share: 1, deadline: 30s, big_model: 100 }
faults:
  - { pool: edge-eu, slower: 10, from: 1s, to: 2s }
  - { pool: gpu, endpoint: 1, down: true, from: 2s, to: 3s }
"#;

    #[test]
    fn phases_rates_and_mix_as_written() {
        let w = parse(WORKLOAD, 1).unwrap_or_else(|e| panic!("{e:?}"));
        let reqs: Vec<Request> = Scripted::new(&w).collect();
        assert_eq!(reqs.len(), 500);
        assert_eq!(w.phase_of(reqs[199].at), 0);
        assert_eq!(w.phase_of(reqs[200].at), 1);
        assert!(reqs.iter().all(|r| (r.model == 1) == (r.tier == 1)));
        let us = reqs.iter().filter(|r| r.region == 1).count();
        assert!((200..300).contains(&us), "{us}");
        assert_eq!(w.service_us(0, 0.0, 1_500_000), 150_000, "10× slower");
        assert!(w.is_down(2, 1, 2_000_000) && !w.is_down(2, 0, 2_000_000));
    }

    #[test]
    fn one_endpoint_or_a_share_of_attempts_can_be_slowed() {
        let text = WORKLOAD.replace(
            "faults:\n",
            "faults:\n  - { pool: gpu, endpoint: 1, slower: 3, from: 0s, to: 1s }\n  - { pool: batch, slower: 2, share: 10, from: 0s, to: 1s }\n",
        );
        let w = parse(&text, 1).unwrap_or_else(|e| panic!("{e:?}"));
        // gpu: 40 ms + up to 10 ms of jitter; endpoint 1 only is 3× slower (base-wise).
        assert_eq!(w.service_at(2, 0, 0.0, 0), 40_000);
        assert_eq!(w.service_at(2, 1, 0.0, 0), 120_000);
        // batch: about 10% of attempts (by their own draw) take 200 ms more.
        let slow = (0..1000)
            .filter(|i| w.service_at(3, 0, *i as f64 / 1000.0, 0) >= 400_000)
            .count();
        assert!((70..=130).contains(&slow), "{slow}");
        let bad = WORKLOAD.replace(
            "faults:\n",
            "faults:\n  - { pool: gpu, endpoint: 5, slower: 3, from: 0s, to: 1s }\n  - { pool: gpu, slower: 3, share: 0, from: 0s, to: 1s }\n",
        );
        let problems = parse(&bad, 1).err().unwrap_or_default().join("\n");
        assert!(problems.contains("faults[0].endpoint"), "{problems}");
        assert!(problems.contains("faults[1].share"), "{problems}");
    }

    #[test]
    fn every_problem_is_reported() {
        let bad = WORKLOAD
            .replace("rate: 300", "rate: 0")
            .replace("us: 2", "mars: 2")
            .replace("pool: edge-eu", "pool: edge-mars")
            .replace("endpoint: 1", "endpoint: 2")
            .replace("deadline: 150ms", "deadline: soon");
        let problems = parse(&bad, 1).err().unwrap_or_default();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        for needle in [
            "phases[1].rate",
            "regions.mars",
            "no pool `edge-mars`",
            "faults[1].endpoint",
            "tiers[0].deadline",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
    }

    const DIURNAL: &str = r#"
phases:
  - { name: flat, duration: 10s, rate: 10 }
  - { name: ramp, duration: 10s, rate: 10, to_rate: 110 }
cycles: 2
regions: { us: 1 }
tiers:
  - { name: realtime, share: 1, deadline: 150ms }
capacity: { pool: gpu, day: 40m, warm_up: 20s }
"#;

    /// A ramp's arrivals: the mean rate × its length, denser towards its end; `cycles`
    /// repeats the phases; Poisson arrivals keep the count within chance.
    #[test]
    fn ramps_cycles_and_poisson_arrivals() {
        let w = parse(DIURNAL, 1).unwrap_or_else(|e| panic!("{e:?}"));
        let names: Vec<&str> = w.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["1 flat", "1 ramp", "2 flat", "2 ramp"]);
        assert!(w.phases[1].rising() && !w.phases[0].rising());
        let c = w.capacity.as_ref().unwrap_or_else(|| panic!("capacity"));
        assert_eq!(
            (c.pool.as_str(), c.day.as_secs(), c.warm_up.as_secs()),
            ("gpu", 2400, 20)
        );
        let reqs: Vec<Request> = Scripted::new(&w).collect();
        let ramp: Vec<f64> = reqs
            .iter()
            .map(|r| r.at.as_secs_f64())
            .filter(|t| (10.0..20.0).contains(t))
            .collect();
        assert_eq!(ramp.len(), 600, "(10 + 110) / 2 × 10 s");
        assert!(ramp.windows(2).all(|p| p[0] <= p[1]));
        // The rate at t is 10 + 10t: the first second of the ramp has ~15, the last ~105.
        let first = ramp.iter().filter(|t| **t < 11.0).count();
        let last = ramp.iter().filter(|t| **t >= 19.0).count();
        assert!(
            (14..=16).contains(&first) && (104..=106).contains(&last),
            "{first} {last}"
        );
        assert_eq!(reqs.len(), 2 * (100 + 600));
        let poisson =
            parse(&format!("{DIURNAL}arrivals: poisson\n"), 1).unwrap_or_else(|e| panic!("{e:?}"));
        let n = Scripted::new(&poisson).count();
        assert!(n != 1400 && (1300..1500).contains(&n), "{n}");
    }

    #[test]
    fn a_bad_capacity_section_is_reported() {
        let bad = DIURNAL
            .replace("pool: gpu", "pool: tpu")
            .replace("day: 40m", "day: 10m")
            .replace("warm_up: 20s", "warm_up: 1h")
            .replace("to_rate: 110", "to_rate: -1")
            .replace("cycles: 2", "cycles: 2\narrivals: bursty");
        let problems = parse(&bad, 1).err().unwrap_or_default();
        for needle in [
            "capacity.pool",
            "capacity.day",
            "capacity.warm_up",
            "phases[1].to_rate",
            "arrivals",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
    }
}
