//! `switchyard simulate` and `tune`, run as child processes as an operator runs them:
//! policies side by side with the baselines and the exact bounds (`optimum`, `relaxed`),
//! reproducible figures, scripted
//! workloads and the cache, tuning, the demo's recording replayed, and clear errors. (The
//! comparison with the live scenario is in `simulate_live.rs`, alone in its binary.)

mod support;

use serde_json::Value;
use std::process::Command;
use support::binary;
use support::report::{json, realtime, run, spend, system};

/// Write the built-in `fleet-faults` policy to `path` with `from` replaced by `to`.
fn write_variant(path: &std::path::Path, from: &str, to: &str) {
    let text = switchyard::fleet_faults::POLICY;
    assert!(
        text.contains(from),
        "`{from}` is not in the fleet-faults policy"
    );
    std::fs::write(path, text.replace(from, to)).expect("write");
}

#[test]
fn policies_side_by_side_with_baselines_and_the_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tuned = dir.path().join("tuned.yaml");
    std::fs::write(&tuned, switchyard::fleet_faults::POLICY).expect("write");
    // The same policy, but real-time traffic may only use the GPU pool in the US: clients in
    // Asia-Pacific (150 ms away) can no longer meet the 150 ms deadline.
    let gpu_only = dir.path().join("gpu-only.yaml");
    write_variant(
        &gpu_only,
        "realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu]",
        "realtime: { deadline: 150ms, weight: 0.8, pools: [gpu]",
    );
    let args = [
        "simulate",
        "--policy",
        tuned.to_str().unwrap_or_default(),
        "--policy",
        gpu_only.to_str().unwrap_or_default(),
        "--phase-secs",
        "5",
        "--rate",
        "200",
        "--seed",
        "7",
        "--json",
    ];
    let report = json(&run(&args));
    let phases = report["phases"].as_array().expect("phases");
    for phase in phases {
        let names: Vec<&str> = phase["systems"]
            .as_array()
            .expect("systems")
            .iter()
            .filter_map(|s| s["system"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "tuned",
                "gpu-only",
                "round-robin",
                "always-gpu",
                "optimum",
                "relaxed"
            ]
        );
        let (tuned, gpu_only, optimum) = (
            system(phase, "tuned"),
            system(phase, "gpu-only"),
            system(phase, "optimum"),
        );
        assert!(realtime(tuned) >= 99.0, "{phase:#}");
        assert!(realtime(gpu_only) < 90.0, "{phase:#}");
        assert!(realtime(optimum) >= realtime(tuned), "{phase:#}");
        assert!(spend(optimum) <= spend(tuned), "{phase:#}");
        assert!(
            tuned["vs_optimum_pct"].as_f64().unwrap_or(-1.0) >= 0.0,
            "{phase:#}"
        );
        assert_eq!(tuned["errors"], 0, "{phase:#}");
    }
    // The slow edge pool loses its traffic in phase 2, and the dead GPU endpoint is
    // ejected in phase 3 after a few refused connections, each retried elsewhere.
    let tuned_in = |p: usize| system(&phases[p], "tuned");
    let share = |p: usize| tuned_in(p)["traffic"]["edge-eu"].as_f64().unwrap_or(0.0);
    assert!(share(1) < share(0) * 0.6, "{} vs {}", share(1), share(0));
    assert!(share(3) > share(1), "{} vs {}", share(3), share(1));
    let retries = tuned_in(2)["retries"].as_u64().unwrap_or(0);
    assert!((1..20).contains(&retries), "retries in phase 3: {retries}");
    // Reproducible: the same seed gives the same figures.
    assert_eq!(report, json(&run(&args)));
}

/// Requests answered within their deadline, over every tier.
fn met(sys: &Value) -> f64 {
    sys["tiers"]
        .as_array()
        .map(|tiers| {
            tiers
                .iter()
                .map(|t| {
                    let n = t["requests"].as_f64().unwrap_or(0.0);
                    (n * t["slo_attainment"].as_f64().unwrap_or(0.0) / 100.0).round()
                })
                .sum()
        })
        .unwrap_or(0.0)
}

