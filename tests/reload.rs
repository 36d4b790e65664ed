//! Hot reload, end to end: the real binary, real files, real signals. Editing the policy
//! (in place, by rename, by a Kubernetes-style symlink swap), SIGHUP and `POST /admin/reload`
//! all change routing; a broken policy never does; live estimates carry over; and under
//! steady keep-alive traffic, reloading every 200 ms fails no request.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::kubelet::ConfigMapVolume;
use support::*;
use switchyard_gateway::policy::compile::content_version;
use switchyard_testkit::client::{Connection, Request};

const EU: &str = "192.0.2.10";

/// A policy whose only edge pool is `name` on `addr`, plus `extra` YAML.
fn one_pool(name: &str, addr: std::net::SocketAddr, extra: &str) -> String {
    Policy::new()
        .pool(Pool::edge(name).region("eu").endpoint(addr))
        .extra(extra)
        .render()
}

/// `text` padded with a trailing comment to exactly `len` bytes, so that two versions of a
/// policy can have the same size.
fn pad_to(mut text: String, len: usize) -> String {
    assert!(text.len() + 2 <= len, "pad target too small");
    text.push('#');
    while text.len() < len - 1 {
        text.push('x');
    }
    text.push('\n');
    text
}

/// Replace `path` atomically, as editors that save by rename do.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Rewrite `path` in place and put its modification time back, so that its size, inode and
/// mtime are unchanged: invisible to the file watcher, which lets a test prove that
/// another trigger did the reload.
fn write_behind_the_watchers_back(path: &Path, text: &str) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len() as usize, text.len());
    let mtime = before.modified().unwrap();
    // Same length, so no truncation: the size never changes, not even for a moment.
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f.set_modified(mtime).unwrap();
}

async fn route(gw: &Gateway) -> (u16, String, String) {
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-forwarded-for", EU)],
            &chat("llama-3-8b"),
        )
        .await;
    (
        r.status,
        r.header("x-served-by").unwrap_or("").to_string(),
        r.header("x-switchyard-policy-version")
            .unwrap_or("")
            .to_string(),
    )
}

async fn admin_policy(gw: &Gateway) -> Value {
    gw.admin_get("/admin/policy").await.json().unwrap()
}

/// Poll until `f` holds or `within` passes; returns how long it took.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

async fn served_by_within(gw: &Gateway, backend: &str, within: Duration) -> bool {
    eventually(within, || async { route(gw).await.1 == backend })
        .await
        .is_some()
}

#[tokio::test]
async fn editing_the_file_changes_routing_within_two_seconds() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let v1 = one_pool("edge-a", a.addr(), "");
    let v2 = one_pool("edge-b", b.addr(), "");
    let gw = Gateway::start(&v1).await;
    assert_eq!(
        route(&gw).await,
        (200, "edge-a".into(), content_version(&v1))
    );

    // An editor that saves by writing a new file and renaming it over the old one.
    write_by_rename(&gw.policy_path, &v2);
    assert!(
        served_by_within(&gw, "edge-b", Duration::from_secs(2)).await,
        "{}",
        gw.log()
    );
    assert_eq!(route(&gw).await.2, content_version(&v2));
    let p = admin_policy(&gw).await;
    assert_eq!(p["last_reload"]["trigger"], "file");
    assert_eq!(p["reload_triggers"]["file_watch"], true);

    // An in-place write.
    std::fs::write(&gw.policy_path, &v1).unwrap();
    assert!(
        served_by_within(&gw, "edge-a", Duration::from_secs(2)).await,
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn a_kubernetes_configmap_update_is_a_reload_and_a_bad_one_is_not() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let v1 = one_pool("edge-a", a.addr(), "");
    let v2 = one_pool("edge-b", b.addr(), "");
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::create(dir.path(), &v1);
    let path = dir.path().join("policy.yaml");
    let gw = Gateway::start_file(dir, path).await;
    assert_eq!(
        route(&gw).await,
        (200, "edge-a".into(), content_version(&v1))
    );

    // A good update: served within a few seconds, named by its version.
    volume.update(&v2);
    assert!(
        served_by_within(&gw, "edge-b", Duration::from_secs(3)).await,
        "{}",
        gw.log()
    );
    assert_eq!(route(&gw).await.2, content_version(&v2));
    let p = admin_policy(&gw).await;
    assert_eq!(p["version"], content_version(&v2));
    assert_eq!(p["last_reload"]["trigger"], "file");

    // A bad update (a typo, pointing back at edge-a): reported, never applied.
    let broken = one_pool("edge-a", a.addr(), "").replacen(
        "deadline: 150ms, weight: 0.8",
        "deadline: 150ms, wieght: 0.8",
        1,
    );
    volume.update(&broken);
    let rejected = eventually(Duration::from_secs(3), || async {
        !admin_policy(&gw).await["last_error"].is_null()
    })
    .await;
    assert!(rejected.is_some(), "{}", gw.log());
    let p = admin_policy(&gw).await;
    let err = p["last_error"].as_str().unwrap();
    assert!(err.contains("unknown field `wieght`"), "{err}");
    assert_eq!(p["version"], content_version(&v2));
    assert_eq!(p["last_reload"]["ok"], false);
    for _ in 0..5 {
        assert_eq!(
            route(&gw).await,
            (200, "edge-b".into(), content_version(&v2))
        );
    }

    // The next good update clears the error; the old generations are gone from disk.
    volume.update(&v1);
    assert!(
        served_by_within(&gw, "edge-a", Duration::from_secs(3)).await,
        "{}",
        gw.log()
    );
    assert!(admin_policy(&gw).await["last_error"].is_null());
    assert_eq!(volume.generations_on_disk(), 1);
}

