//! Criterion benchmarks of the prediction cache's request-path work: the key of a 1 KB JSON
//! body (canonical form + BLAKE3; target under 5 µs), the key of a byte-identical repeat
//! (the digest memo, then BLAKE3 over the key parts), and a whole hit lookup (key, the
//! per-model generation read, the moka read) against a warm store. Before the timings it
//! prints one line of memory per entry: a cache filled past `max_bytes` with unique ~1 KB
//! entries, bytes weighed per entry and resident-set growth per entry (Linux).
//!
//! Run: `cargo bench --bench cache`

// The gateway's allocator, so that memory per entry is what the product holds.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cache filler the memory test uses (`tests/support/cache_fill.rs`).
#[path = "../tests/support/cache_fill.rs"]
mod cache_fill;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, Method};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use switchyard_gateway::cache::key::{self, KeyParts, Scope};
use switchyard_gateway::cache::{Cache, Lookup};
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

const POLICY: &str = r#"
regions:
  default: us
  map: [{ name: us, continents: [NA] }]
rtt_ms: { us: { us: 2 } }
tiers:
  standard: { deadline: 1s, weight: 0.3, pools: [gpu] }
pools:
  - { name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 64, service_time: 20ms }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard, cache: { ttl: 10m } }
"#;

/// A chat request of about 1 KB, keys deliberately out of order.
fn body_1k() -> String {
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(19);
    let body = format!(
        r#"{{"temperature":0,"messages":[{{"role":"system","content":"You are terse."}},{{"content":"{content}","role":"user"}}],"model":"llama-3-8b","max_tokens":64,"top_p":1}}"#
    );
    assert!((950..1100).contains(&body.len()), "{}", body.len());
    body
}

/// Fill a 32 MiB cache with 96k unique ~1 KB entries (three times what fits) through the
/// capture path and print what an entry costs: weighed by the cache, and really held (RSS).
fn report_bytes_per_entry() {
    use cache_fill::{rss_bytes, Filler};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let filler = Filler::new("32MiB").expect("policy compiles");
    let answer = bytes::Bytes::from(format!(
        r#"{{"object":"chat.completion","choices":[{{"message":{{"content":"{}"}}}}]}}"#,
        "ok ".repeat(200)
    ));
    rt.block_on(async {
        let before = rss_bytes().unwrap_or(0);
        for i in 0..96_000u64 {
            filler.store(i, &answer).await.expect("store");
            tokio::task::yield_now().await;
        }
        let cache = filler.cache();
        cache.settle().await;
        let grown = rss_bytes().unwrap_or(0).saturating_sub(before);
        let entries = cache.entries().max(1);
        println!(
            "cache/bytes_per_entry: {entries} entries in max_bytes {}: weighed {} B/entry, RSS growth {} B/entry ({:.2} × max_bytes)",
            cache.max_bytes(),
            cache.bytes() / entries,
            grown / entries,
            grown as f64 / cache.max_bytes() as f64
        );
    });
}

fn benches(c: &mut Criterion) {
    report_bytes_per_entry();
    let body = body_1k();
    let parts = KeyParts {
        epoch: 0,
        generation: 0,
        scope: Scope::Tenant("acme"),
        route: "chat",
        target: "/v1/chat/completions",
        model: "llama-3-8b",
        path_version: None,
        policy_version: Some("2024-06-01"),
    };
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("key_1k_body", |b| {
        b.iter(|| key::compute(black_box(&parts), black_box(body.as_bytes())).unwrap())
    });
    // The two halves, to see where the time goes.
    g.bench_function("canonical_1k_body", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            key::canonical_json(black_box(body.as_bytes()), &mut out).unwrap();
            out
        })
    });
    g.bench_function("blake3_1k", |b| {
        b.iter(|| blake3::hash(black_box(body.as_bytes())))
    });
    // What a byte-identical repeat costs: the memo's digest, then the key over it.
    let memo = key::DigestMemo::new(1 << 20);
    g.bench_function("key_1k_body_repeat", |b| {
        b.iter(|| {
            let digest = memo
                .digest(black_box(body.as_bytes()), key::BodyForm::Json)
                .unwrap();
            key::compute_with(black_box(&parts), &digest)
        })
    });
    g.finish();

    let table = compile_str(
        POLICY,
        &CompileContext {
            file: Path::new("bench.yaml"),
            gateway_region: None,
        },
    )
    .expect("bench policy compiles");
    let table = Serving::load(table, &Fleet::default()).expect("resources");
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        peer: IpAddr::from([127, 0, 0, 1]),
        method: &Method::POST,
        path: "/v1/chat/completions",
        headers: &headers,
        body: Some(body.as_bytes()),
    };
    let class = classify(&facts, 0, &table).expect("classifies");
    assert!(class.cacheable);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = Cache::new(&table.cache);
    // Warm the store through the real capture path: a miss, a response, its body.
    rt.block_on(async {
        let lookup = cache
            .lookup(
                &class,
                &table,
                "/v1/chat/completions",
                &headers,
                Some(body.as_bytes()),
            )
            .await;
        let mut ctx = switchyard_gateway::cache::CacheCtx::default();
        assert!(ctx
            .settle(lookup, std::time::Duration::from_secs(1))
            .await
            .is_none());
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        ctx.on_response_header(&resp, &table);
        ctx.on_body(&Some(bytes::Bytes::from(vec![b'x'; 600])), true);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let again = cache
            .lookup(
                &class,
                &table,
                "/v1/chat/completions",
                &headers,
                Some(body.as_bytes()),
            )
            .await;
        assert!(matches!(again, Lookup::Hit(_)), "the store is warm");
    });
    c.bench_function("cache/hit_lookup_1k_body", |b| {
        b.iter(|| {
            rt.block_on(cache.lookup(
                black_box(&class),
                &table,
                "/v1/chat/completions",
                &headers,
                Some(body.as_bytes()),
            ))
        })
    });
}

criterion_group!(cache_benches, benches);
criterion_main!(cache_benches);
