//! Capacity: the replicas each pool needs, now and ahead of demand, told to autoscalers.
//!
//! The request path counts one arrival per request sent to a pool (`Demand::arrive`, an
//! atomic add; a request that finds the pool at zero replicas activates it). Every [`TICK`]
//! the [`CapacityMeter`] turns those counts into, per pool with a `capacity:` block:
//! - the rate now (arrivals per second over the last [`RATE_WINDOW`]), across all instances
//!   when they share Redis (`shared.rs`), else this instance's × `limits.instances`;
//! - the rate forecast `scale_up_time` ahead (`forecast.rs`: robust Holt-Winters, one
//!   observation per [`BUCKET`], a daily season);
//! - the servers each needs so the pool's deadline is met at its percentile (`erlang.rs`,
//!   M/M/c with the pool's measured service time), in replicas of
//!   `concurrency_per_replica` slots; the larger of the two, and at least enough to clear
//!   what is in flight within the deadline;
//! - kept at the largest value of the last `scale_down_window` (scale up at once, down only
//!   when the window agrees), within `min_replicas..=max_replicas`.
//!
//! That round is [`Sizer::step`], a function of the arrival counts and a clock the caller
//! owns: the meter runs it on the process's clock, `switchyard simulate --capacity` on a
//! virtual one (with a compressed day, and with the forecast off for comparison).
//!
//! The result is published in the pool's live state (`Demand`), where `/admin/capacity`
//! ([`report`]), the metrics and the KEDA scaler (`keda.rs`) read it. [`ACTIVATED`] wakes
//! the scaler's `StreamIsActive` streams when a request finds a pool at zero.

pub mod erlang;
pub mod forecast;
pub mod keda;
pub mod shared;

use crate::policy::compile::{Capacity, PoolId};
use crate::serving::state::now_ms;
use crate::serving::{Serving, Snapshot};
use crate::telemetry as t;
use async_trait::async_trait;
use forecast::HoltWinters;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often desired replicas are computed.
pub const TICK: Duration = Duration::from_secs(1);
/// The span the rate now is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// One forecast observation; the season is a day of them.
pub const BUCKET: Duration = Duration::from_secs(60);
const SEASON: usize = (24 * 3600 / BUCKET.as_secs()) as usize;

/// Notified when a request finds a pool at zero replicas (`StreamIsActive` waits on it).
pub static ACTIVATED: Notify = Notify::const_new();

/// A request was sent to pool `pool`: count it, and activate the pool if it was at zero.
/// On the request path: one atomic add, and a wake-up only on activation.
pub fn arrive(table: &Serving, pool: PoolId) {
    if table.live.pool(pool).demand.arrive() {
        if let Some(p) = table.pools.get(pool as usize) {
            metrics::counter!(t::POOL_ACTIVATIONS, "pool" => p.name.clone()).increment(1);
            tracing::info!(pool = %p.name, "a request found the pool at zero replicas: activating it");
        }
        ACTIVATED.notify_waiters();
    }
}

/// A request went elsewhere now (or was queued or shed) because pool `pool` was at zero
/// replicas, where it would have gone warm (`route::Decision::wake`): it is the pool's
/// demand all the same, so it counts as an arrival (and activates the pool), and it is
/// counted apart as displaced.
pub fn displaced(table: &Serving, pool: PoolId) {
    table.live.pool(pool).demand.displace();
    if let Some(p) = table.pools.get(pool as usize) {
        metrics::counter!(t::POOL_COLD_DISPLACED, "pool" => p.name.clone()).increment(1);
    }
    arrive(table, pool);
}

/// What one computation found for a pool (also what `/admin/capacity` shows).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sizing {
    pub rate: f64,
    pub forecast: f64,
    pub replicas_now: u32,
    pub replicas_ahead: u32,
    /// Before the scale-down window and the bounds.
    pub replicas_raw: u32,
    pub desired: u32,
}

