//! What an operator relies on when the gateway leaves the laptop: the admin API behind a
//! bearer token when it is exposed, and upstream endpoints named by host name (resolved at
//! load and again while serving, `check` working offline). Real binary, real sockets.

mod support;

use support::*;
use switchyard::testkit::client::{self, Request, Response};

async fn admin(gw: &Gateway, path: &str, auth: Option<&str>) -> Response {
    let mut req = Request::get(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    client::send(gw.admin, &req).await.expect("admin request")
}

fn edge(addr: std::net::SocketAddr) -> String {
    pool(
        "edge",
        "edge",
        "us",
        &[addr],
        "[\"*\"]",
        "{ per_request: 0.0001 }",
    )
}

#[tokio::test]
async fn with_an_admin_token_only_probes_and_metrics_are_open() {
    let token = "t0ken-from-the-environment-7f3a";
    // A variable no other test uses, set before the gateway (a child process) starts.
    std::env::set_var("SWITCHYARD_OPS_TEST_TOKEN", token);
    let backend = mock("edge", 0).await;
    let gw = Gateway::start(&policy(
        &edge(backend.addr()),
        "listeners: { admin_token: \"${SWITCHYARD_OPS_TEST_TOKEN}\" }\n",
    ))
    .await;

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
    let backend = "127.0.0.1:9".parse().unwrap();
    let write = |name: &str, listeners: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, policy(&edge(backend), listeners)).unwrap();
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
