//! The gRPC protocol as the gateway speaks it (`inference.GRPCInferenceService` only): the
//! wire format ([`codec`]), the server health methods it answers without a pool, the
//! trailers of a successful call, and how a backend's `grpc-status` counts.
//!
//! A gRPC error is HTTP 200 with `content-type: application/grpc` and a *trailers-only*
//! response: one HEADERS frame that ends the stream and carries `grpc-status` and the
//! percent-encoded `grpc-message` (`reply::Reply::grpc_status`). Which status an error
//! becomes is decided in `error.rs` (`GatewayError::grpc_status`).

pub mod codec;

use crate::policy::compile::{PoolId, RoutingTable};
use crate::serving::state::now_ms;
use bytes::Bytes;
pub use codec::wire;
use codec::Method;
use http::{HeaderMap, HeaderValue};

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%` itself.
pub fn percent_encode(message: &str) -> String {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(message, ENCODED).to_string()
}

/// The trailers of a successful call.
pub fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::with_capacity(1);
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

/// The body answering a server method (`ServerLive`, `ServerReady`, `ServerMetadata`), or
/// `None` for the methods that go to a pool.
pub fn server_answer(method: Method, table: &crate::serving::Serving) -> Option<Bytes> {
    let mut msg = Vec::with_capacity(32);
    match method {
        // ServerLiveResponse { bool live = 1; }: the gateway answers, so it is live.
        Method::ServerLive => wire::put_varint_field(&mut msg, 1, 1),
        // ServerReadyResponse { bool ready = 1; }: some gRPC pool has an endpoint up.
        Method::ServerReady => {
            let now = now_ms();
            let ready = table.pools.iter().enumerate().any(|(i, p)| {
                p.serves_grpc()
                    && table
                        .live
                        .endpoints(i as PoolId)
                        .iter()
                        .any(|e| e.is_up(now))
            });
            if ready {
                wire::put_varint_field(&mut msg, 1, 1);
            }
        }
        // ServerMetadataResponse { string name = 1; string version = 2; repeated string extensions = 3; }
        Method::ServerMetadata => {
            wire::put_bytes(&mut msg, 1, b"switchyard");
            wire::put_bytes(&mut msg, 2, env!("CARGO_PKG_VERSION").as_bytes());
        }
        _ => return None,
    }
    Some(wire::frame(&msg))
}

/// The HTTP status a backend's non-zero `grpc-status` stands for in the metrics and the
/// access log (every gRPC answer is HTTP 200 on the wire), by the usual gRPC/HTTP
/// correspondence; `None` for OK or an unreadable value.
pub fn http_equivalent(grpc_status: &[u8]) -> Option<u16> {
    let code: u32 = std::str::from_utf8(grpc_status).ok()?.trim().parse().ok()?;
    Some(match code {
        0 => return None,
        1 => 499,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    })
}

/// Whether no pool in the table serves `model` over gRPC at all (NOT_FOUND), as opposed to
/// pools that do but cannot take the request now (UNAVAILABLE).
pub fn model_unknown(table: &RoutingTable, model: &str) -> bool {
    !table
        .pools
        .iter()
        .any(|p| p.serves_grpc() && p.models.serves(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("no pool: 100%"), "no pool: 100%25");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn framing() {
        let mut m = Vec::new();
        wire::put_bytes(&mut m, 1, b"abc");
        assert_eq!(&m, &[0x0a, 3, b'a', b'b', b'c']);
        assert_eq!(&wire::frame(&m)[..5], &[0, 0, 0, 0, 5]);
        let mut v = Vec::new();
        wire::put_varint(&mut v, 300);
        assert_eq!(v, vec![0xac, 0x02]);
    }

    #[test]
    fn backend_statuses_count_as_their_http_equivalents() {
        assert_eq!(http_equivalent(b"0"), None);
        assert_eq!(http_equivalent(b"14"), Some(503));
        assert_eq!(http_equivalent(b"5"), Some(404));
        assert_eq!(http_equivalent(b"13"), Some(500));
        assert_eq!(http_equivalent(b"x"), None);
    }
}