/// Replicas for `rate` per second: Erlang C servers over slots per replica.
pub fn replicas_for(c: &Capacity, rate: f64, service: Duration) -> u32 {
    let servers = erlang::servers_needed(
        rate,
        service.as_secs_f64(),
        c.deadline.as_secs_f64(),
        c.percentile,
    );
    servers.div_ceil(c.concurrency_per_replica.max(1))
}

/// What one sizing round is given: the arrivals since the last round (all instances), the
/// time since it, the clock (any origin, monotonic), the pool's service time and what it
/// has in flight.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub arrived: f64,
    pub elapsed: Duration,
    pub now: Duration,
    pub service: Duration,
    pub in_flight: u32,
}

/// One pool's sizing between rounds: the rate window, the forecaster and the scale-down
/// history. [`Sizer::step`] is a function of the [`Tick`]s it has been given and nothing
/// else (no process clock, no live state), so the meter (on the process's clock) and the
/// simulator (`switchyard simulate --capacity`, on a virtual one) run the same code.
#[derive(Debug, Clone)]
pub struct Sizer {
    /// Arrivals per round over the last [`RATE_WINDOW`].
    window: VecDeque<f64>,
    bucket: f64,
    bucket_started: Duration,
    /// One forecast observation ([`BUCKET`] live; a day's 1/1440th when a simulated day
    /// is compressed).
    bucket_len: Duration,
    forecaster: HoltWinters,
    /// Whether replicas are asked for the forecast too (live: always; the simulator
    /// compares with and without).
    ahead: bool,
    /// (when, raw replicas) over the last `scale_down_window`.
    history: VecDeque<(Duration, u32)>,
}

impl Sizer {
    /// The gateway's sizing from `now` on: a daily season of [`BUCKET`]s, forecast used.
    pub fn new(now: Duration) -> Self {
        Self::with_day(now, BUCKET * SEASON as u32, true)
    }

    /// Sizing whose season is a `day` of that length (its 1/1440th per bucket, so the
    /// forecaster sees a compressed day as it sees a real one; at least 1,440 [`TICK`]s, a
    /// bucket being at least a round); `ahead: false` sizes for the rate now only.
    pub fn with_day(now: Duration, day: Duration, ahead: bool) -> Self {
        Sizer {
            window: VecDeque::new(),
            bucket: 0.0,
            bucket_started: now,
            bucket_len: (day / SEASON as u32).max(Duration::from_millis(1)),
            forecaster: HoltWinters::new(SEASON),
            ahead,
            history: VecDeque::new(),
        }
    }

    /// One round under `c`.
    pub fn step(&mut self, c: &Capacity, t: Tick) -> Sizing {
        let ticks = (RATE_WINDOW.as_secs_f64() / TICK.as_secs_f64()).round() as usize;
        self.window.push_back(t.arrived);
        while self.window.len() > ticks.max(1) {
            self.window.pop_front();
        }
        let span = (self.window.len() as f64 * TICK.as_secs_f64()).max(t.elapsed.as_secs_f64());
        let rate = self.window.iter().sum::<f64>() / span.max(1e-3);
        self.bucket += t.arrived;
        let open = t.now.saturating_sub(self.bucket_started);
        if open >= self.bucket_len {
            self.forecaster.observe(self.bucket / open.as_secs_f64());
            self.bucket = 0.0;
            // Buckets stay on their grid: restarting one at `now` made each a round longer
            // than `bucket_len` whenever a round came late (61 s buckets: the season drifted
            // from the day by 24 minutes a day).
            let whole = open.as_nanos() / self.bucket_len.as_nanos().max(1);
            self.bucket_started += self.bucket_len * whole as u32;
        }
        let ahead = (c.scale_up_time.as_secs_f64() / self.bucket_len.as_secs_f64()).ceil() as u32;
        let forecast = self.forecaster.forecast(ahead.max(1));
        let replicas_now = replicas_for(c, rate, t.service);
        let replicas_ahead = replicas_for(c, forecast, t.service);
        // What is in flight now must clear within the deadline: `in_flight × S` of work on
        // `servers` takes `in_flight × S / servers`, so at least `in_flight × S / D` servers
        // (every request its own server only when the deadline is no longer than the
        // service). A floor for a backlog the rate has not shown yet; one server per
        // request in flight sized every short queue at its peak.
        let service_us = t.service.as_micros() as u64;
        let deadline_us = (c.deadline.as_micros() as u64).max(service_us).max(1);
        let backlog = (u64::from(t.in_flight) * service_us).div_ceil(deadline_us) as u32;
        let in_flight = backlog.div_ceil(c.concurrency_per_replica.max(1));
        let sized = if self.ahead {
            replicas_now.max(replicas_ahead)
        } else {
            replicas_now
        };
        let raw = sized.max(in_flight);
        self.history.push_back((t.now, raw));
        while self
            .history
            .front()
            .is_some_and(|(at, _)| t.now.saturating_sub(*at) > c.scale_down_window)
        {
            self.history.pop_front();
        }
        let held = self.history.iter().map(|(_, r)| *r).max().unwrap_or(raw);
        Sizing {
            rate,
            forecast,
            replicas_now,
            replicas_ahead,
            replicas_raw: raw,
            desired: held.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas)),
        }
    }
}

