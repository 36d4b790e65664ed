//! The docker compose demo, checked without Docker (there is no Docker engine on the test
//! machine): the compose file, the image it builds, the policy it mounts, the Prometheus
//! config and the Grafana dashboard must agree with each other and with what the gateway
//! really exports. And the status page on the admin listener, loaded in headless Chromium
//! from a running gateway that has seen traffic.
//!
//! `.ci/run` additionally validates docker-compose.yml with Debian's `docker-compose config`
//! when that package is installable, and installs `chromium` for the status page test.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use switchyard_testkit::mock::MockBackend;
use switchyard_testkit::traffic::{self, TrafficConfig};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A YAML file as JSON values (serde-saphyr resolves anchors and `<<` merge keys).
fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn services() -> BTreeMap<String, Value> {
    let compose = yaml("docker-compose.yml");
    serde_json::from_value(compose["services"].clone()).expect("services is a map")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `depends_on` as (service, condition), in either of its two forms.
fn depends_on(service: &Value) -> Vec<(String, String)> {
    match &service["depends_on"] {
        Value::Array(list) => list
            .iter()
            .filter_map(|s| s.as_str())
            .map(|s| (s.to_string(), "service_started".to_string()))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let cond = v["condition"].as_str().unwrap_or("service_started");
                (k.clone(), cond.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value after `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let i = command.iter().position(|a| a == flag)?;
    command.get(i + 1).map(String::as_str)
}

fn port_of(hostport: &str) -> u16 {
    hostport
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{hostport}` is not host:port"))
}

fn policy_endpoints() -> Vec<(String, String)> {
    let policy = yaml("policies/compose.yaml");
    let mut out = Vec::new();
    for pool in policy["pools"].as_array().expect("pools") {
        let name = pool["name"].as_str().expect("pool name").to_string();
        for ep in strings(&pool["endpoints"]) {
            out.push((name.clone(), ep));
        }
    }
    out
}

#[test]
fn every_service_the_compose_file_names_exists() {
    let services = services();
    for want in [
        "gateway",
        "edge-eu",
        "edge-us",
        "gpu-a",
        "gpu-b",
        "batch",
        "redis",
        "prometheus",
        "grafana",
        "traffic",
    ] {
        assert!(
            services.contains_key(want),
            "docker-compose.yml has no service `{want}`"
        );
    }
    for (name, svc) in &services {
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "{name}: neither image nor build"
        );
        for (dep, cond) in depends_on(svc) {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown service `{dep}`"
            );
            if cond == "service_healthy" {
                let hc = &services[&dep]["healthcheck"];
                assert!(
                    hc.get("test").is_some() && hc.get("disable") != Some(&Value::Bool(true)),
                    "{name} waits for `{dep}` to be healthy, but `{dep}` has no health check"
                );
            }
        }
        // Bind mounts must point at files in the repository.
        for vol in strings(&svc["volumes"]) {
            if let Some(host) = vol.split(':').next().filter(|h| h.starts_with("./")) {
                assert!(
                    repo_root().join(host).exists(),
                    "{name}: mounts missing `{host}`"
                );
            }
        }
    }
}

#[test]
fn services_built_from_the_image_run_binaries_the_image_contains() {
    let dockerfile = read("Dockerfile");
    let cargo = read("Cargo.toml");
    let services = services();
    let image = services["gateway"]["image"]
        .as_str()
        .expect("gateway image")
        .to_string();
    let mut binaries = BTreeSet::new();
    for (name, svc) in &services {
        if svc["image"].as_str() != Some(&image) {
            continue;
        }
        assert!(
            svc.get("build").is_some(),
            "{name}: uses {image} but does not build it"
        );
        let command = strings(&svc["command"]);
        binaries.insert(
            command
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("{name}: no command")),
        );
        if let Some(test) = svc["healthcheck"].get("test") {
            binaries.insert(strings(test).get(1).cloned().unwrap_or_default());
        }
    }
    assert!(
        binaries.contains("switchyard")
            && binaries.contains("mock_backend")
            && binaries.contains("traffic"),
        "{binaries:?}"
    );
    for bin in &binaries {
        match bin.as_str() {
            "switchyard" => assert!(dockerfile.contains("--bin switchyard")),
            "switchyard-healthcheck" => {
                assert!(dockerfile.contains("healthcheck.sh /usr/local/bin/switchyard-healthcheck"))
            }
            example => {
                assert!(
                    dockerfile.contains(&format!("--example {example}")),
                    "Dockerfile does not build {example}"
                );
                assert!(
                    cargo.contains(&format!("name = \"{example}\"")),
                    "Cargo.toml has no example {example}"
                );
            }
        }
    }
    // The image runs as a non-root user, with a health check, on a slim Debian.
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("\nUSER switchyard"));
    assert!(dockerfile.contains("\nHEALTHCHECK "));
    // The gateway runs the policy the image carries.
    let gateway = strings(&services["gateway"]["command"]);
    let policy = flag(&gateway, "--policy").expect("gateway --policy");
    assert_eq!(policy, "/etc/switchyard/policies/compose.yaml");
    assert!(dockerfile.contains("COPY policies /etc/switchyard/policies"));
    assert!(dockerfile.contains("/etc/switchyard/geo-data/switchyard-test.mmdb"));
    assert!(read("policies/compose.yaml").contains("database: ../geo-data/switchyard-test.mmdb"));
}

