//! `switchyard simulate --workload FILE --capacity`: one provisioned pool's replicas over
//! time under four ways of sizing it, on the same arrivals, billed as the pool bills.
//!
//! The workload's `capacity:` section names the pool (`pool: gpu`), the virtual length of
//! its day (`day`, the forecast's season) and a warm-up left out of the figures; the
//! policy (the first `--policy`, else the fleet's) gives the pool's `capacity:` block (the
//! bounds, `concurrency_per_replica`, `scale_up_time`, `scale_down_window`, the deadline
//! and percentile sized for) and its `price:` (provisioned: `per_replica_hour`).
//!
//! The pool is one FIFO queue of `ready replicas × concurrency_per_replica` servers: every
//! request of the workload arrives at it (the workload is the pool's demand; `route::decide`
//! is not run: there is one pool), takes the fleet model's service time for it
//! (`Workload::service_at`, faults included) and is judged as `simulate` judges it (its
//! tier's deadline, or first token, plus its region's round trip). When a strategy asks for
//! more replicas, they are billed at once and serve `scale_up_time` later (scale-up delay
//! plus cold start); fewer: replicas still starting are cancelled first, then ready ones stop
//! taking requests (those being served finish). Capacity is billed per second of ready and
//! starting replicas, busy or idle, by `route::cost::capacity_per_second_at`. The
//! strategies, every second unless said:
//! - `fixed-peak`: `capacity::replicas_for` at the workload's peak rate, all day;
//! - `hpa-cpu`: Kubernetes' HPA on CPU at a 70 % target, CPU being the busy share of the
//!   ready replicas' slots over its 15 s sync period: `ceil(ready × utilisation / 0.7)`,
//!   no change within a tolerance of 0.1, up by at most max(100 %, 4 replicas) per sync,
//!   down to the largest recommendation of its 300 s stabilisation window;
//! - `switchyard-reactive`: the gateway's own `capacity::Sizer` with the forecast off
//!   (the rate of the last 10 s, Erlang C, the `scale_down_window`);
//! - `switchyard-forecast`: the same `Sizer` as the gateway runs it, also sized for the
//!   Holt-Winters forecast `scale_up_time` ahead.
//!
//! Time compression: a `day` shorter than 24 h is a day compressed by 24 h ÷ `day`. The
//! forecast's season is that day (1,440 buckets of `day`/1,440), and the two scale-down
//! windows (the HPA's 300 s, the pool's `scale_down_window`), which are fractions of the
//! demand's time scale, are compressed by the same factor; the scale-up time, the sync
//! period, the 1 s round and the 10 s rate window are not (they are the machines').
//!
//! Ramps: the phases whose rate rises (`to_rate` above `rate`). `ramp_misses` counts the
//! requests arriving in them that miss their objective, every tier.

use super::{SimError, Workload};
use serde::Serialize;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;
use switchyard_gateway::capacity::{self, Sizer, Tick, TICK};
use switchyard_gateway::policy::compile::{Billing, Capacity, Pool};
use switchyard_gateway::route::cost;
use switchyard_gateway::serving::Serving;

/// The workload's `capacity:` section.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The fleet's pool whose replicas are simulated.
    pub pool: String,
    /// A day's length in virtual time (the forecast's season).
    pub day: Duration,
    /// Figures count from this time on.
    pub warm_up: Duration,
}

/// Kubernetes' HPA defaults (`kube-controller-manager`, `autoscaling/v2` behavior).
pub const HPA_TARGET: f64 = 0.7;
pub const HPA_SYNC: Duration = Duration::from_secs(15);
pub const HPA_TOLERANCE: f64 = 0.1;
pub const HPA_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// The four strategies, in report order.
pub const STRATEGIES: [&str; 4] = [
    "fixed-peak",
    "hpa-cpu",
    "switchyard-reactive",
    "switchyard-forecast",
];

