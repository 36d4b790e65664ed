//! The batch queue in the simulator: a request the policy queues (a batch pool, or
//! `on_slo_miss: queue`) is accepted at once, as the proxy answers it 202, and waits in a
//! simulated store until the simulated dispatcher sends it, on the virtual clock and on the
//! live dispatcher's rules (`queue::dispatcher`).
//!
//! A round runs every 100 ms of virtual time while jobs wait, when a job arrives and when a
//! dispatch finishes. Per pool it takes as many due jobs as `queue::dispatcher::room` allows
//! (the same function the live dispatcher calls: `concurrency` less the jobs in flight from
//! the queue, fewer under `max_utilisation` counting real-time traffic on the pool, none
//! outside the pool's `window`), in priority (the tier's deadline) then age order, and sends
//! each to an endpoint picked as the dispatcher picks it. The attempt joins the endpoint's
//! FIFO like real-time traffic, so jobs and real-time requests compete for the same servers.
//! A refused connection marks the endpoint down and sends the job back with the dispatcher's
//! own back-off, until `queue.max_attempts`, then the job fails.
//!
//! The virtual clock starts at 00:00 UTC (what dispatch windows are read against). Jobs are
//! counted in the phase they were accepted in; their tier's SLO figures are measured from
//! enqueue to result (a failed job counts as infinitely late). Rounds stop a virtual day after
//! the last phase ends: a job still waiting then (a window that never opens, a zero ceiling)
//! is neither completed nor failed.

use super::CONNECT_REFUSED_US;
use super::{us, Engine, Hist, InFlight, PolicySystem, Request, SimSystemReport, System, What};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;
use switchyard_gateway::classify::Class;
use switchyard_gateway::policy::compile::{PoolId, QueueSettings, RoutingTable};
use switchyard_gateway::queue::{api, dispatcher};
use switchyard_gateway::route::{self, Decision, Reason};

/// The live dispatcher's tick.
const TICK_US: u64 = 100_000;
/// How long after the last phase the simulated dispatcher keeps draining the queue.
const DRAIN_US: u64 = 24 * 3600 * 1_000_000;

/// One job: a request accepted into the queue.
#[derive(Debug, Clone)]
struct Job {
    req: Request,
    /// The policy pool it was queued for.
    pool: PoolId,
    reason: Reason,
    attempts: u32,
    enqueued_us: u64,
    /// As `queue::api::enqueue`: the tier's deadline in ms (lower goes first).
    priority: u64,
    /// The request's number in the run (its attempts carry it).
    id: u64,
}

/// The simulated store and dispatcher of one policy.
pub(super) struct SimQueue {
    /// Per policy pool: due jobs in (priority, enqueued, id) order.
    ready: Vec<BTreeMap<(u64, u64, u64), Job>>,
    /// Jobs backing off after a failed attempt: (due, id), earliest first.
    backing_off: BinaryHeap<Reverse<(u64, u64)>>,
    parked: HashMap<u64, Job>,
    /// Jobs with an attempt at an endpoint, by id.
    running: HashMap<u64, Job>,
    /// Per policy pool: jobs in flight from the dispatcher.
    in_flight: Vec<u64>,
    /// Jobs ready or backing off (the store's `queued`).
    waiting: u64,
    tick_pending: bool,
    /// No rounds after this (µs).
    until_us: u64,
}

impl SimQueue {
    /// The policy's queue, if it has a `queue:` section.
    pub(super) fn new(table: &RoutingTable, w: &super::Workload) -> Option<SimQueue> {
        table.queue.as_ref()?;
        let end = w
            .phases
            .iter()
            .map(|p| us(p.start + p.len))
            .max()
            .unwrap_or(0);
        Some(SimQueue {
            ready: vec![BTreeMap::new(); table.pools.len()],
            backing_off: BinaryHeap::new(),
            parked: HashMap::new(),
            running: HashMap::new(),
            in_flight: vec![0; table.pools.len()],
            waiting: 0,
            tick_pending: false,
            until_us: end + DRAIN_US,
        })
    }

