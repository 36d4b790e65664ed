//! Property tests of the parsers that read untrusted input: policy files, requests (headers,
//! path, body) as classification sees them, JSON bodies as the cache key canonicalises them,
//! Redis replies and MMDB files. Each property runs a bounded number of cases (256 by
//! default, `PROPTEST_CASES` to change it) so that they stay part of a normal `cargo test`;
//! longer runs belong to the `cargo fuzz` targets in `fuzz/`.

mod support;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;
use switchyard::cache::key::{self, CacheKey, KeyParts, Scope};
use switchyard::classify::geo::GeoDb;
use switchyard::classify::{classify, RequestFacts};
use switchyard::policy::compile::{compile_str, CompileContext, RoutingTable};

fn config() -> ProptestConfig {
    ProptestConfig {
        // No persisted regression files in the repository; failures print their input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- policy files -----------------------------------------------------------------------

/// The repository's policies, as seeds to mutate.
fn seed_policies() -> Vec<String> {
    let dir = support::repo_root().join("policies");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .expect("policies/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty());
    seeds
}

/// One edit of a text: replace, insert or delete a few bytes at a position (fractions of the
/// length, so they apply to any seed).
#[derive(Debug, Clone)]
enum Edit {
    Replace(f64, Vec<u8>),
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to YAML, plus anything.
    let piece = prop::collection::vec(
        prop_oneof![
            prop::sample::select(b":-[]{},#&*!|>'\"%@` \n\t0123456789.~".to_vec()),
            any::<u8>(),
        ],
        1..6,
    );
    prop_oneof![
        (0.0..1.0f64, piece.clone()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (0.0..1.0f64, piece).prop_map(|(at, b)| Edit::Insert(at, b)),
        (0.0..1.0f64, 1..40usize).prop_map(|(at, n)| Edit::Delete(at, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let at = |f: f64, len: usize| ((len as f64) * f) as usize;
        match e {
            Edit::Replace(f, b) => {
                let i = at(*f, bytes.len());
                let end = (i + b.len()).min(bytes.len());
                bytes.splice(i..end, b.iter().copied());
            }
            Edit::Insert(f, b) => {
                let i = at(*f, bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Delete(f, n) => {
                let i = at(*f, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parse and compile `text`: no panic, and every error names the file and a line.
fn check_policy(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzzed.yaml");
    let result = compile_str(
        text,
        &CompileContext {
            file,
            gateway_region: None,
        },
    );
    if let Err(errors) = result {
        prop_assert!(!errors.0.is_empty(), "an error without a problem");
        for e in &errors.0 {
            prop_assert_eq!(&e.file, file);
            prop_assert!(
                e.line >= 1 && e.column >= 1,
                "an error without a location: {} (input {:?})",
                e,
                text
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_as_a_policy_never_panic_and_errors_have_a_location(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        check_policy(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn edited_policies_never_panic_and_errors_have_a_location(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        let seeds = seed_policies();
        let text = apply(&seeds[seed.index(seeds.len())], &edits);
        check_policy(&text)?;
    }
}

// ---- classification ---------------------------------------------------------------------

fn routing_table() -> RoutingTable {
    let edge = "127.0.0.1:1".parse().expect("addr");
    let pools = support::pool(
        "edge",
        "edge",
        "us",
        &[edge],
        "[\"*\"]",
        "{ per_request: 0.001 }",
    ) + &support::pool(
        "gpu",
        "gpu",
        "eu",
        &[edge],
        "[\"*\"]",
        "{ per_gpu_hour: 2 }",
    ) + &support::pool(
        "batch",
        "batch",
        "us",
        &[edge],
        "[\"*\"]",
        "{ per_gpu_hour: 0.5 }",
    );
    let routes = "  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 16KiB, tier: standard, cache: { ttl: 10m } }\n  - { name: embeddings, match: /v1/embeddings, protocol: openai, tier: standard }\n  - { name: oip, match: /v2/models/*, protocol: oip-v2, max_body: 1MiB, tier: standard, cache: { ttl: 1m } }\n  - { name: tf, match: /v1/models/*, protocol: tf-serving, tier: standard }\n";
    let text = support::policy_with_routes(&pools, routes, "");
    compile_str(
        &text,
        &CompileContext {
            file: Path::new("classify.yaml"),
            gateway_region: None,
        },
    )
    .expect("the classification policy compiles")
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        prop::sample::select(vec![
            "x-forwarded-for",
            "x-slo-tier",
            "x-deadline-ms",
            "authorization",
            "x-api-key",
            "cache-control",
            "pragma",
            "content-type",
            "x-switchyard-callback-url",
            "idempotency-key",
        ])
        .prop_map(HeaderName::from_static),
        "[a-z][a-z0-9-]{0,12}".prop_filter_map("a header name", |s| s.parse().ok()),
    ]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        // Plausible values: addresses, numbers, tier names, directives.
        "[0-9a-fA-F:., ]{0,60}".prop_filter_map("a value", |s| HeaderValue::from_str(&s).ok()),
        "(Bearer )?[ -~]{0,40}".prop_filter_map("a value", |s| HeaderValue::from_str(&s).ok()),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_filter_map("a value", |b| HeaderValue::from_bytes(&b).ok()),
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/chat/completions".to_string()),
        Just("/v1/embeddings".to_string()),
        "[ -~]{0,30}".prop_map(|m| format!("/v2/models/{m}/infer")),
        "[ -~]{0,30}".prop_map(|m| format!("/v2/models/{m}/versions/{m}/infer")),
        "[ -~]{0,30}".prop_map(|m| format!("/v1/models/{m}:predict")),
        "/[ -~]{0,40}",
    ]
}

fn request_body() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            scalar.clone(),
            scalar.clone(),
            scalar.clone(),
            scalar,
            any::<bool>()
        )
            .prop_map(|(model, stream, temperature, inputs, trailing)| {
                let mut s = format!(
                    r#"{{"model":{model},"stream":{stream},"temperature":{temperature},"inputs":{inputs},"instances":[{inputs}],"messages":[{{"role":"user","content":{model}}}]"#
                );
                if trailing {
                    s.push('}');
                }
                s.into_bytes()
            }),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_headers_path_and_body_never_panic_classification(
        headers in prop::collection::vec((header_name(), header_value()), 0..8),
        path in request_path(),
        body in request_body(),
        peer in ip(),
        post in any::<bool>(),
        with_body in any::<bool>(),
    ) {
        thread_local! {
            static TABLE: RoutingTable = routing_table();
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(k, v);
        }
        let method = if post { Method::POST } else { Method::GET };
        TABLE.with(|table| {
            let Some(route) = table.match_route(&path) else { return };
            let facts = RequestFacts {
                peer,
                method: &method,
                path: &path,
                headers: &map,
                body: with_body.then_some(body.as_slice()),
            };
            // Either a class or a typed error; whichever, no panic.
            let _ = classify(&facts, route, table);
            let _ = switchyard::classify::client_ip(peer, &map, table);
            let _ = switchyard::classify::api_key(&map);
            let _ = switchyard::classify::client_no_cache(&map);
        });
    }
}

// ---- cache key canonicalisation ---------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Write `v` as JSON with object members in an order picked by `order` and whitespace
/// picked by `space`: the same value, spelled differently.
fn spell(v: &Value, order: &mut impl Iterator<Item = u64>, space: &[&str], out: &mut String) {
    let ws = |out: &mut String, order: &mut dyn Iterator<Item = u64>| {
        let i = order.next().unwrap_or(0) as usize % space.len();
        out.push_str(space[i]);
    };
    ws(out, order);
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                spell(item, order, space, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // Rotate and maybe reverse: another order of the same members.
            if !members.is_empty() {
                let r = order.next().unwrap_or(0) as usize % members.len();
                members.rotate_left(r);
                if order.next().unwrap_or(0) % 2 == 1 {
                    members.reverse();
                }
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(out, order);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                ws(out, order);
                out.push(':');
                spell(v, order, space, out);
            }
            out.push('}');
        }
        leaf => out.push_str(&serde_json::to_string(leaf).unwrap_or_default()),
    }
    ws(out, order);
}

fn key_of(body: &[u8]) -> Result<CacheKey, key::KeyError> {
    let parts = KeyParts {
        epoch: 0,
        generation: 0,
        scope: Scope::Shared,
        route: "chat",
        target: "/v1/chat/completions",
        model: "m",
        path_version: None,
        policy_version: None,
    };
    key::compute(&parts, body)
}

/// Change one leaf (the `pick`-th, in document order) to a different value; false when the
/// value has no leaf.
fn change_a_leaf(v: &mut Value, pick: &mut usize) -> bool {
    match v {
        Value::Array(items) => items.iter_mut().any(|i| change_a_leaf(i, pick)),
        Value::Object(map) => map.values_mut().any(|i| change_a_leaf(i, pick)),
        leaf => {
            if *pick > 0 {
                *pick -= 1;
                return false;
            }
            *leaf = match leaf.take() {
                Value::Null => Value::Bool(false),
                Value::Bool(b) => Value::Bool(!b),
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => Value::from(i.wrapping_add(1)),
                    (None, Some(f)) => Value::from(f + 1.0),
                    _ => Value::Null,
                },
                Value::String(s) => Value::String(s + "x"),
                other => other,
            };
            true
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn equal_json_values_have_equal_keys_whatever_the_spelling(
        v in json_value(),
        order in prop::collection::vec(any::<u64>(), 64),
        order2 in prop::collection::vec(any::<u64>(), 64),
    ) {
        let space = ["", " ", "\n", "\t ", "\r\n  "];
        let compact = serde_json::to_vec(&v).expect("serialises");
        let mut a = String::new();
        spell(&v, &mut order.iter().copied().cycle(), &space, &mut a);
        let mut b = String::new();
        spell(&v, &mut order2.iter().copied().cycle(), &space, &mut b);
        let k = key_of(&compact).expect("JSON has a key");
        prop_assert_eq!(key_of(a.as_bytes()).expect("JSON has a key"), k, "{}", a);
        prop_assert_eq!(key_of(b.as_bytes()).expect("JSON has a key"), k, "{}", b);
    }

    #[test]
    fn any_changed_value_changes_the_key(v in json_value(), pick in 0..64usize) {
        let before = key_of(&serde_json::to_vec(&v).expect("serialises")).expect("key");
        let mut changed = v.clone();
        let mut left = pick;
        if !change_a_leaf(&mut changed, &mut left) {
            // Fewer leaves than `pick`: change the first one instead.
            let mut first = 0;
            if !change_a_leaf(&mut changed, &mut first) {
                return Ok(()); // only empty containers
            }
        }
        prop_assume!(changed != v);
        let after = key_of(&serde_json::to_vec(&changed).expect("serialises")).expect("key");
        prop_assert_ne!(before, after, "{} vs {}", v, changed);
    }

    #[test]
    fn any_bytes_are_keyed_or_refused_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut out = Vec::new();
        let canonical = key::canonical_json(&body, &mut out);
        // Whatever is accepted canonicalises to itself.
        if canonical.is_ok() {
            let mut again = Vec::new();
            prop_assert!(key::canonical_json(&out, &mut again).is_ok());
            prop_assert_eq!(again, out);
        }
    }
}

// ---- Redis replies ----------------------------------------------------------------------

fn resp_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "[+\\-:$*][ -~]{0,12}\r\n".prop_map(String::into_bytes),
        (-3..20i64).prop_map(|n| format!("${n}\r\n").into_bytes()),
        (-3..20i64).prop_map(|n| format!("*{n}\r\n").into_bytes()),
        "[ -~]{0,12}\r\n".prop_map(String::into_bytes),
        // Any characters, multi-byte ones first too.
        "[é€😀]?.{0,6}\r\n".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_resp_reader_survives_any_reply(bytes in prop_oneof![
        resp_bytes(),
        prop::collection::vec(any::<u8>(), 0..200),
    ]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut input: &[u8] = &bytes;
        let _ = rt.block_on(switchyard::queue::resp::read_reply(&mut input));
    }
}

// ---- MMDB files -------------------------------------------------------------------------

const TEST_DB: &[u8] = include_bytes!("../geo-data/switchyard-test.mmdb");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_geo_reader_survives_any_database(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        truncate in any::<Option<prop::sample::Index>>(),
        ips in prop::collection::vec(ip(), 1..8),
    ) {
        let mut bytes = TEST_DB.to_vec();
        for (at, b) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len()));
        }
        if let Ok(db) = GeoDb::from_bytes(bytes, "fuzzed".into()) {
            for ip in ips {
                let _ = db.lookup(ip);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_not_a_geo_database(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        prop_assert!(GeoDb::from_bytes(bytes, "fuzzed".into()).is_err());
    }
}
