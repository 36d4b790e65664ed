//! `switchyard demo`: the whole system on one machine, on embedded defaults.
//!
//! Starts mock backends for every endpoint in `policies/demo.yaml` (two edge regions, a
//! central GPU pool with two endpoints, a batch pool), the gateway on 127.0.0.1:8080 with its
//! admin listener on 127.0.0.1:9090, then sends a burst of mixed traffic — three client
//! regions (named through `X-Forwarded-For`, loopback being a trusted proxy in the demo
//! policy), three tiers, several models and all three protocol families — and prints where it
//! went, how fast, and what it cost next to sending it all to the GPU pool. Then it keeps
//! serving until Ctrl-C (or exits, with `--once`).
//!
//! The demo is tunable: it serves a policy *file* and watches it exactly as `run` does (the
//! same `serving::reload` watcher, SIGHUP and `POST /admin/reload`), so editing the YAML
//! changes routing live. The file is `--policy FILE` if given, else `policies/demo.yaml` of
//! the repository (found from the current directory, then from the directory the binary was
//! built from), else the embedded copy written to the demo's per-process directory. That
//! directory (`$TMPDIR/switchyard-demo-PID`) also holds the demo's job queue, so a second
//! demo or a test never opens the same queue file.
//!
//! With `--free-ports` nothing listens on the policy's fixed ports: every mock starts on a
//! port the system picks, the policy is copied into the demo's directory with each endpoint
//! rewritten to its mock's address (that copy is what is served and watched), and the
//! gateway and its admin listener take free ports too. Tests run the demo this way, so they
//! pass while someone runs the demo itself on the same machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_gateway::policy::compile;
use switchyard_gateway::policy::raw::PoolKind;
use switchyard_gateway::policy::RoutingTable;
use switchyard_gateway::server;
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Snapshot;
use switchyard_testkit::client::{Connection, Request};
use switchyard_testkit::fleet::{self, MockSpec};
use switchyard_testkit::mock::MockBackend;

/// The demo policy, compiled in so the demo also runs outside the repository.
pub const DEMO_POLICY: &str = include_str!("../../policies/demo.yaml");

/// Where the demo policy lives in the repository.
const DEMO_POLICY_PATH: &str = "policies/demo.yaml";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Policy(#[from] switchyard_gateway::policy::PolicyErrors),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot start the mock fleet: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot prepare the demo directory {0}: {1}")]
    WorkDir(PathBuf, std::io::Error),
    #[error("cannot read the policy {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("--free-ports: endpoint `{0}` of pool `{1}` is not written as an address the demo can rewrite in {2}")]
    NotMoved(String, String, PathBuf),
}

pub struct DemoOptions {
    pub once: bool,
    pub requests: usize,
    /// The policy file to serve and watch; `None`: the demo policy (see the module docs).
    pub policy: Option<PathBuf>,
    /// Record the demo's traffic as a decision log here (`simulate --trace` replays it).
    pub record: Option<PathBuf>,
    /// Free ports for the gateway, its admin listener and every mock instead of the policy's
    /// (see the module docs).
    pub free_ports: bool,
}

/// The demo's own directory: its job queue, and the policy when the embedded copy is used.
/// Per process, so two demos (or a demo and a test) never share a queue file.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()))
}

/// The policy file the demo serves: `explicit`, else the repository's `policies/demo.yaml`
/// (relative to the current directory, then to the directory the binary was built from),
/// else the embedded copy written into `dir`.
pub fn policy_file(explicit: Option<PathBuf>, dir: &Path) -> Result<PathBuf, DemoError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let here = PathBuf::from(DEMO_POLICY_PATH);
    if here.is_file() {
        return Ok(here);
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_POLICY_PATH);
    if built_from.is_file() {
        return Ok(built_from);
    }
    let copy = dir.join("demo.yaml");
    std::fs::write(&copy, DEMO_POLICY).map_err(|e| DemoError::WorkDir(dir.to_path_buf(), e))?;
    Ok(copy)
}

