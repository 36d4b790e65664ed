//! Criterion benchmarks of admission and the L2 prediction cache (issue 11):
//! - `admit/local`: auth, GCRA rate and concurrency check of a tenant on local state (plus
//!   giving the slot back), what every limited request pays with `limits.backend: local`;
//! - `admit/redis`: the same on shared limits: the tenant's leases (Redis only when one runs empty);
//! - `cache/l1_hit` vs `cache/l2_get`: a whole L1 hit lookup of a 1 KB body against the L2
//!   half of an L2 hit (GET + decode of the stored answer).
//!
//! The Redis groups use `SWITCHYARD_BENCH_REDIS` (default `redis://127.0.0.1:6379`) and are
//! skipped with a note when it does not answer. Run in release: `cargo bench --bench tenants`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use switchyard_gateway::admit::{self, Limiter};
use switchyard_gateway::cache::shared::L2;
use switchyard_gateway::cache::{Cache, CacheCtx, Lookup};
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

fn redis_url() -> String {
    std::env::var("SWITCHYARD_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn policy(extra: &str) -> String {
    format!(
        r#"
regions:
  default: us
  map: [{{ name: us, continents: [NA] }}]
rtt_ms: {{ us: {{ us: 2 }} }}
tiers:
  standard: {{ deadline: 1s, weight: 0.3, pools: [gpu] }}
tenants:
  - name: acme
    key_sha256: {key}
    tier: standard
    limits: {{ requests_per_second: 1000000, burst: 1000000, max_concurrency: 1000000, spend_per_day_usd: 1000000 }}
pools:
  - {{ name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 64, service_time: 20ms }}
routes:
  - {{ name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard, cache: {{ ttl: 10m }} }}
{extra}
"#,
        key = sha256_hex("bench-key"),
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn compile(text: &str) -> Serving {
    let table = compile_str(
        text,
        &CompileContext {
            file: Path::new("bench.yaml"),
            gateway_region: None,
        },
    )
    .expect("bench policy compiles");
    Serving::load(table, &Fleet::default()).expect("resources")
}

fn redis_answers(rt: &tokio::runtime::Runtime) -> bool {
    let url = redis_url();
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(1),
            switchyard_gateway::redis::resp::Connection::connect(&url),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(19);
    let body = format!(
        r#"{{"model":"llama-3-8b","temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer bench-key"),
    );
    let classify_in = |table: &Serving| {
        let facts = RequestFacts {
            peer: IpAddr::from([127, 0, 0, 1]),
            method: &Method::POST,
            path: "/v1/chat/completions",
            headers: &headers,
            body: Some(body.as_bytes()),
        };
        classify(&facts, 0, table).expect("classifies")
    };

    // Admission on local state.
    let local = compile(&policy(""));
    let class = classify_in(&local);
    assert!(class.tenant.is_some());
    let limiter = Limiter::new(&local.limits.admission.backend);
    c.bench_function("admit/local", |b| {
        b.iter(|| {
            let mut ticket = None;
            // Over a million checks a second the bucket empties: a refusal is measured too
            // (the same work), so the result is not asserted here.
            let verdict = rt.block_on(admit::check(
                &limiter,
                &local,
                black_box(&class),
                1024,
                &mut ticket,
            ));
            (verdict.is_ok(), ticket)
        })
    });

    let redis = redis_answers(&rt);
    if !redis {
        eprintln!(
            "note: {} does not answer; Redis benchmarks skipped",
            redis_url()
        );
    }

    // Admission on shared limits: the tenant's leases (Redis only when a lease runs empty).
    if redis {
        let prefix = format!("sybench{:08x}", fastrand::u32(..));
        let shared = compile(&policy(&format!(
            "limits: {{ backend: redis, redis_url: \"{}\", redis_prefix: {prefix}, redis_timeout: 1s }}",
            redis_url()
        )));
        let class = classify_in(&shared);
        let limiter = Limiter::new(&shared.limits.admission.backend);
        c.bench_function("admit/redis", |b| {
            b.iter(|| {
                let mut ticket = None;
                rt.block_on(admit::check(
                    &limiter,
                    &shared,
                    black_box(&class),
                    1024,
                    &mut ticket,
                ))
                .expect("admitted");
                assert_eq!(limiter.shared_up(), Some(true), "served by Redis");
                rt.block_on(async move { drop(ticket) })
            })
        });
    }

    // L1 hit against the L2 half of an L2 hit, for the same stored answer.
    let extra = if redis {
        format!(
            "cache: {{ shared: {{ backend: redis, redis_url: \"{}\", redis_prefix: sybench{:08x}, timeout: 1s }} }}",
            redis_url(),
            fastrand::u32(..)
        )
    } else {
        String::new()
    };
    let table = compile(&policy(&extra));
    let class = classify_in(&table);
    let cache = Cache::new(&table.cache);
    let path = "/v1/chat/completions";
    let key = rt.block_on(async {
        let lookup = cache
            .lookup(&class, &table, path, &headers, Some(body.as_bytes()))
            .await;
        let mut ctx = CacheCtx::default();
        assert!(ctx.settle(lookup, Duration::from_secs(1)).await.is_none());
        let mut resp = pingora::http::ResponseHeader::build(200, None).expect("header");
        resp.insert_header("content-type", "application/json")
            .expect("header");
        ctx.on_response_header(&resp, &table);
        ctx.on_body(&Some(bytes::Bytes::from(vec![b'x'; 600])), true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = cache
            .lookup(&class, &table, path, &headers, Some(body.as_bytes()))
            .await;
        assert!(matches!(again, Lookup::Hit(_)), "the L1 is warm");
        cache
            .key_for(&class, &table, path, body.as_bytes())
            .expect("key")
            .0
    });
    c.bench_function("cache/l1_hit", |b| {
        b.iter(|| {
            rt.block_on(cache.lookup(
                black_box(&class),
                &table,
                path,
                &headers,
                Some(body.as_bytes()),
            ))
        })
    });
    if let Some(settings) = table.cache.shared.as_ref().filter(|_| redis) {
        let l2 = L2::new(settings).expect("L2");
        assert!(
            rt.block_on(l2.get(&class.model, &key, 0)).is_some(),
            "the L2 is warm"
        );
        c.bench_function("cache/l2_get", |b| {
            b.iter(|| rt.block_on(l2.get(black_box(&class.model), &key, 0)))
        });
    }
}

criterion_group!(tenants, benches);
criterion_main!(tenants);
