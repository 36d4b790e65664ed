//! Traffic generator: a steady, configurable mix of inference requests against a gateway, for
//! the `traffic` example (which the compose demo runs so the dashboards move on their own)
//! and for tests that need a gateway that has "seen traffic".
//!
//! What is configurable, each as a weighted mix written `name=weight,name=weight`:
//! * **regions**: `eu`, `us`, `ap` (an address of the test GeoIP database in that region) or
//!   a literal IP, sent as `X-Forwarded-For` (the gateway believes it only from a trusted
//!   proxy, as in the demo and compose policies); `local` sends no header;
//! * **tiers**: a tier name sent as `x-slo-tier`, `default` for the route's default tier, or
//!   `key:API-KEY` to send an API key (the tenant's tier applies);
//! * **models**: `model@shape`, where shape is the request family: `chat` (default),
//!   `completions`, `embeddings`, `oip` (Open Inference Protocol v2) or `tf` (TF-Serving);
//! * the **repeat ratio**: the share of requests that repeat an earlier one byte for byte
//!   (deterministic, `temperature: 0`), which is what a response cache can answer;
//! * the **rate** (requests per second, 0 = as fast as the connections allow), the number of
//!   keep-alive connections, and a request or time limit.
//!
//! Pacing is open-loop within the connection limit: request *i* is due at `start + i / rate`,
//! so a slow gateway makes the generator fall behind rather than quietly send less.
//!
//! It speaks HTTP/1.1 through the kit's client ([`crate::client::Connection`], one keep-alive
//! connection per sender), so it reads every framing the gateway may answer with.

use crate::client::{Connection, Request};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(
        "mix `{0}`: expected `name=weight,...` with non-negative weights, at least one positive"
    )]
    Mix(String),
    #[error("unknown region `{0}` (use eu, us, ap, local or an IP address)")]
    Region(String),
    #[error("unknown request shape `{0}` (use chat, completions, embeddings, oip or tf)")]
    Shape(String),
    #[error("repeat ratio must be between 0 and 1, got {0}")]
    Repeat(f64),
    #[error("cannot resolve the target `{0}`: {1}")]
    Target(String, String),
}

/// A weighted choice.
#[derive(Debug, Clone)]
pub struct Mix<T> {
    items: Vec<(T, f64)>,
    total: f64,
}

impl<T> Mix<T> {
    pub fn new(items: Vec<(T, f64)>) -> Option<Self> {
        let total: f64 = items.iter().map(|(_, w)| *w).sum();
        let valid = items.iter().all(|(_, w)| w.is_finite() && *w >= 0.0);
        (valid && total > 0.0).then_some(Mix { items, total })
    }

    /// The item at `u` (in `[0, 1)`) of the cumulative weights.
    pub fn pick(&self, u: f64) -> &T {
        &self.items[self.pick_index(u)].0
    }

    /// The index of [`pick`](Self::pick)'s item.
    pub fn pick_index(&self, u: f64) -> usize {
        let mut at = u * self.total;
        for (i, (_, w)) in self.items.iter().enumerate() {
            if at < *w {
                return i;
            }
            at -= w;
        }
        // Rounding at the very top: the last item with weight.
        self.items.iter().rposition(|(_, w)| *w > 0.0).unwrap_or(0)
    }

    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(t, _)| t)
    }
}

/// Parse `a=2,b=1,c` (a missing weight is 1) into names and weights.
pub fn parse_weights(text: &str) -> Result<Vec<(String, f64)>, TrafficError> {
    let bad = || TrafficError::Mix(text.to_string());
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // Split at the last `=`, so names may not contain one but values like `key:x` work.
        let (name, weight) = match part.rsplit_once('=') {
            Some((n, w)) => (n.trim(), w.trim().parse::<f64>().map_err(|_| bad())?),
            None => (part, 1.0),
        };
        if name.is_empty() {
            return Err(bad());
        }
        out.push((name.to_string(), weight));
    }
    Ok(out)
}

fn mix_of<T>(
    text: &str,
    each: impl Fn(&str) -> Result<T, TrafficError>,
) -> Result<Mix<T>, TrafficError> {
    let items = parse_weights(text)?
        .into_iter()
        .map(|(n, w)| each(&n).map(|t| (t, w)))
        .collect::<Result<Vec<_>, _>>()?;
    Mix::new(items).ok_or_else(|| TrafficError::Mix(text.to_string()))
}

/// Where the simulated client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Region {
    /// A /24 of the test GeoIP database: the generator varies the last octet.
    Net {
        name: String,
        prefix: [u8; 3],
    },
    Ip(IpAddr),
    /// No `X-Forwarded-For`: the gateway sees the generator's own address.
    Local,
}

