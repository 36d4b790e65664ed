//! Classification: who is asking, from where, with what objective, for which model, and
//! whether the answer may be cached.
//!
//! [`classify`] is a pure function of the request facts and the routing table: no I/O, no
//! locks, no globals. It is unit-tested and benchmarked directly, and the proxy only gathers
//! the facts and acts on the [`Class`] it returns.

pub mod affinity;
pub mod json;

use crate::policy::compile::{RegionId, RouteId, SplitId, Sticky, TenantId, TierId};
use crate::policy::raw::Protocol;
use crate::policy::RoutingTable;
use crate::serving::Serving;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::Duration;

// Header names the classifier reads, parsed once: looking a header up by `&str` parses and
// validates the name on every request before hashing it (`http`'s `parse_hdr`).
const X_DEADLINE_MS: HeaderName = HeaderName::from_static("x-deadline-ms");
const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const X_SLO_TIER: HeaderName = HeaderName::from_static("x-slo-tier");
const X_SLO_TTFT_MS: HeaderName = HeaderName::from_static("x-slo-ttft-ms");
const X_SLO_TPOT_MS: HeaderName = HeaderName::from_static("x-slo-tpot-ms");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What the proxy knows about a request before classifying it.
pub struct RequestFacts<'a> {
    /// The socket peer.
    pub peer: IpAddr,
    pub method: &'a http::Method,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The body, when it was read before routing (see `policy::INSPECT_LIMIT`).
    pub body: Option<&'a [u8]>,
}

/// Where the tier came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierSource {
    Tenant,
    Header,
    Route,
    /// The tenant's daily budget is spent and `on_budget: { downgrade: TIER }` moved it.
    Budget,
}

impl TierSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TierSource::Tenant => "tenant",
            TierSource::Header => "header",
            TierSource::Route => "route",
            TierSource::Budget => "budget",
        }
    }
}

/// The classification of one request.
#[derive(Debug, Clone)]
pub struct Class {
    pub route: RouteId,
    pub client_ip: IpAddr,
    pub country: Option<[u8; 2]>,
    pub region: RegionId,
    pub tenant: Option<TenantId>,
    /// SHA-256 of the API key presented, if any, known tenant or not: the cache scopes
    /// entries by it so that two callers never share answers by accident.
    pub credential: Option<[u8; 32]>,
    pub tier: TierId,
    pub tier_source: TierSource,
    /// The tier's deadline, tightened by `x-deadline-ms` if the client asked.
    pub deadline: Duration,
    pub model: String,
    pub model_version: Option<String>,
    /// The version of a split model this request gets (`models.NAME.versions`): the split
    /// and the version's index in it. `None` for a model served in one version.
    pub version: Option<(SplitId, u16)>,
    /// The sticky key's hash the version was chosen by (`None`: not split, or the path
    /// named the version): a rollout moves a caller by it (`rollout::steer`).
    pub version_key: Option<u64>,
    pub streaming: bool,
    /// The answer may be read from and written to the prediction cache: the route has a
    /// `cache:` block, POST with its body read, deterministic, not streaming, no client
    /// `no-store`. (A client `no-cache` only skips the read: see [`client_no_cache`].)
    pub cacheable: bool,
    /// An inference request (counted as spend). `false` for the metadata, readiness and
    /// config reads of OIP v2 and TF-Serving (`GET /v2/models/{m}/ready`, …), which are
    /// routed by the model in the path but cost nothing, are never cached, queued or hedged.
    pub inference: bool,
    /// The kernel's smoothed round-trip time of the client's own TCP connection, when the
    /// client connected directly (not through a trusted proxy) and the gateway knows its
    /// region; set by the proxy after classification. `None`: the policy's matrix is used.
    pub client_rtt: Option<Duration>,
    /// The request body's length: the bytes that cross to the pool's region (egress).
    pub request_bytes: u32,
    /// A streamed request's time-to-first-token objective (the tier's `ttft`, tightened by
    /// `x-slo-ttft-ms`) and time per output token (`tpot`, `x-slo-tpot-ms`): `None` for
    /// every other request, which is judged on its deadline.
    pub ttft: Option<Duration>,
    pub tpot: Option<Duration>,
    /// Session and prompt-prefix keys, for pools with `affinity:` (`affinity.rs`).
    pub affinity: affinity::AffinityKeys,
}

