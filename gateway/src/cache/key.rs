//! The cache key: which answers are "the same prediction".
//!
//! A key is a BLAKE3 hash (256 bits, collision resistant: an attacker who controls request
//! bodies cannot make two different requests share an entry) over, in order and each length
//! prefixed so that no two field sequences serialise alike:
//!
//! - the purge epoch (`purge all`) and the model's purge generation (`purge model`),
//! - the scope: the tenant, else the SHA-256 of an unknown API key, else "anonymous", or
//!   "shared" on routes that declare `scope: shared`,
//! - the route name and the request target (path and query: `:predict` and `:classify` on the
//!   same model are different questions),
//! - the model, the version named in the path (OIP / TF-Serving) and the version the policy
//!   declares for the model (`models:` map), so a version bump misses by construction,
//! - the body's digest: the BLAKE3 of its **canonical** form: parsed as JSON and written back
//!   with object keys sorted and no insignificant whitespace, so key order and formatting do
//!   not matter while any change of a value does. Numbers are written as parsed (`1` and `1.0`
//!   stay different: a miss, never a wrong answer). If an object repeats a key the last one
//!   counts, as in `serde_json`. (gRPC messages, which have no canonical text form here, are
//!   digested as sent.)
//!
//! Hot path: a body's digest parses it once more (classification already validated it) into
//! a tree that borrows its strings from the body (only containers and strings with escapes
//! allocate), writes one output buffer the size of the body and hashes it: ~5 µs for a 1 KB
//! body (`benches/cache.rs`), a third of a cache hit's work. A repeat is usually the same
//! bytes (one client SDK serialises one question alike), so [`DigestMemo`] remembers the
//! digests of recent bodies by their exact bytes, and a repeat costs a fast hash and a
//! byte-for-byte compare instead. The key over the digest is one short BLAKE3.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A cache key: 32 bytes of BLAKE3.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex, as reported in `x-switchyard-cache-key` and accepted by the purge API.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Parse 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Option<CacheKey> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        };
        let mut out = [0u8; 32];
        for (i, pair) in text.chunks(2).enumerate() {
            out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(CacheKey(out))
    }

    /// Which of the coalescing map's shards the key lives in.
    pub(crate) fn shard(&self, shards: usize) -> usize {
        self.0[0] as usize % shards
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

/// Who may see an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every caller (`scope: shared`, for public models).
    Shared,
    /// A tenant of the policy, by name.
    Tenant(&'a str),
    /// An API key the policy does not know, by its SHA-256: two such callers never share.
    Credential(&'a [u8; 32]),
    /// Callers without any API key.
    Anonymous,
}

/// Everything besides the body that goes into a key.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub epoch: u64,
    pub generation: u64,
    pub scope: Scope<'a>,
    pub route: &'a str,
    /// Path and query of the request.
    pub target: &'a str,
    pub model: &'a str,
    /// The version named in the request path, if any.
    pub path_version: Option<&'a str>,
    /// The version the policy declares for the model, if any.
    pub policy_version: Option<&'a str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the body is not JSON, so it has no canonical form: {0}")]
    NotJson(String),
}

/// The BLAKE3 of a body's canonical form (JSON), or of its bytes as sent (gRPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest([u8; 32]);

/// How a body is digested: the two never share a digest (each is hashed under its own BLAKE3
/// key), so a memo entry of one is never taken for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// JSON, canonicalised.
    Json,
    /// Bytes as sent (protobuf).
    Raw,
}

impl BodyDigest {
    /// Digest `body` in the given form. Fails only for `Json` bodies that are not JSON.
    pub fn of(body: &[u8], form: BodyForm) -> Result<BodyDigest, KeyError> {
        Ok(match form {
            BodyForm::Json => {
                // One buffer, sized for the usual case that the canonical form is no longer
                // than the body as sent; hashing one contiguous slice lets BLAKE3 use its SIMD
                // paths.
                let mut canonical = Vec::with_capacity(body.len());
                canonical_json(body, &mut canonical)?;
                Self::hash(b"switchyard cache v2: json body  ", &canonical)
            }
            BodyForm::Raw => Self::hash(b"switchyard cache v2: raw body   ", body),
        })
    }

    /// Keyed BLAKE3: domain separation at no cost (a derive-key context would be hashed
    /// again on every call).
    fn hash(domain: &[u8; 32], bytes: &[u8]) -> BodyDigest {
        BodyDigest(*blake3::keyed_hash(domain, bytes).as_bytes())
    }
}

/// The key of a request: `parts` and the canonical form of `body` (JSON).
pub fn compute(parts: &KeyParts, body: &[u8]) -> Result<CacheKey, KeyError> {
    Ok(compute_with(parts, &BodyDigest::of(body, BodyForm::Json)?))
}

