//! `switchyard demo --scenario fleet-faults`: the trade-off under real faults, measured.
//!
//! The scenario — fleet, traffic, phases, faults and Switchyard's policy — is defined once in
//! [`crate::fleet_faults`] (the simulator runs the same definition); this module runs it live.
//! Three identical mock fleets of its pools serve the same open-loop traffic schedule at the
//! same time: one through Switchyard (one gateway instance per region, in this process, real
//! Pingora, the scenario's policy; each client uses its region's instance), one through a
//! naive client-side round-robin over every pool that serves the model, one that always uses
//! the GPU pool. The faults hit all three fleets at once, at the phase boundaries. Each phase
//! is reported per system: SLO attainment and p50/p99 per tier, spend per 1,000 requests and
//! where the traffic went.
//!
//! **WAN latency is real delay on the wire.** Every path from a region to a pool endpoint
//! crosses a TCP relay (`testkit::relay`) that delays each byte by half the round trip
//! between the two regions ([`RTT_MS`], the policy's `rtt_ms`) in each direction. A client uses the
//! gateway instance of its own region, which stands at the region's ingress (no hop of its
//! own, as the client-side simulation before the relays assumed), and that instance reaches
//! the pools through its region's relays; the baselines' clients reach the pools through the
//! same region's relays. So every system crosses the same distances, and what a client
//! measures is compared with the tier's deadline as it is. (Loopback has one path per
//! address, so each regional instance reaches the fleet through its own relays: the
//! instances' policies differ from `policies/fleet-faults.yaml` only in the endpoint
//! addresses and in the instance region, which is also the default region of the loopback
//! clients connecting to it (see [`policy_at_run_time`]). The clients
//! connect directly, so each instance measures the client → gateway round trip on the
//! client's own socket.)
//! Spend is the bill as `route::cost` prices it on the policy's compiled prices, the same
//! function and figures the simulator uses: per phase, the provisioned pools' capacity over
//! the phase (paid alike by every system, busy or idle), plus each answered request's usage
//! (per request, the scenario's tokens per model, GPU-hours of its service time — the
//! measured time of the attempt minus the round trip its relay adds) and egress (the
//! scenario's bytes per model, from the client's region, where its gateway instance is, to
//! the pool's). Live, the gateway bills the same way (`record::charge`); the client-side
//! bill is used so that the baselines, which have no gateway, are billed alike. The baselines retry a failed connection once on
//! the next pool / endpoint, so they are not punished for lacking what a trivial client would
//! have.

use crate::fleet_faults::{self as def, Job, MODELS, PHASES, POOLS, REGIONS, RTT_MS, TIERS};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_gateway::policy::compile::{self, CompileContext};
use switchyard_gateway::route::cost;
use switchyard_gateway::server;
use switchyard_gateway::serving::state::Fleet;
use switchyard_testkit::client::{Connection, Request};
use switchyard_testkit::fleet::MockSpec;
use switchyard_testkit::mock::MockBackend;
use switchyard_testkit::relay::Relay;
use tokio::sync::{mpsc, Mutex};

