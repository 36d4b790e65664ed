//! Running `switchyard` report commands (`simulate`, `tune`, `demo --scenario`) as child
//! processes and reading their JSON reports (phases → systems → tiers).

use super::binary;
use serde_json::Value;
use std::process::{Command, Output};

/// Run `switchyard ARGS` to completion (errors only on stderr).
pub fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard")
}

/// The JSON report a successful run printed.
pub fn json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The system named `name` in one phase of a report.
pub fn system<'a>(phase: &'a Value, name: &str) -> &'a Value {
    phase["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == name))
        .unwrap_or_else(|| panic!("no {name} in {phase}"))
}

/// A system's real-time tier SLO attainment, percent (−1 when absent).
pub fn realtime(sys: &Value) -> f64 {
    sys["tiers"][0]["slo_attainment"].as_f64().unwrap_or(-1.0)
}

/// A system's spend per 1k requests, USD (−1 when absent).
pub fn spend(sys: &Value) -> f64 {
    sys["spend_per_1k_usd"].as_f64().unwrap_or(-1.0)
}
