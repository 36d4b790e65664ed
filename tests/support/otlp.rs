//! An OTLP/HTTP trace receiver on loopback, decoding each `POST /v1/traces` with the official
//! `opentelemetry-proto` types, and a backend that keeps the request heads it was sent (to
//! see the `traceparent` the gateway forwards) and answers a chat completion with a known
//! `usage`.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request read whole (head as text, body by `content-length`); `None` when
/// the connection ends first.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// What the receiver was sent: each export's request line and head, and its decoded body.
#[derive(Default)]
pub struct Received {
    pub heads: Vec<String>,
    pub exports: Vec<ExportTraceServiceRequest>,
}

impl Received {
    /// Every span received, in order.
    pub fn spans(&self) -> Vec<Span> {
        self.exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

/// Start the receiver: it answers `200` with an empty `ExportTraceServiceResponse`.
pub async fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind OTLP receiver");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Received::default()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                while let Some((head, body)) = read_request(&mut s).await {
                    let decoded = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an ExportTraceServiceRequest");
                    {
                        let mut k = kept.lock().unwrap();
                        k.heads.push(head);
                        k.exports.push(decoded);
                    }
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A backend that answers every request with a chat completion whose `usage` is 12 prompt
/// and 7 completion tokens, and keeps each request's head (lower-cased).
pub async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                while let Some((head, _)) = read_request(&mut s).await {
                    kept.lock().unwrap().push(head.to_ascii_lowercase());
                    let body = r#"{"id":"c1","object":"chat.completion","model":"model-a","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A header's value in a lower-cased request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// A span attribute's value.
pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