/// What the run compares, and how each strategy did.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub workload: String,
    pub pool: String,
    pub policy: String,
    pub day_s: f64,
    /// 24 h ÷ `day`.
    pub compression: f64,
    pub warm_up_s: f64,
    pub length_s: f64,
    /// Requests after the warm-up (the same for every strategy), and the realtime ones.
    pub requests: u64,
    pub realtime_requests: u64,
    /// Requests after the warm-up that arrived during a ramp.
    pub ramp_requests: u64,
    /// The ramps (rising phases) after the warm-up: (from, to) in seconds.
    pub ramps: Vec<(f64, f64)>,
    pub peak_rate: f64,
    pub fixed_replicas: u32,
    pub scale_up_s: f64,
    pub hpa_scale_down_window_s: f64,
    pub scale_down_window_s: f64,
    pub strategies: Vec<StrategyReport>,
    pub note: String,
}

/// One strategy's figures after the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    pub strategy: String,
    /// Ready and starting replicas × hours.
    pub replica_hours: f64,
    /// `replica_hours` ÷ fixed-peak's.
    pub vs_fixed_peak: f64,
    /// The pool's capacity bill for them, USD.
    pub capacity_usd: f64,
    /// % of realtime-tier requests within their objective.
    pub realtime_attainment_pct: f64,
    /// Requests of any tier that missed their objective, and those that arrived in a ramp.
    pub slo_misses: u64,
    pub ramp_misses: u64,
    /// The most replicas (ready and starting) at once, and the mean.
    pub peak_replicas: u32,
    pub mean_replicas: f64,
    /// The longest a request waited for a server, ms.
    pub max_wait_ms: f64,
}

/// One arrival, as every strategy sees it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: u64,
    service: u64,
    /// How long it may wait for a server and still meet its objective, µs (negative: never).
    slack: i64,
    realtime: bool,
    ramp: bool,
    counted: bool,
}

/// How a strategy sets the target.
enum Strategy {
    Fixed,
    Hpa {
        next_sync: u64,
        /// (when, recommendation) within the stabilisation window.
        history: VecDeque<(u64, u32)>,
    },
    Sizer(Box<Sizer>),
}

/// Everything that is the same for the four runs.
struct Setting<'a> {
    c: &'a Capacity,
    pool: &'a Pool,
    service: Duration,
    scale_up: u64,
    warm_up: u64,
    end: u64,
    hpa_window: u64,
    fixed: u32,
    initial: u32,
}

