//! Test policies, built rather than pasted: pools, tiers, routes and tenants as small typed
//! builders, and [`Policy`] to put them together and render the YAML the gateway reads.
//!
//! ```ignore
//! let text = Policy::new()
//!     .pool(Pool::edge("edge-eu").region("eu").endpoint(eu.addr()).models(["llama-3-8b"]))
//!     .pool(Pool::gpu("gpu").endpoint(gpu.addr()))
//!     .render();
//! ```
//!
//! [`Policy::new`] is the policy most tests share: three regions (eu, us, ap) on the embedded
//! GeoIP database with loopback a trusted proxy, four tiers (realtime, standard, strict,
//! batch), the tenant `acme` (key `key-acme`, tier realtime), four routes (chat, embeddings,
//! OIP v2, TF-Serving) and a short upstream back-off. Each part can be replaced; anything
//! else goes in [`Policy::extra`] as YAML.

use std::fmt::Display;
use std::net::SocketAddr;

/// `key: value` pairs of a YAML flow mapping, in order; setting a key again replaces it.
#[derive(Clone, Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn set(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// `{ a: 1, b: 2 }`
    fn flow(&self) -> String {
        let kv: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{{ {} }}", kv.join(", "))
    }
}

/// A YAML flow sequence of quoted strings: `["a", "b"]`.
fn quoted_list<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A YAML flow sequence of plain words: `[edge, gpu]`.
fn list<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// A pool of the policy. Every pool starts in region `us`, serving every model (`"*"`), with
/// concurrency 64 and a 10 ms service time; prices by kind are such that edge is the cheapest
/// per request and the GPU pool the next (see [`Pool::edge`], [`Pool::gpu`], [`Pool::batch`]).
#[derive(Clone, Debug)]
pub struct Pool {
    fields: Fields,
    endpoints: Vec<String>,
}

impl Pool {
    fn new(name: &str, kind: &str, price: &str) -> Pool {
        let mut fields = Fields::default();
        fields.set("name", name);
        fields.set("kind", kind);
        fields.set("region", "us");
        fields.set("endpoints", "[]");
        fields.set("models", quoted_list(["*"]));
        fields.set("concurrency", 64);
        fields.set("service_time", "10ms");
        fields.set("price", price);
        Pool {
            fields,
            endpoints: Vec::new(),
        }
    }

    /// An edge pool at `per_request: 0.00002` USD.
    pub fn edge(name: &str) -> Pool {
        Pool::new(name, "edge", "{ per_request: 0.00002 }")
    }

    /// A GPU pool at `per_gpu_hour: 12` USD (0.0000333 a request at its 10 ms).
    pub fn gpu(name: &str) -> Pool {
        Pool::new(name, "gpu", "{ per_gpu_hour: 12 }")
    }

    /// A batch pool at `per_gpu_hour: 0.5` USD.
    pub fn batch(name: &str) -> Pool {
        Pool::new(name, "batch", "{ per_gpu_hour: 0.5 }")
    }

    pub fn region(mut self, region: &str) -> Pool {
        self.fields.set("region", region);
        self
    }

    /// Endpoints at these addresses (added to any already given).
    pub fn endpoints(self, addrs: &[SocketAddr]) -> Pool {
        addrs.iter().fold(self, |p, a| p.endpoint(a))
    }

    /// One endpoint as written in the policy: an address, `host:port` or an `https://` URL.
    pub fn endpoint(mut self, endpoint: impl Display) -> Pool {
        self.endpoints.push(format!("\"{endpoint}\""));
        self
    }

    /// An endpoint that speaks HTTP on `http` and gRPC on `grpc`.
    pub fn grpc_endpoint(mut self, http: SocketAddr, grpc: SocketAddr) -> Pool {
        self.endpoints
            .push(format!("{{ http: \"{http}\", grpc: \"{grpc}\" }}"));
        self
    }

    /// The models it serves (`"*"`: every model).
    pub fn models<T: Display>(mut self, models: impl IntoIterator<Item = T>) -> Pool {
        self.fields.set("models", quoted_list(models));
        self
    }