/// The key of a request: `parts` and the body's digest.
pub fn compute_with(parts: &KeyParts, body: &BodyDigest) -> CacheKey {
    // One contiguous, length-prefixed input (a few hundred bytes at most): BLAKE3 hashes it
    // in a handful of compressions, where an `update` per field would cost a call each.
    let mut input = Vec::with_capacity(160 + parts.route.len() + parts.target.len());
    input.extend_from_slice(&parts.epoch.to_le_bytes());
    input.extend_from_slice(&parts.generation.to_le_bytes());
    match parts.scope {
        Scope::Shared => field(&mut input, b'S', b""),
        Scope::Tenant(name) => field(&mut input, b'T', name.as_bytes()),
        Scope::Credential(digest) => field(&mut input, b'K', digest),
        Scope::Anonymous => field(&mut input, b'A', b""),
    }
    field(&mut input, b'r', parts.route.as_bytes());
    field(&mut input, b'p', parts.target.as_bytes());
    field(&mut input, b'm', parts.model.as_bytes());
    optional(&mut input, b'v', parts.path_version);
    optional(&mut input, b'V', parts.policy_version);
    field(&mut input, b'b', &body.0);
    CacheKey(*blake3::keyed_hash(b"switchyard cache v2: request key", &input).as_bytes())
}

fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn optional(out: &mut Vec<u8>, tag: u8, value: Option<&str>) {
    match value {
        Some(v) => field(out, tag, v.as_bytes()),
        // A length no real field can have: `None` never equals `Some("")`.
        None => {
            out.push(tag);
            out.extend_from_slice(&u64::MAX.to_le_bytes());
        }
    }
}

/// The digests of recently seen bodies, by their exact bytes (see the module docs). A pure
/// memo of [`BodyDigest::of`]: an entry is right or absent, never stale, since purges,
/// scopes and policy versions are the other parts of a key, not of the digest.
///
/// Direct-mapped: a body's fast hash picks its slot, a body hashing to a taken slot replaces
/// what is there, and a hit is checked byte for byte (a fast-hash collision is a memo miss,
/// never a wrong digest). Bounded: [`MEMO_SLOTS`] slots, bodies up to [`MEMO_MAX_BODY`],
/// and at most `budget` bytes of bodies in all; it holds copies of recent request bodies
/// (prompts), as the process's request buffers do, and nothing else.
pub struct DigestMemo {
    slots: Box<[Mutex<Option<Memoized>>]>,
    hasher: foldhash::quality::RandomState,
    bytes: AtomicUsize,
    budget: usize,
}

struct Memoized {
    form: BodyForm,
    body: Box<[u8]>,
    digest: BodyDigest,
}

/// Slots of the memo (a power of two).
pub const MEMO_SLOTS: usize = 4096;
/// The largest body the memo keeps: beyond this, parsing dominates a request anyway.
pub const MEMO_MAX_BODY: usize = 64 * 1024;

impl DigestMemo {
    /// A memo holding at most `budget` bytes of bodies.
    pub fn new(budget: usize) -> DigestMemo {
        DigestMemo {
            slots: (0..MEMO_SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: foldhash::quality::RandomState::default(),
            bytes: AtomicUsize::new(0),
            budget,
        }
    }

    /// The digest of `body`: remembered if these exact bytes were digested lately, else
    /// computed (and remembered, within the bounds).
    pub fn digest(&self, body: &[u8], form: BodyForm) -> Result<BodyDigest, KeyError> {
        if body.len() > MEMO_MAX_BODY || body.len() > self.budget {
            return BodyDigest::of(body, form);
        }
        let slot = &self.slots[self.hasher.hash_one(body) as usize & (MEMO_SLOTS - 1)];
        if let Ok(held) = slot.lock() {
            if let Some(m) = held.as_ref() {
                if m.form == form && *m.body == *body {
                    return Ok(m.digest);
                }
            }
        }
        // Computed outside the lock: a slow parse holds no other request up.
        let digest = BodyDigest::of(body, form)?;
        self.remember(slot, body, form, digest);
        Ok(digest)
    }

    fn remember(
        &self,
        slot: &Mutex<Option<Memoized>>,
        body: &[u8],
        form: BodyForm,
        digest: BodyDigest,
    ) {
        let Ok(mut held) = slot.lock() else { return };
        let freed = held.as_ref().map_or(0, |m| m.body.len());
        // Reserve first, so that concurrent inserts never take the total past the budget.
        let grown = body.len().saturating_sub(freed);
        let reserved = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + grown <= self.budget).then_some(b + grown)
            });
        if reserved.is_err() {
            return;
        }
        *held = Some(Memoized {
            form,
            body: body.into(),
            digest,
        });
        // The slot's old body was larger: give the difference back.
        self.bytes
            .fetch_sub(freed.saturating_sub(body.len()), Ordering::AcqRel);
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// Write the canonical form of the JSON text `body` to `out`: object keys sorted (by their
/// UTF-8 bytes), no whitespace, strings with `serde_json`'s escaping, numbers as parsed.
pub fn canonical_json(body: &[u8], out: &mut Vec<u8>) -> Result<(), KeyError> {
    let tree: Node = serde_json::from_slice(body).map_err(|e| KeyError::NotJson(e.to_string()))?;
    tree.write(out);
    Ok(())
}

