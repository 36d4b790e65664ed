//! `switchyard simulate --trace FILE`: replay a decision log (`observe.decision_log`, format
//! version 1) — the requests a gateway really served — through other policies.
//!
//! The fleet is built from a policy (`--fleet`, default the first `--policy`): its regions,
//! RTT matrix, pools (endpoints, `concurrency` share per endpoint as servers, price, the
//! models each serves) and tiers (whose deadlines the report measures against). Service times
//! are **empirical**: each pool's `upstream_ms` samples from the trace (a uniform reservoir of
//! at most 4,096 per pool), a request's quantile picking one; a pool the trace never used
//! falls back to its policy `service_time` (a constant). A request's quantile is its own: the
//! rank of its logged upstream time among its pool's samples, so a request that goes where
//! it went live takes the time it took live (exactly, while the pool has at most 4,096
//! samples), and one sent elsewhere takes the same rank of that pool's times (as fast or as
//! slow, relatively). Only a line with no upstream time draws a random quantile. Upstream times as logged include the
//! network between the gateway and the pool, so RTT is counted both there and in the
//! policy's matrix for a pool far from the gateway: figures err on the slow side.
//!
//! The file is read twice and never held: once to learn the time span, the models, and the
//! samples, once to stream the arrivals. A request's arrival is its line's end time minus its
//! elapsed time; lines are written when requests end, so arrivals are re-ordered through a
//! window of 65,536 lines (an arrival that would still go back in time is clamped to the
//! last one). `--rate-scale K` compresses time by K (the same requests, K times as fast).
//! Cache hits and coalesced requests are skipped (they reached no pool; the simulator has no
//! cache), as are lines without a region or tier (unclassified requests) and lines of
//! another format version; the report's note says how many.

use super::{Bill, FleetModel, Mix, PhaseSpec, PoolModel, Request, SimError, Workload};
use serde::Deserialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_gateway::policy::compile::PoolId;
use switchyard_gateway::serving::Serving;

/// Samples of service time kept per pool.
const RESERVOIR: usize = 4096;
/// Lines held to put arrivals back in order.
const REORDER: usize = 65_536;
/// Distinct models a trace may name.
const MAX_MODELS: usize = 4096;

/// The fields of a decision log line the replay reads (the others are ignored).
#[derive(Debug, Deserialize)]
struct Line {
    v: u32,
    unix_ms: u64,
    region: Option<String>,
    tier: Option<String>,
    model: String,
    pool: Option<String>,
    cache: Option<String>,
    upstream_ms: Option<f64>,
    elapsed_ms: f64,
    #[serde(default)]
    body_bytes: Option<u64>,
    /// The tokens the answer used, on a pool priced per token (`null` elsewhere).
    #[serde(default)]
    tokens: Option<Tokens>,
}

#[derive(Debug, Deserialize)]
struct Tokens {
    input: u64,
    output: u64,
}

/// What a line's request carried, for its bill: tokens in and out, bytes up and down.
/// Logged tokens are used as they are; a line without (its pool is not priced per token)
/// counts them as the gateway's meter does without an answer's `usage` (a token per 4 bytes).
/// The answer's bytes are not logged: 4 per output token, or the gateway's prior
/// (`serving::state::PRIOR_ANSWER_BYTES`) when the tokens are not known either.
fn sizes(line: &Line) -> [u32; 4] {
    let per_token = switchyard_gateway::route::tokens::BYTES_PER_TOKEN;
    let up = line.body_bytes.unwrap_or(0);
    let (input, output, down) = match &line.tokens {
        Some(t) => (t.input, t.output, t.output * per_token),
        None => {
            let down = switchyard_gateway::serving::state::PRIOR_ANSWER_BYTES as u64;
            (up.div_ceil(per_token), down.div_ceil(per_token), down)
        }
    };
    let clamp = |v: u64| v.min(u64::from(u32::MAX)) as u32;
    [clamp(input), clamp(output), clamp(up), clamp(down)]
}

/// How trace names map to the fleet's indices.
#[derive(Debug)]
pub struct TraceIndex {
    path: PathBuf,
    regions: HashMap<String, usize>,
    tiers: HashMap<String, usize>,
    models: HashMap<String, u16>,
    /// Each pool's sorted service-time samples (µs), to rank a line's own upstream time.
    samples: HashMap<String, Arc<Vec<u64>>>,
    /// Arrival of the first request, ms since the epoch.
    t0_ms: f64,
    scale: f64,
}

impl TraceIndex {
    /// The request a line stands for (`None`: skipped), with its arrival in ms since the
    /// epoch and its own service quantile when it reached a pool.
    fn request(&self, line: &Line) -> Option<(f64, usize, usize, u16, Option<f64>)> {
        if line.v != 1 || matches!(line.cache.as_deref(), Some("hit" | "coalesced")) {
            return None;
        }
        let region = *self.regions.get(line.region.as_deref()?)?;
        let tier = *self.tiers.get(line.tier.as_deref()?)?;
        let model = *self.models.get(&line.model)?;
        let quantile = line
            .pool
            .as_ref()
            .and_then(|p| self.samples.get(p))
            .zip(line.upstream_ms)
            .and_then(|(samples, ms)| own_quantile(samples, (ms.max(0.0) * 1000.0) as u64));
        Some((arrival_ms(line), region, tier, model, quantile))
    }
}

