//! The gateway's own answers to each protocol's discovery and health endpoints, shaped the
//! way the official clients parse them: `GET /v1/models` and `GET /v1/models/{id}` for the
//! OpenAI SDKs (`client.models.list()` / `.retrieve(id)`), and `GET /v2/health/live`,
//! `GET /v2/health/ready` and `GET /v2` (server metadata) for Open Inference Protocol v2
//! clients (`tritonclient.http`, KServe). [`serve`] is called from the proxy before route
//! matching, so these answer even when no route matches the path — but only for protocols
//! the policy has routes for.
//!
//! What is *not* here: per-model metadata, readiness and config (`/v2/models/{m}[/ready|
//! /config]`, TF-Serving `/v1/models/{m}[/metadata]`) belong to the model servers and are
//! proxied to a pool that serves the model (classification marks them non-inference). The
//! one ambiguous path, `/v1/models/{x}` (OpenAI retrieve and TF-Serving status), is settled
//! by the policy: when the route it matches is a `tf-serving` route it is TF-Serving and
//! proxied; otherwise, when the policy has an `openai` route, it is answered here.
//!
//! Everything is read from the routing-table snapshot and the endpoints' live state: no I/O
//! besides writing the answer, no locks.

use crate::classify;
use crate::error::GatewayError;
use crate::policy::compile::{KindSet, PoolId, RoutingTable, Split, TierId};
use crate::policy::raw::Protocol;
use crate::reply::Reply;
use crate::serving::state::now_ms;
use crate::serving::Serving;
use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::collections::BTreeSet;

/// One of the endpoints the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// OpenAI `GET /v1/models`.
    ModelList,
    /// OpenAI `GET /v1/models/{id}` (the id percent-decoded).
    Model(Cow<'a, str>),
    /// OIP v2 `GET /v2/health/live`.
    Live,
    /// OIP v2 `GET /v2/health/ready`.
    Ready,
    /// OIP v2 `GET /v2`.
    ServerMetadata,
}

/// Which of the gateway's own endpoints `path` names under this policy, if any.
pub fn endpoint<'a>(path: &'a str, table: &RoutingTable) -> Option<Endpoint<'a>> {
    let has = |p: Protocol| table.routes.iter().any(|r| r.protocol == p);
    if let Some(rest) = path.strip_prefix("/v2") {
        return match rest {
            "" | "/" => Some(Endpoint::ServerMetadata),
            "/health/live" => Some(Endpoint::Live),
            "/health/ready" => Some(Endpoint::Ready),
            _ => None,
        }
        .filter(|_| has(Protocol::OipV2));
    }
    let rest = path.strip_prefix("/v1/models")?;
    let tf_serving = table
        .match_route(path)
        .is_some_and(|r| table.routes[r as usize].protocol == Protocol::TfServing);
    if tf_serving || !has(Protocol::OpenAi) {
        return None;
    }
    match rest {
        "" | "/" => Some(Endpoint::ModelList),
        _ => rest
            .strip_prefix('/')
            .map(percent_decode)
            .map(Endpoint::Model),
    }
}

/// The answer if the request is one of the gateway's own endpoints; `None`: it is not,
/// carry on routing.
pub fn reply(header: &RequestHeader, table: &Serving) -> Option<Reply> {
    let endpoint = endpoint(header.uri.path(), table)?;
    let head = header.method == Method::HEAD;
    let answer = if head || header.method == Method::GET {
        answer(&endpoint, header.uri.path(), &header.headers, table)
    } else {
        Err(GatewayError::MethodNotAllowed(header.method.to_string()))
    };
    let (status, body, tier) = match answer {
        Ok(a) => (a.status, Bytes::from(a.body.to_string()), a.tier),
        Err(e) => (e.status(), e.body(), None),
    };
    let mut reply = Reply::json(status, body).with(POLICY_VERSION, table.version_header.clone());
    if let Some(t) = tier {
        reply = reply.with(TIER, table.tiers[t as usize].header.clone());
    }
    reply.head = head;
    Some(reply)
}

const POLICY_VERSION: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-policy-version");
const TIER: http::HeaderName = http::HeaderName::from_static("x-switchyard-tier");

/// A successful answer: status, JSON body, and the tier it was computed for.
struct Answer {
    status: u16,
    body: serde_json::Value,
    tier: Option<TierId>,
}