#[tokio::test]
async fn a_broken_edit_is_rejected_and_routing_is_unchanged() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let good = one_pool("edge-a", a.addr(), "");
    let gw = Gateway::start(&good).await;
    assert_eq!(route(&gw).await.1, "edge-a");

    // Points at edge-b, but with a typo: must not be applied, not even partly.
    let broken = one_pool("edge-b", b.addr(), "").replacen(
        "deadline: 150ms, weight: 0.8",
        "deadline: 150ms, wieght: 0.8",
        1,
    );
    let typo_line = broken.lines().position(|l| l.contains("wieght")).unwrap() + 1;
    write_by_rename(&gw.policy_path, &broken);
    let rejected = eventually(Duration::from_secs(2), || async {
        !admin_policy(&gw).await["last_error"].is_null()
    })
    .await;
    assert!(rejected.is_some(), "{}", gw.log());

    let p = admin_policy(&gw).await;
    let err = p["last_error"].as_str().unwrap();
    assert!(err.contains(&format!("policy.yaml:{typo_line}:")), "{err}");
    assert!(err.contains("unknown field `wieght`"), "{err}");
    assert_eq!(p["version"], content_version(&good));
    assert_eq!(p["last_reload"]["ok"], false);
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            "switchyard_policy_reloads_total",
            &[("result", "error")]
        ) >= 1.0,
        "{m}"
    );
    for _ in 0..5 {
        assert_eq!(
            route(&gw).await,
            (200, "edge-a".into(), content_version(&good))
        );
    }
    assert!(gw.log().contains("policy rejected"), "{}", gw.log());

    // Fixing the file clears the error.
    let fixed = one_pool("edge-b", b.addr(), "");
    write_by_rename(&gw.policy_path, &fixed);
    assert!(served_by_within(&gw, "edge-b", Duration::from_secs(2)).await);
    assert!(admin_policy(&gw).await["last_error"].is_null());
}

#[tokio::test]
async fn sighup_reloads() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let v1 = one_pool("edge-a", a.addr(), "");
    let v2 = one_pool("edge-b", b.addr(), "");
    let len = v1.len().max(v2.len()) + 16;
    let (v1, v2) = (pad_to(v1, len), pad_to(v2, len));
    let gw = Gateway::start(&v1).await;
    // The handler is installed by a background service; until then SIGHUP would kill.
    let armed = eventually(Duration::from_secs(5), || async {
        admin_policy(&gw).await["reload_triggers"]["sighup"] == true
    })
    .await;
    assert!(armed.is_some());

    write_behind_the_watchers_back(&gw.policy_path, &v2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        route(&gw).await.1,
        "edge-a",
        "the watcher should not have seen that write"
    );
    gw.signal("HUP");
    assert!(
        served_by_within(&gw, "edge-b", Duration::from_secs(2)).await,
        "{}",
        gw.log()
    );
    let p = admin_policy(&gw).await;
    assert_eq!(p["last_reload"]["trigger"], "sighup");
    assert_eq!(p["version"], content_version(&v2));
}

