//! An answer the gateway writes itself, as a value: its own endpoints (discovery, health,
//! the jobs API, the readiness id), its refusals and errors, a queued job's `202`. The stage
//! that decides the answer returns a [`Reply`]; only the pipeline writes to the client
//! (adding the decision headers), so no stage needs the session.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

/// A complete answer: status, headers, body, and for gRPC its trailers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// gRPC: the trailers that end the answer (`grpc-status: 0`). A gRPC status without a
    /// message is trailers-only: `grpc-status` in `headers`, no body, no trailers.
    pub trailers: Option<HeaderMap>,
    /// Answer a `HEAD`: the header (with the body's length) and no body.
    pub head: bool,
}

impl Reply {
    /// `status` with a body of `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: Bytes) -> Reply {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Reply {
            status,
            headers,
            body,
            trailers: None,
            head: false,
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: Bytes) -> Reply {
        Reply::new(status, "application/json", body)
    }

    /// Add (replace) a header; a value that is not valid header text is skipped.
    pub fn with<V: TryInto<HeaderValue>>(mut self, name: HeaderName, value: V) -> Reply {
        if let Ok(v) = value.try_into() {
            self.headers.insert(name, v);
        }
        self
    }

    /// A gRPC status answer: HTTP 200, `application/grpc`, trailers-only with `grpc-status`
    /// and the percent-encoded `grpc-message` (what gRPC clients expect of an error).
    pub fn grpc_status(code: u32, message: &str) -> Reply {
        let mut r = Reply::new(200, "application/grpc", Bytes::new());
        r.headers.insert("grpc-status", HeaderValue::from(code));
        if !message.is_empty() {
            let message = crate::grpc::percent_encode(message);
            if let Ok(v) = HeaderValue::from_str(&message) {
                r.headers.insert("grpc-message", v);
            }
        }
        r
    }

    /// A successful gRPC answer: one framed message and `grpc-status: 0` in the trailers.
    pub fn grpc_ok(framed: Bytes) -> Reply {
        let mut r = Reply::new(200, "application/grpc", framed);
        r.trailers = Some(crate::grpc::ok_trailers());
        r
    }

    /// A gRPC status carried in the header alone (no message, no trailers).
    pub fn is_trailers_only(&self) -> bool {
        self.trailers.is_none() && self.body.is_empty() && self.headers.contains_key("grpc-status")
    }
}