/// The scenarios `--scenario` knows.
pub const SCENARIOS: &[&str] = &[def::NAME];

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("unknown scenario `{0}` (known: fleet-faults)")]
    Unknown(String),
    #[error(transparent)]
    Policy(#[from] switchyard_gateway::policy::PolicyErrors),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot start the mock fleet: {0}")]
    Io(#[from] std::io::Error),
    #[error("the scenario's policy ({path}) does not fit its fleet: {0}", path = def::POLICY_PATH)]
    Definition(String),
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub name: String,
    /// Length of each of the four phases.
    pub phase: Duration,
    /// Requests per second (the same schedule goes to every system).
    pub rate: f64,
    /// Print the report as JSON instead of tables.
    pub json: bool,
}

const SYSTEMS: [&str; 3] = ["switchyard", "round-robin", "always-gpu"];

fn rtt(a: usize, b: usize) -> Duration {
    Duration::from_secs_f64(RTT_MS[a][b] / 1e3)
}

fn pool_index(name: &str) -> Option<usize> {
    POOLS.iter().position(|p| p.name == name)
}

/// One fleet: per pool of [`POOLS`], a mock backend per endpoint.
struct MockFleet {
    pools: Vec<Vec<MockBackend>>,
}

impl MockFleet {
    async fn start(tag: &str) -> std::io::Result<MockFleet> {
        let mut pools = Vec::new();
        for pool in &POOLS {
            let mut mocks = Vec::new();
            for e in 0..pool.endpoints {
                let name = match pool.endpoints {
                    1 => format!("{tag}/{}", pool.name),
                    _ => format!("{tag}/{}-{e}", pool.name),
                };
                let spec = MockSpec::new(name, pool.base(), pool.jitter());
                mocks.push(spec.start().await?);
            }
            pools.push(mocks);
        }
        Ok(MockFleet { pools })
    }

    /// Endpoints of pool `i` (index into [`POOLS`]).
    fn endpoints(&self, i: usize) -> Vec<SocketAddr> {
        self.pools[i].iter().map(MockBackend::addr).collect()
    }

    fn shutdown(&self) {
        for m in self.pools.iter().flatten() {
            m.shutdown();
        }
    }

    /// Put every endpoint in the state the fault timeline gives it for `phase`.
    fn apply_phase(&self, phase: usize) {
        for (p, mocks) in self.pools.iter().enumerate() {
            for (e, mock) in mocks.iter().enumerate() {
                let (extra, down) = def::endpoint_state(p, e, phase);
                let faults = mock.faults();
                if faults.extra_latency() != extra {
                    faults.set_extra_latency(extra);
                }
                if faults.is_down() != down {
                    faults.set_down(down);
                }
            }
        }
    }
}

/// The relays that stand for the distances: per fleet and client region, every pool
/// endpoint seen from that region; and per region, the way from its clients to its gateway.
struct Wan {
    /// `paths[fleet][region][pool]`: relay addresses, one per endpoint of the pool.
    paths: Vec<Vec<Vec<Vec<SocketAddr>>>>,
    /// Kept alive: a relay stops accepting when dropped.
    _relays: Vec<Relay>,
}

impl Wan {
    async fn start(fleets: &[MockFleet; 3]) -> std::io::Result<Wan> {
        let mut relays = Vec::new();
        let mut paths = Vec::new();
        for fleet in fleets {
            let mut by_region = Vec::new();
            for region in 0..REGIONS.len() {
                let mut by_pool = Vec::new();
                for (pool, def) in POOLS.iter().enumerate() {
                    let mut eps = Vec::new();
                    for ep in fleet.endpoints(pool) {
                        let relay = Relay::start(ep, rtt(region, def.region)).await?;
                        eps.push(relay.addr());
                        relays.push(relay);
                    }
                    by_pool.push(eps);
                }
                by_region.push(by_pool);
            }
            paths.push(by_region);
        }
        Ok(Wan {
            paths,
            _relays: relays,
        })
    }
}

/// The scenario's policy as the instance in region `home` runs it: what differs at run time
/// from `policies/fleet-faults.yaml`, and nothing else. Every pool's endpoints become
/// `endpoints[pool]`, the addresses the instance reaches them by (its region's relays), and
/// the default region becomes `home`, the region of the loopback (so unmapped) clients that
/// connect to it.
fn policy_at_run_time(endpoints: &[Vec<SocketAddr>], home: &str) -> Result<String, ScenarioError> {
    let unfit = |what: String| ScenarioError::Definition(what);
    let mut doc: serde_json::Value =
        serde_saphyr::from_str(def::POLICY).map_err(|e| unfit(e.to_string()))?;
    let default = doc
        .pointer_mut("/regions/default")
        .ok_or_else(|| unfit("no `regions.default`".into()))?;
    *default = home.into();
    let pools = doc
        .pointer_mut("/pools")
        .and_then(|p| p.as_array_mut())
        .ok_or_else(|| unfit("no `pools`".into()))?;
    for pool in pools {
        let name = pool["name"].as_str().unwrap_or_default().to_string();
        let addrs = pool_index(&name)
            .and_then(|i| endpoints.get(i))
            .ok_or_else(|| unfit(format!("pool `{name}` is not in the fleet")))?;
        let listed = pool
            .get_mut("endpoints")
            .ok_or_else(|| unfit(format!("pool `{name}` has no `endpoints`")))?;
        *listed = addrs.iter().map(|a| a.to_string()).collect();
    }
    // JSON is YAML: the gateway compiles it as it would the file.
    serde_json::to_string(&doc).map_err(|e| unfit(e.to_string()))
}

/// What happened to one request.
#[derive(Debug, Clone)]
struct Outcome {
    phase: usize,
    tier: usize,
    ok: bool,
    /// Observed latency plus the simulated round trip, ms.
    latency_ms: f64,
    pool: Option<usize>,
    /// The client's region and whether it asked for the big model (what the bill prices).
    region: usize,
    big: bool,
    /// The attempt's time less the round trip its relay added: the service time billed.
    service: Duration,
    /// The gateway's own latency estimate for the request (`est_ms` of its decision header).
    estimate_ms: Option<f64>,
}

/// The fleet's bill: the scenario's policy compiled, priced by `route::cost` as the simulator
/// prices it (the same function, the same prices, the same sizes per model).
struct Bill {
    table: switchyard_gateway::serving::Serving,
    /// Per scenario region and pool, the policy's index.
    regions: Vec<switchyard_gateway::policy::compile::RegionId>,
    pools: Vec<usize>,
}

impl Bill {
    fn new() -> Result<Bill, ScenarioError> {
        let table = crate::simulate::fleet_faults::policy()
            .map_err(|e| ScenarioError::Definition(e.to_string()))?;
        let regions = REGIONS
            .iter()
            .map(|r| {
                table
                    .region_by_name(r)
                    .ok_or_else(|| ScenarioError::Definition(format!("no region `{r}`")))
            })
            .collect::<Result<_, _>>()?;
        let pools = POOLS
            .iter()
            .map(|p| {
                table
                    .pools
                    .iter()
                    .position(|q| q.name == p.name)
                    .ok_or_else(|| ScenarioError::Definition(format!("no pool `{}`", p.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Bill {
            table,
            regions,
            pools,
        })
    }

    /// What an answered request was billed: usage and egress (the client's region to the
    /// pool's: each client's gateway instance is in its own region), USD.
    fn charge(&self, o: &Outcome) -> f64 {
        let Some(p) = o.pool.filter(|_| o.ok) else {
            return 0.0;
        };
        let pool = &self.table.pools[self.pools[p]];
        let size = def::SIZES[usize::from(o.big)];
        let tokens = (f64::from(size.tokens_in), f64::from(size.tokens_out));
        cost::usage(&pool.pricing, o.service, tokens)
            + cost::egress(
                &self.table,
                self.regions[o.region],
                pool.region,
                f64::from(size.request_bytes),
                f64::from(size.answer_bytes),
            )
    }

    /// The provisioned pools' capacity over `len`, USD (every system pays it alike).
    fn capacity(&self, len: Duration) -> f64 {
        let per_second: f64 = self.table.pools.iter().map(cost::capacity_per_second).sum();
        per_second * len.as_secs_f64()
    }
}

/// Which system the traffic goes to; each is reached through the client region's relays.
#[derive(Clone)]
enum Target {
    /// Per client region: that region's gateway.
    Gateway(Arc<Vec<SocketAddr>>),
    /// `[region][pool]`: the pools' endpoints as seen from the client's region.
    RoundRobin(Arc<Vec<Vec<Vec<SocketAddr>>>>, Arc<AtomicUsize>),
    /// `[region]`: the GPU pool's ([`def::GPU`]) endpoints as seen from the client's region.
    AlwaysGpu(Arc<Vec<Vec<SocketAddr>>>, Arc<AtomicUsize>),
}

fn body(big: bool) -> String {
    let model = MODELS[usize::from(big)];
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"route me"}}]}}"#)
}