    pub fn concurrency(mut self, n: u32) -> Pool {
        self.fields.set("concurrency", n);
        self
    }

    /// The baseline service time, e.g. `"200ms"`.
    pub fn service_time(mut self, t: &str) -> Pool {
        self.fields.set("service_time", t);
        self
    }

    /// Priced per request, in USD.
    pub fn per_request(self, usd: f64) -> Pool {
        self.price(&format!("{{ per_request: {usd} }}"))
    }

    /// Priced per GPU hour, in USD.
    pub fn per_gpu_hour(self, usd: f64) -> Pool {
        self.price(&format!("{{ per_gpu_hour: {usd} }}"))
    }

    /// Any `price:` mapping, as YAML.
    pub fn price(mut self, yaml: &str) -> Pool {
        self.fields.set("price", yaml);
        self
    }

    /// Any other field (`health`, `headers`, `tls`, …), its value as YAML.
    pub fn with(mut self, key: &str, yaml: impl Display) -> Pool {
        self.fields.set(key, yaml);
        self
    }

    /// The pool as an item of the `pools:` list (one line).
    pub fn render(&self) -> String {
        let mut fields = self.fields.clone();
        fields.set("endpoints", list(&self.endpoints));
        format!("  - {}\n", fields.flow())
    }
}

/// An SLO tier. [`Tier::realtime`], [`Tier::standard`], [`Tier::strict`] and [`Tier::batch`]
/// are those of [`Policy::new`].
#[derive(Clone, Debug)]
pub struct Tier {
    name: String,
    fields: Fields,
}

impl Tier {
    /// A tier with a deadline, a weight (0: cost only, 1: latency only) and the pool kinds it
    /// may use.
    pub fn new<T: Display>(
        name: &str,
        deadline: &str,
        weight: f64,
        pools: impl IntoIterator<Item = T>,
    ) -> Tier {
        let mut fields = Fields::default();
        fields.set("deadline", deadline);
        fields.set("weight", format!("{weight:?}"));
        fields.set("pools", list(pools));
        Tier {
            name: name.to_string(),
            fields,
        }
    }

    /// 150 ms, weight 0.8, edge or GPU, the fastest pool when none meets the deadline.
    pub fn realtime() -> Tier {
        Tier::new("realtime", "150ms", 0.8, ["edge", "gpu"]).on_slo_miss("fastest")
    }

    /// 1 s, weight 0.3, edge or GPU.
    pub fn standard() -> Tier {
        Tier::new("standard", "1s", 0.3, ["edge", "gpu"])
    }

    /// 20 ms, weight 0.5, edge or GPU, shed when no pool meets the deadline.
    pub fn strict() -> Tier {
        Tier::new("strict", "20ms", 0.5, ["edge", "gpu"]).on_slo_miss("shed")
    }

    /// 1 h, cost only, batch then GPU then edge, shed when no pool meets the deadline.
    pub fn batch() -> Tier {
        Tier::new("batch", "1h", 0.0, ["batch", "gpu", "edge"]).on_slo_miss("shed")
    }

    pub fn deadline(mut self, deadline: &str) -> Tier {
        self.fields.set("deadline", deadline);
        self
    }

    pub fn weight(mut self, weight: f64) -> Tier {
        self.fields.set("weight", format!("{weight:?}"));
        self
    }

    /// `fastest`, `shed` or `queue`.
    pub fn on_slo_miss(mut self, what: &str) -> Tier {
        self.fields.set("on_slo_miss", what);
        self
    }

    /// Any other field (`timeout`, `hedge_after`, …), its value as YAML.
    pub fn with(mut self, key: &str, yaml: impl Display) -> Tier {
        self.fields.set(key, yaml);
        self
    }

    fn render(&self) -> String {
        format!("  {}: {}\n", self.name, self.fields.flow())
    }
}

/// A route. [`Route::chat`], [`Route::embeddings`], [`Route::oip`] and [`Route::tf`] are
/// those of [`Policy::new`]; every route starts in tier `standard`.
#[derive(Clone, Debug)]
pub struct Route {
    name: String,
    fields: Fields,
}

