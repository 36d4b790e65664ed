//! The gRPC wire format of `inference.GRPCInferenceService`: which method a request calls,
//! the model (and version) its protobuf message names, and the few encoders the gateway's own
//! answers need.
//!
//! Owns the gRPC message prefix (1-byte compressed flag, u32 big-endian length) and a small
//! hand-written protobuf field walker (wire types varint, 64-bit, length-delimited, 32-bit),
//! so that the build needs no `protoc` and no generated code. Every request message of the
//! methods routed by model (`ModelInfer`, `ModelReady`, `ModelMetadata`, `ModelConfig`)
//! carries the model name in field 1 and its version in field 2, which is all routing needs.
//! The input is untrusted: the walker never panics, never allocates per field, and finishes
//! in one pass over the bytes (each step consumes at least one byte).

/// What is wrong with a gRPC request's framing or message (`classify` turns it into a
/// `CodecError`, which `error.rs` maps to a gRPC status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The message is not valid protobuf, or not the shape the method takes.
    BadProtobuf(&'static str),
    /// The message is compressed (not supported).
    Compressed,
    /// Not a method the gateway routes.
    Unimplemented(String),
}
use std::time::Duration;

/// The path prefix of the Open Inference Protocol v2 gRPC service.
pub const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// The methods of `inference.GRPCInferenceService` the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ServerLive,
    ServerReady,
    ServerMetadata,
    ModelReady,
    ModelMetadata,
    ModelConfig,
    ModelInfer,
    ModelStreamInfer,
}

impl Method {
    /// The method a request path calls, if it is one of the service's.
    pub fn from_path(path: &str) -> Option<Method> {
        Some(match path.strip_prefix(SERVICE_PREFIX)? {
            "ServerLive" => Method::ServerLive,
            "ServerReady" => Method::ServerReady,
            "ServerMetadata" => Method::ServerMetadata,
            "ModelReady" => Method::ModelReady,
            "ModelMetadata" => Method::ModelMetadata,
            "ModelConfig" => Method::ModelConfig,
            "ModelInfer" => Method::ModelInfer,
            "ModelStreamInfer" => Method::ModelStreamInfer,
            _ => return None,
        })
    }

    /// Answered by the gateway itself, without a pool.
    pub fn is_server(self) -> bool {
        matches!(
            self,
            Method::ServerLive | Method::ServerReady | Method::ServerMetadata
        )
    }

    /// An inference (spend, cacheable when the route caches); the others are metadata.
    pub fn is_inference(self) -> bool {
        self == Method::ModelInfer
    }
}

/// Whether a request is gRPC: `content-type: application/grpc` or `application/grpc+…`.
pub fn is_grpc_content_type(value: Option<&[u8]>) -> bool {
    value.is_some_and(|v| {
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && (v.len() == 16 || v[16] == b'+' || v[16] == b';')
    })
}

/// What routing needs from a gRPC request.
#[derive(Debug, PartialEq, Eq)]
pub struct GrpcPeek {
    pub method: Method,
    pub model: String,
    pub version: Option<String>,
}

/// Classify a gRPC request from its path and its (whole, unary) body.
pub fn peek(path: &str, body: Option<&[u8]>) -> Result<GrpcPeek, CodecError> {
    let method =
        Method::from_path(path).ok_or_else(|| CodecError::Unimplemented(truncate(path, 128)))?;
    if method == Method::ModelStreamInfer {
        // Bidirectional streaming: the request body never ends while the client waits for
        // answers, so it cannot be read before routing.
        return Err(CodecError::Unimplemented(
            "ModelStreamInfer (streaming) is not routed by this gateway".into(),
        ));
    }
    let msg = unary_message(body.unwrap_or_default())?;
    let mut model: Option<&[u8]> = None;
    let mut version: Option<&[u8]> = None;
    for field in Fields::new(msg) {
        match field? {
            (1, Value::Bytes(b)) => model = Some(b),
            (2, Value::Bytes(b)) => version = Some(b),
            (1 | 2, _) => return Err(CodecError::BadProtobuf("field 1 or 2 is not a string")),
            _ => {}
        }
    }
    fn as_str(b: &[u8]) -> Result<&str, CodecError> {
        std::str::from_utf8(b)
            .map_err(|_| CodecError::BadProtobuf("model name or version is not UTF-8"))
    }
    let model = as_str(model.unwrap_or_default())?;
    if model.is_empty() {
        return Err(CodecError::BadProtobuf("no model name in field 1"));
    }
    let version = match version {
        Some(v) if !v.is_empty() => Some(as_str(v)?.to_string()),
        _ => None,
    };
    Ok(GrpcPeek {
        method,
        model: model.to_string(),
        version,
    })
}

