//! `switchyard schema`: the JSON Schema (draft 2020-12) of the policy file, for editors
//! (`# yaml-language-server: $schema=./schema.json`) and CI. Shipped as `policies/schema.json`;
//! a test keeps the two identical and validates every shipped policy against it.
//!
//! Derived from `policy::raw` (its `JsonSchema` derives, feature `schema` of
//! `switchyard-gateway`), so it cannot drift from what the gateway parses: every struct
//! there denies unknown fields (`additionalProperties: false`), a field with a serde
//! default is optional, an `Option` also accepts `null`, and the doc comments are the
//! descriptions. Durations, sizes and a few other strings carry the patterns of
//! `policy::schema`. References between names and semantic limits are checked by
//! `switchyard check`, not here. After changing `raw.rs`, run
//! `switchyard schema > policies/schema.json`.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::Schema;
use serde_json::Value;
use switchyard_gateway::policy::raw::Policy;

/// The policy schema as a JSON value.
pub fn policy_schema() -> Value {
    // Inlined rather than `$ref`s into `$defs`: each property carries its own description
    // and bounds, as editors show them, and the YAML language server's JSON Schema support
    // (draft 7 and older) has nothing to resolve.
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .with_transform(RecursiveTransform(tidy))
        .into_generator();
    let mut schema = generator.into_root_schema_for::<Policy>();
    schema.insert("title".into(), "Switchyard routing policy".into());
    schema.to_value()
}

/// What an editor shows, not what Rust knows: drop `format` (`uint32`, `double`: Rust types,
/// no JSON Schema format) and `default: null` (an absent `Option`; an editor would offer to
/// write `null`), and unwrap the doc comments' lines into paragraphs.
fn tidy(schema: &mut Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("format");
    if obj.get("default") == Some(&Value::Null) {
        obj.remove("default");
    }
    if let Some(Value::String(text)) = obj.get_mut("description") {
        *text = unwrap_lines(text);
    }
}

/// Doc-comment text as paragraphs: the lines of each are joined with spaces; blank lines
/// between paragraphs and line breaks before list items (`- `) are kept.
fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank {
                "\n\n"
            } else if line.starts_with("- ") {
                "\n"
            } else {
                " "
            });
        }
        blank = false;
        out.push_str(line);
    }
    out
}

/// The schema as shipped in `policies/schema.json`: pretty JSON with a final newline.
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&policy_schema()).unwrap_or_default();
    s.push('\n');
    s
}
