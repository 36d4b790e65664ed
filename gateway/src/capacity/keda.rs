//! The KEDA external scaler: gRPC `externalscaler.ExternalScaler` (h2c) on its own listener
//! (`listeners.keda`), answering from each pool's desired replicas (`Demand`).
//!
//! A ScaledObject with `type: external`, `scalerAddress` this listener and metadata
//! `pool: <name>` scales that pool's Deployment:
//! - `IsActive`: whether the pool needs any replica (desired > 0). False lets KEDA scale the
//!   Deployment to its `minReplicaCount` (0 for scale to zero).
//! - `StreamIsActive` (`external-push`): the same, sent at once, then on every change; a
//!   request that finds the pool at zero sends `true` at once ([`super::ACTIVATED`]).
//! - `GetMetricSpec`: one metric, `desired-replicas-<pool>`, target 1.
//! - `GetMetrics`: the desired replicas. The HPA asks for `ceil(value / target)` replicas,
//!   so the pool gets exactly the replicas computed here. Desired replicas with target 1
//!   rather than demand with a per-replica target: Erlang C is not linear in demand (many
//!   replicas pool their slack), and the forecast and the scale-down window are ours, so a
//!   ratio the HPA recomputes would undo them.
//!
//! The messages are those of KEDA's `pkg/scalers/externalscaler/externalscaler.proto`
//! (Apache-2.0; field numbers checked against it), read with the gateway's own protobuf
//! walker and written with its encoders (`grpc::codec`): no protoc, no generated code.
//!
//! ```text
//! ScaledObjectRef       { string name = 1; string namespace = 2; map<string,string> scalerMetadata = 3; }
//! IsActiveResponse      { bool result = 1; }
//! GetMetricSpecResponse { repeated MetricSpec metricSpecs = 1; }
//! MetricSpec            { string metricName = 1; int64 targetSize = 2; double targetSizeFloat = 3; }
//! GetMetricsRequest     { ScaledObjectRef scaledObjectRef = 1; string metricName = 2; }
//! GetMetricsResponse    { repeated MetricValue metricValues = 1; }
//! MetricValue           { string metricName = 1; int64 metricValue = 2; double metricValueFloat = 3; }
//! ```

use crate::grpc::codec::{self, wire, Fields, Value};
use crate::policy::compile::PoolId;
use crate::serving::{Serving, Snapshot};
use crate::telemetry as t;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

/// The service's path prefix.
pub const SERVICE: &str = "/externalscaler.ExternalScaler/";
/// The largest request message (a ScaledObjectRef is a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;
/// How often a `StreamIsActive` stream looks at its pool besides activations.
const STREAM_CHECK: Duration = Duration::from_secs(1);

/// gRPC status codes used here.
const INVALID_ARGUMENT: u8 = 3;
const NOT_FOUND: u8 = 5;
const UNIMPLEMENTED: u8 = 12;

/// A `ScaledObjectRef` as far as the scaler needs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScaledObjectRef {
    pub name: String,
    pub namespace: String,
    /// `scalerMetadata["pool"]`.
    pub pool: Option<String>,
}

fn string(b: &[u8]) -> Result<String, codec::CodecError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| codec::CodecError::BadProtobuf("a string field is not UTF-8"))
}

