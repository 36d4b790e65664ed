//! The gRPC side of the test fleet: a mock `inference.GRPCInferenceService` server over h2c,
//! and a small gRPC client that sends framed unary calls and reads headers, message and
//! trailers.
//!
//! Both are on the `h2` crate (already in the tree through Pingora), not hand-written
//! HTTP/2, and the messages are `prost` types declared from the official protos
//! ([`proto`]): the mock decodes what the gateway forwards with its own codec, not the
//! gateway's, so a test fails if the gateway mangles a message. The mock answers `ModelInfer`
//! with a `ModelInferResponse` naming the model and the backend (`id`; also the
//! `x-mock-backend` metadata), so a test sees who answered; `ModelReady`, `ModelMetadata`,
//! `ModelConfig` and the server methods are answered too. It counts calls per method,
//! remembers the last request's metadata, counts its connections and the most calls it held
//! at once, can hold every `ModelInfer` for a service time, and can be made to fail every call with a gRPC
//! status, or stop listening (connection refused). A message that does not decode gets
//! INVALID_ARGUMENT, as a real server answers.

pub mod proto;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use prost::Message;
use proto::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The path prefix of every method of the service.
pub const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// A message with gRPC's 5-byte prefix (uncompressed, big-endian length).
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The one message of a unary call's body, without its prefix.
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    (body.first() == Some(&0) && body.len() == 5 + len).then(|| &body[5..])
}

/// Calls seen by a [`GrpcMock`].
#[derive(Default)]
struct Seen {
    calls: Mutex<HashMap<String, u64>>,
    infer: AtomicU64,
    last_headers: Mutex<Option<HeaderMap>>,
    /// The `model_name` and `model_version` of every `ModelInfer` request received, in order.
    infers: Mutex<Vec<(String, String)>>,
    /// TCP connections accepted.
    connections: AtomicU64,
    /// Calls being answered now, and the most at once.
    open: AtomicU64,
    most_open: AtomicU64,
    /// How long every `ModelInfer` is held before its answer, in ms.
    delay_ms: AtomicU64,
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
                backend.seen.connections.fetch_add(1, Ordering::Relaxed);
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

