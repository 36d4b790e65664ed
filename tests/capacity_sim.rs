//! `switchyard simulate --workload examples/workloads/diurnal.yaml --capacity`, run as an
//! operator runs it: the GPU pool's replicas over three compressed days sized four ways
//! (fixed for the peak, a CPU HPA at 70 %, Switchyard's desired replicas from the rate now
//! and from its forecast) on the same arrivals, and the targets for them.

mod support;

use serde_json::Value;
use support::report::{json, run};

fn diurnal(extra: &[&str]) -> std::process::Output {
    let root = support::repo_root();
    let workload = root.join("examples/workloads/diurnal.yaml");
    let policy = root.join("policies/diurnal.yaml");
    let mut args = vec![
        "simulate",
        "--workload",
        workload.to_str().unwrap_or_default(),
        "--policy",
        policy.to_str().unwrap_or_default(),
        "--capacity",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn strategy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["strategies"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["strategy"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {v:#}"))
}

/// Issue 24 item 6's targets, on the shipped diurnal workload after the forecaster's first
/// day: the forecast meets the real-time tier (≥ 99 %) and misses fewer requests during the
/// morning ramps than the CPU HPA, and than the same sizing without its forecast (so the
/// forecast is what does it), at ≤ 0.6× the replica-hours of fixed-for-peak (0.593 measured;
/// sizing on the true rate every second would need 0.56).
#[test]
fn a_diurnal_day_autoscaled_four_ways() {
    let report = json(&diurnal(&["--json"]));
    assert_eq!(report["pool"], "gpu");
    let names: Vec<&str> = report["strategies"]
        .as_array()
        .expect("strategies")
        .iter()
        .filter_map(|s| s["strategy"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "fixed-peak",
            "hpa-cpu",
            "switchyard-reactive",
            "switchyard-forecast"
        ]
    );
    assert!(num(&report, "requests") > 1_000_000.0, "{report:#}");
    assert!(num(&report, "ramp_requests") > 0.0, "{report:#}");

    // Fixed for the peak: the same replicas all day, and every deadline met.
    let fixed = strategy(&report, "fixed-peak");
    let replicas = num(&report, "fixed_replicas");
    assert_eq!(num(fixed, "peak_replicas"), replicas);
    assert_eq!(num(fixed, "mean_replicas"), replicas);
    assert!(num(fixed, "realtime_attainment_pct") >= 99.9, "{fixed:#}");
    // Billed as the pool bills: 4 USD per replica-hour, busy or idle.
    for s in report["strategies"].as_array().expect("strategies") {
        let usd = num(s, "capacity_usd");
        assert!((usd - 4.0 * num(s, "replica_hours")).abs() < 0.01, "{s:#}");
    }

    let hpa = strategy(&report, "hpa-cpu");
    let reactive = strategy(&report, "switchyard-reactive");
    let forecast = strategy(&report, "switchyard-forecast");
    assert!(
        num(forecast, "realtime_attainment_pct") >= 99.0,
        "{forecast:#}"
    );
    let ratio = num(forecast, "replica_hours") / num(fixed, "replica_hours");
    assert!(
        ratio <= 0.6,
        "forecast at {ratio:.3} of fixed-peak: {report:#}"
    );
    assert!((ratio - num(forecast, "vs_fixed_peak")).abs() < 0.001);
    // Ramps: the HPA reacts to busy CPUs a sync period and a scale-up late; the reactive
    // sizing to the rate now, a scale-up late; the forecast asks ahead.
    let ramp = |s: &Value| num(s, "ramp_misses");
    assert!(ramp(forecast) * 10.0 < ramp(hpa), "{report:#}");
    assert!(ramp(forecast) * 10.0 < ramp(reactive), "{report:#}");
    assert!(num(hpa, "realtime_attainment_pct") < 99.0, "{hpa:#}");
}

#[test]
fn capacity_needs_a_capacity_section_and_block() {
    let root = support::repo_root();
    // The workload without a `capacity:` section.
    let surge = root.join("examples/workloads/surge.yaml");
    let out = run(&[
        "simulate",
        "--workload",
        surge.to_str().unwrap_or_default(),
        "--capacity",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`capacity:` section"), "{err}");
    // The fleet's own policy: its GPU pool has no `capacity:` block.
    let workload = root.join("examples/workloads/diurnal.yaml");
    let out = run(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap_or_default(),
        "--capacity",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no `capacity:` block"), "{err}");
}