/// Wait (at most 5 s) until the decision log at `path` has `lines` lines.
async fn recorded(path: &Path, lines: usize) {
    for _ in 0..250 {
        let n = std::fs::read(path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if n >= lines {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run the demo. Does not return unless start-up fails (it exits the process itself).
pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let dir = work_dir();
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::WorkDir(dir.clone(), e))?;
    let policy_path = policy_file(opts.policy.clone(), &dir)?;
    let fleet = Fleet::new();
    let mut table = switchyard_gateway::policy::load_file(&policy_path, fleet.gateway_region())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (policy_path, mocks, listeners) = if opts.free_ports {
        let mocks = runtime.block_on(start_mocks(&table, true))?;
        let (proxy, admin) = (free_port()?, free_port()?);
        let mut moves: Vec<(String, SocketAddr)> = mocks
            .iter()
            .map(|(name, m)| (name.clone(), m.addr()))
            .collect();
        moves.push((table.proxy_listener.to_string(), proxy));
        moves.push((table.admin_listener.to_string(), admin));
        let moved = on_free_ports(&policy_path, &dir, &moves)?;
        table = switchyard_gateway::policy::load_file(&moved, fleet.gateway_region())?;
        check_moved(&table, &mocks, &moved)?;
        (moved, mocks, Some((proxy, admin)))
    } else {
        let mocks = runtime.block_on(start_mocks(&table, false))?;
        (policy_path, mocks, None)
    };
    // The queue backend is fixed at start-up, so this holds across reloads of the file.
    if let Some(compile::QueueSettings {
        backend: compile::QueueBackend::Embedded { path },
        ..
    }) = table.queue.as_mut()
    {
        *path = dir.join("queue.redb");
    }
    if let Some(record) = &opts.record {
        table.decision_log = Some((
            record.clone(),
            switchyard_gateway::observe::decision::DEFAULT_MAX_BYTES,
        ));
    }
    let built = server::build(
        table,
        fleet,
        server::Options {
            policy_path: Some(policy_path.clone()),
            listen: listeners.map(|(proxy, _)| proxy),
            admin_listen: listeners.map(|(_, admin)| admin),
            region: None,
        },
    )?;
    let (proxy, admin) = (built.proxy_addr, built.admin_addr);
    let snapshot = built.control.snapshot.clone();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let _mocks = mocks;
            if !wait_ready(proxy).await {
                eprintln!("switchyard demo: the gateway did not start on {proxy}");
                std::process::exit(1);
            }
            let results = send_traffic(proxy, opts.requests).await;
            let report = render_report(&results, &snapshot);
            println!("{report}");
            let failed = results.iter().filter(|r| !answered(r.status)).count();
            if opts.once {
                if let Some(record) = &opts.record {
                    // A request's line is queued after its answer is sent: let the writer
                    // catch up before the process exits.
                    recorded(record, opts.requests).await;
                }
                // The queue only lived for this run (the policy, if copied there, too).
                let _ = std::fs::remove_dir_all(work_dir());
                std::process::exit(if failed == 0 { 0 } else { 1 });
            }
            println!("{}", try_it(proxy, admin, &policy_path));
            std::future::pending::<()>().await;
        })
    });
    built.run_forever()
}

/// Mock service times per pool kind: edge is quick, the GPU pool slower, batch slowest.
fn mock_profile(kind: PoolKind) -> (Duration, Duration) {
    match kind {
        PoolKind::Edge => (Duration::from_millis(6), Duration::from_millis(6)),
        PoolKind::Gpu => (Duration::from_millis(30), Duration::from_millis(20)),
        PoolKind::Batch => (Duration::from_millis(120), Duration::from_millis(60)),
    }
}

