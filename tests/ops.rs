//! What an operator relies on when the gateway leaves the laptop: the admin API behind a
//! bearer token when it is exposed, and upstream endpoints named by host name (resolved at
//! load and again while serving, `check` working offline). Real binary, real sockets.

mod support;

use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::client::{self, Request, Response};

async fn admin(gw: &Gateway, path: &str, auth: Option<&str>) -> Response {
    let mut req = Request::get(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    client::send(gw.admin, &req).await.expect("admin request")
}

/// One edge pool at `endpoint` (an address or `host:port`).
fn edge(endpoint: impl std::fmt::Display) -> Policy {
    Policy::new().pool(Pool::edge("edge").endpoint(endpoint).per_request(0.0001))
}

#[tokio::test]
async fn with_an_admin_token_only_probes_and_metrics_are_open() {
    let token = "t0ken-from-the-environment-7f3a";
    // A variable no other test uses, set before the gateway (a child process) starts.
    std::env::set_var("SWITCHYARD_OPS_TEST_TOKEN", token);
    let backend = mock("edge", 0).await;
    let policy =
        edge(backend.addr()).extra("listeners: { admin_token: \"${SWITCHYARD_OPS_TEST_TOKEN}\" }");
    let gw = Gateway::start(&policy.render()).await;

    let bearer = format!("Bearer {token}");
    assert_eq!(admin(&gw, "/admin/policy", None).await.status, 401);
    let wrong = admin(&gw, "/admin/policy", Some("Bearer not-the-token")).await;
    assert_eq!(wrong.status, 401);
    let v = wrong.json().expect("401 is JSON");
    assert_eq!(v["error"]["status"], 401, "{v}");
    assert!(wrong.header("www-authenticate").is_some());
    // The right token, and the scheme in any case.
    let ok = admin(&gw, "/admin/policy", Some(&bearer)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let lower = format!("bearer {token}");
    assert_eq!(admin(&gw, "/admin/pools", Some(&lower)).await.status, 200);
    // Writes are guarded too.
    let reload = client::send(gw.admin, &Request::post("/admin/reload", b""))
        .await
        .expect("reload");
    assert_eq!(reload.status, 401);
    let purge = Request::post("/admin/cache/purge", b"{\"all\":true}")
        .header("authorization", "Bearer nope");
    assert_eq!(
        client::send(gw.admin, &purge).await.expect("purge").status,
        401
    );

    // Probes and the scrape stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin(&gw, path, None).await.status, 200, "{path}");
    }
    // The token is never shown: not in the policy view, not in the log.
    assert!(!ok.text().contains(token));
    assert!(!gw.log().contains(token));
    // The proxy listener is not affected.
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200);
}

#[test]
fn check_requires_a_token_off_loopback_and_names_a_missing_variable() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, listeners: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, edge("127.0.0.1:9").extra(listeners).render()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let open = write("open.yaml", "listeners: { admin: 0.0.0.0:9090 }\n");
    let (code, _out, err) = run_cli(&["check", &open], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("listeners.admin `0.0.0.0:9090` is not on loopback")
            && err.contains("admin_token"),
        "{err}"
    );

    let unset = write(
        "unset.yaml",
        "listeners: { admin: 0.0.0.0:9090, admin_token: \"${SWITCHYARD_OPS_TEST_UNSET_VARIABLE}\" }\n",
    );
    let (code, _out, err) = run_cli(&["check", &unset], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("listeners.admin_token: environment variable `SWITCHYARD_OPS_TEST_UNSET_VARIABLE` is not set"),
        "{err}"
    );

    let guarded = write(
        "guarded.yaml",
        "listeners: { admin: 0.0.0.0:9090, admin_token: \"${HOME}\" }\n",
    );
    let (code, out, err) = run_cli(&["check", &guarded], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let home = std::env::var("HOME").unwrap_or_default();
    assert!(home.is_empty() || !(out.clone() + &err).contains(&home));
}

/// An endpoint named `localhost:PORT` is resolved, and served, with its address in its label.
#[tokio::test]
async fn an_endpoint_named_by_host_name_resolves_and_serves() {
    let backend = mock("by-name", 0).await;
    let named = format!("localhost:{}", backend.addr().port());
    let gw = Gateway::start(&edge(&named).render()).await;
    let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-switchyard-endpoint"),
        Some(format!("{named}@127.0.0.1").as_str())
    );
    assert_eq!(backend.stats().requests, 1);
    let pools = gw.pools().await;
    let ep = &pools["pools"][0]["endpoints"][0];
    assert_eq!(ep["state"], "up", "{pools}");
}

/// A name that does not resolve (the reserved `.invalid` TLD never does) is a warning in
/// `check`, text and JSON, and at run time an endpoint that is down while the others serve.
#[tokio::test]
async fn an_unresolvable_endpoint_is_a_warning_and_starts_down() {
    let backend = mock("edge-ok", 0).await;
    let ghost = "edge-gone.switchyard.invalid:9000";
    let text = Policy::new()
        .pool(
            Pool::edge("edge")
                .endpoint(backend.addr())
                .endpoint(ghost)
                .per_request(0.0001),
        )
        .pool(
            Pool::gpu("gpu")
                .endpoint("gpu-gone.switchyard.invalid:9000")
                .per_request(0.001),
        )
        .render();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, &text).unwrap();
    let file = path.to_string_lossy().into_owned();
    let (code, out, err) = run_cli(&["check", &file], dir.path());
    assert_eq!(code, 0, "an unresolvable name is not an error:\n{out}{err}");
    assert!(
        err.contains("warning: pool `edge`: endpoint `edge-gone.switchyard.invalid:9000`")
            && err.contains("starts with it down"),
        "{err}"
    );
    let (code, out, _) = run_cli(&["check", "--format", "json", &file], dir.path());
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["files"][0]["errors"].as_array().map(Vec::len), Some(0));
    let warnings = v["files"][0]["warnings"].to_string();
    assert!(warnings.contains("gpu-gone.switchyard.invalid:9000"), "{v}");

    let gw = Gateway::start(&text).await;
    let pools = gw.pools().await;
    let edge = &pools["pools"][0];
    let ghost_ep = edge["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == ghost)
        .unwrap_or_else(|| panic!("{ghost} not listed: {pools}"));
    assert_eq!(ghost_ep["state"], "unresolved", "{pools}");
    assert_eq!(ghost_ep["up"], false);
    // The other endpoint serves everything; the all-unresolved GPU pool is never chosen.
    for _ in 0..20 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &[("x-slo-tier", "realtime")],
                &chat("m"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-pool"), Some("edge"));
    }
    assert_eq!(backend.stats().requests, 20);
}

