//! The operator's command line: `switchyard check` on good and broken policies, start-up
//! errors that must be clear rather than panics, and the demo end to end.

mod support;

use support::*;

#[test]
fn shipped_policies_pass_check() {
    let root = repo_root();
    let (code, out, err) = run_cli(
        &["check", "policies/default.yaml", "policies/demo.yaml"],
        &root,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("policies/default.yaml: ok"), "{out}");
    assert!(out.contains("policies/demo.yaml: ok"), "{out}");
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in policy"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn demo_text() -> String {
    std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap()
}

fn broken(edit: impl Fn(String) -> String) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

#[test]
fn check_reports_syntax_and_type_errors_with_line_and_column() {
    // Unknown field (a typo) in the first tier.
    let (line, col) = position(&demo_text(), "weight: 0.8");
    let (_d, path) = broken(|t| t.replacen("    weight: 0.8", "    wieght: 0.8", 1));
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{path}:{line}:{col}: unknown field `wieght`")),
        "{err}"
    );

    let (line, col) = position(&demo_text(), "32\n");
    let (_d, path) = broken(|t| t.replacen("concurrency: 32", "concurrency: lots", 1));
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{path}:{line}:{col}:")), "{err}");

    let (_d, path) = broken(|t| t.replacen("rtt_ms:", "rtt_ms: [", 1));
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{path}:")), "{err}");
}

#[test]
fn check_reports_every_semantic_error_at_its_place() {
    let edit = |t: String| {
        t.replacen("tier: realtime", "tier: platinum", 1)
            .replacen("region: eu\n", "region: mars\n", 1)
            .replacen("concurrency: 16", "concurrency: 0", 1)
            .replacen("endpoints: [127.0.0.1:9301]", "endpoints: []", 1)
            .replacen("  ap: { ap: 5 }\n", "", 1)
            .replacen("name: edge-us", "name: edge-eu", 1)
    };
    let text = edit(demo_text());
    let (_d, path) = broken(edit);
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1);
    let (tl, tc) = position(&text, "platinum\n  - name: globex");
    let (rl, rc) = position(&text, "mars\n    endpoints: [127.0.0.1:9101]");
    let tier_at = format!(":{tl}:{tc}: tenant tier: unknown tier `platinum`");
    let region_at = format!(":{rl}:{rc}: pool region: unknown region `mars`");
    for needle in [
        tier_at.as_str(),
        region_at.as_str(),
        "concurrency must be at least 1",
        "`endpoints` is empty",
        "duplicate pool name `edge-eu`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // ap ↔ ap defaults to 0, so dropping that row still leaves every pair defined.
    assert!(
        err.contains("6 error(s)") || err.contains("5 error(s)"),
        "{err}"
    );

    let (_d, path) = broken(|t| t.replacen("  us: { us: 5, ap: 150 }\n", "  us: { us: 5 }\n", 1));
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1);
    assert!(err.contains("rtt_ms: missing pairs: us ↔ ap"), "{err}");

    let (_d, path) = broken(|t| {
        t.replacen("pools: [batch, gpu]", "pools: [batch]", 1)
            .replacen("kind: batch", "kind: gpu", 1)
    });
    let (code, _out, err) = run_cli(&["check", &path], &repo_root());
    assert_eq!(code, 1);
    assert!(
        err.contains("tier `batch` can use pool kinds [batch] but no pool has one"),
        "{err}"
    );
}

#[test]
fn a_missing_or_corrupt_geoip_database_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/demo.yaml")).unwrap();
    let missing = text.replace("database: embedded ", "database: nowhere.mmdb ");
    std::fs::write(dir.path().join("p.yaml"), &missing).unwrap();
    let (code, _out, err) = run_cli(
        &[
            "run",
            "--policy",
            "p.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("geoip.database: cannot read GeoIP database"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(
        dir.path().join("bad.mmdb"),
        b"this is not a MaxMind database",
    )
    .unwrap();
    let corrupt = text.replace("database: embedded ", "database: bad.mmdb ");
    std::fs::write(dir.path().join("p.yaml"), &corrupt).unwrap();
    let (code, _out, err) = run_cli(&["check", "p.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("is not a valid MaxMind DB"), "{err}");
}

#[test]
fn demo_once_routes_mixed_traffic_and_prints_the_table() {
    let (code, out, err) = run_cli(&["demo", "--once", "--requests", "240"], &repo_root());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for needle in [
        "realtime",
        "standard",
        "batch",
        "edge-eu",
        "gpu-central",
        "queued",
        "GPU pool alone",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}
