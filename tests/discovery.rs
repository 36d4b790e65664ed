//! Discovery and health endpoints as the official clients use them: the OpenAI SDK's
//! `models.list()` / `models.retrieve(id)`, `tritonclient.http`'s `is_server_live()` /
//! `is_server_ready()` / `get_server_metadata()`, and model metadata, readiness and config
//! reads (OIP v2 and TF-Serving) proxied to a pool that serves the model without counting as
//! spend. A gateway process on loopback, mock backends, wire formats checked field by field.

mod support;

use support::*;
use switchyard_testkit::client::Response;

/// One region (`us`), one tier (`standard`, which may use edge and GPU pools), no tenants;
/// the test gives the pools and routes.
fn discovery_policy() -> Policy {
    Policy::new()
        .regions("regions:\n  default: us\n  map:\n    - { name: us, continents: [NA, SA] }\nrtt_ms:\n  us: { us: 5 }\n")
        .tiers([Tier::standard()])
        .tenants([])
}

/// A GPU pool serving `resnet` at 0.01 USD a request.
fn resnet_gpu(backend: &switchyard_testkit::mock::MockBackend) -> Pool {
    Pool::gpu("gpu")
        .endpoint(backend.addr())
        .models(["resnet"])
        .per_request(0.01)
}

fn ids(r: &Response) -> Vec<String> {
    let v = r.json().expect("json");
    v["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn openai_models_list_and_retrieve_follow_the_tier() {
    let edge = mock("edge", 0).await;
    let gpu = mock("gpu", 0).await;
    let policy = discovery_policy()
        .pool(
            Pool::edge("edge")
                .endpoint(edge.addr())
                .models(["small", "tiny"])
                .per_request(0.001),
        )
        .pool(
            Pool::gpu("gpu")
                .endpoint(gpu.addr())
                .models(["*", "big", "small"])
                .per_request(0.01),
        )
        .routes([Route::new("chat", "/v1/chat/completions", "openai")])
        // A tier that may use only edge pools (tenant `acme`), and a model catalogue.
        .tier(Tier::new("edge-only", "1s", 0.3, ["edge"]))
        .tenant(Tenant::new("acme", "key-acme", "edge-only"))
        .extra("models:\n  catalogued: { version: \"2024-06-01\" }\n");
    let gw = Gateway::start(&policy.render()).await;

    // `client.models.list()`: a list object whose `data` are model objects.
    let r = gw.get("/v1/models", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json().unwrap();
    assert_eq!(v["object"], "list");
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "switchyard");
        assert!(
            m["created"].is_u64(),
            "the SDK requires an integer `created`"
        );
    }
    // Explicit names of the reachable pools and the `models:` catalogue, sorted, once each;
    // `*` is not a model.
    assert_eq!(ids(&r), ["big", "catalogued", "small", "tiny"]);
    assert_eq!(r.header("x-switchyard-tier"), Some("standard"));

    // A tier that may use only edge pools sees only what edge pools serve, whether the tier
    // comes from the tenant's key or from the tier header.
    let r = gw
        .get("/v1/models", &[("authorization", "Bearer key-acme")])
        .await;
    assert_eq!(ids(&r), ["small", "tiny"]);
    let r = gw.get("/v1/models", &[("x-slo-tier", "edge-only")]).await;
    assert_eq!(ids(&r), ["small", "tiny"]);
    let r = gw.get("/v1/models", &[("x-slo-tier", "nope")]).await;
    assert_eq!(r.status, 400, "an unknown tier is refused as on inference");

    // `client.models.retrieve(id)`.
    let r = gw.get("/v1/models/big", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(
        (
            v["id"].as_str(),
            v["object"].as_str(),
            v["owned_by"].as_str()
        ),
        (Some("big"), Some("model"), Some("switchyard"))
    );
    // A `*` pool serves any model the tier could be routed with.
    assert_eq!(gw.get("/v1/models/org%2Fsome-model", &[]).await.status, 200);

    // Unknown for this tier: 404 in OpenAI's error shape (`openai.NotFoundError`).
    let r = gw
        .get("/v1/models/big", &[("x-slo-tier", "edge-only")])
        .await;
    assert_eq!(r.status, 404);
    let v = r.json().unwrap();
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], "model_not_found");
    assert!(e["param"].is_null());
    assert!(e["message"].as_str().unwrap().contains("`big`"), "{v}");

    // HEAD is answered without a body; other methods are not allowed.
    let (status, body) = gw.raw("HEAD", "/v1/models", &[]).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _) = gw.raw("DELETE", "/v1/models/big", &[]).await;
    assert_eq!(status, 405);

    // The policy has no OIP v2 route: its health endpoints are not invented.
    assert_eq!(gw.get("/v2/health/live", &[]).await.status, 404);
    assert_eq!(edge.stats().requests + gpu.stats().requests, 0);
}