/// One pool's history: what the meter keeps between rounds (by pool name, so a reload that
/// keeps the pool keeps its forecast).
struct Track {
    last_arrivals: u64,
    sizer: Sizer,
}

/// Background service: computes every pool's desired replicas each [`TICK`].
pub struct CapacityMeter {
    pub snapshot: Snapshot,
    /// Where the instances share their arrivals (`limits.backend: redis`), else local × N.
    pub shared: Arc<shared::SharedDemand>,
}

#[async_trait]
impl BackgroundService for CapacityMeter {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut ticker = crate::serving::ticker::Ticker::new(TICK, shutdown);
        let mut tracks: HashMap<String, Track> = HashMap::new();
        let epoch = Instant::now();
        let mut last = epoch;
        loop {
            if !ticker.tick().await {
                break;
            }
            let now = Instant::now();
            let elapsed = now.duration_since(last);
            last = now;
            let table = self.snapshot.load_full();
            self.round(&table, &mut tracks, elapsed, now.duration_since(epoch))
                .await;
        }
    }
}

impl CapacityMeter {
    async fn round(
        &self,
        table: &Serving,
        tracks: &mut HashMap<String, Track>,
        elapsed: Duration,
        now: Duration,
    ) {
        // This instance's arrivals since the last round, per pool with `capacity:`.
        let mut local = Vec::new();
        for (i, pool) in table.pools.iter().enumerate() {
            if pool.capacity.is_none() {
                continue;
            }
            let state = table.live.pool(i as PoolId);
            let arrivals = state.demand.arrivals();
            let track = tracks.entry(pool.name.clone()).or_insert_with(|| Track {
                last_arrivals: arrivals,
                sizer: Sizer::new(now),
            });
            let arrived = arrivals.saturating_sub(track.last_arrivals);
            track.last_arrivals = arrivals;
            local.push((i, arrived));
        }
        let names: Vec<&str> = local
            .iter()
            .map(|(i, _)| table.pools[*i].name.as_str())
            .collect();
        let counts: Vec<u64> = local.iter().map(|(_, n)| *n).collect();
        let all = self.shared.exchange(table, &names, &counts).await;
        for ((i, _), arrived) in local.iter().zip(all) {
            let pool = &table.pools[*i];
            let (Some(c), Some(track)) = (&pool.capacity, tracks.get_mut(&pool.name)) else {
                continue;
            };
            let state = table.live.pool(*i as PoolId);
            let s = track.sizer.step(
                c,
                Tick {
                    arrived,
                    elapsed,
                    now,
                    service: state.service_time(),
                    in_flight: state.in_flight(),
                },
            );
            state.demand.publish(s.desired, s.rate, s.forecast);
            let name = pool.name.clone();
            metrics::gauge!(t::POOL_DESIRED_REPLICAS, "pool" => name.clone())
                .set(f64::from(s.desired));
            metrics::gauge!(t::POOL_ARRIVAL_RATE, "pool" => name.clone()).set(s.rate);
            metrics::gauge!(t::POOL_FORECAST_RATE, "pool" => name).set(s.forecast);
        }
        tracks.retain(|name, _| table.pools.iter().any(|p| &p.name == name));
    }
}