impl Class {
    /// What the decision must meet and attainment counts: the time to first token for a
    /// stream with that objective, else the deadline.
    #[inline]
    pub fn objective(&self) -> Duration {
        self.ttft.unwrap_or(self.deadline)
    }
}

impl Class {
    /// The class of a hypothetical request: a client in `region` asking `route` for `model`
    /// in `tier`, no tenant, nothing else known; the deadline is the tier's. For what-if
    /// tools (`switchyard diff`, `check`'s warnings), never for real traffic.
    pub fn what_if(
        table: &RoutingTable,
        route: RouteId,
        region: RegionId,
        tier: TierId,
        model: &str,
    ) -> Class {
        Class {
            route,
            client_ip: IpAddr::from([0, 0, 0, 0]),
            country: None,
            region,
            tenant: None,
            credential: None,
            tier,
            tier_source: TierSource::Header,
            deadline: table.tiers[tier as usize].deadline,
            model: model.to_string(),
            model_version: None,
            version: None,
            version_key: None,
            streaming: false,
            cacheable: false,
            inference: true,
            client_rtt: None,
            request_bytes: 0,
            ttft: None,
            tpot: None,
            affinity: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    #[error("unknown SLO tier `{0}` in x-slo-tier")]
    UnknownTier(String),
    #[error("x-deadline-ms must be a positive whole number of milliseconds")]
    BadDeadline,
    #[error("{0} must be a positive whole number of milliseconds")]
    BadObjective(&'static str),
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("Inference-Header-Content-Length is not a length within the body")]
    BadBinaryHeader,
    #[error("request body has no `model` field")]
    MissingModel,
    #[error("cannot find the model in the path `{0}`")]
    NoModelInPath(String),
    #[error("malformed protobuf request: {0}")]
    BadProtobuf(&'static str),
    #[error("compressed gRPC messages are not supported; send them uncompressed")]
    GrpcCompressed,
    #[error("gRPC method not routed: {0}")]
    GrpcUnimplemented(String),
    #[error("grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n)")]
    BadGrpcTimeout,
}

impl From<crate::grpc::codec::CodecError> for ClassifyError {
    fn from(e: crate::grpc::codec::CodecError) -> Self {
        use crate::grpc::codec::CodecError;
        match e {
            CodecError::BadProtobuf(why) => ClassifyError::BadProtobuf(why),
            CodecError::Compressed => ClassifyError::GrpcCompressed,
            CodecError::Unimplemented(what) => ClassifyError::GrpcUnimplemented(what),
        }
    }
}

/// Classify a request. `route` is the route its path matched.
pub fn classify(
    facts: &RequestFacts,
    route: RouteId,
    table: &Serving,
) -> Result<Class, ClassifyError> {
    let r = &table.routes[route as usize];
    let client_ip = client_ip(facts.peer, facts.headers, table);
    let geo = table.resources.geo.lookup(client_ip);
    let region = geo
        .country
        .and_then(|c| table.region_of_country(&c))
        .or_else(|| geo.continent.and_then(|c| table.region_of_continent(&c)))
        .unwrap_or(table.default_region);

    let Caller {
        credential,
        tenant,
        tier,
        tier_source,
    } = caller(facts.headers, r.tier, table)?;
    let tier_id = tier;
    let tier = &table.tiers[tier_id as usize];
    let mut deadline = tier.deadline;
    if let Some(v) = facts.headers.get(&X_DEADLINE_MS) {
        let ms: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|ms| *ms > 0)
            .ok_or(ClassifyError::BadDeadline)?;
        deadline = deadline.min(Duration::from_millis(ms));
    }

    let is_post = facts.method == http::Method::POST;
    let peek = match r.protocol {
        Protocol::OpenAi => peek_openai(facts.path, facts.body)?,
        Protocol::OipV2 => {
            // Triton's binary tensor extension: a JSON header of this many bytes, then raw
            // tensor data (tritonclient sends inputs this way by default).
            let json = match facts.headers.get(&INFERENCE_HEADER_CONTENT_LENGTH) {
                Some(v) => {
                    let len = v
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .filter(|len| facts.body.is_some_and(|b| *len <= b.len()))
                        .ok_or(ClassifyError::BadBinaryHeader)?;
                    facts.body.map(|b| &b[..len])
                }
                None => facts.body,
            };
            peek_path(facts.path, "/v2/models/", json, is_post)?
        }
        Protocol::TfServing => peek_path(facts.path, "/v1/models/", facts.body, is_post)?,
        Protocol::OipV2Grpc => {
            if let Some(v) = facts.headers.get(&GRPC_TIMEOUT) {
                let t = crate::grpc::codec::parse_timeout(v.as_bytes())
                    .ok_or(ClassifyError::BadGrpcTimeout)?;
                deadline = deadline.min(t);
            }
            let p = crate::grpc::codec::peek(facts.path, facts.body)?;
            Peek {
                deterministic: p.method.is_inference(),
                model: p.model,
                version: p.version,
                streaming: false,
            }
        }
    };
    // Path-routed protocols read model metadata, readiness and config with GET: proxied to
    // a pool that serves the model like inference, but neither spend nor cacheable.
    let inference = r.protocol == Protocol::OpenAi
        || !matches!(*facts.method, http::Method::GET | http::Method::HEAD);
    let cacheable = inference
        && r.cache.is_some()
        && is_post
        && facts.body.is_some()
        && peek.deterministic
        && !peek.streaming
        && !client_forbids_cache(facts.headers);
    let (version, version_key) = version(
        table,
        &peek.model,
        peek.version.as_deref(),
        &StickyFacts {
            tenant: tenant.map(|t| table.tenants[t as usize].name.as_str()),
            credential: credential.as_ref(),
            client_ip,
            headers: facts.headers,
            body: facts.body.filter(|_| r.protocol == Protocol::OpenAi),
        },
    );

    Ok(Class {
        route,
        client_ip,
        country: geo.country,
        region,
        tenant,
        credential,
        tier: tier_id,
        tier_source,
        deadline,
        version,
        version_key,
        model: peek.model,
        model_version: peek.version,
        streaming: peek.streaming,
        cacheable,
        inference,
        client_rtt: None,
        request_bytes: facts
            .body
            .map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX)),
        ttft: objective(facts.headers, &X_SLO_TTFT_MS, peek.streaming, tier.ttft)?
            .map(|ttft| ttft.min(deadline)),
        tpot: objective(facts.headers, &X_SLO_TPOT_MS, peek.streaming, tier.tpot)?,
        affinity: affinity::keys(
            table,
            facts.headers,
            facts.body,
            r.protocol == Protocol::OpenAi,
        ),
    })
}