/// The one message of a unary call: the 5-byte prefix (flag 0 = not compressed, u32 BE
/// length) and exactly that many bytes after it.
pub fn unary_message(body: &[u8]) -> Result<&[u8], CodecError> {
    if body.len() < 5 {
        return Err(CodecError::BadProtobuf(
            "shorter than the 5-byte message prefix",
        ));
    }
    match body[0] {
        0 => {}
        1 => return Err(CodecError::Compressed),
        _ => return Err(CodecError::BadProtobuf("invalid compressed flag")),
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if rest.len() != len {
        return Err(CodecError::BadProtobuf(
            "message length does not match the body (a unary call carries one message)",
        ));
    }
    Ok(rest)
}

/// A unary call's body with the message's `model_name` (field 1) and `model_version` (field
/// 2) replaced where given, framed again with the new length: a split model's version as
/// its backend knows it. Every other field is copied byte for byte, in order; a message
/// without field 2 gets it appended (protobuf fields may come in any order). `Ok(None)`:
/// nothing to replace.
pub fn with_model(
    body: &[u8],
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Option<bytes::Bytes>, CodecError> {
    if model.is_none() && version.is_none() {
        return Ok(None);
    }
    let msg = unary_message(body)?;
    let extra = model.map_or(0, str::len) + version.map_or(0, str::len) + 16;
    let mut out = Vec::with_capacity(msg.len() + extra);
    let mut fields = Fields::new(msg);
    let mut version_written = false;
    loop {
        let start = msg.len() - fields.rest.len();
        let Some(field) = fields.next() else {
            break;
        };
        let (number, _) = field?;
        let end = msg.len() - fields.rest.len();
        match (number, model, version) {
            (1, Some(m), _) => wire::put_bytes(&mut out, 1, m.as_bytes()),
            // The last of repeated scalars wins when parsed: one is enough.
            (2, _, Some(v)) if !version_written => {
                wire::put_bytes(&mut out, 2, v.as_bytes());
                version_written = true;
            }
            (2, _, Some(_)) => {}
            _ => out.extend_from_slice(&msg[start..end]),
        }
    }
    if let (Some(v), false) = (version, version_written) {
        wire::put_bytes(&mut out, 2, v.as_bytes());
    }
    // Bodies are bounded by the route's `max_body`, far below the prefix's 4 GiB.
    Ok(Some(wire::frame(&out)))
}

/// A protobuf field value, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of a protobuf message, in order: `(field number, value)`. Stops after the
/// first error (yielded once).
pub struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    pub fn new(msg: &'a [u8]) -> Self {
        Fields {
            rest: msg,
            failed: false,
        }
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), CodecError> {
        let key = read_varint(&mut self.rest)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(CodecError::BadProtobuf("invalid field number"));
        }
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut self.rest)?),
            1 => Value::Fixed64(u64::from_le_bytes(take_array(&mut self.rest)?)),
            2 => {
                let len = read_varint(&mut self.rest)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|n| *n <= self.rest.len())
                    .ok_or(CodecError::BadProtobuf("length runs past the message"))?;
                let (b, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(b)
            }
            5 => Value::Fixed32(u32::from_le_bytes(take_array(&mut self.rest)?)),
            _ => return Err(CodecError::BadProtobuf("unsupported wire type")),
        };
        Ok((number as u32, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let item = self.next_field();
        self.failed = item.is_err();
        Some(item)
    }
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(CodecError::BadProtobuf("truncated varint"));
        };
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(CodecError::BadProtobuf("varint overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CodecError::BadProtobuf("varint longer than 10 bytes"))
}

fn take_array<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], CodecError> {
    let (head, rest) = buf
        .split_first_chunk::<N>()
        .ok_or(CodecError::BadProtobuf("truncated fixed-width field"))?;
    *buf = rest;
    Ok(*head)
}