impl Region {
    pub fn parse(text: &str) -> Result<Region, TrafficError> {
        let net = |prefix| Region::Net {
            name: text.to_string(),
            prefix,
        };
        Ok(match text {
            "eu" => net([192, 0, 2]),    // DE in the test database
            "us" => net([198, 51, 100]), // US
            "ap" => net([203, 0, 113]),  // JP
            "local" => Region::Local,
            other => Region::Ip(
                other
                    .parse()
                    .map_err(|_| TrafficError::Region(other.to_string()))?,
            ),
        })
    }

    fn client(&self, i: u64) -> Option<String> {
        match self {
            Region::Net { prefix, .. } => Some(format!(
                "{}.{}.{}.{}",
                prefix[0],
                prefix[1],
                prefix[2],
                10 + i % 200
            )),
            Region::Ip(ip) => Some(ip.to_string()),
            Region::Local => None,
        }
    }
}

/// How the request asks for its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierChoice {
    /// No header: the route's default tier.
    Default,
    /// `x-slo-tier: NAME`.
    Header(String),
    /// `x-api-key: KEY`: the tenant's tier.
    ApiKey(String),
}

impl TierChoice {
    pub fn parse(text: &str) -> TierChoice {
        match text {
            "default" => TierChoice::Default,
            t => match t.strip_prefix("key:") {
                Some(key) => TierChoice::ApiKey(key.to_string()),
                None => TierChoice::Header(t.to_string()),
            },
        }
    }
}

/// The protocol family of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completions,
    Embeddings,
    Oip,
    Tf,
}

/// A model and the request family used to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub shape: Shape,
}

impl ModelSpec {
    pub fn parse(text: &str) -> Result<ModelSpec, TrafficError> {
        let (name, shape) = match text.split_once('@') {
            None => (text, Shape::Chat),
            Some((n, s)) => (
                n,
                match s {
                    "chat" => Shape::Chat,
                    "completions" => Shape::Completions,
                    "embeddings" => Shape::Embeddings,
                    "oip" => Shape::Oip,
                    "tf" => Shape::Tf,
                    other => return Err(TrafficError::Shape(other.to_string())),
                },
            ),
        };
        Ok(ModelSpec {
            name: name.to_string(),
            shape,
        })
    }

