//! Control-plane benchmarks: compiling a large policy (200 pools, 50 routes, 10 regions;
//! target under 50 ms), a full `reload` of it (read + compile + swap), and the end-to-end
//! reload latency of the file watcher (file renamed over → new version serving), which is
//! dominated by the watcher's poll interval and debounce, not by the compile.
//!
//! Run: `cargo bench --bench policy_compile`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_gateway::admin::ControlPlane;
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::policy::{self};
use switchyard_gateway::serving::reload::{PolicyWatcher, Trigger};
use switchyard_gateway::serving::state::Fleet;

/// A policy with `regions` regions, `pools` pools (two endpoints each) and `routes` routes.
fn big_policy(regions: usize, pools: usize, routes: usize, salt: u32) -> String {
    let continents = ["EU", "NA", "AS", "SA", "OC", "AF"];
    let countries = ["DE", "US", "JP", "FR", "GB", "BR", "AU", "IN", "ZA", "CA"];
    let mut s = format!(
        "# salt {salt}\ngeoip: {{ database: embedded }}\nregions:\n  default: r0\n  map:\n"
    );
    for i in 0..regions {
        let cont = match continents.get(i) {
            Some(c) => format!("continents: [{c}], "),
            None => String::new(),
        };
        s += &format!(
            "    - {{ name: r{i}, {cont}countries: [{}] }}\n",
            countries[i % countries.len()]
        );
    }
    s += "rtt_ms:\n";
    for i in 0..regions {
        let row: Vec<String> = (i..regions)
            .map(|j| format!("r{j}: {}", if i == j { 2 } else { 20 + 13 * (i + j) }))
            .collect();
        s += &format!("  r{i}: {{ {} }}\n", row.join(", "));
    }
    s += "tiers:\n  realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu] }\n  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu] }\n  batch: { deadline: 1h, weight: 0, pools: [batch, gpu] }\n";
    s += "pools:\n";
    for p in 0..pools {
        let kind = ["edge", "gpu", "batch"][p % 3];
        let models = if kind == "edge" {
            format!("[model-{}, model-{}]", p % 40, (p + 7) % 40)
        } else {
            "[\"*\"]".to_string()
        };
        s += &format!(
            "  - {{ name: pool{p}, kind: {kind}, region: r{}, endpoints: [127.0.0.1:{}, 127.0.0.1:{}], models: {models}, concurrency: 64, service_time: {}ms, price: {{ per_request: 0.00001, per_gpu_hour: {} }} }}\n",
            p % regions,
            20000 + 2 * p,
            20001 + 2 * p,
            10 + p % 50,
            p % 4
        );
    }
    s += "routes:\n";
    for r in 0..routes {
        s += &format!(
            "  - {{ name: route{r}, match: /v{r}/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }}\n"
        );
    }
    s
}

fn compile(c: &mut Criterion) {
    let text = big_policy(10, 200, 50, 0);
    let cx = CompileContext {
        file: Path::new("bench.yaml"),
        gateway_region: None,
    };
    assert!(compile_str(&text, &cx).is_ok());
    c.bench_function("compile 200 pools, 50 routes", |b| {
        b.iter(|| compile_str(black_box(&text), &cx).map(|t| t.pools.len()))
    });

    // A reload through the control plane: read the file, compile, swap.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, &text).unwrap();
    let fleet = Fleet::new();
    let table = policy::load_file(&path, None).unwrap();
    let control = ControlPlane::new(
        switchyard_gateway::serving::snapshot(table, fleet).expect("resources"),
        Some(path),
    );
    c.bench_function("reload 200 pools, 50 routes (read + compile + swap)", |b| {
        b.iter(|| control.reload_by(Trigger::Admin).is_ok())
    });
}

/// File change → new version serving, through the real watcher. Printed, not asserted.
fn watcher_latency(_c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, big_policy(10, 200, 50, 0)).unwrap();
    let fleet = Fleet::new();
    let table = policy::load_file(&path, None).unwrap();
    let control = Arc::new(ControlPlane::new(
        switchyard_gateway::serving::snapshot(table, fleet).expect("resources"),
        Some(path.clone()),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let watcher = PolicyWatcher {
        control: control.clone(),
        path: path.clone(),
    };
    rt.spawn(async move {
        use pingora::services::background::BackgroundService;
        watcher.start(shutdown).await
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut samples = Vec::new();
    for salt in 1..=12u32 {
        let text = big_policy(10, 200, 50, salt);
        let want = switchyard_gateway::policy::compile::content_version(&text);
        let tmp = dir.path().join("policy.yaml.tmp");
        std::fs::write(&tmp, &text).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, &path).unwrap();
        while control.snapshot.load().version != want {
            if start.elapsed() > Duration::from_secs(5) {
                panic!("watcher did not reload within 5 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(start.elapsed());
        // Land the next change at a different point of the poll cycle.
        std::thread::sleep(Duration::from_millis(37 * salt as u64 % 250));
    }
    let _ = stop.send(true);
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "watcher reload latency (file renamed over → new version serving, 200 pools), {} samples: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}

criterion_group!(benches, compile, watcher_latency);
criterion_main!(benches);