/// Connections a worker keeps, by address.
#[derive(Default)]
struct Conns(HashMap<SocketAddr, Connection>);

impl Conns {
    /// POST to `addr`; `(status, x-switchyard-pool, est_ms, elapsed)`, or `None` if it
    /// failed.
    async fn post(
        &mut self,
        addr: SocketAddr,
        job: &Job,
        gateway: bool,
    ) -> Option<(u16, Option<String>, Option<f64>, Duration)> {
        let text = body(job.big);
        let mut req = Request::post("/v1/chat/completions", text.as_bytes())
            .header("content-type", "application/json");
        if gateway {
            // The client connects to its region's instance directly: its region is that
            // instance's default (loopback is unmapped), and the instance measures the
            // client → gateway round trip on the connection itself.
            req = req.header("x-slo-tier", TIERS[job.tier].0);
        }
        let started = Instant::now();
        let conn = match self.0.entry(addr) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let c = Connection::connect(addr).await.ok()?;
                e.insert(c.with_timeout(Duration::from_secs(10)))
            }
        };
        match conn.send(&req).await {
            Ok(r) => {
                let pool = r.header("x-switchyard-pool").map(str::to_string);
                let estimate = r.header("x-switchyard-decision").and_then(|d| {
                    d.split("; ")
                        .find_map(|kv| kv.strip_prefix("est_ms="))
                        .and_then(|v| v.parse().ok())
                });
                Some((r.status, pool, estimate, started.elapsed()))
            }
            Err(_) => {
                self.0.remove(&addr);
                None
            }
        }
    }
}