impl Route {
    pub fn new(name: &str, path: &str, protocol: &str) -> Route {
        let mut fields = Fields::default();
        fields.set("name", name);
        fields.set("match", format!("\"{path}\""));
        fields.set("protocol", protocol);
        fields.set("tier", "standard");
        Route {
            name: name.to_string(),
            fields,
        }
    }

    /// OpenAI chat completions, bodies up to 16 KiB.
    pub fn chat() -> Route {
        Route::new("chat", "/v1/chat/completions", "openai").max_body("16KiB")
    }

    /// OpenAI embeddings.
    pub fn embeddings() -> Route {
        Route::new("embeddings", "/v1/embeddings", "openai")
    }

    /// OIP v2 (`/v2/models/*`), bodies up to 1 MiB.
    pub fn oip() -> Route {
        Route::new("oip", "/v2/models/*", "oip-v2").max_body("1MiB")
    }

    /// TF-Serving (`/v1/models/*`).
    pub fn tf() -> Route {
        Route::new("tf", "/v1/models/*", "tf-serving")
    }

    /// gRPC inference (`inference.GRPCInferenceService`).
    pub fn grpc() -> Route {
        Route::new("grpc", "/inference.GRPCInferenceService/*", "oip-v2-grpc")
    }

    /// The largest body, e.g. `"80MiB"`.
    pub fn max_body(mut self, size: &str) -> Route {
        self.fields.set("max_body", size);
        self
    }

    pub fn tier(mut self, tier: &str) -> Route {
        self.fields.set("tier", tier);
        self
    }

    /// Safe to retry after a 5xx.
    pub fn idempotent(mut self) -> Route {
        self.fields.set("idempotent", true);
        self
    }

    /// Cached, e.g. `"{ ttl: 10m }"`.
    pub fn cache(mut self, yaml: &str) -> Route {
        self.fields.set("cache", yaml);
        self
    }

    fn render(&self) -> String {
        format!("  - {}\n", self.fields.flow())
    }
}

/// A tenant, known by the SHA-256 of its API key.
#[derive(Clone, Debug)]
pub struct Tenant {
    name: String,
    fields: Fields,
}

impl Tenant {
    pub fn new(name: &str, key: &str, tier: &str) -> Tenant {
        let mut fields = Fields::default();
        fields.set("name", name);
        fields.set("key_sha256", super::sha256_hex(key));
        fields.set("tier", tier);
        Tenant {
            name: name.to_string(),
            fields,
        }
    }

    /// `acme`: key `key-acme`, tier realtime.
    pub fn acme() -> Tenant {
        Tenant::new("acme", "key-acme", "realtime")
    }

    /// Its `limits:` mapping, as YAML.
    pub fn limits(mut self, yaml: &str) -> Tenant {
        self.fields.set("limits", yaml);
        self
    }

    fn render(&self) -> String {
        format!("  - {}\n", self.fields.flow())
    }
}

/// Three regions: `eu` (Europe), `us` (the Americas, and the default), `ap` (Asia, Oceania).
pub const THREE_REGIONS: &str = "regions:
  default: us
  map:
    - { name: eu, continents: [EU] }
    - { name: us, continents: [NA, SA] }
    - { name: ap, continents: [AS, OC] }
rtt_ms:
  eu: { eu: 5, us: 90, ap: 230 }
  us: { us: 5, ap: 150 }
  ap: { ap: 5 }
";

/// A whole policy (see the module docs for what [`Policy::new`] holds).
#[derive(Clone, Debug)]
pub struct Policy {
    trusted_proxies: Option<String>,
    regions: String,
    tiers: Vec<Tier>,
    tenants: Vec<Tenant>,
    pools: Vec<Pool>,
    routes: Vec<Route>,
    upstream: Option<String>,
    extra: String,
}

/// Replace the item named `name` in `items`, or append it.
fn put<T>(items: &mut Vec<T>, item: T, name: impl Fn(&T) -> &str) {
    match items.iter().position(|i| name(i) == name(&item)) {
        Some(at) => items[at] = item,
        None => items.push(item),
    }
}