#[tokio::test]
async fn oip_health_and_server_metadata_as_tritonclient_reads_them() {
    let backend = mock("gpu", 0).await;
    let policy = discovery_policy()
        .pool(resnet_gpu(&backend))
        .routes([Route::new("oip", "/v2/models/*", "oip-v2")]);
    let gw = Gateway::start(&policy.render()).await;

    let r = gw.get("/v2/health/live", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap(), serde_json::json!({ "live": true }));
    let r = gw.get("/v2/health/ready", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap(), serde_json::json!({ "ready": true }));
    let (status, body) = gw.raw("HEAD", "/v2/health/ready", &[]).await;
    assert_eq!((status, body.as_str()), (200, ""));

    let r = gw.get("/v2", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().unwrap(),
        serde_json::json!({
            "name": "switchyard",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": [],
        })
    );
    // The health endpoints are the gateway's: the backend saw none of them.
    assert_eq!(backend.stats().requests, 0);
    // No OpenAI route in this policy: no model list.
    assert_eq!(gw.get("/v1/models", &[]).await.status, 404);

    // Every endpoint down: an inference request finds the backend refusing connections and
    // ejects it; from then on the gateway is live but not ready.
    backend.faults().set_down(true);
    let infer = gw
        .post("/v2/models/resnet/infer", &[], r#"{"inputs":[]}"#)
        .await;
    assert!(infer.status >= 500, "{}", infer.text());
    let r = gw.get("/v2/health/ready", &[]).await;
    assert_ne!(
        r.status, 200,
        "tritonclient's is_server_ready() must be False"
    );
    assert_eq!(
        r.status, 400,
        "the KServe v2 health convention: 4xx is false"
    );
    assert_eq!(r.json().unwrap(), serde_json::json!({ "ready": false }));
    assert_eq!(gw.get("/v2/health/live", &[]).await.status, 200);
}

#[tokio::test]
async fn model_metadata_is_proxied_never_cached_and_costs_nothing() {
    let backend = mock("gpu-a", 0).await;
    let policy = discovery_policy().pool(resnet_gpu(&backend)).routes([
        Route::new("chat", "/v1/chat/completions", "openai"),
        Route::new("oip", "/v2/models/*", "oip-v2").cache("{ ttl: 10m }"),
        Route::new("tf", "/v1/models/*", "tf-serving").cache("{ ttl: 10m }"),
    ]);
    let gw = Gateway::start(&policy.render()).await;

    let reads = [
        // tritonclient: is_model_ready, get_model_metadata, get_model_config.
        "/v2/models/resnet/ready",
        "/v2/models/resnet/versions/2/ready",
        "/v2/models/resnet",
        "/v2/models/resnet/versions/2",
        "/v2/models/resnet/config",
        // TF-Serving model status and metadata (the route is tf-serving, so `/v1/models/{m}`
        // is TF-Serving's, not OpenAI's retrieve).
        "/v1/models/resnet",
        "/v1/models/resnet/metadata",
    ];
    for _round in 0..2 {
        for path in reads {
            let r = gw.get(path, &[]).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let v = r.json().unwrap();
            assert_eq!(v["path"], path, "the backend saw the path as sent");
            assert_eq!(v["served_by"], "gpu-a");
            assert_eq!(r.header("x-switchyard-pool"), Some("gpu"), "{path}");
            assert!(r.header("x-switchyard-decision").is_some(), "{path}");
            let cache = r.header("x-switchyard-cache");
            assert!(matches!(cache, None | Some("bypass")), "{path}: {cache:?}");
        }
    }
    let r = gw.get("/v2/models/resnet/versions/2", &[]).await;
    assert_eq!(r.json().unwrap()["versions"], serde_json::json!(["2"]));
    let r = gw.get("/v1/models/resnet/metadata", &[]).await;
    assert_eq!(r.json().unwrap()["model_spec"]["name"], "resnet");
    let sent = 2 * reads.len() as u64 + 2;
    let stats = backend.stats();
    assert_eq!(
        stats.metadata, sent,
        "every read reached the backend: none cached"
    );
    assert_eq!(stats.oip_infer + stats.tf_predict, 0);

    // Once the reads are counted, the spend has not moved.
    let counted = |m: &str| {
        metric_sum(
            m,
            "switchyard_requests_total",
            &[("pool", "gpu"), ("status", "200")],
        )
    };
    let m = gw.metrics_when(|m| counted(m) >= sent as f64).await;
    assert_eq!(counted(&m), sent as f64, "{m}");
    assert_eq!(
        metric_sum(&m, "switchyard_cost_nanousd_total", &[]),
        0.0,
        "{m}"
    );

    // An inference request on the same route is spend (so the check above can fail).
    let r = gw
        .post("/v2/models/resnet/infer", &[], r#"{"inputs":[]}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = gw.metrics_when(|m| counted(m) > sent as f64).await;
    assert!(
        metric_sum(&m, "switchyard_cost_nanousd_total", &[]) > 0.0,
        "{m}"
    );
}