async fn serve_job(target: &Target, conns: &mut Conns, job: Job, phase: usize) -> Outcome {
    let failed = Outcome {
        phase,
        tier: job.tier,
        ok: false,
        latency_ms: f64::INFINITY,
        pool: None,
        region: job.region,
        big: job.big,
        service: Duration::ZERO,
        estimate_ms: None,
    };
    // (pool, addresses to try in order)
    let attempts: Vec<(Option<usize>, SocketAddr)> = match target {
        Target::Gateway(addrs) => vec![(None, addrs[job.region])],
        Target::RoundRobin(paths, next) => {
            let pools = &paths[job.region];
            let model = usize::from(job.big);
            let serving: Vec<usize> = (0..POOLS.len())
                .filter(|&p| POOLS[p].serves(model))
                .collect();
            let k = next.fetch_add(1, Ordering::Relaxed);
            (0..2)
                .map(|j| {
                    let p = serving[(k + j) % serving.len()];
                    let eps = &pools[p];
                    (Some(p), eps[(k / serving.len()) % eps.len()])
                })
                .collect()
        }
        Target::AlwaysGpu(paths, next) => {
            let eps = &paths[job.region];
            let k = next.fetch_add(1, Ordering::Relaxed);
            (0..2)
                .map(|j| (Some(def::GPU), eps[(k + j) % eps.len()]))
                .collect()
        }
    };
    let started = Instant::now();
    for (pool, addr) in attempts {
        let gateway = pool.is_none();
        match conns.post(addr, &job, gateway).await {
            Some((status, header_pool, estimate_ms, took)) => {
                let pool = pool.or_else(|| header_pool.as_deref().and_then(pool_index));
                let ok = (200..300).contains(&status);
                // The service time: the attempt minus the round trip its relay added (from
                // the client's region to the pool's, for every system).
                let network = pool.map_or(Duration::ZERO, |p| rtt(job.region, POOLS[p].region));
                let service = took.saturating_sub(network);
                return Outcome {
                    phase,
                    tier: job.tier,
                    ok,
                    latency_ms: started.elapsed().as_secs_f64() * 1e3,
                    pool,
                    region: job.region,
                    big: job.big,
                    service,
                    estimate_ms,
                };
            }
            None => continue,
        }
    }
    failed
}

/// Send the schedule to one system; the outcomes in schedule order.
async fn drive(
    target: Target,
    jobs: Arc<Vec<Job>>,
    start: Instant,
    phase_len: Duration,
) -> Vec<Outcome> {
    let (tx, rx) = mpsc::channel::<(usize, Job)>(4096);
    let rx = Arc::new(Mutex::new(rx));
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(usize, Outcome)>();
    let mut workers = Vec::new();
    for _ in 0..48 {
        let (rx, out_tx, target) = (rx.clone(), out_tx.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut conns = Conns::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, job)) = next else { break };
                let last = PHASES.len() - 1;
                let phase = ((job.at.as_secs_f64() / phase_len.as_secs_f64()) as usize).min(last);
                let outcome = serve_job(&target, &mut conns, job, phase).await;
                let _ = out_tx.send((i, outcome));
            }
        }));
    }
    drop(out_tx);
    for (i, job) in jobs.iter().enumerate() {
        tokio::time::sleep_until((start + job.at).into()).await;
        if tx.send((i, *job)).await.is_err() {
            break;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let mut all = Vec::with_capacity(jobs.len());
    while let Some(o) = out_rx.recv().await {
        all.push(o);
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, o)| o).collect()
}