    /// As the dispatcher's `run` after a failed attempt: back off and wait again, or fail
    /// once `max_attempts` are spent.
    fn retry(&mut self, eng: &mut Engine, settings: &QueueSettings, job: Job, now: u64) {
        if job.attempts >= settings.max_attempts {
            let s = eng.phase(&job.req);
            s.jobs.failed += 1;
            let t = &mut s.tiers[job.req.tier];
            t.requests += 1;
            t.latency.add(f64::INFINITY);
            return;
        }
        let due = now + us(dispatcher::backoff(settings, job.attempts));
        self.backing_off.push(Reverse((due, job.id)));
        self.parked.insert(job.id, job);
        self.waiting += 1;
    }
}

/// Whether the proxy would queue this request rather than proxy it (`queue::api::takes`,
/// for inference requests only).
pub(super) fn takes(sys: &PolicySystem, class: &Class, d: &Decision) -> bool {
    sys.queue.is_some() && class.inference && api::takes(&sys.table, d)
}

impl PolicySystem {
    /// Accept `f` as a job (the client's 202), then run a round.
    pub(super) fn enqueue(&mut self, eng: &mut Engine, f: InFlight, d: &Decision, now: u64) {
        let tier = self.class(eng.w, &f.req).tier;
        let priority = self.table.tiers[tier as usize].deadline.as_millis() as u64;
        let (Some(q), Some(settings)) = (self.queue.as_mut(), self.table.queue.as_ref()) else {
            return;
        };
        let Some((pool, _)) = d.target else {
            // `queue::api::enqueue` refuses a queued decision without a pool.
            eng.fail(&f.req, Some(Reason::NoCandidate));
            return;
        };
        if q.waiting + q.running.len() as u64 >= settings.max_jobs {
            // The store is full: 503 with `Retry-After`.
            eng.fail(&f.req, Some(Reason::Overloaded));
        } else {
            let s = eng.phase(&f.req);
            s.requests += 1;
            s.queued += 1;
            let job = Job {
                req: f.req,
                pool,
                reason: d.reason,
                attempts: 0,
                enqueued_us: now,
                priority,
                id: f.id,
            };
            q.ready[pool as usize].insert((priority, now, f.id), job);
            q.waiting += 1;
        }
        // A cache leader queued: its waiters each make their own request.
        self.leader_failed(eng, &f.req, now);
        self.round(eng, now);
    }

    /// One dispatcher round at `now`, as `Dispatcher::round`.
    fn round(&mut self, eng: &mut Engine, now: u64) {
        let (Some(q), Some(settings)) = (self.queue.as_mut(), self.table.queue.as_ref()) else {
            return;
        };
        while let Some(&Reverse((due, id))) = q.backing_off.peek() {
            if due > now {
                break;
            }
            q.backing_off.pop();
            if let Some(job) = q.parked.remove(&id) {
                let key = (job.priority, job.enqueued_us, job.id);
                q.ready[job.pool as usize].insert(key, job);
            }
        }
        let minute = ((now / 60_000_000) % 1440) as u32;
        let now_ms = now / 1000;
        for (i, pool) in self.table.pools.iter().enumerate() {
            if q.ready[i].is_empty() {
                continue;
            }
            let rule = settings.pools.get(&pool.name);
            let live = &self.table.live;
            let in_flight = live.pool(i as PoolId).in_flight() as u64;
            let room = dispatcher::room(pool.concurrency, rule, minute, q.in_flight[i], in_flight);
            for _ in 0..room {
                let Some((_, mut job)) = q.ready[i].pop_first() else {
                    break;
                };
                q.waiting -= 1;
                job.attempts += 1;
                // As the dispatcher's `attempt`: an endpoint as the proxy picks one.
                let fleet_pool = self.pools[i];
                let ep = route::pick_endpoint(live, (i as PoolId, pool), &[], (now_ms, false), 0);
                match ep {
                    Some(e) if !eng.w.is_down(fleet_pool, e as usize, now) => {
                        live.pool(i as PoolId).acquire();
                        live.endpoint(i as PoolId, e as usize).acquire();
                        q.in_flight[i] += 1;
                        let f = InFlight {
                            tried: vec![(i as PoolId, e)],
                            target: (fleet_pool, e as usize),
                            sent_us: now,
                            reason: Some(job.reason),
                            ..InFlight::new(job.id, job.req)
                        };
                        q.running.insert(job.id, job);
                        eng.send(f, now);
                    }
                    refused => {
                        if let Some(e) = refused {
                            let ep = live.endpoint(i as PoolId, e as usize);
                            ep.mark_down(now_ms, self.table.upstream.down_backoff);
                        }
                        q.retry(eng, settings, job, now);
                        // The failed dispatch finishes a moment later and wakes a round.
                        eng.push(now + CONNECT_REFUSED_US, What::Dispatch(false));
                    }
                }
            }
        }
        let phase = eng.w.phase_of(Duration::from_micros(now));
        let depth = &mut eng.stats[phase].jobs.depth_max;
        *depth = (*depth).max(q.waiting);
        if q.waiting > 0 && !q.tick_pending && now < q.until_us {
            q.tick_pending = true;
            eng.push((now / TICK_US + 1) * TICK_US, What::Dispatch(true));
        }
    }