    /// Path and body of request number `prompt` for this model. The same `prompt` always
    /// gives the same bytes, which is what makes a repeat a cache candidate.
    pub fn request(&self, prompt: u64) -> (String, String) {
        let m = &self.name;
        match self.shape {
            Shape::Chat => (
                "/v1/chat/completions".into(),
                format!(
                    r#"{{"model":"{m}","messages":[{{"role":"user","content":"question {prompt}"}}],"temperature":0}}"#
                ),
            ),
            Shape::Completions => (
                "/v1/completions".into(),
                format!(
                    r#"{{"model":"{m}","prompt":"prompt {prompt}","max_tokens":16,"temperature":0}}"#
                ),
            ),
            Shape::Embeddings => (
                "/v1/embeddings".into(),
                format!(r#"{{"model":"{m}","input":"text {prompt}"}}"#),
            ),
            Shape::Oip => (
                format!("/v2/models/{m}/infer"),
                format!(
                    r#"{{"inputs":[{{"name":"input0","shape":[1,2],"datatype":"FP32","data":[{}.0,{}.5]}}]}}"#,
                    prompt % 1000,
                    prompt / 1000
                ),
            ),
            Shape::Tf => (
                format!("/v1/models/{m}:predict"),
                format!(r#"{{"instances":[{{"text":"review {prompt}"}}]}}"#),
            ),
        }
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// The gateway's proxy listener, `host:port` (resolved at start, retried for a while).
    pub target: String,
    /// Requests per second; 0 sends as fast as the connections allow.
    pub rate: f64,
    /// Keep-alive connections (and requests in flight at most).
    pub connections: usize,
    /// Stop after this many requests (`None`: no limit).
    pub requests: Option<u64>,
    /// Stop after this long (`None`: no limit).
    pub duration: Option<Duration>,
    pub regions: Mix<Region>,
    pub tiers: Mix<TierChoice>,
    pub models: Mix<ModelSpec>,
    /// Share of requests that repeat an earlier request exactly, in `[0, 1]`.
    pub repeat: f64,
    pub seed: u64,
}

/// The demo's default mixes.
pub const DEFAULT_REGIONS: &str = "eu=2,us=2,ap=1";
pub const DEFAULT_TIERS: &str = "default=5,realtime=3,batch=1";
pub const DEFAULT_MODELS: &str =
    "llama-3-8b=4,mixtral-8x22b=1,all-minilm-l6@embeddings=2,resnet-50@oip=1,bert-base@tf=1";

impl TrafficConfig {
    /// A config from the textual mixes (as on the `traffic` command line).
    pub fn parse(
        target: &str,
        regions: &str,
        tiers: &str,
        models: &str,
        repeat: f64,
    ) -> Result<TrafficConfig, TrafficError> {
        if !(0.0..=1.0).contains(&repeat) {
            return Err(TrafficError::Repeat(repeat));
        }
        Ok(TrafficConfig {
            target: target.to_string(),
            rate: 20.0,
            connections: 8,
            requests: None,
            duration: None,
            regions: mix_of(regions, Region::parse)?,
            tiers: mix_of(tiers, |t| Ok(TierChoice::parse(t)))?,
            models: mix_of(models, ModelSpec::parse)?,
            repeat,
            seed: 7,
        })
    }
}

/// How many distinct earlier requests a repeat chooses from.
const REPEAT_POOL: usize = 64;

/// Counters shared by the senders and whoever reports on them.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// No response (connection refused or broken).
    pub failed: AtomicU64,
    pub repeats: AtomicU64,
    /// Requests by the pool that answered (`x-switchyard-pool`, `-` when none).
    pub by_pool: Mutex<BTreeMap<String, u64>>,
    /// Latencies (µs) since the last [`Stats::take_latencies`].
    latencies: Mutex<Vec<u32>>,
}

impl Stats {
    fn note(&self, status: Option<u16>, pool: Option<&str>, took: Duration) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let counter = match status {
            Some(s) if (200..300).contains(&s) => &self.ok,
            Some(s) if s < 500 => &self.client_errors,
            Some(_) => &self.server_errors,
            None => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.by_pool.lock() {
            *m.entry(pool.unwrap_or("-").to_string()).or_default() += 1;
        }
        if let Ok(mut l) = self.latencies.lock() {
            if l.len() < 1_000_000 {
                l.push(took.as_micros().min(u32::MAX as u128) as u32);
            }
        }
    }

    /// The latencies recorded since the last call, sorted, in microseconds.
    pub fn take_latencies(&self) -> Vec<u32> {
        let mut v = self
            .latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// One line: totals, where requests went, and p50/p99 of `sorted_us`.
    pub fn summary(&self, sorted_us: &[u32], elapsed: Duration) -> String {
        let q = |p: f64| -> f64 {
            if sorted_us.is_empty() {
                return 0.0;
            }
            let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
            sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1e3
        };
        let pools = self
            .by_pool
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(p, n)| format!("{p} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let sent = self.sent.load(Ordering::Relaxed);
        format!(
            "t={:.0}s sent={} ok={} 4xx={} 5xx={} failed={} repeats={} avg_rps={:.1} p50={:.1}ms p99={:.1}ms pools: {}",
            elapsed.as_secs_f64(),
            sent,
            self.ok.load(Ordering::Relaxed),
            self.client_errors.load(Ordering::Relaxed),
            self.server_errors.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.repeats.load(Ordering::Relaxed),
            sent as f64 / elapsed.as_secs_f64().max(1e-3),
            q(0.5),
            q(0.99),
            pools
        )
    }
}

/// Resolve `target`, retrying for up to `patience` (in compose the gateway's name may not
/// resolve until its container is up).
pub async fn resolve(target: &str, patience: Duration) -> Result<SocketAddr, TrafficError> {
    let until = Instant::now() + patience;
    loop {
        let err = match tokio::net::lookup_host(target).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => return Ok(a),
                None => "no address".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= until {
            return Err(TrafficError::Target(target.to_string(), err));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Send traffic as `cfg` says until its limits are reached (forever without limits).
pub async fn run(cfg: Arc<TrafficConfig>, stats: Arc<Stats>) -> Result<(), TrafficError> {
    let addr = resolve(&cfg.target, Duration::from_secs(30)).await?;
    let next = Arc::new(AtomicU64::new(0));
    let recent: Arc<Mutex<Vec<(usize, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..cfg.connections.max(1) {
        let (cfg, stats, next, recent) = (cfg.clone(), stats.clone(), next.clone(), recent.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(cfg.seed.wrapping_add(worker as u64 * 7919));
            let mut conn: Option<Connection> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if cfg.requests.is_some_and(|n| i >= n)
                    || cfg.duration.is_some_and(|d| start.elapsed() >= d)
                {
                    break;
                }
                if cfg.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / cfg.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (model_idx, prompt) = choose(&cfg, &recent, &stats, &mut rng, i);
                let model = &cfg.models.items[model_idx].0;
                let (path, body) = model.request(prompt);
                // (`host: switchyard`, as the demo's dashboards have always seen it.)
                let mut headers = vec![
                    ("host", "switchyard".to_string()),
                    ("content-type", "application/json".to_string()),
                ];
                if let Some(ip) = cfg.regions.pick(rng.f64()).client(i) {
                    headers.push(("x-forwarded-for", ip));
                }
                match cfg.tiers.pick(rng.f64()) {
                    TierChoice::Default => {}
                    TierChoice::Header(t) => headers.push(("x-slo-tier", t.clone())),
                    TierChoice::ApiKey(k) => headers.push(("x-api-key", k.clone())),
                }
                let sent = Instant::now();
                if conn.is_none() {
                    conn = Connection::connect(addr).await.ok();
                }
                let req = Request {
                    method: "POST",
                    path: &path,
                    headers,
                    body: body.as_bytes(),
                };
                let result = match conn.as_mut() {
                    Some(c) => c.send(&req).await.ok(),
                    None => None,
                };
                let took = sent.elapsed();
                match result {
                    // (A connection the gateway closed is reopened by the next send.)
                    Some(resp) => {
                        stats.note(Some(resp.status), resp.header("x-switchyard-pool"), took)
                    }
                    None => {
                        conn = None;
                        stats.note(None, None, took);
                        // Do not spin on a gateway that is down.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Which model and prompt request `i` uses: a repeat of a recent one with probability
/// `cfg.repeat`, else a fresh prompt (numbered by `i`, so unique).
fn choose(
    cfg: &TrafficConfig,
    recent: &Mutex<Vec<(usize, u64)>>,
    stats: &Stats,
    rng: &mut fastrand::Rng,
    i: u64,
) -> (usize, u64) {
    let Ok(mut recent) = recent.lock() else {
        return (0, i);
    };
    if !recent.is_empty() && rng.f64() < cfg.repeat {
        stats.repeats.fetch_add(1, Ordering::Relaxed);
        return recent[rng.usize(..recent.len())];
    }
    let chosen = (cfg.models.pick_index(rng.f64()), i);
    if recent.len() < REPEAT_POOL {
        recent.push(chosen);
    } else {
        let slot = (i as usize) % REPEAT_POOL;
        recent[slot] = chosen;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let cfg = TrafficConfig::parse(
            "gw:8080",
            DEFAULT_REGIONS,
            DEFAULT_TIERS,
            DEFAULT_MODELS,
            0.3,
        )
        .unwrap();
        assert_eq!(cfg.regions.items().count(), 3);
        assert_eq!(
            cfg.models.items().nth(3),
            Some(&ModelSpec {
                name: "resnet-50".into(),
                shape: Shape::Oip
            })
        );
        let tiers = mix_of("default=1,realtime=0,key:demo-key-globex=1", |t| {
            Ok(TierChoice::parse(t))
        })
        .unwrap();
        assert_eq!(tiers.pick(0.2), &TierChoice::Default);
        assert_eq!(
            tiers.pick(0.7),
            &TierChoice::ApiKey("demo-key-globex".into())
        );
        assert_eq!(
            tiers.pick(0.999_999_9),
            &TierChoice::ApiKey("demo-key-globex".into())
        );
        assert!(mix_of("a=0", |t| Ok(t.to_string())).is_err());
        assert!(mix_of("a=x", |t| Ok(t.to_string())).is_err());
        assert!(matches!(
            Region::parse("mars"),
            Err(TrafficError::Region(_))
        ));
        assert_eq!(
            Region::parse("10.1.2.3").unwrap(),
            Region::Ip([10, 1, 2, 3].into())
        );
        assert!(ModelSpec::parse("x@grpc").is_err());
        assert!(TrafficConfig::parse("gw:1", "eu", "default", "m", 1.5).is_err());
    }

    #[test]
    fn the_same_prompt_gives_the_same_bytes_and_repeats_follow_the_ratio() {
        let m = ModelSpec::parse("bert-base@tf").unwrap();
        assert_eq!(m.request(5), m.request(5));
        assert_ne!(m.request(5).1, m.request(6).1);
        assert_eq!(m.request(5).0, "/v1/models/bert-base:predict");
        let cfg = TrafficConfig::parse("gw:1", "eu", "default", "a=1,b=1", 0.25).unwrap();
        let (recent, stats) = (Mutex::new(Vec::new()), Stats::default());
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..4000 {
            choose(&cfg, &recent, &stats, &mut rng, i);
        }
        let share = stats.repeats.load(Ordering::Relaxed) as f64 / 4000.0;
        assert!((0.2..0.3).contains(&share), "{share}");
    }
}
