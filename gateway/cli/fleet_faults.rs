//! The `fleet-faults` scenario, defined once: the fleet as it really is (regions and their
//! round trips, pools with their endpoints, service times and prices), the traffic, the
//! four phases and the faults that hit them, and the policy Switchyard runs.
//!
//! Two runners read it and nothing else:
//! - [`crate::scenario`] (`switchyard demo --scenario fleet-faults`) starts every pool's
//!   endpoints as mock backends behind relays that add the round trips, sends the
//!   [`Schedule`] in real time to Switchyard and to the two baselines, and applies the
//!   [`FAULTS`] to the mocks at the phase boundaries;
//! - [`crate::simulate::fleet_faults`] (`switchyard simulate`, `switchyard tune`) turns the
//!   same definition into the simulator's fleet model, fault timeline and arrivals.
//!
//! So the simulated and the live run see the same requests, the same service times and the
//! same faults by construction; `tests/simulate_live.rs` compares their figures. The policy is
//! `policies/fleet-faults.yaml`, compiled in ([`POLICY`]); the tests below check that it
//! describes this fleet (pool names, regions, endpoint counts, prices, round trips, tier
//! deadlines).

use std::ops::Range;
use std::time::Duration;

/// The scenario's name (`--scenario`).
pub const NAME: &str = "fleet-faults";

/// The policy Switchyard runs, with placeholder endpoint addresses (the live scenario puts
/// its relays' addresses there; the simulator matches endpoints by pool and position).
pub const POLICY: &str = include_str!("../../policies/fleet-faults.yaml");

/// Where [`POLICY`] lives in the repository (named in its compile errors).
pub const POLICY_PATH: &str = "policies/fleet-faults.yaml";

/// Client and pool regions.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// True round trips between [`REGIONS`], ms (`RTT_MS[client][pool]`): the relays add them
/// live, the simulator adds them to every answer.
pub const RTT_MS: [[f64; 3]; 3] = [[5.0, 80.0, 230.0], [80.0, 5.0, 150.0], [230.0, 150.0, 5.0]];

/// SLO tiers and the deadline each is measured against, ms (the report's objective, whatever
/// a simulated policy says).
pub const TIERS: [(&str, f64); 3] = [
    ("realtime", 150.0),
    ("standard", 1000.0),
    ("batch", 30_000.0),
];

/// The models requests ask for, by index: a request asks for the big one or not.
pub const MODELS: [&str; 2] = ["small", "big"];

/// The four phases, of equal length (`--phase-secs`), back to back.
pub const PHASES: [&str; 4] = [
    "1 baseline",
    "2 edge-eu 10x slower",
    "3 + gpu endpoint dead",
    "4 recovered",
];

/// One pool of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    pub name: &'static str,
    /// Index into [`REGIONS`].
    pub region: usize,
    pub endpoints: usize,
    /// Service time of one request: `base_ms` plus a uniform `0..jitter_ms`.
    pub base_ms: u64,
    pub jitter_ms: u64,
    /// The bill: per request, plus per GPU-hour of service time.
    pub per_request: f64,
    pub per_gpu_hour: f64,
    /// Whether it serves the big model (every pool serves the small one).
    pub big_model: bool,
}

impl Pool {
    pub fn base(&self) -> Duration {
        Duration::from_millis(self.base_ms)
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_millis(self.jitter_ms)
    }

    /// Whether it serves model `model` (an index into [`MODELS`]).
    pub fn serves(&self, model: usize) -> bool {
        model == 0 || self.big_model
    }
}

/// The Europe edge pool (an index into [`POOLS`]): 10× slower in phases 2 and 3.
pub const EDGE_EU: usize = 0;
/// The GPU pool: the always-GPU baseline's; its first endpoint dies in phase 3.
pub const GPU: usize = 2;

