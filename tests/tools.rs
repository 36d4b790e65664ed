//! The operator's toolkit: `check` (errors and warnings, JSON for CI), `explain` offline,
//! `diff` between policies, `schema` and the worked example policies, each of which must do
//! what its comments promise.

mod support;

use serde_json::Value;
use std::path::Path;
use support::*;
use switchyard::tools::{self, ExplainArgs};

const EXAMPLES: &[&str] = &[
    "latency-first.yaml",
    "cost-saver.yaml",
    "eu-residency.yaml",
    "gpu-outage.yaml",
];

fn shipped_policies() -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(repo_root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

/// The decision for a region / tier / model against an example policy, in-process.
fn decide(policy: &str, region: &str, tier: &str, model: &str) -> Value {
    let table = tools::load(&repo_root().join("policies").join(policy)).unwrap();
    let args = ExplainArgs {
        region: Some(region.into()),
        tier: Some(tier.into()),
        model: model.into(),
        ..ExplainArgs::default()
    };
    tools::explain(&table, &args).unwrap()
}

fn pool(v: &Value) -> Option<&str> {
    v["decision"]["pool"].as_str()
}

#[test]
fn every_subcommand_has_help() {
    for cmd in ["run", "check", "explain", "diff", "schema", "demo"] {
        let (code, out, err) = run_cli(&[cmd, "--help"], &repo_root());
        assert_eq!(code, 0, "{cmd} --help: {err}");
        assert!(out.contains("Usage: switchyard"), "{cmd}: {out}");
    }
}

#[test]
fn worked_examples_pass_check_and_reference_the_schema() {
    let mut args = vec!["check".to_string()];
    args.extend(EXAMPLES.iter().map(|e| format!("policies/{e}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&args, &repo_root());
    assert_eq!(code, 0, "{out}{err}");
    for p in shipped_policies() {
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("# yaml-language-server: $schema=./schema.json"),
            "{} must reference the schema on its first line",
            p.display()
        );
    }
}

#[test]
fn check_reports_warnings_without_failing_and_json_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/latency-first.yaml")).unwrap();
    // A batch pool no tier allows, a route shadowed by an earlier prefix, and a tier whose
    // deadline nothing can meet.
    let text = text
        .replace(
            "pools: [batch, gpu], on_slo_miss: shed",
            "pools: [gpu], on_slo_miss: shed",
        )
        .replace(
            "routes:\n",
            "routes:\n  - { name: all, match: /v*, protocol: openai, tier: standard }\n",
        )
        .replace("deadline: 100ms, weight: 1.0", "deadline: 5ms, weight: 1.0");
    let path = dir.path().join("warn.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, out, err) = run_cli(&["check", path.to_str().unwrap()], &repo_root());
    assert_eq!(code, 0, "warnings must not fail check: {out}{err}");
    for needle in [
        "warning: pool `batch-us`: no tier allows batch pools",
        "warning: route `chat` is never matched: route `all` comes first",
        "warning: tier `realtime`: no pool meets the 5 ms deadline from every region",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Warnings carry a location.
    let line = text
        .lines()
        .position(|l| l.contains("name: batch-us"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("warn.yaml:{line}:")), "{err}");

    let (code, out, _) = run_cli(
        &[
            "check",
            "--format",
            "json",
            path.to_str().unwrap(),
            "policies/nope.yaml",
        ],
        &repo_root(),
    );
    assert_eq!(code, 1, "a missing file is an error");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["files"][0]["ok"], true);
    assert!(
        v["files"][0]["warnings"].as_array().unwrap().len() >= 3,
        "{v}"
    );
    assert!(
        v["files"][0]["warnings"][0]["line"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["files"][1]["ok"], false);
    assert!(v["files"][1]["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read"));

    // Errors in JSON carry line and column too.
    let broken = text.replacen("weight: 1.0", "wieght: 1.0", 1);
    std::fs::write(&path, broken).unwrap();
    let (code, out, _) = run_cli(
        &["check", "--format", "json", path.to_str().unwrap()],
        &repo_root(),
    );
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    let e = &v["files"][0]["errors"][0];
    assert!(
        e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(e["message"].as_str().unwrap().contains("wieght"), "{v}");
}

#[test]
fn explain_offline_prints_class_candidates_and_choice() {
    let (code, out, err) = run_cli(
        &[
            "explain",
            "--policy",
            "policies/latency-first.yaml",
            "--region",
            "eu",
            "--tier",
            "realtime",
            "--model",
            "llama-3-8b",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("region=eu"), "{out}");
    assert!(out.contains("tier=realtime"), "{out}");
    assert!(out.contains("▶ gpu-eu"), "{out}");
    assert!(out.contains("edge-eu") && out.contains("30.0 ms"), "{out}");
    assert!(out.contains("decision: gpu-eu (meets_deadline)"), "{out}");

    // By client address (the embedded GeoIP test DB maps 203.0.113.0/24 to Asia), with a
    // header, as JSON.
    let (code, out, err) = run_cli(
        &[
            "explain",
            "--policy",
            "policies/latency-first.yaml",
            "--client-ip",
            "203.0.113.30",
            "--model",
            "bert-base",
            "-H",
            "x-deadline-ms: 50",
            "--format",
            "json",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["class"]["region"], "ap");
    assert_eq!(v["class"]["deadline_ms"], 50);
    assert_eq!(v["decision"]["pool"], "edge-ap");

    let (code, _, err) = run_cli(
        &[
            "explain",
            "--policy",
            "policies/latency-first.yaml",
            "--region",
            "mars",
            "--model",
            "x",
        ],
        &repo_root(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown region `mars`"), "{err}");
}

#[test]
fn latency_first_prefers_the_fastest_pool_over_the_cheapest() {
    let v = decide("latency-first.yaml", "eu", "realtime", "llama-3-8b");
    assert_eq!(pool(&v), Some("gpu-eu"), "{v:#}");
    let v = decide("latency-first.yaml", "us", "realtime", "bert-base");
    assert_eq!(pool(&v), Some("gpu-us"));
    // Nothing reaches Asia within 100 ms with a GPU: the fastest anyway.
    let v = decide("latency-first.yaml", "ap", "realtime", "mixtral-8x22b");
    assert_eq!(pool(&v), Some("gpu-us"));
    assert_eq!(v["decision"]["reason"], "fallback_fastest");
}

#[test]
fn cost_saver_sends_tolerant_traffic_to_the_cheapest_pool() {
    let v = decide("cost-saver.yaml", "eu", "standard", "llama-3-8b");
    assert_eq!(pool(&v), Some("edge-us"), "{v:#}");
    let v = decide("cost-saver.yaml", "eu", "standard", "mixtral-8x22b");
    assert_eq!(pool(&v), Some("batch-us"));
    // Realtime still meets its deadline.
    let v = decide("cost-saver.yaml", "eu", "realtime", "llama-3-8b");
    assert_eq!(v["decision"]["reason"], "meets_deadline");
}

#[test]
fn eu_residency_never_sends_eu_clients_abroad() {
    let table = tools::load(&repo_root().join("policies/eu-residency.yaml")).unwrap();
    let eu_pools: Vec<&str> = table
        .pools
        .iter()
        .filter(|p| table.regions[p.region as usize] == "eu")
        .map(|p| p.name.as_str())
        .collect();
    for tier in ["realtime", "standard", "batch"] {
        for model in [
            "llama-3-8b",
            "llama-3-70b",
            "bert-base",
            "all-minilm-l6",
            "mixtral-8x22b",
            "other",
        ] {
            let v = decide("eu-residency.yaml", "eu", tier, model);
            if let Some(p) = pool(&v) {
                assert!(eu_pools.contains(&p), "{tier}/{model} went to {p}");
            }
            // Every pool abroad is excluded: for residency, unless an earlier rule (kind
            // not allowed for the tier) already excluded it.
            for c in v["candidates"].as_array().unwrap() {
                if c["region"] != "eu" {
                    assert!(c["excluded"].is_string(), "{tier}/{model}: {c}");
                    assert!(
                        c["excluded"] == "residency"
                            || c["excluded"] == "kind_not_allowed_for_tier",
                        "{c}"
                    );
                }
            }
        }
    }
    assert_eq!(
        pool(&decide("eu-residency.yaml", "eu", "standard", "llama-3-8b")),
        Some("edge-eu")
    );
    // The only batch pool is in the US: EU batch work uses the EU GPU pool.
    assert_eq!(
        pool(&decide("eu-residency.yaml", "eu", "batch", "llama-3-8b")),
        Some("gpu-eu")
    );
    // A model only the US hosts: refused, never sent abroad.
    let v = decide("eu-residency.yaml", "eu", "realtime", "mixtral-8x22b");
    assert_eq!(pool(&v), None);
    assert_eq!(v["decision"]["reason"], "no_candidate");
    assert_eq!(v["class"]["residency"], serde_json::json!(["eu"]));
    // The rule is what keeps it home: US clients get it, and without the rule EU clients'
    // cheap standard traffic would cross the Atlantic.
    assert_eq!(
        pool(&decide(
            "eu-residency.yaml",
            "us",
            "realtime",
            "mixtral-8x22b"
        )),
        Some("gpu-us")
    );
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/eu-residency.yaml")).unwrap();
    let without = text.replace(", residency: [eu] }", " }");
    assert_ne!(without, text);
    std::fs::write(dir.path().join("p.yaml"), without).unwrap();
    let table = tools::load(&dir.path().join("p.yaml")).unwrap();
    let args = ExplainArgs {
        region: Some("eu".into()),
        model: "llama-3-8b".into(),
        ..ExplainArgs::default()
    };
    assert_eq!(
        tools::explain(&table, &args).unwrap()["decision"]["pool"],
        "edge-us"
    );
}

#[test]
fn residency_naming_an_unknown_region_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/eu-residency.yaml")).unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        text.replace("residency: [eu]", "residency: [eu, mars]"),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()], &repo_root());
    assert_eq!(code, 1);
    assert!(err.contains("residency: unknown region `mars`"), "{err}");
    std::fs::write(&path, text.replace("residency: [eu]", "residency: []")).unwrap();
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()], &repo_root());
    assert_eq!(code, 1);
    assert!(err.contains("would refuse every request"), "{err}");
}

#[test]
fn gpu_outage_uses_edge_and_batch_only() {
    let table = tools::load(&repo_root().join("policies/gpu-outage.yaml")).unwrap();
    assert!(table.pools.iter().all(|p| p.kind.as_str() != "gpu"));
    assert_eq!(
        pool(&decide("gpu-outage.yaml", "eu", "realtime", "llama-3-8b")),
        Some("edge-eu")
    );
    assert_eq!(
        pool(&decide(
            "gpu-outage.yaml",
            "us",
            "standard",
            "mixtral-8x22b"
        )),
        Some("batch-us")
    );
    let v = decide("gpu-outage.yaml", "us", "realtime", "mixtral-8x22b");
    assert_eq!(v["decision"]["reason"], "shed", "{v:#}");
}

#[test]
fn diff_reports_changed_decisions_between_two_examples() {
    let (code, out, err) = run_cli(
        &[
            "diff",
            "policies/latency-first.yaml",
            "policies/cost-saver.yaml",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 regions × 3 tiers × 4 models = 36 decisions"),
        "{out}"
    );
    assert!(
        out.contains("eu/standard/llama-3-8b: edge-eu [meets-deadline, 30.0 ms, $0.000020] → edge-us [meets-deadline, 115.0 ms, $0.000010]; latency +85.0 ms, cost -0.000010 USD (-50%)"),
        "{out}"
    );
    assert!(out.contains("eu/standard/(other): gpu-eu"), "{out}");
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("summary: 14 of 36 decisions change"),
        "{summary}"
    );

    let (code, out, _) = run_cli(
        &[
            "diff",
            "--format",
            "json",
            "policies/latency-first.yaml",
            "policies/gpu-outage.yaml",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert!(changes
        .iter()
        .all(|c| !c["new"]["pool"].as_str().unwrap_or("").starts_with("gpu")));
    assert!(changes.iter().any(|c| c["region"] == "us"
        && c["tier"] == "realtime"
        && c["model"] == "(other)"
        && c["new"]["reason"] == "slo-miss-shed"));

    // A policy against itself changes nothing.
    let (_, out, _) = run_cli(
        &["diff", "policies/demo.yaml", "policies/demo.yaml"],
        &repo_root(),
    );
    assert!(out.contains("summary: 0 of"), "{out}");
}

fn schema() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("policies/schema.json")).unwrap(),
    )
    .unwrap()
}

fn yaml_as_json(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap()
}

#[test]
fn schema_command_prints_the_shipped_schema() {
    let (code, out, _) = run_cli(&["schema"], &repo_root());
    assert_eq!(code, 0);
    let shipped = std::fs::read_to_string(repo_root().join("policies/schema.json")).unwrap();
    assert_eq!(
        out, shipped,
        "policies/schema.json is stale: run `switchyard schema > policies/schema.json`"
    );
    assert_eq!(
        schema()["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_shipped_policy_validates_against_the_schema() {
    let schema = schema();
    let policies = shipped_policies();
    assert!(policies.len() >= 6, "{policies:?}");
    for p in policies {
        let v = yaml_as_json(&std::fs::read_to_string(&p).unwrap());
        let errors = json_schema::validate(&schema, &v);
        assert!(errors.is_empty(), "{}: {errors:#?}", p.display());
    }
}

#[test]
fn schema_rejects_what_the_gateway_rejects() {
    let schema = schema();
    let text = std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap();
    // Sanity: the untouched policy passes, so each edit below is what fails.
    assert!(json_schema::validate(&schema, &yaml_as_json(&text)).is_empty());
    for (what, edited, needle) in [
        (
            "unknown top-level field",
            format!("{text}\nextras: 1\n"),
            "unknown property `extras`",
        ),
        (
            "unknown tier field",
            text.replacen("    weight: 0.8", "    wieght: 0.8", 1),
            "unknown property `wieght`",
        ),
        (
            "unknown pool field",
            text.replacen("    kind: edge", "    kind: edge\n    colour: blue", 1),
            "unknown property `colour`",
        ),
        (
            "bad enum",
            text.replacen("kind: batch", "kind: tpu", 1),
            "is not one of",
        ),
        (
            "weight out of range",
            text.replacen("weight: 0.8", "weight: 1.8", 1),
            "above the maximum",
        ),
        (
            "missing required",
            text.replacen("    service_time: 40ms\n", "", 1),
            "missing required property `service_time`",
        ),
        (
            "a duration without a known unit",
            text.replacen("deadline: 150ms", "deadline: 150 msec", 1),
            "does not match the pattern",
        ),
        (
            "a size without a known unit",
            text.replacen("max_body: 8MiB", "max_body: 8 megs", 1),
            "does not match the pattern",
        ),
        (
            "an upper-case key digest",
            text.replacen("key_sha256: 8649cdebee", "key_sha256: 8649CDEBEE", 1),
            "does not match the pattern",
        ),
        (
            "a lower-case continent",
            text.replacen("continents: [EU, AF]", "continents: [EU, af]", 1),
            "does not match the pattern",
        ),
        (
            "a route path without its slash",
            text.replacen("match: /v1/embeddings", "match: v1/embeddings", 1),
            "does not match the pattern",
        ),
        (
            "over budget: neither reject nor a downgrade",
            text.replacen(
                "    tier: ",
                "    limits: { on_budget: refuse }\n    tier: ",
                1,
            ),
            "matches no branch of anyOf",
        ),
    ] {
        let errors = json_schema::validate(&schema, &yaml_as_json(&edited));
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{what}: {errors:?}"
        );
        // …and the gateway rejects the same file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &edited).unwrap();
        assert!(
            tools::load(Path::new(&path)).is_err(),
            "{what}: the gateway accepted it"
        );
    }
}

#[test]
fn schema_accepts_what_the_gateway_accepts() {
    // The other side of the test above: forms the gateway takes that a stricter schema would
    // mark wrong in an editor.
    let schema = schema();
    let text = std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap();
    for (what, edited) in [
        (
            "null sections and fields (an absent Option)",
            format!("{text}\nobserve: ~\nlimits: ~\ngateway_region: ~\n")
                .replacen("cache: { ttl: 1h, scope: shared }", "cache: ~", 1)
                .replacen(
                    "connect_timeout: 500ms",
                    "connect_timeout: 500ms\n  retry_budget: { ratio: 0.1, min_per_second: ~ }",
                    1,
                ),
        ),
        ("a size as a bare number", text.replacen("max_body: 8MiB", "max_body: 8388608", 1)),
        ("a size with a space", text.replacen("max_body: 8MiB", "max_body: 8 MiB", 1)),
        ("a fractional duration", text.replacen("deadline: 150ms", "deadline: .15s", 1)),
        (
            "both endpoint forms",
            text.replacen(
                "endpoints: [127.0.0.1:9201, 127.0.0.1:9202]",
                "endpoints: [127.0.0.1:9201, { http: 127.0.0.1:9202 }]",
                1,
            ),
        ),
        (
            "over budget: a downgrade",
            text.replacen(
                "    tier: realtime",
                "    tier: realtime\n    limits: { spend_per_day_usd: 5, on_budget: { downgrade: batch } }",
                1,
            ),
        ),
    ] {
        let errors = json_schema::validate(&schema, &yaml_as_json(&edited));
        assert!(errors.is_empty(), "{what}: {errors:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &edited).unwrap();
        if let Err(e) = tools::load(Path::new(&path)) {
            panic!("{what}: the gateway refused it: {e}");
        }
    }
}

/// The schema's patterns for durations and sizes against the gateway's own parsers: every
/// string a parser takes matches (an editor never marks a good policy wrong), and the shapes
/// it refuses do not.
#[test]
fn schema_patterns_agree_with_the_parsers() {
    use switchyard_gateway::policy::compile::{parse_duration, parse_size};
    use switchyard_gateway::policy::schema::{DURATION_PATTERN, SIZE_PATTERN};
    let duration = regex::Regex::new(DURATION_PATTERN).unwrap();
    let size = regex::Regex::new(SIZE_PATTERN).unwrap();
    let numbers = [
        "0", "1", "150", "1.5", "1.", ".5", ".", "1.2.3", "", "-1", "+1", "1e3", " 7 ",
    ];
    let units = [
        "", "us", "µs", "ms", "s", "m", "h", "d", "MS", "sec", " ms", "ms ", "B", "KB", "KiB",
        "MB", "MiB", "GB", "GiB", "TiB", "kb", " MiB",
    ];
    for n in numbers {
        for u in units {
            let text = format!("{n}{u}");
            for (what, re, parsed) in [
                ("duration", &duration, parse_duration(&text).is_some()),
                ("size", &size, parse_size(&text).is_some()),
            ] {
                assert_eq!(
                    re.is_match(&text),
                    parsed,
                    "{what} {text:?}: the parser says {parsed}"
                );
            }
        }
    }
}

/// Every object in `value` that the schema closes (`additionalProperties: false`), as a JSON
/// pointer and the property names the schema allows there.
fn closed_objects(schema: &Value, value: &Value, at: String, out: &mut Vec<(String, Vec<String>)>) {
    // An `Option` of an enum, or an untagged enum (an endpoint): the branch the value takes.
    let schema = json_schema::branch(schema, value);
    match value {
        Value::Object(obj) => {
            let props = schema["properties"].as_object();
            if schema["additionalProperties"] == false {
                let mut names: Vec<String> = props
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                names.sort();
                out.push((at.clone(), names));
            }
            for (k, child) in obj {
                let sub = props
                    .and_then(|p| p.get(k))
                    .unwrap_or(&schema["additionalProperties"]);
                closed_objects(sub, child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                closed_objects(&schema["items"], item, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn schema_lists_exactly_the_fields_the_gateway_accepts() {
    // For every closed object in the demo policy, add an unknown field and let the gateway's
    // own parser say which fields it expected there: that list must be the schema's. This is
    // what catches a field added to `policy::raw` but not to the schema.
    let schema = schema();
    let demo =
        yaml_as_json(&std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap());
    let mut objects = Vec::new();
    closed_objects(&schema, &demo, String::new(), &mut objects);
    assert!(objects.len() >= 10, "{objects:?}");
    for (pointer, mut allowed) in objects {
        let mut edited = demo.clone();
        edited
            .pointer_mut(&pointer)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert("zz_not_a_field".into(), Value::from(1));
        // JSON is YAML.
        let text = serde_json::to_string_pretty(&edited).unwrap();
        let err = switchyard_gateway::policy::parse(&text, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `zz_not_a_field`"),
            "{pointer}: {err}"
        );
        let expected = err.split("expected").nth(1).unwrap_or("");
        let mut accepted: Vec<String> = expected
            .trim()
            .trim_start_matches("one of")
            .split([',', ' '])
            .map(|w| w.trim().trim_matches('`'))
            .filter(|w| !w.is_empty() && *w != "or")
            .map(str::to_string)
            .collect();
        accepted.sort();
        allowed.sort();
        assert_eq!(
            accepted, allowed,
            "at {pointer:?} the gateway accepts {accepted:?}, the schema {allowed:?}"
        );
    }
}

#[test]
fn check_warns_about_a_hosted_pool_that_would_get_the_clients_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo_root().join("policies/latency-first.yaml")).unwrap();
    let hosted = |headers: &str| {
        format!(
            "  - {{ name: hosted, kind: gpu, region: us, endpoints: [\"https://api.example.com\"], models: [\"*\"], concurrency: 8, service_time: 50ms, price: {{ per_request: 0.01 }}{headers} }}\n"
        )
    };
    let warning = "pool `hosted`: clients' credential headers";
    let check = |pool: String, extra: &str| {
        let text = base.replace("pools:\n", &format!("pools:\n{pool}")) + extra;
        let path = dir.path().join("hosted.yaml");
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = run_cli(&["check", path.to_str().unwrap()], &repo_root());
        assert_eq!(code, 0, "{out}{err}");
        err
    };
    // Nothing of its own: the clients' keys would reach the provider.
    let err = check(hosted(""), "");
    assert!(err.contains(warning), "{err}");
    // A credential of its own (any of the names, or a value from the environment), or
    // `auth: required` (the gateway consumes the tenant key): no warning.
    for headers in [
        ", headers: { authorization: \"Bearer ${OPENAI_KEY:-x}\" }",
        ", headers: { api-key: \"${AZURE_KEY:-x}\" }",
        ", headers: { x-goog-api-key: \"${GOOGLE_KEY:-x}\" }",
    ] {
        let err = check(hosted(headers), "");
        assert!(!err.contains(warning), "{headers}: {err}");
    }
    let err = check(hosted(""), "auth: required\n");
    assert!(!err.contains(warning), "{err}");
}
