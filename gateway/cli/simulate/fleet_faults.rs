//! The `fleet-faults` scenario as a model for the simulator: the same fleet, faults, traffic
//! schedule and policy as `switchyard demo --scenario fleet-faults` (see `crate::scenario`),
//! described as data instead of started as mock processes.
//!
//! It must stay in step with `crate::scenario`: the traffic generator draws from the same
//! seeded generator in the same order (so the simulated and the live run see the same
//! requests), the pools have the mocks' service times (base + uniform jitter) and the faults
//! hit at the same phase boundaries. `tests/simulate.rs` runs both and compares them, so a
//! drift shows up as a failing test rather than as quietly wrong figures.

use super::{Fault, FleetModel, Mix, PhaseSpec, PoolModel, Request, Workload};
use std::time::Duration;

/// Client regions, in the scenario's order (eu, us, ap).
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// SLO tiers and their deadlines (the workload's objectives, whatever a policy says).
pub const TIERS: [(&str, f64); 3] = [
    ("realtime", 150.0),
    ("standard", 1000.0),
    ("batch", 30_000.0),
];
/// The models asked for, by index (`Request::model`).
pub const MODELS: [&str; 2] = ["small", "big"];
pub const PHASES: [&str; 4] = [
    "1 baseline",
    "2 edge-eu 10x slower",
    "3 + gpu endpoint dead",
    "4 recovered",
];

/// One-way-and-back network time between regions, ms (the scenario's `rtt_ms`).
const RTT_MS: [[f64; 3]; 3] = [[5.0, 80.0, 230.0], [80.0, 5.0, 150.0], [230.0, 150.0, 5.0]];

/// The fleet: edge-eu, edge-ap (small model only), gpu (two endpoints), batch.
pub fn fleet() -> FleetModel {
    let pool =
        |name: &str, region, endpoints, (base, jitter): (u64, u64), price: (f64, f64)| PoolModel {
            name: name.to_string(),
            region,
            endpoints,
            servers_per_endpoint: 64,
            base: Duration::from_millis(base),
            jitter: Duration::from_millis(jitter),
            per_request: price.0,
            per_gpu_hour: price.1,
            // Models: small, big (see `workload`); the edge pools serve only the small one.
            serves: vec![true, !name.starts_with("edge")],
            gpu: name == "gpu",
            empirical: None,
        };
    FleetModel {
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        rtt_ms: RTT_MS.iter().map(|r| r.to_vec()).collect(),
        pools: vec![
            pool("edge-eu", 0, 1, (15, 5), (0.00002, 0.0)),
            pool("edge-ap", 2, 1, (15, 5), (0.00002, 0.0)),
            pool("gpu", 1, 2, (40, 10), (0.00005, 12.0)),
            pool("batch", 1, 1, (200, 50), (0.0, 0.9)),
        ],
    }
}

/// The faults, for phases of `phase` each: edge-eu 10× slower from phase 2 to the end of
/// phase 3, GPU endpoint 0 refusing connections during phase 3.
pub fn faults(phase: Duration) -> Vec<Fault> {
    vec![
        Fault::Slower {
            pool: 0,
            endpoint: None,
            share: 1.0,
            extra: Duration::from_millis(15 * 9),
            from: phase,
            to: phase * 3,
        },
        Fault::Down {
            pool: 2,
            endpoint: 0,
            from: phase * 2,
            to: phase * 3,
        },
    ]
}

/// The built-in workload: four phases of `phase` at `rate` requests per second.
pub fn workload(phase: Duration, rate: f64, seed: u64) -> Workload {
    Workload {
        name: "fleet-faults".into(),
        phases: PHASES
            .iter()
            .enumerate()
            .map(|(i, name)| PhaseSpec {
                name: name.to_string(),
                start: phase * i as u32,
                len: phase,
                rate,
            })
            .collect(),
        mix: Mix::FleetFaults,
        tiers: TIERS.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
        models: MODELS.iter().map(|m| m.to_string()).collect(),
        fleet: fleet(),
        faults: faults(phase),
        seed,
    }
}

/// The scenario's open-loop schedule, one request at a time (memory flat in its length):
/// regions us 50% / eu 25% / ap 25%; tiers realtime 50% / standard 30% / batch 20%; the big
/// model for 30% of standard and half of batch. The draws are those of
/// `crate::scenario::schedule` (seed 6), in the same order; `service_quantile` comes from
/// a second generator so that adding it did not change the traffic.
pub struct Schedule {
    rng: fastrand::Rng,
    quantiles: fastrand::Rng,
    i: u64,
    n: u64,
    rate: f64,
}

impl Schedule {
    pub fn new(rate: f64, total: Duration, seed: u64) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(6),
            quantiles: fastrand::Rng::with_seed(seed),
            i: 0,
            n: (rate * total.as_secs_f64()) as u64,
            rate,
        }
    }
}

impl Iterator for Schedule {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        if self.i >= self.n {
            return None;
        }
        let rng = &mut self.rng;
        let region = match rng.u8(0..4) {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        let tier = match rng.u8(0..10) {
            0..=4 => 0,
            5..=7 => 1,
            _ => 2,
        };
        let big = match tier {
            0 => false,
            1 => rng.u8(0..10) < 3,
            _ => rng.bool(),
        };
        let at = Duration::from_secs_f64(self.i as f64 / self.rate);
        self.i += 1;
        Some(Request {
            at,
            region,
            tier,
            model: u16::from(big),
            service_quantile: self.quantiles.f64(),
            key: 0,
        })
    }
}

/// The policy Switchyard runs in the live scenario, with placeholder endpoint addresses
/// (the simulator never connects; endpoints are matched to the fleet by pool and index).
pub fn policy() -> &'static str {
    r#"
trusted_proxies: [127.0.0.0/8]
geoip: { database: embedded }
regions:
  default: us
  map:
    - { name: eu, continents: [EU, AF] }
    - { name: us, continents: [NA, SA] }
    - { name: ap, continents: [AS, OC] }
rtt_ms:
  eu: { eu: 5, us: 80, ap: 230 }
  us: { us: 5, ap: 150 }
  ap: { ap: 5 }
tiers:
  realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu], on_slo_miss: fastest }
  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu], on_slo_miss: fastest }
  batch: { deadline: 30s, weight: 0.0, pools: [batch, gpu, edge], on_slo_miss: fastest }
pools:
  - { name: edge-eu, kind: edge, region: eu, endpoints: [127.0.0.1:1], models: [small], concurrency: 64, service_time: 17ms, price: { per_request: 0.00002 } }
  - { name: edge-ap, kind: edge, region: ap, endpoints: [127.0.0.1:2], models: [small], concurrency: 64, service_time: 17ms, price: { per_request: 0.00002 } }
  - { name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:3, 127.0.0.1:4], models: ["*"], concurrency: 128, service_time: 45ms, price: { per_request: 0.00005, per_gpu_hour: 12.0 } }
  - { name: batch, kind: batch, region: us, endpoints: [127.0.0.1:5], models: ["*"], concurrency: 64, service_time: 225ms, price: { per_gpu_hour: 0.9 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: standard, idempotent: true }
upstream: { connect_timeout: 200ms, max_attempts: 3, down_backoff: 1s, max_backoff: 8s, eject_after: 5 }
"#
}