/// One pool's capacity: demand, desired replicas and the bounds they are computed under
/// (`None`: the pool has no `capacity:`). `/admin/capacity` lists these; `explain` shows the
/// chosen pool's.
pub fn pool_report(table: &Serving, pool: PoolId) -> Option<Value> {
    let p = table.pools.get(pool as usize)?;
    let c = p.capacity.as_ref()?;
    let state = table.live.pool(pool);
    let (rate, forecast) = state.demand.rates();
    let service = state.service_time();
    let cold_start = match p.pricing.billing {
        crate::policy::compile::Billing::Serverless { cold_start, .. } => {
            Some(cold_start.as_millis() as u64)
        }
        _ => None,
    };
    Some(json!({
        "pool": p.name,
        "desired_replicas": state.demand.desired(),
        "active": keda::desired(table, pool) > 0,
        "replicas_for_rate_now": replicas_for(c, rate, service),
        "replicas_for_forecast": replicas_for(c, forecast, service),
        "arrival_rate_per_s": round3(rate),
        "forecast_rate_per_s": round3(forecast),
        "forecast_horizon_s": c.scale_up_time.as_secs(),
        "service_time_ms": round3(service.as_secs_f64() * 1e3),
        "in_flight": state.in_flight(),
        "activations": state.demand.activations(),
        "displaced": state.demand.displaced(),
        "cold_start_ms": cold_start,
        "min_replicas": c.min_replicas,
        "max_replicas": c.max_replicas,
        "concurrency_per_replica": c.concurrency_per_replica,
        "deadline_ms": c.deadline.as_millis() as u64,
        "deadline_tier": c.deadline_tier,
        "percentile": c.percentile,
        "scale_down_window_s": c.scale_down_window.as_secs(),
    }))
}