/// Per tier in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct TierReport {
    pub tier: String,
    pub requests: usize,
    /// Percentage of requests answered 2xx within the deadline (simulated RTT included).
    pub slo_attainment: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One system in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    pub system: String,
    pub requests: usize,
    pub errors: usize,
    pub spend_per_1k_usd: f64,
    pub tiers: Vec<TierReport>,
    /// Share of answered requests per pool, percent.
    pub traffic: BTreeMap<String, f64>,
    /// Per pool, how far the gateway's latency estimate was from the latency observed
    /// (absolute error, ms; answered requests only). Empty for the baselines.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub estimate_error: BTreeMap<String, EstimateError>,
}

/// The absolute estimate error's percentiles for one pool, ms.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateError {
    pub requests: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub systems: Vec<SystemReport>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub phase_secs: f64,
    pub rate_per_sec: f64,
    pub note: String,
    pub phases: Vec<PhaseReport>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    let v = sorted[idx.min(sorted.len() - 1)];
    if v.is_finite() {
        (v * 10.0).round() / 10.0
    } else {
        -1.0
    }
}

fn summarise(
    system: &str,
    outcomes: &[Outcome],
    phase: usize,
    bill: &Bill,
    len: Duration,
) -> SystemReport {
    let in_phase: Vec<&Outcome> = outcomes.iter().filter(|o| o.phase == phase).collect();
    let mut tiers = Vec::new();
    for (t, (name, deadline_ms)) in TIERS.iter().enumerate() {
        let of_tier: Vec<&&Outcome> = in_phase.iter().filter(|o| o.tier == t).collect();
        let met = of_tier
            .iter()
            .filter(|o| o.ok && o.latency_ms <= *deadline_ms)
            .count();
        let mut lat: Vec<f64> = of_tier.iter().map(|o| o.latency_ms).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        tiers.push(TierReport {
            tier: name.to_string(),
            requests: of_tier.len(),
            slo_attainment: if of_tier.is_empty() {
                100.0
            } else {
                (met as f64 * 1e4 / of_tier.len() as f64).round() / 100.0
            },
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        });
    }
    let answered = in_phase.iter().filter(|o| o.ok).count().max(1);
    let mut traffic = BTreeMap::new();
    for o in in_phase.iter().filter(|o| o.ok) {
        if let Some(p) = o.pool {
            *traffic.entry(POOLS[p].name.to_string()).or_insert(0.0) += 100.0 / answered as f64;
        }
    }
    for v in traffic.values_mut() {
        *v = (*v * 10.0_f64).round() / 10.0;
    }
    let spend: f64 = bill.capacity(len) + in_phase.iter().map(|o| bill.charge(o)).sum::<f64>();
    let mut errors: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for o in in_phase.iter().filter(|o| o.ok) {
        if let (Some(p), Some(est)) = (o.pool, o.estimate_ms) {
            errors
                .entry(POOLS[p].name.to_string())
                .or_default()
                .push((est - o.latency_ms).abs());
        }
    }
    let estimate_error = errors
        .into_iter()
        .map(|(pool, mut e)| {
            e.sort_by(|a, b| a.total_cmp(b));
            let stats = EstimateError {
                requests: e.len(),
                p50_ms: percentile(&e, 0.5),
                p90_ms: percentile(&e, 0.9),
            };
            (pool, stats)
        })
        .collect();
    SystemReport {
        system: system.to_string(),
        requests: in_phase.len(),
        errors: in_phase.iter().filter(|o| !o.ok).count(),
        spend_per_1k_usd: (spend * 1000.0 / in_phase.len().max(1) as f64 * 1e5).round() / 1e5,
        tiers,
        traffic,
        estimate_error,
    }
}