/// The compose policy names compose services (`edge-eu:9000`, …) that resolve only inside
/// the compose network: `check` passes anywhere, with warnings for the names.
#[test]
fn the_shipped_compose_policy_passes_check_outside_docker() {
    let (code, out, err) = run_cli(
        &["check", "--format", "json", "policies/compose.yaml"],
        &repo_root(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let (code, out, err) = run_cli(&["check", "policies/compose.yaml"], &repo_root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("policies/compose.yaml: ok"), "{out}");
    // The offline tools answer what the policy decides where its names do resolve.
    let (code, out, err) = run_cli(
        &[
            "explain",
            "--policy",
            "policies/compose.yaml",
            "--region",
            "eu",
            "--model",
            "llama-3-8b",
            "--format",
            "json",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["pool"], "edge-eu", "{v}");
}

/// Re-resolution publishes a new table generation in which an address that stayed keeps its
/// live state (the same measurements and in-flight count), and a refresh that lost a race
/// with a reload does nothing.
#[test]
fn a_re_resolution_keeps_the_live_state_of_addresses_that_stayed() {
    use switchyard_gateway::admin::ControlPlane;
    use switchyard_gateway::policy::compile::{compile_str, CompileContext};
    use switchyard_gateway::serving::state::Fleet;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let text = edge("localhost:9").render();
    std::fs::write(&path, &text).unwrap();
    let fleet = Fleet::new();
    let first = compile_str(
        &text,
        &CompileContext {
            file: &path,
            gateway_region: None,
        },
    )
    .unwrap();
    let generation = first.generation;
    assert_eq!(first.pools[0].endpoints[0].name, "localhost:9@127.0.0.1");
    let control = ControlPlane::new(
        switchyard_gateway::serving::snapshot(first, fleet).expect("resources"),
        Some(path),
    );
    let state = control.snapshot.load().live.endpoint(0, 0).clone();
    state.acquire();

    assert!(control.refresh_addresses(generation));
    let second = control.snapshot.load_full();
    assert_ne!(second.generation, generation);
    assert_eq!(second.version, control.snapshot.load().version);
    let same = &second.pools[0].endpoints[0];
    assert_eq!(same.name, "localhost:9@127.0.0.1");
    let same_state = second.live.endpoint(0, 0);
    assert!(
        std::sync::Arc::ptr_eq(same_state, &state),
        "live state carried over"
    );
    assert_eq!(same_state.in_flight(), 1);
    // A refresh computed against a table that is no longer serving is dropped.
    assert!(!control.refresh_addresses(generation));
}

/// Run `switchyard ARGS` that must fail at start-up: its stderr (panics if it keeps running).
fn start_up_error(args: &[&str]) -> String {
    let mut child = std::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchyard {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

/// A gateway whose proxy address is taken refuses to start, in one line, instead of
/// answering on its admin port while something else answers on its proxy port. And
/// `--admin-listen` off loopback needs a token, as the policy's own address does.
#[test]
fn a_taken_proxy_port_or_an_open_admin_override_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, edge("127.0.0.1:9").render()).unwrap();
    let path = path.to_string_lossy().into_owned();
    let admin = free_addr().to_string();
    let err = start_up_error(&[
        "run",
        "--policy",
        &path,
        "--listen",
        &port,
        "--admin-listen",
        &admin,
    ]);
    assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    drop(taken);

    let open = format!("0.0.0.0:{}", free_addr().port());
    let proxy = free_addr().to_string();
    let err = start_up_error(&[
        "run",
        "--policy",
        &path,
        "--listen",
        &proxy,
        "--admin-listen",
        &open,
    ]);
    assert!(err.contains("no listeners.admin_token"), "{err}");
}

/// `/readyz` is only 200 once the proxy address answers as *this* process: another gateway
/// or another program on that address is not this gateway being ready.
#[tokio::test]
async fn readiness_asks_the_proxy_listener_who_it_is() {
    use switchyard_gateway::admin::ready::{Readiness, PATH};
    let backend = mock("edge", 0).await;
    let gw = Gateway::start(&edge(backend.addr()).render()).await;
    let r = admin(&gw, "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = gw.get(PATH, &[]).await;
    assert_eq!(id.status, 200);
    assert_eq!(id.text().len(), 32, "{}", id.text());
    // The gateway answers the path itself, never proxies it.
    assert_eq!(backend.stats().requests, 0);
    // Seen from any other process (this test), that gateway is not "us"; nor is a mock.
    assert!(!Readiness::new(gw.proxy).proxy_is_ours().await);
    assert!(!Readiness::new(backend.addr()).proxy_is_ours().await);
    assert!(!Readiness::new(dead_addr()).proxy_is_ours().await);
}
