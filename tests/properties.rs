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
use switchyard_gateway::cache::key::{self, CacheKey, KeyParts, Scope};
use switchyard_gateway::classify::json;
use switchyard_gateway::classify::{classify, RequestFacts};
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::geo::GeoDb;
use switchyard_gateway::serving::state::Fleet;
use switchyard_gateway::serving::Serving;

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
    edit_of(b":-[]{},#&*!|>'\"%@` \n\t0123456789.~", 6, 40)
}

/// Replace, insert (up to `piece` bytes, from `alphabet` or any) or delete (up to `delete`
/// bytes) somewhere.
fn edit_of(alphabet: &[u8], piece: usize, delete: usize) -> impl Strategy<Value = Edit> {
    let piece = prop::collection::vec(
        prop_oneof![prop::sample::select(alphabet.to_vec()), any::<u8>()],
        1..piece,
    );
    prop_oneof![
        (0.0..1.0f64, piece.clone()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (0.0..1.0f64, piece).prop_map(|(at, b)| Edit::Insert(at, b)),
        (0.0..1.0f64, 1..delete).prop_map(|(at, n)| Edit::Delete(at, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    String::from_utf8_lossy(&apply_bytes(text, edits)).into_owned()
}

fn apply_bytes(text: &str, edits: &[Edit]) -> Vec<u8> {
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
    bytes
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

fn routing_table() -> Serving {
    use support::{Policy, Pool, Route};
    let edge = "127.0.0.1:1";
    let text = Policy::new()
        .pool(Pool::edge("edge").endpoint(edge).per_request(0.001))
        .pool(
            Pool::gpu("gpu")
                .region("eu")
                .endpoint(edge)
                .per_gpu_hour(2.0),
        )
        .pool(Pool::batch("batch").endpoint(edge))
        .route(Route::chat().cache("{ ttl: 10m }"))
        .route(Route::oip().cache("{ ttl: 1m }"))
        .render();
    let table = compile_str(
        &text,
        &CompileContext {
            file: Path::new("classify.yaml"),
            gateway_region: None,
        },
    )
    .expect("the classification policy compiles");
    Serving::load(table, &Fleet::default()).expect("resources")
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
            static TABLE: Serving = routing_table();
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
            let _ = switchyard_gateway::classify::client_ip(peer, &map, table);
            let _ = switchyard_gateway::classify::api_key(&map);
            let _ = switchyard_gateway::classify::client_no_cache(&map);
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

// ---- the fast JSON scan of classification -------------------------------------------------

/// An OpenAI-style body: random members plus `model`, `temperature`, `n` and `stream`, each
/// maybe absent, of the expected type or not, spelled with random member order and spaces.
fn openai_body() -> impl Strategy<Value = String> {
    let maybe = |s: BoxedStrategy<Value>| prop::option::weighted(0.8, s);
    let model = prop_oneof![
        "[a-z0-9.:/-]{0,12}".prop_map(Value::String),
        ".{0,6}".prop_map(Value::String),
        Just(Value::Null),
        Just(Value::from(7)),
    ]
    .boxed();
    let temperature = prop_oneof![
        Just(Value::from(0)),
        Just(Value::from(0.0)),
        (-2.0..2.0f64).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
        Just(Value::from("0")),
    ]
    .boxed();
    let n = prop_oneof![
        (0..4u32).prop_map(Value::from),
        Just(Value::from(-1)),
        Just(Value::from(1.5)),
        Just(Value::from(4_294_967_296u64)),
        Just(Value::Null),
    ]
    .boxed();
    let stream = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(Value::from(1))
    ]
    .boxed();
    (
        prop::collection::btree_map(".{0,8}", json_value(), 0..4),
        (maybe(model), maybe(temperature), maybe(n), maybe(stream)),
        prop::collection::vec(any::<u64>(), 64),
    )
        .prop_map(|(extra, (model, temperature, n, stream), order)| {
            let mut map: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (name, v) in [
                ("model", model),
                ("temperature", temperature),
                ("n", n),
                ("stream", stream),
            ] {
                if let Some(v) = v {
                    map.insert(name.into(), v);
                }
            }
            let mut out = String::new();
            let mut order = order.into_iter().cycle();
            spell(
                &Value::Object(map),
                &mut order,
                &["", " ", "\n\t", "\r\n  "],
                &mut out,
            );
            out
        })
}

/// Values near the edges of JSON's grammar: numbers with and without their digits, signs,
/// leading zeros, fractions and exponents; literals whole and cut; strings with escapes,
/// `\u` codes and surrogates; arrays and objects of those, closed or not.
fn json_soup() -> impl Strategy<Value = String> {
    let number = "-?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,3})?";
    let literal = "(tru|true|fals|false|nul|null|truex)";
    let string =
        "\"([a-z ]|\\\\[\"\\\\/bfnrtux]|\\\\u[0-9a-fA-F]{0,4}|\\\\ud[89abc][0-9a-f]{2}){0,3}\"?";
    let leaf = prop_oneof![number, literal, string];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..3), "[ ,]?\\]?")
                .prop_map(|(items, end)| format!("[{}{end}", items.join(","))),
            (prop::collection::vec(inner, 0..3), "[ ,]?\\}?").prop_map(|(items, end)| format!(
                "{{{}{end}",
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("\"k{i}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        ]
    })
}

/// Edits that matter to JSON, plus any byte.
fn json_edit() -> impl Strategy<Value = Edit> {
    edit_of(b"{}[]\",:\\/ \t\n0123456789.eE+-tfnrlsu", 4, 4)
}

fn same_fields(fast: &json::OpenAiFields, serde: &json::OpenAiFields) -> Result<(), TestCaseError> {
    prop_assert_eq!(&fast.model, &serde.model);
    prop_assert_eq!(fast.stream, serde.stream);
    prop_assert_eq!(fast.n, serde.n);
    match (fast.temperature, serde.temperature) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            // Zero (what makes a request deterministic) exactly; elsewhere the last bit.
            prop_assert_eq!(a == 0.0, b == 0.0);
            prop_assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(b.abs()),
                "{} vs {}",
                a,
                b
            );
        }
        (a, b) => prop_assert!(false, "temperature {:?} vs {:?}", a, b),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..config() })]

    #[test]
    fn the_fast_scan_reads_bodies_as_serde_json_does(body in openai_body()) {
        let serde = json::openai_fields_serde(body.as_bytes());
        match json::openai_fields(body.as_bytes()) {
            Some(fast) => {
                let serde = serde.map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
                same_fields(&fast, &serde)?;
            }
            // The scan leaves only escapes (and what serde_json refuses) to serde_json: it
            // is the fast path for the bodies clients send.
            None => prop_assert!(serde.is_err() || body.contains('\\'), "refused: {}", body),
        }
        prop_assert!(json::is_valid(body.as_bytes()), "{}", body);
    }

    #[test]
    fn the_fast_scan_never_accepts_what_serde_json_refuses(
        body in openai_body(),
        edits in prop::collection::vec(json_edit(), 1..4),
    ) {
        let bytes = apply_bytes(&body, &edits);
        if let Some(fast) = json::openai_fields(&bytes) {
            let serde = json::openai_fields_serde(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
            same_fields(&fast, &serde)?;
        }
        if json::is_valid(&bytes) {
            prop_assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    /// Short runs of JSON's own characters as a member's value: numbers, literals, escapes
    /// and nesting near their edges, densely.
    #[test]
    fn the_fast_scan_agrees_on_token_soup(
        soup in json_soup(),
        member in prop::sample::select(vec!["x", "model", "temperature", "n", "stream"]),
    ) {
        let body = format!(r#"{{"model":"m","{member}":{soup}}}"#);
        if let Some(fast) = json::openai_fields(body.as_bytes()) {
            let serde = json::openai_fields_serde(body.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
            same_fields(&fast, &serde)?;
        }
        if json::is_valid(soup.as_bytes()) {
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&soup).is_ok(), "{}", soup);
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
        let _ = rt.block_on(switchyard_gateway::queue::resp::read_reply(&mut input));
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