/// The fleet: two edge pools (small model only), a GPU pool with two endpoints and a batch
/// pool, both in the US.
pub const POOLS: [Pool; 4] = [
    Pool {
        name: "edge-eu",
        region: 0,
        endpoints: 1,
        base_ms: 15,
        jitter_ms: 5,
        per_request: 0.00002,
        per_gpu_hour: 0.0,
        big_model: false,
    },
    Pool {
        name: "edge-ap",
        region: 2,
        endpoints: 1,
        base_ms: 15,
        jitter_ms: 5,
        per_request: 0.00002,
        per_gpu_hour: 0.0,
        big_model: false,
    },
    Pool {
        name: "gpu",
        region: 1,
        endpoints: 2,
        base_ms: 40,
        jitter_ms: 10,
        per_request: 0.00005,
        per_gpu_hour: 12.0,
        big_model: true,
    },
    Pool {
        name: "batch",
        region: 1,
        endpoints: 1,
        base_ms: 200,
        jitter_ms: 50,
        per_request: 0.0,
        per_gpu_hour: 0.9,
        big_model: true,
    },
];

/// Requests one endpoint serves at once in the simulator (more wait in its queue): the
/// policy's `concurrency` per endpoint. (A mock has no limit of its own.)
pub const SERVERS_PER_ENDPOINT: u32 = 64;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Every endpoint of the pool is `times` slower: `(times − 1) × base` is added to the
    /// service time of every request.
    Slower { times: u32 },
    /// One endpoint refuses connections.
    Down { endpoint: usize },
}

/// A fault: `effect` on pool `pool` (an index into [`POOLS`]) from the start of phase
/// `phases.start` to the start of phase `phases.end` (indices into [`PHASES`]).
#[derive(Debug, Clone)]
pub struct Fault {
    pub pool: usize,
    pub effect: Effect,
    pub phases: Range<usize>,
}

/// The fault timeline: edge-eu 10× slower in phases 2 and 3, GPU endpoint 0 dead in phase 3.
pub const FAULTS: [Fault; 2] = [
    Fault {
        pool: EDGE_EU,
        effect: Effect::Slower { times: 10 },
        phases: 1..3,
    },
    Fault {
        pool: GPU,
        effect: Effect::Down { endpoint: 0 },
        phases: 2..3,
    },
];

impl Fault {
    /// The service time it adds to every request on its pool.
    pub fn extra(&self) -> Duration {
        match self.effect {
            Effect::Slower { times } => POOLS[self.pool].base() * times.saturating_sub(1),
            Effect::Down { .. } => Duration::ZERO,
        }
    }
}

/// How the faults leave endpoint `endpoint` of pool `pool` during phase `phase`: the service
/// time added to every request, and whether it refuses connections.
pub fn endpoint_state(pool: usize, endpoint: usize, phase: usize) -> (Duration, bool) {
    let mut extra = Duration::ZERO;
    let mut down = false;
    for f in FAULTS
        .iter()
        .filter(|f| f.pool == pool && f.phases.contains(&phase))
    {
        match f.effect {
            Effect::Slower { .. } => extra += f.extra(),
            Effect::Down { endpoint: e } => down |= e == endpoint,
        }
    }
    (extra, down)
}

/// The seed of the traffic: every run, live or simulated, sends the same requests.
pub const TRAFFIC_SEED: u64 = 6;

/// One request of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    /// Arrival, from the start.
    pub at: Duration,
    /// Indices into [`REGIONS`] and [`TIERS`].
    pub region: usize,
    pub tier: usize,
    /// Asks for the big model (else the small one).
    pub big: bool,
}

/// The open-loop schedule, one request at a time: evenly spaced at `rate` per second;
/// regions us 50% / eu 25% / ap 25%; tiers realtime 50% / standard 30% / batch 20%; the big
/// model for 30% of standard and half of batch requests (never for real-time). Drawn from
/// one generator seeded with [`TRAFFIC_SEED`], in this order.
pub struct Schedule {
    rng: fastrand::Rng,
    i: u64,
    n: u64,
    rate: f64,
}