/// A parsed JSON value that borrows its strings from the body where it can (no escapes),
/// so that canonicalising allocates only the containers, not the text. Object members are
/// sorted once, when the object is complete.
enum Node<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl Node<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Bool(true) => out.extend_from_slice(b"true"),
            Node::Bool(false) => out.extend_from_slice(b"false"),
            Node::Number(n) => {
                use std::io::Write;
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{n}");
            }
            Node::String(s) => write_string(s, out),
            Node::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Node::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(k, out);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
        serde_json::Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Node<'de>)> = Vec::new();
        while let Some((Key(k), v)) = map.next_entry::<Key, Node>()? {
            members.push((k, v));
        }
        // Stable sort, then keep the last of equal keys: what `serde_json::Value` does.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(Cow<'de, str>, Node<'de>)> = Vec::with_capacity(members.len());
        for (k, v) in members {
            match deduped.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => deduped.push((k, v)),
            }
        }
        Ok(Node::Object(deduped))
    }
}

/// `s` as a JSON string, escaped exactly as `serde_json` escapes it (`"`, `\\` and the
/// control bytes below 0x20; nothing else). Most strings need no escape at all (a prompt is
/// mostly plain text): they are copied whole, after a check the compiler vectorises;
/// `serde_json`'s writer, which goes byte by byte, was ~9% of a cache hit's instructions.
fn write_string(s: &str, out: &mut Vec<u8>) {
    if needs_escape(s.as_bytes()) {
        // serde_json's escaping is deterministic; writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs any of `bytes` escaped. Whole 16-byte chunks are tested without an
/// early exit, which the compiler turns into vector compares.
fn needs_escape(bytes: &[u8]) -> bool {
    let escaped = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | escaped(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| escaped(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "héllo wörld ✓ 🚀 \u{7f}".into(),
            "a\"quote".into(),
            "back\\slash".into(),
            "tab\tnew\nline\r\u{8}\u{c}\u{0}\u{1f}".into(),
        ];
        // Each escaped byte at every position around the 16-byte chunks.
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
            for at in 0..40 {
                let mut s: String = "x".repeat(40);
                s.replace_range(at..at + 1, &special.to_string());
                cases.push(s);
            }
        }
        cases.push("The quick brown fox jumps over the lazy dog. ".repeat(20));
        for case in cases {
            let mut ours = Vec::new();
            write_string(&case, &mut ours);
            let theirs = serde_json::to_vec(&case).unwrap();
            assert_eq!(ours, theirs, "{case:?}");
        }
    }

    fn canon(s: &str) -> String {
        let mut out = Vec::new();
        canonical_json(s.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn parts(scope: Scope<'_>) -> KeyParts<'_> {
        KeyParts {
            epoch: 0,
            generation: 0,
            scope,
            route: "chat",
            target: "/v1/chat/completions",
            model: "m",
            path_version: None,
            policy_version: None,
        }
    }

    #[test]
    fn canonical_form_sorts_keys_and_drops_whitespace() {
        assert_eq!(canon(r#"{ "b": 2, "a": 1 }"#), r#"{"a":1,"b":2}"#);
        assert_eq!(
            canon(r#"{"z":[ {"y":true,"x":null} ],"a":"\u0041\n"}"#),
            r#"{"a":"A\n","z":[{"x":null,"y":true}]}"#
        );
        assert_eq!(canon("1.5"), "1.5");
        assert_ne!(canon(r#"{"a":1}"#), canon(r#"{"a":1.0}"#));
        assert!(canonical_json(b"{nope", &mut Vec::new()).is_err());
    }

    #[test]
    fn keys_differ_by_every_part() {
        let body = br#"{"model":"m","input":"x"}"#;
        let base = compute(&parts(Scope::Anonymous), body).unwrap();
        let reordered = compute(&parts(Scope::Anonymous), br#"{"input":"x","model":"m"}"#);
        assert_eq!(reordered.unwrap(), base);
        let digest = [7u8; 32];
        let variants = [
            compute(&parts(Scope::Shared), body),
            compute(&parts(Scope::Tenant("acme")), body),
            compute(&parts(Scope::Credential(&digest)), body),
            compute(&parts(Scope::Anonymous), br#"{"model":"m","input":"y"}"#),
            compute(
                &KeyParts {
                    generation: 1,
                    ..parts(Scope::Anonymous)
                },
                body,
            ),
            compute(
                &KeyParts {
                    policy_version: Some("2"),
                    ..parts(Scope::Anonymous)
                },
                body,
            ),
            compute(
                &KeyParts {
                    path_version: Some("2"),
                    ..parts(Scope::Anonymous)
                },
                body,
            ),
            compute(
                &KeyParts {
                    target: "/v1/chat/completions?x=1",
                    ..parts(Scope::Anonymous)
                },
                body,
            ),
        ];
        for v in &variants {
            assert_ne!(v.as_ref().unwrap(), &base);
        }
        // A tenant named like a path/route mix cannot collide with another split of fields.
        let a = compute(
            &KeyParts {
                route: "ab",
                target: "c",
                ..parts(Scope::Anonymous)
            },
            body,
        );
        let b = compute(
            &KeyParts {
                route: "a",
                target: "bc",
                ..parts(Scope::Anonymous)
            },
            body,
        );
        assert_ne!(a.unwrap(), b.unwrap());
    }

    #[test]
    fn the_memo_gives_the_digest_it_would_compute() {
        let memo = DigestMemo::new(1 << 20);
        let bodies: Vec<String> = (0..3 * MEMO_SLOTS)
            .map(|i| format!(r#"{{"model":"m","input":"question {i}"}}"#))
            .collect();
        // Twice over more bodies than slots: every lookup, remembered, replaced or new, is
        // the digest computed afresh.
        for _ in 0..2 {
            for body in &bodies {
                let direct = BodyDigest::of(body.as_bytes(), BodyForm::Json).unwrap();
                assert_eq!(memo.digest(body.as_bytes(), BodyForm::Json), Ok(direct));
            }
        }
        assert!(memo.bytes() > 0 && memo.bytes() <= 1 << 20);
        // The same bytes in the other form are another digest, memo or not.
        let body = bodies[0].as_bytes();
        let raw = memo.digest(body, BodyForm::Raw).unwrap();
        assert_eq!(raw, BodyDigest::of(body, BodyForm::Raw).unwrap());
        assert_ne!(raw, memo.digest(body, BodyForm::Json).unwrap());
        // Formatting is not part of a JSON digest; bytes are part of a raw one.
        let spaced = br#"{ "input": "question 0", "model": "m" }"#;
        assert_eq!(
            memo.digest(spaced, BodyForm::Json),
            memo.digest(body, BodyForm::Json)
        );
        assert_ne!(memo.digest(spaced, BodyForm::Raw).unwrap(), raw);
        // Not JSON: an error every time, nothing remembered.
        let held = memo.bytes();
        assert!(memo.digest(b"{nope", BodyForm::Json).is_err());
        assert!(memo.digest(b"{nope", BodyForm::Json).is_err());
        assert_eq!(memo.bytes(), held);
    }

    #[test]
    fn the_memo_keeps_to_its_budget() {
        let memo = DigestMemo::new(10_000);
        for i in 0..1000 {
            let body = format!(r#"{{"input":"{}"}}"#, "x".repeat(i));
            let direct = BodyDigest::of(body.as_bytes(), BodyForm::Json).unwrap();
            assert_eq!(memo.digest(body.as_bytes(), BodyForm::Json), Ok(direct));
            assert!(memo.bytes() <= 10_000, "{} bytes held", memo.bytes());
        }
        // Larger than a memo keeps: digested, not held.
        let memo = DigestMemo::new(usize::MAX);
        let big = format!(r#"{{"input":"{}"}}"#, "x".repeat(MEMO_MAX_BODY));
        let direct = BodyDigest::of(big.as_bytes(), BodyForm::Json).unwrap();
        assert_eq!(memo.digest(big.as_bytes(), BodyForm::Json), Ok(direct));
        assert_eq!(memo.bytes(), 0);
    }

    #[test]
    fn hex_round_trip() {
        let k = compute(&parts(Scope::Anonymous), b"{}").unwrap();
        assert_eq!(CacheKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(CacheKey::from_hex(&k.to_hex().to_uppercase()), Some(k));
        assert_eq!(CacheKey::from_hex("abc"), None);
    }
}