/// One mock per endpoint of the policy, each paired with the endpoint as written
/// (`host:port`): on the endpoint's own address, or with `free_ports` on a port the system
/// picks (one mock for the addresses of one name).
async fn start_mocks(
    table: &RoutingTable,
    free_ports: bool,
) -> Result<Vec<(String, MockBackend)>, std::io::Error> {
    let (mut written, mut specs) = (Vec::new(), Vec::new());
    for pool in table.pools.iter() {
        let (latency, jitter) = mock_profile(pool.kind);
        for ep in pool.endpoints.iter().filter(|e| e.resolved) {
            if free_ports && written.contains(&ep.authority) {
                continue;
            }
            let spec = MockSpec::new(format!("{}@{}", pool.name, ep.name), latency, jitter);
            specs.push(if free_ports { spec } else { spec.at(ep.addr) });
            written.push(ep.authority.clone());
        }
    }
    let mocks = fleet::start(specs).await?;
    Ok(written.into_iter().zip(mocks).collect())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A copy of the policy at `source` in `dir` in which each address or `host:port` written
/// in `moves` (the endpoints and the listeners) is replaced by its free one; its path.
fn on_free_ports(
    source: &Path,
    dir: &Path,
    moves: &[(String, SocketAddr)],
) -> Result<PathBuf, DemoError> {
    let mut text =
        std::fs::read_to_string(source).map_err(|e| DemoError::Read(source.to_path_buf(), e))?;
    for (written, to) in moves {
        text = replace_name(&text, written, &to.to_string());
    }
    let copy = dir.join("demo-free-ports.yaml");
    std::fs::write(&copy, text).map_err(|e| DemoError::WorkDir(dir.to_path_buf(), e))?;
    Ok(copy)
}

/// `text` with every `from` that stands alone (not part of a longer name or address, such
/// as `127.0.0.1:91010` for `127.0.0.1:9101`) replaced by `to`.
fn replace_name(text: &str, from: &str, to: &str) -> String {
    let part_of_name =
        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || ".-_:".contains(c));
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(from) {
        let end = at + from.len();
        if at < copied
            || part_of_name(text[..at].chars().next_back())
            || part_of_name(text[end..].chars().next())
        {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push_str(to);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Every endpoint of the rewritten policy is one of the mocks: none was missed by the
/// rewrite (written in a way it did not recognise), so nothing goes to a fixed port.
fn check_moved(
    table: &RoutingTable,
    mocks: &[(String, MockBackend)],
    path: &Path,
) -> Result<(), DemoError> {
    for pool in table.pools.iter() {
        for ep in pool.endpoints.iter().filter(|e| e.resolved) {
            if !mocks.iter().any(|(_, m)| m.addr() == ep.addr) {
                return Err(DemoError::NotMoved(
                    ep.name.clone(),
                    pool.name.to_string(),
                    path.to_path_buf(),
                ));
            }
        }
    }
    Ok(())
}

async fn wait_ready(proxy: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One sample request and what happened to it.
pub struct Outcome {
    pub tier: String,
    pub status: u16,
    pub latency: Duration,
    pub pool: String,
    pub cost_usd: f64,
    pub model: &'static str,
    /// Answered from the prediction cache (`hit` or `coalesced`).
    pub cached: bool,
    /// What a cached answer would have cost upstream.
    pub saved_usd: f64,
}

const CLIENTS: &[(&str, &str)] = &[
    ("eu", "192.0.2.10"),
    ("us", "198.51.100.20"),
    ("ap", "203.0.113.30"),
];

/// A request of the mix: (method path, body, model, extra header).
fn sample(i: usize) -> (String, String, &'static str) {
    match i % 6 {
        0 | 1 => (
            "/v1/chat/completions".into(),
            r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"Where is my parcel?"}],"temperature":0}"#.into(),
            "llama-3-8b",
        ),
        2 => (
            "/v1/chat/completions".into(),
            r#"{"model":"mixtral-8x22b","messages":[{"role":"user","content":"Summarise this contract."}]}"#.into(),
            "mixtral-8x22b",
        ),
        3 => (
            "/v1/embeddings".into(),
            r#"{"model":"all-minilm-l6","input":"switchyard routes inference"}"#.into(),
            "all-minilm-l6",
        ),
        4 => (
            "/v2/models/resnet-50/infer".into(),
            r#"{"inputs":[{"name":"input0","shape":[1,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4]}]}"#.into(),
            "resnet-50",
        ),
        _ => (
            "/v1/models/bert-base:predict".into(),
            r#"{"instances":[{"text":"great product"}]}"#.into(),
            "bert-base",
        ),
    }
}

/// Send `n` requests over 16 keep-alive connections.
pub async fn send_traffic(proxy: SocketAddr, n: usize) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut conn: Option<Connection> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (path, body, model) = sample(i);
                let (_, client) = CLIENTS[(i / 6) % CLIENTS.len()];
                // A third of the traffic is real-time (by header or by the acme key), a
                // sixth is the batch tenant, the rest uses the route's default tier.
                let mut headers = vec![
                    ("content-type", "application/json".to_string()),
                    ("x-forwarded-for", client.to_string()),
                ];
                match (i / 18) % 6 {
                    0 => headers.push(("x-slo-tier", "realtime".to_string())),
                    1 => headers.push(("authorization", "Bearer demo-key-acme".to_string())),
                    2 => headers.push(("x-api-key", "demo-key-globex".to_string())),
                    _ => {}
                }
                let req = Request {
                    method: "POST",
                    path: &path,
                    headers,
                    body: body.as_bytes(),
                };
                let started = Instant::now();
                if conn.is_none() {
                    conn = Connection::connect(proxy).await.ok();
                }
                let result = match conn.as_mut() {
                    Some(c) => c.send(&req).await,
                    None => Err(switchyard_testkit::client::ClientError::Closed),
                };
                let latency = started.elapsed();
                match result {
                    Ok(resp) => {
                        let cost_usd = resp
                            .header("x-switchyard-decision")
                            .and_then(|d| d.split("est_usd=").nth(1))
                            .and_then(|v| v.split(';').next())
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0.0);
                        let saved_usd = resp
                            .header("x-switchyard-decision")
                            .and_then(|d| d.split("saved_usd=").nth(1))
                            .and_then(|v| v.split(';').next())
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0.0);
                        out.push(Outcome {
                            tier: resp.header("x-switchyard-tier").unwrap_or("?").to_string(),
                            status: resp.status,
                            latency,
                            pool: placement(&resp),
                            cost_usd,
                            model,
                            cached: matches!(
                                resp.header("x-switchyard-cache"),
                                Some("hit" | "coalesced")
                            ),
                            saved_usd,
                        });
                    }
                    Err(_) => {
                        conn = None;
                        out.push(Outcome {
                            tier: "?".into(),
                            status: 0,
                            latency,
                            pool: "-".into(),
                            cost_usd: 0.0,
                            model,
                            cached: false,
                            saved_usd: 0.0,
                        });
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(mut v) = t.await {
            all.append(&mut v);
        }
    }
    all
}