/// Decode a `ScaledObjectRef` (unknown fields skipped, as protobuf requires).
pub fn decode_ref(msg: &[u8]) -> Result<ScaledObjectRef, codec::CodecError> {
    let mut r = ScaledObjectRef::default();
    for field in Fields::new(msg) {
        match field? {
            (1, Value::Bytes(b)) => r.name = string(b)?,
            (2, Value::Bytes(b)) => r.namespace = string(b)?,
            (3, Value::Bytes(entry)) => {
                let (mut key, mut value) = (String::new(), String::new());
                for f in Fields::new(entry) {
                    match f? {
                        (1, Value::Bytes(b)) => key = string(b)?,
                        (2, Value::Bytes(b)) => value = string(b)?,
                        _ => {}
                    }
                }
                if key == "pool" {
                    r.pool = Some(value);
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Decode a `GetMetricsRequest`: the object and the metric name.
pub fn decode_metrics_request(msg: &[u8]) -> Result<(ScaledObjectRef, String), codec::CodecError> {
    let (mut r, mut name) = (ScaledObjectRef::default(), String::new());
    for field in Fields::new(msg) {
        match field? {
            (1, Value::Bytes(b)) => r = decode_ref(b)?,
            (2, Value::Bytes(b)) => name = string(b)?,
            _ => {}
        }
    }
    Ok((r, name))
}

/// `IsActiveResponse { result }`.
pub fn encode_active(active: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(2);
    if active {
        wire::put_varint_field(&mut m, 1, 1);
    }
    m
}

/// `GetMetricSpecResponse` with one `MetricSpec { name, target, target }`.
pub fn encode_spec(name: &str, target: f64) -> Vec<u8> {
    let mut spec = Vec::with_capacity(name.len() + 24);
    wire::put_bytes(&mut spec, 1, name.as_bytes());
    wire::put_varint_field(&mut spec, 2, target.ceil() as u64);
    wire::put_double(&mut spec, 3, target);
    let mut m = Vec::with_capacity(spec.len() + 4);
    wire::put_bytes(&mut m, 1, &spec);
    m
}

/// `GetMetricsResponse` with one `MetricValue { name, value, value }`.
pub fn encode_metrics(name: &str, value: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 24);
    wire::put_bytes(&mut v, 1, name.as_bytes());
    if value > 0 {
        wire::put_varint_field(&mut v, 2, u64::from(value));
        wire::put_double(&mut v, 3, f64::from(value));
    }
    let mut m = Vec::with_capacity(v.len() + 4);
    wire::put_bytes(&mut m, 1, &v);
    m
}

/// The metric a pool is scaled on.
pub fn metric_name(pool: &str) -> String {
    format!("desired-replicas-{pool}")
}

/// The pool a ScaledObject names, with `capacity:`; else the gRPC status and message.
fn pool_of(table: &Serving, r: &ScaledObjectRef) -> Result<PoolId, (u8, String)> {
    let Some(name) = &r.pool else {
        return Err((
            INVALID_ARGUMENT,
            format!(
                "ScaledObject {}/{}: the trigger's metadata needs `pool: <name>`",
                r.namespace, r.name
            ),
        ));
    };
    match table.pools.iter().position(|p| &p.name == name) {
        Some(i) if table.pools[i].capacity.is_some() => Ok(i as PoolId),
        Some(_) => Err((
            NOT_FOUND,
            format!("pool `{name}` has no `capacity:` block in the policy"),
        )),
        None => Err((NOT_FOUND, format!("no pool `{name}` in the policy"))),
    }
}

/// A pool's desired replicas (its `min_replicas` until the meter's first round).
pub fn desired(table: &Serving, pool: PoolId) -> u32 {
    let min = table.pools[pool as usize]
        .capacity
        .as_ref()
        .map_or(0, |c| c.min_replicas);
    table.live.pool(pool).demand.desired().unwrap_or(min)
}

/// The answer to a unary method: the response message, or a gRPC status and message.
pub fn unary(table: &Serving, method: &str, msg: &[u8]) -> Result<Vec<u8>, (u8, String)> {
    let bad = |e: codec::CodecError| (INVALID_ARGUMENT, format!("{e:?}"));
    match method {
        "IsActive" => {
            let r = decode_ref(msg).map_err(bad)?;
            let pool = pool_of(table, &r)?;
            Ok(encode_active(desired(table, pool) > 0))
        }
        "GetMetricSpec" => {
            let r = decode_ref(msg).map_err(bad)?;
            let pool = pool_of(table, &r)?;
            Ok(encode_spec(
                &metric_name(&table.pools[pool as usize].name),
                1.0,
            ))
        }
        "GetMetrics" => {
            let (r, name) = decode_metrics_request(msg).map_err(bad)?;
            let pool = pool_of(table, &r)?;
            let name = if name.is_empty() {
                metric_name(&table.pools[pool as usize].name)
            } else {
                name
            };
            Ok(encode_metrics(&name, desired(table, pool)))
        }
        other => Err((
            UNIMPLEMENTED,
            format!("externalscaler.ExternalScaler/{other} is not implemented"),
        )),
    }
}

/// The listener's app: one h2c stream per call.
pub struct KedaScaler {
    snapshot: Snapshot,
    options: HttpServerOptions,
}

impl KedaScaler {
    pub fn new(snapshot: Snapshot) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        KedaScaler { snapshot, options }
    }
}

/// The response head: `200`, `application/grpc`, and a status when it is the whole answer
/// (trailers-only).
fn header(status: Option<(u8, &str)>) -> Box<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    if let Some((code, message)) = status {
        parts.headers.insert("grpc-status", u16::from(code).into());
        if let Ok(v) = http::HeaderValue::from_str(&crate::grpc::percent_encode(message)) {
            parts.headers.insert("grpc-message", v);
        }
    }
    Box::new(ResponseHeader::from(parts))
}

async fn read_message(session: &mut ServerSession) -> Result<Bytes, (u8, String)> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_REQUEST {
                    return Err((INVALID_ARGUMENT, "request message too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err((INVALID_ARGUMENT, format!("reading the request: {e}"))),
        }
    }
    codec::unary_message(&body)
        .map(Bytes::copy_from_slice)
        .map_err(|e| (INVALID_ARGUMENT, format!("{e:?}")))
}

/// Count a call; any method but the service's four is `other` (the path is the client's:
/// it must not make label values).
fn count(method: &str, code: u8) {
    let method = match method {
        "IsActive" | "StreamIsActive" | "GetMetricSpec" | "GetMetrics" => method,
        _ => "other",
    };
    metrics::counter!(t::KEDA_CALLS, "method" => method.to_string(), "code" => code.to_string())
        .increment(1);
}

#[async_trait]
impl HttpServerApp for KedaScaler {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        let path = session.req_header().uri.path().to_string();
        let method = path.strip_prefix(SERVICE).unwrap_or("").to_string();
        let message = read_message(&mut session).await;
        let table = self.snapshot.load_full();
        let tasks = match (method.as_str(), message) {
            (_, Err((code, why))) => {
                count(&method, code);
                vec![HttpTask::Header(header(Some((code, &why))), true)]
            }
            ("StreamIsActive", Ok(msg)) => {
                match decode_ref(&msg)
                    .map_err(|e| (INVALID_ARGUMENT, format!("{e:?}")))
                    .and_then(|r| pool_of(&table, &r).map(|p| (r, p)))
                {
                    Ok((r, pool)) => {
                        count(&method, 0);
                        drop(table);
                        self.stream_active(&mut session, &r, pool, shutdown.clone())
                            .await;
                        session.shutdown().await;
                        return None;
                    }
                    Err((code, why)) => {
                        count(&method, code);
                        vec![HttpTask::Header(header(Some((code, &why))), true)]
                    }
                }
            }
            (m, Ok(msg)) => match unary(&table, m, &msg) {
                Ok(answer) => {
                    count(m, 0);
                    vec![
                        HttpTask::Header(header(None), false),
                        HttpTask::Body(Some(wire::frame(&answer)), false),
                        HttpTask::Trailer(Some(Box::new(crate::grpc::ok_trailers()))),
                    ]
                }
                Err((code, why)) => {
                    count(m, code);
                    vec![HttpTask::Header(header(Some((code, &why))), true)]
                }
            },
        };
        if session.response_duplex_vec(tasks).await.is_err() {
            return None;
        }
        let _ = session.finish().await;
        None
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

impl KedaScaler {
    /// `StreamIsActive`: the pool's state at once, then each change, until the client
    /// goes or the gateway stops. The pool is found again by name after a reload.
    async fn stream_active(
        &self,
        session: &mut ServerSession,
        r: &ScaledObjectRef,
        pool: PoolId,
        mut shutdown: ShutdownWatch,
    ) {
        let name = self.snapshot.load().pools[pool as usize].name.clone();
        if session
            .response_duplex_vec(vec![HttpTask::Header(header(None), false)])
            .await
            .is_err()
        {
            return;
        }
        let mut sent: Option<bool> = None;
        let mut tick = tokio::time::interval(STREAM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Registered before the state is read, so an activation in between is not lost.
            let activated = super::ACTIVATED.notified();
            tokio::pin!(activated);
            activated.as_mut().enable();
            let table = self.snapshot.load_full();
            let Some(id) = table.pools.iter().position(|p| p.name == name) else {
                tracing::info!(pool = %name, "KEDA stream: the pool left the policy");
                break;
            };
            let active = desired(&table, id as PoolId) > 0;
            drop(table);
            if sent != Some(active) {
                let frame = wire::frame(&encode_active(active));
                if session
                    .response_duplex_vec(vec![HttpTask::Body(Some(frame), false)])
                    .await
                    .is_err()
                {
                    return;
                }
                tracing::debug!(pool = %name, object = %r.name, active, "KEDA stream: sent");
                sent = Some(active);
            }
            tokio::select! {
                _ = &mut activated => {}
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = session
            .response_duplex_vec(vec![HttpTask::Trailer(Some(Box::new(trailers)))])
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_object_ref_round_trip() {
        // ScaledObjectRef{name: "so", namespace: "ns", scalerMetadata: {pool: "gpu", x: "y"}}
        let mut entry = Vec::new();
        wire::put_bytes(&mut entry, 1, b"pool");
        wire::put_bytes(&mut entry, 2, b"gpu");
        let mut other = Vec::new();
        wire::put_bytes(&mut other, 1, b"x");
        wire::put_bytes(&mut other, 2, b"y");
        let mut m = Vec::new();
        wire::put_bytes(&mut m, 1, b"so");
        wire::put_bytes(&mut m, 2, b"ns");
        wire::put_bytes(&mut m, 3, &other);
        wire::put_bytes(&mut m, 3, &entry);
        let r = decode_ref(&m).unwrap();
        assert_eq!(
            r,
            ScaledObjectRef {
                name: "so".into(),
                namespace: "ns".into(),
                pool: Some("gpu".into())
            }
        );
        let mut req = Vec::new();
        wire::put_bytes(&mut req, 1, &m);
        wire::put_bytes(&mut req, 2, b"desired-replicas-gpu");
        let (r2, name) = decode_metrics_request(&req).unwrap();
        assert_eq!((r2, name.as_str()), (r, "desired-replicas-gpu"));
        assert!(decode_ref(&[0x0a, 0x05, b'a']).is_err());
    }
}