/// Every pool with `capacity:` (`/admin/capacity`), and where demand comes from.
pub fn report(table: &Serving, shared: Option<&shared::SharedDemand>) -> Value {
    let pools: Vec<Value> = (0..table.pools.len())
        .filter_map(|i| pool_report(table, i as PoolId))
        .collect();
    json!({
        "at_ms": now_ms(),
        "demand": shared.map_or(json!({"source": "local"}), |s| s.describe()),
        "pools": pools,
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity() -> Capacity {
        Capacity {
            min_replicas: 0,
            max_replicas: 20,
            concurrency_per_replica: 4,
            scale_up_time: Duration::from_secs(60),
            scale_down_window: Duration::from_secs(30),
            percentile: 0.99,
            deadline: Duration::from_millis(300),
            deadline_tier: None,
        }
    }

    #[test]
    fn replicas_are_servers_over_slots() {
        // 100/s at 100 ms, 300 ms at p99: 12 servers (erlang.rs), 4 per replica → 3.
        assert_eq!(
            replicas_for(&capacity(), 100.0, Duration::from_millis(100)),
            3
        );
        assert_eq!(
            replicas_for(&capacity(), 0.0, Duration::from_millis(100)),
            0
        );
    }

    /// What is in flight must clear within the deadline, not get a slot each: 60 requests of
    /// 100 ms against 300 ms need 20 slots (5 replicas of 4); against a deadline no longer
    /// than the service, one slot each (15 replicas).
    #[test]
    fn a_backlog_is_sized_to_clear_within_the_deadline() {
        let backlog = |deadline_ms: u64| {
            let c = Capacity {
                deadline: Duration::from_millis(deadline_ms),
                ..capacity()
            };
            let tick = Tick {
                arrived: 0.0,
                elapsed: TICK,
                now: TICK,
                service: Duration::from_millis(100),
                in_flight: 60,
            };
            Sizer::new(Duration::ZERO).step(&c, tick).replicas_raw
        };
        assert_eq!(backlog(300), 5);
        assert_eq!(backlog(100), 15);
        assert_eq!(backlog(50), 15);
    }

    /// Up at once, down only after the window; bounds applied last.
    #[test]
    fn scale_down_waits_for_the_window() {
        let c = capacity();
        let mut track = Sizer::new(Duration::ZERO);
        let at = |track: &mut Sizer, s: u64, n: f64| {
            track.step(
                &c,
                Tick {
                    arrived: n,
                    elapsed: TICK,
                    now: Duration::from_secs(s),
                    service: Duration::from_millis(100),
                    in_flight: 0,
                },
            )
        };
        for s in 0..10 {
            at(&mut track, s, 100.0);
        }
        assert_eq!(at(&mut track, 10, 100.0).desired, 3);
        // Load stops: the rate falls with the 10 s window, but desired holds for 30 s.
        for s in 11..35 {
            let sz = at(&mut track, s, 0.0);
            assert_eq!(sz.desired, 3, "at {s}s");
        }
        // The last second with any rate in its 10 s window was 19 s; 30 s after it, zero
        // (before the first forecast bucket ends at 60 s).
        for s in 35..50 {
            assert!(at(&mut track, s, 0.0).desired > 0, "at {s}s");
        }
        assert_eq!(
            at(&mut track, 50, 0.0).desired,
            0,
            "min_replicas 0: scales to zero"
        );
    }

    fn tick(now: u64, arrived: f64) -> Tick {
        Tick {
            arrived,
            elapsed: TICK,
            now: Duration::from_secs(now),
            service: Duration::from_millis(100),
            in_flight: 0,
        }
    }

    /// A compressed day of 3,600 s is 1,440 buckets of 2.5 s: rounds of 1 s close them
    /// after 3 s and 2 s in turn, so the season is exactly that day (not 1,440 × 3 s).
    #[test]
    fn buckets_stay_on_their_grid() {
        let c = capacity();
        let mut sizer = Sizer::with_day(Duration::ZERO, Duration::from_secs(3600), true);
        for s in 1..3600 {
            sizer.step(&c, tick(s, 10.0));
        }
        assert!(!sizer.forecaster.seasonal(), "a day is not over yet");
        sizer.step(&c, tick(3600, 10.0));
        assert!(sizer.forecaster.seasonal(), "1,440 buckets in 3,600 s");
    }

    /// Without the forecast, desired is the rate now's (held by the window); with it, a
    /// day-old ramp is asked for ahead of time.
    #[test]
    fn the_forecast_can_be_left_out() {
        let c = Capacity {
            scale_down_window: Duration::from_secs(5),
            ..capacity()
        };
        let day = 1440;
        // A day: 10/s, then 200/s for its second half.
        let rate = |s: u64| if s % day < day / 2 { 10.0 } else { 200.0 };
        let mut with = Sizer::with_day(Duration::ZERO, Duration::from_secs(day), true);
        let mut without = Sizer::with_day(Duration::ZERO, Duration::from_secs(day), false);
        // Two days and most of the next night; `scale_up_time` (60 s) before the step.
        let before = 2 * day + day / 2 - 30;
        let (mut a, mut b) = (Sizing::default(), Sizing::default());
        for s in 1..=before {
            a = with.step(&c, tick(s, rate(s)));
            b = without.step(&c, tick(s, rate(s)));
        }
        let low = replicas_for(&c, 10.0, Duration::from_millis(100));
        assert_eq!(b.desired, low, "{b:?}");
        assert!(a.desired > low, "the forecast sees the step coming: {a:?}");
    }
}