/// The exact bounds on `fleet-faults`, with the scenario's policy and with every tier's
/// weight at 0 (cheapest first): no system meets more deadlines than `optimum`; none that
/// meets as many spends less; `relaxed` (any pool) never spends more than `optimum`.
#[test]
fn the_optimum_is_a_bound_on_every_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w0 = dir.path().join("w0.yaml");
    let text = switchyard::fleet_faults::POLICY
        .replace("weight: 0.8,", "weight: 0.0,")
        .replace("weight: 0.3,", "weight: 0.0,");
    std::fs::write(&w0, text).expect("write");
    let scenario = support::repo_root().join("policies/fleet-faults.yaml");
    let report = json(&run(&[
        "simulate",
        "--policy",
        scenario.to_str().unwrap_or_default(),
        "--policy",
        w0.to_str().unwrap_or_default(),
        "--phase-secs",
        "5",
        "--rate",
        "300",
        "--json",
    ]));
    for (i, phase) in report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .enumerate()
    {
        // Cost only (every weight 0): Switchyard's spend within 10 % of the optimum in the
        // calm phases 1 and 4 and 25 % in the faulty 2 and 3, at 99 % real-time attainment
        // (issue 23's targets; 0.0 % measured).
        let cost_only = system(phase, "w0");
        let bound = if i == 0 || i == 3 { 10.0 } else { 25.0 };
        let distance = cost_only["vs_optimum_pct"].as_f64().unwrap_or(f64::MAX);
        assert!(
            distance <= bound,
            "phase {}: {distance} %: {phase:#}",
            i + 1
        );
        assert!(realtime(cost_only) >= 99.0, "phase {}: {phase:#}", i + 1);
        let (optimum, relaxed) = (system(phase, "optimum"), system(phase, "relaxed"));
        assert!(spend(relaxed) <= spend(optimum) + 1e-5, "{phase:#}");
        assert!(met(relaxed) >= met(optimum), "{phase:#}");
        for name in ["fleet-faults", "w0", "round-robin", "always-gpu"] {
            let sys = system(phase, name);
            assert!(met(optimum) >= met(sys), "{name}: {phase:#}");
            if met(sys) >= met(optimum) {
                assert!(spend(optimum) <= spend(sys) + 1e-5, "{name}: {phase:#}");
            }
            let split = [
                "capacity_per_1k_usd",
                "usage_per_1k_usd",
                "egress_per_1k_usd",
            ]
            .iter()
            .map(|k| sys[*k].as_f64().unwrap_or(-1.0))
            .sum::<f64>();
            assert!((split - spend(sys)).abs() < 1e-4, "{name}: {phase:#}");
        }
    }
}