/// 200 answered, or 202 accepted as a batch job: both are the gateway doing its job.
fn answered(status: u16) -> bool {
    status == 200 || status == 202
}

/// Where a response came from: a pool, the cache, or the batch queue.
fn placement(resp: &switchyard_testkit::client::Response) -> String {
    if resp.status == 202 {
        return "queued".into();
    }
    if matches!(resp.header("x-switchyard-cache"), Some("hit" | "coalesced")) {
        return "cache".into();
    }
    resp.header("x-switchyard-pool").unwrap_or("-").to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// The per-tier table: requests, latency, SLO attainment, where they went, and cost next to
/// an all-GPU deployment.
pub fn render_report(results: &[Outcome], snapshot: &Snapshot) -> String {
    let table = snapshot.load();
    let gpu_cost = table
        .pools
        .iter()
        .enumerate()
        .find(|(_, p)| p.kind == PoolKind::Gpu)
        .map(|(i, p)| {
            let state = table.live.pool(i as compile::PoolId);
            switchyard_gateway::route::cost::usage(
                &p.pricing,
                state.service_time(),
                state.tokens.get(),
            )
        })
        .unwrap_or(0.0);
    let mut by_tier: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for r in results {
        by_tier.entry(r.tier.as_str()).or_default().push(r);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<10} {:>5} {:>5} {:>8} {:>8} {:>8}  {:<52} {:>7} {:>11} {:>11} {:>11}",
        "tier",
        "reqs",
        "ok",
        "p50 ms",
        "p99 ms",
        "SLO met",
        "where it went",
        "cache",
        "est. cost",
        "avoided",
        "GPU-only"
    );
    let (mut total_cost, mut total_gpu, mut total_saved) = (0.0, 0.0, 0.0);
    for (tier, rs) in &by_tier {
        let deadline = table
            .tier_by_name(tier)
            .map(|t| table.tiers[t as usize].deadline)
            .unwrap_or(Duration::MAX);
        let mut lat: Vec<Duration> = rs.iter().map(|r| r.latency).collect();
        lat.sort_unstable();
        let ok = rs.iter().filter(|r| answered(r.status)).count();
        let met = rs
            .iter()
            .filter(|r| answered(r.status) && r.latency <= deadline)
            .count();
        let mut pools: BTreeMap<&str, usize> = BTreeMap::new();
        for r in rs {
            *pools.entry(r.pool.as_str()).or_default() += 1;
        }
        let went: Vec<String> = pools.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let cost: f64 = rs.iter().map(|r| r.cost_usd).sum();
        let gpu = gpu_cost * ok as f64;
        let hits = rs.iter().filter(|r| r.cached).count();
        let avoided: f64 = rs.iter().map(|r| r.saved_usd).sum();
        total_cost += cost;
        total_gpu += gpu;
        total_saved += avoided;
        let _ = writeln!(
            s,
            "{:<10} {:>5} {:>5} {:>8.1} {:>8.1} {:>7.1}%  {:<52} {:>7} {:>11} {:>11} {:>11}",
            tier,
            rs.len(),
            ok,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            100.0 * met as f64 / rs.len().max(1) as f64,
            went.join(", "),
            format!("{hits} hit"),
            format!("${cost:.5}"),
            format!("${avoided:.5}"),
            format!("${gpu:.5}"),
        );
    }
    let saved = if total_gpu > 0.0 {
        100.0 * (1.0 - total_cost / total_gpu)
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "\n{} requests; estimated spend ${total_cost:.5} vs ${total_gpu:.5} on the GPU pool alone ({saved:.0}% saved).",
        results.len()
    );
    let cached = results.iter().filter(|r| r.cached).count();
    let _ = writeln!(
        s,
        "prediction cache: {cached} of {} answered from memory; spend avoided ${total_saved:.5}.",
        results.len()
    );
    let models: std::collections::BTreeSet<&str> = results.iter().map(|r| r.model).collect();
    let _ = writeln!(
        s,
        "models: {}",
        models.into_iter().collect::<Vec<_>>().join(", ")
    );
    s
}