/// What a sticky version key may be made of.
struct StickyFacts<'a> {
    tenant: Option<&'a str>,
    credential: Option<&'a [u8; 32]>,
    client_ip: IpAddr,
    headers: &'a HeaderMap,
    /// An OpenAI body (for `sticky: user`).
    body: Option<&'a [u8]>,
}

/// The version of a split `model` a request gets: the one its path names, else the one its
/// sticky key hashes to by weight (so one caller always sees one version while the weights
/// stay the same). `None` when the model is not split.
fn version(
    table: &RoutingTable,
    model: &str,
    named: Option<&str>,
    facts: &StickyFacts,
) -> (Option<(SplitId, u16)>, Option<u64>) {
    if table.splits.is_empty() {
        return (None, None);
    }
    let Some(&id) = table.split_of.get(model) else {
        return (None, None);
    };
    let split = &table.splits[id as usize];
    if let Some(v) = named.and_then(|n| split.by_name(n)) {
        return (Some((id, v)), None);
    }
    let mut h = Fnv::new(model.as_bytes());
    let keyed = match &split.sticky {
        Sticky::Tenant => false,
        Sticky::Header(name) => match facts.headers.get(name) {
            Some(v) => {
                h.write(b"h");
                h.write(v.as_bytes());
                true
            }
            None => false,
        },
        Sticky::User => match facts.body.and_then(user_of) {
            Some(user) => {
                h.write(b"u");
                h.write(user.as_bytes());
                true
            }
            None => false,
        },
    };
    if !keyed {
        match (facts.tenant, facts.credential) {
            (Some(t), _) => {
                h.write(b"t");
                h.write(t.as_bytes());
            }
            (None, Some(digest)) => {
                h.write(b"k");
                h.write(digest);
            }
            (None, None) => {
                h.write(b"a");
                match facts.client_ip {
                    IpAddr::V4(ip) => h.write(&ip.octets()),
                    IpAddr::V6(ip) => h.write(&ip.octets()),
                }
            }
        }
    }
    let key = h.finish();
    (Some((id, split.by_hash(key))), Some(key))
}