/// `policies/fleet-faults.yaml` is the scenario's policy: it passes `check`, and simulated as
/// a policy file it does exactly what the built-in scenario's `switchyard` does.
#[test]
fn the_scenarios_policy_file_is_what_the_scenario_runs() {
    let file = support::repo_root().join("policies/fleet-faults.yaml");
    let path = file.to_str().unwrap_or_default();
    let check = run(&["check", path]);
    assert!(check.status.success(), "{check:?}");
    let args = ["simulate", "--phase-secs", "2", "--json"];
    let builtin = json(&run(&args));
    let from_file = json(&run(&[&args[..], &["--policy", path]].concat()));
    let phases = builtin["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 4);
    for (b, f) in phases
        .iter()
        .zip(from_file["phases"].as_array().expect("phases"))
    {
        let mut sys = system(f, "fleet-faults").clone();
        sys["system"] = "switchyard".into();
        assert_eq!(&sys, system(b, "switchyard"), "{b:#}\n{f:#}");
    }
}

#[test]
fn a_policy_that_does_not_fit_the_fleet_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other.yaml");
    write_variant(&other, "name: edge-ap", "name: edge-sg");
    let out = run(&[
        "simulate",
        "--policy",
        other.to_str().unwrap_or_default(),
        "--phase-secs",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool `edge-sg` is not in the fleet"), "{err}");
}

#[test]
fn a_scripted_surge_shows_who_saturates() {
    let workload = support::repo_root().join("examples/workloads/surge.yaml");
    let report = json(&run(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap_or_default(),
        "--json",
    ]));
    assert_eq!(report["scenario"], "surge");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3);
    for phase in phases {
        let sy = system(phase, "switchyard");
        assert!(realtime(sy) >= 99.0, "{phase:#}");
        for sys in phase["systems"].as_array().expect("systems") {
            for (pool, u) in sys["utilisation"].as_object().expect("utilisation") {
                let u = u.as_f64().unwrap_or(-1.0);
                assert!((0.0..=100.0).contains(&u), "{pool} at {u}%: {phase:#}");
            }
        }
    }
    // Six times the traffic while one GPU endpoint is down: always-GPU's one endpoint
    // queues and the real-time tier collapses; round-robin floods the batch pool.
    let surge = &phases[1];
    assert!(realtime(system(surge, "always-gpu")) < 50.0, "{surge:#}");
    let batch = system(surge, "round-robin")["utilisation"]["batch"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(batch >= 95.0, "{surge:#}");
    assert!(met(system(surge, "optimum")) >= met(system(surge, "switchyard")));
    assert!(
        spend(system(surge, "optimum")) <= spend(system(surge, "switchyard"))
            || met(system(surge, "optimum")) > met(system(surge, "switchyard")),
        "{surge:#}"
    );
}

#[test]
fn a_bad_workload_file_names_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "phases: [{ duration: 10s, rate: -1 }]\nregions: { mars: 1 }\ntiers: [{ name: realtime, share: 1, deadline: 150ms }]\n",
    )
    .expect("write");
    let out = run(&["simulate", "--workload", bad.to_str().unwrap_or_default()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["bad.yaml: phases[0].rate", "bad.yaml: regions.mars"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

fn total_spend(report: &Value, name: &str) -> f64 {
    report["phases"]
        .as_array()
        .map(|ps| ps.iter().map(|p| spend(system(p, name))).sum())
        .unwrap_or(-1.0)
}

#[test]
fn tune_finds_cheaper_weights_that_still_meet_the_target_and_writes_a_valid_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original.yaml");
    std::fs::write(&original, switchyard::fleet_faults::POLICY).expect("write");
    let tuned = dir.path().join("tuned.yaml");
    let out = run(&[
        "tune",
        "--policy",
        original.to_str().unwrap_or_default(),
        "--target",
        "realtime=99%",
        "--phase-secs",
        "4",
        "--write",
        tuned.to_str().unwrap_or_default(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("+++ tuned"), "{stdout}");
    assert!(
        stdout.contains("-  realtime: { deadline: 150ms, weight: 0.8"),
        "{stdout}"
    );
    let check = run(&["check", tuned.to_str().unwrap_or_default()]);
    assert!(check.status.success(), "{check:?}");
    // The tuned file, simulated beside the original on the same workload: the target
    // holds in every phase, for less.
    let report = json(&run(&[
        "simulate",
        "--policy",
        original.to_str().unwrap_or_default(),
        "--policy",
        tuned.to_str().unwrap_or_default(),
        "--phase-secs",
        "4",
        "--json",
    ]));
    for phase in report["phases"].as_array().expect("phases") {
        assert!(realtime(system(phase, "tuned")) >= 99.0, "{phase:#}");
    }
    let (before, after) = (
        total_spend(&report, "original"),
        total_spend(&report, "tuned"),
    );
    assert!(after < before * 0.95, "{after} vs {before}");
}

#[test]
fn tune_says_so_when_no_settings_meet_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No edge pool at all: real-time clients in Asia-Pacific (150 ms from the GPU pool, and
    // the batch pool slower still) cannot meet the 150 ms deadline, whatever the tier may use.
    let policy = dir.path().join("gpu-only.yaml");
    let text: String = switchyard::fleet_faults::POLICY
        .lines()
        .filter(|l| !l.contains("kind: edge"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        text.lines().count() + 2,
        switchyard::fleet_faults::POLICY.lines().count()
    );
    std::fs::write(&policy, text).expect("write");
    let written = dir.path().join("never.yaml");
    let out = run(&[
        "tune",
        "--policy",
        policy.to_str().unwrap_or_default(),
        "--target",
        "realtime=99%",
        "--phase-secs",
        "2",
        "--write",
        written.to_str().unwrap_or_default(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no candidate meets the targets"));
    assert!(!written.exists(), "nothing is written");
}

#[test]
fn the_demo_records_traffic_that_simulate_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("demo.jsonl");
    let out = Command::new(binary())
        .args([
            "demo",
            "--once",
            "--free-ports",
            "--requests",
            "120",
            "--record",
        ])
        .arg(&rec)
        .env("RUST_LOG", "error")
        .current_dir(support::repo_root())
        .output()
        .expect("run the demo");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = std::fs::read_to_string(&rec)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 120);
    let answered_by_pools = lines
        .iter()
        .filter(|l| l["cache"] != "hit" && l["cache"] != "coalesced" && l["tier"].is_string())
        .count();
    let demo_policy = support::repo_root().join("policies/demo.yaml");
    let report = json(&run(&[
        "simulate",
        "--trace",
        rec.to_str().unwrap_or_default(),
        "--policy",
        demo_policy.to_str().unwrap_or_default(),
        "--json",
    ]));
    let phase = &report["phases"][0];
    assert_eq!(
        system(phase, "demo")["requests"].as_u64(),
        Some(answered_by_pools as u64),
        "{phase:#}"
    );
    assert!(spend(system(phase, "optimum")) <= spend(system(phase, "always-gpu")));
}

/// `switchyard simulate --workload W --policy NAME.yaml... --json` with the workload text
/// and each named policy text written to a temp dir; the report.
fn simulate_side_by_side(workload: &str, policies: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = dir.path().join("workload.yaml");
    std::fs::write(&w, workload).expect("write workload");
    let paths: Vec<String> = policies
        .iter()
        .map(|(name, text)| {
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&path, text).expect("write policy");
            path.to_string_lossy().into_owned()
        })
        .collect();
    let mut args = vec!["simulate", "--workload", w.to_str().unwrap_or_default()];
    for path in &paths {
        args.extend(["--policy", path.as_str()]);
    }
    args.push("--json");
    json(&run(&args))
}

#[test]
fn repeats_are_answered_by_the_cache_only_when_the_route_caches() {
    let policy = switchyard::fleet_faults::POLICY;
    let cached = policy.replace(
        "idempotent: true }",
        "idempotent: true, cache: { ttl: 1m } }",
    );
    let report = simulate_side_by_side(
        "phases: [{ duration: 20s, rate: 100 }]\nregions: { us: 1, eu: 1 }\ntiers: [{ name: standard, share: 1, deadline: 1s, big_model: 30 }]\nrepeat: 50\n",
        &[("plain", policy), ("cached", &cached)],
    );
    let phase = &report["phases"][0];
    let hits = |name: &str| system(phase, name)["cache_hits"].as_u64().unwrap_or(0);
    assert_eq!(hits("plain"), 0, "{phase:#}");
    assert_eq!(hits("round-robin"), 0, "{phase:#}");
    // About half the requests repeat a recent one; within a minute's TTL most are hits.
    assert!((700..=1000).contains(&hits("cached")), "{phase:#}");
    assert!(hits("optimum") >= hits("cached"), "{phase:#}");
    assert!(
        variable(system(phase, "cached")) < variable(system(phase, "plain")) * 0.7,
        "{phase:#}"
    );
}

/// Real-time traffic for the big model (GPU only) while 1.5% of the GPU's attempts stall
/// (10× slower, each attempt drawn on its own): the tail hedging is for.
const STALLS: &str = "phases: [{ duration: 20s, rate: 50 }]\nregions: { us: 1 }\ntiers: [{ name: realtime, share: 1, deadline: 150ms, big_model: 100 }]\nfaults:\n  - { pool: gpu, slower: 10, share: 1.5, from: 0s, to: 20s }\n";

#[test]
fn a_hedging_tier_cuts_its_tail_in_simulation_and_pays_for_the_hedges() {
    let policy = &hosted_gpu(switchyard::fleet_faults::POLICY);
    let hedged = policy.replace(
        "realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu], on_slo_miss: fastest }",
        "realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu], on_slo_miss: fastest, hedge_after: 2 }",
    );
    let report = simulate_side_by_side(STALLS, &[("plain", policy), ("hedged", &hedged)]);
    let phase = &report["phases"][0];
    let (p, h) = (system(phase, "plain"), system(phase, "hedged"));
    let p99 = |s: &Value| s["tiers"][0]["p99_ms"].as_f64().unwrap_or(-1.0);
    assert_eq!(p["hedges"], 0, "{phase:#}");
    assert!(h["hedges"].as_u64().unwrap_or(0) > 0, "{phase:#}");
    // Stalls of ~450 ms set the plain policy's p99; hedged, a second attempt answers first.
    assert!(p99(h) > 0.0 && p99(h) < p99(p) / 2.0, "{phase:#}");
    assert!(realtime(h) >= realtime(p), "{phase:#}");
    // The losing attempts are billed.
    assert!(
        h["hedge_spend_per_1k_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "{phase:#}"
    );
}

#[test]
fn identical_misses_in_flight_send_one_request_and_the_byte_bound_evicts() {
    let cached = switchyard::fleet_faults::POLICY.replace(
        "idempotent: true }",
        "idempotent: true, cache: { ttl: 1m } }",
    );
    // Room for a few dozen answers only.
    let small = format!("cache: {{ max_bytes: 100KiB }}\n{cached}");
    let report = simulate_side_by_side(
        "phases: [{ duration: 10s, rate: 1000 }]\nregions: { us: 1, eu: 1 }\ntiers: [{ name: standard, share: 1, deadline: 1s, big_model: 30 }]\nrepeat: 50\n",
        &[("cached", &cached), ("small", &small)],
    );
    let phase = &report["phases"][0];
    let n = |name: &str, field: &str| system(phase, name)[field].as_u64().unwrap_or(0);
    // Every repeat is answered without a request of its own: from the cache once its first
    // answer is in, before that by waiting for the first one in flight. (The bounds count
    // every repeat as free.)
    assert!(n("cached", "coalesced") > 0, "{phase:#}");
    assert_eq!(
        n("cached", "cache_hits") + n("cached", "coalesced"),
        n("optimum", "cache_hits"),
        "{phase:#}"
    );
    assert_eq!(n("cached", "evictions"), 0, "{phase:#}");
    assert!(n("small", "evictions") > 0, "{phase:#}");
    assert!(
        n("small", "cache_hits") < n("cached", "cache_hits") / 2,
        "{phase:#}"
    );
    assert!(
        spend(system(phase, "small")) > spend(system(phase, "cached")),
        "{phase:#}"
    );
}

#[test]
fn tune_searches_hedging_and_on_slo_miss_and_writes_a_valid_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workload = dir.path().join("stalls.yaml");
    std::fs::write(&workload, STALLS).expect("write");
    // Every tier hedges; at a 95% target the real-time tier's hedges do not pay. The policy
    // has a queue, so `on_slo_miss: queue` is tried too, and what it did is shown.
    let original = dir.path().join("original.yaml");
    let hedged = hosted_gpu(switchyard::fleet_faults::POLICY).replace(
        "on_slo_miss: fastest }",
        "on_slo_miss: fastest, hedge_after: 1.5 }",
    );
    std::fs::write(&original, with_queue(&hedged, "")).expect("write");
    let tuned = dir.path().join("tuned.yaml");
    let out = run(&[
        "tune",
        "--policy",
        original.to_str().unwrap_or_default(),
        "--workload",
        workload.to_str().unwrap_or_default(),
        "--target",
        "realtime=95%",
        "--write",
        tuned.to_str().unwrap_or_default(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("realtime hedge_after 1.5 → off"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the best tried that changed on_slo_miss: queue:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("realtime on_slo_miss fastest → queue"),
        "{stdout}"
    );
    let check = run(&["check", tuned.to_str().unwrap_or_default()]);
    assert!(check.status.success(), "{check:?}");
    let text = std::fs::read_to_string(&tuned).expect("read");
    assert_eq!(
        text.lines().count(),
        std::fs::read_to_string(&original)
            .expect("read")
            .lines()
            .count(),
        "{text}"
    );
    let report = json(&run(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap_or_default(),
        "--policy",
        original.to_str().unwrap_or_default(),
        "--policy",
        tuned.to_str().unwrap_or_default(),
        "--json",
    ]));
    let phase = &report["phases"][0];
    assert!(realtime(system(phase, "tuned")) >= 95.0, "{phase:#}");
    assert!(
        spend(system(phase, "tuned")) < spend(system(phase, "original")),
        "{phase:#}"
    );
}

#[test]
fn tune_searches_pool_lists_and_replicas_and_writes_a_valid_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The scenario's GPU pool is paid per replica-hour: its two replicas are searched.
    let original = dir.path().join("original.yaml");
    std::fs::write(&original, switchyard::fleet_faults::POLICY).expect("write");
    let tuned = dir.path().join("tuned.yaml");
    let args = |json: bool| {
        let mut a = vec![
            "tune",
            "--policy",
            original.to_str().unwrap_or_default(),
            "--target",
            "realtime=99%",
            "--target",
            "standard=99%",
            "--phase-secs",
            "4",
        ];
        if json {
            a.push("--json");
        } else {
            a.extend(["--write", tuned.to_str().unwrap_or_default()]);
        }
        a
    };
    let r = json(&run(&args(true)));
    // Pool lists and the replica count were among the candidates simulated, within the bound.
    assert!(
        r["searched"]["pool_lists"].as_u64().unwrap_or(0) > 0,
        "{r:#}"
    );
    assert!(r["searched"]["replicas"].as_u64().unwrap_or(0) > 0, "{r:#}");
    let evaluated = r["evaluated"].as_u64().unwrap_or(0);
    assert!(
        evaluated > 1 && evaluated <= r["bound"].as_u64().unwrap_or(0),
        "{r:#}"
    );
    assert_eq!(r["phases"].as_array().map(Vec::len), Some(4), "{r:#}");
    // The one written meets both targets in every phase, and says what it saves.
    let best = &r["best"][0];
    assert_eq!(best["meets_targets"], true, "{best:#}");
    for (tier, phases) in best["attainment"]
        .as_array()
        .expect("attainment")
        .iter()
        .filter_map(|t| Some((t[0].as_str()?, t[1].as_array()?)))
    {
        assert_eq!(phases.len(), 4, "{tier}: {best:#}");
        for p in phases {
            assert!(p.as_f64().unwrap_or(0.0) >= 99.0, "{tier}: {best:#}");
        }
    }
    let saving = best["saving_percent"].as_f64().unwrap_or(0.0);
    assert!(saving > 0.0, "{best:#}");
    // As text, with the file written; `check` accepts it.
    let out = run(&args(false));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("({saving:.1}%)")), "{stdout}");
    assert!(stdout.contains("realtime: 100.00% "), "{stdout}");
    let check = run(&["check", tuned.to_str().unwrap_or_default()]);
    assert!(check.status.success(), "{check:?}");
    // Simulated beside the original: both targets in every phase, for less.
    let report = json(&run(&[
        "simulate",
        "--policy",
        original.to_str().unwrap_or_default(),
        "--policy",
        tuned.to_str().unwrap_or_default(),
        "--phase-secs",
        "4",
        "--json",
    ]));
    for phase in report["phases"].as_array().expect("phases") {
        let t = system(phase, "tuned");
        assert!(realtime(t) >= 99.0, "{phase:#}");
        assert!(
            t["tiers"][1]["slo_attainment"].as_f64().unwrap_or(0.0) >= 99.0,
            "{phase:#}"
        );
        // Where the relaxed plan keeps both targets, the tuned policy closes at least half
        // of the original's distance to it (issue 23).
        let relaxed = system(phase, "relaxed");
        if realtime(relaxed) >= 99.0 {
            let to_relaxed = |name: &str| {
                system(phase, name)["vs_relaxed_pct"]
                    .as_f64()
                    .unwrap_or(f64::MAX)
            };
            let (was, now) = (to_relaxed("original"), to_relaxed("tuned"));
            assert!(now <= was / 2.0 + 0.01, "{was} % → {now} %: {phase:#}");
        }
    }
    assert!(total_spend(&report, "tuned") < total_spend(&report, "original"));
}

/// `policy` with its GPU pool priced per use, like a hosted API, instead of provisioned: the
/// decisions then weigh a price per request for it, as the mechanisms tested with it assume
/// (the simulated bill stays the fleet's, whose GPU is provisioned).
fn hosted_gpu(policy: &str) -> String {
    let provisioned = "price: { per_replica_hour: 4.0, replicas: 2, safe_utilisation: 0.7 }";
    assert!(policy.contains(provisioned), "the GPU pool's price changed");
    policy.replace(
        provisioned,
        "price: { per_request: 0.00005, per_gpu_hour: 12.0 }",
    )
}

/// A system's usage and egress per 1k requests (what routing and caching can change).
fn variable(sys: &Value) -> f64 {
    sys["usage_per_1k_usd"].as_f64().unwrap_or(-1.0)
        + sys["egress_per_1k_usd"].as_f64().unwrap_or(-1.0)
}

/// The scenario's policy with a batch queue (`extra` appended to its `queue:` section).
fn with_queue(policy: &str, extra: &str) -> String {
    format!("{policy}queue: {{ backend: embedded{extra} }}\n")
}

/// A queue figure of one system in a one-phase report.
fn job_figure(report: &Value, name: &str, field: &str) -> f64 {
    system(&report["phases"][0], name)[field]
        .as_f64()
        .unwrap_or(-1.0)
}

#[test]
fn queued_jobs_all_complete_and_wait_longer_when_the_batch_pool_is_narrower() {
    let roomy = with_queue(&hosted_gpu(switchyard::fleet_faults::POLICY), "");
    // The batch pool takes 4 jobs at a time instead of 64: ~18 jobs/s for 40 arriving.
    let narrow = roomy.replace(
        "concurrency: 64, service_time: 225ms",
        "concurrency: 4, service_time: 225ms",
    );
    let report = simulate_side_by_side(
        "phases: [{ duration: 10s, rate: 40 }]\nregions: { us: 1 }\ntiers: [{ name: batch, share: 1, deadline: 60s, big_model: 100 }]\n",
        &[("roomy", &roomy), ("narrow", &narrow)],
    );
    let f = |name: &str, field: &str| job_figure(&report, name, field);
    for name in ["roomy", "narrow"] {
        // Every request is accepted as a job (202) and every job gets its result.
        assert_eq!(f(name, "queued"), 400.0, "{report:#}");
        assert_eq!(f(name, "jobs_completed"), 400.0, "{report:#}");
        assert_eq!(f(name, "jobs_failed"), 0.0, "{report:#}");
        assert_eq!(f(name, "errors"), 0.0, "{report:#}");
        assert!(f(name, "batch_spend_per_1k_usd") > 0.0, "{report:#}");
        assert_eq!(
            system(&report["phases"][0], name)["traffic"]["batch"],
            100.0,
            "{report:#}"
        );
    }
    // Roomy, a job is sent at once and takes its service time; narrow, jobs wait their turn.
    assert!(f("roomy", "job_p50_ms") < 400.0, "{report:#}");
    assert!(
        f("narrow", "job_p50_ms") > f("roomy", "job_p50_ms") * 5.0,
        "{report:#}"
    );
    assert!(
        f("narrow", "queue_depth_max") > f("roomy", "queue_depth_max") + 50.0,
        "{report:#}"
    );
    // The baselines send the same requests straight to a pool: nothing queued.
    assert_eq!(f("round-robin", "queued"), 0.0, "{report:#}");
}

#[test]
fn a_utilisation_ceiling_holds_jobs_back_while_real_time_traffic_fills_the_pool() {
    // Standard requests can never meet a 1 ms deadline: queued for the GPU pool, where
    // real-time traffic keeps ~40 of its 128 slots busy.
    let policy = switchyard::fleet_faults::POLICY.replace(
        "standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu], on_slo_miss: fastest }",
        "standard: { deadline: 1ms, weight: 0.3, pools: [gpu], on_slo_miss: queue }",
    );
    let open = with_queue(&policy, "");
    let ceiling = with_queue(&policy, ", pools: { gpu: { max_utilisation: 0.2 } }");
    let report = simulate_side_by_side(
        "phases: [{ duration: 5s, rate: 1000 }]\nregions: { us: 1 }\ntiers: [{ name: realtime, share: 95, deadline: 150ms, big_model: 100 }, { name: standard, share: 5, deadline: 60s, big_model: 100 }]\n",
        &[("open", &open), ("ceiling", &ceiling)],
    );
    let f = |name: &str, field: &str| job_figure(&report, name, field);
    for name in ["open", "ceiling"] {
        assert!(f(name, "queued") > 200.0, "{report:#}");
        assert_eq!(f(name, "jobs_completed"), f(name, "queued"), "{report:#}");
    }
    // Without a ceiling a job goes at once; under 20% of 128 slots the real-time traffic
    // alone is over the ceiling, so jobs wait until it ends.
    assert!(f("open", "job_p50_ms") < 200.0, "{report:#}");
    assert!(f("ceiling", "job_p50_ms") > 1000.0, "{report:#}");
    assert!(
        f("ceiling", "queue_depth_max") > f("open", "queue_depth_max"),
        "{report:#}"
    );
}

#[test]
fn jobs_outlive_an_endpoint_outage_and_fail_when_it_never_ends() {
    let policy = with_queue(&hosted_gpu(switchyard::fleet_faults::POLICY), "");
    let outage = |until: &str| {
        let workload = format!("phases: [{{ duration: 4s, rate: 20 }}]\nregions: {{ us: 1 }}\ntiers: [{{ name: batch, share: 1, deadline: 60s, big_model: 100 }}]\nfaults:\n  - {{ pool: batch, endpoint: 0, down: true, from: 0s, to: {until} }}\n");
        simulate_side_by_side(&workload, &[("queued", &policy)])
    };
    // Down for 2 s: the refused jobs back off (0.5 s, 1 s, 2 s, ...) and are sent again
    // after it ends. (While the endpoint is known to be down, the policy sends the batch
    // tier to the GPU pool instead: those requests are not queued.)
    let report = outage("2s");
    let f = |field: &str| job_figure(&report, "queued", field);
    assert!(f("queued") > 10.0, "{report:#}");
    assert_eq!(f("jobs_completed"), f("queued"), "{report:#}");
    assert_eq!(f("jobs_failed"), 0.0, "{report:#}");
    assert!(f("job_p99_ms") > 1000.0, "{report:#}");
    // Down for good: each job fails after `queue.max_attempts` (5).
    let report = outage("1h");
    let f = |field: &str| job_figure(&report, "queued", field);
    assert!(f("queued") > 0.0, "{report:#}");
    assert_eq!(f("jobs_failed"), f("queued"), "{report:#}");
    assert_eq!(f("jobs_completed"), 0.0, "{report:#}");
    assert_eq!(f("batch_spend_per_1k_usd"), 0.0, "{report:#}");
}

#[test]
fn a_hedges_losing_attempt_is_cut_short_and_frees_its_server() {
    let policy = switchyard::fleet_faults::POLICY;
    let hedged = policy.replace(
        "realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu], on_slo_miss: fastest }",
        "realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu], on_slo_miss: fastest, hedge_after: 2 }",
    );
    // `STALLS` at four times the rate, so that utilisation (to 0.1%) shows the difference.
    let stalls = "phases: [{ duration: 10s, rate: 200 }]\nregions: { us: 1 }\ntiers: [{ name: realtime, share: 1, deadline: 150ms, big_model: 100 }]\nfaults:\n  - { pool: gpu, slower: 10, share: 1.5, from: 0s, to: 10s }\n";
    let report = simulate_side_by_side(stalls, &[("plain", policy), ("hedged", &hedged)]);
    let phase = &report["phases"][0];
    let (p, h) = (system(phase, "plain"), system(phase, "hedged"));
    let gpu = |s: &Value| s["utilisation"]["gpu"].as_f64().unwrap_or(-1.0);
    // The stalled attempts that lose are cut when the hedge answers.
    assert!(h["hedges_cut"].as_u64().unwrap_or(0) > 0, "{phase:#}");
    assert_eq!(p["hedges_cut"], 0, "{phase:#}");
    // Hedged, the GPU pool serves every request plus the hedges, yet is less busy than
    // without hedging: a loser running to its end (a stall of ~450 ms) would make it busier.
    assert!(gpu(h) > 0.0 && gpu(h) < gpu(p), "{phase:#}");
}

/// Streamed requests in simulation are judged as the gateway judges them: on their first
/// token where the tier has a TTFT objective. A 30 ms tier from the US: the GPU pool's whole
/// answer (40-50 ms + 5 ms) misses it, its first token (a tenth of that) meets it.
#[test]
fn streams_are_judged_on_their_first_token_in_simulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("chat.yaml");
    std::fs::write(
        &policy,
        switchyard::fleet_faults::POLICY.replace(
            "  batch: { deadline: 30s,",
            "  chat: { deadline: 30ms, ttft: 30ms, weight: 0.5, pools: [gpu], on_slo_miss: fastest }\n  batch: { deadline: 30s,",
        ),
    )
    .expect("write");
    let workload = |ttft: &str| {
        let path = dir.path().join(format!("streams{}.yaml", ttft.len()));
        std::fs::write(
            &path,
            format!(
                "phases: [ {{ name: one, duration: 5s, rate: 50 }} ]\nregions: {{ us: 1 }}\ntiers:\n  - {{ name: chat, share: 1, deadline: 30ms, streamed: 100{ttft} }}\nfirst_token: {{ gpu: 0.1 }}\n"
            ),
        )
        .expect("write");
        path
    };
    let report = |path: &std::path::Path| {
        json(&run(&[
            "simulate",
            "--workload",
            path.to_str().unwrap_or_default(),
            "--policy",
            policy.to_str().unwrap_or_default(),
            "--json",
        ]))
    };
    let on_first_token = report(&workload(", ttft: 30ms"));
    let phase = &on_first_token["phases"][0];
    let chat = system(phase, "chat");
    assert_eq!(chat["tiers"][0]["slo_attainment"], 100.0, "{chat:#}");
    let streams = &chat["streams"][0];
    assert_eq!(streams["tier"], "chat", "{chat:#}");
    assert_eq!(streams["requests"], 250, "{chat:#}");
    let p99 = streams["ttft_p99_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(p99 < 15.0, "{chat:#}");
    // The optimum judges them the same way.
    assert_eq!(
        system(phase, "optimum")["tiers"][0]["slo_attainment"],
        100.0,
        "{phase:#}"
    );
    // The same streams judged on their last byte all miss 30 ms.
    let on_last_byte = report(&workload(""));
    let chat = system(&on_last_byte["phases"][0], "chat");
    assert_eq!(chat["tiers"][0]["slo_attainment"], 0.0, "{chat:#}");
}
