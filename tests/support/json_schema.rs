//! A small JSON Schema validator for the subset `switchyard schema` uses (`type`, `properties`,
//! `required`, `additionalProperties`, `items`, `enum`, `const`, `pattern`, `minimum`,
//! `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `anyOf`, `oneOf`; the schema is derived
//! with every subschema inlined, so there is no `$ref`), so the tests can check shipped
//! policies against the shipped schema without a heavy dependency. It is test support only:
//! it must not grow into a general validator, and a keyword it does not know makes it fail
//! loudly rather than pass silently.

use regex::Regex;
use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "title",
    "description",
    "default",
    "examples",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "pattern",
    "anyOf",
    "oneOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

/// The branch of `schema`'s `anyOf` / `oneOf` that `value` matches (the first, recursively),
/// or `schema` itself when it has neither or no branch matches.
pub fn branch<'a>(schema: &'a Value, value: &Value) -> &'a Value {
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            if let Some(b) = options.iter().find(|b| validate(b, value).is_empty()) {
                return branch(b, value);
            }
        }
    }
    schema
}

/// Every violation of `schema` by `value`, as `pointer: message`.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown type {other:?} in schema"),
    }
}

fn check(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        panic!("schema at {at:?} is not an object: {schema}");
    };
    for k in s.keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "schema keyword {k:?} at {at:?} is not supported by the test validator"
        );
    }
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_matches(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap_or(""), v)),
            _ => panic!("bad type at {at:?}"),
        };
        if !ok {
            errors.push(format!("{at}: expected type {t}, found {v}"));
            return;
        }
    }
    for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        let Some(options) = s.get(key) else { continue };
        let Value::Array(options) = options else {
            panic!("{key} at {at:?} is not an array");
        };
        let results: Vec<Vec<String>> = options
            .iter()
            .map(|o| {
                let mut found = Vec::new();
                check(o, v, at, &mut found);
                found
            })
            .collect();
        let matched = results.iter().filter(|r| r.is_empty()).count();
        if matched == 0 {
            let why: Vec<String> = results.into_iter().flatten().collect();
            errors.push(format!(
                "{at}: matches no branch of {key}: {}",
                why.join("; ")
            ));
        } else if exactly_one && matched > 1 {
            errors.push(format!("{at}: matches {matched} branches of oneOf"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errors.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let (Some(p), Value::String(text)) = (s.get("pattern"), v) {
        let p = p.as_str().expect("pattern is a string");
        let re = Regex::new(p).unwrap_or_else(|e| panic!("pattern {p:?} at {at:?}: {e}"));
        if !re.is_match(text) {
            errors.push(format!("{at}: {v} does not match the pattern {p}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            errors.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errors.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let Some(min) = s.get("exclusiveMinimum").and_then(Value::as_f64) {
            if n <= min {
                errors.push(format!(
                    "{at}: {n} is not above the exclusive minimum {min}"
                ));
            }
        }
        if let Some(max) = s.get("exclusiveMaximum").and_then(Value::as_f64) {
            if n >= max {
                errors.push(format!(
                    "{at}: {n} is not below the exclusive maximum {max}"
                ));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errors.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
    }
    if let Value::Object(obj) = v {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or("");
            if !obj.contains_key(name) {
                errors.push(format!("{at}: missing required property `{name}`"));
            }
        }
        for (k, child) in obj {
            let here = format!("{at}/{k}");
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check(sub, child, &here, errors),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: unknown property `{k}`"))
                    }
                    Some(Value::Bool(true)) | None => {}
                    Some(sub) => check(sub, child, &here, errors),
                },
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (v, s.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(sub, item, &format!("{at}/{i}"), errors);
        }
    }
}
