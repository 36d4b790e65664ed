//! Criterion benchmarks of the request path's pure stages: classification (GeoIP lookup,
//! trusted X-Forwarded-For walk, tenant key hash, JSON body peek) and the routing decision,
//! on a policy with 20 pools and 10 regions. Target (issue 13): classify + decide under 1 µs.
//! The allocator is the shipped binary's (mimalloc, see `gateway/src/main.rs`), so the
//! figures are the request path's as it runs.
//!
//! Run: `cargo bench --bench hot_path`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::route::decide;
use switchyard_gateway::serving::state::now_ms;
use switchyard_gateway::serving::state::Fleet;

/// A policy with `regions` regions and `pools` pools, every region pair given.
fn big_policy(regions: usize, pools: usize) -> String {
    let names: Vec<String> = (0..regions).map(|i| format!("r{i}")).collect();
    let continents = ["EU", "NA", "AS", "SA", "OC", "AF"];
    let mut s = String::from("trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]\ngeoip: { database: embedded }\nregions:\n  default: r0\n  map:\n");
    let countries = [
        "DE", "US", "JP", "FR", "GB", "BR", "AU", "IN", "ZA", "CA", "SG", "NL",
    ];
    for (i, n) in names.iter().enumerate() {
        let cont = if i < continents.len() {
            format!("continents: [{}], ", continents[i])
        } else {
            String::new()
        };
        s += &format!(
            "    - {{ name: {n}, {cont}countries: [{}] }}\n",
            countries[i % countries.len()]
        );
    }
    s += "rtt_ms:\n";
    for (i, a) in names.iter().enumerate() {
        let row: Vec<String> = names
            .iter()
            .enumerate()
            .skip(i)
            .map(|(j, b)| format!("{b}: {}", if i == j { 2 } else { 20 + 13 * (i + j) }))
            .collect();
        s += &format!("  {a}: {{ {} }}\n", row.join(", "));
    }
    s += "tiers:\n  realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu] }\n  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu] }\n  batch: { deadline: 1h, weight: 0, pools: [batch, gpu] }\n";
    s += "tenants:\n  - { name: t, key_sha256: 8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873, tier: realtime }\n";
    s += "pools:\n";
    for p in 0..pools {
        let kind = ["edge", "gpu", "batch"][p % 3];
        let models = if kind == "edge" {
            "[llama-3-8b, bert-base]"
        } else {
            "[\"*\"]"
        };
        s += &format!(
            "  - {{ name: pool{p}, kind: {kind}, region: r{}, endpoints: [127.0.0.1:{}, 127.0.0.1:{}], models: {models}, concurrency: 64, service_time: {}ms, price: {{ per_request: 0.0000{}, per_gpu_hour: {} }} }}\n",
            p % regions, 20000 + 2 * p, 20001 + 2 * p, 10 + p, 1 + p % 9, p % 4
        );
    }
    s += "routes:\n  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }\n  - { name: oip, match: /v2/models/*, protocol: oip-v2, tier: standard }\n";
    s
}

fn benches(c: &mut Criterion) {
    let fleet = Fleet::default();
    let text = big_policy(10, 20);
    let table = compile_str(
        &text,
        &CompileContext {
            file: Path::new("bench.yaml"),
            gateway_region: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The request path reads the table and its live state together (`serving::Serving`).
    let table = switchyard_gateway::serving::Serving::load(table, &fleet).expect("resources");
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", "192.0.2.44, 10.1.2.3".parse().unwrap());
    headers.insert("x-slo-tier", "realtime".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = br#"{"model":"llama-3-8b","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the weather like in Berlin today? Answer briefly."}],"temperature":0,"max_tokens":64}"#;
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let method = Method::POST;
    let facts = RequestFacts {
        peer,
        method: &method,
        path: "/v1/chat/completions",
        headers: &headers,
        body: Some(body),
    };
    let route = table.match_route("/v1/chat/completions").unwrap();

    let mut g = c.benchmark_group("hot_path");
    g.bench_function("geoip_lookup", |b| {
        b.iter(|| {
            table
                .resources
                .geo
                .lookup(black_box("198.51.100.7".parse::<IpAddr>().unwrap()))
        })
    });
    g.bench_function("classify", |b| {
        b.iter(|| classify(black_box(&facts), route, &table).unwrap())
    });
    let class = classify(&facts, route, &table).unwrap();
    g.bench_function("decide_20_pools", |b| {
        b.iter(|| decide(black_box(&class), &table, &[], now_ms()))
    });
    g.bench_function("classify_and_decide", |b| {
        b.iter(|| {
            let class = classify(black_box(&facts), route, &table).unwrap();
            decide(&class, &table, &[], now_ms())
        })
    });
    let mut keyed = headers.clone();
    keyed.insert("authorization", "Bearer demo-key-acme".parse().unwrap());
    let facts_keyed = RequestFacts {
        headers: &keyed,
        ..facts
    };
    g.bench_function("classify_and_decide_with_api_key", |b| {
        b.iter(|| {
            let class = classify(black_box(&facts_keyed), route, &table).unwrap();
            decide(&class, &table, &[], now_ms())
        })
    });
    g.finish();

    // Real payload sizes: a ~5 MiB chat body with a base64 image and the model after it (the
    // order of clients that sort keys). Classification parses the whole body once.
    let image = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        .repeat(5 * 1024 * 1024 / 64);
    let large = format!(
        r#"{{"messages":[{{"content":[{{"text":"What is in this image?","type":"text"}},{{"image_url":{{"url":"data:image/png;base64,{image}"}},"type":"image_url"}}],"role":"user"}}],"model":"llama-3-8b"}}"#
    );
    let facts_large = RequestFacts {
        body: Some(large.as_bytes()),
        ..facts
    };
    let mut g = c.benchmark_group("large_body");
    g.sample_size(20);
    g.throughput(criterion::Throughput::Bytes(large.len() as u64));
    g.bench_function("classify_5mib_model_last", |b| {
        b.iter(|| classify(black_box(&facts_large), route, &table).unwrap())
    });
    // For reference: what classification used before its own scan (`classify::json`).
    g.bench_function("serde_json_fields_5mib", |b| {
        b.iter(|| {
            switchyard_gateway::classify::json::openai_fields_serde(black_box(large.as_bytes()))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
