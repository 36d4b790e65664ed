//! The Kubernetes base (deploy/kubernetes), checked without a cluster: its policy passes
//! `switchyard check`, the real gateway serves it from a ConfigMap volume laid out as the
//! kubelet lays it out and reloads it when the kubelet swaps the volume, and the manifests
//! run what the image contains as the image's user.
//!
//! The manifests themselves (schemas of Kubernetes 1.30 and KEDA, references between
//! objects) are validated by `deploy/kubernetes/validate.sh`, which `.ci/run` runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::kubelet::ConfigMapVolume;
use support::*;
use switchyard_gateway::policy::compile::content_version;
use switchyard_testkit::client::{self, Request};

const POLICY: &str = "deploy/kubernetes/base/policy.yaml";
const ADMIN_TOKEN: &str = "k8s-test-admin-token";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The variables the Deployment sets from the Secret (gateway.yaml `env`).
fn secret_env() -> [(&'static str, &'static str); 2] {
    [
        ("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN),
        ("GPU_POOL_API_KEY", "k8s-test-gpu-key"),
    ]
}

#[test]
fn the_kubernetes_policy_passes_check() {
    let out = Command::new(binary())
        .args(["check", POLICY])
        .envs(secret_env())
        .current_dir(repo_root())
        .output()
        .expect("run switchyard check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    // Each pool KEDA scales has its capacity bounds, matching overlays/keda.
    assert!(stdout.contains("edge: capacity: 1–8 replicas"), "{stdout}");
    assert!(stdout.contains("gpu: capacity: 0–4 replicas"), "{stdout}");
    // Only the pools' Service names, unresolvable outside the cluster, and the in-cluster
    // plain-HTTP credential are warned about.
    for line in stderr.lines().filter(|l| l.contains("warning")) {
        assert!(
            line.contains("cannot resolve") || line.contains("sent over plain HTTP"),
            "{line}"
        );
    }
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> client::Response {
    let mut req = Request::get(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    client::send(gw.admin, &req).await.expect("admin request")
}

#[tokio::test]
async fn the_gateway_serves_and_reloads_the_kubernetes_policy_from_a_configmap_volume() {
    // The child gateway inherits this process's environment, as the container gets the
    // Secret's keys.
    for (name, value) in secret_env() {
        std::env::set_var(name, value);
    }
    let v1 = read(POLICY);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = ConfigMapVolume::create(dir.path(), &v1);
    let path = dir.path().join("policy.yaml");
    // The harness moves the listeners to loopback ports (--listen, --admin-listen); Redis and
    // the pools' names do not resolve here, so limits are local and the pools unresolved.
    let gw = Gateway::start_file(dir, path).await;

    let ready = admin_get(&gw, "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(admin_get(&gw, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(&gw, "/admin/policy", None).await.status, 401);
    let policy = admin_get(&gw, "/admin/policy", Some(ADMIN_TOKEN)).await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    assert_eq!(policy.json().unwrap()["version"], content_version(&v1));

    // `kubectl apply -k` with an edited policy.yaml: the kubelet swaps the volume.
    let v2 = v1.replace("resolve_every: 5s", "resolve_every: 10s");
    assert_ne!(v1, v2);
    volume.update(&v2);
    let start = Instant::now();
    loop {
        let p = admin_get(&gw, "/admin/policy", Some(ADMIN_TOKEN)).await;
        if p.json().unwrap()["version"] == content_version(&v2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn the_manifests_run_what_the_image_contains_as_its_user() {
    let dockerfile = read("Dockerfile");
    let gateway = read("deploy/kubernetes/base/gateway.yaml");
    let pools = read("deploy/kubernetes/base/pools.yaml");
    // The image's user, which runAsNonRoot needs as a number.
    assert!(dockerfile.contains("--uid 10001 --gid switchyard"));
    assert!(dockerfile.contains("--gid 10001 switchyard"));
    for manifest in [&gateway, &pools] {
        assert!(manifest.contains("runAsUser: 10001"));
        assert!(manifest.contains("image: switchyard:latest"));
    }
    // The binaries they run are built into the image.
    assert!(gateway.contains(
        r#"command: ["switchyard", "run", "--policy", "/etc/switchyard/policy/policy.yaml"]"#
    ));
    assert!(dockerfile.contains("--bin switchyard"));
    assert!(pools.contains(r#"command: ["mock_backend", "#));
    assert!(dockerfile.contains("--example mock_backend"));
    // The ports the policy listens on are the ones the container declares.
    let policy = read(POLICY);
    assert!(policy.contains("proxy: 0.0.0.0:8080") && policy.contains("admin: 0.0.0.0:9090"));
    assert!(gateway.contains("{ name: http, containerPort: 8080, protocol: TCP }"));
    assert!(gateway.contains("{ name: admin, containerPort: 9090, protocol: TCP }"));
}