/// Simulate the workload's `capacity:` pool under the four strategies. `table` is the
/// policy whose pool gives the `capacity:` block and the price (`policy` its name).
pub fn run(w: &Workload, table: &Serving, policy: &str) -> Result<CapacityReport, SimError> {
    let setup = w.capacity.as_ref().ok_or_else(|| {
        SimError::Workload(
            "--capacity needs a `capacity:` section in the workload (pool, day)".into(),
        )
    })?;
    let fleet_pool = w
        .fleet
        .pools
        .iter()
        .position(|p| p.name == setup.pool)
        .ok_or_else(|| SimError::Workload(format!("no pool `{}` in the fleet", setup.pool)))?;
    let mismatch = |problem: String| SimError::Mismatch {
        policy: policy.to_string(),
        problem,
    };
    let pool = table
        .pools
        .iter()
        .find(|p| p.name == setup.pool)
        .ok_or_else(|| mismatch(format!("no pool `{}`", setup.pool)))?;
    let c = pool.capacity.as_ref().ok_or_else(|| {
        mismatch(format!(
            "pool `{}` has no `capacity:` block to size it with",
            pool.name
        ))
    })?;
    if !matches!(pool.pricing.billing, Billing::Provisioned { .. }) {
        return Err(mismatch(format!(
            "pool `{}` is not provisioned (`per_replica_hour`): its replicas are not billed",
            pool.name
        )));
    }
    let compression = 86_400.0 / setup.day.as_secs_f64();
    let squeeze = |d: Duration| us(d.div_f64(compression.max(1.0)));
    let end = w
        .phases
        .iter()
        .map(|p| us(p.start + p.len))
        .max()
        .unwrap_or(0);
    let warm_up = us(setup.warm_up);
    let ramps: Vec<(u64, u64)> = w
        .phases
        .iter()
        .filter(|p| p.rising())
        .map(|p| (us(p.start), us(p.start + p.len)))
        .collect();
    let realtime = w.tiers.iter().position(|(t, _)| t == "realtime");
    let arrivals: Vec<Arrival> = w
        .requests()
        .map(|req| {
            let at = us(req.at);
            let service = w.service_at(fleet_pool, 0, req.service_quantile, at);
            let (judged, objective) = w.judged(&req, fleet_pool, 0, service);
            Arrival {
                at,
                service,
                slack: (objective - judged).floor() as i64,
                realtime: Some(req.tier) == realtime,
                ramp: ramps.iter().any(|(a, b)| (*a..*b).contains(&at)),
                counted: at >= warm_up,
            }
        })
        .collect();
    let peak_rate = w
        .phases
        .iter()
        .map(|p| p.rate.max(p.to_rate))
        .fold(0.0, f64::max);
    let service = pool.service_time;
    let bounds = |n: u32| n.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas));
    let first_rate = w.phases.first().map_or(0.0, |p| p.rate);
    let setting = Setting {
        c,
        pool,
        service,
        scale_up: us(c.scale_up_time),
        warm_up,
        end,
        hpa_window: squeeze(HPA_SCALE_DOWN_WINDOW),
        // Sized for the peak as the gateway sizes (not held to `max_replicas`: an operator
        // who provisions for the peak provisions it).
        fixed: capacity::replicas_for(c, peak_rate, service).max(c.min_replicas),
        initial: bounds(capacity::replicas_for(c, first_rate, service)),
    };
    // The gateway's sizing, its scale-down window compressed with the day.
    let sized = Capacity {
        scale_down_window: c.scale_down_window.div_f64(compression.max(1.0)),
        ..c.clone()
    };
    let mut strategies = Vec::new();
    for name in STRATEGIES {
        let strategy = match name {
            "fixed-peak" => Strategy::Fixed,
            "hpa-cpu" => Strategy::Hpa {
                next_sync: us(HPA_SYNC),
                history: VecDeque::new(),
            },
            _ => Strategy::Sizer(Box::new(Sizer::with_day(
                Duration::ZERO,
                setup.day,
                name == "switchyard-forecast",
            ))),
        };
        strategies.push(simulate(name, strategy, &setting, &sized, &arrivals));
    }
    let fixed_hours = strategies.first().map_or(0.0, |s| s.replica_hours);
    for s in &mut strategies {
        s.vs_fixed_peak = round(s.replica_hours / fixed_hours.max(1e-9), 3);
    }
    let counted = arrivals.iter().filter(|a| a.counted);
    Ok(CapacityReport {
        workload: w.name.clone(),
        pool: pool.name.clone(),
        policy: policy.to_string(),
        day_s: setup.day.as_secs_f64(),
        compression: round(compression, 3),
        warm_up_s: setup.warm_up.as_secs_f64(),
        length_s: end as f64 / 1e6,
        requests: counted.clone().count() as u64,
        realtime_requests: counted.clone().filter(|a| a.realtime).count() as u64,
        ramp_requests: counted.filter(|a| a.ramp).count() as u64,
        ramps: ramps
            .iter()
            .filter(|(_, b)| *b > warm_up)
            .map(|(a, b)| (*a as f64 / 1e6, *b as f64 / 1e6))
            .collect(),
        peak_rate,
        fixed_replicas: setting.fixed,
        scale_up_s: c.scale_up_time.as_secs_f64(),
        hpa_scale_down_window_s: setting.hpa_window as f64 / 1e6,
        scale_down_window_s: sized.scale_down_window.as_secs_f64(),
        strategies,
        note: "One FIFO queue of ready replicas x concurrency_per_replica servers receives every request of the workload (route::decide is not run: one pool); service times are the fleet model's. Replicas asked for are billed at once and serve scale_up_time later; fewer: starting ones are cancelled first, then ready ones stop taking requests. Capacity = (ready + starting) replica-seconds priced by route::cost. hpa-cpu: ceil(ready x busy share over 15 s / 0.7), tolerance 0.1, up at most max(100%, 4) per sync, down to the largest recommendation of its window. switchyard-*: the gateway's capacity::Sizer (forecast off / on). Scale-down windows compressed with the day; scale-up time, sync period and rate window not. Figures after the warm-up; ramps = phases whose rate rises.".into(),
    })
}

