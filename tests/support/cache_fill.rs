//! Filling a prediction cache through its real capture path, to measure what an entry really
//! costs in memory (`tests/cache_memory.rs` checks the bound, `benches/cache.rs` reports bytes
//! per entry).
//!
//! Each entry is a unique ~1 KB deterministic chat request, classified and looked up like the
//! proxy does, answered with a response whose header values are slices of one 4 KiB read
//! buffer (as Pingora's HTTP/1 client hands them over: `header_value_from_raw` on the buffer
//! it read) and whose body arrives chunked, in two pieces, without a declared length — the
//! shapes that once made each entry hold several times what it was weighed at.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use pingora::http::ResponseHeader;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_gateway::cache::{Cache, CacheCtx};
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

/// A cache and the compiled policy its entries are made under.
pub struct Filler {
    table: Serving,
    cache: Arc<Cache>,
    headers: HeaderMap,
}

impl Filler {
    /// A cache bounded by `max_bytes` (as written in a policy, e.g. `16MiB`).
    pub fn new(max_bytes: &str) -> Result<Filler, String> {
        let policy = format!(
            r#"
regions:
  default: us
  map: [{{ name: us, continents: [NA] }}]
rtt_ms: {{ us: {{ us: 2 }} }}
tiers:
  standard: {{ deadline: 1s, weight: 0.3, pools: [gpu] }}
pools:
  - {{ name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 64, service_time: 20ms }}
routes:
  - {{ name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard, cache: {{ ttl: 10m }} }}
cache: {{ max_bytes: {max_bytes} }}
"#
        );
        let table = compile_str(
            &policy,
            &CompileContext {
                file: Path::new("cache-fill.yaml"),
                gateway_region: None,
            },
        )
        .map_err(|e| e.to_string())?;
        let cache = Cache::new(&table.cache);
        let table = Serving::load(table, &Fleet::default()).map_err(|e| e.to_string())?;
        Ok(Filler {
            table,
            cache,
            headers: HeaderMap::new(),
        })
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The unique ~1 KB request body of entry `i`.
    pub fn request(i: u64) -> String {
        let content = "The quick brown fox jumps over the lazy dog. ".repeat(19);
        format!(
            r#"{{"model":"llama-3-8b","temperature":0,"messages":[{{"role":"user","content":"{content} #{i}"}}],"max_tokens":64}}"#
        )
    }

    /// Store entry `i` with `answer` as its response body; the store's insert runs on a task
    /// (as in the proxy), so the caller yields to let it land.
    pub async fn store(&self, i: u64, answer: &Bytes) -> Result<(), String> {
        let body = Self::request(i);
        let facts = RequestFacts {
            peer: IpAddr::from([127, 0, 0, 1]),
            method: &Method::POST,
            path: "/v1/chat/completions",
            headers: &self.headers,
            body: Some(body.as_bytes()),
        };
        let class = classify(&facts, 0, &self.table).map_err(|e| e.to_string())?;
        let lookup = self
            .cache
            .lookup(
                &class,
                &self.table,
                "/v1/chat/completions",
                &self.headers,
                Some(body.as_bytes()),
            )
            .await;
        let mut ctx = CacheCtx::default();
        if ctx.settle(lookup, Duration::from_secs(1)).await.is_some() {
            return Ok(()); // already stored
        }
        let resp = upstream_header()?;
        ctx.on_response_header(&resp, &self.table);
        let half = answer.len() / 2;
        ctx.on_body(&Some(answer.slice(..half)), false);
        ctx.on_body(&Some(answer.slice(half..)), true);
        Ok(())
    }
}

/// A `200` response header as Pingora's HTTP/1 client builds it: every value a slice of the
/// one buffer the header was read into.
fn upstream_header() -> Result<ResponseHeader, String> {
    const HEAD: &[(&str, &str)] = &[
        ("content-type", "application/json"),
        ("x-served-by", "gpu-1"),
        ("date", "Tue, 01 Dec 2026 12:00:00 GMT"),
        ("transfer-encoding", "chunked"),
    ];
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let mut spans = Vec::new();
    for (name, value) in HEAD {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b": ");
        let start = buf.len();
        buf.extend_from_slice(value.as_bytes());
        spans.push((*name, start..buf.len()));
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    let buf = buf.freeze();
    let mut resp = ResponseHeader::build(200, Some(HEAD.len())).map_err(|e| e.to_string())?;
    for (name, span) in spans {
        let value = pingora::http::header_value_from_raw(buf.slice(span));
        resp.append_header(name, value).map_err(|e| e.to_string())?;
    }
    Ok(resp)
}

/// The process's resident set size in bytes (`VmRSS` in `/proc/self/status`; Linux only).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
