//! How the policy's written values look in its JSON Schema (feature `schema`; `switchyard
//! schema` prints it). The schema is derived from [`super::raw`]: each raw type derives
//! `schemars::JsonSchema`, its doc comments become the descriptions, and a field whose Rust
//! type says less than the file does names one of the types below with
//! `#[schemars(with = "…")]`. Every [`Spanned<T>`](serde_saphyr::Spanned) field names its `T`
//! that way too, since a location is not part of the file.
//!
//! These types exist only for the schema: nothing deserializes into them. The patterns say
//! what the compiler's parsers accept ([`parse_duration`](super::compile::parse_duration),
//! [`parse_size`](super::compile::parse_size), …), never less: a value the gateway takes must
//! not be marked wrong in an editor.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// A number and a unit, as `parse_duration` reads it.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\.?[0-9]*|\.[0-9]+)\s*(us|µs|ms|s|m|h)\s*$";
/// Whole bytes with an optional decimal or binary unit, as `parse_size` reads it.
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$";
/// Two times of day, as the queue's `window` parser reads them (hour < 24 and minute < 60
/// are left to `switchyard check`).
pub const WINDOW_PATTERN: &str = r"^\s*\+?[0-9]+:\+?[0-9]+\s*-\s*\+?[0-9]+:\+?[0-9]+\s*$";

/// Declares a schema-only type (a string, mostly): its name in the schema and the schema
/// itself, always inlined.
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident, $schema:tt) => {
        $(#[$doc])*
        pub struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

schema_type!(
    /// A duration such as `150ms`, `1.5s`, `10m` (units `us`, `ms`, `s`, `m`, `h`).
    Duration,
    { "type": "string", "pattern": DURATION_PATTERN, "examples": ["150ms", "2s", "10m"] }
);

schema_type!(
    /// A size in bytes such as `64KiB`, `256MiB` or `2048` (units `B`, `KB`, `KiB`, `MB`,
    /// `MiB`, `GB`, `GiB`). A bare number is a YAML integer, which the gateway reads as the
    /// same string.
    Size,
    {
        "type": ["string", "integer"],
        "minimum": 0,
        "pattern": SIZE_PATTERN,
        "examples": ["64KiB", "32MiB"]
    }
);

schema_type!(
    /// 64 lower-case hex characters.
    Sha256Hex,
    { "type": "string", "pattern": "^[0-9a-f]{64}$" }
);

schema_type!(
    /// Two upper-case letters: an ISO 3166-1 country or a GeoIP continent code.
    AreaCode,
    { "type": "string", "pattern": "^[A-Z]{2}$" }
);

schema_type!(
    /// A URL path, starting with `/`.
    UrlPath,
    { "type": "string", "pattern": "^/" }
);

schema_type!(
    /// A URL path prefix: starts with `/`, no `?`, `#` or space.
    PathPrefix,
    { "type": "string", "pattern": "^/[^?# ]*$" }
);

schema_type!(
    /// A daily UTC window `HH:MM-HH:MM`.
    Window,
    { "type": "string", "pattern": WINDOW_PATTERN, "examples": ["22:00-06:00"] }
);

schema_type!(
    /// Milliseconds, 0 or more.
    Millis,
    { "type": "number", "minimum": 0 }
);