fn answer(
    endpoint: &Endpoint,
    path: &str,
    headers: &HeaderMap,
    table: &Serving,
) -> Result<Answer, GatewayError> {
    let ok = |body| Answer {
        status: 200,
        body,
        tier: None,
    };
    match endpoint {
        Endpoint::ModelList => {
            let tier = openai_tier(path, headers, table)?;
            let data: Vec<_> = models_for_tier(table, tier)
                .iter()
                .map(|m| model_object(m))
                .collect();
            Ok(Answer {
                tier: Some(tier),
                ..ok(serde_json::json!({ "object": "list", "data": data }))
            })
        }
        Endpoint::Model(id) => {
            let tier = openai_tier(path, headers, table)?;
            if !tier_reaches(table, tier, id) {
                return Err(GatewayError::ModelNotFound(id.chars().take(256).collect()));
            }
            Ok(Answer {
                tier: Some(tier),
                ..ok(model_object(id))
            })
        }
        Endpoint::Live => Ok(ok(serde_json::json!({ "live": true }))),
        Endpoint::Ready => {
            let ready = any_endpoint_up(table);
            // The KServe v2 spec reads health as a boolean status: 200 is true, a 4xx false
            // (Triton and MLServer answer 400); `tritonclient` tests `status_code == 200`.
            Ok(Answer {
                status: if ready { 200 } else { 400 },
                ..ok(serde_json::json!({ "ready": ready }))
            })
        }
        Endpoint::ServerMetadata => Ok(ok(serde_json::json!({
            "name": "switchyard",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": [],
        }))),
    }
}

/// An OpenAI model object.
fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "switchyard" })
}

/// The caller's tier as classification decides it, with the default tier of the OpenAI
/// route (the one the path matches, else the policy's first).
fn openai_tier(
    path: &str,
    headers: &HeaderMap,
    table: &RoutingTable,
) -> Result<TierId, GatewayError> {
    let openai = |r: &usize| table.routes[*r].protocol == Protocol::OpenAi;
    let route = table
        .match_route(path)
        .map(usize::from)
        .filter(openai)
        .or_else(|| (0..table.routes.len()).find(openai))
        .ok_or_else(|| GatewayError::NoRoute(path.chars().take(200).collect()))?;
    Ok(classify::caller(headers, table.routes[route].tier, table)?.tier)
}

/// The model names a tier can reach, sorted: the models named by the pools whose kind the
/// tier allows, plus the policy's `models:` entries one of those pools serves. Pools serving
/// `*` cannot be enumerated beyond that.
pub fn models_for_tier(table: &RoutingTable, tier: TierId) -> BTreeSet<&str> {
    let kinds = table.tiers[tier as usize].kinds;
    let pools = || table.pools.iter().filter(move |p| kinds.contains(p.kind));
    let mut names: BTreeSet<&str> = pools()
        .flat_map(|p| p.models.names.iter().map(String::as_str))
        .filter(|m| *m != "*")
        .collect();
    names.extend(
        table
            .model_versions
            .keys()
            .filter(|m| pools().any(|p| p.models.serves(m)))
            .map(String::as_str),
    );
    // A split model is served by its versions' pools, whatever their `models:` lists say.
    names.extend(
        table
            .splits
            .iter()
            .filter(|s| split_reaches(table, kinds, s))
            .map(|s| s.model.as_str()),
    );
    names
}

fn split_reaches(table: &RoutingTable, kinds: KindSet, split: &Split) -> bool {
    split.versions.iter().any(|v| {
        v.pools
            .iter()
            .any(|p| kinds.contains(table.pools[*p as usize].kind))
    })
}

/// Whether a pool the tier may use serves `model` (a `*` pool serves every model, so a
/// retrieve succeeds for any id a request could actually be routed with).
pub fn tier_reaches(table: &RoutingTable, tier: TierId, model: &str) -> bool {
    let kinds = table.tiers[tier as usize].kinds;
    if let Some(s) = table.split_of.get(model) {
        return split_reaches(table, kinds, &table.splits[*s as usize]);
    }
    table
        .pools
        .iter()
        .any(|p| kinds.contains(p.kind) && p.models.serves(model))
}

/// At least one endpoint of some pool is up (neither ejected nor failing health checks).
pub fn any_endpoint_up(table: &Serving) -> bool {
    let now = now_ms();
    (0..table.pools.len())
        .flat_map(|p| table.live.endpoints(p as PoolId))
        .any(|e| e.is_up(now))
}