impl Policy {
    pub fn new() -> Policy {
        Policy {
            trusted_proxies: Some("[127.0.0.0/8]".into()),
            regions: THREE_REGIONS.into(),
            tiers: vec![
                Tier::realtime(),
                Tier::standard(),
                Tier::strict(),
                Tier::batch(),
            ],
            tenants: vec![Tenant::acme()],
            pools: Vec::new(),
            routes: vec![
                Route::chat(),
                Route::embeddings(),
                Route::oip(),
                Route::tf(),
            ],
            upstream: Some("{ connect_timeout: 300ms, max_attempts: 3, down_backoff: 30s }".into()),
            extra: String::new(),
        }
    }

    /// Only the embedded GeoIP database and [`THREE_REGIONS`]: no trusted proxies, tiers,
    /// tenants, routes or `upstream:` settings until the test gives them.
    pub fn minimal() -> Policy {
        Policy {
            trusted_proxies: None,
            tiers: Vec::new(),
            tenants: Vec::new(),
            routes: Vec::new(),
            upstream: None,
            ..Policy::new()
        }
    }

    /// Add a pool.
    pub fn pool(mut self, pool: Pool) -> Policy {
        self.pools.push(pool);
        self
    }

    /// Set a tier: it replaces the tier of that name, else it is added.
    pub fn tier(mut self, tier: Tier) -> Policy {
        put(&mut self.tiers, tier, |t| &t.name);
        self
    }

    /// These tiers and no others.
    pub fn tiers(mut self, tiers: impl IntoIterator<Item = Tier>) -> Policy {
        self.tiers = tiers.into_iter().collect();
        self
    }

    /// Set a route: it replaces the route of that name (in its place), else it is added
    /// last.
    pub fn route(mut self, route: Route) -> Policy {
        put(&mut self.routes, route, |r| &r.name);
        self
    }

    /// These routes and no others, in this order (the first that matches a path wins).
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Policy {
        self.routes = routes.into_iter().collect();
        self
    }

    /// Set a tenant: it replaces the tenant of that name, else it is added.
    pub fn tenant(mut self, tenant: Tenant) -> Policy {
        put(&mut self.tenants, tenant, |t| &t.name);
        self
    }

    /// These tenants and no others (none: no `tenants:` section).
    pub fn tenants(mut self, tenants: impl IntoIterator<Item = Tenant>) -> Policy {
        self.tenants = tenants.into_iter().collect();
        self
    }

    /// The `regions:` and `rtt_ms:` sections, as YAML (default: [`THREE_REGIONS`]).
    pub fn regions(mut self, yaml: &str) -> Policy {
        self.regions = yaml.to_string();
        self
    }

    /// The peers whose `X-Forwarded-For` is believed, as a YAML list.
    pub fn trusted_proxies(mut self, yaml: &str) -> Policy {
        self.trusted_proxies = Some(yaml.to_string());
        self
    }

    /// The `upstream:` mapping, as YAML.
    pub fn upstream(mut self, yaml: &str) -> Policy {
        self.upstream = Some(yaml.to_string());
        self
    }

    /// More top-level YAML (`queue:`, `observe:`, `listeners:`, …), appended.
    pub fn extra(mut self, yaml: &str) -> Policy {
        self.extra.push_str(yaml);
        if !yaml.is_empty() && !yaml.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// The policy file.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(trusted) = &self.trusted_proxies {
            s.push_str(&format!("trusted_proxies: {trusted}\n"));
        }
        s.push_str("geoip: { database: embedded }\n");
        s.push_str(&self.regions);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str("tiers:\n");
        self.tiers.iter().for_each(|t| s.push_str(&t.render()));
        if !self.tenants.is_empty() {
            s.push_str("tenants:\n");
            self.tenants.iter().for_each(|t| s.push_str(&t.render()));
        }
        s.push_str("pools:\n");
        self.pools.iter().for_each(|p| s.push_str(&p.render()));
        s.push_str("routes:\n");
        self.routes.iter().for_each(|r| s.push_str(&r.render()));
        if let Some(upstream) = &self.upstream {
            s.push_str(&format!("upstream: {upstream}\n"));
        }
        s.push_str(&self.extra);
        s
    }
}