/// What the gateway counts in flight to the pool: requests being served and waiting at
/// its servers, at most the pool's `concurrency` (the gateway sends no more: `take_slot`).
fn in_flight(busy: u64, waiting: usize, pool: &Pool) -> u32 {
    (busy + waiting as u64).min(u64::from(pool.concurrency)) as u32
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

/// One strategy through the arrivals.
fn simulate(
    name: &str,
    mut strategy: Strategy,
    s: &Setting,
    sized: &Capacity,
    arrivals: &[Arrival],
) -> StrategyReport {
    let c = s.c;
    let cpr = u64::from(c.concurrency_per_replica.max(1));
    let tick = us(TICK);
    let (mut ready, mut starting): (u32, VecDeque<u64>) = match strategy {
        Strategy::Fixed => (s.fixed, VecDeque::new()),
        _ => (s.initial, VecDeque::new()),
    };
    let mut done: BinaryHeap<std::cmp::Reverse<u64>> = BinaryHeap::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut busy: u64 = 0;
    // Integrals since the last HPA sync: busy server-µs and ready server-µs.
    let (mut busy_int, mut slots_int) = (0.0f64, 0.0f64);
    let mut last = 0u64;
    let mut next = 0usize;
    let mut next_tick = tick;
    let mut arrived_in_tick = 0u64;
    let (mut replica_us, mut peak, mut max_wait) = (0.0f64, 0u32, 0u64);
    let (mut met_rt, mut rt, mut misses, mut ramp_misses) = (0u64, 0u64, 0u64, 0u64);

    // Start the request `i` now: judged by its wait.
    let mut serve = |i: usize, now: u64, busy: &mut u64, done: &mut BinaryHeap<_>| {
        let a = &arrivals[i];
        *busy += 1;
        done.push(std::cmp::Reverse(now + a.service));
        if !a.counted {
            return;
        }
        let wait = now - a.at;
        max_wait = max_wait.max(wait);
        let met = (wait as i64) <= a.slack;
        if a.realtime {
            rt += 1;
            met_rt += u64::from(met);
        }
        if !met {
            misses += 1;
            ramp_misses += u64::from(a.ramp);
        }
    };

    loop {
        let t_arrival = arrivals.get(next).map_or(u64::MAX, |a| a.at);
        let t_done = done.peek().map_or(u64::MAX, |d| d.0);
        let t_ready = starting.front().copied().unwrap_or(u64::MAX);
        let now = t_arrival.min(t_done).min(t_ready).min(next_tick);
        let drained = t_done == u64::MAX && t_arrival == u64::MAX && queue.is_empty();
        // (An hour past the end: a queue that no replica will ever serve is left.)
        if now >= s.end && (drained || now > s.end + 3_600_000_000) {
            break;
        }
        // The integrals up to now, at the state before this event.
        let dt = (now - last) as f64;
        busy_int += busy as f64 * dt;
        slots_int += f64::from(ready) * cpr as f64 * dt;
        last = now;
        let servers = u64::from(ready) * cpr;
        if now == t_done {
            done.pop();
            busy -= 1;
        } else if now == t_ready {
            starting.pop_front();
            ready += 1;
        } else if now == t_arrival {
            arrived_in_tick += 1;
            next += 1;
            if busy < servers && queue.is_empty() {
                serve(next - 1, now, &mut busy, &mut done);
            } else {
                queue.push_back(next - 1);
            }
            continue;
        } else {
            // A round: the strategy's target, then replicas started or stopped.
            let spec = ready + starting.len() as u32;
            if now > s.warm_up && now <= s.end {
                replica_us += f64::from(spec) * tick as f64;
                peak = peak.max(spec);
            }
            let target = match &mut strategy {
                Strategy::Fixed => spec,
                Strategy::Sizer(sizer) => {
                    sizer
                        .step(
                            sized,
                            Tick {
                                arrived: arrived_in_tick as f64,
                                elapsed: TICK,
                                now: Duration::from_micros(now),
                                service: s.service,
                                in_flight: in_flight(busy, queue.len(), s.pool),
                            },
                        )
                        .desired
                }
                Strategy::Hpa { next_sync, history } if now >= *next_sync => {
                    *next_sync += us(HPA_SYNC);
                    let utilisation = if slots_int > 0.0 {
                        busy_int / slots_int
                    } else {
                        1.0
                    };
                    busy_int = 0.0;
                    slots_int = 0.0;
                    let used = utilisation * f64::from(ready);
                    let ratio = used / (HPA_TARGET * f64::from(spec.max(1)));
                    let mut want = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
                        spec
                    } else {
                        (used / HPA_TARGET).ceil() as u32
                    };
                    want = want.min((spec * 2).max(spec + 4));
                    history.push_back((now, want));
                    while history
                        .front()
                        .is_some_and(|(at, _)| now - at > s.hpa_window)
                    {
                        history.pop_front();
                    }
                    let held = history.iter().map(|(_, r)| *r).max().unwrap_or(want);
                    let want = if want < spec { held.min(spec) } else { want };
                    want.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas))
                }
                Strategy::Hpa { .. } => spec,
            };
            arrived_in_tick = 0;
            next_tick += tick;
            if target > spec {
                for _ in spec..target {
                    starting.push_back(now + s.scale_up);
                }
            } else {
                for _ in target..spec {
                    if starting.pop_back().is_none() {
                        ready = ready.saturating_sub(1);
                    }
                }
            }
        }
        // Servers freed or added: the queue's head goes in.
        let servers = u64::from(ready) * cpr;
        while busy < servers {
            let Some(i) = queue.pop_front() else { break };
            serve(i, now, &mut busy, &mut done);
        }
    }
    // Never served (a backlog an hour past the end): misses.
    for a in queue.iter().map(|&i| &arrivals[i]).filter(|a| a.counted) {
        rt += u64::from(a.realtime);
        misses += 1;
        ramp_misses += u64::from(a.ramp);
    }
    let hours = replica_us / 3.6e9;
    let counted_secs = (s.end.saturating_sub(s.warm_up)) as f64 / 1e6;
    StrategyReport {
        strategy: name.to_string(),
        replica_hours: round(hours, 3),
        vs_fixed_peak: 0.0,
        capacity_usd: round(
            cost::capacity_per_second_at(s.pool, 1) * replica_us / 1e6,
            4,
        ),
        realtime_attainment_pct: round(met_rt as f64 * 100.0 / rt.max(1) as f64, 3),
        slo_misses: misses,
        ramp_misses,
        peak_replicas: peak,
        mean_replicas: round(hours * 3600.0 / counted_secs.max(1e-9), 2),
        max_wait_ms: round(max_wait as f64 / 1e3, 1),
    }
}