    /// A job's attempt answered (its slots already given back): record the result and run a
    /// round. False when `f` is not a job's.
    pub(super) fn job_done(&mut self, eng: &mut Engine, f: &InFlight, now: u64) -> bool {
        let Some(q) = self.queue.as_mut() else {
            return false;
        };
        let Some(job) = q.running.remove(&f.id) else {
            return false;
        };
        q.in_flight[job.pool as usize] -= 1;
        let pool = f.target.0;
        let result_us = now + eng.w.rtt_us(f.req.region, pool);
        let latency_ms = result_us.saturating_sub(job.enqueued_us) as f64 / 1000.0;
        let charge = eng.w.bill(pool, &f.req, f.service_us);
        let deadline = eng.w.tiers[f.req.tier].1;
        let s = eng.phase(&f.req);
        s.served[pool] += 1;
        s.bill.add(charge);
        s.jobs.spend += charge.total();
        s.jobs.completed += 1;
        s.jobs.latency.add(latency_ms);
        let t = &mut s.tiers[f.req.tier];
        t.requests += 1;
        t.met += u64::from(latency_ms <= deadline);
        t.latency.add(latency_ms);
        self.round(eng, now);
        true
    }
}

impl System {
    /// A dispatcher round: its tick, or a wake after a failed dispatch.
    pub(super) fn dispatch(&mut self, eng: &mut Engine, now: u64, tick: bool) {
        let System::Policy(sys) = self else { return };
        if let Some(q) = sys.queue.as_mut().filter(|_| tick) {
            q.tick_pending = false;
        }
        sys.round(eng, now);
    }
}

/// What the queue did in one phase (jobs accepted then).
#[derive(Debug, Default, Clone)]
pub(super) struct JobStats {
    completed: u64,
    failed: u64,
    /// Enqueue → result at the gateway, completed jobs only.
    latency: Hist,
    depth_max: u64,
    spend: f64,
}

/// The queue's figures of one system in one phase (flattened into the system's report).
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Of the phase's `queued` jobs: those with a result, those that failed after
    /// `queue.max_attempts` (the rest were still waiting when the run ended).
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    /// Completion latency (enqueue → result) of the completed jobs.
    pub job_p50_ms: f64,
    pub job_p99_ms: f64,
    /// Most jobs waiting (ready or backing off) at a round in the phase.
    pub queue_depth_max: u64,
    /// What the jobs' attempts were billed, per 1k requests (included in `spend_per_1k_usd`).
    pub batch_spend_per_1k_usd: f64,
}

pub(super) fn report(j: &JobStats, requests: u64) -> JobReport {
    JobReport {
        jobs_completed: j.completed,
        jobs_failed: j.failed,
        job_p50_ms: j.latency.percentile(0.5),
        job_p99_ms: j.latency.percentile(0.99),
        queue_depth_max: j.depth_max,
        batch_spend_per_1k_usd: super::round(j.spend * 1000.0 / requests.max(1) as f64, 5),
    }
}

/// The report's line about the queue, when the system queued anything.
pub(super) fn render(s: &SimSystemReport) -> Option<String> {
    let j = &s.jobs;
    (s.queued > 0).then(|| {
        format!(
            "jobs: queued {}, completed {}, failed {}, p50 {:.0}ms p99 {:.0}ms (enqueue → result), queue depth max {}, batch ${:.4}/1k req",
            s.queued,
            j.jobs_completed,
            j.jobs_failed,
            j.job_p50_ms,
            j.job_p99_ms,
            j.queue_depth_max,
            j.batch_spend_per_1k_usd
        )
    })
}