    /// The `(model_name, model_version)` of every `ModelInfer` request received (decoded
    /// from the wire: a bad length prefix or message is answered INVALID_ARGUMENT instead).
    pub fn infers(&self) -> Vec<(String, String)> {
        self.seen
            .infers
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Fail every call with gRPC status `code` (0 heals).
    /// TCP connections it accepted (a client multiplexing its calls opens few).
    pub fn connections(&self) -> u64 {
        self.seen.connections.load(Ordering::Relaxed)
    }

    /// The most calls it was answering at once.
    pub fn most_open(&self) -> u64 {
        self.seen.most_open.load(Ordering::Relaxed)
    }

    /// Hold every `ModelInfer` this long before answering it (a model's service time).
    pub fn set_delay(&self, delay: Duration) {
        self.seen
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

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
            let seen = &backend.seen;
            let open = seen.open.fetch_add(1, Ordering::Relaxed) + 1;
            seen.most_open.fetch_max(open, Ordering::Relaxed);
            let _ = answer(req, respond, &backend).await;
            seen.open.fetch_sub(1, Ordering::Relaxed);
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
    let method_name = path.strip_prefix(SERVICE_PREFIX).unwrap_or("").to_string();
    if let Ok(mut calls) = backend.seen.calls.lock() {
        *calls.entry(method_name.clone()).or_default() += 1;
    }
    if let Ok(mut last) = backend.seen.last_headers.lock() {
        *last = Some(parts.headers.clone());
    }
    if method_name == "ModelInfer" {
        backend.seen.infer.fetch_add(1, Ordering::Relaxed);
        let delay = backend.seen.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let fail = backend.fail.load(Ordering::Relaxed);
    if fail != 0 {
        return status_only(&mut respond, backend, fail, "mock told to fail");
    }
    let msg = match answer_message(&method_name, &parts.headers, &buf, backend) {
        Ok(msg) => msg,
        Err((code, why)) => return status_only(&mut respond, backend, code, &why),
    };
    let resp = response_header(backend);
    let mut stream = respond.send_response(resp, false)?;
    stream.send_data(frame(&msg), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)?;
    Ok(())
}

/// The response message of `method` for the request body `body`, or the gRPC status and
/// message to answer instead.
fn answer_message(
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
    backend: &Backend,
) -> Result<Vec<u8>, (u32, String)> {
    const INVALID_ARGUMENT: u32 = 3;
    const UNIMPLEMENTED: u32 = 12;
    if headers
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return Err((
            UNIMPLEMENTED,
            "compressed messages are not supported".into(),
        ));
    }
    let invalid = |e: &dyn std::fmt::Display| (INVALID_ARGUMENT, format!("bad message: {e}"));
    let request = unframe(body).ok_or_else(|| invalid(&"not one framed message"));
    Ok(match method {
        "ServerLive" => ServerLiveResponse { live: true }.encode_to_vec(),
        "ServerReady" => ServerReadyResponse { ready: true }.encode_to_vec(),
        "ServerMetadata" => ServerMetadataResponse {
            name: backend.name.clone(),
            version: "mock".into(),
            extensions: Vec::new(),
        }
        .encode_to_vec(),
        "ModelInfer" => {
            let req = ModelInferRequest::decode(request?).map_err(|e| invalid(&e))?;
            if let Ok(mut infers) = backend.seen.infers.lock() {
                infers.push((req.model_name.clone(), req.model_version.clone()));
            }
            ModelInferResponse {
                model_name: req.model_name,
                model_version: req.model_version,
                id: backend.name.clone(),
                // One fp32 output, 1.0.
                raw_output_contents: vec![1.0f32.to_le_bytes().to_vec()],
                ..Default::default()
            }
            .encode_to_vec()
        }
        "ModelReady" | "ModelMetadata" | "ModelConfig" => {
            let req = ModelRef::decode(request?).map_err(|e| invalid(&e))?;
            match method {
                "ModelReady" => ModelReadyResponse { ready: true }.encode_to_vec(),
                "ModelMetadata" => ModelMetadataResponse {
                    name: req.name,
                    platform: "mock".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                _ => ModelConfigResponse {
                    config: Some(ModelConfig {
                        name: req.name,
                        platform: "mock".into(),
                    }),
                }
                .encode_to_vec(),
            }
        }
        _ => return Err((UNIMPLEMENTED, format!("unknown method {method}"))),
    })
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
    // `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    let message = percent_encoding::utf8_percent_encode(message, ENCODED).to_string();
    if let Ok(v) = HeaderValue::from_str(&message) {
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
        unframe(&self.body)
    }

    /// The response message decoded as `M` (e.g. [`ModelInferResponse`]).
    pub fn decode<M: Message + Default>(&self) -> Option<M> {
        M::decode(self.message()?).ok()
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

/// A `ModelInferRequest` message naming `model` and `version` (if not empty), with an id
/// and one small `BYTES` input tensor whose content is `input` (as raw input contents).
pub fn infer_request(model: &str, version: &str, input: &[u8]) -> Vec<u8> {
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "req".into(),
        inputs: vec![InferTensor {
            name: "input0".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![input.to_vec()],
        ..Default::default()
    }
    .encode_to_vec()
}

/// A `ModelReadyRequest` / `ModelMetadataRequest` / `ModelConfigRequest` for `model`.
pub fn model_request(model: &str) -> Vec<u8> {
    ModelRef {
        name: model.into(),
        version: String::new(),
    }
    .encode_to_vec()
}

/// Call `/inference.GRPCInferenceService/{method}` on `addr` (h2c) with one message.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    msg: &[u8],
    metadata: &[(&str, &str)],
) -> Result<GrpcResponse, GrpcClientError> {
    let path = format!("{SERVICE_PREFIX}{method}");
    call_raw(addr, &path, frame(msg), metadata).await
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