/// The quantile whose pick from `samples` (sorted; see `service_at`) is the sample nearest
/// to `us`.
fn own_quantile(samples: &[u64], us: u64) -> Option<f64> {
    let last = samples.len().checked_sub(1)?;
    if last == 0 {
        return Some(0.0);
    }
    let i = samples.partition_point(|&x| x < us).min(last);
    let i = if i > 0 && us - samples[i - 1] < samples[i].saturating_sub(us) {
        i - 1
    } else {
        i
    };
    Some(i as f64 / last as f64)
}

fn arrival_ms(line: &Line) -> f64 {
    line.unix_ms as f64 - line.elapsed_ms.max(0.0)
}

fn open(path: &Path) -> Result<BufReader<File>, SimError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| SimError::Workload(format!("{}: cannot read: {e}", path.display())))
}

/// Read the trace once and build the workload that replays it on `fleet`'s pools, billed by
/// `fleet`'s prices.
pub fn load(
    path: &Path,
    table: Arc<Serving>,
    phases: usize,
    scale: f64,
    seed: u64,
) -> Result<Workload, SimError> {
    let fleet: &Serving = &table;
    let regions: HashMap<String, usize> = fleet
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), i))
        .collect();
    let tiers: HashMap<String, usize> = fleet
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut models: HashMap<String, u16> = HashMap::new();
    let mut model_names: Vec<String> = Vec::new();
    // Per model: the sums of its lines' sizes, and their number (the model's typical size).
    let mut size_sums: Vec<([u64; 4], u64)> = Vec::new();
    let mut samples: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut first, mut last, mut n, mut skipped) = (f64::MAX, f64::MIN, 0u64, 0u64);
    for (i, text) in open(path)?.lines().enumerate() {
        let text = text.map_err(|e| SimError::Workload(format!("{}: {e}", path.display())))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| {
            SimError::Workload(format!(
                "{}:{}: not a decision log line: {e}",
                path.display(),
                i + 1
            ))
        })?;
        let known = line.v == 1
            && !matches!(line.cache.as_deref(), Some("hit" | "coalesced"))
            && line
                .region
                .as_ref()
                .is_some_and(|r| regions.contains_key(r))
            && line.tier.as_ref().is_some_and(|t| tiers.contains_key(t));
        if !known {
            skipped += 1;
            continue;
        }
        if !models.contains_key(&line.model) {
            if model_names.len() >= MAX_MODELS {
                return Err(SimError::Workload(format!(
                    "{}: more than {MAX_MODELS} distinct models",
                    path.display()
                )));
            }
            models.insert(line.model.clone(), model_names.len() as u16);
            model_names.push(line.model.clone());
            size_sums.push(([0; 4], 0));
        }
        if let Some(&m) = models.get(&line.model) {
            let (sums, count) = &mut size_sums[m as usize];
            for (sum, v) in sums.iter_mut().zip(sizes(&line)) {
                *sum += u64::from(v);
            }
            *count += 1;
        }
        if let (Some(pool), Some(ms)) = (&line.pool, line.upstream_ms) {
            // Reservoir sampling: every sample of the pool equally likely to be kept.
            let (seen, kept) = samples.entry(pool.clone()).or_default();
            *seen += 1;
            let us = (ms.max(0.0) * 1000.0) as u64;
            if kept.len() < RESERVOIR {
                kept.push(us);
            } else {
                let j = rng.u64(0..*seen) as usize;
                if j < RESERVOIR {
                    kept[j] = us;
                }
            }
        }
        let at = arrival_ms(&line);
        first = first.min(at);
        last = last.max(at);
        n += 1;
    }
    if n == 0 {
        return Err(SimError::Workload(format!(
            "{}: no request to replay ({skipped} lines skipped: cache hits, unclassified, unknown region or tier, other versions)",
            path.display()
        )));
    }
    let span = Duration::from_secs_f64(((last - first) / 1000.0 / scale).max(0.001));
    let phases = phases.max(1);
    let len = span.div_f64(phases as f64) + Duration::from_millis(1);
    let samples: HashMap<String, Arc<Vec<u64>>> = samples
        .into_iter()
        .map(|(pool, (_, mut kept))| {
            kept.sort_unstable();
            (pool, Arc::new(kept))
        })
        .collect();
    let rate = n as f64 / span.as_secs_f64().max(0.001);
    let bill = Bill::new(table.clone(), &fleet.regions)?;
    let fleet_model = FleetModel {
        bill,
        regions: fleet.regions.clone(),
        rtt_ms: (0..fleet.regions.len())
            .map(|a| {
                (0..fleet.regions.len())
                    .map(|b| fleet.rtt(a as u16, b as u16).as_secs_f64() * 1000.0)
                    .collect()
            })
            .collect(),
        pools: fleet
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| PoolModel {
                name: p.name.clone(),
                region: p.region as usize,
                endpoints: p.endpoints.len(),
                servers_per_endpoint: if p.queue_fed {
                    p.concurrency
                } else {
                    p.endpoint_limit()
                },
                base: p.service_time,
                jitter: Duration::ZERO,
                bill: i as PoolId,
                serves: model_names.iter().map(|m| p.models.serves(m)).collect(),
                gpu: p.kind.as_str() == "gpu",
                empirical: samples.get(&p.name).cloned(),
            })
            .collect(),
    };
    let name = super::policy_name(path);
    Ok(Workload {
        name,
        phases: (0..phases)
            .map(|i| PhaseSpec {
                name: (i + 1).to_string(),
                start: len * i as u32,
                len,
                rate,
                to_rate: rate,
            })
            .collect(),
        tiers: fleet
            .tiers
            .iter()
            .map(|t| (t.name.clone(), t.deadline.as_secs_f64() * 1000.0))
            .collect(),
        models: model_names,
        sizes: size_sums
            .iter()
            .map(|(sums, n)| {
                let mean = |i: usize| (sums[i] / (*n).max(1)) as u32;
                ((mean(0), mean(1)), (mean(2), mean(3)))
            })
            .collect(),
        fleet: fleet_model,
        faults: Vec::new(),
        mix: Mix::Trace(Arc::new(TraceIndex {
            path: path.to_path_buf(),
            regions,
            tiers,
            models,
            samples,
            t0_ms: first,
            scale,
        })),
        seed,
        streams: Default::default(),
        capacity: None,
    })
}

