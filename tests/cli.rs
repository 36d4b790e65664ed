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
    let (code, out, err) = run_cli(
        &["demo", "--once", "--free-ports", "--requests", "240"],
        &repo_root(),
    );
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

/// `demo --free-ports` needs none of the demo's fixed ports: while 127.0.0.1:8080 (its
/// gateway's), 9090 (its admin listener's) and 9101 (its first mock's) are held, here or by
/// another program (a demo someone is running), it still starts and routes its traffic, and
/// nothing of it connects to the ports this test holds.
#[test]
fn the_demo_on_free_ports_runs_while_its_fixed_ports_are_taken() {
    let held: Vec<std::net::TcpListener> = ["127.0.0.1:8080", "127.0.0.1:9090", "127.0.0.1:9101"]
        .into_iter()
        .filter_map(|addr| std::net::TcpListener::bind(addr).ok())
        .collect();
    for l in &held {
        l.set_nonblocking(true).unwrap();
    }
    let (code, out, err) = run_cli(
        &["demo", "--once", "--free-ports", "--requests", "60"],
        &repo_root(),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for needle in ["realtime", "edge-eu", "gpu-central", "GPU pool alone"] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    for l in &held {
        let taken = l.accept().map(|(_, peer)| peer);
        assert!(
            matches!(&taken, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{:?} got a connection: {taken:?}",
            l.local_addr()
        );
    }
}

/// `switchyard demo --policy FILE` serves that file and watches it like `run`: an edit is
/// served without a restart, `POST /admin/reload` works, and the demo's job queue lives in
/// its own per-process directory (never a path shared with another demo or a test).
#[tokio::test]
async fn the_demo_serves_a_policy_file_and_reloads_it_when_edited() {
    use switchyard_testkit::client::{self, Request};
    let dir = tempfile::tempdir().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let policy = |admin| async move {
        let r = client::send(admin, &Request::get("/admin/policy"))
            .await
            .ok()?;
        if r.status == 200 {
            r.json().ok()
        } else {
            None
        }
    };
    // Ports are picked free then released, so another test may take one first; the demo
    // then refuses to start ("address in use") and is started again on fresh ports.
    let mut attempt = 0;
    let (text, path, admin, queue_dir, child, first) = loop {
        attempt += 1;
        let mut text = demo_text();
        for fixed in [
            "127.0.0.1:8080",
            "127.0.0.1:9090",
            "127.0.0.1:9101",
            "127.0.0.1:9102",
            "127.0.0.1:9201",
            "127.0.0.1:9202",
            "127.0.0.1:9301",
        ] {
            assert!(text.contains(fixed), "{fixed} not in demo.yaml");
            text = text.replace(fixed, &free_addr().to_string());
        }
        let admin: std::net::SocketAddr = {
            let at = text.find("admin: ").unwrap() + "admin: ".len();
            text[at..].lines().next().unwrap().trim().parse().unwrap()
        };
        let path = dir.path().join("my-demo.yaml");
        std::fs::write(&path, &text).unwrap();
        let out = std::fs::File::create(dir.path().join("out.txt")).unwrap();
        let err = std::fs::File::create(dir.path().join("err.txt")).unwrap();
        let child = std::process::Command::new(binary())
            .args(["demo", "--requests", "12", "--policy"])
            .arg(&path)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let pid = child.id();
        let queue_dir = std::env::temp_dir().join(format!("switchyard-demo-{pid}"));
        let mut child = Kill(child);
        // Bounded waits, no timing assertions: start-up, then the edit being picked up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let first = loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                let err = std::fs::read_to_string(dir.path().join("err.txt")).unwrap_or_default();
                if attempt < 5 && err.contains("in use") {
                    break None;
                }
                panic!("demo exited early ({status}):\n{err}");
            }
            if let Some(v) = policy(admin).await {
                break Some(v);
            }
            assert!(std::time::Instant::now() < deadline, "demo did not start");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if let Some(first) = first {
            break (text, path, admin, queue_dir, child, first);
        }
        let _ = std::fs::remove_dir_all(&queue_dir);
    };
    assert_eq!(first["source"], path.display().to_string(), "{first}");
    assert_eq!(first["reload_triggers"]["file_watch"], true, "{first}");
    assert!(
        queue_dir.join("queue.redb").exists(),
        "the demo's queue is not in its per-process directory {}",
        queue_dir.display()
    );

    let edited = text.replacen("weight: 0.8", "weight: 0.7", 1);
    std::fs::write(&path, &edited).unwrap();
    let want = switchyard_gateway::policy::compile::content_version(&edited);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = policy(admin).await.unwrap_or_default();
        if v["version"] == want.as_str() {
            assert_eq!(v["last_reload"]["trigger"], "file", "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was not served: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The admin reload works too (no "embedded policy, no file to reload").
    let r = client::send(admin, &Request::post("/admin/reload", b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The printed hints name the file being served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap_or_default();
        if out.contains(&format!("edit {}", path.display())) {
            assert!(out.contains("watch the status page"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no hints:\n{out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&queue_dir);
}
