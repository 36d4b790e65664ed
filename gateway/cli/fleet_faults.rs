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
//! describes this fleet (pool names, regions, endpoint counts, prices, round trips, egress
//! prices, tier deadlines).

use std::ops::Range;
use std::time::Duration;
use switchyard_gateway::policy::compile::{Billing, Pricing};

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

/// What traffic between [`REGIONS`] costs, USD per GB (`EGRESS_USD_PER_GB[from][to]`, the
/// policy's `egress_usd_per_gb`): cloud inter-region prices, Europe–US the cheapest.
pub const EGRESS_USD_PER_GB: [[f64; 3]; 3] =
    [[0.0, 0.02, 0.09], [0.02, 0.0, 0.08], [0.09, 0.08, 0.0]];

/// SLO tiers and the deadline each is measured against, ms (the report's objective, whatever
/// a simulated policy says).
pub const TIERS: [(&str, f64); 3] = [
    ("realtime", 150.0),
    ("standard", 1000.0),
    ("batch", 30_000.0),
];

/// The models requests ask for, by index: a request asks for the big one or not.
pub const MODELS: [&str; 2] = ["small", "big"];

/// What one request of a model carries, by model index ([`MODELS`]): the same for every
/// system, live and simulated, so the bill's per-token and egress terms are the workload's,
/// not a measurement's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size {
    /// Tokens in the prompt and in the answer (billed by per-token prices).
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// Bytes to the pool and back (billed as egress when the pool is in another region).
    pub request_bytes: u32,
    pub answer_bytes: u32,
}

/// Per model: a short chat turn for the small one; the big one is multimodal (an image of
/// ~150 kB in the request), so its egress is not negligible.
pub const SIZES: [Size; 2] = [
    Size {
        tokens_in: 400,
        tokens_out: 150,
        request_bytes: 1_800,
        answer_bytes: 1_000,
    },
    Size {
        tokens_in: 1_500,
        tokens_out: 400,
        request_bytes: 150_000,
        answer_bytes: 2_500,
    },
];

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
    /// How it is billed and its prices (the policy's `price:`, compiled).
    pub pricing: Pricing,
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

/// Per use: a request, plus its tokens.
const EDGE_PRICE: Pricing = Pricing {
    billing: Billing::PerUse,
    per_request: 0.00002,
    per_gpu_hour: 0.0,
    per_1k_input_tokens: 0.00005,
    per_1k_output_tokens: 0.0002,
};

/// The fleet: two edge pools (small model only, billed per use), a GPU pool with two
/// endpoints (provisioned: two replicas paid by the hour, busy or idle) and a batch pool
/// (billed per GPU-hour of work), both in the US.
pub const POOLS: [Pool; 4] = [
    Pool {
        name: "edge-eu",
        region: 0,
        endpoints: 1,
        base_ms: 15,
        jitter_ms: 5,
        pricing: EDGE_PRICE,
        big_model: false,
    },
    Pool {
        name: "edge-ap",
        region: 2,
        endpoints: 1,
        base_ms: 15,
        jitter_ms: 5,
        pricing: EDGE_PRICE,
        big_model: false,
    },
    Pool {
        name: "gpu",
        region: 1,
        endpoints: 2,
        base_ms: 40,
        jitter_ms: 10,
        pricing: Pricing {
            billing: Billing::Provisioned {
                per_replica_hour: 4.0,
                replicas: Some(2),
                safe_utilisation: 0.7,
            },
            per_request: 0.0,
            per_gpu_hour: 0.0,
            per_1k_input_tokens: 0.0,
            per_1k_output_tokens: 0.0,
        },
        big_model: true,
    },
    Pool {
        name: "batch",
        region: 1,
        endpoints: 1,
        base_ms: 200,
        jitter_ms: 50,
        pricing: Pricing {
            billing: Billing::Batch,
            per_request: 0.0,
            per_gpu_hour: 0.9,
            per_1k_input_tokens: 0.0,
            per_1k_output_tokens: 0.0,
        },
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
                let per_gb = table.egress_per_byte(ra, rb) * 1e9;
                assert!(
                    (per_gb - EGRESS_USD_PER_GB[a][b]).abs() < 1e-12,
                    "egress_usd_per_gb {from} → {to}: {per_gb}"
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
            assert_eq!(p.pricing, def.pricing, "{}", p.name);
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