#[test]
fn every_endpoint_of_the_policy_is_served_by_a_service_the_gateway_waits_for() {
    let services = services();
    let gateway_deps: BTreeMap<String, String> =
        depends_on(&services["gateway"]).into_iter().collect();
    let endpoints = policy_endpoints();
    assert!(endpoints.len() >= 5, "{endpoints:?}");
    for (pool, ep) in &endpoints {
        let (host, _) = ep.rsplit_once(':').expect("host:port");
        let svc = services
            .get(host)
            .unwrap_or_else(|| panic!("pool {pool}: endpoint `{ep}` names no compose service"));
        let command = strings(&svc["command"]);
        assert_eq!(
            command.first().map(String::as_str),
            Some("mock_backend"),
            "{host}"
        );
        let listen = flag(&command, "--listen").unwrap_or_else(|| panic!("{host}: no --listen"));
        assert_eq!(
            port_of(listen),
            port_of(ep),
            "{host} listens on {listen}, the policy calls {ep}"
        );
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{host} must listen on all interfaces, not {listen}"
        );
        // The policy resolves host names when it loads: the service must be up by then.
        assert_eq!(
            gateway_deps.get(host).map(String::as_str),
            Some("service_healthy"),
            "the gateway must wait for {host} to be healthy"
        );
    }
    // Two GPU replicas, as separate services (the policy resolves one address per name).
    let gpu: Vec<_> = endpoints
        .iter()
        .filter(|(p, _)| p == "gpu-central")
        .collect();
    assert_eq!(gpu.len(), 2, "{gpu:?}");

    // The traffic generator aims at the proxy port the policy sets.
    let policy = yaml("policies/compose.yaml");
    let proxy = policy["listeners"]["proxy"]
        .as_str()
        .expect("listeners.proxy");
    let traffic = strings(&services["traffic"]["command"]);
    assert_eq!(
        flag(&traffic, "--target"),
        Some(format!("gateway:{}", port_of(proxy)).as_str())
    );
}

/// policies/compose.yaml with every compose host name replaced by its own loopback address
/// (there is no compose network here), laid out as in the image: policies/ next to geo-data/.
fn compose_policy_for_loopback(dir: &Path) -> PathBuf {
    let mut text = read("policies/compose.yaml");
    let hosts: BTreeSet<String> = policy_endpoints()
        .into_iter()
        .map(|(_, ep)| ep.rsplit_once(':').expect("host:port").0.to_string())
        .collect();
    for (_, ep) in policy_endpoints() {
        let (host, port) = ep.rsplit_once(':').expect("host:port");
        let i = hosts.iter().position(|h| h == host).expect("known host");
        text = text.replace(&ep, &format!("127.0.0.{}:{port}", i + 2));
    }
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir");
    std::fs::create_dir_all(dir.join("geo-data")).expect("mkdir");
    std::fs::copy(
        repo_root().join("geo-data/switchyard-test.mmdb"),
        dir.join("geo-data/switchyard-test.mmdb"),
    )
    .expect("copy geo data");
    // The TLS listener's demo certificate, beside the policy as in the image.
    std::fs::create_dir_all(dir.join("policies/certs")).expect("mkdir");
    for file in ["demo.pem", "demo.key"] {
        std::fs::copy(
            repo_root().join("policies/certs").join(file),
            dir.join("policies/certs").join(file),
        )
        .expect("copy demo certificate");
    }
    let path = dir.join("policies/compose.yaml");
    std::fs::write(&path, text).expect("write policy");
    path
}

