//! The gRPC side of the test fleet: a mock `inference.GRPCInferenceService` server over h2c,
//! and a small gRPC client that sends framed unary calls and reads headers, message and
//! trailers.
//!
//! Both are on the `h2` crate (already in the tree through Pingora), not hand-written
//! HTTP/2. The mock answers `ModelInfer` with a `ModelInferResponse` naming the model
//! (field 1) and the backend (field 3, `id`; also the `x-mock-backend` metadata), so a test sees who
//! answered; `ModelReady`, `ModelMetadata`, `ModelConfig` and the server methods are
//! answered too. It counts calls per method, remembers the last request's metadata, and can
//! be made to fail every call with a gRPC status, or stop listening (connection refused).
//! Request messages are decoded with the gateway's own `classify::grpc`, so the mock also
//! refuses what the gateway would (a malformed message gets INVALID_ARGUMENT).

use crate::classify::grpc::{self as decode, Method};
use crate::grpc::wire;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Calls seen by a [`GrpcMock`].
#[derive(Default)]
struct Seen {
    calls: Mutex<HashMap<String, u64>>,
    infer: AtomicU64,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// A mock gRPC inference server on h2c.
pub struct GrpcMock {
    name: String,
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// 0: answer normally; otherwise the gRPC status every call gets.
    fail: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl GrpcMock {
    /// Listen on `addr` (port 0 for any) and serve until dropped or [`shutdown`](Self::shutdown).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<GrpcMock> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let fail = Arc::new(AtomicU32::new(0));
        let backend = Arc::new(Backend {
            name: name.to_string(),
            seen: seen.clone(),
            fail: fail.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let backend = backend.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(tcp, backend).await;
                });
            }
        });
        Ok(GrpcMock {
            name: name.to_string(),
            addr,
            seen,
            fail,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ModelInfer` calls answered (successfully or not).
    pub fn infer_calls(&self) -> u64 {
        self.seen.infer.load(Ordering::Relaxed)
    }

    /// Calls of one method (`"ModelReady"`, …).
    pub fn calls(&self, method: &str) -> u64 {
        self.seen
            .calls
            .lock()
            .map(|c| c.get(method).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The metadata (headers) of the last call.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.seen.last_headers.lock().ok().and_then(|h| h.clone())
    }

    /// Fail every call with gRPC status `code` (0 heals).
    pub fn fail_with(&self, code: u32) {
        self.fail.store(code, Ordering::Relaxed);
    }

    /// Stop accepting connections (new connects are refused); established ones end too.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for GrpcMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Backend {
    name: String,
    seen: Arc<Seen>,
    fail: Arc<AtomicU32>,
}

async fn serve_connection(tcp: TcpStream, backend: Arc<Backend>) -> Result<(), h2::Error> {
    let mut conn = h2::server::handshake(tcp).await?;
    while let Some(next) = conn.accept().await {
        let (req, respond) = next?;
        let backend = backend.clone();
        tokio::spawn(async move {
            let _ = answer(req, respond, &backend).await;
        });
    }
    Ok(())
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    backend: &Backend,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let path = parts.uri.path().to_string();
    let method_name = path.rsplit('/').next().unwrap_or("").to_string();
    if let Ok(mut calls) = backend.seen.calls.lock() {
        *calls.entry(method_name).or_default() += 1;
    }
    if let Ok(mut last) = backend.seen.last_headers.lock() {
        *last = Some(parts.headers.clone());
    }
    let method = decode::Method::from_path(&path);
    if method == Some(Method::ModelInfer) {
        backend.seen.infer.fetch_add(1, Ordering::Relaxed);
    }
    let fail = backend.fail.load(Ordering::Relaxed);
    if fail != 0 {
        return status_only(&mut respond, backend, fail, "mock told to fail");
    }
    let mut msg = Vec::new();
    match method {
        Some(Method::ServerLive | Method::ServerReady) => wire::put_varint_field(&mut msg, 1, 1),
        Some(Method::ServerMetadata) => wire::put_bytes(&mut msg, 1, backend.name.as_bytes()),
        Some(m) => {
            let peek = match decode::peek(&path, Some(&buf)) {
                Ok(p) => p,
                Err(e) => return status_only(&mut respond, backend, 3, &e.to_string()),
            };
            match m {
                // ModelInferResponse { model_name = 1; model_version = 2; id = 3; … raw_output_contents = 6 }
                Method::ModelInfer => {
                    wire::put_bytes(&mut msg, 1, peek.model.as_bytes());
                    if let Some(v) = &peek.version {
                        wire::put_bytes(&mut msg, 2, v.as_bytes());
                    }
                    wire::put_bytes(&mut msg, 3, backend.name.as_bytes());
                    wire::put_bytes(&mut msg, 6, &[0, 0, 128, 63]);
                }
                // ModelReadyResponse { bool ready = 1; }
                Method::ModelReady => wire::put_varint_field(&mut msg, 1, 1),
                // ModelMetadataResponse { name = 1; versions = 2; platform = 3; }
                Method::ModelMetadata => {
                    wire::put_bytes(&mut msg, 1, peek.model.as_bytes());
                    wire::put_bytes(&mut msg, 3, b"mock");
                }
                // ModelConfigResponse { ModelConfig config = 1 { string name = 1; } }
                _ => {
                    let mut config = Vec::new();
                    wire::put_bytes(&mut config, 1, peek.model.as_bytes());
                    wire::put_bytes(&mut msg, 1, &config);
                }
            }
        }
        None => return status_only(&mut respond, backend, 12, "unknown method"),
    }
    let resp = response_header(backend);
    let mut stream = respond.send_response(resp, false)?;
    stream.send_data(wire::frame(&msg), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)?;
    Ok(())
}

fn response_header(backend: &Backend) -> Response<()> {
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = HeaderValue::from_str(&backend.name) {
        h.insert("x-mock-backend", v);
    }
    resp
}

fn status_only(
    respond: &mut h2::server::SendResponse<Bytes>,
    backend: &Backend,
    code: u32,
    message: &str,
) -> Result<(), h2::Error> {
    let mut resp = response_header(backend);
    let h = resp.headers_mut();
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&crate::grpc::percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    respond.send_response(resp, true)?;
    Ok(())
}

/// The answer to one unary call, as the client saw it.
#[derive(Debug)]
pub struct GrpcResponse {
    /// The HTTP status (200 for every gRPC answer, errors included).
    pub http_status: u16,
    pub headers: HeaderMap,
    /// The response body as received (framed).
    pub body: Bytes,
    /// The trailers; `None` for a trailers-only answer (status in `headers`).
    pub trailers: Option<HeaderMap>,
}

impl GrpcResponse {
    /// `grpc-status`, from the trailers or, in a trailers-only answer, the headers.
    pub fn grpc_status(&self) -> Option<u32> {
        self.meta("grpc-status").and_then(|v| v.parse().ok())
    }

    pub fn grpc_message(&self) -> Option<&str> {
        self.meta("grpc-message")
    }

    fn meta(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| self.headers.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// A response header (initial metadata).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The response message without its 5-byte prefix, if the body is one whole message.
    pub fn message(&self) -> Option<&[u8]> {
        decode::unary_message(&self.body).ok()
    }

    /// A string field of the response message (e.g. 1 = model name, 3 = id in
    /// `ModelInferResponse`).
    pub fn string_field(&self, field: u32) -> Option<String> {
        decode::Fields::new(self.message()?).find_map(|f| match f {
            Ok((n, decode::Value::Bytes(b))) if n == field => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        })
    }

    /// A varint field of the response message (e.g. 1 = `live` / `ready`); absent reads 0.
    pub fn varint_field(&self, field: u32) -> Option<u64> {
        let msg = self.message()?;
        Some(
            decode::Fields::new(msg)
                .find_map(|f| match f {
                    Ok((n, decode::Value::Varint(v))) if n == field => Some(v),
                    _ => None,
                })
                .unwrap_or(0),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcClientError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A `ModelInferRequest` message naming `model` (field 1), `version` (field 2, if not
/// empty), an id and one small input tensor.
pub fn infer_request(model: &str, version: &str, input: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    wire::put_bytes(&mut m, 1, model.as_bytes());
    if !version.is_empty() {
        wire::put_bytes(&mut m, 2, version.as_bytes());
    }
    wire::put_bytes(&mut m, 3, b"req");
    // InferInputTensor { name = 1; datatype = 2; shape = 3 (packed int64) }
    let mut tensor = Vec::new();
    wire::put_bytes(&mut tensor, 1, b"input0");
    wire::put_bytes(&mut tensor, 2, b"BYTES");
    wire::put_bytes(&mut tensor, 3, &[1]);
    wire::put_bytes(&mut m, 5, &tensor);
    // raw_input_contents = 7
    wire::put_bytes(&mut m, 7, input);
    m
}

/// Call `/inference.GRPCInferenceService/{method}` on `addr` (h2c) with one message.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    msg: &[u8],
    metadata: &[(&str, &str)],
) -> Result<GrpcResponse, GrpcClientError> {
    let path = format!("{}{method}", decode::SERVICE_PREFIX);
    call_raw(addr, &path, wire::frame(msg), metadata).await
}

/// Send `body` (already framed, or deliberately not) to `path` as a gRPC call.
pub async fn call_raw(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    metadata: &[(&str, &str)],
) -> Result<GrpcResponse, GrpcClientError> {
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, call_inner(addr, path, body, metadata))
        .await
        .map_err(|_| GrpcClientError::Timeout(limit))?
}

async fn call_inner(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    metadata: &[(&str, &str)],
) -> Result<GrpcResponse, GrpcClientError> {
    let tcp = TcpStream::connect(addr).await?;
    let (client, conn) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        req = req.header(*k, *v);
    }
    let (response, mut send) = client.send_request(req.body(())?, false)?;
    send.send_data(body, true)?;
    let response = response.await?;
    let http_status = response.status().as_u16();
    let (parts, mut recv) = response.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    driver.abort();
    Ok(GrpcResponse {
        http_status,
        headers: parts.headers,
        body: Bytes::from(body),
        trailers,
    })
}
