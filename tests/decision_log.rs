//! The decision log (`observe.decision_log`), on a real gateway: one JSON line per request in
//! the documented version-1 format, with the tenant's name and never its key, the decision
//! and the upstream time; rotated by size.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::mock::MockBackend;

/// One edge pool in `region` on `edge`, serving every model, and `observe` settings (YAML).
fn edge_policy(edge: &MockBackend, region: &str, observe: &str) -> String {
    Policy::new()
        .pool(Pool::edge("edge").region(region).endpoint(edge.addr()))
        .extra(observe)
        .render()
}

/// The decision log's lines once there are at least `n` (at most 5 s).
async fn lines_when(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_a_versioned_json_line_with_its_decision() {
    let edge = mock("edge", 5).await;
    let gw = Gateway::start(&edge_policy(
        &edge,
        "eu",
        "observe: { decision_log: decisions.jsonl }",
    ))
    .await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &[
                ("x-forwarded-for", "192.0.2.10"),
                ("authorization", "Bearer key-acme"),
            ],
            &chat("model-a"),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", "192.0.2.10"), ("x-slo-tier", "strict")],
            &chat("model-b"),
        )
        .await;
    let strict_status = r.status;
    let lines = lines_when(&gw.dir.path().join("decisions.jsonl"), 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let a = lines
        .iter()
        .find(|l| l["model"] == "model-a")
        .expect("model-a's line");
    assert_eq!(a["v"], 1);
    assert!(a["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    assert!(
        a["unix_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000),
        "{a}"
    );
    assert_eq!(a["route"], "chat");
    assert_eq!(a["protocol"], "openai");
    assert_eq!(a["region"], "eu");
    assert_eq!(a["tier"], "realtime", "acme's tier");
    assert_eq!(a["tenant"], "acme");
    assert!(!a.to_string().contains("key-acme"), "never the key: {a}");
    assert_eq!(a["pool"], "edge");
    assert_eq!(a["reason"], "meets-deadline");
    assert!(a["estimate_ms"].as_f64().is_some_and(|e| e > 0.0), "{a}");
    assert_eq!(a["attempts"], 1);
    assert!(a["upstream_ms"].as_f64().is_some_and(|u| u >= 5.0), "{a}");
    assert_eq!(a["status"], 200);
    assert!(a["spend_usd"].as_f64().is_some_and(|s| s > 0.0), "{a}");
    assert_eq!(a["body_bytes"], chat("model-a").len());
    // The mock's answer reports `usage`: logged, although this pool is not priced per token
    // (a trace replayed against a token-billed pool needs them).
    assert!(
        ["input", "output"]
            .iter()
            .all(|k| a["tokens"][k].as_u64().is_some_and(|n| n > 0)),
        "{a}"
    );
    // A request the 20 ms tier sheds (the pool's 10 ms baseline + 5 ms RTT may or may
    // not fit; either way its line says what happened).
    let b = lines
        .iter()
        .find(|l| l["model"] == "model-b")
        .expect("model-b's line");
    assert_eq!(b["tier"], "strict");
    assert_eq!(b["tenant"], Value::Null);
    assert_eq!(b["status"], strict_status);
    if strict_status == 200 {
        assert_eq!(b["pool"], "edge");
    } else {
        assert_eq!(
            (b["pool"].clone(), b["reason"].clone()),
            (Value::Null, "slo-miss-shed".into())
        );
        assert_eq!(b["upstream_ms"], Value::Null);
    }
}

/// The `what_if` part of the gateway's `/admin/status`.
async fn status(gw: &Gateway) -> Value {
    let r = gw.admin_get("/admin/status").await;
    assert_eq!(r.status, 200);
    serde_json::from_slice::<Value>(&r.body).expect("status JSON")["what_if"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_gives_the_command_that_replays_the_recorded_traffic() {
    let edge = mock("edge", 1).await;
    let recording = Gateway::start(&edge_policy(
        &edge,
        "us",
        "observe: { decision_log: decisions.jsonl }",
    ))
    .await;
    let what_if = status(&recording).await;
    let command = what_if["command"].as_str().expect("a command");
    let log = what_if["decision_log"].as_str().expect("the log's path");
    assert!(log.ends_with("decisions.jsonl"), "{what_if}");
    let policy_path = recording.policy_path.display().to_string();
    assert!(
        command.starts_with("switchyard simulate --trace ")
            && command.contains(log)
            && command.contains(&format!("--policy {policy_path}")),
        "{command}"
    );
    // The page draws it; without a log it says how to record one.
    let page = recording.admin_get("/").await;
    assert!(String::from_utf8_lossy(&page.body).contains("what_if"));
    let silent = Gateway::start(&edge_policy(&edge, "us", "")).await;
    assert_eq!(status(&silent).await["command"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rotates_by_size() {
    let edge = mock("edge", 1).await;
    let gw = Gateway::start(&edge_policy(
        &edge,
        "us",
        "observe: { decision_log: d.jsonl, decision_log_max: 4KiB }",
    ))
    .await;
    for i in 0..30 {
        let r = gw
            .post("/v1/chat/completions", &[], &chat(&format!("m{i}")))
            .await;
        assert_eq!(r.status, 200);
    }
    let path = gw.dir.path().join("d.jsonl");
    let rotated = gw.dir.path().join("d.jsonl.1");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (now, before) = loop {
        let now = lines_when(&path, 0).await;
        let before = lines_when(&rotated, 0).await;
        if now.iter().any(|l| l["model"] == "m29") || Instant::now() > deadline {
            break (now, before);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!before.is_empty(), "rotated once past 4 KiB");
    for f in [&path, &rotated] {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(size <= 4096, "{} is {size} bytes", f.display());
    }
    // 30 lines of ~500 bytes do not fit in two 4 KiB files: the oldest were rotated away,
    // and the newest request is in the current file.
    assert!(now.iter().any(|l| l["model"] == "m29"), "{now:?}");
}

/// The share of each pool among `lines` (percent), as the simulator reports traffic.
fn shares(lines: &[Value]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let served: Vec<&Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    for l in &served {
        if let Some(p) = l["pool"].as_str() {
            *out.entry(p.to_string()).or_insert(0.0) += 100.0 / served.len() as f64;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_log_replays_in_the_simulator() {
    let (edge_eu, gpu) = (mock("edge-eu", 5).await, mock("gpu", 20).await);
    let policy = Policy::new()
        .pool(
            Pool::edge("edge-eu")
                .region("eu")
                .endpoint(edge_eu.addr())
                .models(["small"]),
        )
        .pool(Pool::gpu("gpu").endpoint(gpu.addr()).per_request(0.0001))
        .extra("observe: { decision_log: decisions.jsonl }");
    let gw = Gateway::start(&policy.render()).await;
    let clients = ["192.0.2.10", "198.51.100.20", "203.0.113.30"];
    let tiers = ["realtime", "standard", "batch"];
    for i in 0..60 {
        let model = if i % 4 == 0 { "big" } else { "small" };
        let r = gw
            .post(
                "/v1/chat/completions",
                &[
                    ("x-forwarded-for", clients[i % 3]),
                    ("x-slo-tier", tiers[(i / 3) % 3]),
                ],
                &chat(model),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let trace = gw.dir.path().join("decisions.jsonl");
    let lines = lines_when(&trace, 60).await;
    assert_eq!(lines.len(), 60);
    let (trace_arg, policy_arg) = (
        trace.display().to_string(),
        gw.policy_path.display().to_string(),
    );
    let simulate = |scale: &str| -> Value {
        report::json(&report::run(&[
            "simulate",
            "--trace",
            &trace_arg,
            "--policy",
            &policy_arg,
            "--phases",
            "2",
            "--rate-scale",
            scale,
            "--json",
        ]))
    };
    // At the speed it was served. (Compressed, the estimates' time-based decay would not
    // match the live run's: a slow answer under a loaded machine would weigh on ten times as
    // many later decisions, which is what `--rate-scale` is for, not what this compares.)
    let report = simulate("1");
    // Compressed: the same requests, ten times the rate.
    let fast = simulate("10");
    let rate = |r: &Value| r["rate_per_sec"].as_f64().unwrap_or(0.0);
    assert!(
        (rate(&fast) / rate(&report) - 10.0).abs() < 0.5,
        "--rate-scale 10: {} vs {} req/s",
        rate(&fast),
        rate(&report)
    );
    // The rows of system `name` in every phase of `r`.
    let rows = |r: &Value, name: &str| -> Vec<Value> {
        r["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| report::system(p, name).clone())
            .collect()
    };
    let replayed_in = |r: &Value| -> u64 {
        rows(r, "policy")
            .iter()
            .map(|s| s["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(replayed_in(&fast), 60, "{fast:#}");
    assert_eq!(report["phases"].as_array().map(Vec::len), Some(2));
    let replayed = |name: &str| rows(&report, name);
    let policy_rows = replayed("policy");
    assert_eq!(
        replayed_in(&report),
        60,
        "every logged request is replayed: {report:#}"
    );
    assert!(policy_rows.iter().all(|s| s["errors"] == 0), "{report:#}");
    // The same policy on the same requests sends them where the gateway did.
    let logged = shares(&lines);
    for (pool, share) in &logged {
        let simulated: f64 = policy_rows
            .iter()
            .map(|s| {
                s["traffic"][pool].as_f64().unwrap_or(0.0) * s["requests"].as_f64().unwrap_or(0.0)
            })
            .sum::<f64>()
            / 60.0;
        assert!(
            (simulated - share).abs() <= 5.0,
            "{pool}: {simulated:.1}% simulated vs {share:.1}% logged\n{report:#}"
        );
    }
    // Always-GPU on the same requests: all of them on the GPU pool.
    assert!(replayed("always-gpu")
        .iter()
        .all(|s| s["traffic"]["gpu"].as_f64() == Some(100.0)));
}
