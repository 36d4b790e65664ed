//! Any request head and body through classification: a class or a typed error, never a
//! panic. The first line of the input is the path; then `name: value` header lines until an
//! empty line; the rest is the body.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::Serving;
use switchyard_gateway::serving::state::Fleet;

const POLICY: &str = r#"
trusted_proxies: [127.0.0.0/8]
geoip: { database: embedded }
regions:
  default: us
  map: [{ name: eu, continents: [EU] }, { name: us, continents: [NA] }]
rtt_ms: { eu: { eu: 5, us: 90 }, us: { us: 5 } }
tiers:
  standard: { deadline: 1s, weight: 0.3, pools: [edge] }
pools:
  - { name: edge, kind: edge, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 8, service_time: 10ms }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: standard, cache: { ttl: 1m } }
  - { name: oip, match: /v2/models/*, protocol: oip-v2, tier: standard }
  - { name: tf, match: /v1/models/*, protocol: tf-serving, tier: standard }
"#;

fn table() -> &'static Serving {
    static TABLE: OnceLock<Serving> = OnceLock::new();
    TABLE.get_or_init(|| {
        let cx = CompileContext {
            file: Path::new("fuzz.yaml"),
            gateway_region: None,
        };
        let table = compile_str(POLICY, &cx).expect("the fuzz policy compiles");
        Serving::load(table, &Fleet::default()).expect("resources")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let path = lines.next().unwrap_or("/");
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let table = table();
    let Some(route) = table.match_route(path) else {
        return;
    };
    let facts = RequestFacts {
        peer: [127, 0, 0, 1].into(),
        method: &Method::POST,
        path,
        headers: &headers,
        body: Some(body.as_bytes()),
    };
    let _ = classify(&facts, route, table);
});