#[tokio::test]
async fn post_admin_reload_reloads_and_reports_restart_only_changes() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let v1 = one_pool("edge-a", a.addr(), "");
    // Also moves the listeners: that cannot be applied live and must be reported.
    let v2 = one_pool(
        "edge-b",
        b.addr(),
        "listeners: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2, threads: 3 }",
    );
    let len = v1.len().max(v2.len()) + 16;
    let (v1, v2) = (pad_to(v1, len), pad_to(v2, len));
    let gw = Gateway::start(&v1).await;
    assert!(admin_policy(&gw).await["restart_required"]
        .as_array()
        .unwrap()
        .is_empty());

    write_behind_the_watchers_back(&gw.policy_path, &v2);
    let r = gw.admin_post("/admin/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["version"], content_version(&v2));
    assert_eq!(route(&gw).await.1, "edge-b");

    let p = admin_policy(&gw).await;
    assert_eq!(p["last_reload"]["trigger"], "admin");
    let restart: Vec<String> = p["restart_required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(restart.len(), 3, "{restart:?}");
    assert!(
        restart[0].starts_with("listeners.proxy") && restart[0].contains("127.0.0.1:1"),
        "{restart:?}"
    );
    assert!(
        gw.log().contains("not applied until a restart"),
        "{}",
        gw.log()
    );
    assert!(p["loaded_at_unix"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn estimates_survive_a_reload() {
    let slow = mock("edge-a", 60).await;
    let v1 = one_pool("edge-a", slow.addr(), "");
    let gw = Gateway::start(&v1).await;
    for _ in 0..8 {
        assert_eq!(route(&gw).await.0, 200);
    }
    let service_ms = |p: &Value| p["pools"][0]["service_time_ms"].as_f64().unwrap();
    let before = service_ms(&admin_policy(&gw).await);
    assert!(
        before > 40.0,
        "the estimate should have learnt the 60 ms backend: {before}"
    );

    // The same pools in a different text: a new version, the same live state.
    let v2 = format!("{v1}\n# reviewed by ops\n");
    write_by_rename(&gw.policy_path, &v2);
    let reloaded = eventually(Duration::from_secs(2), || async {
        admin_policy(&gw).await["version"] == content_version(&v2)
    })
    .await;
    assert!(reloaded.is_some());
    let after = service_ms(&admin_policy(&gw).await);
    assert!(
        (after - before).abs() < 1.0,
        "estimate reset by the reload: {before} → {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_under_load_while_reloading() {
    let a = mock("edge-a", 0).await;
    let b = mock("edge-b", 0).await;
    let g = mock("gpu", 0).await;
    let gpu = |usd: f64| Pool::gpu("gpu").endpoint(g.addr()).per_gpu_hour(usd);
    let pa = Policy::new()
        .pool(Pool::edge("edge-a").region("eu").endpoint(a.addr()))
        .pool(gpu(12.0))
        .render();
    let pb = Policy::new()
        .pool(Pool::edge("edge-b").region("eu").endpoint(b.addr()))
        .pool(gpu(9.0))
        .render();
    let broken = pb.replacen("concurrency: 64", "concurrency: -1", 1);
    let valid: HashSet<String> = [content_version(&pa), content_version(&pb)].into();
    let gw = Gateway::start(&pa).await;

    const CONNECTIONS: usize = 8;
    const DURATION: Duration = Duration::from_secs(6);
    // Each connection sends at most one request per 20 ms: ~400 requests/s in total.
    const PACE: Duration = Duration::from_millis(20);
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let (sent, failures, seen, valid) =
            (sent.clone(), failures.clone(), seen.clone(), valid.clone());
        let proxy = gw.proxy;
        clients.push(tokio::spawn(async move {
            let mut conn = Connection::connect(proxy).await.expect("connect");
            let mut tick = tokio::time::interval(PACE);
            while start.elapsed() < DURATION {
                tick.tick().await;
                let tier = if i % 2 == 0 { "realtime" } else { "standard" };
                let body = chat("llama-3-8b");
                let req = Request::post("/v1/chat/completions", body.as_bytes())
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", EU)
                    .header("x-slo-tier", tier);
                sent.fetch_add(1, Ordering::Relaxed);
                match conn.send(&req).await {
                    Ok(r) => {
                        let version = r
                            .header("x-switchyard-policy-version")
                            .unwrap_or("")
                            .to_string();
                        if r.status != 200 || !valid.contains(&version) {
                            failures.lock().unwrap().push(format!(
                                "status {} version {version:?}: {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ));
                        }
                        seen.lock().unwrap().insert(version);
                    }
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("connection {i}: {e}"));
                        // Keep measuring on a fresh connection.
                        match Connection::connect(proxy).await {
                            Ok(c) => conn = c,
                            Err(_) => return,
                        }
                    }
                }
            }
        }));
    }

    // Alternate the two valid policies every 200 ms (file watcher, plus an explicit admin
    // reload now and then), and write the broken one in between every third step.
    let mut step = 0usize;
    let mut admin_errors = 0;
    while start.elapsed() < DURATION - Duration::from_millis(300) {
        let text = match step % 3 {
            0 => &pb,
            1 => &broken,
            _ => &pa,
        };
        write_by_rename(&gw.policy_path, text);
        if step % 2 == 1 {
            let r = gw.admin_post("/admin/reload", "").await;
            if r.status == 422 {
                admin_errors += 1;
            }
        }
        step += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gw.log()
    );
    assert!(
        sent as f64 / DURATION.as_secs_f64() >= 200.0,
        "only {sent} requests in {DURATION:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen, valid,
        "both valid versions should have served traffic"
    );
    let m = gw.metrics().await;
    let ok = metric_sum(&m, "switchyard_policy_reloads_total", &[("result", "ok")]);
    let err = metric_sum(
        &m,
        "switchyard_policy_reloads_total",
        &[("result", "error")],
    );
    assert!(
        ok >= 5.0 && err >= 1.0 && admin_errors >= 1,
        "reloads ok={ok} error={err} admin_errors={admin_errors}"
    );
    eprintln!("{sent} requests in {DURATION:?} over {CONNECTIONS} connections, {step} policy writes, reloads ok={ok} error={err}: none failed");
}