impl Schedule {
    /// The requests of `total` at `rate` per second.
    pub fn new(rate: f64, total: Duration) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(TRAFFIC_SEED),
            i: 0,
            n: (rate * total.as_secs_f64()) as u64,
            rate,
        }
    }
}

impl Iterator for Schedule {
    type Item = Job;

    fn next(&mut self) -> Option<Job> {
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
        Some(Job {
            at,
            region,
            tier,
            big,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use switchyard_gateway::policy::compile::{self, CompileContext, RoutingTable};

    fn policy() -> RoutingTable {
        let context = CompileContext {
            file: Path::new(POLICY_PATH),
            gateway_region: None,
        };
        compile::compile_str(POLICY, &context).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_policy_describes_this_fleet() {
        let table = policy();
        for (a, from) in REGIONS.iter().enumerate() {
            let ra = table.region_by_name(from).expect("region");
            for (b, to) in REGIONS.iter().enumerate() {
                let rb = table.region_by_name(to).expect("region");
                assert_eq!(
                    table.rtt(ra, rb),
                    Duration::from_secs_f64(RTT_MS[a][b] / 1e3),
                    "rtt_ms {from} → {to}"
                );
            }
        }
        assert_eq!(table.pools.len(), POOLS.len());
        for (p, def) in table.pools.iter().zip(&POOLS) {
            assert_eq!(p.name, def.name);
            assert_eq!(
                table.regions[p.region as usize], REGIONS[def.region],
                "{}",
                p.name
            );
            assert_eq!(p.endpoints.len(), def.endpoints, "{}", p.name);
            assert_eq!(p.pricing.per_request, def.per_request, "{}", p.name);
            assert_eq!(p.pricing.per_gpu_hour, def.per_gpu_hour, "{}", p.name);
            for (m, model) in MODELS.iter().enumerate() {
                assert_eq!(p.models.serves(model), def.serves(m), "{} {model}", p.name);
            }
            let per_endpoint = p.concurrency.div_ceil(def.endpoints as u32);
            assert_eq!(per_endpoint, SERVERS_PER_ENDPOINT, "{}", p.name);
        }
        for (name, deadline_ms) in TIERS {
            let t = table.tier_by_name(name).expect("tier");
            let deadline = table.tiers[t as usize].deadline;
            assert_eq!(
                deadline,
                Duration::from_secs_f64(deadline_ms / 1e3),
                "{name}"
            );
        }
    }

    #[test]
    fn faults_hit_their_phases_only() {
        assert_eq!(endpoint_state(EDGE_EU, 0, 0), (Duration::ZERO, false));
        for phase in [1, 2] {
            assert_eq!(
                endpoint_state(EDGE_EU, 0, phase),
                (Duration::from_millis(135), false)
            );
        }
        assert_eq!(endpoint_state(GPU, 0, 1), (Duration::ZERO, false));
        assert_eq!(endpoint_state(GPU, 0, 2), (Duration::ZERO, true));
        assert_eq!(endpoint_state(GPU, 1, 2), (Duration::ZERO, false));
        for (p, pool) in POOLS.iter().enumerate() {
            for e in 0..pool.endpoints {
                assert_eq!(endpoint_state(p, e, 3), (Duration::ZERO, false));
            }
        }
    }

    #[test]
    fn the_schedule_is_the_same_every_time() {
        let total = Duration::from_secs(10);
        let a: Vec<Job> = Schedule::new(100.0, total).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a, Schedule::new(100.0, total).collect::<Vec<_>>());
        assert_eq!(a[10].at, Duration::from_millis(100));
        let us = a.iter().filter(|j| j.region == 1).count();
        assert!((450..550).contains(&us), "{us}");
        assert!(a.iter().all(|j| !(j.big && j.tier == 0)));
    }
}
