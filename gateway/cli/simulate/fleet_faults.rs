//! The `fleet-faults` scenario ([`crate::fleet_faults`], where it is defined) as the
//! simulator's data: its fleet as a [`FleetModel`], its faults as [`Fault`]s on the virtual
//! clock, its schedule as [`Request`]s. Nothing here describes the scenario itself.

use super::{Bill, Fault, FleetModel, Mix, PhaseSpec, PoolModel, Request, SimError, Workload};
use crate::fleet_faults::{self as scenario, Effect};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_gateway::policy::compile::{self, CompileContext};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

/// The scenario's policy, compiled: the fleet's bill (its prices are the fleet's own, which
/// `crate::fleet_faults`' tests check).
pub fn policy() -> Result<Serving, SimError> {
    let table = compile::compile_str(
        scenario::POLICY,
        &CompileContext {
            file: Path::new(scenario::POLICY_PATH),
            gateway_region: None,
        },
    )?;
    Ok(Serving::load(table, &Fleet::default())?)
}

/// The scenario's fleet, billed by its policy's prices.
pub fn fleet() -> Result<FleetModel, SimError> {
    let regions: Vec<String> = scenario::REGIONS.iter().map(|r| r.to_string()).collect();
    let bill = Bill::new(Arc::new(policy()?), &regions)?;
    let pools = scenario::POOLS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(PoolModel {
                name: p.name.to_string(),
                region: p.region,
                endpoints: p.endpoints,
                servers_per_endpoint: scenario::SERVERS_PER_ENDPOINT,
                base: p.base(),
                jitter: p.jitter(),
                bill: bill.pool(p.name)?,
                serves: (0..scenario::MODELS.len()).map(|m| p.serves(m)).collect(),
                gpu: i == scenario::GPU,
                empirical: None,
            })
        })
        .collect::<Result<_, SimError>>()?;
    Ok(FleetModel {
        regions,
        rtt_ms: scenario::RTT_MS.iter().map(|r| r.to_vec()).collect(),
        pools,
        bill,
    })
}

/// What a request for `model` carries (tokens in and out, bytes up and down).
pub fn size(model: usize) -> ((u32, u32), (u32, u32)) {
    let s = scenario::SIZES[model.min(scenario::SIZES.len() - 1)];
    (
        (s.tokens_in, s.tokens_out),
        (s.request_bytes, s.answer_bytes),
    )
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
pub fn workload(phase: Duration, rate: f64, seed: u64) -> Result<Workload, SimError> {
    Ok(Workload {
        name: scenario::NAME.into(),
        phases: scenario::PHASES
            .iter()
            .enumerate()
            .map(|(i, name)| PhaseSpec {
                name: name.to_string(),
                start: phase * i as u32,
                len: phase,
                rate,
                to_rate: rate,
            })
            .collect(),
        mix: Mix::FleetFaults,
        tiers: scenario::TIERS
            .iter()
            .map(|(n, d)| (n.to_string(), *d))
            .collect(),
        models: scenario::MODELS.iter().map(|m| m.to_string()).collect(),
        sizes: (0..scenario::MODELS.len()).map(size).collect(),
        fleet: fleet()?,
        faults: faults(phase),
        seed,
        streams: Default::default(),
        capacity: None,
    })
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
        let (tokens, bytes) = size(usize::from(job.big));
        Some(Request {
            at: job.at,
            region: job.region,
            tier: job.tier,
            model: u16::from(job.big),
            service_quantile: self.quantiles.f64(),
            key: 0,
            tokens,
            bytes,
            stream: false,
        })
    }
}