/// The `grpc-timeout` header (`{1..8 digits}{H|M|S|m|u|n}`) as a duration.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The protobuf and gRPC framing encoders (enough for the service's small messages).
pub mod wire {
    use bytes::{BufMut, Bytes, BytesMut};

    pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    /// A varint field (wire type 0): ints, enums, bools.
    pub fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
        put_varint(buf, u64::from(field) << 3);
        put_varint(buf, v);
    }

    /// A length-delimited field (wire type 2): strings, bytes, nested messages.
    pub fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
        put_varint(buf, (u64::from(field) << 3) | 2);
        put_varint(buf, bytes.len() as u64);
        buf.extend_from_slice(bytes);
    }

    /// A 64-bit field (wire type 1): doubles.
    pub fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
        put_varint(buf, (u64::from(field) << 3) | 1);
        buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// One gRPC message: not compressed, u32 big-endian length, the message.
    pub fn frame(msg: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + msg.len());
        out.put_u8(0);
        out.put_u32(msg.len() as u32);
        out.extend_from_slice(msg);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer_request(model: &str, version: &str) -> Vec<u8> {
        let mut m = Vec::new();
        wire::put_bytes(&mut m, 1, model.as_bytes());
        wire::put_bytes(&mut m, 2, version.as_bytes());
        wire::put_bytes(&mut m, 3, b"req-1");
        // A parameters map entry, a varint, fixed fields: all skipped.
        wire::put_bytes(&mut m, 4, b"\x0a\x01k\x12\x02\x08\x01");
        wire::put_varint_field(&mut m, 9, 300);
        m.extend_from_slice(&[0x51, 1, 2, 3, 4, 5, 6, 7, 8]); // field 10, 64-bit
        m.extend_from_slice(&[0x5d, 1, 2, 3, 4]); // field 11, 32-bit
        wire::frame(&m).to_vec()
    }

    #[test]
    fn a_version_rewrites_model_and_version_and_keeps_every_other_field() {
        let body = infer_request("resnet", "3");
        let out = with_model(&body, Some("resnet-canary"), Some("7"))
            .unwrap()
            .unwrap();
        let p = peek("/inference.GRPCInferenceService/ModelInfer", Some(&out)).unwrap();
        assert_eq!(
            (p.model.as_str(), p.version.as_deref()),
            ("resnet-canary", Some("7"))
        );
        // The length prefix is the new message's, and the fields after 1 and 2 are intact.
        let msg = unary_message(&out).unwrap();
        let orig = unary_message(&body).unwrap();
        // `resnet` (field 1, 8 bytes) and `3` (field 2, 3 bytes) come first in the original.
        let rest = &orig[11..];
        assert!(msg.ends_with(rest));
        assert_eq!(msg.len(), (2 + 13) + (2 + 1) + rest.len());
        assert_eq!(out.len(), 5 + msg.len());
        // Only the version, on a message without one: appended.
        let mut m = Vec::new();
        wire::put_bytes(&mut m, 1, b"resnet");
        wire::put_bytes(&mut m, 3, b"id");
        let out = with_model(&wire::frame(&m), None, Some("2"))
            .unwrap()
            .unwrap();
        let p = peek("/inference.GRPCInferenceService/ModelInfer", Some(&out)).unwrap();
        assert_eq!(
            (p.model.as_str(), p.version.as_deref()),
            ("resnet", Some("2"))
        );
        assert_eq!(with_model(&body, None, None), Ok(None));
        assert_eq!(
            with_model(&body[..body.len() - 1], Some("x"), None),
            Err(CodecError::BadProtobuf(
                "message length does not match the body (a unary call carries one message)"
            ))
        );
    }

    #[test]
    fn model_and_version_from_a_framed_request() {
        let body = infer_request("resnet", "3");
        let p = peek("/inference.GRPCInferenceService/ModelInfer", Some(&body)).unwrap();
        assert_eq!(p.method, Method::ModelInfer);
        assert_eq!(
            (p.model.as_str(), p.version.as_deref()),
            ("resnet", Some("3"))
        );
        let body = infer_request("bert", "");
        let p = peek("/inference.GRPCInferenceService/ModelReady", Some(&body)).unwrap();
        assert_eq!((p.method, p.version), (Method::ModelReady, None));
    }

    #[test]
    fn refusals_name_the_problem() {
        let path = "/inference.GRPCInferenceService/ModelInfer";
        let mut compressed = infer_request("m", "");
        compressed[0] = 1;
        assert_eq!(peek(path, Some(&compressed)), Err(CodecError::Compressed));
        let short = &infer_request("m", "")[..7];
        assert!(matches!(
            peek(path, Some(short)),
            Err(CodecError::BadProtobuf(_))
        ));
        let no_model = wire::frame(&[0x18, 1]);
        assert!(matches!(
            peek(path, Some(&no_model)),
            Err(CodecError::BadProtobuf(_))
        ));
        let group = wire::frame(&[0x0b, 0x0c]);
        assert!(matches!(
            peek(path, Some(&group)),
            Err(CodecError::BadProtobuf(_))
        ));
        assert!(matches!(
            peek("/inference.GRPCInferenceService/Nope", Some(&no_model)),
            Err(CodecError::Unimplemented(_))
        ));
        assert!(matches!(
            peek(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                Some(&no_model)
            ),
            Err(CodecError::Unimplemented(_))
        ));
    }

    #[test]
    fn walker_survives_arbitrary_bytes() {
        // Property: on any input the walker ends (each field consumes >= 1 byte), never
        // panics, and every length it yields lies inside the input.
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for round in 0..20_000 {
            let len = rng.usize(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if round % 3 == 0 && len > 2 {
                // Bias towards plausible keys so the deeper branches are reached.
                bytes[0] = (rng.u8(1..16) << 3) | rng.u8(0..6);
            }
            let mut steps = 0;
            for field in Fields::new(&bytes) {
                steps += 1;
                assert!(steps <= bytes.len());
                if let Ok((_, Value::Bytes(b))) = field {
                    assert!(b.len() <= bytes.len());
                }
            }
            let _ = peek(
                "/inference.GRPCInferenceService/ModelInfer",
                Some(&wire::frame(&bytes)),
            );
            let _ = peek("/inference.GRPCInferenceService/ModelInfer", Some(&bytes));
        }
    }

    #[test]
    fn round_trip_of_random_well_formed_messages() {
        // Property: whatever the encoder writes, the walker reads back unchanged.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let mut msg = Vec::new();
            let mut want = Vec::new();
            for _ in 0..rng.usize(0..8) {
                let field = rng.u32(1..1000);
                if rng.bool() {
                    let v = rng.u64(..);
                    wire::put_varint_field(&mut msg, field, v);
                    want.push((field, Value::Varint(v)));
                } else {
                    let b: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                    wire::put_bytes(&mut msg, field, &b);
                    want.push((field, Value::Bytes(Box::leak(b.into_boxed_slice()))));
                }
            }
            let got: Vec<_> = Fields::new(&msg).map(|f| f.unwrap()).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"123456789m"), None);
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
    }

    #[test]
    fn content_types() {
        assert!(is_grpc_content_type(Some(b"application/grpc")));
        assert!(is_grpc_content_type(Some(b"application/grpc+proto")));
        assert!(!is_grpc_content_type(Some(b"application/grpcx")));
        assert!(!is_grpc_content_type(Some(b"application/json")));
        assert!(!is_grpc_content_type(None));
    }
}