/// The report as a table.
pub fn render(r: &CapacityReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: pool `{}` ({}), {:.0} s simulated, a day = {:.0} s ({}x compressed), figures after a {:.0} s warm-up",
        r.workload, r.pool, r.policy, r.length_s, r.day_s, r.compression, r.warm_up_s
    );
    let _ = writeln!(
        out,
        "{} requests ({} realtime, {} during {} ramps); peak {:.0} req/s; fixed-peak = {} replicas; scale-up {:.0} s; scale-down windows: hpa {:.1} s, switchyard {:.1} s",
        r.requests,
        r.realtime_requests,
        r.ramp_requests,
        r.ramps.len(),
        r.peak_rate,
        r.fixed_replicas,
        r.scale_up_s,
        r.hpa_scale_down_window_s,
        r.scale_down_window_s
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:>13} {:>9} {:>13} {:>11} {:>9} {:>11} {:>5} {:>6} {:>10}",
        "strategy",
        "replica-hours",
        "vs fixed",
        "capacity USD",
        "realtime %",
        "misses",
        "ramp misses",
        "peak",
        "mean",
        "max wait"
    );
    for s in &r.strategies {
        let _ = writeln!(
            out,
            "{:<20} {:>13.3} {:>9.3} {:>13.4} {:>11.3} {:>9} {:>11} {:>5} {:>6.2} {:>8.1}ms",
            s.strategy,
            s.replica_hours,
            s.vs_fixed_peak,
            s.capacity_usd,
            s.realtime_attainment_pct,
            s.slo_misses,
            s.ramp_misses,
            s.peak_replicas,
            s.mean_replicas,
            s.max_wait_ms
        );
    }
    let _ = writeln!(out, "\n{}", r.note);
    out
}