/// `%XX` escapes decoded (model ids may contain `/`, which some clients escape); anything
/// that does not decode to UTF-8 is kept as written.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_or(Cow::Borrowed(s), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{compile_str, CompileContext};
    use std::path::Path;

    fn table(routes: &str) -> RoutingTable {
        let policy = format!(
            r#"
regions:
  default: us
  map: [{{ name: us, continents: [NA] }}]
rtt_ms: {{ us: {{ us: 5 }} }}
tiers:
  edge-only: {{ deadline: 1s, weight: 0.5, pools: [edge] }}
  any: {{ deadline: 1s, weight: 0.5, pools: [edge, gpu] }}
pools:
  - {{ name: e, kind: edge, region: us, endpoints: [127.0.0.1:1], models: [small, tiny], concurrency: 8, service_time: 10ms, price: {{ per_request: 0.001 }} }}
  - {{ name: g, kind: gpu, region: us, endpoints: [127.0.0.1:2], models: ["*", big], concurrency: 8, service_time: 10ms, price: {{ per_request: 0.01 }} }}
models:
  listed-by-version: {{ version: "1" }}
  small: {{ version: "2" }}
routes:
{routes}"#
        );
        compile_str(
            &policy,
            &CompileContext {
                file: Path::new("t.yaml"),
                gateway_region: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const ALL: &str =
        "  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: edge-only }
  - { name: oip, match: /v2/models/*, protocol: oip-v2, tier: any }
  - { name: tf, match: /v1/models/*, protocol: tf-serving, tier: any }
";

    #[test]
    fn paths_by_protocol_and_the_tf_serving_ambiguity() {
        let t = table(ALL);
        assert_eq!(endpoint("/v2", &t), Some(Endpoint::ServerMetadata));
        assert_eq!(endpoint("/v2/health/live", &t), Some(Endpoint::Live));
        assert_eq!(endpoint("/v2/health/ready", &t), Some(Endpoint::Ready));
        assert_eq!(endpoint("/v2/models/m/ready", &t), None, "proxied");
        assert_eq!(endpoint("/v1/models", &t), Some(Endpoint::ModelList));
        // `/v1/models/*` is a tf-serving route here: TF-Serving, proxied.
        assert_eq!(endpoint("/v1/models/small", &t), None);
        assert_eq!(endpoint("/v1/chat/completions", &t), None);

        let openai_only =
            table("  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: any }\n");
        assert_eq!(
            endpoint("/v1/models/org%2Fmodel", &openai_only),
            Some(Endpoint::Model("org/model".into()))
        );
        assert_eq!(
            endpoint("/v1/models/a/b", &openai_only),
            Some(Endpoint::Model("a/b".into()))
        );
        assert_eq!(
            endpoint("/v2/health/live", &openai_only),
            None,
            "no oip-v2 route"
        );

        let tf_only =
            table("  - { name: tf, match: /v1/models/*, protocol: tf-serving, tier: any }\n");
        assert_eq!(endpoint("/v1/models", &tf_only), None, "no openai route");
    }

    #[test]
    fn models_depend_on_the_tier() {
        let t = table(ALL);
        let edge = t.tier_by_name("edge-only").unwrap();
        let any = t.tier_by_name("any").unwrap();
        assert_eq!(
            models_for_tier(&t, edge).into_iter().collect::<Vec<_>>(),
            ["small", "tiny"]
        );
        assert_eq!(
            models_for_tier(&t, any).into_iter().collect::<Vec<_>>(),
            ["big", "listed-by-version", "small", "tiny"]
        );
        assert!(tier_reaches(&t, any, "anything"), "a `*` pool serves it");
        assert!(!tier_reaches(&t, edge, "big"));
    }

    #[test]
    fn metadata_reads_are_routed_by_model_but_not_inference() {
        use crate::classify::{classify, RequestFacts};
        let t = crate::serving::Serving::load(table(ALL), &crate::serving::state::Fleet::default())
            .expect("resources");
        let headers = HeaderMap::new();
        let class = |method: &Method, path: &str, body: Option<&[u8]>| {
            let route = t.match_route(path).unwrap();
            let facts = RequestFacts {
                peer: [127, 0, 0, 1].into(),
                method,
                path,
                headers: &headers,
                body,
            };
            classify(&facts, route, &t).unwrap()
        };
        for path in [
            "/v2/models/small/ready",
            "/v2/models/small/versions/2/config",
            "/v2/models/small",
            "/v1/models/small/metadata",
        ] {
            let c = class(&Method::GET, path, Some(b""));
            assert_eq!(c.model, "small", "{path}");
            assert!(!c.inference && !c.cacheable, "{path}");
        }
        let c = class(&Method::GET, "/v2/models/small/versions/2/ready", Some(b""));
        assert_eq!(c.model_version.as_deref(), Some("2"));
        let c = class(&Method::POST, "/v2/models/small/infer", Some(b"{}"));
        assert!(c.inference);
    }

    #[test]
    fn percent_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%ff"), "%ff", "not UTF-8: kept as written");
    }
}
