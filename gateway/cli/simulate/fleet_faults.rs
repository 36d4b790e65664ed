//! The `fleet-faults` scenario ([`crate::fleet_faults`], where it is defined) as the
//! simulator's data: its fleet as a [`FleetModel`], its faults as [`Fault`]s on the virtual
//! clock, its schedule as [`Request`]s. Nothing here describes the scenario itself.

use super::{Fault, FleetModel, Mix, PhaseSpec, PoolModel, Request, Workload};
use crate::fleet_faults::{self as scenario, Effect};
use std::time::Duration;

/// The scenario's fleet.
pub fn fleet() -> FleetModel {
    FleetModel {
        regions: scenario::REGIONS.iter().map(|r| r.to_string()).collect(),
        rtt_ms: scenario::RTT_MS.iter().map(|r| r.to_vec()).collect(),
        pools: scenario::POOLS
            .iter()
            .enumerate()
            .map(|(i, p)| PoolModel {
                name: p.name.to_string(),
                region: p.region,
                endpoints: p.endpoints,
                servers_per_endpoint: scenario::SERVERS_PER_ENDPOINT,
                base: p.base(),
                jitter: p.jitter(),
                per_request: p.per_request,
                per_gpu_hour: p.per_gpu_hour,
                serves: (0..scenario::MODELS.len()).map(|m| p.serves(m)).collect(),
                gpu: i == scenario::GPU,
                empirical: None,
            })
            .collect(),
    }
}

/// The scenario's faults, for phases of `phase` each.
pub fn faults(phase: Duration) -> Vec<Fault> {
    scenario::FAULTS
        .iter()
        .map(|f| {
            let (from, to) = (phase * f.phases.start as u32, phase * f.phases.end as u32);
            match f.effect {
                Effect::Slower { .. } => Fault::Slower {
                    pool: f.pool,
                    endpoint: None,
                    share: 1.0,
                    extra: f.extra(),
                    from,
                    to,
                },
                Effect::Down { endpoint } => Fault::Down {
                    pool: f.pool,
                    endpoint,
                    from,
                    to,
                },
            }
        })
        .collect()
}

/// The scenario as a workload: its phases of `phase` at `rate` requests per second.
pub fn workload(phase: Duration, rate: f64, seed: u64) -> Workload {
    Workload {
        name: scenario::NAME.into(),
        phases: scenario::PHASES
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
        tiers: scenario::TIERS
            .iter()
            .map(|(n, d)| (n.to_string(), *d))
            .collect(),
        models: scenario::MODELS.iter().map(|m| m.to_string()).collect(),
        fleet: fleet(),
        faults: faults(phase),
        seed,
    }
}

/// The scenario's schedule as the simulator's requests, one at a time (memory flat in its
/// length). Each request's `service_quantile` comes from a second generator, seeded with
/// `--seed`, so the traffic is the live run's whatever the seed.
pub struct Schedule {
    jobs: scenario::Schedule,
    quantiles: fastrand::Rng,
}

impl Schedule {
    pub fn new(rate: f64, total: Duration, seed: u64) -> Schedule {
        Schedule {
            jobs: scenario::Schedule::new(rate, total),
            quantiles: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Iterator for Schedule {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        let job = self.jobs.next()?;
        Some(Request {
            at: job.at,
            region: job.region,
            tier: job.tier,
            model: u16::from(job.big),
            service_quantile: self.quantiles.f64(),
            key: 0,
        })
    }
}