fn try_it(proxy: SocketAddr, admin: SocketAddr, policy: &Path) -> String {
    let policy = policy.display();
    format!(
        r#"
The gateway keeps serving on http://{proxy} (admin on http://{admin}).

Tune it live: edit {policy} and watch the status page at http://{admin}/
(the file is watched; a change is served within a second, a broken file is rejected and the
previous policy keeps serving; `curl -X POST http://{admin}/admin/reload` reloads on demand).

Try:

  # a European client, default tier: goes to the EU edge pool
  curl -s -i http://{proxy}/v1/chat/completions -H 'x-forwarded-for: 192.0.2.10' \
       -H 'content-type: application/json' -d '{{"model":"llama-3-8b","messages":[{{"role":"user","content":"hi"}}]}}'

  # a model the edge does not serve goes to the GPU pool
  curl -s -i http://{proxy}/v1/chat/completions -H 'content-type: application/json' -d '{{"model":"any-model-you-like","messages":[]}}'

  # the batch tenant's requests go to the cheap batch pool
  curl -s -i http://{proxy}/v2/models/resnet-50/infer -H 'x-api-key: demo-key-globex' -d '{{"inputs":[]}}'

  # why was that decided? (dry run)
  curl -s http://{admin}/admin/explain -d '{{"client_ip":"203.0.113.30","path":"/v1/chat/completions","model":"llama-3-8b","headers":{{"x-slo-tier":"realtime"}}}}'

  curl -s http://{admin}/metrics | grep switchyard_

Ctrl-C to stop."#
    )
}

#[cfg(test)]
mod tests {
    use super::replace_name;

    #[test]
    fn free_ports_rewrite_whole_addresses_only() {
        let text = "endpoints: [127.0.0.1:9101, 127.0.0.1:91010, \"https://127.0.0.1:9101\"] # x127.0.0.1:9101\nproxy: 127.0.0.1:9101\n";
        assert_eq!(
            replace_name(text, "127.0.0.1:9101", "127.0.0.1:40000"),
            "endpoints: [127.0.0.1:40000, 127.0.0.1:91010, \"https://127.0.0.1:40000\"] # x127.0.0.1:9101\nproxy: 127.0.0.1:40000\n"
        );
    }
}