/// A line waiting in the re-order window: (arrival µs, line number, region, tier, model, its
/// own service quantile's bits or [`DRAW`], its [`sizes`]).
type Held = (u64, u64, usize, usize, u16, u64, [u32; 4]);

/// [`Held`]'s quantile when the line has none of its own (no quantile in 0..=1 has these bits).
const DRAW: u64 = u64::MAX;

/// The trace's requests in arrival order, streamed.
pub struct Replay {
    index: Arc<TraceIndex>,
    lines: Option<std::io::Lines<BufReader<File>>>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    last_us: u64,
    quantiles: fastrand::Rng,
}

impl Replay {
    pub fn new(index: Arc<TraceIndex>, seed: u64) -> Replay {
        let lines = open(&index.path).ok().map(|r| r.lines());
        Replay {
            index,
            lines,
            held: BinaryHeap::new(),
            seq: 0,
            last_us: 0,
            quantiles: fastrand::Rng::with_seed(seed),
        }
    }

    /// Read lines until the window is full or the file ends.
    fn fill(&mut self) {
        let Some(lines) = &mut self.lines else { return };
        while self.held.len() < REORDER {
            let Some(Ok(text)) = lines.next() else {
                self.lines = None;
                return;
            };
            let Ok(line) = serde_json::from_str::<Line>(&text) else {
                continue;
            };
            if let Some((at_ms, region, tier, model, q)) = self.index.request(&line) {
                let at_us =
                    ((at_ms - self.index.t0_ms).max(0.0) * 1000.0 / self.index.scale) as u64;
                self.seq += 1;
                let q = q.map_or(DRAW, f64::to_bits);
                let sizes = sizes(&line);
                self.held
                    .push(Reverse((at_us, self.seq, region, tier, model, q, sizes)));
            }
        }
    }
}

impl Iterator for Replay {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        self.fill();
        let Reverse((at_us, _, region, tier, model, q, sizes)) = self.held.pop()?;
        self.last_us = self.last_us.max(at_us);
        Some(Request {
            at: Duration::from_micros(self.last_us),
            region,
            tier,
            model,
            service_quantile: if q == DRAW {
                self.quantiles.f64()
            } else {
                f64::from_bits(q)
            },
            key: 0,
            tokens: (sizes[0], sizes[1]),
            bytes: (sizes[2], sizes[3]),
            // (The decision log does not record whether a request streamed.)
            stream: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::own_quantile;

    #[test]
    fn a_lines_own_quantile_picks_its_own_time_back() {
        let samples = [1_000, 2_000, 5_000, 9_000, 40_000];
        let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        for &us in &samples {
            assert_eq!(pick(own_quantile(&samples, us).unwrap()), us);
        }
        // Between samples: the nearest one.
        assert_eq!(pick(own_quantile(&samples, 4_400).unwrap()), 5_000);
        assert_eq!(pick(own_quantile(&samples, 2_100).unwrap()), 2_000);
        assert_eq!(pick(own_quantile(&samples, 99_000).unwrap()), 40_000);
        assert_eq!(own_quantile(&[7], 3), Some(0.0));
        assert_eq!(own_quantile(&[], 3), None);
    }
}