#[test]
fn the_compose_policy_passes_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = compose_policy_for_loopback(dir.path());
    let (code, out, err) = run_cli(&["check", &path.to_string_lossy()], &repo_root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn prometheus_scrapes_the_admin_port_the_policy_sets() {
    let policy = yaml("policies/compose.yaml");
    let admin = policy["listeners"]["admin"]
        .as_str()
        .expect("listeners.admin");
    assert!(
        admin.starts_with("0.0.0.0:"),
        "in a container the admin listener must bind all interfaces for Prometheus, not {admin}"
    );
    let prom = yaml("examples/compose/prometheus.yml");
    let jobs = prom["scrape_configs"].as_array().expect("scrape_configs");
    let targets: Vec<String> = jobs
        .iter()
        .filter(|j| j["metrics_path"].as_str().unwrap_or("/metrics") == "/metrics")
        .flat_map(|j| j["static_configs"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| strings(&s["targets"]))
        .collect();
    let want = format!("gateway:{}", port_of(admin));
    assert!(
        targets.contains(&want),
        "prometheus targets {targets:?}, want {want}"
    );
    // The host ports of the admin API are loopback-only.
    let services = services();
    for p in strings(&services["gateway"]["ports"]) {
        assert!(
            p.starts_with("127.0.0.1:"),
            "gateway publishes {p} beyond loopback"
        );
    }
    assert!(strings(&services["gateway"]["ports"])
        .contains(&format!("127.0.0.1:{0}:{0}", port_of(admin))));
    // Grafana's data source is the Prometheus service, under the uid the dashboard uses.
    let ds = yaml("examples/compose/grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let dashboard: Value =
        serde_json::from_str(&read("examples/compose/grafana/dashboards/switchyard.json"))
            .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], ds["uid"],
                "panel {}",
                panel["title"]
            );
        }
    }
}

/// Metric names used in PromQL expressions: identifiers starting with `switchyard_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("switchyard_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Metric names in Prometheus text.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// Metrics the dashboard shows that the compose policy does not produce (it has no `queue:`
/// section; see the comment in policies/compose.yaml). Narrow on purpose.
const NOT_YET_EXPORTED: &[(&str, &str)] = &[
    ("switchyard_queue_depth", "compose policy has no queue"),
    (
        "switchyard_queue_oldest_job_seconds",
        "compose policy has no queue",
    ),
];

/// Mock backends for every endpoint of the compose policy (one dead GPU replica, so that
/// retries and endpoint health show up), and the gateway running that policy.
struct Fleet {
    gw: Gateway,
    mocks: Vec<MockBackend>,
}

async fn compose_fleet() -> Fleet {
    let mut text = read("policies/compose.yaml");
    let mut mocks = Vec::new();
    for (_, ep) in policy_endpoints() {
        let host = ep.rsplit_once(':').expect("host:port").0;
        let addr: SocketAddr = if host == "gpu-b" {
            dead_addr()
        } else {
            let latency = match host {
                h if h.starts_with("edge") => 3,
                "batch" => 40,
                _ => 15,
            };
            let m = mock(host, latency).await;
            let a = m.addr;
            mocks.push(m);
            a
        };
        text = text.replace(&ep, &addr.to_string());
    }
    text = text.replace(
        "database: ../geo-data/switchyard-test.mmdb",
        &format!(
            "database: {}",
            repo_root().join("geo-data/switchyard-test.mmdb").display()
        ),
    );
    // The TLS listener on a free port, with the demo certificate where the repository has it.
    let certs = repo_root().join("policies/certs");
    text = text
        .replace(
            "listen: 0.0.0.0:8443",
            &format!("listen: \"{}\"", free_addr()),
        )
        .replace(
            "certs/demo.pem",
            &certs.join("demo.pem").display().to_string(),
        )
        .replace(
            "certs/demo.key",
            &certs.join("demo.key").display().to_string(),
        );
    let gw = Gateway::start(&text).await;
    Fleet { gw, mocks }
}