/// The OpenAI body's `user` field (a second parse of the body, only for `sticky: user`).
fn user_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct User {
        user: Option<String>,
    }
    serde_json::from_slice::<User>(body).ok()?.user
}

/// FNV-1a with a final mix (splitmix64): stable across processes and releases (every
/// instance puts a key on the same version), well spread in the low bits the weights read.
struct Fnv(u64);

impl Fnv {
    fn new(seed: &[u8]) -> Fnv {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.write(seed);
        h.write(&[0]);
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A stream's objective: the tier's `tier_value`, tightened by the client's `header` (which
/// sets one when the tier has none). `None` for a request that does not stream, whatever
/// it sent.
fn objective(
    headers: &HeaderMap,
    header: &HeaderName,
    streaming: bool,
    tier_value: Option<Duration>,
) -> Result<Option<Duration>, ClassifyError> {
    if !streaming {
        return Ok(None);
    }
    let Some(v) = headers.get(header) else {
        return Ok(tier_value);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|ms| *ms > 0)
        .ok_or(ClassifyError::BadObjective(if *header == X_SLO_TTFT_MS {
            "x-slo-ttft-ms"
        } else {
            "x-slo-tpot-ms"
        }))?;
    let asked = Duration::from_millis(ms);
    Ok(Some(tier_value.map_or(asked, |t| t.min(asked))))
}

/// Who is asking and in which tier: the part of [`classify`] that needs only the headers,
/// shared with the gateway's own answers that depend on the tier (`discovery`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub credential: Option<[u8; 32]>,
    pub tenant: Option<TenantId>,
    pub tier: TierId,
    pub tier_source: TierSource,
}

/// The tier: the tenant's, else a tier header naming a known tier, else `default_tier` (the
/// route's).
pub fn caller(
    headers: &HeaderMap,
    default_tier: TierId,
    table: &RoutingTable,
) -> Result<Caller, ClassifyError> {
    let credential = api_key(headers).map(|key| {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        digest
    });
    let tenant = credential.and_then(|h| table.tenant_by_key_hash(&h));
    let (tier, tier_source) = if let Some(t) = tenant {
        (table.tenants[t as usize].tier, TierSource::Tenant)
    } else if let Some(name) = headers.get(&X_SLO_TIER) {
        let name = name.to_str().unwrap_or("");
        match table.tier_by_name(name.trim()) {
            Some(t) => (t, TierSource::Header),
            None => return Err(ClassifyError::UnknownTier(truncate(name, 64))),
        }
    } else {
        (default_tier, TierSource::Route)
    };
    Ok(Caller {
        credential,
        tenant,
        tier,
        tier_source,
    })
}

/// The client address: the socket peer, or — only when the peer is a trusted proxy — the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy. Hops are read right
/// to left because only the right-most ones were written by proxies we trust; anything to
/// the left of an untrusted hop may be forged.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, table: &RoutingTable) -> IpAddr {
    let trusted = |ip: &IpAddr| table.trusted_proxies.iter().any(|n| n.contains(ip));
    let peer = canonical(peer);
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Split and trimmed as bytes: `str::rsplit` and Unicode `trim` were a fifth of
    // `classify` (`cargo bench --bench hot_path`), and an address is ASCII anyway.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for hop in value.as_bytes().rsplit(|&b| b == b',') {
            let hop = hop.trim_ascii();
            if hop.is_empty() {
                continue;
            }
            let Some(ip) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                // Garbage in the chain: stop at the last address we could vouch for.
                return client;
            };
            let ip = canonical(ip);
            client = ip;
            if !trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(hop.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    // `[v6]:port` or `v4:port`
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

/// The common hop, `a.b.c.d` with no leading zeros, without `std`'s general parser (~300
/// instructions a hop, of classification's ~7k). Anything else is left to that parser.
fn dotted_quad(text: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v = 0u16;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(d - b'0');
        }
        *octet = u8::try_from(v).ok()?;
    }
    parts
        .next()
        .is_none()
        .then_some(std::net::Ipv4Addr::from(octets))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The API key from `Authorization: Bearer KEY` or `x-api-key: KEY`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ") {
                let key = s[7..].trim();
                if !key.is_empty() {
                    return Some(key);
                }
            }
        }
    }
    headers
        .get(&X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Client `Cache-Control: no-store`: the answer must be neither read from nor written to
/// the cache.
fn client_forbids_cache(headers: &HeaderMap) -> bool {
    cache_directive(headers, "no-store")
}

/// Client `Cache-Control: no-cache` (or `Pragma: no-cache`): do not answer from the cache,
/// but the fresh answer may replace the entry.
pub fn client_no_cache(headers: &HeaderMap) -> bool {
    cache_directive(headers, "no-cache")
        || headers
            .get(http::header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("no-cache"))
}

fn cache_directive(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(directive))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

struct Peek {
    model: String,
    version: Option<String>,
    streaming: bool,
    deterministic: bool,
}

fn peek_openai(path: &str, body: Option<&[u8]>) -> Result<Peek, ClassifyError> {
    let body = body.unwrap_or(b"");
    // The fast scan when it is sure; `serde_json` otherwise (and for the error message).
    let parsed = match json::openai_fields(body) {
        Some(fields) => fields,
        None => {
            json::openai_fields_serde(body).map_err(|e| ClassifyError::BadJson(e.to_string()))?
        }
    };
    let model = parsed
        .model
        .filter(|m| !m.is_empty())
        .ok_or(ClassifyError::MissingModel)?;
    let streaming = parsed.stream.unwrap_or(false);
    // Embeddings are a function of the input; generation is deterministic only when
    // sampling is switched off and one choice is asked for.
    let deterministic = path.ends_with("/embeddings")
        || (parsed.temperature == Some(0.0) && parsed.n.unwrap_or(1) <= 1);
    Ok(Peek {
        model: model.into_owned(),
        version: None,
        streaming,
        deterministic,
    })
}

/// OIP v2 `/v2/models/{m}[/versions/{v}]/…` and TF-Serving `/v1/models/{m}[/versions/{v}]:verb`.
fn peek_path(
    path: &str,
    prefix: &str,
    body: Option<&[u8]>,
    is_post: bool,
) -> Result<Peek, ClassifyError> {
    let rest = path
        .strip_prefix(prefix)
        .ok_or_else(|| ClassifyError::NoModelInPath(truncate(path, 128)))?;
    let end = rest.find(['/', ':']).unwrap_or(rest.len());
    let model = &rest[..end];
    if model.is_empty() {
        return Err(ClassifyError::NoModelInPath(truncate(path, 128)));
    }
    let version = rest[end..].strip_prefix("/versions/").map(|v| {
        let vend = v.find(['/', ':']).unwrap_or(v.len());
        v[..vend].to_string()
    });
    if let (true, Some(body)) = (is_post, body) {
        if !json::is_valid(body) {
            serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map_err(|e| ClassifyError::BadJson(e.to_string()))?;
        }
    }
    Ok(Peek {
        model: model.to_string(),
        version,
        streaming: false,
        deterministic: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_model_and_determinism() {
        let p = peek_openai(
            "/v1/chat/completions",
            Some(br#"{"model":"m1","temperature":0,"messages":[]}"#),
        )
        .unwrap();
        assert_eq!(p.model, "m1");
        assert!(p.deterministic && !p.streaming);
        let p = peek_openai(
            "/v1/chat/completions",
            Some(br#"{"model":"m1","stream":true}"#),
        )
        .unwrap();
        assert!(p.streaming && !p.deterministic);
        let p = peek_openai("/v1/embeddings", Some(br#"{"model":"e","input":"x"}"#)).unwrap();
        assert!(p.deterministic);
        assert_eq!(
            peek_openai("/v1/chat/completions", Some(b"{\"model\": "))
                .err()
                .map(|e| matches!(e, ClassifyError::BadJson(_))),
            Some(true)
        );
        assert_eq!(
            peek_openai("/v1/chat/completions", Some(b"{}")).err(),
            Some(ClassifyError::MissingModel)
        );
    }

    #[test]
    fn path_models() {
        let p = peek_path(
            "/v2/models/resnet/versions/3/infer",
            "/v2/models/",
            Some(b"{}"),
            true,
        )
        .unwrap();
        assert_eq!(
            (p.model.as_str(), p.version.as_deref()),
            ("resnet", Some("3"))
        );
        let p = peek_path("/v1/models/bert:predict", "/v1/models/", Some(b"{}"), true).unwrap();
        assert_eq!((p.model.as_str(), p.version), ("bert", None));
        let p = peek_path(
            "/v1/models/bert/versions/2:predict",
            "/v1/models/",
            None,
            true,
        )
        .unwrap();
        assert_eq!(p.version.as_deref(), Some("2"));
        assert!(peek_path("/v2/models/", "/v2/models/", None, true).is_err());
        assert!(peek_path("/v2/models/x/infer", "/v2/models/", Some(b"nope"), true).is_err());
    }

    #[test]
    fn dotted_quads_read_as_std_reads_them() {
        let cases = [
            "192.0.2.44",
            "0.0.0.0",
            "255.255.255.255",
            "10.1.2.3",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "1.2.3.4 ",
            "a.b.c.d",
            "1.2.3.-4",
            "1.2.3.1000",
            "",
            ".",
            "::1",
            "1.2.3.4:80",
            "+1.2.3.4",
        ];
        for text in cases {
            let ours = dotted_quad(text.as_bytes());
            let theirs = text.parse::<std::net::Ipv4Addr>().ok();
            // Never a different answer; a refusal leaves it to `std`.
            assert!(ours.is_none() || ours == theirs, "{text}");
            assert_eq!(
                parse_hop(text),
                theirs.map(IpAddr::V4).or_else(|| parse_hop_std(text)),
                "{text}"
            );
        }
    }

    /// What `parse_hop` gave before the dotted-quad fast path.
    fn parse_hop_std(hop: &str) -> Option<IpAddr> {
        hop.parse()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|sa| sa.ip()))
    }

    #[test]
    fn api_key_sources() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-1".parse().unwrap());
        assert_eq!(api_key(&h), Some("sk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(api_key(&h), Some("k2"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(api_key(&h), None);
    }
}