/// The report as text tables.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario {}: {} phases of {:.0} s, {:.0} req/s (same schedule to every system)",
        report.scenario,
        report.phases.len(),
        report.phase_secs,
        report.rate_per_sec
    );
    let _ = writeln!(s, "{}\n", report.note);
    for phase in &report.phases {
        let _ = writeln!(s, "phase {}", phase.phase);
        let _ = writeln!(
            s,
            "  {:<12} {:>10} {:>16} {:>16} {:>16} {:>9}  traffic",
            "system", "$/1k req", "realtime SLO p99", "standard SLO p99", "batch SLO p99", "errors"
        );
        for sys in &phase.systems {
            let t = |i: usize| {
                let r = &sys.tiers[i];
                format!("{:>6.2}% {:>6.0}ms", r.slo_attainment, r.p99_ms)
            };
            let traffic: Vec<String> = sys
                .traffic
                .iter()
                .map(|(p, v)| format!("{p} {v:.0}%"))
                .collect();
            let _ = writeln!(
                s,
                "  {:<12} {:>10.4} {:>16} {:>16} {:>16} {:>9}  {}",
                sys.system,
                sys.spend_per_1k_usd,
                t(0),
                t(1),
                t(2),
                sys.errors,
                traffic.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "  p50 ms (realtime/standard/batch): {}",
            phase
                .systems
                .iter()
                .map(|sys| format!(
                    "{} {:.0}/{:.0}/{:.0}",
                    sys.system, sys.tiers[0].p50_ms, sys.tiers[1].p50_ms, sys.tiers[2].p50_ms
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        for sys in phase
            .systems
            .iter()
            .filter(|s| !s.estimate_error.is_empty())
        {
            let _ = writeln!(
                s,
                "  {} estimate error |est - observed| p50/p90 ms: {}",
                sys.system,
                sys.estimate_error
                    .iter()
                    .map(|(p, e)| format!("{p} {:.1}/{:.1}", e.p50_ms, e.p90_ms))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        s.push('\n');
    }
    s
}

/// Run the scenario: start three fleets, the relays, one gateway per region (in this
/// process) and the traffic, print the report and exit the process.
pub fn run(opts: ScenarioOptions) -> Result<(), ScenarioError> {
    if !SCENARIOS.contains(&opts.name.as_str()) {
        return Err(ScenarioError::Unknown(opts.name));
    }
    let bill = Bill::new()?;
    // The traffic runs on one runtime, the fleet and its relays (the "network") on another:
    // a burst of client work must not hold bytes in a relay longer than its delay.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fabric = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("scenario-fabric")
        .enable_all()
        .build()?;
    let (fleets, wan) = fabric.block_on(async {
        let fleets = [
            MockFleet::start("switchyard").await?,
            MockFleet::start("round-robin").await?,
            MockFleet::start("always-gpu").await?,
        ];
        let wan = Wan::start(&fleets).await?;
        Ok::<_, std::io::Error>((fleets, wan))
    })?;
    let free = || -> std::io::Result<SocketAddr> {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
    };
    // One instance per region, each told where it runs (as `--region` does) and reaching
    // the fleet through its region's relays.
    let mut gateways = Vec::new();
    for (region, name) in REGIONS.iter().enumerate() {
        let fleet_state = Fleet::new();
        fleet_state.set_gateway_region(Some(name.to_string()));
        let table = compile::compile_str(
            &policy_at_run_time(&wan.paths[0][region], name)?,
            &CompileContext {
                file: Path::new(def::POLICY_PATH),
                gateway_region: fleet_state.gateway_region(),
            },
        )?;
        let built = server::build(
            table,
            fleet_state,
            server::Options {
                policy_path: None,
                listen: Some(free()?),
                admin_listen: Some(free()?),
                region: Some(name.to_string()),
            },
        )?;
        let proxy = built.proxy_addr;
        // `run` returns only on a shutdown signal, and this one never comes: the process
        // exits when the report is printed.
        std::thread::spawn(move || {
            built.server.run(pingora::server::RunArgs {
                shutdown_signal: Box::new(NoSignal),
            })
        });
        gateways.push(proxy);
    }
    runtime.block_on(async move {
        let report = scenario(&opts, &gateways, &wan, &fleets, &bill).await;
        for f in &fleets {
            f.shutdown();
        }
        if opts.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            print!("{}", render(&report));
        }
        std::process::exit(0);
    })
}

/// A shutdown signal that never arrives (the scenario's gateways live as long as the process).
struct NoSignal;

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for NoSignal {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        std::future::pending().await
    }
}

async fn scenario(
    opts: &ScenarioOptions,
    gateways: &[SocketAddr],
    wan: &Wan,
    fleets: &[MockFleet; 3],
    bill: &Bill,
) -> Report {
    for gateway in gateways {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(gateway).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let total = opts.phase * PHASES.len() as u32;
    let jobs: Vec<Job> = def::Schedule::new(opts.rate, total).collect();
    let jobs = Arc::new(jobs);
    let gpu_paths = wan.paths[2].iter().map(|by_pool| by_pool[def::GPU].clone());
    let targets = [
        Target::Gateway(Arc::new(gateways.to_vec())),
        Target::RoundRobin(
            Arc::new(wan.paths[1].clone()),
            Arc::new(AtomicUsize::new(0)),
        ),
        Target::AlwaysGpu(Arc::new(gpu_paths.collect()), Arc::new(AtomicUsize::new(0))),
    ];
    let start = Instant::now() + Duration::from_millis(200);
    let mut runs = Vec::new();
    for target in targets {
        runs.push(tokio::spawn(drive(target, jobs.clone(), start, opts.phase)));
    }
    // The faults hit every fleet at the same moment.
    for phase in 1..PHASES.len() {
        tokio::time::sleep_until((start + opts.phase * phase as u32).into()).await;
        for f in fleets {
            f.apply_phase(phase);
        }
    }
    let mut results = Vec::new();
    for r in runs {
        results.push(r.await.unwrap_or_default());
    }
    let phases = (0..PHASES.len())
        .map(|p| PhaseReport {
            phase: PHASES[p].to_string(),
            systems: SYSTEMS
                .iter()
                .zip(&results)
                .map(|(name, outcomes)| summarise(name, outcomes, p, bill, opts.phase))
                .collect(),
        })
        .collect();
    Report {
        scenario: opts.name.clone(),
        phase_secs: opts.phase.as_secs_f64(),
        rate_per_sec: opts.rate,
        note: "WAN RTT is real delay: every path from a region to a pool crosses a TCP relay adding the policy's rtt_ms (Switchyard: one instance per region at the region's ingress, reaching the pools through its region's relays; baselines: the client's region's relays). Latency is what the client measures. Spend per phase = the provisioned pools' capacity over the phase (replicas x price per replica-hour, the same for every system) + usage (per request, the scenario's tokens per model, GPU-hours of service: attempt time minus the relay's round trip) + egress (the scenario's bytes per model, client region to pool region), priced by route::cost on the policy's prices, as the simulator prices them.".into(),
        phases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_run_time_only_the_endpoints_and_the_default_region_change() {
        let mut port = 40_000;
        let endpoints: Vec<Vec<SocketAddr>> = POOLS
            .iter()
            .map(|p| {
                (0..p.endpoints)
                    .map(|_| {
                        port += 1;
                        SocketAddr::from(([127, 0, 0, 1], port))
                    })
                    .collect()
            })
            .collect();
        let context = CompileContext {
            file: Path::new(def::POLICY_PATH),
            gateway_region: None,
        };
        let text = policy_at_run_time(&endpoints, "ap").unwrap_or_else(|e| panic!("{e}"));
        let live = compile::compile_str(&text, &context).unwrap_or_else(|e| panic!("{e}"));
        let file = compile::compile_str(def::POLICY, &context).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(live.regions[live.default_region as usize], "ap");
        assert_eq!(file.regions[file.default_region as usize], "us");
        for (i, (l, f)) in live.pools.iter().zip(&file.pools).enumerate() {
            let addrs: Vec<SocketAddr> = l.endpoints.iter().map(|e| e.addr).collect();
            assert_eq!(addrs, endpoints[i], "{}", l.name);
            assert_eq!(
                (l.name.as_str(), l.region, l.concurrency, l.service_time),
                (f.name.as_str(), f.region, f.concurrency, f.service_time)
            );
            assert_eq!(l.pricing, f.pricing, "{}", l.name);
        }
        for (l, f) in live.tiers.iter().zip(&file.tiers) {
            assert_eq!(
                (&l.name, l.deadline, l.weight),
                (&f.name, f.deadline, f.weight)
            );
        }
        assert_eq!(live.threads, file.threads);
        assert_eq!(live.trusted_proxies, file.trusted_proxies);
        assert_eq!(live.upstream.max_attempts, file.upstream.max_attempts);
    }
}