/// The admin token the compose gateway runs with: `SWITCHYARD_ADMIN_TOKEN` if the test's
/// environment sets it, else the demo default written in policies/compose.yaml.
fn compose_admin_token() -> String {
    std::env::var("SWITCHYARD_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "switchyard-demo-admin-token".into())
}

async fn admin_get_with_token(gw: &Gateway, path: &str) -> switchyard_testkit::client::Response {
    let token = format!("Bearer {}", compose_admin_token());
    let req = switchyard_testkit::client::Request::get(path).header("authorization", &token);
    switchyard_testkit::client::send(gw.admin, &req)
        .await
        .expect("admin request")
}

/// A little of everything: the traffic generator's default mix, then a request that misses
/// its deadline.
async fn send_some_traffic(gw: &Gateway) {
    let mut cfg = TrafficConfig::parse(
        &gw.proxy.to_string(),
        traffic::DEFAULT_REGIONS,
        "default=3,realtime=2,batch=1,key:demo-key-globex=1",
        traffic::DEFAULT_MODELS,
        0.3,
    )
    .expect("traffic config");
    cfg.rate = 0.0;
    cfg.connections = 4;
    cfg.requests = Some(150);
    let stats = Arc::new(traffic::Stats::default());
    traffic::run(Arc::new(cfg), stats.clone())
        .await
        .expect("traffic");
    let ok = stats.ok.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ok >= 140,
        "{}",
        stats.summary(&stats.take_latencies(), Duration::from_secs(1))
    );
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-deadline-ms", "1"), ("x-slo-tier", "realtime")],
            &chat("mixtral-8x22b"),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let dashboard: Value =
        serde_json::from_str(&read("examples/compose/grafana/dashboards/switchyard.json"))
            .expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {}: no expr", panel["title"]));
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {}: `{expr}` queries no switchyard metric",
                panel["title"]
            );
            queried.extend(names);
        }
    }

    let fleet = compose_fleet().await;
    send_some_traffic(&fleet.gw).await;
    let scrape = fleet.gw.metrics().await;
    let exported = exported_names(&scrape);
    let mut missing = Vec::new();
    for name in &queried {
        if exported.contains(name) {
            continue;
        }
        if let Some((_, issue)) = NOT_YET_EXPORTED.iter().find(|(n, _)| n == name) {
            eprintln!("note: dashboard metric {name} is not exported here (allowed: {issue})");
            continue;
        }
        missing.push(name.clone());
    }
    assert!(missing.is_empty(), "the dashboard queries metrics the gateway does not export: {missing:?}\nexported: {exported:?}");
    // Every family the gateway exports is on the dashboard somewhere.
    for family in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_cost_nanousd_total",
        "switchyard_deadline_misses_total",
        "switchyard_endpoint_up",
        "switchyard_policy_info",
        "switchyard_policy_reloads_total",
        "switchyard_tier_deadline_seconds",
    ] {
        assert!(
            queried.contains(family),
            "the dashboard does not show {family}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_reports_pools_tiers_and_spend() {
    let fleet = compose_fleet().await;
    send_some_traffic(&fleet.gw).await;
    // compose.yaml binds the admin listener off loopback, so it sets a token.
    let r = fleet.gw.admin_get("/admin/status").await;
    assert_eq!(r.status, 401, "compose's admin API must need its token");
    let r = admin_get_with_token(&fleet.gw, "/admin/status").await;
    assert_eq!(r.status, 200);
    let s: Value = serde_json::from_slice(&r.body).expect("status JSON");
    let pools = s["pools"].as_array().expect("pools");
    let names: Vec<&str> = pools.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["edge-eu", "edge-us", "gpu-central", "batch-us"]);
    let gpu = &pools[2];
    assert_eq!(gpu["endpoints_total"], 2);
    assert!(
        gpu["service_time_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{gpu}"
    );
    let served: u64 = pools
        .iter()
        .filter_map(|p| p["requests_total"].as_u64())
        .sum();
    // The traffic repeats prompts on cached routes: the rest were answered from memory.
    let hits = s["cache"]["hits_total"].as_u64().unwrap_or(0);
    assert!(hits > 0, "{s}");
    assert!(served + hits >= 140, "{s}");
    assert!(s["totals"]["rps"].as_f64().is_some_and(|v| v > 0.0), "{s}");
    assert!(
        s["totals"]["spend_usd_per_hour"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{s}"
    );
    let tiers = s["tiers"].as_array().expect("tiers");
    let realtime = tiers
        .iter()
        .find(|t| t["name"] == "realtime")
        .expect("realtime tier");
    assert_eq!(realtime["deadline_ms"], 150.0);
    let (p50, p99) = (
        realtime["p50_ms"].as_f64().expect("p50"),
        realtime["p99_ms"].as_f64().expect("p99"),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{realtime}");
    let batch = tiers
        .iter()
        .find(|t| t["name"] == "batch")
        .expect("batch tier");
    assert!(batch["requests"].as_u64().is_some_and(|n| n > 0), "{batch}");
    assert!(
        s["split"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["tier"] == "batch" && x["pool"] == "batch-us")),
        "{s}"
    );
    assert_eq!(s["policy"]["last_error"], Value::Null);
    assert!(s["policy"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    // The compose policy caches chat and embeddings and has no queue: absent, not zero.
    assert!(
        s["cache"]["hit_ratio"].as_f64().is_some_and(|r| r > 0.0),
        "{s}"
    );
    assert!(
        s["split"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["pool"] == "cache")),
        "{s}"
    );
    assert_eq!(s["queue"], Value::Null);
    // The page itself is served from the same listener, self-contained.
    let page = fleet.gw.admin_get("/").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("admin/status"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external assets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_of_the_image_sees_the_gateway_and_the_mocks() {
    let fleet = compose_fleet().await;
    let script = repo_root().join("examples/compose/healthcheck.sh");
    let probe = |args: Vec<String>, env_port: Option<u16>| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(&args);
        if let Some(p) = env_port {
            cmd.env("SWITCHYARD_ADMIN_PORT", p.to_string());
        }
        cmd.output().expect("run healthcheck.sh").status.success()
    };
    let admin = fleet.gw.admin;
    // No arguments: the image's HEALTHCHECK, readiness on the admin port.
    assert!(probe(vec![], Some(admin.port())));
    assert!(probe(vec![admin.to_string(), "/readyz".into()], None));
    assert!(
        !probe(vec![admin.to_string(), "/nope".into()], None),
        "a 404 is not healthy"
    );
    assert!(
        !probe(vec![dead_addr().to_string()], None),
        "a closed port is not healthy"
    );
    // The mock backends' check: a TCP connect.
    assert!(probe(vec![fleet.mocks[0].addr.to_string()], None));
}

/// Run headless Chromium on `url` with `args`; stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,900", "--virtual-time-budget=5000"])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium_available() -> bool {
    Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_pools_and_numbers_in_headless_chromium() {
    if !chromium_available() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed; .ci/run installs it (apt-get install chromium)");
        }
        eprintln!("\n*** SKIPPED the_status_page_renders_pools_and_numbers_in_headless_chromium: chromium is not installed (apt-get install chromium). CI=true makes this a failure. ***\n");
        return;
    }
    let fleet = compose_fleet().await;
    send_some_traffic(&fleet.gw).await;
    let url = format!("http://{}/#token={}", fleet.gw.admin, compose_admin_token());
    let dir = fleet.gw.dir.path().to_path_buf();
    let profile = dir.join("chromium-profile");
    let dom = tokio::task::spawn_blocking({
        let (profile, url) = (profile.clone(), url.clone());
        move || chromium(&profile, &url, &["--dump-dom"])
    })
    .await
    .expect("chromium task");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never rendered a status:\n{dom}"
    );
    for pool in ["edge-eu", "edge-us", "gpu-central", "batch-us"] {
        assert!(
            dom.contains(&format!("data-pool=\"{pool}\"")),
            "pool {pool} missing:\n{dom}"
        );
    }
    for tier in ["realtime", "standard", "batch"] {
        assert!(
            dom.contains(&format!("data-tier=\"{tier}\"")),
            "tier {tier} missing:\n{dom}"
        );
    }
    // Numbers, not placeholders: the request counter and at least one latency in ms.
    let total = text_of(&dom, "id=\"kpi-total\"").expect("kpi-total");
    assert!(
        total.parse::<u64>().is_ok_and(|n| n >= 140),
        "requests since start: {total:?}"
    );
    let rps = text_of(&dom, "id=\"kpi-rps\"").expect("kpi-rps");
    assert!(rps.parse::<f64>().is_ok(), "requests/s: {rps:?}");
    assert!(dom.contains(" ms</td>"), "no latency figures:\n{dom}");
    // The cache's figures, not placeholders; no queue in this policy.
    let hit_ratio = text_of(&dom, "id=\"kpi-cache\"").expect("kpi-cache");
    assert!(hit_ratio.ends_with('%'), "cache hit ratio: {hit_ratio:?}");
    let saved = text_of(&dom, "id=\"kpi-saved\"").expect("kpi-saved");
    assert!(saved.starts_with('$'), "spend avoided: {saved:?}");
    assert_eq!(text_of(&dom, "id=\"kpi-queue\"").as_deref(), Some("–"));
    assert!(dom.contains("<polyline"), "no chart drawn:\n{dom}");

    let shot = dir.join("status.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || chromium(&profile, &url, &[&shot_arg]))
        .await
        .expect("chromium task");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    // Keep the screenshot for a human to look at when asked to.
    if std::env::var_os("SWITCHYARD_KEEP_SCREENSHOT").is_some() {
        let kept = std::env::temp_dir().join("switchyard-status.png");
        let _ = std::fs::copy(&shot, &kept);
        eprintln!("kept a copy at {}", kept.display());
    }
}

/// The text of the element whose opening tag contains `attr` (no nesting inside).
fn text_of(dom: &str, attr: &str) -> Option<String> {
    let at = dom.find(attr)?;
    let start = at + dom[at..].find('>')? + 1;
    let end = start + dom[start..].find('<')?;
    Some(dom[start..end].trim().to_string())
}
