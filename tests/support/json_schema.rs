//! A small JSON Schema validator for the subset `switchyard schema` uses (`type`, `properties`,
//! `required`, `additionalProperties`, `items`, `enum`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`), so the tests can check shipped policies against
//! the shipped schema without a heavy dependency. It is test support only: it must not grow into a general validator, and a keyword it does not
//! know makes it fail loudly rather than pass silently.

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

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
